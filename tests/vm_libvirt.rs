//! Real libvirt (Debian 12's 9.0) starting vufsd for a `<filesystem>`, the way users run it
//! (docs/libvirt.md): through `<binary path=...>`, and found through its vhost-user
//! description. libvirt runs embedded (`virt-qemu-run --root DIR`: its state and qemu.conf under
//! the test's directory, no libvirtd to start), with a TCG guest booted from the test kernel
//! and an initramfs that carries the guest script (libvirt's guest has no 9p view of the host).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::migrate::initrd_with_script;
use common::{require, require_vm, vufsd_bin, TestDir};

fn virt_qemu_run() -> common::Result<PathBuf> {
    let p = PathBuf::from("/usr/bin/virt-qemu-run");
    if p.is_file() {
        Ok(p)
    } else {
        Err(
            "virt-qemu-run not found (apt packages libvirt-daemon libvirt-daemon-driver-qemu; \
             scripts/install-deps)"
                .into(),
        )
    }
}

const SCRIPT: &str = r#"
check read grep -q 'hello from host' /mnt/hello
check write sh -c 'echo written > /mnt/from-guest'
check xattr sh -c 'touch /mnt/x'
"#;

/// Run one domain to its end under embedded libvirt; returns the guest's output and the
/// daemon's log (libvirt keeps it in log/qemu/NAME-fs0-virtiofsd.log).
fn run_domain(dir: &Path, share: &Path, binary: Option<&Path>) -> (String, String) {
    let root = dir.join("libvirt");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    // QEMU as root, no virtlogd, no namespaces or cgroups: what a container allows.
    std::fs::write(
        root.join("etc/qemu.conf"),
        "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nsecurity_driver = \"none\"\n\
         namespaces = [ ]\ncgroup_controllers = [ ]\nstdio_handler = \"file\"\n",
    )
    .unwrap();
    let assets = common::assets::assets().unwrap();
    let initrd = initrd_with_script(dir, SCRIPT).unwrap();
    let binary = binary.map_or(String::new(), |b| {
        format!("<binary path='{}' xattr='on'><cache mode='always'/><lock posix='off' flock='off'/></binary>", b.display())
    });
    let xml = format!(
        r#"<domain type='qemu'>
  <name>vufsd-libvirt</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 rdinit=/init panic=-1 vufs_tag=share vufs_mount=1 vufs_9p=0</cmdline>
  </os>
  <cpu mode='custom'><model>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      {binary}
      <source dir='{share}'/>
      <target dir='share'/>
    </filesystem>
    <serial type='file'><source path='{d}/console.log'/><target port='0'/></serial>
    <serial type='file'><source path='{d}/guest.log'/><target port='1'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        kernel = assets.kernel.display(),
        initrd = initrd.display(),
        share = share.display(),
        d = dir.display(),
    );
    let xml_path = dir.join("domain.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let _slot = common::slot::VmSlot::acquire().unwrap();
    let log = std::fs::File::create(dir.join("virt-qemu-run.log")).unwrap();
    let mut child = Command::new(virt_qemu_run().unwrap())
        .arg("--root")
        .arg(&root)
        .arg(&xml_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // virt-qemu-run only returns on its own when attached to a terminal; the guest's last line
    // says when it is done, and SIGTERM then makes libvirt tear the domain (and vufsd) down.
    let guest_log = dir.join("guest.log");
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut exited = None;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        let text = std::fs::read_to_string(&guest_log).unwrap_or_default();
        if text.contains("DONE rc=") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if exited.is_none() {
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let stop = Instant::now() + Duration::from_secs(20);
        while exited.is_none() && Instant::now() < stop {
            exited = child.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        if exited.is_none() {
            let _ = child.kill();
        }
    }
    // Reaps the child in every path (a status already taken by try_wait is returned again).
    let exited = child.wait().ok().filter(|_| exited.is_some());
    let guest = std::fs::read_to_string(&guest_log).unwrap_or_default();
    let daemon = std::fs::read_to_string(root.join("log/qemu/vufsd-libvirt-fs0-virtiofsd.log"))
        .unwrap_or_default();
    let runner = std::fs::read_to_string(dir.join("virt-qemu-run.log")).unwrap_or_default();
    assert!(
        guest.contains("DONE rc="),
        "the guest did not finish (virt-qemu-run {exited:?}):\n{runner}\n--- guest:\n{guest}\n--- daemon:\n{daemon}"
    );
    (guest, daemon)
}

fn share(dir: &TestDir) -> PathBuf {
    let share = dir.mkdir("share");
    std::fs::write(share.join("hello"), "hello from host\n").unwrap();
    share
}

fn assert_served(share: &Path, guest: &str, daemon: &str) {
    for name in ["read", "write", "xattr"] {
        assert!(
            guest.contains(&format!("OK {name}\n")),
            "{guest}\n--- daemon:\n{daemon}"
        );
    }
    assert!(guest.contains("DONE rc=0"), "{guest}");
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest")).unwrap(),
        "written\n"
    );
    // vufsd, on the socket libvirt made and passed (--fd), in its default sandbox.
    assert!(
        daemon.contains("listening on the inherited socket"),
        "{daemon}"
    );
    assert!(daemon.contains("sandbox: namespace"), "{daemon}");
}

#[test]
fn libvirt_runs_vufsd_named_by_binary_path() {
    let Some(()) = require_vm() else { return };
    let Some(_) = require("libvirt's virt-qemu-run", virt_qemu_run()) else {
        return;
    };
    let dir = TestDir::new("libvirt_binary");
    let share = share(&dir);
    let (guest, daemon) = run_domain(dir.path(), &share, Some(&vufsd_bin()));
    assert_served(&share, &guest, &daemon);
    // <lock posix='off' flock='off'/> reached vufsd as -o no_posix_lock,no_flock: the guest
    // was offered no lock support.
    assert!(!daemon.contains("POSIX_LOCKS"), "{daemon}");
}

/// The description file a user installs (docs/libvirt.md): it must sort before Debian's
/// 50-qemu-virtiofsd.json, which names QEMU 7.2's own C virtiofsd.
#[test]
fn libvirt_finds_vufsd_through_its_description_file() {
    let Some(()) = require_vm() else { return };
    let Some(_) = require("libvirt's virt-qemu-run", virt_qemu_run()) else {
        return;
    };
    let dir = TestDir::new("libvirt_description");
    let share = share(&dir);
    let desc_dir = Path::new("/etc/qemu/vhost-user");
    let desc = desc_dir.join("10-vufsd.json");
    assert!(
        !desc.exists(),
        "{} exists already: not touching it",
        desc.display()
    );
    std::fs::create_dir_all(desc_dir).unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/qemu/10-vufsd.json"),
    )
    .unwrap()
    .replace("/usr/bin/vufsd", &vufsd_bin().display().to_string());
    std::fs::write(&desc, text).unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(desc);
    let (guest, daemon) = run_domain(dir.path(), &share, None);
    assert_served(&share, &guest, &daemon);
}

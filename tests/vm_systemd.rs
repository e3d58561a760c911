//! Running vufsd the way hosts run it, with a real guest mounting the share:
//! - socket activation through `systemd-socket-activate` (LISTEN_FDS, fd 3) with readiness
//!   reported on an abstract NOTIFY_SOCKET;
//! - the shipped units (contrib/systemd) under a real systemd, booted in a container with
//!   systemd-nspawn: socket unit, Type=notify, EnvironmentFile written by nix/lib.nix, and every
//!   hardening directive of vufsd@.service, while a guest uses the share.

mod common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require, require_vm, run_vm, vufsd_bin, DaemonSpec, TestDir, VmConfig};

/// Guest-side checks shared by both tests: the usual file operations, each of which is a
/// different set of host syscalls (a seccomp filter that is too tight shows up here).
const GUEST_SCRIPT: &str = r#"
cd /mnt
expect_eq read-host "$(cat from-host.txt)" "written on the host"
check write sh -c 'echo guest > guest.txt'
check append sh -c 'echo more >> guest.txt'
check mkdir mkdir -p d/e
check rename mv guest.txt d/e/moved.txt
check symlink ln -s d/e/moved.txt link
expect_eq readlink "$(readlink link)" "d/e/moved.txt"
check hardlink ln d/e/moved.txt hard
check chmod chmod 0600 hard
check chown chown 1234:5678 hard
check truncate truncate -s 3 hard
check big-write dd if=/dev/zero of=big bs=1M count=8
expect_eq big-size "$(stat -c %s big)" 8388608
check mkfifo mkfifo fifo
check setfattr hostrun setfattr -n user.k -v v /mnt/d/e/moved.txt
expect_eq getfattr "$(hostrun getfattr --only-values -n user.k /mnt/d/e/moved.txt)" v
check statfs sh -c 'df /mnt | grep -q /mnt'
check posix-lock hostrun python3 -c 'import fcntl; f = open("/mnt/hard", "r+"); fcntl.lockf(f, fcntl.LOCK_EX); fcntl.lockf(f, fcntl.LOCK_UN)'
check flock hostrun python3 -c 'import fcntl; f = open("/mnt/hard"); fcntl.flock(f, fcntl.LOCK_EX); fcntl.flock(f, fcntl.LOCK_UN)'
check setfacl hostrun setfacl -m u:4321:r /mnt/hard
check getfacl sh -c 'hostrun getfacl -n /mnt/hard | grep -q "^user:4321:r--"'
check unlink rm big
check rmdir sh -c 'mkdir gone && rmdir gone'
expect_eq ls "$(ls | sort | tr '\n' ' ')" "d fifo from-host.txt hard link "
cd /
"#;

const GUEST_OKS: &[&str] = &[
    "read-host",
    "write",
    "append",
    "mkdir",
    "rename",
    "symlink",
    "readlink",
    "hardlink",
    "chmod",
    "chown",
    "truncate",
    "big-write",
    "big-size",
    "mkfifo",
    "setfattr",
    "getfattr",
    "statfs",
    "posix-lock",
    "flock",
    "setfacl",
    "getfacl",
    "unlink",
    "rmdir",
    "ls",
];

fn check_host_side(share: &Path) {
    let moved = std::fs::read_to_string(share.join("d/e/moved.txt")).unwrap();
    assert_eq!(moved, "gue", "truncated to 3 bytes through the hard link");
    let md = std::fs::metadata(share.join("hard")).unwrap();
    use std::os::unix::fs::MetadataExt;
    // 0600 from chmod; the ACL entry set afterwards (u:4321:r) made the group bits the ACL
    // mask, r--: the ACL reached the host file.
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (1234, 5678, 0o640));
    let acl = Command::new("getfacl")
        .args(["-n", "-p"])
        .arg(share.join("hard"))
        .output()
        .expect("getfacl (apt package acl)");
    assert!(
        String::from_utf8_lossy(&acl.stdout).contains("user:4321:r--"),
        "{}",
        String::from_utf8_lossy(&acl.stdout)
    );
}

fn abstract_listener(name: &str) -> UnixDatagram {
    let rx =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    rx
}

#[test]
fn socket_activation_serves_a_guest() {
    let Some(()) = require_vm() else { return };
    let Some(activate) = require(
        "systemd-socket-activate (apt package systemd)",
        which("systemd-socket-activate"),
    ) else {
        return;
    };
    let dir = TestDir::new("vm_activate");
    let share = dir.mkdir("share");
    std::fs::write(share.join("from-host.txt"), "written on the host").unwrap();
    let sock = dir.path().join("vfs.sock");
    let notify = format!("vufsd-vm-activate-{}", std::process::id());
    let rx = abstract_listener(&notify);
    // No --socket-path: the only socket vufsd can use is the one systemd-socket-activate
    // passes as fd 3 once QEMU connects.
    let mut daemon = DaemonSpec::new(activate, &sock)
        .arg("--listen")
        .arg(&sock)
        .arg(format!("--setenv=NOTIFY_SOCKET=@{notify}"))
        .arg(vufsd_bin())
        .arg("--shared-dir")
        .arg(&share)
        .arg("--xattr")
        .arg("--posix-acl")
        .spawn(dir.path());
    assert!(
        rx.recv(&mut [0u8; 64]).is_err(),
        "nothing may be ready before a frontend connects"
    );
    let out = run_vm(&VmConfig::new(dir.path(), GUEST_SCRIPT).with_daemon(&daemon, "activated"));
    out.assert_ok(GUEST_OKS);
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    let n = rx
        .recv(&mut buf)
        .expect("READY=1 on the abstract NOTIFY_SOCKET");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{}", daemon.report());
    let log = daemon.output();
    assert!(log.contains("listening on the inherited socket"), "{log}");
    assert!(
        sock.exists(),
        "the activator's socket is not vufsd's to remove"
    );
    check_host_side(&share);
}

fn which(program: &str) -> common::Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{program} not found in PATH"))
}

// --- the shipped units under a real systemd --------------------------------------------------

const INSTANCE: &str = "hardened";
/// Where the built binary appears inside the container.
const BIN_IN_CONTAINER: &str = "/opt/vufsd/vufsd";

/// The share's settings as a Nix attribute set: nix/lib.nix turns it into both the
/// EnvironmentFile the unit reads and the argv the unit must produce from it.
fn nix_share(share: &Path) -> String {
    format!(
        r#"{{ sharedDir = "{}"; cache = "never"; noatime = "auto"; extraArgs = [ "--xattr" "--posix-acl" "--thread-pool-size=2" ]; }}"#,
        share.display()
    )
}

use common::nix::eval_json as nix_eval;

/// A booted systemd in a container, killed on drop.
struct Container {
    nspawn: Child,
    log: PathBuf,
    name: String,
}

impl Container {
    /// `systemd-nspawn` the host's own /usr (volatile root) with our units, config, binary and
    /// test directory bound in, booting straight into `vufsd-test.target`.
    fn boot(dir: &Path, units: &Path, conf: &Path) -> Container {
        let name = format!("vufsd-test-{}", std::process::id());
        let log = dir.join("container.log");
        let out = std::fs::File::create(&log).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "--directory=/",
                "--volatile=yes",
                "--register=no",
                "--keep-unit",
            ])
            .arg(format!("--machine={name}"))
            .arg("--private-network")
            .arg(format!(
                "--bind-ro={}:/etc/systemd/system.control",
                units.display()
            ))
            .arg(format!("--bind-ro={}:/etc/vufsd", conf.display()))
            .arg(format!(
                "--bind-ro={}:{BIN_IN_CONTAINER}",
                vufsd_bin().display()
            ))
            .arg(format!("--bind={}", dir.display()))
            .args([
                "--boot",
                "systemd.unit=vufsd-test.target",
                "systemd.mask=systemd-firstboot.service",
                "systemd.log_color=0",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("systemd-nspawn (apt package systemd-container)");
        Container { nspawn, log, name }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The container's init, seen from the host: the process whose innermost pid is 1 and
    /// whose parent chain reaches our systemd-nspawn.
    fn init_pid(&self) -> Option<u32> {
        let nspawn = self.nspawn.id();
        procs().into_iter().find(|&pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let inner_is_1 = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .is_some_and(|ids| {
                    ids.split_whitespace().count() > 1 && ids.split_whitespace().last() == Some("1")
                });
            inner_is_1 && ancestors(pid).contains(&nspawn)
        })
    }

    /// Run a command inside the container (its mount namespace: systemctl, journalctl).
    fn exec(&self, args: &[&str]) -> String {
        let init = self.init_pid().expect("container init");
        let out = Command::new("nsenter")
            .arg(format!("--target={init}"))
            .args(["--mount", "--pid", "--"])
            .args(args)
            .output()
            .expect("nsenter (util-linux)");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn report(&self) -> String {
        format!(
            "--- container {} log:\n{}",
            self.name,
            common::tail(&self.output(), 60)
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // The first SIGTERM asks the container's systemd to halt; give it a moment.
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.nspawn.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.nspawn.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

fn procs() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ancestors(mut pid: u32) -> Vec<u32> {
    let mut chain = Vec::new();
    while pid > 1 && chain.len() < 64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            break;
        };
        chain.push(ppid);
        pid = ppid;
    }
    chain
}

/// What the host sees of the vufsd the container's systemd started for our share.
#[derive(Debug, Default, Clone)]
struct Seen {
    argv: Vec<String>,
    status: String,
    limits: String,
}

fn find_vufsd(share: &Path) -> Option<Seen> {
    let marker = format!("--shared-dir={}", share.display());
    procs().into_iter().find_map(|pid| {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.first().map(String::as_str) != Some(BIN_IN_CONTAINER) || !argv.contains(&marker) {
            return None;
        }
        Some(Seen {
            argv,
            status: std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
            limits: std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?,
        })
    })
}

/// (soft, hard) "Max open files" from a /proc/PID/limits text.
fn nofile(limits: &str) -> (u64, u64) {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files limit in {limits}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or("")
}

#[test]
fn shipped_units_under_systemd_serve_a_guest() {
    let Some(()) = require_vm() else { return };
    let Some(_) = require(
        "systemd-nspawn (apt package systemd-container)",
        which("systemd-nspawn"),
    ) else {
        return;
    };
    let dir = TestDir::new("vm_units");
    let share = dir.mkdir("share");
    std::fs::write(share.join("from-host.txt"), "written on the host").unwrap();
    let sock = dir.mkdir("sock").join("vfs.sock");

    // The units as shipped; only the binary's path and, in a drop-in as an admin would write
    // it, the socket's path (so that QEMU outside the container can reach it) are changed.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let units = dir.mkdir("units");
    let service = std::fs::read_to_string(repo.join("contrib/systemd/vufsd@.service"))
        .unwrap()
        .replace("/usr/bin/vufsd", BIN_IN_CONTAINER);
    std::fs::write(units.join("vufsd@.service"), service).unwrap();
    std::fs::copy(
        repo.join("contrib/systemd/vufsd@.socket"),
        units.join("vufsd@.socket"),
    )
    .unwrap();
    let dropin = units.join(format!("vufsd@{INSTANCE}.socket.d"));
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(
        dropin.join("listen.conf"),
        format!("[Socket]\nListenStream=\nListenStream={}\n", sock.display()),
    )
    .unwrap();
    std::fs::write(
        units.join("vufsd-test.target"),
        format!("[Unit]\nDescription=vufsd test\nWants=vufsd@{INSTANCE}.socket\n"),
    )
    .unwrap();

    // The share's configuration, written by the same code the NixOS module uses.
    let lib = repo.join("nix/lib.nix");
    let spec = nix_share(&share);
    let nix = nix_eval(&format!(
        "let l = import {}; s = {spec}; in {{ args = l.args s; env = l.envFile s; }}",
        lib.display()
    ));
    let conf = dir.mkdir("conf");
    std::fs::write(
        conf.join(format!("{INSTANCE}.conf")),
        nix["env"].as_str().unwrap(),
    )
    .unwrap();
    let want_args: Vec<String> = nix["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();

    let container = Container::boot(dir.path(), &units, &conf);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the socket unit did not listen on {}\n{}",
            sock.display(),
            container.report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        find_vufsd(&share).is_none(),
        "socket activation: no daemon before a frontend connects"
    );

    // Run the guest; meanwhile watch for the daemon systemd starts when QEMU connects.
    let vm_dir = dir.path().to_path_buf();
    let vm_sock = sock.clone();
    // Without CAP_MKNOD (and with PrivateDevices=) the guest cannot make host device nodes.
    let script = format!("{GUEST_SCRIPT}\ncheck_fails mknod-dev mknod /mnt/dev-null c 1 3\n");
    let vm = std::thread::spawn(move || {
        run_vm(&VmConfig::new(&vm_dir, script).with_fs(&vm_sock, "unit"))
    });
    let mut seen: Option<Seen> = None;
    while !vm.is_finished() {
        if seen.is_none() {
            seen = find_vufsd(&share);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = vm
        .join()
        .unwrap_or_else(|e| panic!("the VM run panicked: {e:?}\n{}", container.report()));
    let journal = container.exec(&[
        "journalctl",
        "--no-pager",
        "-o",
        "cat",
        "-u",
        &format!("vufsd@{INSTANCE}.service"),
    ]);
    let oks = [GUEST_OKS, &["mknod-dev"]].concat();
    if !out.problems(&oks).is_empty() {
        panic!(
            "{}\n--- journal:\n{journal}\n{}",
            out.report(),
            container.report()
        );
    }
    check_host_side(&share);

    // The command line systemd built from the EnvironmentFile is the one nix/lib.nix gives.
    let seen = seen.unwrap_or_else(|| panic!("never saw vufsd running\n{journal}"));
    assert_eq!(seen.argv[1..], want_args[..], "argv of the unit's daemon");
    // The hardening is really applied to the process.
    assert_eq!(status_field(&seen.status, "NoNewPrivs"), "1");
    assert_eq!(
        status_field(&seen.status, "Seccomp"),
        "2",
        "SystemCallFilter= active"
    );
    let bounding = u64::from_str_radix(status_field(&seen.status, "CapBnd"), 16).unwrap();
    let allowed = [0u32, 1, 3, 4, 6, 7, 31] // CHOWN DAC_OVERRIDE FOWNER FSETID SETGID SETUID SETFCAP
        .iter()
        .fold(0u64, |m, c| m | (1 << c));
    assert_eq!(bounding & !allowed, 0, "CapBnd {bounding:#x}");
    // LimitNOFILE=1048576: a host's systemd can raise the limit up to fs.nr_open; the one in
    // the container only up to the hard limit it inherited (this sandbox caps it), so expect
    // the lower of the two, for soft and hard alike (systemd's default soft limit is 1024).
    let init = container.init_pid().expect("container init");
    let init_limits = std::fs::read_to_string(format!("/proc/{init}/limits")).unwrap();
    let ceiling = nofile(&init_limits).1.min(1_048_576);
    assert_eq!(nofile(&seen.limits), (ceiling, ceiling), "{}", seen.limits);
    assert!(ceiling > 1024);
    let show = container.exec(&[
        "systemctl",
        "show",
        "-p",
        "LimitNOFILE",
        &format!("vufsd@{INSTANCE}.service"),
    ]);
    assert_eq!(show.trim(), "LimitNOFILE=1048576");

    // Type=notify: systemd reported the service started (it waits for READY=1 to say so),
    // and it ended cleanly when the guest went away.
    for want in [
        "listening on the inherited socket",
        "frontend connected",
        "Started vufsd",
        "Deactivated successfully",
    ] {
        assert!(
            journal.contains(want),
            "'{want}' missing from the journal:\n{journal}"
        );
    }
    assert!(!journal.contains("WARN"), "{journal}");
}

//! NixOS VMs through vufsd, for real: the scripts the Nix modules generate (nix/vm-scripts.nix,
//! evaluated with a bare nix-instantiate, builtins only), run here as an unprivileged user the
//! way a NixOS VM's start script runs them, serving a root-owned store-shaped tree to a guest
//! that puts a writable overlay on it — once per era of nixpkgs' qemu-vm.nix:
//!
//! - 9p era: QEMU gets `-virtfs local,path=...,mount_tag=nix-store` (and `xchg`), and vufsd's
//!   QEMU wrapper turns them into daemons and vhost-user-fs devices;
//! - virtiofs era: the start script runs `virtiofsd ARGS &` (the arguments of
//!   tests/nixos/virtiofsd-args.nix) and then execs QEMU; that virtiofsd is vufsd's stand-in.
//!
//! And a VM whose QEMU never connects (it fails at once) leaves no daemon behind, in both.

mod common;

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_vm, run_vm, vufsd_bin, Launch, TestDir, VmConfig};

/// The unprivileged user the VM (QEMU, the scripts, the daemons) runs as: a NixOS test driver's.
const DRIVER: (u32, u32) = (4242, 4242);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

use common::nix::eval_string as nix_string;

/// QEMU's `-virtfs` arguments for the store and xchg shares, as 9p-era qemu-vm.nix writes them.
fn virtfs_args(store: &Path, xchg: &Path) -> Vec<String> {
    [("nix-store", store), ("xchg", xchg)]
        .iter()
        .flat_map(|(tag, dir)| {
            [
                "-virtfs".to_string(),
                format!(
                    "local,path={},security_model=none,mount_tag={tag}",
                    dir.display()
                ),
            ]
        })
        .collect()
}

/// `program` as the driver's user, in `state`, with `args`; its output.
fn run_as_driver(program: &Path, args: &[String], state: &Path) -> std::process::Output {
    common::setpriv(DRIVER.0, DRIVER.1, program)
        .args(args)
        .current_dir(state)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// An executable bash script `dir/name` with `body` (what the module puts after the shebang).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/bash\n{body}")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The 9p-era QEMU wrapper, as nix/test-driver.nix generates it for a VM whose shared
/// directories are the store and xchg (coreutils from PATH here).
fn qemu_wrapper(dir: &Path) -> PathBuf {
    let body = nix_string(&format!(
        r#"(import {}/nix/vm-scripts.nix).qemuWrapper {{
            vufsd = "{}";
            shares = {{
              nix-store = {{ cache = "always"; readonly = true; }};
              xchg = {{ cache = "auto"; readonly = false; }};
            }};
        }}"#,
        repo().display(),
        vufsd_bin().display()
    ));
    script(dir, "qemu-with-vufsd", &body)
}

/// vufsd's virtiofsd stand-in, as the flake's vufsd-as-virtiofsd package holds it.
fn virtiofsd_shim(dir: &Path) -> PathBuf {
    let body = nix_string(&format!(
        r#"(import {}/nix/vm-scripts.nix).virtiofsdShim {{ vufsd = "{}"; }}"#,
        repo().display(),
        vufsd_bin().display()
    ));
    let bin = dir.join("shim/bin");
    std::fs::create_dir_all(&bin).unwrap();
    script(&bin, "virtiofsd", &body)
}

/// What a virtiofs-era start script does for the shares `(tag, dir)`: start `virtiofsd` with
/// the reconstructed qemu-vm.nix's arguments for each, wait for the sockets, exec QEMU with a
/// vhost-user-fs device each. Run as `start-vm QEMU ARGS...` (a [`Launch`] program).
fn virtiofs_era_start_script(dir: &Path, virtiofsd: &Path, shares: &[(&str, &Path)]) -> PathBuf {
    let mut body = String::from("set -e\nqemu=$1\nshift\n");
    let mut devices = String::new();
    for (tag, path) in shares {
        let args = nix_string(&format!(
            r#"import {}/tests/nixos/virtiofsd-args.nix {{ tag = "{tag}"; source = "'{}'"; }}"#,
            repo().display(),
            path.display()
        ));
        body.push_str(&format!("{} {args} &\n", virtiofsd.display()));
        devices.push_str(&format!(
            " -chardev socket,id=fs-{tag},path=virtiofsd-{tag}.sock -device vhost-user-fs-pci,chardev=fs-{tag},tag={tag}"
        ));
    }
    for (tag, _) in shares {
        body.push_str(&format!(
            "n=0; until [ -e virtiofsd-{tag}.sock ]; do n=$((n+1)); [ $n -lt 200 ] || exit 1; sleep 0.05; done\n"
        ));
    }
    body.push_str(&format!("exec \"$qemu\" \"$@\"{devices}\n"));
    script(dir, "start-vm", &body)
}

/// A tree shaped like /nix/store: root's, 0555 directories and programs, 0444 files.
fn store_tree(dir: &TestDir) -> PathBuf {
    let store = dir.mkdir("store");
    let bin = store.join("abc-hello-1.0/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("hello"), "#!/bin/sh\necho hello from the store\n").unwrap();
    std::fs::write(store.join("abc-hello-1.0/README"), "a store path\n").unwrap();
    for (p, mode) in [
        (bin.join("hello"), 0o555),
        (store.join("abc-hello-1.0/README"), 0o444),
        (bin.clone(), 0o555),
        (store.join("abc-hello-1.0"), 0o555),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        chown(&p, Some(0), Some(0)).unwrap();
    }
    store
}

/// The driver's exchange directory.
fn xchg_dir(dir: &TestDir) -> PathBuf {
    let xchg = dir.mkdir("xchg");
    chown(&xchg, Some(DRIVER.0), Some(DRIVER.1)).unwrap();
    xchg
}

/// The guest side of a NixOS test VM's boot: the store under a writable overlay, xchg.
/// `xchg_owner`: the owner the guest sees for a file it created in xchg.
fn guest_script(xchg_owner: u32) -> String {
    format!(
        r#"
mkdir -p /nix/.ro-store /nix/.rw-store /nix/store /tmp/xchg
check mount_store mount -t virtiofs nix-store /nix/.ro-store
mount -t tmpfs -o mode=0755 tmpfs /nix/.rw-store
mkdir -p /nix/.rw-store/upper /nix/.rw-store/work
check overlay mount -t overlay -o lowerdir=/nix/.ro-store,upperdir=/nix/.rw-store/upper,workdir=/nix/.rw-store/work overlay /nix/store
# overlayfs opens lower files with O_NOATIME: the unprivileged daemon must not fail them.
expect_eq read_through_overlay "$(cat /nix/store/abc-hello-1.0/README)" "a store path"
check run_through_overlay sh /nix/store/abc-hello-1.0/bin/hello
expect_eq store_owner "$(stat -c %u:%g /nix/store/abc-hello-1.0/bin/hello)" 0:0
check write_into_overlay sh -c 'echo new > /nix/store/abc-hello-1.0/added'
check_fails store_share_is_readonly touch /nix/.ro-store/x
check mount_xchg mount -t virtiofs xchg /tmp/xchg
check write_xchg sh -c 'echo from-the-guest > /tmp/xchg/out.txt'
expect_eq xchg_owner "$(stat -c %u /tmp/xchg/out.txt)" {xchg_owner}
"#
    )
}

/// vufsd processes whose working directory is `dir` (the VM's state directory).
fn daemons_in(dir: &Path) -> Vec<u32> {
    let want = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let exe_is_vufsd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .and_then(|c| {
                    c.split(|&b| b == 0)
                        .next()
                        .map(|a| a.ends_with(b"/vufsd") || a == b"vufsd")
                })
                .unwrap_or(false);
            exe_is_vufsd
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == want)
        })
        .collect()
}

/// Wait up to 10 s for every daemon started in `dir` to be gone.
fn assert_no_daemon_left(dir: &Path, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = daemons_in(dir);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for pid in &left {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            panic!("daemons left behind in {}: {left:?}\n{log}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_host_side(store: &Path, xchg: &Path) {
    let out = xchg.join("out.txt");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "from-the-guest\n");
    // Created by the unprivileged daemon: the driver's file, whatever the guest saw.
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), DRIVER.0);
    // The overlay's writes stayed in the guest; the store is untouched.
    assert!(!store.join("abc-hello-1.0/added").exists());
    assert_eq!(
        std::fs::metadata(store.join("abc-hello-1.0"))
            .unwrap()
            .uid(),
        0
    );
}

const OKS: [&str; 10] = [
    "mount_store",
    "overlay",
    "read_through_overlay",
    "run_through_overlay",
    "store_owner",
    "write_into_overlay",
    "store_share_is_readonly",
    "mount_xchg",
    "write_xchg",
    "xchg_owner",
];

#[test]
fn nixos_9p_era_wrapper_serves_an_overlaid_root_owned_store_unprivileged() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("nixos_9p");
    let store = store_tree(&dir);
    let xchg = xchg_dir(&dir);
    let wrapper = qemu_wrapper(dir.path());
    // squashIds: the guest sees every file as root's, as qemu_test showed 9p shares.
    let mut cfg = VmConfig::new(dir.path(), guest_script(0)).launch(Launch {
        program: wrapper,
        run_as: Some(DRIVER),
        env: Vec::new(),
    });
    cfg.qemu_args.extend(virtfs_args(&store, &xchg));
    let out = run_vm(&cfg);
    out.assert_ok(&OKS);
    // The daemons' messages went to QEMU's log: nothing above warn level was wrong.
    assert!(!out.qemu_stderr.contains("ERROR"), "{}", out.qemu_stderr);
    assert_host_side(&store, &xchg);
    // The daemons served QEMU and ended with it.
    assert_no_daemon_left(&out.run_dir, &out.report());
}

#[test]
fn nixos_virtiofs_era_virtiofsd_is_vufsd_for_an_overlaid_root_owned_store_unprivileged() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("nixos_virtiofs");
    let store = store_tree(&dir);
    let xchg = xchg_dir(&dir);
    let shim = virtiofsd_shim(dir.path());
    let start =
        virtiofs_era_start_script(dir.path(), &shim, &[("nix-store", &store), ("xchg", &xchg)]);
    // nixpkgs' arguments map no ids: the guest sees the driver's own uid on its file.
    let cfg = VmConfig::new(dir.path(), guest_script(DRIVER.0)).launch(Launch {
        program: start,
        run_as: Some(DRIVER),
        env: Vec::new(),
    });
    let out = run_vm(&cfg);
    let oks: Vec<&str> = OKS
        .iter()
        .copied()
        .filter(|n| *n != "store_share_is_readonly")
        .collect();
    out.assert_ok(&oks);
    assert!(!out.qemu_stderr.contains("ERROR"), "{}", out.qemu_stderr);
    assert_host_side(&store, &xchg);
    assert_no_daemon_left(&out.run_dir, &out.report());
}

/// Run `program QEMU ARGS...` in a fresh state directory as the driver, with a QEMU that
/// fails at once; the daemons it started must all be gone soon after.
fn qemu_fails_at_once(
    name: &str,
    program: impl FnOnce(&TestDir, &Path, &Path) -> (PathBuf, Vec<String>),
) {
    let dir = TestDir::new(name);
    let store = store_tree(&dir);
    let xchg = xchg_dir(&dir);
    let state = dir.mkdir("state");
    chown(&state, Some(DRIVER.0), Some(DRIVER.1)).unwrap();
    let (prog, args) = program(&dir, &store, &xchg);
    let argv: Vec<String> = std::iter::once("false".to_string()).chain(args).collect();
    let out = run_as_driver(&prog, &argv, &state);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the stand-in QEMU fails:\n{log}");
    assert_no_daemon_left(&state, &log);
    // Each daemon says why it stopped.
    assert_eq!(
        log.matches("exited: exiting too (--exit-with-parent)")
            .count(),
        2,
        "{log}"
    );
    // And takes its socket with it.
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in the state directory: {left:?}");
}

#[test]
fn nixos_9p_era_a_qemu_that_never_connects_leaves_no_daemon() {
    qemu_fails_at_once("nixos_9p_fail", |dir, store, xchg| {
        (qemu_wrapper(dir.path()), virtfs_args(store, xchg))
    });
}

#[test]
fn nixos_virtiofs_era_a_qemu_that_never_connects_leaves_no_daemon() {
    qemu_fails_at_once("nixos_virtiofs_fail", |dir, store, xchg| {
        let shim = virtiofsd_shim(dir.path());
        let start =
            virtiofs_era_start_script(dir.path(), &shim, &[("nix-store", store), ("xchg", xchg)]);
        (start, Vec::new())
    });
}

#[test]
fn nixos_9p_era_a_daemon_that_cannot_start_stops_the_vm_and_the_other_daemons() {
    // A share whose directory is gone: its vufsd refuses to start, the wrapper says which share
    // and exits before QEMU, and the daemon that did start ends with it.
    let dir = TestDir::new("nixos_9p_badshare");
    let store = store_tree(&dir);
    let state = dir.mkdir("state");
    chown(&state, Some(DRIVER.0), Some(DRIVER.1)).unwrap();
    let wrapper = qemu_wrapper(dir.path());
    let mut argv = vec!["true".to_string()];
    argv.extend(virtfs_args(&store, Path::new("/nonexistent/xchg")));
    let out = run_as_driver(&wrapper, &argv, &state);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("/nonexistent/xchg does not exist"), "{log}");
    assert!(
        log.contains("qemu-with-vufsd: vufsd for share xchg did not start"),
        "{log}"
    );
    assert_no_daemon_left(&state, &log);
}

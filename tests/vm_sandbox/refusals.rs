//! vufsd refusing a sandbox it cannot set up: one clear error line naming the flag to use,
//! exit status 1 (2 for a usage error), and no socket left behind.

use std::process::Command;

use super::{vufsd_bin, Share, NOBODY};

fn vufsd_as(uid: Option<u32>, args: &[&str]) -> std::process::Output {
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(vufsd_bin());
            c
        }
        None => Command::new(vufsd_bin()),
    };
    cmd.args(args).output().expect("running vufsd")
}

fn error_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vufsd: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{stderr}");
    lines[0].to_string()
}

#[test]
fn chroot_is_refused_to_an_unprivileged_user_before_anything_is_created() {
    let share = Share::new("sandbox_chroot_user", Some(NOBODY));
    let sock = share.socket();
    let out = vufsd_as(
        Some(NOBODY),
        &[
            "--socket-path",
            sock.to_str().unwrap(),
            "--shared-dir",
            share.share.to_str().unwrap(),
            "--sandbox=chroot",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    for needle in [
        "--sandbox=chroot needs root",
        "--sandbox=namespace",
        "--sandbox=none",
    ] {
        assert!(line.contains(needle), "'{needle}' missing from: {line}");
    }
    assert!(!sock.exists(), "no socket left behind");
}

#[test]
fn bad_modcaps_and_rlimit_values_are_refused() {
    let share = Share::new("sandbox_bad_values", None);
    let sock = share.socket();
    let base = [
        "--socket-path",
        sock.to_str().unwrap(),
        "--shared-dir",
        share.share.to_str().unwrap(),
    ];
    let out = vufsd_as(None, &[&base[..], &["--modcaps=+frobnicate"]].concat());
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown capability 'frobnicate'"));

    let out = vufsd_as(
        None,
        &[&base[..], &["--rlimit-nofile=99999999999"]].concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains("--rlimit-nofile=99999999999") && line.contains("nr_open"),
        "{line}"
    );
}

// --- the default sandbox where namespaces are not allowed -----------------------------------

/// Write `data` to `path` with raw syscalls only (this runs between fork and exec).
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path and a buffer of the given length; all
    // three are async-signal-safe.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        if n != data.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Run vufsd as `uid` inside a user namespace of its own (mapping only `uid`) whose sysctl
/// `limit` (e.g. `max_user_namespaces`) is 0: a host that does not allow the namespaces vufsd's
/// default sandbox needs, without touching the real host's settings.
fn vufsd_without(limit: &'static std::ffi::CStr, uid: u32, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(vufsd_bin());
    cmd.args(args);
    let map = format!("{uid} {uid} 1");
    // SAFETY: the closure runs in the forked child before exec and only makes raw syscalls
    // (setgroups, setres[ug]id, prctl, unshare, open/write/close); `map` was formatted before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(uid, uid, uid))?;
            check(libc::setresuid(uid, uid, uid))?;
            // Changing ids made us non-dumpable, which hides /proc/self's files from us.
            check(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0))?;
            check(libc::unshare(libc::CLONE_NEWUSER))?;
            write_file(c"/proc/self/setgroups", b"deny")?;
            write_file(c"/proc/self/uid_map", map.as_bytes())?;
            write_file(c"/proc/self/gid_map", map.as_bytes())?;
            write_file(limit, b"0")
        });
    }
    cmd.output().expect("running vufsd")
}

/// vufsd started with the default sandbox, as `uid`, where `limit` (a namespace limit under
/// /proc/sys/user) is 0: it must refuse to start with one line containing each of `needles`,
/// and leave no socket behind.
fn default_sandbox_refused(test: &str, limit: &'static std::ffi::CStr, uid: u32, needles: &[&str]) {
    let share = Share::new(test, (uid != 0).then_some(uid));
    let sock = share.socket();
    let out = vufsd_without(
        limit,
        uid,
        &[
            "--socket-path",
            sock.to_str().unwrap(),
            "--shared-dir",
            share.share.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    for needle in needles {
        assert!(line.contains(needle), "'{needle}' missing from: {line}");
    }
    assert!(
        !sock.exists(),
        "a daemon that did not start leaves no socket"
    );
}

#[test]
fn the_default_sandbox_names_the_flag_to_use_where_user_namespaces_are_disabled() {
    default_sandbox_refused(
        "sandbox_no_userns",
        c"/proc/sys/user/max_user_namespaces",
        4242,
        &[
            "--sandbox=namespace (the default)",
            "create a user namespace",
            "unprivileged users",
            "use --sandbox=none",
        ],
    );
}

#[test]
fn the_default_sandbox_names_the_flag_to_use_where_root_may_not_create_namespaces() {
    // Root in a user namespace whose pid namespace limit is 0: like a container without the
    // privilege to create namespaces.
    default_sandbox_refused(
        "sandbox_no_pidns",
        c"/proc/sys/user/max_pid_namespaces",
        0,
        &[
            "--sandbox=namespace (the default)",
            "create a pid namespace",
            "use --sandbox=chroot",
            "--sandbox=none",
        ],
    );
}

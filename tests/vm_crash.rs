//! Crashes lose nothing that was made durable (docs/reliability.md): QEMU killed with SIGKILL
//! while the guest writes, and the daemon killed with SIGKILL under a busy guest.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    require_vm, run_vm, try_run_vm, vufsd_bin, DaemonSpec, HostAction, TestDir, VmConfig,
};

/// What the guest writes into file `i`: 256 KiB of `file <i>\n` lines (busybox `yes`).
fn expected(i: usize) -> Vec<u8> {
    let line = format!("file {i}\n");
    line.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(256 << 10)
        .collect()
}

/// Indexes the guest reported as fsynced (`SYNCED <i>` lines).
fn synced(out: &str) -> Vec<usize> {
    out.lines()
        .filter_map(|l| l.strip_prefix("SYNCED "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Every fsynced file is whole on the host.
fn assert_synced_files_whole(share: &Path, done: &[usize], report: &dyn Fn() -> String) {
    for i in done {
        let got = std::fs::read(share.join(format!("f{i}"))).unwrap_or_default();
        assert!(
            got == expected(*i),
            "f{i} was fsynced but has {} bytes on the host, or other bytes\n{}",
            got.len(),
            report()
        );
    }
}

/// The guest's writer: files f0, f1, ... each written and fsynced (dd conv=fsync), `SYNCED i`
/// after each; and, beside it, a big file of zeros written without pause.
const WRITER: &str = r#"
writer() {
    i=0
    while [ $i -lt 100000 ]; do
        yes "file $i" | head -c 262144 | dd of=/mnt/f$i bs=64k conv=fsync 2>/dev/null || { echo "WRITE-FAILED $i"; return 1; }
        echo "SYNCED $i"
        echo $i > /tmp/progress.new && mv /tmp/progress.new /tmp/progress
        i=$((i + 1))
    done
}
dd if=/dev/zero of=/mnt/zeros bs=1M count=100000 2>/dev/null &
"#;

#[test]
fn qemu_killed_mid_write_keeps_every_fsynced_byte_and_the_daemon_exits() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("crash_qemu");
    let share = dir.mkdir("share");
    let sock = dir.path().join("vfs.sock");
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share).spawn(dir.path());
    let script = format!(
        "{WRITER}
writer &
while [ \"$(cat /tmp/progress 2>/dev/null || echo 0)\" -lt 12 ]; do sleep 0.05; done
host_do 0
sleep 60
"
    );
    let cfg = VmConfig::new(dir.path(), script)
        .with_daemon(&daemon, "share")
        .on_host_do(HostAction::KillQemu)
        .timeout(Duration::from_secs(120));
    let out = try_run_vm(&cfg).unwrap();
    assert!(!out.timed_out, "{}", out.report());
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.qemu_status),
        Some(libc::SIGKILL),
        "QEMU was to be killed\n{}",
        out.report()
    );
    let done = synced(&out.guest_output);
    assert!(done.len() >= 12, "{}", out.report());
    assert_synced_files_whole(&share, &done, &|| out.report());
    // The file written without fsync holds zeros only, however much of it arrived.
    let zeros = std::fs::read(share.join("zeros")).unwrap_or_default();
    assert!(
        zeros.iter().all(|b| *b == 0),
        "garbage in the unsynced file"
    );
    // The daemon noticed its frontend was gone, and cleaned up.
    let st = daemon.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}\n{}", daemon.output());
    assert!(!sock.exists(), "socket left behind");
    eprintln!(
        "{} files fsynced before the kill, {} MiB of the unsynced file arrived",
        done.len(),
        zeros.len() >> 20
    );
}

#[test]
fn daemon_killed_under_a_busy_guest_its_stuck_processes_can_be_killed_and_a_new_daemon_serves() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("crash_daemon");
    let share = dir.mkdir("share");
    let sock = dir.path().join("vfs.sock");
    let daemon = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share).spawn(dir.path());
    // The guest waits until its writer stalls, then does what an admin can. A virtiofs
    // connection cannot be aborted from the guest (fusectl does not list it, and virtiofs
    // turns force-unmount off), but FUSE waits are killable: SIGKILL the stuck processes, then
    // detach the mount.
    let script = format!(
        "{WRITER}
writer > /tmp/writer.out 2>&1 &
wpid=$!
while [ \"$(cat /tmp/progress 2>/dev/null || echo 0)\" -lt 8 ]; do sleep 0.05; done
host_do 0
last=$(cat /tmp/progress)
sleep 3
[ \"$(cat /tmp/progress)\" = \"$last\" ] && echo STALLED
kill -9 $(pidof dd) $wpid 2>/dev/null
i=0
while kill -0 $wpid 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
kill -0 $wpid 2>/dev/null || echo KILLED
umount -l /mnt && echo UNMOUNTED
ls /mnt > /dev/null && echo MOUNTPOINT-USABLE
# Not the init's shutdown, and no sync (-n): a sync would wait for ever on the dead connection.
cat /tmp/writer.out
echo POWEROFF
poweroff -n -f
"
    );
    let cfg = VmConfig::new(dir.path(), script)
        .with_daemon(&daemon, "share")
        .on_host_do(HostAction::Signal {
            pid: daemon.pid(),
            sig: libc::SIGKILL,
        })
        .timeout(Duration::from_secs(120));
    let out = try_run_vm(&cfg).unwrap();
    let g = &out.guest_output;
    let report = || out.report();
    assert!(!out.timed_out, "the guest hung\n{}", report());
    assert!(g.contains("HOST-DONE 0 ok"), "{}", report());
    assert!(g.contains("STALLED"), "{}", report());
    assert!(
        g.contains("KILLED"),
        "the stuck writer could not be killed\n{}",
        report()
    );
    assert!(
        g.contains("UNMOUNTED") && g.contains("MOUNTPOINT-USABLE"),
        "{}",
        report()
    );
    let done = synced(g);
    assert!(done.len() >= 8, "{}", report());
    assert_synced_files_whole(&share, &done, &report);

    // A new daemon on the same socket path (the dead one's file is stale) serves a fresh guest
    // the files as they were.
    let daemon2 = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share).spawn(dir.path());
    let last = done.last().copied().unwrap_or(0);
    let check = format!(
        "check read sh -c 'yes \"file {last}\" | head -c 262144 | cmp - /mnt/f{last}'\n\
         check write sh -c 'echo again > /mnt/after && cat /mnt/after'\n"
    );
    let out2 = run_vm(&VmConfig::new(dir.path(), check).with_daemon(&daemon2, "share"));
    out2.assert_ok(&["read", "write"]);
    eprintln!(
        "{} files fsynced before the daemon was killed; the guest saw: {}",
        done.len(),
        g.lines()
            .filter(|l| ["STALLED", "KILLED", "UNMOUNTED"].contains(l))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

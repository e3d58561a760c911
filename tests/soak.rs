//! Long runs (docs/reliability.md): the daemon gives back what it takes. CI runs them at a size
//! that fits its budget; `scripts/soak` runs them long (VUFSD_SOAK_ROUNDS, VUFSD_SOAK_OPS,
//! VUFSD_SOAK_FILES) and docs/reliability.md records its figures.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{require_vm, run_vm, vufsd_bin, DaemonSpec, HostAction, TestDir, VmConfig};
use vufsd_bench::soak::{soak, verdict, SoakConfig};
use vufsd_bench::{procstat, DaemonProcess, Device, DeviceConfig, FuseClient};

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The load generator on 4 queues, 16 requests in flight, rounds of the `mixed` workload
/// (lookups, opens, reads, creates with writes, mkdir/rmdir, listings, FORGETs): after every
/// round the daemon's fds, threads and private memory are back where they were, and its p99
/// latency does not drift.
#[test]
fn mixed_requests_over_four_queues_leave_no_leak_and_no_drift() {
    let dir = vufsd_bench::TempDir::new("vufsd-soak").unwrap();
    let share = dir.path().join("share");
    vufsd_bench::prepare::prepare_mixed(&share).unwrap();
    let sock = dir.path().join("s.sock");
    let args = ["--sandbox", "none", "--log-level", "warn"].map(Into::into);
    let daemon =
        DaemonProcess::spawn(&vufsd_bin(), &share, &sock, &args, Duration::from_secs(10)).unwrap();
    let mut cfg = DeviceConfig::new(&sock);
    cfg.request_queues = 4;
    cfg.timeout = Duration::from_secs(60);
    let dev = Arc::new(Device::connect(cfg).unwrap());
    FuseClient::new(Arc::clone(&dev)).init().unwrap();
    let idle = procstat::sample(daemon.pid()).unwrap();
    let soak_cfg = SoakConfig {
        rounds: env_or("VUFSD_SOAK_ROUNDS", 6) as usize,
        ops_per_round: env_or("VUFSD_SOAK_OPS", 8_000),
        depth: 16,
        queues: 4,
        dir: String::new(),
    };
    let rounds = soak(&dev, daemon.pid(), &soak_cfg, &mut |r| {
        eprintln!("{}", r.json())
    })
    .unwrap();
    let problems = verdict(&rounds);
    assert!(problems.is_empty(), "{problems:?}\n{}", daemon.log());
    let requests: u64 = rounds.iter().map(|r| r.requests).sum();
    let last = rounds.last().unwrap().after;
    eprintln!(
        "{requests} requests; idle {} KiB RSS / {} fds / {} threads, after {} KiB / {} / {}",
        idle.rss_kb, idle.fds, idle.threads, last.rss_kb, last.fds, last.threads
    );
    assert!(requests >= 100_000);
    // Everything forgotten: no more fds than at the start (the queues' eventfds were there).
    assert!(last.fds <= idle.fds + 2, "{idle:?} -> {last:?}");
}

/// A file of `/proc/PID/status` lines and the fd count, written by a host action.
fn sample_cmd(pid: u32, out: &Path) -> HostAction {
    HostAction::run(&[
        "sh",
        "-c",
        &format!(
            "{{ grep -E '^(VmRSS|RssAnon|Threads):' /proc/{pid}/status; echo \"Fds: $(ls /proc/{pid}/fd | wc -l)\"; }} > {}",
            out.display()
        ),
    ])
}

fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

/// A guest creates and deletes many files (10,000 in CI): once its caches are dropped, the
/// daemon holds the fds, threads and memory it held before.
#[test]
fn a_guest_creating_and_deleting_files_leaves_the_daemon_as_it_found_it() {
    let Some(()) = require_vm() else { return };
    let dir = TestDir::new("soak_guest");
    let share = dir.mkdir("share");
    let sock = dir.path().join("vfs.sock");
    let daemon = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share).spawn(dir.path());
    let files = env_or("VUFSD_SOAK_FILES", 10_000);
    let (before, after) = (dir.path().join("before.txt"), dir.path().join("after.txt"));
    let script = format!(
        r#"
mkdir /mnt/d
host_do 0
i=0
while [ $i -lt {files} ]; do
    : > /mnt/d/f$i || {{ echo "CREATE-FAILED $i"; break; }}
    i=$((i + 1))
done
echo "CREATED $(ls /mnt/d | wc -l)"
find /mnt/d -type f -exec rm {{}} +
echo "LEFT $(ls /mnt/d | wc -l)"
sync
echo 3 > /proc/sys/vm/drop_caches
sleep 1
host_do 1
"#
    );
    let out = run_vm(
        &VmConfig::new(dir.path(), script)
            .with_daemon(&daemon, "share")
            .on_host_do(sample_cmd(daemon.pid(), &before))
            .on_host_do(sample_cmd(daemon.pid(), &after))
            .timeout(Duration::from_secs(60 + files / 100)),
    );
    out.assert_ok(&[]);
    let g = &out.guest_output;
    assert!(g.contains(&format!("CREATED {files}")), "{}", out.report());
    assert!(g.contains("LEFT 0"), "{}", out.report());
    let (b, a) = (
        std::fs::read_to_string(&before).unwrap(),
        std::fs::read_to_string(&after).unwrap(),
    );
    eprintln!("{files} files created and deleted; before:\n{b}after:\n{a}");
    assert!(field(&a, "Fds:") <= field(&b, "Fds:") + 2, "{b}\n{a}");
    assert_eq!(field(&a, "Threads:"), field(&b, "Threads:"));
    let (ra, rb) = (field(&a, "RssAnon:"), field(&b, "RssAnon:"));
    assert!(
        ra <= rb + (rb / 2).max(4096),
        "private memory {rb} KiB -> {ra} KiB"
    );
}

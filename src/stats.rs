//! What a running daemon has done: requests and errors per opcode and errno, latency
//! histograms, bytes moved, and (read when asked) what it holds. Kept for every request — a few
//! relaxed atomic additions and two clock reads, about 1-2% of a request's CPU time
//! (docs/performance.md) — and given out on the `--stats-socket` (OpenMetrics text, which
//! Prometheus and node_exporter's textfile collector read), with `vufsd --print-stats SOCKET`,
//! and in the log on SIGUSR1 (docs/stats.md).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Opcodes 0..63 are counted on their own (FUSE's are all below 64); anything else in the last.
const OPCODES: usize = 64;
/// errno values counted on their own; larger ones in the last.
const ERRNOS: usize = 134;
/// Latency buckets: up to 1 µs, 2 µs, 4 µs, ... 2^(BUCKETS-2) µs, and above.
const BUCKETS: usize = 24;

pub struct Stats {
    started: Instant,
    requests: [AtomicU64; OPCODES],
    errors: [AtomicU64; ERRNOS],
    /// Per opcode, counts per latency bucket.
    latency: Vec<[AtomicU64; BUCKETS]>,
    /// Per opcode, total latency in ns (for the OpenMetrics histogram's sum).
    latency_ns: [AtomicU64; OPCODES],
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// What the daemon holds now, read at the time of a report.
#[derive(Clone, Copy, Debug, Default)]
pub struct Holdings {
    pub inodes: usize,
    pub handles: usize,
    /// O_PATH fds the inode table holds, and how many it may hold before turning to handles.
    pub inode_fds: usize,
    pub inode_fd_budget: usize,
    /// Open fds of the whole process, and its limit.
    pub fds: usize,
    pub fd_limit: u64,
    /// O_NOATIME decisions: honoured, masked, retried.
    pub noatime: (u64, u64, u64),
}

fn opcode_name(op: usize) -> &'static str {
    const NAMES: [&str; 53] = [
        "",
        "lookup",
        "forget",
        "getattr",
        "setattr",
        "readlink",
        "symlink",
        "",
        "mknod",
        "mkdir",
        "unlink",
        "rmdir",
        "rename",
        "link",
        "open",
        "read",
        "write",
        "statfs",
        "release",
        "",
        "fsync",
        "setxattr",
        "getxattr",
        "listxattr",
        "removexattr",
        "flush",
        "init",
        "opendir",
        "readdir",
        "releasedir",
        "fsyncdir",
        "getlk",
        "setlk",
        "setlkw",
        "access",
        "create",
        "interrupt",
        "bmap",
        "destroy",
        "ioctl",
        "poll",
        "notify_reply",
        "batch_forget",
        "fallocate",
        "readdirplus",
        "rename2",
        "lseek",
        "copy_file_range",
        "setupmapping",
        "removemapping",
        "syncfs",
        "tmpfile",
        "statx",
    ];
    NAMES
        .get(op)
        .copied()
        .filter(|n| !n.is_empty())
        .unwrap_or("other")
}

fn bucket(d: Duration) -> usize {
    let us = d.as_micros().max(1) as u64;
    // 1 µs -> 0, 2 µs -> 1, 3-4 µs -> 2, ...
    ((64 - (us - 1).leading_zeros()) as usize).min(BUCKETS - 1)
}

/// Upper bound of bucket `b`, in seconds (None: +Inf).
fn bucket_le(b: usize) -> Option<f64> {
    (b < BUCKETS - 1).then(|| (1u64 << b) as f64 / 1e6)
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: (0..OPCODES)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            latency_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// A request was taken off a queue.
    pub fn begin(&self) -> Instant {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(n, Ordering::Relaxed);
        Instant::now()
    }

    /// It was answered: `errno` 0 for success, `read`/`written` the payload bytes moved.
    pub fn end(&self, t0: Instant, opcode: u32, errno: i32, read: u64, written: u64) {
        let d = t0.elapsed();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let op = (opcode as usize).min(OPCODES - 1);
        self.requests[op].fetch_add(1, Ordering::Relaxed);
        self.latency[op][bucket(d)].fetch_add(1, Ordering::Relaxed);
        self.latency_ns[op].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        if errno > 0 {
            self.errors[(errno as usize).min(ERRNOS - 1)].fetch_add(1, Ordering::Relaxed);
        }
        if read > 0 {
            self.bytes_read.fetch_add(read, Ordering::Relaxed);
        }
        if written > 0 {
            self.bytes_written.fetch_add(written, Ordering::Relaxed);
        }
    }

    fn quantile(&self, op: usize, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.latency[op]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (b, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(bucket_le(b).unwrap_or(f64::INFINITY));
            }
        }
        None
    }

    /// The report in OpenMetrics text format.
    pub fn openmetrics(&self, h: &Holdings) -> String {
        let mut o = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(o, "# TYPE vufsd_uptime_seconds gauge");
        let _ = writeln!(
            o,
            "vufsd_uptime_seconds {:.3}",
            self.started.elapsed().as_secs_f64()
        );
        let _ = writeln!(o, "# TYPE vufsd_requests counter\n# HELP vufsd_requests FUSE requests answered, by opcode.");
        for (op, c) in self.requests.iter().enumerate() {
            let n = load(c);
            if n > 0 {
                let _ = writeln!(
                    o,
                    "vufsd_requests_total{{opcode=\"{}\"}} {n}",
                    opcode_name(op)
                );
            }
        }
        let _ = writeln!(
            o,
            "# TYPE vufsd_errors counter\n# HELP vufsd_errors Error replies, by errno."
        );
        for (e, c) in self.errors.iter().enumerate() {
            let n = load(c);
            if n > 0 {
                let _ = writeln!(o, "vufsd_errors_total{{errno=\"{e}\"}} {n}");
            }
        }
        let _ = writeln!(o, "# TYPE vufsd_request_seconds histogram\n# HELP vufsd_request_seconds Time from taking a request off its queue to answering it, by opcode.");
        for op in 0..OPCODES {
            let total = load(&self.requests[op]);
            if total == 0 {
                continue;
            }
            let name = opcode_name(op);
            let mut cum = 0;
            for b in 0..BUCKETS {
                cum += load(&self.latency[op][b]);
                let le = bucket_le(b).map_or("+Inf".to_string(), |s| format!("{s}"));
                let _ = writeln!(
                    o,
                    "vufsd_request_seconds_bucket{{opcode=\"{name}\",le=\"{le}\"}} {cum}"
                );
            }
            let _ = writeln!(o, "vufsd_request_seconds_count{{opcode=\"{name}\"}} {cum}");
            let sum = load(&self.latency_ns[op]) as f64 / 1e9;
            let _ = writeln!(o, "vufsd_request_seconds_sum{{opcode=\"{name}\"}} {sum:.9}");
        }
        let _ = writeln!(
            o,
            "# TYPE vufsd_read_bytes counter\nvufsd_read_bytes_total {}",
            load(&self.bytes_read)
        );
        let _ = writeln!(
            o,
            "# TYPE vufsd_written_bytes counter\nvufsd_written_bytes_total {}",
            load(&self.bytes_written)
        );
        let _ = writeln!(
            o,
            "# TYPE vufsd_requests_in_flight gauge\nvufsd_requests_in_flight {}",
            load(&self.in_flight)
        );
        let _ = writeln!(
            o,
            "# TYPE vufsd_requests_in_flight_max gauge\nvufsd_requests_in_flight_max {}",
            load(&self.max_in_flight)
        );
        let _ = writeln!(o, "# TYPE vufsd_inodes gauge\nvufsd_inodes {}", h.inodes);
        let _ = writeln!(o, "# TYPE vufsd_handles gauge\nvufsd_handles {}", h.handles);
        let _ = writeln!(
            o,
            "# TYPE vufsd_inode_fds gauge\nvufsd_inode_fds {}",
            h.inode_fds
        );
        let _ = writeln!(
            o,
            "# TYPE vufsd_inode_fd_budget gauge\nvufsd_inode_fd_budget {}",
            h.inode_fd_budget
        );
        let _ = writeln!(o, "# TYPE vufsd_open_fds gauge\nvufsd_open_fds {}", h.fds);
        let _ = writeln!(
            o,
            "# TYPE vufsd_open_fds_limit gauge\nvufsd_open_fds_limit {}",
            h.fd_limit
        );
        let _ = writeln!(o, "# TYPE vufsd_noatime_opens counter");
        let (a, m, r) = h.noatime;
        let _ = writeln!(o, "vufsd_noatime_opens_total{{decision=\"honoured\"}} {a}");
        let _ = writeln!(o, "vufsd_noatime_opens_total{{decision=\"masked\"}} {m}");
        let _ = writeln!(o, "vufsd_noatime_opens_total{{decision=\"retried\"}} {r}");
        o.push_str("# EOF\n");
        o
    }

    /// A few lines for the log (SIGUSR1).
    pub fn summary(&self, h: &Holdings) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let total: u64 = self.requests.iter().map(load).sum();
        let errors: u64 = self.errors.iter().map(load).sum();
        let mut busiest: Vec<(usize, u64)> = (0..OPCODES)
            .map(|op| (op, load(&self.requests[op])))
            .filter(|(_, n)| *n > 0)
            .collect();
        busiest.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let ops: Vec<String> = busiest
            .iter()
            .take(8)
            .map(|(op, n)| {
                let p = |q| {
                    self.quantile(*op, q)
                        .map_or("-".into(), |s| format!("{:.0}us", s * 1e6))
                };
                format!(
                    "{} {n} (p50<={} p99<={})",
                    opcode_name(*op),
                    p(0.5),
                    p(0.99)
                )
            })
            .collect();
        format!(
            "stats: {total} requests, {errors} errors, {} bytes read, {} written; {} inodes ({} fds of a budget of {}), {} handles, {} of {} fds open; O_NOATIME {}/{}/{} honoured/masked/retried; {}",
            load(&self.bytes_read),
            load(&self.bytes_written),
            h.inodes,
            h.inode_fds,
            h.inode_fd_budget,
            h.handles,
            h.fds,
            h.fd_limit,
            h.noatime.0,
            h.noatime.1,
            h.noatime.2,
            ops.join(", ")
        )
    }
}

/// Answer every connection on `listener` with `report()` (the OpenMetrics text), then close
/// it: `vufsd --print-stats SOCKET`, `socat - UNIX-CONNECT:SOCKET`, or a scraper. On a thread
/// of its own. The report (a few KiB) fits in the socket's buffer, so a client that never
/// reads does not hold the thread (and could hold only it, never the daemon).
pub fn serve(
    listener: std::os::unix::net::UnixListener,
    report: impl Fn() -> String + Send + 'static,
) -> std::io::Result<()> {
    use std::io::Write;
    std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.write_all(report().as_bytes());
            }
        })
        .map(drop)
}

/// `vufsd --print-stats SOCKET`: what the daemon behind SOCKET reports.
pub fn fetch(socket: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut conn = std::os::unix::net::UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_double_from_a_microsecond() {
        assert_eq!(bucket(Duration::from_nanos(300)), 0);
        assert_eq!(bucket(Duration::from_micros(1)), 0);
        assert_eq!(bucket(Duration::from_micros(2)), 1);
        assert_eq!(bucket(Duration::from_micros(3)), 2);
        assert_eq!(bucket(Duration::from_micros(4)), 2);
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
        assert_eq!(bucket_le(0), Some(1e-6));
        assert_eq!(bucket_le(BUCKETS - 1), None);
    }

    #[test]
    fn a_report_counts_and_histograms_per_opcode() {
        let s = Stats::default();
        let t = s.begin();
        s.end(t, 1, 0, 0, 0);
        let t = s.begin();
        s.end(t, 1, libc::ENOENT, 0, 0);
        let t = s.begin();
        s.end(t, 15, 0, 4096, 0);
        let text = s.openmetrics(&Holdings::default());
        assert!(
            text.contains("vufsd_requests_total{opcode=\"lookup\"} 2"),
            "{text}"
        );
        assert!(text.contains("vufsd_errors_total{errno=\"2\"} 1"), "{text}");
        assert!(text.contains("vufsd_read_bytes_total 4096"), "{text}");
        assert!(
            text.contains("vufsd_request_seconds_count{opcode=\"read\"} 1"),
            "{text}"
        );
        assert!(text.contains("le=\"+Inf\"} 2"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert!(s
            .summary(&Holdings::default())
            .contains("3 requests, 1 errors"));
    }
}

//! What a daemon under test costs the host, read from `/proc/PID`: resident memory, open fds,
//! threads, and CPU time.
//!
//! CPU time is the sum of every thread's `schedstat` run time (nanoseconds), not `utime` +
//! `stime` from `/proc/PID/stat`: those tick at 100 Hz, too coarse to divide by the ops of a
//! few-second run.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::workload::Phase;

/// One reading of a process's resource use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident set size (VmRSS), KiB.
    pub rss_kb: u64,
    /// The private part of it (RssAnon: heap, stacks), KiB; the rest is mostly the binary's and
    /// the shared libraries' pages, which other processes share.
    pub anon_kb: u64,
    /// Open file descriptors (entries of /proc/PID/fd).
    pub fds: u64,
    /// Threads (entries of /proc/PID/task).
    pub threads: u64,
    /// CPU time of the live threads, nanoseconds.
    pub cpu_ns: u64,
}

fn proc_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

fn read(p: &Path) -> Result<String> {
    fs::read_to_string(p).map_err(|e| Error::io(format!("read {}", p.display()), e))
}

fn count_entries(p: &Path) -> Result<u64> {
    let rd = fs::read_dir(p).map_err(|e| Error::io(format!("readdir {}", p.display()), e))?;
    Ok(rd.filter(|e| e.is_ok()).count() as u64)
}

/// A "Key:   123 kB" field of /proc/PID/status, in KiB.
fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Run time in ns: the first field of /proc/PID/task/TID/schedstat.
fn parse_schedstat_ns(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

/// Reads `pid`'s current resource use.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let dir = proc_dir(pid);
    let status = read(&dir.join("status"))?;
    let field = |key: &str| {
        parse_status_kb(&status, key)
            .ok_or_else(|| Error::Config(format!("no {key} in /proc/{pid}/status")))
    };
    let (rss_kb, anon_kb) = (field("VmRSS")?, field("RssAnon")?);
    let fds = count_entries(&dir.join("fd"))?;
    let tasks = dir.join("task");
    let rd =
        fs::read_dir(&tasks).map_err(|e| Error::io(format!("readdir {}", tasks.display()), e))?;
    let (mut threads, mut cpu_ns) = (0, 0);
    for t in rd.flatten() {
        // A thread may exit between readdir and read: it simply no longer counts.
        if let Some(ns) = fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .as_deref()
            .and_then(parse_schedstat_ns)
        {
            threads += 1;
            cpu_ns += ns;
        }
    }
    Ok(ProcSample {
        rss_kb,
        anon_kb,
        fds,
        threads,
        cpu_ns,
    })
}

/// CPU time (user + system) this process has used, threads that exited included, ns.
pub fn self_cpu_ns() -> Result<u64> {
    // SAFETY: getrusage only writes the struct we pass, which is plain data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Err(Error::last_os("getrusage"));
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    Ok(ns(ru.ru_utime) + ns(ru.ru_stime))
}

/// Readings of a daemon at the [`Phase`]s of one workload run.
#[derive(Debug)]
pub struct Watch {
    pid: u32,
    start: Option<ProcSample>,
    peak: Option<ProcSample>,
    forgotten: Option<ProcSample>,
    /// The first failed reading: the daemon may have died, which the run reports itself.
    error: Option<Error>,
}

impl Watch {
    /// Watches process `pid`.
    pub fn new(pid: u32) -> Self {
        Watch {
            pid,
            start: None,
            peak: None,
            forgotten: None,
            error: None,
        }
    }

    /// An observer for [`crate::workload::run_observed`].
    pub fn observe(&mut self, phase: Phase) {
        let slot = match phase {
            Phase::Start => &mut self.start,
            Phase::Peak => &mut self.peak,
            Phase::Forgotten => &mut self.forgotten,
        };
        match sample(self.pid) {
            Ok(s) => *slot = Some(s),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// The readings, or the first error.
    pub fn finish(self) -> Result<WatchReport> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let missing = || Error::Config("a phase was never observed".into());
        let (start, peak) = (
            self.start.ok_or_else(missing)?,
            self.peak.ok_or_else(missing)?,
        );
        Ok(WatchReport {
            cpu_ns: peak.cpu_ns.saturating_sub(start.cpu_ns),
            peak,
            forgotten: self.forgotten.ok_or_else(missing)?,
        })
    }
}

/// What a daemon used during one workload run.
#[derive(Debug, Clone, Copy)]
pub struct WatchReport {
    /// CPU time of the measured phase (all threads), ns.
    pub cpu_ns: u64,
    /// At the end of the measured phase, before any FORGET.
    pub peak: ProcSample,
    /// After every reference was forgotten.
    pub forgotten: ProcSample,
}

impl WatchReport {
    /// JSON members (no braces) to merge into a run's JSON object.
    pub fn json_members(&self) -> String {
        format!(
            concat!(
                "\"daemon_cpu_ms\":{:.3},\"daemon_threads\":{},",
                "\"daemon_rss_kb_peak\":{},\"daemon_anon_kb_peak\":{},\"daemon_fds_peak\":{},",
                "\"daemon_rss_kb_forgotten\":{},\"daemon_fds_forgotten\":{}"
            ),
            self.cpu_ns as f64 / 1e6,
            self.peak.threads,
            self.peak.rss_kb,
            self.peak.anon_kb,
            self.peak.fds,
            self.forgotten.rss_kb,
            self.forgotten.fds,
        )
    }
}

impl ProcSample {
    /// One JSON object describing this reading, labelled `what`.
    pub fn json(&self, what: &str) -> String {
        format!(
            "{{\"sample\":\"{what}\",\"rss_kb\":{},\"anon_kb\":{},\"fds\":{},\"threads\":{},\"cpu_ms\":{:.3}}}",
            self.rss_kb,
            self.anon_kb,
            self.fds,
            self.threads,
            self.cpu_ns as f64 / 1e6
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_schedstat() {
        let status = "Name:\tx\nVmRSS:\t    6212 kB\nRssAnon:\t 444 kB\nRssAnonX:\t1 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(6212));
        assert_eq!(parse_status_kb(status, "RssAnon"), Some(444));
        assert_eq!(parse_status_kb("Name:\tx\n", "VmRSS"), None);
        assert_eq!(parse_schedstat_ns("123456 789 10\n"), Some(123_456));
        assert_eq!(parse_schedstat_ns(""), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("sample self");
        assert!(s.rss_kb > 0 && s.fds > 0 && s.threads > 0, "{s:?}");
        let mut w = Watch::new(std::process::id());
        for p in [Phase::Start, Phase::Peak, Phase::Forgotten] {
            w.observe(p);
        }
        let r = w.finish().expect("all phases observed");
        assert!(r.json_members().contains("\"daemon_fds_peak\":"));
        assert!(s.json("idle").starts_with("{\"sample\":\"idle\""));
        assert!(self_cpu_ns().expect("getrusage") > 0);
    }
}

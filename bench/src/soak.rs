//! A long run of the `mixed` workload in rounds, watching whether the daemon gives back what
//! it takes: after each round (every lookup forgotten, every file closed) its resident memory,
//! open fds and threads are sampled, and each round's latency is kept, so that a leak or a
//! slowdown shows as a trend rather than hiding in an average.

use std::sync::Arc;
use std::time::Duration;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::procstat::{self, ProcSample};
use crate::workload::{run_observed, Phase, RunConfig, Workload};

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Rounds; the daemon is sampled after each.
    pub rounds: usize,
    /// Operations (of several requests each) per round.
    pub ops_per_round: u64,
    /// Requests in flight.
    pub depth: usize,
    /// Request queues they are spread over.
    pub queues: u16,
    /// The tree (see `prepare::prepare_mixed`), relative to the shared root.
    pub dir: String,
}

/// One round.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Its number, from 0.
    pub round: usize,
    /// FUSE requests sent this round.
    pub requests: u64,
    /// How long it took.
    pub elapsed: Duration,
    /// Operation latency, median.
    pub p50: Duration,
    /// Operation latency, 99th percentile.
    pub p99: Duration,
    /// The daemon after the round, everything forgotten.
    pub after: ProcSample,
}

impl Round {
    /// One JSON object.
    pub fn json(&self) -> String {
        format!(
            "{{\"round\":{},\"requests\":{},\"elapsed_s\":{:.3},\"p50_us\":{:.1},\"p99_us\":{:.1},\"rss_kb\":{},\"anon_kb\":{},\"fds\":{},\"threads\":{}}}",
            self.round,
            self.requests,
            self.elapsed.as_secs_f64(),
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6,
            self.after.rss_kb,
            self.after.anon_kb,
            self.after.fds,
            self.after.threads
        )
    }
}

/// Run the soak against the daemon `pid` behind `dev`; `each` sees every round as it ends.
pub fn soak(
    dev: &Arc<Device>,
    pid: u32,
    cfg: &SoakConfig,
    each: &mut dyn FnMut(&Round),
) -> Result<Vec<Round>> {
    let run = RunConfig {
        workload: Workload::Mixed,
        depth: cfg.depth,
        queues: cfg.queues,
        duration: None,
        ops: Some(cfg.ops_per_round),
    };
    let mut rounds = Vec::with_capacity(cfg.rounds);
    for round in 0..cfg.rounds {
        let mut after = None;
        let mut sample_err = None;
        let s = run_observed(dev, &cfg.dir, &run, &mut |phase| {
            if phase == Phase::Forgotten {
                match procstat::sample(pid) {
                    Ok(s) => after = Some(s),
                    Err(e) => sample_err = Some(e),
                }
            }
        })?;
        if let Some(e) = sample_err {
            return Err(e);
        }
        let after = after.ok_or_else(|| Error::Config("the daemon was not sampled".into()))?;
        let r = Round {
            round,
            requests: s.requests,
            elapsed: s.elapsed,
            p50: s.ops.quantile(0.5),
            p99: s.ops.quantile(0.99),
            after,
        };
        each(&r);
        rounds.push(r);
    }
    Ok(rounds)
}

/// What a soak's rounds say about leaks and drift: each problem as a sentence, none if it ran
/// clean. The first round warms allocators and caches up, so the baseline is the second.
pub fn verdict(rounds: &[Round]) -> Vec<String> {
    let mut problems = Vec::new();
    if rounds.len() < 4 {
        return vec![format!(
            "{} rounds are too few to judge (4 at least)",
            rounds.len()
        )];
    }
    let (base, last) = (&rounds[1].after, &rounds[rounds.len() - 1].after);
    if last.fds > base.fds + 2 {
        problems.push(format!("open fds grew from {} to {}", base.fds, last.fds));
    }
    if last.threads != base.threads {
        problems.push(format!(
            "threads went from {} to {}",
            base.threads, last.threads
        ));
    }
    let allowed = (base.anon_kb / 4).max(4096);
    if last.anon_kb > base.anon_kb + allowed {
        problems.push(format!(
            "private memory grew from {} KiB to {} KiB (more than {allowed} KiB)",
            base.anon_kb, last.anon_kb
        ));
    }
    let median = |rs: &[Round]| {
        let mut v: Vec<Duration> = rs.iter().map(|r| r.p99).collect();
        v.sort();
        v[v.len() / 2]
    };
    let k = (rounds.len() / 3).max(1);
    let (early, late) = (
        median(&rounds[1..1 + k]),
        median(&rounds[rounds.len() - k..]),
    );
    if late > early * 3 {
        problems.push(format!("p99 latency drifted from {early:?} to {late:?}"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(i: usize, fds: u64, anon_kb: u64, p99_us: u64) -> Round {
        Round {
            round: i,
            requests: 1000,
            elapsed: Duration::from_secs(1),
            p50: Duration::from_micros(10),
            p99: Duration::from_micros(p99_us),
            after: ProcSample {
                rss_kb: anon_kb + 3000,
                anon_kb,
                fds,
                threads: 5,
                cpu_ns: 0,
            },
        }
    }

    #[test]
    fn a_clean_soak_has_no_problems_and_leaks_and_drift_are_named() {
        let clean: Vec<Round> = (0..6).map(|i| round(i, 20, 8000, 100)).collect();
        assert!(verdict(&clean).is_empty());
        let mut leaky = clean.clone();
        leaky[5].after.fds = 40;
        leaky[5].after.anon_kb = 30000;
        let p = verdict(&leaky);
        assert!(p.iter().any(|s| s.contains("fds")) && p.iter().any(|s| s.contains("memory")));
        let slow: Vec<Round> = (0..6).map(|i| round(i, 20, 8000, 100 << i)).collect();
        assert!(verdict(&slow).iter().any(|s| s.contains("drifted")));
        assert!(!verdict(&clean[..2]).is_empty());
    }
}

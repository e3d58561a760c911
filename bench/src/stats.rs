//! Latency histogram (log-linear buckets, under 1% error) and run summaries.

use std::time::Duration;

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

/// Latency histogram in nanoseconds: exact below 128 ns, then 128 buckets per power of two.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; (64 - SUB_BITS as usize + 1) * SUB as usize],
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let sub = (v >> shift) & (SUB - 1);
    ((shift as u64 + 1) * SUB + sub) as usize
}

fn bucket_value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let sub = i % SUB;
    // Midpoint of the bucket.
    ((SUB + sub) << shift) + ((1u64 << shift) >> 1)
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(b) = self.buckets.get_mut(bucket_of(ns)) {
            *b += 1;
        }
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
        self.count += o.count;
        self.sum_ns += o.sum_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q`-quantile (0.0..=1.0).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_nanos(bucket_value(i).min(self.max_ns));
            }
        }
        Duration::from_nanos(self.max_ns)
    }

    /// Mean latency.
    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos((self.sum_ns / u128::from(self.count)) as u64)
    }

    /// Largest latency.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }
}

/// The result of one benchmark run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Workload name.
    pub workload: String,
    /// "daemon" or "floor".
    pub mode: String,
    /// Requests in flight (or threads, for the floor).
    pub depth: usize,
    /// Request queues used.
    pub queues: usize,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// Operation latencies.
    pub ops: Histogram,
    /// FUSE requests sent (0 for the floor).
    pub requests: u64,
    /// Payload bytes moved (reads + writes).
    pub bytes: u64,
}

impl Summary {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        per_sec(self.ops.count(), self.elapsed)
    }

    /// FUSE requests per second.
    pub fn requests_per_sec(&self) -> f64 {
        per_sec(self.requests, self.elapsed)
    }

    /// MiB per second of payload.
    pub fn mib_per_sec(&self) -> f64 {
        per_sec(self.bytes, self.elapsed) / (1024.0 * 1024.0)
    }

    /// One human-readable line.
    pub fn human(&self) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let mut s = format!(
            "{:<15} {:<6} depth {:>3} queues {} | {:>8} ops in {:.2}s = {:>10.0} ops/s | p50 {:>8.1} us  p99 {:>8.1} us  max {:>9.1} us",
            self.workload,
            self.mode,
            self.depth,
            self.queues,
            self.ops.count(),
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            us(self.ops.quantile(0.5)),
            us(self.ops.quantile(0.99)),
            us(self.ops.max()),
        );
        if self.requests > 0 {
            s += &format!(" | {:.0} req/s", self.requests_per_sec());
        }
        if self.bytes > 0 {
            s += &format!(" | {:.1} MiB/s", self.mib_per_sec());
        }
        s
    }

    /// One JSON object (no external serializer needed: all fields are numbers or plain
    /// identifiers).
    pub fn json(&self) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        format!(
            concat!(
                "{{\"workload\":\"{}\",\"mode\":\"{}\",\"depth\":{},\"queues\":{},",
                "\"ops\":{},\"elapsed_s\":{:.6},\"ops_per_s\":{:.1},\"requests\":{},",
                "\"requests_per_s\":{:.1},\"bytes\":{},\"mib_per_s\":{:.2},",
                "\"p50_us\":{:.2},\"p90_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2},",
                "\"mean_us\":{:.2},\"max_us\":{:.2}}}"
            ),
            json_ident(&self.workload),
            json_ident(&self.mode),
            self.depth,
            self.queues,
            self.ops.count(),
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            self.requests,
            self.requests_per_sec(),
            self.bytes,
            self.mib_per_sec(),
            us(self.ops.quantile(0.5)),
            us(self.ops.quantile(0.9)),
            us(self.ops.quantile(0.99)),
            us(self.ops.quantile(0.999)),
            us(self.ops.mean()),
            us(self.ops.max()),
        )
    }
}

fn json_ident(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect()
}

fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for i in 1..=10_000u64 {
            h.record(Duration::from_nanos(i * 1000));
        }
        let p50 = h.quantile(0.5).as_nanos() as f64;
        let p99 = h.quantile(0.99).as_nanos() as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.01, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.01, "{p99}");
        assert_eq!(h.count(), 10_000);
        let mut g = Histogram::default();
        g.record(Duration::from_nanos(5));
        h.merge(&g);
        assert_eq!(h.quantile(0.0), Duration::from_nanos(5));
    }
}

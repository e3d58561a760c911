//! What the always-on request statistics (docs/stats.md) cost per request: `Stats::begin` and
//! `Stats::end`, as the dispatcher calls them around every request, timed in a loop on one
//! thread and on two threads sharing one `Stats` (two request queues served at once, the
//! counters' cache lines bouncing between cores). The reply's errno that the dispatcher also
//! reads back for them is one 16-byte read of guest memory, not counted here.
//!
//!   cargo bench --bench stats_cost
//!
//! Compare with the daemon's CPU time per request in docs/performance.md (µs per op).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use vufsd::stats::Stats;

const N: u64 = 5_000_000;

fn run(stats: &Stats, n: u64) {
    for i in 0..n {
        let t0 = stats.begin();
        // LOOKUP, GETATTR and READ in turn, one in eight an error, READs with a payload.
        let opcode = [1u32, 3, 15][(i % 3) as usize];
        let errno = if i % 8 == 0 { 2 } else { 0 };
        let read = if opcode == 15 { 4096 } else { 0 };
        stats.end(black_box(t0), opcode, errno, read, 0);
    }
}

fn main() {
    let stats = Stats::default();
    run(&stats, N / 10); // warm up
    let t = Instant::now();
    run(&stats, N);
    let one = t.elapsed().as_nanos() as f64 / N as f64;
    let shared = Arc::new(Stats::default());
    let t = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let s = shared.clone();
            std::thread::spawn(move || run(&s, N))
        })
        .collect();
    for th in threads {
        th.join().expect("a bench thread panicked");
    }
    // Each thread did N requests in that wall time.
    let two = t.elapsed().as_nanos() as f64 / N as f64;
    println!("stats per request: {one:.1} ns on one thread, {two:.1} ns each on two threads sharing them");
}

//! Runs inputs through the fuzz harness without libFuzzer (a stable toolchain is enough):
//! every file named, and every file in every directory named. Exits non-zero if any fails.
//!
//!     cargo run --release --bin fuzz-replay -- corpus/fuzz_request regressions/fuzz_request

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

fn main() {
    let mut files: Vec<PathBuf> = Vec::new();
    for arg in std::env::args_os().skip(1) {
        let p = PathBuf::from(arg);
        match std::fs::read_dir(&p) {
            Ok(rd) => {
                let mut v: Vec<_> = rd.flatten().map(|e| e.path()).collect();
                v.sort();
                files.extend(v);
            }
            Err(_) => files.push(p),
        }
    }
    let mut failed = 0;
    let mut ran = 0;
    for f in &files {
        // A running fuzzer may have reduced the file away since the directory was listed.
        let Ok(data) = std::fs::read(f) else {
            eprintln!("skipped (gone): {}", f.display());
            continue;
        };
        ran += 1;
        if catch_unwind(AssertUnwindSafe(|| vufsd_fuzz::harness::run(&data))).is_err() {
            eprintln!("FAILED: {}", f.display());
            failed += 1;
        }
    }
    println!("{} passed, {failed} failed", ran - failed);
    std::process::exit(i32::from(failed > 0));
}

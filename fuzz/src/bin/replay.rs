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
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if catch_unwind(AssertUnwindSafe(|| vufsd_fuzz::harness::run(&data))).is_err() {
            eprintln!("FAILED: {}", f.display());
            failed += 1;
        }
    }
    println!("{} passed, {failed} failed", files.len() - failed);
    std::process::exit(i32::from(failed > 0));
}

//! Creates the benchmark trees in a directory, idempotently.
//!
//! Layout (names are fixed; the workloads rely on them):
//! - `dir1000/f0000..f0999`: 1,000 files of 4 KiB (lookup-getattr, readdirplus, open-read-4k)
//! - `big1g`: a 1 GiB file of non-zero data (seq-read-1m, rand-read-4k)
//! - `store/<hash>-pkgNNN/{bin,lib,share}/...`: 250 packages x 80 files = 20,000 small files
//!   of 64 B..32 KiB (store-walk)
//! - `scratch/`: where create-unlink and seq-write-1m create their files
//!
//! Each part is marked complete by a `.prepared-<part>` file next to it, so an interrupted
//! run is redone on the next call and a finished one is skipped.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Files in `dir1000`.
pub const DIR1000_FILES: usize = 1000;
/// Size of each `dir1000` file.
pub const DIR1000_FILE_SIZE: usize = 4096;
/// Size of `big1g`.
pub const BIG_FILE_SIZE: u64 = 1 << 30;
/// Packages in `store`.
pub const STORE_PACKAGES: usize = 250;
/// (subdirectory, files) per package.
pub const STORE_LAYOUT: [(&str, usize); 3] = [("bin", 8), ("lib", 40), ("share", 32)];

/// Name of file `i` in `dir1000`.
pub fn dir1000_name(i: usize) -> String {
    format!("f{i:04}")
}

/// What [`prepare`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrepareReport {
    /// Parts created this time.
    pub created: Vec<String>,
    /// Parts that were already complete.
    pub skipped: Vec<String>,
}

fn io(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let what = format!("{what} {}", p.display());
    move |e| Error::io(what, e)
}

/// Deterministic xorshift, for file sizes and contents.
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn part(
    dir: &Path,
    name: &str,
    report: &mut PrepareReport,
    make: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let marker = dir.join(format!(".prepared-{name}"));
    if marker.exists() {
        report.skipped.push(name.to_string());
        return Ok(());
    }
    make()?;
    File::create(&marker).map_err(io("create", &marker))?;
    report.created.push(name.to_string());
    Ok(())
}

/// Creates every part that is not already complete under `dir` (created if missing).
pub fn prepare(dir: &Path) -> Result<PrepareReport> {
    fs::create_dir_all(dir).map_err(io("mkdir", dir))?;
    let mut report = PrepareReport::default();
    part(dir, "dir1000", &mut report, || {
        make_dir1000(&dir.join("dir1000"))
    })?;
    part(dir, "big1g", &mut report, || make_big(&dir.join("big1g")))?;
    part(dir, "store", &mut report, || make_store(&dir.join("store")))?;
    let scratch = dir.join("scratch");
    fs::create_dir_all(&scratch).map_err(io("mkdir", &scratch))?;
    Ok(report)
}

/// Only what the `mixed` workload needs (`dir1000/`, `scratch/`): a soak's tree, without the
/// 1 GiB file and the store.
pub fn prepare_mixed(dir: &Path) -> Result<PrepareReport> {
    fs::create_dir_all(dir).map_err(io("mkdir", dir))?;
    let mut report = PrepareReport::default();
    part(dir, "dir1000", &mut report, || {
        make_dir1000(&dir.join("dir1000"))
    })?;
    let scratch = dir.join("scratch");
    fs::create_dir_all(&scratch).map_err(io("mkdir", &scratch))?;
    Ok(report)
}

fn make_dir1000(d: &Path) -> Result<()> {
    fs::create_dir_all(d).map_err(io("mkdir", d))?;
    let mut buf = vec![0u8; DIR1000_FILE_SIZE];
    for i in 0..DIR1000_FILES {
        buf.fill((i % 251) as u8 + 1);
        let p = d.join(dir1000_name(i));
        fs::write(&p, &buf).map_err(io("write", &p))?;
    }
    Ok(())
}

fn make_big(p: &Path) -> Result<()> {
    let mut f = File::create(p).map_err(io("create", p))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..(BIG_FILE_SIZE >> 20) {
        for w in chunk.chunks_mut(8) {
            w.copy_from_slice(&xorshift(&mut seed).to_le_bytes());
        }
        f.write_all(&chunk).map_err(io("write", p))?;
    }
    f.sync_all().map_err(io("fsync", p))
}

fn make_store(d: &Path) -> Result<()> {
    let mut seed = 0x1234_5678_9abc_def1u64;
    let content = vec![b'x'; 32 * 1024];
    for pkg in 0..STORE_PACKAGES {
        let hash = format!("{:016x}", xorshift(&mut seed));
        let pdir = d.join(format!("{hash}-pkg{pkg:03}"));
        for (sub, n) in STORE_LAYOUT {
            let sdir = pdir.join(sub);
            fs::create_dir_all(&sdir).map_err(io("mkdir", &sdir))?;
            for i in 0..n {
                // Sizes log-distributed between 64 B and 32 KiB.
                let size = 64usize << (xorshift(&mut seed) % 10);
                let p = sdir.join(format!("file{i:02}"));
                fs::write(&p, &content[..size]).map_err(io("write", &p))?;
            }
        }
    }
    Ok(())
}

/// Files the store part holds.
pub fn store_files() -> usize {
    STORE_PACKAGES * STORE_LAYOUT.iter().map(|(_, n)| n).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_has_20k_files() {
        assert_eq!(store_files(), 20_000);
    }
}

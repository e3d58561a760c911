//! A tree far bigger than a daemon's open-file limit, and a walk over all of it through the
//! daemon as a guest with a large dentry cache makes it: every directory and file looked up
//! and never forgotten, then a sample revisited once the daemon has had to let go of most fds.
//!
//! Layout: `tNNN/mNN/fNNN`, `top` × `mid` directories of `files` files each. The first file
//! of each leaf directory (`f000`) holds its own relative path; the others are empty (a tree
//! of a million inodes stays a few tens of MiB on disk).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::FuseClient;

/// How many directories and files the tree has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Top-level directories.
    pub top: usize,
    /// Directories in each top-level one.
    pub mid: usize,
    /// Files in each of those.
    pub files: usize,
}

impl Shape {
    /// A tree of about `n` files, 100 to a directory, 100 directories to a top-level one.
    pub fn for_files(n: usize) -> Shape {
        let leaves = n.div_ceil(100).max(1);
        let mid = leaves.min(100);
        Shape {
            top: leaves.div_ceil(mid),
            mid,
            files: 100,
        }
    }

    /// Files in the tree.
    pub fn file_count(&self) -> usize {
        self.top * self.mid * self.files
    }

    /// Directories in the tree (its root not counted).
    pub fn dir_count(&self) -> usize {
        self.top * (1 + self.mid)
    }

    fn leaf(t: usize, m: usize) -> String {
        format!("t{t:03}/m{m:02}")
    }
}

fn file_name(f: usize) -> String {
    format!("f{f:03}")
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

fn fail(msg: String) -> Error {
    Error::Config(msg)
}

/// Create the tree under `root` (which must exist), unless `root/.complete` says it is there.
pub fn make(root: &Path, shape: Shape) -> Result<()> {
    let marker = root.join(".complete");
    if marker.exists() {
        return Ok(());
    }
    for t in 0..shape.top {
        for m in 0..shape.mid {
            let leaf = Shape::leaf(t, m);
            let dir = root.join(&leaf);
            fs::create_dir_all(&dir).map_err(io(format!("mkdir {}", dir.display())))?;
            for f in 0..shape.files {
                let p = dir.join(file_name(f));
                let body = if f == 0 {
                    format!("{leaf}/f000")
                } else {
                    String::new()
                };
                fs::write(&p, body).map_err(io(format!("create {}", p.display())))?;
            }
        }
    }
    fs::write(&marker, b"").map_err(io(format!("create {}", marker.display())))
}

/// What [`walk`] did.
#[derive(Clone, Debug, Default)]
pub struct WalkReport {
    /// Inodes looked up (and held: nothing was forgotten).
    pub inodes: u64,
    /// Seconds the first pass took.
    pub walk_secs: f64,
    /// Files revisited (GETATTR, OPEN, READ, RELEASE) after the walk.
    pub revisited: u64,
    /// Seconds the revisit took.
    pub revisit_secs: f64,
}

/// Look every directory and file of the tree under `dir` (the tree's path relative to the
/// share; `host` is the same directory on the host, for checks) up through `c`, checking each
/// entry's type and size and the inode number and content of each leaf's `f000`; then
/// revisit every `f000`. `progress` is called after each top-level directory of the walk.
pub fn walk(
    c: &FuseClient,
    dir: &str,
    host: &Path,
    shape: Shape,
    progress: &mut dyn FnMut(usize, &WalkReport),
) -> Result<WalkReport> {
    let mut report = WalkReport::default();
    let base = if dir.is_empty() {
        crate::fuse_abi::FUSE_ROOT_ID
    } else {
        c.lookup_path(dir)?.nodeid
    };
    let mut sample = Vec::with_capacity(shape.top * shape.mid);
    let t0 = Instant::now();
    for t in 0..shape.top {
        let tn = c.lookup(base, &format!("t{t:03}"))?;
        check_dir(&tn, &format!("t{t:03}"))?;
        report.inodes += 1;
        for m in 0..shape.mid {
            let leaf = Shape::leaf(t, m);
            let mn = c.lookup(tn.nodeid, &format!("m{m:02}"))?;
            check_dir(&mn, &leaf)?;
            report.inodes += 1;
            for f in 0..shape.files {
                let name = file_name(f);
                let e = c
                    .lookup(mn.nodeid, &name)
                    .map_err(|e| fail(format!("{leaf}/{name}: {e}")))?;
                report.inodes += 1;
                let want = if f == 0 { leaf.len() as u64 + 5 } else { 0 };
                if e.attr.mode & libc::S_IFMT != libc::S_IFREG || e.attr.size != want {
                    return Err(fail(format!(
                        "{leaf}/{name}: wrong attributes {:?}",
                        e.attr
                    )));
                }
                if f == 0 {
                    check_file(c, e.nodeid, host, &leaf)?;
                    sample.push((e.nodeid, leaf.clone()));
                }
            }
        }
        progress(t, &report);
    }
    report.walk_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for (node, leaf) in &sample {
        check_file(c, *node, host, leaf)?;
        report.revisited += 1;
    }
    report.revisit_secs = t1.elapsed().as_secs_f64();
    Ok(report)
}

fn check_dir(e: &crate::fuse_abi::EntryOut, what: &str) -> Result<()> {
    if e.attr.mode & libc::S_IFMT == libc::S_IFDIR {
        Ok(())
    } else {
        Err(fail(format!("{what}: not a directory: {:?}", e.attr)))
    }
}

/// `node` is `leaf/f000`: the host's inode number, and its content, read through an open.
fn check_file(c: &FuseClient, node: u64, host: &Path, leaf: &str) -> Result<()> {
    let rel = format!("{leaf}/f000");
    let ino = fs::symlink_metadata(host.join(&rel))
        .map_err(io(format!("stat {rel}")))?
        .ino();
    let attr = c
        .getattr(node)
        .map_err(|e| fail(format!("{rel}: GETATTR: {e}")))?;
    if attr.attr.ino != ino {
        return Err(fail(format!(
            "{rel}: node {node} answers for inode {}, the host's is {ino}",
            attr.attr.ino
        )));
    }
    let fh = c
        .open(node, libc::O_RDONLY)
        .map_err(|e| fail(format!("{rel}: OPEN: {e}")))?
        .fh;
    let data = c.read(node, fh, 0, 64)?;
    c.release(node, fh)?;
    if data != rel.as_bytes() {
        return Err(fail(format!(
            "{rel}: read {:?}",
            String::from_utf8_lossy(&data)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_hold_what_they_say() {
        let s = Shape::for_files(1_000_000);
        assert_eq!((s.top, s.mid, s.files), (100, 100, 100));
        assert_eq!(s.file_count() + s.dir_count(), 1_010_100);
        let s = Shape::for_files(100_000);
        assert_eq!(s.file_count(), 100_000);
        assert_eq!(s.dir_count(), 1_010);
        assert_eq!(Shape::for_files(150).file_count(), 200);
    }
}

//! The directory the fuzzed daemon serves, and what lies beside it.
//!
//! ```text
//! <base>/vufsd-fuzz-<pid>/
//!     share/            served; rebuilt before every input
//!         hello.txt  empty  sub/inner.txt  sub/deeper/  fifo
//!         abs-escape -> <base>/.../canary/secret     (absolute, outside)
//!         rel-escape -> ../canary/secret             (relative, outside)
//!         up -> ..                                   (a directory outside)
//!     canary/secret     must never change
//!     canary-file       must never change
//! ```
//!
//! After every input the canaries' contents and the metadata of everything beside the share are
//! compared with a snapshot taken before it: any difference is a way out of the share.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const CANARY: &[u8] = b"CANARY: nothing in the guest may read or change this\n";

pub struct Share {
    root: PathBuf,
    share: PathBuf,
    before: Snapshot,
}

/// Metadata of the entries beside the share (and inside canary/), by relative path.
pub type Snapshot = BTreeMap<PathBuf, Meta>;

#[derive(Debug, PartialEq, Eq)]
pub struct Meta {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Option<Vec<u8>>,
}

impl Share {
    /// A fresh tree under `base`. Trees left by earlier fuzzer processes that are gone are
    /// removed first: the harness lives in a static, which is never dropped, and a finding ends
    /// the process where it stands.
    pub fn create(base: &Path) -> io::Result<Self> {
        remove_stale(base);
        let root = base.join(format!("vufsd-fuzz-{}", std::process::id()));
        if root.exists() {
            remove_tree(&root)?;
        }
        fs::create_dir_all(root.join("canary"))?;
        fs::write(root.join("canary/secret"), CANARY)?;
        fs::write(root.join("canary-file"), CANARY)?;
        let share = root.join("share");
        let mut s = Self {
            root,
            share,
            before: Snapshot::new(),
        };
        s.reset()?;
        s.before = s.snapshot()?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.share
    }

    /// Put the share back into its initial state.
    pub fn reset(&mut self) -> io::Result<()> {
        if fs::symlink_metadata(&self.share).is_ok() {
            remove_tree(&self.share)?;
        }
        let s = &self.share;
        fs::create_dir(s)?;
        fs::write(s.join("hello.txt"), b"hello, world\n")?;
        fs::write(s.join("empty"), b"")?;
        fs::create_dir_all(s.join("sub/deeper"))?;
        fs::write(s.join("sub/inner.txt"), vec![b'x'; 5000])?;
        symlink(self.root.join("canary/secret"), s.join("abs-escape"))?;
        symlink("../canary/secret", s.join("rel-escape"))?;
        symlink("..", s.join("up"))?;
        let fifo = CString::new(s.join("fifo").as_os_str().as_bytes())?;
        // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
        if unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn snapshot(&self) -> io::Result<Snapshot> {
        let mut snap = Snapshot::new();
        for dir in [self.root.clone(), self.root.join("canary")] {
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                let rel = path.strip_prefix(&self.root).unwrap_or(&path).to_path_buf();
                let md = fs::symlink_metadata(&path)?;
                let meta = if path == self.share {
                    // The share is rebuilt before every input, and its own mode and times are
                    // the guest's to change (it is the root of its filesystem): only that it is
                    // still a directory is compared.
                    Meta {
                        ino: 0,
                        mode: md.mode() & libc::S_IFMT,
                        uid: 0,
                        gid: 0,
                        size: 0,
                        nlink: 0,
                        mtime: (0, 0),
                        ctime: (0, 0),
                        content: None,
                    }
                } else {
                    Meta {
                        ino: md.ino(),
                        mode: md.mode(),
                        uid: md.uid(),
                        gid: md.gid(),
                        size: md.size(),
                        nlink: md.nlink(),
                        mtime: (md.mtime(), md.mtime_nsec()),
                        ctime: (md.ctime(), md.ctime_nsec()),
                        content: md.is_file().then(|| fs::read(&path)).transpose()?,
                    }
                };
                snap.insert(rel, meta);
            }
        }
        Ok(snap)
    }

    /// Panics (a fuzzer finding) if anything beside the share differs from the start.
    pub fn assert_outside_unchanged(&self) {
        let now = self
            .snapshot()
            .unwrap_or_else(|e| panic!("cannot list the share's surroundings: {e}"));
        if now != self.before {
            for (k, v) in &now {
                if self.before.get(k) != Some(v) {
                    eprintln!(
                        "changed or new beside the share: {k:?}: {v:?} (was {:?})",
                        self.before.get(k)
                    );
                }
            }
            for k in self.before.keys().filter(|k| !now.contains_key(*k)) {
                eprintln!("gone from beside the share: {k:?}");
            }
            panic!("something outside the share changed");
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let _ = remove_tree(&self.root);
    }
}

fn remove_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("vufsd-fuzz-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = remove_tree(&e.path());
        }
    }
}

/// `rm -rf`, also through what a guest may have left behind as root: directories without
/// permissions are fine for root, but immutable or append-only flags (FS_IOC_SETFLAGS) must be
/// cleared first.
fn remove_tree(path: &Path) -> io::Result<()> {
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    clear_flags(path);
    fs::remove_dir_all(path)
}

fn clear_flags(path: &Path) {
    const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
    let Ok(md) = fs::symlink_metadata(path) else {
        return;
    };
    if md.is_dir() || md.is_file() {
        if let Ok(f) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(path)
        {
            let zero: libc::c_int = 0;
            // SAFETY: FS_IOC_SETFLAGS reads one int from the pointer; `f` is an open fd.
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), FS_IOC_SETFLAGS, &zero) };
        }
    }
    if md.is_dir() {
        if let Ok(rd) = fs::read_dir(path) {
            for e in rd.flatten() {
                clear_flags(&e.path());
            }
        }
    }
}

//! The tree a trace starts from, worked out from the trace itself: every name a request found
//! (LOOKUP, READDIRPLUS) or removed or renamed before the trace created it was there at the
//! start, with the type and size its first reply gave. File contents are not in a trace: files
//! are made of zeros (sparse), symlinks point where READLINK said, or nowhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::record::{name_offset, Record};
use crate::error::{Error, Result};
use crate::fuse_abi::opcode as op;
use crate::ops::parse_dirents;

/// What a name was at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of this size.
    File(u64),
    /// A directory.
    Dir,
    /// A symlink to this target.
    Symlink(Vec<u8>),
}

/// Paths (relative, '/'-separated, bytes) to what they were when the trace began.
#[derive(Debug, Default)]
pub struct Tree {
    /// The starting tree.
    pub entries: BTreeMap<Vec<u8>, Kind>,
}

/// fuse_attr's mode and size inside an entry_out.
fn entry_attr(entry: &[u8]) -> Option<(u32, u64)> {
    let size = u64::from_le_bytes(entry.get(48..56)?.try_into().ok()?);
    let mode = u32::from_le_bytes(entry.get(100..104)?.try_into().ok()?);
    Some((mode, size))
}

fn kind_of(mode: u32, size: u64) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink(Vec::new()),
        _ => Kind::File(size),
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

struct Walk {
    tree: Tree,
    /// Recorded node id to its path.
    paths: HashMap<u64, Vec<u8>>,
    /// Paths the trace itself created (not there at the start).
    created: HashSet<Vec<u8>>,
}

impl Walk {
    /// `path` was found, as `kind`: there at the start unless the trace made it.
    fn found(&mut self, path: Vec<u8>, kind: Kind, node: Option<u64>) {
        if !self.created.contains(&path) {
            self.tree.entries.entry(path.clone()).or_insert(kind);
        }
        if let Some(n) = node {
            self.paths.insert(n, path);
        }
    }

    fn parent(&self, r: &Record) -> Option<Vec<u8>> {
        self.paths.get(&r.nodeid()).cloned()
    }

    fn record(&mut self, r: &Record) {
        let ok = r.errno() == Some(0);
        let opc = r.opcode();
        match opc {
            op::LOOKUP if ok => {
                let (Some(dir), Some(name)) = (self.parent(r), r.name(0)) else {
                    return;
                };
                if let Some((mode, size)) = entry_attr(r.body()) {
                    self.found(join(&dir, name), kind_of(mode, size), r.entry_nodeid());
                }
            }
            op::READDIRPLUS if ok => {
                let Some(dir) = self.parent(r) else { return };
                let Ok(ents) = parse_dirents(r.body(), true) else {
                    return;
                };
                for e in ents {
                    if e.name == b"." || e.name == b".." {
                        continue;
                    }
                    let Some(en) = e.entry.filter(|en| en.nodeid != 0) else {
                        continue;
                    };
                    let kind = kind_of(en.attr.mode, en.attr.size);
                    self.found(join(&dir, &e.name), kind, Some(en.nodeid));
                }
            }
            op::MKNOD | op::MKDIR | op::SYMLINK | op::CREATE | op::LINK if ok => {
                let (Some(dir), Some(name)) = (self.parent(r), r.name(name_offset(opc))) else {
                    return;
                };
                let path = join(&dir, name);
                if !self.tree.entries.contains_key(&path) {
                    self.created.insert(path.clone());
                }
                if let Some(n) = r.entry_nodeid() {
                    self.paths.insert(n, path);
                }
            }
            op::CREATE | op::MKDIR | op::MKNOD | op::SYMLINK if r.errno() == Some(libc::EEXIST) => {
                let (Some(dir), Some(name)) = (self.parent(r), r.name(name_offset(opc))) else {
                    return;
                };
                let kind = if opc == op::MKDIR {
                    Kind::Dir
                } else {
                    Kind::File(0)
                };
                self.found(join(&dir, name), kind, None);
            }
            op::UNLINK | op::RMDIR => {
                let (Some(dir), Some(name)) = (self.parent(r), r.name(0)) else {
                    return;
                };
                let path = join(&dir, name);
                if ok {
                    let kind = if opc == op::RMDIR {
                        Kind::Dir
                    } else {
                        Kind::File(0)
                    };
                    self.found(path.clone(), kind, None);
                    self.created.insert(path);
                }
            }
            op::RENAME | op::RENAME2 if ok => {
                let off = name_offset(opc);
                let newdir = r
                    .args()
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes);
                let (Some(dir), Some(ndir), Some(old), Some(new)) = (
                    self.parent(r),
                    newdir.and_then(|n| self.paths.get(&n).cloned()),
                    r.name(off),
                    r.second_name(off),
                ) else {
                    return;
                };
                let (from, to) = (join(&dir, old), join(&ndir, new));
                self.found(from.clone(), Kind::File(0), None);
                // Everything known under the old name lives under the new one now.
                for p in self.paths.values_mut() {
                    if *p == from || p.starts_with(&[&from[..], b"/"].concat()) {
                        *p = [&to[..], &p[from.len()..]].concat();
                    }
                }
                self.created.insert(from);
                self.created.insert(to);
            }
            op::READLINK if ok => {
                let Some(path) = self.paths.get(&r.nodeid()) else {
                    return;
                };
                if let Some(Kind::Symlink(t)) = self.tree.entries.get_mut(path) {
                    if t.is_empty() {
                        *t = r.body().to_vec();
                    }
                }
            }
            _ => {}
        }
    }
}

/// The tree `records` (in start order) began from.
pub fn starting_tree(records: &[Record]) -> Tree {
    let mut w = Walk {
        tree: Tree::default(),
        paths: HashMap::from([(1, Vec::new())]),
        created: HashSet::new(),
    };
    for r in records {
        w.record(r);
    }
    // A name under a file (the file became a directory later, say) cannot be made: make its
    // parents directories.
    let paths: Vec<Vec<u8>> = w.tree.entries.keys().cloned().collect();
    for p in paths {
        let mut at = 0;
        while let Some(i) = p[at..].iter().position(|b| *b == b'/') {
            at += i;
            w.tree.entries.insert(p[..at].to_vec(), Kind::Dir);
            at += 1;
        }
    }
    w.tree
}

impl Tree {
    /// Make the tree under `root` (which should be empty).
    pub fn create(&self, root: &Path) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let io = |what: &str, p: &Path| {
            let what = format!("{what} {}", p.display());
            move |e| Error::io(what, e)
        };
        std::fs::create_dir_all(root).map_err(io("mkdir", root))?;
        // BTreeMap order puts a directory before what is in it.
        for (path, kind) in &self.entries {
            if path
                .split(|b| *b == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b"..")
            {
                return Err(Error::Config(format!(
                    "the trace names {:?}, which is not a path inside the share",
                    String::from_utf8_lossy(path)
                )));
            }
            let p = root.join(std::ffi::OsStr::from_bytes(path));
            match kind {
                Kind::Dir => std::fs::create_dir_all(&p).map_err(io("mkdir", &p))?,
                Kind::File(size) => {
                    let f = std::fs::File::create(&p).map_err(io("create", &p))?;
                    f.set_len(*size).map_err(io("truncate", &p))?;
                }
                Kind::Symlink(t) => {
                    let target = if t.is_empty() { &b"nowhere"[..] } else { t };
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &p)
                        .map_err(io("symlink", &p))?;
                }
            }
        }
        Ok(())
    }
}

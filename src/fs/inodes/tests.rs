use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::*;

struct Tree {
    dir: PathBuf,
}

impl Tree {
    fn new(what: &str) -> Tree {
        let dir = std::env::temp_dir().join(format!("vufsd-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Tree { dir }
    }

    fn store(&self, budget: usize) -> InodeStore {
        let (fd, st) = open_path(&self.dir);
        InodeStore::new(
            fd,
            &st,
            HoldPolicy {
                fd_budget: budget,
                handles: false,
            },
        )
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn open_path(p: &Path) -> (OwnedFd, Stat) {
    let dir = std::fs::File::open("/").unwrap();
    let rel = CString::new(p.strip_prefix("/").unwrap().as_os_str().as_encoded_bytes()).unwrap();
    let fd = sys::openat(dir.as_fd(), &rel, libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap();
    let st = sys::stat_fd(fd.as_fd()).unwrap();
    (fd, st)
}

/// LOOKUP as the filesystem makes it, without the hint.
fn lookup(store: &InodeStore, parent: &Arc<InodeData>, name: &str) -> io::Result<Arc<InodeData>> {
    let name = CString::new(name).unwrap();
    let fd = sys::openat(
        parent.fd()?.as_fd(),
        &name,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
    )?;
    let st = sys::stat_fd(fd.as_fd())?;
    store.add_ref(
        fd,
        &st,
        Some(Found {
            parent,
            name: &name,
        }),
    )
}

fn ino_of(inode: &InodeData) -> io::Result<u64> {
    Ok(sys::stat_fd(inode.fd()?.as_fd())?.st_ino)
}

fn host_ino(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(p).unwrap())
}

#[test]
fn lookup_counts_and_forget() {
    let t = Tree::new("inodes");
    std::fs::create_dir_all(t.path("d")).unwrap();
    let store = t.store(usize::MAX);

    let (fd1, st1) = open_path(&t.path("d"));
    let a = store.add_ref(fd1, &st1, None).unwrap();
    let (fd2, st2) = open_path(&t.path("d"));
    let b = store.add_ref(fd2, &st2, None).unwrap();
    assert_eq!(a.id, b.id, "the same host inode gets the same node id");
    assert_eq!(store.len(), 2);

    store.forget(a.id, 1);
    assert!(store.get(a.id).is_ok(), "one reference left");
    store.forget(a.id, 5);
    assert!(
        store.get(a.id).is_err(),
        "over-forgetting removes it, no panic"
    );
    store.forget(a.id, 1);
    store.forget(12345, 1);
    store.forget(ROOT_ID, u64::MAX);
    assert!(store.get(ROOT_ID).is_ok(), "the root is pinned");
    assert_eq!(store.fds_held(), 1, "only the root's fd is left");

    let (fd3, st3) = open_path(&t.path("d"));
    let c = store.add_ref(fd3, &st3, None).unwrap();
    assert_ne!(c.id, a.id, "node ids are never reused");
}

#[test]
fn lookup_hints_are_checked_and_leave_with_their_inode() {
    let t = Tree::new("hints");
    std::fs::create_dir_all(t.path("d")).unwrap();
    std::fs::create_dir_all(t.path("e")).unwrap();
    let store = t.store(usize::MAX);
    let root = store.get(ROOT_ID).unwrap();
    let d = NameKey::new(ROOT_ID, c"d");
    assert!(!store.has_hint(&d));

    let a = lookup(&store, &root, "d").unwrap();
    let st = sys::stat_fd(a.fd().unwrap().as_fd()).unwrap();
    assert!(store.has_hint(&d));
    let again = store.add_ref_hinted(&d, &st).expect("the hint matches");
    assert_eq!(again.id, a.id);
    // The name now leads to another inode: the hint is not taken.
    let (_, other) = open_path(&t.path("e"));
    assert!(store.add_ref_hinted(&d, &other).is_none());
    assert!(store
        .add_ref_hinted(&NameKey::new(a.id, c"d"), &st)
        .is_none());

    // Two references (add_ref, add_ref_hinted): the hint goes with the last FORGET.
    store.forget(a.id, 1);
    assert!(store.has_hint(&d));
    store.forget(a.id, 1);
    assert!(!store.has_hint(&d));
    assert!(store.add_ref_hinted(&d, &st).is_none());
}

#[test]
fn past_the_budget_inodes_are_evicted_and_reopened_by_name() {
    let t = Tree::new("evict");
    for i in 0..40 {
        std::fs::write(t.path(&format!("f{i}")), format!("{i}")).unwrap();
    }
    let store = t.store(8);
    let root = store.get(ROOT_ID).unwrap();
    let nodes: Vec<_> = (0..40)
        .map(|i| lookup(&store, &root, &format!("f{i}")).unwrap())
        .collect();
    assert_eq!(store.fd_budget(), 8);
    assert!(store.fds_held() <= 8, "{} fds held", store.fds_held());
    assert!(!nodes[0].has_fd(), "the first ones were evicted");
    // Every one still answers for its own file, and the budget holds while they come back.
    let proc = std::fs::File::open("/proc/self/fd").unwrap();
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            ino_of(n).unwrap(),
            host_ino(&t.path(&format!("f{i}"))),
            "f{i}"
        );
        let f = n.open(proc.as_fd(), libc::O_RDONLY).unwrap();
        let mut buf = [0u8; 8];
        let len = sys::pread(f.as_fd(), &mut buf, 0).unwrap();
        assert_eq!(&buf[..len], format!("{i}").as_bytes());
        assert!(store.fds_held() <= 8, "{} fds held", store.fds_held());
    }
    // A lookup of an evicted inode finds the same node and gives it its fd back.
    let again = lookup(&store, &root, "f0").unwrap();
    assert_eq!(again.id, nodes[0].id);
}

#[test]
fn an_evicted_inode_renamed_deleted_or_replaced_on_the_host_is_estale_never_another_file() {
    let t = Tree::new("moved");
    std::fs::create_dir(t.path("d")).unwrap();
    for name in ["renamed", "deleted", "replaced", "stays"] {
        std::fs::write(t.path(&format!("d/{name}")), name).unwrap();
    }
    let store = t.store(3);
    let root = store.get(ROOT_ID).unwrap();
    let d = lookup(&store, &root, "d").unwrap();
    let nodes: Vec<_> = ["renamed", "deleted", "replaced", "stays"]
        .iter()
        .map(|n| lookup(&store, &d, n).unwrap())
        .collect();
    // Push them all out, the directory too.
    for i in 0..20 {
        std::fs::write(t.path(&format!("x{i}")), b"").unwrap();
        lookup(&store, &root, &format!("x{i}")).unwrap();
    }
    assert!(nodes.iter().all(|n| !n.has_fd()) && !d.has_fd());
    std::fs::rename(t.path("d/renamed"), t.path("d/renamed.new")).unwrap();
    std::fs::write(t.path("d/renamed"), b"an impostor").unwrap();
    std::fs::remove_file(t.path("d/deleted")).unwrap();
    std::fs::remove_file(t.path("d/replaced")).unwrap();
    std::fs::write(t.path("d/replaced"), b"a new file, maybe its old number").unwrap();
    for n in &nodes[..3] {
        let e = n.fd().err().map(|e| e.raw_os_error());
        assert_eq!(e, Some(Some(libc::ESTALE)), "node {}", n.id);
    }
    assert_eq!(ino_of(&nodes[3]).unwrap(), host_ino(&t.path("d/stays")));
    // Found again under its new name, the renamed one is the node the guest knows.
    let found = lookup(&store, &d, "renamed.new").unwrap();
    assert_eq!(found.id, nodes[0].id);
    assert_eq!(ino_of(&found).unwrap(), host_ino(&t.path("d/renamed.new")));
}

#[test]
fn a_reused_inode_number_never_resolves_to_the_stale_node() {
    let t = Tree::new("reuse");
    for i in 0..30 {
        std::fs::write(t.path(&format!("f{i}")), b"x").unwrap();
    }
    let store = t.store(4);
    let root = store.get(ROOT_ID).unwrap();
    let nodes: Vec<_> = (0..30)
        .map(|i| lookup(&store, &root, &format!("f{i}")).unwrap())
        .collect();
    // Delete evicted files (no FORGET) and make new ones until one gets a freed number.
    let freed: std::collections::HashMap<u64, u64> = (0..20)
        .map(|i| {
            let p = t.path(&format!("f{i}"));
            let ino = host_ino(&p);
            std::fs::remove_file(p).unwrap();
            (ino, nodes[i].id)
        })
        .collect();
    let mut reused = 0;
    for i in 0..40 {
        let name = format!("new{i}");
        std::fs::write(t.path(&name), b"new").unwrap();
        let n = lookup(&store, &root, &name).unwrap();
        let ino = host_ino(&t.path(&name));
        assert_eq!(ino_of(&n).unwrap(), ino, "{name}");
        if let Some(old) = freed.get(&ino) {
            reused += 1;
            assert_ne!(n.id, *old, "{name} took the deleted file's node");
            let stale = store.get(*old).unwrap();
            assert_eq!(
                stale.fd().err().and_then(|e| e.raw_os_error()),
                Some(libc::ESTALE)
            );
        }
    }
    eprintln!("inode numbers reused by the host: {reused}");
}

#[test]
fn deep_directories_come_back_through_their_parents_and_open_handles_pin() {
    let t = Tree::new("deep");
    let mut rel = String::new();
    for i in 0..30 {
        rel.push_str(&format!("d{i}/"));
    }
    std::fs::create_dir_all(t.path(&rel)).unwrap();
    std::fs::write(t.path(&format!("{rel}leaf")), b"leaf").unwrap();
    let store = t.store(4);
    let root = store.get(ROOT_ID).unwrap();
    let mut dir = root.clone();
    for i in 0..30 {
        dir = lookup(&store, &dir, &format!("d{i}")).unwrap();
    }
    let leaf = lookup(&store, &dir, "leaf").unwrap();
    let pinned = store.get(leaf.id - 15).unwrap();
    // As an OPEN does: the inode is opened (reopened, here), then the handle pins it.
    drop(pinned.fd().unwrap());
    pinned.pin();
    for i in 0..10 {
        std::fs::write(t.path(&format!("x{i}")), b"").unwrap();
        lookup(&store, &root, &format!("x{i}")).unwrap();
    }
    assert!(!leaf.has_fd() && !dir.has_fd());
    assert!(pinned.has_fd(), "an inode with an open handle keeps its fd");
    pinned.unpin();
    assert_eq!(
        ino_of(&leaf).unwrap(),
        host_ino(&t.path(&format!("{rel}leaf")))
    );
    // The forgotten parent still leads to its child.
    let first = store.get(leaf.id - 30).unwrap();
    assert!(store.forget(first.id, 1));
    for i in 0..10 {
        lookup(&store, &root, &format!("x{i}")).unwrap();
    }
    for i in 0..10 {
        std::fs::write(t.path(&format!("y{i}")), b"").unwrap();
        lookup(&store, &root, &format!("y{i}")).unwrap();
    }
    assert_eq!(
        ino_of(&leaf).unwrap(),
        host_ino(&t.path(&format!("{rel}leaf")))
    );
    assert!(store.fds_held() <= 5, "{} fds held", store.fds_held());
}

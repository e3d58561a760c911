//! The fd budget without dangerous capabilities (issue 15): past half its open-file limit the
//! daemon closes the least recently used inode fds and reopens those inodes by name when they
//! are used again, checked to be the same inode. Through vufsd-bench, no guest needed:
//! - an unprivileged daemon walks a tree far larger than its fd limit (100k inodes under a
//!   1,000-fd limit here; `scripts/walk-1m` runs the same test with 1M under 10,000);
//! - a root daemon's default sandbox keeps no CAP_DAC_READ_SEARCH and walks past its limit too;
//!   file handles are there only when chosen;
//! - host renames, unlinks, replacements and hard links while the guest holds evicted inodes
//!   give the guest the right file or ESTALE, never another file.

mod served;

use std::path::Path;
use std::time::Instant;

use served::{serve, Served, Start};
use vufsd_bench::fuse_abi::FUSE_ROOT_ID;
use vufsd_bench::tree_walk::{self, Shape};
use vufsd_bench::TempDir;

const CAP_DAC_OVERRIDE: u64 = 1 << 1;
const CAP_DAC_READ_SEARCH: u64 = 1 << 2;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(s: &Served) -> u64 {
    s.status("VmRSS")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Walk `shape` (made under `share/tree`) through `s`, checking the daemon's fds against
/// `nofile` as it goes; the report, and the most fds seen.
fn walk(s: &Served, share: &Path, shape: Shape, nofile: usize) -> (tree_walk::WalkReport, usize) {
    let mut most = 0;
    let report = tree_walk::walk(
        &s.client,
        "tree",
        &share.join("tree"),
        shape,
        &mut |_, _| {
            let fds = s.fds();
            most = most.max(fds);
            assert!(fds <= nofile, "{fds} fds open, limit {nofile}");
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&s.daemon.log())));
    (report, most)
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// An unprivileged daemon, in its default sandbox (a user namespace) with `--seccomp=kill`,
/// walks a tree of 100k files and 1k directories under an open-file limit of 1,000 (fd budget
/// 500), and every revisited file is the right one. Before the fd budget it failed with EMFILE
/// past its limit. `VUFSD_WALK_FILES` / `VUFSD_WALK_NOFILE` make it bigger (scripts/walk-1m).
#[test]
fn an_unprivileged_daemon_walks_a_tree_far_past_its_fd_limit() {
    let files = env_or("VUFSD_WALK_FILES", 100_000);
    let nofile = env_or("VUFSD_WALK_NOFILE", 1_000);
    let shape = Shape::for_files(files);
    let dir = TempDir::new_in(Path::new("/var/tmp"), "vufsd-walk").unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("tree")).unwrap();
    let t = Instant::now();
    tree_walk::make(&share.join("tree"), shape).unwrap();
    let made = t.elapsed().as_secs_f64();
    let s = serve(
        dir.path(),
        &share,
        Start {
            nofile: Some(nofile as u64),
            unprivileged: true,
            args: &["--sandbox=namespace", "--seccomp=kill"],
        },
    );
    assert_ne!(s.status("Uid").split_whitespace().next(), Some("0"));
    let (r, most) = walk(&s, &share, shape, nofile);
    let inodes = (shape.file_count() + shape.dir_count()) as u64;
    assert_eq!(r.inodes, inodes);
    assert_eq!(r.revisited, (shape.top * shape.mid) as u64);
    assert!(s.client.is_alive());
    let log = s.daemon.log();
    assert!(log.contains("reopened by name"), "{log}");
    println!(
        "{{\"inodes\":{inodes},\"nofile\":{nofile},\"make_s\":{made:.1},\"walk_s\":{:.1},\
         \"lookups_per_s\":{:.0},\"revisited\":{},\"revisit_s\":{:.2},\"most_fds\":{most},\
         \"rss_mib\":{:.1}}}",
        r.walk_secs,
        r.inodes as f64 / r.walk_secs,
        r.revisited,
        r.revisit_secs,
        rss_kib(&s) as f64 / 1024.0
    );
}

/// As root, the default sandbox (namespace, `--seccomp=kill`) keeps no CAP_DAC_READ_SEARCH,
/// refuses open_by_handle_at with a second seccomp filter, and still walks a tree eight times
/// its open-file limit. With `--inode-file-handles=prefer` it keeps the capability (and one
/// filter) and reopens evicted inodes from their file handles; `--modcaps=+dac_read_search`
/// keeps the capability without changing how inodes are held.
#[test]
fn a_root_daemon_keeps_no_dac_read_search_and_walks_past_its_fd_limit() {
    if !served::is_root() {
        eprintln!("SKIPPED: needs root (a root daemon's capabilities)");
        return;
    }
    let shape = Shape::for_files(2_000);
    let dir = TempDir::new_in(Path::new("/var/tmp"), "vufsd-rootwalk").unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("tree")).unwrap();
    tree_walk::make(&share.join("tree"), shape).unwrap();
    // (options, keeps the capability, reopens from file handles)
    for (args, cap, handles) in [
        (&["--sandbox=namespace", "--seccomp=kill"][..], false, false),
        (
            &[
                "--sandbox=namespace",
                "--seccomp=kill",
                "--inode-file-handles=prefer",
            ][..],
            true,
            true,
        ),
        (
            &["--sandbox=chroot", "--modcaps=+dac_read_search"][..],
            true,
            false,
        ),
    ] {
        let s = serve(
            dir.path(),
            &share,
            Start {
                nofile: Some(256),
                args,
                ..Default::default()
            },
        );
        let eff = u64::from_str_radix(&s.status("CapEff"), 16).unwrap();
        let bnd = u64::from_str_radix(&s.status("CapBnd"), 16).unwrap();
        assert_ne!(
            eff & CAP_DAC_OVERRIDE,
            0,
            "{args:?}: root's capabilities {eff:#x}"
        );
        assert_eq!(eff & CAP_DAC_READ_SEARCH != 0, cap, "{args:?}: {eff:#x}");
        assert_eq!(bnd & CAP_DAC_READ_SEARCH != 0, cap, "{args:?}: {bnd:#x}");
        // The allowlist, and before it the refusal of open_by_handle_at without the capability.
        let filters = if cap { "1" } else { "2" };
        assert_eq!(s.status("Seccomp_filters"), filters, "{args:?}");
        let (r, _) = walk(&s, &share, shape, 256);
        assert_eq!(r.inodes, (shape.file_count() + shape.dir_count()) as u64);
        let log = s.daemon.log();
        let how = if handles {
            "reopened from their file handles"
        } else {
            "reopened by name"
        };
        assert!(log.contains(how), "{args:?}: {log}");
        assert_eq!(
            log.contains("open_by_handle_at refused (EPERM)"),
            !cap,
            "{args:?}: {log}"
        );
    }
}

/// The ways a daemon may hold inodes past its budget, each with and without file handles:
/// every inode of a tree larger than the fd limit stays usable, and the fd count bounded.
#[test]
fn inodes_past_the_fd_budget_stay_usable_in_every_mode() {
    let mut modes: Vec<&[&str]> = vec![&[], &["--inode-file-handles=never"]];
    if served::is_root() {
        modes.push(&["--inode-file-handles=prefer"]);
    }
    for args in modes {
        let dir = TempDir::new("vufsd-budget").unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        for i in 0..600 {
            std::fs::write(share.join(format!("f{i}")), format!("{i}")).unwrap();
        }
        let s = serve(
            dir.path(),
            &share,
            Start {
                nofile: Some(400),
                args,
                ..Default::default()
            },
        );
        let c = &s.client;
        for pass in 0..2 {
            for i in 0..600 {
                let name = format!("f{i}");
                let what = || format!("{args:?} pass {pass} {name}\n{}", tail(&s.daemon.log()));
                let e = c
                    .lookup(FUSE_ROOT_ID, &name)
                    .unwrap_or_else(|e| panic!("{}: {e}", what()));
                let attr = c.getattr(e.nodeid).unwrap();
                assert_eq!(attr.attr.size, name.len() as u64 - 1, "{}", what());
                let fh = c.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
                assert_eq!(
                    c.read(e.nodeid, fh, 0, 8).unwrap(),
                    format!("{i}").as_bytes()
                );
                c.release(e.nodeid, fh).unwrap();
            }
        }
        assert!(s.fds() < 400, "{args:?}: {} fds open", s.fds());
    }
}

/// What the guest gets for an inode it holds, checked against the file it was: the right
/// inode, or ESTALE — never another file.
fn right_or_estale(s: &Served, node: u64, ino: u64, what: &str) -> bool {
    match s.client.getattr(node) {
        Ok(a) => {
            assert_eq!(
                a.attr.ino, ino,
                "{what}: node {node} answers for another file"
            );
            true
        }
        Err(e) => {
            assert_eq!(e.errno(), Some(libc::ESTALE), "{what}: {e}");
            false
        }
    }
}

/// The host renames, unlinks, replaces and hard-links files (and a directory) the guest holds
/// while their fds are evicted.
#[test]
fn host_changes_to_evicted_inodes_give_the_right_file_or_estale() {
    let mut modes: Vec<&[&str]> = vec![&[]];
    if served::is_root() {
        modes.push(&["--inode-file-handles=prefer"]);
    }
    for args in modes {
        let dir = TempDir::new_in(Path::new("/var/tmp"), "vufsd-hostchange").unwrap();
        let share = dir.path().join("share");
        let d = share.join("d");
        std::fs::create_dir_all(&d).unwrap();
        let names = [
            "renamed", "deleted", "replaced", "linked", "swapped", "stays",
        ];
        for n in names {
            std::fs::write(d.join(n), n).unwrap();
        }
        std::fs::create_dir(dir.path().join("canary")).unwrap();
        std::fs::write(dir.path().join("canary/secret"), b"CANARY").unwrap();
        for i in 0..300 {
            std::fs::write(share.join(format!("x{i}")), b"").unwrap();
        }
        let s = serve(
            dir.path(),
            &share,
            Start {
                nofile: Some(128),
                args,
                ..Default::default()
            },
        );
        let c = &s.client;
        let dn = c.lookup(FUSE_ROOT_ID, "d").unwrap();
        let held: Vec<(u64, u64)> = names
            .iter()
            .map(|n| {
                let e = c.lookup(dn.nodeid, n).unwrap();
                (e.nodeid, e.attr.ino)
            })
            .collect();
        let push_out = || {
            for i in 0..300 {
                c.lookup(FUSE_ROOT_ID, &format!("x{i}")).unwrap();
            }
        };
        push_out();

        std::fs::rename(d.join("renamed"), d.join("renamed.new")).unwrap();
        std::fs::write(d.join("renamed"), b"an impostor").unwrap();
        std::fs::remove_file(d.join("deleted")).unwrap();
        std::fs::remove_file(d.join("replaced")).unwrap();
        std::fs::write(d.join("replaced"), b"a new file").unwrap();
        std::fs::hard_link(d.join("linked"), d.join("linked.2")).unwrap();
        std::fs::remove_file(d.join("linked")).unwrap();
        std::fs::rename(d.join("swapped"), d.join("swapped.old")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("canary/secret"), d.join("swapped")).unwrap();

        let what = |n: &str| format!("{args:?} {n}");
        for (n, (node, ino)) in names.iter().zip(&held) {
            let ok = right_or_estale(&s, *node, *ino, &what(n));
            if *n == "stays" {
                assert!(ok, "{}: an untouched file", what(n));
            }
            if let Ok(o) = c.open(*node, libc::O_RDONLY) {
                let data = c.read(*node, o.fh, 0, 64).unwrap();
                assert_eq!(data, n.as_bytes(), "{}: read another file", what(n));
                c.release(*node, o.fh).unwrap();
            }
        }
        // Found again under their new names: the nodes the guest knows, and the right data.
        for (old, new) in [(0, "renamed.new"), (3, "linked.2"), (4, "swapped.old")] {
            let e = c.lookup(dn.nodeid, new).unwrap();
            assert_eq!(e.nodeid, held[old].0, "{}", what(new));
            assert!(right_or_estale(&s, e.nodeid, held[old].1, &what(new)));
        }
        let l = c.lookup(dn.nodeid, "swapped").unwrap();
        assert_eq!(l.attr.mode & libc::S_IFMT, libc::S_IFLNK);

        // The directory itself renamed on the host while evicted: its files come back once the
        // guest finds it under its new name.
        push_out();
        std::fs::rename(&d, share.join("d2")).unwrap();
        let (stays, stays_ino) = held[5];
        let before = right_or_estale(&s, stays, stays_ino, &what("stays in d2"));
        let d2 = c.lookup(FUSE_ROOT_ID, "d2").unwrap();
        assert_eq!(d2.nodeid, dn.nodeid, "{}: d2 is d", what("d2"));
        assert!(
            right_or_estale(&s, stays, stays_ino, &what("stays in d2")),
            "{}: reachable again (before: {before})",
            what("stays")
        );
        assert_eq!(
            std::fs::read(dir.path().join("canary/secret")).unwrap(),
            b"CANARY"
        );
        assert!(c.is_alive());
    }
}

//! Real guest workloads, captured with `vufsd --trace` and replayed by `vufsd-bench replay`
//! (docs/performance.md, "Real workloads").
//!
//! CI captures a small workload and replays it against vufsd and upstream virtiofsd, checking
//! that the replay sends everything (no request skipped for an id it could not map) and gets
//! the answers the guest got. `scripts/capture-traces` runs the `capture_*` tests (ignored
//! here: a make under TCG takes minutes) to record the traces kept in bench/traces/.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{require_vm, run_vm, vufsd_bin, DaemonSpec, TestDir, VmConfig};

/// Boot a guest that runs `script` on a share prepared by `setup`, under vufsd --trace;
/// returns the trace.
fn capture(name: &str, setup: impl FnOnce(&Path), script: &str, timeout: u64) -> PathBuf {
    let dir = TestDir::new(&format!("trace_{name}"));
    let share = dir.mkdir("share");
    setup(&share);
    let trace = dir.path().join(format!("{name}.trace"));
    let sock = dir.path().join("vfs.sock");
    let mut daemon = DaemonSpec::fs(Ok(vufsd_bin()), &sock, &share)
        .arg("--trace")
        .arg(&trace)
        .arg("--xattr")
        .spawn(dir.path());
    // The guest sync and drops its caches at the end, so that the trace holds the FORGETs
    // and the writeback a real workload ends with.
    let script = format!("{script}\nsync\necho 3 > /proc/sys/vm/drop_caches\n");
    let out = run_vm(
        &VmConfig::new(dir.path(), script)
            .with_daemon(&daemon, "share")
            .timeout(Duration::from_secs(timeout)),
    );
    out.assert_ok(&[]);
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    let keep = std::env::var_os("VUFSD_TRACE_OUT").map(PathBuf::from);
    match keep {
        Some(out_dir) => {
            std::fs::create_dir_all(&out_dir).unwrap();
            let to = out_dir.join(format!("{name}.trace"));
            std::fs::copy(&trace, &to).unwrap();
            eprintln!(
                "trace {}: {} bytes",
                to.display(),
                std::fs::metadata(&to).unwrap().len()
            );
            to
        }
        None => {
            // Out of the test dir, which goes when `dir` drops.
            let to =
                std::env::temp_dir().join(format!("vufsd-{name}-{}.trace", std::process::id()));
            std::fs::copy(&trace, &to).unwrap();
            to
        }
    }
}

/// The vufsd-bench binary, built (or brought up to date) once per test run: a dev-dependency
/// builds its library for the tests, not its binary.
fn bench_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "--locked", "-p", "vufsd-bench"])
            .status()
            .unwrap();
        assert!(st.success(), "building vufsd-bench");
    });
    common::target_dir().join("debug/vufsd-bench")
}

/// Replay `trace` against a fresh `program` on a tree prepared from it; returns the JSON.
fn replay(trace: &Path, program: &Path, virtiofsd: bool) -> serde_json::Value {
    let dir = TestDir::new("replay");
    let share = dir.path().join("share");
    let st = Command::new(bench_bin())
        .arg("replay")
        .arg(trace)
        .arg("--prepare")
        .arg(&share)
        .status()
        .unwrap();
    assert!(st.success());
    let sock = dir.path().join("r.sock");
    let mut spec = DaemonSpec::new(program, &sock)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&share)
        .args(["--sandbox", "none", "--xattr"]);
    if !virtiofsd {
        spec = spec.args(["--seccomp", "kill"]);
    }
    let daemon = spec.spawn(dir.path());
    let out = Command::new(bench_bin())
        .arg("replay")
        .arg(trace)
        .arg("--socket")
        .arg(&sock)
        .arg("--pid")
        .arg(daemon.pid().to_string())
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.output()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A small tree and a guest that lists, reads, creates, renames and deletes in it.
fn small_tree(share: &Path) {
    for d in 0..5 {
        let dir = share.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..40 {
            std::fs::write(dir.join(format!("f{f}")), vec![b'x'; 100 * f + 1]).unwrap();
        }
    }
    std::os::unix::fs::symlink("d0/f1", share.join("link")).unwrap();
}

const SMALL_WORKLOAD: &str = r#"
ls -lR /mnt > /dev/null
cat /mnt/d*/f* > /dev/null
readlink /mnt/link > /dev/null
mkdir /mnt/new
for i in 1 2 3 4 5 6 7 8; do echo "line $i" > /mnt/new/g$i; done
mv /mnt/new/g1 /mnt/new/h1
rm /mnt/new/g2
find /mnt -name 'g*' | wc -l > /dev/null
"#;

#[test]
fn a_captured_workload_replays_the_same_against_vufsd_and_virtiofsd() {
    let Some(()) = require_vm() else { return };
    let trace = capture("small", small_tree, SMALL_WORKLOAD, 120);
    let mine = replay(&trace, &vufsd_bin(), false);
    eprintln!("vufsd: {mine}");
    let requests = mine["requests"].as_u64().unwrap();
    assert!(requests > 300, "{mine}");
    assert_eq!(mine["skipped"], 0, "{mine}");
    assert_eq!(mine["mismatches"], 0, "{mine}");
    let Some(virtiofsd) = common::require("upstream virtiofsd", common::find_virtiofsd()) else {
        return;
    };
    let theirs = replay(&trace, &virtiofsd, true);
    eprintln!("virtiofsd: {theirs}");
    assert_eq!(theirs["requests"].as_u64(), Some(requests), "{theirs}");
    assert_eq!(theirs["skipped"], 0, "{theirs}");
    let _ = std::fs::remove_file(&trace);
}

// --- The real workloads (`scripts/capture-traces`; ignored in CI) ------------------------------
//
// Each runs host tools in the guest (`hostrun`: the host's root, read-only over 9p, with the
// share at /mnt), so the programs are the host's and only their work on the share is traced.
// Trees come from the host (/usr/include: 7,944 files, 130 MB on Debian 12; the Python 3.11
// standard library), copied into the share before the guest boots.

/// `cp -a SRC DST` on the host.
fn copy_tree(src: &str, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {src} {}", dst.display());
}

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// A tar of /usr/include, outside the share (the guest reads it over 9p; not from the host's
/// /tmp, which the guest's /host view replaces with a tmpfs).
fn include_tar() -> PathBuf {
    let tar = common::target_dir().join("vufsd-trace-include.tar");
    if !tar.exists() {
        sh(&format!("tar -C /usr -cf {} include", tar.display()));
    }
    tar
}

#[test]
#[ignore = "scripts/capture-traces"]
fn capture_untar() {
    let Some(()) = require_vm() else { return };
    let tar = include_tar();
    capture(
        "untar",
        |_| {},
        &format!("check untar hostrun tar -xf {} -C /mnt", tar.display()),
        900,
    );
}

#[test]
#[ignore = "scripts/capture-traces"]
fn capture_read_tree() {
    let Some(()) = require_vm() else { return };
    capture(
        "read-tree",
        |s| copy_tree("/usr/include", s),
        "check read hostrun sh -c 'find /mnt/include -type f | xargs cat > /dev/null'",
        900,
    );
}

#[test]
#[ignore = "scripts/capture-traces"]
fn capture_ls_lr() {
    let Some(()) = require_vm() else { return };
    capture(
        "ls-lR",
        |s| copy_tree("/usr/include", s),
        "check ls hostrun sh -c 'ls -lR /mnt/include > /dev/null'",
        900,
    );
}

#[test]
#[ignore = "scripts/capture-traces"]
fn capture_du_find() {
    let Some(()) = require_vm() else { return };
    capture(
        "du-find",
        |s| copy_tree("/usr/include", s),
        "check du hostrun du -s /mnt/include\n\
         check find hostrun sh -c 'find /mnt/include -newer /mnt/include/stdio.h > /dev/null'",
        900,
    );
}

/// A repository with history: /usr/include/linux committed, then 8 commits of 40 changed files.
fn git_repo(share: &Path) {
    let repo = share.join("repo");
    std::fs::create_dir(&repo).unwrap();
    copy_tree("/usr/include/linux", &repo);
    let r = repo.display();
    sh(&format!(
        "cd {r} && git init -q && git config user.email t@example.org && git config user.name t \
         && git add -A && git commit -qm initial"
    ));
    for i in 0..8 {
        sh(&format!(
            "cd {r} && for f in $(ls linux/*.h | head -n 40); do echo '/* change {i} */' >> $f; done \
             && git commit -qam 'change {i}'"
        ));
    }
}

#[test]
#[ignore = "scripts/capture-traces"]
fn capture_git() {
    let Some(()) = require_vm() else { return };
    capture(
        "git",
        git_repo,
        "check status hostrun git -c safe.directory='*' -C /mnt/repo status\n\
         check log hostrun sh -c \"git -c safe.directory='*' -C /mnt/repo log -p > /dev/null\"",
        900,
    );
}

/// A small C project: 24 source files, a header, a Makefile.
fn c_project(share: &Path) {
    let p = share.join("proj");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(
        p.join("common.h"),
        "#include <stdio.h>\n#include <string.h>\nint f_sum(int);\n",
    )
    .unwrap();
    let mut objs = Vec::new();
    for i in 0..24 {
        std::fs::write(
            p.join(format!("m{i}.c")),
            format!(
                "#include \"common.h\"\nint m{i}(int x) {{ char b[64]; snprintf(b, sizeof b, \"%d\", x); return (int)strlen(b) + {i}; }}\n"
            ),
        )
        .unwrap();
        objs.push(format!("m{i}.o"));
    }
    std::fs::write(
        p.join("main.c"),
        "#include \"common.h\"\nint main(void) { return 0; }\n",
    )
    .unwrap();
    std::fs::write(
        p.join("Makefile"),
        format!(
            "CFLAGS = -O1 -Wall\nprog: main.o {o}\n\t$(CC) -o $@ $^\n%.o: %.c common.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n",
            o = objs.join(" ")
        ),
    )
    .unwrap();
}

#[test]
#[ignore = "scripts/capture-traces"]
fn capture_make() {
    let Some(()) = require_vm() else { return };
    capture(
        "make",
        c_project,
        "check make hostrun make -s -C /mnt/proj -j2",
        1200,
    );
}

#[test]
#[ignore = "scripts/capture-traces"]
fn capture_python_imports() {
    let Some(()) = require_vm() else { return };
    capture(
        "python-imports",
        |s| {
            let lib = s.join("pyhome/lib");
            std::fs::create_dir_all(&lib).unwrap();
            copy_tree("/usr/lib/python3.11", &lib);
        },
        "check imports hostrun env PYTHONHOME=/mnt/pyhome PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -c \
         'import asyncio, json, email.mime.text, http.client, unittest, xml.dom.minidom, argparse, logging, decimal, sqlite3'",
        900,
    );
}

//! Building xfstests for the guest: where its sources come from (`VUFSD_XFSTESTS`, else the
//! snapshot in ../shared/xfstests/), the one patch made to its `check` script (a time bound per
//! test), and the build, cached per source in `target/xfstests/<key>/`.

use std::fs::OpenOptions;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::common::{self, target_dir, Context};

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the xfstests sources come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Tarball(PathBuf),
    Checkout(PathBuf),
}

pub(crate) const WHAT_TO_PROVIDE: &str = "set VUFSD_XFSTESTS to an xfstests source tarball \
(e.g. xfstests-63a29724.tar.gz: kdave/xfstests or git.kernel.org fs/xfs/xfstests-dev, a \
version with FSTYP=virtiofs) or to a source checkout, or put the tarball in \
../shared/xfstests/ beside this checkout";

/// `VUFSD_XFSTESTS` (a tarball or a checkout; an invalid value panics), else the newest
/// `../shared/xfstests/xfstests-*.tar.gz` beside the checkout, else None.
pub(crate) fn find_source() -> Option<Source> {
    if let Some(p) = std::env::var_os("VUFSD_XFSTESTS").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_dir() {
            assert!(
                p.join("check").is_file(),
                "VUFSD_XFSTESTS={}: a directory without xfstests' `check` script",
                p.display()
            );
            return Some(Source::Checkout(p));
        }
        assert!(
            p.is_file(),
            "VUFSD_XFSTESTS={} does not exist; {WHAT_TO_PROVIDE}",
            p.display()
        );
        return Some(Source::Tarball(p));
    }
    let shared = repo().join("../shared/xfstests");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&shared)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("xfstests") && n.contains(".tar"))
        })
        .collect();
    found.sort();
    found.pop().map(Source::Tarball)
}

/// The loud banner for a machine without the snapshot; the test then passes.
pub(crate) fn not_run_banner() {
    eprintln!(
        "\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!!!!!!! xfstests NOT RUN: no xfstests sources.\n\
         !!!!!!!! To run it, {WHAT_TO_PROVIDE}.\n\
         !!!!!!!! (tests/xfstests/README.md; the build needs scripts/install-deps' packages)\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
}

pub(crate) fn sh(cmd: &str) -> common::Result<String> {
    let out = Command::new("bash")
        .args(["-c", cmd])
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{cmd}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            common::tail(&String::from_utf8_lossy(&out.stderr), 40)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The cache key: the tarball's SHA-256, or for a checkout a hash of every file's name, size
/// and mtime; plus the version of our patch to `check`.
pub(crate) fn source_key(src: &Source) -> common::Result<String> {
    let cmd = match src {
        Source::Tarball(p) => format!("sha256sum < {}", quote(p)),
        Source::Checkout(p) => format!(
            "cd {} && find . -path ./.git -prune -o -type f -printf '%P %s %T@\\n' | LC_ALL=C sort | sha256sum",
            quote(p)
        ),
    };
    let sum = sh(&cmd)?;
    Ok(format!("{}-p{PATCH_VERSION}", &sum[..16]))
}

/// Bump when `patch_check` changes.
pub(crate) const PATCH_VERSION: u32 = 1;

/// Bound each test's run time: check runs a test as `bash -c "...; exec ./$seq"`; we run that
/// under `timeout(1)`, which signals the test's whole process group.
pub(crate) fn patch_check(dir: &Path) -> common::Result<()> {
    let path = dir.join("check");
    let text = std::fs::read_to_string(&path).context("reading check")?;
    let old = "\telse\n\t\t\"${cmd[@]}\"\n\tfi";
    let new = "\telse\n\t\t# vufsd: bound each test's wall time (tests/vm_xfstests.rs)\n\
               \t\ttimeout --kill-after=30 \"${VUFSD_TEST_TIMEOUT:-0}\" \"${cmd[@]}\"\n\tfi";
    if text.matches(old).count() != 1 {
        return Err(format!(
            "{}: _run_seq is not as expected (the per-test time bound cannot be added); \
             this snapshot's `check` differs from 63a29724's",
            path.display()
        ));
    }
    std::fs::write(&path, text.replacen(old, new, 1)).context("writing check")
}

/// Build xfstests once per source into `target/xfstests/<key>/` and return that directory.
/// A lock file keeps concurrent test processes from building it twice.
pub(crate) fn build(src: &Source) -> common::Result<PathBuf> {
    let base = target_dir().join("xfstests");
    std::fs::create_dir_all(&base).with_context(|| format!("mkdir {}", base.display()))?;
    let key = source_key(src)?;
    let dir = base.join(&key);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(base.join(".lock"))
        .context("opening the build lock")?;
    // SAFETY: flock on an fd we own; released when `lock` is dropped.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if dir.join(".vufsd-built").exists() {
        return Ok(dir);
    }
    let tmp = base.join(format!("{key}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).context("mkdir build dir")?;
    let started = Instant::now();
    match src {
        Source::Tarball(p) => {
            sh(&format!("tar -xzf {} -C {}", quote(p), quote(&tmp)))?;
        }
        Source::Checkout(p) => {
            sh(&format!(
                "cd {} && tar --exclude=.git -cf - . | tar -xf - -C {}",
                quote(p),
                quote(&tmp)
            ))?;
        }
    }
    // The tarball's top directory (or the checkout's copy itself).
    let top = if tmp.join("check").is_file() {
        tmp.clone()
    } else {
        std::fs::read_dir(&tmp)
            .context("reading the unpacked tree")?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("check").is_file())
            .ok_or("the xfstests source has no `check` script at its top")?
    };
    patch_check(&top)?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    eprintln!("xfstests: building {} (make -j{jobs})", top.display());
    sh(&format!(
        "cd {} && make -j{jobs} > build.log 2>&1 || {{ tail -40 build.log; exit 1; }}",
        quote(&top)
    ))
    .map_err(|e| {
        format!(
            "building xfstests failed (scripts/install-deps installs its build dependencies): {e}"
        )
    })?;
    if top != tmp {
        // Make the layout `<key>/` = the xfstests tree itself.
        let inner = base.join(format!("{key}.inner"));
        let _ = std::fs::remove_dir_all(&inner);
        std::fs::rename(&top, &inner).context("moving the tree")?;
        std::fs::remove_dir_all(&tmp).context("removing the unpack dir")?;
        std::fs::rename(&inner, &tmp).context("moving the tree")?;
    }
    std::fs::write(tmp.join(".vufsd-built"), format!("{src:?}\n")).context("marker")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).context("installing the build")?;
    eprintln!("xfstests: built in {:?}", started.elapsed());
    Ok(dir)
}

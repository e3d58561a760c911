//! A vufsd started for a protocol test, with vufsd-bench as its guest driver: a share with a
//! file and a directory, a canary directory beside it, two symlinks pointing at the canary.
//! Shared by tests/protocol.rs, tests/locks.rs and tests/session.rs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vufsd_bench::{DaemonProcess, Device, DeviceConfig, FuseClient, TempDir};

pub const MEM: u64 = 64 << 20;

pub struct Env {
    // Drop order: client, then daemon, then the directory.
    pub client: FuseClient,
    pub daemon: DaemonProcess,
    pub dir: TempDir,
}

impl Env {
    pub fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    pub fn canary(&self) -> PathBuf {
        self.dir.path().join("canary")
    }

    /// The daemon still serves: a fresh GETATTR of the root works.
    pub fn assert_alive(&self, what: &str) {
        assert!(
            self.client.is_alive(),
            "vufsd stopped serving after {what}\n{}",
            self.daemon.log()
        );
    }
}

pub fn start(extra: &[&str]) -> Env {
    let dir = TempDir::new("vufsd-protocol").unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), b"hello").unwrap();
    std::fs::create_dir(share.join("sub")).unwrap();
    // Beside the share, never to be read or written through it.
    std::fs::create_dir(dir.path().join("canary")).unwrap();
    std::fs::write(dir.path().join("canary/secret"), b"CANARY").unwrap();
    std::os::unix::fs::symlink(dir.path().join("canary/secret"), share.join("abs-escape")).unwrap();
    std::os::unix::fs::symlink("../canary/secret", share.join("rel-escape")).unwrap();
    let sock = dir.path().join("vufsd.sock");
    let mut args: Vec<std::ffi::OsString> = vec!["--sandbox".into(), "none".into()];
    args.extend(extra.iter().map(Into::into));
    let daemon = DaemonProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_vufsd")),
        &share,
        &sock,
        &args,
        Duration::from_secs(10),
    )
    .unwrap();
    let mut config = DeviceConfig::new(&sock);
    config.memory_size = MEM;
    config.timeout = Duration::from_secs(3);
    let dev = Device::connect(config)
        .unwrap_or_else(|e| panic!("handshake failed: {e}\n{}", daemon.log()));
    let client = FuseClient::new(Arc::new(dev));
    client.init().unwrap();
    Env {
        client,
        daemon,
        dir,
    }
}

pub fn errno_of<T: std::fmt::Debug>(r: vufsd_bench::Result<T>) -> Option<i32> {
    match r {
        Err(e) => e.errno(),
        Ok(v) => panic!("expected an error reply, got {v:?}"),
    }
}

/// The errno in a raw reply (the out header's error field, negated).
pub fn raw_errno(written: &[u8]) -> i32 {
    assert!(
        written.len() >= 16,
        "reply shorter than a header: {written:?}"
    );
    -i32::from_ne_bytes(written[4..8].try_into().unwrap())
}

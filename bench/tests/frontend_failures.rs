//! The frontend against sockets that misbehave at the vhost-user level: nothing may hang.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use vufsd_bench::{Device, DeviceConfig, Error, TempDir};

fn config(sock: &std::path::Path) -> DeviceConfig {
    let mut c = DeviceConfig::new(sock);
    c.timeout = Duration::from_millis(500);
    c.memory_size = 4 << 20;
    c.queue_size = 16;
    c
}

#[test]
fn silent_daemon_times_out() {
    let dir = TempDir::new("vufsd-bench-silent").unwrap();
    let sock = dir.path().join("s.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        // Accept, read the request, never answer.
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        std::thread::sleep(Duration::from_secs(2));
    });
    let t0 = Instant::now();
    let r = Device::connect(config(&sock));
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    t.join().unwrap();
}

#[test]
fn closing_daemon_is_an_error() {
    let dir = TempDir::new("vufsd-bench-close").unwrap();
    let sock = dir.path().join("s.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || drop(l.accept().unwrap()));
    let r = Device::connect(config(&sock));
    assert!(r.is_err(), "{r:?}");
    t.join().unwrap();
}

#[test]
fn garbage_reply_is_an_error() {
    let dir = TempDir::new("vufsd-bench-garbage").unwrap();
    let sock = dir.path().join("s.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 12];
        let _ = s.read(&mut buf);
        // A "reply" with a bogus request code and flags.
        let _ = s.write_all(&[0xff; 20]);
        std::thread::sleep(Duration::from_millis(200));
    });
    let r = Device::connect(config(&sock));
    assert!(r.is_err(), "{r:?}");
    t.join().unwrap();
}

#[test]
fn missing_socket_times_out() {
    let dir = TempDir::new("vufsd-bench-missing").unwrap();
    let r = Device::connect(config(&dir.path().join("nope.sock")));
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
}

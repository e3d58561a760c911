//! What ends the daemon besides its frontend: the exit of the process that started it
//! (`--exit-with-parent`) and a frontend that never connects (`--connect-timeout`).
//!
//! Both exist for daemons started next to QEMU by a script (a NixOS test VM's start script, a
//! wrapper) that then execs QEMU: vufsd's parent *is* QEMU from then on. A daemon normally
//! exits when its frontend disconnects, but a QEMU that fails before it connects never
//! disconnects, and without these the daemon would wait for ever, orphaned.

use std::sync::mpsc;
use std::time::Duration;

use log::error;

use crate::sys;

/// The process that started vufsd, recorded at startup (`--exit-with-parent`).
#[derive(Clone, Copy, Debug)]
pub struct Parent {
    pid: i32,
}

impl Parent {
    /// The current parent. Called first thing, so that a parent that exits later is noticed.
    pub fn record() -> Self {
        Self {
            pid: sys::getppid(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the recorded parent has exited: we were then handed to another process (init,
    /// or a subreaper), so our parent is no longer the one recorded.
    pub fn is_gone(&self) -> bool {
        sys::getppid() != self.pid
    }

    /// Have the kernel send SIGTERM when the parent exits; the caller handles it like any
    /// SIGTERM (log, clean up, exit 0). Call it on the thread that stays for the daemon's life
    /// (the kernel clears the setting when that thread's credentials change: after the sandbox
    /// is set up). False when the parent has already exited.
    pub fn arm(&self) -> std::io::Result<bool> {
        sys::set_parent_death_signal(libc::SIGTERM)?;
        // A parent that exited before the line above sent nothing: look for ourselves.
        Ok(!self.is_gone())
    }

    /// The log line for a SIGTERM that came from the parent's exit.
    pub fn exit_message(&self) -> String {
        format!(
            "the process that started vufsd (pid {}) exited: exiting too (--exit-with-parent)",
            self.pid
        )
    }
}

/// Armed by [`connect_deadline`]: dropping it (the frontend connected) disarms the deadline.
pub struct Deadline {
    _connected: Option<mpsc::Sender<()>>,
}

/// After `secs` seconds without a frontend, run `expire` (which logs why and exits); 0 means
/// no deadline. The returned guard is dropped once the frontend has connected.
pub fn connect_deadline(
    secs: u64,
    expire: impl FnOnce() + Send + 'static,
) -> std::io::Result<Deadline> {
    if secs == 0 {
        return Ok(Deadline { _connected: None });
    }
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("connect-timeout".into())
        .spawn(move || {
            // Disconnected (the guard was dropped) means connected in time.
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs))
            {
                error!(
                    "no frontend connected within {secs} s: exiting (--connect-timeout); is \
                     QEMU pointed at this socket, and did it start?"
                );
                expire();
            }
        })?;
    Ok(Deadline {
        _connected: Some(tx),
    })
}

//! Things the host does while a test guest runs, when the guest asks: kill QEMU, signal the
//! daemon, change the shared tree under the guest. The guest asks with `host_do N` (vufs.sh),
//! which prints `HOST-DO N` and waits for the harness to write `/test/ack.N` once action N of
//! [`VmConfig::on_host_do`](super::VmConfig::on_host_do) is done.

use std::path::Path;
use std::process::Child;

/// One action.
#[derive(Debug, Clone)]
pub enum HostAction {
    /// SIGKILL QEMU (the guest gets no ack: it is gone).
    KillQemu,
    /// Send `sig` to process `pid` (a daemon).
    Signal { pid: u32, sig: i32 },
    /// Run a host command; its exit status goes into the ack.
    Run(Vec<String>),
}

impl HostAction {
    /// A command from words.
    pub fn run(words: &[&str]) -> HostAction {
        HostAction::Run(words.iter().map(|w| w.to_string()).collect())
    }

    /// Do it; returns what the ack says ("ok" or why not).
    pub(super) fn perform(&self, qemu: &mut Child) -> String {
        match self {
            HostAction::KillQemu => match qemu.kill() {
                Ok(()) => "ok".into(),
                Err(e) => format!("kill QEMU: {e}"),
            },
            HostAction::Signal { pid, sig } => {
                // SAFETY: kill(2) with plain integers; the pid is a daemon the test started.
                if unsafe { libc::kill(*pid as libc::pid_t, *sig) } == 0 {
                    "ok".into()
                } else {
                    format!("kill {pid}: {}", std::io::Error::last_os_error())
                }
            }
            HostAction::Run(argv) => {
                let Some((prog, args)) = argv.split_first() else {
                    return "empty command".into();
                };
                match std::process::Command::new(prog).args(args).output() {
                    Ok(o) if o.status.success() => "ok".into(),
                    Ok(o) => format!(
                        "{argv:?}: {} {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                    Err(e) => format!("{argv:?}: {e}"),
                }
            }
        }
    }
}

/// Tell the guest action `n` is done.
pub(super) fn ack(io: &Path, n: usize, what: &str) {
    let tmp = io.join(format!(".ack.{n}"));
    if std::fs::write(&tmp, what).is_ok() {
        let _ = std::fs::rename(&tmp, io.join(format!("ack.{n}")));
    }
}

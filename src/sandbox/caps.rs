//! Capabilities: which ones the daemon keeps, `--modcaps`, and dropping the rest.
//!
//! Started as root, the passthrough filesystem needs a handful of capabilities to act for the
//! guest's users: create files as them (it switches fsuid/fsgid, fs/creds.rs), chown, chmod and
//! set times on files it does not own, keep set-id bits, make device nodes and set file
//! capabilities. Everything else root could do — mount, ptrace, load modules, bind ports, ... —
//! is dropped from the effective, permitted, inheritable, ambient and bounding sets, so even a
//! daemon taken over by a hostile guest cannot get it back. `CAP_DAC_READ_SEARCH` is not kept
//! unless file handles are chosen (`--inode-file-handles=prefer|mandatory`): with it,
//! open_by_handle_at(2) opens any inode of the share's filesystem from a forged handle, inside
//! the share or not. By default inodes past the fd budget are reopened by name instead.

use std::fmt;
use std::io;
use std::str::FromStr;

use super::sys::{self, CapSets};

/// Capability names as in capabilities(7), without `CAP_`, indexed by number.
const NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

const CAP_SETPCAP: u32 = 8;
pub const CAP_DAC_READ_SEARCH: u32 = 2;

/// A set of capabilities, bit n for capability n.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);

    /// What the passthrough filesystem needs when the daemon runs as root (virtiofsd's list
    /// without file handles): chown, dac_override, fowner, fsetid, setgid, setuid, mknod,
    /// setfcap.
    pub const PASSTHROUGH: CapSet =
        CapSet(1 << 0 | 1 << 1 | 1 << 3 | 1 << 4 | 1 << 6 | 1 << 7 | 1 << 27 | 1 << 31);

    /// The same plus dac_read_search, which open_by_handle_at(2) requires: kept only when file
    /// handles are chosen (`--inode-file-handles=prefer|mandatory`; docs/security.md).
    pub const PASSTHROUGH_WITH_HANDLES: CapSet = CapSet(CapSet::PASSTHROUGH.0 | 1 << 2);

    pub fn contains(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn with(self, cap: u32) -> CapSet {
        CapSet(self.0 | 1 << cap)
    }

    fn without(self, cap: u32) -> CapSet {
        CapSet(self.0 & !(1 << cap))
    }

    fn and(self, other: CapSet) -> CapSet {
        CapSet(self.0 & other.0)
    }

    fn minus(self, other: CapSet) -> CapSet {
        CapSet(self.0 & !other.0)
    }
}

impl fmt::Display for CapSet {
    /// Comma-separated names, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for cap in 0..64u32 {
            if !self.contains(cap) {
                continue;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            match NAMES.get(cap as usize) {
                Some(name) => f.write_str(name)?,
                None => write!(f, "cap_{cap}")?,
            }
        }
        Ok(())
    }
}

fn cap_number(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    NAMES.iter().position(|n| *n == bare).map(|n| n as u32)
}

/// `--modcaps=+sys_admin:-mknod`: capabilities to add to or remove from the default set.
/// Later entries win over earlier ones for the same capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapChanges {
    add: CapSet,
    remove: CapSet,
}

impl CapChanges {
    /// `base` with the changes applied.
    pub fn apply(self, base: CapSet) -> CapSet {
        CapSet((base.0 | self.add.0) & !self.remove.0)
    }
}

impl FromStr for CapChanges {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut changes = CapChanges::default();
        for item in s.split(':') {
            let (op, name) = match item.split_at_checked(1) {
                Some((op @ ("+" | "-"), name)) if !name.is_empty() => (op, name),
                _ => {
                    return Err(format!(
                    "'{item}' is not +capability or -capability (e.g. --modcaps=+sys_admin:-mknod)"
                ))
                }
            };
            let cap = cap_number(name).ok_or_else(|| {
                format!("unknown capability '{name}' (names as in capabilities(7), e.g. sys_admin)")
            })?;
            if op == "+" {
                changes.add = changes.add.with(cap);
                changes.remove = changes.remove.without(cap);
            } else {
                changes.remove = changes.remove.with(cap);
                changes.add = changes.add.without(cap);
            }
        }
        Ok(changes)
    }
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() as u32 - 1)
}

/// What [`restrict_to`] did.
#[derive(Clone, Copy, Debug)]
pub struct Restricted {
    /// The effective (= permitted) set now.
    pub kept: CapSet,
    /// Wanted but not held, so not kept (an unprivileged daemon asked for `+something`).
    pub missing: CapSet,
}

/// Reduce this thread — and so every thread it creates later — to `keep`: effective and
/// permitted become `keep` (as far as it was permitted), inheritable and ambient become empty,
/// and, when we may change it, the bounding set becomes `keep` too. Must run before any other
/// thread exists: capabilities are per thread.
pub fn restrict_to(keep: CapSet) -> io::Result<Restricted> {
    let now = sys::capget()?;
    let permitted = CapSet(now.permitted);
    let kept = keep.and(permitted);
    // The bounding set first: dropping from it needs CAP_SETPCAP, which capset may remove.
    if CapSet(now.effective).contains(CAP_SETPCAP) {
        for cap in 0..=last_cap() {
            if !keep.contains(cap) {
                sys::capbset_drop(cap)?;
            }
        }
    }
    match sys::clear_ambient_caps() {
        // Kernels before 4.3 have no ambient set: nothing to clear.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        other => other?,
    }
    sys::capset(CapSets {
        effective: kept.0,
        permitted: kept.0,
        inheritable: 0,
    })?;
    Ok(Restricted {
        kept,
        missing: keep.minus(permitted),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(
            CapSet::PASSTHROUGH.to_string(),
            "chown,dac_override,fowner,fsetid,setgid,setuid,mknod,setfcap"
        );
        assert_eq!(CapSet::EMPTY.to_string(), "none");
        assert_eq!(cap_number("SYS_ADMIN"), Some(21));
        assert_eq!(cap_number("cap_chown"), Some(0));
        assert_eq!(cap_number("checkpoint_restore"), Some(40));
        assert_eq!(cap_number("frobnicate"), None);
    }

    #[test]
    fn modcaps_parse_and_apply() {
        let c: CapChanges = "+sys_admin:-mknod:-CHOWN".parse().unwrap();
        let set = c.apply(CapSet::PASSTHROUGH);
        assert!(set.contains(21));
        assert!(!set.contains(27));
        assert!(!set.contains(0));
        assert!(set.contains(1));
        // The last word on a capability wins.
        let c: CapChanges = "-fowner:+fowner".parse().unwrap();
        assert!(c.apply(CapSet::EMPTY).contains(3));
        let c: CapChanges = "+fowner:-fowner".parse().unwrap();
        assert!(!c.apply(CapSet::PASSTHROUGH).contains(3));
    }

    #[test]
    fn modcaps_errors_name_the_problem() {
        let e = "+frobnicate".parse::<CapChanges>().unwrap_err();
        assert!(e.contains("frobnicate"), "{e}");
        for bad in ["", "sys_admin", "+", "*chown", "+chown::-mknod"] {
            assert!(bad.parse::<CapChanges>().is_err(), "{bad:?}");
        }
    }
}

//! `--uid-map` / `--gid-map`: run the namespace sandbox in a user namespace with the id ranges
//! the user gives, virtiofsd's syntax and meaning (`:namespace_id:host_id:count:`).
//!
//! Unlike `--translate-uid` (done by the daemon, fs/idmap.rs), the kernel does this mapping:
//! the daemon is root of its user namespace, a guest's uid 0 is the host's `host_id`, and host
//! ids outside the ranges are the overflow id (65534) to the guest and out of reach of the
//! daemon's capabilities, which only cover ids of its namespace. A root daemon then cannot touch
//! a host file that root owns unless the file's mode lets anyone.
//!
//! A process may not write its own namespace's maps (beyond mapping itself), so a helper forked
//! before the namespace is created writes them from outside: directly when it is root (or maps
//! only its own ids), else through newuidmap/newgidmap (package uidmap, with the ranges granted
//! in /etc/subuid and /etc/subgid).

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use super::sys;
use super::SandboxError;

/// One line of a user namespace's uid_map or gid_map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub ns: u32,
    pub host: u32,
    pub count: u32,
}

impl FromStr for IdRange {
    type Err = String;

    /// `:namespace_id:host_id:count:` (the outer colons may be left out).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "'{s}' is not an id range: write :namespace_id:host_id:count: (for example \
                 :0:100000:65536:)"
            )
        };
        let inner = s.strip_prefix(':').unwrap_or(s);
        let inner = inner.strip_suffix(':').unwrap_or(inner);
        let fields: Vec<&str> = inner.split(':').collect();
        let [ns, host, count] = fields[..] else {
            return Err(bad());
        };
        let num = |f: &str| f.parse::<u32>().map_err(|_| bad());
        let r = IdRange {
            ns: num(ns)?,
            host: num(host)?,
            count: num(count)?,
        };
        let fits = |start: u32| u64::from(start) + u64::from(r.count) <= u64::from(u32::MAX);
        if r.count == 0 || !fits(r.ns) || !fits(r.host) {
            return Err(format!(
                "'{s}': the count must be at least 1 and the ranges must end below 4294967295"
            ));
        }
        Ok(r)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":{}:{}:{}:", self.ns, self.host, self.count)
    }
}

/// The uid and gid maps of the daemon's user namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsIdMaps {
    pub uid: Vec<IdRange>,
    pub gid: Vec<IdRange>,
}

/// The most lines a map may have (Linux 4.15+).
const MAX_LINES: usize = 340;

impl NsIdMaps {
    /// Whether any map was given.
    pub fn is_set(&self) -> bool {
        !self.uid.is_empty() || !self.gid.is_empty()
    }

    /// What the kernel would refuse, said before anything is set up; and namespace id 0, which
    /// the daemon becomes, must be mapped.
    pub fn validate(&self) -> Result<(), String> {
        for (name, ranges) in [("--uid-map", &self.uid), ("--gid-map", &self.gid)] {
            if ranges.is_empty() {
                return Err(format!(
                    "--uid-map and --gid-map go together: {name} is missing (map at least \
                     namespace id 0 in both)"
                ));
            }
            if ranges.len() > MAX_LINES {
                return Err(format!("{name}: at most {MAX_LINES} ranges"));
            }
            for (i, a) in ranges.iter().enumerate() {
                for b in &ranges[i + 1..] {
                    let overlap = |x: u32, y: u32| {
                        u64::from(x) < u64::from(y) + u64::from(b.count)
                            && u64::from(y) < u64::from(x) + u64::from(a.count)
                    };
                    if overlap(a.ns, b.ns) || overlap(a.host, b.host) {
                        return Err(format!("{name}: {a} and {b} overlap"));
                    }
                }
            }
            if !ranges.iter().any(|r| r.ns == 0) {
                return Err(format!(
                    "{name} must map namespace id 0: vufsd runs as root of its user namespace \
                     (for example {name}=:0:100000:65536:)"
                ));
            }
        }
        Ok(())
    }
}

fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.ns, r.host, r.count))
        .collect()
}

/// Create the user namespace (with a pid namespace, as [`super::namespace`] does without
/// maps), have the helper write its maps, and become its root. The caller must be
/// single-threaded.
pub fn enter(maps: &NsIdMaps) -> Result<(), SandboxError> {
    let own = (crate::sys::geteuid(), sys::getegid());
    let fail = |what: &'static str| move |e: std::io::Error| SandboxError::Process(what, e);
    let (go_r, go_w) = sys::pipe().map_err(fail("create a pipe"))?;
    let (done_r, done_w) = sys::pipe().map_err(fail("create a pipe"))?;
    let parent = sys::getpid();
    let helper = match sys::fork().map_err(fail("fork the id-map helper"))? {
        sys::Forked::Child => {
            drop(go_w);
            drop(done_r);
            let mut go = [0u8; 1];
            let code = match std::fs::File::from(go_r).read(&mut go) {
                Ok(1) => match write_maps(parent, maps, own) {
                    Ok(()) => 0,
                    Err(msg) => {
                        let _ = std::fs::File::from(done_w).write_all(msg.as_bytes());
                        1
                    }
                },
                // The parent could not create the namespace: it says why itself.
                _ => 1,
            };
            sys::exit_now(code);
        }
        sys::Forked::Parent { child } => child,
    };
    drop(go_r);
    drop(done_w);
    let created = sys::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID);
    let mut go = std::fs::File::from(go_w);
    if created.is_ok() {
        // Failing that, the helper sees the pipe close and exits.
        let _ = go.write_all(b"g");
    }
    drop(go);
    let mut msg = String::new();
    let _ = std::fs::File::from(done_r).read_to_string(&mut msg);
    let end = sys::wait(helper).map_err(fail("wait for the id-map helper"))?;
    created.map_err(|err| SandboxError::Namespace {
        what: "create a user namespace for --uid-map/--gid-map",
        err,
        unprivileged: own.0 != 0,
    })?;
    if end != sys::ChildExit::Code(0) {
        return Err(SandboxError::IdMap(if msg.is_empty() {
            format!("the helper that writes the maps ended with {end:?}")
        } else {
            msg
        }));
    }
    // Root of the namespace: ids 0 are mapped (validate), and the capabilities the namespace
    // gave its creator stay with a change to uid 0.
    sys::set_ids(0, 0).map_err(fail("become root of the user namespace"))?;
    let show = |r: &[IdRange]| {
        r.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    log::info!(
        "user namespace: uid map {}, gid map {}; vufsd is its root",
        show(&maps.uid),
        show(&maps.gid)
    );
    match sys::clear_groups() {
        // newgidmap may leave setgroups denied: then there are no groups to borrow either.
        Err(e) if e.raw_os_error() != Some(libc::EPERM) => Err(SandboxError::Groups(e)),
        _ => Ok(()),
    }
}

/// In the helper: write the maps of process `pid`'s user namespace.
fn write_maps(pid: libc::pid_t, maps: &NsIdMaps, (uid, gid): (u32, u32)) -> Result<(), String> {
    let just_self =
        |ranges: &[IdRange], id: u32| matches!(ranges, [r] if r.count == 1 && r.host == id);
    let proc = |file: &str| format!("/proc/{pid}/{file}");
    let write = |file: &str, text: &str| {
        std::fs::write(proc(file), text).map_err(|e| format!("writing {}: {e}", proc(file)))
    };
    if uid == 0 || just_self(&maps.uid, uid) {
        write("uid_map", &map_text(&maps.uid))?;
    } else {
        newidmap("newuidmap", pid, &maps.uid, "/etc/subuid")?;
    }
    if uid == 0 {
        write("gid_map", &map_text(&maps.gid))
    } else if just_self(&maps.gid, gid) {
        // An unprivileged process may map its own gid only once setgroups is denied.
        write("setgroups", "deny")?;
        write("gid_map", &map_text(&maps.gid))
    } else {
        newidmap("newgidmap", pid, &maps.gid, "/etc/subgid")
    }
}

/// newuidmap/newgidmap PID NS HOST COUNT...: the setuid helpers that let a user map the
/// subordinate ids granted to it.
fn newidmap(tool: &str, pid: libc::pid_t, ranges: &[IdRange], grants: &str) -> Result<(), String> {
    let mut cmd = std::process::Command::new(tool);
    cmd.arg(pid.to_string());
    for r in ranges {
        cmd.args([r.ns.to_string(), r.host.to_string(), r.count.to_string()]);
    }
    let out = cmd.output().map_err(|e| {
        format!(
            "{tool}: {e}: an unprivileged vufsd maps ids other than its own through {tool} \
             (Debian package uidmap)"
        )
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{tool} refused the map ({}): the ranges must be granted to this user in {grants}",
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_in_virtiofsd_syntax() {
        let r: IdRange = ":0:100000:65536:".parse().unwrap();
        assert_eq!(
            r,
            IdRange {
                ns: 0,
                host: 100000,
                count: 65536
            }
        );
        assert_eq!("0:1000:1".parse::<IdRange>().unwrap().host, 1000);
        for bad in [":0:100000:", ":a:1:1:", ":0:1:0:", ":4294967295:1:2:", ""] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn maps_need_both_halves_id_zero_and_no_overlap() {
        let r = |s: &str| s.parse::<IdRange>().unwrap();
        let ok = NsIdMaps {
            uid: vec![r(":0:100000:1000:"), r(":1000:1000:1:")],
            gid: vec![r(":0:100000:65536:")],
        };
        assert_eq!(ok.validate(), Ok(()));
        let half = NsIdMaps {
            uid: ok.uid.clone(),
            gid: vec![],
        };
        assert!(half
            .validate()
            .unwrap_err()
            .contains("--gid-map is missing"));
        let no_root = NsIdMaps {
            uid: vec![r(":1:100000:10:")],
            gid: ok.gid.clone(),
        };
        assert!(no_root.validate().unwrap_err().contains("namespace id 0"));
        let overlap = NsIdMaps {
            uid: vec![r(":0:100000:10:"), r(":5:200000:10:")],
            gid: ok.gid.clone(),
        };
        assert!(overlap.validate().unwrap_err().contains("overlap"));
        assert_eq!(map_text(&ok.uid), "0 100000 1000\n1000 1000 1\n");
    }
}

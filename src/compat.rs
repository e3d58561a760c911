//! Drop-in compatibility with the command lines written for upstream virtiofsd: libvirt's
//! (`--fd=N -o source=...,cache=...` or, with "separate-options", `--shared-dir ...`),
//! microvm.nix's and NixOS's, and people's scripts.
//!
//! Three jobs, one concern (virtiofsd's spelling of things):
//! - answer `--print-capabilities` the way libvirt expects ([`CAPABILITIES`]);
//! - turn the legacy `-o a,b=c` list into the long options it names ([`expand_legacy`]);
//! - accept virtiofsd options vufsd does not implement, and decide for each one given whether
//!   ignoring it is safe ([`review`]): if it is, vufsd warns and runs; if it is not (the option
//!   asks for confinement or a mapping that vufsd would silently not provide), vufsd refuses to
//!   start with one line naming the option and what to do.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use clap::{Args, ValueEnum};

/// What `--print-capabilities` prints: the vhost-user backend description libvirt reads
/// (QEMU's docs/interop/vhost-user.json). Only what vufsd really has: "separate-options" means
/// it takes `--shared-dir`, `--cache`, ... as separate options (libvirt then stops using `-o`).
/// "posix-acl-negotiation-mode" means `--posix-acl` takes never/auto/always; "migrate-precopy"
/// that the device state moves with a (pre-copy) migration, so libvirt lets the VM migrate.
/// Not advertised: "security-label-negotiation-mode" (no labels).
pub const CAPABILITIES: &str = "{\n  \"type\": \"fs\",\n  \"features\": [\n    \"migrate-precopy\",\n    \"posix-acl-negotiation-mode\",\n    \"separate-options\"\n  ]\n}\n";

/// Whether the command line asks for `--print-capabilities`. Answered before anything else is
/// parsed, because libvirt runs `vufsd --print-capabilities` with no other option at all.
pub fn wants_capabilities(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| a.as_bytes() != b"--")
        .any(|a| a.as_bytes() == b"--print-capabilities")
}

/// The `--posix-acl`/`--security-label` negotiation modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Negotiation {
    /// Off.
    Never,
    /// On when the guest asks for it.
    Auto,
    /// Required.
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InodeFileHandles {
    /// Never open file handles (the default): inodes evicted past the fd budget are reopened
    /// by name, and a root daemon keeps no CAP_DAC_READ_SEARCH.
    Never,
    /// Reopen evicted inodes from their file handles where the filesystem has them. A root
    /// daemon keeps CAP_DAC_READ_SEARCH for it, with which open_by_handle_at reaches any inode
    /// of the share's filesystem, inside the share or not (docs/security.md).
    Prefer,
    /// Old name of `prefer`.
    #[value(hide = true)]
    Fallback,
    /// As `prefer`, and refuse to start where file handles cannot be used (not root, or a
    /// filesystem without them).
    Mandatory,
}

/// virtiofsd options vufsd accepts so that existing command lines keep working. Each is either
/// implemented (`-d`, `-f`, `--print-capabilities`, `-o`) or judged by [`review`].
#[derive(Clone, Debug, Default, Args)]
pub struct VirtiofsdArgs {
    /// Print the vhost-user backend capabilities (JSON, for libvirt) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// virtiofsd's legacy option list, e.g. `-o source=/srv,cache=none,xattr` as libvirt
    /// writes it: each item is read as the long option it names (`source` is --shared-dir;
    /// `,,` is a literal comma). Items vufsd cannot honour are refused.
    #[arg(short = 'o', value_name = "LIST")]
    pub legacy_options: Vec<String>,

    /// virtiofsd's -d: the same as --log-level=debug.
    #[arg(short = 'd')]
    pub debug: bool,

    /// virtiofsd's -f (stay in the foreground): vufsd always does.
    #[arg(short = 'f')]
    pub foreground: bool,

    /// Accepted for virtiofsd compatibility; vufsd logs to stderr (the journal, under systemd).
    #[arg(long)]
    pub syslog: bool,

    /// Tell the guest which directories are mount points on the host, so that it gives each
    /// host filesystem inside the share a device number of its own (`find -xdev`, `du -x`,
    /// `df` and `mount` then see them as in the host). Without it, everything in the share
    /// has the share's device number.
    #[arg(long, overrides_with = "no_announce_submounts")]
    pub announce_submounts: bool,

    /// Do not announce submounts (the default).
    #[arg(long, overrides_with = "announce_submounts")]
    pub no_announce_submounts: bool,

    /// How inodes are found again once evicted past the fd budget (half the open-file limit;
    /// vufsd holds an O_PATH fd for the inodes under it): by name, relative to their parent
    /// directory (`never`, the default), or from their file handles (`prefer`, `mandatory`:
    /// root only, and a security trade-off, see docs/security.md).
    #[arg(long, value_enum, value_name = "MODE")]
    pub inode_file_handles: Option<InodeFileHandles>,

    /// Clear setuid/setgid bits and file capabilities on write and truncate in the daemon, as
    /// local filesystems do (FUSE_HANDLE_KILLPRIV_V2), instead of the guest sending a SETATTR
    /// for it first: one request less per write to such a file.
    #[arg(long, overrides_with = "no_killpriv_v2")]
    pub killpriv_v2: bool,

    /// Do not use FUSE_HANDLE_KILLPRIV_V2 (the default).
    #[arg(long, overrides_with = "killpriv_v2")]
    pub no_killpriv_v2: bool,

    /// Guest security labels: `never` is what vufsd does, `auto` is accepted with a warning,
    /// `always` is refused.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "always"
    )]
    pub security_label: Option<Negotiation>,

    /// Accepted with a warning: vufsd does not advertise a tag; the frontend sets it
    /// (QEMU: `-device vhost-user-fs-pci,...,tag=TAG`).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    /// Accepted with a warning: with --cache=never or metadata the guest cannot mmap files.
    #[arg(long)]
    pub allow_mmap: bool,
}

/// Rewrite every `-o LIST` (also `-oLIST`, `-o=LIST`) into the long options its items name.
/// The first element is the program name and is kept. An item vufsd cannot honour is an error
/// whose text is the one line to show the user; options it accepts without acting on them are
/// reviewed with the rest ([`review`]).
pub fn expand_legacy(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    out.extend(it.next());
    while let Some(arg) = it.next() {
        let bytes = arg.as_bytes();
        let list = if bytes == b"--" {
            out.push(arg);
            out.extend(it);
            break;
        } else if bytes == b"-o" {
            it.next()
                .ok_or("-o needs a list, e.g. -o source=/srv/share,cache=auto")?
                .into_vec()
        } else if let Some(rest) = bytes.strip_prefix(b"-o") {
            rest.strip_prefix(b"=").unwrap_or(rest).to_vec()
        } else {
            out.push(arg);
            continue;
        };
        for item in split_list(&list) {
            out.extend(legacy_item(&item)?);
        }
    }
    Ok(out)
}

/// Split a `-o` list at commas; `,,` stands for a comma inside an item (libvirt escapes commas
/// in paths that way).
fn split_list(list: &[u8]) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < list.len() {
        match (list[i], list.get(i + 1)) {
            (b',', Some(b',')) => {
                cur.push(b',');
                i += 2;
            }
            (b',', _) => {
                items.push(std::mem::take(&mut cur));
                i += 1;
            }
            (c, _) => {
                cur.push(c);
                i += 1;
            }
        }
    }
    items.push(cur);
    items.retain(|i| !i.is_empty());
    items
}

/// One `-o` item as the long options it means (the same spellings virtiofsd accepts, plus the
/// lock switches libvirt writes).
fn legacy_item(item: &[u8]) -> Result<Vec<OsString>, String> {
    let (key, value) = match item.iter().position(|&b| b == b'=') {
        Some(i) => (&item[..i], Some(&item[i + 1..])),
        None => (item, None),
    };
    let key_str = String::from_utf8_lossy(key);
    let long = |flag: &str| Ok(vec![OsString::from(flag)]);
    let with_value = |flag: &str, v: &[u8]| Ok(vec![flag.into(), OsString::from_vec(v.to_vec())]);
    match (&*key_str, value) {
        ("source", Some(v)) => with_value("--shared-dir", v),
        ("cache", Some(b"none")) => with_value("--cache", b"never"),
        ("cache", Some(v)) => with_value("--cache", v),
        ("sandbox", Some(v)) => with_value("--sandbox", v),
        ("loglevel" | "log_level", Some(b"err")) => with_value("--log-level", b"error"),
        ("loglevel" | "log_level", Some(v)) => with_value("--log-level", v),
        ("modcaps", Some(v)) => with_value("--modcaps", v),
        ("xattrmap", Some(v)) => with_value("--xattrmap", v),
        ("xattr", None) => long("--xattr"),
        ("no_xattr", None) => long("--no-xattr"),
        ("no_readdirplus", None) => long("--no-readdirplus"),
        ("writeback", None) => long("--writeback"),
        ("allow_direct_io", None) => long("--allow-direct-io"),
        ("announce_submounts", None) => long("--announce-submounts"),
        ("killpriv_v2", None) => long("--killpriv-v2"),
        ("no_killpriv_v2", None) => long("--no-killpriv-v2"),
        ("posix_acl", None) => long("--posix-acl=always"),
        ("no_posix_acl", None) => long("--posix-acl=never"),
        ("security_label", None) => long("--security-label=always"),
        ("no_security_label", None) => long("--security-label=never"),
        ("debug", None) => long("-d"),
        // The defaults, spelled out.
        ("readdirplus" | "no_writeback" | "no_allow_direct_io", None) => Ok(vec![]),
        // POSIX locks and flock() are served with host locks unless turned off.
        ("flock" | "posix_lock", None) => Ok(vec![]),
        ("no_flock", None) => long("--no-flock"),
        ("no_posix_lock", None) => long("--no-posix-lock"),
        _ => Err(format!(
            "-o {} is not a virtiofsd option vufsd knows: use the long options (see vufsd --help)",
            String::from_utf8_lossy(item)
        )),
    }
}

/// What vufsd does about one option it accepts without implementing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Safe to ignore: run, with this warning.
    Ignored(String),
    /// Not safe to ignore: refuse to start with this one-line reason.
    Refused(String),
}

/// The verdict on every accepted-but-unimplemented option, in order of importance: refusals
/// are what the caller must act on first.
pub fn review(virtiofsd: &VirtiofsdArgs) -> Vec<Notice> {
    let mut notes = review_virtiofsd(virtiofsd);
    notes.sort_by_key(|n| matches!(n, Notice::Ignored(_)));
    notes
}

fn review_virtiofsd(v: &VirtiofsdArgs) -> Vec<Notice> {
    use Notice::{Ignored, Refused};
    let mut notes = Vec::new();
    if v.syslog {
        notes.push(Ignored(
            "--syslog is not supported: logging to stderr (under systemd that is the journal)"
                .into(),
        ));
    }
    match v.security_label {
        Some(Negotiation::Auto) => notes.push(Ignored(
            "--security-label=auto is ignored: security labels are not offered to the guest".into(),
        )),
        Some(Negotiation::Always) => notes.push(Refused(
            "--security-label is not supported: vufsd cannot store the guest's security labels; \
             remove it (or use --security-label=auto)"
                .into(),
        )),
        _ => {}
    }
    if v.tag.is_some() {
        notes.push(Ignored(
            "--tag is ignored: vufsd does not advertise a tag; set it on the frontend \
             (QEMU: -device vhost-user-fs-pci,...,tag=TAG)"
                .into(),
        ));
    }
    if v.allow_mmap {
        notes.push(Ignored(
            "--allow-mmap is ignored: with --cache=never or metadata the guest cannot mmap files"
                .into(),
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn expand(v: &[&str]) -> Result<Vec<String>, String> {
        expand_legacy(os(v)).map(|a| {
            a.into_iter()
                .map(|s| s.into_string().unwrap_or_default())
                .collect()
        })
    }

    #[test]
    fn libvirt_legacy_form() {
        assert_eq!(
            expand(&[
                "vufsd",
                "--fd=3",
                "-o",
                "source=/srv/a,,b,cache=none,sandbox=chroot,xattr,no_flock,no_posix_lock",
                "--thread-pool-size=4",
                "-d"
            ])
            .unwrap(),
            [
                "vufsd",
                "--fd=3",
                "--shared-dir",
                "/srv/a,b",
                "--cache",
                "never",
                "--sandbox",
                "chroot",
                "--xattr",
                "--no-flock",
                "--no-posix-lock",
                "--thread-pool-size=4",
                "-d"
            ]
        );
    }

    #[test]
    fn attached_and_repeated_lists() {
        assert_eq!(
            expand(&["vufsd", "-osource=/x", "-o=no_xattr,loglevel=err"]).unwrap(),
            [
                "vufsd",
                "--shared-dir",
                "/x",
                "--no-xattr",
                "--log-level",
                "error"
            ]
        );
        assert_eq!(
            expand(&["vufsd", "--", "-o", "x"]).unwrap(),
            ["vufsd", "--", "-o", "x"]
        );
    }

    #[test]
    fn legacy_items_that_cannot_be_honoured() {
        let e = expand(&["vufsd", "-o", "source=/x,norace"]).unwrap_err();
        assert!(e.starts_with("-o norace is not a virtiofsd option"), "{e}");
        assert!(expand(&["vufsd", "-o"]).is_err());
    }

    #[test]
    fn lock_items() {
        let args = expand_legacy(os(&["vufsd", "-o", "posix_lock,flock"])).unwrap();
        assert_eq!(args, os(&["vufsd"]));
        let args = expand_legacy(os(&["vufsd", "-o", "no_posix_lock,no_flock"])).unwrap();
        assert_eq!(args, os(&["vufsd", "--no-posix-lock", "--no-flock"]));
    }

    #[test]
    fn capabilities_are_json_with_only_real_features() {
        assert!(CAPABILITIES.contains("\"type\": \"fs\""));
        assert!(CAPABILITIES.contains("\"separate-options\""));
        assert!(CAPABILITIES.contains("\"posix-acl-negotiation-mode\""));
        assert!(CAPABILITIES.contains("\"migrate-precopy\""));
        assert!(!CAPABILITIES.contains("security-label"));
        assert!(wants_capabilities(&os(&["vufsd", "--print-capabilities"])));
        assert!(!wants_capabilities(&os(&[
            "vufsd",
            "--",
            "--print-capabilities"
        ])));
    }

    /// The options this module defines, parsed on their own.
    #[derive(clap::Parser)]
    struct Compat {
        #[command(flatten)]
        virtiofsd: VirtiofsdArgs,
        // Options of the real command line that these tests pass alongside.
        #[arg(long)]
        seccomp: Option<String>,
        #[arg(long)]
        sandbox: Option<String>,
        #[arg(long)]
        modcaps: Option<String>,
        #[arg(long)]
        rlimit_nofile: Option<u64>,
    }

    fn notices(args: &[&str]) -> Vec<Notice> {
        let mut v = vec!["vufsd"];
        v.extend_from_slice(args);
        let c = Compat::try_parse_from(v).unwrap();
        review(&c.virtiofsd)
    }

    #[test]
    fn sandbox_options_are_real_options_now() {
        let n = notices(&[
            "--modcaps=+sys_admin:-chown",
            "--seccomp=log",
            "--rlimit-nofile=0",
        ]);
        assert!(n.is_empty(), "{n:?}");
    }

    #[test]
    fn refusals_come_first() {
        let n = notices(&["--allow-mmap", "--security-label"]);
        assert!(matches!(n[..], [Notice::Refused(_), Notice::Ignored(_)]));
    }

    #[test]
    fn the_defaults_spelled_out_need_no_notice() {
        let n = notices(&[
            "--inode-file-handles=never",
            "--no-announce-submounts",
            "--no-killpriv-v2",
            "--seccomp=kill",
            "--sandbox=namespace",
            "--security-label=never",
            "-f",
        ]);
        assert!(n.is_empty(), "{n:?}");
    }
}

//! Command-line options. Spelled like virtiofsd's wherever an option means the same thing, so
//! that callers (libvirt, NixOS, scripts) can swap the binary.

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum};
use log::LevelFilter;

use crate::fs::idmap::{IdMap, IdMapRule};
use crate::fs::open_flags::NoatimePolicy;
use crate::fs::CachePolicy;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    /// New mount, pid and network namespaces (and a user namespace when not root) with the
    /// shared directory as the root.
    Namespace,
    /// chroot(2) into the shared directory: for hosts that forbid namespaces; root only.
    Chroot,
    /// No sandbox: for running inside a sandbox provided by someone else.
    None,
}

impl From<SandboxMode> for crate::sandbox::Mode {
    fn from(m: SandboxMode) -> Self {
        match m {
            SandboxMode::Namespace => Self::Namespace,
            SandboxMode::Chroot => Self::Chroot,
            SandboxMode::None => Self::None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SeccompArg {
    /// Kill the daemon (SIGSYS); the kernel audit log names the call.
    Kill,
    /// Allow the call and log it to the kernel audit log: how to find a missing one.
    Log,
    /// Send SIGSYS: the daemon names the call on stderr and exits.
    Trap,
    /// No seccomp filter.
    None,
}

impl From<SeccompArg> for Option<crate::sandbox::seccomp::Action> {
    fn from(s: SeccompArg) -> Self {
        use crate::sandbox::seccomp::Action;
        match s {
            SeccompArg::Kill => Some(Action::Kill),
            SeccompArg::Log => Some(Action::Log),
            SeccompArg::Trap => Some(Action::Trap),
            SeccompArg::None => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    /// Revalidate everything, no data cache in the guest.
    Never,
    /// Cache metadata for a long time, file data not at all.
    Metadata,
    /// Cache for 1 s; drop cached data when a file changes.
    Auto,
    /// Cache everything for a long time; only when nothing else modifies the share.
    Always,
}

impl From<CacheArg> for CachePolicy {
    fn from(c: CacheArg) -> Self {
        match c {
            CacheArg::Never => CachePolicy::Never,
            CacheArg::Metadata => CachePolicy::Metadata,
            CacheArg::Auto => CachePolicy::Auto,
            CacheArg::Always => CachePolicy::Always,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NoatimeArg {
    /// Pass O_NOATIME where the host allows it (files the daemon owns, or with CAP_FOWNER) and
    /// drop it where it would fail with EPERM.
    Auto,
    /// Pass O_NOATIME through untouched; opens the host refuses fail with EPERM.
    Preserve,
    /// Drop O_NOATIME from every open (virtiofsd's default).
    Strip,
}

impl From<NoatimeArg> for NoatimePolicy {
    fn from(n: NoatimeArg) -> Self {
        match n {
            NoatimeArg::Auto => NoatimePolicy::Auto,
            NoatimeArg::Preserve => NoatimePolicy::Preserve,
            NoatimeArg::Strip => NoatimePolicy::Strip,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MigrationModeArg {
    /// Find each inode by its path in the shared directory, checked to be the same inode.
    FindPaths,
    /// Open each inode by its file handle (the same filesystem on both sides; the destination
    /// needs CAP_DAC_READ_SEARCH), by path where that fails. Moves unlinked open files too.
    FileHandles,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MigrationOnErrorArg {
    /// Fail the migration; the source VM goes on running.
    Abort,
    /// Migrate; the guest gets ESTALE (EBADF for open files) for the inodes that could not be
    /// moved, and locks are left behind.
    GuestError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AclArg {
    /// No ACLs.
    Never,
    /// ACLs if the guest kernel supports them.
    Auto,
    /// ACLs (a guest kernel without support is warned about and runs without).
    Always,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "vufsd",
    version,
    about = "vhost-user-fs daemon: serves a host directory to a QEMU guest over virtio-fs",
    long_about = "vhost-user-fs daemon: serves a host directory to a QEMU guest over virtio-fs.\n\n\
        QEMU connects to the socket with\n  \
        -chardev socket,id=char0,path=SOCKET -device vhost-user-fs-pci,chardev=char0,tag=TAG\n\
        (guest memory must be shared: -object memory-backend-memfd,id=mem,size=SIZE,share=on \
        -numa node,memdev=mem) and the guest mounts it with `mount -t virtiofs TAG /mnt`.\n\
        The daemon serves one connection and exits 0 when QEMU disconnects.",
    args_override_self = true
)]
pub struct Opt {
    /// Directory to share with the guest.
    #[arg(long, value_name = "DIR")]
    pub shared_dir: PathBuf,

    /// vhost-user socket to create and listen on (a stale socket file is replaced; a socket a
    /// live daemon listens on is refused). Not needed with --fd, or when systemd passes the
    /// socket (socket activation: LISTEN_FDS), which then takes precedence.
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,

    /// Deprecated spelling of --socket-path.
    #[arg(long, value_name = "PATH", hide = true, conflicts_with_all = ["fd", "socket_path"])]
    pub socket: Option<PathBuf>,

    /// Use this already-listening (not yet connected) unix socket fd instead of --socket-path.
    #[arg(long, value_name = "FD")]
    pub fd: Option<RawFd>,

    /// Give the socket created at --socket-path to this group (name or gid) with mode 0660, so
    /// that a frontend running in that group (e.g. kvm) can connect.
    #[arg(long, value_name = "GROUP", conflicts_with = "fd")]
    pub socket_group: Option<String>,

    /// What the guest may cache: auto, always, metadata or never.
    #[arg(long, value_enum, default_value = "auto", value_name = "POLICY")]
    pub cache: CacheArg,

    /// Enable the guest's writeback cache (better write performance; the guest batches writes).
    #[arg(long)]
    pub writeback: bool,

    /// Refuse every modification with EROFS. `--readonly=false` (or true) spells the choice
    /// out, for configuration files that always pass it.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub readonly: bool,

    /// Serve extended attributes.
    #[arg(long, overrides_with = "no_xattr")]
    pub xattr: bool,

    /// Translate extended attribute names between guest and host with virtiofsd's rules, e.g.
    /// `:map::user.virtiofs.:` (every guest xattr stored under `user.virtiofs.` on the host,
    /// the host's other xattrs hidden); implies --xattr. See docs/xattrmap.md.
    #[arg(long, value_name = "RULES")]
    pub xattrmap: Option<crate::fs::xattrmap::XattrMap>,

    /// Do not serve extended attributes (the default).
    #[arg(long, overrides_with = "xattr")]
    pub no_xattr: bool,

    /// Do not serve POSIX record locks (fcntl F_SETLK...): the guest kernel then keeps them
    /// to itself, and host processes do not see them (libvirt's `<lock posix='off'/>`).
    #[arg(long)]
    pub no_posix_lock: bool,

    /// Do not serve flock(2) locks: the guest kernel keeps them to itself (libvirt's
    /// `<lock flock='off'/>`).
    #[arg(long)]
    pub no_flock: bool,

    /// Disable READDIRPLUS (entries with attributes in one reply).
    #[arg(long)]
    pub no_readdirplus: bool,

    /// Honour O_DIRECT from the guest (by default it is dropped, as in virtiofsd).
    #[arg(long)]
    pub allow_direct_io: bool,

    /// O_NOATIME policy: auto (honour where the host allows, mask where it would fail with
    /// EPERM), preserve (pass through, EPERM and all), strip (always drop).
    #[arg(long, value_enum, default_value = "auto", value_name = "POLICY")]
    pub noatime: NoatimeArg,

    /// virtiofsd's spelling of --noatime=preserve.
    #[arg(long, action = ArgAction::SetTrue)]
    pub preserve_noatime: bool,

    /// Serve POSIX ACLs (system.posix_acl_* xattrs; implies --xattr). The guest then checks
    /// permissions with ACLs, and a parent directory's default ACL replaces the umask for new
    /// files. `--posix-acl` alone means `always`.
    #[arg(
        long,
        value_enum,
        require_equals = true,
        num_args = 0..=1,
        default_value = "never",
        default_missing_value = "always",
        value_name = "WHEN"
    )]
    pub posix_acl: AclArg,

    /// Translate uids between guest and host, virtiofsd's syntax: `TYPE:FROM:TO:COUNT` with TYPE
    /// `guest` (guest ids to host ids), `host` (host ids as seen by the guest), `map` (both),
    /// `squash-guest` / `squash-host` (a range onto one id), or `forbid-guest:FROM:COUNT` (guest
    /// ids that may not own files: EPERM). Ids no rule covers map to themselves. Repeatable.
    #[arg(long, value_name = "MAP")]
    pub translate_uid: Vec<IdMapRule>,

    /// Translate gids between guest and host, as --translate-uid. Repeatable.
    #[arg(long, value_name = "MAP")]
    pub translate_gid: Vec<IdMapRule>,

    /// Threads serving requests besides the one per queue; 0 serves each queue on its own
    /// thread only.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub thread_pool_size: usize,

    /// After serving requests, keep looking for more on the same queue for this many
    /// microseconds before waiting for the guest's next kick (0: never). Saves the guest a
    /// kick and the daemon a wakeup per request when requests come close together, which
    /// pays off when the guest's vCPU and the daemon run on different CPUs (50 gave 2.4-3.5x
    /// the requests/s on replayed workloads here), at the price of up to that much CPU after
    /// each request; see docs/performance.md.
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub poll_us: u64,

    /// Sandbox to run in, so that a guest that took over the daemon still finds only the shared
    /// directory (docs/security.md). If `namespace` cannot be set up, vufsd refuses to start
    /// and says which mode to use instead.
    #[arg(long, value_enum, default_value = "namespace", value_name = "MODE")]
    pub sandbox: SandboxMode,

    /// What happens when the daemon makes a system call outside its seccomp allowlist.
    #[arg(long, value_enum, default_value = "kill", value_name = "ACTION")]
    pub seccomp: SeccompArg,

    /// Change the capabilities a daemon started as root keeps, e.g. `+sys_admin:-mknod` (names
    /// as in capabilities(7), without CAP_). By default it keeps chown, dac_override, fowner,
    /// fsetid, setgid, setuid, mknod and setfcap, and drops every other.
    #[arg(long, value_name = "+CAP:-CAP", value_parser = parse_modcaps)]
    pub modcaps: Option<crate::sandbox::CapChanges>,

    /// Set the open file limit (RLIMIT_NOFILE) to N, or as close as the hard limit allows when
    /// the daemon may not raise it; 0 leaves it unchanged. By default the soft limit is raised
    /// to min(1000000, /proc/sys/fs/nr_open), or to the hard limit.
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,

    /// Run in a user namespace whose uids are mapped so (virtiofsd's syntax; repeatable, one
    /// range each): namespace uids NS..NS+COUNT are host uids HOST..HOST+COUNT. vufsd is root
    /// of that namespace, so a guest's uid 0 is host uid HOST; host ids outside the ranges show
    /// as 65534 and are out of the daemon's reach. Needs --gid-map, namespace id 0 mapped, and
    /// --sandbox=namespace. Root writes the maps itself; an unprivileged user needs newuidmap
    /// (package uidmap) and the ranges in /etc/subuid. See docs/security.md
    #[arg(long, value_name = ":NS:HOST:COUNT:")]
    pub uid_map: Vec<crate::sandbox::userns::IdRange>,

    /// As --uid-map, for gids (newgidmap and /etc/subgid when unprivileged)
    #[arg(long, value_name = ":NS:HOST:COUNT:")]
    pub gid_map: Vec<crate::sandbox::userns::IdRange>,

    /// Exit when the process that started vufsd exits, as on SIGTERM (clean up, exit 0). For a
    /// daemon started by a script that then execs QEMU (its parent is then QEMU): a VM that
    /// fails to start, or ends, leaves no daemon behind. A parent that is PID 1 (a service
    /// manager) never exits, so this does nothing there.
    #[arg(long)]
    pub exit_with_parent: bool,

    /// Exit with status 1 if no frontend has connected SECS seconds after the socket is ready;
    /// 0 waits for ever (the default).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub connect_timeout: u64,

    /// Migration (QEMU >= 8.2, docs/migration.md): how the destination finds the inodes the
    /// guest holds.
    #[arg(long, value_enum, default_value = "find-paths", value_name = "MODE")]
    pub migration_mode: MigrationModeArg,

    /// Migration: what to do about an inode that cannot be found or confirmed on the
    /// destination, or locks the guest holds on the source.
    #[arg(long, value_enum, default_value = "abort", value_name = "ACTION")]
    pub migration_on_error: MigrationOnErrorArg,

    /// Migration: require every inode to be confirmed by its file handle (both daemons serve
    /// the same directory on the same filesystem). Without it, handles (or inode numbers) are
    /// compared wherever both sides have them.
    #[arg(long)]
    pub migration_verify_handles: bool,

    /// Migration: have the source walk every path it sends, component by component, as the
    /// destination will (each path is already checked with one stat).
    #[arg(long)]
    pub migration_confirm_paths: bool,

    /// Answer connections on this unix socket with what the daemon has done and holds
    /// (OpenMetrics text: requests and errors, latency histograms, bytes, inodes, handles,
    /// fds, O_NOATIME decisions; docs/stats.md). Mode 0600: only the daemon's user may
    /// connect, unless --stats-group names a group. Read it with `vufsd --print-stats PATH`.
    #[arg(long, value_name = "PATH")]
    pub stats_socket: Option<PathBuf>,

    /// Let members of this group (name or gid) read --stats-socket too (mode 0660).
    #[arg(long, value_name = "GROUP", requires = "stats_socket")]
    pub stats_group: Option<String>,

    /// Print what the daemon listening on --stats-socket PATH reports, and exit.
    #[arg(long, value_name = "PATH")]
    pub print_stats: Option<PathBuf>,

    /// Record every FUSE request the guest sends, and the ids the replies hand out, into FILE
    /// (file contents never), for `vufsd-bench replay` (docs/performance.md). Off by default;
    /// costs a copy and a buffered write per request when on.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,

    /// Log level: error, warn, info, debug, trace or off.
    #[arg(long, default_value = "info", value_name = "LEVEL", value_parser = parse_level)]
    pub log_level: LevelFilter,

    #[command(flatten)]
    pub virtiofsd: crate::compat::VirtiofsdArgs,
}

fn parse_modcaps(s: &str) -> Result<crate::sandbox::CapChanges, String> {
    s.parse()
}

fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("invalid log level '{s}': use error, warn, info, debug, trace or off"))
}

impl Opt {
    /// The socket path from --socket-path or its deprecated alias.
    pub fn socket_path(&self) -> Option<&PathBuf> {
        self.socket_path.as_ref().or(self.socket.as_ref())
    }

    pub fn noatime_policy(&self) -> NoatimePolicy {
        if self.preserve_noatime {
            NoatimePolicy::Preserve
        } else {
            self.noatime.into()
        }
    }

    pub fn sandbox_config(&self) -> crate::sandbox::Config {
        crate::sandbox::Config {
            mode: self.sandbox.into(),
            seccomp: self.seccomp.into(),
            modcaps: self.modcaps.unwrap_or_default(),
            rlimit_nofile: self.rlimit_nofile,
            file_handles: self.file_handles() != crate::fs::FileHandles::Never,
            id_maps: crate::sandbox::userns::NsIdMaps {
                uid: self.uid_map.clone(),
                gid: self.gid_map.clone(),
            },
        }
    }

    pub fn migration_options(&self) -> crate::migration::Options {
        use crate::migration::{Mode, OnError, Options};
        Options {
            mode: match self.migration_mode {
                MigrationModeArg::FindPaths => Mode::FindPaths,
                MigrationModeArg::FileHandles => Mode::FileHandles,
            },
            on_error: match self.migration_on_error {
                MigrationOnErrorArg::Abort => OnError::Abort,
                MigrationOnErrorArg::GuestError => OnError::GuestError,
            },
            verify_handles: self.migration_verify_handles,
            confirm_paths: self.migration_confirm_paths,
        }
    }

    /// Whether inodes evicted past the fd budget may be reopened from file handles (and so
    /// whether a root daemon keeps CAP_DAC_READ_SEARCH).
    fn file_handles(&self) -> crate::fs::FileHandles {
        use crate::compat::InodeFileHandles as Arg;
        use crate::fs::FileHandles;
        match self.virtiofsd.inode_file_handles {
            None | Some(Arg::Never) => FileHandles::Never,
            Some(Arg::Prefer | Arg::Fallback) => FileHandles::Prefer,
            Some(Arg::Mandatory) => FileHandles::Mandatory,
        }
    }

    /// The filesystem's configuration, or why the options cannot go together.
    pub fn fs_config(&self) -> Result<crate::fs::Config, String> {
        let uid_map = IdMap::new(&self.translate_uid)?;
        let gid_map = IdMap::new(&self.translate_gid)?;
        let posix_acl = self.posix_acl != AclArg::Never;
        if posix_acl && !(uid_map.is_identity() && gid_map.is_identity()) {
            return Err(
                "--posix-acl cannot be combined with --translate-uid/--translate-gid: \
                        ACL entries name host ids the translation would not see; drop one of them"
                    .into(),
            );
        }
        Ok(crate::fs::Config {
            cache: self.cache.into(),
            writeback: self.writeback,
            xattr: (self.xattr && !self.no_xattr) || self.xattrmap.is_some(),
            xattrmap: self.xattrmap.clone().map(std::sync::Arc::new),
            readonly: self.readonly,
            readdirplus: !self.no_readdirplus,
            posix_locks: !self.no_posix_lock,
            announce_submounts: self.virtiofsd.announce_submounts,
            killpriv_v2: self.virtiofsd.killpriv_v2,
            flock: !self.no_flock,
            allow_direct_io: self.allow_direct_io,
            noatime: self.noatime_policy(),
            posix_acl,
            uid_map,
            gid_map,
            file_handles: self.file_handles(),
        })
    }
}

/// The options reference in Markdown, generated from the definitions above so that
/// docs/options.md cannot drift from the binary (a test compares the two).
pub fn options_markdown() -> String {
    use clap::CommandFactory;
    let cmd = Opt::command();
    let mut out = String::from(
        "# vufsd options\n\n\
         <!-- Generated from src/cli.rs by `VUFSD_BLESS=1 cargo test --test docs`; do not edit. -->\n\n\
         `vufsd --shared-dir DIR (--socket-path PATH | --fd FD) [OPTIONS]`\n\n\
         Options spelled like upstream virtiofsd's mean the same thing there.\n\n",
    );
    for arg in cmd.get_arguments() {
        if arg.is_hide_set() {
            continue;
        }
        let name = match (arg.get_long(), arg.get_short()) {
            (Some(long), _) => format!("--{long}"),
            (None, Some(short)) => format!("-{short}"),
            (None, None) => continue,
        };
        let takes_value = arg.get_action().takes_values();
        let value = arg
            .get_value_names()
            .and_then(|v| v.first())
            .map(|v| v.to_string())
            .unwrap_or_else(|| "VALUE".into());
        match (takes_value, arg.get_long()) {
            (true, Some(_)) => out.push_str(&format!("## `{name}={value}`\n\n")),
            (true, None) => out.push_str(&format!("## `{name} {value}`\n\n")),
            (false, _) => out.push_str(&format!("## `{name}`\n\n")),
        }
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        out.push_str(&help);
        out.push_str("\n\n");
        let values: Vec<_> = arg
            .get_possible_values()
            .into_iter()
            .filter(|v| !v.is_hide_set())
            .collect();
        if takes_value && !values.is_empty() {
            out.push_str("| value | meaning |\n|---|---|\n");
            for v in values {
                let help = v.get_help().map(|h| h.to_string()).unwrap_or_default();
                out.push_str(&format!("| `{}` | {} |\n", v.get_name(), help));
            }
            out.push('\n');
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        if takes_value && !defaults.is_empty() {
            out.push_str(&format!("Default: `{}`\n\n", defaults.join(",")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Opt, clap::Error> {
        Opt::try_parse_from(std::iter::once("vufsd").chain(args.iter().copied()))
    }

    #[test]
    fn virtiofsd_spelling_parses() {
        let o = parse(&[
            "--socket-path=/run/x.sock",
            "--shared-dir=/srv",
            "--cache=never",
            "--xattr",
            "--thread-pool-size=4",
            "--sandbox=none",
            "--log-level=debug",
            "--preserve-noatime",
        ])
        .unwrap();
        assert_eq!(o.cache, CacheArg::Never);
        assert!(o.fs_config().unwrap().xattr);
        assert_eq!(o.noatime_policy(), NoatimePolicy::Preserve);
        assert_eq!(o.log_level, LevelFilter::Debug);
    }

    #[test]
    fn the_last_xattr_flag_wins() {
        let o = parse(&["--socket-path=s", "--shared-dir=d", "--xattr", "--no-xattr"]).unwrap();
        assert!(!o.fs_config().unwrap().xattr);
        let o = parse(&["--socket-path=s", "--shared-dir=d", "--no-xattr", "--xattr"]).unwrap();
        assert!(o.fs_config().unwrap().xattr);
    }

    #[test]
    fn a_socket_is_exclusive() {
        // No socket at all parses: systemd may pass one (the daemon refuses if none comes).
        assert!(parse(&["--shared-dir=d"]).is_ok());
        assert!(parse(&["--shared-dir=d", "--socket-path=s", "--fd=3"]).is_err());
        assert!(parse(&["--shared-dir=d", "--fd=3"]).is_ok());
        assert_eq!(
            parse(&["--shared-dir=d", "--socket=old"])
                .unwrap()
                .socket_path(),
            Some(&PathBuf::from("old"))
        );
    }

    #[test]
    fn readonly_takes_an_optional_boolean() {
        let ro = |args: &[&str]| parse(args).map(|o| o.fs_config().unwrap().readonly);
        let base = ["--socket-path=s", "--shared-dir=d"];
        assert!(!ro(&base).unwrap());
        assert!(ro(&[&base[..], &["--readonly"]].concat()).unwrap());
        assert!(ro(&[&base[..], &["--readonly=true"]].concat()).unwrap());
        assert!(!ro(&[&base[..], &["--readonly=false"]].concat()).unwrap());
        assert!(ro(&[&base[..], &["--readonly=maybe"]].concat()).is_err());
    }

    #[test]
    fn id_translation_rules() {
        let o = parse(&[
            "--socket-path=s",
            "--shared-dir=d",
            "--translate-uid=map:1000:101000:10",
            "--translate-gid=squash-guest:0:100:4294967295",
        ])
        .unwrap();
        let cfg = o.fs_config().unwrap();
        assert_eq!(cfg.uid_map.to_host(1001), Some(101001));
        assert_eq!(cfg.gid_map.to_host(7), Some(100));
        assert!(parse(&[
            "--socket-path=s",
            "--shared-dir=d",
            "--translate-uid=maps:1:2:3"
        ])
        .is_err());
        let overlapping = parse(&[
            "--socket-path=s",
            "--shared-dir=d",
            "--translate-uid=guest:0:10:10",
            "--translate-uid=guest:5:100:10",
        ])
        .unwrap();
        assert!(overlapping.fs_config().is_err());
    }

    #[test]
    fn sandbox_options() {
        let c = parse(&["--socket-path=s", "--shared-dir=d"])
            .unwrap()
            .sandbox_config();
        assert_eq!(c.mode, crate::sandbox::Mode::Namespace);
        assert_eq!(c.seccomp, Some(crate::sandbox::seccomp::Action::Kill));
        assert_eq!(c.rlimit_nofile, None);
        let c = parse(&[
            "--socket-path=s",
            "--shared-dir=d",
            "--sandbox=chroot",
            "--seccomp=none",
            "--modcaps=+sys_admin:-mknod",
            "--rlimit-nofile=0",
        ])
        .unwrap()
        .sandbox_config();
        assert_eq!(c.mode, crate::sandbox::Mode::Chroot);
        assert_eq!(c.seccomp, None);
        assert_eq!(c.rlimit_nofile, Some(0));
        let kept = c.modcaps.apply(crate::sandbox::CapSet::PASSTHROUGH);
        assert!(kept.contains(21) && !kept.contains(27));
        assert!(parse(&["--socket-path=s", "--shared-dir=d", "--modcaps=+nonsense"]).is_err());
        assert!(parse(&["--socket-path=s", "--shared-dir=d", "--seccomp=maybe"]).is_err());
    }

    #[test]
    fn migration_options_take_virtiofsds_spellings() {
        use crate::migration::{Mode, OnError};
        let m = parse(&["--socket-path=s", "--shared-dir=d"])
            .unwrap()
            .migration_options();
        assert_eq!((m.mode, m.on_error), (Mode::FindPaths, OnError::Abort));
        assert!(!m.verify_handles && !m.confirm_paths);
        let m = parse(&[
            "--socket-path=s",
            "--shared-dir=d",
            "--migration-mode=file-handles",
            "--migration-on-error=guest-error",
            "--migration-verify-handles",
            "--migration-confirm-paths",
        ])
        .unwrap()
        .migration_options();
        assert_eq!(
            (m.mode, m.on_error),
            (Mode::FileHandles, OnError::GuestError)
        );
        assert!(m.verify_handles && m.confirm_paths);
        assert!(parse(&[
            "--socket-path=s",
            "--shared-dir=d",
            "--migration-mode=by-magic"
        ])
        .is_err());
        assert!(parse(&[
            "--socket-path=s",
            "--shared-dir=d",
            "--migration-on-error=shrug"
        ])
        .is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--socket-path=s", "--shared-dir=d", "--cache=sometimes"]).is_err());
        assert!(parse(&["--socket-path=s", "--shared-dir=d", "--noatime=maybe"]).is_err());
        assert!(parse(&["--socket-path=s", "--shared-dir=d", "--log-level=loud"]).is_err());
    }
}

//! The invocations: every virtiofsd command line in the wild that compat.rs runs against
//! vufsd, where it comes from, and what vufsd must do with it.

#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// Starts and listens; the log has one warning per needle (and no other warning).
    Accept(&'static [&'static str]),
    /// Exit status 1 with exactly one `vufsd: error:` line containing every needle.
    Refuse(&'static [&'static str]),
}

#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub source: &'static str,
    pub args: &'static [&'static str],
    /// Run as nobody (65534) instead of root.
    pub unprivileged: bool,
    pub expect: Expect,
}

pub const fn case(source: &'static str, args: &'static [&'static str], expect: Expect) -> Case {
    Case {
        source,
        args,
        unprivileged: false,
        expect,
    }
}

pub use Expect::{Accept, Refuse};

/// `{share}`, `{sock}` and `{fd}` are filled in per case; `{fd}` is an inherited listening
/// socket, as libvirt passes it.
pub const CASES: &[Case] = &[
    // --- libvirt, legacy -o form (virtiofsd without "separate-options") ---------------------
    case(
        "libvirt -o, cache=none + xattr + thread pool",
        &[
            "--fd={fd}",
            "-o",
            "source={share},cache=none,xattr",
            "--thread-pool-size=2",
        ],
        Accept(&[]),
    ),
    case(
        "libvirt -o, <lock posix='off' flock='off'/>, debug",
        &[
            "--fd={fd}",
            "-o",
            "source={share},no_xattr,no_flock,no_posix_lock",
            "-d",
        ],
        Accept(&[]),
    ),
    case(
        "libvirt -o, <lock posix='on' flock='on'/>, posix_acl",
        &[
            "--fd={fd}",
            "-o",
            "source={share},xattr,posix_lock,flock,posix_acl",
            "--thread-pool-size=1",
        ],
        Accept(&[]),
    ),
    case(
        "libvirt -o, <sandbox mode='chroot'/>",
        &[
            "--fd={fd}",
            "-o",
            "source={share},cache=always,sandbox=chroot",
        ],
        Accept(&[]),
    ),
    case(
        "C virtiofsd -o item vufsd does not know",
        &["--socket-path={sock}", "-o", "source={share},norace"],
        Refuse(&["-o norace"]),
    ),
    // --- libvirt with "separate-options" ----------------------------------------------------
    case(
        "libvirt separate options, <openfiles max=...>, debug",
        &[
            "--fd={fd}",
            "--shared-dir",
            "{share}",
            "--cache",
            "always",
            "--xattr",
            "--thread-pool-size=0",
            "--rlimit-nofile=65536",
            "--log-level",
            "debug",
        ],
        Accept(&[]),
    ),
    case(
        "libvirt session mode (uid/gid maps), vufsd running as root",
        &[
            "--fd={fd}",
            "--shared-dir",
            "{share}",
            "--uid-map=:0:1000:1:",
            "--uid-map=:1:100000:65536:",
            "--gid-map=:0:1000:1:",
        ],
        Accept(&[]),
    ),
    Case {
        source: "libvirt session mode (uid/gid maps), vufsd unprivileged",
        args: &[
            "--fd={fd}",
            "--shared-dir",
            "{share}",
            "--uid-map=:0:65534:1:",
            "--gid-map=:0:65534:1:",
        ],
        unprivileged: true,
        expect: Accept(&[]),
    },
    case(
        "uid map without a gid map",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--uid-map=:0:100000:65536:",
        ],
        Refuse(&["--gid-map is missing"]),
    ),
    case(
        "uid/gid maps with --sandbox none",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--sandbox=none",
            "--uid-map=:0:100000:65536:",
            "--gid-map=:0:100000:65536:",
        ],
        Refuse(&["need --sandbox=namespace"]),
    ),
    // --- microvm.nix ------------------------------------------------------------------------
    case(
        "microvm.nix, root, posixAcl, inodeFileHandles=prefer, readOnly",
        &[
            "--socket-path={sock}",
            "--socket-group=daemon",
            "--shared-dir={share}",
            "--rlimit-nofile",
            "1048576",
            "--thread-pool-size",
            "4",
            "--posix-acl",
            "--xattr",
            "--cache=auto",
            "--inode-file-handles=prefer",
            "--readonly",
        ],
        Accept(&[]),
    ),
    Case {
        source: "microvm.nix, unprivileged, crosvm tag",
        args: &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--thread-pool-size",
            "1",
            "--cache=never",
            "--tag=store",
        ],
        unprivileged: true,
        expect: Accept(&["--tag is ignored"]),
    },
    // --- nixpkgs ------------------------------------------------------------------------------
    case(
        "nixpkgs vmTools runInLinuxVM (and the virtiofs-era qemu-vm.nix reconstruction)",
        &[
            "--xattr",
            "--socket-path",
            "{sock}",
            "--sandbox",
            "none",
            "--seccomp",
            "none",
            "--shared-dir",
            "{share}",
        ],
        Accept(&[]),
    ),
    Case {
        source: "vufsd-as-virtiofsd's own arguments before nixpkgs', unprivileged",
        args: &[
            "--exit-with-parent",
            "--log-level=warn",
            "--xattr",
            "--socket-path",
            "{sock}",
            "--sandbox",
            "none",
            "--seccomp",
            "none",
            "--shared-dir",
            "{share}",
            "--log-level=info",
        ],
        unprivileged: true,
        expect: Accept(&[]),
    },
    Case {
        // (It also passes --log-level=warn, left out: the test sees "listening on" at info.)
        source: "the 9p-era NixOS QEMU wrapper's daemon (store share, squashIds), unprivileged",
        args: &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--cache=always",
            "--noatime=auto",
            "--readonly=true",
            "--sandbox=none",
            "--exit-with-parent",
            "--translate-uid=squash-host:0:0:4294967295",
            "--translate-gid=squash-host:0:0:4294967295",
            "--translate-uid=squash-guest:0:65534:4294967295",
            "--translate-gid=squash-guest:0:65534:4294967295",
        ],
        unprivileged: true,
        expect: Accept(&[]),
    },
    // --- scripts and virtiofsd's documentation ----------------------------------------------
    case(
        "unprivileged store share (clan, nixos-shell style)",
        &[
            "--socket-path",
            "{sock}",
            "--cache",
            "always",
            "--sandbox",
            "none",
            "--shared-dir",
            "{share}",
        ],
        Accept(&[]),
    ),
    case(
        "deprecated --socket, -f, --syslog",
        &["--socket={sock}", "--shared-dir={share}", "-f", "--syslog"],
        Accept(&["--syslog"]),
    ),
    case(
        "virtiofsd defaults spelled out",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--no-announce-submounts",
            "--inode-file-handles=never",
            "--seccomp=none",
            "--no-killpriv-v2",
            "--posix-acl=never",
            "--security-label=never",
            "--preserve-noatime",
        ],
        Accept(&[]),
    ),
    case(
        "--announce-submounts, --killpriv-v2, --allow-mmap, --seccomp=log",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--announce-submounts",
            "--killpriv-v2",
            "--allow-mmap",
            "--seccomp=log",
        ],
        Accept(&["--allow-mmap"]),
    ),
    case(
        "--modcaps adding only",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--modcaps=+sys_admin",
        ],
        Accept(&[]),
    ),
    case(
        "--modcaps dropping",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--modcaps=+sys_admin:-chown",
        ],
        Accept(&[]),
    ),
    case(
        "virtiofsd's default sandbox, asked for",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--sandbox=namespace",
        ],
        Accept(&[]),
    ),
    case(
        "--seccomp=kill",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--seccomp=kill",
        ],
        Accept(&[]),
    ),
    case(
        "--translate-uid as root (nixpkgs' squash)",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--translate-uid=squash-guest:0:1000:4294967295",
            "--translate-gid=squash-guest:0:100:4294967295",
        ],
        Accept(&[]),
    ),
    case(
        "--translate-uid with --posix-acl",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--posix-acl",
            "--translate-uid=map:0:1000:1",
        ],
        Refuse(&["--posix-acl", "--translate-uid"]),
    ),
    // File handles are a choice (docs/security.md): root keeps CAP_DAC_READ_SEARCH for them;
    // an unprivileged daemon cannot open them, and `mandatory` then refuses to start.
    case(
        "--inode-file-handles=mandatory, root",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--inode-file-handles=mandatory",
        ],
        Accept(&[]),
    ),
    Case {
        source: "--inode-file-handles=mandatory, unprivileged",
        args: &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--sandbox=none",
            "--inode-file-handles=mandatory",
        ],
        unprivileged: true,
        expect: Refuse(&[
            "--inode-file-handles=mandatory",
            "CAP_DAC_READ_SEARCH",
            "never",
        ]),
    },
    case(
        "--xattrmap (Kata's)",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--xattr",
            "--xattrmap=:map::user.virtiofs.:",
        ],
        Accept(&[]),
    ),
    case(
        "--security-label",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--security-label",
        ],
        Refuse(&["--security-label"]),
    ),
    case(
        "--writeback, --allow-direct-io, --no-readdirplus",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--writeback",
            "--allow-direct-io",
            "--no-readdirplus",
        ],
        Accept(&[]),
    ),
    case(
        "--migration-* (virtiofsd's spellings, implemented)",
        &[
            "--socket-path={sock}",
            "--shared-dir={share}",
            "--migration-mode=file-handles",
            "--migration-on-error=guest-error",
            "--migration-verify-handles",
            "--migration-confirm-paths",
        ],
        // file-handles mode opens handles on a destination: without
        // --inode-file-handles=prefer the daemon may not, and says it will go by path.
        Accept(&["--migration-mode=file-handles"]),
    ),
];

//! Generated documentation is kept current by these tests: docs/options.md and the man page
//! docs/vufsd.1 come from the CLI definition. Regenerate with
//! `VUFSD_BLESS=1 cargo test --test docs`.

use std::path::Path;

/// Compare `rel` with `want`, or write it when blessing.
fn check_generated(rel: &str, want: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if std::env::var_os("VUFSD_BLESS").is_some() {
        std::fs::write(&path, want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{rel} is stale: run `VUFSD_BLESS=1 cargo test --test docs` and commit it"
    );
}

#[test]
fn options_reference_is_current() {
    check_generated("docs/options.md", &vufsd::cli::options_markdown());
}

/// What the man page adds to the CLI definition: where to go for each way of running vufsd.
const MAN_TAIL: &str = r#".SH ENVIRONMENT
.TP
\fBLISTEN_PID\fR, \fBLISTEN_FDS\fR
systemd socket activation: when LISTEN_PID is vufsd's pid and LISTEN_FDS is 1, fd 3 is the
listening socket (unless \-\-fd is given); \-\-socket\-path is then not used.
.TP
\fBNOTIFY_SOCKET\fR
systemd readiness: vufsd sends READY=1 there once it listens (Type=notify).
.SH EXIT STATUS
0 when the frontend disconnects, on SIGTERM, SIGINT or SIGHUP, or (with
\-\-exit\-with\-parent) when the process that started it exits; 1 with one line on stderr
(\fBvufsd: error: ...\fR) when it cannot start or refuses an option, and when no frontend
connected within \-\-connect\-timeout; 2 for a malformed command line. With \-\-sandbox=namespace the process started supervises the sandboxed daemon
and exits with its status: 128+N when it was killed by signal N (159: a system call outside
its seccomp filter).
.SH FILES
.TP
\fB/usr/lib/systemd/system/vufsd@.service\fR, \fBvufsd@.socket\fR
one socket\-activated daemon per share, configured in \fB/etc/vufsd/\fINAME\fB.conf\fR
.TP
\fB/usr/share/qemu/vhost\-user/50\-vufsd.json\fR
the vhost\-user backend description libvirt discovers vufsd by
.SH SEE ALSO
docs/running.md (plain QEMU), docs/systemd.md, docs/libvirt.md, docs/nixos.md,
docs/troubleshooting.md, docs/design.md and docs/noatime.md in the vufsd sources;
\fBqemu\fR(1), \fBsystemd.socket\fR(5), \fBvirsh\fR(1).
"#;

#[test]
fn man_page_is_current() {
    use clap::CommandFactory;
    let cmd = vufsd::cli::Opt::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .date("")
        .render(&mut page)
        .unwrap();
    let mut page = String::from_utf8(page).unwrap();
    page.push_str(MAN_TAIL);
    // Every documented option is in the page (roff escapes its dashes).
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if let Some(long) = arg.get_long() {
            let roff = format!("\\-\\-{}", long.replace('-', "\\-"));
            assert!(page.contains(&roff), "--{long} missing from the man page");
        }
    }
    check_generated("docs/vufsd.1", &page);
}

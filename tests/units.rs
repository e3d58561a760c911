//! The deployment files, checked without a VM: the systemd units (rendered from
//! contrib/share-options.json and accepted by `systemd-analyze verify`), the Nix files (they
//! parse, and nix/lib.nix gives the same command line as the unit), and the systemd protocol as
//! a process sees it (READY=1 once listening, LISTEN_PID honoured).

mod common;

use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use common::{vufsd_bin, TestDir};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn share_options() -> Vec<Value> {
    let v: Value = serde_json::from_str(&read("contrib/share-options.json")).unwrap();
    v["settings"].as_array().unwrap().clone()
}

/// The unit's ExecStart= arguments and Environment= defaults, rendered from
/// contrib/share-options.json.
fn rendered_unit_lines() -> (String, String) {
    let mut exec = String::from("ExecStart=/usr/bin/vufsd");
    let mut env = String::from("Environment=");
    for s in share_options() {
        if s["type"] == "fixed" {
            let (flag, value) = (s["flag"].as_str().unwrap(), s["value"].as_str().unwrap());
            exec.push_str(&format!(" {flag}={value}"));
            continue;
        }
        let var = s["env"].as_str().unwrap();
        match s["type"].as_str().unwrap() {
            "args" => exec.push_str(&format!(" ${var}")),
            _ => exec.push_str(&format!(" {}=${{{var}}}", s["flag"].as_str().unwrap())),
        }
        let default = match &s["default"] {
            Value::Null => continue,
            Value::Array(a) if a.is_empty() => String::new(),
            Value::String(v) => v.clone(),
            other => other.to_string(),
        };
        env.push_str(&format!("{var}={default} "));
    }
    (exec, env.trim_end().to_string())
}

fn unit_line<'a>(unit: &'a str, key: &str) -> &'a str {
    let lines: Vec<&str> = unit.lines().filter(|l| l.starts_with(key)).collect();
    assert_eq!(lines.len(), 1, "one {key} line expected");
    lines[0]
}

#[test]
fn the_unit_follows_share_options() {
    let unit = read("contrib/systemd/vufsd@.service");
    let (exec, env) = rendered_unit_lines();
    assert_eq!(unit_line(&unit, "ExecStart="), exec);
    assert_eq!(unit_line(&unit, "Environment="), env);
    // The example configuration names the same variables, and only those.
    let example = read("contrib/systemd/example.conf");
    let vars: Vec<&str> = example
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap())
        .collect();
    let want: Vec<String> = share_options()
        .iter()
        .filter_map(|s| s["env"].as_str().map(String::from))
        .collect();
    assert_eq!(vars, want);
}

/// Run `systemd-analyze verify` on the units as installed for instance `name`, with the
/// binary path pointing at the vufsd just built (verify checks that it exists).
#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let dir = TestDir::new("units_verify");
    for (src, dst) in [
        ("contrib/systemd/vufsd@.service", "vufsd@web.service"),
        ("contrib/systemd/vufsd@.socket", "vufsd@web.socket"),
    ] {
        let text = read(src).replace("/usr/bin/vufsd", vufsd_bin().to_str().unwrap());
        std::fs::write(dir.path().join(dst), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args([
            "verify",
            "--man=no",
            "./vufsd@web.service",
            "./vufsd@web.socket",
        ])
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (apt package systemd; scripts/install-deps installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // Unknown or misspelt directives are only warnings for systemd: any output is a failure.
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify complained:\n{text}"
    );
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() && !name.starts_with('.') && name != "target" {
            nix_files(&p, out);
        } else if name.ends_with(".nix") {
            out.push(p);
        }
    }
}

use common::nix::instantiate as nix_instantiate;

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("flake.nix")), "{files:?}");
    assert!(
        files.len() >= 5,
        "expected flake.nix and nix/*.nix: {files:?}"
    );
    for f in files {
        let out = nix_instantiate(&["--parse", f.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{} does not parse:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Evaluate nix/lib.nix for `share` (a Nix attribute set literal): (args, envFile).
fn nix_share(share: &str) -> (Vec<String>, String) {
    let expr = format!(
        "let l = import {}/nix/lib.nix; s = {share}; in {{ args = l.args s; env = l.envFile s; }}",
        repo().display()
    );
    let out = nix_instantiate(&["--eval", "--strict", "--json", "-E", &expr]);
    assert!(
        out.status.success(),
        "evaluating {share}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let args = v["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    (args, v["env"].as_str().unwrap().to_string())
}

/// An EnvironmentFile as systemd reads the forms nix/lib.nix writes: `KEY='verbatim'` or
/// `KEY=plain`, comments and blank lines skipped.
fn parse_env_file(text: &str, env: &mut Vec<(String, String)>) {
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (k, v) = line.split_once('=').expect("KEY=VALUE");
        let v = v
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(v);
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
}

/// systemd's ExecStart= expansion for the two forms the unit uses: `${VAR}` inside a word is
/// replaced by the value as one argument, `$VAR` as a word of its own is split at whitespace.
fn expand_exec_start(line: &str, env: &[(String, String)]) -> Vec<String> {
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut argv = Vec::new();
    for word in line.trim_start_matches("ExecStart=").split(' ').skip(1) {
        if let Some(var) = word.strip_prefix('$').filter(|w| !w.starts_with('{')) {
            argv.extend(get(var).split_whitespace().map(String::from));
        } else if let (Some(open), Some(close)) = (word.find("${"), word.find('}')) {
            argv.push(format!(
                "{}{}{}",
                &word[..open],
                get(&word[open + 2..close]),
                &word[close + 1..]
            ));
        } else {
            argv.push(word.to_string());
        }
    }
    argv
}

#[test]
fn nix_and_the_unit_give_the_same_command_line() {
    let unit = read("contrib/systemd/vufsd@.service");
    let exec = unit_line(&unit, "ExecStart=");
    let defaults = unit_line(&unit, "Environment=").trim_start_matches("Environment=");
    for share in [
        r#"{ sharedDir = "/srv/share"; }"#,
        r#"{ sharedDir = "/srv/my share"; cache = "never"; readonly = true; noatime = "strip"; }"#,
        r#"{ sharedDir = "/nix/store"; cache = "always"; extraArgs = [ "--xattr" "--thread-pool-size=2" ]; }"#,
    ] {
        let (args, env_file) = nix_share(share);
        let mut env = Vec::new();
        for assignment in defaults.split(' ') {
            parse_env_file(assignment, &mut env);
        }
        parse_env_file(&env_file, &mut env);
        assert_eq!(expand_exec_start(exec, &env), args, "share {share}");
        // And vufsd takes that command line.
        let mut argv = vec!["vufsd".to_string()];
        argv.extend(args);
        if let Err(e) = vufsd::cli::Opt::try_parse_from(&argv) {
            panic!("vufsd refuses {argv:?}: {e}");
        }
    }
}

#[test]
fn nix_refuses_extra_args_that_systemd_would_split() {
    let expr = format!(
        "(import {}/nix/lib.nix).args {{ sharedDir = \"/x\"; extraArgs = [ \"--a=b c\" ]; }}",
        repo().display()
    );
    let out = nix_instantiate(&["--eval", "--strict", "-E", &expr]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("extraArgs must not contain"));
}

/// Connect to the daemon's socket once it listens (bind and listen are two syscalls: retry a
/// refused connection until the deadline).
fn connect_when_listening(sock: &Path, child: &mut std::process::Child) -> UnixStream {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return s,
            Err(e) => {
                assert!(child.try_wait().unwrap().is_none(), "vufsd exited");
                assert!(
                    std::time::Instant::now() < deadline,
                    "cannot connect to {}: {e}",
                    sock.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Start vufsd on a fresh share with `env`; returns the child and the socket path.
fn spawn_vufsd(dir: &TestDir, env: &[(&str, &str)]) -> (std::process::Child, PathBuf) {
    let share = dir.mkdir("share");
    let sock = dir.path().join("vfs.sock");
    let child = Command::new(vufsd_bin())
        .arg(format!("--socket-path={}", sock.display()))
        .arg(format!("--shared-dir={}", share.display()))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, sock)
}

fn check_ready(notify_socket: &str, rx: UnixDatagram) {
    let dir = TestDir::new("units_notify");
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (child, sock) = spawn_vufsd(&dir, &[("NOTIFY_SOCKET", notify_socket)]);
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("READY=1 within 10 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // Ready means listening: a frontend connecting now is accepted (and, since this one
    // leaves at once, the daemon then exits 0).
    UnixStream::connect(&sock).expect("listening when READY=1 arrives");
    let out = child.wait_with_output().unwrap();
    let (status, stderr) = (out.status, String::from_utf8_lossy(&out.stderr));
    assert!(status.success(), "{stderr}");
}

#[test]
fn ready_is_sent_to_a_path_notify_socket_once_listening() {
    let dir = TestDir::new("units_notify_path");
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    check_ready(path.to_str().unwrap(), rx);
}

#[test]
fn ready_is_sent_to_an_abstract_notify_socket() {
    let name = format!("vufsd-test-notify-{}", std::process::id());
    let rx =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    check_ready(&format!("@{name}"), rx);
}

#[test]
fn activation_variables_for_another_process_are_ignored() {
    // LISTEN_PID names someone else (here: pid 1): vufsd must not take fd 3, and binds its path.
    let dir = TestDir::new("units_listen_pid");
    let (mut child, sock) = spawn_vufsd(&dir, &[("LISTEN_PID", "1"), ("LISTEN_FDS", "1")]);
    drop(connect_when_listening(&sock, &mut child));
    assert!(child.wait().unwrap().success());
}

#[test]
fn notify_socket_values_are_checked() {
    // A relative NOTIFY_SOCKET is an error worth a warning, not a reason to stop serving.
    let dir = TestDir::new("units_notify_bad");
    let (mut child, sock) = spawn_vufsd(&dir, &[("NOTIFY_SOCKET", "relative/notify")]);
    drop(connect_when_listening(&sock, &mut child));
    assert!(child.wait().unwrap().success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("cannot notify the service manager"),
        "{stderr}"
    );
}

#[test]
fn two_activated_sockets_are_refused() {
    // systemd-socket-activate speaks the real protocol (LISTEN_PID is the exec'd vufsd's pid);
    // vufsd serves one socket, so a unit with two ListenStream= must be refused clearly.
    let dir = TestDir::new("units_two_sockets");
    let share = dir.mkdir("share");
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let mut child = Command::new("systemd-socket-activate")
        .arg(format!("--listen={}", a.display()))
        .arg(format!("--listen={}", b.display()))
        .arg(vufsd_bin())
        .arg(format!("--shared-dir={}", share.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (apt package systemd)");
    // The activator execs vufsd on the first connection.
    let _conn = connect_when_listening(&a, &mut child);
    let out = child.wait_with_output().unwrap();
    let (status, stderr) = (out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vufsd: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("systemd passed 2 sockets") && errors[0].contains("ListenStream="),
        "{stderr}"
    );
}

//! `nix-instantiate` for the tests that read the Nix files: builtins-only files (nix/lib.nix,
//! nix/vm-scripts.nix) evaluate with a bare nix-instantiate, no nixpkgs.

use std::process::{Command, Output};

/// `nix-instantiate ARGS`, as it ran.
pub fn instantiate(args: &[&str]) -> Output {
    Command::new("nix-instantiate")
        // No build users exist here, and none are needed to evaluate or instantiate.
        .args(["--option", "build-users-group", ""])
        .args(args)
        .output()
        .expect("nix-instantiate (apt package nix-bin; scripts/install-deps installs it)")
}

/// The value of `expr` as JSON; panics with Nix's message when it does not evaluate.
pub fn eval_json(expr: &str) -> serde_json::Value {
    let out = instantiate(&["--eval", "--strict", "--json", "-E", expr]);
    assert!(
        out.status.success(),
        "evaluating {expr}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("nix-instantiate --json output")
}

/// The value of `expr`, which must be a string.
pub fn eval_string(expr: &str) -> String {
    match eval_json(expr) {
        serde_json::Value::String(s) => s,
        other => panic!("{expr} gave {other}, not a string"),
    }
}

//! The Nix side, evaluated and instantiated as NixOS does it (nothing is built): the NixOS
//! module (units, drop-ins, /etc/vufsd/NAME.conf, users, every bad value's message), the
//! test-driver module in a VM node composed as runNixOSTest composes one, for both eras of
//! nixpkgs' qemu-vm.nix, and the flake's outputs. tests/nixos/eval.nix does the evaluating;
//! tests/nixos/README.md says what it evaluates against.
//!
//! Material: the nixos-eval kit (real nixpkgs `lib` and stand-ins for NixOS modules) from
//! `VUFSD_NIXOS_EVAL_KIT`, or `../shared/nixos-eval` beside this checkout; and/or a real
//! nixpkgs from `VUFSD_NIXPKGS`, or `nixpkgs` in `NIX_PATH`. With neither, every test here
//! says loudly that it did not run (and passes): a user's clone has no kit. `.ci/run` runs
//! them with the kit.

mod common;

use std::path::PathBuf;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Clone, Debug)]
enum Source {
    Kit(PathBuf),
    Nixpkgs(PathBuf),
}

/// A path from `var`, which must exist when set.
fn from_env(var: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(var)?);
    assert!(
        p.is_dir(),
        "{var}={} is not a directory: point it at {}",
        p.display(),
        if var == "VUFSD_NIXPKGS" {
            "a nixpkgs checkout"
        } else {
            "the nixos-eval kit (../shared/nixos-eval)"
        }
    );
    Some(p.canonicalize().unwrap())
}

/// What to evaluate against, loudly saying so when there is nothing.
fn sources(test: &str) -> Vec<Source> {
    let mut found = Vec::new();
    let kit = from_env("VUFSD_NIXOS_EVAL_KIT").or_else(|| {
        let beside = repo().join("../shared/nixos-eval");
        beside.is_dir().then(|| beside.canonicalize().unwrap())
    });
    found.extend(kit.map(Source::Kit));
    let nixpkgs = from_env("VUFSD_NIXPKGS").or_else(|| {
        let out = nix(&["--find-file", "nixpkgs"]).ok()?;
        let p = PathBuf::from(String::from_utf8_lossy(&out).trim());
        p.join("nixos").is_dir().then_some(p)
    });
    found.extend(nixpkgs.map(Source::Nixpkgs));
    if found.is_empty() {
        eprintln!(
            "\n!!!!!!!! NOT RUN: {test}: no Nix material to evaluate against.\n\
             !!!!!!!! Set VUFSD_NIXOS_EVAL_KIT to the nixos-eval kit (../shared/nixos-eval), or\n\
             !!!!!!!! VUFSD_NIXPKGS to a nixpkgs checkout (or put nixpkgs in NIX_PATH).\n"
        );
    }
    found
}

/// Run nix-instantiate with `args`; stdout, or stderr as the error.
fn nix(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = common::nix::instantiate(args);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Evaluation arguments for tests/nixos/eval.nix: (name, Nix expression).
type Args<'a> = &'a [(&'a str, &'a str)];

fn base_args(src: &Source) -> Vec<String> {
    let mut a = vec![
        repo().join("tests/nixos/eval.nix").display().to_string(),
        "--argstr".into(),
        "proj".into(),
        repo().display().to_string(),
    ];
    match src {
        Source::Kit(k) => a.extend(["--argstr".into(), "kit".into(), k.display().to_string()]),
        Source::Nixpkgs(n) => {
            a.extend(["--argstr".into(), "nixpkgs".into(), n.display().to_string()])
        }
    }
    a
}

fn try_eval(src: &Source, attr: &str, args: Args) -> Result<Value, String> {
    let mut a = vec!["--eval".to_string(), "--strict".into(), "--json".into()];
    a.extend(base_args(src));
    for (k, v) in args {
        a.extend(["--arg".into(), k.to_string(), v.to_string()]);
    }
    a.extend(["-A".into(), attr.into()]);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    nix(&refs).map(|o| serde_json::from_slice(&o).expect("nix-instantiate --json output"))
}

fn eval(src: &Source, attr: &str, args: Args) -> Value {
    try_eval(src, attr, args).unwrap_or_else(|e| panic!("evaluating {attr} ({src:?}):\n{e}"))
}

/// The error of an evaluation that must fail.
fn eval_error(src: &Source, attr: &str, args: Args) -> String {
    match try_eval(src, attr, args) {
        Ok(v) => panic!("evaluating {attr} with {args:?} should fail, gave {v}"),
        Err(e) => e,
    }
}

/// Instantiate (write the .drv files of) `attr`.
fn instantiate(src: &Source, attr: &str, args: Args) -> Vec<String> {
    let mut a = base_args(src);
    for (k, v) in args {
        a.extend(["--arg".into(), k.to_string(), v.to_string()]);
    }
    a.extend(["-A".into(), attr.into()]);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = nix(&refs).unwrap_or_else(|e| panic!("instantiating {attr} ({src:?}):\n{e}"));
    let drvs: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(String::from)
        .collect();
    assert!(
        !drvs.is_empty() && drvs.iter().all(|d| d.ends_with(".drv")),
        "{drvs:?}"
    );
    drvs
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// nix/lib.nix's envFile for `share`, evaluated on its own (builtins only).
fn env_file(share: &str) -> String {
    let expr = format!("(import {}/nix/lib.nix).envFile {share}", repo().display());
    common::nix::eval_string(&expr)
}

#[test]
fn the_module_imported_alone_evaluates_with_a_default_package() {
    for src in sources("the_module_imported_alone_evaluates_with_a_default_package") {
        let m = eval(&src, "module", &[]);
        assert_eq!(str_list(&m["failedAssertions"]), Vec::<String>::new());
        let pkgs = str_list(&m["systemPackages"]);
        assert!(pkgs.iter().any(|p| p.starts_with("vufsd-")), "{pkgs:?}");
    }
}

#[test]
fn the_module_writes_the_conf_file_and_drop_ins_of_the_packaged_units() {
    let shares = r#"{ data = { sharedDir = "/srv/my data"; cache = "never"; user = "vufsd"; group = "kvm"; extraArgs = [ "--xattr" ]; }; }"#;
    for src in sources("the_module_writes_the_conf_file_and_drop_ins_of_the_packaged_units") {
        let m = eval(&src, "module", &[("shares", shares)]);
        assert_eq!(
            m["etc"]["vufsd/data.conf"].as_str().unwrap(),
            env_file(
                r#"{ sharedDir = "/srv/my data"; cache = "never"; readonly = false; noatime = "auto"; extraArgs = [ "--xattr" ]; }"#
            )
        );
        let socket = &m["units"]["vufsd@data.socket"];
        let text = socket["text"].as_str().unwrap();
        // A drop-in on the packaged template: the empty ListenStream= resets the template's.
        assert!(
            text.contains("ListenStream=\nListenStream=/run/vufsd/data.sock"),
            "{text}"
        );
        assert!(text.contains("SocketUser=vufsd") && text.contains("SocketGroup=kvm"));
        assert_eq!(str_list(&socket["wantedBy"]), ["sockets.target"]);
        let service = m["units"]["vufsd@data.service"]["text"].as_str().unwrap();
        assert!(
            service.contains("User=vufsd") && service.contains("Group=kvm"),
            "{service}"
        );
        if let Source::Kit(_) = src {
            for unit in ["vufsd@data.socket", "vufsd@data.service"] {
                assert_eq!(
                    m["units"][unit]["path"].as_str().unwrap(),
                    format!("/etc/systemd/system/{unit}.d/overrides.conf")
                );
            }
        }
    }
}

#[test]
fn the_module_creates_the_share_user_and_group() {
    let two_shares = r#"{
        data = { sharedDir = "/srv/data"; user = "vufsd-data"; group = "vmshare"; };
        web = { sharedDir = "/srv/web"; user = "vufsd-data"; group = "vmshare"; };
        root = { sharedDir = "/srv/root"; };
    }"#;
    for src in sources("the_module_creates_the_share_user_and_group") {
        let m = eval(&src, "module", &[("shares", two_shares)]);
        assert_eq!(str_list(&m["failedAssertions"]), Vec::<String>::new());
        assert_eq!(m["users"]["vufsd-data"]["isSystemUser"], Value::Bool(true));
        assert_eq!(m["users"]["vufsd-data"]["group"], "vmshare");
        assert!(str_list(&m["groups"]).contains(&"vmshare".to_string()));
        assert!(m["users"].get("root").is_none(), "{}", m["users"]);
        // Defined elsewhere: nothing is created.
        let external = r#"{ data = { sharedDir = "/srv/data"; user = "qemu"; group = "kvm"; createUser = false; }; }"#;
        let m = eval(&src, "module", &[("shares", external)]);
        assert!(m["users"].get("qemu").is_none(), "{}", m["users"]);
    }
}

#[test]
fn the_module_refuses_bad_values_with_clear_messages() {
    for src in sources("the_module_refuses_bad_values_with_clear_messages") {
        for name in ["my share", "-data", ".hidden", "a/b"] {
            let shares = format!("{{ {name:?} = {{ sharedDir = \"/srv\"; }}; }}");
            let failed = str_list(&eval(
                &src,
                "module.failedAssertions",
                &[("shares", &shares)],
            ));
            assert_eq!(failed.len(), 1, "{name:?}: {failed:?}");
            assert!(
                failed[0].contains(&format!("services.vufsd.shares.{name:?}"))
                    && failed[0].contains("use ASCII letters, digits, '_', '.' and '-'"),
                "{failed:?}"
            );
        }
        let relative = eval_error(
            &src,
            "module.etc",
            &[("shares", r#"{ data = { sharedDir = "srv/data"; }; }"#)],
        );
        assert!(
            relative.contains("services.vufsd.shares.data.sharedDir")
                && relative.contains("is not of type `absolute path'"),
            "{relative}"
        );
        let long = format!(
            r#"{{ data = {{ sharedDir = "/srv"; socketPath = "/run/{}.sock"; }}; }}"#,
            "s".repeat(110)
        );
        let failed = str_list(&eval(&src, "module.failedAssertions", &[("shares", &long)]));
        assert!(
            failed.len() == 1 && failed[0].contains("a unix socket path has at most 107"),
            "{failed:?}"
        );
        let cache = eval_error(
            &src,
            "module.etc",
            &[(
                "shares",
                r#"{ data = { sharedDir = "/srv"; cache = "sometimes"; }; }"#,
            )],
        );
        assert!(
            cache.contains("services.vufsd.shares.data.cache") && cache.contains("is not of type"),
            "{cache}"
        );
        let spaces = eval_error(
            &src,
            "module.etc",
            &[(
                "shares",
                r#"{ data = { sharedDir = "/srv"; extraArgs = [ "--a b" ]; }; }"#,
            )],
        );
        assert!(spaces.contains("extraArgs must not contain"), "{spaces}");
    }
}

/// How many times `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

fn shares_of(vm: &Value) -> Vec<String> {
    let fs = vm["fileSystems"].as_object().unwrap();
    let mut tags: Vec<String> = fs
        .values()
        .filter(|f| f["fsType"] == "virtiofs")
        .filter_map(|f| f["device"].as_str().map(String::from))
        .collect();
    tags.sort();
    tags
}

/// A VM whose qemu-vm.nix passes -virtfs: QEMU is vufsd's wrapper, the guest mounts virtiofs.
fn assert_9p_era_hook(vm: &Value) {
    assert_eq!(
        str_list(&vm["failedAssertions"]),
        Vec::<String>::new(),
        "{vm}"
    );
    assert_eq!(vm["qemuPackage"], "qemu-with-vufsd", "{vm}");
    let start = vm["startVM"].as_str().unwrap();
    assert!(
        start.contains("/bin/qemu-system-x86_64") && start.contains("qemu-with-vufsd"),
        "{start}"
    );
    // The wrapper turns these into daemons and devices when QEMU starts.
    assert!(count(start, "-virtfs local,") >= 2, "{start}");
    assert_eq!(shares_of(vm), ["nix-store", "shared", "xchg"]);
    for (_, f) in vm["fileSystems"].as_object().unwrap() {
        if f["fsType"] == "virtiofs" {
            assert_eq!(str_list(&f["options"]), ["defaults"], "{f}");
        }
    }
}

#[test]
fn vm_node_9p_era_framework_composition() {
    for src in sources("vm_node_9p_era_framework_composition") {
        let Source::Kit(_) = src else { continue };
        let vm = eval(&src, "vm", &[]);
        assert_9p_era_hook(&vm);
        assert_eq!(vm["enableSharedMemory"], Value::Bool(true));
        // driver.nix's shared memory is the VM's one backend: vufsd adds none.
        assert_eq!(count(&vm["qemuOptions"].to_string(), "memory-backend"), 0);
        assert_eq!(vm["wrapperText"], vm["expectedWrapperText"]);
        instantiate(&src, "drvs.vm", &[]);
    }
}

#[test]
fn vm_node_9p_era_plain_vm() {
    // nixos-rebuild build-vm: no test framework, no base-qemu module.
    for src in sources("vm_node_9p_era_plain_vm") {
        let Source::Kit(_) = src else { continue };
        let vm = eval(&src, "vm", &[("framework", "false")]);
        assert_9p_era_hook(&vm);
        instantiate(&src, "drvs.vm", &[("framework", "false")]);
    }
}

#[test]
fn vm_node_9p_era_before_shared_memory_option() {
    // An older nixpkgs without virtualisation.qemu.enableSharedMemory: vufsd's own backend.
    for src in sources("vm_node_9p_era_before_shared_memory_option") {
        let Source::Kit(_) = src else { continue };
        let vm = eval(&src, "vm", &[("sharedMemoryOption", "false")]);
        assert_9p_era_hook(&vm);
        assert_eq!(vm["enableSharedMemory"], Value::Null);
        let opts = str_list(&vm["qemuOptions"]);
        assert_eq!(
            opts,
            [
                "-object memory-backend-memfd,id=vufsd-mem,size=1024M,share=on",
                "-machine memory-backend=vufsd-mem"
            ]
        );
    }
}

/// A VM whose qemu-vm.nix runs virtiofsd: that virtiofsd is vufsd, and nothing is added.
fn assert_virtiofs_era_hook(vm: &Value) {
    assert_eq!(
        str_list(&vm["failedAssertions"]),
        Vec::<String>::new(),
        "{vm}"
    );
    assert_ne!(vm["qemuPackage"], "qemu-with-vufsd", "QEMU is left alone");
    let start = vm["startVM"].as_str().unwrap();
    let shim = vm["hostVirtiofsd"].as_str().unwrap();
    assert!(shim.contains("vufsd-as-virtiofsd"), "{shim}");
    assert!(!start.contains("-virtfs"), "{start}");
    let tags = shares_of(vm);
    assert_eq!(
        count(start, &format!("{shim}/bin/virtiofsd")),
        tags.len(),
        "every share's virtiofsd is vufsd:\n{start}"
    );
    assert_eq!(
        count(start, "vhost-user-fs-pci"),
        tags.len(),
        "one device per share:\n{start}"
    );
    // nixpkgs' enableSharedMemory backend, and no second one (virtualisation.qemu.options end
    // up in startVM).
    assert_eq!(vm["enableSharedMemory"], Value::Bool(true));
    assert_eq!(count(start, "memory-backend-memfd"), 1, "{start}");
    if !vm["expectedShimText"].is_null() {
        assert_eq!(vm["shimText"], vm["expectedShimText"]);
    }
}

#[test]
fn vm_node_virtiofs_era_framework_composition() {
    for src in sources("vm_node_virtiofs_era_framework_composition") {
        let Source::Kit(_) = src else { continue };
        let vm = eval(&src, "vm", &[("era", "\"virtiofs\"")]);
        assert_virtiofs_era_hook(&vm);
        assert_eq!(vm["qemuPackage"], "qemu-test-stub");
        let start = vm["startVM"].as_str().unwrap();
        // nixpkgs' own arguments, as they are.
        assert!(
            start.contains("/bin/virtiofsd --xattr --socket-path virtiofsd-nix-store.sock --sandbox none --seccomp none --shared-dir /nix/store &"),
            "{start}"
        );
        instantiate(&src, "drvs.vm", &[("era", "\"virtiofs\"")]);
        // Without vufsd the same VM runs upstream virtiofsd: what the check above tells apart.
        let Source::Kit(k) = &src else { continue };
        let off = format!(
            "{{ virtualisation.vufsd.enable = (import {}/nixpkgs-lib/lib).mkForce false; }}",
            k.display()
        );
        let plain = eval(
            &src,
            "vm.startVM",
            &[("era", "\"virtiofs\""), ("nodeExtra", &off)],
        );
        let plain = plain.as_str().unwrap();
        assert_eq!(count(plain, "virtiofsd-1.14.0/bin/virtiofsd"), 3, "{plain}");
        assert!(!plain.contains("vufsd"), "{plain}");
    }
}

#[test]
fn vm_node_virtiofs_era_plain_vm() {
    for src in sources("vm_node_virtiofs_era_plain_vm") {
        let Source::Kit(_) = src else { continue };
        let vm = eval(
            &src,
            "vm",
            &[("era", "\"virtiofs\""), ("framework", "false")],
        );
        assert_virtiofs_era_hook(&vm);
    }
}

#[test]
fn a_qemu_package_forced_over_vufsds_is_refused_clearly() {
    for src in sources("a_qemu_package_forced_over_vufsds_is_refused_clearly") {
        let Source::Kit(k) = &src else { continue };
        let forced = format!(
            "{{ virtualisation.qemu.package = (import {}/nixpkgs-lib/lib).mkForce (derivation {{ name = \"my-qemu\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; }}); }}",
            k.display()
        );
        let failed = str_list(&eval(
            &src,
            "vm.failedAssertions",
            &[("nodeExtra", &forced)],
        ));
        assert!(
            failed.len() == 1 && failed[0].contains("set virtualisation.vufsd.qemuPackage instead"),
            "{failed:?}"
        );
    }
}

#[test]
fn the_flake_outputs_evaluate_and_instantiate() {
    for src in sources("the_flake_outputs_evaluate_and_instantiate") {
        let f = eval(&src, "flake", &[]);
        assert!(
            f["package"]["name"].as_str().unwrap().starts_with("vufsd-"),
            "{f}"
        );
        assert_eq!(f["overlayVirtiofsd"], f["shim"]["name"]);
        assert!(f["overlayVufsd"].as_str().unwrap().starts_with("vufsd-"));
        let shim = f["shim"]["text"].as_str().unwrap();
        assert!(
            shim.contains("/bin/vufsd' '--exit-with-parent'") && shim.ends_with("\"$@\"\n"),
            "{shim}"
        );
        instantiate(&src, "drvs.package", &[]);
        instantiate(&src, "drvs.shim", &[]);
        if let Source::Kit(_) = src {
            // The source the package builds from (in the store once instantiated): no .git,
            // no target/, no fuzz/.
            let srcpath = PathBuf::from(f["package"]["srcPath"].as_str().unwrap());
            assert!(
                srcpath.join("Cargo.lock").is_file(),
                "{}",
                srcpath.display()
            );
            for left_out in [".git", "target", "fuzz"] {
                assert!(!srcpath.join(left_out).exists(), "{left_out} in the source");
            }
            assert_9p_era_hook(&f["vmTest"]);
            let virtiofs = eval(&src, "flake.vmTest", &[("era", "\"virtiofs\"")]);
            assert_virtiofs_era_hook(&virtiofs);
        } else {
            // A real nixpkgs is one era or the other.
            let vm = &f["vmTest"];
            if vm["startVM"].as_str().unwrap().contains("-virtfs") {
                assert_9p_era_hook(vm);
            } else {
                assert_virtiofs_era_hook(vm);
            }
        }
    }
}

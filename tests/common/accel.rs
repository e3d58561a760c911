//! KVM or TCG: which accelerator boots a test guest on this machine.

use std::fs::OpenOptions;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::assets::{assets, write_atomic, Assets};
use super::vm::{base_cmdline, machine_args, read_lossy, serial_args, RunDir, Running};
use super::{target_dir, Context, Result};

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub(super) fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator to use: `$VUFSD_VM_ACCEL` (kvm|tcg) if set, else KVM if a
/// probe guest really boots with it, else TCG. The probe runs once per host
/// boot: its answer is cached in `<target>/vm-assets/accel-<boot_id>`.
pub fn accel() -> Result<Accel> {
    static ACCEL: OnceLock<Result<Accel>> = OnceLock::new();
    ACCEL.get_or_init(detect_accel).clone()
}

fn detect_accel() -> Result<Accel> {
    match std::env::var("VUFSD_VM_ACCEL").as_deref() {
        Ok("kvm") => return Ok(Accel::Kvm),
        Ok("tcg") => return Ok(Accel::Tcg),
        Ok(other) => return Err(format!("VUFSD_VM_ACCEL={other}: expected kvm or tcg")),
        Err(_) => {}
    }
    // /dev/kvm can exist and open fine and still not work: on this kind of
    // host (nested PVM) QEMU 7.2 aborts with "failed to set MSR 0x10a" under
    // -cpu host, or stops with "KVM internal error" under the default CPU.
    if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(Accel::Tcg);
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = target_dir()
        .join("vm-assets")
        .join(format!("accel-{}", boot_id.trim()));
    match std::fs::read_to_string(&cache).as_deref() {
        Ok("kvm") => return Ok(Accel::Kvm),
        Ok("tcg") => return Ok(Accel::Tcg),
        _ => {}
    }
    let accel = if probe_kvm(assets()?)? {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    write_atomic(&cache, accel.name().as_bytes())?;
    Ok(accel)
}

/// Boot the real guest with KVM up to its init and see it report back.
fn probe_kvm(assets: &Assets) -> Result<bool> {
    let dir = target_dir()
        .join("vm-assets")
        .join(format!("kvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let mut args = machine_args(assets, Accel::Kvm, 128, 1, false);
    let mut cmdline = base_cmdline();
    cmdline.push("vufs_probe=1".into());
    args.extend(["-append".into(), cmdline.join(" ")]);
    args.extend(serial_args(&dir));
    let run = RunDir {
        dir: dir.clone(),
        io: dir.clone(),
    };
    let mut vm = Running::start(&args, &run, false, None)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let ok = loop {
        vm.poll_logs();
        if vm.guest.text().contains("VUFS-PROBE-OK") {
            break true;
        }
        let stderr = read_lossy(&dir.join("qemu.log"));
        let exited = vm.child.try_wait().ok().flatten().is_some();
        if exited || stderr.contains("KVM internal error") || Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ok)
}

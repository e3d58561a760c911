//! Guests that migrate: two QEMUs (source and destination) driven over QMP, each with its own
//! daemon on the same share.
//!
//! A VM that migrates can have no 9p device (QEMU refuses to migrate one), so these guests get
//! no `/host` view: the guest script and its one tool, `migcheck` (tests/vm/migcheck.c, built
//! statically with the host's gcc), are appended to the initramfs, and init.sh is told
//! `vufs_9p=0`. Migration needs QEMU >= 8.2 with vhost-user-fs device-state support: QEMU 10
//! from bookworm-backports, which `scripts/install-deps` unpacks into `/opt/vufsd-qemu10`
//! (`$VUFSD_QEMU10` names another prefix, or a `qemu-system-x86_64` binary).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::assets::{assets, write_atomic};
use super::cpio::Cpio;
use super::vm::{accel, base_cmdline, escape, machine_args, serial_args, VmSlot};
use super::{target_dir, Context, Result};

/// A QEMU that can migrate vhost-user-fs, and the firmware directories it needs.
#[derive(Clone, Debug)]
pub struct Qemu {
    pub binary: PathBuf,
    pub data_dirs: Vec<PathBuf>,
}

impl Qemu {
    /// QEMU 10: `$VUFSD_QEMU10` (a prefix with usr/bin/qemu-system-x86_64, or the binary), else
    /// /opt/vufsd-qemu10.
    pub fn ten() -> Result<Qemu> {
        let given = std::env::var_os("VUFSD_QEMU10").map(PathBuf::from);
        let root = given.unwrap_or_else(|| PathBuf::from("/opt/vufsd-qemu10"));
        let (binary, prefix) = if root.is_file() {
            (root.clone(), None)
        } else {
            (root.join("usr/bin/qemu-system-x86_64"), Some(root.clone()))
        };
        if !binary.is_file() {
            return Err(format!(
                "QEMU 10 not found at {} (scripts/install-deps unpacks it from \
                 bookworm-backports into /opt/vufsd-qemu10; $VUFSD_QEMU10 names another)",
                binary.display()
            ));
        }
        let mut data_dirs = Vec::new();
        if let Some(p) = prefix {
            data_dirs.push(p.join("usr/share/qemu"));
        }
        // Debian's firmware packages, which the unpacked QEMU does not carry.
        data_dirs.extend(["/usr/share/seabios", "/usr/lib/ipxe/qemu"].map(PathBuf::from));
        Ok(Qemu { binary, data_dirs })
    }

    /// Debian's own (7.2 on bookworm), for what it does when asked to migrate.
    pub fn system() -> Qemu {
        Qemu {
            binary: PathBuf::from("qemu-system-x86_64"),
            data_dirs: Vec::new(),
        }
    }
}

/// The shared initramfs with `script` as init.sh's `/test/script.sh` (and `/bin/migcheck`),
/// written to `dir/initrd.cpio`: for guests with no 9p view of the host (a VM that migrates, a
/// VM libvirt starts), booted with `vufs_9p=0` on the kernel command line.
pub fn initrd_with_script(dir: &Path, script: &str) -> Result<PathBuf> {
    let initrd = dir.join("initrd.cpio");
    let mut bytes = std::fs::read(&assets()?.initramfs).context("reading the initramfs")?;
    bytes.extend(guest_extra(script)?);
    write_atomic(&initrd, &bytes)?;
    Ok(initrd)
}

/// The guest's extra initramfs: init.sh's `/test/script.sh` and `/bin/migcheck`.
fn guest_extra(script: &str) -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    c.dir("test");
    c.file("test/script.sh", 0o644, script.as_bytes());
    c.file(
        "bin/migcheck",
        0o755,
        &std::fs::read(migcheck()?).context("reading migcheck")?,
    );
    Ok(c.finish())
}

/// tests/vm/migcheck.c built statically, cached by its source's hash.
fn migcheck() -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/migcheck.c");
    let text = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let out = target_dir()
        .join("vm-assets")
        .join(format!("migcheck-{hash:016x}"));
    if out.is_file() {
        return Ok(out);
    }
    // Tests of one binary run in parallel threads of one process: the temporary name must be
    // unique per call, not just per process.
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out.with_extension(format!("tmp{}-{seq}", std::process::id()));
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .context("running gcc (apt package gcc, with libc6-dev for -static)")?;
    if !st.success() {
        return Err(format!("gcc -static {} failed: {st}", src.display()));
    }
    std::fs::rename(&tmp, &out).context("placing migcheck")?;
    Ok(out)
}

/// One QEMU of a migration: a guest that boots from the shared initramfs and kernel, with a
/// vhost-user-fs device on `socket`, a QMP socket, and its serial logs in `dir`.
pub struct MigVm {
    child: Child,
    logs: VmLogs,
    qmp: Qmp,
}

/// Where a QEMU of a migration writes: readable while the test holds the VM mutably.
#[derive(Clone, Debug)]
pub struct VmLogs {
    pub name: String,
    pub dir: PathBuf,
}

impl VmLogs {
    /// What the guest printed on its test serial port while this QEMU ran it.
    pub fn guest_output(&self) -> String {
        std::fs::read_to_string(self.dir.join("guest.log")).unwrap_or_default()
    }

    pub fn qemu_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default()
    }

    /// Logs for a failure message.
    pub fn report(&self) -> String {
        let console = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        format!(
            "--- {} ({}):\n--- qemu:\n{}\n--- console (tail):\n{}\n--- guest:\n{}\n",
            self.name,
            self.dir.display(),
            super::tail(&self.qemu_log(), 20),
            super::tail(&console, 20),
            super::tail(&self.guest_output(), 40)
        )
    }
}

/// What both ends of a migration share: the machine must be the same on both sides.
#[derive(Clone, Debug)]
pub struct Machine {
    pub qemu: Qemu,
    pub tag: String,
    pub mem_mib: u32,
    pub script: String,
}

impl Machine {
    /// Start the source (`incoming` None) or a destination waiting for `migrate-incoming`
    /// (`incoming` Some("defer")), named `name`, in `dir/name`.
    pub fn start(&self, dir: &Path, name: &str, socket: &Path, incoming: bool) -> Result<MigVm> {
        let run = dir.join(name);
        std::fs::create_dir_all(&run).with_context(|| format!("mkdir {}", run.display()))?;
        let assets = assets()?;
        let initrd = initrd_with_script(&run, &self.script)?;

        let mut a = machine_args(assets, accel()?, self.mem_mib, 2, true);
        // Our initramfs, not the shared one (the last -initrd wins).
        a.extend(["-initrd".into(), escape(&initrd)]);
        let mut cmdline = base_cmdline();
        cmdline.extend([
            format!("vufs_tag={}", self.tag),
            "vufs_mount=1".into(),
            "vufs_9p=0".into(),
        ]);
        a.extend(["-append".into(), cmdline.join(" ")]);
        a.extend([
            "-chardev".into(),
            format!("socket,id=vfs,path={}", escape(socket)),
            "-device".into(),
            format!(
                "vhost-user-fs-pci,chardev=vfs,tag={},queue-size=1024",
                self.tag
            ),
        ]);
        a.extend(serial_args(&run));
        let qmp_path = run.join("qmp.sock");
        a.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", escape(&qmp_path)),
        ]);
        if incoming {
            a.extend(["-incoming".into(), "defer".into()]);
        }
        for d in &self.qemu.data_dirs {
            a.extend(["-L".into(), escape(d)]);
        }
        let log = std::fs::File::create(run.join("qemu.log")).context("creating qemu.log")?;
        let log2 = log.try_clone().context("dup qemu.log")?;
        std::fs::write(run.join("qemu-cmdline.txt"), a.join(" ")).context("writing cmdline")?;
        let child = Command::new(&self.qemu.binary)
            .args(&a)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("spawning {}", self.qemu.binary.display()))?;
        let mut vm = MigVm {
            child,
            logs: VmLogs {
                name: name.to_string(),
                dir: run,
            },
            qmp: Qmp::default(),
        };
        vm.qmp = Qmp::connect(&qmp_path, Duration::from_secs(20))
            .map_err(|e| format!("{e}\n{}", vm.report()))?;
        Ok(vm)
    }
}

impl MigVm {
    pub fn logs(&self) -> VmLogs {
        self.logs.clone()
    }

    pub fn guest_output(&self) -> String {
        self.logs.guest_output()
    }

    pub fn report(&self) -> String {
        self.logs.report()
    }

    /// Wait until the guest printed a line starting with `prefix`.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.guest_output().lines().find(|l| l.starts_with(prefix)) {
                return Ok(l.to_string());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({st}) before `{prefix}`\n{}",
                    self.logs.name,
                    self.report()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no `{prefix}` from the guest within {timeout:?}\n{}",
                    self.report()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run a QMP command; Err with QEMU's error description if it answers with one.
    pub fn qmp(&mut self, command: &str, arguments: Value) -> Result<Value> {
        self.qmp.execute(command, arguments)
    }

    /// Poll `query-migrate` until the migration ends; returns its final status ("completed"
    /// or "failed") and the whole reply.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<(String, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.qmp("query-migrate", json!({}))?;
            let status = r["status"].as_str().unwrap_or("").to_string();
            if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
                return Ok((status, r));
            }
            if Instant::now() >= deadline {
                return Err(format!("migration still `{status}` after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The VM's run state ("running", "paused", "postmigrate", "inmigrate", ...).
    pub fn run_state(&mut self) -> Result<String> {
        let r = self.qmp("query-status", json!({}))?;
        Ok(r["status"].as_str().unwrap_or("").to_string())
    }

    /// Wait for QEMU to exit (the guest powers off at the end of its script).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().context("waiting for QEMU")? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return Err(format!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.logs.name,
                    self.report()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ask QEMU to quit and reap it.
    pub fn quit(&mut self) {
        let _ = self.qmp("quit", json!({}));
        let _ = self.wait_exit(Duration::from_secs(20));
    }
}

impl Drop for MigVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A QMP connection (capabilities negotiated; events skipped).
#[derive(Default)]
struct Qmp {
    stream: Option<(UnixStream, BufReader<UnixStream>)>,
}

impl Qmp {
    fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("QMP socket {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .context("QMP read timeout")?;
        let reader = BufReader::new(stream.try_clone().context("dup QMP socket")?);
        let mut q = Qmp {
            stream: Some((stream, reader)),
        };
        q.read_reply()?; // the greeting
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read_reply(&mut self) -> Result<Value> {
        let (_, reader) = self.stream.as_mut().ok_or("QMP not connected")?;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).context("reading QMP")? == 0 {
                return Err("QMP connection closed".into());
            }
            let v: Value = serde_json::from_str(&line).context("parsing QMP")?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let (stream, _) = self.stream.as_mut().ok_or("QMP not connected")?;
        let msg = json!({ "execute": command, "arguments": arguments });
        writeln!(stream, "{msg}").context("writing QMP")?;
        let r = self.read_reply()?;
        if let Some(e) = r.get("error") {
            return Err(format!(
                "QMP {command}: {}",
                e["desc"].as_str().unwrap_or("error")
            ));
        }
        Ok(r["return"].clone())
    }
}

/// A VM slot for the pair: only one of the two QEMUs runs the guest at any time.
pub fn slot() -> Result<VmSlot> {
    VmSlot::acquire()
}

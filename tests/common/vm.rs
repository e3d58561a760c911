//! Booting a test guest under QEMU: accelerator detection, the command
//! line, running a guest script and collecting what it printed.

pub use super::accel::{accel, Accel};
use super::assets::{assets, Assets};
use super::daemon::Daemon;
use super::host_action::{ack, HostAction};
pub use super::slot::VmSlot;
use super::{tail, target_dir, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The virtio-fs device of a VM.
#[derive(Debug, Clone)]
pub struct FsDevice {
    /// The daemon's vhost-user socket.
    pub socket: PathBuf,
    /// The mount tag (no spaces or commas).
    pub tag: String,
    /// Request queues (QEMU's num-request-queues); 1 is QEMU's default.
    pub num_request_queues: u32,
    /// Virtqueue size, None for QEMU's default (128).
    pub queue_size: Option<u32>,
    /// The daemon's log, quoted in failure reports.
    pub daemon_log: Option<PathBuf>,
}

/// One guest run. Build with `VmConfig::new(dir, script)` and the `with_*`
/// methods, or set the fields directly.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Each run gets a fresh `dir/vm-N/` holding console.log, guest.log,
    /// qemu.log, qemu-cmdline.txt and io/ (the guest's /test, with script.sh).
    pub dir: PathBuf,
    /// Guest script (busybox sh, with tests/vm/vufs.sh's helpers).
    pub script: String,
    /// None boots without a virtio-fs device.
    pub fs: Option<FsDevice>,
    /// Back guest RAM with a shared memfd, as vhost-user needs. Turn it off
    /// to test how a daemon copes with unshareable memory.
    pub shared_mem: bool,
    pub mem_mib: u32,
    pub cpus: u32,
    /// Mount the share at /mnt before the script runs (with `mount_opts`).
    pub auto_mount: bool,
    /// virtio-fs mount options, comma separated, no spaces.
    pub mount_opts: String,
    /// Wall-clock limit from QEMU's start (not counting the wait for a slot).
    pub timeout: Duration,
    /// Extra kernel command line words.
    pub kernel_args: Vec<String>,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
    /// Print console and guest output live on stderr (see --nocapture).
    pub echo: bool,
    /// Start QEMU through a launcher, as a NixOS VM's start script does.
    pub launch: Option<Launch>,
    /// What the host does when the guest runs `host_do N` (the N-th entry).
    pub host_actions: Vec<HostAction>,
}

/// How QEMU is started when not directly: `program QEMU ARGS...` (a wrapper that execs QEMU in
/// the end), in the run directory, as `run_as` (uid, gid) when given, with `env` added.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub run_as: Option<(u32, u32)>,
    pub env: Vec<(String, String)>,
}

impl VmConfig {
    pub fn new(dir: &Path, script: impl Into<String>) -> VmConfig {
        VmConfig {
            dir: dir.to_path_buf(),
            script: script.into(),
            fs: None,
            shared_mem: true,
            mem_mib: 512,
            cpus: 2,
            auto_mount: true,
            mount_opts: String::new(),
            timeout: Duration::from_secs(60),
            kernel_args: Vec::new(),
            qemu_args: Vec::new(),
            echo: false,
            launch: None,
            host_actions: Vec::new(),
        }
    }

    /// Add a host action; the guest triggers it with `host_do N`, N counting from 0 in the
    /// order they were added.
    pub fn on_host_do(mut self, action: HostAction) -> VmConfig {
        self.host_actions.push(action);
        self
    }

    /// Start QEMU through `launch` (see [`Launch`]).
    pub fn launch(mut self, launch: Launch) -> VmConfig {
        self.launch = Some(launch);
        self
    }

    /// Attach a vhost-user-fs device on `socket` with `tag`, queue size 1024.
    pub fn with_fs(mut self, socket: &Path, tag: &str) -> VmConfig {
        self.fs = Some(FsDevice {
            socket: socket.to_path_buf(),
            tag: tag.to_string(),
            num_request_queues: 1,
            queue_size: Some(1024),
            daemon_log: None,
        });
        self
    }

    /// [`with_fs`](Self::with_fs) on the daemon's socket; failure reports
    /// then include the daemon's log.
    pub fn with_daemon(self, daemon: &Daemon, tag: &str) -> VmConfig {
        let mut cfg = self.with_fs(daemon.socket(), tag);
        if let Some(fs) = cfg.fs.as_mut() {
            fs.daemon_log = Some(daemon.log_path().to_path_buf());
        }
        cfg
    }

    /// A second virtio-fs device served by `daemon`, with `tag`; the guest mounts it itself.
    pub fn with_extra_daemon(mut self, daemon: &Daemon, tag: &str) -> VmConfig {
        let id = format!("vfsx{}", self.qemu_args.len());
        self.qemu_args.extend([
            "-chardev".to_string(),
            format!("socket,id={id},path={}", daemon.socket().display()),
            "-device".to_string(),
            format!("vhost-user-fs-pci,chardev={id},tag={tag},queue-size=1024"),
        ]);
        self
    }

    pub fn request_queues(mut self, n: u32) -> VmConfig {
        self.fs_mut().num_request_queues = n;
        self
    }

    pub fn queue_size(mut self, size: Option<u32>) -> VmConfig {
        self.fs_mut().queue_size = size;
        self
    }

    pub fn shared_mem(mut self, on: bool) -> VmConfig {
        self.shared_mem = on;
        self
    }

    pub fn auto_mount(mut self, on: bool) -> VmConfig {
        self.auto_mount = on;
        self
    }

    pub fn mount_opts(mut self, opts: &str) -> VmConfig {
        self.mount_opts = opts.to_string();
        self
    }

    pub fn timeout(mut self, t: Duration) -> VmConfig {
        self.timeout = t;
        self
    }

    pub fn echo(mut self, on: bool) -> VmConfig {
        self.echo = on;
        self
    }

    fn fs_mut(&mut self) -> &mut FsDevice {
        self.fs
            .as_mut()
            .expect("VmConfig: call with_fs/with_daemon first")
    }
}

/// What a guest run produced.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// Everything the script (and init) printed on the test serial port.
    pub guest_output: String,
    /// The kernel console.
    pub console: String,
    /// QEMU's own stdout+stderr (device errors show up here).
    pub qemu_stderr: String,
    pub qemu_status: ExitStatus,
    /// QEMU start to exit.
    pub elapsed: Duration,
    /// QEMU start to the guest reporting the share mounted (auto-mount only).
    pub boot_to_mount: Option<Duration>,
    /// The VM did not power off within the timeout and was killed.
    pub timed_out: bool,
    /// This run's directory (logs, io/).
    pub run_dir: PathBuf,
    pub daemon_log: Option<PathBuf>,
}

impl VmOutcome {
    /// Names of `OK <name>` lines.
    pub fn oks(&self) -> Vec<&str> {
        self.guest_output
            .lines()
            .filter_map(|l| l.strip_prefix("OK "))
            .map(|rest| rest.split_whitespace().next().unwrap_or(""))
            .collect()
    }

    /// Whole `FAIL ...` lines.
    pub fn fails(&self) -> Vec<&str> {
        self.guest_output
            .lines()
            .filter(|l| l.starts_with("FAIL "))
            .collect()
    }

    /// The script's exit status, from the init's final `DONE rc=N`.
    pub fn script_status(&self) -> Option<i32> {
        self.guest_output
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("DONE rc="))
            .and_then(|rc| rc.trim().parse().ok())
    }

    /// Everything that makes this run a failure, given the OK names it
    /// must contain; empty if it passed.
    pub fn problems(&self, expected_oks: &[&str]) -> Vec<String> {
        let mut problems = Vec::new();
        if self.timed_out {
            problems.push(format!("the VM timed out after {:?}", self.elapsed));
        }
        match self.script_status() {
            None => problems.push("no `DONE rc=` line: the guest did not finish".into()),
            Some(0) => {}
            Some(rc) => problems.push(format!("the guest script exited with status {rc}")),
        }
        problems.extend(self.fails().iter().map(|l| l.to_string()));
        let oks = self.oks();
        for name in expected_oks {
            if !oks.contains(name) {
                problems.push(format!("missing `OK {name}`"));
            }
        }
        if !self.timed_out && !self.qemu_status.success() {
            problems.push(format!("QEMU exited with {}", self.qemu_status));
        }
        problems
    }

    /// Panic, with the logs' tails, unless the guest finished cleanly, printed
    /// `OK <name>` for each expected name and no `FAIL` line.
    pub fn assert_ok(&self, expected_oks: &[&str]) {
        let problems = self.problems(expected_oks);
        if !problems.is_empty() {
            panic!(
                "guest run failed:\n  - {}\n{}",
                problems.join("\n  - "),
                self.report()
            );
        }
    }

    /// Tails of all logs, for failure messages.
    pub fn report(&self) -> String {
        let mut r = format!(
            "--- run dir: {}\n--- qemu: {} after {:?}, boot-to-mount {:?}\n{}\n\
             --- kernel console (tail):\n{}\n--- guest output (tail):\n{}\n",
            self.run_dir.display(),
            self.qemu_status,
            self.elapsed,
            self.boot_to_mount,
            tail(&self.qemu_stderr, 20),
            tail(&self.console, 40),
            tail(&self.guest_output, 60),
        );
        if let Some(log) = &self.daemon_log {
            let text = std::fs::read(log).unwrap_or_default();
            r.push_str(&format!(
                "--- daemon log {} (tail):\n{}\n",
                log.display(),
                tail(&String::from_utf8_lossy(&text), 40)
            ));
        }
        r
    }
}

/// Boot the guest, run `cfg.script`, wait for it to power off. Panics on a
/// harness error or a timeout (with the logs' tails); check the script's
/// results with [`VmOutcome::assert_ok`].
pub fn run_vm(cfg: &VmConfig) -> VmOutcome {
    let out = try_run_vm(cfg).unwrap_or_else(|e| panic!("cannot run the test VM: {e}"));
    if out.timed_out {
        panic!(
            "the test VM did not power off within {:?}\n{}",
            cfg.timeout,
            out.report()
        );
    }
    out
}

/// Like [`run_vm`], but a timeout is reported in `VmOutcome::timed_out`
/// rather than a panic (for tests that expect a guest to hang). Errs only
/// when the harness itself fails.
pub fn try_run_vm(cfg: &VmConfig) -> Result<VmOutcome> {
    validate(cfg)?;
    let assets = assets()?;
    let accel = accel()?;
    let run = RunDir::create(&cfg.dir)?;
    std::fs::write(run.io.join("script.sh"), &cfg.script).context("writing script.sh")?;
    let args = qemu_args(assets, accel, cfg, &run);
    std::fs::write(run.dir.join("qemu-cmdline.txt"), shell_line(&args))
        .context("writing qemu-cmdline.txt")?;
    if let Some((uid, gid)) = cfg.launch.as_ref().and_then(|l| l.run_as) {
        // QEMU writes its serial logs and the guest's /test here.
        for d in [&run.dir, &run.io] {
            std::os::unix::fs::chown(d, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", d.display()))?;
        }
    }
    let _slot = VmSlot::acquire()?;
    let mut vm = Running::start(&args, &run, cfg.echo, cfg.launch.as_ref())?;
    vm.actions = cfg
        .host_actions
        .iter()
        .map(|a| (a.clone(), false))
        .collect();
    let (status, timed_out) = vm.wait(cfg.timeout)?;
    Ok(VmOutcome {
        guest_output: vm.guest.text(),
        console: vm.console.text(),
        qemu_stderr: read_lossy(&run.dir.join("qemu.log")),
        qemu_status: status,
        elapsed: vm.started.elapsed(),
        boot_to_mount: vm.mounted_at,
        timed_out,
        run_dir: run.dir,
        daemon_log: cfg.fs.as_ref().and_then(|f| f.daemon_log.clone()),
    })
}

/// Check that a VM can run at all: QEMU is installed and the guest assets
/// build. See `require_vm` in mod.rs.
pub fn preflight() -> Result<()> {
    let out = Command::new(qemu_binary())
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", qemu_binary()))?;
    if !out.status.success() {
        return Err(format!("{} --version failed", qemu_binary()));
    }
    assets()?;
    Ok(())
}

fn qemu_binary() -> String {
    std::env::var("VUFSD_VM_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// Words go on the kernel command line and into QEMU's key=value option
/// syntax: reject what would break either.
fn validate(cfg: &VmConfig) -> Result<()> {
    let bad = |s: &str| s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == ',');
    if let Some(fs) = &cfg.fs {
        if bad(&fs.tag) {
            return Err(format!("bad virtio-fs tag {:?}", fs.tag));
        }
    }
    if cfg.mount_opts.contains(char::is_whitespace) {
        return Err(format!("mount options {:?} contain spaces", cfg.mount_opts));
    }
    Ok(())
}

/// The whole QEMU command line (without the binary).
fn qemu_args(assets: &Assets, accel: Accel, cfg: &VmConfig, run: &RunDir) -> Vec<String> {
    let mut kernel_cmdline = base_cmdline();
    if let Some(fs) = &cfg.fs {
        kernel_cmdline.push(format!("vufs_tag={}", fs.tag));
    }
    kernel_cmdline.push(format!("vufs_mount={}", u8::from(cfg.auto_mount)));
    if !cfg.mount_opts.is_empty() {
        kernel_cmdline.push(format!("vufs_mntopts={}", cfg.mount_opts));
    }
    kernel_cmdline.extend(cfg.kernel_args.iter().cloned());

    let mut a = machine_args(assets, accel, cfg.mem_mib, cfg.cpus, cfg.shared_mem);
    a.extend(["-append".into(), kernel_cmdline.join(" ")]);
    if let Some(fs) = &cfg.fs {
        a.extend(fs_args(fs));
    }
    a.extend([
        "-virtfs".into(),
        "local,path=/,readonly=on,security_model=none,mount_tag=hostroot,multidevs=remap".into(),
        "-virtfs".into(),
        format!(
            "local,path={},security_model=none,mount_tag=testdir,multidevs=remap",
            escape(&run.io)
        ),
    ]);
    a.extend(serial_args(&run.dir));
    a.extend(cfg.qemu_args.iter().cloned());
    a
}

/// `console=ttyS0`: kernel log on the first serial port; `panic=-1` with
/// QEMU's `-no-reboot` turns a guest panic into a QEMU exit.
pub(super) fn base_cmdline() -> Vec<String> {
    ["console=ttyS0", "rdinit=/init", "panic=-1"]
        .map(String::from)
        .to_vec()
}

/// Machine, accelerator, CPUs, memory and kernel. `-nodefaults` drops the
/// default NIC (and its slow PXE option ROM), VGA and monitor.
pub(super) fn machine_args(
    assets: &Assets,
    accel: Accel,
    mem_mib: u32,
    cpus: u32,
    shared: bool,
) -> Vec<String> {
    let mut a: Vec<String> = vec!["-name".into(), "vufsd-test".into()];
    a.extend(accel.qemu_args().map(String::from));
    a.extend(
        [
            "-M",
            "q35",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]
        .map(String::from),
    );
    a.extend([
        "-smp".into(),
        cpus.to_string(),
        "-m".into(),
        format!("{mem_mib}M"),
    ]);
    if shared {
        a.extend([
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem_mib}M,share=on"),
            "-numa".into(),
            "node,memdev=mem".into(),
        ]);
    }
    a.extend(["-kernel".into(), escape(&assets.kernel)]);
    a.extend(["-initrd".into(), escape(&assets.initramfs)]);
    a
}

fn fs_args(fs: &FsDevice) -> Vec<String> {
    let mut dev = format!("vhost-user-fs-pci,chardev=vfs,tag={}", fs.tag);
    if let Some(q) = fs.queue_size {
        dev.push_str(&format!(",queue-size={q}"));
    }
    if fs.num_request_queues != 1 {
        dev.push_str(&format!(",num-request-queues={}", fs.num_request_queues));
    }
    vec![
        "-chardev".into(),
        format!("socket,id=vfs,path={}", escape(&fs.socket)),
        "-device".into(),
        dev,
    ]
}

/// ttyS0 (kernel console) and ttyS1 (test output) to files of their own.
pub(super) fn serial_args(dir: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("file,id=con,path={}", escape(&dir.join("console.log"))),
        "-serial".into(),
        "chardev:con".into(),
        "-chardev".into(),
        format!("file,id=out,path={}", escape(&dir.join("guest.log"))),
        "-serial".into(),
        "chardev:out".into(),
    ]
}

/// A path inside a QEMU option value: commas are doubled.
pub(super) fn escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// A copy-pasteable command line, for rerunning a failed VM by hand.
fn shell_line(args: &[String]) -> String {
    let quote = |s: &str| {
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let mut line = qemu_binary();
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    line.push('\n');
    line
}

/// `dir/vm-N/` and its `io/` subdirectory (the guest's /test).
pub(super) struct RunDir {
    pub(super) dir: PathBuf,
    pub(super) io: PathBuf,
}

impl RunDir {
    fn create(parent: &Path) -> Result<RunDir> {
        for n in 0.. {
            let dir = parent.join(format!("vm-{n}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let io = dir.join("io");
                    std::fs::create_dir(&io).with_context(|| format!("mkdir {}", io.display()))?;
                    return Ok(RunDir { dir, io });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("mkdir {}: {e}", dir.display())),
            }
        }
        unreachable!()
    }
}

/// A QEMU process and the logs it writes.
pub(super) struct Running {
    pub(super) child: Child,
    started: Instant,
    console: LogFollower,
    pub(super) guest: LogFollower,
    mounted_at: Option<Duration>,
    /// Host actions the guest may ask for (see `HostAction`), and whether each was done.
    actions: Vec<(HostAction, bool)>,
    io: PathBuf,
}

impl Running {
    pub(super) fn start(
        args: &[String],
        run: &RunDir,
        echo: bool,
        launch: Option<&Launch>,
    ) -> Result<Running> {
        let log = File::create(run.dir.join("qemu.log")).context("creating qemu.log")?;
        let log2 = log.try_clone().context("dup qemu.log")?;
        let started = Instant::now();
        let mut cmd = match launch {
            None => Command::new(qemu_binary()),
            Some(l) => {
                let mut c = match l.run_as {
                    None => Command::new(&l.program),
                    Some((uid, gid)) => super::setpriv(uid, gid, &l.program),
                };
                c.arg(qemu_binary())
                    .current_dir(&run.dir)
                    .envs(l.env.iter().map(|(k, v)| (k, v)));
                c
            }
        };
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("spawning {}", qemu_binary()))?;
        Ok(Running {
            child,
            started,
            console: LogFollower::new(run.dir.join("console.log"), echo.then_some("")),
            guest: LogFollower::new(run.dir.join("guest.log"), echo.then_some("guest| ")),
            mounted_at: None,
            actions: Vec::new(),
            io: run.io.clone(),
        })
    }

    /// Follow the logs until QEMU exits or `timeout` passes (then kill it).
    /// Returns the exit status and whether it timed out.
    fn wait(&mut self, timeout: Duration) -> Result<(ExitStatus, bool)> {
        let deadline = self.started + timeout;
        loop {
            self.poll_logs();
            if let Some(status) = self.child.try_wait().context("waiting for QEMU")? {
                self.poll_logs();
                return Ok((status, false));
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let status = self
                    .child
                    .wait()
                    .unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL));
                self.poll_logs();
                return Ok((status, true));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(super) fn poll_logs(&mut self) {
        self.console.poll();
        for line in self.guest.poll() {
            if self.mounted_at.is_none() && line.starts_with("VUFS-MOUNTED") {
                self.mounted_at = Some(self.started.elapsed());
            }
            let asked = line
                .strip_prefix("HOST-DO ")
                .and_then(|n| n.trim().parse().ok());
            if let Some((action, done)) = asked.and_then(|n: usize| self.actions.get_mut(n)) {
                if !*done {
                    *done = true;
                    let what = action.perform(&mut self.child);
                    ack(&self.io, asked.unwrap_or(0), &what);
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only reached with QEMU still running on a harness error.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a file as another process appends to it, line by line; optionally
/// echoes each line to stderr with a prefix.
pub(super) struct LogFollower {
    path: PathBuf,
    bytes: Vec<u8>,
    line_start: usize,
    echo: Option<&'static str>,
}

impl LogFollower {
    fn new(path: PathBuf, echo: Option<&'static str>) -> LogFollower {
        LogFollower {
            path,
            bytes: Vec::new(),
            line_start: 0,
            echo,
        }
    }

    /// New complete lines since the last call (without `\r\n`).
    fn poll(&mut self) -> Vec<String> {
        if let Ok(mut f) = File::open(&self.path) {
            if f.seek(SeekFrom::Start(self.bytes.len() as u64)).is_ok() {
                let _ = f.read_to_end(&mut self.bytes);
            }
        }
        let mut lines = Vec::new();
        while let Some(nl) = self.bytes[self.line_start..]
            .iter()
            .position(|&b| b == b'\n')
        {
            let raw = &self.bytes[self.line_start..self.line_start + nl];
            let line = String::from_utf8_lossy(raw)
                .trim_end_matches('\r')
                .to_string();
            if let Some(prefix) = self.echo {
                eprintln!("{prefix}{line}");
            }
            lines.push(line);
            self.line_start += nl + 1;
        }
        lines
    }

    /// Everything read so far, `\r` removed.
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).replace('\r', "")
    }
}

pub(super) fn read_lossy(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

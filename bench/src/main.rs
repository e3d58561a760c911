//! `vufsd-bench`: load generator for vhost-user-fs daemons.
//!
//! ```text
//! vufsd-bench prepare DIR
//! vufsd-bench --socket S --workload NAME[,NAME...|all] [--depth N] [--queues Q]
//!             [--duration SECS | --ops N] [--dir RELPATH] [--json] [--watch-pid PID]
//! vufsd-bench --floor --dir HOSTDIR --workload NAME [--depth N] [--duration SECS | --ops N]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vufsd_bench::workload::{self, RunConfig, Workload};
use vufsd_bench::{floor, prepare, procstat, Device, DeviceConfig, FuseClient, Summary};

#[derive(Parser, Debug)]
#[command(
    name = "vufsd-bench",
    version,
    about = "Drive a vhost-user-fs daemon's socket like QEMU + Linux virtiofs, without a guest",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,

    /// The daemon's vhost-user socket.
    #[arg(long, required_unless_present_any = ["floor"])]
    socket: Option<PathBuf>,

    /// Workload(s): comma-separated names, or `all`. One of: lookup-getattr, readdirplus,
    /// create-unlink, open-read-4k, seq-read-1m, seq-write-1m, rand-read-4k, store-walk.
    #[arg(long, default_value = "lookup-getattr")]
    workload: String,

    /// Requests in flight in total (floor: threads).
    #[arg(long, default_value_t = 1)]
    depth: usize,

    /// Request queues, one thread each.
    #[arg(long, default_value_t = 1)]
    queues: u16,

    /// Seconds per workload (default 10 unless --ops is given).
    #[arg(long, conflicts_with = "ops")]
    duration: Option<f64>,

    /// Ops per workload.
    #[arg(long)]
    ops: Option<u64>,

    /// Where the prepared tree is: relative to the shared root with a daemon, a host path
    /// with --floor.
    #[arg(long, default_value = "")]
    dir: String,

    /// Run the workload's host syscalls directly on --dir, with no daemon.
    #[arg(long)]
    floor: bool,

    /// One JSON object per workload on stdout instead of text.
    #[arg(long)]
    json: bool,

    /// Virtqueue size.
    #[arg(long, default_value_t = 1024)]
    queue_size: u16,

    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,

    /// Timeout in seconds for every vhost-user and FUSE request.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,

    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX.
    #[arg(long)]
    no_event_idx: bool,

    /// Do not negotiate VIRTIO_RING_F_INDIRECT_DESC.
    #[arg(long)]
    no_indirect: bool,

    /// Use SET_MEM_TABLE even if the daemon offers CONFIGURE_MEM_SLOTS.
    #[arg(long)]
    no_mem_slots: bool,

    /// The daemon's pid: report its memory, fds and CPU time after FUSE_INIT and around each
    /// workload (measured phase, before and after the run's FORGETs).
    #[arg(long, conflicts_with = "floor")]
    watch_pid: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the benchmark trees in DIR (idempotent): dir1000/, big1g, store/, scratch/.
    Prepare {
        /// Directory to fill (usually the daemon's shared directory or a subdirectory).
        dir: PathBuf,
    },
    /// Measure a migration's device-state hand-over: start PROGRAM on DIR/shared, look up N
    /// inodes, stop the device and read its state as QEMU does, load it into a second PROGRAM;
    /// one JSON line per measurement.
    StateTransfer {
        /// The daemon binary (vufsd, or upstream virtiofsd with --virtiofsd).
        program: PathBuf,
        /// Scratch directory (the tree is created under DIR/shared once and reused).
        dir: PathBuf,
        /// The daemon is upstream virtiofsd (started with --sandbox none).
        #[arg(long)]
        virtiofsd: bool,
        /// Inodes to hold, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,100000")]
        inodes: Vec<usize>,
        /// Seconds between VHOST_F_LOG_ALL and the device stop (QEMU's RAM copy).
        #[arg(long, default_value_t = 2.0)]
        precopy: f64,
        /// Measurements per size.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// One more option for both daemons (repeatable), e.g. --daemon-arg=--log-level=info.
        #[arg(long = "daemon-arg", allow_hyphen_values = true)]
        daemon_args: Vec<String>,
    },
    /// Run the `mixed` workload in rounds against the daemon on SOCKET (pid PID), sampling its
    /// memory, fds and threads after each round; one JSON line per round, then the verdict.
    /// Exits 1 if it found a leak or a latency drift. The tree: `vufsd-bench prepare-mixed`.
    Soak {
        /// The daemon's vhost-user socket.
        #[arg(long)]
        socket: PathBuf,
        /// The daemon's pid.
        #[arg(long)]
        pid: u32,
        /// Rounds.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Operations per round (each several requests).
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
        /// Requests in flight.
        #[arg(long, default_value_t = 16)]
        depth: usize,
        /// Request queues.
        #[arg(long, default_value_t = 4)]
        queues: u16,
        /// The tree, relative to the shared root.
        #[arg(long, default_value = "")]
        dir: String,
    },
    /// Replay a `vufsd --trace` file: with --prepare, create the tree it starts from in DIR
    /// (the daemon's shared directory, empty); with --socket, send its requests to the
    /// daemon there as the guest sent them, and report.
    Replay {
        /// The trace (`-` reads standard input, e.g. `xz -dc trace.xz | vufsd-bench replay -`).
        trace: PathBuf,
        /// Create the starting tree in this directory and exit.
        #[arg(long, conflicts_with = "socket")]
        prepare: Option<PathBuf>,
        /// The daemon's vhost-user socket.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The daemon's pid, for its CPU time.
        #[arg(long)]
        pid: Option<u32>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create only what the `mixed` workload and `soak` need in DIR: dir1000/ and scratch/.
    PrepareMixed {
        /// Directory to fill.
        dir: PathBuf,
    },
}

fn workloads(spec: &str) -> Result<Vec<Workload>, String> {
    if spec == "all" {
        return Ok(Workload::ALL.to_vec());
    }
    spec.split(',')
        .map(|s| {
            Workload::parse(s.trim()).ok_or_else(|| {
                let names: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
                format!("unknown workload {s:?}; known: {}", names.join(", "))
            })
        })
        .collect()
}

fn report(s: &Summary, json: bool) {
    if json {
        println!("{}", s.json());
    } else {
        println!("{}", s.human());
    }
}

fn run(cli: Cli) -> Result<(), String> {
    if let Some(Cmd::Prepare { dir }) = &cli.command {
        let r = prepare::prepare(dir).map_err(|e| e.to_string())?;
        eprintln!(
            "prepared {}: created [{}], already there [{}]",
            dir.display(),
            r.created.join(", "),
            r.skipped.join(", ")
        );
        return Ok(());
    }
    if let Some(Cmd::Replay {
        trace,
        prepare,
        socket,
        pid,
        json,
    }) = &cli.command
    {
        return replay_cmd(trace, prepare.as_deref(), socket.as_deref(), *pid, *json);
    }
    if let Some(Cmd::PrepareMixed { dir }) = &cli.command {
        vufsd_bench::prepare::prepare_mixed(dir).map_err(|e| e.to_string())?;
        return Ok(());
    }
    if let Some(Cmd::Soak {
        socket,
        pid,
        rounds,
        ops,
        depth,
        queues,
        dir,
    }) = &cli.command
    {
        let mut cfg = DeviceConfig::new(socket);
        cfg.request_queues = *queues;
        let dev = Arc::new(Device::connect(cfg).map_err(|e| format!("vhost-user handshake: {e}"))?);
        FuseClient::new(Arc::clone(&dev))
            .init()
            .map_err(|e| format!("FUSE_INIT: {e}"))?;
        let soak = vufsd_bench::soak::SoakConfig {
            rounds: *rounds,
            ops_per_round: *ops,
            depth: *depth,
            queues: *queues,
            dir: dir.clone(),
        };
        let rs = vufsd_bench::soak::soak(&dev, *pid, &soak, &mut |r| println!("{}", r.json()))
            .map_err(|e| e.to_string())?;
        let problems = vufsd_bench::soak::verdict(&rs);
        let requests: u64 = rs.iter().map(|r| r.requests).sum();
        if problems.is_empty() {
            eprintln!(
                "soak: {requests} requests in {} rounds, no leak, no drift",
                rs.len()
            );
            return Ok(());
        }
        return Err(format!("soak: {}", problems.join("; ")));
    }
    if let Some(Cmd::StateTransfer {
        program,
        dir,
        virtiofsd,
        inodes,
        precopy,
        rounds,
        daemon_args,
    }) = &cli.command
    {
        let subject = vufsd_bench::state_transfer::Subject {
            program: program.clone(),
            virtiofsd: *virtiofsd,
            extra: daemon_args.clone(),
        };
        let name = if *virtiofsd { "virtiofsd" } else { "vufsd" };
        let precopy = Duration::from_secs_f64(*precopy);
        for n in inodes {
            for _ in 0..*rounds {
                let r = vufsd_bench::state_transfer::measure(&subject, dir, *n, precopy)
                    .map_err(|e| format!("{name}, {n} inodes: {e}"))?;
                println!("{}", r.json(name, precopy));
            }
        }
        return Ok(());
    }
    let list = workloads(&cli.workload)?;
    let duration = match (cli.duration, cli.ops) {
        (Some(d), _) => Some(Duration::from_secs_f64(d)),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let mk = |w| RunConfig {
        workload: w,
        depth: cli.depth,
        queues: cli.queues,
        duration,
        ops: cli.ops,
    };
    if cli.floor {
        let root = PathBuf::from(&cli.dir);
        for w in list {
            // The floor's own CPU time over the measured phase: what the syscalls cost,
            // comparable with the daemon's CPU time per op.
            let mut cpu = [None, None];
            let s = floor::run_observed(&root, &mk(w), &mut |p| {
                cpu[usize::from(p != workload::Phase::Start)] = procstat::self_cpu_ns().ok();
            })
            .map_err(|e| format!("{}: {e}", w.name()))?;
            match (cpu, cli.json) {
                ([Some(a), Some(b)], true) => {
                    let cpu_ms = b.saturating_sub(a) as f64 / 1e6;
                    let j = s.json();
                    println!("{},\"floor_cpu_ms\":{cpu_ms:.3}}}", j.trim_end_matches('}'));
                }
                _ => report(&s, cli.json),
            }
        }
        return Ok(());
    }
    let socket = cli.socket.clone().ok_or("--socket is required")?;
    let mut cfg = DeviceConfig::new(socket);
    cfg.request_queues = cli.queues;
    cfg.queue_size = cli.queue_size;
    cfg.memory_size = cli.memory_mib << 20;
    cfg.timeout = Duration::from_secs_f64(cli.timeout);
    cfg.features.event_idx = !cli.no_event_idx;
    cfg.features.indirect_desc = !cli.no_indirect;
    cfg.features.mem_slots = !cli.no_mem_slots;
    let dev = Arc::new(Device::connect(cfg).map_err(|e| format!("vhost-user handshake: {e}"))?);
    let init = FuseClient::new(Arc::clone(&dev))
        .init()
        .map_err(|e| format!("FUSE_INIT: {e}"))?;
    if !cli.json {
        eprintln!(
            "connected: features {:#x}, protocol features {:#x}, FUSE {}.{}, max_write {}",
            dev.negotiated().acked_features,
            dev.negotiated().acked_protocol_features,
            init.major,
            init.minor,
            init.max_write
        );
    }
    if let Some(pid) = cli.watch_pid {
        let idle = procstat::sample(pid).map_err(|e| format!("daemon {pid}: {e}"))?;
        println!("{}", idle.json("idle"));
    }
    for w in list {
        let mut watch = cli.watch_pid.map(procstat::Watch::new);
        let run = match &mut watch {
            Some(wa) => workload::run_observed(&dev, &cli.dir, &mk(w), &mut |p| wa.observe(p)),
            None => workload::run(&dev, &cli.dir, &mk(w)),
        };
        let s = match run {
            Ok(s) => s,
            Err(e) => {
                // The daemon's state when it refused (e.g. out of fds) explains the error;
                // it exits once we disconnect, so read it now.
                if let Some(Ok(at)) = cli.watch_pid.map(procstat::sample) {
                    println!("{}", at.json(&format!("error-{}", w.name())));
                }
                return Err(format!("{}: {e}", w.name()));
            }
        };
        match watch.map(procstat::Watch::finish).transpose() {
            Ok(Some(r)) if cli.json => {
                let j = s.json();
                println!("{},{}}}", j.trim_end_matches('}'), r.json_members());
            }
            Ok(Some(r)) => println!("{}\n    daemon: {}", s.human(), r.json_members()),
            Ok(None) => report(&s, cli.json),
            Err(e) => return Err(format!("{}: reading the daemon's /proc: {e}", w.name())),
        }
    }
    Ok(())
}

fn replay_cmd(
    trace: &std::path::Path,
    prepare: Option<&std::path::Path>,
    socket: Option<&std::path::Path>,
    pid: Option<u32>,
    json: bool,
) -> Result<(), String> {
    use std::io::Read;
    use vufsd_bench::replay;
    let mut bytes = Vec::new();
    if trace.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(trace).and_then(|mut f| f.read_to_end(&mut bytes))
    }
    .map_err(|e| format!("{}: {e}", trace.display()))?;
    let records = replay::record::parse(&bytes).map_err(|e| e.to_string())?;
    if let Some(dir) = prepare {
        let tree = replay::tree::starting_tree(&records);
        tree.create(dir).map_err(|e| e.to_string())?;
        eprintln!(
            "{} entries created in {}",
            tree.entries.len(),
            dir.display()
        );
        return Ok(());
    }
    let socket = socket.ok_or("--socket or --prepare is required")?;
    let mut cfg = DeviceConfig::new(socket);
    cfg.memory_size = 512 << 20;
    cfg.timeout = Duration::from_secs(30);
    let dev = Arc::new(Device::connect(cfg).map_err(|e| format!("vhost-user handshake: {e}"))?);
    let cpu0 = pid
        .map(procstat::sample)
        .transpose()
        .map_err(|e| e.to_string())?;
    let r = replay::replay(&dev, &records).map_err(|e| e.to_string())?;
    let cpu1 = pid
        .map(procstat::sample)
        .transpose()
        .map_err(|e| e.to_string())?;
    let cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e3),
        _ => None,
    };
    let mut ops: Vec<_> = r.per_opcode.iter().collect();
    ops.sort_by_key(|(op, h)| (std::cmp::Reverse(h.count()), **op));
    if json {
        let per: Vec<String> = ops
            .iter()
            .map(|(op, h)| {
                format!(
                    "\"{op}\":{{\"n\":{},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
                    h.count(),
                    h.quantile(0.5).as_secs_f64() * 1e6,
                    h.quantile(0.99).as_secs_f64() * 1e6
                )
            })
            .collect();
        println!(
            "{{\"requests\":{},\"elapsed_s\":{:.4},\"requests_per_s\":{:.0},\"cpu_us\":{},\"skipped\":{},\"mismatches\":{},\"max_in_flight\":{},\"kicks\":{},\"opcodes\":{{{}}}}}",
            r.requests,
            r.elapsed.as_secs_f64(),
            r.requests_per_sec(),
            cpu_us.map_or("null".into(), |c| format!("{c:.0}")),
            r.skipped,
            r.mismatches.values().sum::<u64>(),
            r.max_in_flight,
            r.kicks,
            per.join(",")
        );
    } else {
        println!(
            "{} requests in {:.3} s: {:.0} requests/s, {} at most in flight, {} kicks; {} skipped, {} answered otherwise than recorded",
            r.requests,
            r.elapsed.as_secs_f64(),
            r.requests_per_sec(),
            r.max_in_flight,
            r.kicks,
            r.skipped,
            r.mismatches.values().sum::<u64>()
        );
        if let Some(c) = cpu_us {
            println!(
                "daemon CPU: {:.0} us, {:.2} us per request",
                c,
                c / r.requests.max(1) as f64
            );
        }
        for (op, h) in ops {
            println!(
                "  opcode {op:>2}: {:>7} requests, p50 {:>8.1} us, p99 {:>8.1} us",
                h.count(),
                h.quantile(0.5).as_secs_f64() * 1e6,
                h.quantile(0.99).as_secs_f64() * 1e6
            );
        }
        if !r.mismatches.is_empty() {
            println!("  answered otherwise (opcode x count): {:?}", r.mismatches);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vufsd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use log::{warn, LevelFilter};

use vufsd::cli::Opt;
use vufsd::compat::{self, Notice};

/// Plain, one line: this is what a user reads when the daemon refuses to start.
fn refuse(why: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("vufsd: error: {why}");
    ExitCode::FAILURE
}

/// `--print-stats PATH` (or `=PATH`): answered before anything else is parsed, as it needs
/// no other option.
fn print_stats_arg(args: &[OsString]) -> Option<std::path::PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        if a == "--" {
            return None;
        }
        if a == "--print-stats" {
            return it.next().map(std::path::PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--print-stats=") {
            return Some(p.into());
        }
    }
    None
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if compat::wants_capabilities(&args) {
        print!("{}", compat::CAPABILITIES);
        return ExitCode::SUCCESS;
    }
    if let Some(path) = print_stats_arg(&args) {
        return match vufsd::stats::fetch(&path) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => refuse(&format!(
                "cannot read the stats of {}: {e} (is it a --stats-socket of a running vufsd?)",
                path.display()
            )),
        };
    }
    let args = match compat::expand_legacy(args) {
        Ok(expanded) => expanded,
        Err(why) => return refuse(&why),
    };
    let opt = Opt::parse_from(args);
    let level = if opt.virtiofsd.debug {
        LevelFilter::Debug
    } else {
        opt.log_level
    };
    vufsd::logger::init(level);
    let notices = compat::review(&opt.virtiofsd);
    if let Some(Notice::Refused(why)) = notices.first() {
        return refuse(why);
    }
    for notice in &notices {
        if let Notice::Ignored(why) = notice {
            warn!("{why}");
        }
    }
    match vufsd::daemon::run(&opt) {
        Ok(code) => code,
        Err(e) => refuse(&e),
    }
}

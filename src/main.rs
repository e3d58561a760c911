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

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if compat::wants_capabilities(&args) {
        print!("{}", compat::CAPABILITIES);
        return ExitCode::SUCCESS;
    }
    let (args, legacy_notices) = match compat::expand_legacy(args) {
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
    let mut notices = compat::review(&opt.virtiofsd, &opt.pending, compat::can_act_as_others());
    notices.extend(legacy_notices);
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

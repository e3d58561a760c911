use std::process::ExitCode;

use clap::Parser;

use vufsd::cli::Opt;

fn main() -> ExitCode {
    let opt = Opt::parse();
    vufsd::logger::init(opt.log_level);
    match vufsd::daemon::run(&opt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Plain, one line: this is what a user reads when the daemon refuses to start.
            eprintln!("vufsd: error: {e}");
            ExitCode::FAILURE
        }
    }
}

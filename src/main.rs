use std::process::ExitCode;

use clap::Parser;

use vufsd::cli::Opt;

fn main() -> ExitCode {
    let opt = Opt::parse();
    vufsd::logger::init(opt.log_level);
    match vufsd::daemon::run(&opt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

//! The `tidegate` binary: `run`, `check`, `ctl`, `version`. The one place that reads
//! the environment, installs signal handlers, raises limits and exits the process.
// `deny`, not `forbid`: the one exception is taking over a descriptor passed in at start
// (socket activation, `fd:N`), alone in `systemd::claim`.
#![deny(unsafe_code)]
// The binary talks to a person: `version`, `check` and `ctl` print their answer, and
// errors before logging is set up go to stderr. Libraries log through `tracing` instead.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program prints its answers and early errors"
)]

mod admin;
mod cli;
mod control;
mod ctl;
mod handover;
mod reload;
mod run;
mod systemd;
mod upgrade;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Version => {
            println!("tidegate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        cli::Command::Check { config } => match tidegate_config::load_file(&config) {
            Ok(cfg) => {
                // Valid all the same: printed, and the exit code stays 0.
                for w in &cfg.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok ({} listener(s), {} upstream(s))",
                    config.display(),
                    cfg.listeners.len(),
                    cfg.upstreams.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!(
                    "{}: {} error(s); nothing was started",
                    config.display(),
                    errors.len()
                );
                ExitCode::FAILURE
            }
        },
        cli::Command::Run(args) => run::run(args),
        cli::Command::Ctl(args) => ctl::run(args),
    }
}

//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// tidegate: a reverse proxy and load balancer where every connection has an owner, a
/// deadline and an end.
#[derive(Debug, Parser)]
#[command(name = "tidegate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (with no --config: the embedded quickstart on 127.0.0.1:8080).
    Run(RunArgs),
    /// Validate a config file and print every error (file:line:col: key: message).
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file; without it the embedded quickstart config is served.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Quickstart only: listen here instead of 127.0.0.1:8080 (e.g. 127.0.0.1:0,
    /// [::1]:8080, unix:/tmp/tidegate.sock). Repeat for several addresses.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
}

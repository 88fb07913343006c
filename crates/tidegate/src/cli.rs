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
    /// Query and steer a running tidegate through its admin API.
    Ctl(CtlArgs),
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
    #[allow(
        rustdoc::broken_intra_doc_links,
        reason = "this text is `--help` verbatim: `[::1]` is an address, not a link"
    )]
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// The admin API's address, instead of `[admin] listen` or the default socket
    /// ($XDG_RUNTIME_DIR/tidegate/admin.sock, …): unix:PATH[:mode=600] or IP:PORT.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
}

/// `tidegate ctl`: a thin client of the admin API (docs/admin-api.md).
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The admin API: unix:PATH, a socket path with a /, or IP:PORT. Default: the
    /// `[admin] listen` of --config, else the default socket.
    #[arg(long, value_name = "ADDR", global = true)]
    pub admin: Option<String>,
    /// Find the admin API from this config file's `[admin] listen`.
    #[arg(long, short, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Print the API's JSON as it comes, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Version, pid, uptime, state, listeners.
    Status,
    /// Every upstream server: state, health, connections, requests.
    Upstreams,
    /// Every live connection.
    Conns,
    /// Stop sending new requests to a server; exchanges in flight finish.
    Drain {
        /// UPSTREAM/INDEX, e.g. app/0.
        #[arg(value_name = "UPSTREAM/INDEX")]
        server: String,
    },
    /// Put a server back in rotation.
    Ready {
        /// UPSTREAM/INDEX, e.g. app/0.
        #[arg(value_name = "UPSTREAM/INDEX")]
        server: String,
    },
    /// Take a server out for maintenance: no requests, pooled connections closed.
    Maint {
        /// UPSTREAM/INDEX, e.g. app/0.
        #[arg(value_name = "UPSTREAM/INDEX")]
        server: String,
    },
    /// Close one connection now.
    Kill {
        /// The connection's id (from `ctl conns`).
        id: u64,
    },
    /// Re-read the config file and swap it in without dropping a connection (nothing
    /// changes if it has errors); prints what changed.
    Reload {
        /// Validate and print the plan (with the live connections each change
        /// affects) without applying it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Start the binary again (the file tidegate was started from, so a replaced file
    /// is picked up) and hand it every listening socket; the old process drains.
    Upgrade,
    /// Who holds admin API slots.
    Clients,
    /// The Prometheus metrics.
    Metrics,
}

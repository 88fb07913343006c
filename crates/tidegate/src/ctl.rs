//! `tidegate ctl`: a thin client of the admin API (docs/admin-api.md).
//! One request per command, human tables by default, the API's own JSON with `--json`.
//!
//! The socket is `--admin ADDR`, else `[admin] listen` of `--config FILE`, else the
//! default socket (the same rule `run` uses, see [`crate::admin`]). When it cannot be
//! reached the message names the socket, the errno, and what to check — one line.
//!
//! Exit status: 0 success; 1 the API answered an error, or could not be reached; 2 a
//! usage error (clap's, and a malformed `UPSTREAM/INDEX`).

use std::io::Write as _;
use std::process::ExitCode;

use nix::errno::Errno;
use serde::de::DeserializeOwned;
use tidegate_admin::client::{AdminAddr, Client, ClientError, Reply, DEFAULT_TIMEOUT};
use tidegate_admin::{
    AdminClients, Closed, ConnSide, ConnectionView, ReloadView, ServerState, ServerView, Status,
    UpgradeView, UpstreamView,
};

use crate::cli::{CtlArgs, CtlCommand};

/// How much longer than the new process's ready bound `ctl upgrade` waits for the
/// answer (the old process kills a silent new process at the bound, then answers).
const UPGRADE_SLACK: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `tidegate ctl`.
pub fn run(args: CtlArgs) -> ExitCode {
    let addr = match resolve(&args) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("tidegate ctl: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let request = match Request::of(&args.command) {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("tidegate ctl: {msg}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidegate ctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // An upgrade waits for the new process to report ready.
    let timeout = match args.command {
        CtlCommand::Upgrade => crate::upgrade::READY_TIMEOUT + UPGRADE_SLACK,
        _ => DEFAULT_TIMEOUT,
    };
    let client = Client::new(addr, timeout);
    let reply = match rt.block_on(client.request(request.method, &request.path, request.body)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidegate ctl: {}", with_hint(&e));
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        let mut text = reply.text();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        print(&text);
        return if reply.is_success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if !reply.is_success() {
        eprint!("{}", api_error(&reply));
        return ExitCode::FAILURE;
    }
    match render(&args.command, &reply) {
        Ok(text) => {
            print(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "tidegate ctl: unexpected answer from {}: {e}",
                client.addr()
            );
            ExitCode::FAILURE
        }
    }
}

/// `--admin`, else `--config`'s `[admin] listen`, else the default socket.
fn resolve(args: &CtlArgs) -> Result<AdminAddr, String> {
    if let Some(a) = &args.admin {
        let base = std::env::current_dir().unwrap_or_default();
        return AdminAddr::parse(a, &base).map_err(|e| format!("--admin {e}"));
    }
    if let Some(path) = &args.config {
        return match tidegate_config::load_file(path) {
            Ok(config) => crate::admin::client_addr(&config)
                .map_err(|e| format!("cannot find the admin socket in {}: {e}", path.display())),
            Err(errors) => Err(format!(
                "cannot find the admin socket in {}: {} error(s):\n{errors}",
                path.display(),
                errors.len()
            )),
        };
    }
    Ok(AdminAddr::Unix(crate::admin::default_socket()))
}

/// Writes to stdout; a closed pipe (`ctl conns | head`) is not an error.
fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The error, and what usually fixes it.
fn with_hint(e: &ClientError) -> String {
    let hint = match e {
        ClientError::Connect { error, .. } => match error.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ENOENT | Errno::ECONNREFUSED) => {
                " — is tidegate running? (set --admin or [admin] listen)"
            }
            Some(Errno::EACCES | Errno::EPERM) => {
                " — the admin socket is private (mode 0600): run ctl as the user tidegate runs as"
            }
            _ => "",
        },
        _ => "",
    };
    format!("{e}{hint}")
}

/// The API's error in one line, then its details (a reload's config errors) one per
/// line.
fn api_error(reply: &Reply) -> String {
    let Some(e) = reply.error() else {
        return format!(
            "tidegate ctl: the admin API answered {}: {}\n",
            reply.status,
            reply.text().trim()
        );
    };
    let mut out = format!("tidegate ctl: {} ({})\n", e.error, reply.status);
    if let Some(serde_json::Value::Array(lines)) = &e.detail {
        for l in lines {
            match l.as_str() {
                Some(s) => out.push_str(&format!("  {s}\n")),
                None => out.push_str(&format!("  {l}\n")),
            }
        }
    }
    out
}

/// One command's request.
struct Request {
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
}

impl Request {
    fn of(command: &CtlCommand) -> Result<Request, String> {
        let get = |path: &str| Request {
            method: "GET",
            path: path.to_owned(),
            body: None,
        };
        Ok(match command {
            CtlCommand::Status => get("/v1/status"),
            CtlCommand::Upstreams => get("/v1/upstreams"),
            CtlCommand::Conns => get("/v1/connections"),
            CtlCommand::Clients => get("/v1/admin-clients"),
            CtlCommand::Metrics => get("/metrics"),
            CtlCommand::Drain { server } => set_state(server, ServerState::Drain)?,
            CtlCommand::Ready { server } => set_state(server, ServerState::Ready)?,
            CtlCommand::Maint { server } => set_state(server, ServerState::Maint)?,
            CtlCommand::Kill { id } => Request {
                method: "DELETE",
                path: format!("/v1/connections/{id}"),
                body: None,
            },
            CtlCommand::Reload { dry_run } => Request {
                method: "POST",
                path: "/v1/reload".to_owned(),
                body: Some(
                    serde_json::to_vec(&tidegate_admin::ReloadRequest { dry_run: *dry_run })
                        .map_err(|e| format!("cannot encode the request: {e}"))?,
                ),
            },
            CtlCommand::Upgrade => Request {
                method: "POST",
                path: "/v1/upgrade".to_owned(),
                body: None,
            },
        })
    }
}

fn set_state(server: &str, state: ServerState) -> Result<Request, String> {
    let bad = || format!("expected UPSTREAM/INDEX, like app/0, found {server:?}");
    let (upstream, index) = server.split_once('/').ok_or_else(bad)?;
    let index: usize = index.parse().map_err(|_| bad())?;
    if !tidegate_config::parse::is_name(upstream) {
        return Err(bad());
    }
    let body = serde_json::to_vec(&tidegate_admin::SetState { state })
        .map_err(|e| format!("cannot encode the request: {e}"))?;
    Ok(Request {
        method: "POST",
        path: format!("/v1/upstreams/{upstream}/servers/{index}/state"),
        body: Some(body),
    })
}

// === rendering ===

fn decode<T: DeserializeOwned>(reply: &Reply) -> Result<T, String> {
    serde_json::from_slice(&reply.body).map_err(|e| e.to_string())
}

/// The human output of a successful answer.
fn render(command: &CtlCommand, reply: &Reply) -> Result<String, String> {
    Ok(match command {
        CtlCommand::Status => status(&decode(reply)?),
        CtlCommand::Upstreams => upstreams(&decode::<Vec<_>>(reply)?),
        CtlCommand::Conns => conns(&decode::<Vec<_>>(reply)?),
        CtlCommand::Clients => clients(&decode(reply)?),
        CtlCommand::Drain { .. } | CtlCommand::Ready { .. } | CtlCommand::Maint { .. } => {
            let server: ServerView = decode(reply)?;
            let name = match command {
                CtlCommand::Drain { server }
                | CtlCommand::Ready { server }
                | CtlCommand::Maint { server } => {
                    server.split_once('/').map_or(server.as_str(), |(u, _)| u)
                }
                _ => "",
            };
            server_state(name, &server)
        }
        CtlCommand::Kill { .. } => {
            let closed: Closed = decode(reply)?;
            format!("closed connection {}\n", closed.closed)
        }
        CtlCommand::Reload { .. } => reload(&decode(reply)?),
        CtlCommand::Upgrade => {
            let view: UpgradeView = decode(reply)?;
            format!("{}\n", view.message)
        }
        CtlCommand::Metrics => reply.text(),
    })
}

fn status(s: &Status) -> String {
    let state = serde_name(&s.state);
    let mut out = format!(
        "tidegate {}, pid {}, {state}, up {}\nconfig: {}\nconnections: {}\n\n",
        s.version,
        s.pid,
        duration(s.uptime_s),
        s.config,
        s.connections
    );
    let mut t = Table::new(&["LISTENER", "PROTOCOL", "CONNECTIONS", "MAX", "ADDRESSES"]);
    for l in &s.listeners {
        t.row(vec![
            l.name.clone(),
            l.protocol.clone(),
            l.connections.to_string(),
            l.max_connections.to_string(),
            l.addresses.join(", "),
        ]);
    }
    out.push_str(&t.render());
    if !s.certificates.is_empty() {
        let mut t = Table::new(&["LISTENER", "NAMES", "NOT AFTER", "EXPIRES IN", "ISSUER"]);
        for c in &s.certificates {
            t.row(vec![
                c.listener.clone(),
                c.names.join(", "),
                tidegate_config::tls::format_unix(c.not_after),
                match c.expires_in_s {
                    s if s < 0 => "expired".to_owned(),
                    s => duration(s as f64),
                },
                c.issuer.clone(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

fn upstreams(ups: &[UpstreamView]) -> String {
    if ups.is_empty() {
        return "no upstreams\n".to_owned();
    }
    let mut t = Table::new(&[
        "SERVER",
        "ADDRESS",
        "RESOLVED",
        "STATE",
        "HEALTH",
        "ACTIVE",
        "IDLE",
        "REQUESTS",
        "FAILURES",
        "ON-DEMAND",
    ]);
    for u in ups {
        for s in &u.servers {
            t.row(vec![
                format!("{}/{}", u.name, s.index),
                s.address.clone(),
                s.resolved.clone().unwrap_or_else(|| "-".into()),
                serde_name(&s.state),
                s.health_detail.clone(),
                s.active.to_string(),
                s.idle_pooled.to_string(),
                s.requests.to_string(),
                s.failures.to_string(),
                s.on_demand
                    .as_ref()
                    .map_or_else(|| "-".into(), |o| serde_name(&o.state)),
            ]);
        }
    }
    let mut out = t.render();
    for u in ups.iter().filter(|u| u.panic) {
        out.push_str(&format!(
            "upstream {}: PANIC: every ready server is down or ejected; requests go to them \
             anyway ({} since start)\n",
            u.name, u.panic_requests
        ));
    }
    out
}

/// The message, then each change and what happens to its connections.
fn reload(view: &ReloadView) -> String {
    let mut out = format!("{}\n", view.message);
    for c in &view.changes {
        out.push_str(&format!("  {}: {}\n", c.subject, c.what));
        let conns = match c.connections {
            0 => String::new(),
            1 => "1 connection: ".to_owned(),
            n => format!("{n} connections: "),
        };
        out.push_str(&format!("      {conns}{}\n", c.effect));
    }
    out
}

fn conns(conns: &[ConnectionView]) -> String {
    if conns.is_empty() {
        return "no live connections\n".to_owned();
    }
    let mut t = Table::new(&[
        "ID", "LISTENER", "PROTO", "PEER", "STATE", "AGE", "IDLE", "IN", "OUT", "GEN", "UPSTREAM",
    ]);
    for c in conns {
        let listener = match (c.side, c.parent) {
            // An HTTP/2 stream, under the connection it is on.
            (ConnSide::Client, Some(parent)) => format!("{} (stream of {parent})", c.listener),
            (ConnSide::Client, None) => c.listener.clone(),
            (ConnSide::Upstream, _) => format!("{} (upstream)", c.listener),
        };
        t.row(vec![
            c.id.to_string(),
            listener,
            serde_name(&c.protocol),
            c.peer.clone(),
            serde_name(&c.state),
            duration(c.age_s),
            duration(c.idle_s),
            bytes(c.bytes_in),
            bytes(c.bytes_out),
            match c.side {
                ConnSide::Client => c.generation.to_string(),
                ConnSide::Upstream => "-".into(),
            },
            c.upstream
                .as_ref()
                .map_or_else(|| "-".into(), |u| format!("{} {}", u.name, u.server)),
        ]);
    }
    t.render()
}

fn clients(all: &AdminClients) -> String {
    let mut t = Table::new(&["ID", "PEER", "AGE", "IDLE", "REQUESTS", "IN-REQUEST"]);
    for c in &all.clients {
        t.row(vec![
            c.id.to_string(),
            c.peer.clone(),
            duration(c.age_s),
            duration(c.idle_s),
            c.requests.to_string(),
            if c.in_request { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let mut out = t.render();
    if all.evictions > 0 {
        out.push_str(&format!(
            "\nevicted for new clients since start: {} (newest first)\n",
            all.evictions
        ));
        let mut t = Table::new(&["ID", "PEER", "AGE", "IDLE", "REQUESTS", "EVICTED"]);
        for e in &all.recent_evictions {
            t.row(vec![
                e.id.to_string(),
                e.peer.clone(),
                duration(e.age_s),
                duration(e.idle_s),
                e.requests.to_string(),
                format!("{} ago", duration(e.ago_s)),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

fn server_state(upstream: &str, s: &ServerView) -> String {
    let what = match s.state {
        ServerState::Ready => "",
        ServerState::Drain => " — no new requests; exchanges in flight finish",
        ServerState::Maint => " — no requests; pooled connections closed",
    };
    format!(
        "{upstream}/{} ({}): {}{what}\n",
        s.index,
        s.address,
        serde_name(&s.state)
    )
}

/// The API's name of an enum value (`ready`, `waiting_upstream`).
fn serde_name(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// Seconds for people: `850ms`, `4.2s`, `5m13s`, `3h12m`, `2d03h`.
fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_owned();
    }
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0).round() as u64);
    }
    if secs < 60.0 {
        let tenths = (secs * 10.0).round() as u64;
        return match tenths % 10 {
            0 => format!("{}s", tenths / 10),
            t => format!("{}.{t}s", tenths / 10),
        };
    }
    let s = secs.round() as u64;
    match s {
        0..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Bytes for people: `412B`, `1.3KiB`, `178.0KiB`, `2.5MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let pad = widths[i] - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    //! The outputs shown in docs/admin-api.md are what ctl prints for the JSON examples
    //! shown there.

    use super::*;

    fn docs() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/admin-api.md");
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The first ```json TYPE block.
    fn example(docs: &str, ty: &str) -> Reply {
        let open = format!("```json {ty}");
        let body: Vec<&str> = docs
            .lines()
            .skip_while(|l| l.trim() != open)
            .skip(1)
            .take_while(|l| *l != "```")
            .collect();
        assert!(!body.is_empty(), "no {open} block");
        Reply {
            status: 200,
            content_type: "application/json".into(),
            body: body.join("\n").into_bytes().into(),
        }
    }

    /// The lines after `$ tidegate ctl ARGS` up to the block's end or the next `$`.
    fn shown(docs: &str, args: &str) -> String {
        let prompt = format!("$ tidegate ctl {args}");
        let lines: Vec<&str> = docs
            .lines()
            .skip_while(|l| *l != prompt)
            .skip(1)
            .take_while(|l| *l != "```" && !l.starts_with("$ "))
            .collect();
        assert!(!lines.is_empty(), "no {prompt:?} in the docs");
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn the_tables_in_the_docs_are_what_ctl_prints() {
        let docs = docs();
        let cases = [
            (CtlCommand::Status, "Status", "status"),
            (CtlCommand::Upstreams, "[UpstreamView]", "upstreams"),
            (CtlCommand::Conns, "[ConnectionView]", "conns"),
            (CtlCommand::Clients, "AdminClients", "clients"),
            (
                CtlCommand::Drain {
                    server: "app/0".into(),
                },
                "ServerView",
                "drain app/0",
            ),
        ];
        for (command, ty, args) in cases {
            let printed = render(&command, &example(&docs, ty)).expect("renders");
            assert_eq!(printed, shown(&docs, args), "tidegate ctl {args}");
        }
    }

    #[test]
    fn durations_and_sizes_read_like_an_operator_writes_them() {
        assert_eq!(duration(0.0), "0ms");
        assert_eq!(duration(0.25), "250ms");
        assert_eq!(duration(1.5), "1.5s");
        assert_eq!(duration(2.0), "2s");
        assert_eq!(duration(312.5), "5m13s");
        assert_eq!(duration(11_532.25), "3h12m");
        assert_eq!(duration(2.0 * 86_400.0 + 3.0 * 3600.0), "2d03h");
        assert_eq!(bytes(412), "412B");
        assert_eq!(bytes(1290), "1.3KiB");
        assert_eq!(bytes(5 * 1024 * 1024 / 2), "2.5MiB");
    }

    #[test]
    fn a_server_is_named_upstream_slash_index() {
        let r = Request::of(&CtlCommand::Maint {
            server: "app/2".into(),
        })
        .expect("valid");
        assert_eq!(
            (r.method, r.path.as_str()),
            ("POST", "/v1/upstreams/app/servers/2/state")
        );
        assert_eq!(r.body.as_deref(), Some(&br#"{"state":"maint"}"#[..]));
        for bad in ["app", "app/x", "/0", "a b/0", "app/-1"] {
            assert!(
                Request::of(&CtlCommand::Drain { server: bad.into() }).is_err(),
                "{bad}"
            );
        }
    }
}

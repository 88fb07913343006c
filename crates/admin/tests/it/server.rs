//! The admin server on a real Unix socket, with a fake [`Control`]: every endpoint, the
//! errors, and above all that leaking clients cannot lock operators out: a full server
//! answers a clear `503` that arrives whole, idle and slow clients are closed, and the
//! API answers again once they are gone.
//!
//! Timeouts are a few hundred milliseconds (except [`HELD`], which keeps a full server
//! full while a test looks at it); every wait polls with a deadline. `curl` is
//! a prerequisite of one test (it fails with a message when curl is missing).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use tidegate_admin::client::{AdminAddr, Client};
use tidegate_admin::server::{self, Limits};
use tidegate_admin::{
    AdminBusy, AdminClients, ConnProtocol, ConnSide, ConnState, ConnectionView, Control,
    ControlError, ErrorBody, Health, ListenerView, ProcessState, ReloadView, ServerState,
    ServerView, Status, UpstreamView,
};
use tidegate_config::{ListenAddr, UnixListen};
use tidegate_net::endpoint::TcpOptions;
use tidegate_net::listen::Listener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A generous functional bound for what should take milliseconds.
const SOON: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(10);
/// The `idle_timeout` of the tests that look at a full server: silent clients must keep
/// their slots while the test connects hundreds of them, asks, and runs curl, which can
/// take far longer than a few hundred milliseconds on a busy machine.
const HELD: Duration = Duration::from_secs(3);

// === a fake Control ===

#[derive(Default)]
struct Fake {
    /// Every `set_server_state` call.
    states: Mutex<Vec<(String, usize, ServerState)>>,
    closed: Mutex<Vec<u64>>,
}

fn server_view(index: usize, state: ServerState) -> ServerView {
    ServerView {
        index,
        address: format!("127.0.0.1:300{index}"),
        resolved: None,
        state,
        health: Health::Unknown,
        health_detail: "unknown".into(),
        available: state == ServerState::Ready,
        active: 0,
        idle_pooled: 1,
        requests: 5,
        failures: 0,
        on_demand: None,
    }
}

impl Control for Fake {
    fn status(&self) -> Status {
        Status {
            version: "9.9.9".into(),
            pid: 42,
            uptime_s: 1.5,
            state: ProcessState::Running,
            config: "/etc/tidegate.toml".into(),
            connections: 1,
            listeners: vec![ListenerView {
                name: "web".into(),
                protocol: "http".into(),
                addresses: vec!["127.0.0.1:8080".into()],
                connections: 1,
                max_connections: 10_000,
            }],
            certificates: Vec::new(),
        }
    }

    fn upstreams(&self) -> Vec<UpstreamView> {
        vec![UpstreamView {
            name: "app".into(),
            balance: "round_robin".into(),
            servers: vec![
                server_view(0, ServerState::Ready),
                server_view(1, ServerState::Ready),
            ],
            panic: false,
            panic_requests: 0,
        }]
    }

    fn set_server_state(
        &self,
        upstream: &str,
        index: usize,
        state: ServerState,
    ) -> Result<ServerView, ControlError> {
        if upstream != "app" {
            return Err(ControlError::NotFound(format!(
                "no upstream {upstream:?}; defined: app"
            )));
        }
        if index > 1 {
            return Err(ControlError::NotFound(format!(
                "upstream app has no server {index}; it has 2 (0 to 1)"
            )));
        }
        lock(&self.states).push((upstream.to_owned(), index, state));
        Ok(server_view(index, state))
    }

    fn connections(&self) -> Vec<ConnectionView> {
        vec![ConnectionView {
            id: 7,
            side: ConnSide::Client,
            listener: "web".into(),
            protocol: ConnProtocol::Http1,
            peer: "127.0.0.1:50000".into(),
            local: "127.0.0.1:8080".into(),
            state: ConnState::Idle,
            age_s: 3.0,
            idle_s: 1.0,
            bytes_in: 100,
            bytes_out: 2000,
            requests: 1,
            generation: 1,
            upstream: None,
            parent: None,
        }]
    }

    fn close_connection(&self, id: u64) -> Result<(), ControlError> {
        if id != 7 {
            return Err(ControlError::NotFound(format!("no connection {id}")));
        }
        lock(&self.closed).push(id);
        Ok(())
    }

    fn reload(&self, _dry_run: bool) -> Result<ReloadView, ControlError> {
        Err(ControlError::NotImplemented(
            "config reload is not supported yet".into(),
        ))
    }

    fn metrics(&self) -> String {
        "# TYPE tidegate_up gauge\ntidegate_up 1\n".into()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === a server on a temporary socket ===

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    control: Arc<Fake>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(max_connections: usize, idle_timeout: Duration) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("admin.sock");
        let addr = ListenAddr::Unix(UnixListen {
            path: path.clone(),
            mode: Some(0o600),
            owner: None,
            group: None,
        });
        let listener = Listener::bind(&addr, TcpOptions::default())?;
        let control = Arc::new(Fake::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(server::serve(
            listener,
            control.clone(),
            Limits {
                max_connections,
                idle_timeout,
            },
            stop.clone(),
        ));
        Ok(Server {
            _dir: dir,
            path,
            control,
            stop,
            task: Some(task),
        })
    }

    fn client(&self) -> Client {
        Client::new(AdminAddr::Unix(self.path.clone()), SOON)
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(SOON, task)
                .await
                .context("the server did not stop")??;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `silent` clients that connect and send nothing.
async fn silent_clients(path: &Path, n: usize) -> anyhow::Result<Vec<UnixStream>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(
            UnixStream::connect(path)
                .await
                .with_context(|| format!("connect silent client {i}"))?,
        );
    }
    Ok(out)
}

/// The start of a request head, never finished: a client with a request in progress.
const HALF_SENT: &[u8] = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n";

/// Whether the server has closed `s` (EOF, an error or an answer is waiting).
fn closed_by_server(s: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Fills every one of `n` slots with a client that has a request in progress (a
/// half-sent head), and returns them with the `503` a new client then gets.
///
/// A client whose bytes the server has not read yet looks idle and may be evicted by
/// the next one; so a probe asks, and until it is refused, closed holders are replaced
/// (polling, bounded).
async fn fill_with_requests_in_progress(
    path: &Path,
    n: usize,
) -> anyhow::Result<(Vec<UnixStream>, Raw)> {
    let mut holders: Vec<UnixStream> = Vec::with_capacity(n);
    let deadline = Instant::now() + SOON;
    // Bounded by the deadline.
    loop {
        holders.retain(|s| !closed_by_server(s));
        while holders.len() < n {
            let mut s = UnixStream::connect(path)
                .await
                .context("connect a holder")?;
            s.write_all(HALF_SENT).await.context("half-send")?;
            holders.push(s);
        }
        let r = raw(
            path,
            "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await?;
        if r.status == 503 {
            return Ok((holders, r));
        }
        ensure!(
            Instant::now() < deadline,
            "the slots never all held a request in progress: {r:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A raw HTTP/1.1 answer read to its end: status, head, body.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n\n{}",
            self.head,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `request` on a new connection and reads until the server closes it (at most
/// [`SOON`]). The answer must be whole: its body as long as its Content-Length.
async fn raw(path: &Path, request: &str) -> anyhow::Result<Raw> {
    let mut s = UnixStream::connect(path).await.context("connect")?;
    s.write_all(request.as_bytes()).await.context("write")?;
    let mut bytes = Vec::new();
    tokio::time::timeout(SOON, s.read_to_end(&mut bytes))
        .await
        .context("the server did not close the connection")?
        .context("read")?;
    parse_raw(&bytes)
}

/// Sends `request` on `s` and reads one answer (head, then Content-Length bytes),
/// leaving the connection open.
async fn keep_alive_request(s: &mut UnixStream, request: &str) -> anyhow::Result<Raw> {
    s.write_all(request.as_bytes()).await.context("write")?;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + SOON;
    // Bounded by the deadline.
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .with_context(|| format!("no content-length in {head:?}"))?;
            if bytes.len() >= end + 4 + len {
                return parse_raw(&bytes[..end + 4 + len]);
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .context("no whole answer in time")??;
        ensure!(
            n > 0,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&buf[..n]);
    }
}

fn parse_raw(bytes: &[u8]) -> anyhow::Result<Raw> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no complete head in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let raw = Raw {
        status,
        head: head.to_owned(),
        body: body.as_bytes().to_vec(),
    };
    let len: usize = raw
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no content-length in {head:?}"))?;
    ensure!(
        raw.body.len() == len,
        "a cut answer: {} of {len} body bytes: {text:?}",
        raw.body.len()
    );
    Ok(raw)
}

/// The `503` body, checked: names the slot holders and the oldest one's idle time.
fn check_busy(body: &[u8], clients: u64) -> anyhow::Result<AdminBusy> {
    let error: ErrorBody = serde_json::from_slice(body)
        .with_context(|| format!("not an error body: {}", String::from_utf8_lossy(body)))?;
    ensure!(
        error
            .error
            .contains(&format!("{clients} of {clients} client slots are held"))
            && error.error.contains("idle"),
        "the message should say who holds the slots: {:?}",
        error.error
    );
    let busy: AdminBusy = serde_json::from_value(error.detail.context("no detail")?)?;
    ensure!(
        busy.clients == clients && busy.max_connections == clients,
        "{busy:?}"
    );
    ensure!(
        busy.oldest_idle_s >= 0.0 && busy.oldest_idle_s < 5.0,
        "{busy:?}"
    );
    Ok(busy)
}

/// `curl --unix-socket PATH http://admin/URL_PATH`: (status, body).
async fn curl(path: &Path, url_path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    tidegate_testkit::curl_unix(path, "GET", url_path).await
}

/// Polls `GET /v1/status` until it answers 200 (at most `within`).
async fn wait_until_served(server: &Server, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let r = server.client().request("GET", "/v1/status", None).await?;
        if r.status == 200 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("still {} after {within:?}: {}", r.status, r.text());
        }
        tokio::time::sleep(POLL).await;
    }
}

// === the endpoints ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_over_the_socket() -> anyhow::Result<()> {
    let mut server = Server::start(16, Duration::from_secs(5)).await?;
    let client = server.client();

    let status: Status = client
        .get("/v1/status")
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    assert_eq!(status, Fake::default().status());

    let ups: Vec<UpstreamView> = client
        .get("/v1/upstreams")
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    assert_eq!(ups, Fake::default().upstreams());

    let r = client
        .request(
            "POST",
            "/v1/upstreams/app/servers/1/state",
            Some(br#"{"state": "drain"}"#.to_vec()),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type, "application/json");
    let view: ServerView = serde_json::from_slice(&r.body)?;
    assert_eq!((view.index, view.state), (1, ServerState::Drain));
    assert_eq!(
        *lock(&server.control.states),
        [("app".to_owned(), 1, ServerState::Drain)]
    );

    let conns: Vec<ConnectionView> = client
        .get("/v1/connections")
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    assert_eq!(conns.len(), 1);
    let r = client.request("DELETE", "/v1/connections/7", None).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(*lock(&server.control.closed), [7]);

    // The earlier clients' slots are freed as the server sees them close: poll.
    let start = Instant::now();
    let all = loop {
        let all: AdminClients = client
            .get("/v1/admin-clients")
            .await?
            .map_err(|r| anyhow::anyhow!("{r:?}"))?;
        if all.clients.len() == 1 || start.elapsed() > SOON {
            break all;
        }
        tokio::time::sleep(POLL).await;
    };
    let clients = &all.clients;
    assert_eq!(clients.len(), 1, "only the client asking: {clients:?}");
    assert_eq!((clients[0].peer.as_str(), clients[0].requests), ("unix", 1));
    assert_eq!((all.evictions, all.recent_evictions.len()), (0, 0));

    let r = client.request("POST", "/v1/reload", None).await?;
    assert_eq!(r.status, 501, "{}", r.text());
    assert_eq!(
        r.error().map(|e| e.error),
        Some("config reload is not supported yet".into())
    );

    let r = client.request("GET", "/metrics", None).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(r.text(), "# TYPE tidegate_up gauge\ntidegate_up 1\n");

    server.stop().await?;
    assert!(!server.path.exists(), "the socket file is removed on stop");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_fitting_statuses() -> anyhow::Result<()> {
    let server = Server::start(16, Duration::from_secs(5)).await?;
    let client = server.client();
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        (
            "GET",
            "/v1/nothing",
            None,
            404,
            "no such endpoint: /v1/nothing",
        ),
        ("GET", "/", None, 404, "no such endpoint: /"),
        (
            "DELETE",
            "/v1/status",
            None,
            405,
            "DELETE is not allowed on /v1/status; use GET",
        ),
        (
            "GET",
            "/v1/reload",
            None,
            405,
            "GET is not allowed on /v1/reload; use POST",
        ),
        (
            "POST",
            "/v1/upstreams/nope/servers/0/state",
            Some(r#"{"state":"ready"}"#),
            404,
            "no upstream \"nope\"; defined: app",
        ),
        (
            "POST",
            "/v1/upstreams/app/servers/9/state",
            Some(r#"{"state":"ready"}"#),
            404,
            "upstream app has no server 9",
        ),
        (
            "POST",
            "/v1/upstreams/app/servers/x/state",
            Some(r#"{"state":"ready"}"#),
            404,
            "upstream \"app\" has no server \"x\"",
        ),
        (
            "POST",
            "/v1/upstreams/app/servers/0/state",
            Some("{"),
            400,
            "bad request body: EOF while parsing",
        ),
        (
            "POST",
            "/v1/upstreams/app/servers/0/state",
            Some(r#"{"state":"down"}"#),
            400,
            "bad request body: unknown variant `down`, expected one of `ready`, `drain`, `maint`",
        ),
        ("DELETE", "/v1/connections/8", None, 404, "no connection 8"),
        (
            "DELETE",
            "/v1/connections/abc",
            None,
            404,
            "no connection \"abc\"",
        ),
    ];
    for (method, path, body, status, message) in cases {
        let r = client
            .request(method, path, body.map(|b| b.as_bytes().to_vec()))
            .await?;
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        assert_eq!(r.content_type, "application/json", "{method} {path}");
        let e = r
            .error()
            .with_context(|| format!("{method} {path}: not an error body: {}", r.text()))?;
        assert!(
            e.error.starts_with(message),
            "{method} {path}: {:?} should start with {message:?}",
            e.error
        );
    }
    let r = raw(
        &server.path,
        "PUT /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let big = "x".repeat(70_000);
    let r = client
        .request(
            "POST",
            "/v1/upstreams/app/servers/0/state",
            Some(big.into_bytes()),
        )
        .await?;
    assert_eq!(r.status, 413, "{}", r.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_may_keep_its_connection_for_several_requests() -> anyhow::Result<()> {
    let server = Server::start(16, Duration::from_secs(5)).await?;
    let mut s = UnixStream::connect(&server.path).await?;
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/admin-clients HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut bytes = Vec::new();
    tokio::time::timeout(SOON, s.read_to_end(&mut bytes)).await??;
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.contains("\"requests\": 2"), "{text}");
    Ok(())
}

// === The admin API cannot be exhausted by leaked clients ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_admin_api_answers_a_whole_503_naming_the_slot_holders_then_recovers(
) -> anyhow::Result<()> {
    let server = Server::start(200, HELD).await?;
    // Every slot holds a request in progress: nobody may be evicted.
    let (holders, r) = fill_with_requests_in_progress(&server.path, 200).await?;

    // A raw client: the whole 503 arrives, then the server closes.
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.header("retry-after").is_some(), "{r:?}");
    check_busy(&r.body, 200)?;

    // curl, the tool operators reach for.
    let (code, body) = curl(&server.path, "/v1/status").await?;
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    check_busy(&body, 200)?;

    // The holders are closed when their request deadline passes, and the API answers
    // again.
    let deadline = Instant::now() + HELD + SOON;
    for (i, mut s) in holders.into_iter().enumerate() {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .with_context(|| format!("holder {i} still open {SOON:?} after idle_timeout"))?;
        assert!(matches!(n, Ok(0)), "holder {i}: {n:?}");
    }
    wait_until_served(&server, SOON).await?;
    let (code, body) = curl(&server.path, "/v1/status").await?;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice::<Status>(&body)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_holding_every_slot_give_way_to_a_newcomer() -> anyhow::Result<()> {
    // The incident: leaked connections that never send a byte hold every slot.
    let server = Server::start(16, HELD).await?;
    let mut silent = silent_clients(&server.path, 200).await?;
    for i in 0..5 {
        let start = Instant::now();
        let (code, body) = curl(&server.path, "/v1/status").await?;
        assert_eq!(code, 200, "curl {i}: {}", String::from_utf8_lossy(&body));
        ensure!(
            start.elapsed() < SOON,
            "curl {i} took {:?}",
            start.elapsed()
        );
    }
    // The first silent client was the longest idle: it was closed (EOF, no answer).
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(SOON, silent[0].read(&mut buf)).await?;
    assert!(matches!(n, Ok(0)), "{n:?}");
    let all: AdminClients = server
        .client()
        .get("/v1/admin-clients")
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    assert!(all.clients.len() <= 16, "the cap holds: {all:?}");
    assert!(all.evictions > 200 - 16, "{all:?}");
    assert_eq!(all.recent_evictions.len(), 16, "{all:?}");
    assert!(
        all.recent_evictions
            .windows(2)
            .all(|w| w[0].ago_s <= w[1].ago_s),
        "newest first: {all:?}"
    );
    assert!(all.recent_evictions.iter().all(|e| e.peer == "unix"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_holders_are_listed_while_they_hold_slots() -> anyhow::Result<()> {
    let server = Server::start(201, HELD).await?;
    let _silent = silent_clients(&server.path, 100).await?;
    let mut sending = Vec::new();
    for _ in 0..100 {
        let mut s = UnixStream::connect(&server.path).await?;
        s.write_all(HALF_SENT).await?;
        sending.push(s);
    }
    // The asking client keeps its connection (and its slot) open. Poll until the
    // server has read every half-sent head.
    let mut asking = UnixStream::connect(&server.path).await?;
    let start = Instant::now();
    let all = loop {
        let r = keep_alive_request(
            &mut asking,
            "GET /v1/admin-clients HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await?;
        assert_eq!(r.status, 200, "{r:?}");
        let all: AdminClients = serde_json::from_slice(&r.body)?;
        if all.clients.iter().filter(|c| c.in_request).count() == 100 || start.elapsed() > SOON {
            break all;
        }
        tokio::time::sleep(POLL).await;
    };
    let clients = &all.clients;
    assert_eq!(clients.len(), 201, "200 holders and the one asking");
    assert_eq!(clients.iter().filter(|c| c.in_request).count(), 100);
    let asking = clients.iter().filter(|c| c.requests > 0).count();
    assert_eq!(asking, 1, "{clients:?}");
    assert!(clients
        .iter()
        .all(|c| c.peer == "unix" && c.age_s >= c.idle_s));
    assert!(
        clients.windows(2).all(|w| w[0].id < w[1].id),
        "longest-connected first"
    );
    assert_eq!(all.evictions, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_the_cap_is_answered_or_closed_and_never_hangs() -> anyhow::Result<()> {
    let server = Server::start(4, HELD).await?;
    let (_holders, _) = fill_with_requests_in_progress(&server.path, 4).await?;
    // 200 more, each sending a request: every one gets a whole 503 (beyond the
    // refusals in flight, written at once); none hangs.
    let mut flood = Vec::new();
    for _ in 0..200 {
        let path = server.path.clone();
        flood.push(tokio::spawn(async move {
            let mut s = UnixStream::connect(&path).await?;
            // The server may already have closed it: a failed write is an answer too.
            let _ = s
                .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut bytes = Vec::new();
            match tokio::time::timeout(SOON, s.read_to_end(&mut bytes)).await {
                Err(_) => bail!("a refused client was left hanging"),
                Ok(_) if bytes.is_empty() => Ok(None),
                Ok(_) => parse_raw(&bytes).map(|r| Some(r.status)),
            }
        }));
    }
    let mut unanswered = 0;
    for f in flood {
        match f.await?? {
            Some(503) => {}
            Some(other) => bail!("a client over the cap got {other}"),
            None => unanswered += 1,
        }
    }
    assert_eq!(unanswered, 0, "every client over the cap gets its 503");
    // The holders are closed after idle_timeout.
    wait_until_served(&server, HELD + SOON).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_idle_timeout() -> anyhow::Result<()> {
    let server = Server::start(16, Duration::from_millis(300)).await?;
    let mut s = UnixStream::connect(&server.path).await?;
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(SOON, s.read(&mut buf)).await?;
    assert!(matches!(n, Ok(0)), "{n:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed too early: {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_trickled_byte_by_byte_is_cut_at_idle_timeout() -> anyhow::Result<()> {
    let server = Server::start(16, Duration::from_millis(300)).await?;
    let mut s = UnixStream::connect(&server.path).await?;
    let start = Instant::now();
    let request = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    // One byte every 50 ms keeps the idle timer happy, but not the request deadline.
    for b in request {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        // Paces the slow client; not a wait for readiness.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if start.elapsed() > SOON {
            bail!("still sending after {SOON:?}: the request deadline did not fire");
        }
    }
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut bytes)).await?;
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the trickle held its slot for {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_closes_the_clients_and_removes_the_socket() -> anyhow::Result<()> {
    let mut server = Server::start(16, Duration::from_secs(10)).await?;
    let mut held = silent_clients(&server.path, 3).await?;
    // Make sure they are being served (the server counts them).
    let all: AdminClients = server
        .client()
        .get("/v1/admin-clients")
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    assert_eq!(all.clients.len(), 4);
    server.stop().await?;
    for s in &mut held {
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(SOON, s.read(&mut buf)).await?;
        assert!(matches!(n, Ok(0)), "{n:?}");
    }
    assert!(!server.path.exists());
    Ok(())
}

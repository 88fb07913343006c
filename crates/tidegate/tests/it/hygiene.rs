//! Request hygiene against the built binary: routing on the normalized path, Host
//! validation, what `Connection` may remove, underscored header names, and upgrades by
//! name. Each backend records exactly what it parsed, so "never forwarded" is checked
//! on the wire.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tidegate_testkit::{connect, Backend, Bind, Reply, Response, Stream, TcpBackend, Tidegate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A generous functional bound for anything that should happen "at once".
const T: Duration = Duration::from_secs(5);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

async fn start(toml: &str) -> anyhow::Result<Tidegate> {
    Tidegate::start(bin(), toml)
        .await
        .with_context(|| format!("start tidegate with:\n{toml}"))
}

/// Sends `raw` on a new connection and reads one response.
async fn send(tg: &Tidegate, listener: &str, raw: &str) -> anyhow::Result<Response> {
    let mut c = connect(&tg.addr(listener)?).await?;
    c.send(raw.as_bytes()).await?;
    c.read_response(T)
        .await
        .with_context(|| format!("response to {raw:?}"))
}

/// Sends `raw`, expects `status` and that `app` saw no new request.
async fn refused(tg: &Tidegate, app: &Backend, raw: &str, status: u16) -> anyhow::Result<Response> {
    let before = app.requests().len();
    let resp = send(tg, "web", raw).await?;
    assert_eq!(resp.status, status, "{raw:?}: {}", resp.text());
    assert_eq!(
        app.requests().len(),
        before,
        "{raw:?} reached the upstream: {}",
        app.summary()
    );
    Ok(resp)
}

fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

// === Routes match the normalized path ===

#[tokio::test]
async fn routes_match_the_normalized_path_and_ambiguous_paths_get_400() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "app"))?;
    let tg = start(&format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
path = "/admin"
respond = {{ status = 403, body = "no" }}

[[listeners.web.routes]]
path = "/norm"
upstream = "app"
forward_normalized = true

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
"#,
        app.addr()
    ))
    .await?;

    for path in [
        "/admin",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/%61dmin",
        "/%61%64%6D%69%6E/x",
        "/x/%2e%2E/admin",
        "/admin/.",
        "///admin//x",
    ] {
        let resp = refused(&tg, &app, &get(path, "a.com"), 403).await?;
        assert_eq!(resp.text(), "no", "{path}");
    }
    for path in [
        "/static/..%2Fadmin",
        "/a%2fb",
        "/..",
        "/a/../../admin",
        "/%2E%2E/admin",
        "/a%00",
        "/a%zz",
        "/a%4",
    ] {
        let resp = refused(&tg, &app, &get(path, "a.com"), 400).await?;
        assert!(
            resp.text().contains("request path"),
            "{path}: {}",
            resp.text()
        );
    }

    // Case-sensitive: `/Admin` is not `/admin`; and the upstream gets the path as sent.
    for path in ["/Admin", "/static//x/./y/%7Ez?q=/../a"] {
        let resp = send(&tg, "web", &get(path, "a.com")).await?;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        let req = app.requests().last().cloned().context("app saw nothing")?;
        assert_eq!(req.target, path, "the upstream gets the client's path");
    }
    // A route with forward_normalized sends the normalized path, query unchanged.
    let resp = send(&tg, "web", &get("/norm//x/./y/%7Ez/../w?q=/../a", "a.com")).await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let req = app.requests().last().cloned().context("app saw nothing")?;
    assert_eq!(req.target, "/norm/x/y/w?q=/../a");
    Ok(())
}

// === Host is uri-host [":" port] ===

#[tokio::test]
async fn a_host_that_is_not_uri_host_and_port_gets_400_before_routing() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "app"))?;
    let tg = start(&format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
"#,
        app.addr()
    ))
    .await?;

    for host in [
        "a.com:80@evil.com",
        "a b",
        "a.com/../x",
        "a.com, b.com",
        "a.com:99999999999",
        "a.com:65536",
        "[::1",
        "a.com:80:80",
    ] {
        let resp = refused(&tg, &app, &get("/", host), 400).await?;
        assert!(resp.text().contains("Host"), "{host}: {}", resp.text());
    }
    for target in [
        "http://u@a.com/",
        "http://a.com:80@evil.com/",
        "http://a.com:99999999/",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a.com\r\n\r\n");
        let resp = refused(&tg, &app, &raw, 400).await?;
        assert!(
            resp.text().contains("authority"),
            "{target}: {}",
            resp.text()
        );
    }
    for host in [
        "a.com",
        "A.com:8080",
        "10.0.0.1:65535",
        "[::1]:8080",
        "a.com:",
    ] {
        let resp = send(&tg, "web", &get("/ok", host)).await?;
        assert_eq!(resp.status, 200, "{host}: {}", resp.text());
        let req = app.requests().last().cloned().context("app saw nothing")?;
        assert_eq!(req.header_all("host"), [host]);
    }
    Ok(())
}

// === Connection names hop-by-hop options only ===

#[tokio::test]
async fn connection_cannot_remove_end_to_end_fields() -> anyhow::Result<()> {
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "app"))?;
    let tg = start(&format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
"#,
        app.addr()
    ))
    .await?;

    let resp = send(
        &tg,
        "web",
        "POST /c HTTP/1.1\r\nHost: a.com\r\n\
         Connection: host, content-length, authorization, cookie, x-forwarded-for, \
         x-forwarded-host, x-forwarded-proto, x-drop\r\n\
         Authorization: Basic dTpw\r\nCookie: s=1\r\nX-Forwarded-For: 10.0.0.1\r\n\
         X-Drop: gone\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let req = app.requests().last().cloned().context("app saw nothing")?;
    assert_eq!(req.header_all("host"), ["a.com"], "{:?}", req.headers);
    assert_eq!(req.header_all("authorization"), ["Basic dTpw"]);
    assert_eq!(req.header_all("cookie"), ["s=1"]);
    assert_eq!(req.header_all("x-forwarded-for"), ["10.0.0.1, 127.0.0.1"]);
    assert_eq!(req.header_all("x-forwarded-host"), ["a.com"]);
    assert_eq!(req.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(req.header("x-drop"), None, "a listed option is removed");
    assert_eq!(req.header("connection"), None);
    assert_eq!(req.body, b"hello");
    Ok(())
}

// === Header names with underscores ===

#[tokio::test]
async fn underscored_header_names_are_dropped_unless_the_listener_keeps_them() -> anyhow::Result<()>
{
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "app"))?;
    let tg = start(&format!(
        r#"
[server]
log = {{ level = "debug" }}

[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
upstream = "app"

[listeners.keep]
listen = ["127.0.0.1:0"]
underscores_in_headers = true

[[listeners.keep.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
"#,
        app.addr()
    ))
    .await?;

    let raw = "GET /u HTTP/1.1\r\nHost: a.com\r\nX_Forwarded_Host: evil.example\r\n\
               My_Header: 1\r\nX-Kept: yes\r\n\r\n";
    let resp = send(&tg, "web", raw).await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let req = app.requests().last().cloned().context("app saw nothing")?;
    assert_eq!(req.header("x_forwarded_host"), None, "{:?}", req.headers);
    assert_eq!(req.header("my_header"), None, "{:?}", req.headers);
    assert_eq!(req.header_all("x-forwarded-host"), ["a.com"]);
    assert_eq!(req.header("x-kept"), Some("yes"));
    tg.wait_log("x_forwarded_host", T).await?;

    let resp = send(&tg, "keep", raw).await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let req = app.requests().last().cloned().context("app saw nothing")?;
    assert_eq!(req.header_all("x_forwarded_host"), ["evil.example"]);
    assert_eq!(req.header_all("my_header"), ["1"]);
    Ok(())
}

// === Upgrades by name ===

/// What the upgrade backend parsed of one request: its request line and headers.
#[derive(Clone, Debug)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A lenient backend: a request with `Upgrade` gets a 101 switching to the protocol
/// its path names after `/answer/`, or else to what it offered, then an echo; any other
/// request gets `200 plain` and a close.
fn upgrade_backend() -> anyhow::Result<(TcpBackend, Arc<Mutex<Vec<Seen>>>)> {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let backend = TcpBackend::start(Bind::Tcp4, move |s| serve_upgrade(s, record.clone()))?;
    Ok((backend, seen))
}

async fn serve_upgrade(mut s: Stream, seen: Arc<Mutex<Vec<Seen>>>) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded by the head's size (tidegate sends one head, then waits).
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 64 * 1024 {
            bail!("head too long");
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let req = Seen { line, headers };
    seen.lock().unwrap().push(req.clone());
    let Some(offered) = req.header("upgrade") else {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nplain")
            .await?;
        return Ok(());
    };
    let target = req.line.split(' ').nth(1).unwrap_or_default();
    let answer = target
        .rsplit_once("/answer/")
        .map_or(offered, |(_, a)| a)
        .to_owned();
    s.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {answer}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    tidegate_testkit::tcp_echo::echo(s).await
}

#[tokio::test]
async fn upgrades_are_allowed_by_name_and_a_101_must_switch_to_an_offered_protocol(
) -> anyhow::Result<()> {
    let (backend, seen) = upgrade_backend()?;
    let tg = start(&format!(
        r#"
[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
path = "/foo"
upstream = "app"
upgrades = ["websocket", "foo"]

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
keepalive = 0
"#,
        backend.addr()
    ))
    .await?;
    let addr = tg.addr("web")?;
    let last = || {
        seen.lock()
            .unwrap()
            .last()
            .cloned()
            .context("backend saw nothing")
    };

    // Tunnelled: websocket on GET (default), foo where the route allows it (any method).
    for (raw, proto) in [
        (
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "websocket",
        ),
        (
            "GET /foo HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c, foo\r\n\r\n",
            "foo",
        ),
        (
            "POST /foo/x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\nContent-Length: 0\r\n\r\n",
            "foo",
        ),
    ] {
        let mut c = connect(&addr).await?;
        c.send(raw.as_bytes()).await?;
        let head = c.read_head(T).await.with_context(|| raw.to_owned())?;
        assert_eq!(head.status, 101, "{raw:?}");
        assert_eq!(head.header("upgrade"), Some(proto), "{raw:?}");
        assert_eq!(last()?.header("upgrade"), Some(proto), "{raw:?}");
        c.send(b"through the tunnel").await?;
        let got = c.read_until(b"tunnel", T).await?;
        assert!(got.ends_with(b"through the tunnel"), "{raw:?}: {got:?}");
    }

    // Forwarded as plain requests, Upgrade (and HTTP2-Settings) removed: websocket on
    // POST, a protocol the route does not list, h2c anywhere.
    for raw in [
        "POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
        "GET /foo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    ] {
        let resp = send(&tg, "web", raw).await?;
        assert_eq!(resp.status, 200, "{raw:?}: {}", resp.text());
        assert_eq!(resp.text(), "plain", "{raw:?}");
        let req = last()?;
        assert_eq!(req.header("upgrade"), None, "{raw:?}: {:?}", req.headers);
        assert_eq!(req.header("http2-settings"), None, "{raw:?}: {:?}", req.headers);
        assert_eq!(req.header("connection"), None, "{raw:?}: {:?}", req.headers);
    }

    // A 101 to a protocol the client did not offer: 502 naming the upstream, no tunnel.
    for target in ["/answer/h2c", "/foo/answer/bar"] {
        let raw = format!(
            "GET {target} HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
        let mut c = connect(&addr).await?;
        c.send(raw.as_bytes()).await?;
        let resp = c.read_response(T).await?;
        assert_eq!(resp.status, 502, "{raw:?}: {}", resp.text());
        let text = resp.text();
        assert!(
            text.contains("upstream app") && text.contains("did not offer"),
            "{text}"
        );
        assert_eq!(last()?.header("upgrade"), Some("websocket"));
    }
    Ok(())
}

//! A real browser through tidegate over TLS: headless Chromium loads a page whose
//! EventSources outnumber the 6 connections per host of HTTP/1.1 (`testkit::browser`).
//! Over HTTP/2 (ALPN h2) every stream gets its first event on one connection and the page
//! reports `nextHopProtocol == "h2"`; over HTTP/1.1 the report itself could not be sent.

use std::path::Path;
use std::time::Duration;

use anyhow::ensure;
use tidegate_testkit::browser::BrowserApp;
use tidegate_testkit::tls::TestCa;
use tidegate_testkit::{Addr, Tidegate};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

const STREAMS: usize = 8;

#[tokio::test]
async fn chromium_loads_a_page_and_eight_event_sources_over_h2() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    ca.leaf(dir.path(), "app", &["app.test"], None)?;
    let app = BrowserApp::start(STREAMS).await?;
    let tg = Tidegate::start_in(
        dir.path(),
        bin(),
        &format!(
            r#"
[listeners.web]
listen = ["127.0.0.1:0"]
tls = {{ certificates = [ {{ cert = "app.pem", key = "app.key" }} ] }}

[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]
"#,
            app.server()
        ),
    )
    .await?;
    let Addr::Tcp(addr) = tg.addr("web")? else {
        anyhow::bail!("not a TCP listener");
    };
    let url = format!("https://app.test:{}/", addr.port());
    let report = app.load(&url, "app.test", Duration::from_secs(30)).await?;
    ensure!(
        report["nav"] == "h2",
        "the page did not come over h2: {report}"
    );
    ensure!(report["extra"].is_null(), "the page timed out: {report}");
    for i in 0..STREAMS {
        ensure!(
            report["got"][i] == format!("hello {i}"),
            "stream {i} got no first event: {report}"
        );
    }
    Ok(())
}

//! The access log bounds its memory in bytes (`crates/proxy/src/access_log.rs`): with
//! its writer stalled — the log goes to a FIFO that the test holds open and never
//! reads, as a stdout pipe nobody drains — requests with 50 KB headers and long paths
//! pass, tidegate's RSS stays within a few MB of where it started, and the lines that
//! do not fit are counted in `tidegate_access_log_dropped_total`.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use nix::sys::stat::Mode;
use tidegate_testkit::procfs::vm_rss_kib;
use tidegate_testkit::{Addr, Tidegate};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// Connections the requests are spread over, and requests on each.
const CONNECTIONS: usize = 8;
const PER_CONNECTION: usize = 250;
/// The issue's case: headers of 50 KB (under the default `max_header_size`, 64 KiB).
const HEADER: usize = 50_000;
/// A path longer than the logged maximum (4 KiB), so every record is as big as one
/// gets and the byte budget, not the line count, is what fills.
const PATH: usize = 6_000;
/// How much RSS may grow: the queue's byte budget (4 MiB) and some allocator slack.
const GROWTH_KIB: u64 = 8 * 1024;

/// `per_connection` keep-alive requests with a big header on each of `connections`
/// connections at once; every answer must be 200.
async fn load(web: &Addr, connections: usize, per_connection: usize) -> anyhow::Result<()> {
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\n\r\n",
        "p".repeat(PATH),
        "h".repeat(HEADER)
    );
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let web = web.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = tidegate_testkit::connect(&web).await?;
            for i in 0..per_connection {
                c.send(request.as_bytes()).await?;
                let r = c.read_response(Duration::from_secs(5)).await?;
                ensure!(r.status == 200, "request {i}: {}", r.status);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_access_log_holds_a_few_mb_and_counts_what_it_drops() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("tgl").tempdir()?;
    let fifo = dir.path().join("access.fifo");
    nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).context("mkfifo")?;
    // Held open, never read: tidegate's open for writing succeeds, and its writes
    // block once the pipe (64 KiB) is full.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&fifo)
        .context("open the FIFO's read end")?;
    let config = format!(
        r#"
[server]
access_log = {{ to = "{}" }}

[listeners.web]
listen = ["127.0.0.1:0"]

[[listeners.web.routes]]
respond = {{ status = 200, body = "ok\n" }}
"#,
        fifo.display()
    );
    let tg = Tidegate::start_in(dir.path(), bin(), &config).await?;
    let web = tg.addr("web")?;

    // Warm up (the runtime's and hyper's buffers, the allocator's arenas) and fill the
    // pipe, so the writer is stalled from here on.
    load(&web, CONNECTIONS, 20).await?;
    let before = vm_rss_kib(tg.pid())?;
    load(&web, CONNECTIONS, PER_CONNECTION).await?;
    let after = vm_rss_kib(tg.pid())?;
    ensure!(
        after <= before + GROWTH_KIB,
        "RSS grew from {before} KiB to {after} KiB over {} requests with {HEADER}-byte \
         headers while the access log was stalled (at most {GROWTH_KIB} KiB allowed)",
        CONNECTIONS * PER_CONNECTION
    );

    // What did not fit was dropped, and counted.
    let admin = match tg.addr("admin")? {
        Addr::Unix(p) => p,
        other => anyhow::bail!("admin on {other}"),
    };
    let (status, body) = tidegate_testkit::curl_unix(&admin, "GET", "/metrics").await?;
    ensure!(status == 200, "metrics: {status}");
    let metrics = String::from_utf8(body)?;
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("tidegate_access_log_dropped_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .with_context(|| format!("no tidegate_access_log_dropped_total in {metrics}"))?;
    // 2,160 records of about 4.3 KB; the 4 MiB budget holds under 1,000.
    ensure!(
        dropped >= 1000.0,
        "only {dropped} lines dropped: the queue is not bounded in bytes"
    );
    eprintln!("RSS {before} KiB -> {after} KiB; {dropped} access-log lines dropped");
    Ok(())
}

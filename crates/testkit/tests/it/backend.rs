//! The HTTP backend, driven by the raw client, on every transport.

use std::time::{Duration, Instant};

use tidegate_testkit::{connect, get, Backend, BackendOptions, Bind, ConnEnd, End, Reply, SseThen};

/// A generous bound for things that happen at once.
const T: Duration = Duration::from_secs(2);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test]
async fn text_reply_keeps_the_connection_alive_until_connection_close() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        let b = Backend::start(bind, |_| Reply::text(201, "hello").header("X-Test", "1"))?;
        let mut c = connect(b.addr()).await?;
        c.send(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n").await?;
        let r = c.read_response(T).await?;
        assert_eq!(
            (r.status, r.text().as_str(), r.complete),
            (201, "hello", true),
            "{bind:?}"
        );
        assert_eq!(r.header("x-test"), Some("1"));
        assert_eq!(r.header("content-length"), Some("5"));

        c.send(b"GET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await?;
        let r = c.read_response(T).await?;
        assert_eq!(r.header("connection"), Some("close"));
        let (rest, end) = c.read_to_end(T).await?;
        assert_eq!((rest.len(), end), (0, End::Eof));

        assert_eq!(b.accepts(), 1);
        assert_eq!(
            b.request_lines(),
            ["GET /one HTTP/1.1", "GET /two HTTP/1.1"]
        );
        let reqs = b.requests();
        assert_eq!(reqs[0].raw_head, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(reqs[1].header("CONNECTION"), Some("close"));
        assert!(reqs.iter().all(|r| r.conn_id == 1));
        b.wait_for(|b| b.closed_connections() == 1, T).await?;
        assert_eq!(
            b.connection(1).and_then(|c| c.end),
            Some(ConnEnd::ClosedByBackend)
        );
    }
    Ok(())
}

#[tokio::test]
async fn accept_counter_counts_every_connection() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        let b = Backend::start(bind, |_| Reply::text(200, "ok"))?;
        for _ in 0..3 {
            let r = get(b.addr(), "/", "h").await?;
            assert_eq!(r.status, 200);
        }
        assert_eq!(b.accepts(), 3, "{bind:?}");
        b.wait_for(
            |b| b.closed_connections() == 3 && b.open_connections() == 0,
            T,
        )
        .await?;
        let ids: Vec<u64> = b.connections().iter().map(|c| c.id).collect();
        assert_eq!(ids, [1, 2, 3]);
    }
    Ok(())
}

#[tokio::test]
async fn echo_reports_the_request_as_received() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        let b = Backend::start(bind, |_| Reply::echo())?;
        let mut c = connect(b.addr()).await?;
        c.send(b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8\r\nContent-Length: 4\r\n\r\nabcd")
            .await?;
        let r = c.read_response(T).await?;
        assert_eq!(r.header("content-type"), Some("application/json"));
        let j = r.json()?;
        assert_eq!(j["method"], "POST", "{bind:?}");
        assert_eq!(j["target"], "/p?q=1");
        assert_eq!(j["version"], "HTTP/1.1");
        assert_eq!(j["body_len"], 4);
        assert_eq!(
            j["headers"][1],
            serde_json::json!(["X-Forwarded-For", "1.2.3.4"])
        );
        assert_eq!(
            j["headers"][2],
            serde_json::json!(["x-forwarded-for", "5.6.7.8"])
        );
        assert_eq!(
            b.requests()[0].header_all("X-FORWARDED-FOR"),
            ["1.2.3.4", "5.6.7.8"]
        );
    }
    Ok(())
}

#[tokio::test]
async fn content_length_and_chunked_request_bodies_are_decoded_and_recorded() -> anyhow::Result<()>
{
    for bind in Bind::ALL {
        let b = Backend::start(bind, |_| Reply::text(200, "ok"))?;
        let mut c = connect(b.addr()).await?;
        // Sent in pieces, so the parser must wait for the rest.
        c.send(b"PUT /cl HTTP/1.1\r\nHost: h\r\nContent-Len")
            .await?;
        c.send(b"gth: 11\r\n\r\nhello").await?;
        c.send(b" world").await?;
        assert_eq!(c.read_response(T).await?.status, 200);

        c.send(b"POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n")
            .await?;
        c.send(b"1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
            .await?;
        assert_eq!(c.read_response(T).await?.status, 200);

        let reqs = b.requests();
        assert_eq!(reqs.len(), 2, "{bind:?}");
        assert_eq!(reqs[0].body, b"hello world");
        assert_eq!((reqs[0].body_len, reqs[0].body_complete), (11, true));
        assert_eq!(reqs[1].body, b"hello 0123456789");
        assert_eq!((reqs[1].body_len, reqs[1].body_complete), (16, true));
        assert_eq!(reqs[1].header("transfer-encoding"), Some("chunked"));
        assert!(b.parse_errors().is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn expect_continue_gets_100_before_the_body_is_read() -> anyhow::Result<()> {
    let b = Backend::start(Bind::Tcp4, |_| Reply::echo())?;
    let mut c = connect(b.addr()).await?;
    c.send(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .await?;
    assert_eq!(c.read_head(T).await?.status, 100);
    c.send(b"abc").await?;
    let r = c.read_response(T).await?;
    assert_eq!(
        (r.status, &r.json()?["body_len"]),
        (200, &serde_json::json!(3))
    );
    Ok(())
}

#[tokio::test]
async fn head_request_gets_headers_without_body() -> anyhow::Result<()> {
    let b = Backend::start(Bind::Tcp4, |_| Reply::text(200, "body"))?;
    let mut c = connect(b.addr()).await?;
    c.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await?;
    let head = c.read_head(T).await?;
    assert_eq!(head.header("content-length"), Some("4"));
    // The next bytes are the pipelined GET's response, not a HEAD body.
    let r = c.read_response(T).await?;
    assert_eq!(r.text(), "body");
    Ok(())
}

#[tokio::test]
async fn delay_reply_answers_after_the_delay() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        let b = Backend::start(bind, |_| Reply::delay(ms(200), Reply::text(200, "late")))?;
        let start = Instant::now();
        let r = get(b.addr(), "/", "h").await?;
        assert_eq!(r.text(), "late");
        assert!(
            start.elapsed() >= ms(190),
            "{bind:?}: {:?}",
            start.elapsed()
        );
    }
    Ok(())
}

#[tokio::test]
async fn client_close_during_delay_is_seen_within_a_second() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        let b = Backend::start(bind, |_| {
            Reply::delay(Duration::from_secs(10), Reply::text(200, "x"))
        })?;
        let mut c = connect(b.addr()).await?;
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await?;
        b.wait_for(|b| b.requests().len() == 1, T).await?;
        let closed = Instant::now();
        drop(c);
        b.wait_for(|b| b.closed_connections() == 1, Duration::from_secs(1))
            .await?;
        let conn = b.connection(1).expect("connection 1");
        assert_eq!(conn.end, Some(ConnEnd::ClosedByPeer), "{bind:?}");
        assert!(conn.closed_at.expect("closed") - closed < Duration::from_secs(1));
    }
    Ok(())
}

#[tokio::test]
async fn sse_events_arrive_before_the_stream_ends_and_hold_notices_the_client_leaving(
) -> anyhow::Result<()> {
    for bind in Bind::ALL {
        let events = vec!["data: one\n\n".to_string(), "data: two\n\n".to_string()];
        let b = Backend::start(bind, move |_| Reply::sse(events.clone(), SseThen::Hold))?;
        let mut c = connect(b.addr()).await?;
        c.send(b"GET /events HTTP/1.1\r\nHost: h\r\n\r\n").await?;
        let head = c.read_head(T).await?;
        assert_eq!(
            head.header("content-type"),
            Some("text/event-stream"),
            "{bind:?}"
        );
        assert_eq!(head.header("transfer-encoding"), Some("chunked"));
        assert_eq!(
            c.read_body_some(T).await?.as_deref(),
            Some(&b"data: one\n\n"[..])
        );
        assert_eq!(
            c.read_body_some(T).await?.as_deref(),
            Some(&b"data: two\n\n"[..])
        );
        // Held open and silent: the read times out (an early end would be another error).
        let silent = c
            .read_body_some(ms(200))
            .await
            .expect_err("nothing more arrives");
        assert!(
            silent.to_string().contains("no body bytes within"),
            "{bind:?}: {silent:#}"
        );
        assert_eq!(b.open_connections(), 1);

        c.reset()?;
        b.wait_for(|b| b.closed_connections() == 1, Duration::from_secs(1))
            .await?;
        let end = b.connection(1).and_then(|c| c.end).expect("ended");
        assert!(end.by_peer(), "{bind:?}: {end:?}");
    }
    Ok(())
}

#[tokio::test]
async fn sse_end_finishes_the_body_and_keeps_the_connection() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        let b = Backend::start(bind, |_| {
            Reply::sse(vec!["data: a\n\n".into()], SseThen::End)
        })?;
        let mut c = connect(b.addr()).await?;
        for _ in 0..2 {
            c.send(b"GET /events HTTP/1.1\r\nHost: h\r\n\r\n").await?;
            let r = c.read_response(T).await?;
            assert_eq!(
                (r.text().as_str(), r.complete),
                ("data: a\n\n", true),
                "{bind:?}"
            );
        }
        assert_eq!(b.accepts(), 1);
    }
    Ok(())
}

#[tokio::test]
async fn chunks_reply_sends_each_chunk_after_its_delay() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        let b = Backend::start(bind, |_| {
            Reply::chunks(vec![
                (ms(0), b"first".to_vec()),
                (ms(400), b"second".to_vec()),
            ])
        })?;
        let mut c = connect(b.addr()).await?;
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await?;
        let start = Instant::now();
        c.read_head(T).await?;
        assert_eq!(c.read_body_some(T).await?.as_deref(), Some(&b"first"[..]));
        assert!(start.elapsed() < ms(300), "{bind:?}: first chunk held back");
        assert_eq!(c.read_body_some(T).await?.as_deref(), Some(&b"second"[..]));
        assert!(start.elapsed() >= ms(390));
        assert_eq!(c.read_body_some(T).await?, None);
    }
    Ok(())
}

#[tokio::test]
async fn chunks_then_close_or_reset_leave_the_body_incomplete() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        for reset in [false, true] {
            let b = Backend::start(bind, move |_| {
                let chunks = vec![(ms(0), b"part".to_vec()), (ms(50), b"more".to_vec())];
                if reset {
                    Reply::chunks_then_reset(chunks)
                } else {
                    Reply::chunks_then_close(chunks)
                }
            })?;
            let mut c = connect(b.addr()).await?;
            c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await?;
            let r = c.read_response(T).await?;
            assert_eq!((r.status, r.text().as_str()), (200, "partmore"), "{bind:?}");
            assert!(!r.complete, "{bind:?} reset={reset}");
            // A Unix socket has no reset.
            assert_eq!(r.reset, reset && bind != Bind::Unix, "{bind:?}");
            b.wait_for(|b| b.closed_connections() == 1, T).await?;
            let want = if reset {
                ConnEnd::ResetByBackend
            } else {
                ConnEnd::ClosedByBackend
            };
            assert_eq!(b.connection(1).and_then(|c| c.end), Some(want));
        }
    }
    Ok(())
}

#[tokio::test]
async fn close_or_reset_before_response_sends_nothing() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        for reset in [false, true] {
            let b = Backend::start(bind, move |_| {
                if reset {
                    Reply::reset_before_response()
                } else {
                    Reply::close_before_response()
                }
            })?;
            let mut c = connect(b.addr()).await?;
            c.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
                .await?;
            let (bytes, end) = c.read_to_end(T).await?;
            assert!(bytes.is_empty(), "{bind:?}");
            let want = if reset && bind != Bind::Unix {
                End::Reset
            } else {
                End::Eof
            };
            assert_eq!(end, want, "{bind:?} reset={reset}");
            // The request was still read and recorded.
            assert_eq!(b.requests()[0].body, b"hi");
            assert!(get(b.addr(), "/", "h").await.is_err());
        }
    }
    Ok(())
}

#[tokio::test]
async fn slow_read_reads_the_body_at_about_the_rate() -> anyhow::Result<()> {
    let mut cases = Vec::new();
    for bind in Bind::ALL {
        for chunked in [false, true] {
            cases.push(slow_read_case(bind, chunked));
        }
    }
    // Concurrently: each backend paces only its own reads.
    futures_util::future::try_join_all(cases).await?;
    Ok(())
}

async fn slow_read_case(bind: Bind, chunked: bool) -> anyhow::Result<()> {
    const LEN: usize = 512 * 1024;
    const RATE: u64 = 1024 * 1024;
    let b = Backend::start(bind, |_| Reply::slow_read(RATE))?;
    let mut c = connect(b.addr()).await?;
    let start = Instant::now();
    let body = vec![b'x'; LEN];
    if chunked {
        c.send(b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await?;
        for part in body.chunks(100_000) {
            c.send(format!("{:x}\r\n", part.len()).as_bytes()).await?;
            c.send(part).await?;
            c.send(b"\r\n").await?;
        }
        c.send(b"0\r\n\r\n").await?;
    } else {
        let head = format!("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {LEN}\r\n\r\n");
        c.send(head.as_bytes()).await?;
        c.send(&body).await?;
    }
    let r = c.read_response(Duration::from_secs(5)).await?;
    let took = start.elapsed();
    assert_eq!(r.text(), LEN.to_string(), "{bind:?}");
    // 0.5 s at the rate; generous bounds either side.
    assert!(
        took >= ms(400) && took < Duration::from_secs(3),
        "{bind:?} chunked={chunked}: took {took:?}"
    );
    let req = &b.requests()[0];
    assert_eq!(
        (req.body_len, req.body.len(), req.body_complete),
        (LEN as u64, 0, true)
    );
    Ok(())
}

#[tokio::test]
async fn unparseable_request_is_recorded_answered_400_and_closed() -> anyhow::Result<()> {
    let bad: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
    ];
    for bind in Bind::ALL {
        for (i, bytes) in bad.iter().enumerate() {
            let b = Backend::start(bind, |_| Reply::text(200, "ok"))?;
            let mut c = connect(b.addr()).await?;
            c.send(bytes).await?;
            let r = c.read_response(T).await?;
            assert_eq!(r.status, 400, "{bind:?} case {i}");
            let (_, end) = c.read_to_end(T).await?;
            assert_eq!(end, End::Eof);
            assert_eq!(b.parse_errors().len(), 1, "{:?}", b.parse_errors());
            assert!(b.requests().is_empty());
        }
    }
    Ok(())
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_when_configured() -> anyhow::Result<()> {
    for bind in Bind::ALL {
        let opts = BackendOptions::default().close_idle_after(ms(200));
        let b = Backend::start_with(bind, opts, |_| Reply::text(200, "ok"))?;
        let mut c = connect(b.addr()).await?;
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await?;
        c.read_response(T).await?;
        let start = Instant::now();
        let (_, end) = c.read_to_end(T).await?;
        assert_eq!(end, End::Eof, "{bind:?}");
        assert!(start.elapsed() >= ms(150));
        b.wait_for(|b| b.closed_connections() == 1, T).await?;
        assert_eq!(
            b.connection(1).and_then(|c| c.end),
            Some(ConnEnd::ClosedByBackend)
        );
    }
    Ok(())
}

#[tokio::test]
async fn handler_panic_is_recorded_and_answered_500() -> anyhow::Result<()> {
    let b = Backend::start(Bind::Tcp4, |_| panic!("boom"))?;
    let r = get(b.addr(), "/", "h").await?;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("boom"));
    assert_eq!(b.errors().len(), 1);
    assert!(b.errors()[0].contains("boom"));
    Ok(())
}

#[tokio::test]
async fn wait_for_reports_what_the_backend_saw() -> anyhow::Result<()> {
    let b = Backend::start(Bind::Tcp4, |_| Reply::text(200, "ok"))?;
    get(b.addr(), "/seen", "h").await?;
    let err = b
        .wait_for(|b| b.accepts() == 5, ms(50))
        .await
        .expect_err("never five accepts");
    assert!(format!("{err}").contains("GET /seen HTTP/1.1"), "{err}");
    Ok(())
}

#[tokio::test]
async fn dropping_a_backend_closes_its_connections_and_removes_its_socket() -> anyhow::Result<()> {
    let b = Backend::start(Bind::Unix, |_| Reply::sse(vec![], SseThen::Hold))?;
    let path = match b.addr() {
        tidegate_testkit::Addr::Unix(p) => p.clone(),
        other => anyhow::bail!("expected a Unix address, got {other}"),
    };
    let mut c = connect(b.addr()).await?;
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await?;
    c.read_head(T).await?;
    drop(b);
    assert!(!path.exists(), "{} still exists", path.display());
    let (_, end) = c.read_to_end(T).await?;
    assert_eq!(end, End::Eof);
    Ok(())
}

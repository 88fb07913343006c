//! The blackhole listener swallows connects.

use std::time::Duration;

use tidegate_testkit::blackhole_listener;

#[tokio::test]
async fn connect_to_blackhole_does_not_complete() -> anyhow::Result<()> {
    let hole = blackhole_listener()?;
    assert!(hole.fillers() >= 1);
    let sa = hole.addr().tcp().expect("a TCP address");
    for _ in 0..3 {
        let attempt = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(sa),
        )
        .await;
        assert!(attempt.is_err(), "connect to {sa} completed: {attempt:?}");
    }
    Ok(())
}

#[tokio::test]
async fn blackhole_connect_hangs_for_the_raw_client_too() -> anyhow::Result<()> {
    let hole = blackhole_listener()?;
    let attempt = tokio::time::timeout(
        Duration::from_millis(300),
        tidegate_testkit::connect(&hole.addr()),
    )
    .await;
    assert!(attempt.is_err(), "connect completed");
    Ok(())
}

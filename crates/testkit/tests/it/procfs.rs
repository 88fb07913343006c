//! `/proc` observations on this very process.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tidegate_testkit::{close_wait_sockets, process_gone};

/// Polls `f` until it holds or `within` passes.
fn poll(within: Duration, mut f: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<bool> {
    let deadline = Instant::now() + within;
    // Bounded by the deadline.
    loop {
        if f()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn close_wait_socket_is_found_until_it_is_closed() -> anyhow::Result<()> {
    let pid = std::process::id();
    for ip in ["127.0.0.1:0", "[::1]:0"] {
        let listener = TcpListener::bind(ip)?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (mut server, peer) = listener.accept()?;
        let desc = format!("{} -> {peer}", server.local_addr()?);
        assert!(
            !close_wait_sockets(pid)?.contains(&desc),
            "ESTABLISHED is not CLOSE_WAIT"
        );

        drop(client);
        // The FIN has arrived once a read returns 0; our side is now in CLOSE_WAIT.
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf)?, 0);
        let found = poll(Duration::from_secs(1), || {
            Ok(close_wait_sockets(pid)?.contains(&desc))
        })?;
        assert!(found, "{desc} not in {:?}", close_wait_sockets(pid)?);

        drop(server);
        assert!(
            !close_wait_sockets(pid)?.contains(&desc),
            "a closed socket is not ours any more"
        );
    }
    Ok(())
}

#[test]
fn a_reaped_child_is_gone_and_a_zombie_counts_as_gone() -> anyhow::Result<()> {
    let mut child = std::process::Command::new("true").spawn()?;
    let pid = child.id();
    // Not reaped yet: once it exits it is a zombie, which counts as gone.
    assert!(poll(Duration::from_secs(2), || Ok(process_gone(pid)))?);
    child.wait()?;
    assert!(process_gone(pid));
    Ok(())
}

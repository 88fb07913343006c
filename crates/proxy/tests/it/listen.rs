//! Listening sockets on real TCP and Unix sockets: options, errors, and the Unix socket
//! file's life (mode, stale files, drop).

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::SockRef;
use tidegate_config::{ListenAddr, UnixListen};
use tidegate_proxy::endpoint::{PeerAddr, Stream, TcpOptions};
use tidegate_proxy::errno::describe_io_error;
use tidegate_proxy::listen::{ListenError, Listener, LocalAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Generous bound for anything that should be instant; only hit when broken.
const DEADLINE: Duration = Duration::from_secs(10);

const OPTIONS: TcpOptions = TcpOptions {
    nodelay: true,
    keepalive: Some(Duration::from_secs(42)),
};

fn tcp(addr: &str) -> ListenAddr {
    ListenAddr::Tcp(addr.parse().expect("socket address"))
}

fn unix(path: &Path, mode: Option<u32>) -> ListenAddr {
    ListenAddr::Unix(UnixListen {
        path: path.to_owned(),
        mode,
        owner: None,
        group: None,
    })
}

fn tcp_port(listener: &Listener) -> SocketAddr {
    match listener.local_addr() {
        LocalAddr::Tcp(a) => *a,
        other => panic!("expected a TCP address, got {other}"),
    }
}

/// Binds `[::1]:0`, failing (not skipping) with a clear message where there is no
/// IPv6 loopback.
fn bind_v6_loopback() -> Listener {
    Listener::bind(&tcp("[::1]:0"), OPTIONS)
        .unwrap_or_else(|e| panic!("this test needs IPv6 on the loopback interface (::1): {e}"))
}

/// Accepts one connection while `connect` runs, both under the deadline.
async fn accept_with<F, T>(listener: &Listener, connect: F) -> (Stream, PeerAddr, T)
where
    F: std::future::Future<Output = std::io::Result<T>>,
{
    let (accepted, connected) =
        tokio::time::timeout(DEADLINE, async { tokio::join!(listener.accept(), connect) })
            .await
            .expect("accept within the deadline");
    let (stream, peer) = accepted.expect("accept");
    (stream, peer, connected.expect("connect"))
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Leaves a socket file nobody listens on, as a crashed process does.
fn stale_socket(path: &Path) {
    drop(std::os::unix::net::UnixListener::bind(path).expect("bind std listener"));
    assert!(fs::symlink_metadata(path)
        .expect("stale file")
        .file_type()
        .is_socket());
}

async fn assert_accepts_unix(listener: &Listener, path: &Path) {
    let (mut server, peer, mut client) = accept_with(listener, UnixStream::connect(path)).await;
    assert_eq!(peer, PeerAddr::Unix);
    assert!(matches!(server, Stream::Unix(_)));
    client.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
}

async fn assert_tcp_connection(listener: &Listener) {
    let addr = tcp_port(listener);
    let (server, peer, client) = accept_with(listener, TcpStream::connect(addr)).await;
    assert_eq!(
        peer,
        PeerAddr::Tcp(client.local_addr().expect("client addr"))
    );
    let Stream::Tcp(server) = server else {
        panic!("expected a TCP stream");
    };
    let sock = SockRef::from(&server);
    assert!(
        sock.tcp_nodelay().expect("TCP_NODELAY"),
        "TCP_NODELAY not set"
    );
    assert!(sock.keepalive().expect("SO_KEEPALIVE"), "keepalive not on");
    assert_eq!(
        sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
        Duration::from_secs(42)
    );
}

// === TCP ===

#[tokio::test]
async fn tcp_v4_listener_accepts_with_peer_address_and_tcp_options() {
    let listener = Listener::bind(&tcp("127.0.0.1:0"), OPTIONS).expect("bind");
    let addr = tcp_port(&listener);
    assert_ne!(addr.port(), 0, "local_addr must give the real port");
    assert_eq!(
        listener.local_addr().to_string(),
        format!("127.0.0.1:{}", addr.port())
    );
    assert_tcp_connection(&listener).await;
}

#[tokio::test]
async fn tcp_v6_listener_accepts_with_peer_address_and_tcp_options() {
    let listener = bind_v6_loopback();
    let port = tcp_port(&listener).port();
    assert_eq!(listener.local_addr().to_string(), format!("[::1]:{port}"));
    assert!(SockRef::from(&listener).only_v6().expect("IPV6_V6ONLY"));
    assert_tcp_connection(&listener).await;
}

#[tokio::test]
async fn tcp_options_off_are_left_off() {
    let off = TcpOptions {
        nodelay: false,
        keepalive: None,
    };
    let listener = Listener::bind(&tcp("127.0.0.1:0"), off).expect("bind");
    let (server, _, _client) =
        accept_with(&listener, TcpStream::connect(tcp_port(&listener))).await;
    let Stream::Tcp(server) = server else {
        panic!("expected a TCP stream");
    };
    assert!(!SockRef::from(&server).tcp_nodelay().expect("TCP_NODELAY"));
    assert!(!SockRef::from(&server).keepalive().expect("SO_KEEPALIVE"));
}

#[tokio::test]
async fn ipv6_and_ipv4_wildcards_listen_on_the_same_port() {
    // Port 0 first on IPv4, then the same port on IPv6: without IPV6_V6ONLY the second
    // bind fails where net.ipv6.bindv6only is 0 (the Linux default).
    let v4 = Listener::bind(&tcp("0.0.0.0:0"), OPTIONS).expect("bind 0.0.0.0:0");
    let port = tcp_port(&v4).port();
    let v6 = Listener::bind(&tcp(&format!("[::]:{port}")), OPTIONS)
        .unwrap_or_else(|e| panic!("[::]:{port} next to 0.0.0.0:{port} (needs IPv6): {e}"));

    // Each family reaches its own listener.
    let (_, peer, _c) = accept_with(&v4, TcpStream::connect(("127.0.0.1", port))).await;
    assert!(matches!(peer, PeerAddr::Tcp(a) if a.is_ipv4()), "{peer}");
    let (_, peer, _c) = accept_with(&v6, TcpStream::connect(("::1", port))).await;
    assert!(matches!(peer, PeerAddr::Tcp(a) if a.is_ipv6()), "{peer}");
}

#[tokio::test]
async fn ipv6_and_ipv4_loopback_listen_on_the_same_port() {
    let v6 = bind_v6_loopback();
    let port = tcp_port(&v6).port();
    let v4 = Listener::bind(&tcp(&format!("127.0.0.1:{port}")), OPTIONS).expect("bind v4");
    assert_eq!(tcp_port(&v4).port(), port);
}

#[tokio::test]
async fn address_in_use_names_the_address_and_errno() {
    let first = Listener::bind(&tcp("127.0.0.1:0"), OPTIONS).expect("bind");
    let addr = tcp_port(&first);
    let err = Listener::bind(&ListenAddr::Tcp(addr), OPTIONS).expect_err("second bind");
    assert_eq!(
        err.to_string(),
        format!("cannot listen on {addr}: address already in use (EADDRINUSE)")
    );
    assert_eq!(err.addr(), &ListenAddr::Tcp(addr));
    assert_eq!(
        err.io_error().and_then(|e| e.raw_os_error()),
        Some(nix::libc::EADDRINUSE)
    );
}

#[tokio::test]
async fn address_not_on_this_host_says_so() {
    // TEST-NET-1 (RFC 5737): never assigned to a local interface.
    let err = Listener::bind(&tcp("192.0.2.1:0"), OPTIONS).expect_err("bind");
    assert_eq!(
        err.to_string(),
        "cannot listen on 192.0.2.1:0: address not available (EADDRNOTAVAIL); \
         no network interface of this host has this address"
    );
}

#[test]
fn bind_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Listener::bind(&tcp("127.0.0.1:0"), OPTIONS).expect_err("no runtime");
    assert!(matches!(err, ListenError::NoRuntime { .. }), "{err}");
}

// === Unix ===

#[tokio::test]
async fn unix_listener_gets_the_configured_mode_and_leaves_no_temporary_file() {
    for mode in [0o660, 0o600] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.sock");
        let listener = Listener::bind(&unix(&path, Some(mode)), OPTIONS).expect("bind");

        let meta = fs::symlink_metadata(&path).expect("socket file");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, mode, "mode {mode:o}");
        assert_eq!(file_names(dir.path()), ["app.sock"]);
        assert_eq!(
            listener.local_addr().to_string(),
            format!("unix:{}", path.display())
        );
        assert_accepts_unix(&listener, &path).await;
    }
}

#[tokio::test]
async fn unix_listener_gets_the_configured_owner_and_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.sock");
    // `nobody` on most systems; any id works for root, none for anybody else.
    let (uid, gid) = (65534, 65534);
    let addr = ListenAddr::Unix(UnixListen {
        path: path.clone(),
        mode: Some(0o660),
        owner: Some(uid),
        group: Some(gid),
    });
    let result = Listener::bind(&addr, OPTIONS);
    if nix::unistd::geteuid().is_root() {
        let _listener = result.expect("bind as root");
        let meta = fs::symlink_metadata(&path).expect("socket file");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(file_names(dir.path()), ["app.sock"]);
    } else {
        let err = result.expect_err("chown needs root");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot listen on unix:{}: chown to uid {uid}, gid {gid}: operation not \
                 permitted (EPERM); changing the owner needs root or CAP_CHOWN",
                path.display()
            )
        );
        // The failure came after the temporary socket was bound: it must be gone.
        assert!(
            file_names(dir.path()).is_empty(),
            "temporary file left behind"
        );
    }
}

#[tokio::test]
async fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.sock");
    stale_socket(&path);
    // Not the inode number to tell old from new: the file system may reuse it.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod stale");

    let listener = Listener::bind(&unix(&path, Some(0o600)), OPTIONS).expect("bind over stale");
    let meta = fs::symlink_metadata(&path).expect("new");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(file_names(dir.path()), ["app.sock"]);
    assert_accepts_unix(&listener, &path).await;
}

#[tokio::test]
async fn live_socket_file_is_an_error_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.sock");
    let other = std::os::unix::net::UnixListener::bind(&path).expect("other listener");
    let ino = fs::symlink_metadata(&path).expect("file").ino();

    let err = Listener::bind(&unix(&path, None), OPTIONS).expect_err("in use");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot listen on unix:{}: another process is listening on this socket",
            path.display()
        )
    );
    assert_eq!(fs::symlink_metadata(&path).expect("file").ino(), ino);
    assert_eq!(file_names(dir.path()), ["app.sock"]);
    // Still theirs, still working.
    let _c = std::os::unix::net::UnixStream::connect(&path).expect("connect to the other");
    other.accept().expect("the other listener accepts");
}

#[tokio::test]
async fn regular_file_at_the_path_is_an_error_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.sock");
    fs::write(&path, "precious").expect("write");

    let err = Listener::bind(&unix(&path, None), OPTIONS).expect_err("not a socket");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot listen on unix:{p}: {p} exists and is not a socket (it is a regular file); \
             not removing it",
            p = path.display()
        )
    );
    assert_eq!(fs::read_to_string(&path).expect("read"), "precious");
    assert_eq!(file_names(dir.path()), ["app.sock"]);
}

#[tokio::test]
async fn symlink_at_the_path_is_not_followed_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.sock");
    // The link points at a stale socket: following it would find "a stale socket" and
    // remove it.
    let target = dir.path().join("target.sock");
    stale_socket(&target);
    std::os::unix::fs::symlink(&target, &path).expect("symlink");

    let err = Listener::bind(&unix(&path, None), OPTIONS).expect_err("symlink");
    assert!(
        matches!(&err, ListenError::NotASocket { found, .. } if *found == "a symbolic link"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("is not a socket (it is a symbolic link)"),
        "{err}"
    );
    assert_eq!(fs::read_link(&path).expect("link"), target);
    assert!(fs::symlink_metadata(&target)
        .expect("target")
        .file_type()
        .is_socket());
    assert_eq!(file_names(dir.path()), ["app.sock", "target.sock"]);
}

#[tokio::test]
async fn socket_file_is_removed_on_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.sock");
    let listener = Listener::bind(&unix(&path, Some(0o600)), OPTIONS).expect("bind");
    assert!(path.exists());
    drop(listener);
    assert!(
        fs::symlink_metadata(&path).is_err(),
        "socket file left behind"
    );
    assert!(file_names(dir.path()).is_empty());
}

#[tokio::test]
async fn drop_leaves_a_socket_file_that_replaced_ours_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.sock");
    let ours = Listener::bind(&unix(&path, None), OPTIONS).expect("bind");

    // Another process takes the path over while we run.
    fs::remove_file(&path).expect("remove ours");
    let theirs = std::os::unix::net::UnixListener::bind(&path).expect("bind theirs");
    let their_ino = fs::symlink_metadata(&path).expect("theirs").ino();

    drop(ours);
    assert_eq!(
        fs::symlink_metadata(&path).expect("theirs kept").ino(),
        their_ino
    );
    let _c = std::os::unix::net::UnixStream::connect(&path).expect("connect to theirs");
    theirs.accept().expect("theirs accepts");
}

#[tokio::test]
async fn missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir");
    let path = missing.join("app.sock");

    let err = Listener::bind(&unix(&path, None), OPTIONS).expect_err("no directory");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot listen on unix:{}: directory {} does not exist",
            path.display(),
            missing.display()
        )
    );
    assert!(!missing.exists(), "the directory must not be created");
}

#[tokio::test]
async fn path_at_the_socket_address_limit_binds() {
    // A final path of exactly 107 bytes leaves no room for the usual temporary name
    // (`.app.sock.<pid>.<random>.tmp` is longer than `s`): a shorter one must be used.
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().as_os_str().len();
    let filler = 107 - base - "/".len() * 2 - "s".len();
    let sub: PathBuf = dir.path().join("d".repeat(filler));
    fs::create_dir(&sub).expect("mkdir");
    let path = sub.join("s");
    assert_eq!(path.as_os_str().len(), 107);

    let listener = Listener::bind(&unix(&path, Some(0o600)), OPTIONS).expect("bind");
    assert_eq!(
        fs::metadata(&path).expect("file").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(file_names(&sub), ["s"]);
    assert_accepts_unix(&listener, &path).await;

    let too_long = sub.join("st");
    let err = Listener::bind(&unix(&too_long, None), OPTIONS).expect_err("108 bytes");
    assert!(
        matches!(err, ListenError::PathTooLong { len: 108, .. }),
        "{err}"
    );
}

// === errno ===

#[test]
fn describe_io_error_gives_meaning_and_name() {
    let e = |code| describe_io_error(&std::io::Error::from_raw_os_error(code));
    assert_eq!(
        e(nix::libc::ECONNREFUSED),
        "connection refused (ECONNREFUSED)"
    );
    assert_eq!(e(nix::libc::ENOENT), "no such file or directory (ENOENT)");
    assert_eq!(e(nix::libc::EACCES), "permission denied (EACCES)");
    assert_eq!(
        e(nix::libc::ENFILE),
        "too many open files in the system (ENFILE)"
    );
}

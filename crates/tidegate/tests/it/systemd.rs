//! systemd integration against the built binary (docs/operations.md, "systemd"):
//! `sd_notify` to a fake `NOTIFY_SOCKET` (a datagram socket the test reads), socket
//! activation through `systemd-socket-activate` (Debian package `systemd`: the tests
//! fail without it), `fd:N` addresses, and the errors of both address forms.
//!
//! `systemd-socket-activate` binds the addresses it is given, waits for the first
//! connection on any of them, then execs tidegate in its own process (so `LISTEN_PID`
//! is tidegate's pid); it passes only the environment it is told to (`-E`), so every
//! config here sets `[admin] listen` rather than rely on `XDG_RUNTIME_DIR`. A TCP
//! address for it must be fixed: the test picks a free port and retries if another
//! process takes it first.

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::Signal;
use tidegate_testkit::{get, Addr, Backend, Bind, Launch, Reply, Tidegate};
use tokio::net::UnixDatagram;
use tokio::time::Instant;

/// The binary under test.
fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tidegate"))
}

/// How long something that should take milliseconds may take: a functional bound.
const SOON: Duration = Duration::from_secs(5);

/// How many times a test picks another port when one it picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// Fails with an explanation when `systemd-socket-activate` is missing.
fn require_socket_activate() -> anyhow::Result<()> {
    ensure!(
        Path::new(ACTIVATE).exists(),
        "{ACTIVATE} is required by the socket activation tests: install the Debian \
         package `systemd` (apt-get install -y systemd); .ci/run does"
    );
    Ok(())
}

/// A short temporary directory (Unix socket paths are limited to 107 bytes).
fn short_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tgsd")
        .tempdir_in("/tmp")
        .expect("temporary directory")
}

/// A port nothing listens on right now (another process may take it before the test
/// binds it: callers retry).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

// === a fake NOTIFY_SOCKET ===

/// A datagram socket standing in for systemd's notification socket.
struct NotifySocket {
    socket: UnixDatagram,
    /// `NOTIFY_SOCKET`'s value for it.
    env: OsString,
    /// Every message received so far.
    seen: Vec<String>,
}

impl NotifySocket {
    fn at_path(path: &Path) -> NotifySocket {
        NotifySocket {
            socket: UnixDatagram::bind(path).expect("bind the notify socket"),
            env: path.as_os_str().to_owned(),
            seen: Vec::new(),
        }
    }

    fn abstract_named(name: &str) -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let std = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind abstract");
        std.set_nonblocking(true).expect("nonblocking");
        NotifySocket {
            socket: UnixDatagram::from_std(std).expect("tokio socket"),
            env: os(format!("@{name}")),
            seen: Vec::new(),
        }
    }

    /// Receives until a message has a line `line` (each message is one datagram of
    /// `KEY=VALUE` lines) and returns that message.
    async fn wait_for(&mut self, line: &str) -> anyhow::Result<String> {
        self.wait_until(|m| m.lines().any(|l| l == line), line)
            .await
    }

    async fn wait_until(
        &mut self,
        pred: impl Fn(&str) -> bool,
        what: &str,
    ) -> anyhow::Result<String> {
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return Ok(m.clone());
        }
        let deadline = Instant::now() + SOON;
        let mut buf = vec![0u8; 4096];
        // Bounded by the deadline.
        loop {
            let n = match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Ok(r) => r.context("receive a notification")?,
                Err(_) => bail!(
                    "no notification {what:?} within {SOON:?}; received {:?}",
                    self.seen
                ),
            };
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(message.clone());
            if pred(&message) {
                return Ok(message);
            }
        }
    }
}

/// A config answering `200 hi` on `listen`, its admin socket in the run directory.
fn respond_config(listen: &str) -> String {
    format!(
        r#"
[admin]
listen = "unix:admin.sock"

[listeners.web]
listen = [{listen}]

[[listeners.web.routes]]
respond = {{ status = 200, body = "hi\n" }}
"#
    )
}

// === sd_notify ===

#[tokio::test]
async fn notify_socket_gets_ready_once_listening_then_status_and_stopping_on_sigterm(
) -> anyhow::Result<()> {
    let dir = short_dir();
    let by_path = NotifySocket::at_path(&dir.path().join("notify.sock"));
    let by_name = NotifySocket::abstract_named(&format!("tidegate-test-{}", std::process::id()));
    for mut notify in [by_path, by_name] {
        let launch = Launch {
            env: vec![(os("NOTIFY_SOCKET"), notify.env.clone())],
            ..Launch::default()
        };
        let mut tg = Tidegate::spawn_with(bin(), &respond_config(r#""127.0.0.1:0""#), &launch)?;
        notify.wait_for("READY=1").await?;
        // READY=1 comes after every listener accepts: the address logged before it
        // answers now.
        tg.wait_ready().await?;
        let web = tg.addr("web")?;
        let resp = get(&web, "/", "example.com").await?;
        assert_eq!(resp.status, 200);
        let status = notify
            .wait_until(|m| m.starts_with("STATUS="), "STATUS=")
            .await?;
        assert_eq!(
            status,
            format!("STATUS=serving 1 listener on {}", web.to_config()),
            "via {:?}",
            notify.env
        );

        tg.signal(Signal::SIGTERM)?;
        notify.wait_for("STOPPING=1").await?;
        notify
            .wait_until(|m| m.starts_with("STATUS=draining"), "STATUS=draining…")
            .await?;
        notify.wait_for("STATUS=drained; stopping").await?;
        let exit = tg.wait_exit(SOON).await?;
        assert!(exit.success(), "{exit}");
        // STOPPING=1 came only after READY=1, and nothing was sent twice.
        let ready = notify.seen.iter().position(|m| m == "READY=1");
        let stopping = notify.seen.iter().position(|m| m == "STOPPING=1");
        assert!(ready < stopping, "{:?}", notify.seen);
        assert_eq!(
            notify.seen.iter().filter(|m| *m == "READY=1").count(),
            1,
            "{:?}",
            notify.seen
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_notify_socket_is_a_warning_not_a_failure() -> anyhow::Result<()> {
    let dir = short_dir();
    let launch = Launch {
        env: vec![(os("NOTIFY_SOCKET"), dir.path().join("nobody.sock").into())],
        ..Launch::default()
    };
    let mut tg = Tidegate::spawn_with(bin(), &respond_config(r#""127.0.0.1:0""#), &launch)?;
    tg.wait_ready().await?;
    let line = tg.wait_log("cannot notify systemd", SOON).await?;
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(get(&tg.addr("web")?, "/", "x").await?.status, 200);
    tg.signal(Signal::SIGTERM)?;
    assert!(tg.wait_exit(SOON).await?.success());
    let warnings = tg
        .logs()
        .iter()
        .filter(|l| l.contains("cannot notify systemd"))
        .count();
    assert_eq!(warnings, 1, "logged once:\n{}", tg.logs().join("\n"));
    Ok(())
}

// === socket activation ===

/// Starts `systemd-socket-activate` with `args` (its `-l`/`--fdname` options) in front
/// of tidegate on `config` in `dir`, with `tail` between the two (`env -u …`), and
/// waits until it listens. `None` when `port` was taken first (the caller picks
/// another).
async fn activate(
    dir: &Path,
    port: u16,
    args: &[String],
    tail: &[&str],
    config: &str,
) -> anyhow::Result<Option<Tidegate>> {
    require_socket_activate()?;
    let mut wrapper = vec![os(ACTIVATE)];
    wrapper.extend(args.iter().map(os));
    wrapper.push(os("-E"));
    wrapper.push(os("NO_COLOR=1"));
    wrapper.extend(tail.iter().map(os));
    let launch = Launch {
        wrapper,
        dir: Some(dir.to_path_buf()),
        ..Launch::default()
    };
    let mut tg = Tidegate::spawn_with(bin(), config, &launch)?;
    let listening = format!("Listening on 127.0.0.1:{port} as 3.");
    let deadline = Instant::now() + SOON;
    // Bounded by the deadline.
    loop {
        let logs = tg.logs();
        if logs.iter().any(|l| l.contains(&listening)) {
            return Ok(Some(tg));
        }
        if logs.iter().any(|l| l.contains("Address already in use")) {
            let _ = tg.wait_exit(SOON).await;
            return Ok(None);
        }
        if Instant::now() >= deadline {
            bail!(
                "systemd-socket-activate did not listen on 127.0.0.1:{port} within {SOON:?}; \
                 logs:\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`activate`] with a TCP address first (`-l 127.0.0.1:PORT`, descriptor 3), then
/// `more` options; retries with another port if one is taken.
async fn activate_with_port(
    dir: &Path,
    more: &[String],
    tail: &[&str],
    config: impl Fn(u16) -> String,
) -> anyhow::Result<(Tidegate, u16)> {
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port();
        let mut args = vec!["-l".to_owned(), format!("127.0.0.1:{port}")];
        args.extend(more.iter().cloned());
        if let Some(tg) = activate(dir, port, &args, tail, &config(port)).await? {
            return Ok((tg, port));
        }
    }
    bail!("every port picked was taken before systemd-socket-activate bound it ({PORT_ATTEMPTS} attempts)")
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[tokio::test]
async fn socket_activation_serves_every_socket_of_a_name_and_never_removes_their_files(
) -> anyhow::Result<()> {
    let dir = short_dir();
    let app = Backend::start(Bind::Tcp4, |_| Reply::text(200, "from the backend"))?;
    let web_sock = dir.path().join("web.sock");
    let admin_sock = dir.path().join("admin.sock");
    let numbered_sock = dir.path().join("numbered.sock");
    let spare_sock = dir.path().join("spare.sock");
    // Descriptors: 3 TCP web, 4 Unix web, 5 admin, 6 (taken as fd:6), 7 spare (unused).
    let more: Vec<String> = [
        "-l",
        &web_sock.to_string_lossy(),
        "-l",
        &admin_sock.to_string_lossy(),
        "-l",
        &numbered_sock.to_string_lossy(),
        "-l",
        &spare_sock.to_string_lossy(),
        "--fdname=web:web:admin:numbered:spare",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let config = format!(
        r#"
[admin]
listen = "systemd:admin"

[listeners.web]
listen = ["systemd:web"]

[[listeners.web.routes]]
upstream = "app"

[listeners.byfd]
listen = ["fd:6"]

[[listeners.byfd.routes]]
respond = {{ status = 200, body = "by number\n" }}

[upstreams.app]
servers = ["{}"]
"#,
        app.addr().to_config()
    );
    let (mut tg, port) = activate_with_port(dir.path(), &more, &[], |_| config.clone()).await?;
    // The first connection makes systemd-socket-activate exec tidegate, which then
    // accepts it from the passed socket.
    let tcp = Addr::Tcp(format!("127.0.0.1:{port}").parse()?);
    let resp = get(&tcp, "/a", "example.com").await?;
    assert_eq!(
        (resp.status, resp.text()),
        (200, "from the backend".to_owned())
    );
    tg.wait_ready().await?;
    let unix = Addr::Unix(web_sock.clone());
    let resp = get(&unix, "/b", "example.com").await?;
    assert_eq!(
        (resp.status, resp.text()),
        (200, "from the backend".to_owned())
    );
    let resp = get(&Addr::Unix(numbered_sock.clone()), "/", "x").await?;
    assert_eq!((resp.status, resp.text()), (200, "by number\n".to_owned()));
    assert_eq!(
        tg.addrs("web"),
        [tcp.clone(), unix.clone()],
        "one address, both sockets"
    );
    // The admin API answers on the socket systemd passed.
    let out = tokio::process::Command::new(bin())
        .args(["ctl", "--admin"])
        .arg(format!("unix:{}", admin_sock.display()))
        .args(["--json", "status"])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "ctl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(status["pid"], tg.pid());
    // The socket the config does not use is named and closed.
    let line = tg.wait_log("no address of the config uses", SOON).await?;
    assert!(line.contains("socket=systemd:spare"), "{line}");
    assert!(
        get(&Addr::Unix(spare_sock.clone()), "/", "x")
            .await
            .is_err(),
        "the unused socket is closed"
    );

    // A reload keeps every passed socket (both of `systemd:web`, and `fd:6`), and a
    // new route answers on them.
    std::fs::write(
        tg.config_path(),
        config.replace(
            "[listeners.byfd]",
            "[[listeners.web.routes]]\npath = \"/new\"\nrespond = { status = 200, body = \"new\\n\" }\n\n[listeners.byfd]",
        ),
    )?;
    let out = tokio::process::Command::new(bin())
        .args(["ctl", "--admin"])
        .arg(format!("unix:{}", admin_sock.display()))
        .arg("reload")
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "ctl reload: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for a in [&tcp, &unix] {
        let resp = get(a, "/new", "example.com").await?;
        assert_eq!((resp.status, resp.text()), (200, "new\n".to_owned()), "{a}");
    }
    let resp = get(&Addr::Unix(numbered_sock.clone()), "/", "x").await?;
    assert_eq!((resp.status, resp.text()), (200, "by number\n".to_owned()));

    tg.signal(Signal::SIGTERM)?;
    assert!(tg.wait_exit(SOON).await?.success());
    // tidegate created none of these files, so it removed none.
    for path in [&web_sock, &admin_sock, &numbered_sock, &spare_sock] {
        assert!(is_socket(path), "{} was removed", path.display());
    }
    assert_eq!(app.requests().len(), 2);
    Ok(())
}

#[tokio::test]
async fn fd_addresses_take_descriptors_passed_without_socket_activation() -> anyhow::Result<()> {
    let dir = short_dir();
    let unix_sock = dir.path().join("u.sock");
    let more = vec!["-l".to_owned(), unix_sock.to_string_lossy().into_owned()];
    // `env -u` execs tidegate in the same process with descriptors 3 and 4 still open
    // but no LISTEN_* variables: a parent that just leaves sockets open.
    let tail = [
        "env",
        "-u",
        "LISTEN_FDS",
        "-u",
        "LISTEN_PID",
        "-u",
        "LISTEN_FDNAMES",
    ];
    let (mut tg, port) = activate_with_port(dir.path(), &more, &tail, |_| {
        respond_config(r#""fd:3", "fd:4""#)
    })
    .await?;
    let tcp = Addr::Tcp(format!("127.0.0.1:{port}").parse()?);
    assert_eq!(get(&tcp, "/", "x").await?.status, 200);
    tg.wait_ready().await?;
    assert_eq!(
        get(&Addr::Unix(unix_sock.clone()), "/", "x").await?.status,
        200
    );
    tg.signal(Signal::SIGTERM)?;
    assert!(tg.wait_exit(SOON).await?.success());
    assert!(
        is_socket(&unix_sock),
        "the passed socket's file was removed"
    );
    Ok(())
}

// === errors ===

/// Runs `tidegate check` on a config whose only listener listens on `addr`.
async fn check_listen(addr: &str) -> anyhow::Result<(bool, String)> {
    let out = Tidegate::check(bin(), &respond_config(&format!("{addr:?}"))).await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn check_refuses_malformed_systemd_and_fd_addresses_with_their_place() -> anyhow::Result<()> {
    for (addr, message) in [
        (
            "systemd:",
            r#""systemd:": missing the socket's name, as the socket unit sets it with FileDescriptorName= (e.g. "systemd:web")"#,
        ),
        (
            "fd:2",
            r#""fd:2": descriptors 0, 1 and 2 are standard input, output and error; a passed socket is descriptor 3 or above"#,
        ),
        (
            "fd:x",
            r#""fd:x": expected a descriptor number after "fd:", as in "fd:3""#,
        ),
    ] {
        let (ok, stderr) = check_listen(addr).await?;
        assert!(!ok, "{addr} accepted");
        let expected = format!("tidegate.toml:6:11: listeners.web.listen[0]: {message}");
        assert!(
            stderr.lines().any(|l| l.ends_with(&expected)),
            "{addr}: expected a line ending with\n  {expected}\ngot:\n{stderr}"
        );
    }
    let (ok, _) = check_listen("systemd:web").await?;
    assert!(
        ok,
        "a well-formed systemd: address passes check (nothing binds)"
    );
    Ok(())
}

#[tokio::test]
async fn a_systemd_address_with_no_socket_of_its_name_refuses_to_start() -> anyhow::Result<()> {
    // Not socket-activated at all.
    let err = Tidegate::start(bin(), &respond_config(r#""systemd:web""#))
        .await
        .expect_err("started without a socket");
    let text = format!("{err:#}");
    assert!(
        text.contains(
            "cannot listen on systemd:web: systemd passed no socket named web (LISTEN_FDS is \
             not set: tidegate was not started by socket activation)"
        ),
        "{text}"
    );
    // Variables meant for another process are ignored, not taken for ours.
    let launch = Launch {
        env: vec![
            (os("LISTEN_PID"), os("1")),
            (os("LISTEN_FDS"), os("1")),
            (os("LISTEN_FDNAMES"), os("web")),
        ],
        ..Launch::default()
    };
    let mut tg = Tidegate::spawn_with(bin(), &respond_config(r#""systemd:web""#), &launch)?;
    let exit = tg.wait_exit(SOON).await?;
    assert!(!exit.success());
    let logs = tg.logs().join("\n");
    assert!(
        logs.contains("systemd passed no socket named web (LISTEN_PID is 1, not this process"),
        "{logs}"
    );
    // Socket-activated, under other names.
    let dir = short_dir();
    let sock = dir.path().join("a.sock");
    let more = vec![
        "-l".to_owned(),
        sock.to_string_lossy().into_owned(),
        "--fdname=first:second".to_owned(),
    ];
    let (mut tg, port) = activate_with_port(dir.path(), &more, &[], |_| {
        respond_config(r#""systemd:web""#)
    })
    .await?;
    // The connection that makes it exec tidegate, which then fails.
    let _ = get(&Addr::Tcp(format!("127.0.0.1:{port}").parse()?), "/", "x").await;
    let exit = tg.wait_exit(SOON).await?;
    assert!(!exit.success());
    let logs = tg.logs().join("\n");
    assert!(
        logs.contains(
            "cannot listen on systemd:web: systemd passed no socket named web \
             (LISTEN_FDNAMES has: first, second)"
        ),
        "{logs}"
    );
    assert!(is_socket(&sock));
    Ok(())
}

#[tokio::test]
async fn an_fd_address_that_is_not_a_listening_socket_refuses_to_start() -> anyhow::Result<()> {
    let err = Tidegate::start(bin(), &respond_config(r#""fd:900""#))
        .await
        .expect_err("started without descriptor 900");
    let text = format!("{err:#}");
    assert!(
        text.contains("cannot listen on fd:900: descriptor 900 is not open"),
        "{text}"
    );
    // A datagram socket passed as descriptor 3.
    require_socket_activate()?;
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port();
        let udp = format!("127.0.0.1:{port}");
        let wrapper = [
            ACTIVATE,
            "--datagram",
            "-l",
            &udp,
            "env",
            "-u",
            "LISTEN_FDS",
        ]
        .iter()
        .map(os)
        .collect();
        let dir = short_dir();
        let launch = Launch {
            wrapper,
            dir: Some(dir.path().to_path_buf()),
            ..Launch::default()
        };
        let mut tg = Tidegate::spawn_with(bin(), &respond_config(r#""fd:3""#), &launch)?;
        let listening = format!("Listening on {udp} as 3.");
        let ok = tg.wait_log(&listening, SOON).await.is_ok();
        if !ok {
            // Taken meanwhile: another port.
            continue;
        }
        // A datagram is the "communication attempt" that makes it exec tidegate.
        let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
        client.send_to(b"x", &udp)?;
        let exit = tg.wait_exit(SOON).await?;
        assert!(!exit.success());
        let logs = tg.logs().join("\n");
        assert!(
            logs.contains(
                "cannot listen on fd:3: descriptor 3 is not a listening socket: the socket is \
                 not a stream socket"
            ),
            "{logs}"
        );
        return Ok(());
    }
    bail!("every port picked was taken ({PORT_ATTEMPTS} attempts)")
}

// === what children inherit ===

#[tokio::test]
async fn on_demand_backends_inherit_neither_notify_socket_nor_listen_variables(
) -> anyhow::Result<()> {
    let app = tidegate_testkit::lazy_app::LazyApp::new()?;
    let dir = short_dir();
    let mut notify = NotifySocket::at_path(&dir.path().join("notify.sock"));
    let env_file = app.dir().join("child-env");
    // `sh -c` writes the backend's environment, then execs the lazy app.
    let inner = app.command(&[]);
    let inner = inner.trim_start_matches('[').trim_end_matches(']');
    let script = format!("env > {}; exec \"$@\"", env_file.display());
    let config = format!(
        r#"
[admin]
listen = "unix:admin.sock"

[listeners.web]
listen = ["127.0.0.1:0"]
[[listeners.web.routes]]
upstream = "app"

[upstreams.app]
servers = ["{}"]

[upstreams.app.on_demand]
command = ["sh", "-c", {script:?}, "sh", {inner}]
"#,
        app.server()
    );
    let launch = Launch {
        env: vec![
            (os("NOTIFY_SOCKET"), notify.env.clone()),
            // Meant for another process: ignored, and unset all the same.
            (os("LISTEN_PID"), os("1")),
            (os("LISTEN_FDS"), os("1")),
            (os("LISTEN_FDNAMES"), os("web")),
        ],
        ..Launch::default()
    };
    let mut tg = Tidegate::spawn_with(bin(), &config, &launch)?;
    notify.wait_for("READY=1").await?;
    tg.wait_ready().await?;
    let resp = get(&tg.addr("web")?, "/", "x").await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let env = std::fs::read_to_string(&env_file)
        .with_context(|| format!("read {}", env_file.display()))?;
    for var in [
        "NOTIFY_SOCKET=",
        "LISTEN_PID=",
        "LISTEN_FDS=",
        "LISTEN_FDNAMES=",
    ] {
        assert!(
            !env.lines().any(|l| l.starts_with(var)),
            "the backend inherited {var}:\n{env}"
        );
    }
    tg.signal(Signal::SIGTERM)?;
    assert!(tg.wait_exit(SOON).await?.success());
    Ok(())
}

/// A reload is announced: `RELOADING=1` with `MONOTONIC_USEC=`, then `READY=1` and a
/// `STATUS=` naming the new generation; a config with errors is refused before
/// anything is announced.
#[tokio::test]
async fn a_reload_sends_reloading_then_ready() -> anyhow::Result<()> {
    let dir = short_dir();
    let mut notify = NotifySocket::at_path(&dir.path().join("notify.sock"));
    let launch = Launch {
        env: vec![(os("NOTIFY_SOCKET"), notify.env.clone())],
        ..Launch::default()
    };
    let mut tg = Tidegate::spawn_with(bin(), &respond_config(r#""127.0.0.1:0""#), &launch)?;
    notify.wait_for("READY=1").await?;
    tg.wait_ready().await?;
    tg.signal(Signal::SIGHUP)?;
    let reloading = notify
        .wait_until(|m| m.starts_with("RELOADING=1\n"), "RELOADING=1")
        .await?;
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .context("MONOTONIC_USEC")?
        .parse()?;
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let now_usec = now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1000;
    assert!(
        usec <= now_usec && now_usec - usec < 60_000_000,
        "{usec} vs {now_usec}"
    );
    notify
        .wait_until(
            |m| m.starts_with("STATUS=") && m.contains("config generation 2"),
            "STATUS=… generation 2",
        )
        .await?;
    let ready = notify.seen.iter().filter(|m| *m == "READY=1").count();
    assert_eq!(ready, 2, "{:?}", notify.seen);
    // A broken file: refused, and no RELOADING=1 was sent for it.
    std::fs::write(tg.config_path(), "[listeners.web]\nlisten = 1\n")?;
    tg.signal(Signal::SIGHUP)?;
    tg.wait_log("reload refused", SOON).await?;
    tg.signal(Signal::SIGTERM)?;
    notify.wait_for("STOPPING=1").await?;
    let reloads = notify
        .seen
        .iter()
        .filter(|m| m.starts_with("RELOADING=1"))
        .count();
    assert_eq!(reloads, 1, "{:?}", notify.seen);
    let exit = tg.wait_exit(SOON).await?;
    assert!(exit.success());
    Ok(())
}

/// A binary upgrade under systemd: the old process (still the main one) sends
/// `MAINPID=` with the new pid once the new one is ready, and nothing after it (not its
/// drain's `STOPPING=1`); the new process, started with the same `NOTIFY_SOCKET`, is
/// the one heard from then on.
#[tokio::test]
async fn an_upgrade_sends_mainpid_and_the_new_process_is_heard_after_it() -> anyhow::Result<()> {
    let dir = short_dir();
    let mut notify = NotifySocket::at_path(&dir.path().join("notify.sock"));
    let launch = Launch {
        env: vec![(os("NOTIFY_SOCKET"), notify.env.clone())],
        ..Launch::default()
    };
    let mut tg = Tidegate::spawn_with(bin(), &respond_config(r#""127.0.0.1:0""#), &launch)?;
    notify.wait_for("READY=1").await?;
    tg.wait_ready().await?;
    let old = tg.pid();
    let out = tokio::process::Command::new(bin())
        .args(["ctl", "--admin"])
        .arg(format!("unix:{}", tg.dir().join("admin.sock").display()))
        .args(["--json", "upgrade"])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "ctl upgrade: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let new = v["new_pid"].as_u64().context("new_pid")? as u32;
    tg.follow(new);
    notify.wait_for(&format!("MAINPID={new}")).await?;
    // Then the new process, main now, says it is ready (and only then: not at its own
    // start, when systemd would have refused it).
    notify
        .wait_until(
            |m| m.starts_with(&format!("STATUS=serving; took over from process {old}")),
            "STATUS=serving; took over…",
        )
        .await?;
    let readies: Vec<usize> = notify
        .seen
        .iter()
        .enumerate()
        .filter(|(_, m)| *m == "READY=1")
        .map(|(i, _)| i)
        .collect();
    let mainpid_at = notify
        .seen
        .iter()
        .position(|m| *m == format!("MAINPID={new}"));
    assert_eq!(readies.len(), 2, "{:?}", notify.seen);
    assert!(Some(readies[1]) > mainpid_at, "{:?}", notify.seen);
    tg.wait_gone(old, SOON).await?;
    // The new process speaks on the same socket: its drain says STOPPING=1, the only
    // one (the old process sent none after MAINPID=).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(new as i32), Signal::SIGTERM)?;
    notify.wait_for("STOPPING=1").await?;
    tg.wait_gone(new, SOON).await?;
    let mainpid = notify
        .seen
        .iter()
        .position(|m| *m == format!("MAINPID={new}"));
    let stopping: Vec<usize> = notify
        .seen
        .iter()
        .enumerate()
        .filter(|(_, m)| *m == "STOPPING=1")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stopping.len(), 1, "{:?}", notify.seen);
    assert!(mainpid < Some(stopping[0]), "{:?}", notify.seen);
    Ok(())
}

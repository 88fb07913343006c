//! Leaf value parsers: durations, sizes, addresses, route hosts, table names.
//!
//! Each takes the string as written in the file and returns the typed value or an
//! [`InvalidValue`] whose text is the whole message an operator reads after the key path
//! (`expected a duration like "250ms", "10s" or "5m", found "10 seconds"`). They know
//! nothing of spans; the validator positions their errors. The binary uses them too, for
//! command-line overrides such as `run --listen ADDR`.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::addr::{
    ListenAddr, UnixListen, UpstreamAddr, FIRST_PASSED_FD, MAX_SYSTEMD_NAME, MAX_UNIX_PATH,
};
use crate::defaults::MAX_DURATION;
use crate::model::HostMatch;

/// A value that does not parse; the text says what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

type Result<T> = std::result::Result<T, InvalidValue>;

fn invalid<T>(message: String) -> Result<T> {
    Err(InvalidValue(message))
}

/// What a duration looks like, for messages.
pub(crate) const DURATION_FORMS: &str = r#"a duration like "250ms", "10s" or "5m""#;
/// What a size looks like, for messages.
pub(crate) const SIZE_FORMS: &str = r#"a size like "64KiB", "1MiB" or 65536 (bytes)"#;

/// A duration: a whole number and a unit, `ms`, `s`, `m` or `h` (`"250ms"`, `"10s"`,
/// `"5m"`). Zero parses (callers decide whether it is allowed); more than
/// [`MAX_DURATION`] does not.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tidegate_config::parse::duration("250ms").unwrap(), Duration::from_millis(250));
/// assert_eq!(tidegate_config::parse::duration("5m").unwrap(), Duration::from_secs(300));
/// assert!(tidegate_config::parse::duration("10 seconds").is_err());
/// ```
pub fn duration(s: &str) -> Result<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 0,
    };
    if digits.is_empty() || millis_per_unit == 0 {
        let hint = if s.contains('.') {
            r#" (whole numbers only: write "1500ms", not "1.5s")"#
        } else {
            ""
        };
        return invalid(format!("expected {DURATION_FORMS}, found {s:?}{hint}"));
    }
    let millis = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis);
    match millis {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => invalid(format!(
            "{s:?} is too long; the longest duration accepted is {}",
            format_duration(MAX_DURATION)
        )),
    }
}

/// Writes a duration the way the config file does, in the largest unit that divides
/// it: `250ms`, `10s`, `5m`, `1h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// A size in bytes written as a string: `"65536"`, `"512B"`, `"64KiB"`, `"1MiB"`. (In
/// the file a bare integer is also a size in bytes; the validator handles that.)
///
/// ```
/// assert_eq!(tidegate_config::parse::size("64KiB").unwrap(), 65536);
/// assert!(tidegate_config::parse::size("64KB").is_err());
/// ```
pub fn size(s: &str) -> Result<usize> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let factor: usize = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        _ => 0,
    };
    if digits.is_empty() || factor == 0 {
        let hint = if digits.is_empty() {
            ""
        } else {
            " (units are B, KiB and MiB)"
        };
        return invalid(format!("expected {SIZE_FORMS}, found {s:?}{hint}"));
    }
    match digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
    {
        Some(n) => Ok(n),
        None => invalid(format!("{s:?} is too large")),
    }
}

/// Writes a size the way the config file does: `"64KiB"`, `"1MiB"`, `"1000B"`.
pub fn format_size(n: usize) -> String {
    if n > 0 && n % (1 << 20) == 0 {
        format!("{}MiB", n >> 20)
    } else if n > 0 && n % (1 << 10) == 0 {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

/// A listener address (docs/design.md, "Address syntax"): an IP address and port (`127.0.0.1:8080`,
/// `[::1]:8080`, `0.0.0.0:80`; port 0 = any free port),
/// `unix:PATH[:mode=660][:owner=NAME|UID][:group=NAME|GID]`, `systemd:NAME` (the
/// sockets systemd passed with `FileDescriptorName=NAME`) or `fd:N` (descriptor N ≥ 3,
/// left open by whatever started tidegate). A relative `PATH` is resolved against `base`
/// (the config file's folder); owner and group names are looked up now, so an unknown
/// user is a load error.
///
/// ```
/// use tidegate_config::{parse::listen_addr, ListenAddr};
/// let base = std::path::Path::new("/etc/tidegate");
/// assert_eq!(listen_addr("systemd:web", base).unwrap(), ListenAddr::Systemd("web".into()));
/// assert_eq!(listen_addr("fd:3", base).unwrap(), ListenAddr::Fd(3));
/// assert!(listen_addr("fd:2", base).is_err());
/// ```
pub fn listen_addr(s: &str, base: &Path) -> Result<ListenAddr> {
    if let Some(rest) = s.strip_prefix("unix:") {
        return unix_listen(s, rest, base).map(ListenAddr::Unix);
    }
    if let Some(name) = s.strip_prefix("systemd:") {
        return systemd_name(s, name).map(ListenAddr::Systemd);
    }
    if let Some(n) = s.strip_prefix("fd:") {
        return passed_fd(s, n).map(ListenAddr::Fd);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(ListenAddr::Tcp(addr));
    }
    // nginx's `listen 80;` and `listen *:80;`.
    if let Ok(port) = s.strip_prefix("*:").unwrap_or(s).parse::<u16>() {
        return invalid(format!(
            "{s:?}: write the IP address too: \"0.0.0.0:{port}\" and \"[::]:{port}\" for \
             every address, \"127.0.0.1:{port}\" for this machine only"
        ));
    }
    let (host, port) = split_host_port(s)?;
    let port = parse_port(s, port)?;
    if host_name(host).is_ok() {
        return invalid(format!(
            "{s:?}: a listener needs an IP address, not a host name \
             (write \"127.0.0.1:{port}\", \"[::1]:{port}\" or \"0.0.0.0:{port}\")"
        ));
    }
    invalid(expected_address(s))
}

/// An upstream server address: an IP address and port, a host name and port
/// (`localhost:6080`: resolved to every address at connect time, all tried), or
/// `unix:PATH` (no options: the upstream creates its socket). A relative `PATH` is
/// resolved against `base`. Port 0 is refused.
pub fn upstream_addr(s: &str, base: &Path) -> Result<UpstreamAddr> {
    if let Some(rest) = s.strip_prefix("unix:") {
        if rest.contains(':') {
            return invalid(format!(
                "{s:?}: an upstream socket takes no options (mode, owner and group are \
                 for listeners; the upstream creates its own socket)"
            ));
        }
        return unix_path(s, rest, base).map(UpstreamAddr::Unix);
    }
    let addr = match s.parse::<SocketAddr>() {
        Ok(addr) => UpstreamAddr::Ip(addr),
        Err(_) => {
            let (host, port) = split_host_port(s)?;
            let port = parse_port(s, port)?;
            match host_name(host) {
                Ok(host) => UpstreamAddr::Host { host, port },
                Err(why) => return invalid(format!("{s:?}: {why}")),
            }
        }
    };
    let port = match &addr {
        UpstreamAddr::Ip(a) => a.port(),
        UpstreamAddr::Host { port, .. } => *port,
        UpstreamAddr::Unix(_) => 1,
    };
    if port == 0 {
        return invalid(format!(
            "{s:?}: port 0 means \"any free port\" and is for listeners only; an upstream \
             needs the port its server listens on"
        ));
    }
    Ok(addr)
}

/// A route's `host`: exact (`ci.example.com`) or a suffix (`*.example.com`), lowercased.
pub fn host_match(s: &str) -> Result<HostMatch> {
    if s == "*" {
        return invalid(
            "\"*\" alone is not a host pattern; leave `host` out to match every host".to_owned(),
        );
    }
    if let Some(suffix) = s.strip_prefix("*.") {
        return match host_name(suffix) {
            Ok(h) => Ok(HostMatch::Suffix(format!(".{h}"))),
            Err(why) => invalid(format!("{s:?}: {why}")),
        };
    }
    if s.contains('*') {
        return invalid(format!(
            "{s:?}: a wildcard is only allowed as the first label, as in \"*.example.com\""
        ));
    }
    if let Some((h, p)) = s.rsplit_once(':') {
        if host_name(h).is_ok() && p.parse::<u16>().is_ok() {
            return invalid(format!(
                "{s:?}: routing ignores the port; write the host alone ({h:?})"
            ));
        }
    }
    match host_name(s) {
        Ok(h) => Ok(HostMatch::Exact(h)),
        Err(why) => invalid(format!("{s:?}: {why}")),
    }
}

/// A route's `path` prefix: starts with `/`; no spaces, control characters, `?` or `#`
/// (a prefix matches the path only, never the query).
pub fn route_path(s: &str) -> Result<String> {
    if !s.starts_with('/') {
        return invalid(format!("a path prefix starts with \"/\", found {s:?}"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '?' || *c == '#')
    {
        return invalid(format!(
            "{c:?} is not allowed in a path prefix (it matches the path, not the query), \
             found {s:?}"
        ));
    }
    if let Some(why) = not_normalized(s) {
        return invalid(format!(
            "a path prefix is matched against the normalized request path, so it must be \
             normalized itself: {why}, found {s:?}"
        ));
    }
    Ok(s.to_owned())
}

/// What keeps a route path from being in the form request paths are normalized to
/// (repeated slashes merged, `.` and `..` resolved, escapes of unreserved characters
/// decoded, other escapes in upper case; `%2F` and `%00` refused).
fn not_normalized(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut segments = s.split('/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        match seg {
            "." | ".." => return Some(format!("no {seg:?} segment")),
            "" if segments.peek().is_some() => {
                return Some("no repeated \"/\"".to_owned());
            }
            _ => {}
        }
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).copied().filter(u8::is_ascii_hexdigit);
            let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                return Some("\"%\" starts an escape of two hex digits".to_owned());
            };
            let esc = &s[i..i + 3];
            let v = u8::from_str_radix(&esc[1..], 16).unwrap_or_default();
            if v == 0 || v == b'/' {
                return Some(format!(
                    "{esc} is refused in request paths, so no route can match it"
                ));
            }
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                return Some(format!("write {esc} as {:?}", char::from(v)));
            }
            if hi.is_ascii_lowercase() || lo.is_ascii_lowercase() {
                return Some(format!("write {esc} in upper case"));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    None
}

/// One `upgrades` element of a route: a protocol name (an RFC 9110 token, optionally
/// `/version`), lowercase; never `h2c` (tidegate does not tunnel HTTP/2).
///
/// ```
/// assert_eq!(tidegate_config::parse::upgrade_token("WebSocket").unwrap(), "websocket");
/// assert!(tidegate_config::parse::upgrade_token("h2c").is_err());
/// assert!(tidegate_config::parse::upgrade_token("a b").is_err());
/// ```
pub fn upgrade_token(s: &str) -> Result<String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let mut parts = s.splitn(2, '/');
    let name = parts.next().unwrap_or_default();
    let version = parts.next();
    if name.is_empty()
        || !name.chars().all(tchar)
        || version.is_some_and(|v| v.is_empty() || !v.chars().all(tchar))
    {
        return invalid(format!(
            "expected a protocol name as `Upgrade` writes it (like \"websocket\"), found {s:?}"
        ));
    }
    if name.eq_ignore_ascii_case("h2c") {
        return invalid(
            "h2c is never tunnelled: an `Upgrade: h2c` request is forwarded as a plain \
             HTTP/1.1 request"
                .to_owned(),
        );
    }
    Ok(s.to_ascii_lowercase())
}

/// A health check's `path`: the request target of `GET path` (a path, and a query if
/// wanted: `"/health"`, `"/status?full=1"`). It starts with `/`; every character is
/// visible ASCII other than `"`, `#`, `<`, `>` and `` ` `` (percent-encode anything
/// else), so the request line is valid as written.
///
/// ```
/// assert_eq!(tidegate_config::parse::health_path("/status?full=1").unwrap(), "/status?full=1");
/// assert!(tidegate_config::parse::health_path("health").is_err());
/// assert!(tidegate_config::parse::health_path("/a b").is_err());
/// ```
pub fn health_path(s: &str) -> Result<String> {
    if !s.starts_with('/') {
        return invalid(format!(
            "expected a path starting with \"/\" (like \"/health\"), found {s:?}"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '#' | '<' | '>' | '`'))
    {
        return invalid(format!(
            "{c:?} is not allowed in a request path (percent-encode it), found {s:?}"
        ));
    }
    Ok(s.to_owned())
}

/// Whether `s` is a valid listener or upstream name: `[A-Za-z0-9_-]+`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

// === helpers ===

fn expected_address(s: &str) -> String {
    format!(
        r#"expected an address like "127.0.0.1:8080", "[::1]:8080" or "unix:/run/app.sock", found {s:?}"#
    )
}

/// Splits `host:port` / `[v6]:port` for diagnostics and host names.
fn split_host_port(s: &str) -> Result<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return invalid(expected_address(s));
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return invalid(format!("{s:?}: {host:?} is not an IPv6 address"));
        }
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, port)),
            None => invalid(format!("{s:?}: missing the port (e.g. \"[{host}]:8080\")")),
        };
    }
    match s.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => invalid(format!(
            "{s:?}: an IPv6 address goes in brackets, as in \"[::1]:8080\""
        )),
        Some((host, port)) if !host.is_empty() => Ok((host, port)),
        None if !s.is_empty() && (s.parse::<IpAddr>().is_ok() || host_name(s).is_ok()) => {
            invalid(format!("{s:?}: missing the port (e.g. \"{s}:8080\")"))
        }
        _ => invalid(expected_address(s)),
    }
}

fn parse_port(s: &str, port: &str) -> Result<u16> {
    if port.is_empty() {
        return invalid(format!("{s:?}: missing the port after \":\""));
    }
    match port.parse::<u16>() {
        Ok(p) => Ok(p),
        Err(_) => invalid(format!(
            "{s:?}: the port must be a number from 0 to 65535, found {port:?}"
        )),
    }
}

/// A DNS-style host name, lowercased: labels of letters, digits, `-` and `_`.
fn host_name(s: &str) -> std::result::Result<String, String> {
    const RULE: &str = "a host name has labels of letters, digits, \"-\" and \"_\" \
                        separated by dots";
    if s.is_empty() {
        return Err("the host name is empty".to_owned());
    }
    if s.len() > 253 {
        return Err("a host name is at most 253 characters long".to_owned());
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err(format!("empty label in the host name; {RULE}"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("{c:?} is not allowed in a host name; {RULE}"));
        }
    }
    // A top-level label is never all digits: this is a mistyped IP address
    // (`300.1.1.1`), which would otherwise fail only at connect time.
    if s.rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("not a valid IP address".to_owned());
    }
    Ok(s.to_ascii_lowercase())
}

/// The path part of a `unix:` address, made absolute and checked for length.
fn unix_path(s: &str, path: &str, base: &Path) -> Result<PathBuf> {
    if path.is_empty() {
        return invalid(format!(
            "{s:?}: missing the socket path (e.g. \"unix:/run/app.sock\")"
        ));
    }
    let joined = base.join(path);
    let abs = match std::path::absolute(&joined) {
        Ok(p) => p,
        Err(e) => {
            return invalid(format!(
                "{s:?}: cannot make {} absolute: {e}",
                joined.display()
            ))
        }
    };
    let len = abs.as_os_str().len();
    if len > MAX_UNIX_PATH {
        return invalid(format!(
            "{s:?}: the socket path {} is {len} bytes long; a Unix socket address holds \
             at most {MAX_UNIX_PATH}",
            abs.display()
        ));
    }
    Ok(abs)
}

fn unix_listen(s: &str, rest: &str, base: &Path) -> Result<UnixListen> {
    let mut parts = rest.split(':');
    let path = unix_path(s, parts.next().unwrap_or(""), base)?;
    let mut listen = UnixListen {
        path,
        mode: None,
        owner: None,
        group: None,
    };
    for part in parts {
        let Some((name, value)) = part.split_once('=') else {
            return invalid(format!(
                "{s:?}: after the path, expected options like \":mode=660\", found \
                 \":{part}\" (a socket path cannot contain \":\")"
            ));
        };
        let (slot, parsed) = match name {
            "mode" => (&mut listen.mode, mode(s, value)?),
            "owner" => (&mut listen.owner, user(s, value)?),
            "group" => (&mut listen.group, group(s, value)?),
            _ => {
                return invalid(format!(
                    "{s:?}: unknown option {name:?}; the options are mode, owner and group"
                ))
            }
        };
        if slot.replace(parsed).is_some() {
            return invalid(format!("{s:?}: {name} is given twice"));
        }
    }
    Ok(listen)
}

/// The `NAME` of `systemd:NAME`, as systemd allows it in `FileDescriptorName=`: printable
/// ASCII without `:` (the separator of `LISTEN_FDNAMES`), at most [`MAX_SYSTEMD_NAME`]
/// characters.
fn systemd_name(s: &str, name: &str) -> Result<String> {
    if name.is_empty() {
        return invalid(format!(
            "{s:?}: missing the socket's name, as the socket unit sets it with \
             FileDescriptorName= (e.g. \"systemd:web\")"
        ));
    }
    if name.contains(':') {
        return invalid(format!(
            "{s:?}: a socket name cannot contain \":\" (systemd separates names with it); \
             a passed socket takes no options: its mode and owner are set in the socket \
             unit (SocketMode=, SocketUser=, SocketGroup=)"
        ));
    }
    if let Some(c) = name.chars().find(|c| !(' '..='~').contains(c)) {
        return invalid(format!(
            "{s:?}: {c:?} is not allowed in a socket name (systemd allows printable ASCII \
             other than \":\")"
        ));
    }
    if name.len() > MAX_SYSTEMD_NAME {
        return invalid(format!(
            "{s:?}: the socket name is {} characters long; systemd allows at most \
             {MAX_SYSTEMD_NAME}",
            name.len()
        ));
    }
    Ok(name.to_owned())
}

/// The `N` of `fd:N`: a descriptor number of at least [`FIRST_PASSED_FD`].
fn passed_fd(s: &str, n: &str) -> Result<RawFd> {
    let parsed = match n.parse::<RawFd>() {
        Ok(fd) if n.bytes().all(|b| b.is_ascii_digit()) => fd,
        _ => {
            return invalid(format!(
                "{s:?}: expected a descriptor number after \"fd:\", as in \"fd:3\""
            ))
        }
    };
    if parsed < FIRST_PASSED_FD {
        return invalid(format!(
            "{s:?}: descriptors 0, 1 and 2 are standard input, output and error; a passed \
             socket is descriptor {FIRST_PASSED_FD} or above"
        ));
    }
    Ok(parsed)
}

fn mode(s: &str, value: &str) -> Result<u32> {
    match u32::from_str_radix(value, 8) {
        Ok(m) if !value.is_empty() && value.len() <= 4 && !value.starts_with('+') => Ok(m),
        _ => invalid(format!(
            "{s:?}: mode is an octal file mode like 660 or 0600, found {value:?}"
        )),
    }
}

fn user(s: &str, value: &str) -> Result<u32> {
    if let Ok(uid) = value.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(value) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => invalid(format!("{s:?}: no user named {value:?} on this machine")),
        Err(e) => invalid(format!("{s:?}: looking up user {value:?}: {}", e.desc())),
    }
}

fn group(s: &str, value: &str) -> Result<u32> {
    if let Ok(gid) = value.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(value) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => invalid(format!("{s:?}: no group named {value:?} on this machine")),
        Err(e) => invalid(format!("{s:?}: looking up group {value:?}: {}", e.desc())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_through_their_written_form() {
        for s in ["250ms", "10s", "5m", "1h", "0s", "1500ms", "90s"] {
            let d = duration(s).unwrap();
            assert_eq!(duration(&format_duration(d)).unwrap(), d, "{s}");
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert!(duration("1.5s").unwrap_err().0.contains("1500ms"));
        assert!(duration("s").is_err());
        assert!(duration("99999999999999999999h").is_err());
    }

    #[test]
    fn sizes_accept_bytes_kib_and_mib() {
        assert_eq!(size("65536").unwrap(), 65536);
        assert_eq!(size("8KiB").unwrap(), 8192);
        assert_eq!(size("1MiB").unwrap(), 1 << 20);
        assert_eq!(format_size(65536), "64KiB");
        assert!(size("64KB").unwrap_err().0.contains("units are"));
        assert!(size("").is_err());
    }

    #[test]
    fn listener_addresses_need_an_ip() {
        let base = Path::new("/etc/tidegate");
        assert!(matches!(
            listen_addr("[::1]:0", base),
            Ok(ListenAddr::Tcp(a)) if a.port() == 0
        ));
        let e = listen_addr("localhost:6080", base).unwrap_err().0;
        assert!(e.contains("needs an IP address"), "{e}");
        let e = listen_addr("::1:80", base).unwrap_err().0;
        assert!(e.contains("brackets"), "{e}");
        let e = listen_addr("127.0.0.1", base).unwrap_err().0;
        assert!(e.contains("missing the port"), "{e}");
        for nginx_style in ["80", "*:80"] {
            let e = listen_addr(nginx_style, base).unwrap_err().0;
            assert!(e.contains("\"0.0.0.0:80\""), "{e}");
        }
    }

    #[test]
    fn unix_listener_options() {
        let base = Path::new("/etc/tidegate");
        let Ok(ListenAddr::Unix(u)) = listen_addr("unix:web.sock:mode=0660:owner=0:group=0", base)
        else {
            panic!("not a unix listener")
        };
        assert_eq!(u.path, Path::new("/etc/tidegate/web.sock"));
        assert_eq!((u.mode, u.owner, u.group), (Some(0o660), Some(0), Some(0)));
        assert!(listen_addr("unix:/a.sock:mode=99", base).is_err());
        assert!(listen_addr("unix:/a.sock:mode=660:mode=600", base).is_err());
        assert!(listen_addr("unix:/a.sock:color=red", base).is_err());
        assert!(listen_addr("unix:", base).is_err());
    }

    #[test]
    fn passed_in_listener_addresses() {
        let base = Path::new("/etc/tidegate");
        assert_eq!(
            listen_addr("systemd:web-1.socket", base).unwrap(),
            ListenAddr::Systemd("web-1.socket".into())
        );
        assert_eq!(listen_addr("fd:12", base).unwrap(), ListenAddr::Fd(12));
        for (bad, says) in [
            ("systemd:", "missing the socket's name"),
            ("systemd:web:mode=600", "cannot contain \":\""),
            ("systemd:w\u{e9}b", "not allowed in a socket name"),
            ("fd:2", "standard input, output and error"),
            ("fd:0", "standard input, output and error"),
            ("fd:x", "expected a descriptor number"),
            ("fd:", "expected a descriptor number"),
            ("fd:+3", "expected a descriptor number"),
            ("fd:99999999999", "expected a descriptor number"),
        ] {
            let e = listen_addr(bad, base).unwrap_err().0;
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("systemd:{}", "a".repeat(MAX_SYSTEMD_NAME + 1));
        assert!(listen_addr(&long, base)
            .unwrap_err()
            .0
            .contains("at most 255"));
    }

    #[test]
    fn upstream_addresses() {
        let base = Path::new("/srv");
        assert_eq!(
            upstream_addr("LocalHost:6080", base).unwrap(),
            UpstreamAddr::Host {
                host: "localhost".into(),
                port: 6080
            }
        );
        assert!(upstream_addr("127.0.0.1:0", base).is_err());
        assert!(upstream_addr("300.1.1.1:80", base).is_err());
        assert!(upstream_addr("unix:/a.sock:mode=660", base).is_err());
        assert_eq!(
            upstream_addr("unix:app.sock", base).unwrap(),
            UpstreamAddr::Unix("/srv/app.sock".into())
        );
    }

    #[test]
    fn health_paths_are_valid_request_targets() {
        assert_eq!(health_path("/").unwrap(), "/");
        assert_eq!(health_path("/a/{b}?c=1&d=%20").unwrap(), "/a/{b}?c=1&d=%20");
        for bad in [
            "",
            "health",
            "/a b",
            "/a#b",
            "/caf\u{e9}",
            "/a\tb",
            "/<x>",
            "/a\"b",
        ] {
            assert!(health_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn route_hosts() {
        assert_eq!(
            host_match("*.Example.com").unwrap(),
            HostMatch::Suffix(".example.com".into())
        );
        assert_eq!(
            host_match("CI.example.com").unwrap(),
            HostMatch::Exact("ci.example.com".into())
        );
        assert!(host_match("*").is_err());
        assert!(host_match("a.*.com").is_err());
        assert!(host_match("example.com:8080").is_err());
        assert!(host_match("exa mple.com").is_err());
    }
}

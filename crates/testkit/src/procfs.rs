//! Observations of a process through Linux `/proc`: its CLOSE_WAIT sockets, its memory,
//! whether it is gone.

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{bail, Context as _};

/// TCP state number of CLOSE_WAIT in `/proc/net/tcp` (`include/net/tcp_states.h`).
const TCP_CLOSE_WAIT: &str = "08";

/// The TCP sockets `pid` holds that are in CLOSE_WAIT (the peer closed, the process has
/// not), each described as `"local -> remote"` (e.g. `127.0.0.1:8080 -> 127.0.0.1:51000`).
///
/// Reads the socket inodes of `/proc/PID/fd/*` and looks them up in the process's own
/// network namespace (`/proc/PID/net/tcp` and `tcp6`). Unix sockets have no such state.
pub fn close_wait_sockets(pid: u32) -> anyhow::Result<Vec<String>> {
    let inodes = socket_inodes(pid)?;
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if table == "tcp6" && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("read {path}")),
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != TCP_CLOSE_WAIT || !inodes.contains(f[9]) {
                continue;
            }
            let local = parse_proc_addr(f[1]).with_context(|| format!("{path}: {line:?}"))?;
            let remote = parse_proc_addr(f[2]).with_context(|| format!("{path}: {line:?}"))?;
            found.push(format!("{local} -> {remote}"));
        }
    }
    Ok(found)
}

/// The inode numbers of the sockets among `pid`'s open files.
fn socket_inodes(pid: u32) -> anyhow::Result<HashSet<String>> {
    let dir = format!("/proc/{pid}/fd");
    let mut inodes = HashSet::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("list {dir}"))? {
        let Ok(entry) = entry else { continue };
        // An fd closed since the listing has no link any more: skip it.
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    Ok(inodes)
}

/// Decodes `0100007F:1F90` (IPv4) or a 32-hex-digit IPv6 address with a port. The
/// kernel prints each 32-bit word of the address as a host-order number.
fn parse_proc_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let (ip, port) = s.split_once(':').context("no ':' in address")?;
    let port = u16::from_str_radix(port, 16).context("bad port")?;
    let word = |i: usize| -> anyhow::Result<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8).context("short address")?;
        Ok(u32::from_str_radix(hex, 16)
            .context("bad address word")?
            .to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // Show IPv4-mapped peers of a dual-stack socket as IPv4.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        n => bail!("address of {n} hex digits"),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Peak resident set size (`VmHWM`) of `pid`, in KiB.
pub fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Current resident set size (`VmRSS`) of `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let line = text
        .lines()
        .find(|l| l.split(':').next() == Some(key))
        .with_context(|| format!("{path}: no {key} line (a zombie has none)"))?;
    let value = line[key.len() + 1..].trim();
    let number = value.strip_suffix("kB").unwrap_or(value).trim();
    number
        .parse()
        .with_context(|| format!("{path}: {key} value {value:?}"))
}

/// Whether `pid` is gone: no `/proc` entry, or a zombie (state `Z` or `X`) — zombies
/// count as gone because PID 1 does not reap orphans in the sandbox.
pub fn process_gone(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // `pid (comm) S ...`; comm may hold spaces and parentheses, so use the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    matches!(state, Some("Z") | Some("X") | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_decode() -> anyhow::Result<()> {
        assert_eq!(
            parse_proc_addr("0100007F:1F90")?,
            "127.0.0.1:8080".parse::<SocketAddr>()?
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0050")?,
            "[::1]:80".parse::<SocketAddr>()?
        );
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000100007F:0050")?,
            "127.0.0.1:80".parse::<SocketAddr>()?
        );
        Ok(())
    }

    #[test]
    fn this_process_is_not_gone_and_has_memory() -> anyhow::Result<()> {
        let pid = std::process::id();
        assert!(!process_gone(pid));
        let rss = vm_rss_kib(pid)?;
        // The peak is read after, and never drops.
        let hwm = vm_hwm_kib(pid)?;
        assert!(rss > 0 && hwm >= rss, "rss {rss} KiB, hwm {hwm} KiB");
        Ok(())
    }
}

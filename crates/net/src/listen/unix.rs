//! Unix listening sockets (docs/design.md, "Unix sockets are not TCP" and "Library facts").
//!
//! Invariants, and how they are kept:
//! - **Never reachable with looser permissions than configured.** The socket is bound
//!   under a temporary name in the same directory, chowned and chmodded there, and only
//!   then put in the listening state and renamed over the final path. Two layers: until
//!   `listen` a connect gets ECONNREFUSED whatever the mode, and the final path only
//!   ever names a socket that already has its final mode and owner.
//! - **A file that is not ours is never removed.** An existing path is looked at with
//!   `lstat` (a symbolic link is refused, not followed); only a socket that refuses
//!   connections is stale and removed. The rename uses `RENAME_NOREPLACE`, so a socket
//!   another process bound after our check is not silently replaced.
//! - **On exit, remove the file only if it is still ours**: same device and inode as the
//!   one we created ([`SocketFile`]). An operator or a second instance may have replaced
//!   it.
//!
//! Every path operation here is on a name in a directory (lstat, fchownat and fchmodat
//! with `AT_SYMLINK_NOFOLLOW`, rename, unlink), none follows a link at the last
//! component. A directory writable by an untrusted user is still unsafe (as for nginx):
//! such a user can race any of these steps.

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, AT_FDCWD};
use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};
use nix::unistd::{fchownat, Gid, Uid};
use socket2::{Domain, SockAddr, Socket, Type};
use tidegate_config::addr::MAX_UNIX_PATH;
use tidegate_config::{ListenAddr, UnixListen};

use super::{ListenError, BACKLOG};

/// Temporary names tried before giving up: a clash (a leftover, or a squatter) makes
/// `bind` fail with EADDRINUSE and another random name is tried.
const TEMP_NAME_ATTEMPTS: usize = 8;

/// Times the final path is re-checked when something appears there between our check
/// and our rename. Each round needs another process to create a file at the path.
const RENAME_ATTEMPTS: usize = 3;

/// Binds the Unix listener described by `cfg`. See the module docs for the steps.
pub(super) fn bind(
    addr: &ListenAddr,
    cfg: &UnixListen,
) -> Result<(StdUnixListener, SocketFile), ListenError> {
    let path = cfg.path.as_path();
    let len = path.as_os_str().len();
    if len > MAX_UNIX_PATH {
        return Err(ListenError::PathTooLong {
            addr: addr.clone(),
            len,
        });
    }
    let Some(name) = path.file_name() else {
        let error = io::Error::new(io::ErrorKind::InvalidInput, "the path names no file");
        return Err(ListenError::os(addr, None, error));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };

    check_dir(addr, dir)?;
    clear_existing(addr, path)?;

    let temp = TempSocket::bind(addr, dir, name, path)?;
    temp.set_owner(addr, cfg.owner, cfg.group)?;
    temp.set_mode(addr, cfg.mode)?;
    // Only now may anyone connect: the file has its final owner and mode.
    temp.socket
        .listen(BACKLOG)
        .map_err(|e| ListenError::os(addr, None, e))?;
    temp.socket
        .set_nonblocking(true)
        .map_err(|e| ListenError::os(addr, None, e))?;
    rename_into_place(addr, &temp.name.path, path)?;

    tracing::debug!(
        path = %path.display(),
        temp = %temp.name.path.display(),
        "socket file in place"
    );
    // rename keeps the inode: the temporary file's identity is the final file's.
    let (socket, id) = temp.placed();
    Ok((
        socket.into(),
        SocketFile {
            path: path.to_owned(),
            id,
            disowned: AtomicBool::new(false),
        },
    ))
}

/// The directory must exist already; we do not create it (see
/// [`ListenError::NoDirectory`]).
fn check_dir(addr: &ListenAddr, dir: &Path) -> Result<(), ListenError> {
    // `metadata` follows links on purpose: `/var/run -> /run` is normal.
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ListenError::os(
            addr,
            Some(dir.display().to_string()),
            Errno::ENOTDIR.into(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ListenError::NoDirectory {
            addr: addr.clone(),
            dir: dir.to_owned(),
        }),
        Err(e) => Err(ListenError::os(
            addr,
            Some(format!("checking directory {}", dir.display())),
            e,
        )),
    }
}

/// Makes sure nothing is at `path`: nothing there, or a stale socket (removed). Anything
/// else is an error and is left as it is.
fn clear_existing(addr: &ListenAddr, path: &Path) -> Result<(), ListenError> {
    // Bounded: each round needs another process to recreate the file under our feet.
    for _ in 0..RENAME_ATTEMPTS {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                let doing = format!("checking the existing file {}", path.display());
                return Err(ListenError::os(addr, Some(doing), e));
            }
        };
        let file_type = meta.file_type();
        if !file_type.is_socket() {
            return Err(ListenError::NotASocket {
                addr: addr.clone(),
                path: path.to_owned(),
                found: describe_file_type(file_type),
            });
        }
        match probe(path) {
            Probe::Listening => {
                return Err(ListenError::SocketInUse { addr: addr.clone() });
            }
            Probe::Unknown(error) => {
                return Err(ListenError::Os {
                    addr: addr.clone(),
                    doing: Some("checking whether a process listens on the existing socket".into()),
                    error,
                    hint: Some("not removing it"),
                });
            }
            Probe::Stale => {}
        }
        match remove_if_same(path, FileId::of(&meta)) {
            Ok(Removal::Removed) => {
                tracing::info!(path = %path.display(), "removed stale socket file");
                return Ok(());
            }
            Ok(Removal::Gone) => return Ok(()),
            // Something new took its place since the lstat: look at that instead.
            Ok(Removal::Replaced) => continue,
            Err(e) => {
                let doing = format!("removing the stale socket file {}", path.display());
                return Err(ListenError::os(addr, Some(doing), e));
            }
        }
    }
    Err(ListenError::os(
        addr,
        Some(format!("{} keeps being recreated", path.display())),
        Errno::EEXIST.into(),
    ))
}

/// What is behind an existing socket file.
enum Probe {
    /// A process accepts connections on it.
    Listening,
    /// Nobody listens: left behind by a process that exited without removing it.
    Stale,
    /// Cannot tell (e.g. no permission to connect, or a datagram socket); not removed.
    Unknown(io::Error),
}

fn probe(path: &Path) -> Probe {
    let connect = || -> io::Result<()> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        // Nonblocking: a blocking connect to a listener whose backlog is full waits
        // until it has room, which could be forever.
        socket.set_nonblocking(true)?;
        socket.connect(&SockAddr::unix(path)?)
    };
    match connect() {
        Ok(()) => Probe::Listening,
        Err(e) => match e.raw_os_error().map(Errno::from_raw) {
            // Refused: bound by nobody. ENOENT: removed since we looked.
            Some(Errno::ECONNREFUSED | Errno::ENOENT) => Probe::Stale,
            // A full backlog: very much alive.
            Some(Errno::EAGAIN) => Probe::Listening,
            _ => Probe::Unknown(e),
        },
    }
}

/// Moves the listening socket from its temporary name to `path`.
fn rename_into_place(addr: &ListenAddr, temp: &Path, path: &Path) -> Result<(), ListenError> {
    let doing = || format!("moving the socket into place from {}", temp.display());
    for _ in 0..RENAME_ATTEMPTS {
        match rename_noreplace(temp, path) {
            Ok(()) => return Ok(()),
            // Something appeared at the path since `clear_existing`: judge it the same way.
            Err(Errno::EEXIST) => clear_existing(addr, path)?,
            // No RENAME_NOREPLACE on this file system or C library: fall back to a plain
            // rename, right after the check in `clear_existing`, narrowing the race to
            // the time between two system calls.
            Err(Errno::EINVAL | Errno::ENOSYS) => {
                return fs::rename(temp, path).map_err(|e| ListenError::os(addr, Some(doing()), e));
            }
            Err(e) => return Err(ListenError::os(addr, Some(doing()), e.into())),
        }
    }
    Err(ListenError::os(addr, Some(doing()), Errno::EEXIST.into()))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rename_noreplace(from: &Path, to: &Path) -> Result<(), Errno> {
    use nix::fcntl::{renameat2, RenameFlags};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn rename_noreplace(_from: &Path, _to: &Path) -> Result<(), Errno> {
    // nix exposes renameat2 for glibc only; the caller falls back to rename.
    Err(Errno::ENOSYS)
}

// === impl TempSocket ===

/// A socket bound under a temporary name. Not listening until the caller says so.
struct TempSocket {
    socket: Socket,
    name: TempName,
}

impl TempSocket {
    /// Binds a new socket under a free temporary name in `dir`, next to `final_path`
    /// (same directory: rename cannot cross file systems).
    fn bind(
        addr: &ListenAddr,
        dir: &Path,
        name: &OsStr,
        final_path: &Path,
    ) -> Result<TempSocket, ListenError> {
        // Room for the temporary name: what the final path leaves once its own name
        // is taken away (a socket address holds at most MAX_UNIX_PATH bytes).
        let prefix = dir.join("x").as_os_str().len() - 1;
        let room = MAX_UNIX_PATH.saturating_sub(prefix);
        let creating = || Some(format!("creating a socket file in {}", dir.display()));
        for _ in 0..TEMP_NAME_ATTEMPTS {
            let Some(temp_name) = temp_name(name, room, random()) else {
                break;
            };
            let path = dir.join(temp_name);
            if path == final_path {
                continue;
            }
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
                .map_err(|e| ListenError::os(addr, None, e))?;
            let sockaddr = SockAddr::unix(&path).map_err(|e| ListenError::os(addr, None, e))?;
            match socket.bind(&sockaddr) {
                Ok(()) => {}
                // Name taken (a leftover or a squatter): try another.
                Err(e) if e.raw_os_error() == Some(Errno::EADDRINUSE as i32) => continue,
                Err(e) => return Err(ListenError::os(addr, creating(), e)),
            }
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    // Ours for certain (we just bound it), but we cannot say so by
                    // inode; remove by name, best effort.
                    let _ = fs::remove_file(&path);
                    return Err(ListenError::os(addr, creating(), e));
                }
            };
            if !meta.file_type().is_socket() {
                // Someone swapped the name between bind and lstat. We must not chmod
                // or chown what they put there (a hard link to another file, say).
                let doing = format!("{} was replaced while binding", path.display());
                return Err(ListenError::os(addr, Some(doing), Errno::EEXIST.into()));
            }
            let name = TempName {
                id: FileId::of(&meta),
                path,
                placed: false,
            };
            return Ok(TempSocket { socket, name });
        }
        Err(ListenError::os(
            addr,
            Some(format!("choosing a temporary name in {}", dir.display())),
            Errno::EADDRINUSE.into(),
        ))
    }

    fn set_owner(
        &self,
        addr: &ListenAddr,
        owner: Option<u32>,
        group: Option<u32>,
    ) -> Result<(), ListenError> {
        let doing = match (owner, group) {
            (None, None) => return Ok(()),
            (Some(u), None) => format!("chown to uid {u}"),
            (None, Some(g)) => format!("chown to gid {g}"),
            (Some(u), Some(g)) => format!("chown to uid {u}, gid {g}"),
        };
        fchownat(
            AT_FDCWD,
            &self.name.path,
            owner.map(Uid::from_raw),
            group.map(Gid::from_raw),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|errno| {
            let hint = match errno {
                Errno::EPERM => Some("changing the owner needs root or CAP_CHOWN"),
                _ => None,
            };
            ListenError::Os {
                addr: addr.clone(),
                doing: Some(doing),
                error: errno.into(),
                hint,
            }
        })
    }

    /// Sets the mode. Runs after [`set_owner`](Self::set_owner): a chown may clear
    /// set-id bits, so the mode is applied last and is exactly what was configured.
    fn set_mode(&self, addr: &ListenAddr, mode: Option<u32>) -> Result<(), ListenError> {
        let Some(mode) = mode else {
            return Ok(());
        };
        let doing = || Some(format!("chmod {mode:o}"));
        let nofollow = fchmodat(
            AT_FDCWD,
            &self.name.path,
            Mode::from_bits_truncate(mode),
            FchmodatFlags::NoFollowSymlink,
        );
        match nofollow {
            Ok(()) => Ok(()),
            // A C library that cannot chmod without following a link (no /proc, old
            // glibc): we checked it is our socket, so a plain chmod is on that file.
            Err(Errno::EOPNOTSUPP) => {
                let same = fs::symlink_metadata(&self.name.path)
                    .map(|m| m.file_type().is_socket() && FileId::of(&m) == self.name.id)
                    .map_err(|e| ListenError::os(addr, doing(), e))?;
                if !same {
                    let error = Errno::EEXIST.into();
                    return Err(ListenError::os(addr, doing(), error));
                }
                fs::set_permissions(&self.name.path, fs::Permissions::from_mode(mode))
                    .map_err(|e| ListenError::os(addr, doing(), e))
            }
            Err(e) => Err(ListenError::os(addr, doing(), e.into())),
        }
    }

    /// The socket is at its final path now: the temporary name is gone, nothing to
    /// clean up.
    fn placed(self) -> (Socket, FileId) {
        let TempSocket { socket, mut name } = self;
        name.placed = true;
        (socket, name.id)
    }
}

/// The temporary name of a [`TempSocket`], removed on drop unless it was moved into
/// place: a failed bind must not leave `.app.sock.123.….tmp` files behind.
struct TempName {
    path: PathBuf,
    id: FileId,
    placed: bool,
}

impl Drop for TempName {
    fn drop(&mut self) {
        if self.placed {
            return;
        }
        if let Err(e) = remove_if_same(&self.path, self.id) {
            tracing::debug!(
                path = %self.path.display(),
                error = %crate::errno::describe_io_error(&e),
                "cannot remove temporary socket file"
            );
        }
    }
}

// === impl SocketFile ===

/// The socket file of a bound Unix listener. Dropping it removes the file if it is
/// still the one we created.
#[derive(Debug)]
pub(super) struct SocketFile {
    path: PathBuf,
    id: FileId,
    /// Set once the socket has been handed to another process (a binary upgrade): the
    /// file is theirs from then on and must outlive us.
    disowned: AtomicBool,
}

impl SocketFile {
    /// Takes charge of the socket file at `path`, bound by another process that handed
    /// us its socket (a binary upgrade). Its identity is read now: a socket's own
    /// `fstat` names its sockfs inode, not the file, so the path's inode is what
    /// [`Drop`] compares later.
    pub(super) fn adopt(path: PathBuf) -> io::Result<SocketFile> {
        let meta = fs::symlink_metadata(&path)?;
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is {}, not a socket",
                    path.display(),
                    describe_file_type(meta.file_type())
                ),
            ));
        }
        Ok(SocketFile {
            id: FileId::of(&meta),
            path,
            disowned: AtomicBool::new(false),
        })
    }

    /// From now on the file is left in place when this listener is dropped.
    pub(super) fn disown(&self) {
        self.disowned.store(true, Ordering::Relaxed);
    }

    /// Removed on drop again (the other process has let go of it).
    pub(super) fn reclaim(&self) {
        self.disowned.store(false, Ordering::Relaxed);
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.disowned.load(Ordering::Relaxed) {
            tracing::debug!(path = %self.path.display(), "socket file handed over; leaving it");
            return;
        }
        match remove_if_same(&self.path, self.id) {
            Ok(Removal::Removed) => {
                tracing::debug!(path = %self.path.display(), "removed socket file");
            }
            Ok(Removal::Gone) => {
                tracing::debug!(path = %self.path.display(), "socket file already removed");
            }
            Ok(Removal::Replaced) => {
                tracing::info!(
                    path = %self.path.display(),
                    "socket file was replaced by another process; leaving it"
                );
            }
            Err(e) => {
                tracing::warn!(
                    path = %self.path.display(),
                    error = %crate::errno::describe_io_error(&e),
                    "cannot remove socket file"
                );
            }
        }
    }
}

/// A file's identity. While our socket is open it holds a reference to its file's
/// inode, so the inode number cannot be reused by another file: same (dev, ino) means
/// the very file we created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

enum Removal {
    Removed,
    Gone,
    Replaced,
}

/// Removes `path` if it is still the file `id`. `unlink` never follows a link.
fn remove_if_same(path: &Path, id: FileId) -> io::Result<Removal> {
    match fs::symlink_metadata(path) {
        Ok(m) if FileId::of(&m) == id => match fs::remove_file(path) {
            Ok(()) => Ok(Removal::Removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removal::Gone),
            Err(e) => Err(e),
        },
        Ok(_) => Ok(Removal::Replaced),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removal::Gone),
        Err(e) => Err(e),
    }
}

fn describe_file_type(t: fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "an unknown kind of file"
    }
}

/// A temporary name for the socket that fits in `room` bytes. Preferred:
/// `.app.sock.<pid>.<random>.tmp` — hidden, and says whose it is. Shorter forms when
/// the directory's path leaves too little room; `None` only if there is no room at all.
fn temp_name(name: &OsStr, room: usize, random: u64) -> Option<OsString> {
    let pid = std::process::id();
    let hex = format!("{random:016x}");
    let mut preferred = b".".to_vec();
    preferred.extend_from_slice(name.as_bytes());
    preferred.extend_from_slice(format!(".{pid}.{}.tmp", &hex[..8]).as_bytes());
    let candidates = [
        preferred,
        format!(".{pid}.{hex}.tmp").into_bytes(),
        format!(".{hex}.tmp").into_bytes(),
    ];
    if let Some(c) = candidates.into_iter().find(|c| c.len() <= room) {
        return Some(OsString::from_vec(c));
    }
    // As short as the final name itself may be: random hex, hidden if there is room.
    let short = match room {
        0 => return None,
        1 => hex[..1].to_owned(),
        _ => format!(".{}", &hex[..(room - 1).min(hex.len())]),
    };
    Some(OsString::from(short))
}

/// Random bits for temporary names. They need to be unlikely to clash, not secret: a
/// clash only makes `bind` fail with EADDRINUSE and another name is tried. std's
/// `RandomState` is randomly keyed, which is enough and needs no dependency.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_name_prefers_a_descriptive_hidden_name() {
        let n = temp_name(OsStr::new("app.sock"), 100, 0xabcdef0123456789).unwrap();
        let pid = std::process::id();
        assert_eq!(n, OsString::from(format!(".app.sock.{pid}.abcdef01.tmp")));
    }

    #[test]
    fn temp_name_shrinks_to_the_room_left() {
        for room in 1..40 {
            let n = temp_name(OsStr::new("a"), room, 0x0123456789abcdef).unwrap();
            assert!(n.len() <= room, "room {room}: {n:?}");
            assert!(!n.is_empty());
        }
        assert_eq!(temp_name(OsStr::new("a"), 0, 1), None);
    }
}

//! Where the admin socket is when the config does not say (docs/admin-api.md), shared by the
//! server side (`tidegate run`) and the client side (`tidegate ctl`) so that both pick
//! the same file:
//!
//! 1. `$XDG_RUNTIME_DIR/tidegate/admin.sock` — the per-user runtime folder (systemd
//!    makes it, mode 0700, removed at logout);
//! 2. `/run/tidegate/admin.sock` for root;
//! 3. `/tmp/tidegate-$UID/admin.sock` otherwise.
//!
//! The socket itself is created with mode 0600. Its folder is created with mode 0700
//! when missing; an existing folder must be ours and not writable by others, since
//! whoever can write to it can replace the socket.
//!
//! Boundary: this module never reads the environment. The binary reads
//! `XDG_RUNTIME_DIR` and the user id and passes them in.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tidegate_net::errno::describe_io_error;

/// The socket file's name inside the default folder.
pub const SOCKET_NAME: &str = "admin.sock";

/// The mode the default folder is created with: only its owner may enter it.
pub const DIR_MODE: u32 = 0o700;

/// The default admin socket for a process whose `XDG_RUNTIME_DIR` is `runtime_dir` and
/// whose effective user id is `uid`.
///
/// `runtime_dir` is used only when it is an absolute path (the XDG Base Directory
/// specification says to ignore a relative one).
///
/// ```
/// use std::path::Path;
/// use tidegate_admin::path::default_socket;
/// assert_eq!(
///     default_socket(Some(Path::new("/run/user/1000")), 1000),
///     Path::new("/run/user/1000/tidegate/admin.sock")
/// );
/// assert_eq!(default_socket(None, 0), Path::new("/run/tidegate/admin.sock"));
/// assert_eq!(default_socket(Some(Path::new("rel")), 1000), Path::new("/tmp/tidegate-1000/admin.sock"));
/// ```
pub fn default_socket(runtime_dir: Option<&Path>, uid: u32) -> PathBuf {
    let dir = match runtime_dir {
        Some(d) if d.is_absolute() => d.join("tidegate"),
        _ if uid == 0 => PathBuf::from("/run/tidegate"),
        _ => PathBuf::from(format!("/tmp/tidegate-{uid}")),
    };
    dir.join(SOCKET_NAME)
}

/// Why the default socket's folder cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketDirError {
    /// Creating or inspecting the folder failed.
    #[error("{doing} {}: {}", .dir.display(), describe_io_error(.error))]
    Io {
        /// What was being done (`creating`, `checking`).
        doing: &'static str,
        /// The folder.
        dir: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// Something other than a folder is there (a symbolic link is refused too).
    #[error("{} is not a folder; remove it or set [admin] listen", .dir.display())]
    NotAFolder {
        /// The path.
        dir: PathBuf,
    },
    /// Another user owns the folder: they could replace our socket.
    #[error(
        "{} belongs to uid {owner}, not to us (uid {uid}); remove it or set [admin] listen",
        .dir.display()
    )]
    NotOurs {
        /// The folder.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        uid: u32,
    },
    /// Others may write to the folder: they could replace our socket.
    #[error(
        "{} is writable by other users (mode {mode:o}); chmod 700 it or set [admin] listen",
        .dir.display()
    )]
    Writable {
        /// The folder.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Makes sure the folder of the default socket `socket` exists and is private: creates
/// it with mode [`DIR_MODE`] when missing (its parent must exist), else checks that it
/// is a folder (not a link), owned by `uid` and not writable by group or others.
pub fn prepare_default_dir(socket: &Path, uid: u32) -> Result<(), SocketDirError> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {
            tracing::debug!(dir = %dir.display(), "created the admin socket's folder");
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => {
            return Err(SocketDirError::Io {
                doing: "creating",
                dir: dir.to_owned(),
                error,
            })
        }
    }
    let meta = fs::symlink_metadata(dir).map_err(|error| SocketDirError::Io {
        doing: "checking",
        dir: dir.to_owned(),
        error,
    })?;
    if !meta.file_type().is_dir() {
        return Err(SocketDirError::NotAFolder {
            dir: dir.to_owned(),
        });
    }
    if meta.uid() != uid {
        return Err(SocketDirError::NotOurs {
            dir: dir.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(SocketDirError::Writable {
            dir: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn the_default_follows_xdg_then_root_then_tmp() {
        let xdg = Path::new("/run/user/1000");
        assert_eq!(
            default_socket(Some(xdg), 0),
            Path::new("/run/user/1000/tidegate/admin.sock"),
            "XDG_RUNTIME_DIR wins even for root"
        );
        assert_eq!(
            default_socket(None, 0),
            Path::new("/run/tidegate/admin.sock")
        );
        assert_eq!(
            default_socket(None, 1000),
            Path::new("/tmp/tidegate-1000/admin.sock")
        );
        assert_eq!(
            default_socket(Some(Path::new("")), 1000),
            Path::new("/tmp/tidegate-1000/admin.sock"),
            "an empty XDG_RUNTIME_DIR counts as unset"
        );
    }

    #[test]
    fn a_missing_folder_is_created_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let socket = tmp.path().join("tidegate").join(SOCKET_NAME);
        prepare_default_dir(&socket, uid()).expect("created");
        let meta = fs::symlink_metadata(tmp.path().join("tidegate")).expect("exists");
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        // A second time it is found as it is.
        prepare_default_dir(&socket, uid()).expect("reused");
    }

    #[test]
    fn a_folder_others_can_write_to_or_of_another_user_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("tidegate");
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let socket = dir.join(SOCKET_NAME);
        let e = prepare_default_dir(&socket, uid()).expect_err("refused");
        assert!(
            e.to_string().contains("writable by other users (mode 777)"),
            "{e}"
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        prepare_default_dir(&socket, uid()).expect("0755 is fine: only we can write");
        let e = prepare_default_dir(&socket, uid() + 1).expect_err("not ours");
        assert!(e.to_string().contains("belongs to uid"), "{e}");
    }

    #[test]
    fn a_link_in_place_of_the_folder_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("tidegate");
        std::os::unix::fs::symlink(tmp.path(), &dir).expect("symlink");
        let e = prepare_default_dir(&dir.join(SOCKET_NAME), uid()).expect_err("refused");
        assert!(e.to_string().contains("is not a folder"), "{e}");
    }
}

//! Operator-facing descriptions of OS errors: `connection refused (ECONNREFUSED)`.
//!
//! docs/design.md, "House rules": errors speak like an operator, errno name and meaning. The
//! standard library prints `Connection refused (os error 111)`; the number means nothing
//! to someone reading a log at 3 a.m., the name is what they search for. Listeners use
//! this for bind errors, the HTTP proxy for upstream connect errors.

use std::io;

use nix::errno::Errno;

/// Describes an I/O error as `meaning (NAME)`, e.g. `address already in use (EADDRINUSE)`.
///
/// Errors that carry no OS error code (timeouts made by tidegate, errors built with
/// [`io::Error::other`]) are described by their own message.
///
/// ```
/// use tidegate_net::errno::describe_io_error;
/// let e = std::io::Error::from_raw_os_error(nix::libc::ECONNREFUSED);
/// assert_eq!(describe_io_error(&e), "connection refused (ECONNREFUSED)");
/// ```
pub fn describe_io_error(err: &io::Error) -> String {
    match err.raw_os_error().map(Errno::from_raw) {
        // An errno nix has no name for keeps the standard message, which has the number.
        Some(Errno::UnknownErrno) | None => err.to_string(),
        Some(errno) => describe_errno(errno),
    }
}

/// Describes an errno as `meaning (NAME)`, for errors that come from `nix` directly.
pub fn describe_errno(errno: Errno) -> String {
    if errno == Errno::UnknownErrno {
        return "unknown error".to_owned();
    }
    // `Errno`'s Debug is the constant's name ("EADDRINUSE").
    format!("{} ({errno:?})", meaning(errno))
}

/// The meaning of an errno in lowercase words. The common network and file errors get
/// wording chosen for logs; the rest fall back to the C library's string.
fn meaning(errno: Errno) -> String {
    let words = match errno {
        Errno::EADDRINUSE => "address already in use",
        // Not "on this host": for a connect it usually means no ephemeral port left.
        Errno::EADDRNOTAVAIL => "address not available",
        Errno::EAFNOSUPPORT => "address family not supported",
        Errno::ECONNREFUSED => "connection refused",
        Errno::ECONNRESET => "connection reset by peer",
        Errno::ECONNABORTED => "connection aborted",
        Errno::EPIPE => "broken pipe",
        Errno::ETIMEDOUT => "connection timed out",
        Errno::EHOSTUNREACH => "no route to host",
        Errno::ENETUNREACH => "network unreachable",
        Errno::ENETDOWN => "network is down",
        Errno::ENOTCONN => "not connected",
        Errno::ENOENT => "no such file or directory",
        Errno::ENOTDIR => "not a directory",
        Errno::EISDIR => "is a directory",
        Errno::EEXIST => "file exists",
        Errno::EACCES => "permission denied",
        Errno::EPERM => "operation not permitted",
        Errno::EROFS => "read-only file system",
        Errno::ENOSPC => "no space left on device",
        Errno::ENAMETOOLONG => "file name too long",
        Errno::ELOOP => "too many levels of symbolic links",
        Errno::EMFILE => "too many open files",
        Errno::ENFILE => "too many open files in the system",
        Errno::ENOBUFS => "no buffer space available",
        Errno::ENOMEM => "out of memory",
        Errno::ENOTSOCK => "not a socket",
        Errno::EOPNOTSUPP => "operation not supported",
        Errno::EPROTOTYPE => "wrong socket type",
        Errno::EAGAIN => "resource temporarily unavailable",
        Errno::EINTR => "interrupted",
        Errno::EINVAL => "invalid argument",
        Errno::EBADF => "bad file descriptor",
        _ => return lowercase_first(errno.desc()),
    };
    words.to_owned()
}

/// The C library's strings are capitalised ("Operation not permitted"); messages put
/// them after a colon, where a capital reads as a new sentence.
fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> String {
        describe_io_error(&io::Error::from_raw_os_error(code))
    }

    #[test]
    fn common_errnos_have_meaning_and_name() {
        assert_eq!(
            os(Errno::EADDRINUSE as i32),
            "address already in use (EADDRINUSE)"
        );
        assert_eq!(
            os(Errno::ECONNREFUSED as i32),
            "connection refused (ECONNREFUSED)"
        );
        assert_eq!(
            os(Errno::ECONNRESET as i32),
            "connection reset by peer (ECONNRESET)"
        );
        assert_eq!(os(Errno::EMFILE as i32), "too many open files (EMFILE)");
        assert_eq!(
            os(Errno::ENOENT as i32),
            "no such file or directory (ENOENT)"
        );
    }

    #[test]
    fn uncommon_errno_falls_back_to_the_libc_string_with_its_name() {
        // EXDEV is not in the table: the C library's words, lowercased, and the name.
        assert_eq!(os(Errno::EXDEV as i32), "cross-device link (EXDEV)");
    }

    #[test]
    fn error_without_errno_keeps_its_message() {
        let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out after 3s");
        assert_eq!(describe_io_error(&e), "connect timed out after 3s");
    }

    #[test]
    fn unknown_errno_keeps_the_number() {
        let s = os(4000);
        assert!(s.contains("4000"), "{s}");
    }
}

//! The two sides of tidegate, one vocabulary for all of the crate: a connection in the
//! registry, the end of a tunnel that failed. (Who is at fault for a failed exchange is
//! [`crate::failure::Fault`], which also knows tidegate itself.)

use std::fmt;

/// Which side of tidegate something is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The client: a connection accepted by a listener.
    Client,
    /// An upstream server: a connection tidegate opened to it.
    Upstream,
}

impl Side {
    /// `client` or `upstream` (logs, metrics, the admin API).
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_other() {
        assert_eq!(Side::Client.as_str(), "client");
        assert_eq!(Side::Upstream.to_string(), "upstream");
        assert_eq!(Side::Client.other(), Side::Upstream);
        assert_eq!(Side::Upstream.other(), Side::Client);
    }
}

//! Listening sockets (TCP and Unix).

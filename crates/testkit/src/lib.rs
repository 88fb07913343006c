//! Test kit for tidegate: real backends on real sockets.

//! Integration tests of the admin crate, in one test binary (one link instead of one per
//! file): the server on a real Unix socket and the documented wire format.

mod docs;
mod server;

//! Parsing for the L7 path: PROXY protocol headers and HTTP/1.x heads, pure (no I/O).

pub mod header;
pub mod http;

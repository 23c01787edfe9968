//! The operating system's word on why a connection broke, dug out of hyper's error chain.
//!
//! Both sides of the proxy need it: a client body that failed because the client reset or
//! closed its connection is the client leaving, and an upstream connection reset before any
//! answer byte is a request the upstream never read.

/// The kind of the first `std::io::Error` in `error`'s chain of causes.
pub fn io_error_kind(error: &hyper::Error) -> Option<std::io::ErrorKind> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

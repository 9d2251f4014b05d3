//! Tidings Rust SDK.
//!
//! So far: the event-stream parser in [`sse`] and reconnect delays in [`backoff`]; neither
//! does I/O.

pub mod backoff;
pub mod sse;

//! Tidings Rust SDK.
//!
//! So far: the event-stream parser in [`sse`], which does no I/O.

pub mod sse;

//! Tidings wire protocol v1, as plain functions over data.
//!
//! This crate encodes and validates what crosses the wire (SSE frames, event ids, publish
//! bodies), decides how a resume request is answered, and resolves activities to query keys.
//! It deliberately does no I/O: no sockets, no clocks, no tokio. Callers pass time and state
//! in, which keeps every rule here testable and fuzzable in isolation.

pub mod audience;
pub mod frame;
pub mod id;
pub mod profiles;
pub mod publish;
pub mod resolver;
pub mod resume;

pub use audience::{Audience, Grants, Viewer};
pub use frame::{CloseReason, ResyncReason};
pub use id::EventId;

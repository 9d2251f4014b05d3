//! Tidings Rust SDK: one reconnecting, resuming SSE subscription with typed events and a
//! cache hook, and a publisher for backend services.
//!
//! The pure parts (the event-stream parser in [`sse`], the delays in [`backoff`]) do no I/O
//! and are tested on their own; [`Client`] puts them on a `reqwest` connection with its own
//! reconnect loop. This crate starts no runtime: subscribe from inside a tokio runtime.

pub mod backoff;
mod cache;
mod client;
mod event;
mod publisher;
mod response;
pub mod sse;

pub use backoff::Backoff;
pub use cache::Cache;
pub use client::{AuthScheme, BuildError, Client, ClientBuilder, Subscription};
pub use event::{Disconnect, Error, Event, TokenError};
pub use publisher::{PublishError, PublishItem, Publisher, Receipt, RetryPolicy};
pub use tidings_protocol::resolver::{Key, Resolver, TypeSpelling};
pub use tidings_protocol::{CloseReason, ResyncReason};

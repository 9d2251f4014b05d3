//! Side-by-side benchmarks of the Tidings hub against Nchan and Pushpin on one machine.
//!
//! The harness starts each hub itself (so it knows its processes and can restart it), opens
//! thousands of SSE streams on raw HTTP/1.1 connections, publishes timestamped, numbered
//! events, and measures at every stream: latency from publish to receipt, lost and duplicated
//! events, time to connect, and the hub's resident memory. `tidings bench run` drives it;
//! `bench/run.sh` installs the peers and runs every scenario; BENCHMARKS.md holds the results.

pub mod accounts;
pub mod cli;
pub mod grip;
pub mod identity;
pub mod load;
pub mod procfs;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod streams;
pub mod target;
pub mod wire;

pub use cli::{BenchArgs, run};
pub use scenario::{Harness, Outcome, Scenario, Sizes};
pub use identity::Identity;
pub use target::Kind;

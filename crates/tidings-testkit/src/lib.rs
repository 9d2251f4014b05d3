//! Test helpers shared by the integration tests of several Tidings crates (a dev-dependency
//! only; nothing here ships).

pub mod proxy;
pub mod tls;

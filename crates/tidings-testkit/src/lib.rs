//! Test helpers shared by the integration tests, benches and examples of several Tidings
//! crates (a dev-dependency only; nothing here ships): starting a hub process and reading its
//! address (`hub`), and a proxy that fails like a network (`proxy`).

pub mod hub;
pub mod proxy;
pub mod tls;

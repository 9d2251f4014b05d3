//! The demo's users: two in one account, one in another, so tenancy is visible.

use serde_json::{Value, json};

#[derive(Debug)]
pub struct DemoUser {
    /// What the sign-in form sends.
    pub id: &'static str,
    pub name: &'static str,
    pub email: &'static str,
    pub account: &'static str,
}

pub const USERS: &[DemoUser] = &[
    DemoUser { id: "alice", name: "Alice Martin", email: "alice@acme.example", account: "acme" },
    DemoUser { id: "bob", name: "Bob Chen", email: "bob@acme.example", account: "acme" },
    DemoUser { id: "carol", name: "Carol Diaz", email: "carol@globex.example", account: "globex" },
];

/// The teammate that edits things on its own, per account.
pub const TEAMMATES: &[(&str, &str, &str)] =
    &[("acme", "dana@acme.example", "Dana (teammate)"), ("globex", "erin@globex.example", "Erin (teammate)")];

impl DemoUser {
    pub fn public(&self) -> Value {
        json!({ "id": self.id, "name": self.name, "email": self.email, "account": self.account })
    }
}

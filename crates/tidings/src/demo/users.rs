//! The demo's users: three in one account, one in another, so tenancy is visible; and inside
//! the account, one without the grant the others hold, so audiences are visible too.

use serde_json::{Value, json};

#[derive(Debug)]
pub struct DemoUser {
    /// What the sign-in form sends.
    pub id: &'static str,
    pub name: &'static str,
    pub email: &'static str,
    pub account: &'static str,
    /// What the user's session grants inside the account (the JWT's `grants` claim).
    pub grants: &'static [&'static str],
}

/// Who may see firewall rules and their activity: the audience of every rule change.
pub const FIREWALL_GRANT: &str = "firewall:read";

pub const USERS: &[DemoUser] = &[
    DemoUser { id: "alice", name: "Alice Martin", email: "alice@acme.example", account: "acme", grants: &[FIREWALL_GRANT] },
    DemoUser { id: "bob", name: "Bob Chen", email: "bob@acme.example", account: "acme", grants: &[FIREWALL_GRANT] },
    DemoUser { id: "dave", name: "Dave Kim", email: "dave@acme.example", account: "acme", grants: &[] },
    DemoUser { id: "carol", name: "Carol Diaz", email: "carol@globex.example", account: "globex", grants: &[FIREWALL_GRANT] },
];

/// The teammate that edits things on its own, per account.
pub const TEAMMATES: &[(&str, &str, &str)] =
    &[("acme", "dana@acme.example", "Dana (teammate)"), ("globex", "erin@globex.example", "Erin (teammate)")];

impl DemoUser {
    pub fn public(&self) -> Value {
        json!({ "id": self.id, "name": self.name, "email": self.email, "account": self.account, "grants": self.grants })
    }
}

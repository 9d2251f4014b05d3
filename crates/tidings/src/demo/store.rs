//! The demo's data: applications and firewall rules per account and each account's recent
//! activity, in memory.
//!
//! A plain data structure behind one mutex; it knows nothing of HTTP or of the hub. Every
//! change returns the activity that describes it, which the caller publishes. Firewall rules
//! and their activity are for holders of [`FIREWALL_GRANT`] only: the feed remembers each
//! activity's audience and hands it only to those who may see it. Lost on exit, by design:
//! the demo shows live updates, not persistence.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Value, json};

pub use super::users::FIREWALL_GRANT;

/// Activities kept per account for the feed's first load; older ones are dropped.
pub const FEED_EVENTS_MAX: usize = 50;
/// Applications per account; creating more is refused so a runaway script cannot fill memory.
pub const APPLICATIONS_PER_ACCOUNT_MAX: usize = 500;
/// Longest name accepted, in characters.
pub const NAME_CHARS_MAX: usize = 80;

/// The resource type the demo publishes (`resource.type`); with the hub's generic mapping its
/// keys are `["application"]` and `["application", id]`.
pub const RESOURCE_TYPE: &str = "application";
/// The restricted resource type: keys `["firewall-rule"]` and `["firewall-rule", id]`.
pub const RULE_RESOURCE_TYPE: &str = "firewall rule";
/// Who may see a firewall rule's activity.
pub const RULE_AUDIENCE: &[&str] = &[FIREWALL_GRANT];
/// What a firewall rule does with matching requests.
pub const RULE_ACTIONS: [&str; 2] = ["allow", "deny"];

/// A firewall rule: only holders of [`FIREWALL_GRANT`] may see it or its activity.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub id: u64,
    pub name: String,
    pub action: String,
    pub version: u64,
    pub updated_at: String,
    pub last_editor: String,
}

/// What a request may change on a rule.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleChanges {
    pub action: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Application {
    pub id: u64,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub version: u64,
    pub updated_at: String,
    pub last_editor: String,
}

/// What a request may change; `None` leaves the field as it is.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    pub name: Option<String>,
    pub status: Option<String>,
    pub notes: Option<String>,
}

/// Who made a change, as it appears in the activity.
#[derive(Debug, Clone)]
pub struct Editor {
    pub email: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// No application with this id in the caller's account.
    #[error("no such application")]
    NotFound,
    /// A field is out of bounds; the message names it.
    #[error("{0}")]
    Invalid(&'static str),
}

#[derive(Debug, Default)]
pub struct Store {
    accounts: HashMap<String, Account>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct Account {
    applications: BTreeMap<u64, Application>,
    rules: BTreeMap<u64, Rule>,
    /// Recent activities, each with the grants one of which a reader must hold (`None`: all).
    feed: VecDeque<(Value, Option<&'static [&'static str]>)>,
}

pub const STATUSES: [&str; 3] = ["active", "paused", "draft"];

impl Store {
    /// A store with a few applications in each of `accounts`.
    pub fn seeded(accounts: &[&str]) -> Self {
        let mut store = Self { next_id: 100, ..Self::default() };
        let seed = Editor { email: "setup@example.com".into(), name: "Setup".into() };
        for account in accounts {
            for (name, status) in [("Checkout", "active"), ("Image resizer", "paused"), ("Landing page", "draft")] {
                let changes = Changes { name: Some(name.into()), status: Some(status.into()), notes: None };
                let _ = store.create(account, &seed, changes);
            }
            let acc = store.accounts.get_mut(*account).expect("just created");
            acc.feed.clear();
            for (name, action) in [("Block scanners", "deny"), ("Allow office network", "allow")] {
                store.next_id += 1;
                let rule = Rule { id: store.next_id, name: name.into(), action: action.into(), version: 1, updated_at: now(), last_editor: seed.email.clone() };
                acc.rules.insert(rule.id, rule);
            }
        }
        store
    }

    pub fn rules(&self, account: &str) -> Vec<Rule> {
        self.accounts.get(account).map(|a| a.rules.values().cloned().collect()).unwrap_or_default()
    }

    pub fn edit_rule(&mut self, account: &str, id: u64, by: &Editor, changes: RuleChanges) -> Result<(Rule, Value), StoreError> {
        let action = changes.action.as_deref().map(check_action).transpose()?;
        let acc = self.accounts.get_mut(account).ok_or(StoreError::NotFound)?;
        let rule = acc.rules.get_mut(&id).ok_or(StoreError::NotFound)?;
        if let Some(action) = action {
            rule.action = action.to_owned();
        }
        rule.version += 1;
        rule.updated_at = now();
        rule.last_editor = by.email.clone();
        let rule = rule.clone();
        let activity = json!({
            "user": {"email": by.email, "name": by.name},
            "activity_type": "edited",
            "resource": {"type": RULE_RESOURCE_TYPE, "name": rule.name, "id": rule.id},
            "timestamp": now(),
            "description": format!("Firewall rule {} was set to {} by {}", rule.name, rule.action, by.name),
            "metadata": {"id": rule.id, "name": rule.name, "action": rule.action, "last_editor": by.email},
        });
        remember(acc, &activity, Some(RULE_AUDIENCE));
        Ok((rule, activity))
    }

    /// Any rule of the account, picked with `pick` (an index below the count).
    pub fn pick_rule(&self, account: &str, pick: impl FnOnce(usize) -> usize) -> Option<Rule> {
        let rules = &self.accounts.get(account)?.rules;
        (!rules.is_empty()).then(|| rules.values().nth(pick(rules.len())).cloned()).flatten()
    }

    pub fn list(&self, account: &str) -> Vec<Application> {
        self.accounts.get(account).map(|a| a.applications.values().cloned().collect()).unwrap_or_default()
    }

    pub fn get(&self, account: &str, id: u64) -> Result<Application, StoreError> {
        self.accounts.get(account).and_then(|a| a.applications.get(&id)).cloned().ok_or(StoreError::NotFound)
    }

    /// Most recent first: the activities whose audience the reader is in (`holds` says which
    /// grants it holds).
    pub fn feed(&self, account: &str, holds: impl Fn(&str) -> bool) -> Vec<Value> {
        let Some(a) = self.accounts.get(account) else { return Vec::new() };
        a.feed.iter().rev().filter(|(_, audience)| audience.is_none_or(|grants| grants.iter().any(|g| holds(g)))).map(|(v, _)| v.clone()).collect()
    }

    pub fn create(&mut self, account: &str, by: &Editor, changes: Changes) -> Result<(Application, Value), StoreError> {
        let acc = self.accounts.entry(account.to_owned()).or_default();
        if acc.applications.len() >= APPLICATIONS_PER_ACCOUNT_MAX {
            return Err(StoreError::Invalid("this account holds its maximum of applications"));
        }
        let name = changes.name.as_deref().map(check_name).transpose()?.ok_or(StoreError::Invalid("name is required"))?;
        let status = changes.status.as_deref().map(check_status).transpose()?.unwrap_or("draft");
        self.next_id += 1;
        let app = Application {
            id: self.next_id,
            name: name.to_owned(),
            status: status.to_owned(),
            notes: changes.notes.unwrap_or_default(),
            version: 1,
            updated_at: now(),
            last_editor: by.email.clone(),
        };
        acc.applications.insert(app.id, app.clone());
        let activity = record(acc, "created", &app, by);
        Ok((app, activity))
    }

    pub fn edit(&mut self, account: &str, id: u64, by: &Editor, changes: Changes) -> Result<(Application, Value), StoreError> {
        let name = changes.name.as_deref().map(check_name).transpose()?;
        let status = changes.status.as_deref().map(check_status).transpose()?;
        let acc = self.accounts.get_mut(account).ok_or(StoreError::NotFound)?;
        let app = acc.applications.get_mut(&id).ok_or(StoreError::NotFound)?;
        if let Some(name) = name {
            app.name = name.to_owned();
        }
        if let Some(status) = status {
            app.status = status.to_owned();
        }
        if let Some(notes) = changes.notes {
            app.notes = notes;
        }
        app.version += 1;
        app.updated_at = now();
        app.last_editor = by.email.clone();
        let app = app.clone();
        let activity = record(acc, "edited", &app, by);
        Ok((app, activity))
    }

    pub fn delete(&mut self, account: &str, id: u64, by: &Editor) -> Result<Value, StoreError> {
        let acc = self.accounts.get_mut(account).ok_or(StoreError::NotFound)?;
        let app = acc.applications.remove(&id).ok_or(StoreError::NotFound)?;
        Ok(record(acc, "deleted", &app, by))
    }

    /// Any application of the account, picked with `pick` (an index below the count).
    pub fn pick(&self, account: &str, pick: impl FnOnce(usize) -> usize) -> Option<Application> {
        let apps = &self.accounts.get(account)?.applications;
        if apps.is_empty() {
            return None;
        }
        apps.values().nth(pick(apps.len())).cloned()
    }
}

/// The activity for a change, in the hub's publish format, appended to the account's feed.
fn record(acc: &mut Account, kind: &str, app: &Application, by: &Editor) -> Value {
    let activity = json!({
        "user": {"email": by.email, "name": by.name},
        "activity_type": kind,
        "resource": {"type": RESOURCE_TYPE, "name": app.name, "id": app.id},
        "timestamp": now(),
        "description": format!("{} was {kind} by {}", app.name, by.name),
        "metadata": {"id": app.id, "name": app.name, "status": app.status, "last_editor": by.email},
    });
    remember(acc, &activity, None);
    activity
}

/// Appends an activity to the account's feed with who may read it.
fn remember(acc: &mut Account, activity: &Value, audience: Option<&'static [&'static str]>) {
    acc.feed.push_back((activity.clone(), audience));
    while acc.feed.len() > FEED_EVENTS_MAX {
        acc.feed.pop_front();
    }
}

fn check_name(name: &str) -> Result<&str, StoreError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > NAME_CHARS_MAX {
        return Err(StoreError::Invalid("name must be 1 to 80 characters"));
    }
    Ok(name)
}

fn check_action(action: &str) -> Result<&'static str, StoreError> {
    RULE_ACTIONS.iter().copied().find(|a| *a == action).ok_or(StoreError::Invalid("action must be allow or deny"))
}

fn check_status(status: &str) -> Result<&'static str, StoreError> {
    STATUSES.iter().copied().find(|s| *s == status).ok_or(StoreError::Invalid("status must be active, paused or draft"))
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_stay_in_their_account_and_feed() {
        let mut s = Store::seeded(&["acme", "globex"]);
        let by = Editor { email: "a@x".into(), name: "A".into() };
        let (app, activity) = s.create("acme", &by, Changes { name: Some(" New ".into()), ..Changes::default() }).unwrap();
        assert_eq!(app.name, "New");
        assert_eq!(activity["activity_type"], "created");
        assert_eq!(s.get("globex", app.id).err(), Some(StoreError::NotFound));
        assert_eq!(s.list("acme").len(), 4);
        let all = |_: &str| true;
        assert_eq!(s.feed("acme", all).len(), 1);
        assert!(s.feed("globex", all).is_empty());
        assert!(s.edit("acme", app.id, &by, Changes { status: Some("gone".into()), ..Changes::default() }).is_err());
        s.delete("acme", app.id, &by).unwrap();
        assert_eq!(s.feed("acme", all)[0]["activity_type"], "deleted");
    }

    #[test]
    fn rule_activity_is_only_in_the_feed_of_those_who_hold_the_grant() {
        let mut s = Store::seeded(&["acme"]);
        let by = Editor { email: "a@x".into(), name: "A".into() };
        let rule = s.rules("acme")[0].clone();
        let (edited, activity) = s.edit_rule("acme", rule.id, &by, RuleChanges { action: Some("allow".into()) }).unwrap();
        assert_eq!((edited.action.as_str(), edited.version), ("allow", 2));
        assert_eq!(activity["resource"]["type"], RULE_RESOURCE_TYPE);
        assert!(s.edit_rule("acme", rule.id, &by, RuleChanges { action: Some("drop".into()) }).is_err());
        assert_eq!(s.feed("acme", |g| g == FIREWALL_GRANT).len(), 1);
        assert!(s.feed("acme", |_| false).is_empty(), "no grant, no rule activity");
    }
}

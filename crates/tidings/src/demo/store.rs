//! The demo's data: applications per account and each account's recent activity, in memory.
//!
//! A plain data structure behind one mutex; it knows nothing of HTTP or of the hub. Every
//! change returns the activity that describes it, which the caller publishes. Lost on exit,
//! by design: the demo shows live updates, not persistence.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Value, json};

/// Activities kept per account for the feed's first load; older ones are dropped.
pub const FEED_EVENTS_MAX: usize = 50;
/// Applications per account; creating more is refused so a runaway script cannot fill memory.
pub const APPLICATIONS_PER_ACCOUNT_MAX: usize = 500;
/// Longest name accepted, in characters.
pub const NAME_CHARS_MAX: usize = 80;

/// The resource type the demo publishes (`resource.type`); with the hub's generic mapping its
/// keys are `["application"]` and `["application", id]`.
pub const RESOURCE_TYPE: &str = "application";

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
    feed: VecDeque<Value>,
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
            store.accounts.get_mut(*account).expect("just created").feed.clear();
        }
        store
    }

    pub fn list(&self, account: &str) -> Vec<Application> {
        self.accounts.get(account).map(|a| a.applications.values().cloned().collect()).unwrap_or_default()
    }

    pub fn get(&self, account: &str, id: u64) -> Result<Application, StoreError> {
        self.accounts.get(account).and_then(|a| a.applications.get(&id)).cloned().ok_or(StoreError::NotFound)
    }

    /// Most recent first.
    pub fn feed(&self, account: &str) -> Vec<Value> {
        self.accounts.get(account).map(|a| a.feed.iter().rev().cloned().collect()).unwrap_or_default()
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
    acc.feed.push_back(activity.clone());
    while acc.feed.len() > FEED_EVENTS_MAX {
        acc.feed.pop_front();
    }
    activity
}

fn check_name(name: &str) -> Result<&str, StoreError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > NAME_CHARS_MAX {
        return Err(StoreError::Invalid("name must be 1 to 80 characters"));
    }
    Ok(name)
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
        assert_eq!(s.feed("acme").len(), 1);
        assert!(s.feed("globex").is_empty());
        assert!(s.edit("acme", app.id, &by, Changes { status: Some("gone".into()), ..Changes::default() }).is_err());
        s.delete("acme", app.id, &by).unwrap();
        assert_eq!(s.feed("acme")[0]["activity_type"], "deleted");
    }
}

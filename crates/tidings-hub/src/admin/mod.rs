//! What the admin page shows that `/metrics` does not keep: recent activities with the keys
//! they resolved to, unresolved activity types, each account's last activity, and a short
//! history of the node's counters for the page's charts. The HTTP side is `api.rs`, the page
//! itself `page.rs`.
//!
//! Every buffer here is bounded by a named constant and says what happens past it. Recording
//! costs nothing while the admin page is off, except the table of unresolved types, which also
//! drives the once-per-type warning in the log. Nothing here is persisted or shared between
//! nodes: each node shows what it saw since it started.

mod api;
mod page;
mod series;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tidings_protocol::EventId;
use tidings_protocol::resolver::{Key, Resolver, Tier, resource_type};

pub(crate) use api::router;
pub(crate) use series::{Gauges, SAMPLE_INTERVAL, Series};

/// Distinct unresolved activity types tracked (count, first and last seen, a sample). Past it,
/// further new types are only counted together (`other_count`) and no longer logged: a
/// publisher sending random types cannot grow the table or flood the log.
pub const UNRESOLVED_TYPES_MAX: usize = 1_000;
/// Longest type name kept, in characters; longer ones are cut (a type is a short name, and a
/// publisher's mistake must not make every entry megabytes long).
pub const TYPE_NAME_CHARS_MAX: usize = 128;
/// Largest activity kept as a sample (of an unresolved type) or beside a recent activity, in
/// bytes of JSON; larger ones are shown without their body.
pub const ACTIVITY_SAMPLE_BYTES_MAX: usize = 4 * 1024;
/// Recent activities kept, newest first; the oldest is dropped for each new one.
pub const RECENT_ACTIVITIES_MAX: usize = 100;
/// Accounts whose last activity is remembered. Past it the older half (more, on ties) is forgotten (their
/// last activity shows as unknown until they publish again).
pub const ACCOUNTS_TRACKED_MAX: usize = 10_000;
/// Longest description kept with a recent activity, in characters.
const DESCRIPTION_CHARS_MAX: usize = 200;

/// The admin page's memory of what this node saw.
#[derive(Debug)]
pub(crate) struct Admin {
    pub started: SystemTime,
    unresolved: Mutex<Unresolved>,
    recent: Mutex<VecDeque<Arc<RecentActivity>>>,
    last_activity: Mutex<HashMap<Arc<str>, SystemTime>>,
    pub series: Mutex<Series>,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            started: SystemTime::now(),
            unresolved: Mutex::default(),
            recent: Mutex::default(),
            last_activity: Mutex::default(),
            series: Mutex::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Unresolved {
    /// By normalised resource type (empty: the activity names none).
    types: HashMap<String, UnresolvedType>,
    /// Unresolved activities of types past [`UNRESOLVED_TYPES_MAX`].
    other_count: u64,
}

#[derive(Debug, Clone)]
struct UnresolvedType {
    count: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
    /// An activity of the type (the first that fits [`ACTIVITY_SAMPLE_BYTES_MAX`]).
    sample: Option<Arc<Value>>,
}

/// One published activity as the admin page lists it.
#[derive(Debug, Serialize)]
pub(crate) struct RecentActivity {
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    pub id: String,
    pub account: Arc<str>,
    /// The publisher key's name, `admin` for the page's test activities, `host` for a host
    /// beside the hub (`tidings demo`).
    pub publisher: Arc<str>,
    pub activity_type: Option<String>,
    pub resource_type: Option<String>,
    pub description: Option<String>,
    pub invalidate: Vec<Key>,
    pub remove: Vec<Key>,
    pub tier: Option<Tier>,
    /// The mapping entry that answered (`resources."edge application"`, `generic`).
    pub entry: Option<String>,
    /// The activity itself, when it fits [`ACTIVITY_SAMPLE_BYTES_MAX`].
    pub data: Option<Box<RawValue>>,
}

impl Admin {
    /// Counts an activity no tier resolved. Answers whether its type is new (the caller logs
    /// new types once).
    pub fn unresolved(&self, activity: &Value) -> bool {
        let kind = resource_type(activity).map(|t| truncate(&t, TYPE_NAME_CHARS_MAX)).unwrap_or_default();
        let now = SystemTime::now();
        let mut u = self.unresolved.lock().expect("unresolved lock");
        if let Some(t) = u.types.get_mut(&kind) {
            t.count += 1;
            t.last_seen = now;
            // The first sample that fits is kept: a flood of one type costs a count each.
            if t.sample.is_none() {
                t.sample = sample(activity);
            }
            return false;
        }
        if u.types.len() >= UNRESOLVED_TYPES_MAX {
            u.other_count += 1;
            return false;
        }
        u.types.insert(kind, UnresolvedType { count: 1, first_seen: now, last_seen: now, sample: sample(activity) });
        true
    }

    /// After the mapping changed: forgets the types whose sample the new mapping resolves, so
    /// the list shows what is still missing (and a type that stops resolving again is logged
    /// again).
    pub fn mapping_changed(&self, resolver: &Resolver) {
        let mut u = self.unresolved.lock().expect("unresolved lock");
        u.types.retain(|_, t| t.sample.as_ref().is_none_or(|s| resolver.resolve(s).tier.is_none()));
    }

    /// Records published activities: the last [`RECENT_ACTIVITIES_MAX`] of the batch go to the
    /// recent list (with the keys `resolver` gives them), every account's last activity is
    /// updated.
    pub fn published<'a>(&self, items: &[(&'a str, &'a Value)], ids: &[EventId], publisher: &Arc<str>, resolver: &Resolver) {
        let now = SystemTime::now();
        self.touch_accounts(items.iter().map(|(account, _)| *account), now);
        let skip = items.len().saturating_sub(RECENT_ACTIVITIES_MAX);
        let recent: Vec<_> = items
            .iter()
            .zip(ids)
            .skip(skip)
            .map(|((account, activity), id)| Arc::new(recent_activity(now, id, account, publisher, activity, resolver)))
            .collect();
        let mut list = self.recent.lock().expect("recent lock");
        for r in recent {
            if list.len() >= RECENT_ACTIVITIES_MAX {
                list.pop_back();
            }
            list.push_front(r);
        }
    }

    fn touch_accounts<'a>(&self, accounts: impl Iterator<Item = &'a str>, now: SystemTime) {
        let mut last = self.last_activity.lock().expect("last activity lock");
        for account in accounts {
            if let Some(at) = last.get_mut(account) {
                *at = now;
                continue;
            }
            if last.len() >= ACCOUNTS_TRACKED_MAX {
                forget_older_half(&mut last);
            }
            last.insert(account.into(), now);
        }
    }

    pub fn last_activity(&self, account: &str) -> Option<SystemTime> {
        self.last_activity.lock().expect("last activity lock").get(account).copied()
    }

    pub fn recent(&self) -> Vec<Arc<RecentActivity>> {
        self.recent.lock().expect("recent lock").iter().cloned().collect()
    }

    /// The unresolved types, most frequent first, each with the entry to add to `resolver`'s
    /// mapping; and how many activities of untracked types there were.
    pub fn unresolved_types(&self, resolver: &Resolver) -> (Vec<UnresolvedView>, u64) {
        let (mut types, other) = {
            let u = self.unresolved.lock().expect("unresolved lock");
            (u.types.iter().map(|(k, t)| (k.clone(), t.clone())).collect::<Vec<_>>(), u.other_count)
        };
        types.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
        let views = types
            .into_iter()
            .map(|(kind, t)| {
                let suggestion = t.sample.as_deref().and_then(|s| tidings_protocol::resolver::suggest_entry(resolver.mapping(), s));
                UnresolvedView {
                    resource_type: (!kind.is_empty()).then_some(kind),
                    count: t.count,
                    first_seen: t.first_seen,
                    last_seen: t.last_seen,
                    mapping_entry: suggestion.as_ref().map(|s| s.toml.clone()),
                    note: suggestion.map(|s| s.note),
                    sample: t.sample,
                }
            })
            .collect();
        (views, other)
    }
}

/// One unresolved type as the API answers it.
#[derive(Debug, Serialize)]
pub(crate) struct UnresolvedView {
    /// Normalised; `None` for activities that name no resource type.
    pub resource_type: Option<String>,
    pub count: u64,
    #[serde(with = "rfc3339")]
    pub first_seen: SystemTime,
    #[serde(with = "rfc3339")]
    pub last_seen: SystemTime,
    /// TOML to paste into the mapping file.
    pub mapping_entry: Option<String>,
    pub note: Option<String>,
    /// An activity of the type, the one the entry was made for.
    pub sample: Option<Arc<Value>>,
}

fn recent_activity(at: SystemTime, id: &EventId, account: &str, publisher: &Arc<str>, activity: &Value, resolver: &Resolver) -> RecentActivity {
    let e = resolver.explain(activity);
    let text = |field: &str| activity.get(field).and_then(Value::as_str).map(|s| truncate(s, DESCRIPTION_CHARS_MAX));
    RecentActivity {
        at,
        id: id.to_string(),
        account: account.into(),
        publisher: publisher.clone(),
        activity_type: text("activity_type"),
        resource_type: e.resource_type.map(|t| truncate(&t, TYPE_NAME_CHARS_MAX)),
        description: text("description"),
        invalidate: e.resolution.invalidate,
        remove: e.resolution.remove,
        tier: e.resolution.tier,
        entry: e.entry,
        data: serde_json::value::to_raw_value(activity).ok().filter(|raw| raw.get().len() <= ACTIVITY_SAMPLE_BYTES_MAX),
    }
}

/// The activity, when small enough to keep.
fn sample(activity: &Value) -> Option<Arc<Value>> {
    let size = serde_json::to_vec(activity).map_or(usize::MAX, |v| v.len());
    (size <= ACTIVITY_SAMPLE_BYTES_MAX).then(|| Arc::new(activity.clone()))
}

fn forget_older_half(last: &mut HashMap<Arc<str>, SystemTime>) {
    let mut times: Vec<SystemTime> = last.values().copied().collect();
    let middle = times.len() / 2;
    let (_, cut, _) = times.select_nth_unstable(middle);
    let cut = *cut;
    last.retain(|_, at| *at > cut);
}

fn truncate(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// `SystemTime` as RFC 3339 with milliseconds, for the API.
pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*at))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unresolved_types_are_counted_bounded_and_forgotten_once_mapped() {
        let admin = Admin::default();
        let box_ = json!({"activity_type": "edited", "resource": {"type": "Mystery Box", "id": 1}});
        assert!(admin.unresolved(&box_), "a new type is news");
        assert!(!admin.unresolved(&json!({"resource": {"type": "mystery_box"}})), "the same type, spelled otherwise");
        assert!(admin.unresolved(&json!({"description": "no type at all"})));
        let long = "x".repeat(10_000);
        admin.unresolved(&json!({"resource": {"type": long}}));
        let generic = Resolver::from_toml_str("", "m.toml").unwrap();
        let (types, other) = admin.unresolved_types(&generic);
        assert_eq!(other, 0);
        assert_eq!(types[0].resource_type.as_deref(), Some("mystery box"));
        assert_eq!(types[0].count, 2);
        assert!(types[0].mapping_entry.as_deref().unwrap().starts_with("[resources.\"mystery box\"]"));
        assert!(types.iter().all(|t| t.resource_type.as_ref().is_none_or(|k| k.chars().count() <= TYPE_NAME_CHARS_MAX + 1)));
        assert!(types.iter().any(|t| t.resource_type.is_none()), "activities without a type are listed too");

        for n in 0..UNRESOLVED_TYPES_MAX + 10 {
            admin.unresolved(&json!({"resource": {"type": format!("type {n}")}}));
        }
        let (types, other) = admin.unresolved_types(&generic);
        assert_eq!((types.len(), other), (UNRESOLVED_TYPES_MAX, 13), "past the bound, only counted");

        admin.mapping_changed(&Resolver::from_toml_str("[resources.\"mystery box\"]\nlist = [\"boxes\"]\n", "m.toml").unwrap());
        let (types, _) = admin.unresolved_types(&generic);
        assert!(types.iter().all(|t| t.resource_type.as_deref() != Some("mystery box")), "mapped now");
        assert_eq!(types.len(), UNRESOLVED_TYPES_MAX - 1);
    }

    #[test]
    fn recent_activities_and_accounts_are_bounded() {
        let admin = Admin::default();
        let resolver = Resolver::generic(tidings_protocol::resolver::TypeSpelling::KebabCase);
        let activity = json!({"activity_type": "edited", "resource": {"type": "Edge App", "id": 3}, "description": "d".repeat(1000)});
        let accounts: Vec<String> = (0..ACCOUNTS_TRACKED_MAX + 5).map(|n| format!("acct-{n}")).collect();
        let items: Vec<(&str, &Value)> = accounts.iter().map(|a| (a.as_str(), &activity)).collect();
        let ids: Vec<EventId> = (1..=items.len() as u64).map(|n| EventId::new(7, n)).collect();
        admin.published(&items, &ids, &"billing".into(), &resolver);
        let recent = admin.recent();
        assert_eq!(recent.len(), RECENT_ACTIVITIES_MAX);
        assert_eq!(recent[0].id, ids.last().unwrap().to_string(), "newest first");
        assert_eq!(recent[0].invalidate, vec![vec![json!("edge-app")]]);
        assert_eq!((recent[0].tier, recent[0].entry.as_deref()), (Some(Tier::Resource), Some("generic")));
        assert_eq!(recent[0].description.as_ref().unwrap().chars().count(), DESCRIPTION_CHARS_MAX + 1);
        assert!(admin.last_activity.lock().unwrap().len() <= ACCOUNTS_TRACKED_MAX);
        assert!(admin.last_activity(accounts.last().unwrap()).is_some(), "the latest account is remembered");

        let huge = json!({"resource": {"type": "big"}, "blob": "b".repeat(ACTIVITY_SAMPLE_BYTES_MAX)});
        admin.published(&[("acme", &huge)], &[EventId::new(7, 99_999)], &"billing".into(), &resolver);
        assert!(admin.recent()[0].data.is_none(), "too large to keep");
    }
}

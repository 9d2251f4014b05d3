//! Resolution: a [`Mapping`] compiled into lookup tables, and the three tiers run over them.
//!
//! Everything that can be done once is done at load: names are normalised into hash indexes,
//! templates are parsed into literal elements and id slots, prefixes are lower-cased and sorted
//! longest first. Per activity the work is a few field lookups, one normalised type per tier
//! tried, and building the output keys. Nothing here logs or fails: an unresolved activity is
//! an empty [`Resolution`] with no tier.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::load::entry_label as label;
use crate::audience::{Audience, check_grant};
use super::mapping::{IdType, Mapping, PLACEHOLDER_ID, PLACEHOLDER_PARENT_ID};
use super::{
    ActivityKind, Key, Resolution, Tier, TypeSpelling, dedupe_prefixes, normalize_type, normalize_type_into,
    parent_parts, resource_id, resource_type_raw,
};

/// Resolves activities to keys with one mapping. Cheap to share: resolution takes `&self`.
#[derive(Debug, Clone)]
pub struct Resolver {
    mapping: Mapping,
    generic: Option<TypeSpelling>,
    resource_index: HashMap<String, usize>,
    resources: Vec<ResourceRule>,
    parent_index: HashMap<String, usize>,
    parents: Vec<ParentRule>,
    /// Longest prefix first, so the first match is the answer.
    descriptions: Vec<(String, Vec<Key>)>,
    /// The audience rules, compiled like the tables: spellings and prefixes to an index into
    /// `audiences`, which events share.
    audience_parents: HashMap<String, usize>,
    audience_resources: HashMap<String, usize>,
    audience_descriptions: Vec<(String, usize)>,
    audiences: Vec<Arc<Audience>>,
}

#[derive(Debug, Clone)]
struct ResourceRule {
    name: String,
    id: IdType,
    list: Vec<Template>,
    detail: Vec<Template>,
    /// `detail` less the keys a list key always covers: what an edit adds. Computed once so an
    /// edit does not build keys the de-duplication would drop.
    edit_detail: Vec<Template>,
}

#[derive(Debug, Clone)]
struct ParentRule {
    name: String,
    id: IdType,
    keys: Vec<Template>,
}

/// A key with its id slots found once.
#[derive(Debug, Clone)]
struct Template(Vec<Slot>);

#[derive(Debug, Clone)]
enum Slot {
    Literal(Value),
    Id,
}

impl Template {
    /// `placeholder` is the one placeholder this table fills; validation at load guarantees no
    /// other appears, and in a hand-built mapping any other brace string stays literal.
    fn compile(key: &Key, placeholder: &str) -> Self {
        Self(
            key.iter()
                .map(|e| if e.as_str() == Some(placeholder) { Slot::Id } else { Slot::Literal(e.clone()) })
                .collect(),
        )
    }

    /// Whether every key built from `self` starts with the literal key `prefix`.
    fn always_under(&self, prefix: &Template) -> bool {
        prefix.0.len() <= self.0.len()
            && prefix
                .0
                .iter()
                .zip(&self.0)
                .all(|(p, s)| matches!((p, s), (Slot::Literal(a), Slot::Literal(b)) if a == b))
    }

    /// The key, or `None` when it needs an id and there is none.
    fn build(&self, id: Option<&Value>) -> Option<Key> {
        self.0
            .iter()
            .map(|s| match s {
                Slot::Literal(v) => Some(v.clone()),
                Slot::Id => id.cloned(),
            })
            .collect()
    }
}

/// The entry that answered, for explanations.
#[derive(Debug, Clone, Copy)]
enum Answer<'a> {
    Parent(&'a str),
    Resource(&'a str),
    Description(&'a str),
    Generic,
}

/// A resolution with what led to it, for `tidings resolve` and for logging unresolved events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    #[serde(flatten)]
    pub resolution: Resolution,
    pub activity_type: ActivityKind,
    /// The parent's type, normalised, when the activity has one.
    pub parent_type: Option<String>,
    /// The resource's type, normalised, when the activity has one.
    pub resource_type: Option<String>,
    /// The entry that answered, in dotted form (`resources.application`,
    /// `descriptions."dns zone"`), or `generic`.
    pub entry: Option<String>,
    /// The audience the mapping derives for the activity (when its publisher sends none);
    /// absent: the whole account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::generic(TypeSpelling::default())
    }
}

impl Resolver {
    /// The generic default: `[type]` for lists, `[type, metadata.id]` for details and
    /// `[parent.type, parent.id]` for a parent.
    pub fn generic(spelling: TypeSpelling) -> Self {
        Self::from_mapping(Mapping::generic(spelling))
    }

    /// Compiles a mapping. Loading ([`Mapping::from_toml_str`]) validates; this does not fail,
    /// and takes a hand-built mapping as it is (names are normalised again, later duplicates
    /// win).
    pub fn from_mapping(mapping: Mapping) -> Self {
        let mut resource_index = HashMap::new();
        let mut resources = Vec::with_capacity(mapping.resources.len());
        for (name, e) in &mapping.resources {
            for n in std::iter::once(name).chain(&e.aliases) {
                index_spellings(&mut resource_index, n, resources.len());
            }
            let compile = |keys: &[Key]| keys.iter().map(|k| Template::compile(k, PLACEHOLDER_ID)).collect::<Vec<_>>();
            let (list, detail) = (compile(&e.list), compile(&e.detail));
            let edit_detail = detail.iter().filter(|d| !list.iter().any(|l| d.always_under(l))).cloned().collect();
            resources.push(ResourceRule { name: name.clone(), id: e.id, list, detail, edit_detail });
        }
        let mut parent_index = HashMap::new();
        let mut parents = Vec::with_capacity(mapping.parents.len());
        for (name, e) in &mapping.parents {
            for n in std::iter::once(name).chain(&e.aliases) {
                index_spellings(&mut parent_index, n, parents.len());
            }
            let keys = e.keys.iter().map(|k| Template::compile(k, PLACEHOLDER_PARENT_ID)).collect();
            parents.push(ParentRule { name: name.clone(), id: e.id, keys });
        }
        let mut sorted = mapping.clone();
        sorted.sort_descriptions();
        let descriptions = sorted.descriptions.into_iter().map(|d| (d.prefix.trim().to_lowercase(), d.keys)).collect();
        let mut audiences = Vec::new();
        let mut add = |grants: &[String]| {
            audiences.push(Arc::new(compile_audience(grants)));
            audiences.len() - 1
        };
        let mut audience_parents = HashMap::new();
        for (name, grants) in &mapping.audience.parents {
            let at = add(grants);
            let aliases = mapping.parents.get(name).map_or(&[][..], |e| &e.aliases[..]);
            for n in std::iter::once(name).chain(aliases) {
                index_spellings(&mut audience_parents, n, at);
            }
        }
        let mut audience_resources = HashMap::new();
        for (name, grants) in &mapping.audience.resources {
            let at = add(grants);
            let aliases = mapping.resources.get(name).map_or(&[][..], |e| &e.aliases[..]);
            for n in std::iter::once(name).chain(aliases) {
                index_spellings(&mut audience_resources, n, at);
            }
        }
        let audience_descriptions = sorted.audience.descriptions.iter().map(|(p, grants)| (p.trim().to_lowercase(), add(grants))).collect();
        Self {
            generic: mapping.generic.spelling(),
            mapping,
            resource_index,
            resources,
            parent_index,
            parents,
            descriptions,
            audience_parents,
            audience_resources,
            audience_descriptions,
            audiences,
        }
    }

    /// Loads a TOML profile; see [`Mapping::from_toml_str`].
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Self, super::MappingError> {
        Mapping::from_toml_str(text, source_name).map(Self::from_mapping)
    }

    /// The mapping this resolver was built from, in canonical form (serialise it for the
    /// browser SDK).
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// The keys for one activity (the `data` object of an activity frame).
    pub fn resolve(&self, activity: &Value) -> Resolution {
        self.run(activity).0
    }

    /// The audience the mapping derives for an activity whose publisher sent none, by the
    /// tiers of [`Resolver::resolve`] (parent type, resource type, description prefix): the
    /// first tier with a rule for the activity answers. `None`: the whole account. Shared, so
    /// every event it applies to holds the same set.
    pub fn audience(&self, activity: &Value) -> Option<&Arc<Audience>> {
        if self.audiences.is_empty() {
            return None;
        }
        let mut scratch = String::new();
        let by_parent = parent_parts(activity).and_then(|(t, _)| lookup(&self.audience_parents, t, &mut scratch).copied());
        let at = by_parent
            .or_else(|| resource_type_raw(activity).and_then(|t| lookup(&self.audience_resources, t, &mut scratch).copied()))
            .or_else(|| longest_prefix(&self.audience_descriptions, activity).map(|(_, at)| *at))?;
        Some(&self.audiences[at])
    }

    /// [`Resolver::resolve`] plus what it looked at and which entry answered.
    pub fn explain(&self, activity: &Value) -> Explanation {
        let (resolution, answer) = self.run(activity);
        let entry = answer.map(|a| match a {
            Answer::Parent(n) => label("parents", n),
            Answer::Resource(n) => label("resources", n),
            Answer::Description(p) => label("descriptions", p),
            Answer::Generic => "generic".to_owned(),
        });
        Explanation {
            resolution,
            activity_type: ActivityKind::of(activity),
            parent_type: parent_parts(activity).map(|(t, _)| normalize_type(t)),
            resource_type: super::resource_type(activity),
            entry,
            audience: self.audience(activity).map(|a| a.iter().map(str::to_owned).collect()),
        }
    }

    fn run(&self, activity: &Value) -> (Resolution, Option<Answer<'_>>) {
        let mut scratch = String::new();
        if let Some((keys, answer)) = self.parent_tier(activity, &mut scratch) {
            return (finish(keys, Vec::new(), Tier::Parent), Some(answer));
        }
        if let Some((invalidate, remove, answer)) = self.resource_tier(activity, &mut scratch) {
            return (finish(invalidate, remove, Tier::Resource), Some(answer));
        }
        if let Some((keys, answer)) = self.description_tier(activity) {
            return (finish(keys, Vec::new(), Tier::Description), Some(answer));
        }
        (Resolution::default(), None)
    }

    fn parent_tier(&self, activity: &Value, scratch: &mut String) -> Option<(Vec<Key>, Answer<'_>)> {
        let (t, id) = parent_parts(activity)?;
        if let Some(&i) = lookup(&self.parent_index, t, scratch) {
            let rule = &self.parents[i];
            let id = id.and_then(|v| rule.id.convert(v));
            let keys: Vec<Key> = rule.keys.iter().filter_map(|k| k.build(id.as_deref())).collect();
            return (!keys.is_empty()).then_some((keys, Answer::Parent(&rule.name)));
        }
        let spelling = self.generic?;
        let id = IdType::AsPublished.convert(id?)?.into_owned();
        Some((vec![vec![Value::String(spell(spelling, t)), id]], Answer::Generic))
    }

    fn resource_tier(&self, activity: &Value, scratch: &mut String) -> Option<(Vec<Key>, Vec<Key>, Answer<'_>)> {
        let t = resource_type_raw(activity)?;
        let kind = ActivityKind::of(activity);
        if let Some(&i) = lookup(&self.resource_index, t, scratch) {
            let rule = &self.resources[i];
            let mut invalidate: Vec<Key> = rule.list.iter().filter_map(|k| k.build(None)).collect();
            let mut remove = Vec::new();
            let detail = match kind {
                ActivityKind::Created => &[][..],
                ActivityKind::Edited => &rule.edit_detail,
                ActivityKind::Deleted => &rule.detail,
            };
            if !detail.is_empty() {
                let id: Option<Cow<'_, Value>> = resource_id(activity).and_then(|v| rule.id.convert(v));
                let details = detail.iter().filter_map(|k| k.build(id.as_deref()));
                if kind == ActivityKind::Deleted { remove.extend(details) } else { invalidate.extend(details) }
            }
            let answered = !invalidate.is_empty() || !remove.is_empty();
            return answered.then_some((invalidate, remove, Answer::Resource(&rule.name)));
        }
        let spelling = self.generic?;
        let list = vec![Value::String(spell(spelling, t))];
        let mut invalidate = vec![list.clone()];
        let mut remove = Vec::new();
        let id = resource_id(activity).filter(|_| kind != ActivityKind::Created);
        if let Some(id) = id.and_then(|v| IdType::AsPublished.convert(v)) {
            let mut detail = list;
            detail.push(id.into_owned());
            if kind == ActivityKind::Deleted { remove.push(detail) } else { invalidate.push(detail) }
        }
        Some((invalidate, remove, Answer::Generic))
    }

    fn description_tier(&self, activity: &Value) -> Option<(Vec<Key>, Answer<'_>)> {
        let (prefix, keys) = longest_prefix(&self.descriptions, activity)?;
        Some((keys.clone(), Answer::Description(prefix)))
    }
}

/// The first entry of `list` (prefixes lower-cased, longest first) whose prefix starts the
/// activity's description, compared case-insensitively.
fn longest_prefix<'a, T>(list: &'a [(String, T)], activity: &Value) -> Option<&'a (String, T)> {
    if list.is_empty() {
        return None;
    }
    let d = activity.get("description").and_then(Value::as_str).map(str::trim).filter(|d| !d.is_empty())?;
    // ASCII descriptions are compared in place; others are lower-cased once, because some
    // non-ASCII characters lower-case to ASCII (the Kelvin sign to `k`).
    let lowered: Cow<'_, str> = if d.is_ascii() { Cow::Borrowed(d) } else { Cow::Owned(d.to_lowercase()) };
    list.iter().find(|(p, _)| lowered.len() >= p.len() && lowered.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
}

/// A rule's audience. Loading validated it; a hand-built mapping is taken as it is, except
/// that grants no audience may hold are dropped, and a rule left with none admits nobody:
/// a broken rule hides its events rather than showing them to the whole account.
fn compile_audience(grants: &[String]) -> Audience {
    Audience::new(grants.iter().map(String::as_str).filter(|g| check_grant(g).is_ok())).unwrap_or_else(|_| Audience::nobody())
}

/// Indexes a type under its normalised name and under the spellings publishers commonly use
/// (`edge_application`, `edge-application`), so most lookups find the type as published
/// without normalising it first.
fn index_spellings(index: &mut HashMap<String, usize>, name: &str, at: usize) {
    let normalised = normalize_type(name);
    for spelling in [normalised.replace(' ', "_"), normalised.replace(' ', "-"), normalised] {
        index.insert(spelling, at);
    }
}

/// Looks a type up as published, then normalised into `scratch`.
fn lookup<'a>(index: &'a HashMap<String, usize>, t: &str, scratch: &mut String) -> Option<&'a usize> {
    index.get(t).or_else(|| {
        normalize_type_into(t, scratch);
        index.get(scratch.as_str())
    })
}

/// The type as the generic default writes it in a key.
fn spell(spelling: TypeSpelling, t: &str) -> String {
    match spelling {
        TypeSpelling::AsPublished => t.to_owned(),
        TypeSpelling::KebabCase => normalize_type(t).replace(' ', "-"),
    }
}

fn finish(invalidate: Vec<Key>, remove: Vec<Key>, tier: Tier) -> Resolution {
    Resolution { invalidate: dedupe_prefixes(invalidate), remove: dedupe_prefixes(remove), tier: Some(tier) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resolver(toml: &str) -> Resolver {
        Resolver::from_toml_str(toml, "test.toml").unwrap()
    }

    #[test]
    fn longest_description_prefix_wins() {
        let r =
            resolver("[descriptions]\n\"Rule\" = [\"short\"]\n\"Rule Engine\" = [\"long\"]\n\"Rul\" = [\"shorter\"]\n");
        let keys = |d: &str| r.resolve(&json!({ "description": d })).invalidate;
        assert_eq!(keys("rule engine x"), vec![vec![json!("long")]]);
        assert_eq!(keys("Rules"), vec![vec![json!("short")]]);
        assert_eq!(keys("Ruler"), vec![vec![json!("short")]]);
        assert_eq!(keys("Ru"), Vec::<Key>::new());
        // The Kelvin sign lower-cases to an ASCII `k`, as in JavaScript's toLowerCase.
        let r = resolver("[descriptions]\n\"kelvin\" = [\"k\"]\n");
        assert_eq!(r.resolve(&json!({ "description": "\u{212A}elvin" })).tier, Some(Tier::Description));
    }

    #[test]
    fn edits_skip_detail_keys_a_list_key_covers() {
        let r = resolver("[resources.a]\nlist = [\"a\"]\ndetail = [[\"a\", \"{id}\"], [\"b\", \"{id}\"]]\n");
        let edited = r.resolve(&json!({"activity_type": "edited", "resource": {"type": "A", "id": 1}}));
        assert_eq!(edited.invalidate, vec![vec![json!("a")], vec![json!("b"), json!(1)]]);
        let deleted = r.resolve(&json!({"activity_type": "deleted", "resource": {"type": "A", "id": 1}}));
        assert_eq!(deleted.remove, vec![vec![json!("a"), json!(1)], vec![json!("b"), json!(1)]]);
    }

    #[test]
    fn audience_rules_answer_by_tier_and_cover_aliases() {
        let r = resolver(
            r#"
generic = "kebab-case"
[resources."edge firewall"]
aliases = ["firewall"]
list = ["edge-firewalls"]
[parents."edge firewall"]
keys = ["edge-firewalls", "{parent_id}"]
[audience.parents]
"Edge_Firewall" = ["edge_firewall:read"]
[audience.resources]
"firewall" = ["edge_firewall:read", "role:admin"]
"billing invoice" = ["billing:read"]
[audience.descriptions]
"Payment" = ["billing:read"]
"Payment method" = ["billing:admin"]
"#,
        );
        let audience = |a: Value| r.audience(&a).map(|a| a.iter().map(str::to_owned).collect::<Vec<_>>());
        let admin = Some(vec!["edge_firewall:read".to_owned(), "role:admin".to_owned()]);
        assert_eq!(audience(json!({"activity_type": "edited", "resource": {"type": "Edge Firewall"}})), admin, "an alias's rule covers the entry's name");
        assert_eq!(audience(json!({"activity_type": "edited", "resource": {"type": "firewall"}})), admin);
        let rule = json!({"activity_type": "created", "resource": {"type": "rule", "parent": {"type": "edge-firewall", "id": 3}}});
        assert_eq!(audience(rule), Some(vec!["edge_firewall:read".to_owned()]), "the parent tier answers first");
        assert_eq!(audience(json!({"activity_type": "created", "resource": {"type": "Billing_Invoice"}})), Some(vec!["billing:read".to_owned()]));
        let by_description = json!({"activity_type": "edited", "description": "PAYMENT METHOD changed"});
        assert_eq!(audience(by_description), Some(vec!["billing:admin".to_owned()]), "the longest prefix answers");
        assert_eq!(audience(json!({"activity_type": "edited", "resource": {"type": "application"}, "description": "Paymen"})), None);
        let e = r.explain(&json!({"activity_type": "deleted", "resource": {"type": "firewall", "id": 1}}));
        assert_eq!(serde_json::to_value(&e).unwrap()["audience"], json!(["edge_firewall:read", "role:admin"]));
        assert!(serde_json::to_value(r.explain(&json!({"activity_type": "created"}))).unwrap().get("audience").is_none());
        assert!(!r.mapping().to_json_pretty().contains("audience"), "clients never see audience rules");
    }

    #[test]
    fn explanation_names_the_entry() {
        let r = resolver("[resources.\"dns zone\"]\naliases = [\"edge dns\"]\nlist = [\"edge-dns\"]\n");
        let e = r.explain(&json!({"activity_type": "created", "resource": {"type": "Edge_DNS"}}));
        assert_eq!(e.entry.as_deref(), Some("resources.\"dns zone\""));
        assert_eq!(e.resource_type.as_deref(), Some("edge dns"));
        let e = r.explain(&json!({"activity_type": "deleted", "resource": {"type": "Mystery Box"}}));
        assert_eq!(
            (e.resolution.tier, e.entry.as_deref(), e.resource_type.as_deref()),
            (None, None, Some("mystery box"))
        );
        let shown = serde_json::to_value(&e).unwrap();
        assert_eq!(shown["tier"], Value::Null);
        assert_eq!(shown["activity_type"], "deleted");
    }
}

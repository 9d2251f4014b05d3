//! Resolution: a [`Mapping`] compiled into lookup tables, and the three tiers run over them.
//!
//! Everything that can be done once is done at load: names are normalised into hash indexes,
//! templates are parsed into literal elements and id slots, prefixes are lower-cased and sorted
//! longest first. Per activity the work is a few field lookups, one normalised type per tier
//! tried, and building the output keys. Nothing here logs or fails: an unresolved activity is
//! an empty [`Resolution`] with no tier.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::load::entry_label as label;
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
}

#[derive(Debug, Clone)]
struct ResourceRule {
    name: String,
    id: IdType,
    list: Vec<Template>,
    detail: Vec<Template>,
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
        Self(key.iter().map(|e| if e.as_str() == Some(placeholder) { Slot::Id } else { Slot::Literal(e.clone()) }).collect())
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
                resource_index.insert(normalize_type(n), resources.len());
            }
            let compile = |keys: &[Key]| keys.iter().map(|k| Template::compile(k, PLACEHOLDER_ID)).collect();
            resources.push(ResourceRule { name: name.clone(), id: e.id, list: compile(&e.list), detail: compile(&e.detail) });
        }
        let mut parent_index = HashMap::new();
        let mut parents = Vec::with_capacity(mapping.parents.len());
        for (name, e) in &mapping.parents {
            for n in std::iter::once(name).chain(&e.aliases) {
                parent_index.insert(normalize_type(n), parents.len());
            }
            let keys = e.keys.iter().map(|k| Template::compile(k, PLACEHOLDER_PARENT_ID)).collect();
            parents.push(ParentRule { name: name.clone(), id: e.id, keys });
        }
        let mut sorted = mapping.clone();
        sorted.sort_descriptions();
        let descriptions = sorted.descriptions.into_iter().map(|d| (d.prefix.trim().to_lowercase(), d.keys)).collect();
        Self { generic: mapping.generic.spelling(), mapping, resource_index, resources, parent_index, parents, descriptions }
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
        normalize_type_into(t, scratch);
        if let Some(&i) = self.parent_index.get(scratch.as_str()) {
            let rule = &self.parents[i];
            let id = id.and_then(|v| rule.id.convert(v));
            let keys: Vec<Key> = rule.keys.iter().filter_map(|k| k.build(id.as_deref())).collect();
            return (!keys.is_empty()).then_some((keys, Answer::Parent(&rule.name)));
        }
        let spelling = self.generic?;
        Some((vec![vec![Value::String(spell(spelling, t, scratch)), id?.clone()]], Answer::Generic))
    }

    fn resource_tier(&self, activity: &Value, scratch: &mut String) -> Option<(Vec<Key>, Vec<Key>, Answer<'_>)> {
        let t = resource_type_raw(activity)?;
        let kind = ActivityKind::of(activity);
        normalize_type_into(t, scratch);
        if let Some(&i) = self.resource_index.get(scratch.as_str()) {
            let rule = &self.resources[i];
            let mut invalidate: Vec<Key> = rule.list.iter().filter_map(|k| k.build(None)).collect();
            let mut remove = Vec::new();
            if kind != ActivityKind::Created && !rule.detail.is_empty() {
                let id: Option<Cow<'_, Value>> = resource_id(activity).and_then(|v| rule.id.convert(v));
                let details = rule.detail.iter().filter_map(|k| k.build(id.as_deref()));
                if kind == ActivityKind::Deleted { remove.extend(details) } else { invalidate.extend(details) }
            }
            let answered = !invalidate.is_empty() || !remove.is_empty();
            return answered.then_some((invalidate, remove, Answer::Resource(&rule.name)));
        }
        let spelling = self.generic?;
        let list = vec![Value::String(spell(spelling, t, scratch))];
        let mut invalidate = vec![list.clone()];
        let mut remove = Vec::new();
        if let Some(id) = resource_id(activity).filter(|_| kind != ActivityKind::Created) {
            let mut detail = list;
            detail.push(id.clone());
            if kind == ActivityKind::Deleted { remove.push(detail) } else { invalidate.push(detail) }
        }
        Some((invalidate, remove, Answer::Generic))
    }

    fn description_tier(&self, activity: &Value) -> Option<(Vec<Key>, Answer<'_>)> {
        let d = activity.get("description").and_then(Value::as_str).map(str::trim).filter(|d| !d.is_empty())?;
        // ASCII descriptions are compared in place; others are lower-cased once, because some
        // non-ASCII characters lower-case to ASCII (the Kelvin sign to `k`).
        let lowered: Cow<'_, str> = if d.is_ascii() { Cow::Borrowed(d) } else { Cow::Owned(d.to_lowercase()) };
        let (prefix, keys) = self.descriptions.iter().find(|(p, _)| {
            lowered.len() >= p.len() && lowered.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
        })?;
        Some((keys.clone(), Answer::Description(prefix)))
    }
}

/// The type as the generic default writes it in a key. `normalised` holds `normalize_type(t)`.
fn spell(spelling: TypeSpelling, t: &str, normalised: &str) -> String {
    match spelling {
        TypeSpelling::AsPublished => t.to_owned(),
        TypeSpelling::KebabCase => normalised.replace(' ', "-"),
    }
}

fn finish(invalidate: Vec<Key>, remove: Vec<Key>, tier: Tier) -> Resolution {
    Resolution { invalidate: dedupe_prefixes(invalidate), remove: dedupe_prefixes(remove), tier: Some(tier) }
}

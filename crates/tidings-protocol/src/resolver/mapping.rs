//! The mapping in its canonical form: what a TOML profile means once loaded and validated.
//!
//! Canonical means normalised: types are spelled by [`normalize_type`], description prefixes
//! are trimmed and lower-cased and sorted longest first, and every key set is an array of keys.
//! Its JSON serialisation is the form the browser SDK reads (see `docs/mapping.md`), so the
//! field names here are a public format. This module only describes the data; loading lives in
//! `load.rs` and resolving in the parent module.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{Key, TypeSpelling, normalize_type};

/// The mapping format this crate reads and writes.
pub const MAPPING_FORMAT: u32 = 1;

/// Placeholder for the resource id in a resource's `detail` keys.
pub const PLACEHOLDER_ID: &str = "{id}";

/// Placeholder for the parent id in a parent's `keys`.
pub const PLACEHOLDER_PARENT_ID: &str = "{parent_id}";

/// What the resolver does with a type the tables do not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GenericDefault {
    /// Unlisted types resolve to nothing in their tier, which then falls through.
    #[default]
    Off,
    /// `[type]` / `[type, id]` with the type in kebab-case (`edge-application`).
    KebabCase,
    /// `[type]` / `[type, id]` with the type exactly as published (trimmed).
    AsPublished,
}

impl GenericDefault {
    /// The spelling used for generated keys, `None` when the generic default is off.
    pub fn spelling(self) -> Option<TypeSpelling> {
        match self {
            Self::Off => None,
            Self::KebabCase => Some(TypeSpelling::KebabCase),
            Self::AsPublished => Some(TypeSpelling::AsPublished),
        }
    }
}

impl From<TypeSpelling> for GenericDefault {
    fn from(s: TypeSpelling) -> Self {
        match s {
            TypeSpelling::KebabCase => Self::KebabCase,
            TypeSpelling::AsPublished => Self::AsPublished,
        }
    }
}

/// The JSON type an id takes in a key. TanStack Query compares key elements strictly, so a
/// detail key built with `"42"` never matches a query keyed with `42`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdType {
    /// The id exactly as published: a string, number or boolean.
    #[default]
    AsPublished,
    /// A JSON number; a string of decimal digits (optionally `-`-signed) is converted.
    Number,
    /// A JSON string; a number is converted to its decimal text.
    String,
}

impl IdType {
    /// The id in this type, or `None` when it cannot be converted (the key needing it is then
    /// skipped rather than built with an id no query can have). `null`, arrays and objects are
    /// never ids.
    pub fn convert(self, id: &Value) -> Option<std::borrow::Cow<'_, Value>> {
        use std::borrow::Cow::{Borrowed, Owned};
        match (self, id) {
            (_, Value::Null | Value::Array(_) | Value::Object(_)) => None,
            (Self::AsPublished, v) => Some(Borrowed(v)),
            (Self::Number, Value::Number(_)) | (Self::String, Value::String(_)) => Some(Borrowed(id)),
            (Self::Number, Value::String(s)) => decimal_integer(s).map(Owned),
            (Self::String, Value::Number(n)) => Some(Owned(Value::String(n.to_string()))),
            (Self::Number | Self::String, _) => None,
        }
    }
}

/// `"42"` → `42`, `"-7"` → `-7`; anything else (signs other than a leading `-`, spaces,
/// fractions, overflow) → `None`.
fn decimal_integer(s: &str) -> Option<Value> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Ok(n) = s.parse::<i64>() {
        return Some(Value::from(n));
    }
    s.parse::<u64>().ok().map(Value::from)
}

/// A loaded, validated mapping in canonical form.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Mapping {
    /// Always [`MAPPING_FORMAT`].
    pub format: u32,
    /// The profile's name, when it gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Keys for types the tables do not list.
    pub generic: GenericDefault,
    /// Resource types by normalised name.
    pub resources: BTreeMap<String, ResourceEntry>,
    /// Parent types by normalised name.
    pub parents: BTreeMap<String, ParentEntry>,
    /// Description prefixes, longest first: the first that matches is the longest.
    pub descriptions: Vec<DescriptionEntry>,
    /// Rules deriving an activity's audience when its publisher sent none. For the hub alone:
    /// not part of the JSON form, because clients never see audiences.
    #[serde(skip)]
    pub audience: AudienceRules,
}

/// Who may see an activity, by the same tiers as its keys (parent, then resource type, then
/// description prefix); the first tier with a rule for the activity answers. Grants are kept
/// as written (they compare byte for byte); types and prefixes in canonical form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AudienceRules {
    /// By parent type: the entry's name when the type is one of `parents` (its aliases then
    /// share the rule), else the normalised type.
    pub parents: BTreeMap<String, Vec<String>>,
    /// By resource type, likewise for `resources`.
    pub resources: BTreeMap<String, Vec<String>>,
    /// By description prefix (trimmed, lower-cased), longest first.
    pub descriptions: Vec<(String, Vec<String>)>,
}

impl AudienceRules {
    pub fn is_empty(&self) -> bool {
        self.parents.is_empty() && self.resources.is_empty() && self.descriptions.is_empty()
    }
}

/// One resource type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourceEntry {
    /// Other names of the type, normalised and sorted.
    pub aliases: Vec<String>,
    /// The JSON type of `{id}` in `detail`.
    pub id: IdType,
    /// Invalidated on every activity of the type. No placeholders.
    pub list: Vec<Key>,
    /// The resource's own keys, with `{id}`: invalidated when it is edited, removed when it is
    /// deleted, untouched when it is created.
    pub detail: Vec<Key>,
}

/// One parent type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ParentEntry {
    /// Other names of the type, normalised and sorted.
    pub aliases: Vec<String>,
    /// The JSON type of `{parent_id}`.
    pub id: IdType,
    /// Invalidated when a resource under this parent changes; may use `{parent_id}`.
    pub keys: Vec<Key>,
}

/// One description prefix.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DescriptionEntry {
    /// Trimmed and lower-cased; matched against the trimmed, lower-cased description.
    pub prefix: String,
    /// Invalidated when this is the longest prefix that matches. No placeholders.
    pub keys: Vec<Key>,
}

impl Mapping {
    /// Empty tables with the generic default on, in the given spelling.
    pub fn generic(spelling: TypeSpelling) -> Self {
        Self { format: MAPPING_FORMAT, generic: spelling.into(), ..Self::default() }
    }

    /// The canonical JSON form (pretty, two-space indent, trailing newline), as shipped next
    /// to each profile for the browser SDK.
    pub fn to_json_pretty(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a mapping always serialises");
        text.push('\n');
        text
    }

    /// The entry that owns a type name, looking at names and aliases. Linear; for tests and
    /// tools, not for resolution.
    pub fn resource(&self, type_name: &str) -> Option<(&str, &ResourceEntry)> {
        let t = normalize_type(type_name);
        self.resources.iter().find(|(n, e)| **n == t || e.aliases.contains(&t)).map(|(n, e)| (n.as_str(), e))
    }

    /// Sorts descriptions longest first (ties alphabetically), the canonical order; audience
    /// prefixes too.
    pub(super) fn sort_descriptions(&mut self) {
        let longest_first = |a: &str, b: &str| b.chars().count().cmp(&a.chars().count()).then_with(|| a.cmp(b));
        self.descriptions.sort_by(|a, b| longest_first(&a.prefix, &b.prefix));
        self.audience.descriptions.sort_by(|a, b| longest_first(&a.0, &b.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn id_conversion() {
        let n = |v: Value| IdType::Number.convert(&v).map(|c| c.into_owned());
        let s = |v: Value| IdType::String.convert(&v).map(|c| c.into_owned());
        assert_eq!(n(json!("42")), Some(json!(42)));
        assert_eq!(n(json!("-7")), Some(json!(-7)));
        assert_eq!(n(json!("18446744073709551615")), Some(json!(18446744073709551615u64)));
        assert_eq!(n(json!(42)), Some(json!(42)));
        for bad in
            [json!("4a"), json!(""), json!("-"), json!("+4"), json!(" 4"), json!("1.5"), json!(true), json!(null)]
        {
            assert_eq!(n(bad.clone()), None, "{bad}");
        }
        assert_eq!(s(json!(42)), Some(json!("42")));
        assert_eq!(s(json!("x")), Some(json!("x")));
        assert_eq!(s(json!({"a": 1})), None);
        assert_eq!(IdType::AsPublished.convert(&json!("42")).map(|c| c.into_owned()), Some(json!("42")));
        assert_eq!(IdType::AsPublished.convert(&json!([42])), None);
    }
}

//! Loading a TOML profile into a canonical [`Mapping`], validating every entry.
//!
//! Errors name the source, the line and column, and the entry (`resources."dns zone".detail`),
//! so a wrong profile is fixed from the message alone. Validation is all-or-nothing: the first
//! problem found is returned and no partial mapping escapes. This module does not read files;
//! the caller passes the text and a name for it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::mapping::{
    AudienceRules, DescriptionEntry, GenericDefault, IdType, MAPPING_FORMAT, Mapping, PLACEHOLDER_ID, PLACEHOLDER_PARENT_ID,
    ParentEntry, ResourceEntry,
};
use super::{Key, normalize_type};
use crate::audience::{AUDIENCE_GRANTS_MAX, check_grant};

/// Every placeholder the format knows, whatever the table.
const PLACEHOLDERS_KNOWN: [&str; 2] = [PLACEHOLDER_ID, PLACEHOLDER_PARENT_ID];

/// What is wrong with a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MappingErrorKind {
    /// Not valid TOML, or a field of the wrong type, or a field the format does not have.
    Syntax,
    /// `format` is not a version this crate reads.
    UnsupportedFormat,
    /// A key set is not an array of keys (or one key), or mixes keys with key elements.
    NotAKeyList,
    /// A key with no elements, or a key set with no keys.
    EmptyKey,
    /// A key element that is not a string, number or boolean, or a string with a stray brace.
    BadKeyElement,
    /// A `{…}` placeholder the format does not know.
    UnknownPlaceholder,
    /// A known placeholder where its value is not available (for example `{id}` in a list key).
    PlaceholderNotAllowed,
    /// A type name or alias that is empty once normalised.
    EmptyType,
    /// Two names (or aliases) that are one type once normalised.
    DuplicateType,
    /// A description prefix that is empty once trimmed.
    EmptyPrefix,
    /// Two description prefixes that differ only in case or surrounding space.
    DuplicatePrefix,
    /// A resource entry with neither `list` nor `detail`.
    NoKeys,
    /// An audience rule that is not an array of 1 to 64 valid grants.
    BadAudience,
}

/// A profile that cannot be loaded, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MappingError {
    pub kind: MappingErrorKind,
    /// The name the caller gave the text, usually its path.
    pub source_name: String,
    /// 1-based line of the offending entry or value.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The entry in dotted form (`parents."edge application".keys`), empty for the document.
    pub entry: String,
    pub message: String,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.source_name, self.line, self.column)?;
        if !self.entry.is_empty() {
            write!(f, "{}: ", self.entry)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    format: Option<Spanned<i64>>,
    name: Option<String>,
    #[serde(default)]
    generic: GenericDefault,
    #[serde(default)]
    resources: BTreeMap<Spanned<String>, RawResource>,
    #[serde(default)]
    parents: BTreeMap<Spanned<String>, RawParent>,
    #[serde(default)]
    descriptions: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    audience: RawAudience,
}

/// `[audience.parents]`, `[audience.resources]`, `[audience.descriptions]`: name → grants.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    #[serde(default)]
    parents: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    resources: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    descriptions: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    #[serde(default)]
    aliases: Vec<Spanned<String>>,
    #[serde(default)]
    id: IdType,
    list: Option<Spanned<toml::Value>>,
    detail: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParent {
    #[serde(default)]
    aliases: Vec<Spanned<String>>,
    #[serde(default)]
    id: IdType,
    keys: Spanned<toml::Value>,
}

impl Mapping {
    /// Parses and validates a TOML profile. `source_name` (usually the file's path) is only
    /// used in error messages.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Self, MappingError> {
        let cx = Cx { text, source_name };
        let raw: RawDoc = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            cx.error(MappingErrorKind::Syntax, &span, String::new(), e.message().trim_end().to_owned())
        })?;
        if let Some(f) = &raw.format {
            if *f.get_ref() != i64::from(MAPPING_FORMAT) {
                let msg =
                    format!("format {} is not supported (this version reads format {MAPPING_FORMAT})", f.get_ref());
                return Err(cx.error(MappingErrorKind::UnsupportedFormat, &f.span(), "format".into(), msg));
            }
        }
        let mut mapping =
            Mapping { format: MAPPING_FORMAT, name: raw.name, generic: raw.generic, ..Mapping::default() };

        let mut owners = Owners::default();
        for (name, r) in raw.resources {
            let label = entry_label("resources", name.get_ref());
            let (canonical, aliases) = owners.claim(&cx, &name, &r.aliases, &label)?;
            let list = match &r.list {
                Some(v) => cx.key_set(v, &[], &format!("{label}.list"))?,
                None => Vec::new(),
            };
            let detail = match &r.detail {
                Some(v) => cx.key_set(v, &[PLACEHOLDER_ID], &format!("{label}.detail"))?,
                None => Vec::new(),
            };
            if list.is_empty() && detail.is_empty() {
                let msg = "a resource needs `list` or `detail` keys".to_owned();
                return Err(cx.error(MappingErrorKind::NoKeys, &name.span(), label, msg));
            }
            mapping.resources.insert(canonical, ResourceEntry { aliases, id: r.id, list, detail });
        }

        let mut owners = Owners::default();
        for (name, p) in raw.parents {
            let label = entry_label("parents", name.get_ref());
            let (canonical, aliases) = owners.claim(&cx, &name, &p.aliases, &label)?;
            let keys = cx.key_set(&p.keys, &[PLACEHOLDER_PARENT_ID], &format!("{label}.keys"))?;
            mapping.parents.insert(canonical, ParentEntry { aliases, id: p.id, keys });
        }

        let mut seen: HashMap<String, String> = HashMap::new();
        for (prefix, keys) in raw.descriptions {
            let label = entry_label("descriptions", prefix.get_ref());
            let canonical = prefix.get_ref().trim().to_lowercase();
            if canonical.is_empty() {
                let msg = "a description prefix must not be empty".to_owned();
                return Err(cx.error(MappingErrorKind::EmptyPrefix, &prefix.span(), label, msg));
            }
            if let Some(first) = seen.insert(canonical.clone(), label.clone()) {
                let msg =
                    format!("prefix `{canonical}` is already given by {first} (prefixes match case-insensitively)");
                return Err(cx.error(MappingErrorKind::DuplicatePrefix, &prefix.span(), label, msg));
            }
            let keys = cx.key_set(&keys, &[], &label)?;
            mapping.descriptions.push(DescriptionEntry { prefix: canonical, keys });
        }
        mapping.audience = cx.audience_rules(raw.audience, &mapping)?;
        mapping.sort_descriptions();
        Ok(mapping)
    }
}

/// The entry of a table that owns normalised type `t`, by name or alias.
fn owner<'a>(mut entries: impl Iterator<Item = (&'a String, &'a [String])>, t: &str) -> Option<String> {
    entries.find(|(n, aliases)| n.as_str() == t || aliases.iter().any(|a| a == t)).map(|(n, _)| n.clone())
}

impl Cx<'_> {
    /// The `[audience]` tables. A type that is a name or alias of a `resources` (or
    /// `parents`) entry is stored under the entry's name, so the rule covers every name of the
    /// type, exactly as its keys do; two rules for one type are refused.
    fn audience_rules(&self, raw: RawAudience, mapping: &Mapping) -> Result<AudienceRules, MappingError> {
        let parent_owner = |t: &str| owner(mapping.parents.iter().map(|(n, e)| (n, &e.aliases[..])), t);
        let resource_owner = |t: &str| owner(mapping.resources.iter().map(|(n, e)| (n, &e.aliases[..])), t);
        let mut rules = AudienceRules {
            parents: self.audience_by_type("audience.parents", raw.parents, parent_owner)?,
            resources: self.audience_by_type("audience.resources", raw.resources, resource_owner)?,
            descriptions: Vec::new(),
        };
        let mut seen: HashMap<String, String> = HashMap::new();
        for (prefix, grants) in raw.descriptions {
            let label = entry_label("audience.descriptions", prefix.get_ref());
            let canonical = prefix.get_ref().trim().to_lowercase();
            if canonical.is_empty() {
                let msg = "a description prefix must not be empty".to_owned();
                return Err(self.error(MappingErrorKind::EmptyPrefix, &prefix.span(), label, msg));
            }
            if let Some(first) = seen.insert(canonical.clone(), label.clone()) {
                let msg = format!("prefix `{canonical}` is already given by {first} (prefixes match case-insensitively)");
                return Err(self.error(MappingErrorKind::DuplicatePrefix, &prefix.span(), label, msg));
            }
            rules.descriptions.push((canonical, self.grant_list(&grants, &label)?));
        }
        Ok(rules)
    }

    /// One `[audience.*]` table keyed by type, each type under its entry's name when `owner`
    /// knows it.
    fn audience_by_type(
        &self,
        table: &str,
        entries: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
        owner: impl Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, Vec<String>>, MappingError> {
        let mut out = BTreeMap::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (name, grants) in entries {
            let label = entry_label(table, name.get_ref());
            let t = normalize_type(name.get_ref());
            if t.is_empty() {
                let msg = format!("type `{}` is empty once normalised", name.get_ref());
                return Err(self.error(MappingErrorKind::EmptyType, &name.span(), label, msg));
            }
            let canonical = owner(&t).unwrap_or(t);
            if let Some(first) = seen.insert(canonical.clone(), label.clone()) {
                let msg = format!("`{}` is type `{canonical}`, already given by {first}", name.get_ref());
                return Err(self.error(MappingErrorKind::DuplicateType, &name.span(), label, msg));
            }
            out.insert(canonical, self.grant_list(&grants, &label)?);
        }
        Ok(out)
    }

    /// An audience: an array of 1 to [`AUDIENCE_GRANTS_MAX`] grant strings.
    fn grant_list(&self, v: &Spanned<toml::Value>, label: &str) -> Result<Vec<String>, MappingError> {
        let fail = |msg: String| self.error(MappingErrorKind::BadAudience, &v.span(), label.to_owned(), msg);
        let shape = || format!("expected an array of 1 to {AUDIENCE_GRANTS_MAX} grant strings, such as [\"billing:read\"]");
        let toml::Value::Array(items) = v.get_ref() else { return Err(fail(shape())) };
        if items.is_empty() || items.len() > AUDIENCE_GRANTS_MAX {
            return Err(fail(shape()));
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let g = item.as_str().ok_or_else(|| fail(format!("grants are strings, found {}", item.type_str())))?;
            check_grant(g).map_err(|e| fail(e.to_string()))?;
            out.push(g.to_owned());
        }
        Ok(out)
    }
}

/// Which entry owns each normalised type name, within one table.
#[derive(Default)]
struct Owners(HashMap<String, String>);

impl Owners {
    /// Normalises an entry's name and aliases and claims them all for the entry.
    fn claim(
        &mut self,
        cx: &Cx<'_>,
        name: &Spanned<String>,
        aliases: &[Spanned<String>],
        label: &str,
    ) -> Result<(String, Vec<String>), MappingError> {
        let canonical = self.claim_one(cx, name, label)?;
        let mut normalised = Vec::with_capacity(aliases.len());
        for alias in aliases {
            normalised.push(self.claim_one(cx, alias, &format!("{label}.aliases"))?);
        }
        normalised.sort();
        Ok((canonical, normalised))
    }

    fn claim_one(&mut self, cx: &Cx<'_>, name: &Spanned<String>, label: &str) -> Result<String, MappingError> {
        let t = normalize_type(name.get_ref());
        if t.is_empty() {
            let msg = format!("type `{}` is empty once normalised", name.get_ref());
            return Err(cx.error(MappingErrorKind::EmptyType, &name.span(), label.to_owned(), msg));
        }
        if let Some(first) = self.0.get(&t) {
            let msg = format!("`{}` is type `{t}`, already given by {first}", name.get_ref());
            return Err(cx.error(MappingErrorKind::DuplicateType, &name.span(), label.to_owned(), msg));
        }
        self.0.insert(t.clone(), label.to_owned());
        Ok(t)
    }
}

/// The text being loaded, for turning spans into lines.
struct Cx<'a> {
    text: &'a str,
    source_name: &'a str,
}

impl Cx<'_> {
    fn error(&self, kind: MappingErrorKind, span: &Range<usize>, entry: String, message: String) -> MappingError {
        let start = span.start.min(self.text.len());
        let before = self.text.get(..start).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        MappingError { kind, source_name: self.source_name.to_owned(), line, column, entry, message }
    }

    /// One key (`["a", "{id}"]`) or an array of keys (`[["a"], ["b"]]`), as a list of keys.
    fn key_set(&self, v: &Spanned<toml::Value>, allowed: &[&str], label: &str) -> Result<Vec<Key>, MappingError> {
        let fail = |kind, msg: String| self.error(kind, &v.span(), label.to_owned(), msg);
        let toml::Value::Array(items) = v.get_ref() else {
            let msg = format!(
                "expected a key (an array such as [\"name\", \"{{id}}\"]) or an array of keys, found {}",
                v.get_ref().type_str()
            );
            return Err(fail(MappingErrorKind::NotAKeyList, msg));
        };
        if items.is_empty() {
            return Err(fail(MappingErrorKind::EmptyKey, "a key must have at least one element".into()));
        }
        let nested = items.iter().filter(|i| i.is_array()).count();
        let keys: Vec<&Vec<toml::Value>> = if nested == 0 {
            vec![items]
        } else if nested == items.len() {
            items.iter().filter_map(toml::Value::as_array).collect()
        } else {
            let msg = "mixes keys and key elements: write one key [\"a\", \"b\"] or several [[\"a\"], [\"b\"]]".into();
            return Err(fail(MappingErrorKind::NotAKeyList, msg));
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if key.is_empty() {
                return Err(fail(MappingErrorKind::EmptyKey, "a key must have at least one element".into()));
            }
            let elements = key.iter().map(|e| element(e, allowed)).collect::<Result<Key, _>>();
            out.push(elements.map_err(|(kind, msg)| fail(kind, msg))?);
        }
        Ok(out)
    }
}

/// One key element: a scalar, or a string that is exactly one allowed placeholder.
fn element(e: &toml::Value, allowed: &[&str]) -> Result<Value, (MappingErrorKind, String)> {
    match e {
        toml::Value::String(s) => {
            let is_placeholder =
                s.starts_with('{') && s.ends_with('}') && s[1..s.len() - 1].chars().all(|c| c != '{' && c != '}');
            if is_placeholder {
                if !PLACEHOLDERS_KNOWN.contains(&s.as_str()) {
                    return Err((
                        MappingErrorKind::UnknownPlaceholder,
                        format!("unknown placeholder `{s}` (known: `{{id}}`, `{{parent_id}}`)"),
                    ));
                }
                if !allowed.contains(&s.as_str()) {
                    let hint = match allowed.first() {
                        Some(p) => format!("only `{p}` is available here"),
                        None => "no placeholder is available here".to_owned(),
                    };
                    return Err((
                        MappingErrorKind::PlaceholderNotAllowed,
                        format!("`{s}` cannot be used here: {hint}"),
                    ));
                }
            } else if s.contains(['{', '}']) {
                return Err((
                    MappingErrorKind::BadKeyElement,
                    format!("`{s}`: braces are reserved for a whole-element placeholder such as \"{{id}}\""),
                ));
            }
            Ok(Value::String(s.clone()))
        }
        toml::Value::Integer(i) => Ok(Value::from(*i)),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or((MappingErrorKind::BadKeyElement, format!("{f} is not a JSON number"))),
        toml::Value::Boolean(b) => Ok(Value::Bool(*b)),
        other => Err((
            MappingErrorKind::BadKeyElement,
            format!("key elements are strings, numbers or booleans, found {}", other.type_str()),
        )),
    }
}

/// `resources.application` or `resources."dns zone"`, as the entry is written in TOML.
pub(super) fn entry_label(table: &str, name: &str) -> String {
    let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { format!("{table}.{name}") } else { format!("{table}.{name:?}") }
}

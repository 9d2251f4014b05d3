//! The mapping entry to add for an activity that no tier resolved, as TOML ready to paste into
//! a mapping file (see `docs/mapping.md`).
//!
//! The hub cannot know which query keys a console uses for a type it has never seen; the
//! entry uses the generic default's keys (`[type]`, `[type, id]` in kebab-case) as a starting
//! point, and says so. What is suggested follows the tiers: a resource entry when the activity
//! names a resource type, else a parent entry when it names a parent, else a description
//! prefix. An entry that would clash with one the mapping already has is not suggested as a
//! table: the suggestion then says what to add to the existing entry. Pure: no I/O.

use serde::Serialize;
use serde_json::Value;

use super::mapping::{Mapping, PLACEHOLDER_ID, PLACEHOLDER_PARENT_ID};
use super::{ActivityKind, normalize_type, parent_parts, resource_id, resource_type_raw};

/// Words of a description taken as its suggested prefix.
const DESCRIPTION_PREFIX_WORDS: usize = 2;

/// A suggested mapping entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    /// TOML to paste into the mapping file.
    pub toml: String,
    /// What to check or where the lines go, when pasting them as they are is not the whole
    /// story.
    pub note: String,
}

/// The entry that would resolve `activity` with `mapping`, or `None` when the activity names
/// neither a type nor a description (nothing in it could select an entry).
pub fn suggest_entry(mapping: &Mapping, activity: &Value) -> Option<Suggestion> {
    if let Some(t) = resource_type_raw(activity) {
        return Some(resource(mapping, activity, t));
    }
    if let Some((t, id)) = parent_parts(activity) {
        return Some(parent(mapping, t, id));
    }
    let description = activity.get("description").and_then(Value::as_str).map(str::trim).filter(|d| !d.is_empty())?;
    Some(self::description(mapping, description))
}

fn resource(mapping: &Mapping, activity: &Value, t: &str) -> Suggestion {
    let name = normalize_type(t);
    let key = key_literal(&name);
    let kind = ActivityKind::of(activity);
    if let Some(existing) = find(mapping.resources.iter().map(|(n, e)| (n, &e.aliases)), &name) {
        return Suggestion {
            toml: format!("list = [{}]\n", quote(&key)),
            note: format!(
                "resources.{} exists but gives no key for this {} activity (its detail keys need an id, and a created resource has none to refetch): add a list key to that entry",
                quote(existing),
                kind_name(kind)
            ),
        };
    }
    let id = resource_id(activity);
    let mut toml = format!("[resources.{}]\nlist = [{}]\n", quote(&name), quote(&key));
    if let Some(id) = id.filter(|id| id_type(id).is_some()) {
        toml += &format!("detail = [{}, {}]\nid = {}\n", quote(&key), quote(PLACEHOLDER_ID), quote(id_type(id).expect("checked")));
    }
    Suggestion { toml, note: generic_note() }
}

fn parent(mapping: &Mapping, t: &str, id: Option<&Value>) -> Suggestion {
    let name = normalize_type(t);
    let key = key_literal(&name);
    if let Some(existing) = find(mapping.parents.iter().map(|(n, e)| (n, &e.aliases)), &name) {
        return Suggestion {
            toml: format!("keys = [{}]\n", quote(&key)),
            note: format!(
                "parents.{} exists but gives no key here (its keys need a parent id, and this activity's parent has none): add a key without {PLACEHOLDER_PARENT_ID} to that entry",
                quote(existing)
            ),
        };
    }
    let mut toml = format!("[parents.{}]\n", quote(&name));
    match id.and_then(id_type) {
        Some(id_type) => toml += &format!("keys = [{}, {}]\nid = {}\n", quote(&key), quote(PLACEHOLDER_PARENT_ID), quote(id_type)),
        None => toml += &format!("keys = [{}]\n", quote(&key)),
    }
    Suggestion { toml, note: generic_note() }
}

fn description(mapping: &Mapping, description: &str) -> Suggestion {
    let prefix = leading_words(description, DESCRIPTION_PREFIX_WORDS).to_lowercase();
    let line = format!("{} = [{}]\n", quote(&prefix), quote(&key_literal(&normalize_type(&prefix))));
    let (toml, note) = if mapping.descriptions.is_empty() {
        (format!("[descriptions]\n{line}"), String::new())
    } else {
        (line, "add this line to the mapping's [descriptions] table; ".into())
    };
    Suggestion {
        toml,
        note: format!("{note}the activity names no resource or parent type, so only its description can select keys; a publisher that sends resource.type is better"),
    }
}

/// The first `n` words of `text`, with the spacing between them as it is (the description tier
/// matches text, not words).
fn leading_words(text: &str, n: usize) -> &str {
    let mut words = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                words += 1;
                if words == n {
                    return &text[..i];
                }
            }
            in_word = false;
        } else {
            in_word = true;
        }
    }
    text
}

/// The name of the entry (by its table name) that `name` already is, as a name or an alias.
fn find<'a>(mut entries: impl Iterator<Item = (&'a String, &'a Vec<String>)>, name: &str) -> Option<&'a String> {
    entries.find(|(n, aliases)| *n == name || aliases.iter().any(|a| a == name)).map(|(n, _)| n)
}

/// The `id` type (see `IdType`) that keeps an id as it was published: numbers stay numbers,
/// strings strings; anything else is no id.
fn id_type(id: &Value) -> Option<&'static str> {
    match id {
        Value::Number(_) => Some("number"),
        Value::String(_) => Some("string"),
        _ => None,
    }
}

/// The key element for a type: kebab-case like the generic default, without braces (a key
/// element containing one is refused as a misspelt placeholder).
fn key_literal(normalised: &str) -> String {
    let key: String = normalised.replace(' ', "-").chars().filter(|c| !matches!(c, '{' | '}')).collect();
    if key.is_empty() { "resource".to_owned() } else { key }
}

/// A TOML basic string, escaped (also valid as a quoted key).
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn kind_name(kind: ActivityKind) -> &'static str {
    match kind {
        ActivityKind::Created => "created",
        ActivityKind::Edited => "edited",
        ActivityKind::Deleted => "deleted",
    }
}

fn generic_note() -> String {
    "the keys are the generic default's: replace them with the query keys your console uses for this type".into()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resolver::Resolver;

    /// Each suggestion, pasted into an otherwise empty mapping (or appended to the one given),
    /// loads and resolves the activity it was made for.
    #[test]
    fn pasted_suggestions_resolve_their_activity() {
        let activities = [
            json!({"activity_type": "created", "resource": {"type": "Mystery Box", "id": 7}}),
            json!({"activity_type": "deleted", "resource": {"type": "mystery_box"}, "metadata": {"id": "mb-7"}}),
            json!({"activity_type": "edited", "resource": {"type": "Odd \"quoted\" {braced} \\ type ü"}, "metadata": {"id": 3}}),
            json!({"activity_type": "edited", "resource": {"type": "{}"}}),
            json!({"activity_type": "edited", "parent": {"type": "Edge Cluster", "id": 12}}),
            json!({"activity_type": "edited", "parent": {"type": "Edge Cluster"}}),
            json!({"activity_type": "edited", "description": "Strange   thing #4 happened"}),
        ];
        for activity in activities {
            let empty = Resolver::from_toml_str("", "empty.toml").unwrap();
            assert_eq!(empty.resolve(&activity).tier, None, "{activity}");
            let s = suggest_entry(empty.mapping(), &activity).expect("a suggestion");
            let pasted = Resolver::from_toml_str(&s.toml, "pasted.toml").unwrap_or_else(|e| panic!("{activity}: {e}\n{}", s.toml));
            let r = pasted.resolve(&activity);
            assert!(r.tier.is_some() && !(r.invalidate.is_empty() && r.remove.is_empty()), "{activity}: {}\n{r:?}", s.toml);
        }
    }

    #[test]
    fn a_resource_entry_with_its_id_type() {
        let empty = Mapping::default();
        let s = suggest_entry(&empty, &json!({"activity_type": "edited", "resource": {"type": "Edge Function", "id": 42}})).unwrap();
        assert_eq!(s.toml, "[resources.\"edge function\"]\nlist = [\"edge-function\"]\ndetail = [\"edge-function\", \"{id}\"]\nid = \"number\"\n");
        assert!(s.note.contains("generic default"));
    }

    #[test]
    fn an_existing_entry_is_extended_not_repeated() {
        let r = Resolver::from_toml_str("[resources.box]\naliases = [\"crate\"]\ndetail = [\"boxes\", \"{id}\"]\n[descriptions]\n\"x\" = [\"x\"]\n", "m.toml").unwrap();
        let created = json!({"activity_type": "created", "resource": {"type": "Crate", "id": 1}});
        assert_eq!(r.resolve(&created).tier, None);
        let s = suggest_entry(r.mapping(), &created).unwrap();
        assert_eq!(s.toml, "list = [\"crate\"]\n");
        assert!(s.note.contains("resources.\"box\" exists") && s.note.contains("created"), "{}", s.note);
        let described = suggest_entry(r.mapping(), &json!({"description": "Something else"})).unwrap();
        assert_eq!(described.toml, "\"something else\" = [\"something-else\"]\n");
        assert!(described.note.starts_with("add this line to the mapping's [descriptions] table"));
    }

    #[test]
    fn nothing_to_go_on_is_no_suggestion() {
        assert_eq!(suggest_entry(&Mapping::default(), &json!({"activity_type": "edited"})), None);
        assert_eq!(suggest_entry(&Mapping::default(), &json!({"resource": {"type": "-"}, "description": " "})), None);
    }
}

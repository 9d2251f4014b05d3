//! Every shipped profile loads, and its canonical JSON (read by the browser SDK) is current.
//!
//! After editing a profile, regenerate the JSON files with
//! `UPDATE_FIXTURES=1 cargo test -p tidings-protocol --test profiles`.

use std::path::{Path, PathBuf};

use tidings_protocol::resolver::{Mapping, Resolver, TypeSpelling};

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")
}

fn load(name: &str) -> Mapping {
    let path = profiles_dir().join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Mapping::from_toml_str(&text, &format!("profiles/{name}.toml")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn json_forms_are_current() {
    let update = std::env::var_os("UPDATE_FIXTURES").is_some();
    let mut stale = Vec::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(profiles_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let json = load(&name).to_json_pretty();
        let json_path = path.with_extension("json");
        if update {
            std::fs::write(&json_path, &json).unwrap();
        } else if std::fs::read_to_string(&json_path).ok().as_deref() != Some(json.as_str()) {
            stale.push(json_path.display().to_string());
        }
    }
    assert!(seen >= 3, "expected the shipped profiles in {}", profiles_dir().display());
    assert!(
        stale.is_empty(),
        "out of date with their TOML: {stale:?}\nregenerate with: UPDATE_FIXTURES=1 cargo test -p tidings-protocol --test profiles"
    );
}

#[test]
fn generic_profiles_are_the_generic_resolver() {
    for (name, spelling) in
        [("generic-kebab", TypeSpelling::KebabCase), ("generic-as-published", TypeSpelling::AsPublished)]
    {
        let mut loaded = load(name);
        loaded.name = None;
        assert_eq!(&loaded, Resolver::generic(spelling).mapping(), "{name}");
    }
}

#[test]
fn azion_console_has_the_original_table() {
    let m = load("azion-console");
    let original: serde_json::Value =
        serde_json::from_str(include_str!("../../../fixtures/original/azion-query-key-map.json")).unwrap();
    let count = |table: &str| original[table].as_object().map_or(0, |o| o.len());
    assert_eq!((count("resource_types"), count("parent_types")), (36, 32));
    for name in original["resource_types"].as_object().unwrap().keys() {
        assert!(m.resource(name).is_some(), "resource type {name:?} is missing");
    }
    let parents = original["parent_types"].as_object().unwrap();
    for name in parents.keys() {
        let t = tidings_protocol::resolver::normalize_type(name);
        let found = m.parents.iter().any(|(n, e)| *n == t || e.aliases.contains(&t));
        assert!(found, "parent type {name:?} is missing");
    }
    for entry in original["description_prefixes"].as_array().unwrap() {
        let prefix = entry["prefix"].as_str().unwrap().to_lowercase();
        assert!(m.descriptions.iter().any(|d| d.prefix == prefix), "description prefix {prefix:?} is missing");
    }
}

/// The example in docs/mapping.md loads, and every entry its JSON example shows is what the
/// TOML example loads to.
#[test]
fn documented_example_is_true() {
    let doc = include_str!("../../../docs/mapping.md");
    let block = |fence: &str| {
        let start = doc.find(fence).unwrap() + fence.len();
        &doc[start..start + doc[start..].find("```").unwrap()]
    };
    let loaded = Mapping::from_toml_str(block("```toml\n"), "docs/mapping.md").unwrap_or_else(|e| panic!("{e}"));
    let loaded: serde_json::Value = serde_json::from_str(&loaded.to_json_pretty()).unwrap();
    let shown: serde_json::Value = serde_json::from_str(block("```json\n")).unwrap();
    for field in ["format", "name", "generic"] {
        assert_eq!(shown[field], loaded[field], "{field}");
    }
    for table in ["resources", "parents"] {
        for (name, entry) in shown[table].as_object().unwrap() {
            assert_eq!(entry, &loaded[table][name], "{table}.{name}");
        }
    }
    for d in shown["descriptions"].as_array().unwrap() {
        assert!(loaded["descriptions"].as_array().unwrap().contains(d), "{d}");
    }
}

//! Runs the shared resolver vectors in `fixtures/resolve/` (the TypeScript SDK runs the same
//! files). Every failing case is reported by name; see `fixtures/README.md` for the format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use tidings_protocol::resolver::Resolver;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
    profile: String,
    activity: Value,
    expected: Value,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Resolves one case with its profile; `Err` describes the difference.
fn check(case: &Case, resolvers: &mut HashMap<String, Resolver>) -> Result<(), String> {
    if !resolvers.contains_key(&case.profile) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles").join(format!("{}.toml", case.profile));
        let text = std::fs::read_to_string(&path).map_err(|e| format!("profile {}: {e}", path.display()))?;
        let resolver = Resolver::from_toml_str(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
        resolvers.insert(case.profile.clone(), resolver);
    }
    let actual = serde_json::to_value(resolvers[&case.profile].resolve(&case.activity)).unwrap();
    if actual == case.expected {
        Ok(())
    } else {
        Err(format!("expected {}\n       actual   {}", case.expected, actual))
    }
}

#[test]
fn resolve_vectors() {
    let dir = repo_root().join("fixtures/resolve");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut resolvers = HashMap::new();
    let (mut passed, mut failures) = (0, Vec::new());
    let mut names = HashMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let cases: Vec<Case> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
        for case in cases {
            if let Some(other) = names.insert(case.name.clone(), file_name.clone()) {
                failures.push(format!("{file_name}: {}: name also used in {other}", case.name));
            }
            match check(&case, &mut resolvers) {
                Ok(()) => passed += 1,
                Err(why) => failures.push(format!("{file_name}: {}:\n       {why}", case.name)),
            }
        }
    }
    assert!(passed + failures.len() > 100, "expected the shared vectors in {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        passed + failures.len(),
        failures.join("\n")
    );
}

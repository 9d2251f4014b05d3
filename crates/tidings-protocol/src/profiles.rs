//! Mapping profiles shipped with Tidings, compiled into the binary so `profile = "…"` works
//! on a machine that has only the binary.

/// `(name, TOML text)` of every shipped profile.
pub const BUILTIN: [(&str, &str); 3] = [
    ("azion-console", include_str!("../profiles/azion-console.toml")),
    ("generic-kebab", include_str!("../profiles/generic-kebab.toml")),
    ("generic-as-published", include_str!("../profiles/generic-as-published.toml")),
];

/// The TOML text of a shipped profile.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_builtin_profile_loads() {
        for (name, text) in super::BUILTIN {
            let r = crate::resolver::Resolver::from_toml_str(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            // Who may see what is each deployment's own decision: no shipped profile makes it.
            assert!(r.mapping().audience.is_empty(), "{name} ships audience rules");
        }
    }
}

//! The mapping loader on arbitrary text: never panics; a mapping that loads serialises to
//! JSON and resolves a few activities without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_protocol::resolver::{Mapping, Resolver};

fuzz_target!(|text: &str| {
    if let Ok(mapping) = Mapping::from_toml_str(text, "fuzz.toml") {
        let _ = mapping.to_json_pretty();
        let resolver = Resolver::from_mapping(mapping);
        for a in [
            r#"{"activity_type":"created","resource":{"type":"edge application","id":1}}"#,
            r#"{"activity_type":"deleted","resource":{"type":"x","parent":{"type":"y","id":"2"}},"description":"Rule Engine was deleted"}"#,
        ] {
            let _ = resolver.resolve(&serde_json::from_str(a).unwrap());
        }
    }
});

//! A wrong profile is refused on load with the file, line and entry that are wrong.

use tidings_protocol::resolver::{Mapping, MappingErrorKind};

/// Loads `text` as `bad.toml` and checks the error's kind, line and message.
fn check(text: &str, kind: MappingErrorKind, line: usize, message_has: &str) {
    let err = Mapping::from_toml_str(text, "bad.toml").expect_err(text);
    let shown = err.to_string();
    assert_eq!((err.kind, err.line), (kind, line), "{shown}");
    assert!(shown.starts_with(&format!("bad.toml:{line}:")), "{shown}");
    assert!(shown.contains(message_has), "{shown:?} lacks {message_has:?}");
}

#[test]
fn refused_profiles() {
    use MappingErrorKind::*;
    check("format = 2\n", UnsupportedFormat, 1, "format 2 is not supported");
    check("[resources.a]\nlist = [\"a\"\n", Syntax, 3, "invalid array");
    check("[resources.a]\nlists = [\"a\"]\n", Syntax, 2, "lists");
    check("generic = \"camel\"\n", Syntax, 1, "camel");
    check("[resources.a]\nid = \"uuid\"\nlist = [\"a\"]\n", Syntax, 2, "uuid");
    check("\n[resources.a]\nlist = \"a\"\n", NotAKeyList, 3, "resources.a.list: expected a key");
    check("[resources.a]\nlist = [\"a\", [\"b\"]]\n", NotAKeyList, 2, "mixes keys");
    check("[resources.a]\nlist = []\n", EmptyKey, 2, "at least one element");
    check("[resources.a]\nlist = [[\"a\"], []]\n", EmptyKey, 2, "at least one element");
    check("[resources.a]\nlist = [\"a\", { b = 1 }]\n", BadKeyElement, 2, "found table");
    check("[resources.a]\nlist = [\"a-{x\"]\n", BadKeyElement, 2, "braces are reserved");
    check(
        "[resources.a]\ndetail = [\"a\", \"{ids}\"]\n",
        UnknownPlaceholder,
        2,
        "resources.a.detail: unknown placeholder `{ids}`",
    );
    check("[resources.a]\nlist = [\"a\", \"{id}\"]\n", PlaceholderNotAllowed, 2, "no placeholder is available here");
    check("[resources.a]\ndetail = [\"a\", \"{parent_id}\"]\n", PlaceholderNotAllowed, 2, "only `{id}`");
    check("[parents.a]\nkeys = [\"a\", \"{id}\"]\n", PlaceholderNotAllowed, 2, "only `{parent_id}`");
    check("[descriptions]\n\"A\" = [\"a\", \"{id}\"]\n", PlaceholderNotAllowed, 2, "descriptions.A: `{id}`");
    check("[resources.a]\n", NoKeys, 1, "needs `list` or `detail`");
    check("[resources.\" - \"]\nlist = [\"a\"]\n", EmptyType, 1, "empty once normalised");
    check(
        "[resources.edge_application]\nlist = [\"a\"]\n\n[resources.\"Edge Application\"]\nlist = [\"b\"]\n",
        DuplicateType,
        1,
        "already given by",
    );
    check(
        "[resources.a]\nlist = [\"a\"]\n[resources.b]\naliases = [\"x\", \"A\"]\nlist = [\"b\"]\n",
        DuplicateType,
        4,
        "resources.b.aliases: `A` is type `a`, already given by resources.a",
    );
    check(
        "[parents.a]\nkeys = [\"a\"]\n[parents.b]\naliases = [\"a\"]\nkeys = [\"b\"]\n",
        DuplicateType,
        4,
        "parents.a",
    );
    check("[descriptions]\n\"  \" = [\"a\"]\n", EmptyPrefix, 2, "must not be empty");
    check("[descriptions]\n\"Team\" = [\"a\"]\n\"team \" = [\"b\"]\n", DuplicatePrefix, 3, "already given by");
}

#[test]
fn accepted_profile_is_canonical() {
    let text = r#"
        name = "t"
        [resources."Edge-Application"]
        aliases = ["App", "edge_app"]
        id = "string"
        list = ["apps"]
        detail = [["apps", "{id}"], ["apps", "{id}", "rules"]]
        [parents.x]
        keys = [1, 2.5, true, "{parent_id}"]
        [descriptions]
        "  Long Prefix " = ["l"]
        "Long" = ["s"]
    "#;
    let m = Mapping::from_toml_str(text, "ok.toml").unwrap();
    let json: serde_json::Value = serde_json::from_str(&m.to_json_pretty()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "format": 1, "name": "t", "generic": "off",
            "resources": {"edge application": {"aliases": ["app", "edge app"], "id": "string",
                "list": [["apps"]], "detail": [["apps", "{id}"], ["apps", "{id}", "rules"]]}},
            "parents": {"x": {"aliases": [], "id": "as-published", "keys": [[1, 2.5, true, "{parent_id}"]]}},
            "descriptions": [{"prefix": "long prefix", "keys": [["l"]]}, {"prefix": "long", "keys": [["s"]]}]
        })
    );
}

#[test]
fn refused_audience_rules() {
    use MappingErrorKind::*;
    check("[audience.resources]\na = \"billing:read\"\n", BadAudience, 2, "audience.resources.a: expected an array");
    check("[audience.resources]\na = []\n", BadAudience, 2, "1 to 64 grant strings");
    check("[audience.parents]\na = [\"x\", 3]\n", BadAudience, 2, "grants are strings, found integer");
    check("[audience.descriptions]\n\"Pay\" = [\"a\\tb\"]\n", BadAudience, 2, "control characters");
    check("[audience.resources]\n\" _ \" = [\"a\"]\n", EmptyType, 2, "empty once normalised");
    check("[audience]\nusers = { a = [\"x\"] }\n", Syntax, 2, "users");
    check(
        "[resources.edge_firewall]\naliases = [\"firewall\"]\nlist = [\"f\"]\n[audience.resources]\n\"Edge Firewall\" = [\"a\"]\nfirewall = [\"b\"]\n",
        DuplicateType,
        6,
        "`firewall` is type `edge firewall`, already given by audience.resources.\"Edge Firewall\"",
    );
    check("[audience.descriptions]\n\"Pay\" = [\"a\"]\n\"pay \" = [\"b\"]\n", DuplicatePrefix, 3, "already given by");
}

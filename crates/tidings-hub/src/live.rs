//! The part of the hub that a configuration reload replaces, in one place: the configuration
//! in effect, the authenticator (static tokens and `tokens_file`, publisher keys, the admin
//! key, JWT, introspection), the resolver and its JSON form, the cookie's origin policy and the
//! CORS layer.
//!
//! [`Live::build`] does every fallible step (reading the tokens file, the mapping, a PEM key)
//! before anything is swapped, so an invalid configuration leaves the running one untouched.
//! What cannot change while the hub runs is pinned to its running value by
//! [`pin_restart_only`] and reported; [`describe_changes`] says what a reload changed in words
//! that never contain a secret. The swap itself, and closing the streams whose credential is
//! gone, is [`crate::HubState::reload`]. This module holds no lock and does no I/O beyond what
//! building a configuration reads.

use std::collections::BTreeSet;
use std::sync::Arc;

use tidings_protocol::resolver::Resolver;

use crate::auth::{AuthSummary, Authenticator};
use crate::config::{Config, ConfigError, MappingConfig};
use crate::origin::OriginPolicy;

/// Everything a reload swaps as one value: requests load it once and see one consistent
/// configuration, whatever a reload does meanwhile.
#[derive(Debug)]
pub(crate) struct Live {
    /// The configuration in effect (restart-only settings keep their values from the start).
    pub config: Config,
    pub auth: Arc<Authenticator>,
    pub resolver: Arc<Resolver>,
    /// The mapping in its JSON form, served at `GET /mapping` for browser-side resolution.
    pub mapping_json: Arc<str>,
    /// Which origins may use the session cookie (`auth.cookie_origin_check`, `cors.allowed_origins`).
    pub origin: OriginPolicy,
    /// CORS for `cors.allowed_origins`; none when no origin is listed.
    pub cors: Option<tower_http::cors::CorsLayer>,
}

impl Live {
    /// Builds the live state from a validated configuration. `previous` lends what may be kept
    /// across a reload (the introspection cache, when its settings did not change).
    pub fn build(config: Config, previous: Option<&Live>) -> Result<Self, ConfigError> {
        let admin_key = config.admin.as_ref().map(|a| a.key.as_str());
        let auth = Authenticator::reusing(&config.auth, previous.map(|p| &*p.auth))?.with_admin_key(admin_key);
        let resolver = config.mapping.resolver()?;
        let mapping_json = resolver.mapping().to_json_pretty().into();
        let origin = OriginPolicy::new(config.auth.cookie_origin_check, &config.cors.allowed_origins);
        let cors = crate::http::cors(&config.cors.allowed_origins);
        Ok(Self { auth: Arc::new(auth), resolver: Arc::new(resolver), mapping_json, origin, cors, config })
    }
}

/// Settings that only take effect at start, and why (in SECURITY.md and the README too):
/// - `listen`, `admin.listen`: the sockets are bound;
/// - `heartbeat`: open streams were told the interval in `connected` and judge silence by it;
/// - `engine`: connections, files and threads are opened at start;
/// - `history`: the engine sizes and trims its window with it (and every node of a Redis
///   cluster must trim alike).
///
/// Returns `new` with these set back to their running values, and the names of those that
/// differed (to log that they need a restart).
pub(crate) fn pin_restart_only(running: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut pinned = Vec::new();
    if new.listen != running.listen {
        new.listen = running.listen;
        pinned.push("listen");
    }
    if new.heartbeat != running.heartbeat {
        new.heartbeat = running.heartbeat;
        pinned.push("heartbeat");
    }
    if new.engine != running.engine {
        new.engine = running.engine.clone();
        pinned.push("engine");
    }
    if new.history != running.history {
        new.history = running.history.clone();
        pinned.push("history");
    }
    // The admin page may be turned off, or on where it would be served on `listen`; a listener
    // of its own is bound at start only. Moving it is not done by serving the page on `listen`
    // meanwhile: whoever gave it an internal address does not want it public.
    match (&running.admin, &mut new.admin) {
        (None, Some(admin)) if admin.listen.is_some() => {
            new.admin = None;
            pinned.push("admin.listen");
        }
        (Some(was), Some(admin)) if admin.listen != was.listen => {
            admin.listen = was.listen;
            pinned.push("admin.listen");
        }
        _ => {}
    }
    (new, pinned)
}

/// What differs between two live states, one phrase per setting, for the log. Credentials are
/// compared by digest and named by count or by their configured name, never shown.
pub(crate) fn describe_changes(old: &Live, new: &Live) -> Vec<String> {
    let mut out = Vec::new();
    describe_auth(&old.auth.summary(), &new.auth.summary(), &mut out);
    let (a, b) = (&old.config, &new.config);
    if a.auth.jwt != b.auth.jwt && old.auth.summary().jwt == new.auth.summary().jwt && b.auth.jwt.is_some() {
        out.push("auth.jwt: settings changed (same key)".into());
    }
    if a.auth.introspection != b.auth.introspection {
        out.push(match (&a.auth.introspection, &b.auth.introspection) {
            (None, Some(_)) => "auth.introspection: on".into(),
            (Some(_), None) => "auth.introspection: off".into(),
            _ => "auth.introspection: settings changed (its cache starts empty)".into(),
        });
    }
    let mut value = |name: &str, before: String, after: String| {
        if before != after {
            out.push(format!("{name}: {before} → {after}"));
        }
    };
    value("auth.cookie", a.auth.cookie.clone(), b.auth.cookie.clone());
    value("auth.query_token", a.auth.query_token.to_string(), b.auth.query_token.to_string());
    value("auth.cookie_origin_check", a.auth.cookie_origin_check.to_string(), b.auth.cookie_origin_check.to_string());
    let (la, lb) = (&a.limits, &b.limits);
    value("limits.streams_per_node", la.streams_per_node.to_string(), lb.streams_per_node.to_string());
    value("limits.streams_per_account", la.streams_per_account.to_string(), lb.streams_per_account.to_string());
    value("limits.stream_queue_frames", la.stream_queue_frames.to_string(), lb.stream_queue_frames.to_string());
    value("limits.publish_body_bytes", la.publish_body_bytes.to_string(), lb.publish_body_bytes.to_string());
    value("limits.stream_lifetime", duration(la.stream_lifetime), duration(lb.stream_lifetime));
    value("limits.shutdown_grace", duration(Some(la.shutdown_grace)), duration(Some(lb.shutdown_grace)));
    value("limits.body_timeout", duration(Some(la.body_timeout)), duration(Some(lb.body_timeout)));
    value("limits.response_write_timeout", duration(Some(la.response_write_timeout)), duration(Some(lb.response_write_timeout)));
    value("retry", duration(Some(a.retry)), duration(Some(b.retry)));
    let proxies = |c: &Config| format!("{:?}", c.trusted_proxies.iter().map(|p| p.0.to_string()).collect::<Vec<_>>());
    value("trusted_proxies", proxies(a), proxies(b));
    describe_set("cors.allowed_origins", &a.cors.allowed_origins, &b.cors.allowed_origins, &mut out);
    if old.mapping_json != new.mapping_json || a.mapping != b.mapping {
        out.push(format!("mapping: {}", describe_mapping(&b.mapping, &new.resolver)));
    }
    match (&a.admin, &b.admin) {
        (None, Some(_)) => out.push("admin: on".into()),
        (Some(_), None) => out.push("admin: off".into()),
        _ => {}
    }
    out
}

fn describe_auth(a: &AuthSummary, b: &AuthSummary, out: &mut Vec<String>) {
    let added = b.static_tokens.difference(&a.static_tokens).count();
    let removed = a.static_tokens.difference(&b.static_tokens).count();
    if added + removed > 0 {
        out.push(format!("auth.tokens: {added} added, {removed} removed or changed ({} in all)", b.static_tokens.len()));
    }
    let names = |s: &AuthSummary, other: &AuthSummary| -> BTreeSet<String> {
        s.publishers.iter().filter(|p| !other.publishers.contains(p)).map(|(_, name)| format!("{name:?}")).collect()
    };
    let (gone, new) = (names(a, b), names(b, a));
    if !gone.is_empty() || !new.is_empty() {
        let list = |s: BTreeSet<String>| if s.is_empty() { "none".to_owned() } else { s.into_iter().collect::<Vec<_>>().join(", ") };
        out.push(format!("auth.publishers: keys added {}; keys removed {}", list(new), list(gone)));
    }
    match (a.jwt, b.jwt) {
        (None, Some(_)) => out.push("auth.jwt: on".into()),
        (Some(_), None) => out.push("auth.jwt: off".into()),
        (Some(x), Some(y)) if x != y => out.push("auth.jwt: key changed".into()),
        _ => {}
    }
    match (a.admin_key, b.admin_key) {
        (Some(x), Some(y)) if x != y => out.push("admin.key: changed".into()),
        _ => {}
    }
}

fn describe_set(name: &str, a: &[String], b: &[String], out: &mut Vec<String>) {
    let (a, b): (BTreeSet<&String>, BTreeSet<&String>) = (a.iter().collect(), b.iter().collect());
    if a != b {
        let join = |s: Vec<&&String>| if s.is_empty() { "none".to_owned() } else { s.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", ") };
        out.push(format!("{name}: added {}; removed {}", join(b.difference(&a).collect()), join(a.difference(&b).collect())));
    }
}

/// Where the mapping comes from and its size.
pub(crate) fn describe_mapping(c: &MappingConfig, resolver: &Resolver) -> String {
    let m = resolver.mapping();
    let source = match (&c.file, &c.profile) {
        (Some(file), _) => format!("file {}", file.display()),
        (None, Some(profile)) => format!("profile {profile}"),
        (None, None) => "generic default".to_owned(),
    };
    format!("{source} ({} resources, {} parents, {} descriptions)", m.resources.len(), m.parents.len(), m.descriptions.len())
}

fn duration(d: Option<std::time::Duration>) -> String {
    d.map_or_else(|| "none".to_owned(), |d| humantime::format_duration(d).to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(toml: &str) -> Config {
        let c = Config::from_toml_str(toml, Path::new("hub.toml")).unwrap();
        c.validate().unwrap();
        c
    }

    const BASE: &str = r#"
[auth]
[[auth.tokens]]
token = "secret-token-alice"
account = "acme"
user = "alice"
session = "s-alice"
[[auth.tokens]]
token = "secret-token-bob"
account = "acme"
user = "bob"
session = "s-bob"
[[auth.publishers]]
key = "secret-publisher-key"
name = "billing"
[auth.jwt]
algorithm = "HS256"
secret = "secret-jwt-key-of-32-bytes-or-so"
[admin]
key = "secret-admin-key-0123456789"
"#;

    #[test]
    fn changes_are_described_without_a_secret() {
        let old = Live::build(config(BASE), None).unwrap();
        let changed = BASE
            .replace("secret-token-bob", "secret-token-bob-2")
            .replace("secret-publisher-key", "secret-publisher-key-2")
            .replace("secret-jwt-key-of-32-bytes-or-so", "secret-jwt-key-of-32-bytes-or-s2")
            .replace("secret-admin-key-0123456789", "secret-admin-key-9876543210")
            + "[limits]\npublish_body_bytes = 4096\n[cors]\nallowed_origins = [\"https://console.example\"]\n[mapping]\nprofile = \"azion-console\"\n";
        let new = Live::build(config(&changed), Some(&old)).unwrap();
        let said = describe_changes(&old, &new).join("; ");
        for expected in [
            "auth.tokens: 1 added, 1 removed or changed (2 in all)",
            "auth.publishers: keys added \"billing\"; keys removed \"billing\"",
            "auth.jwt: key changed",
            "admin.key: changed",
            "limits.publish_body_bytes: 1048576 → 4096",
            "cors.allowed_origins: added https://console.example; removed none",
            "mapping: profile azion-console (",
        ] {
            assert!(said.contains(expected), "{expected:?} not in {said}");
        }
        assert!(!said.contains("secret"), "a secret was described: {said}");
        assert!(describe_changes(&new, &Live::build(config(&changed), Some(&new)).unwrap()).is_empty());
    }

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let running = config("listen = \"127.0.0.1:8080\"\nheartbeat = \"15s\"\n[admin]\nkey = \"0123456789abcdef\"\nlisten = \"127.0.0.1:9090\"\n");
        let new = config(
            "listen = \"127.0.0.1:8081\"\nheartbeat = \"1s\"\nretry = \"5s\"\n[history]\nmax_events = 5\n[admin]\nkey = \"0123456789abcdeg\"\nlisten = \"127.0.0.1:9091\"\n",
        );
        let (effective, pinned) = pin_restart_only(&running, new);
        assert_eq!(pinned, ["listen", "heartbeat", "history", "admin.listen"]);
        assert_eq!((effective.listen, effective.heartbeat, effective.history.max_events), (running.listen, running.heartbeat, running.history.max_events));
        let admin = effective.admin.unwrap();
        assert_eq!((admin.listen, admin.key.as_str()), (running.admin.unwrap().listen, "0123456789abcdeg"), "the key changes, the listener stays");
        assert_eq!(effective.retry, std::time::Duration::from_secs(5), "what can change does");

        // Off → on with a listener of its own: stays off until a restart binds it.
        let (effective, pinned) = pin_restart_only(&Config::default(), config("[admin]\nkey = \"0123456789abcdef\"\nlisten = \"127.0.0.1:9090\"\n"));
        assert_eq!((effective.admin.is_none(), pinned), (true, vec!["admin.listen"]));
        // Off → on, sharing `listen`: on at once.
        let (effective, pinned) = pin_restart_only(&Config::default(), config("[admin]\nkey = \"0123456789abcdef\"\n"));
        assert!(effective.admin.is_some() && pinned.is_empty());
    }
}

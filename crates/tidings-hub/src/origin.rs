//! Where a cookie-authenticated request came from: the check that keeps other sites from using
//! a signed-in user's session cookie (see `docs/protocol.md`, "Credentials", and SECURITY.md).
//!
//! A browser attaches the session cookie to requests that any page makes (a `SameSite=None`
//! cookie even cross-site), so a page on another site could open a stream for the user's
//! session — which supersedes the user's real stream — without ever reading a byte of it. The
//! hub therefore asks where a cookie-authenticated request came from, as browsers state it:
//!
//! 1. `Origin`, when present, decides: the hub's own origin (its `Host`) or one of the trusted
//!    origins (`cors.allowed_origins`) passes; anything else, including `null`, is refused.
//! 2. Otherwise `Sec-Fetch-Site` decides: `same-origin`, `same-site` and `none` (the user typed
//!    the address) pass; `cross-site` is refused.
//! 3. A request with neither header passes: browsers send at least one of them on every
//!    cross-site request, so it comes from a non-browser client, which holds the cookie itself.
//!
//! Credentials in the `Authorization` header are not ambient (a page cannot read them), so this
//! check is only for the cookie. It is a pure function of the headers: no I/O, no state.

use std::collections::HashSet;

use http::{HeaderMap, StatusCode, header};

use crate::error::ApiError;

/// Longest `Origin` value considered; longer ones cannot be a real origin and are refused.
const ORIGIN_LEN_MAX: usize = 2048;

/// The trusted origins and whether the check is on.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    enabled: bool,
    /// Normalised (`scheme://host[:port]`, lower case, default port removed).
    trusted: HashSet<String>,
}

/// Why a cookie-authenticated request was refused (answered `403` `cross_site`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CrossSite {
    /// The request header that gave the request away.
    pub header: &'static str,
    pub message: String,
}

impl From<CrossSite> for ApiError {
    fn from(e: CrossSite) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "cross_site", e.message).field(e.header)
    }
}

impl OriginPolicy {
    /// `enabled` is `auth.cookie_origin_check`; `trusted` is `cors.allowed_origins` (origins
    /// that do not parse were refused by configuration validation; here they simply never match).
    pub fn new(enabled: bool, trusted: &[String]) -> Self {
        Self { enabled, trusted: trusted.iter().filter_map(|o| normalise(o)).collect() }
    }

    /// Checks a request authenticated by the session cookie. `authority` is the hub's own
    /// `host[:port]` as the request addressed it (`Host`, or the HTTP/2 `:authority`).
    pub fn check(&self, headers: &HeaderMap, authority: Option<&str>) -> Result<(), CrossSite> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let raw = origin.to_str().unwrap_or("");
            let refused = |why: &str| CrossSite {
                header: "Origin",
                message: format!("a cookie-authenticated request from {why} is refused: only this hub's own origin and cors.allowed_origins may use the session cookie"),
            };
            if raw.len() > ORIGIN_LEN_MAX {
                return Err(refused("an oversized origin"));
            }
            let Some(origin) = normalise(raw) else {
                return Err(refused(&format!("origin {:?}", raw.chars().take(100).collect::<String>())));
            };
            if self.trusted.contains(&origin) || is_own(&origin, authority) {
                return Ok(());
            }
            return Err(refused(&origin));
        }
        match headers.get("sec-fetch-site").map(|v| v.to_str().unwrap_or("")) {
            None | Some("same-origin" | "same-site" | "none") => Ok(()),
            Some(other) => Err(CrossSite {
                header: "Sec-Fetch-Site",
                message: format!(
                    "a cookie-authenticated request with Sec-Fetch-Site: {} is refused: the session cookie is not accepted from other sites",
                    other.chars().take(40).collect::<String>()
                ),
            }),
        }
    }
}

/// `scheme://host[:port]` in lower case without the scheme's default port, or `None` for
/// anything that is not a tuple origin (`null`, paths, userinfo, other schemes, empty hosts).
pub(crate) fn normalise(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest).to_ascii_lowercase();
    if rest.is_empty() || rest.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let authority = rest.strip_suffix(default_port).unwrap_or(&rest);
    Some(format!("{scheme}://{authority}"))
}

/// Whether `origin` (normalised) names the host the request was addressed to. The scheme is
/// not compared: the hub does not know whether a proxy in front of it terminated TLS.
fn is_own(origin: &str, authority: Option<&str>) -> bool {
    let Some(authority) = authority.map(str::to_ascii_lowercase) else { return false };
    let Some((scheme, host)) = origin.split_once("://") else { return false };
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    host == authority.strip_suffix(default_port).unwrap_or(&authority)
}

/// The `host[:port]` a request was addressed to: the URI's authority (HTTP/2, absolute-form)
/// or the `Host` header.
pub fn request_authority<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority().map(|a| a.as_str()).or_else(|| headers.get(header::HOST)?.to_str().ok())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn check(policy: &OriginPolicy, origin: Option<&str>, fetch_site: Option<&str>, host: &str) -> Result<(), &'static str> {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        if let Some(s) = fetch_site {
            h.insert("sec-fetch-site", HeaderValue::from_str(s).unwrap());
        }
        policy.check(&h, Some(host)).map_err(|e| e.header)
    }

    #[test]
    fn origin_decides_when_present() {
        let p = OriginPolicy::new(true, &["https://console.example".into(), "http://127.0.0.1:5173".into()]);
        let host = "hub.example";
        assert_eq!(check(&p, Some("https://hub.example"), Some("same-origin"), host), Ok(()));
        assert_eq!(check(&p, Some("HTTPS://Hub.Example:443"), None, host), Ok(()));
        assert_eq!(check(&p, Some("https://console.example"), Some("cross-site"), host), Ok(()));
        assert_eq!(check(&p, Some("http://127.0.0.1:5173"), Some("same-site"), host), Ok(()));
        assert_eq!(check(&p, Some("https://evil.example"), Some("cross-site"), host), Err("Origin"));
        // Same site, other origin: still not trusted.
        assert_eq!(check(&p, Some("https://other.hub.example"), Some("same-site"), host), Err("Origin"));
        assert_eq!(check(&p, Some("http://127.0.0.1:9999"), Some("same-site"), host), Err("Origin"));
        assert_eq!(check(&p, Some("null"), None, host), Err("Origin"));
        assert_eq!(check(&p, Some("https://console.example/path"), None, host), Err("Origin"));
        assert_eq!(check(&p, Some("ftp://console.example"), None, host), Err("Origin"));
        assert_eq!(check(&p, Some("https://user@console.example"), None, host), Err("Origin"));
    }

    #[test]
    fn own_origin_follows_the_host_and_its_port() {
        let p = OriginPolicy::new(true, &[]);
        assert_eq!(check(&p, Some("http://127.0.0.1:8080"), None, "127.0.0.1:8080"), Ok(()));
        assert_eq!(check(&p, Some("http://127.0.0.1:8081"), None, "127.0.0.1:8080"), Err("Origin"));
        assert_eq!(check(&p, Some("http://hub.example"), None, "hub.example:80"), Ok(()));
        assert_eq!(check(&p, Some("https://hub.example"), None, "hub.example:443"), Ok(()));
        assert_eq!(check(&p, Some("https://hub.example:8443"), None, "hub.example"), Err("Origin"));
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(p.check(&h, None).is_err(), "without a host nothing is the hub's own origin");
    }

    #[test]
    fn fetch_site_decides_without_origin() {
        let p = OriginPolicy::new(true, &[]);
        for ok in ["same-origin", "same-site", "none"] {
            assert_eq!(check(&p, None, Some(ok), "h"), Ok(()), "{ok}");
        }
        assert_eq!(check(&p, None, Some("cross-site"), "h"), Err("Sec-Fetch-Site"));
        assert_eq!(check(&p, None, Some("something-new"), "h"), Err("Sec-Fetch-Site"));
        assert_eq!(check(&p, None, None, "h"), Ok(()), "a non-browser client sends neither");
    }

    #[test]
    fn switched_off_passes_everything() {
        let p = OriginPolicy::new(false, &[]);
        assert_eq!(check(&p, Some("https://evil.example"), Some("cross-site"), "h"), Ok(()));
    }

    #[test]
    fn refusal_is_a_403_naming_the_header() {
        let p = OriginPolicy::new(true, &[]);
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        let e: ApiError = p.check(&h, Some("hub.example")).unwrap_err().into();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.code, "cross_site");
        assert_eq!(e.field.as_deref(), Some("Origin"));
        assert!(e.message.contains("https://evil.example"), "{}", e.message);
    }
}

//! Who is asking: credentials to identities, and publisher keys.
//!
//! A credential (header, cookie or, when enabled, query) resolves to an [`Identity`] through,
//! in order: static tokens, JWT (when the token looks like one and a key is configured), then
//! the introspection URL. Publisher keys are a separate table: they never open a stream, and
//! user credentials never publish. The admin key (`[admin] key`) is a third kind: it only
//! reaches `/admin/api/`, and is refused everywhere else before any provider sees it. Tokens
//! are never logged; errors carry a reason only.
//!
//! Every identity carries its credential's grants (what it may see inside its account; see
//! `grants.rs`), shared between identities holding equal sets. Grants are never logged either.
//!
//! Every identity says which credential vouched for it ([`Credential`]), as digests, so that
//! after a configuration reload the hub can tell which open streams lost their credential.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tidings_protocol::Grants;

use crate::config::{AuthConfig, ConfigError, IntrospectionConfig, JwtConfig, StaticToken};
use crate::grants::{GrantSets, from_claim};

/// Introspection answers kept at most; the least used are evicted first.
const INTROSPECTION_CACHE_ENTRIES_MAX: u64 = 100_000;
/// Room the introspection cache takes at first; it grows with the answers it holds.
const INTROSPECTION_CACHE_ENTRIES_INITIAL: usize = 1024;
/// Negative introspection answers are reused for at most this long, so a user who just signed
/// in is not locked out by a cached "no".
const INTROSPECTION_NEGATIVE_TTL_MAX: Duration = Duration::from_secs(5);
/// Introspection requests in flight at once. A reconnect storm of thousands of streams would
/// otherwise open as many connections to the host application at the same moment (each kept
/// in the client's pool afterwards, with its buffers: 20 KiB per stream at 10,000 streams),
/// and hammer the one service that must stay up for anyone to sign in. Requests beyond it
/// wait their turn within `auth.introspection.timeout`, up to [`INTROSPECTION_WAITING_MAX`].
const INTROSPECTION_IN_FLIGHT_MAX: usize = 32;
/// Stream requests waiting for an introspection slot at once, beyond those in flight; more
/// are answered 503 with `Retry-After` at once. A waiting request holds its connection and its
/// whole request (head, handler and middleware futures: about 15 KiB, measured with heaptrack
/// in a connect storm), and memory a storm's queue once took stays with the process: 10,000
/// streams connecting at 5,000 a second queued thousands and left 8 KiB per idle stream
/// behind, four times what the streams hold (BENCHMARKS.md, "Idle memory per identity
/// source"). Eight per slot is a wait of eight answers; a longer queue only holds requests a
/// slow endpoint would time out anyway, and the client comes back after `Retry-After`. The
/// price is paid against a slow endpoint in a storm: refused clients come back in waves, and
/// the endpoint idles between them, so the storm takes longer to get through.
const INTROSPECTION_WAITING_MAX: usize = 8 * INTROSPECTION_IN_FLIGHT_MAX;
/// Idle connections to the introspection endpoint kept for reuse: as many as may be in flight.
const INTROSPECTION_IDLE_CONNECTIONS_MAX: usize = INTROSPECTION_IN_FLIGHT_MAX;
/// Longest credential accepted; longer ones are refused before any provider sees them.
pub const CREDENTIAL_LEN_MAX: usize = 8 * 1024;
/// Shortest HS256 secret accepted: below 128 bits a shared secret can be brute-forced from
/// one captured token.
pub const JWT_HS256_SECRET_BYTES_MIN: usize = 16;
/// Name a publisher key without a configured `name` goes by in logs.
const PUBLISHER_UNNAMED: &str = "unnamed";
/// Why a credential whose grants break the rules is refused (403): cutting them short
/// instead would hide events without a word.
const GRANTS_REFUSED: &str = "the credential's grants are not usable: an array of at most 256 strings (or one space-separated string) of 1 to 320 bytes each, without control characters, none starting with user: or session:";

/// A signed-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub account: Arc<str>,
    pub user: Arc<str>,
    pub session: Arc<str>,
    /// When the credential stops being valid; the stream is closed with `token_expired` then.
    pub expires_at: Option<SystemTime>,
    /// What the credential grants inside the account, besides the implicit `user:<user>` and
    /// `session:<session>`; shared by every identity holding the same set.
    pub grants: Arc<Grants>,
    /// What vouched for this identity.
    pub credential: Credential,
}

impl Identity {
    /// Who is watching, for audience checks: this identity's user, session and grants.
    pub fn viewer(&self) -> tidings_protocol::Viewer {
        tidings_protocol::Viewer::new(self.user.clone(), self.session.clone(), self.grants.clone())
    }
}

/// What vouched for an identity, kept with its stream so that a reload can tell whether the
/// new configuration still accepts it ([`Authenticator::vouches_for`]). Holds digests, never a
/// secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A static token (`auth.tokens`, `auth.tokens_file`): a digest of the whole entry (token,
    /// account, user, session, grants), so an entry that was removed or changed no longer
    /// matches.
    Static(u64),
    /// A JWT, verified with the key of this fingerprint (algorithm, key material and the
    /// grants claim).
    Jwt(u64),
    /// The introspection endpoint's answer.
    Introspected,
}

impl Credential {
    /// The kind, for the admin page and logs.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Static(_) => "static token",
            Self::Jwt(_) => "jwt",
            Self::Introspected => "introspection",
        }
    }
}

/// Where a credential came from (introspection is told, as cookies and tokens may differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Header,
    Cookie,
    Query,
}

impl CredentialSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Cookie => "cookie",
            Self::Query => "query",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential at all (401).
    #[error("missing credentials")]
    Missing,
    /// A credential no provider accepts (401).
    #[error("invalid credentials")]
    Invalid,
    /// A credential that was valid and has expired (401).
    #[error("credentials expired")]
    Expired,
    /// A known credential that may not do this (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The introspection endpoint failed or timed out (503).
    #[error("identity provider unavailable")]
    Unavailable,
}

/// Resolves credentials.
#[derive(Debug)]
pub struct Authenticator {
    tokens: HashMap<String, Identity>,
    /// [`Credential::Static`] digests of `tokens`, for [`Authenticator::vouches_for`].
    static_digests: HashSet<u64>,
    publishers: Vec<Publisher>,
    /// `[admin] key`, when the admin page is on.
    admin_key: Option<Vec<u8>>,
    cookie: String,
    query_token: bool,
    jwt: Option<JwtVerifier>,
    /// Shared with the authenticator a reload builds when the settings did not change, so the
    /// cache of answers survives the reload.
    introspection: Option<Arc<Introspector>>,
    /// Shares grant sets between identities (see `grants.rs`).
    grant_sets: GrantSets,
}

impl Authenticator {
    pub fn new(c: &AuthConfig) -> Result<Self, ConfigError> {
        Self::reusing(c, None)
    }

    /// Like [`Authenticator::new`], but keeps `previous`'s introspection client and cache when
    /// the introspection settings are the same (a reload must not send every open session's
    /// token to the host application again).
    pub fn reusing(c: &AuthConfig, previous: Option<&Authenticator>) -> Result<Self, ConfigError> {
        let grant_sets = GrantSets::default();
        let tokens = c
            .tokens
            .iter()
            .map(|t| {
                let grants = Grants::new(t.grants.iter().map(String::as_str))
                    .map_err(|e| ConfigError::Invalid(format!("auth.tokens: grants of the token of user {:?}: {e}", t.user)))?;
                let id = Identity {
                    account: t.account.as_str().into(),
                    user: t.user.as_str().into(),
                    session: t.session.as_str().into(),
                    expires_at: None,
                    grants: grant_sets.share(grants),
                    credential: Credential::Static(static_digest(t)),
                };
                Ok((t.token.clone(), id))
            })
            .collect::<Result<HashMap<String, Identity>, ConfigError>>()?;
        let static_digests = tokens.values().filter_map(|id| if let Credential::Static(d) = id.credential { Some(d) } else { None }).collect();
        let introspection = match (&c.introspection, previous.and_then(|p| p.introspection.as_ref())) {
            (None, _) => None,
            (Some(config), Some(kept)) if kept.config == *config => Some(kept.clone()),
            (Some(config), _) => Some(Arc::new(Introspector::new(config)?)),
        };
        Ok(Self {
            tokens,
            static_digests,
            publishers: c
                .publishers
                .iter()
                .map(|p| Publisher { key: p.key.as_bytes().to_vec(), name: p.name.as_deref().unwrap_or(PUBLISHER_UNNAMED).into() })
                .collect(),
            admin_key: None,
            cookie: c.cookie.clone(),
            query_token: c.query_token,
            jwt: c.jwt.as_ref().map(JwtVerifier::new).transpose()?,
            introspection,
            grant_sets,
        })
    }

    /// Turns on the admin credential (`[admin] key`); see [`Authenticator::check_admin`].
    pub fn with_admin_key(mut self, key: Option<&str>) -> Self {
        self.admin_key = key.map(|k| k.as_bytes().to_vec());
        self
    }

    /// Whether a credential that vouched for an open stream is still accepted: its static
    /// token entry is unchanged, its JWT key is still the configured one, or introspection is
    /// still configured. A reload closes the streams it answers `false` for.
    pub fn vouches_for(&self, credential: Credential) -> bool {
        match credential {
            Credential::Static(digest) => self.static_digests.contains(&digest),
            Credential::Jwt(fingerprint) => self.jwt.as_ref().is_some_and(|j| j.fingerprint == fingerprint),
            Credential::Introspected => self.introspection.is_some(),
        }
    }

    /// Drops the introspection answers past their time (the cache holds no timers of its
    /// own); called by the hub's periodic upkeep.
    pub fn sweep(&self) {
        if let Some(intro) = &self.introspection {
            intro.sweep();
        }
    }

    /// Checks an admin API request's `Authorization: Bearer <admin key>`. Anything else, a user
    /// token or a publisher key included, is [`AuthError::Missing`] or [`AuthError::Invalid`]:
    /// the admin API tells nobody which other credentials exist.
    pub fn check_admin(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let key = bearer(headers).ok_or(AuthError::Missing)?;
        if self.is_admin(key) { Ok(()) } else { Err(AuthError::Invalid) }
    }

    /// What a reload compares to say what changed, as digests and names (never a secret).
    pub(crate) fn summary(&self) -> AuthSummary {
        AuthSummary {
            static_tokens: self.static_digests.clone(),
            publishers: self.publishers.iter().map(|p| (fnv1a_parts(&[&p.key]), p.name.clone())).collect(),
            admin_key: self.admin_key.as_deref().map(|k| fnv1a_parts(&[k])),
            jwt: self.jwt.as_ref().map(|j| j.fingerprint),
        }
    }

    fn is_admin(&self, key: &str) -> bool {
        self.admin_key.as_deref().is_some_and(|admin| bool::from(admin.ct_eq(key.as_bytes())))
    }

    /// Finds the stream credential in a request: `Authorization: Token|Bearer …`, then the
    /// session cookie, then (only when enabled) the `access_token` query parameter.
    pub fn stream_credential<'a>(&self, headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<(&'a str, CredentialSource)> {
        if let Some(t) = bearer(headers) {
            return Some((t, CredentialSource::Header));
        }
        if let Some(t) = cookie(headers, &self.cookie) {
            return Some((t, CredentialSource::Cookie));
        }
        query_token.filter(|_| self.query_token).map(|t| (t, CredentialSource::Query))
    }

    /// Resolves a stream credential to an identity.
    pub async fn identify(&self, token: &str, source: CredentialSource) -> Result<Identity, AuthError> {
        if token.is_empty() || token.len() > CREDENTIAL_LEN_MAX {
            return Err(AuthError::Invalid);
        }
        if let Some(id) = self.tokens.get(token) {
            return Ok(id.clone());
        }
        if self.is_publisher(token) {
            return Err(AuthError::Forbidden("publisher keys cannot open streams"));
        }
        if self.is_admin(token) {
            return Err(AuthError::Forbidden("the admin key cannot open streams"));
        }
        if let Some(jwt) = self.jwt.as_ref().filter(|_| looks_like_jwt(token)) {
            return jwt.verify(token, &self.grant_sets);
        }
        if let Some(intro) = &self.introspection {
            return intro.identify(token, source, &self.grant_sets).await;
        }
        Err(AuthError::Invalid)
    }

    /// Checks a publish request's `Authorization: Bearer <key>`; answers the key's configured
    /// name, for logs (never the key).
    pub fn check_publisher(&self, headers: &HeaderMap) -> Result<Arc<str>, AuthError> {
        let key = bearer(headers).ok_or(AuthError::Missing)?;
        if let Some(p) = self.publisher(key) {
            return Ok(p.name.clone());
        }
        if self.is_admin(key) {
            return Err(AuthError::Forbidden("the admin key cannot publish; the admin page publishes test activities itself"));
        }
        if self.tokens.contains_key(key) || (self.jwt.is_some() && looks_like_jwt(key)) {
            return Err(AuthError::Forbidden("user credentials cannot publish"));
        }
        Err(AuthError::Invalid)
    }

    fn is_publisher(&self, key: &str) -> bool {
        self.publisher(key).is_some()
    }

    fn publisher(&self, key: &str) -> Option<&Publisher> {
        // Every key is compared, each in constant time, so response timing reveals neither how
        // much of a key matched nor which key did.
        self.publishers.iter().fold(None, |found, p| if bool::from(p.key.as_slice().ct_eq(key.as_bytes())) { Some(p) } else { found })
    }
}

/// The credentials an authenticator accepts, as digests and names, for reload logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthSummary {
    pub static_tokens: HashSet<u64>,
    /// Digest of each key, with its name.
    pub publishers: Vec<(u64, Arc<str>)>,
    pub admin_key: Option<u64>,
    pub jwt: Option<u64>,
}

/// One publisher key and the name it is logged under.
#[derive(Clone)]
struct Publisher {
    key: Vec<u8>,
    name: Arc<str>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of debug output.
        f.debug_struct("Publisher").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The credential in `Authorization: Token <t>` (the original console's form) or `Bearer <t>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
}

/// Digest of a whole static token entry, for [`Credential::Static`].
fn static_digest(t: &StaticToken) -> u64 {
    // Grants included: a reload that changes them closes the entry's streams, which reconnect
    // holding the new ones.
    let mut parts = vec![t.token.as_bytes(), t.account.as_bytes(), t.user.as_bytes(), t.session.as_bytes()];
    parts.extend(t.grants.iter().map(String::as_bytes));
    fnv1a_parts(&parts)
}

/// [`fnv1a`] over several strings, each followed by a NUL so that no two lists of parts
/// digest alike by moving a boundary.
fn fnv1a_parts(parts: &[&[u8]]) -> u64 {
    parts.iter().flat_map(|p| p.iter().copied().chain([0])).fold(FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

struct JwtVerifier {
    key: DecodingKey,
    /// Digest of the algorithm and key material: a reload that changes either closes the
    /// streams this key vouched for.
    fingerprint: u64,
    validation: Validation,
    account_claim: String,
    user_claim: String,
    session_claim: String,
    grants_claim: Option<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of debug output.
        f.debug_struct("JwtVerifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

impl JwtVerifier {
    fn new(c: &JwtConfig) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("auth.jwt: {m}"));
        let pem = || -> Result<Vec<u8>, ConfigError> {
            if let Some(p) = &c.public_key_pem {
                return Ok(p.as_bytes().to_vec());
            }
            let path = c.public_key_file.as_ref().ok_or_else(|| invalid("needs public_key_pem or public_key_file".into()))?;
            std::fs::read(path).map_err(|source| ConfigError::Read { path: path.clone(), source })
        };
        let (alg, key, material) = match c.algorithm.as_str() {
            "HS256" => {
                let secret = c
                    .secret
                    .as_ref()
                    .filter(|s| s.len() >= JWT_HS256_SECRET_BYTES_MIN)
                    .ok_or_else(|| invalid(format!("HS256 needs a secret of at least {JWT_HS256_SECRET_BYTES_MIN} bytes")))?;
                (Algorithm::HS256, DecodingKey::from_secret(secret.as_bytes()), secret.as_bytes().to_vec())
            }
            "RS256" => {
                let pem = pem()?;
                (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem).map_err(|e| invalid(format!("RS256 key: {e}")))?, pem)
            }
            "ES256" => {
                let pem = pem()?;
                (Algorithm::ES256, DecodingKey::from_ec_pem(&pem).map_err(|e| invalid(format!("ES256 key: {e}")))?, pem)
            }
            other => return Err(invalid(format!("algorithm {other:?} is not one of HS256, RS256, ES256"))),
        };
        // The grants claim too: a reload that reads grants elsewhere closes the streams whose
        // grants came from the old claim.
        let fingerprint = fnv1a_parts(&[c.algorithm.as_bytes(), &material, c.grants_claim.as_deref().unwrap_or("").as_bytes()]);
        // One algorithm only: a token's own `alg` header (including `none`) is never trusted.
        let mut validation = Validation::new(alg);
        validation.leeway = c.leeway.as_secs();
        validation.set_required_spec_claims(&["exp"]);
        // A token that is not valid yet (`nbf` in the future) is refused like an expired one;
        // jsonwebtoken leaves this check off unless asked.
        validation.validate_nbf = true;
        if let Some(iss) = &c.issuer {
            validation.set_issuer(&[iss]);
        }
        match &c.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Self {
            key,
            fingerprint,
            validation,
            account_claim: c.account_claim.clone(),
            user_claim: c.user_claim.clone(),
            session_claim: c.session_claim.clone(),
            grants_claim: c.grants_claim.clone(),
        })
    }

    fn verify(&self, token: &str, grant_sets: &GrantSets) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        let claims = data.claims;
        let text = |name: &str| -> Option<Arc<str>> {
            match claims.get(name)? {
                serde_json::Value::String(s) if !s.is_empty() => Some(s.as_str().into()),
                serde_json::Value::Number(n) => Some(n.to_string().into()),
                _ => None,
            }
        };
        let account = text(&self.account_claim).ok_or(AuthError::Forbidden("token has no account claim"))?;
        let user = text(&self.user_claim).unwrap_or_else(|| "".into());
        // Without a session claim, the token itself names the session (a hash, never the token).
        let session = text(&self.session_claim).or_else(|| text("jti")).unwrap_or_else(|| format!("jwt-{:016x}", fnv1a(token)).into());
        let exp = claims.get("exp").and_then(serde_json::Value::as_u64).map(|s| UNIX_EPOCH + Duration::from_secs(s));
        let grants = match &self.grants_claim {
            Some(name) => from_claim(claims.get(name)).map_err(|_| AuthError::Forbidden(GRANTS_REFUSED))?,
            None => Grants::none(),
        };
        Ok(Identity { account, user, session, expires_at: exp, grants: grant_sets.share(grants), credential: Credential::Jwt(self.fingerprint) })
    }
}

/// 64-bit FNV-1a: a stable, non-cryptographic digest used only to name a session that has no
/// session claim. Stable across processes and nodes (std's hasher is randomly keyed), and ten
/// lines do not warrant a dependency.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

#[derive(Debug)]
struct Introspector {
    /// The settings it was built from: a reload with the same settings keeps it (and its cache).
    config: IntrospectionConfig,
    url: String,
    client: reqwest::Client,
    /// Bounds requests in flight ([`INTROSPECTION_IN_FLIGHT_MAX`]); a permit is held for one
    /// request and dropped with its answer.
    in_flight: tokio::sync::Semaphore,
    /// Bounds requests in flight or waiting for a slot ([`INTROSPECTION_WAITING_MAX`]); a
    /// permit is held from the cache miss until the answer, and a request that finds none is
    /// refused at once.
    admitted: tokio::sync::Semaphore,
    /// `auth.introspection.timeout`: also bounds the wait for a permit.
    timeout: Duration,
    /// Answers by [`cache_key`]: a digest, never the credential. A bounded map with a
    /// scan-resistant eviction policy and no timers: each entry carries the instant it stops
    /// being used, checked on every read and swept by [`Authenticator::sweep`]. (An entry of
    /// moka's cache, which expires entries itself, took three times the room: about 0.3 KiB
    /// of every idle introspected stream, BENCHMARKS.md.)
    cache: quick_cache::sync::Cache<CacheKey, CachedAnswer>,
}

/// An introspection answer in the cache, used until `until`.
#[derive(Debug, Clone)]
struct CachedAnswer {
    answer: Result<Identity, AuthError>,
    until: std::time::Instant,
}

/// What the introspection cache is keyed by: see [`cache_key`].
type CacheKey = [u8; 32];

/// The introspection cache's key for a credential: a SHA-256 digest of where it came from and
/// the credential. It is 32 bytes whatever the credential's length (whole credentials of up
/// to [`CREDENTIAL_LEN_MAX`] in [`INTROSPECTION_CACHE_ENTRIES_MAX`] entries could hold 800 MiB),
/// and the cache keeps no credential in memory. A cryptographic digest, because two
/// credentials with one key would share an identity.
fn cache_key(token: &str, source: CredentialSource) -> CacheKey {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(source.as_str().as_bytes());
    // Source names hold no NUL: each (source, credential) pair is a distinct input.
    digest.update(b"\0");
    digest.update(token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.finish().as_ref());
    key
}

#[derive(Deserialize)]
struct IntrospectionAnswer {
    active: bool,
    #[serde(default = "yes")]
    allowed: bool,
    account: Option<serde_json::Value>,
    user: Option<String>,
    session: Option<String>,
    /// Expiry as Unix seconds.
    exp: Option<u64>,
    /// What the identity may see inside its account (see `grants::from_claim`).
    grants: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

impl Introspector {
    fn new(c: &IntrospectionConfig) -> Result<Self, ConfigError> {
        if !c.url.starts_with("http://") {
            return Err(ConfigError::Invalid(format!(
                "auth.introspection.url {:?} must be an http:// URL (a sidecar or loopback service)",
                c.url
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(c.timeout)
            .pool_max_idle_per_host(INTROSPECTION_IDLE_CONNECTIONS_MAX)
            .build()
            .map_err(|e| ConfigError::Invalid(format!("auth.introspection: {e}")))?;
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(INTROSPECTION_CACHE_ENTRIES_INITIAL)
            .weight_capacity(INTROSPECTION_CACHE_ENTRIES_MAX)
            .build()
            .map_err(|e| ConfigError::Invalid(format!("auth.introspection cache: {e}")))?;
        let cache = quick_cache::sync::Cache::with_options(options, quick_cache::UnitWeighter, Default::default(), Default::default());
        Ok(Self {
            config: c.clone(),
            url: c.url.clone(),
            client,
            in_flight: tokio::sync::Semaphore::new(INTROSPECTION_IN_FLIGHT_MAX),
            admitted: tokio::sync::Semaphore::new(INTROSPECTION_IN_FLIGHT_MAX + INTROSPECTION_WAITING_MAX),
            timeout: c.timeout,
            cache,
        })
    }

    /// The cached answer for `key`, unless it is past its time (then it is dropped).
    fn cached(&self, key: &CacheKey) -> Option<Result<Identity, AuthError>> {
        let now = std::time::Instant::now();
        let cached = self.cache.get(key)?;
        if cached.until > now {
            return Some(cached.answer);
        }
        self.cache.remove_if(key, |c| c.until <= now);
        None
    }

    /// Drops the answers past their time.
    fn sweep(&self) {
        let now = std::time::Instant::now();
        self.cache.retain(|_, c| c.until > now);
    }

    async fn identify(&self, token: &str, source: CredentialSource, grant_sets: &GrantSets) -> Result<Identity, AuthError> {
        let key = cache_key(token, source);
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let Ok(_admitted) = self.admitted.try_acquire() else {
            tracing::debug!("introspection queue full; stream request refused");
            return Err(AuthError::Unavailable);
        };
        let answer = match tokio::time::timeout(self.timeout, self.in_flight.acquire()).await {
            // Boxed: the request, its answer and their JSON take room only while asked, not
            // in every request waiting for a slot.
            Ok(Ok(_permit)) => Box::pin(self.ask(token, source, grant_sets)).await,
            _ => {
                tracing::warn!("introspection requests queued past the timeout");
                Err(AuthError::Unavailable)
            }
        };
        if answer != Err(AuthError::Unavailable) {
            // Negative answers for a shorter time: see INTROSPECTION_NEGATIVE_TTL_MAX.
            let ttl = if answer.is_ok() { self.config.cache_ttl } else { self.config.cache_ttl.min(INTROSPECTION_NEGATIVE_TTL_MAX) };
            self.cache.insert(key, CachedAnswer { answer: answer.clone(), until: std::time::Instant::now() + ttl });
        }
        answer
    }

    async fn ask(&self, token: &str, source: CredentialSource, grant_sets: &GrantSets) -> Result<Identity, AuthError> {
        let body = serde_json::json!({ "token": token, "source": source.as_str() });
        let resp = self.client.post(&self.url).json(&body).send().await.map_err(|e| {
            tracing::warn!(error = %e, "introspection request failed");
            AuthError::Unavailable
        })?;
        match resp.status().as_u16() {
            200 => {}
            401 | 404 => return Err(AuthError::Invalid),
            403 => return Err(AuthError::Forbidden("identity not allowed to stream")),
            status => {
                tracing::warn!(status, "introspection endpoint answered with an error");
                return Err(AuthError::Unavailable);
            }
        }
        let a: IntrospectionAnswer = resp.json().await.map_err(|e| {
            tracing::warn!(error = %e, "introspection answer is not the expected JSON");
            AuthError::Unavailable
        })?;
        if !a.active {
            return Err(AuthError::Invalid);
        }
        if !a.allowed {
            return Err(AuthError::Forbidden("identity not allowed to stream"));
        }
        let account: Arc<str> = match a.account {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.into(),
            Some(serde_json::Value::Number(n)) => n.to_string().into(),
            _ => return Err(AuthError::Forbidden("identity has no account")),
        };
        let expires_at = a.exp.map(|s| UNIX_EPOCH + Duration::from_secs(s));
        if expires_at.is_some_and(|e| e <= SystemTime::now()) {
            return Err(AuthError::Expired);
        }
        let session = a.session.unwrap_or_else(|| format!("intro-{:016x}", fnv1a(token)));
        let grants = from_claim(a.grants.as_ref()).map_err(|_| AuthError::Forbidden(GRANTS_REFUSED))?;
        let user = a.user.unwrap_or_default().into();
        Ok(Identity { account, user, session: session.into(), expires_at, grants: grant_sets.share(grants), credential: Credential::Introspected })
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credentials_are_found_in_each_place() {
        let auth = Authenticator::new(&AuthConfig { query_token: true, ..AuthConfig::default() }).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(auth.stream_credential(&h, None), None);
        assert_eq!(auth.stream_credential(&h, Some("q")), Some(("q", CredentialSource::Query)));
        h.insert(http::header::COOKIE, HeaderValue::from_static("a=b; tidings_session=c1"));
        assert_eq!(auth.stream_credential(&h, Some("q")), Some(("c1", CredentialSource::Cookie)));
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Token t1"));
        assert_eq!(auth.stream_credential(&h, None), Some(("t1", CredentialSource::Header)));
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_static("bearer t2"));
        assert_eq!(auth.stream_credential(&h, None), Some(("t2", CredentialSource::Header)));
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(auth.stream_credential(&h, None), Some(("c1", CredentialSource::Cookie)));
    }

    #[test]
    fn a_publisher_is_known_by_its_name_never_its_key() {
        use crate::config::PublisherKey;
        let publishers = vec![
            PublisherKey { key: "key-of-the-billing-service".into(), name: Some("billing".into()) },
            PublisherKey { key: "key-without-a-name".into(), name: None },
        ];
        let auth = Authenticator::new(&AuthConfig { publishers, ..AuthConfig::default() }).unwrap();
        let with = |key: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
            auth.check_publisher(&h)
        };
        assert_eq!(with("key-of-the-billing-service").as_deref(), Ok("billing"));
        assert_eq!(with("key-without-a-name").as_deref(), Ok(PUBLISHER_UNNAMED));
        assert_eq!(with("key-of-the-billing-servicf"), Err(AuthError::Invalid));
        assert!(!format!("{auth:?}").contains("key-of"), "keys stay out of debug output");
    }

    #[test]
    fn the_introspection_cache_is_keyed_by_a_digest_of_source_and_credential() {
        let token = "an-opaque-session-token";
        let key = cache_key(token, CredentialSource::Header);
        assert_eq!(key, cache_key(token, CredentialSource::Header));
        assert_ne!(key, cache_key(token, CredentialSource::Cookie), "a cookie is asked about apart from a header token");
        assert_ne!(key, cache_key("an-opaque-session-tokem", CredentialSource::Header));
        assert_ne!(cache_key("header", CredentialSource::Cookie), cache_key("", CredentialSource::Header), "source and credential do not run together");
        assert_eq!(size_of_val(&cache_key(&"x".repeat(CREDENTIAL_LEN_MAX), CredentialSource::Query)), 32, "the longest credential takes no more room");
    }

    #[tokio::test]
    async fn introspection_requests_beyond_the_waiting_line_are_refused_at_once() {
        // An endpoint that accepts connections and never answers: every request keeps its slot.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let timeout = Duration::from_secs(30);
        let config = IntrospectionConfig { url: format!("http://{addr}/introspect"), cache_ttl: Duration::from_secs(30), timeout };
        let intro = Arc::new(Introspector::new(&config).unwrap());
        let grant_sets = Arc::new(GrantSets::default());
        let mut admitted = tokio::task::JoinSet::new();
        for i in 0..INTROSPECTION_IN_FLIGHT_MAX + INTROSPECTION_WAITING_MAX {
            let (intro, grant_sets) = (intro.clone(), grant_sets.clone());
            admitted.spawn(async move { intro.identify(&format!("token-{i}"), CredentialSource::Header, &grant_sets).await });
        }
        let full = tokio::time::timeout(Duration::from_secs(10), async {
            while intro.admitted.available_permits() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        full.await.expect("every request up to the bound is admitted");
        let started = std::time::Instant::now();
        assert_eq!(intro.identify("one-more", CredentialSource::Header, &grant_sets).await, Err(AuthError::Unavailable));
        assert!(started.elapsed() < timeout / 2, "refused without waiting for a slot");
        assert!(admitted.try_join_next().is_none(), "the admitted ones still wait for their answers");
        admitted.abort_all();
    }

    #[tokio::test]
    async fn jwt_grants_come_from_the_configured_claim_as_an_array_or_a_string_and_are_shared() {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let secret = "a-test-secret-of-32-bytes-length";
        let jwt = JwtConfig {
            algorithm: "HS256".into(),
            secret: Some(secret.into()),
            public_key_pem: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            account_claim: "account".into(),
            user_claim: "sub".into(),
            session_claim: "sid".into(),
            grants_claim: Some("scope".into()),
            leeway: Duration::ZERO,
        };
        let auth = Authenticator::new(&AuthConfig { jwt: Some(jwt), ..AuthConfig::default() }).unwrap();
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
        let token = |scope: serde_json::Value, sid: &str| {
            let claims = serde_json::json!({"account": "acme", "sub": "dana", "sid": sid, "exp": exp, "scope": scope});
            encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
        };
        let auth = &auth;
        let id = |t: String| async move { auth.identify(&t, CredentialSource::Header).await };
        let array = id(token(serde_json::json!(["billing:read", "role:admin"]), "s-1")).await.unwrap();
        let string = id(token(serde_json::json!("role:admin billing:read"), "s-2")).await.unwrap();
        assert_eq!(array.grants.iter().collect::<Vec<_>>(), ["billing:read", "role:admin"]);
        assert!(Arc::ptr_eq(&array.grants, &string.grants), "equal sets are one allocation");
        assert!(array.viewer().holds("user:dana") && array.viewer().holds("session:s-1"));
        let none = id(token(serde_json::Value::Null, "s-3")).await.unwrap();
        assert!(none.grants.is_empty());
        for bad in [serde_json::json!(["user:bob"]), serde_json::json!(7), serde_json::json!(["ok", 1])] {
            assert!(matches!(id(token(bad.clone(), "s-4")).await, Err(AuthError::Forbidden(m)) if m == GRANTS_REFUSED), "{bad}");
        }
    }

    #[test]
    fn a_cached_introspection_answer_is_used_until_its_time_then_dropped() {
        let c = IntrospectionConfig { url: "http://127.0.0.1:9/introspect".into(), cache_ttl: Duration::from_secs(30), timeout: Duration::from_secs(1) };
        let intro = Introspector::new(&c).unwrap();
        let now = std::time::Instant::now();
        let (fresh, stale, refused) = (cache_key("fresh", CredentialSource::Header), cache_key("stale", CredentialSource::Header), cache_key("x", CredentialSource::Cookie));
        let answer = |until| CachedAnswer { answer: Err(AuthError::Invalid), until };
        intro.cache.insert(fresh, answer(now + Duration::from_secs(30)));
        intro.cache.insert(stale, answer(now - Duration::from_millis(1)));
        intro.cache.insert(refused, answer(now - Duration::from_millis(1)));
        assert_eq!(intro.cached(&fresh), Some(Err(AuthError::Invalid)));
        assert_eq!(intro.cached(&stale), None, "past its time, an answer is asked again");
        assert_eq!(intro.cache.len(), 2, "and dropped when found so");
        intro.sweep();
        assert_eq!(intro.cache.len(), 1, "the sweep drops the others");
        assert!(intro.cached(&fresh).is_some());
        assert_ne!(cache_key("x", CredentialSource::Header), refused, "where a credential came from is part of its key");
    }
}

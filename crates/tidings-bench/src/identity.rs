//! How the benchmark's Tidings streams authenticate: the identity source changes what the hub
//! does per stream (a table lookup, a signature check and claims decoded, a call to the host
//! application and a cache entry), so idle memory is measured for each.
//!
//! - `static`: one `[[tokens]]` entry per stream in the generated tokens file;
//! - `jwt`: an HS256 token per stream (its own session, account, user and an `exp` hours
//!   ahead), signed by the harness with the secret the generated configuration names;
//! - `introspection`: an opaque token per stream, answered by [`Introspection`], a small
//!   endpoint inside the harness (so its memory is not counted as the hub's).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use axum::Json;
use serde::{Deserialize, Serialize};

/// The HS256 secret of the generated configuration (a benchmark on loopback, not a secret).
pub const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef";
/// How long the benchmark's credentials stay valid: far longer than any scenario, so no
/// stream ends with `token_expired` during a run, while the hub still tracks a deadline.
pub const CREDENTIAL_LIFETIME: Duration = Duration::from_secs(6 * 3600);

/// Which identity source the Tidings streams use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    #[default]
    Static,
    Jwt,
    Introspection,
}

impl Identity {
    pub fn name(self) -> &'static str {
        match self {
            Identity::Static => "static",
            Identity::Jwt => "jwt",
            Identity::Introspection => "introspection",
        }
    }
}

/// The claims of a benchmark JWT.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    account: &'a str,
    sub: String,
    sid: String,
    exp: u64,
}

/// Unix seconds at which credentials made now expire.
pub fn expiry_from_now() -> u64 {
    (SystemTime::now() + CREDENTIAL_LIFETIME).duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The HS256 token of stream `idx` in `account`, expiring at `exp` (Unix seconds).
pub fn jwt(idx: usize, account: &str, exp: u64) -> String {
    let claims = Claims { account, sub: format!("u{idx}"), sid: format!("s{idx}"), exp };
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()))
        .expect("HS256 signing of a small claims set cannot fail")
}

/// The opaque (static or introspected) token of stream `idx`.
pub fn opaque(idx: usize) -> String {
    format!("bench-token-{idx}")
}

/// The `[auth.*]` section the generated hub configuration gets for `identity`.
pub fn hub_section(identity: Identity, introspection: Option<SocketAddr>) -> String {
    match identity {
        Identity::Static => "[auth]\ntokens_file = \"tokens.toml\"\n".to_owned(),
        Identity::Jwt => format!("[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{JWT_SECRET}\"\naccount_claim = \"account\"\n"),
        Identity::Introspection => {
            let addr = introspection.expect("introspection needs its endpoint");
            format!("[auth.introspection]\nurl = \"http://{addr}/introspect\"\n")
        }
    }
}

#[derive(Debug, Deserialize)]
struct Question {
    token: String,
}

/// The host application's introspection endpoint, as a console's backend would answer it:
/// every `bench-token-<i>` is the session `s<i>` of user `u<i>` in account `a<i % accounts>`.
#[derive(Debug)]
pub struct Introspection {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Introspection {
    pub async fn start(accounts: usize, exp: u64) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accounts = accounts.max(1);
        let answer = move |Json(q): Json<Question>| async move {
            let idx = q.token.strip_prefix("bench-token-").and_then(|i| i.parse::<usize>().ok());
            Json(match idx {
                Some(i) => serde_json::json!({
                    "active": true, "account": format!("a{}", i % accounts), "user": format!("u{i}"), "session": format!("s{i}"), "exp": exp
                }),
                None => serde_json::json!({ "active": false }),
            })
        };
        let app = axum::Router::new().route("/introspect", axum::routing::post(answer));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, task })
    }
}

impl Drop for Introspection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bench_jwt_carries_the_stream_s_identity_and_expiry() {
        let exp = expiry_from_now();
        let token = jwt(7, "a3", exp);
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()), &v).unwrap();
        assert_eq!(data.claims["account"], "a3");
        assert_eq!(data.claims["sid"], "s7");
        assert_eq!(data.claims["exp"], exp);
    }
}

//! The admin page's JSON API under `/admin/api/`, and the page itself under `/admin/`.
//!
//! Off unless `[admin]` is configured: every `/admin` path then answers 404 like any unknown
//! path. On, every API request needs `Authorization: Bearer <admin key>`; without it (or with
//! any other credential) the answer is 401 with nothing but the error, whatever the path. The
//! key is the only credential: no cookie is ever set or read, so a page on another site cannot
//! make a browser call this API with the admin's authority, and no origin check is needed. The
//! page's own files are the same for every hub and carry no data; they are served without the
//! key (the browser cannot send it for a page load) with a strict Content-Security-Policy.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tidings_protocol::publish::{PublishErrorKind, parse_body};
use tidings_protocol::resolver::suggest_entry;

use super::series::{CLOSE_REASONS, RESYNC_REASONS, SAMPLE_INTERVAL};
use super::page;
use crate::HubState;
use crate::error::ApiError;

/// Accounts listed by default, most streams first.
const TOP_ACCOUNTS_DEFAULT: usize = 20;
/// Most accounts one request may list.
pub const TOP_ACCOUNTS_MAX: usize = 100;
/// Most streams of one account listed (with their sessions).
pub const ACCOUNT_STREAMS_LISTED_MAX: usize = 200;
/// The name the page's test activities are published under.
const ADMIN_PUBLISHER: &str = "admin";

/// `/admin/`, its files, and `/admin/api/`.
pub(crate) fn router(hub: Arc<HubState>) -> Router {
    let api = Router::new()
        .route("/snapshot", get(snapshot))
        .route("/overview", get(overview))
        .route("/series", get(series))
        .route("/accounts", get(accounts))
        .route("/sessions", get(sessions))
        .route("/activities", get(activities))
        .route("/unresolved", get(unresolved))
        .route("/resolve", post(resolve))
        .route("/revoke", post(revoke))
        .route("/publish", post(publish))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin API route") })
        .layer(axum::middleware::from_fn_with_state(hub.clone(), require_key));
    Router::new()
        .nest("/admin/api", api)
        .merge(page::router())
        .layer(axum::middleware::from_fn_with_state(hub.clone(), require_enabled))
        .with_state(hub)
}

/// 404 for every `/admin` path while the admin page is off (a reload may turn it on or off).
async fn require_enabled(State(hub): State<Arc<HubState>>, req: Request, next: Next) -> Response {
    if hub.config().admin.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    next.run(req).await
}

/// 401 unless the request carries the admin key; every answer of the API is private.
async fn require_key(State(hub): State<Arc<HubState>>, req: Request, next: Next) -> Response {
    let mut response = match hub.auth().check_admin(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::debug!(path = %req.uri().path(), "admin API request without the admin key refused");
            ApiError::from(e).into_response()
        }
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Debug, Deserialize)]
struct SnapshotQuery {
    /// Samples after this Unix time in milliseconds (the last one the page has).
    #[serde(default)]
    since: u64,
    #[serde(default = "top_default")]
    top: usize,
}

fn top_default() -> usize {
    TOP_ACCOUNTS_DEFAULT
}

/// Everything the page shows, in one answer: it polls this once a second.
async fn snapshot(State(hub): State<Arc<HubState>>, Query(q): Query<SnapshotQuery>) -> Response {
    axum::Json(json!({
        "overview": overview_json(&hub),
        "series": series_json(&hub, q.since),
        "accounts": accounts_json(&hub, q.top),
        "activities": activities_json(&hub),
        "unresolved": unresolved_json(&hub),
    }))
    .into_response()
}

async fn overview(State(hub): State<Arc<HubState>>) -> Response {
    axum::Json(overview_json(&hub)).into_response()
}

#[derive(Debug, Deserialize)]
struct SeriesQuery {
    #[serde(default)]
    since: u64,
}

async fn series(State(hub): State<Arc<HubState>>, Query(q): Query<SeriesQuery>) -> Response {
    axum::Json(series_json(&hub, q.since)).into_response()
}

#[derive(Debug, Deserialize)]
struct AccountsQuery {
    #[serde(default = "top_default")]
    top: usize,
}

async fn accounts(State(hub): State<Arc<HubState>>, Query(q): Query<AccountsQuery>) -> Response {
    axum::Json(accounts_json(&hub, q.top)).into_response()
}

async fn activities(State(hub): State<Arc<HubState>>) -> Response {
    axum::Json(activities_json(&hub)).into_response()
}

async fn unresolved(State(hub): State<Arc<HubState>>) -> Response {
    axum::Json(unresolved_json(&hub)).into_response()
}

fn overview_json(hub: &HubState) -> Value {
    let live = hub.live();
    let (reloads, reloaded_at) = hub.reloads();
    let fanout = hub.fanout();
    let m = hub.metrics();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "engine": hub.engine_name(),
        "engine_ready": hub.engine().is_ready(),
        "engine_shards_ready": hub.engine().shards_ready(),
        "draining": hub.is_draining(),
        "started_at": humantime::format_rfc3339_seconds(hub.admin().started).to_string(),
        "uptime_secs": SystemTime::now().duration_since(hub.admin().started).map_or(0, |d| d.as_secs()),
        "streams": fanout.len(),
        "accounts": fanout.accounts_len(),
        "sessions": fanout.sessions_len(),
        "closing": fanout.closing_len(),
        "streams_max": m.streams_max.get(),
        "published": m.events_published.get(),
        "delivered": m.events_delivered.get(),
        "unresolved": m.unresolved_events.get(),
        "evictions": m.slow_consumer_evictions.get(),
        "mapping": crate::live::describe_mapping(&live.config.mapping, &live.resolver),
        "reloads": reloads,
        "reloaded_at": reloaded_at.map(|at| humantime::format_rfc3339_seconds(at).to_string()),
        "now": unix_ms(SystemTime::now()),
    })
}

fn series_json(hub: &HubState, since: u64) -> Value {
    let samples = hub.admin().series.lock().expect("series lock").since(since);
    json!({
        "interval_ms": SAMPLE_INTERVAL.as_millis() as u64,
        "close_reasons": CLOSE_REASONS,
        "resync_reasons": RESYNC_REASONS,
        "samples": samples,
    })
}

fn accounts_json(hub: &HubState, top: usize) -> Value {
    let (total, top) = hub.fanout().top_accounts(top.min(TOP_ACCOUNTS_MAX));
    let rows: Vec<Value> = top
        .into_iter()
        .map(|(account, streams)| {
            let last = hub.admin().last_activity(&account).map(|at| humantime::format_rfc3339_millis(at).to_string());
            // One stream per session on a node: the two counts are the same.
            json!({ "account": account, "streams": streams, "sessions": streams, "last_activity": last })
        })
        .collect();
    json!({ "accounts": total, "top": rows })
}

fn activities_json(hub: &HubState) -> Value {
    json!({ "activities": hub.admin().recent() })
}

fn unresolved_json(hub: &HubState) -> Value {
    let (types, other) = hub.admin().unresolved_types(&hub.resolver());
    json!({ "types": types, "other_count": other })
}

#[derive(Debug, Deserialize)]
struct SessionsQuery {
    account: String,
}

/// The streams of one account on this node, with their sessions, for revoking.
async fn sessions(State(hub): State<Arc<HubState>>, Query(q): Query<SessionsQuery>) -> Response {
    let (total, streams) = hub.fanout().streams_of(&q.account, ACCOUNT_STREAMS_LISTED_MAX);
    let rows: Vec<Value> = streams
        .iter()
        .map(|s| json!({ "session": s.session(), "stream": s.id, "credential": s.credential.kind() }))
        .collect();
    let last = hub.admin().last_activity(&q.account).map(|at| humantime::format_rfc3339_millis(at).to_string());
    axum::Json(json!({ "account": q.account, "streams": total, "sessions": rows, "last_activity": last })).into_response()
}

/// The resolver playground: the keys an activity gets with the mapping in effect, which tier
/// and entry answered, and for an unresolved activity the entry to add. Takes the activity
/// itself, a publish item (`{"account", "data"}`) or an `activity` frame.
async fn resolve(State(hub): State<Arc<HubState>>, req: Request) -> Response {
    let result = async {
        let body = read_body(&hub, req).await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", format!("invalid JSON: {e}")).field("body"))?;
        let activity = if value.get("activity_type").is_some() || value.get("resource").is_some() {
            &value
        } else if let Some(data) = value.get("data").filter(|d| d.is_object()) {
            data
        } else if value.is_object() {
            &value
        } else {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "an activity is a JSON object").field("body"));
        };
        let resolver = hub.resolver();
        let explanation = resolver.explain(activity);
        let mut answer = serde_json::to_value(&explanation).expect("an explanation serialises");
        if let Some(s) = explanation.resolution.tier.is_none().then(|| suggest_entry(resolver.mapping(), activity)).flatten() {
            answer["mapping_entry"] = s.toml.into();
            answer["note"] = s.note.into();
        }
        Ok::<_, ApiError>(answer)
    }
    .await;
    match result {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    account: String,
    /// Without a session, every stream of the account is closed.
    session: Option<String>,
}

/// Closes a session's stream, or every stream of an account, with `closed` `revoked`.
async fn revoke(State(hub): State<Arc<HubState>>, req: Request) -> Response {
    let result = async {
        let body = read_body(&hub, req).await?;
        let r: RevokeBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", e.to_string()).field("body"))?;
        let closed = hub.revoke(&r.account, r.session.as_deref());
        tracing::info!(account = %r.account, session = r.session.as_deref().unwrap_or("*"), closed, "streams revoked from the admin page");
        Ok::<_, ApiError>(closed)
    }
    .await;
    match result {
        Ok(closed) => axum::Json(json!({ "closed": closed })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Publishes one test activity, in the body format of `POST /events` (one item), as publisher
/// `admin`: resolved, stored and fanned out like any other, to its audience if it names one.
async fn publish(State(hub): State<Arc<HubState>>, req: Request) -> Response {
    let result = async {
        let body = read_body(&hub, req).await?;
        let mut items = parse_body(&body).map_err(|e| {
            let (status, code) = match e.kind {
                PublishErrorKind::Syntax => (StatusCode::BAD_REQUEST, "malformed_body"),
                _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            };
            ApiError::new(status, code, e.message.clone()).field(e.field)
        })?;
        if items.len() != 1 {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "publish one activity at a time here").field("body"));
        }
        let item = items.remove(0);
        let id = hub.publish_as(&item.account, &item.activity, item.audience, ADMIN_PUBLISHER).await.map_err(|e| {
            tracing::warn!(error = %e, "test activity from the admin page not published");
            crate::http::store_failed(&e)
        })?;
        tracing::info!(account = %item.account, id = %id, "test activity published from the admin page");
        Ok::<_, ApiError>(id)
    }
    .await;
    match result {
        Ok(id) => (StatusCode::ACCEPTED, axum::Json(json!({ "ids": [id.to_string()] }))).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The request body, at most `limits.publish_body_bytes` (413 beyond).
async fn read_body(hub: &HubState, req: Request) -> Result<Bytes, ApiError> {
    let limit = hub.config().limits.publish_body_bytes;
    axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body exceeds {limit} bytes")).field("body")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "body_unreadable", "the request body could not be read").field("body")
        }
    })
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

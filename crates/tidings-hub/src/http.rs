//! The HTTP edge: routes, request checks, and the mapping of outcomes to responses.
//!
//! Handlers here translate; the rules live elsewhere (auth, protocol, engine, fan-out).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use tidings_protocol::frame::{Connected, activity_payload, encode_connected, encode_resync, encode_retry};
use tidings_protocol::publish::{PublishErrorKind, parse_body};
use tidings_protocol::{CloseReason, EventId};
use tidings_protocol::resume::{LastEventId, ResumeDecision};
use tokio_util::sync::CancellationToken;

use crate::HubState;
use crate::engine::{Accepted, EngineError, NewEvent};
use crate::error::{ApiError, RETRY_AFTER_BUSY_SECS, RETRY_AFTER_UNAVAILABLE_SECS};
use crate::fanout::{NewStream, RegisterError, WriterLink};
use crate::h1::ConnectionHandle;
use crate::stream::SseBody;

/// The hub's routes. `with_metrics`: whether `/metrics` is among them (not when the admin page
/// has a listener of its own, which then serves it: see [`operations_router`]).
pub fn router(state: Arc<HubState>, with_metrics: bool) -> Router {
    let mut router = Router::new()
        .route("/events/stream", get(stream))
        .route("/events", post(publish))
        .route("/sessions/revoke", post(revoke))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/mapping", get(mapping));
    if with_metrics {
        router = router.route("/metrics", get(metrics));
    }
    router.layer(axum::middleware::from_fn_with_state(state.clone(), live_cors)).with_state(state)
}

/// What an internal listener (`[admin] listen`) serves beside the admin page: `/metrics`, and
/// the health checks, so that probes and scrapes need no public port.
pub(crate) fn operations_router(state: Arc<HubState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Applies the CORS layer of the configuration in effect (a reload may change the origins),
/// or none when no origin is listed.
async fn live_cors(State(hub): State<Arc<HubState>>, req: Request, next: axum::middleware::Next) -> Response {
    use tower::ServiceExt;
    let Some(layer) = hub.live().cors.clone() else { return next.run(req).await };
    let Ok(response) = tower::Layer::layer(&layer, next).oneshot(req).await;
    response
}

/// CORS for consoles served from another origin: exact origins only, with credentials (the
/// session cookie), and the headers the SDKs send. No layer at all when no origin is listed,
/// so browsers refuse cross-origin reads by default.
pub(crate) fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins.iter().map(|o| HeaderValue::from_str(o).expect("origins are checked by Config::validate")).collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([http::Method::GET, http::Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::CACHE_CONTROL, http::HeaderName::from_static("last-event-id")])
            .max_age(Duration::from_secs(600)),
    )
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    last_event_id: Option<String>,
    access_token: Option<String>,
}

async fn stream(State(hub): State<Arc<HubState>>, Query(query): Query<StreamQuery>, req: Request) -> Response {
    let arrived = hub.fanout().ticket();
    let query = Some(query);
    let conn = req.extensions().get::<ConnectionHandle>().map(|c| c.0.clone());
    match open_stream(&hub, req.uri(), req.headers(), query, conn, arrived).await {
        Ok(resp) => resp,
        Err(e) => {
            hub.metrics().stream_refusals.get_or_create(&crate::metrics::CodeLabel { code: e.code }).inc();
            tracing::debug!(code = e.code, "stream refused");
            e.into_response()
        }
    }
}

async fn open_stream(
    hub: &Arc<HubState>,
    uri: &http::Uri,
    headers: &HeaderMap,
    query: Option<StreamQuery>,
    conn: Option<CancellationToken>,
    arrived: u64,
) -> Result<Response, ApiError> {
    if hub.is_draining() {
        return Err(ApiError::unavailable("draining", "the hub is shutting down", RETRY_AFTER_BUSY_SECS));
    }
    let query_token = query.as_ref().and_then(|q| q.access_token.as_deref());
    let generation = hub.generation();
    let identity = hub.identify_request(uri, headers, query_token).await?;
    if !accepts_event_stream(headers) {
        return Err(ApiError::new(StatusCode::NOT_ACCEPTABLE, "not_acceptable", "this endpoint only serves text/event-stream"));
    }
    let now = Instant::now();
    let deadline = stream_deadline(hub, identity.expires_at, now)?;
    let viewer = identity.viewer();
    let stream = hub
        .fanout()
        .register(NewStream {
            account: identity.account.clone(),
            viewer: viewer.clone(),
            credential: identity.credential,
            deadline,
            connection: conn,
            arrived,
        })
        .map_err(|e| match e {
            RegisterError::NodeFull => ApiError::unavailable("node_full", "this node holds its maximum of streams", RETRY_AFTER_BUSY_SECS),
            RegisterError::Overtaken => ApiError::new(StatusCode::CONFLICT, "superseded", "a newer stream of this session is already open"),
            RegisterError::AccountFull => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "account_full", "this account holds its maximum of streams")
                .retry_after(RETRY_AFTER_BUSY_SECS),
        })?;
    if !hub.still_vouched(generation, identity.credential) {
        // A reload removed the credential while this request was being authenticated.
        hub.fanout().deregister(&stream);
        return Err(crate::auth::AuthError::Invalid.into());
    }
    let opening = match hub.engine().open(&identity.account, resume_position(headers, query.as_ref()), &viewer).await {
        Ok(o) => o,
        Err(e) => {
            hub.fanout().deregister(&stream);
            tracing::warn!(error = %e, "cannot open stream");
            return Err(ApiError::unavailable("engine_unavailable", "history is unavailable; retry shortly", RETRY_AFTER_UNAVAILABLE_SECS));
        }
    };
    hub.metrics().streams_opened.inc();
    let mut buf = BytesMut::with_capacity(256 + opening.replay.iter().map(|f| f.bytes.len()).sum::<usize>());
    buf.put_slice(encode_retry(hub.config().retry.as_millis() as u64).as_bytes());
    let client_id = format!("c_{:016x}", rand::random::<u64>());
    let timestamp = now_rfc3339();
    let connected = Connected {
        client_id: &client_id,
        timestamp: &timestamp,
        session_id: &identity.session,
        resumed: matches!(opening.decision, ResumeDecision::Replay { .. }),
        heartbeat_ms: hub.config().heartbeat.as_millis() as u64,
    };
    buf.put_slice(encode_connected(opening.position, &connected).as_bytes());
    match opening.decision {
        ResumeDecision::Fresh => {}
        ResumeDecision::Replay { .. } => {
            hub.metrics().replays.inc();
            hub.metrics().replayed_events.inc_by(opening.replay.len() as u64);
            for f in &opening.replay {
                buf.put_slice(&f.bytes);
            }
        }
        ResumeDecision::Resync(reason) => {
            hub.metrics().resyncs.get_or_create(&crate::metrics::ReasonLabel { reason: reason.as_str() }).inc();
            buf.put_slice(encode_resync(reason, None).as_bytes());
        }
    }
    tracing::debug!(account = %identity.account, session = %identity.session, stream = stream.id, "stream opened");
    // For the hub's own HTTP/1.1 writer, which drops the connection when the fan-out says so.
    let link = WriterLink::new(&stream);
    let body = SseBody::new(stream, hub.clone(), buf.freeze(), opening.live_from());
    let mut resp = Response::new(Body::new(body));
    resp.extensions_mut().insert(link);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// The client's resume position: the `Last-Event-ID` header (which a native `EventSource`
/// sends on its own reconnects), else the `last_event_id` query parameter. Read here, once:
/// engines get a typed value, never the client's text.
fn resume_position(headers: &HeaderMap, query: Option<&StreamQuery>) -> LastEventId {
    match headers.get("last-event-id") {
        Some(v) => LastEventId::from_bytes(v.as_bytes()),
        None => query.and_then(|q| q.last_event_id.as_deref()).map_or(LastEventId::None, LastEventId::parse),
    }
}

/// When the stream must end on its own: the credential's expiry or the lifetime cap (with up
/// to 10% taken off at random so streams opened together do not all end together).
fn stream_deadline(hub: &HubState, expires_at: Option<SystemTime>, now: Instant) -> Result<Option<(Instant, CloseReason)>, ApiError> {
    let expiry = match expires_at {
        None => None,
        Some(at) => match at.duration_since(SystemTime::now()) {
            Ok(left) if !left.is_zero() => Some((now + left, CloseReason::TokenExpired)),
            _ => return Err(crate::auth::AuthError::Expired.into()),
        },
    };
    let lifetime = hub.config().limits.stream_lifetime.map(|l| {
        let cut = rand::random_range(0..=l.as_millis() as u64 / 10);
        (now + l - Duration::from_millis(cut), CloseReason::Lifetime)
    });
    Ok(match (expiry, lifetime) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    })
}

/// Whether `Accept` admits `text/event-stream` (no header admits everything).
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    let values: Vec<_> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    if values.is_empty() {
        return true;
    }
    values.iter().flat_map(|v| v.split(',')).any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let refused = parts.any(|p| p.replace(' ', "").parse::<String>().is_ok_and(|p| p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"));
        !refused && matches!(media.as_str(), "text/event-stream" | "text/*" | "*/*")
    })
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

async fn publish(State(hub): State<Arc<HubState>>, req: Request) -> Response {
    let started = Instant::now();
    match publish_inner(&hub, req).await {
        Ok(accepted) => {
            hub.metrics().publish_latency.observe(started.elapsed().as_secs_f64());
            (StatusCode::ACCEPTED, axum::Json(accepted_body(&accepted))).into_response()
        }
        Err(e) => {
            hub.metrics().publish_rejections.get_or_create(&crate::metrics::CodeLabel { code: e.code }).inc();
            tracing::debug!(code = e.code, "publish refused");
            e.into_response()
        }
    }
}

async fn publish_inner(hub: &Arc<HubState>, req: Request) -> Result<Vec<Accepted>, ApiError> {
    let publisher = hub.auth().check_publisher(req.headers())?;
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "application/json" && !media.ends_with("+json") {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "send Content-Type: application/json")
            .field("Content-Type"));
    }
    let limit = hub.config().limits.publish_body_bytes;
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body exceeds {limit} bytes")).field("body")
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let body: Bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            too_large()
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "body_unreadable", "the request body could not be read").field("body")
        }
    })?;
    let mut items = parse_body(&body).map_err(|e| {
        let status = match e.kind {
            PublishErrorKind::Syntax => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let code = if status == StatusCode::BAD_REQUEST { "malformed_body" } else { "invalid_field" };
        ApiError::new(status, code, e.message.clone()).field(e.field)
    })?;
    let batch: Vec<NewEvent> = items
        .iter_mut()
        .map(|item| {
            let keys = hub.resolve(&item.activity);
            let audience = hub.audience(item.audience.take(), &item.activity);
            NewEvent {
                account: item.account.as_str().into(),
                payload: activity_payload(&item.data, &keys.invalidate, &keys.remove).into(),
                audience,
                key: item.key.as_deref().map(Into::into),
            }
        })
        .collect();
    let events = batch.len();
    let accepted = hub.store(batch).await.map_err(|e| {
        tracing::warn!(error = %e, %publisher, events, "publish failed");
        store_failed(&e)
    })?;
    let duplicates = accepted.iter().filter(|a| a.duplicate).count();
    tracing::debug!(%publisher, events, duplicates, "published");
    if hub.admin_enabled() {
        // A duplicate was shown when it was first stored.
        let (shown, ids): (Vec<(&str, &serde_json::Value)>, Vec<EventId>) = items
            .iter()
            .zip(&accepted)
            .filter(|(_, a)| !a.duplicate)
            .map(|(i, a)| ((i.account.as_str(), &i.activity), a.id))
            .unzip();
        hub.published(&shown, &ids, &publisher);
    }
    Ok(accepted)
}

/// The 503 for a publish the engine could not store, saying truthfully whether nothing or
/// part of the batch was stored (the latter only with Redis shards; see docs/protocol.md).
pub(crate) fn store_failed(e: &EngineError) -> ApiError {
    let message = match e {
        EngineError::PartlyStored(_) => "part of the event store is unavailable; items of this batch on other shards were stored, retry the batch with the same keys",
        _ => "the event store is unavailable; nothing was published",
    };
    ApiError::unavailable("engine_unavailable", message, RETRY_AFTER_UNAVAILABLE_SECS)
}

/// The `202` answer: `{"ids": [...]}` in item order, plus `"duplicates": [positions]` when
/// some items carried a key that was already accepted (their `ids` entry is the first id).
fn accepted_body(accepted: &[Accepted]) -> serde_json::Value {
    let ids: Vec<String> = accepted.iter().map(|a| a.id.to_string()).collect();
    let duplicates: Vec<usize> = accepted.iter().enumerate().filter(|(_, a)| a.duplicate).map(|(i, _)| i).collect();
    if duplicates.is_empty() {
        serde_json::json!({ "ids": ids })
    } else {
        serde_json::json!({ "ids": ids, "duplicates": duplicates })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    account: String,
    /// Without a session, every stream of the account is closed.
    session: Option<String>,
}

/// Ends the open streams of a session (sign-out elsewhere, a revoked token) with `closed`
/// `revoked`, after which SDKs do not reconnect. Publishers only. The host application must
/// also stop accepting the credential, or the client may sign in again.
async fn revoke(State(hub): State<Arc<HubState>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = (|| {
        let publisher = hub.auth().check_publisher(&headers)?;
        let req: RevokeBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", e.to_string()).field("body")
        })?;
        let closed = hub.revoke(&req.account, req.session.as_deref());
        tracing::info!(%publisher, account = %req.account, session = req.session.as_deref().unwrap_or("*"), closed, "streams revoked");
        Ok::<_, ApiError>(closed)
    })();
    match result {
        Ok(closed) => axum::Json(serde_json::json!({ "closed": closed })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(hub): State<Arc<HubState>>) -> Response {
    let draining = hub.is_draining();
    let engine = hub.engine().is_ready();
    let mut body = serde_json::json!({ "ready": engine && !draining, "engine": hub.engine_name(), "engine_ready": engine, "draining": draining });
    let shards = hub.engine().shards_ready();
    if !shards.is_empty() {
        body["engine_shards_ready"] = shards.into();
    }
    let status = if engine && !draining { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// The invalidation mapping in JSON, so browser SDKs resolve with the same table as the hub.
async fn mapping(State(hub): State<Arc<HubState>>) -> Response {
    let mut resp = hub.mapping_json().to_string().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn metrics(State(hub): State<Arc<HubState>>) -> Response {
    hub.metrics().engine_ready.set(i64::from(hub.engine().is_ready()));
    let mut resp = hub.metrics().render().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {


    use super::*;

    #[test]
    fn accept_header() {
        let check = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            }
            accepts_event_stream(&h)
        };
        assert!(check(None));
        assert!(check(Some("text/event-stream")));
        assert!(check(Some("application/json, */*;q=0.1")));
        assert!(check(Some("text/*")));
        assert!(!check(Some("application/json")));
        assert!(!check(Some("text/event-stream;q=0")));
    }

    #[test]
    fn resume_position_prefers_the_header_and_reads_it_once() {
        let query = |id: &str| Some(StreamQuery { last_event_id: Some(id.into()), access_token: None });
        let mut h = HeaderMap::new();
        assert_eq!(resume_position(&h, None), LastEventId::None);
        assert_eq!(resume_position(&h, query("ab-7").as_ref()), LastEventId::Id(EventId::new(0xab, 7)));
        h.insert("last-event-id", HeaderValue::from_static("ab-9"));
        assert_eq!(resume_position(&h, query("ab-7").as_ref()), LastEventId::Id(EventId::new(0xab, 9)));
        h.insert("last-event-id", HeaderValue::from_bytes(b"ab-9\xe9").unwrap());
        assert_eq!(resume_position(&h, None), LastEventId::Invalid, "bytes that are not text are no id");
        h.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(resume_position(&h, query("ab-7").as_ref()), LastEventId::None, "an empty header is no position");
    }
}

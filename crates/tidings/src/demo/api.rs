//! The demo's HTTP API under `/demo/api/`: sign-in as a demo user, applications per account
//! (list, detail, create, edit, delete), firewall rules (list, edit) for holders of
//! `firewall:read` only, and the account's recent activity as far as the caller may see it.
//!
//! Requests are authenticated exactly like streams, by the hub's own authenticator (session
//! cookie or `Authorization` header), so the page and its stream always agree on who is signed
//! in, and a cookie sent from another site is refused the same way (`403` `cross_site`). Every
//! request that changes something must be a JSON request (`Content-Type: application/json`,
//! or a method a form cannot send), so a plain cross-site form post cannot reach it. Every
//! change is published through the hub in-process. Not a template for a real API: the sign-in
//! needs no password.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tidings_hub::HubState;
use tidings_hub::error::ApiError;
use tidings_protocol::{Audience, Viewer};

use super::store::{Changes, Editor, FIREWALL_GRANT, RULE_AUDIENCE, RuleChanges, Store, StoreError};
use super::users::{DemoUser, USERS};

/// How long a sign-in lasts (the JWT's `exp`); the hub ends the stream then (`token_expired`).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

#[derive(Debug, Clone)]
pub struct Demo {
    pub hub: Arc<HubState>,
    pub store: Arc<Mutex<Store>>,
    /// HS256 secret the hub verifies session tokens with.
    pub jwt_secret: Arc<str>,
}

pub fn router(demo: Demo) -> Router {
    Router::new()
        .route("/demo/api/users", get(users))
        .route("/demo/api/login", post(login))
        .route("/demo/api/logout", post(logout))
        .route("/demo/api/me", get(me))
        .route("/demo/api/activity", get(activity))
        .route("/demo/api/applications", get(list).post(create))
        .route("/demo/api/applications/{id}", get(detail).patch(edit).delete(delete))
        .route("/demo/api/firewall-rules", get(rules))
        .route("/demo/api/firewall-rules/{id}", axum::routing::patch(edit_rule))
        .route_layer(axum::middleware::from_fn_with_state(demo.clone(), guard))
        .with_state(demo)
}

/// Refuses, before any handler runs, what a page on another site could make a signed-in
/// browser send: a request without an `Authorization` header (so sent with the ambient cookie,
/// or a sign-in) from another origin, and a `POST` or `PATCH` that is not JSON (a form post is
/// a "simple" request that browsers send cross-site without asking).
async fn guard(State(demo): State<Demo>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if !headers.contains_key(header::AUTHORIZATION) {
        if let Err(e) = demo.hub.check_origin(req.uri(), headers) {
            return ApiError::from(e).into_response();
        }
    }
    if matches!(*req.method(), Method::POST | Method::PATCH | Method::PUT) && !is_json(headers) {
        return ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "send Content-Type: application/json")
            .field("Content-Type")
            .into_response();
    }
    next.run(req).await
}

fn is_json(headers: &HeaderMap) -> bool {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json")
}

/// The signed-in caller, as the hub's authenticator sees the request.
#[derive(Debug)]
struct Caller {
    account: String,
    session: String,
    editor: Editor,
    /// The session's grants as the hub sees them, the same that decide what its stream gets.
    viewer: Viewer,
}

impl Caller {
    /// Refuses a caller without the firewall grant (the page hides the rules from them, and
    /// the hub never sends them a rule's activity).
    fn may_see_rules(&self) -> Result<(), ApiError> {
        if self.viewer.holds(FIREWALL_GRANT) {
            return Ok(());
        }
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "firewall rules are for holders of firewall:read"))
    }
}

async fn caller(demo: &Demo, uri: &Uri, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let identity = demo.hub.identify(uri, headers).await?;
    let user = USERS.iter().find(|u| u.email == &*identity.user);
    let name = user.map_or_else(|| identity.user.to_string(), |u| u.name.to_owned());
    Ok(Caller {
        account: identity.account.to_string(),
        session: identity.session.to_string(),
        editor: Editor { email: identity.user.to_string(), name },
        viewer: identity.viewer(),
    })
}

async fn users() -> Json<Value> {
    Json(json!({ "users": USERS.iter().map(DemoUser::public).collect::<Vec<_>>() }))
}

#[derive(Debug, Deserialize)]
struct Login {
    user: String,
}

async fn login(State(demo): State<Demo>, Json(body): Json<Login>) -> Response {
    let Some(user) = USERS.iter().find(|u| u.id == body.user) else {
        return ApiError::new(StatusCode::NOT_FOUND, "unknown_user", "no such demo user").field("user").into_response();
    };
    let session = format!("s-{}-{:08x}", user.id, rand::random::<u32>());
    let exp = (SystemTime::now() + SESSION_LIFETIME).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let claims = json!({ "account": user.account, "sub": user.email, "sid": session, "exp": exp, "grants": user.grants });
    let key = jsonwebtoken::EncodingKey::from_secret(demo.jwt_secret.as_bytes());
    let token = match jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a demo session");
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "cannot sign in").into_response();
        }
    };
    let cookie = format!("{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", demo.hub.cookie_name(), SESSION_LIFETIME.as_secs());
    let me = json!({ "user": user.public(), "account": user.account, "session": session, "grants": user.grants });
    with_cookie(Json(me).into_response(), &cookie)
}

async fn logout(State(demo): State<Demo>) -> Response {
    let cookie = format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", demo.hub.cookie_name());
    with_cookie(StatusCode::NO_CONTENT.into_response(), &cookie)
}

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn me(State(demo): State<Demo>, uri: Uri, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let c = caller(&demo, &uri, &headers).await?;
    let user = USERS.iter().find(|u| u.email == c.editor.email).map(DemoUser::public);
    let grants: Vec<&str> = c.viewer.grants().iter().collect();
    Ok(Json(json!({ "user": user, "account": c.account, "session": c.session, "grants": grants })))
}

async fn activity(State(demo): State<Demo>, uri: Uri, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let c = caller(&demo, &uri, &headers).await?;
    Ok(Json(json!({ "activity": demo.store.lock().expect("store lock").feed(&c.account, |g| c.viewer.holds(g)) })))
}

async fn rules(State(demo): State<Demo>, uri: Uri, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let c = caller(&demo, &uri, &headers).await?;
    c.may_see_rules()?;
    Ok(Json(json!({ "rules": demo.store.lock().expect("store lock").rules(&c.account) })))
}

async fn edit_rule(State(demo): State<Demo>, uri: Uri, headers: HeaderMap, Path(id): Path<u64>, Json(changes): Json<RuleChanges>) -> Result<Json<Value>, ApiError> {
    let c = caller(&demo, &uri, &headers).await?;
    c.may_see_rules()?;
    let result = demo.store.lock().expect("store lock").edit_rule(&c.account, id, &c.editor, changes);
    let (rule, activity) = result.map_err(store_error)?;
    publish_rule(&demo, &c.account, &activity).await;
    Ok(Json(json!(rule)))
}

async fn list(State(demo): State<Demo>, uri: Uri, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let c = caller(&demo, &uri, &headers).await?;
    Ok(Json(json!({ "applications": demo.store.lock().expect("store lock").list(&c.account) })))
}

async fn detail(State(demo): State<Demo>, uri: Uri, headers: HeaderMap, Path(id): Path<u64>) -> Result<Json<Value>, ApiError> {
    let c = caller(&demo, &uri, &headers).await?;
    let app = demo.store.lock().expect("store lock").get(&c.account, id).map_err(store_error)?;
    Ok(Json(json!(app)))
}

async fn create(State(demo): State<Demo>, uri: Uri, headers: HeaderMap, Json(changes): Json<Changes>) -> Result<Response, ApiError> {
    let c = caller(&demo, &uri, &headers).await?;
    let result = demo.store.lock().expect("store lock").create(&c.account, &c.editor, changes);
    let (app, activity) = result.map_err(store_error)?;
    publish(&demo, &c.account, &activity).await;
    Ok((StatusCode::CREATED, Json(json!(app))).into_response())
}

async fn edit(State(demo): State<Demo>, uri: Uri, headers: HeaderMap, Path(id): Path<u64>, Json(changes): Json<Changes>) -> Result<Json<Value>, ApiError> {
    let c = caller(&demo, &uri, &headers).await?;
    let result = demo.store.lock().expect("store lock").edit(&c.account, id, &c.editor, changes);
    let (app, activity) = result.map_err(store_error)?;
    publish(&demo, &c.account, &activity).await;
    Ok(Json(json!(app)))
}

async fn delete(State(demo): State<Demo>, uri: Uri, headers: HeaderMap, Path(id): Path<u64>) -> Result<StatusCode, ApiError> {
    let c = caller(&demo, &uri, &headers).await?;
    let result = demo.store.lock().expect("store lock").delete(&c.account, id, &c.editor);
    let activity = result.map_err(store_error)?;
    publish(&demo, &c.account, &activity).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Publishes a change. The change is already made; a failed publish is logged, and the other
/// screens catch up on their next refetch (the in-memory engine does not fail in practice).
pub async fn publish(demo: &Demo, account: &str, activity: &Value) {
    if let Err(e) = demo.hub.publish(account, activity).await {
        tracing::warn!(error = %e, account, "demo change not published");
    }
}

/// Publishes a firewall rule's change to the holders of the firewall grant only.
pub async fn publish_rule(demo: &Demo, account: &str, activity: &Value) {
    let audience = Audience::new(RULE_AUDIENCE.iter().copied()).expect("the rule audience is valid");
    if let Err(e) = demo.hub.publish_to(account, activity, Some(audience)).await {
        tracing::warn!(error = %e, account, "demo change not published");
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such application in this account"),
        StoreError::Invalid(why) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", why),
    }
}

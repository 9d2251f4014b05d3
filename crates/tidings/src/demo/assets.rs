//! The demo page: the Vite build of `demo/` (repository root), committed in
//! `crates/tidings/demo-dist/` and compiled into the binary, so `tidings demo` needs no Node at
//! run time. `scripts/test` checks that the committed build is what the sources produce.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../demo-dist/index.html");
const APP_JS: &str = include_str!("../../demo-dist/assets/app.js");
const APP_CSS: &str = include_str!("../../demo-dist/assets/app.css");

pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/assets/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/assets/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

/// File names are not content-hashed (the binary embeds fixed names), so browsers revalidate.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

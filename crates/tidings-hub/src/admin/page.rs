//! The admin page's files: hand-written HTML, JavaScript and CSS in `page/`, compiled into the
//! binary. No build step and no framework: the page is a handful of tables and SVG line charts
//! (polylines over the samples the hub keeps), which a few hundred lines do; a bundler, a UI
//! framework or a charting library would each be a dependency to keep current and a second
//! copy to keep in step with its sources (as the demo's committed build is), for nothing the
//! page needs. The files carry no data and are the same for every hub.

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use http::{HeaderValue, header};

use crate::HubState;

const INDEX_HTML: &str = include_str!("page/index.html");
const ADMIN_JS: &str = include_str!("page/admin.js");
const ADMIN_CSS: &str = include_str!("page/admin.css");

/// Only the page's own files, and calls to its own origin: no inline script or style, no
/// frames, no form posts anywhere. Publisher-controlled text is shown as text by the page; this
/// is the second line.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(super) fn router() -> Router<Arc<HubState>> {
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(|| async { file(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/admin/admin.js", get(|| async { file(ADMIN_JS, "text/javascript; charset=utf-8") }))
        .route("/admin/admin.css", get(|| async { file(ADMIN_CSS, "text/css; charset=utf-8") }))
}

fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Fixed names, not content-hashed: browsers revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

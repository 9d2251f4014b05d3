//! The GRIP backend behind Pushpin: answers every `GET /sub/<account>` with instructions to
//! hold the request open as an SSE stream on the channel `<account>`. Runs inside the harness,
//! so its memory is not counted as Pushpin's.

use std::net::SocketAddr;

use anyhow::Result;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::IntoResponse;

#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

async fn hold(uri: Uri) -> impl IntoResponse {
    let channel = uri.path().rsplit('/').next().unwrap_or("none").to_owned();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.insert("grip-hold", HeaderValue::from_static("stream"));
    if let Ok(v) = HeaderValue::from_str(&channel) {
        headers.insert("grip-channel", v);
    }
    (StatusCode::OK, headers, "")
}

impl Backend {
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(hold);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, task })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! The publisher against a scripted server: the exact request, and answers a real hub does
//! not give (a proxy's HTML error, a malformed success body).

mod support;

use serde_json::{Value, json};
use support::Server;
use tidings_client::{PublishError, Publisher};

#[tokio::test]
async fn sends_one_activity_and_reads_its_id() {
    let mut server = Server::start().await;
    let publisher = Publisher::new(&format!("{}/base/", server.url()), "pub-key");
    let activity = json!({"activity_type": "created", "x": [1, 2]});
    let call = tokio::spawn(async move { publisher.publish("acme", &activity).await });
    let conn = server.accept().await;
    assert_eq!(conn.request_line(), "POST /base/events HTTP/1.1");
    assert_eq!(conn.header("authorization").as_deref(), Some("Bearer pub-key"));
    assert_eq!(conn.header("content-type").as_deref(), Some("application/json"));
    let body: Value = serde_json::from_slice(&conn.body).unwrap();
    assert_eq!(body, json!({"account": "acme", "data": {"activity_type": "created", "x": [1, 2]}}));
    conn.respond("202 Accepted", &[("content-type", "application/json")], r#"{"ids":["a-1"]}"#).await;
    assert_eq!(call.await.unwrap(), Ok("a-1".to_owned()));
}

#[tokio::test]
async fn errors_without_the_hub_json_keep_status_and_body() {
    let mut server = Server::start().await;
    let url = server.url();
    let call = tokio::spawn(async move { Publisher::new(&url, "k").publish("a", &json!({})).await });
    server.accept().await.respond("502 Bad Gateway", &[], "<html>bad gateway</html>").await;
    assert_eq!(call.await.unwrap(), Err(PublishError::Status { status: 502, body: "<html>bad gateway</html>".into() }));

    let url = server.url();
    let call = tokio::spawn(async move { Publisher::new(&url, "k").publish("a", &json!({})).await });
    server.accept().await.respond("202 Accepted", &[], r#"{"ids":[]}"#).await;
    assert!(matches!(call.await.unwrap(), Err(PublishError::UnexpectedResponse(_))));
}

#[tokio::test]
async fn an_unusable_base_url_is_reported_by_publish() {
    let err = Publisher::new("not a url", "k").publish("a", &json!({})).await;
    assert!(matches!(err, Err(PublishError::InvalidUrl(_))));
}

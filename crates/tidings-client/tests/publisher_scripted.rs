//! The publisher against a scripted server: the exact request, answers a real hub does not
//! give (a proxy's HTML error, a malformed success body), and which failures are retried, how
//! long it waits, and that every retry carries the same keys.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Conn, Server};
use tidings_client::{Backoff, PublishError, PublishItem, Publisher, RetryPolicy};

/// Retries within a few hundred milliseconds, so the tests stay fast.
fn quick(give_up_after: Duration) -> RetryPolicy {
    RetryPolicy { give_up_after, backoff: Backoff { base: Duration::from_millis(20), cap: Duration::from_millis(100) } }
}

fn keys_of(conn: &Conn) -> Vec<Option<String>> {
    let body: Value = serde_json::from_slice(&conn.body).unwrap();
    body.as_array().unwrap().iter().map(|i| i["key"].as_str().map(str::to_owned)).collect()
}

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
    let key = body[0]["key"].as_str().expect("a generated key").to_owned();
    assert_eq!(key.len(), 32, "{key}");
    assert_eq!(body, json!([{"account": "acme", "key": key, "data": {"activity_type": "created", "x": [1, 2]}}]));
    conn.respond("202 Accepted", &[("content-type", "application/json")], r#"{"ids":["a-1"]}"#).await;
    assert_eq!(call.await.unwrap(), Ok("a-1".to_owned()));
}

#[tokio::test]
async fn errors_without_the_hub_json_keep_status_and_body() {
    let mut server = Server::start().await;
    let url = server.url();
    let call = tokio::spawn(async move { Publisher::new(&url, "k").with_retry(RetryPolicy::never()).publish("a", &json!({})).await });
    server.accept().await.respond("502 Bad Gateway", &[], "<html>bad gateway</html>").await;
    let gave_up = call.await.unwrap();
    let Err(PublishError::GaveUp { attempts: 1, last, .. }) = gave_up else { panic!("{gave_up:?}") };
    let call = async { Err::<String, _>(*last) };
    assert_eq!(call.await, Err(PublishError::Status { status: 502, body: "<html>bad gateway</html>".into() }));

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

#[tokio::test]
async fn retries_reuse_every_key_and_honour_retry_after() {
    let mut server = Server::start().await;
    let publisher = Publisher::new(&server.url(), "k").with_retry(quick(Duration::from_secs(10)));
    let items = vec![PublishItem::new("a", json!({"n": 1})).with_key("row-1"), PublishItem::new("a", json!({"n": 2}))];
    let started = Instant::now();
    let call = tokio::spawn(async move { publisher.submit(&items).await });

    let first = server.accept().await;
    let keys = keys_of(&first);
    assert_eq!(keys[0].as_deref(), Some("row-1"), "the caller's key is kept");
    assert!(keys[1].as_ref().is_some_and(|k| k.len() == 32), "the other item gets one: {keys:?}");
    first.respond("503 Service Unavailable", &[("retry-after", "1"), ("content-type", "application/json")], r#"{"error":{"code":"engine_unavailable","message":"x"}}"#).await;

    let second = server.accept().await;
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After is a floor: {:?}", started.elapsed());
    assert_eq!(keys_of(&second), keys, "a retry sends the same keys");
    // The connection drops before an answer: the publish may have been stored; retry.
    drop(second);

    let third = server.accept().await;
    assert_eq!(keys_of(&third), keys);
    third.respond("202 Accepted", &[("content-type", "application/json")], r#"{"ids":["e-3","e-4"],"duplicates":[0]}"#).await;
    let receipt = call.await.unwrap().unwrap();
    assert_eq!((receipt.ids, receipt.duplicates, receipt.attempts), (vec!["e-3".to_owned(), "e-4".to_owned()], vec![0], 3));
    assert_eq!(receipt.keys.iter().map(|k| Some(k.clone())).collect::<Vec<_>>(), keys);
}

#[tokio::test]
async fn client_errors_other_than_408_and_429_are_not_retried() {
    let mut server = Server::start().await;
    let url = server.url();
    let call = tokio::spawn(async move { Publisher::new(&url, "k").with_retry(quick(Duration::from_secs(10))).publish("a", &json!({})).await });
    server.accept().await.respond("408 Request Timeout", &[], "").await;
    server.accept().await.respond("429 Too Many Requests", &[("retry-after", "0")], "").await;
    server
        .accept()
        .await
        .respond("422 Unprocessable Entity", &[], r#"{"error":{"code":"invalid_field","message":"is required","field":"data.activity_type"}}"#)
        .await;
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(&err, PublishError::Hub { status: 422, field: Some(f), .. } if f == "data.activity_type"), "{err:?}");
    assert!(!err.is_retryable());
    server.assert_no_request(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn gives_up_with_a_typed_error_once_its_time_is_up() {
    let mut server = Server::start().await;
    let url = server.url();
    let started = Instant::now();
    let call = tokio::spawn(async move { Publisher::new(&url, "k").with_retry(quick(Duration::from_millis(400))).publish("a", &json!({})).await });
    let mut attempts = 0;
    let err = loop {
        tokio::select! {
            conn = server.accept() => {
                attempts += 1;
                conn.respond("500 Internal Server Error", &[], "boom").await;
            }
            done = async { while !call.is_finished() { tokio::time::sleep(Duration::from_millis(10)).await } } => {
                let () = done;
                break call.await.unwrap().unwrap_err();
            }
        }
    };
    let PublishError::GaveUp { attempts: n, elapsed, last } = err else { panic!("{err:?}") };
    assert_eq!(n, attempts, "every attempt reached the server");
    assert!(n >= 3, "retried several times within 400 ms: {n}");
    assert!(elapsed <= Duration::from_millis(400) && started.elapsed() < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(*last, PublishError::Status { status: 500, body: "boom".into() });
}

#[tokio::test]
async fn a_hub_that_is_not_there_is_retried_then_given_up() {
    // A port nothing listens on: every attempt is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = Publisher::new(&format!("http://127.0.0.1:{port}"), "k").with_retry(quick(Duration::from_millis(300))).publish("a", &json!({})).await;
    let Err(PublishError::GaveUp { attempts, last, .. }) = err else { panic!("{err:?}") };
    assert!(attempts > 1 && matches!(*last, PublishError::Network(_)), "{attempts} {last:?}");
}

//! The publish endpoint, black-box: every kind of bad input gets a clear error naming the
//! field, and nothing from a rejected batch is published.

mod support;

use std::time::Duration;

use support::*;

async fn refused(hub: &Hub, body: &str, content_type: &str, key: &str) -> (u16, String, String) {
    let (status, answer) = hub.publish_raw(body, content_type, key).await;
    let e = &answer["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "error has a message: {answer}");
    (status, e["code"].as_str().unwrap_or("").to_owned(), e["field"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_nothing_published() {
    let hub = Hub::start(&config("", "[limits]\npublish_body_bytes = 4096\n")).await;
    let mut s = Sse::token(&hub, "tok-alice").await;
    s.next_within(T).await.unwrap();
    let ok = r#"{"account":"acme","data":{"activity_type":"created"}}"#;
    let json = "application/json";
    let cases: Vec<(String, &str, u16, &str)> = vec![
        ("{not json".into(), json, 400, "body"),
        ("\"just a string\"".into(), json, 400, "body"),
        (ok.into(), "text/plain", 415, "Content-Type"),
        ("x".repeat(5000), json, 413, "body"),
        (r#"{"data":{"activity_type":"created"}}"#.into(), json, 422, "account"),
        (r#"{"account":"acme"}"#.into(), json, 422, "data"),
        (r#"{"account":"acme","data":{"activity_type":"renamed"}}"#.into(), json, 422, "data.activity_type"),
        (r#"{"account":"acme","data":{"activity_type":"created","resource":"app"}}"#.into(), json, 422, "data.resource"),
        (r#"{"account":"acme","data":{"activity_type":"created"},"acount":"x"}"#.into(), json, 422, "acount"),
        (format!(r#"[{ok},{ok},{{"account":"acme","data":{{"activity_type":"created","parent":{{"type":7}}}}}}]"#), json, 422, "[2].data.parent.type"),
        ("[]".into(), json, 422, "body"),
    ];
    for (body, ct, status, field) in &cases {
        let (got_status, code, got_field) = refused(&hub, body, ct, PUBLISHER_KEY).await;
        assert_eq!((got_status, got_field.as_str()), (*status, *field), "body {:.80} -> code {code}", body);
    }
    // Invalid UTF-8 in a JSON body.
    let resp = reqwest::Client::new()
        .post(hub.url("/events"))
        .bearer_auth(PUBLISHER_KEY)
        .header("content-type", json)
        .body(b"{\"account\":\"\xff\xfe\",\"data\":{}}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Nothing from any refused request reached the subscriber.
    s.expect_quiet(Duration::from_millis(300)).await;
    assert_eq!(hub.metric("tidings_events_published_total").await, 0.0);
    assert_eq!(hub.metric("tidings_publish_rejections_total").await, cases.len() as f64 + 1.0);
    // And a good batch still goes through.
    let ids = hub.publish("acme", &[activity(1), activity(2)]).await;
    assert_eq!(ids.len(), 2);
    assert_eq!(s.activities(2, T).await, vec![1, 2]);
}

#[tokio::test]
async fn only_publisher_keys_publish() {
    let hub = Hub::start(&config("", "")).await;
    let ok = r#"{"account":"acme","data":{"activity_type":"created"}}"#;
    let (status, code, _) = refused(&hub, ok, "application/json", "tok-alice").await;
    assert_eq!((status, code.as_str()), (403, "forbidden"), "user tokens cannot publish");
    let (status, _, _) = refused(&hub, ok, "application/json", "wrong-key-123").await;
    assert_eq!(status, 401);
    let resp = reqwest::Client::new().post(hub.url("/events")).header("content-type", "application/json").body(ok).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn updated_is_accepted_and_numeric_accounts_are_text() {
    let hub = Hub::start(&config("", "")).await;
    let mut s = Sse::token(&hub, "tok-alice").await;
    s.next_within(T).await.unwrap();
    let (status, answer) =
        hub.publish_raw(r#"{"account":"acme","data":{"activity_type":"updated","metadata":{"n":5}}}"#, "application/json; charset=utf-8", PUBLISHER_KEY).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(s.activities(1, T).await, vec![5]);
}

#[tokio::test]
async fn a_key_is_stored_once_in_the_memory_engine() {
    let hub = Hub::start(&config("", IDEMPOTENCY_HISTORY_TOML)).await;
    idempotent_publish_holds(&hub).await;
}

/// Runs `tidings publish` with `args`; returns success, stdout and stderr.
async fn publish_cli(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings")).arg("publish").args(args).output().await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn the_publish_command_reuses_keys_and_gives_up_with_a_clear_error() {
    let hub = Hub::start(&config("", "")).await;
    let data = activity(1).to_string();
    let args = ["--url", &hub.url(""), "--key", PUBLISHER_KEY, "--account", "acme", "--data", &data, "--item-key", "order-1"];
    let (ok, first, err) = publish_cli(&args).await;
    assert!(ok, "{err}");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!((first["duplicates"].as_array().map(Vec::len), first["keys"][0].as_str()), (Some(0), Some("order-1")), "{first}");
    let (ok, second, err) = publish_cli(&args).await;
    assert!(ok, "{err}");
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!((&second["ids"], &second["duplicates"]), (&first["ids"], &serde_json::json!([0])), "{second}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let (ok, _, err) = publish_cli(&["--url", &url, "--key", "k", "--account", "acme", "--data", &data, "--retry-for", "1s"]).await;
    assert!(!ok && err.contains("gave up after") && err.contains("attempts"), "{err}");
}

//! Wire conformance, black-box and data-driven: every scenario in `fixtures/conformance/*.json`
//! runs against the real hub and its transcript (what each stream and publish observed) is
//! compared with the scenario's `expect`. The format is in `fixtures/conformance/README.md`.
//!
//! Besides the transcript, every frame read is checked against docs/protocol.md on its own: headers of
//! each opened stream, the shape of each frame type, ids made only of `[0-9a-f-]` (so a
//! client-supplied id is never echoed) and increasing activity ids within a stream. A frame
//! split by anything (an id, a payload) fails the harness's line check.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/conformance");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir.display());
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conformance_scenario() {
    let mut failures = Vec::new();
    let mut count = 0;
    for file in scenario_files() {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for scenario in doc["scenarios"].as_array().expect("scenarios") {
            count += 1;
            let name = format!("{}: {}", file.file_name().unwrap().to_string_lossy(), scenario["name"].as_str().unwrap());
            let expected: Vec<String> = serde_json::from_value(scenario["expect"].clone()).expect("expect is a list of strings");
            let run = tokio::spawn(run_scenario(scenario.clone()));
            match tokio::time::timeout(Duration::from_secs(60), run).await {
                Ok(Ok(got)) if got == expected => {}
                Ok(Ok(got)) => failures.push(format!("{name}\n  expected: {expected:#?}\n  got:      {got:#?}")),
                Ok(Err(e)) => failures.push(format!("{name}\n  panicked: {e}")),
                Err(_) => failures.push(format!("{name}\n  timed out")),
            }
        }
    }
    assert!(failures.is_empty(), "{} of {count} scenarios failed:\n{}", failures.len(), failures.join("\n\n"));
    println!("{count} conformance scenarios passed");
}

/// What a step does; its other keys are its arguments.
const VERBS: [&str; 8] = ["open", "read", "quiet", "end", "drop", "publish", "publish_raw", "restart"];

/// Per-stream state kept by the runner.
#[derive(Default)]
struct StreamState {
    /// Last id seen on the stream (`connected`'s included); kept after the stream is dropped.
    last_id: Option<String>,
    last_activity: Option<(u64, u64)>,
}

async fn run_scenario(s: Value) -> Vec<String> {
    let extra = s["config"]["extra"].as_str().unwrap_or("");
    let tables = s["config"]["tables"].as_str().unwrap_or("");
    let mut hub = Hub::start(&config(extra, tables)).await;
    let mut open: HashMap<String, Sse> = HashMap::new();
    let mut state: HashMap<String, StreamState> = HashMap::new();
    let mut out = Vec::new();
    for step in s["steps"].as_array().expect("steps") {
        let step = step.as_object().expect("a step is an object");
        let (verb, arg) = step.iter().find(|(k, _)| VERBS.contains(&k.as_str())).unwrap_or_else(|| panic!("a step needs one of {VERBS:?}: {step:?}"));
        let label = arg.as_str().unwrap_or_default().to_owned();
        match verb.as_str() {
            "open" => {
                let sse = open_stream(&hub, &label, step, &state).await;
                match sse.status {
                    200 => {
                        check_stream_headers(&label, &sse.headers);
                        out.push(format!("{label}: 200"));
                        state.entry(label.clone()).or_default();
                        open.insert(label, sse);
                    }
                    _ => out.push(format!("{label}: {}", refusal(sse).await)),
                }
            }
            "read" => {
                if let Some(first) = step.get("publish_first") {
                    for (account, ns) in first.as_object().unwrap() {
                        hub.publish(account, &markers(ns).into_iter().map(activity).collect::<Vec<_>>()).await;
                    }
                }
                let sse = open.get_mut(&label).unwrap_or_else(|| panic!("no open stream {label}"));
                let st = state.get_mut(&label).unwrap();
                for _ in 0..step["count"].as_u64().unwrap() {
                    let ev = sse.next_non_ping(T).await.unwrap_or_else(|| panic!("{label}: stream ended early"));
                    out.push(format!("{label}: {}", describe(&label, &ev, st)));
                }
            }
            "quiet" => {
                let sse = open.get_mut(&label).unwrap();
                sse.expect_quiet(Duration::from_millis(step["ms"].as_u64().unwrap())).await;
            }
            "end" => {
                let sse = open.get_mut(&label).unwrap();
                if let Some(ev) = sse.next_within(T).await {
                    panic!("{label}: expected the end of the stream, got {:?}", ev.data);
                }
                out.push(format!("{label}: end"));
                open.remove(&label);
            }
            "drop" => {
                open.remove(&label);
                // Let the hub see the connection go before the next step.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            "publish" => {
                hub.publish(&label, &markers(&step["n"]).into_iter().map(activity).collect::<Vec<_>>()).await;
            }
            "publish_raw" => {
                let body = expand(arg["body"].as_str().unwrap(), &state);
                let ct = arg["content_type"].as_str().unwrap_or("application/json");
                let key = expand(arg["key"].as_str().unwrap_or("$publisher"), &state);
                let (status, answer) = hub.publish_raw(&body, ct, &key).await;
                let line = if status == 202 {
                    format!("publish: 202 ids={}", answer["ids"].as_array().map_or(0, Vec::len))
                } else {
                    let e = &answer["error"];
                    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "error without a message: {answer}");
                    let field = e["field"].as_str().map(|f| format!(" {f}")).unwrap_or_default();
                    format!("publish: {status} {}{field}", e["code"].as_str().unwrap_or("?"))
                };
                out.push(line);
            }
            "restart" => {
                hub.restart(label == "sigkill").await;
            }
            other => panic!("unknown step {other:?}"),
        }
    }
    out
}

fn markers(v: &Value) -> Vec<u64> {
    v.as_array().expect("n is a list").iter().map(|n| n.as_u64().unwrap()).collect()
}

/// Substitutes `$publisher`, `$repeat(c,n)`, `$<stream>` (its last id) and `$<stream>+k` (the
/// same id with its seq moved k ahead).
fn expand(text: &str, state: &HashMap<String, StreamState>) -> String {
    if text.contains("$publisher") {
        return text.replace("$publisher", PUBLISHER_KEY);
    }
    if let Some(start) = text.find("$repeat(") {
        let rest = &text[start + 8..];
        let (args, after) = rest.split_once(')').unwrap();
        let (c, n) = args.rsplit_once(',').unwrap();
        return format!("{}{}{}", &text[..start], c.repeat(n.parse().unwrap()), after);
    }
    if let Some(name) = text.strip_prefix('$') {
        let (name, ahead) = match name.split_once('+') {
            Some((n, k)) => (n, k.parse::<u64>().unwrap()),
            None => (name, 0),
        };
        let id = state.get(name).and_then(|s| s.last_id.clone()).unwrap_or_else(|| panic!("no id seen on {name}"));
        let (epoch, seq) = id.split_once('-').unwrap();
        return format!("{epoch}-{}", seq.parse::<u64>().unwrap() + ahead);
    }
    text.to_owned()
}

async fn open_stream(hub: &Hub, _label: &str, step: &serde_json::Map<String, Value>, state: &HashMap<String, StreamState>) -> Sse {
    let mut url = hub.url("/events/stream");
    if let Some(q) = step.get("query").and_then(Value::as_str) {
        url = format!("{url}?{q}");
    }
    let mut req = reqwest::Client::new().get(&url);
    let own_accept = step.get("headers").is_some_and(|h| h.get("accept").is_some());
    if !own_accept && !step.get("no_accept").is_some_and(|v| v == true) {
        req = req.header("accept", "text/event-stream");
    }
    if let Some(token) = step.get("token").and_then(Value::as_str) {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (k, v) in step.get("headers").and_then(Value::as_object).into_iter().flatten() {
        req = req.header(k.as_str(), expand(v.as_str().unwrap(), state));
    }
    if let Some(id) = step.get("last_event_id").and_then(Value::as_str) {
        let id = expand(id, state);
        req = match step.get("via").and_then(Value::as_str) {
            Some("query") => req.query(&[("last_event_id", id)]),
            _ => req.header("last-event-id", id),
        };
    }
    Sse::from_response(req.send().await.unwrap())
}

fn check_stream_headers(label: &str, h: &reqwest::header::HeaderMap) {
    assert_eq!(h["content-type"], "text/event-stream", "{label}");
    assert_eq!(h["cache-control"], "no-cache, no-store", "{label}");
    assert_eq!(h["x-accel-buffering"], "no", "{label}");
    assert!(h.get("content-encoding").is_none(), "{label}: streams are never compressed");
}

/// `refused <status> <code>[ retry-after]`, after checking the refusal is a JSON error.
async fn refusal(sse: Sse) -> String {
    let Sse { status, headers, .. } = &sse;
    assert_eq!(headers["content-type"], "application/json", "refusals are JSON");
    let retry_after = headers.get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().expect("Retry-After in seconds"));
    if matches!(status, 429 | 503) {
        assert!(retry_after.is_some_and(|s| s > 0), "{status} without Retry-After");
    }
    if *status == 401 {
        assert!(headers.contains_key("www-authenticate"), "401 names its scheme");
    }
    let (status, mut sse) = (*status, sse);
    let mut raw = String::new();
    while let Some(chunk) = sse.raw_chunk().await {
        raw.push_str(&chunk);
    }
    let body: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {raw:?}"));
    let code = body["error"]["code"].as_str().expect("error.code");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    format!("refused {status} {code}{}", if retry_after.is_some() { " retry-after" } else { "" })
}

fn is_id(text: &str) -> Option<(u64, u64)> {
    let (e, s) = text.split_once('-')?;
    if !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-') {
        return None;
    }
    Some((u64::from_str_radix(e, 16).ok()?, s.parse().ok()?))
}

/// One transcript line for a frame, after checking its shape.
fn describe(label: &str, ev: &Event, st: &mut StreamState) -> String {
    let d = &ev.data;
    if let Some(id) = &ev.id {
        assert!(is_id(id).is_some(), "{label}: id {id:?} is not one the hub makes");
        st.last_id = Some(id.clone());
    }
    match ev.kind() {
        "connected" => {
            let id = ev.id.as_deref().unwrap_or_else(|| panic!("{label}: connected without an id"));
            st.last_activity = is_id(id);
            assert!(d["client_id"].as_str().is_some_and(|c| c.starts_with("c_")), "{d}");
            assert!(d["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{d}");
            assert!(d["session_id"].is_string() && d["heartbeat_ms"].is_u64(), "{d}");
            format!("connected resumed={}", d["resumed"].as_bool().expect("resumed"))
        }
        "activity" => {
            let id = is_id(ev.id.as_deref().unwrap_or_else(|| panic!("{label}: activity without an id"))).unwrap();
            if let Some(prev) = st.last_activity.filter(|p| p.0 == id.0) {
                assert!(id.1 > prev.1, "{label}: ids must increase within a stream: {prev:?} then {id:?}");
            }
            st.last_activity = Some(id);
            assert!(d["data"].is_object() && d["invalidate"].is_array(), "{d}");
            format!("activity {}", ev.n())
        }
        "resync" => format!("resync {}", d["reason"].as_str().expect("reason")),
        "closed" => {
            let reason = d["reason"].as_str().expect("reason");
            let retry = d.get("retry_ms").map(|r| r.as_u64().expect("retry_ms is a number"));
            let must_not_return = matches!(reason, "superseded" | "revoked");
            assert_eq!(retry.is_none(), must_not_return, "{label}: retry_ms with {reason}: {d}");
            format!("closed {reason} retry={}", if retry.is_some() { "yes" } else { "no" })
        }
        other => panic!("{label}: unexpected frame type {other:?}: {d}"),
    }
}

//! `tidings tail`: follow a hub's stream as a signed-in user would, printing every event with
//! its keys, and every reconnect, resync and close with its reason.

use std::io::Write;

use anyhow::{Result, bail};
use serde_json::json;
use tidings_client::{AuthScheme, Client, Event};

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Hub base URL.
    #[arg(long, env = "TIDINGS_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// User token (sent as `Authorization: Bearer`).
    #[arg(long, env = "TIDINGS_TOKEN")]
    token: String,
    /// Send the token as `Authorization: Token …` (the original console's form).
    #[arg(long)]
    token_scheme: bool,
    /// Resume after this event id.
    #[arg(long)]
    last_event_id: Option<String>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Print pings too.
    #[arg(long)]
    pings: bool,
}

pub async fn run(args: TailArgs) -> Result<()> {
    let mut builder = Client::builder(args.url.clone()).token(args.token.clone());
    if args.token_scheme {
        builder = builder.auth_scheme(AuthScheme::Token);
    }
    if let Some(id) = &args.last_event_id {
        builder = builder.last_event_id(id.clone());
    }
    let mut sub = builder.subscribe()?;
    let mut out = std::io::stdout().lock();
    loop {
        let item = tokio::select! {
            item = sub.next() => item,
            _ = tokio::signal::ctrl_c() => break,
        };
        match item {
            None => break,
            Some(Ok(event)) => {
                if matches!(event, Event::Ping) && !args.pings {
                    continue;
                }
                let line = if args.json { json_line(&event).to_string() } else { text_line(&event) };
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            Some(Err(e)) => {
                if args.json {
                    writeln!(out, "{}", json!({"type": "error", "error": e.to_string()}))?;
                }
                bail!("stream stopped: {e}");
            }
        }
    }
    sub.stop().await;
    Ok(())
}

fn keys(keys: &[Vec<serde_json::Value>]) -> String {
    keys.iter().map(|k| serde_json::to_string(k).unwrap_or_default()).collect::<Vec<_>>().join(" ")
}

fn text_line(event: &Event) -> String {
    match event {
        Event::Connected { session_id, resumed, id, .. } => format!(
            "connected  session={} position={} {}",
            session_id.as_deref().unwrap_or("-"),
            id.as_deref().unwrap_or("-"),
            if *resumed == Some(true) { "(resumed: missed events follow)" } else { "" }
        ),
        Event::Activity { id, data, invalidate, remove } => {
            let kind = data.get("activity_type").and_then(|v| v.as_str()).unwrap_or("?");
            let what = data.get("description").and_then(|v| v.as_str()).unwrap_or("");
            let mut line = format!("activity   {} {kind} {what}\n           invalidate {}", id.as_deref().unwrap_or("-"), keys(invalidate));
            if !remove.is_empty() {
                line.push_str(&format!("\n           remove     {}", keys(remove)));
            }
            line
        }
        Event::Ping => "ping".into(),
        Event::Resync { reason, .. } => format!("resync     {reason}: every cached query of the account is stale"),
        Event::Closed { reason, retry_ms } => format!("closed     {reason} (retry in {} ms)", retry_ms.map_or("-".into(), |r| r.to_string())),
        Event::Reconnecting { attempt, delay, cause } => format!("reconnect  attempt {attempt} in {delay:?} after {cause:?}"),
        other => format!("{other:?}"),
    }
}

fn json_line(event: &Event) -> serde_json::Value {
    match event {
        Event::Connected { client_id, session_id, resumed, id, .. } => {
            json!({"type": "connected", "client_id": client_id, "session_id": session_id, "resumed": resumed, "id": id})
        }
        Event::Activity { id, data, invalidate, remove } => {
            json!({"type": "activity", "id": id, "data": data, "invalidate": invalidate, "remove": remove})
        }
        Event::Ping => json!({"type": "ping"}),
        Event::Resync { reason, id } => json!({"type": "resync", "reason": reason, "id": id}),
        Event::Closed { reason, retry_ms } => json!({"type": "closed", "reason": reason, "retry_ms": retry_ms}),
        Event::Reconnecting { attempt, delay, cause } => {
            json!({"type": "reconnecting", "attempt": attempt, "delay_ms": delay.as_millis() as u64, "cause": format!("{cause:?}")})
        }
        other => json!({"type": "other", "debug": format!("{other:?}")}),
    }
}

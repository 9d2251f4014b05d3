//! `tidings publish`: send one activity or a batch to a hub's `POST /events`, through the
//! Rust SDK's publisher, which retries failures that may clear up with the same idempotency
//! keys (see `tidings_client::Publisher`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tidings_client::{PublishItem, Publisher, RetryPolicy};

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Hub base URL.
    #[arg(long, env = "TIDINGS_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Publisher key.
    #[arg(long, env = "TIDINGS_PUBLISHER_KEY")]
    key: String,
    /// Target account (with --data).
    #[arg(long, requires = "data")]
    account: Option<String>,
    /// The activity as JSON (with --account).
    #[arg(long, requires = "account", conflicts_with = "file")]
    data: Option<String>,
    /// Only identities holding one of these grants receive it (comma-separated, with
    /// --data; e.g. `edge_firewall:read,user:alice@example.com`). Without it: the account.
    #[arg(long, requires = "data", value_delimiter = ',')]
    audience: Option<Vec<String>>,
    /// Idempotency key of the activity (with --data): the hub stores it once per account
    /// however often it is sent. Default: a random key, reused by this command's retries.
    #[arg(long, requires = "data")]
    item_key: Option<String>,
    /// A JSON file with a whole publish body (`{"account","data","audience"?,"key"?}` or an
    /// array); `-` reads stdin. Items without a key get a random one, reused by this command's
    /// retries.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Retry connection errors, timeouts, 408, 429, 5xx (honouring Retry-After) for at most
    /// this long, with capped full-jitter backoff; `0s` tries once.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    retry_for: Duration,
}

pub async fn run(args: PublishArgs) -> Result<()> {
    let items = match (&args.account, &args.data, &args.file) {
        (Some(account), Some(data), None) => {
            let mut item = PublishItem::new(account.clone(), serde_json::from_str(data).context("--data is not JSON")?);
            item.audience = args.audience.clone();
            item.key = args.item_key.clone();
            vec![item]
        }
        (None, None, Some(path)) => items_of(&read(path)?)?,
        _ => bail!("give either --account and --data, or --file"),
    };
    let retry = RetryPolicy { give_up_after: args.retry_for, ..RetryPolicy::default() };
    let receipt = Publisher::new(&args.url, args.key).with_retry(retry).submit(&items).await?;
    println!("{}", serde_json::json!({ "ids": receipt.ids, "duplicates": receipt.duplicates, "keys": receipt.keys }));
    Ok(())
}

fn read(path: &PathBuf) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// A publish body as items; the hub validates them, this only reshapes.
fn items_of(text: &str) -> Result<Vec<PublishItem>> {
    let body: Value = serde_json::from_str(text).context("the file is not JSON")?;
    let list = match body {
        Value::Array(list) => list,
        one => vec![one],
    };
    list.into_iter()
        .enumerate()
        .map(|(i, item_json)| {
            let item = &item_json;
            let account = match item.get("account") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => bail!("item {i}: account is missing or not a string"),
            };
            let data = item.get("data").cloned().with_context(|| format!("item {i}: data is missing"))?;
            let mut item = PublishItem::new(account, data);
            item.audience = item_audience(&item_json, i)?;
            item.key = item_key(&item_json, i)?;
            Ok(item)
        })
        .collect()
}

/// An item's audience, kept as given: the hub checks it and names the field when it is wrong.
fn item_audience(item: &Value, i: usize) -> Result<Option<Vec<String>>> {
    match item.get("audience") {
        None => Ok(None),
        Some(Value::Array(grants)) => {
            let grants: Option<Vec<String>> = grants.iter().map(|g| g.as_str().map(str::to_owned)).collect();
            grants.map(Some).with_context(|| format!("item {i}: audience must be an array of strings"))
        }
        Some(_) => bail!("item {i}: audience must be an array of strings"),
    }
}

fn item_key(item: &Value, i: usize) -> Result<Option<String>> {
    match item.get("key") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(k)) => Ok(Some(k.clone())),
        Some(_) => bail!("item {i}: key must be a string"),
    }
}

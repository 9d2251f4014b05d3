//! `tidings publish`: send one activity or a batch to a hub's `POST /events`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

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
    /// A JSON file with a whole publish body (`{"account","data"}` or an array); `-` reads stdin.
    #[arg(long)]
    file: Option<PathBuf>,
}

pub async fn run(args: PublishArgs) -> Result<()> {
    let body: serde_json::Value = match (&args.account, &args.data, &args.file) {
        (Some(account), Some(data), None) => {
            let data: serde_json::Value = serde_json::from_str(data).context("--data is not JSON")?;
            serde_json::json!({ "account": account, "data": data })
        }
        (None, None, Some(path)) => {
            let text = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
                s
            } else {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
            };
            serde_json::from_str(&text).context("the file is not JSON")?
        }
        _ => bail!("give either --account and --data, or --file"),
    };
    let url = format!("{}/events", args.url.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&args.key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("hub answered {status}: {text}");
    }
    println!("{text}");
    Ok(())
}

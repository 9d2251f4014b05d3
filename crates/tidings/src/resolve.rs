//! `tidings resolve`: which query keys an activity invalidates, and which tier said so — the
//! tool to reach for when a screen did not refresh.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use tidings_hub::config::MappingConfig;

#[derive(Debug, clap::Args)]
pub struct ResolveArgs {
    /// The activity JSON (the `data` object, a publish item `{"account","data"}`, or an
    /// `activity` frame `{"type":"activity","data"}`); `-` or nothing reads stdin.
    input: Option<PathBuf>,
    /// A mapping file (TOML); without it and without --profile, the generic default.
    #[arg(long, conflicts_with = "profile")]
    mapping: Option<PathBuf>,
    /// A shipped profile: azion-console, generic-kebab, generic-as-published.
    #[arg(long)]
    profile: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ResolveArgs) -> Result<()> {
    let text = match args.input.as_deref() {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
    };
    let value: serde_json::Value = serde_json::from_str(&text).context("the input is not JSON")?;
    let activity = if value.get("activity_type").is_some() {
        &value
    } else if let Some(data) = value.get("data").filter(|d| d.is_object()) {
        data
    } else {
        bail!("the input has neither activity_type nor a data object");
    };
    let config = MappingConfig { file: args.mapping, profile: args.profile, ..MappingConfig::default() };
    let resolver = config.resolver()?;
    let explanation = resolver.explain(activity);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
        return Ok(());
    }
    let r = &explanation.resolution;
    match (r.tier, &explanation.entry) {
        (Some(tier), Some(entry)) => println!("tier       {tier:?} (entry {entry})"),
        _ => println!("tier       none: no tier resolved this activity; nothing would be invalidated"),
    }
    println!("activity   {:?}", explanation.activity_type);
    if let Some(t) = &explanation.parent_type {
        println!("parent     {t}");
    }
    if let Some(t) = &explanation.resource_type {
        println!("resource   {t}");
    }
    for k in &r.invalidate {
        println!("invalidate {}", serde_json::to_string(k)?);
    }
    for k in &r.remove {
        println!("remove     {}", serde_json::to_string(k)?);
    }
    match &explanation.audience {
        Some(grants) => println!("audience   {} (from the mapping, unless the publisher sends one)", serde_json::to_string(grants)?),
        None => println!("audience   the whole account (unless the publisher sends one)"),
    }
    Ok(())
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).context("reading stdin")?;
    Ok(s)
}

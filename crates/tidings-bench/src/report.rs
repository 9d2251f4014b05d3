//! The results file (JSON) and the table made from it (markdown). Where a scenario ran more
//! than once, the table shows the median of each number; ratios compare medians of one run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::scenario::{Outcome, Scenario, Sizes};
use crate::target::Kind;

/// The machine the run happened on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub os: String,
    pub kernel: String,
    pub cpu: String,
    pub nproc: usize,
    pub mem_total: String,
    /// Soft limit on open files of the harness process.
    pub nofile: String,
}

impl Machine {
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let os = read("/etc/os-release").lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).unwrap_or("").trim_matches('"').to_owned();
        let cpu = read("/proc/cpuinfo").lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())).unwrap_or_default();
        let mem_total = read("/proc/meminfo").lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned())).unwrap_or_default();
        let nofile = read("/proc/self/limits").lines().find(|l| l.starts_with("Max open files")).map(|l| l.split_whitespace().nth(3).unwrap_or("").to_owned()).unwrap_or_default();
        Machine {
            os,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu,
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            mem_total,
            nofile,
        }
    }
}

/// Everything one `tidings bench run` produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// UTC start of the run.
    pub started: String,
    pub command: String,
    pub machine: Machine,
    pub versions: Vec<(String, String)>,
    pub sizes: Sizes,
    pub results: Vec<Outcome>,
    /// Scenarios that could not run, with why.
    pub failures: Vec<String>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 })
}

/// One row of a scenario's table.
struct Metric {
    name: &'static str,
    get: fn(&Outcome) -> Option<f64>,
    digits: usize,
    /// Whether a ratio against the peers means something for this row.
    ratio: bool,
}

fn metrics(s: Scenario) -> Vec<Metric> {
    let m = |name, get, digits, ratio| Metric { name, get, digits, ratio };
    let connect = m("time until all open (s)", (|o: &Outcome| o.connect_secs) as fn(&Outcome) -> Option<f64>, 2, true);
    let errors = m("stream errors (all kinds, retries included)", |o| Some(o.errors.values().sum::<u64>() as f64), 0, false);
    match s {
        Scenario::Idle => vec![
            m("hub RSS before streams (MiB)", |o| o.rss_before_kib.map(|k| k as f64 / 1024.0), 1, false),
            m("hub RSS with streams (MiB)", |o| o.rss_after_kib.map(|k| k as f64 / 1024.0), 1, false),
            m("hub RSS per stream (KiB)", |o| o.rss_per_stream_kib, 2, true),
            m("kernel TCP memory per stream, both ends (KiB)", |o| o.sock_mem_per_stream_kib, 2, false),
            connect,
        ],
        Scenario::Fanout | Scenario::FanoutAudience | Scenario::ManyAccounts => vec![
            m("publishes/s achieved", |o| o.publish_rate_achieved, 0, false),
            m("deliveries/s", |o| o.deliveries_per_sec, 0, true),
            m("latency p50 (ms)", |o| o.p50_ms, 1, true),
            m("latency p99 (ms)", |o| o.p99_ms, 1, true),
            m("latency max (ms)", |o| o.max_ms, 1, true),
            m("expected deliveries", |o| Some(o.expected as f64), 0, false),
            m("lost (expected − delivered)", |o| Some(o.lost as f64), 0, false),
            m("duplicated", |o| Some(o.duplicated as f64), 0, false),
            m("reconnects", |o| Some(o.reconnects as f64), 0, false),
            m("publish errors", |o| Some(o.publish_errors.values().sum::<u64>() as f64), 0, false),
            m("target CPU (cores busy)", |o| Some(o.target_cpu_secs? / o.cpu_window_secs?), 2, false),
            m("load generator CPU (cores busy)", |o| Some(o.loadgen_cpu_secs? / o.cpu_window_secs?), 2, false),
            m("target CPU per delivery (µs)", |o| Some(o.target_cpu_secs? * 1e6 / o.delivered.max(1) as f64), 2, true),
        ],
        Scenario::ConnectStorm => vec![connect, errors],
        Scenario::ResumeStorm => vec![
            m("target stop + start (s)", |o| o.restart_secs, 2, false),
            m("time until all streams back (s)", |o| o.back_secs, 2, true),
            m("events acknowledged", |o| Some(o.published as f64), 0, false),
            m("expected deliveries", |o| Some(o.expected as f64), 0, false),
            m("lost (expected − delivered)", |o| Some(o.lost as f64), 0, false),
            m("duplicated", |o| Some(o.duplicated as f64), 0, false),
            errors,
        ],
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        None => "–".into(),
        Some(v) if digits == 0 => {
            let s = format!("{:.0}", v);
            // Thousands separators for readability.
            let (sign, digits) = s.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", &s));
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            format!("{sign}{out}")
        }
        Some(v) => format!("{v:.digits$}"),
    }
}

/// One column of a scenario's table: a target, and for Tidings the identity source when the
/// scenario ran with more than one.
#[derive(Debug, Clone, PartialEq)]
struct Column {
    kind: Kind,
    identity: Option<Identity>,
    label: String,
}

impl Column {
    fn holds(&self, o: &Outcome) -> bool {
        o.target == self.kind.name() && (self.identity.is_none() || o.identity == self.identity)
    }
}

fn columns(runs: &[&Outcome]) -> Vec<Column> {
    let mut out = Vec::new();
    for kind in [Kind::Tidings, Kind::Nchan, Kind::Pushpin] {
        let mut identities: Vec<Identity> = runs.iter().filter(|o| o.target == kind.name()).filter_map(|o| o.identity).collect();
        identities.sort();
        identities.dedup();
        if identities.len() > 1 {
            for i in identities {
                out.push(Column { kind, identity: Some(i), label: format!("{} ({})", kind.name(), i.name()) });
            }
        } else if runs.iter().any(|o| o.target == kind.name()) {
            out.push(Column { kind, identity: None, label: kind.name().to_owned() });
        }
    }
    out
}

/// The markdown tables of a report.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Run started {} on {} ({}, {} CPUs, kernel {}).\n", r.started, r.machine.os, r.machine.cpu, r.machine.nproc, r.machine.kernel);
    for s in Scenario::ALL {
        let runs: Vec<&Outcome> = r.results.iter().filter(|o| o.scenario == s).collect();
        if runs.is_empty() {
            continue;
        }
        let cols = columns(&runs);
        let ours: Vec<&Column> = cols.iter().filter(|c| c.kind == Kind::Tidings).collect();
        let peers: Vec<&Column> = cols.iter().filter(|c| c.kind != Kind::Tidings).collect();
        let any = runs[0];
        let sizes = &r.sizes;
        let detail = match s {
            Scenario::Idle => format!("{} streams over {} accounts, idle {:?}", any.streams, any.accounts, sizes.settle),
            Scenario::Fanout => format!("{} streams in one account, {} publishes/s for {:?}", any.streams, sizes.fanout_rate, sizes.duration),
            Scenario::FanoutAudience => format!(
                "{} streams in one account, half of them in every event's audience, {} publishes/s (twice (b)'s, so as many deliveries are asked) for {:?}",
                any.streams,
                sizes.fanout_rate * 2.0,
                sizes.duration
            ),
            Scenario::ManyAccounts => format!("{} streams over {} accounts, {} publishes/s for {:?}", any.streams, any.accounts, sizes.many_rate, sizes.duration),
            Scenario::ConnectStorm => format!("{} streams connecting at once", any.streams),
            Scenario::ResumeStorm => format!("hub restarted under {} streams over {} accounts, {} publishes/s throughout", any.streams, any.accounts, sizes.resume_rate),
        };
        let repeats = cols.iter().map(|c| runs.iter().filter(|o| c.holds(o)).count()).max().unwrap_or(1);
        let _ = writeln!(out, "### {} — {detail}{}\n", s.title(), if repeats > 1 { format!(" (median of {repeats} runs)") } else { String::new() });
        let mut header = String::from("| | ");
        let mut rule = String::from("|---|");
        for c in &cols {
            header.push_str(&format!("{} | ", c.label));
            rule.push_str("---:|");
        }
        for o in &ours {
            for p in &peers {
                header.push_str(&format!("{} ÷ {} | ", o.label, p.label));
                rule.push_str("---:|");
            }
        }
        let _ = writeln!(out, "{}\n{rule}", header.trim_end());
        let medians = |c: &Column, get: fn(&Outcome) -> Option<f64>| median(runs.iter().filter(|o| c.holds(o)).filter_map(|o| get(o)).collect());
        for m in metrics(s) {
            let mut row = format!("| {} |", m.name);
            for c in &cols {
                row.push_str(&format!(" {} |", fmt(medians(c, m.get), m.digits)));
            }
            for o in &ours {
                for p in &peers {
                    let ratio = match (m.ratio, medians(o, m.get), medians(p, m.get)) {
                        (true, Some(t), Some(v)) if v.abs() > f64::EPSILON => format!("{:.2}×", t / v),
                        _ => "".into(),
                    };
                    row.push_str(&format!(" {ratio} |"));
                }
            }
            let _ = writeln!(out, "{row}");
        }
        let engines: BTreeMap<&str, &str> = runs.iter().map(|o| (o.target.as_str(), o.engine.as_str())).collect();
        let _ = writeln!(out, "\nEngines: {}.", engines.iter().map(|(t, e)| format!("{t}: {e}")).collect::<Vec<_>>().join("; "));
        let loads: Vec<String> = runs.iter().filter_map(|o| o.load_avg.map(|l| format!("{} {l:.2}", label_of(o)))).collect();
        if !loads.is_empty() {
            let _ = writeln!(out, "Load average (1 min) when each run measured: {}.", loads.join(", "));
        }
        for o in &runs {
            let who = label_of(o);
            if !o.errors.is_empty() {
                let list: Vec<String> = o.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = writeln!(out, "Stream errors, {who}: {}.", list.join(", "));
            }
            if !o.publish_errors.is_empty() {
                let list: Vec<String> = o.publish_errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = writeln!(out, "Publish errors, {who}: {}.", list.join(", "));
            }
            for n in &o.notes {
                let _ = writeln!(out, "Note, {who}: {n}.");
            }
        }
        let _ = writeln!(out);
    }
    for f in &r.failures {
        let _ = writeln!(out, "- not run: {f}");
    }
    out
}

fn label_of(o: &Outcome) -> String {
    match o.identity {
        Some(i) => format!("{} ({})", o.target, i.name()),
        None => o.target.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_formatted_and_medians_taken() {
        assert_eq!(fmt(Some(1234567.4), 0), "1,234,567");
        assert_eq!(fmt(Some(999.0), 0), "999");
        assert_eq!(fmt(Some(1.234), 2), "1.23");
        assert_eq!(fmt(None, 2), "–");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}

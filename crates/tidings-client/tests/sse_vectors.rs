//! Runs every case of `fixtures/sse/*.json` (format in `fixtures/sse/README.md`) through the
//! parser: as given, split in two at every byte, and one byte at a time.

use std::path::PathBuf;

use serde::Deserialize;
use tidings_client::sse::{EVENT_BYTES_MAX, SseEvent, SseParser};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    #[allow(dead_code)] // documentation for readers of the file
    description: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[allow(dead_code)]
    note: Option<String>,
    input: Option<String>,
    chunks: Option<Vec<String>>,
    max_bytes: Option<usize>,
    expected: Expected,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    events: Vec<Ev>,
    retry: Option<u64>,
    last_id: String,
    #[serde(default)]
    errors: usize,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ev {
    event: String,
    data: String,
    id: String,
}

/// Inputs longer than this are split at every byte only near their ends and at a stride in
/// between; a full quadratic sweep of a 70 kB line adds nothing but minutes.
const FULL_SPLIT_BYTES_MAX: usize = 16 * 1024;
const SPLIT_EDGE_BYTES: usize = 1024;
const SPLIT_STRIDE: usize = 997;

fn check(max_bytes: Option<usize>, chunks: &[&[u8]]) -> Expected {
    let mut p = SseParser::with_limit(max_bytes.unwrap_or(EVENT_BYTES_MAX));
    let (mut events, mut errors) = (Vec::new(), 0);
    for chunk in chunks {
        p.feed(chunk);
        while let Some(item) = p.next() {
            match item {
                Ok(SseEvent { event, data, id }) => events.push(Ev { event, data, id }),
                Err(_) => errors += 1,
            }
        }
    }
    Expected { events, retry: p.retry(), last_id: p.last_event_id().to_owned(), errors }
}

fn split_points(len: usize) -> Vec<usize> {
    if len <= FULL_SPLIT_BYTES_MAX {
        return (0..=len).collect();
    }
    let mut points: Vec<usize> = (0..SPLIT_EDGE_BYTES).chain(len - SPLIT_EDGE_BYTES..=len).collect();
    points.extend((SPLIT_EDGE_BYTES..len - SPLIT_EDGE_BYTES).step_by(SPLIT_STRIDE));
    points
}

#[test]
fn sse_vectors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sse");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "fixtures missing in {}", dir.display());
    let (mut cases, mut failures) = (0, Vec::new());
    for file in files {
        let group: Group = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        for case in group.cases {
            cases += 1;
            let chunks: Vec<String> = match (case.input, case.chunks) {
                (Some(input), None) => vec![input],
                (None, Some(chunks)) => chunks,
                _ => panic!("{stem}/{}: exactly one of input and chunks", case.name),
            };
            let whole: Vec<u8> = chunks.concat().into_bytes();
            let mut runs: Vec<(String, Vec<&[u8]>)> =
                vec![("as given".into(), chunks.iter().map(|c| c.as_bytes()).collect())];
            for at in split_points(whole.len()) {
                runs.push((format!("split at byte {at}"), vec![&whole[..at], &whole[at..]]));
            }
            if whole.len() <= FULL_SPLIT_BYTES_MAX {
                runs.push(("one byte at a time".into(), whole.chunks(1).collect()));
            }
            for (how, run) in runs {
                let got = check(case.max_bytes, &run);
                if got != case.expected {
                    failures.push(format!("{stem}/{} ({how}):\n  want {:?}\n  got  {:?}", case.name, case.expected, got));
                    break;
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(cases >= 100, "only {cases} cases found");
}

//! The JSON results `lab-client` prints, shared so tests can read them typed.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How many distinct error messages a report keeps: enough to diagnose, bounded output.
pub const MAX_ERRORS: usize = 10;

/// Result of `lab-client burst` and `lab-client udp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurstReport {
    pub ok: u64,
    pub failed: u64,
    /// Successful exchanges per backend name (the server's `--name`).
    pub per_backend: BTreeMap<String, u64>,
    /// The first few distinct error messages.
    pub errors: Vec<String>,
}

impl BurstReport {
    pub fn record(&mut self, result: Result<String, String>) {
        match result {
            Ok(name) => {
                self.ok += 1;
                *self.per_backend.entry(name).or_default() += 1;
            }
            Err(e) => {
                self.failed += 1;
                note_error(&mut self.errors, e);
            }
        }
    }
}

/// Result of `lab-client hold`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReport {
    /// Connections established (first reply received).
    pub opened: u64,
    pub open_failed: u64,
    /// Established connections that later errored, closed or timed out.
    pub broken: u64,
    /// Established connections that at least once answered with another backend's name.
    pub backend_changed: u64,
    /// Ping rounds started.
    pub rounds: u64,
    /// Backend each established connection landed on first.
    pub per_backend: BTreeMap<String, u64>,
    pub errors: Vec<String>,
}

/// Keeps `e` if it is new and there is room.
pub fn note_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < MAX_ERRORS && !errors.contains(&e) {
        errors.push(e);
    }
}

/// Parses the last line of `output` that looks like a JSON object: `lab-client` prints its
/// result last, possibly after other lines (`READY`, or whatever a log collected before).
pub fn parse_last_json<T: DeserializeOwned>(output: &str) -> Result<T> {
    let line = output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no JSON line in output:\n{output}"))?;
    serde_json::from_str(line).with_context(|| format!("bad JSON line {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_report_tallies() {
        let mut r = BurstReport::default();
        r.record(Ok("b0".into()));
        r.record(Ok("b1".into()));
        r.record(Ok("b0".into()));
        r.record(Err("timeout".into()));
        r.record(Err("timeout".into()));
        assert_eq!(r.ok, 3);
        assert_eq!(r.failed, 2);
        assert_eq!(r.per_backend["b0"], 2);
        assert_eq!(r.errors, vec!["timeout".to_string()]);
    }

    #[test]
    fn errors_are_bounded() {
        let mut errors = Vec::new();
        for i in 0..100 {
            note_error(&mut errors, format!("e{i}"));
        }
        assert_eq!(errors.len(), MAX_ERRORS);
    }

    #[test]
    fn last_json_line_wins() {
        let out = "READY\n{\"ok\":1,\"failed\":0,\"per_backend\":{},\"errors\":[]}\nnoise\n{\"ok\":2,\"failed\":0,\"per_backend\":{\"b0\":2},\"errors\":[]}\n\n";
        let r: BurstReport = parse_last_json(out).unwrap();
        assert_eq!(r.ok, 2);
        assert!(parse_last_json::<BurstReport>("READY\n").is_err());
    }
}

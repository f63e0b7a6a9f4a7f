//! The JSON results `lab-client` and `lab-load` print.
//!
//! One type per report, which the tool writes and the tests and benchmarks read, so the two sides
//! cannot drift apart.

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
    /// Broken connections by the backend they were on.
    #[serde(default)]
    pub broken_per_backend: BTreeMap<String, u64>,
    /// The slowest ping round trip of any connection, in ms: packets lost on the way show as
    /// TCP's retransmission waits (200 ms and more).
    #[serde(default)]
    pub slowest_ping_ms: u64,
    pub errors: Vec<String>,
}

impl HoldReport {
    /// Adds another holder's tally (several clients holding connections at once).
    pub fn absorb(&mut self, other: HoldReport) {
        self.opened += other.opened;
        self.open_failed += other.open_failed;
        self.broken += other.broken;
        self.backend_changed += other.backend_changed;
        self.rounds = self.rounds.max(other.rounds);
        self.slowest_ping_ms = self.slowest_ping_ms.max(other.slowest_ping_ms);
        for (k, v) in other.per_backend {
            *self.per_backend.entry(k).or_default() += v;
        }
        for (k, v) in other.broken_per_backend {
            *self.broken_per_backend.entry(k).or_default() += v;
        }
        for e in other.errors {
            note_error(&mut self.errors, e);
        }
    }
}

/// Result of `lab-load hold`: the last line it prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub attempted: u64,
    /// Connections still open at the end of the hold.
    pub established: u64,
    /// Connections that completed the handshake at some point.
    pub opened: u64,
    /// Connects that failed or timed out.
    pub failed: u64,
    /// Connections that completed the handshake and were later closed or reset.
    pub broken: u64,
    /// From the first connect to the end of the last worker's ramp.
    pub ramp_seconds: f64,
    pub ramp_per_s: f64,
    pub hold_seconds: f64,
    pub probes_sent: u64,
    pub probes_ok: u64,
    pub probes_failed: u64,
    pub stop_reason: Option<String>,
    pub errors: Vec<String>,
    pub workers: usize,
    /// The largest worker's peak RSS: the tool's own memory per connection stays small.
    pub worker_peak_rss_kib: u64,
}

/// What `lab-client rate` prints (one JSON line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateReport {
    /// Successful exchanges.
    pub connections: u64,
    /// Failed attempts.
    pub failed: u64,
    /// From the first connect to the end of the last exchange, seconds.
    pub duration_s: f64,
    pub conn_per_s: f64,
    /// Latency percentiles of the successful exchanges (connect start to reply), µs.
    pub p50_us: f64,
    pub p99_us: f64,
    pub per_backend: BTreeMap<String, u64>,
    pub errors: Vec<String>,
}

impl RateReport {
    /// Adds another worker's tally (counts and errors; the rates and percentiles are computed
    /// once at the end from the merged histogram).
    pub fn absorb(&mut self, other: RateReport) {
        self.connections += other.connections;
        self.failed += other.failed;
        for (name, n) in other.per_backend {
            *self.per_backend.entry(name).or_default() += n;
        }
        for e in other.errors {
            note_error(&mut self.errors, e);
        }
    }

    /// Counts one exchange: the answering backend's name, or the error.
    pub fn record(&mut self, result: Result<String, String>) {
        match result {
            Ok(name) => {
                self.connections += 1;
                *self.per_backend.entry(name).or_default() += 1;
            }
            Err(e) => {
                self.failed += 1;
                note_error(&mut self.errors, e);
            }
        }
    }
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
    fn load_report_reads_back_what_lab_load_writes() {
        let r = LoadReport {
            attempted: 10,
            established: 8,
            opened: 9,
            failed: 1,
            broken: 1,
            ramp_seconds: 1.5,
            stop_reason: Some("ramp stopped by signal".into()),
            errors: vec!["connect: timed out".into()],
            workers: 2,
            ..LoadReport::default()
        };
        // lab-load prints progress lines first and the final report last.
        let out = format!(
            "{{\"t\":0.1,\"phase\":\"ramp\"}}\n{}\n",
            serde_json::to_string(&r).unwrap()
        );
        assert_eq!(parse_last_json::<LoadReport>(&out).unwrap(), r);
    }

    #[test]
    fn last_json_line_wins() {
        let out = "READY\n{\"ok\":1,\"failed\":0,\"per_backend\":{},\"errors\":[]}\nnoise\n{\"ok\":2,\"failed\":0,\"per_backend\":{\"b0\":2},\"errors\":[]}\n\n";
        let r: BurstReport = parse_last_json(out).unwrap();
        assert_eq!(r.ok, 2);
        assert!(parse_last_json::<BurstReport>("READY\n").is_err());
    }
}

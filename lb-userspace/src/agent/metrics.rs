//! The Prometheus exporter: a scrape-time snapshot turned into the text exposition.
//!
//! The snapshot holds counters, health and map fill; `http` serves the text.

use std::{collections::HashMap, fmt, net::IpAddr};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::datapath::counters::StatsReport;

/// Everything the exporter shows, gathered by the agent at scrape time.
pub struct Snapshot {
    pub stats: StatsReport,
    /// Health of probed backends: (vip name, backend address) -> up?  Unprobed backends are absent.
    pub health: HashMap<(String, IpAddr), bool>,
    /// Each VIP and whether it is in health panic (failures ignored, every backend in the ring).
    pub health_panic: Vec<(String, bool)>,
    /// The program is attached to the interface.
    pub datapath_up: bool,
    /// With `announce:`: each VIP address and whether BIRD is told to announce it.
    pub announced: Option<Vec<(IpAddr, bool)>>,
    /// `xdplb drain-balancer` holds every VIP withdrawn.
    pub balancer_drained: bool,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub health_transitions_down: u64,
    pub health_transitions_up: u64,
    /// (map name, entries used, capacity) for VIPS, BACKENDS, CONNS.
    pub map_fill: Vec<(&'static str, u64, u64)>,
}

/// The Content-Type of what [`encode`] produces: prometheus-client writes OpenMetrics text
/// (counter families are typed without their `_total` suffix and the body ends in `# EOF`),
/// so announcing it as such makes Prometheus pick the parser that understands exactly that.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

type Labels = Vec<(&'static str, String)>;

/// One metric family, already flattened from the snapshot so the encoder only writes.
#[derive(Debug)]
struct Family {
    /// The name samples carry (counters include `_total`).
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Labels, u64)>,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: &[(&'static str, &str)], value: u64) {
        let labels = labels.iter().map(|(k, v)| (*k, escape_label(v))).collect();
        self.samples.push((labels, value));
    }
}

/// prometheus-client writes label values verbatim, and a VIP name or a future label could
/// carry a quote or backslash that would otherwise break the line for every parser.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A collector (rather than registered metric objects) because every scrape is a fresh,
/// complete snapshot: nothing here is incremented, and series of removed VIPs must vanish.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for f in self.0.iter().filter(|f| !f.samples.is_empty()) {
            let (name, ty) = match f.kind {
                // OpenMetrics names the counter family without `_total`; the encoder appends it.
                Kind::Counter => (
                    f.name.strip_suffix("_total").unwrap_or(f.name),
                    MetricType::Counter,
                ),
                Kind::Gauge => (f.name, MetricType::Gauge),
            };
            let mut metric = encoder.encode_descriptor(name, f.help, None, ty)?;
            for (labels, value) in &f.samples {
                let sample = metric.encode_family(labels)?;
                match f.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(sample)?,
                    Kind::Gauge => ConstGauge::new(*value).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

fn families(s: &Snapshot) -> Vec<Family> {
    use Kind::{Counter, Gauge};
    let mut vip_packets = Family::new(
        "xdplb_vip_packets_total",
        Counter,
        "Packets the datapath matched to this VIP",
    );
    let mut vip_bytes = Family::new(
        "xdplb_vip_bytes_total",
        Counter,
        "Bytes of the packets matched to this VIP, counted as received (whole frames)",
    );
    let mut vip_new_flows = Family::new(
        "xdplb_vip_new_flows_total",
        Counter,
        "Flows of this VIP whose backend the Maglev ring decided (flow-table misses)",
    );
    let mut be_packets = Family::new(
        "xdplb_backend_packets_total",
        Counter,
        "Packets of this VIP sent to this backend",
    );
    let mut be_bytes = Family::new(
        "xdplb_backend_bytes_total",
        Counter,
        "Bytes of the packets of this VIP sent to this backend, counted as received",
    );
    let mut be_new_flows = Family::new(
        "xdplb_backend_new_flows_total",
        Counter,
        "New flows of this VIP the Maglev ring gave to this backend",
    );
    let mut be_flows = Family::new(
        "xdplb_backend_flows",
        Gauge,
        "Flow-table entries pointing at this backend: live flows plus idle ones not yet evicted",
    );
    for v in &s.stats.vips {
        let address = v.address.to_string();
        let port = v.port.to_string();
        let labels = [
            ("vip", v.name.as_str()),
            ("address", address.as_str()),
            ("port", port.as_str()),
            ("protocol", v.protocol),
        ];
        vip_packets.push(&labels, v.packets);
        vip_bytes.push(&labels, v.bytes);
        vip_new_flows.push(&labels, v.new_flows);
        for b in &v.backends {
            let backend = b.address.to_string();
            let labels = [
                ("vip", v.name.as_str()),
                ("backend", backend.as_str()),
                ("state", b.state),
            ];
            be_packets.push(&labels, b.packets);
            be_bytes.push(&labels, b.bytes);
            be_new_flows.push(&labels, b.new_flows);
            be_flows.push(&labels[..2], b.flows);
        }
    }

    let mut up = Family::new(
        "xdplb_backend_up",
        Gauge,
        "1 if health checks consider this backend up, 0 if down; absent for backends that are not probed",
    );
    // The health map is a HashMap; sorting keeps the exposition stable between scrapes.
    let mut health: Vec<_> = s.health.iter().collect();
    health.sort();
    for ((vip, addr), is_up) in health {
        let backend = addr.to_string();
        up.push(
            &[("vip", vip.as_str()), ("backend", backend.as_str())],
            u64::from(*is_up),
        );
    }
    let mut panic = Family::new(
        "xdplb_vip_health_panic",
        Gauge,
        "1 while too few of the VIP's backends pass their health check (below its panic_threshold): failures are ignored and every backend not draining is in the ring",
    );
    for (vip, in_panic) in &s.health_panic {
        panic.push(&[("vip", vip.as_str())], u64::from(*in_panic));
    }
    let mut transitions = Family::new(
        "xdplb_health_transitions_total",
        Counter,
        "Backend health changes, by the state the backend changed to",
    );
    transitions.push(&[("to", "down")], s.health_transitions_down);
    transitions.push(&[("to", "up")], s.health_transitions_up);

    let mut datapath = Family::new(
        "xdplb_datapath_packets_total",
        Counter,
        "Datapath counters by name: pass_*, drop_* and tx_* split every packet seen by outcome; conn_* count flow-table lookups of those same packets, so do not sum all outcomes",
    );
    for (name, n) in &s.stats.global {
        datapath.push(&[("outcome", *name)], *n);
    }

    let mut attached = Family::new(
        "xdplb_datapath_up",
        Gauge,
        "1 while the balancer program is attached to its interface; 0 while the interface is gone",
    );
    attached.push(&[], u64::from(s.datapath_up));

    let mut announced = Family::new(
        "xdplb_vip_announced",
        Gauge,
        "1 while this balancer has BIRD announce the VIP address to the routers, 0 while it is withdrawn (no servable VIP, datapath down, or balancer drained); only with announce:",
    );
    for (addr, on) in s.announced.iter().flatten() {
        announced.push(&[("address", &addr.to_string())], u64::from(*on));
    }
    let mut drained = Family::new(
        "xdplb_balancer_drained",
        Gauge,
        "1 while `xdplb drain-balancer` holds every VIP withdrawn (the datapath keeps forwarding)",
    );
    drained.push(&[], u64::from(s.balancer_drained));

    let mut reloads = Family::new(
        "xdplb_reloads_total",
        Counter,
        "Config reloads by result; failed means the new config was refused and the running one stayed live",
    );
    reloads.push(&[("result", "ok")], s.reloads_ok);
    reloads.push(&[("result", "failed")], s.reloads_failed);

    let mut entries = Family::new("xdplb_map_entries", Gauge, "Entries in use in this BPF map");
    let mut capacity = Family::new(
        "xdplb_map_capacity",
        Gauge,
        "Maximum number of entries of this BPF map",
    );
    for (map, used, max) in &s.map_fill {
        entries.push(&[("map", *map)], *used);
        capacity.push(&[("map", *map)], *max);
    }

    vec![
        vip_packets,
        vip_bytes,
        vip_new_flows,
        be_packets,
        be_bytes,
        be_new_flows,
        be_flows,
        up,
        panic,
        transitions,
        datapath,
        attached,
        announced,
        drained,
        reloads,
        entries,
        capacity,
    ]
}

/// Prometheus text exposition (OpenMetrics text, see [`CONTENT_TYPE`]) of `s`.
pub fn encode(s: &Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families(s))));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use prometheus_parse::{Sample, Scrape, Value};

    use super::*;
    use crate::datapath::counters::{BackendStats, VipStats};

    fn backend(address: &str, state: &'static str, packets: u64) -> BackendStats {
        BackendStats {
            address: address.parse().unwrap(),
            state,
            packets,
            bytes: packets * 100,
            new_flows: packets / 10,
            flows: packets / 20,
        }
    }

    pub(crate) fn snapshot() -> Snapshot {
        let vips = vec![
            VipStats {
                name: "web".into(),
                address: "10.0.0.10".parse().unwrap(),
                port: 80,
                protocol: "tcp",
                packets: 300,
                bytes: 30_000,
                new_flows: 30,
                flows: 15,
                backends: vec![
                    backend("10.0.1.1", "active", 200),
                    backend("10.0.1.2", "draining", 100),
                ],
            },
            VipStats {
                name: "dns6".into(),
                address: "2001:db8::10".parse().unwrap(),
                port: 53,
                protocol: "udp",
                packets: 70,
                bytes: 7_000,
                new_flows: 7,
                flows: 3,
                backends: vec![
                    backend("2001:db8::1:1", "active", 40),
                    backend("2001:db8::1:2", "active", 30),
                ],
            },
        ];
        let global = BTreeMap::from([
            ("pass_not_ip", 5),
            ("pass_not_vip", 11),
            ("drop_malformed", 2),
            ("tx_forwarded", 370),
            ("conn_hit", 333),
            ("conn_miss", 37),
        ]);
        let health = HashMap::from([
            (("web".to_string(), "10.0.1.1".parse().unwrap()), true),
            (("web".to_string(), "10.0.1.2".parse().unwrap()), false),
            (("dns6".to_string(), "2001:db8::1:1".parse().unwrap()), true),
        ]);
        Snapshot {
            stats: StatsReport { vips, global },
            health,
            health_panic: vec![("web".into(), false), ("dns6".into(), true)],
            datapath_up: true,
            announced: Some(vec![
                ("10.0.0.10".parse().unwrap(), true),
                ("2001:db8::10".parse().unwrap(), false),
            ]),
            balancer_drained: false,
            reloads_ok: 3,
            reloads_failed: 1,
            health_transitions_down: 4,
            health_transitions_up: 2,
            map_fill: vec![
                ("VIPS", 2, 512),
                ("BACKENDS", 4, 16384),
                ("CONNS", 77, 1_048_576),
            ],
        }
    }

    pub(crate) fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("exposition parses")
    }

    fn matching<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
        scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample of `metric` carrying `labels` (it must be unique).
    pub(crate) fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let found = matching(scrape, metric, labels);
        assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
        match found[0].value {
            // prometheus-parse keys types by sample name, so OpenMetrics counters (typed
            // under the name without `_total`) come back untyped; the value is what matters.
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{metric}: unexpected {other:?}"),
        }
    }

    #[test]
    fn encodes_every_family_parseably() {
        let snap = snapshot();
        let text = encode(&snap);
        let scrape = parse(&text);

        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE xdplb_vip_packets counter\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE xdplb_backend_up gauge\n"), "{text}");
        assert!(text.contains("# TYPE xdplb_map_capacity gauge\n"), "{text}");
        // Every sample belongs to a family with a help text.
        for s in &scrape.samples {
            let family = s.metric.strip_suffix("_total").unwrap_or(&s.metric);
            assert!(scrape.docs.contains_key(family), "{} has no HELP", s.metric);
            assert!(s.metric.starts_with("xdplb_"), "{}", s.metric);
        }

        let vip6 = [
            ("vip", "dns6"),
            ("address", "2001:db8::10"),
            ("port", "53"),
            ("protocol", "udp"),
        ];
        assert_eq!(value(&scrape, "xdplb_vip_packets_total", &vip6), 70.0);
        assert_eq!(value(&scrape, "xdplb_vip_bytes_total", &vip6), 7000.0);
        assert_eq!(value(&scrape, "xdplb_vip_new_flows_total", &vip6), 7.0);
        let vip4 = [("vip", "web"), ("address", "10.0.0.10"), ("port", "80")];
        assert_eq!(value(&scrape, "xdplb_vip_packets_total", &vip4), 300.0);
        assert_eq!(matching(&scrape, "xdplb_vip_packets_total", &[]).len(), 2);

        let draining = [
            ("vip", "web"),
            ("backend", "10.0.1.2"),
            ("state", "draining"),
        ];
        assert_eq!(
            value(&scrape, "xdplb_backend_packets_total", &draining),
            100.0
        );
        assert_eq!(
            value(&scrape, "xdplb_backend_bytes_total", &draining),
            10_000.0
        );
        assert_eq!(
            value(&scrape, "xdplb_backend_new_flows_total", &draining),
            10.0
        );
        let b6 = [("vip", "dns6"), ("backend", "2001:db8::1:2")];
        assert_eq!(value(&scrape, "xdplb_backend_packets_total", &b6), 30.0);
        assert_eq!(
            matching(&scrape, "xdplb_backend_packets_total", &[]).len(),
            4
        );

        let up = |vip, backend| {
            value(
                &scrape,
                "xdplb_backend_up",
                &[("vip", vip), ("backend", backend)],
            )
        };
        assert_eq!(up("web", "10.0.1.1"), 1.0);
        let panic = |vip| value(&scrape, "xdplb_vip_health_panic", &[("vip", vip)]);
        assert_eq!((panic("web"), panic("dns6")), (0.0, 1.0));
        assert_eq!(up("web", "10.0.1.2"), 0.0);
        assert_eq!(up("dns6", "2001:db8::1:1"), 1.0);
        assert!(
            matching(&scrape, "xdplb_backend_up", &[("backend", "2001:db8::1:2")]).is_empty(),
            "an unprobed backend has no up series"
        );
        assert_eq!(
            value(&scrape, "xdplb_health_transitions_total", &[("to", "down")]),
            4.0
        );
        assert_eq!(
            value(&scrape, "xdplb_health_transitions_total", &[("to", "up")]),
            2.0
        );

        assert_eq!(
            value(
                &scrape,
                "xdplb_datapath_packets_total",
                &[("outcome", "tx_forwarded")]
            ),
            370.0
        );
        assert_eq!(
            value(
                &scrape,
                "xdplb_datapath_packets_total",
                &[("outcome", "drop_malformed")]
            ),
            2.0
        );
        assert_eq!(
            matching(&scrape, "xdplb_datapath_packets_total", &[]).len(),
            snap.stats.global.len()
        );

        assert_eq!(
            value(&scrape, "xdplb_reloads_total", &[("result", "ok")]),
            3.0
        );
        assert_eq!(
            value(&scrape, "xdplb_reloads_total", &[("result", "failed")]),
            1.0
        );

        assert_eq!(
            value(&scrape, "xdplb_map_entries", &[("map", "CONNS")]),
            77.0
        );
        assert_eq!(
            value(&scrape, "xdplb_map_capacity", &[("map", "CONNS")]),
            1_048_576.0
        );
        assert_eq!(value(&scrape, "xdplb_map_entries", &[("map", "VIPS")]), 2.0);
        assert!(matches!(
            matching(&scrape, "xdplb_map_entries", &[("map", "BACKENDS")])[0].value,
            Value::Gauge(4.0)
        ));
    }

    #[test]
    fn empty_families_are_left_out_and_labels_escaped() {
        let mut snap = snapshot();
        snap.health.clear();
        snap.stats.vips.truncate(1);
        snap.stats.vips[0].name = "odd\"name\\x".into();
        let text = encode(&snap);
        assert!(!text.contains("xdplb_backend_up"), "{text}");
        assert!(
            text.contains(r#"xdplb_vip_packets_total{vip="odd\"name\\x",address="10.0.0.10""#),
            "{text}"
        );
        assert_eq!(encode(&snap), text, "the exposition is deterministic");
    }
}

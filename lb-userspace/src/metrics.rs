//! Prometheus exporter: turns a scrape-time snapshot of counters, health and map fill into the text exposition and serves it on GET /metrics.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::stats::StatsReport;

/// Everything the exporter shows, gathered by the agent at scrape time.
pub struct Snapshot {
    pub stats: StatsReport,
    /// Health of probed backends: (vip name, backend address) -> up?  Unprobed backends are absent.
    pub health: HashMap<(String, IpAddr), bool>,
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
        transitions,
        datapath,
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

/// Scrapes are tiny; a bound keeps a slow or stuck client from holding a socket for long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer request heads are not a scraper's; stop reading rather than buffer them.
const MAX_HEAD: usize = 8 * 1024;
/// Connections handled at once; more wait in the listen backlog, so a flood of idle
/// connections cannot use up the agent's file descriptors.
const MAX_CONNECTIONS: usize = 64;

type SnapshotFn = Arc<dyn Fn() -> anyhow::Result<Snapshot> + Send + Sync>;

/// Serves GET /metrics on `addr` (any other path: 404; non-GET: 405) with a minimal HTTP/1.1
/// handler (one request per connection, `Connection: close`). `snapshot` is called per scrape;
/// if it returns Err the answer is 500 with the error text. Returns only when the listener
/// cannot be bound; otherwise runs forever, so spawn it as a task.
pub async fn serve(
    addr: SocketAddr,
    snapshot: Arc<dyn Fn() -> anyhow::Result<Snapshot> + Send + Sync>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    log::info!("metrics: serving http://{local}/metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Typically EMFILE or a connection reset before accept: transient, so keep
                // serving, but pause so a persistent error does not spin the task.
                log::warn!("metrics: accept on {local} failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, snapshot).await {
                log::debug!("metrics: connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra_header: Option<&'static str>,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_header: None,
            body: body.into(),
        }
    }
}

async fn handle(mut stream: TcpStream, snapshot: SnapshotFn) -> std::io::Result<()> {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = respond(&head, snapshot).await;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len()
    );
    if let Some(h) = response.extra_header {
        out += h;
        out += "\r\n";
    }
    out += "\r\n";
    out += &response.body;
    let write = async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(IO_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "writing the response"))??;
    // Closing with unread input (a request body) makes the kernel send RST, which can
    // destroy the response before the client reads it; drain briefly until the client closes.
    let drain = async {
        let mut buf = [0u8; 4096];
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    Ok(())
}

/// Reads up to the blank line that ends the request head (or EOF, or [`MAX_HEAD`] bytes).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    Ok(head)
}

async fn respond(head: &[u8], snapshot: SnapshotFn) -> Response {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request", "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(400, "Bad Request", "only HTTP/1.x is served\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Response::text(404, "Not Found", "not found; metrics are at /metrics\n");
    }
    if method != "GET" {
        return Response {
            extra_header: Some("Allow: GET"),
            ..Response::text(405, "Method Not Allowed", "only GET is allowed\n")
        };
    }
    // Gathering reads the BPF maps (the flow table can hold millions of entries), which is
    // blocking work that must not stall the runtime threads the datapath agent also uses.
    match tokio::task::spawn_blocking(move || snapshot().map(|s| encode(&s))).await {
        Ok(Ok(body)) => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            extra_header: None,
            body,
        },
        Ok(Err(e)) => {
            log::warn!("metrics: gathering the snapshot failed: {e:#}");
            Response::text(500, "Internal Server Error", format!("{e:#}\n"))
        }
        Err(e) => {
            log::error!("metrics: gathering the snapshot panicked: {e}");
            Response::text(
                500,
                "Internal Server Error",
                "gathering the snapshot panicked\n",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prometheus_parse::{Sample, Scrape, Value};

    use super::*;
    use crate::stats::{BackendStats, VipStats};

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

    fn snapshot() -> Snapshot {
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

    fn parse(text: &str) -> Scrape {
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
    fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
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

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// Sends `request` raw and returns (status, head, body).
    async fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
        let exchange = async {
            // serve was just spawned: retry until it listens.
            let mut stream = loop {
                match TcpStream::connect(addr).await {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.unwrap();
            String::from_utf8(raw).unwrap()
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the exchange finishes in time");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        // Keep each header line's CRLF so assertions can match whole lines.
        (status, format!("{head}\r\n"), body.to_string())
    }

    fn spawn_serve(f: impl Fn() -> anyhow::Result<Snapshot> + Send + Sync + 'static) -> SocketAddr {
        let addr = free_port();
        tokio::spawn(serve(addr, Arc::new(f)));
        addr
    }

    #[tokio::test]
    async fn serves_metrics_and_rejects_the_rest() {
        let addr = spawn_serve(|| Ok(snapshot()));
        let (status, head, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{head}"
        );
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        let scrape = parse(&body);
        assert_eq!(
            value(
                &scrape,
                "xdplb_backend_packets_total",
                &[("backend", "10.0.1.1")]
            ),
            200.0
        );

        let (status, _, _) = http(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert_eq!(status, 200);
        let (status, _, _) = http(addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 404);
        let (status, head, _) = http(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!(status, 405);
        assert!(head.contains("Allow: GET\r\n"), "{head}");
        let (status, _, _) = http(addr, "garbage\r\n\r\n").await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn snapshot_error_is_a_500_with_its_text() {
        let addr =
            spawn_serve(|| Err(anyhow::anyhow!("pinned maps gone").context("reading counters")));
        let (status, head, body) = http(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 500, "{head}");
        assert!(head.contains("Content-Type: text/plain"), "{head}");
        assert_eq!(body, "reading counters: pinned maps gone\n");
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            serve(addr, Arc::new(|| Ok(snapshot()))),
        )
        .await
        .expect("serve returns at once when it cannot bind");
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}

//! Hostile input against a running agent.
//!
//! 40+ broken configs, garbage and oversized API requests, a client that never finishes, 50
//! concurrent conflicting changes, and abuse of the metrics endpoint. Each is refused with a
//! message naming the problem (for configs: the field and the line), the running state does not
//! change, and the agent keeps answering.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdplb_lab::{
    lab::Lab,
    netns,
    scenario::{burst4, lab_config, small_lab, Balancer, Member},
};

/// A broken config: how it is made from the good one, and what its refusal must say.
struct Case {
    what: &'static str,
    /// The text, made from the running config.
    text: String,
    /// Every one of these must be in the message.
    says: Vec<String>,
}

/// Replaces the first `from` in `good` (which must contain it) by `to`.
fn edit(good: &str, from: &str, to: &str) -> String {
    assert!(good.contains(from), "fixture {from:?} is not in the config");
    good.replacen(from, to, 1)
}

/// The running config and the pieces of it the broken configs are made from.
#[derive(Clone)]
struct Good<'a> {
    text: &'a str,
    vip: String,
    b0: String,
    port: String,
    b0_entry: String,
    b1_entry: String,
    vip_line: String,
    /// Line numbers in the first VIP (web-tcp) of the lab's config.
    port_line: usize,
    b0_line: usize,
}

impl<'a> Good<'a> {
    fn new(text: &'a str, lab: &Lab) -> Good<'a> {
        let vip = lab.vip4().to_string();
        let b0 = lab.backend_addr4(0).to_string();
        let b1 = lab.backend_addr4(1).to_string();
        let port = format!("port: {}", lab.spec().port);
        let b0_entry = format!("{{ address: '{b0}', state: active }}");
        let b1_entry = format!("{{ address: '{b1}', state: active }}");
        let vip_line = format!("address: '{vip}'");
        let line_of = |needle: &str| {
            1 + text
                .lines()
                .position(|l| l.contains(needle))
                .expect("needle in config")
        };
        Good {
            text,
            port_line: line_of(&port),
            b0_line: line_of(&b0_entry),
            vip,
            b0,
            port,
            b0_entry,
            b1_entry,
            vip_line,
        }
    }

    /// [`edit`] of the good config.
    fn edit(&self, from: &str, to: &str) -> String {
        edit(self.text, from, to)
    }

    /// The good config with `extra` added to the first VIP.
    fn in_vip(&self, extra: &str) -> String {
        self.edit(
            "    protocol: tcp\n",
            &format!("    protocol: tcp\n{extra}"),
        )
    }
}

fn case(what: &'static str, text: String, says: &[&str]) -> Case {
    Case {
        what,
        text,
        says: says.iter().map(|s| s.to_string()).collect(),
    }
}

/// Every broken config, in one list.
fn cases(good: &str, lab: &Lab) -> Vec<Case> {
    let g = Good::new(good, lab);
    [
        vip_cases(&g),
        backend_cases(&g),
        vip_option_cases(&g),
        file_cases(&g),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The first VIP's own fields, and unknown fields.
fn vip_cases(g: &Good) -> Vec<Case> {
    let Good {
        port,
        vip_line,
        port_line,
        ..
    } = g.clone();
    vec![
        case(
            "port of the wrong type",
            g.edit(&port, "port: http"),
            &["vips[0].port", &format!("line {port_line}")],
        ),
        case(
            "port too large",
            g.edit(&port, "port: 70000"),
            &["vips[0].port", "expected u16", &format!("line {port_line}")],
        ),
        case(
            "negative port",
            g.edit(&port, "port: -1"),
            &["vips[0].port", &format!("line {port_line}")],
        ),
        case(
            "unknown protocol",
            g.edit("protocol: tcp", "protocol: sctp"),
            &["vips[0].protocol", "unknown variant `sctp`"],
        ),
        case(
            "bad VIP address",
            g.edit(&vip_line, "address: '10.201.0.300'"),
            &["vips[0].address", "invalid IP address"],
        ),
        case(
            "unspecified VIP",
            g.edit(&vip_line, "address: '0.0.0.0'"),
            &["address 0.0.0.0 cannot be a VIP"],
        ),
        case(
            "multicast VIP",
            g.edit(&vip_line, "address: '224.0.0.1'"),
            &["address 224.0.0.1 cannot be a VIP"],
        ),
        case(
            "bad VIP name",
            g.edit("name: web-tcp", "name: 'web tcp!'"),
            &["invalid VIP name"],
        ),
        case(
            "duplicate VIP name",
            g.edit("name: web-tcp", "name: web-udp"),
            &["duplicate VIP name \"web-udp\""],
        ),
        case(
            "unknown top-level field",
            g.edit("vips:\n", "colour: blue\nvips:\n"),
            &["unknown field `colour`"],
        ),
        case(
            "unknown VIP field",
            g.in_vip("    colour: blue\n"),
            &["vips[0]", "unknown field `colour`"],
        ),
    ]
}

/// The first VIP's backends.
fn backend_cases(g: &Good) -> Vec<Case> {
    let Good {
        vip,
        b0,
        b0_entry,
        b1_entry,
        b0_line,
        ..
    } = g.clone();
    vec![
        case(
            "unknown backend field",
            g.edit(&b0_entry, &format!("{{ address: '{b0}', colour: blue }}")),
            &[
                "vips[0].backends[0]",
                "unknown field `colour`",
                &format!("line {b0_line}"),
            ],
        ),
        case(
            "bad backend state",
            g.edit(&b0_entry, &format!("{{ address: '{b0}', state: paused }}")),
            &["vips[0].backends[0].state", "unknown variant `paused`"],
        ),
        case(
            "bad backend address",
            g.edit(&b0_entry, "{ address: '10.200.0.999' }"),
            &["vips[0].backends[0].address", "invalid IP address"],
        ),
        case(
            "loopback backend",
            g.edit(&b0_entry, "{ address: '127.0.0.1' }"),
            &["vips[0].backends[0].address", "not a host's address"],
        ),
        case(
            "multicast backend",
            g.edit(&b0_entry, "{ address: '239.1.1.1' }"),
            &["vips[0].backends[0].address", "not a host's address"],
        ),
        case(
            "broadcast backend",
            g.edit(&b0_entry, "{ address: '255.255.255.255' }"),
            &["vips[0].backends[0].address", "not a host's address"],
        ),
        case(
            "backend on the VIP",
            g.edit(&b0_entry, &format!("{{ address: '{vip}' }}")),
            &["backends[0].address", "is the VIP's own address"],
        ),
        case(
            "backend listed twice",
            g.edit(&b1_entry, &b0_entry),
            &[
                "vips[0]",
                &format!("backends[1].address {b0} is listed twice (also backends[0])"),
            ],
        ),
        case(
            "IPv6 backend behind an IPv4 l2 VIP",
            g.edit(&b0_entry, "{ address: 'fd00:200::101' }"),
            &["backends[0].address fd00:200::101 is IPv6, the VIP is IPv4"],
        ),
        case(
            "zero weight",
            g.edit(&b0_entry, &format!("{{ address: '{b0}', weight: 0 }}")),
            &["vips[0].backends[0].weight", "out of range"],
        ),
        case(
            "huge weight",
            g.edit(
                &b0_entry,
                &format!("{{ address: '{b0}', weight: 99999999999 }}"),
            ),
            &["vips[0].backends[0].weight", "too large"],
        ),
        case(
            "negative weight",
            g.edit(&b0_entry, &format!("{{ address: '{b0}', weight: -5 }}")),
            &["vips[0].backends[0].weight", "negative"],
        ),
        case(
            "bad MAC",
            g.edit(&b0_entry, &format!("{{ address: '{b0}', mac: 'zz:zz' }}")),
            &["vips[0].backends[0].mac", "invalid MAC"],
        ),
    ]
}

/// The first VIP's options: ring, hash, forwarding, health check, stateless.
fn vip_option_cases(g: &Good) -> Vec<Case> {
    vec![
        case(
            "non-prime ring",
            g.in_vip("    ring_size: 65536\n"),
            &["vips[0].ring_size", "65536 is not prime"],
        ),
        case(
            "huge ring",
            g.in_vip("    ring_size: 4294967291\n"),
            &["vips[0].ring_size"],
        ),
        case(
            "ring too small for its backends",
            g.in_vip("    ring_size: 101\n"),
            &["ring_size 101 is too small for 2 backends"],
        ),
        case(
            "unknown hash",
            g.in_vip("    hash: random\n"),
            &["vips[0].hash", "unknown variant `random`"],
        ),
        case(
            "unknown forwarding",
            g.in_vip("    forwarding: gre\n"),
            &["vips[0].forwarding", "unknown variant `gre`"],
        ),
        case(
            "unknown health-check kind",
            g.in_vip("    health_check: { kind: icmp, port: 8080 }\n"),
            &["vips[0].health_check", "unknown variant `icmp`"],
        ),
        case(
            "health-check interval not a duration",
            g.in_vip("    health_check: { kind: tcp, port: 8080, interval: fast }\n"),
            &["vips[0].health_check", "interval"],
        ),
        case(
            "stateless not a bool",
            g.in_vip("    stateless: sometimes\n"),
            &["vips[0].stateless"],
        ),
    ]
}

/// The file's other fields and its YAML as such.
fn file_cases(g: &Good) -> Vec<Case> {
    let bomb = {
        let mut y = String::from("interface: gw0\nvips:\n  - &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (name, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
        {
            y += &format!("  - &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n");
        }
        y
    };
    vec![
        case(
            "bad interface name",
            g.edit("interface: gw0", "interface: a/b"),
            &["interface", "invalid interface name", "line 2"],
        ),
        case(
            "unknown XDP mode",
            g.edit("xdp_mode: generic", "xdp_mode: turbo"),
            &["xdp_mode", "unknown variant `turbo`", "line 3"],
        ),
        case(
            "flow table too small",
            g.edit("flow_table_size: 65536", "flow_table_size: 12"),
            &["flow_table_size", "out of range"],
        ),
        case(
            "flow table not a number",
            g.edit("flow_table_size: 65536", "flow_table_size: lots"),
            &["flow_table_size"],
        ),
        case(
            "bad tunnel prefix",
            g.edit("vips:\n", "tunnel: { source_v4: 10.0.0.0/33 }\nvips:\n"),
            &["tunnel.source_v4"],
        ),
        case(
            "tunnel MTU too small",
            g.edit("vips:\n", "tunnel: { mtu: 100 }\nvips:\n"),
            &["tunnel.mtu"],
        ),
        case(
            "bad metrics address",
            g.edit("vips:\n", "metrics: 'everywhere'\nvips:\n"),
            &["metrics"],
        ),
        case(
            "bad virtual MAC",
            g.edit("vips:\n", "virtual_mac: '00:11'\nvips:\n"),
            &["virtual_mac", "invalid MAC"],
        ),
        case(
            "vips not a list",
            g.edit("vips:\n", "vips: 5\nx:\n"),
            &["vips", "invalid type"],
        ),
        case("tab indentation", g.edit("    port:", "\tport:"), &["line"]),
        case("empty file", String::new(), &["missing field `interface`"]),
        case("YAML alias bomb", bomb, &["vips[0]", "invalid type"]),
        case(
            "deep nesting",
            format!(
                "interface: gw0\nvips: {}{}\n",
                "[".repeat(20000),
                "]".repeat(20000)
            ),
            &["vips[0]", "line 2"],
        ),
    ]
}

/// The VIPs and backends of a status answer, without the idle times that move with the clock.
fn state(status: &Value) -> Value {
    let mut vips = status["vips"].clone();
    for v in vips.as_array_mut().unwrap() {
        for b in v["backends"].as_array_mut().unwrap() {
            b.as_object_mut().unwrap().remove("idle_seconds");
        }
    }
    vips
}

/// A raw API exchange: writes `bytes`, returns the answer line (empty if the agent closed).
fn raw(socket: &std::path::Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The agent stops reading an oversized request once it is over the limit: the rest of
    // the write may meet a closed socket, and the answer is still there to read.
    let _ = s.write_all(bytes);
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

fn metrics_raw(lab: &Lab, request: Vec<u8>) -> String {
    netns::in_netns(lab.gateway_ns(), move || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9842")?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        let _ = s.write_all(&request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
    .unwrap()
}

#[test]
fn hostile_input_is_refused_and_changes_nothing() {
    let mut lab = small_lab(2).expect("lab");
    let members: Vec<_> = (0..2).map(|i| (i, Member::Active)).collect();
    let good = lab_config(&mut lab, "generic", &members).unwrap();
    let balancer = Balancer::start(&mut lab, "generic", &good).expect("xdplb starts");

    every_bad_config_is_refused_with_its_field_and_line(&lab, &balancer, &good);
    let socket = Balancer::socket(&lab);
    let slow = api_garbage_gets_clear_errors_and_a_slow_client_holds_nobody_up(&lab, &socket);
    concurrent_conflicting_changes_leave_state_and_file_agreeing(&lab, &balancer, &socket);
    drop(slow);
    metrics_refuse_garbage_and_serve_past_slow_clients(&lab);

    // And it still balances.
    let r = burst4(&lab, 50).expect("burst");
    assert_eq!((r.ok, r.failed), (50, 0), "{:?}", r.errors);
    balancer.stop(&mut lab).unwrap();
}

/// Configs: each refused by `xdplb reload` (exit 1) with its field and line.
fn every_bad_config_is_refused_with_its_field_and_line(lab: &Lab, balancer: &Balancer, good: &str) {
    let before = Balancer::status(lab).unwrap();
    let list = cases(good, lab);
    assert!(list.len() >= 40, "{} cases", list.len());
    let mut files = vec![];
    for case in list
        .iter()
        .map(|c| (c.what, c.text.as_bytes().to_vec(), &c.says))
        .chain([
            (
                "binary bytes",
                vec![0, 159, 146, 150, 255, b'\n'],
                &vec!["is not text".to_string()],
            ),
            (
                "a 100 MB file",
                vec![b'#'; 100 << 20],
                &vec!["larger than 4 MiB".to_string()],
            ),
        ])
    {
        let (what, bytes, says) = case;
        std::fs::write(&balancer.config, &bytes).unwrap();
        let (code, out) = Balancer::cli_code(lab, &["reload"]);
        assert_eq!(code, Some(1), "{what}: {out}");
        for s in says {
            assert!(out.contains(s.as_str()), "{what}: expected {s:?} in: {out}");
        }
        files.push(what);
    }
    let after = Balancer::status(lab).unwrap();
    assert_eq!(
        state(&after),
        state(&before),
        "a refused config changed the state"
    );
    assert!(
        after["reloads_failed"].as_u64().unwrap() >= files.len() as u64,
        "{after}"
    );
    std::fs::write(&balancer.config, good).unwrap();
}

/// API: garbage, truncated JSON and an oversized request get clear errors.
fn api_garbage_gets_clear_errors_and_a_slow_client_holds_nobody_up(
    lab: &Lab,
    socket: &Path,
) -> UnixStream {
    let answer: Value = serde_json::from_str(&raw(socket, b"hello agent\n")).unwrap();
    assert!(
        answer["ok"] == false && answer["error"].as_str().unwrap().starts_with("bad request"),
        "{answer}"
    );
    let answer: Value =
        serde_json::from_str(&raw(socket, b"{\"BackendDrain\": {\"vip\": \"web-tcp\"\n")).unwrap();
    assert!(
        answer["ok"] == false && answer["error"].as_str().unwrap().starts_with("bad request"),
        "{answer}"
    );
    let mut huge = vec![b'['; 5 << 20];
    huge.push(b'\n');
    let answer: Value = serde_json::from_str(&raw(socket, &huge)).unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("longer than"),
        "{answer}"
    );
    // A client that starts a request and never finishes it holds nobody else up.
    let mut slow = UnixStream::connect(socket).unwrap();
    slow.write_all(b"{\"Sta").unwrap();
    let t = Instant::now();
    let (ok, out) = Balancer::cli(lab, &["status"]);
    assert!(ok && t.elapsed() < Duration::from_secs(5), "{out}");
    slow
}

/// 50 concurrent conflicting changes: each is applied or refused, and afterwards the
/// running state, the saved file and a fresh plan agree.
fn concurrent_conflicting_changes_leave_state_and_file_agreeing(
    lab: &Lab,
    balancer: &Balancer,
    socket: &Path,
) {
    let b0 = lab.backend_addr4(0).to_string();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let lab_socket = socket.to_path_buf();
            let b0 = b0.clone();
            std::thread::spawn(move || {
                let args: Vec<String> = match i % 3 {
                    0 => vec![
                        "backend".into(),
                        "weight".into(),
                        "web-tcp".into(),
                        b0,
                        (10 + i).to_string(),
                    ],
                    1 => vec!["backend".into(), "drain".into(), "web-tcp".into(), b0],
                    _ => vec!["backend".into(), "activate".into(), "web-tcp".into(), b0],
                };
                let out = std::process::Command::new(xdplb_lab::lab::tool_path("xdplb"))
                    .args(&args)
                    .arg("--socket")
                    .arg(&lab_socket)
                    .output()
                    .unwrap();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
        })
        .collect();
    for h in handles {
        let (code, err) = h.join().unwrap();
        assert!(
            code == Some(0) || (code == Some(1) && err.contains("error:")),
            "{code:?} {err}"
        );
    }
    let check = std::process::Command::new(xdplb_lab::lab::tool_path("xdplb"))
        .args(["check", "--config"])
        .arg(&balancer.config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && out.contains("no changes"),
        "the saved file and the running state disagree: {out}"
    );
}

/// Metrics: garbage and huge headers are refused, slow clients do not block a scrape.
fn metrics_refuse_garbage_and_serve_past_slow_clients(lab: &Lab) {
    let answer = metrics_raw(lab, b"\x16\x03\x01 garbage\r\n\r\n".to_vec());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(vec![b'a'; 1 << 20]);
    big.extend(b"\r\n\r\n");
    let answer = metrics_raw(lab, big);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    let gw = lab.gateway_ns().to_owned();
    let slow_clients: Vec<std::net::TcpStream> = (0..5)
        .map(|_| {
            netns::in_netns(&gw, || {
                let mut s = std::net::TcpStream::connect("127.0.0.1:9842")?;
                s.write_all(b"GET /metrics HTTP/1.1\r\nHo")?;
                Ok(s)
            })
            .unwrap()
        })
        .collect();
    let t = Instant::now();
    let page = Balancer::metrics_text(lab).unwrap();
    assert!(
        page.starts_with("HTTP/1.1 200") && t.elapsed() < Duration::from_secs(5),
        "{page}"
    );
    drop(slow_clients);
}

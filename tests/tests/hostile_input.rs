//! Hostile input against a running agent: 40+ broken configs, garbage and oversized API requests, a client that never finishes, 50 concurrent conflicting changes, and abuse of the metrics endpoint. Each is refused with a message naming the problem (for configs: the field and the line), the running state does not change, and the agent keeps answering.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
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

fn cases(good: &str, lab: &Lab) -> Vec<Case> {
    let vip = lab.vip4().to_string();
    let b0 = lab.backend_addr4(0).to_string();
    let b1 = lab.backend_addr4(1).to_string();
    let port = format!("port: {}", lab.spec().port);
    let b0_entry = format!("{{ address: '{b0}', state: active }}");
    let b1_entry = format!("{{ address: '{b1}', state: active }}");
    let vip_line = format!("address: '{vip}'");
    // Line numbers of the first VIP (web-tcp) in the lab's config.
    let line_of = |needle: &str| {
        1 + good
            .lines()
            .position(|l| l.contains(needle))
            .expect("needle in config")
    };
    let port_line = line_of(&port);
    let b0_line = line_of(&b0_entry);
    let c = |what: &'static str, text: String, says: &[&str]| Case {
        what,
        text,
        says: says.iter().map(|s| s.to_string()).collect(),
    };
    let s = |v: String| v;
    let in_vip = |extra: &str| {
        edit(
            good,
            "    protocol: tcp\n",
            &format!("    protocol: tcp\n{extra}"),
        )
    };
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
        c(
            "port of the wrong type",
            edit(good, &port, "port: http"),
            &["vips[0].port", &format!("line {port_line}")],
        ),
        c(
            "port too large",
            edit(good, &port, "port: 70000"),
            &["vips[0].port", "expected u16", &format!("line {port_line}")],
        ),
        c(
            "negative port",
            edit(good, &port, "port: -1"),
            &["vips[0].port", &format!("line {port_line}")],
        ),
        c(
            "unknown protocol",
            edit(good, "protocol: tcp", "protocol: sctp"),
            &["vips[0].protocol", "unknown variant `sctp`"],
        ),
        c(
            "bad VIP address",
            edit(good, &vip_line, "address: '10.201.0.300'"),
            &["vips[0].address", "invalid IP address"],
        ),
        c(
            "unspecified VIP",
            edit(good, &vip_line, "address: '0.0.0.0'"),
            &["address 0.0.0.0 cannot be a VIP"],
        ),
        c(
            "multicast VIP",
            edit(good, &vip_line, "address: '224.0.0.1'"),
            &["address 224.0.0.1 cannot be a VIP"],
        ),
        c(
            "bad VIP name",
            edit(good, "name: web-tcp", "name: 'web tcp!'"),
            &["invalid VIP name"],
        ),
        c(
            "duplicate VIP name",
            edit(good, "name: web-tcp", "name: web-udp"),
            &["duplicate VIP name \"web-udp\""],
        ),
        c(
            "unknown top-level field",
            edit(good, "vips:\n", "colour: blue\nvips:\n"),
            &["unknown field `colour`"],
        ),
        c(
            "unknown VIP field",
            in_vip("    colour: blue\n"),
            &["vips[0]", "unknown field `colour`"],
        ),
        c(
            "unknown backend field",
            edit(
                good,
                &b0_entry,
                &format!("{{ address: '{b0}', colour: blue }}"),
            ),
            &[
                "vips[0].backends[0]",
                "unknown field `colour`",
                &format!("line {b0_line}"),
            ],
        ),
        c(
            "bad backend state",
            edit(
                good,
                &b0_entry,
                &format!("{{ address: '{b0}', state: paused }}"),
            ),
            &["vips[0].backends[0].state", "unknown variant `paused`"],
        ),
        c(
            "bad backend address",
            edit(good, &b0_entry, "{ address: '10.200.0.999' }"),
            &["vips[0].backends[0].address", "invalid IP address"],
        ),
        c(
            "loopback backend",
            edit(good, &b0_entry, "{ address: '127.0.0.1' }"),
            &["vips[0].backends[0].address", "not a host's address"],
        ),
        c(
            "multicast backend",
            edit(good, &b0_entry, "{ address: '239.1.1.1' }"),
            &["vips[0].backends[0].address", "not a host's address"],
        ),
        c(
            "broadcast backend",
            edit(good, &b0_entry, "{ address: '255.255.255.255' }"),
            &["vips[0].backends[0].address", "not a host's address"],
        ),
        c(
            "backend on the VIP",
            edit(good, &b0_entry, &format!("{{ address: '{vip}' }}")),
            &["backends[0].address", "is the VIP's own address"],
        ),
        c(
            "backend listed twice",
            edit(good, &b1_entry, &b0_entry),
            &[
                "vips[0]",
                &format!("backends[1].address {b0} is listed twice (also backends[0])"),
            ],
        ),
        c(
            "IPv6 backend behind an IPv4 l2 VIP",
            edit(good, &b0_entry, "{ address: 'fd00:200::101' }"),
            &["backends[0].address fd00:200::101 is IPv6, the VIP is IPv4"],
        ),
        c(
            "zero weight",
            edit(
                good,
                &b0_entry,
                &format!("{{ address: '{b0}', weight: 0 }}"),
            ),
            &["vips[0].backends[0].weight", "out of range"],
        ),
        c(
            "huge weight",
            edit(
                good,
                &b0_entry,
                &format!("{{ address: '{b0}', weight: 99999999999 }}"),
            ),
            &["vips[0].backends[0].weight", "too large"],
        ),
        c(
            "negative weight",
            edit(
                good,
                &b0_entry,
                &format!("{{ address: '{b0}', weight: -5 }}"),
            ),
            &["vips[0].backends[0].weight", "negative"],
        ),
        c(
            "bad MAC",
            edit(
                good,
                &b0_entry,
                &format!("{{ address: '{b0}', mac: 'zz:zz' }}"),
            ),
            &["vips[0].backends[0].mac", "invalid MAC"],
        ),
        c(
            "non-prime ring",
            in_vip("    ring_size: 65536\n"),
            &["vips[0].ring_size", "65536 is not prime"],
        ),
        c(
            "huge ring",
            in_vip("    ring_size: 4294967291\n"),
            &["vips[0].ring_size"],
        ),
        c(
            "ring too small for its backends",
            in_vip("    ring_size: 101\n"),
            &["ring_size 101 is too small for 2 backends"],
        ),
        c(
            "unknown hash",
            in_vip("    hash: random\n"),
            &["vips[0].hash", "unknown variant `random`"],
        ),
        c(
            "unknown forwarding",
            in_vip("    forwarding: gre\n"),
            &["vips[0].forwarding", "unknown variant `gre`"],
        ),
        c(
            "unknown health-check kind",
            in_vip("    health_check: { kind: icmp, port: 8080 }\n"),
            &["vips[0].health_check", "unknown variant `icmp`"],
        ),
        c(
            "health-check interval not a duration",
            in_vip("    health_check: { kind: tcp, port: 8080, interval: fast }\n"),
            &["vips[0].health_check", "interval"],
        ),
        c(
            "stateless not a bool",
            in_vip("    stateless: sometimes\n"),
            &["vips[0].stateless"],
        ),
        c(
            "bad interface name",
            edit(good, "interface: gw0", "interface: a/b"),
            &["interface", "invalid interface name", "line 2"],
        ),
        c(
            "unknown XDP mode",
            edit(good, "xdp_mode: generic", "xdp_mode: turbo"),
            &["xdp_mode", "unknown variant `turbo`", "line 3"],
        ),
        c(
            "flow table too small",
            edit(good, "flow_table_size: 65536", "flow_table_size: 12"),
            &["flow_table_size", "out of range"],
        ),
        c(
            "flow table not a number",
            edit(good, "flow_table_size: 65536", "flow_table_size: lots"),
            &["flow_table_size"],
        ),
        c(
            "bad tunnel prefix",
            edit(
                good,
                "vips:\n",
                "tunnel: { source_v4: 10.0.0.0/33 }\nvips:\n",
            ),
            &["tunnel.source_v4"],
        ),
        c(
            "tunnel MTU too small",
            edit(good, "vips:\n", "tunnel: { mtu: 100 }\nvips:\n"),
            &["tunnel.mtu"],
        ),
        c(
            "bad metrics address",
            edit(good, "vips:\n", "metrics: 'everywhere'\nvips:\n"),
            &["metrics"],
        ),
        c(
            "bad virtual MAC",
            edit(good, "vips:\n", "virtual_mac: '00:11'\nvips:\n"),
            &["virtual_mac", "invalid MAC"],
        ),
        c(
            "vips not a list",
            edit(good, "vips:\n", "vips: 5\nx:\n"),
            &["vips", "invalid type"],
        ),
        c(
            "tab indentation",
            edit(good, "    port:", "\tport:"),
            &["line"],
        ),
        c(
            "empty file",
            s(String::new()),
            &["missing field `interface`"],
        ),
        c("YAML alias bomb", bomb, &["vips[0]", "invalid type"]),
        c(
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
    let before = Balancer::status(&lab).unwrap();

    // Configs: each refused by `xdplb reload` (exit 1) with its field and line.
    let list = cases(&good, &lab);
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
        let (code, out) = Balancer::cli_code(&lab, &["reload"]);
        assert_eq!(code, Some(1), "{what}: {out}");
        for s in says {
            assert!(out.contains(s.as_str()), "{what}: expected {s:?} in: {out}");
        }
        files.push(what);
    }
    let after = Balancer::status(&lab).unwrap();
    assert_eq!(
        state(&after),
        state(&before),
        "a refused config changed the state"
    );
    assert!(
        after["reloads_failed"].as_u64().unwrap() >= files.len() as u64,
        "{after}"
    );
    std::fs::write(&balancer.config, &good).unwrap();

    // API: garbage, truncated JSON and an oversized request get clear errors.
    let socket = Balancer::socket(&lab);
    let answer: Value = serde_json::from_str(&raw(&socket, b"hello agent\n")).unwrap();
    assert!(
        answer["ok"] == false && answer["error"].as_str().unwrap().starts_with("bad request"),
        "{answer}"
    );
    let answer: Value =
        serde_json::from_str(&raw(&socket, b"{\"BackendDrain\": {\"vip\": \"web-tcp\"\n")).unwrap();
    assert!(
        answer["ok"] == false && answer["error"].as_str().unwrap().starts_with("bad request"),
        "{answer}"
    );
    let mut huge = vec![b'['; 5 << 20];
    huge.push(b'\n');
    let answer: Value = serde_json::from_str(&raw(&socket, &huge)).unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("longer than"),
        "{answer}"
    );
    // A client that starts a request and never finishes it holds nobody else up.
    let mut slow = UnixStream::connect(&socket).unwrap();
    slow.write_all(b"{\"Sta").unwrap();
    let t = Instant::now();
    let (ok, out) = Balancer::cli(&lab, &["status"]);
    assert!(ok && t.elapsed() < Duration::from_secs(5), "{out}");

    // 50 concurrent conflicting changes: each is applied or refused, and afterwards the
    // running state, the saved file and a fresh plan agree.
    let b0 = lab.backend_addr4(0).to_string();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let lab_socket = socket.clone();
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
    drop(slow);

    // Metrics: garbage and huge headers are refused, slow clients do not block a scrape.
    let answer = metrics_raw(&lab, b"\x16\x03\x01 garbage\r\n\r\n".to_vec());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(vec![b'a'; 1 << 20]);
    big.extend(b"\r\n\r\n");
    let answer = metrics_raw(&lab, big);
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
    let page = Balancer::metrics_text(&lab).unwrap();
    assert!(
        page.starts_with("HTTP/1.1 200") && t.elapsed() < Duration::from_secs(5),
        "{page}"
    );
    drop(slow_clients);

    // And it still balances.
    let r = burst4(&lab, 50).expect("burst");
    assert_eq!((r.ok, r.failed), (50, 0), "{:?}", r.errors);
    balancer.stop(&mut lab).unwrap();
}

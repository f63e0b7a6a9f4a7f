//! `xdplb decap` end to end: real IP-in-IP from one namespace into another, and its CLI errors.

use super::*;

/// A bpffs mounted in a fresh temp directory, unmounted (releasing every pin in it, and with
/// the pinned link the program) and removed on drop.
pub(super) struct Bpffs(PathBuf);

impl Bpffs {
    pub(super) fn new(name: &str) -> Bpffs {
        let dir = std::env::temp_dir().join(format!("xdplb-decap-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        netns::run_root(&["mount", "-t", "bpf", "bpf", dir.to_str().unwrap()])
            .expect("mount a private bpffs");
        Bpffs(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = netns::run_root(&["umount", "-l", &self.0.to_string_lossy()]);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `xdplb decap ARGS` inside `ns`, sharing our mounts (the private bpffs) — see
/// [`netns::run_shared_mounts`]. Returns stdout.
pub(super) fn xdplb_decap(ns: &str, args: &[&str]) -> String {
    let xdplb = tool_path("xdplb");
    assert!(
        xdplb.is_file(),
        "{} not found: build it with `cargo build -p lb-userspace`",
        xdplb.display()
    );
    let mut cmd = vec![xdplb.to_str().unwrap(), "decap"];
    cmd.extend_from_slice(args);
    netns::run_shared_mounts(ns, &cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Sends `payload` from a raw IP socket of protocol `proto` to `dst`: the kernel adds the
/// outer header (IPv4 or IPv6 by `dst`), the payload is the hand-built inner packet.
pub(super) fn send_raw(proto: u8, dst: IpAddr, payload: &[u8]) -> anyhow::Result<()> {
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW, libc::c_int::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY (both arms): the sockaddr is a fully initialised local of the length passed.
    let rc = match dst {
        IpAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of_val(&sa) as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of_val(&sa) as libc::socklen_t,
                )
            }
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// The next datagram on `sock`, or `None` after `wait`.
pub(super) fn receive(sock: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(_) => None,
    }
}

/// `xdplb decap --stats --json`: interface, addresses and every counter by name, flat.
pub(super) fn counters_json(ns: &str, pin: &Path) -> serde_json::Value {
    let out = xdplb_decap(
        ns,
        &[
            "--interface",
            "vb",
            "--pin-path",
            pin.to_str().unwrap(),
            "--stats",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("--stats --json is JSON");
    assert_eq!(v["interface"], "vb", "{v}");
    assert!(v["addresses"].is_array(), "{v}");
    v
}

/// A's and B's addresses on the veth between them: A sends the tunnels, B decapsulates.
#[derive(Clone, Copy)]
struct Ends {
    a4: Ipv4Addr,
    b4: Ipv4Addr,
    a6: Ipv6Addr,
    b6: Ipv6Addr,
}

/// The VIP listeners in B, one a family.
struct Listeners {
    sock4: UdpSocket,
    sock6: UdpSocket,
}

#[test]
fn a_backend_namespace_receives_real_ip_in_ip_through_xdplb_decap() {
    netns::cleanup_stale();
    let prefix = netns::unique_prefix();
    // Locals drop in reverse order of declaration: the bpffs (and with it the program)
    // goes last, after the namespaces.
    let bpffs = Bpffs::new(&prefix);
    let a = NetNs::new(&format!("{prefix}-a")).unwrap();
    let b = NetNs::new(&format!("{prefix}-b")).unwrap();
    let (a_ns, b_ns) = (a.name().to_owned(), b.name().to_owned());
    let pin = bpffs.0.join("decap");
    let pin_s = pin.to_str().unwrap().to_owned();
    let ends = Ends {
        a4: "10.77.0.1".parse().unwrap(),
        b4: "10.77.0.2".parse().unwrap(),
        a6: "fd00:77::1".parse().unwrap(),
        b6: "fd00:77::2".parse().unwrap(),
    };
    connect(&a, &b);
    let listeners = listen_on_the_vips(&b_ns);

    without_the_program_nothing_arrives(&a_ns, ends, &listeners);
    attaching_names_the_interface_mode_and_default_addresses(&b, &pin_s);
    every_tunnel_pairing_reaches_the_vip_listener(&a_ns, &b_ns, &pin, ends, &listeners);
    rerunning_replaces_the_program_and_keeps_the_counters(&a_ns, &b_ns, &pin, ends, &listeners);
    detach_removes_the_link(&b, &pin_s);
}

/// A veth from A (va: 10.77.0.1, fd00:77::1) to B (vb: 10.77.0.2, fd00:77::2), with the VIPs
/// on B's loopback.
fn connect(a: &NetNs, b: &NetNs) {
    let veth = format!(
        "ip link add va netns {} type veth peer name vb netns {}",
        a.name(),
        b.name()
    );
    netns::run_root(&veth.split_whitespace().collect::<Vec<_>>()).unwrap();
    a.ip(&["addr", "add", "10.77.0.1/24", "dev", "va"]).unwrap();
    a.ip(&["addr", "add", "fd00:77::1/64", "dev", "va", "nodad"])
        .unwrap();
    b.ip(&["addr", "add", "10.77.0.2/24", "dev", "vb"]).unwrap();
    b.ip(&["addr", "add", "fd00:77::2/64", "dev", "vb", "nodad"])
        .unwrap();
    let (vip4, vip6) = (Ipv4Addr::from(VIP4), Ipv6Addr::from(VIP6));
    b.ip(&["addr", "add", &format!("{vip4}/32"), "dev", "lo"])
        .unwrap();
    b.ip(&["addr", "add", &format!("{vip6}/128"), "dev", "lo"])
        .unwrap();
    a.ip(&["link", "set", "va", "up"]).unwrap();
    b.ip(&["link", "set", "vb", "up"]).unwrap();
}

/// The service: UDP listeners on the VIPs, created in B (a socket stays in the namespace
/// it was made in, whichever thread reads it).
fn listen_on_the_vips(b_ns: &str) -> Listeners {
    let (vip4, vip6) = (Ipv4Addr::from(VIP4), Ipv6Addr::from(VIP6));
    let (sock4, sock6) = netns::in_netns(b_ns, move || {
        Ok((
            UdpSocket::bind((vip4, 7777))?,
            UdpSocket::bind((vip6, 7777))?,
        ))
    })
    .unwrap();
    Listeners { sock4, sock6 }
}

/// Sends the inner packet `inner` from namespace `ns` in a tunnel of protocol `proto` to `dst`.
fn send_from(ns: &str, proto: u8, dst: IpAddr, inner: Vec<u8>) {
    netns::in_netns(ns, move || send_raw(proto, dst, &inner)).unwrap();
}

/// Without the program the kernel cannot take the tunnel apart (no ipip driver): nothing
/// arrives. This is what the program is for.
fn without_the_program_nothing_arrives(a_ns: &str, e: Ends, l: &Listeners) {
    let in4 = inner_udp4(e.a4.octets(), VIP4, b"hello 4in4");
    send_from(a_ns, IPPROTO_IPIP, IpAddr::V4(e.b4), in4);
    assert_eq!(
        receive(&l.sock4, Duration::from_millis(500)),
        None,
        "the kernel decapsulated by itself: this test proves nothing here"
    );
}

/// `xdplb decap` attaches in native mode, for B's own addresses by default.
fn attaching_names_the_interface_mode_and_default_addresses(b: &NetNs, pin: &str) {
    let out = xdplb_decap(
        b.name(),
        &[
            "--interface",
            "vb",
            "--xdp-mode",
            "native",
            "--pin-path",
            pin,
        ],
    );
    assert!(
        out.contains("attached xdplb_decap to vb (native XDP)"),
        "{out}"
    );
    assert!(
        out.contains("10.77.0.2, fd00:77::2"),
        "default addresses: {out}"
    );
    let link = b.ip(&["link", "show", "vb"]).unwrap();
    assert!(
        link.contains("prog/xdp") && link.contains("xdplb_decap"),
        "{link}"
    );
}

/// 4in4, 6in6, 4in6 and 6in4 (outer destination, inner family): each inner datagram
/// reaches the VIP listener, from the inner source.
fn every_tunnel_pairing_reaches_the_vip_listener(
    a_ns: &str,
    b_ns: &str,
    pin: &Path,
    e: Ends,
    l: &Listeners,
) {
    for (what, outer_dst, inner_v6) in [
        ("4in4", IpAddr::V4(e.b4), false),
        ("6in6", IpAddr::V6(e.b6), true),
        ("4in6", IpAddr::V6(e.b6), false),
        ("6in4", IpAddr::V4(e.b4), true),
    ] {
        let payload = format!("hello {what}").into_bytes();
        let (proto, inner, sock, src) = if inner_v6 {
            let inner = inner_udp6(e.a6.octets(), VIP6, &payload);
            (IPPROTO_IPV6, inner, &l.sock6, IpAddr::V6(e.a6))
        } else {
            let inner = inner_udp4(e.a4.octets(), VIP4, &payload);
            (IPPROTO_IPIP, inner, &l.sock4, IpAddr::V4(e.a4))
        };
        send_from(a_ns, proto, outer_dst, inner);
        let (got, from) = receive(sock, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{what}: nothing reached the VIP listener"));
        assert_eq!(got, payload, "{what}");
        assert_eq!((from.ip(), from.port()), (src, 40000), "{what}");
    }
    let c = counters_json(b_ns, pin);
    assert_eq!(c["decapsulated"], 4, "{c}");
    assert_eq!(c["drop_malformed"], 0, "{c}");
    assert_eq!(c["pass_not_local"], 0, "{c}");
}

/// Re-running replaces the program in the pinned link (no detach) and keeps the maps; an
/// address left out of the new set is no longer decapsulated for.
fn rerunning_replaces_the_program_and_keeps_the_counters(
    a_ns: &str,
    b_ns: &str,
    pin: &Path,
    e: Ends,
    l: &Listeners,
) {
    let pin_s = pin.to_str().unwrap();
    let out = xdplb_decap(
        b_ns,
        &[
            "--interface",
            "vb",
            "--pin-path",
            pin_s,
            "--address",
            "10.77.0.2",
        ],
    );
    assert!(
        out.contains("replaced the decap program on vb atomically"),
        "{out}"
    );
    assert!(
        out.contains("no longer decapsulating for fd00:77::2"),
        "{out}"
    );
    let in4 = inner_udp4(e.a4.octets(), VIP4, b"hello 4in4");
    send_from(a_ns, IPPROTO_IPIP, IpAddr::V4(e.b4), in4);
    let (got, _) = receive(&l.sock4, Duration::from_secs(5)).expect("4in4 after the replacement");
    assert_eq!(got, b"hello 4in4");
    // fd00:77::2 left the set: its tunnels pass untouched, and the kernel drops them.
    let in6 = inner_udp6(e.a6.octets(), VIP6, b"not any more");
    send_from(a_ns, IPPROTO_IPV6, IpAddr::V6(e.b6), in6);
    assert_eq!(receive(&l.sock6, Duration::from_millis(500)), None);
    let c = counters_json(b_ns, pin);
    assert_eq!(
        c["decapsulated"], 5,
        "counters survive the replacement: {c}"
    );
    assert_eq!(c["pass_not_local"], 1, "{c}");
}

/// `--detach` removes the link: the program is gone from the interface, and a second one
/// finds nothing pinned.
fn detach_removes_the_link(b: &NetNs, pin: &str) {
    let out = xdplb_decap(
        b.name(),
        &["--interface", "vb", "--pin-path", pin, "--detach"],
    );
    assert!(out.contains("removed") && out.contains("link"), "{out}");
    let link = b.ip(&["link", "show", "vb"]).unwrap();
    assert!(
        !link.contains("prog/xdp"),
        "still attached after --detach: {link}"
    );
    let out = xdplb_decap(
        b.name(),
        &["--interface", "vb", "--pin-path", pin, "--detach"],
    );
    assert!(out.contains("nothing pinned"), "{out}");
}

#[test]
fn cli_errors_name_the_problem() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(tool_path("xdplb"))
            .arg("decap")
            .args(args)
            .output()
            .expect("run xdplb");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let (ok, out) = run(&["--interface", "xdplbnone0"]);
    assert!(!ok);
    assert!(out.contains("interface xdplbnone0 does not exist"), "{out}");
    let (ok, out) = run(&["--interface", "lo"]);
    assert!(!ok);
    assert!(out.contains("lo has no global-scope address"), "{out}");
    let (ok, out) = run(&[
        "--interface",
        "lo",
        "--address",
        "127.0.0.1",
        "--pin-path",
        "/tmp",
    ]);
    assert!(!ok);
    assert!(out.contains("/tmp is not on a bpffs"), "{out}");
    let (ok, out) = run(&[
        "--interface",
        "xdplbnone0",
        "--stats",
        "--pin-path",
        "/sys/fs/bpf/xdplb-decap-no-such",
    ]);
    assert!(!ok);
    assert!(out.contains("is `xdplb decap` attached"), "{out}");
    let (ok, out) = run(&["--interface", "a/b", "--detach"]);
    assert!(!ok);
    assert!(out.contains("invalid interface name \"a/b\""), "{out}");
    let (ok, out) = run(&["--interface", "lo", "--xdp-mode", "fast"]);
    assert!(!ok);
    assert!(
        out.contains("[possible values: auto, native, generic]"),
        "{out}"
    );
}

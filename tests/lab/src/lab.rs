//! The lab topology: a bridged L2 segment joining a gateway (where the balancer runs), clients and DSR backends, or (routed) backends on a second segment behind a router with a far client on a narrow link, or (ECMP, in `ecmp.rs`) several balancers behind a BIRD router; each host in its own network namespace, all torn down on drop.

mod ecmp;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::netns::{self, NetNs};
use crate::sys::signal;

/// The IPv4 VIP. It is deliberately not on the segment: clients reach it through the gateway.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 10);
/// The IPv6 VIP, likewise off the segment.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 0x10);
/// Extra source addresses per client (for `lab-client --bind`).
pub const CLIENT_EXTRA_ADDRS: usize = 8;
// Host numbers on the /24: clients .11+i, backends .101+i, client extras .150+8i+k. These caps
// keep the ranges from overlapping and below .255.
const MAX_CLIENTS: usize = 13;
const MAX_BACKENDS: usize = 49;

const BRIDGE: &str = "br0";
/// The backends' segment in a routed lab.
const BACKEND_BRIDGE: &str = "br1";
/// The router's legs: on the client segment, on the backend segment, toward the far client.
const ROUTER_FRONT: &str = "r0";
const ROUTER_BACK: &str = "r1";
const ROUTER_FAR: &str = "r2";
const FAR_CLIENT_IF: &str = "fc0";
/// MTU of the router's leg toward the far client: smaller than everything else, so replies
/// toward the far client need path-MTU discovery to get through. The far client's interface
/// keeps 1500, so its TCP MSS does not hide the bottleneck.
pub const FAR_LINK_MTU: u32 = 1400;
const GATEWAY_IF: &str = "gw0";
const GATEWAY_PORT: &str = "s-gw";
/// nftables table (bridge family) in the switch namespace holding the DSR counters.
const COUNT_TABLE: &str = "xldsr";
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Where [`Lab::pin_dir`] mounts its bpffs, inside the lab directory.
const PIN_SUBDIR: &str = "bpffs";

fn seg4(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        200,
        0,
        u8::try_from(host).expect("host number fits the /24"),
    )
}

fn seg6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, host)
}

/// Routed lab: the backend segment 10.202.0.0/24, fd00:202::/64.
fn back4(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 202, 0, u8::try_from(host).expect("host fits the /24"))
}

fn back6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, host)
}

/// Routed lab: the far client's link 10.203.0.0/24, fd00:203::/64.
fn far4(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 203, 0, host)
}

fn far6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, host)
}

/// Finds a binary built by this package (`lab-server`, `lab-client`, `lab-load`) or the
/// workspace (`xdplb`): `$XDPLB_BIN_DIR/<name>` if that variable is set, else next to the
/// current executable or one directory up (integration tests run from `target/<profile>/deps/`,
/// binaries sit in `target/<profile>/`). When nothing exists it returns the first guess, so
/// the eventual error names a plausible path. Cargo builds a package's binaries only for that
/// package's own integration tests, so the tests of `xdplb-tests` need a `cargo build --bins`
/// first (`cargo xtask test` runs one).
pub fn tool_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("XDPLB_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let Ok(exe) = std::env::current_exe() else {
        return PathBuf::from(name);
    };
    let Some(dir) = exe.parent() else {
        return PathBuf::from(name);
    };
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| dir.join(name))
}

/// The lab's shape.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub clients: usize,
    pub backends: usize,
    /// Port the backends' `lab-server`s listen on (TCP and UDP).
    pub port: u16,
    /// Backends on their own segment behind a router (for `forwarding: ipip`), each running
    /// `xdplb decap`, plus a far client behind a link of [`FAR_LINK_MTU`].
    pub routed: bool,
    /// With N > 0: N balancers (the gateway is balancer 0) on the backends' segment behind a
    /// router that learns the VIP from each over BGP (BIRD on every one) and spreads flows
    /// with L4-hash ECMP; clients sit on a segment of their own in front of the router.
    pub ecmp_balancers: usize,
    /// ECMP labs: BFD on every BGP session (100 ms × 3), as the BIRD examples suggest for
    /// sub-second detection of a dead balancer.
    pub bfd: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            clients: 2,
            backends: 3,
            port: 8080,
            routed: false,
            ecmp_balancers: 0,
            bfd: false,
        }
    }
}

/// Packet counts at the gateway's bridge port (see [`Lab::start_counting_dsr`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsrCounts {
    /// Frames the bridge delivered to the gateway with IP destination = a VIP (client requests).
    pub to_vip_via_gateway: u64,
    /// Frames the gateway sent into the bridge with IP destination = a VIP: the balancer's
    /// rewritten (XDP_TX'd) requests on their way to a backend.
    pub from_gateway_to_vip: u64,
    /// TCP/UDP frames to or from the gateway with IP source = a VIP: replies that did not go
    /// directly from backend to client. Zero in a working DSR setup. (ICMP from the VIP is the
    /// balancer's own: echo replies and path-MTU answers.)
    pub replies_via_gateway: u64,
}

/// A temp directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running lab. Dropping it kills every process it spawned, deletes its namespaces (and with
/// them every interface, address, route and nftables rule it made) and removes its directory.
pub struct Lab {
    prefix: String,
    spec: LabSpec,
    server: PathBuf,
    procs: HashMap<u32, Child>,
    logs: HashMap<u32, PathBuf>,
    spawned: usize,
    /// The `lab-server` process of each backend.
    servers: Vec<u32>,
    // Fields drop in declaration order, after `Drop::drop` has stopped the processes: the
    // namespaces go next, the directory holding the logs last.
    switch: NetNs,
    gateway: NetNs,
    /// ECMP labs: balancers 1.. (the gateway is balancer 0).
    more_balancers: Vec<NetNs>,
    clients: Vec<NetNs>,
    backends: Vec<NetNs>,
    /// Routed labs: the router and the far client.
    router: Option<NetNs>,
    far_client: Option<NetNs>,
    dir: TempDir,
}

impl Lab {
    pub fn new(spec: LabSpec) -> Result<Lab> {
        if spec.clients > MAX_CLIENTS {
            bail!("at most {MAX_CLIENTS} clients");
        }
        if spec.backends > MAX_BACKENDS {
            bail!("at most {MAX_BACKENDS} backends");
        }
        if spec.ecmp_balancers > ecmp::MAX_BALANCERS || (spec.ecmp_balancers > 0 && spec.routed) {
            bail!(
                "an ECMP lab has 1 to {} balancers and is not routed",
                ecmp::MAX_BALANCERS
            );
        }
        let server = tool_path("lab-server");
        if !server.is_file() {
            bail!(
                "{} not found (build it with `cargo build -p xdplb-lab --bins`, or set XDPLB_BIN_DIR)",
                server.display()
            );
        }
        netns::cleanup_stale();
        let prefix = netns::unique_prefix();
        let dir = TempDir(std::env::temp_dir().join(format!("xdplb-{prefix}")));
        std::fs::create_dir_all(&dir.0).with_context(|| format!("create {}", dir.0.display()))?;

        let switch = NetNs::new(&format!("{prefix}-sw"))?;
        // Bridge ports carry no addresses; without IPv6 on them the segment sees no stray
        // router solicitations or MLD reports from the switch itself.
        switch.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        switch.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        add_bridge(&switch, BRIDGE)?;

        let gateway = new_host_ns(&format!("{prefix}-gw"))?;
        let mut lab = Lab {
            prefix,
            spec: spec.clone(),
            server,
            procs: HashMap::new(),
            logs: HashMap::new(),
            spawned: 0,
            servers: Vec::new(),
            switch,
            gateway,
            more_balancers: Vec::new(),
            clients: Vec::new(),
            backends: Vec::new(),
            router: None,
            far_client: None,
            dir,
        };

        lab.attach(lab.gateway.name().to_string(), GATEWAY_IF, GATEWAY_PORT)?;
        lab.add_addrs(
            &lab.gateway,
            GATEWAY_IF,
            &[IpAddr::V4(lab.gateway_addr4())],
            &[IpAddr::V6(lab.gateway_addr6())],
        )?;
        if spec.ecmp_balancers > 0 {
            lab.add_ecmp_router()?;
            for k in 1..spec.ecmp_balancers {
                lab.add_balancer(k)?;
            }
        }
        for i in 0..spec.clients {
            lab.add_client(i)?;
        }
        if spec.routed {
            lab.add_router()?;
        }
        for _ in 0..spec.backends {
            lab.add_backend()?;
        }
        Ok(lab)
    }

    /// Connects `ns` to the bridge with a veth named `inner` inside it and `port` on the switch.
    /// Both ends are created in their namespaces directly, so nothing ever appears in ours.
    fn attach(&self, ns: String, inner: &str, port: &str) -> Result<()> {
        self.attach_to(BRIDGE, ns, inner, port)
    }

    fn attach_to(&self, bridge: &str, ns: String, inner: &str, port: &str) -> Result<()> {
        self.switch.ip(&[
            "link", "add", port, "type", "veth", "peer", "name", inner, "netns", &ns,
        ])?;
        self.switch
            .ip(&["link", "set", port, "master", bridge, "up"])?;
        netns::run_root(&["ip", "-n", &ns, "link", "set", inner, "up"])?;
        Ok(())
    }

    /// Deletes the gateway's link (both veth ends), as a NIC removal or a veth whose peer
    /// namespace went would; returns the gateway interface's MAC, for [`Lab::replug_gateway`].
    pub fn unplug_gateway(&self) -> Result<String> {
        self.unplug_balancer(0)
    }

    /// [`Lab::unplug_gateway`] for balancer `k` of an ECMP lab (0 is the gateway).
    pub fn unplug_balancer(&self, k: usize) -> Result<String> {
        // `ip netns exec` mounts the namespace's own /sys.
        let mac = netns::run(
            self.balancer_ns(k),
            &["cat", &format!("/sys/class/net/{GATEWAY_IF}/address")],
        )?;
        self.switch.ip(&["link", "del", &balancer_port(k)])?;
        Ok(mac.trim().to_owned())
    }

    /// Re-creates the gateway's link as the lab made it, with the MAC it had (a NIC that comes
    /// back keeps its MAC, so the segment's neighbour caches stay right).
    pub fn replug_gateway(&self, mac: &str) -> Result<()> {
        self.replug_balancer(0, mac)?;
        if self.spec.routed {
            add_route(&self.gateway, "10.202.0.0/24", self.router_addr4().into())?;
            add_route(&self.gateway, "fd00:202::/64", self.router_addr6().into())?;
        }
        Ok(())
    }

    /// [`Lab::replug_gateway`] for balancer `k` of an ECMP lab.
    pub fn replug_balancer(&self, k: usize, mac: &str) -> Result<()> {
        let ns = self.balancer_ns(k).to_string();
        let port = balancer_port(k);
        self.switch.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", GATEWAY_IF, "address", mac,
            "netns", &ns,
        ])?;
        self.switch
            .ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
        netns::run_root(&["ip", "-n", &ns, "link", "set", GATEWAY_IF, "up"])?;
        self.add_addrs(
            self.balancer(k),
            GATEWAY_IF,
            &[IpAddr::V4(self.balancer_addr4(k))],
            &[IpAddr::V6(self.balancer_addr6(k))],
        )
    }

    /// The routed lab's router (legs on both segments and toward the far client), the far
    /// client, and the routes that make backends reachable from the gateway and the VIP from
    /// the router.
    fn add_router(&mut self) -> Result<()> {
        add_bridge(&self.switch, BACKEND_BRIDGE)?;
        let rt = new_host_ns(&format!("{}-rt", self.prefix))?;
        rt.sysctl("net.ipv4.ip_forward", "1")?;
        rt.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // Tunnel packets carry the balancer's tunnel source (no route back to it) and replies
        // carry the VIP as source (routed toward the gateway, not where they come from):
        // a router between a DSR balancer and its backends must not filter by reverse path.
        rt.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        rt.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        let name = rt.name().to_string();
        self.attach_to(BRIDGE, name.clone(), ROUTER_FRONT, "s-rt0")?;
        self.attach_to(BACKEND_BRIDGE, name.clone(), ROUTER_BACK, "s-rt1")?;
        self.add_addrs(
            &rt,
            ROUTER_FRONT,
            &[IpAddr::V4(self.router_addr4())],
            &[IpAddr::V6(self.router_addr6())],
        )?;
        self.add_addrs(
            &rt,
            ROUTER_BACK,
            &[IpAddr::V4(back4(1))],
            &[IpAddr::V6(back6(1))],
        )?;
        for dev in [ROUTER_FRONT, ROUTER_BACK] {
            rt.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0")?;
        }
        // The router sends ICMP errors about replies toward the VIP through the gateway; the
        // gateway reaches the backend segment through the router.
        add_route(&rt, &format!("{VIP4}/32"), self.gateway_addr4().into())?;
        add_route(&rt, &format!("{VIP6}/128"), self.gateway_addr6().into())?;
        add_route(&self.gateway, "10.202.0.0/24", self.router_addr4().into())?;
        add_route(&self.gateway, "fd00:202::/64", self.router_addr6().into())?;

        let far = new_host_ns(&format!("{}-fc", self.prefix))?;
        rt.ip(&[
            "link",
            "add",
            ROUTER_FAR,
            "type",
            "veth",
            "peer",
            "name",
            FAR_CLIENT_IF,
            "netns",
            far.name(),
        ])?;
        let mtu = FAR_LINK_MTU.to_string();
        rt.ip(&["link", "set", ROUTER_FAR, "mtu", &mtu, "up"])?;
        far.ip(&["link", "set", FAR_CLIENT_IF, "up"])?;
        self.add_addrs(
            &rt,
            ROUTER_FAR,
            &[IpAddr::V4(far4(1))],
            &[IpAddr::V6(far6(1))],
        )?;
        self.add_addrs(
            &far,
            FAR_CLIENT_IF,
            &[IpAddr::V4(self.far_client_addr4())],
            &[IpAddr::V6(self.far_client_addr6())],
        )?;
        // The far client's own sends fit the link (route MTU), but it advertises the MSS of a
        // 1500-byte path, as a host behind a tunnel or VPN hop would: the backends' full-size
        // replies then meet the router's narrow leg and need path-MTU discovery. (A veth
        // silently drops frames above its receiver's MTU, so the far side must not send them.)
        for (fam, via) in [("-4", far4(1).to_string()), ("-6", far6(1).to_string())] {
            let advmss = if fam == "-4" { "1460" } else { "1440" };
            far.ip(&[
                fam, "route", "add", "default", "via", &via, "mtu", &mtu, "advmss", advmss,
            ])?;
        }
        far.run(&["ethtool", "-K", FAR_CLIENT_IF, "tx", "off"])?;
        self.router = Some(rt);
        self.far_client = Some(far);
        Ok(())
    }

    fn add_addrs(&self, ns: &NetNs, dev: &str, v4: &[IpAddr], v6: &[IpAddr]) -> Result<()> {
        for a in v4 {
            ns.ip(&["addr", "add", &format!("{a}/24"), "dev", dev])?;
        }
        for a in v6 {
            ns.ip(&["addr", "add", &format!("{a}/64"), "dev", dev, "nodad"])?;
        }
        Ok(())
    }

    fn add_client(&mut self, i: usize) -> Result<()> {
        let ns = new_host_ns(&format!("{}-c{i}", self.prefix))?;
        let dev = format!("c{i}");
        let bridge = if self.is_ecmp() {
            ecmp::FRONT_BRIDGE
        } else {
            BRIDGE
        };
        self.attach_to(bridge, ns.name().to_string(), &dev, &format!("s-c{i}"))?;
        let v4: Vec<IpAddr> = std::iter::once(self.client_addr4(i))
            .chain(self.client_extra_addrs4(i))
            .map(IpAddr::V4)
            .collect();
        let v6: Vec<IpAddr> = std::iter::once(self.client_addr6(i))
            .chain(self.client_extra_addrs6(i))
            .map(IpAddr::V6)
            .collect();
        self.add_addrs(&ns, &dev, &v4, &v6)?;
        // An explicit source keeps unbound connections on the client's main address; with
        // several addresses in the /64 IPv6 source selection would otherwise pick any of them.
        let (via4, via6) = self.clients_next_hop();
        ns.ip(&[
            "route",
            "add",
            &format!("{VIP4}/32"),
            "via",
            &via4.to_string(),
            "src",
            &self.client_addr4(i).to_string(),
        ])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            &via6.to_string(),
            "src",
            &self.client_addr6(i).to_string(),
        ])?;
        // veth leaves checksums partial (CHECKSUM_PARTIAL, never computed on the wire); the
        // balancer forwards frames as they are, so backends would get bad checksums.
        ns.run(&["ethtool", "-K", &dev, "tx", "off"])?;
        self.clients.push(ns);
        Ok(())
    }

    /// Adds one more backend (namespace, addresses, VIP on `lo`, running `lab-server` named
    /// `b<index>`) and returns its index.
    pub fn add_backend(&mut self) -> Result<usize> {
        let i = self.backends.len();
        if i >= MAX_BACKENDS {
            bail!("at most {MAX_BACKENDS} backends");
        }
        let ns = new_host_ns(&format!("{}-b{i}", self.prefix))?;
        // The VIP sits on every backend's `lo`; these keep backends from answering ARP for it
        // (arp_ignore) and from using it as the source of their own ARP requests
        // (arp_announce), so on the segment only the gateway owns the path to the VIP.
        ns.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
        ns.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
        let dev = format!("b{i}");
        let bridge = if self.spec.routed {
            BACKEND_BRIDGE
        } else {
            BRIDGE
        };
        self.attach_to(bridge, ns.name().to_string(), &dev, &format!("s-b{i}"))?;
        self.add_addrs(
            &ns,
            &dev,
            &[IpAddr::V4(self.backend_addr4(i))],
            &[IpAddr::V6(self.backend_addr6(i))],
        )?;
        ns.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
        ns.ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo", "nodad"])?;
        let name = ns.name().to_string();
        if self.spec.routed {
            // Replies go to clients anywhere through the router; tunnelled requests arrive as
            // IP-in-IP and are unwrapped by `xdplb decap` before the stack sees them.
            add_route(&ns, "default", back4(1).into())?;
            add_route(&ns, "default", back6(1).into())?;
            let pins = self.pin_dir()?.join("decap");
            let xdplb = tool_path("xdplb");
            netns::run_shared_mounts(
                &name,
                &[
                    &xdplb.to_string_lossy(),
                    "decap",
                    "--interface",
                    &dev,
                    "--pin-path",
                    &pins.to_string_lossy(),
                ],
            )
            .with_context(|| format!("xdplb decap on backend {dev}"))?;
        }
        if self.is_ecmp() {
            // Clients are on the front segment: replies go straight to them through the
            // router, never back through a balancer.
            add_route(&ns, "default", self.router_addr4().into())?;
            add_route(&ns, "default", self.router_addr6().into())?;
        }
        self.backends.push(ns);
        self.servers.push(0);
        self.start_server(i)?;
        Ok(i)
    }

    /// Starts backend `i`'s `lab-server` (named `b<i>`) and waits until it listens.
    pub fn start_server(&mut self, i: usize) -> Result<()> {
        let name = self.backend_ns(i).to_owned();
        let dev = self.backend_if(i);
        let server = self.server.clone();
        let port = self.spec.port.to_string();
        let pid = self.spawn(&name, &server, &["--name", &dev, "--port", &port])?;
        self.wait_for_log(pid, "READY", SERVER_READY_TIMEOUT)
            .with_context(|| format!("lab-server {dev} did not start"))?;
        self.servers[i] = pid;
        Ok(())
    }

    /// Kills backend `i`'s `lab-server` with SIGKILL, as a crash would: its connections are
    /// reset by the kernel, its port refuses new ones.
    pub fn kill_server(&mut self, i: usize) -> Result<()> {
        let pid = self.servers[i];
        signal(pid, libc::SIGKILL);
        self.wait_exit(pid, Duration::from_secs(10))?;
        Ok(())
    }

    /// The name prefix shared by all this lab's namespaces (`xl<pid>n<k>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    pub fn backends(&self) -> usize {
        self.backends.len()
    }

    /// Every namespace the lab owns (switch, gateway, clients, backends, router, far client).
    pub fn namespaces(&self) -> Vec<&str> {
        [&self.switch, &self.gateway]
            .into_iter()
            .chain(&self.more_balancers)
            .chain(&self.clients)
            .chain(&self.backends)
            .chain(&self.router)
            .chain(&self.far_client)
            .map(NetNs::name)
            .collect()
    }

    /// The routed lab's router namespace.
    pub fn router_ns(&self) -> Option<&str> {
        self.router.as_ref().map(NetNs::name)
    }

    /// The routed lab's far client namespace (behind a [`FAR_LINK_MTU`] link).
    pub fn far_client_ns(&self) -> Option<&str> {
        self.far_client.as_ref().map(NetNs::name)
    }

    /// The router's address on the client segment (the gateway's next hop to backends).
    pub fn router_addr4(&self) -> Ipv4Addr {
        seg4(254)
    }

    pub fn router_addr6(&self) -> Ipv6Addr {
        seg6(0xfe)
    }

    pub fn far_client_addr4(&self) -> Ipv4Addr {
        far4(11)
    }

    pub fn far_client_addr6(&self) -> Ipv6Addr {
        far6(0x11)
    }

    /// Runs `lab-client args...` in the routed lab's far client and returns its JSON result.
    pub fn run_far_client_json(&self, args: &[&str]) -> Result<Value> {
        let ns = self.far_client_ns().context("not a routed lab")?;
        let client = tool_path("lab-client");
        let client = client.to_str().context("lab-client path is not UTF-8")?;
        let mut cmd = vec![client];
        cmd.extend_from_slice(args);
        crate::reports::parse_last_json(&netns::run(ns, &cmd)?)
    }

    pub fn switch_ns(&self) -> &str {
        self.switch.name()
    }

    pub fn gateway_ns(&self) -> &str {
        self.gateway.name()
    }

    pub fn gateway_if(&self) -> &str {
        GATEWAY_IF
    }

    /// (switch namespace, the gateway's port on the bridge): where frames the balancer XDP_TXes
    /// come out. For native-mode XDP_TX on `gw0` this port needs an XDP program of its own (an
    /// `XDP_PASS` will do): the veth queues the frames for its peer but only kicks the peer's
    /// NAPI when the peer has a program; enabling GRO there is not enough (tried on 6.18: the
    /// frames sit in the queue).
    pub fn gateway_peer(&self) -> (&str, &str) {
        (self.switch.name(), GATEWAY_PORT)
    }

    /// The switch port of balancer `k` (0 is the gateway's, [`Lab::gateway_peer`]).
    pub fn balancer_peer(&self, k: usize) -> (&str, String) {
        (self.switch.name(), balancer_port(k))
    }

    pub fn client_ns(&self, i: usize) -> &str {
        self.clients[i].name()
    }

    /// The client's interface inside its namespace (`c<i>`).
    pub fn client_if(&self, i: usize) -> String {
        format!("c{i}")
    }

    pub fn backend_ns(&self, i: usize) -> &str {
        self.backends[i].name()
    }

    /// The backend's interface inside its namespace (`b<i>`); also its server's name.
    pub fn backend_if(&self, i: usize) -> String {
        format!("b{i}")
    }

    pub fn gateway_addr4(&self) -> Ipv4Addr {
        seg4(1)
    }

    pub fn gateway_addr6(&self) -> Ipv6Addr {
        seg6(1)
    }

    pub fn client_addr4(&self, i: usize) -> Ipv4Addr {
        self.client_side4(11 + i)
    }

    pub fn client_addr6(&self, i: usize) -> Ipv6Addr {
        self.client_side6(0x11 + i as u16)
    }

    /// Host `host` of the clients' segment: the backends' segment, or an ECMP lab's front.
    fn client_side4(&self, host: usize) -> Ipv4Addr {
        if self.is_ecmp() {
            ecmp::front4(host)
        } else {
            seg4(host)
        }
    }

    fn client_side6(&self, host: u16) -> Ipv6Addr {
        if self.is_ecmp() {
            ecmp::front6(host)
        } else {
            seg6(host)
        }
    }

    /// The client's extra IPv4 source addresses, 10.200.0.(150+8i+k).
    pub fn client_extra_addrs4(&self, i: usize) -> Vec<Ipv4Addr> {
        (0..CLIENT_EXTRA_ADDRS)
            .map(|k| self.client_side4(150 + CLIENT_EXTRA_ADDRS * i + k))
            .collect()
    }

    /// The client's extra IPv6 source addresses, fd00:200::(0x150+8i+k).
    pub fn client_extra_addrs6(&self, i: usize) -> Vec<Ipv6Addr> {
        (0..CLIENT_EXTRA_ADDRS)
            .map(|k| self.client_side6((0x150 + CLIENT_EXTRA_ADDRS * i + k) as u16))
            .collect()
    }

    /// The client's extra IPv4 addresses as a `lab-client --bind` value.
    pub fn client_bind4(&self, i: usize) -> String {
        join(&self.client_extra_addrs4(i))
    }

    /// The client's extra IPv6 addresses as a `lab-client --bind` value.
    pub fn client_bind6(&self, i: usize) -> String {
        join(&self.client_extra_addrs6(i))
    }

    pub fn backend_addr4(&self, i: usize) -> Ipv4Addr {
        if self.spec.routed {
            back4(101 + i)
        } else {
            seg4(101 + i)
        }
    }

    pub fn backend_addr6(&self, i: usize) -> Ipv6Addr {
        if self.spec.routed {
            back6(0x101 + i as u16)
        } else {
            seg6(0x101 + i as u16)
        }
    }

    pub fn vip4(&self) -> Ipv4Addr {
        VIP4
    }

    pub fn vip6(&self) -> Ipv6Addr {
        VIP6
    }

    /// MAC address of the gateway's `gw0`.
    pub fn gateway_mac(&self) -> Result<String> {
        link_mac(self.gateway.name(), GATEWAY_IF)
    }

    /// MAC address of backend `i`'s `b<i>`.
    pub fn backend_mac(&self, i: usize) -> Result<String> {
        link_mac(self.backend_ns(i), &self.backend_if(i))
    }

    /// A bpffs private to this lab (mounted on first call at `<dir>/bpffs`, unmounted on drop,
    /// which releases whatever is pinned there): a pin path for the agent that cannot collide
    /// with another lab's or the host's, and works where nothing is mounted at /sys/fs/bpf.
    pub fn pin_dir(&self) -> Result<PathBuf> {
        let path = self.dir().join(PIN_SUBDIR);
        if !self.pin_dir_mounted() {
            std::fs::create_dir_all(&path)?;
            let p = path.to_str().context("lab dir is not UTF-8")?;
            netns::run_root(&["mount", "-t", "bpf", "bpf", p])?;
        }
        Ok(path)
    }

    fn pin_dir_mounted(&self) -> bool {
        let path = self.dir().join(PIN_SUBDIR);
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|m| Path::new(m) == path)
    }

    /// The lab's own directory (logs, rule files); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    fn owns(&self, ns: &str) -> bool {
        self.namespaces().contains(&ns)
    }

    /// Starts `program args...` in the lab namespace `ns`, stdout and stderr appended to a log
    /// file in [`Lab::dir`]; returns its pid. It is SIGTERMed (then SIGKILLed) on drop.
    ///
    /// It runs under `nsenter --net` rather than `ip netns exec`, so it shares our mounts: the
    /// agent's bpffs pins (see [`Lab::pin_dir`]) stay visible to everyone. See
    /// [`netns::run_shared_mounts`].
    pub fn spawn(&mut self, ns: &str, program: &Path, args: &[&str]) -> Result<u32> {
        if !self.owns(ns) {
            bail!("{ns} is not a namespace of this lab");
        }
        self.spawned += 1;
        let stem = program
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let short_ns = ns.rsplit('-').next().unwrap_or(ns);
        let log = self
            .dir()
            .join(format!("{:03}-{short_ns}-{stem}.log", self.spawned));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        // nsenter execs the program in place (it forks only to enter a pid namespace), so the
        // child's pid is the program's and signals reach it directly.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {} in {ns}", program.display()))?;
        let pid = child.id();
        self.procs.insert(pid, child);
        self.logs.insert(pid, log);
        Ok(pid)
    }

    /// Asks process `pid` to finish (SIGINT), waits up to 10 s, then SIGKILLs it.
    pub fn stop(&mut self, pid: u32) -> Result<()> {
        let mut child = self
            .procs
            .remove(&pid)
            .with_context(|| format!("no running process {pid} in this lab"))?;
        signal(pid, libc::SIGINT);
        if wait_child(&mut child, Duration::from_secs(10))?.is_none() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for process `pid` to exit by itself and returns its status; on
    /// timeout it keeps running and this is an error.
    pub fn wait_exit(&mut self, pid: u32, timeout: Duration) -> Result<ExitStatus> {
        let child = self
            .procs
            .get_mut(&pid)
            .with_context(|| format!("no running process {pid} in this lab"))?;
        match wait_child(child, timeout)? {
            Some(status) => {
                self.procs.remove(&pid);
                Ok(status)
            }
            None => bail!(
                "process {pid} still running after {timeout:?}; log:\n{}",
                self.log_of(pid)
            ),
        }
    }

    /// Whether process `pid` (spawned by this lab) is still running.
    pub fn is_running(&mut self, pid: u32) -> bool {
        match self.procs.get_mut(&pid) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything process `pid` has written so far ("" for an unknown pid).
    pub fn log_of(&self, pid: u32) -> String {
        self.logs
            .get(&pid)
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the log of `pid` contains `needle`. Fails early if the process exits first.
    pub fn wait_for_log(&mut self, pid: u32, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_of(pid).contains(needle) {
                return Ok(());
            }
            let exited = match self.procs.get_mut(&pid) {
                Some(child) => child.try_wait()?,
                None => bail!("no running process {pid} in this lab"),
            };
            if let Some(status) = exited {
                // It may have written the needle just before exiting.
                if self.log_of(pid).contains(needle) {
                    return Ok(());
                }
                bail!(
                    "process {pid} exited ({status}) before printing {needle:?}; log:\n{}",
                    self.log_of(pid)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "no {needle:?} from process {pid} within {timeout:?}; log:\n{}",
                    self.log_of(pid)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `lab-client args...` in client `i`'s namespace to completion and returns its JSON
    /// result (the last JSON line it printed).
    pub fn run_client<T: serde::de::DeserializeOwned>(&self, i: usize, args: &[&str]) -> Result<T> {
        let client = tool_path("lab-client");
        let client = client.to_str().context("lab-client path is not UTF-8")?;
        let mut cmd = vec![client];
        cmd.extend_from_slice(args);
        let out = netns::run(self.client_ns(i), &cmd)?;
        crate::reports::parse_last_json(&out)
    }

    /// Like [`Lab::run_client`], untyped.
    pub fn run_client_json(&self, i: usize, args: &[&str]) -> Result<Value> {
        self.run_client(i, args)
    }

    /// Installs nftables counters (bridge family, switch namespace) on the gateway's bridge
    /// port; see [`DsrCounts`]. Counting happens in the bridge's prerouting hook (frames from
    /// the gateway, once each) and postrouting hook (frames to the gateway, once each), so
    /// flooded frames are not counted once per port. Calling it again resets the counts.
    pub fn start_counting_dsr(&self) -> Result<()> {
        let p = GATEWAY_PORT;
        let mut rules = String::new();
        // Declaring then deleting makes the file work whether or not the table exists.
        writeln!(rules, "table bridge {COUNT_TABLE} {{}}")?;
        writeln!(rules, "delete table bridge {COUNT_TABLE}")?;
        writeln!(rules, "table bridge {COUNT_TABLE} {{")?;
        for c in [
            "to_vip_via_gateway",
            "from_gateway_to_vip",
            "replies_via_gateway",
        ] {
            writeln!(rules, "  counter {c} {{}}")?;
        }
        writeln!(
            rules,
            "  chain from_gateway {{ type filter hook prerouting priority 0; policy accept;"
        )?;
        writeln!(
            rules,
            "    iifname \"{p}\" ip daddr {VIP4} counter name \"from_gateway_to_vip\""
        )?;
        writeln!(
            rules,
            "    iifname \"{p}\" ip6 daddr {VIP6} counter name \"from_gateway_to_vip\""
        )?;
        // IP-in-IP (routed labs): the request inside the tunnel.
        writeln!(
            rules,
            "    iifname \"{p}\" ip protocol {{ 4, 41 }} counter name \"from_gateway_to_vip\""
        )?;
        writeln!(
            rules,
            "    iifname \"{p}\" ip6 nexthdr {{ 4, 41 }} counter name \"from_gateway_to_vip\""
        )?;
        writeln!(
            rules,
            "    iifname \"{p}\" ip saddr {VIP4} meta l4proto {{ tcp, udp }} counter name \"replies_via_gateway\""
        )?;
        writeln!(
            rules,
            "    iifname \"{p}\" ip6 saddr {VIP6} meta l4proto {{ tcp, udp }} counter name \"replies_via_gateway\""
        )?;
        writeln!(rules, "  }}")?;
        writeln!(
            rules,
            "  chain to_gateway {{ type filter hook postrouting priority 0; policy accept;"
        )?;
        writeln!(
            rules,
            "    oifname \"{p}\" ip daddr {VIP4} counter name \"to_vip_via_gateway\""
        )?;
        writeln!(
            rules,
            "    oifname \"{p}\" ip6 daddr {VIP6} counter name \"to_vip_via_gateway\""
        )?;
        writeln!(
            rules,
            "    oifname \"{p}\" ip saddr {VIP4} meta l4proto {{ tcp, udp }} counter name \"replies_via_gateway\""
        )?;
        writeln!(
            rules,
            "    oifname \"{p}\" ip6 saddr {VIP6} meta l4proto {{ tcp, udp }} counter name \"replies_via_gateway\""
        )?;
        writeln!(rules, "  }}")?;
        writeln!(rules, "}}")?;
        let file = self.dir().join("dsr-count.nft");
        std::fs::write(&file, rules)?;
        let file = file.to_str().context("lab dir is not UTF-8")?;
        self.switch.run(&["nft", "-f", file])?;
        Ok(())
    }

    /// Current DSR counts (packets) since [`Lab::start_counting_dsr`].
    pub fn dsr_counts(&self) -> Result<DsrCounts> {
        let out = self
            .switch
            .run(&[
                "nft",
                "-j",
                "list",
                "counters",
                "table",
                "bridge",
                COUNT_TABLE,
            ])
            .context("reading DSR counters (was start_counting_dsr called?)")?;
        parse_counters(&out)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for &pid in self.procs.keys() {
            signal(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for (_, mut child) in self.procs.drain() {
            let left = deadline.saturating_duration_since(Instant::now());
            if !matches!(wait_child(&mut child, left), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.pin_dir_mounted() {
            let path = self.dir().join(PIN_SUBDIR);
            // Before the directory goes: removing it recursively would otherwise descend into
            // the mount.
            if let Err(e) = netns::run_root(&["umount", "-l", &path.to_string_lossy()]) {
                eprintln!("warning: {e:#}");
            }
        }
        // The namespaces (each killing anything left inside before deletion) and the directory
        // go with the fields.
    }
}

impl Lab {
    /// Prints the tail of every log, so a failing test shows what its processes said.
    fn dump_logs(&self) {
        let mut logs: Vec<_> = self.logs.iter().collect();
        logs.sort_by_key(|(_, path)| path.to_path_buf());
        for (pid, path) in logs {
            let text = self.log_of(*pid);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("--- {} (pid {pid}) ---", path.display());
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// The switch port of balancer `k`: the gateway's for 0.
fn balancer_port(k: usize) -> String {
    if k == 0 {
        GATEWAY_PORT.to_owned()
    } else {
        format!("{GATEWAY_PORT}{k}")
    }
}

/// A namespace for a host on the segment: addresses are added with `nodad`, and DAD is off for
/// link-local ones too so nothing sits tentative while tests start.
fn new_host_ns(name: &str) -> Result<NetNs> {
    let ns = NetNs::new(name)?;
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    Ok(ns)
}

/// `ip route add DST via VIA` in `ns`, for VIA's family.
fn add_route(ns: &NetNs, dst: &str, via: IpAddr) -> Result<()> {
    let family = if via.is_ipv4() { "-4" } else { "-6" };
    ns.ip(&[family, "route", "add", dst, "via", &via.to_string()])?;
    Ok(())
}

/// A bridge in the switch namespace. No STP and no forward delay: ports forward as soon as
/// they are up. Without multicast snooping, neighbour solicitations are simply flooded.
fn add_bridge(switch: &NetNs, name: &str) -> Result<()> {
    switch.ip(&["link", "add", name, "type", "bridge"])?;
    switch.ip(&[
        "link",
        "set",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    switch.ip(&["link", "set", name, "up"])?;
    Ok(())
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn link_mac(ns: &str, dev: &str) -> Result<String> {
    let out = netns::run_root(&["ip", "-n", ns, "-j", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&out).context("parse `ip -j link`")?;
    v[0]["address"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no MAC in {out}"))
}

/// Polls `child` for up to `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads the named counters out of `nft -j list counters` output.
fn parse_counters(json: &str) -> Result<DsrCounts> {
    let v: Value = serde_json::from_str(json).context("parse `nft -j` output")?;
    let items = v["nftables"]
        .as_array()
        .context("no `nftables` array in nft output")?;
    let mut found = HashMap::new();
    for item in items {
        let c = &item["counter"];
        if let (Some(name), Some(packets)) = (c["name"].as_str(), c["packets"].as_u64()) {
            found.insert(name.to_string(), packets);
        }
    }
    let get = |name: &str| {
        found
            .get(name)
            .copied()
            .with_context(|| format!("counter {name} missing from nft output: {json}"))
    };
    Ok(DsrCounts {
        to_vip_via_gateway: get("to_vip_via_gateway")?,
        from_gateway_to_vip: get("from_gateway_to_vip")?,
        replies_via_gateway: get("replies_via_gateway")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "bridge", "name": "to_vip_via_gateway", "table": "xldsr", "handle": 1, "packets": 7, "bytes": 700}},
            {"counter": {"family": "bridge", "name": "from_gateway_to_vip", "table": "xldsr", "handle": 2, "packets": 5, "bytes": 500}},
            {"counter": {"family": "bridge", "name": "replies_via_gateway", "table": "xldsr", "handle": 3, "packets": 0, "bytes": 0}}]}"#;
        assert_eq!(
            parse_counters(json).unwrap(),
            DsrCounts {
                to_vip_via_gateway: 7,
                from_gateway_to_vip: 5,
                replies_via_gateway: 0
            }
        );
        assert!(parse_counters(r#"{"nftables": []}"#).is_err());
    }

    #[test]
    fn addressing_plan() {
        assert_eq!(seg4(101 + MAX_BACKENDS - 1), Ipv4Addr::new(10, 200, 0, 149));
        assert_eq!(
            seg4(150 + CLIENT_EXTRA_ADDRS * MAX_CLIENTS - 1),
            Ipv4Addr::new(10, 200, 0, 253)
        );
        assert_eq!(seg6(0x101).to_string(), "fd00:200::101");
        assert_eq!(VIP6.to_string(), "fd00:201::10");
    }

    #[test]
    fn default_spec() {
        let s = LabSpec::default();
        assert_eq!((s.clients, s.backends, s.port), (2, 3, 8080));
    }
}

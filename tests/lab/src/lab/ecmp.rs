//! The ECMP lab: clients, a BIRD router spreading flows by L4 hash, and balancers behind it.
//!
//! Clients sit on a front segment; the router namespace runs BIRD (the shipped
//! `deploy/bird/router.conf`), learns the VIP over BGP from every balancer and spreads flows with
//! L4-hash ECMP; balancers 1.. stand beside the gateway on the backends' segment, each with its
//! own BIRD (`deploy/bird/balancer.conf`).
//!
//! The BIRD configs are the deploy examples with the lab's addresses put in, so the lab proves
//! what an operator copies. Each substitution must find its text: an example that changes shape
//! fails here rather than silently running something else.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{
    add_bridge, balancer_port, new_host_ns, seg4, seg6, tool_path, Lab, BRIDGE, GATEWAY_IF, VIP4,
    VIP6,
};
use crate::netns;

/// Balancers an ECMP lab can have (addresses .1 to .8 of the backends' segment).
pub const MAX_BALANCERS: usize = 8;
/// The clients' segment in front of the router.
pub const FRONT_BRIDGE: &str = "brf";
/// The router's legs: toward the balancers and backends, toward the clients.
const ROUTER_BACK: &str = "rb";
const ROUTER_FRONT: &str = "rf";
/// What the lab's router accepts from the balancers: host routes in the VIP ranges.
const VIP_RANGE: &str = "10.201.0.0/24";
const VIP_RANGE6: &str = "fd00:201::/64";

/// BFD for `LabSpec::bfd`: a session is down after 3 missed 100 ms hellos.
const BFD: &str = "protocol bfd {\n  interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n}\n";

const ROUTER_CONF: &str = include_str!("../../../../deploy/bird/router.conf");
const BALANCER_CONF: &str = include_str!("../../../../deploy/bird/balancer.conf");

/// ECMP labs: the clients' segment 10.210.0.0/24, fd00:210::/64.
pub fn front4(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 210, 0, u8::try_from(host).expect("host fits the /24"))
}

pub fn front6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x210, 0, 0, 0, 0, 0, host)
}

/// Replaces `from` with `to` in `text`, failing when `from` is not there.
fn substitute(text: &str, from: &str, to: &str) -> Result<String> {
    if !text.contains(from) {
        bail!("the BIRD example no longer contains {from:?}; update the ECMP lab with it");
    }
    Ok(text.replace(from, to))
}

impl Lab {
    pub(super) fn is_ecmp(&self) -> bool {
        self.spec.ecmp_balancers > 0
    }

    /// Where clients send VIP traffic: the gateway, or in an ECMP lab the router.
    pub(super) fn clients_next_hop(&self) -> (Ipv4Addr, Ipv6Addr) {
        if self.is_ecmp() {
            (front4(254), front6(0xfe))
        } else {
            (self.gateway_addr4(), self.gateway_addr6())
        }
    }

    /// The router between the front segment and the balancers' one. Forwarding with the
    /// 4-tuple in the multipath hash (the hash a router in front of balancers must use, or
    /// every flow of a client lands on one balancer), and no reverse-path filter: DSR
    /// replies come from the backends with the VIP as source.
    pub(super) fn add_ecmp_router(&mut self) -> Result<()> {
        add_bridge(&self.switch, FRONT_BRIDGE)?;
        let rt = new_host_ns(&format!("{}-rt", self.prefix))?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            rt.sysctl(k, v)?;
        }
        let name = rt.name().to_string();
        self.attach_to(BRIDGE, name.clone(), ROUTER_BACK, "s-rtb")?;
        self.attach_to(FRONT_BRIDGE, name, ROUTER_FRONT, "s-rtf")?;
        self.add_addrs(
            &rt,
            ROUTER_BACK,
            &[IpAddr::V4(self.router_addr4())],
            &[IpAddr::V6(self.router_addr6())],
        )?;
        self.add_addrs(
            &rt,
            ROUTER_FRONT,
            &[IpAddr::V4(front4(254))],
            &[IpAddr::V6(front6(0xfe))],
        )?;
        self.router = Some(rt);
        Ok(())
    }

    /// Balancer `k` (1..): a namespace like the gateway's, `gw0` on the backends' segment.
    pub(super) fn add_balancer(&mut self, k: usize) -> Result<()> {
        let ns = new_host_ns(&format!("{}-gw{k}", self.prefix))?;
        self.attach(ns.name().to_string(), GATEWAY_IF, &balancer_port(k))?;
        self.add_addrs(
            &ns,
            GATEWAY_IF,
            &[IpAddr::V4(self.balancer_addr4(k))],
            &[IpAddr::V6(self.balancer_addr6(k))],
        )?;
        if k > self.more_balancers.len() {
            self.more_balancers.push(ns);
        } else {
            self.more_balancers[k - 1] = ns;
        }
        Ok(())
    }

    /// Balancers in this lab: 1 (the gateway) unless it is an ECMP lab.
    pub fn balancers(&self) -> usize {
        1 + self.more_balancers.len()
    }

    pub(super) fn balancer(&self, k: usize) -> &netns::NetNs {
        if k == 0 {
            &self.gateway
        } else {
            &self.more_balancers[k - 1]
        }
    }

    /// Balancer `k`'s namespace (0 is the gateway's).
    pub fn balancer_ns(&self, k: usize) -> &str {
        self.balancer(k).name()
    }

    pub fn balancer_addr4(&self, k: usize) -> Ipv4Addr {
        seg4(1 + k)
    }

    pub fn balancer_addr6(&self, k: usize) -> Ipv6Addr {
        seg6(1 + k as u16)
    }

    /// The host dies: everything in balancer `k`'s namespace is killed and the namespace
    /// deleted (its link goes with it). [`Lab::restore_balancer`] builds it again.
    pub fn delete_balancer(&mut self, k: usize) -> Result<()> {
        if k == 0 || k > self.more_balancers.len() {
            bail!("only balancers 1.. of an ECMP lab can be deleted");
        }
        let stand_in = new_host_ns(&format!("{}-gw{k}x", self.prefix))?;
        // Dropping the old namespace kills what runs in it and deletes it.
        drop(std::mem::replace(&mut self.more_balancers[k - 1], stand_in));
        Ok(())
    }

    /// A new namespace for balancer `k` after [`Lab::delete_balancer`], as the lab first made
    /// it (a replaced host: same address, a new MAC).
    pub fn restore_balancer(&mut self, k: usize) -> Result<()> {
        self.add_balancer(k)
    }

    /// The directory of a BIRD's config, socket and (on a balancer) route file: `None` for
    /// the router's.
    pub fn bird_dir(&self, balancer: Option<usize>) -> PathBuf {
        match balancer {
            None => self.dir().join("bird-rt"),
            Some(k) => self.dir().join(format!("bird-gw{k}")),
        }
    }

    /// BIRD's control socket in [`Lab::bird_dir`].
    pub fn bird_socket(&self, balancer: Option<usize>) -> PathBuf {
        self.bird_dir(balancer).join("bird.ctl")
    }

    /// Starts the router's BIRD (the example router config, with a session to every balancer)
    /// and returns its pid once its control socket answers.
    pub fn start_router_bird(&mut self) -> Result<u32> {
        let router = self.router_addr4().to_string();
        let mut conf = substitute(
            ROUTER_CONF,
            "router id 192.0.2.1;",
            &format!("router id {router};"),
        )?;
        conf = substitute(&conf, "local 192.0.2.1 as", &format!("local {router} as"))?;
        conf = substitute(&conf, "198.51.100.0/24", VIP_RANGE)?;
        conf = substitute(&conf, "2001:db8:100::/48", VIP_RANGE6)?;
        let sessions: String = (0..self.balancers())
            .map(|k| {
                format!(
                    "protocol bgp lb{k} from balancer {{ neighbor {} as 65001; }}\n",
                    self.balancer_addr4(k)
                )
            })
            .collect();
        let examples = "protocol bgp lb1 from balancer { neighbor 192.0.2.11 as 65001; }\n\
                        protocol bgp lb2 from balancer { neighbor 192.0.2.12 as 65001; }\n";
        conf = substitute(&conf, examples, &sessions)?;
        let ns = self.router_ns().context("not an ECMP lab")?.to_owned();
        self.start_bird(&ns, None, &conf)
    }

    /// Starts balancer `k`'s BIRD (the example balancer config: a session to the router,
    /// exporting what xdplb writes to `bird_dir(k)/routes/`).
    pub fn start_balancer_bird(&mut self, k: usize) -> Result<u32> {
        let me = self.balancer_addr4(k).to_string();
        let routes = self.bird_dir(Some(k)).join("routes");
        std::fs::create_dir_all(&routes)?;
        let mut conf = substitute(
            BALANCER_CONF,
            "router id 192.0.2.11;",
            &format!("router id {me};"),
        )?;
        conf = substitute(&conf, "local 192.0.2.11 as", &format!("local {me} as"))?;
        conf = substitute(
            &conf,
            "next hop address 2001:db8::11;",
            &format!("next hop address {};", self.balancer_addr6(k)),
        )?;
        conf = substitute(
            &conf,
            "neighbor 192.0.2.1 as",
            &format!("neighbor {} as", self.router_addr4()),
        )?;
        conf = substitute(
            &conf,
            "\"/var/lib/xdplb/bird/*.conf\"",
            &format!("\"{}/*.conf\"", routes.display()),
        )?;
        let ns = self.balancer_ns(k).to_owned();
        self.start_bird(&ns, Some(k), &conf)
    }

    fn start_bird(&mut self, ns: &str, balancer: Option<usize>, conf: &str) -> Result<u32> {
        let dir = self.bird_dir(balancer);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("bird.conf");
        let conf = if self.spec.bfd {
            // What the examples' comment says to add, on both sides of every session.
            format!(
                "{}{BFD}",
                substitute(conf, "  hold time 3;\n", "  hold time 3;\n  bfd on;\n")?
            )
        } else {
            conf.to_owned()
        };
        // Logged to stderr, so the lab's log of the process shows sessions going up and down.
        std::fs::write(&file, format!("log stderr all;\n{conf}"))?;
        let socket = self.bird_socket(balancer);
        let _ = std::fs::remove_file(&socket);
        let (file, sock) = (file.to_string_lossy(), socket.to_string_lossy());
        let bird = which_bird();
        let pid = self.spawn(ns, &bird, &["-f", "-c", &file, "-s", &sock])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while lb_userspace::agent::announce::bird::Bird::connect(&socket).is_err() {
            if !self.is_running(pid) || Instant::now() > deadline {
                bail!("BIRD did not open {sock}; log:\n{}", self.log_of(pid));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pid)
    }

    /// The balancers the router's kernel sends the IPv4 VIP to now (the next hops of the
    /// route BIRD installed), by balancer index, sorted; empty when it has no route.
    pub fn vip_next_hops(&self) -> Result<Vec<usize>> {
        self.vip_next_hops_of(false)
    }

    /// [`Lab::vip_next_hops`] for the IPv4 or the IPv6 VIP.
    pub fn vip_next_hops_of(&self, v6: bool) -> Result<Vec<usize>> {
        let ns = self.router_ns().context("not an ECMP lab")?;
        let (family, vip) = if v6 {
            ("-6", format!("{VIP6}/128"))
        } else {
            ("-4", format!("{VIP4}/32"))
        };
        let out = netns::run_root(&[
            "ip", "-n", ns, "-j", family, "route", "show", "exact", &vip, "proto", "bird",
        ])?;
        let routes: Value = serde_json::from_str(&out).context("parse `ip -j route`")?;
        let mut gateways: Vec<IpAddr> = Vec::new();
        for r in routes.as_array().into_iter().flatten() {
            let hops = r["nexthops"].as_array().cloned().unwrap_or_default();
            for g in std::iter::once(&r["gateway"]).chain(hops.iter().map(|h| &h["gateway"])) {
                if let Some(g) = g.as_str().and_then(|g| g.parse().ok()) {
                    gateways.push(g);
                }
            }
        }
        let mut hops: Vec<usize> = (0..self.balancers())
            .filter(|&k| {
                let addr: IpAddr = if v6 {
                    self.balancer_addr6(k).into()
                } else {
                    self.balancer_addr4(k).into()
                };
                gateways.contains(&addr)
            })
            .collect();
        hops.sort_unstable();
        Ok(hops)
    }

    /// Waits until the router's next hops for both VIPs are exactly `want`; returns how
    /// long that took.
    pub fn wait_next_hops(&self, want: &[usize], timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let have = self.vip_next_hops()?;
            if have == want && self.vip_next_hops_of(true)? == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("the router sends the VIP to balancers {have:?}, not {want:?}, after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// BIRD's daemon (Debian's bird2 installs it as /usr/sbin/bird).
fn which_bird() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/bird");
    if sbin.is_file() {
        sbin
    } else {
        tool_path("bird")
    }
}

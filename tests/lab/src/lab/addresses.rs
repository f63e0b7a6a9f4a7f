//! The lab's names and addresses: namespaces, interfaces, the addressing plan, MACs, its bpffs.

use super::*;

pub(super) fn seg4(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        200,
        0,
        u8::try_from(host).expect("host number fits the /24"),
    )
}

pub(super) fn seg6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, host)
}

/// Routed lab: the backend segment 10.202.0.0/24, fd00:202::/64.
pub(super) fn back4(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 202, 0, u8::try_from(host).expect("host fits the /24"))
}

pub(super) fn back6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x202, 0, 0, 0, 0, 0, host)
}

/// Routed lab: the far client's link 10.203.0.0/24, fd00:203::/64.
pub(super) fn far4(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 203, 0, host)
}

pub(super) fn far6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, host)
}
impl Lab {
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
    pub(super) fn client_side4(&self, host: usize) -> Ipv4Addr {
        if self.is_ecmp() {
            ecmp::front4(host)
        } else {
            seg4(host)
        }
    }

    pub(super) fn client_side6(&self, host: u16) -> Ipv6Addr {
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

    pub(super) fn pin_dir_mounted(&self) -> bool {
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

    pub(super) fn owns(&self, ns: &str) -> bool {
        self.namespaces().contains(&ns)
    }
}

pub(super) fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn link_mac(ns: &str, dev: &str) -> Result<String> {
    let out = netns::run_root(&["ip", "-n", ns, "-j", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&out).context("parse `ip -j link`")?;
    v[0]["address"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no MAC in {out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! The lab's wiring: bridges, veth links, the router and the hosts on each segment.

use super::*;

impl Lab {
    /// Connects `ns` to the bridge with a veth named `inner` inside it and `port` on the switch.
    /// Both ends are created in their namespaces directly, so nothing ever appears in ours.
    pub(super) fn attach(&self, ns: String, inner: &str, port: &str) -> Result<()> {
        self.attach_to(BRIDGE, ns, inner, port)
    }

    pub(super) fn attach_to(
        &self,
        bridge: &str,
        ns: String,
        inner: &str,
        port: &str,
    ) -> Result<()> {
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
    pub(super) fn add_router(&mut self) -> Result<()> {
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

    pub(super) fn add_addrs(
        &self,
        ns: &NetNs,
        dev: &str,
        v4: &[IpAddr],
        v6: &[IpAddr],
    ) -> Result<()> {
        for a in v4 {
            ns.ip(&["addr", "add", &format!("{a}/24"), "dev", dev])?;
        }
        for a in v6 {
            ns.ip(&["addr", "add", &format!("{a}/64"), "dev", dev, "nodad"])?;
        }
        Ok(())
    }

    pub(super) fn add_client(&mut self, i: usize) -> Result<()> {
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
}

/// The switch port of balancer `k`: the gateway's for 0.
pub(super) fn balancer_port(k: usize) -> String {
    if k == 0 {
        GATEWAY_PORT.to_owned()
    } else {
        format!("{GATEWAY_PORT}{k}")
    }
}

/// A namespace for a host on the segment: addresses are added with `nodad`, and DAD is off for
/// link-local ones too so nothing sits tentative while tests start.
pub(super) fn new_host_ns(name: &str) -> Result<NetNs> {
    let ns = NetNs::new(name)?;
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    Ok(ns)
}

/// `ip route add DST via VIA` in `ns`, for VIA's family.
pub(super) fn add_route(ns: &NetNs, dst: &str, via: IpAddr) -> Result<()> {
    let family = if via.is_ipv4() { "-4" } else { "-6" };
    ns.ip(&[family, "route", "add", dst, "via", &via.to_string()])?;
    Ok(())
}

/// A bridge in the switch namespace. No STP and no forward delay: ports forward as soon as
/// they are up. Without multicast snooping, neighbour solicitations are simply flooded.
pub(super) fn add_bridge(switch: &NetNs, name: &str) -> Result<()> {
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

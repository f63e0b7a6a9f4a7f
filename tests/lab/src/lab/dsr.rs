//! DSR accounting: nftables counters on the gateway's bridge port, read back as [`DsrCounts`].

use super::*;

/// nftables table (bridge family) in the switch namespace holding the DSR counters.
pub(super) const COUNT_TABLE: &str = "xldsr";
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
impl Lab {
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

/// Reads the named counters out of `nft -j list counters` output.
pub(super) fn parse_counters(json: &str) -> Result<DsrCounts> {
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
}

//! Where frames toward each backend go, found by a task off the agent's loop.
//!
//! The task reads the kernel's routes (next hop) and neighbour table (its MAC) over netlink,
//! listens for their change notifications, prompts resolution of missing entries, and reports each
//! backend's MAC (or why there is none) as events.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    packet_route::{
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteType},
    },
    Handle, MulticastGroup, RouteMessageBuilder,
};
use tokio::{
    sync::{mpsc::UnboundedSender, watch},
    task::JoinHandle,
};

use crate::{
    config::{Forwarding, MacAddr},
    datapath::nic::{interface_index, interface_name},
};

/// A backend whose frames must be addressed: to itself (`l2`) or to the next hop toward it
/// (`ipip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub backend: IpAddr,
    pub forwarding: Forwarding,
}

/// What the resolver learnt about one backend (sent only when it changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MacEvent {
    Resolved {
        backend: IpAddr,
        mac: MacAddr,
    },
    /// No MAC yet, and why; the resolver keeps trying.
    Failed {
        backend: IpAddr,
        why: String,
    },
}

/// How long a missing entry is given before it is reported as failed (ARP/ND normally
/// answer within milliseconds on a segment).
pub const RESOLVE_GRACE: Duration = Duration::from_secs(3);
/// Re-solicitation interval while an entry is missing.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A full re-read even without notifications (a lost netlink message, a missed STALE entry).
const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// Handle of the resolver task; dropping it stops the task.
pub struct Resolver {
    targets: watch::Sender<Vec<Target>>,
    task: JoinHandle<()>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolver {
    /// Starts resolving on `interface`, reporting to `events`. Spawns on the current runtime.
    pub fn spawn(interface: &str, events: UnboundedSender<MacEvent>) -> anyhow::Result<Resolver> {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("opening a netlink socket (route)")?;
        tokio::spawn(conn);
        let (notes_conn, _, notes) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ])
        .context("subscribing to neighbour and route notifications")?;
        tokio::spawn(notes_conn);
        let (targets, targets_rx) = watch::channel(Vec::new());
        let task = tokio::spawn(run(interface.to_owned(), handle, notes, targets_rx, events));
        Ok(Resolver { targets, task })
    }

    /// Makes the resolved set exactly `targets`.
    pub fn set_targets(&self, targets: Vec<Target>) {
        self.targets.send_replace(targets);
    }
}

struct Tracked {
    forwarding: Forwarding,
    /// Last thing reported.
    reported: Option<MacEvent>,
    /// Since when the backend has had no MAC (for the grace period).
    missing_since: Option<Instant>,
    last_probe: Option<Instant>,
}

async fn run<N: futures_util::Stream + Unpin>(
    interface: String,
    handle: Handle,
    mut notes: N,
    mut targets: watch::Receiver<Vec<Target>>,
    events: UnboundedSender<MacEvent>,
) {
    let mut tracked: HashMap<IpAddr, Tracked> = HashMap::new();
    loop {
        round(&interface, &handle, &mut tracked, &events).await;
        let missing = tracked.values().any(|t| t.missing_since.is_some());
        let wait = if missing {
            PROBE_EVERY / 2
        } else {
            REFRESH_EVERY
        };
        tokio::select! {
            changed = targets.changed() => {
                if changed.is_err() {
                    return;
                }
                let wanted: HashMap<IpAddr, Forwarding> =
                    targets.borrow_and_update().iter().map(|t| (t.backend, t.forwarding)).collect();
                tracked.retain(|addr, t| wanted.get(addr) == Some(&t.forwarding));
                for (backend, forwarding) in wanted {
                    tracked.entry(backend).or_insert(Tracked {
                        forwarding,
                        reported: None,
                        missing_since: None,
                        last_probe: None,
                    });
                }
            }
            note = notes.next() => {
                if note.is_none() {
                    // The notification socket closed: fall back to periodic re-reads.
                    tokio::time::sleep(PROBE_EVERY).await;
                }
                // Coalesce a burst (a flush sends one message per entry) into one re-read.
                while let Some(Some(_)) = notes.next().now_or_never() {}
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pass over every tracked backend: read the routes and the neighbour table, report what
/// changed, solicit what is missing or unconfirmed.
async fn round(
    interface: &str,
    handle: &Handle,
    tracked: &mut HashMap<IpAddr, Tracked>,
    events: &UnboundedSender<MacEvent>,
) {
    if tracked.is_empty() {
        return;
    }
    let ifindex = interface_index(interface);
    let table = match ifindex {
        Some(i) => neighbours(handle, i).await.unwrap_or_default(),
        None => HashMap::new(),
    };
    let now = Instant::now();
    for (backend, t) in tracked.iter_mut() {
        let hop = match (ifindex, t.forwarding) {
            (None, _) => Err(anyhow::anyhow!("interface {interface} does not exist")),
            (Some(_), Forwarding::L2) => Ok(*backend),
            (Some(i), Forwarding::Ipip) => next_hop(handle, interface, i, *backend).await,
        };
        let event = match hop {
            Err(e) => {
                t.missing_since.get_or_insert(now);
                MacEvent::Failed {
                    backend: *backend,
                    why: format!("{e:#}"),
                }
            }
            Ok(hop) => match table.get(&hop) {
                Some((mac, confirmed)) => {
                    if !confirmed {
                        // STALE/DELAY: the kernel re-confirms it once something is sent.
                        probe(hop);
                    }
                    t.missing_since = None;
                    MacEvent::Resolved {
                        backend: *backend,
                        mac: *mac,
                    }
                }
                None => {
                    let since = *t.missing_since.get_or_insert(now);
                    if t.last_probe.is_none_or(|p| now - p >= PROBE_EVERY) {
                        probe(hop);
                        t.last_probe = Some(now);
                    }
                    if now - since < RESOLVE_GRACE
                        && !matches!(t.reported, Some(MacEvent::Resolved { .. }))
                    {
                        continue;
                    }
                    MacEvent::Failed {
                        backend: *backend,
                        why: format!(
                            "{hop} has no neighbour entry on {interface} after {:.1}s: is it up and on {interface}'s L2 segment? (or give the backend's `mac:` in the config)",
                            (now - since).as_secs_f64()
                        ),
                    }
                }
            },
        };
        // A failure keeps its first wording: the seconds in it must not re-report every round.
        let same = match (&t.reported, &event) {
            (Some(MacEvent::Failed { .. }), MacEvent::Failed { .. }) => true,
            (Some(a), b) => a == b,
            (None, _) => false,
        };
        if !same {
            t.reported = Some(event.clone());
            let _ = events.send(event);
        }
    }
}

/// The usable entries of `ifindex`'s neighbour table: address → (MAC, confirmed). Confirmed
/// means REACHABLE/PERMANENT/NOARP rather than STALE and friends.
async fn neighbours(
    handle: &Handle,
    ifindex: u32,
) -> anyhow::Result<HashMap<IpAddr, (MacAddr, bool)>> {
    let mut out = HashMap::new();
    let mut dump = handle.neighbours().get().execute();
    while let Some(msg) = dump
        .try_next()
        .await
        .context("reading the neighbour table")?
    {
        if msg.header.ifindex != ifindex {
            continue;
        }
        let state = msg.header.state;
        if matches!(state, NeighbourState::Failed | NeighbourState::Incomplete) {
            continue;
        }
        let (mut addr, mut mac) = (None, None);
        for a in &msg.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    addr = Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    addr = Some(IpAddr::V6(*v6))
                }
                NeighbourAttribute::LinkLayerAddress(ll) => {
                    mac = <[u8; 6]>::try_from(ll.as_slice()).ok().map(MacAddr)
                }
                _ => {}
            }
        }
        if let (Some(addr), Some(mac)) = (addr, mac) {
            let confirmed = matches!(
                state,
                NeighbourState::Reachable | NeighbourState::Permanent | NeighbourState::Noarp
            );
            out.insert(addr, (mac, confirmed));
        }
    }
    Ok(out)
}

/// The next hop toward `addr` by the kernel's routing table (a route lookup, as `ip route
/// get` does): its gateway, or `addr` itself on a connected subnet. The route must leave
/// through `interface`, because the balancer sends encapsulated packets back out of the NIC
/// they arrived on.
async fn next_hop(
    handle: &Handle,
    interface: &str,
    ifindex: u32,
    addr: IpAddr,
) -> anyhow::Result<IpAddr> {
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    let msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(addr, prefix)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .build();
    let route = handle
        .route()
        .get(msg)
        .execute()
        .try_next()
        .await
        .ok()
        .flatten()
        .with_context(|| format!("no route to backend {addr}"))?;
    if !matches!(route.header.kind, RouteType::Unicast) {
        bail!(
            "backend {addr} is routed as {:?}, not to a next hop: is it an address of this host?",
            route.header.kind
        );
    }
    let (mut oif, mut gateway) = (None, None);
    for a in &route.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
            _ => {}
        }
    }
    match oif {
        Some(i) if i == ifindex => Ok(gateway.unwrap_or(addr)),
        Some(i) => bail!(
            "backend {addr} is routed through {}, not {interface}: ipip packets leave through the interface the balancer runs on, so add a route to it via {interface}",
            interface_name(i).unwrap_or_else(|| format!("interface #{i}"))
        ),
        None => bail!("backend {addr}: the route has no device"),
    }
}

/// Asks the kernel to (re)resolve `addr`'s MAC: a datagram to the discard port makes it send
/// ARP or a neighbour solicitation when the entry is missing or stale.
pub fn probe(addr: IpAddr) {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(b"", SocketAddr::new(addr, 9));
    }
}

/// The MAC the neighbour table holds for `addr` on `interface` right now, without waiting
/// (for `xdplb replay`, which runs off the gateway and has no agent).
pub fn lookup_now(interface: &str, addr: IpAddr) -> Option<MacAddr> {
    let ifindex = interface_index(interface)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().ok()?;
        tokio::spawn(conn);
        let table = neighbours(&handle, ifindex).await.ok()?;
        table.get(&addr).map(|(mac, _)| *mac)
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// An address nobody answers for is reported failed after the grace period, while the
    /// resolver keeps the caller free; a neighbour entry added by hand then resolves it
    /// through the change notification.
    #[tokio::test]
    async fn unanswered_then_resolved_by_notification() {
        let ns = format!("xdplb-neigh-{}", std::process::id());
        let run = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {args:?}");
        };
        // A dummy-like veth pair in the test's own namespace keeps the host untouched.
        run(&["netns", "add", &ns]);
        struct Cleanup(String);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
            }
        }
        let _cleanup = Cleanup(ns.clone());
        let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        let netns = std::os::fd::AsRawFd::as_raw_fd(&file);
        // This test's thread (current-thread runtime) enters the namespace for its sockets.
        let me = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        // SAFETY: setns on this thread only; restored below.
        assert_eq!(unsafe { libc::setns(netns, libc::CLONE_NEWNET) }, 0);
        let restore = std::os::fd::AsRawFd::as_raw_fd(&me);
        let result = async {
            let ip = |args: &[&str]| {
                // `ip` inherits this thread's namespace.
                let ok = Command::new("ip").args(args).status().is_ok_and(|s| s.success());
                assert!(ok, "ip {args:?}");
            };
            ip(&["link", "add", "t0", "type", "veth", "peer", "name", "t1"]);
            ip(&["addr", "add", "10.77.0.1/24", "dev", "t0"]);
            ip(&["link", "set", "t0", "up"]);
            ip(&["link", "set", "t1", "up"]);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let r = Resolver::spawn("t0", tx).unwrap();
            let backend: IpAddr = "10.77.0.9".parse().unwrap();
            r.set_targets(vec![Target {
                backend,
                forwarding: Forwarding::L2,
            }]);
            let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert!(
                matches!(&first, MacEvent::Failed { why, .. } if why.contains("no neighbour entry")),
                "{first:?}"
            );
            ip(&[
                "neigh", "replace", "10.77.0.9", "lladdr", "02:00:00:00:77:09", "dev", "t0",
                "nud", "permanent",
            ]);
            let second = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                second,
                MacEvent::Resolved {
                    backend,
                    mac: "02:00:00:00:77:09".parse().unwrap()
                }
            );
        }
        .await;
        // SAFETY: back to the namespace this thread started in.
        assert_eq!(unsafe { libc::setns(restore, libc::CLONE_NEWNET) }, 0);
        result
    }
}

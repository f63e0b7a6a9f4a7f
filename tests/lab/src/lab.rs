//! The lab: hosts in network namespaces on bridged segments, all torn down on drop.
//!
//! A bridged L2 segment joins a gateway (where the balancer runs), clients and DSR backends; or
//! (routed) backends sit on a second segment behind a router, with a far client on a narrow
//! link; or (ECMP, in `ecmp.rs`) several balancers sit behind a BIRD router.

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

mod addresses;
mod dsr;
mod ecmp;
mod processes;
mod topology;

use self::addresses::{back4, back6, far4, far6, seg4, seg6};
pub use self::dsr::DsrCounts;
use self::processes::wait_child;
use self::topology::{add_bridge, balancer_port, new_host_ns};

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
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Where [`Lab::pin_dir`] mounts its bpffs, inside the lab directory.
const PIN_SUBDIR: &str = "bpffs";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec() {
        let s = LabSpec::default();
        assert_eq!((s.clients, s.backends, s.port), (2, 3, 8080));
    }
}

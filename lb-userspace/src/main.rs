//! The `xdplb` command: the agent (`run`), its control CLI (through the agent's Unix-socket API), config checks and counters.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{anyhow, Context as _};
use clap::{Args, Parser, Subcommand};
use lb_userspace::{
    agent,
    api::{self, Applied, BalancerState, LeftOut, Request, Status, VipStatus},
    check,
    config::{BackendConfig, Config, MacAddr, Vip},
    exit, loader, logging, stats,
};
use serde::de::DeserializeOwned;

#[derive(Parser)]
#[command(
    name = "xdplb",
    version,
    about = "Direct-server-return load balancer on XDP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_CONFIG: &str = "/etc/xdplb/lb.yaml";

/// How CLI commands find the running agent.
#[derive(Args, Clone)]
struct Target {
    /// Config of the running agent (for its api_socket).
    #[arg(long, short, default_value = DEFAULT_CONFIG, global = true)]
    config: PathBuf,
    /// The agent's API socket (overrides the config's api_socket).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
}

impl Target {
    fn call<T: DeserializeOwned>(&self, req: &Request) -> anyhow::Result<T> {
        api::call(&api::socket_for(self.socket.clone(), &self.config)?, req)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Load the balancer onto the config's interface (or take over a running one) and keep its
    /// maps in line with the config. SIGHUP, `xdplb reload` or editing the file re-applies it.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file; with a running agent, show what applying it would change.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Per-VIP and per-backend counters of a running datapath.
    Stats {
        /// Config of the running agent (for its pin path and VIP names).
        #[arg(long, short, default_value = DEFAULT_CONFIG, conflicts_with = "pin_path")]
        config: PathBuf,
        /// Read the state pinned under this pin_path instead of the config's.
        #[arg(long)]
        pin_path: Option<PathBuf>,
        /// One JSON object, for scripts.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh like `top`, with rates, health and idle time (Ctrl-C ends).
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
    },
    /// Agent status: datapath, reloads, every backend's state, health and idle time.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Ask the agent to re-read its config file. Exit code 1 when it refuses the file (the
    /// running config stays live), 3 when it applied it but a backend is not in service.
    Reload {
        #[command(flatten)]
        target: Target,
        /// Exit 0 whenever the agent applied the file, even with backends not in service (they
        /// are still named on stderr): systemd's ExecReload, where only a refusal is a failure.
        #[arg(long)]
        refused_only: bool,
    },
    /// VIPs of the running agent.
    Vip {
        #[command(subcommand)]
        command: VipCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Backends of the running agent's VIPs.
    Backend {
        #[command(subcommand)]
        command: BackendCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Run every packet of a capture through the real XDP program with maps filled from a
    /// config (flow state carried from packet to packet); one verdict per packet.
    Replay {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Input capture (pcap, Ethernet).
        #[arg(long)]
        pcap: PathBuf,
        /// Write the packets as the program left them here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// The balancer's MAC in the capture: only frames addressed to it are balanced.
        /// Default: the config's interface's MAC if it exists here, else the destination of
        /// the capture's first unicast frame.
        #[arg(long)]
        mac: Option<String>,
    },
    /// On a backend: strip the outer header of IP-in-IP (4in4, 6in4, 6in6, 4in6) sent to this
    /// host on an interface (the kernel here has no tunnel driver). Stays attached after the
    /// command exits; re-running it replaces the program and refreshes the address set.
    Decap(lb_userspace::decap::DecapArgs),
    /// Preflight: check a gateway (its config, interface, kernel, privileges, pinned state)
    /// or, with --backend, a DSR backend; every finding names its fix. Exit code 1 when a
    /// check fails (warnings alone exit 0).
    Doctor(lb_userspace::doctor::DoctorArgs),
    /// Take this balancer out of the routers' ECMP group: withdraw every VIP through BIRD,
    /// keep forwarding, and wait announce.withdraw_delay for the routers to move the flows.
    /// Then stopping or detaching breaks no connection. Until `resume-balancer` (or a restart).
    DrainBalancer {
        #[command(flatten)]
        target: Target,
        /// Return once BIRD has withdrawn, without waiting the delay.
        #[arg(long)]
        no_wait: bool,
    },
    /// Announce the servable VIPs again after `drain-balancer`.
    ResumeBalancer {
        #[command(flatten)]
        target: Target,
    },
    /// Remove the pinned datapath left by an agent with keep_attached_on_exit (stops forwarding).
    /// With --config and an announce: section, the VIPs are withdrawn through BIRD first and
    /// the datapath forwards for announce.withdraw_delay more.
    Detach {
        #[arg(long, short, default_value = DEFAULT_CONFIG, conflicts_with = "pin_path")]
        config: PathBuf,
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum VipCommand {
    List,
    /// Add a VIP (without backends; add them with `xdplb backend add`).
    Add {
        name: String,
        address: IpAddr,
        /// 0 = every port.
        port: u16,
        /// tcp or udp.
        protocol: String,
        /// 5-tuple or source-ip.
        #[arg(long, default_value = "5-tuple")]
        hash: String,
        #[arg(long)]
        stateless: bool,
        #[arg(long, default_value_t = lb_common::DEFAULT_RING_SIZE)]
        ring_size: u32,
        /// l2 (backends on this segment) or ipip (backends anywhere, tunnelled).
        #[arg(long, default_value = "l2")]
        forwarding: String,
        /// Answer pings to the VIP's address from the balancer.
        #[arg(long)]
        icmp_echo: bool,
    },
    Remove {
        name: String,
    },
}

#[derive(Subcommand)]
enum BackendCommand {
    /// List backends (of one VIP, or all) with state, health and idle time.
    List {
        vip: Option<String>,
    },
    Add {
        vip: String,
        address: IpAddr,
        /// MAC frames go to: the backend's (l2) or the next hop's toward it (ipip). Default: from
        /// the routing and neighbour tables.
        #[arg(long)]
        mac: Option<String>,
        #[arg(long, default_value_t = 100)]
        weight: u32,
        /// Add it draining (no new flows).
        #[arg(long)]
        draining: bool,
    },
    Remove {
        vip: String,
        address: IpAddr,
    },
    /// Keep the backend's flows, give it no new ones.
    Drain {
        vip: String,
        address: IpAddr,
    },
    /// Undo a drain.
    Activate {
        vip: String,
        address: IpAddr,
    },
    Weight {
        vip: String,
        address: IpAddr,
        weight: u32,
    },
}

fn main() {
    logging::init();
    match real_main() {
        Ok(Outcome::Done) => {}
        Ok(Outcome::NotInService(left_out)) => {
            warn_not_in_service(&left_out);
            std::process::exit(exit::NOT_IN_SERVICE);
        }
        Err(e) => {
            eprintln!("{}xdplb: error: {e:#}", logging::prefix(log::Level::Error));
            std::process::exit(exit::code_of(&e));
        }
    }
}

/// Names on stderr each backend a change left out of service, and why.
fn warn_not_in_service(left_out: &[LeftOut]) {
    for l in left_out {
        eprintln!(
            "{}xdplb: VIP {}: backend {} is not in service: {}",
            logging::prefix(log::Level::Warn),
            l.vip,
            l.backend,
            l.why
        );
    }
}

/// How a command that did not fail ended.
enum Outcome {
    Done,
    /// A change was applied, but these backends are not in service.
    NotInService(Vec<LeftOut>),
}

impl From<()> for Outcome {
    fn from((): ()) -> Outcome {
        Outcome::Done
    }
}

/// Builds a value of a validated config type from YAML, so CLI input gets the same checks
/// (and messages) as the config file.
fn from_yaml<T: serde::de::DeserializeOwned>(
    what: &str,
    yaml: serde_yaml::Value,
) -> anyhow::Result<T> {
    serde_yaml::from_value(yaml).map_err(|e| anyhow!("invalid {what}: {e}"))
}

fn print_applied(a: Applied) -> Outcome {
    for l in &a.applied {
        println!("{l}");
    }
    if let Some(path) = &a.written_to {
        println!("(saved to {})", path.display());
    }
    if a.left_out.is_empty() {
        Outcome::Done
    } else {
        Outcome::NotInService(a.left_out)
    }
}

/// Addresses as `a, b`, or `none`.
fn addr_list(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "none".to_owned();
    }
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn real_main() -> anyhow::Result<Outcome> {
    let done = match Cli::parse().command {
        Command::Run { config } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(agent::run(&config)),
        Command::Check { config } => check::check(&config),
        Command::Stats {
            config,
            pin_path,
            json,
            watch,
            interval,
        } => {
            let (pin, cfg) = match pin_path {
                Some(dir) => (dir, None),
                None => {
                    let cfg = Config::load(&config)?;
                    (cfg.pin_path.clone(), Some(cfg))
                }
            };
            if watch {
                let socket = cfg.as_ref().map(|c| c.api_socket.clone());
                stats::watch(
                    &pin,
                    cfg.as_ref(),
                    socket.as_deref(),
                    Duration::from_secs_f64(interval.max(0.2)),
                )
            } else {
                stats::print(&pin, cfg.as_ref(), json)
            }
        }
        Command::Status { target } => print_json(&target.call::<Status>(&Request::Status)?),
        Command::Reload {
            target,
            refused_only,
        } => {
            return Ok(match print_applied(target.call(&Request::Reload)?) {
                Outcome::NotInService(left_out) if refused_only => {
                    warn_not_in_service(&left_out);
                    Outcome::Done
                }
                outcome => outcome,
            })
        }
        Command::DrainBalancer { target, no_wait } => {
            let s: BalancerState = target.call(&Request::BalancerDrain)?;
            println!(
                "balancer drained: every VIP withdrawn through BIRD (announced now: {}); still forwarding",
                addr_list(&s.announced)
            );
            if !no_wait {
                let delay = Duration::from_millis(s.withdraw_delay_ms);
                println!(
                    "waiting {delay:?} (announce.withdraw_delay) for the routers to move the flows"
                );
                std::thread::sleep(delay);
            }
            println!("no router should send new flows here now: stop or detach the agent, or `xdplb resume-balancer`");
            Ok(())
        }
        Command::ResumeBalancer { target } => {
            let s: BalancerState = target.call(&Request::BalancerResume)?;
            println!("balancer resumed: announcing {}", addr_list(&s.announced));
            Ok(())
        }
        Command::Replay {
            config,
            pcap,
            out,
            json,
            mac,
        } => {
            let mac = mac
                .map(|m| from_yaml::<MacAddr>("--mac", m.into()))
                .transpose()?;
            for v in lb_userspace::replay::replay(&config, &pcap, out.as_deref(), mac)? {
                if json {
                    println!("{}", serde_json::to_string(&v)?);
                } else if let Some(why) = &v.why {
                    println!("{:>6}  {:<7} {why}", v.index, v.verdict);
                } else {
                    println!(
                        "{:>6}  {:<7} vip={:<12} backend={}",
                        v.index,
                        v.verdict,
                        v.vip.as_deref().unwrap_or("-"),
                        v.backend.map_or("-".to_owned(), |b| b.to_string())
                    );
                }
            }
            Ok(())
        }
        Command::Decap(args) => lb_userspace::decap::run(&args),
        Command::Doctor(args) => lb_userspace::doctor::run(&args),
        Command::Detach { config, pin_path } => {
            let pin = match pin_path {
                Some(p) => p,
                None => {
                    let cfg = Config::load(&config)?;
                    lb_userspace::announce::withdraw_before_detach(&cfg);
                    cfg.pin_path
                }
            };
            let removed = loader::detach(&pin)?;
            if removed.is_empty() {
                println!("nothing pinned under {}", pin.display());
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(())
        }
        Command::Vip { command, target } => {
            let req = match command {
                VipCommand::List => Request::VipList,
                VipCommand::Remove { name } => Request::VipRemove { name },
                VipCommand::Add {
                    name,
                    address,
                    port,
                    protocol,
                    hash,
                    stateless,
                    ring_size,
                    forwarding,
                    icmp_echo,
                } => {
                    let mut m = serde_yaml::Mapping::new();
                    m.insert("name".into(), name.into());
                    m.insert("address".into(), address.to_string().into());
                    m.insert("port".into(), port.into());
                    m.insert("protocol".into(), protocol.into());
                    m.insert("hash".into(), hash.into());
                    m.insert("stateless".into(), stateless.into());
                    m.insert("ring_size".into(), ring_size.into());
                    m.insert("forwarding".into(), forwarding.into());
                    m.insert("icmp_echo".into(), icmp_echo.into());
                    m.insert("backends".into(), serde_yaml::Value::Sequence(vec![]));
                    Request::VipAdd {
                        vip: from_yaml::<Vip>("VIP", m.into())?,
                    }
                }
            };
            if matches!(req, Request::VipList) {
                print_json(&target.call::<Vec<Vip>>(&req)?)
            } else {
                return Ok(print_applied(target.call(&req)?));
            }
        }
        Command::Backend { command, target } => {
            let req = match command {
                BackendCommand::List { vip } => Request::BackendList { vip },
                BackendCommand::Add {
                    vip,
                    address,
                    mac,
                    weight,
                    draining,
                } => {
                    let mut m = serde_yaml::Mapping::new();
                    m.insert("address".into(), address.to_string().into());
                    if let Some(mac) = mac {
                        m.insert("mac".into(), mac.into());
                    }
                    m.insert("weight".into(), weight.into());
                    m.insert(
                        "state".into(),
                        if draining { "draining" } else { "active" }.into(),
                    );
                    Request::BackendAdd {
                        vip,
                        backend: from_yaml::<BackendConfig>("backend", m.into())?,
                    }
                }
                BackendCommand::Remove { vip, address } => Request::BackendRemove { vip, address },
                BackendCommand::Drain { vip, address } => Request::BackendDrain { vip, address },
                BackendCommand::Activate { vip, address } => {
                    Request::BackendActivate { vip, address }
                }
                BackendCommand::Weight {
                    vip,
                    address,
                    weight,
                } => Request::BackendWeight {
                    vip,
                    address,
                    weight,
                },
            };
            if matches!(req, Request::BackendList { .. }) {
                print_json(&target.call::<Vec<VipStatus>>(&req)?)
            } else {
                return Ok(print_applied(
                    target.call(&req).context("the agent refused")?,
                ));
            }
        }
    };
    done.map(Outcome::from)
}

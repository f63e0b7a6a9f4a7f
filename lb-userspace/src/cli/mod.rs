//! The `xdplb` command line: the commands, each group in a file of its own, and their dispatch.

mod agent;
mod backend;
mod check;
mod doctor;
mod output;
mod replay;
mod stats;
mod vip;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use self::output::{Outcome, Target, DEFAULT_CONFIG};
use crate::{exit, logging};

#[derive(Parser)]
#[command(
    name = "xdplb",
    version,
    about = "Direct-server-return load balancer on XDP",
    long_about = "Direct-server-return load balancer on XDP.\n\n\
        `xdplb run` attaches the balancer to a gateway's NIC and keeps its maps in line with a \
        YAML config; the other commands talk to that agent, read the pinned counters, or check \
        a gateway or backend."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach the balancer (or take over a running one) and keep it in line.
    ///
    /// SIGHUP, `xdplb reload` or editing the config file re-applies it; SIGINT or SIGTERM
    /// stops (and detaches, unless keep_attached_on_exit).
    Run {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file; with a running agent, show what applying it would change.
    Check {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Per-VIP and per-backend counters of a running datapath.
    Stats(stats::StatsArgs),
    /// The agent's view: datapath, reloads, each backend's state, health and idle time.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Ask the agent to re-read its config file.
    ///
    /// Exit code 1 when it refuses the file (the running config stays live), 3 when it applied
    /// it but a backend is not in service.
    Reload {
        #[command(flatten)]
        target: Target,
        /// Exit 0 whenever the agent applied the file (systemd's ExecReload).
        ///
        /// Backends not in service are still named on stderr; only a refusal is a failure.
        #[arg(long)]
        refused_only: bool,
    },
    /// The running agent's VIPs: list, add, remove.
    Vip {
        #[command(subcommand)]
        command: vip::VipCommand,
        #[command(flatten)]
        target: Target,
    },
    /// The running agent's backends: list, add, remove, drain, activate, weight.
    Backend {
        #[command(subcommand)]
        command: backend::BackendCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Run a capture through the real XDP program with maps filled from a config.
    ///
    /// Flow state is carried from packet to packet; one verdict per packet.
    Replay(replay::ReplayArgs),
    /// On a backend: unwrap the IP-in-IP that `forwarding: ipip` VIPs send it.
    ///
    /// Strips the outer header of 4in4, 6in4, 6in6 and 4in6 packets addressed to this host on
    /// an interface. Stays attached after the command exits; re-running it replaces the program
    /// and refreshes the address set.
    Decap(crate::decap::DecapArgs),
    /// On a backend: set it up from the balancers' config (VIPs on lo, ARP, host program).
    ///
    /// The program unwraps IP-in-IP (as `decap`) and gives TCP packets to the VIPs a second
    /// chance: one whose flow is not this host's goes on to the backend that owned its ring
    /// slot before. Stays attached after the command exits; re-run it after a config change.
    Host(crate::decap::host::HostArgs),
    /// Preflight a gateway, or with --backend a DSR backend; every finding names its fix.
    ///
    /// Exit code 1 when a check fails (warnings alone exit 0).
    Doctor(doctor::DoctorArgs),
    /// Take this balancer out of the routers' ECMP group, still forwarding.
    ///
    /// Withdraws every VIP through BIRD and waits announce.withdraw_delay for the routers to
    /// move the flows; then stopping or detaching breaks no connection. Holds until
    /// `resume-balancer` (or a restart).
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
    /// Remove a datapath left attached by an agent (stops forwarding).
    ///
    /// With --config and an announce: section, the VIPs are withdrawn through BIRD first and
    /// the datapath forwards for announce.withdraw_delay more.
    Detach {
        /// The config of the agent that left it (for its pin_path and announce:).
        #[arg(long, short, default_value = DEFAULT_CONFIG, conflicts_with = "pin_path")]
        config: PathBuf,
        /// Remove the state pinned under this pin_path instead.
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
}

/// Parses the command line, runs the command and exits with its code (`crate::exit`).
pub fn main() {
    logging::init();
    let code = match dispatch(Cli::parse().command) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("{}xdplb: error: {e:#}", logging::prefix(log::Level::Error));
            exit::code_of(&e)
        }
    };
    std::process::exit(code);
}

fn dispatch(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Run { config } => agent::run(&config).map(Outcome::from),
        Command::Check { config } => check::check(&config).map(Outcome::from),
        Command::Stats(args) => stats::run(&args).map(Outcome::from),
        Command::Status { target } => agent::status(&target).map(Outcome::from),
        Command::Reload {
            target,
            refused_only,
        } => agent::reload(&target, refused_only),
        Command::Vip { command, target } => vip::run(command, &target),
        Command::Backend { command, target } => backend::run(command, &target),
        Command::Replay(args) => replay::run(&args).map(Outcome::from),
        Command::Decap(args) => crate::decap::run(&args).map(Outcome::from),
        Command::Host(args) => crate::decap::host::run(&args).map(Outcome::from),
        Command::Doctor(args) => doctor::run(&args).map(Outcome::from),
        Command::DrainBalancer { target, no_wait } => {
            agent::drain_balancer(&target, no_wait).map(Outcome::from)
        }
        Command::ResumeBalancer { target } => agent::resume_balancer(&target).map(Outcome::from),
        Command::Detach { config, pin_path } => agent::detach(&config, pin_path).map(Outcome::from),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every command and argument says in one line what it is for, in `--help` and `-h`.
    #[test]
    fn every_command_and_argument_has_a_one_line_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && cmd.get_name() != "help" {
                missing.push(format!("{path}: no about"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                match arg.get_help() {
                    None => missing.push(format!("{path} {id}: no help")),
                    Some(h) if h.to_string().contains('\n') => {
                        missing.push(format!("{path} {id}: help is not one line"))
                    }
                    Some(_) => {}
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}

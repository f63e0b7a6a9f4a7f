//! How the CLI finds the agent and reports what it did.
//!
//! It holds the API target, the outcome of a command and its exit code, and the printers.

use std::{net::IpAddr, path::PathBuf};

use clap::Args;
use serde::de::DeserializeOwned;

use crate::{
    agent::api::{self, Applied, LeftOut, Request},
    exit, logging,
};

/// The default config, where the package's unit reads it.
pub const DEFAULT_CONFIG: &str = "/etc/xdplb/lb.yaml";

/// How CLI commands find the running agent.
#[derive(Args, Clone)]
pub struct Target {
    /// Config of the running agent (for its api_socket).
    #[arg(long, short, default_value = DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,
    /// The agent's API socket (overrides the config's api_socket).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
}

impl Target {
    /// Sends `req` to the agent and decodes its answer.
    pub fn call<T: DeserializeOwned>(&self, req: &Request) -> anyhow::Result<T> {
        api::call(&api::socket_for(self.socket.clone(), &self.config)?, req)
    }
}

/// How a command that did not fail ended.
pub enum Outcome {
    Done,
    /// A change was applied, but these backends are not in service.
    NotInService(Vec<LeftOut>),
}

impl From<()> for Outcome {
    fn from((): ()) -> Outcome {
        Outcome::Done
    }
}

impl Outcome {
    /// Reports the outcome on stderr and returns the exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Done => exit::OK,
            Outcome::NotInService(left_out) => {
                warn_not_in_service(&left_out);
                exit::NOT_IN_SERVICE
            }
        }
    }
}

/// Names on stderr each backend a change left out of service, and why.
pub fn warn_not_in_service(left_out: &[LeftOut]) {
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

/// Prints what a change did, and where it was saved.
pub fn print_applied(a: Applied) -> Outcome {
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
pub fn addr_list(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "none".to_owned();
    }
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

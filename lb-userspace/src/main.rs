//! The `xdplb` command: agent (`run`), config check, and counters (`stats`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lb_userspace::{agent, config::Config, stats};

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

#[derive(Subcommand)]
enum Command {
    /// Load the balancer onto the config's interface and keep its maps in line with the config
    /// (SIGHUP re-reads it; SIGINT/SIGTERM detach).
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file and print what it describes.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print per-VIP and per-backend counters of a running agent.
    Stats {
        /// Config of the running agent (for its pin path and VIP names).
        #[arg(long, short, default_value = DEFAULT_CONFIG, conflicts_with = "pin_path")]
        config: PathBuf,
        /// Read the maps pinned here instead of the config's `pin_path`.
        #[arg(long)]
        pin_path: Option<PathBuf>,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    if let Err(e) = real_main() {
        eprintln!("xdplb: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { config } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(agent::run(&config)),
        Command::Check { config } => agent::check(&config),
        Command::Stats {
            config,
            pin_path,
            json,
        } => match pin_path {
            Some(dir) => stats::print(&dir, None, json),
            None => {
                let cfg = Config::load(&config)?;
                stats::print(&cfg.pin_path, Some(&cfg), json)
            }
        },
    }
}

//! The command line: one file per subcommand (as bpfman's CLI is laid
//! out). Each parses its arguments with clap (typed values, durations
//! included), calls the library crates, and prints a view: a struct that
//! is both `Serialize` (for the shared `--json` flag) and `Display` (the
//! text report), so the two outputs never drift apart.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use shardcast_dataplane::DEFAULT_PIN_ROOT;

use crate::state::DEFAULT_STATE_DIR;

mod apply;
mod attach;
mod cycle;
mod daemon;
mod devsim;
mod forecast;
mod gateway;
mod history;
mod maps;
mod plan;
mod simulate;
mod stats;
mod status;
mod values;

#[derive(Parser, Debug)]
#[command(
    name = "router-ctl",
    version,
    about = "shardcast: XDP pub/sub router control"
)]
pub struct Cli {
    /// Directory under bpffs holding the pins (a layout version is appended).
    #[arg(long, global = true, default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// Where the installed plan document is kept (names for dumps); the
    /// daemon's `daemon.state_dir` has the same default.
    #[arg(long, global = true, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Run inside this network namespace (`ip netns` name). Unlike
    /// `ip netns exec`, keeps /sys/fs/bpf visible.
    #[arg(long, global = true)]
    pub netns: Option<String>,
    /// Print the command's report as JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load, pin and attach the XDP router.
    Attach(attach::AttachArgs),
    /// Attach the pass-all XDP program (peer of a veth egress).
    AttachPass(attach::AttachPassArgs),
    /// Detach everything and remove the pins.
    Detach,
    /// Validate a plan and install it as the next generation, atomically.
    Apply(apply::ApplyArgs),
    /// Validate a plan without installing it.
    Check(apply::CheckArgs),
    /// Inspect the installed maps.
    Maps {
        #[command(subcommand)]
        command: maps::MapsCommand,
    },
    /// Counters: per verdict/reason, per topic, unrouted topics.
    Stats,
    /// Installed generation, shards, routes and counter totals, and the
    /// control cycle's last decision (`--watch`: live).
    Status(status::StatusArgs),
    /// The control cycle: its last decisions; `--mode` switches the
    /// running daemon between predictive, reactive and advise.
    Cycle(cycle::CycleArgs),
    /// Run the control daemon (docs/config.md).
    Daemon(daemon::DaemonArgs),
    /// Predict load per topic x device group (docs/forecasting.md).
    Forecast(forecast::ForecastArgs),
    /// Plan shards for a workload (docs/workload-format.md); prints the cost.
    Plan(plan::PlanArgs),
    /// Compare static, reactive and predictive sharding on a synthetic
    /// trace (docs/simulator.md).
    Simulate(simulate::SimulateArgs),
    /// Telemetry history (counts per bucket, topic and device group).
    History(history::HistoryArgs),
    /// Run the MQTT-SN gateway: connections, topic registration,
    /// subscriptions, QoS 1/2, sleeping clients, a device registry;
    /// accepted publishes go to its subscribers and the plan's shard groups.
    Gateway(gateway::GatewayArgs),
    /// Simulate shard-aware devices (the device protocol, migrations
    /// included) with a numbered publisher; counts what each missed.
    Devsim(devsim::DevsimArgs),
}

/// What every subcommand may need from the global flags.
pub(crate) struct Globals {
    pub pin_root: PathBuf,
    pub state_dir: PathBuf,
    pub json: bool,
}

impl Globals {
    /// Prints `view` as the user asked: pretty JSON or its text form.
    pub fn print<V: serde::Serialize + std::fmt::Display>(&self, view: &V) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(view)?);
        } else {
            print!("{view}");
        }
        Ok(())
    }
}

impl Command {
    /// The default log level: the daemon reports what it does, one-shot
    /// commands only warn.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Daemon(_) | Command::Gateway(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs one command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Some(ns) = &cli.netns {
        shardcast_dataplane::netns::enter(ns)?;
    }
    let g = Globals {
        pin_root: cli.pin_root,
        state_dir: cli.state_dir,
        json: cli.json,
    };
    match cli.command {
        Command::Attach(a) => attach::attach(&g, a),
        Command::AttachPass(a) => attach::attach_pass(&g, a),
        Command::Detach => attach::detach(&g),
        Command::Apply(a) => apply::apply(&g, a),
        Command::Check(a) => apply::check(&g, a),
        Command::Maps { command } => maps::run(&g, command),
        Command::Stats => stats::run(&g),
        Command::Status(a) => status::run(&g, a),
        Command::Cycle(a) => cycle::run(&g, a),
        Command::Daemon(a) => daemon::run(a),
        Command::Devsim(a) => devsim::run(&g, a),
        Command::Forecast(a) => forecast::run(&g, a),
        Command::Plan(a) => plan::run(&g, a),
        Command::Simulate(a) => simulate::run(&g, a),
        Command::History(a) => history::run(a),
        Command::Gateway(a) => gateway::run(&g, a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_and_the_daemon_keep_the_plan_in_the_same_place_by_default() {
        let cli = Cli::parse_from(["router-ctl", "maps", "dump"]);
        let cfg = crate::config::DaemonConfig::from_toml("", "default.toml").unwrap();
        assert_eq!(cli.state_dir, cfg.daemon.state_dir);
        // --json is one flag for every command, before or after it.
        assert!(Cli::parse_from(["router-ctl", "--json", "status"]).json);
        assert!(
            Cli::try_parse_from(["router-ctl", "status", "--watch", "--interval", "0s"]).is_err()
        );
        assert!(Cli::parse_from(["router-ctl", "stats", "--json"]).json);
        // Durations are checked when the arguments are read.
        assert!(
            Cli::try_parse_from([
                "router-ctl",
                "forecast",
                "--history",
                "h",
                "--bucket",
                "soon"
            ])
            .is_err()
        );
    }
}

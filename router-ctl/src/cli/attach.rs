//! `router-ctl attach | attach-pass | detach`: the data plane's lifecycle.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use router_common::maps::Config;
use serde::Serialize;
use shardcast_dataplane::{
    AttachOptions, Dataplane, DataplaneError, FanoutPath, Mode, PinPaths, RouterConfig, TcAttach,
    find_object, is_root,
};
use shardcast_plan::normalize_prefix;

use super::Globals;
use crate::state;

/// clap value parser for [`Mode`].
fn mode(text: &str) -> Result<Mode, String> {
    text.parse()
}

/// clap value parser for [`FanoutPath`].
fn fanout_path(text: &str) -> Result<FanoutPath, String> {
    text.parse()
}

/// clap value parser for [`TcAttach`].
fn tc_attach(text: &str) -> Result<TcAttach, String> {
    text.parse()
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Interface(s) that receive device traffic.
    #[arg(long, required = true)]
    pub ingress: Vec<String>,
    /// Interface(s) shard traffic leaves by.
    #[arg(long)]
    pub egress: Vec<String>,
    /// XDP mode: driver (native) or skb (generic).
    #[arg(long, value_parser = mode, default_value = "driver")]
    pub mode: Mode,
    /// How the fan-out program (multi-shard publishes) attaches at TC
    /// ingress: auto (TCX where the kernel has it, else a clsact filter),
    /// tcx, or netlink (a clsact filter).
    #[arg(long, value_parser = tc_attach, default_value = "auto")]
    pub tc_attach: TcAttach,
    /// How multi-shard publishes fan out: auto (by XDP broadcast, one
    /// rewritten copy per shard from the route's device map, where the
    /// kernel takes the copy program and the mode is driver; else by the
    /// TC program) or tc (always the TC program).
    #[arg(long, value_parser = fanout_path, default_value = "auto")]
    pub fanout: FanoutPath,
    /// The eBPF object (default: SHARDCAST_OBJECT, then next to the binary).
    #[arg(long)]
    pub object: Option<PathBuf>,
    #[arg(long, default_value_t = Config::DEFAULT_MQTTSN_PORT)]
    pub mqttsn_port: u16,
    #[arg(long, default_value_t = Config::DEFAULT_COAP_PORT)]
    pub coap_port: u16,
    #[arg(long, default_value = Config::DEFAULT_PREFIX, value_parser = |s: &str| normalize_prefix(s))]
    pub coap_prefix: String,
    /// Also count routed publishes per (topic, device group); the daemon
    /// turns this on itself when its config asks for group telemetry.
    #[arg(long)]
    pub group_stats: bool,
    /// With --group-stats: count one publish in N (at random, weighted by
    /// N), trading exactness for fast-path time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub group_sample: u32,
}

#[derive(Args, Debug)]
pub struct AttachPassArgs {
    #[arg(long)]
    pub iface: String,
    #[arg(long, value_parser = mode, default_value = "driver")]
    pub mode: Mode,
}

#[derive(Serialize)]
struct Attached {
    ingress: Vec<String>,
    mode: String,
    /// How multi-shard publishes fan out: `broadcast` or `tc` (asked for,
    /// generic XDP, or a kernel that refused the copy program).
    fanout: &'static str,
    pins: PathBuf,
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "attached to {} ({} mode, multi-shard publishes by {}); pins in {}",
            self.ingress.join(", "),
            self.mode,
            self.fanout,
            self.pins.display()
        )
    }
}

pub fn attach(g: &Globals, a: AttachArgs) -> Result<()> {
    let opts = AttachOptions {
        object: find_object(a.object.as_deref())?,
        ingress: a.ingress,
        egress: a.egress,
        mode: a.mode,
        tc: a.tc_attach,
        fanout: a.fanout,
        config: RouterConfig {
            mqttsn_port: a.mqttsn_port,
            coap_port: a.coap_port,
            coap_prefix: a.coap_prefix,
            group_stats: a.group_stats,
            group_sample: a.group_sample,
        },
    };
    let dp = Dataplane::attach(&g.pin_root, &opts)?;
    g.print(&Attached {
        ingress: opts.ingress,
        mode: opts.mode.to_string(),
        fanout: if dp.broadcasts() { "broadcast" } else { "tc" },
        pins: PinPaths::new(&g.pin_root).dir().to_path_buf(),
    })
}

#[derive(Serialize)]
struct PassAttached {
    iface: String,
    pin: PathBuf,
}

impl std::fmt::Display for PassAttached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "pass program attached to {} (pin {})",
            self.iface,
            self.pin.display()
        )
    }
}

pub fn attach_pass(g: &Globals, a: AttachPassArgs) -> Result<()> {
    let mut dp = Dataplane::open(&g.pin_root)?;
    let pin = dp.attach_pass(&a.iface, a.mode)?;
    g.print(&PassAttached {
        iface: a.iface,
        pin,
    })
}

#[derive(Serialize)]
struct Detached {
    removed: Vec<PathBuf>,
}

impl std::fmt::Display for Detached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "detached; removed {} pins", self.removed.len())
    }
}

pub fn detach(g: &Globals) -> Result<()> {
    if !is_root() {
        bail!(DataplaneError::NotRoot);
    }
    let removed = Dataplane::detach(&g.pin_root)?;
    state::forget_plan(&g.state_dir);
    g.print(&Detached { removed })
}

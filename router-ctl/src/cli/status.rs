//! `router-ctl status`: one screen on the installed state.

use std::{fmt, path::PathBuf};

use anyhow::Result;
use router_common::reason::Reason;
use serde::Serialize;
use shardcast_dataplane::{Dataplane, PinPaths};

use super::Globals;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Refresh until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Time between refreshes with --watch.
    #[arg(long, default_value = "1s", value_parser = super::values::positive_duration)]
    pub interval: std::time::Duration,
}

#[derive(Serialize)]
struct Status {
    pins: PathBuf,
    generation: u64,
    installed_unix: u64,
    slot_generations: [u64; 2],
    active_slot: u32,
    shards: u32,
    routes: u32,
    egress: usize,
    mqttsn_port: u16,
    coap_port: u16,
    coap_prefix: String,
    group_stats: bool,
    /// How the shared group counters are read: `iterator`, or `batches
    /// (why)`.
    group_reader: String,
    /// Per-CPU (topic, device group) cells in use and in all (every CPU's
    /// lines); pairs a full line has no room for are shared counters.
    group_cells_used: usize,
    group_cells: usize,
    /// Packets out: single-shard redirects and the fan-out's copies.
    redirected: u64,
    /// Multi-shard publishes fanned out (by broadcast or the TC program).
    fanned_out: u64,
    passed: u64,
    topics_counted: usize,
    unrouted_keys: usize,
    /// The installed plan's policy (from its copy in the state dir; absent
    /// when the copy is missing).
    policy: Option<shardcast_plan::Policy>,
    shards_by_class: std::collections::BTreeMap<String, usize>,
    /// Devices per shard in the installed plan.
    devices_by_shard: std::collections::BTreeMap<u32, usize>,
    /// The control cycle's run-time mode override, if any.
    cycle_mode_override: Option<String>,
    /// The control cycle's last decision (from its log in the state dir).
    last_decision: Option<serde_json::Value>,
    /// The daemon's latency probes (its last report in the state dir).
    probes: Option<crate::probe::ProbeReport>,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data plane at {}", self.pins.display())?;
        writeln!(
            f,
            "generation {} (installed at unix {}), active slot {}, slots hold {:?}",
            self.generation, self.installed_unix, self.active_slot, self.slot_generations
        )?;
        writeln!(
            f,
            "{} shards, {} route keys, {} egress interfaces",
            self.shards, self.routes, self.egress
        )?;
        writeln!(
            f,
            "MQTT-SN port {}, CoAP port {} prefix {:?}, group telemetry {}",
            self.mqttsn_port,
            self.coap_port,
            self.coap_prefix,
            if self.group_stats { "on" } else { "off" }
        )?;
        writeln!(
            f,
            "group counters: {} of {} per-CPU cells in use; shared counters read by {}",
            self.group_cells_used, self.group_cells, self.group_reader
        )?;
        writeln!(
            f,
            "packets: {} redirected (copies of {} fanned out included), {} passed to the stack; {} topics counted, {} unrouted keys",
            self.redirected, self.fanned_out, self.passed, self.topics_counted, self.unrouted_keys
        )?;
        if !self.devices_by_shard.is_empty() {
            let by: Vec<String> = self
                .devices_by_shard
                .iter()
                .map(|(s, n)| format!("{s}:{n}"))
                .collect();
            writeln!(f, "devices by shard: {}", by.join(" "))?;
        }
        if let Some(m) = &self.cycle_mode_override {
            writeln!(f, "control cycle mode: {m} (set at run time)")?;
        }
        if let Some(d) = &self.last_decision {
            writeln!(f, "last decision: {}", super::cycle::summary(d))?;
            if let Some(shards) = d.get("shards").and_then(|s| s.as_array()) {
                for s in shards {
                    let n = |k: &str| s.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
                    writeln!(
                        f,
                        "  shard {:>4}: {:>6} devices, measured {:>9.1} msg/s, planned {:>9.1}, usable {:>9.1}",
                        n("id"),
                        n("devices"),
                        n("measured"),
                        n("planned"),
                        n("usable")
                    )?;
                }
            }
        }
        if let Some(p) = &self.probes {
            writeln!(
                f,
                "latency probes (one-way through the data plane, last {} per shard):",
                p.shards.values().map(|s| s.recent.len()).max().unwrap_or(0)
            )?;
            for (id, s) in &p.shards {
                let ms = |q: f64| {
                    s.recent_quantile(q)
                        .map_or("-".to_string(), |v| format!("{:.3} ms", v * 1e3))
                };
                writeln!(
                    f,
                    "  shard {id:>4}: p50 {}, p99 {}; sent {}, back {}, lost {}",
                    ms(0.5),
                    ms(0.99),
                    s.sent,
                    s.received,
                    s.lost
                )?;
            }
        }
        match &self.policy {
            None => writeln!(f, "policy: unknown (no copy of the installed plan)"),
            Some(p) => {
                writeln!(f, "policy: {}", p.summary())?;
                if !p.separate_by.is_empty() {
                    let by: Vec<String> = self
                        .shards_by_class
                        .iter()
                        .map(|(c, n)| format!("{c} {n}"))
                        .collect();
                    writeln!(f, "shards by class: {}", by.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

pub fn run(g: &Globals, a: StatusArgs) -> Result<()> {
    if !a.watch {
        return once(g);
    }
    loop {
        // Clear the screen and home the cursor, then the status.
        if !g.json {
            print!("\x1b[2J\x1b[H");
        }
        once(g)?;
        std::thread::sleep(a.interval);
    }
}

fn once(g: &Globals) -> Result<()> {
    let dp = Dataplane::open(&g.pin_root)?;
    // The installed state without its routes: a snapshot would read every
    // route (a syscall each from the hash map), which status never shows.
    let meta = dp.meta()?;
    let config = dp.config()?;
    let c = dp.counters()?;
    let packets = |keep: &dyn Fn(Reason) -> bool| -> u64 {
        c.reasons
            .iter()
            .filter(|(r, _)| keep(**r))
            .map(|(_, v)| v.packets)
            .sum()
    };
    let plan = crate::state::load_plan(&g.state_dir, meta.generation);
    let mut devices_by_shard = std::collections::BTreeMap::new();
    for d in plan.iter().flat_map(|p| &p.devices) {
        *devices_by_shard.entry(d.shard).or_insert(0) += 1;
    }
    let cells = dp.group_cells_used();
    g.print(&Status {
        devices_by_shard,
        cycle_mode_override: std::fs::read_to_string(crate::state::mode_file(&g.state_dir))
            .ok()
            .map(|t| t.trim().to_string()),
        last_decision: super::cycle::last_decisions(&g.state_dir, 1)?.pop(),
        probes: std::fs::read(crate::state::probes_file(&g.state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        shards_by_class: plan
            .as_ref()
            .map(|p| p.shards_by_class())
            .unwrap_or_default(),
        policy: plan.map(|p| p.policy),
        pins: PinPaths::new(&g.pin_root).dir().to_path_buf(),
        generation: meta.generation,
        installed_unix: meta.installed_unix,
        slot_generations: meta.slot_generation,
        active_slot: dp.active_slot()? & 1,
        shards: meta.shards,
        routes: meta.routes,
        egress: dp.egress_table().len(),
        mqttsn_port: config.mqttsn_port,
        coap_port: config.coap_port,
        coap_prefix: config.coap_prefix.clone(),
        group_stats: config.group_stats,
        group_cells_used: cells.0,
        group_cells: cells.1,
        group_reader: match dp.group_iterator_refused() {
            None => "iterator".into(),
            Some(why) => format!("batches ({why})"),
        },
        redirected: packets(&|r| r == Reason::Redirected),
        fanned_out: packets(&|r| r == Reason::FannedOut || r == Reason::Broadcast),
        passed: packets(&|r| {
            r != Reason::Redirected && r != Reason::FannedOut && r != Reason::Broadcast
        }),
        topics_counted: c.topics.len(),
        unrouted_keys: c.unrouted.len(),
    })
}

//! `router-ctl maps dump`: the installed state as the kernel holds it.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;
use clap::Subcommand;
use router_common::maps::{SHARD_HAS_V4, SHARD_HAS_V6};
use serde::Serialize;
use shardcast_dataplane::Dataplane;

use super::Globals;
use crate::state;

#[derive(Subcommand, Debug)]
pub enum MapsCommand {
    /// Print config, generation, shards, routes and egress table.
    Dump,
}

#[derive(Serialize)]
struct ConfigView {
    mqttsn_port: u16,
    coap_port: u16,
    coap_prefix: String,
}

#[derive(Serialize)]
struct EgressView {
    slot: u32,
    ifindex: u32,
    /// Multi-shard routes over this egress alone go by XDP broadcast (its
    /// device maps and the copy program are in place); else by TC.
    broadcast: bool,
}

#[derive(Serialize)]
struct ShardView {
    id: u32,
    group_v4: Option<String>,
    group_v6: Option<String>,
    egress_slot: u32,
    port: u16,
    src_mac: String,
    /// The policy's boundary class (from the installed plan's copy).
    class: Option<String>,
}

#[derive(Serialize)]
struct RouteView {
    key: String,
    topic: Option<String>,
    stats_slot: u32,
    /// Shard ids; `null` for an index outside the shard table (never, in a
    /// consistent install).
    shards: Vec<Option<u32>>,
    /// How a publish leaves: `single` (one shard), `broadcast` (copies by
    /// XDP broadcast) or `tc` (copies by the TC fan-out program).
    fanout: &'static str,
}

#[derive(Serialize)]
struct Dump {
    config: ConfigView,
    generation: u64,
    installed_unix: u64,
    active_slot: u32,
    egress: Vec<EgressView>,
    shards: Vec<ShardView>,
    routes: Vec<RouteView>,
    /// The installed plan's policy (absent without the plan's copy).
    policy: Option<shardcast_plan::Policy>,
}

/// `aa:bb:cc:dd:ee:ff`.
pub(super) fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl fmt::Display for Dump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "config: mqtt-sn port {}, coap port {}, coap prefix {:?}",
            self.config.mqttsn_port, self.config.coap_port, self.config.coap_prefix
        )?;
        writeln!(
            f,
            "generation {} (slot {}), {} shards, {} route keys",
            self.generation,
            self.active_slot,
            self.shards.len(),
            self.routes.len()
        )?;
        let egress: Vec<String> = self
            .egress
            .iter()
            .map(|e| {
                format!(
                    "slot {} ifindex {}{}",
                    e.slot,
                    e.ifindex,
                    if e.broadcast { " (broadcast)" } else { "" }
                )
            })
            .collect();
        writeln!(f, "egress: {}", egress.join(", "))?;
        match &self.policy {
            Some(p) => writeln!(f, "policy: {}", p.summary())?,
            None => writeln!(f, "policy: unknown (no copy of the installed plan)")?,
        }
        writeln!(
            f,
            "{:>6}  {:<16} {:<24} {:>6} {:>6}  class",
            "shard", "group_v4", "group_v6", "egress", "port"
        )?;
        for sh in &self.shards {
            writeln!(
                f,
                "{:>6}  {:<16} {:<24} {:>6} {:>6}  {}",
                sh.id,
                sh.group_v4.as_deref().unwrap_or("-"),
                sh.group_v6.as_deref().unwrap_or("-"),
                sh.egress_slot,
                sh.port,
                sh.class.as_deref().unwrap_or("-")
            )?;
        }
        writeln!(
            f,
            "{:<16}  {:<32} {:>5}  {:<9}  shards",
            "key", "topic", "slot", "fan-out"
        )?;
        for r in &self.routes {
            let shards: Vec<String> = r
                .shards
                .iter()
                .map(|s| s.map_or("?".into(), |s| s.to_string()))
                .collect();
            writeln!(
                f,
                "{:<16}  {:<32} {:>5}  {:<9}  [{}]",
                r.key,
                r.topic.as_deref().unwrap_or("?"),
                r.stats_slot,
                r.fanout,
                shards.join(",")
            )?;
        }
        Ok(())
    }
}

pub fn run(g: &Globals, command: MapsCommand) -> Result<()> {
    let MapsCommand::Dump = command;
    let dp = Dataplane::open(&g.pin_root)?;
    let s = dp.snapshot()?;
    let names = state::key_names(&g.state_dir, s.meta.generation);
    let plan = state::load_plan(&g.state_dir, s.meta.generation);
    let class_of: std::collections::HashMap<u32, String> = plan
        .iter()
        .flat_map(|p| &p.shards)
        .filter_map(|sh| Some((sh.id, sh.class.clone()?)))
        .collect();
    let dump = Dump {
        policy: plan.map(|p| p.policy),
        config: ConfigView {
            mqttsn_port: s.config.mqttsn_port,
            coap_port: s.config.coap_port,
            coap_prefix: s.config.coap_prefix.clone(),
        },
        generation: s.meta.generation,
        installed_unix: s.meta.installed_unix,
        active_slot: s.active_slot,
        egress: s
            .egress
            .iter()
            .map(|&(slot, ifindex)| EgressView {
                slot,
                ifindex,
                broadcast: dp.broadcasts_on(slot),
            })
            .collect(),
        shards: s
            .shards
            .iter()
            .map(|sh| ShardView {
                id: sh.id,
                group_v4: (sh.flags & SHARD_HAS_V4 != 0)
                    .then(|| Ipv4Addr::from(sh.group_v4).to_string()),
                group_v6: (sh.flags & SHARD_HAS_V6 != 0)
                    .then(|| Ipv6Addr::from(sh.group_v6).to_string()),
                egress_slot: sh.egress_slot,
                port: sh.port,
                src_mac: mac(&sh.src_mac),
                class: class_of.get(&sh.id).cloned(),
            })
            .collect(),
        routes: s
            .routes
            .iter()
            .map(|(k, r)| RouteView {
                key: format!("{:016x}", k.hash),
                topic: names.get(k).cloned(),
                stats_slot: r.stats_slot,
                shards: r.shards[..r.shard_count as usize]
                    .iter()
                    .map(|&i| s.shards.get(i as usize).map(|sh| sh.id))
                    .collect(),
                fanout: match (r.shard_count, r.fanout) {
                    (0 | 1, _) => "single",
                    (_, 0) => "tc",
                    _ => "broadcast",
                },
            })
            .collect(),
    };
    g.print(&dump)
}

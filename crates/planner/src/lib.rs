//! The shard planner: which shard each device joins and which shards each
//! topic is routed to, for the publish rates predicted at the planning
//! horizon.
//!
//! The problem is hypergraph partitioning with side constraints: devices are
//! vertices, each topic is a net over its subscribers weighted by its rate.
//! A shard's load is the messages/s routed into its group, `Σ rate` over the
//! topics it holds a subscriber of, so `Σ_shards load − Σ_topics rate` is
//! exactly the connectivity objective `Σ_t rate_t (λ_t − 1)` (inter-shard
//! copies) that hypergraph partitioners minimise. The cost function
//! (`docs/workload-format.md`) adds overload above usable capacity, wasted
//! deliveries (weighted up for low batteries), queueing latency, active
//! shards and migrations against the current plan.
//!
//! Capacity is a hard constraint: lower bounds (`feasibility.rs`) name a
//! fleet no plan can serve before any work, and a plan left with a shard
//! above usable capacity is an error unless [`Options::best_effort`].
//!
//! The algorithm is a multilevel graph partition (for a fresh plan) or
//! greedy placement (for the new devices of a running one), then local
//! search; deterministic for a seed:
//! 0. a fresh plan keeps the cheapest of several starts: the topic graph
//!    below, the cluster order of step 1 for every device, and whole
//!    connected components packed into shards (`components.rs`); the
//!    graph start is METIS's k-way partition of the *topic
//!    graph* (`initial.rs`): topics weighted by rate, linked at the cheaper
//!    rate of a pair some device subscribes to both; each device joins the
//!    shard holding most of its topics' rate, and a topic then spanning
//!    more than the data plane's fan-out has its smallest pieces folded
//!    into shards it already spans;
//! 1. devices keep their shard from the current plan; new devices are placed
//!    in *cluster order* (sorted by their most- then least-shared topic, so
//!    devices that share topics arrive together) into the cheapest shard,
//!    opening a shard when every candidate would be overloaded;
//! 2. **create**: a shard predicted above usable capacity is split, a
//!    contiguous run of its members in cluster order moving to a new shard
//!    until the two loads balance; a member no shard of its topics has
//!    room for goes to any shard with room before a new one is opened (a
//!    copy more rather than a shard more: a shard opened for a sliver of
//!    load stays until merging, whose hysteresis keeps it);
//! 3. **refine**: label-propagation rounds move single devices to the
//!    neighbouring shard (one holding one of its topics) that lowers the
//!    cost most, within the migration budget; then **net moves**: the few
//!    subscribers a topic has in a shard move together to the shard where
//!    it has the most, when that lowers the cost (no single move of theirs
//!    does: the copy goes only with the last one);
//!    then **group moves**: look-alike devices (the same subscriptions) of
//!    a shard move together, a coarse level for the local search;
//! 4. **merge**: a shard whose combined load with a partner stays below
//!    `merge_below` of usable capacity is folded into it. Splitting above
//!    1.0 and merging below 0.5 of capacity is the hysteresis that keeps
//!    plans from flapping on a flat load;
//! 5. **repair**: what is left over capacity or over the fan-out is split
//!    and folded again, and whole topic pieces move out of overloaded
//!    shards.
//!
//! A topic may span at most [`MAX_ROUTE_SHARDS`] shards (the data plane's
//! fan-out); no move breaks that, and a plan that cannot meet it is refused
//! (with a lower bound on the shards the topic's followers need when one
//! proves it). The extra starts, a wider topic graph and the group moves
//! run within `THOROUGH_MAX_SUBSCRIPTIONS`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use router_common::maps::MAX_ROUTE_SHARDS;
use serde::Serialize;

use shardcast_plan::{Plan, ShardSpec};

use crate::workload::Instance;

mod components;
mod emit;
mod explain;
mod feasibility;
mod initial;
mod moves;
mod partition;
mod subscribers;
pub mod workload;

use crate::{emit::Emitted, partition::Partition, subscribers::Subscribers};
pub use crate::{
    explain::{Alternative, DeviceWhy, Explanation, ShardWhy, explain},
    feasibility::Infeasible,
};

pub(crate) const NONE: u32 = u32::MAX;
/// Shards of a fresh plan: the total rate times this over usable
/// capacity, i.e. shards start about 90% full with 10% of copies on top.
/// The headroom takes the copies the fan-out bound and the broadcast
/// topics add; fewer, fuller shards save a shard's fixed cost but pay more
/// in wasted deliveries (each member sees the whole shard's load), which
/// the default weights price higher (BENCHMARKS.md, "shard count").
pub(crate) const GRAPH_LOAD_FACTOR: f64 = 1.1 / 0.9;
/// Subscriptions up to which the planner works thoroughly: a fresh plan
/// also tries the extra starts (the topic graph at the fewest shards, and
/// cluster order, which places every device one by one), the topic graph
/// keeps topics with up to half a shard's devices (`initial.rs`), and
/// every plan gets the group-move passes. For the 1M-device fleet of the
/// planner bench (2.1M subscriptions, where the lean path is within 2% of
/// Mt-KaHyPar) that would be 11-14 s instead of 3; at 200k devices it is
/// 1-3 s and takes the vehicle fleet from 1.6x to 1.05x Mt-KaHyPar's
/// copies (BENCHMARKS.md, "Shard planner").
pub(crate) const THOROUGH_MAX_SUBSCRIPTIONS: usize = 1_500_000;
/// Smallest cost change worth a move (keeps rounding noise from moving
/// devices back and forth).
pub(crate) const EPS: f64 = 1e-6;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlannerError {
    #[error(
        "topic {topic:?} would span {shards} shards; the data plane routes a topic to at most {MAX_ROUTE_SHARDS} (raise shard capacity or narrow its subscribers)"
    )]
    FanOut { topic: String, shards: usize },
    #[error("no free multicast group for a new shard above {base} (shard id {id})")]
    GroupsExhausted { base: String, id: u32 },
    #[error(
        "current plan: generation is at its maximum ({}); no next generation exists",
        u64::MAX
    )]
    GenerationExhausted,
    #[error(
        "the plan's cost is not a finite number: rates, capacities or weights are too large to price"
    )]
    NonFiniteCost,
    #[error("current plan: shard {0} is listed twice")]
    CurrentDuplicateShard(u32),
    #[error(transparent)]
    Graph(#[from] initial::GraphError),
    #[error(
        "the policy's {classes} boundary classes need {shards} shards (no two classes share one); max_shards is {max_shards}"
    )]
    BoundaryShards {
        shards: usize,
        max_shards: u32,
        classes: usize,
    },
    /// A bound proves no plan keeps every shard within usable capacity.
    #[error(
        "no plan within capacity exists: {0} (plan with best effort to get the least overloaded plan)"
    )]
    Infeasible(#[from] Infeasible),
    /// The planner found no plan within capacity, though no bound rules
    /// one out.
    #[error(
        "{shards} shard(s) stay above usable capacity (the worst at {worst:.2}x, {active} shards of max_shards {max_shards} in use{}); plan with best effort to accept it",
        blocking.as_ref().map_or(String::new(), |t| format!(
            "; topic {t:?}, held in an overloaded shard, already spans the {MAX_ROUTE_SHARDS} shards a route allows, so no new shard can take its followers"
        ))
    )]
    Overloaded {
        shards: usize,
        worst: f64,
        active: usize,
        max_shards: u32,
        /// A topic at the fan-out bound held in an overloaded shard, when
        /// there is one: why unused shards could not help.
        blocking: Option<String>,
    },
}

/// Knobs of one planning run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Seeds the order of refinement passes (and tie-breaks of placement).
    pub seed: u64,
    /// At most this many refinement rounds (stops early when quiet).
    pub rounds: usize,
    /// Return the least overloaded plan found when no plan within capacity
    /// exists (or none was found), with warnings, instead of an error. The
    /// simulator plans this way: a run through an overload must go on.
    pub best_effort: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            rounds: 4,
            best_effort: false,
        }
    }
}

/// The cost of a plan, term by term (`docs/workload-format.md`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Cost {
    /// Σ over shards of messages/s above usable capacity.
    pub overload: f64,
    pub overloaded_shards: usize,
    pub max_load: f64,
    pub mean_load: f64,
    /// Σ_t rate_t (λ_t − 1): messages/s sent to more than one shard.
    pub copies: f64,
    /// The most shards one topic spans (the data plane allows 8).
    pub max_fanout: usize,
    /// Messages/s reaching members not subscribed to them (battery-weighted).
    pub wasted: f64,
    /// Σ_s load_s ρ_s / (1 − ρ_s), ρ = load / capacity.
    pub latency: f64,
    pub shards: usize,
    pub migrations: usize,
    /// Messages/s above the router's bandwidth.
    pub bandwidth_excess: f64,
    /// Σ over soft preferences of weight × (shard, value) pairs: each
    /// distinct value a shard holds costs the preference's weight.
    pub together: f64,
    /// Weighted sum of the terms above.
    pub total: f64,
}

/// What a planning run produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub plan: Plan,
    pub cost: Cost,
    /// Shard index (into `plan.shards`) of each workload device.
    pub assignment: Vec<u32>,
    /// Load of each shard of `plan.shards` (messages/s).
    pub loads: Vec<f64>,
    /// Shards new in this plan (all of them without a current plan).
    pub created: usize,
    pub merged: usize,
    pub refine_moves: usize,
    /// Conditions the plan could not fix (e.g. overload at max_shards).
    pub warnings: Vec<String>,
    pub elapsed: Duration,
}

/// Plans `inst`, starting from `current` when given.
pub fn plan(
    inst: &Instance,
    current: Option<&Plan>,
    opts: Options,
) -> Result<Outcome, PlannerError> {
    let started = Instant::now();
    let mut p = Partition::new(inst);
    // The current plan's shard of each slot (ids and groups are kept).
    let mut specs: Vec<Option<ShardSpec>> = Vec::new();
    if let Some(cur) = current {
        let mut slot_of: HashMap<u32, u32> = HashMap::new();
        for s in &cur.shards {
            if slot_of.insert(s.id, p.open()).is_some() {
                return Err(PlannerError::CurrentDuplicateShard(s.id));
            }
            specs.push(Some(s.clone()));
        }
        let index: HashMap<&str, usize> = inst
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.as_str(), i))
            .collect();
        for dev in &cur.devices {
            if let (Some(&d), Some(&s)) = (index.get(dev.id.as_str()), slot_of.get(&dev.shard)) {
                p.orig[d] = s;
                p.place(d, s);
            }
        }
    }
    let mut warnings = Vec::new();
    let subscribers = Subscribers::of(inst);
    // 0. Fleets no plan can serve within capacity are named before any
    //    work, with the bound that rules them out.
    if let Some(why) = feasibility::check(inst, &subscribers) {
        if !opts.best_effort {
            return Err(why.into());
        }
        warnings.push(format!(
            "no plan within capacity exists: {why}; the plan below is a best effort"
        ));
    }
    // 1. A fresh plan starts from the graph partitioner's cut; new
    //    devices of a current plan (and devices with broadcast topics
    //    only) are placed greedily, in cluster order.
    let seeded = current.is_none() && p.seed_from_graph(&subscribers, opts.seed)?;
    // The graph start ignores the policy's boundaries: devices in a shard
    // of another class are placed again below (a current plan's too, if
    // the policy changed).
    p.evict_other_classes();
    // Classes of lower priority give up shards when max_shards is short.
    let folded = p.enforce_class_limits();
    if folded > 0 {
        warnings.push(format!(
            "max_shards {} is short for every class: {folded} shard(s) of lower-priority classes folded for higher ones",
            inst.resources.max_shards
        ));
    }
    if seeded {
        tracing::debug!(elapsed = ?started.elapsed(), "graph partition");
        let moved = p.enforce_fanout(&subscribers);
        tracing::debug!(elapsed = ?started.elapsed(), moved, "fan-out");
    }
    let keys = cluster_keys(inst, &subscribers, opts.seed);
    let mut fresh: Vec<u32> = (0..inst.devices.len() as u32)
        .filter(|&d| p.assign[d as usize] == NONE)
        .collect();
    fresh.sort_unstable_by_key(|&d| keys[d as usize]);
    p.place_new(&fresh);
    tracing::debug!(elapsed = ?started.elapsed(), "placed");
    // 2. Create shards where the predicted load overflows.
    p.split_overloaded(&keys);
    tracing::debug!(elapsed = ?started.elapsed(), "split");
    // A fresh plan has a second start: every device greedily in cluster
    // order (a sort-and-cut that keeps a big topic's followers together,
    // where the topic graph, which sees a topic as one vertex, cannot
    // split it well). The cheaper start goes on.
    // And where the fleet falls apart into components that each fit a
    // shard, a third: whole components packed into shards, no copy at all.
    let mut seeded = seeded;
    if current.is_none() && seeded && inst.subs.len() <= THOROUGH_MAX_SUBSCRIPTIONS {
        let mut g = Partition::new(inst);
        let mut all: Vec<u32> = (0..inst.devices.len() as u32).collect();
        all.sort_unstable_by_key(|&d| keys[d as usize]);
        g.place_new(&all);
        g.split_overloaded(&keys);
        g.enforce_fanout(&subscribers);
        if start_key(&g) < start_key(&p) {
            tracing::debug!(elapsed = ?started.elapsed(), "the cluster-order start is cheaper");
            p = g;
            seeded = false;
        }
    }
    if current.is_none() {
        let max = inst.resources.max_shards as usize;
        if let Some(parts) = components::pack(inst, &subscribers, max) {
            let mut c = Partition::new(inst);
            let mut evicted = Vec::new();
            for (d, &s) in parts.iter().enumerate() {
                if s == NONE {
                    // Its component fits no shard: placed below.
                    evicted.push(d as u32);
                    continue;
                }
                while s as usize >= c.load.len() {
                    c.open();
                }
                c.place(d, s);
            }
            if !evicted.is_empty() {
                evicted.sort_unstable_by_key(|&d| keys[d as usize]);
                c.place_new(&evicted);
                c.split_overloaded(&keys);
                c.enforce_fanout(&subscribers);
            }
            if start_key(&c) < start_key(&p) {
                tracing::debug!(elapsed = ?started.elapsed(), "the components start is cheaper");
                p = c;
                seeded = true;
            }
        }
    }
    // 3. Refine.
    // The graph partitioner's cut needs little polish: two rounds take
    // what single moves can (at 1M devices the next two took 0.02% more
    // copies off for 0.5 s).
    let rounds = if seeded {
        opts.rounds.min(2)
    } else {
        opts.rounds
    };
    let mut refine_moves = p.refine(rounds, opts.seed);
    tracing::debug!(elapsed = ?started.elapsed(), refine_moves, "refined");
    let nets = p.net_moves(&subscribers, 64);
    tracing::debug!(elapsed = ?started.elapsed(), nets, "net moves");
    if !inst.together.is_empty() {
        let together = p.together_moves(4096);
        refine_moves += p.refine(1, opts.seed ^ 0x7061_6972);
        tracing::debug!(elapsed = ?started.elapsed(), together, "soft-preference moves");
    }
    // Group moves (look-alike devices of a shard together), then a round
    // of single moves and net moves with larger pieces: a coarse level.
    let passes = if inst.subs.len() <= THOROUGH_MAX_SUBSCRIPTIONS {
        3
    } else {
        0
    };
    for pass in 0..passes {
        let groups = p.group_moves(4096);
        tracing::debug!(elapsed = ?started.elapsed(), groups, "group moves");
        if groups == 0 {
            break;
        }
        refine_moves += p.refine(1, opts.seed ^ pass);
        p.net_moves(&subscribers, 4096);
        if !inst.together.is_empty() {
            p.together_moves(4096);
        }
    }
    // 4. Merge quiet shards.
    let merged = p.merge_quiet();
    if merged > 0 {
        refine_moves += p.refine(opts.rounds.min(2), opts.seed ^ 0x9e37_79b9);
    }
    if p.deferred > 0 {
        warnings.push(format!(
            "migration budget of {} devices reached: {} moves wait for the next cycle",
            inst.resources.max_migrations, p.deferred
        ));
    }
    tracing::debug!(elapsed = ?started.elapsed(), merged, "merged");
    // 5. Repair: what the steps above left over capacity or over the
    //    fan-out is split and folded again while that helps.
    for _ in 0..3 {
        let before = (p.overloaded(), p.widest());
        if before.0 == 0 && before.1 <= MAX_ROUTE_SHARDS {
            break;
        }
        p.enforce_fanout(&subscribers);
        p.split_overloaded(&keys);
        p.relieve_overloaded(&subscribers);
        p.enforce_fanout(&subscribers);
        if (p.overloaded(), p.widest()) >= before {
            break;
        }
    }
    let cost = p.cost();
    tracing::debug!(elapsed = ?started.elapsed(), "costed");
    // Bounded inputs keep every term finite; should one still overflow, a
    // plan priced at infinity is no plan.
    if !cost.total.is_finite() {
        return Err(PlannerError::NonFiniteCost);
    }
    if cost.shards > inst.resources.max_shards as usize {
        // Only the policy's boundaries open shards past the limit.
        return Err(PlannerError::BoundaryShards {
            shards: cost.shards,
            max_shards: inst.resources.max_shards,
            classes: inst.class_names.len(),
        });
    }
    for (t, pins) in p.pins.iter().enumerate() {
        if pins.len() > MAX_ROUTE_SHARDS {
            return Err(PlannerError::FanOut {
                topic: inst.topics[t].clone(),
                shards: pins.len(),
            });
        }
    }
    if cost.overloaded_shards > 0 {
        let worst = p.worst_ratio();
        if !opts.best_effort {
            return Err(PlannerError::Overloaded {
                shards: cost.overloaded_shards,
                worst,
                active: cost.shards,
                max_shards: inst.resources.max_shards,
                blocking: p.blocking_topic().map(|t| inst.topics[t as usize].clone()),
            });
        }
        warnings.push(format!(
            "{} shard(s) stay above usable capacity ({:.1} msg/s over, the worst at {:.2}x; max_shards {})",
            cost.overloaded_shards,
            cost.overload,
            worst,
            inst.resources.max_shards
        ));
    }
    let Emitted {
        plan,
        assignment,
        loads,
        created,
    } = p.emit(current, specs)?;
    Ok(Outcome {
        plan,
        cost,
        assignment,
        loads,
        created,
        merged,
        refine_moves,
        warnings,
        elapsed: started.elapsed(),
    })
}

/// How a start compares: fewer topics over the fan-out, then fewer shards
/// over capacity, then the lower cost.
fn start_key(p: &Partition) -> (usize, usize, f64) {
    let c = p.cost();
    (
        p.pins.iter().filter(|q| q.len() > MAX_ROUTE_SHARDS).count(),
        c.overloaded_shards,
        c.total,
    )
}

/// The cost of an arbitrary assignment (device index -> shard 0..k) of
/// `inst`, e.g. another partitioner's, under the same model.
pub fn evaluate(inst: &Instance, assignment: &[u32]) -> Cost {
    let mut p = Partition::new(inst);
    let k = assignment.iter().copied().max().map_or(0, |m| m + 1);
    for _ in 0..k {
        p.open();
    }
    for (d, &s) in assignment.iter().enumerate() {
        p.place(d, s);
    }
    p.cost()
}

/// Sort key grouping devices that share topics: (most-shared topic,
/// least-shared topic, seeded hash).
pub(crate) fn cluster_keys(
    inst: &Instance,
    subscribers: &Subscribers,
    seed: u64,
) -> Vec<(u32, u32, u64)> {
    (0..inst.devices.len())
        .map(|d| {
            let subs = inst.subscriptions(d);
            let coarse = subs
                .iter()
                .max_by_key(|&&t| (subscribers.count(t), std::cmp::Reverse(t)))
                .copied()
                .unwrap_or(NONE);
            let fine = subs
                .iter()
                .min_by_key(|&&t| (subscribers.count(t), t))
                .copied()
                .unwrap_or(NONE);
            (coarse, fine, mix(seed ^ d as u64))
        })
        .collect()
}

/// A test instance: `topics` as (name, rate), `devices` as the names of
/// the topics each subscribes to (ids d0, d1, ...); capacity 1000, at most
/// 64 shards.
#[cfg(test)]
pub(crate) fn test_instance(topics: &[(&str, f64)], devices: &[Vec<&str>]) -> Instance {
    let topics: Vec<String> = topics
        .iter()
        .map(|(n, r)| format!(r#"{{"name": "{n}", "rate": {r}}}"#))
        .collect();
    let devices: Vec<String> = devices
        .iter()
        .enumerate()
        .map(|(i, subs)| {
            let subs: Vec<String> = subs.iter().map(|s| format!("\"{s}\"")).collect();
            format!(r#"{{"id": "d{i}", "subscriptions": [{}]}}"#, subs.join(","))
        })
        .collect();
    serde_json::from_str::<crate::workload::Workload>(&format!(
        r#"{{"resources": {{"shard_capacity": 1000, "max_shards": 64, "egress": "eth1"}},
            "topics": [{}], "devices": [{}]}}"#,
        topics.join(","),
        devices.join(",")
    ))
    .expect("test workload parses")
    .index()
    .expect("test workload is valid")
}

/// SplitMix64: a cheap, well-distributed hash for seeded orders (the
/// planner's, and the simulator's static sharding by site).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Workload, WorkloadError};
    use shardcast_plan::DeviceError;
    use std::collections::BTreeSet;

    fn tiny() -> Instance {
        serde_json::from_str::<Workload>(
            r#"{
              "resources": {"shard_capacity": 100, "max_shards": 4, "egress": "eth1"},
              "topics": [{"name": "a", "rate": 10}, {"name": "b", "rate": 5}],
              "devices": [
                {"id": "d1", "subscriptions": ["a", "b"]},
                {"id": "d2", "subscriptions": ["b"]},
                {"id": "d3", "subscriptions": ["a"]}
              ]
            }"#,
        )
        .unwrap()
        .index()
        .unwrap()
    }

    #[test]
    fn cost_matches_hand_computation() {
        let inst = tiny();
        let mut p = Partition::new(&inst);
        let (x, y) = (p.open(), p.open());
        p.place(0, x);
        p.place(1, x);
        p.place(2, y);
        let c = p.cost();
        // X holds a and b (15 msg/s), Y holds a (10): a is copied once.
        assert_eq!((c.max_load, c.copies, c.max_fanout), (15.0, 10.0, 2));
        // d2 receives a's 10 msg/s without subscribing to it.
        assert!((c.wasted - 10.0).abs() < 1e-9);
        let latency = 15.0 * 0.15 / 0.85 + 10.0 * 0.1 / 0.9;
        assert!((c.latency - latency).abs() < 1e-9);
        let total = 10.0 + 0.001 * 10.0 + 0.1 * latency + 2.0 * 50.0;
        assert!((c.total - total).abs() < 1e-9, "{} vs {total}", c.total);
        assert_eq!((c.shards, c.overloaded_shards, c.migrations), (2, 0, 0));
        // The incremental delta agrees with recomputing: move d3 to X.
        let (d, _) = p.delta(2, x).unwrap();
        p.move_to(2, x);
        assert!((p.cost().total - (total + d)).abs() < 1e-9);
        // One shard: no copies, no latency beyond X's, one shard cost.
        assert_eq!(p.cost().copies, 0.0);
    }

    #[test]
    fn net_moves_take_a_topics_last_subscribers_together() {
        // x (10 msg/s) has two subscribers in A and five in B; y (1 msg/s)
        // keeps a third device in A. No single device gains by moving (x
        // stays in A while the other remains); the pair together removes
        // x's copy into A.
        let inst = serde_json::from_str::<Workload>(
            r#"{
              "resources": {"shard_capacity": 100, "max_shards": 4, "egress": "eth1"},
              "topics": [{"name": "x", "rate": 10}, {"name": "y", "rate": 1}],
              "devices": [
                {"id": "a1", "subscriptions": ["x", "y"]},
                {"id": "a2", "subscriptions": ["x", "y"]},
                {"id": "a3", "subscriptions": ["y"]},
                {"id": "b1", "subscriptions": ["x", "y"]},
                {"id": "b2", "subscriptions": ["x", "y"]},
                {"id": "b3", "subscriptions": ["x", "y"]},
                {"id": "b4", "subscriptions": ["x", "y"]},
                {"id": "b5", "subscriptions": ["x", "y"]}
              ]
            }"#,
        )
        .unwrap()
        .index()
        .unwrap();
        // a1..a3 in shard A, b1..b5 in shard B.
        let layout = || {
            let mut p = Partition::new(&inst);
            let (a, b) = (p.open(), p.open());
            (0..8).for_each(|d| p.place(d, if d < 3 { a } else { b }));
            (p, b)
        };
        let (mut p, b) = layout();
        let before = p.cost();
        assert_eq!(before.copies, 11.0);
        let mut cands = Vec::new();
        for d in 0..8 {
            assert!(
                p.best_move(d, &mut cands).is_none(),
                "device {d} moves alone"
            );
        }
        // Then y's last subscriber in A follows too (A empties: one shard
        // fewer, no copies at all).
        let subscribers = Subscribers::of(&inst);
        assert_eq!(p.net_moves(&subscribers, 64), 2);
        let after = p.cost();
        assert_eq!((after.copies, after.shards), (0.0, 1));
        assert!(after.total < before.total);
        assert!(p.assign.iter().all(|&s| s == b));
        // A group above the size limit is left alone.
        let (mut q, _) = layout();
        assert_eq!(q.net_moves(&subscribers, 1), 0);
        assert_eq!(q.cost().copies, 11.0);
    }

    #[test]
    fn overload_counts_above_usable_capacity() {
        let mut inst = tiny();
        inst.rates = vec![70.0, 20.0];
        let mut p = Partition::new(&inst);
        let x = p.open();
        for d in 0..3 {
            p.place(d, x);
        }
        let c = p.cost();
        assert_eq!((c.overload, c.overloaded_shards), (10.0, 1));
    }

    #[test]
    fn fan_out_repair_folds_the_smallest_pieces() {
        // "all" heard in MAX_ROUTE_SHARDS + 2 shards, the last of them
        // with two of its subscribers: two single-subscriber pieces move
        // into kept shards.
        let n = MAX_ROUTE_SHARDS + 2;
        let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let topics: Vec<(&str, f64)> = std::iter::once(("all", 1.0))
            .chain(names.iter().map(|t| (t.as_str(), 2.0)))
            .collect();
        let devices: Vec<Vec<&str>> = (0..=n)
            .map(|i| vec!["all", names[i.min(n - 1)].as_str()])
            .collect();
        let inst = test_instance(&topics, &devices);
        let mut p = Partition::new(&inst);
        for _ in 0..n {
            p.open();
        }
        for d in 0..=n {
            p.place(d, d.min(n - 1) as u32);
        }
        assert_eq!(p.pins[0].len(), n);
        let moved = p.enforce_fanout(&Subscribers::of(&inst));
        assert_eq!(p.pins[0].len(), MAX_ROUTE_SHARDS);
        // The two-subscriber piece stays; two single devices moved.
        assert_eq!(moved, 2);
        assert_eq!(p.pin(0, n as u32 - 1), 2);
        assert!(p.assign.iter().all(|&s| s != NONE));
        // Every count still agrees with a partition built from scratch.
        assert_eq!(p.cost(), evaluate(&inst, &p.assign));
    }

    #[test]
    fn fan_out_never_exceeds_the_data_plane() {
        // One topic everybody hears, one shard more of other traffic than
        // a route can name.
        let mut topics = vec![r#"{"name": "all", "rate": 0.1}"#.to_string()];
        let mut devices = Vec::new();
        for i in 0..=MAX_ROUTE_SHARDS {
            topics.push(format!(r#"{{"name": "t{i}", "rate": 70}}"#));
            devices.push(format!(
                r#"{{"id": "d{i}", "subscriptions": ["all", "t{i}"]}}"#
            ));
        }
        let w: Workload = serde_json::from_str(&format!(
            r#"{{"resources": {{"shard_capacity": 100, "max_shards": {}, "egress": "eth1"}},
                "topics": [{}], "devices": [{}]}}"#,
            2 * MAX_ROUTE_SHARDS,
            topics.join(","),
            devices.join(",")
        ))
        .unwrap();
        let inst = w.index().unwrap();
        // Each device needs a shard of its own (70 msg/s each, 80 usable),
        // but "all" may span only MAX_ROUTE_SHARDS: no plan exists, and
        // the bound says so.
        match plan(&inst, None, Options::default()) {
            Err(PlannerError::Infeasible(Infeasible::Topic { topic, shards, .. })) => {
                assert_eq!(
                    (topic.as_str(), shards),
                    ("all", MAX_ROUTE_SHARDS as u64 + 1)
                );
            }
            other => panic!("{:?}", other.map(|o| o.cost)),
        }
        // With best effort the last device shares a shard, overloading
        // it, rather than making a longer route.
        let best = Options {
            best_effort: true,
            ..Default::default()
        };
        let out = plan(&inst, None, best).unwrap();
        let all = out.plan.topics.iter().find(|t| t.name == "all").unwrap();
        assert_eq!(all.shards.len(), MAX_ROUTE_SHARDS);
        assert_eq!(out.cost.overloaded_shards, 1, "{:?}", out.cost);
        assert!(
            out.warnings
                .iter()
                .any(|w| w.contains("above usable capacity"))
        );
    }

    /// Topics `a`, `b`, `c` at `rates`, each followed by three devices of
    /// its own; shards of 100 without headroom; the current plan (shards
    /// 1 ..= the highest named) holds each topic's followers in `homes`.
    fn abc(rates: [f64; 3], homes: [u32; 3]) -> (Instance, shardcast_plan::Plan) {
        let topics = ["a", "b", "c"];
        let devices: Vec<String> = topics
            .iter()
            .flat_map(|t| {
                (0..3).map(move |i| format!(r#"{{"id": "{t}{i}", "subscriptions": ["{t}"]}}"#))
            })
            .collect();
        let inst = serde_json::from_str::<Workload>(&format!(
            r#"{{"resources": {{"shard_capacity": 100, "max_shards": 4, "headroom": 0,
                  "egress": "eth1"}},
                "topics": [{}],
                "devices": [{}]}}"#,
            topics
                .iter()
                .zip(rates)
                .map(|(t, r)| format!(r#"{{"name": "{t}", "rate": {r}}}"#))
                .collect::<Vec<_>>()
                .join(","),
            devices.join(",")
        ))
        .unwrap()
        .index()
        .unwrap();
        let shards = (1..=*homes.iter().max().unwrap())
            .map(|s| format!(r#"{{"id": {s}, "group_v4": "239.1.1.{s}", "egress": "eth1"}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let routes = topics
            .iter()
            .zip(homes)
            .map(|(t, s)| format!(r#"{{"name": "{t}", "shards": [{s}]}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let placed = topics
            .iter()
            .zip(homes)
            .flat_map(|(t, s)| (0..3).map(move |i| format!(r#"{{"id": "{t}{i}", "shard": {s}}}"#)))
            .collect::<Vec<_>>()
            .join(",");
        let current = shardcast_plan::Plan::from_json(&format!(
            r#"{{"generation": 1, "shards": [{shards}], "topics": [{routes}],
                "devices": [{placed}]}}"#
        ))
        .unwrap();
        (inst, current)
    }

    /// Shard 1 holds `a` (50) and `b` (30), shard 2 `c` (30); `b` rises
    /// to 60 and shard 1 must split. No shard holds `b` but shard 1, yet
    /// shard 2 has room for it: `b`'s followers go there, and no third
    /// shard opens for a load two shards carry.
    #[test]
    fn a_split_fills_a_shard_with_room_before_opening_one() {
        let (inst, current) = abc([50.0, 60.0, 30.0], [1, 1, 2]);
        let out = plan(&inst, Some(&current), Options::default()).unwrap();
        assert_eq!(out.plan.shards.len(), 2, "{:?}", out.plan.topics);
        assert_eq!(out.created, 0);
        assert_eq!(out.cost.overloaded_shards, 0, "{:?}", out.cost);
        let shards_of = |t: &str| {
            out.plan
                .topics
                .iter()
                .find(|x| x.name == t)
                .unwrap()
                .shards
                .clone()
        };
        assert_ne!(shards_of("a"), shards_of("b"));
    }

    /// One shard holding `a` (50), `b` (60) and `c` (60): the split opens
    /// a shard for `b`, then `c` fits neither and looks at every shard,
    /// the one just opened included, before opening a third.
    #[test]
    fn a_split_that_opens_shards_looks_at_them_too() {
        let (inst, current) = abc([50.0, 60.0, 60.0], [1, 1, 1]);
        let out = plan(&inst, Some(&current), Options::default()).unwrap();
        assert_eq!(out.plan.shards.len(), 3, "{:?}", out.plan.topics);
        assert_eq!(out.cost.overloaded_shards, 0, "{:?}", out.cost);
    }

    #[test]
    fn a_group_base_at_the_top_is_an_error_not_a_wrap() {
        let w: Workload = serde_json::from_str(
            r#"{"resources": {"shard_capacity": 100, "max_shards": 4, "egress": "eth1",
                "group_v6_base": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
                "topics": [{"name": "a", "rate": 10}],
                "devices": [{"id": "d1", "subscriptions": ["a"]}]}"#,
        )
        .unwrap();
        let inst = w.index().unwrap();
        assert!(matches!(
            plan(&inst, None, Options::default()),
            Err(PlannerError::GroupsExhausted { .. })
        ));
    }

    #[test]
    fn the_last_generation_is_an_error_and_registered_ids_are_kept() {
        let inst = tiny();
        let mut current = plan(&inst, None, Options::default()).unwrap().plan;
        let a = current.topics.iter_mut().find(|t| t.name == "a").unwrap();
        a.mqttsn_registered_ids = vec![300, 301];
        let next = plan(&inst, Some(&current), Options::default())
            .unwrap()
            .plan;
        let a = next.topics.iter().find(|t| t.name == "a").unwrap();
        assert_eq!(a.mqttsn_registered_ids, [300, 301]);
        assert_eq!(next.generation, current.generation + 1);
        current.generation = u64::MAX;
        assert_eq!(
            plan(&inst, Some(&current), Options::default()).unwrap_err(),
            PlannerError::GenerationExhausted
        );
    }

    /// Two service classes on the same topics: together they fit one
    /// shard; `separate_by = ["sla"]` puts each in its own, the shared
    /// topics copied to both; bad keys and attributes are refused by name.
    /// Device `d` (site A) follows `t` (rate 10, the site-B shard's) and
    /// `u` (rate 2, the site-A shard's): with the B shard it costs 2 in
    /// copies and one more location there, with the A shard 10 in copies.
    /// The soft preference flips it at weight 8.
    #[test]
    fn a_soft_preference_flips_a_placement_at_its_weight() {
        let placed = |weight: f64| {
            let mut devices = Vec::new();
            for i in 0..5 {
                devices.push(format!(
                    r#"{{"id": "a{i}", "subscriptions": ["u", "ta"], "location": "A"}}"#
                ));
                devices.push(format!(
                    r#"{{"id": "b{i}", "subscriptions": ["t", "tb"], "location": "B"}}"#
                ));
            }
            devices.push(r#"{"id": "d", "subscriptions": ["t", "u"], "location": "A"}"#.into());
            let inst = serde_json::from_str::<Workload>(&format!(
                r#"{{"resources": {{"shard_capacity": 100, "max_shards": 4, "headroom": 0,
                      "merge_below": 0.5, "egress": "eth1"}},
                    "cost": {{"wasted": 0, "latency": 0}},
                    "topics": [{{"name": "t", "rate": 10}}, {{"name": "u", "rate": 2}},
                               {{"name": "ta", "rate": 50}}, {{"name": "tb", "rate": 50}}],
                    "devices": [{}],
                    "policy": {{"prefer_together": [{{"key": "location", "weight": {weight}}}]}}}}"#,
                devices.join(",")
            ))
            .unwrap()
            .index()
            .unwrap();
            let out = plan(&inst, None, Options::default()).unwrap();
            let a = &out.assignment;
            assert_ne!(a[0], a[1], "sites apart");
            assert!(
                (out.cost.together - weight * (2.0 + (a[10] == a[1]) as u8 as f64)).abs() < 1e-9
            );
            if a[10] == a[0] { 'A' } else { 'B' }
        };
        assert_eq!(placed(0.0), 'B');
        assert_eq!(placed(7.0), 'B');
        assert_eq!(placed(9.0), 'A');
        assert_eq!(placed(100.0), 'A');
    }

    /// Two site-A devices follow only `tb2` (rate 5), which site B's
    /// devices follow too: with B's shard they cost nothing in copies and
    /// one site more there. Neither alone can take site A out of B's
    /// shard (the copy comes with the first, the gain with the last), so
    /// only moving both together finds the cheaper plan once the weight
    /// passes 5.
    #[test]
    fn a_soft_preference_moves_a_values_devices_together() {
        let placed = |weight: f64| {
            let mut devices = Vec::new();
            for i in 0..5 {
                devices.push(format!(
                    r#"{{"id": "a{i}", "subscriptions": ["ta"], "location": "A"}}"#
                ));
                devices.push(format!(
                    r#"{{"id": "b{i}", "subscriptions": ["tb", "tb2"], "location": "B"}}"#
                ));
            }
            for i in 0..2 {
                devices.push(format!(
                    r#"{{"id": "x{i}", "subscriptions": ["tb2"], "location": "A"}}"#
                ));
            }
            let inst = serde_json::from_str::<Workload>(&format!(
                r#"{{"resources": {{"shard_capacity": 100, "max_shards": 4, "headroom": 0,
                      "merge_below": 0.5, "egress": "eth1"}},
                    "cost": {{"wasted": 0, "latency": 0}},
                    "topics": [{{"name": "ta", "rate": 50}}, {{"name": "tb", "rate": 50}},
                               {{"name": "tb2", "rate": 5}}],
                    "devices": [{}],
                    "policy": {{"prefer_together": [{{"key": "location", "weight": {weight}}}]}}}}"#,
                devices.join(",")
            ))
            .unwrap()
            .index()
            .unwrap();
            let out = plan(&inst, None, Options::default()).unwrap();
            let a = &out.assignment;
            assert_eq!(a[10], a[11], "the two move together");
            if a[10] == a[0] { 'A' } else { 'B' }
        };
        assert_eq!(placed(0.0), 'B');
        assert_eq!(placed(4.0), 'B');
        assert_eq!(placed(20.0), 'A');
    }

    /// Premium shards keep their class's headroom (usable 50 of 100, best
    /// effort 80); when `max_shards` is short, the higher priority gets
    /// its shards and best effort absorbs the overload.
    #[test]
    fn class_headroom_and_priority() {
        let w = |max_shards: u32, be: usize| {
            let mut devices = Vec::new();
            let mut topics = Vec::new();
            for i in 0..be {
                topics.push(format!(r#"{{"name": "b{i}", "rate": 20}}"#));
                devices.push(format!(
                    r#"{{"id": "b{i}", "subscriptions": ["b{i}"], "sla": "be"}}"#
                ));
            }
            for i in 0..6 {
                topics.push(format!(r#"{{"name": "p{i}", "rate": 20}}"#));
                devices.push(format!(
                    r#"{{"id": "p{i}", "subscriptions": ["p{i}"], "sla": "gold"}}"#
                ));
            }
            serde_json::from_str::<Workload>(&format!(
                r#"{{"resources": {{"shard_capacity": 100, "max_shards": {max_shards}, "egress": "eth1"}},
                    "topics": [{}], "devices": [{}],
                    "policy": {{"separate_by": ["sla"],
                               "classes": {{"gold": {{"headroom": 0.5, "priority": 1}}}}}}}}"#,
                topics.join(","),
                devices.join(",")
            ))
            .unwrap()
            .index()
            .unwrap()
        };
        let inst = w(8, 4);
        assert_eq!(inst.class_usable, [80.0, 50.0]);
        let out = plan(&inst, None, Options::default()).unwrap();
        let gold: BTreeSet<u32> = out.assignment[4..].iter().copied().collect();
        assert_eq!(gold.len(), 3);
        for &s in &gold {
            assert!(out.loads[s as usize] <= 50.0);
            assert_eq!(
                out.plan.shards[s as usize].class.as_deref(),
                Some("sla=gold")
            );
        }
        // 4 shards for gold's 120 at 50 and best effort's 100 at 80: short.
        let short = w(4, 5);
        assert!(matches!(
            plan(&short, None, Options::default()),
            Err(PlannerError::Infeasible(Infeasible::ClassShards { .. }))
        ));
        let out = plan(
            &short,
            None,
            Options {
                best_effort: true,
                ..Options::default()
            },
        )
        .unwrap();
        assert!(out.cost.shards <= 4);
        for (d, &s) in out.assignment.iter().enumerate() {
            let gold = d >= 5;
            let over = out.loads[s as usize] > short.class_usable[gold as usize];
            assert_eq!(
                over, !gold,
                "device {d} in shard {s} at {}",
                out.loads[s as usize]
            );
        }
        assert!(!out.warnings.is_empty());
        // A latency target so tight no load fits is named.
        let mut bad = serde_json::from_str::<Workload>(
            r#"{"resources": {"shard_capacity": 100, "max_shards": 4, "egress": "eth1"},
                "topics": [{"name": "a", "rate": 1}],
                "devices": [{"id": "d1", "subscriptions": ["a"], "sla": "gold"}],
                "policy": {"separate_by": ["sla"], "classes": {"gold": {"latency_target_ms": 5}}}}"#,
        )
        .unwrap();
        assert!(matches!(
            bad.index(),
            Err(WorkloadError::ClassCapacity { .. })
        ));
        bad.policy
            .classes
            .get_mut("gold")
            .unwrap()
            .latency_target_ms = Some(20.0);
        assert_eq!(bad.index().unwrap().class_usable, [50.0]);
    }

    #[test]
    fn hard_boundaries_separate_classes() {
        let w = |policy: &str| {
            serde_json::from_str::<Workload>(&format!(
                r#"{{"resources": {{"shard_capacity": 100, "max_shards": 4, "egress": "eth1"}},
                    "topics": [{{"name": "a", "rate": 10}}, {{"name": "b", "rate": 5}}],
                    "devices": [
                      {{"id": "m1", "subscriptions": ["a", "b"], "sla": "premium", "location": "s1/b1"}},
                      {{"id": "m2", "subscriptions": ["a"], "sla": "premium", "location": "s1/b2"}},
                      {{"id": "t1", "subscriptions": ["a", "b"], "sla": "best-effort", "location": "s1/b1"}},
                      {{"id": "t2", "subscriptions": ["b"], "location": "s2/b1"}}
                    ]{policy}}}"#
            ))
            .unwrap()
            .index()
        };
        let free = plan(&w("").unwrap(), None, Options::default()).unwrap();
        assert_eq!(free.cost.shards, 1);
        let inst = w(r#", "policy": {"separate_by": ["sla"]}"#).unwrap();
        // premium, best-effort, and t2 (no class: its own).
        assert_eq!(inst.class_names.len(), 3, "{:?}", inst.class_names);
        assert_eq!(inst.class_names[0], "sla=premium");
        let out = plan(&inst, None, Options::default()).unwrap();
        let a = &out.assignment;
        assert_eq!(a[0], a[1]);
        assert_ne!(a[0], a[2]);
        assert_ne!(a[2], a[3]);
        assert_ne!(a[0], a[3]);
        assert!(out.cost.copies > 0.0);
        // location:1 keeps sites apart, location:2 buildings.
        let inst = w(r#", "policy": {"separate_by": ["location:1"]}"#).unwrap();
        assert_eq!(inst.class_names, ["location:1=s1", "location:1=s2"]);
        let inst = w(r#", "policy": {"separate_by": ["location:2"]}"#).unwrap();
        assert_eq!(inst.class_names.len(), 3);
        // Too many classes for max_shards: named.
        let inst = w(r#", "policy": {"separate_by": ["location"]}"#).unwrap();
        let mut few = inst.clone();
        few.resources.max_shards = 2;
        assert!(matches!(
            plan(&few, None, Options::default()),
            Err(PlannerError::Infeasible(Infeasible::ClassShards {
                classes: 3,
                ..
            }))
        ));
        for bad in ["color", "location:0", "location:x", "sla\", \"sla"] {
            let policy = format!(r#", "policy": {{"separate_by": ["{bad}"]}}"#);
            assert!(matches!(w(&policy), Err(WorkloadError::Policy(_))), "{bad}");
        }
        let bad_attr = serde_json::from_str::<Workload>(
            r#"{"resources": {"shard_capacity": 100, "max_shards": 4, "egress": "eth1"},
                "topics": [{"name": "a", "rate": 1}],
                "devices": [{"id": "d1", "subscriptions": ["a"], "sla": ""}]}"#,
        )
        .unwrap()
        .index();
        assert!(matches!(
            bad_attr,
            Err(WorkloadError::BadAttribute { field: "sla", .. })
        ));
    }

    #[test]
    fn workloads_with_bad_ids_and_huge_numbers_are_refused() {
        let w = |topics: &str, devices: &str| {
            serde_json::from_str::<Workload>(&format!(
                r#"{{"resources": {{"shard_capacity": 100, "max_shards": 4, "egress": "eth1"}},
                    "topics": [{topics}], "devices": [{devices}]}}"#
            ))
            .unwrap()
            .index()
        };
        let d = r#"{"id": "d1", "subscriptions": ["a"]}"#;
        assert!(matches!(
            w(r#"{"name": "a", "rate": 1, "mqttsn_predefined_id": 0}"#, d),
            Err(WorkloadError::ReservedPredefinedId { id: 0, .. })
        ));
        assert!(matches!(
            w(
                r#"{"name": "a", "rate": 1, "mqttsn_predefined_id": 7},
                   {"name": "b", "rate": 1, "mqttsn_predefined_id": 7}"#,
                d
            ),
            Err(WorkloadError::DuplicatePredefinedId { id: 7, .. })
        ));
        assert!(matches!(
            w(r#"{"name": "a", "rate": 1e308}"#, d),
            Err(WorkloadError::BadRate { .. })
        ));
        assert!(matches!(
            w(
                r#"{"name": "a", "rate": 1}"#,
                r#"{"id": "d1", "address": "239.0.0.1", "subscriptions": ["a"]}"#
            ),
            Err(WorkloadError::Device(DeviceError::NotUnicast { .. }))
        ));
        assert!(matches!(
            w(
                r#"{"name": "a", "rate": 1}"#,
                r#"{"id": "", "subscriptions": ["a"]}"#
            ),
            Err(WorkloadError::Device(DeviceError::BadId { index: 0, .. }))
        ));
    }
}

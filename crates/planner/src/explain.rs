//! Why a plan looks as it does (`router-ctl plan --explain`): per shard,
//! the classes and locations it holds and how full it is; per device, what
//! every other shard would cost it under the same cost model the planner
//! minimised, and which shards the policy rules out. The answers are
//! computed from the plan, not recorded while planning, so they also
//! explain a plan made by an earlier run.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{NONE, Outcome, partition::Partition, workload::Instance};

/// Locations listed per shard, the most populous first.
const LOCATIONS_SHOWN: usize = 5;

/// The explanation of one plan.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub shards: Vec<ShardWhy>,
    pub devices: Vec<DeviceWhy>,
}

/// What one shard holds.
#[derive(Clone, Debug, Serialize)]
pub struct ShardWhy {
    /// Shard id in the plan.
    pub id: u32,
    /// Boundary class of its members (empty without hard boundaries).
    pub class: String,
    pub devices: usize,
    pub load: f64,
    pub usable: f64,
    /// The most populous locations (`(location, devices)`), and how many
    /// distinct ones it holds in all.
    pub locations: Vec<(String, usize)>,
    pub distinct_locations: usize,
}

/// Why one device is where it is.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceWhy {
    pub device: String,
    pub shard: u32,
    pub class: String,
    /// Its topics: (name, rate, shard ids holding it).
    pub topics: Vec<(String, f64, Vec<u32>)>,
    /// Every other shard, the cheapest first: what moving there would do.
    pub alternatives: Vec<Alternative>,
}

/// Moving a device to another shard.
#[derive(Clone, Debug, Serialize)]
pub struct Alternative {
    pub shard: u32,
    /// Change of the plan's total cost (positive: the plan is cheaper as
    /// it is); `None` when the move is ruled out.
    pub cost_change: Option<f64>,
    /// The shard's load after the move, when allowed.
    pub load_after: Option<f64>,
    /// Why not: the hard boundary, the fan-out, or capacity.
    pub why_not: Option<String>,
}

/// Explains `out` (a plan of `inst`) for every shard and for the devices
/// named in `devices` (workload ids; an unknown id is an error naming it).
/// `locations` holds each workload device's location.
pub fn explain(
    inst: &Instance,
    out: &Outcome,
    locations: &[Option<&str>],
    devices: &[String],
) -> Result<Explanation, String> {
    let mut p = Partition::new(inst);
    for _ in 0..out.plan.shards.len() {
        p.open();
    }
    for (d, &s) in out.assignment.iter().enumerate() {
        p.place(d, s);
    }
    let id = |s: u32| out.plan.shards[s as usize].id;
    let mut shards = Vec::with_capacity(out.plan.shards.len());
    let mut by_shard: Vec<BTreeMap<&str, usize>> = vec![BTreeMap::new(); out.plan.shards.len()];
    for (d, &s) in out.assignment.iter().enumerate() {
        *by_shard[s as usize]
            .entry(locations.get(d).copied().flatten().unwrap_or(""))
            .or_default() += 1;
    }
    for (s, locs) in by_shard.iter().enumerate() {
        let mut top: Vec<(String, usize)> = locs.iter().map(|(l, &n)| (l.to_string(), n)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let distinct = top.len();
        top.truncate(LOCATIONS_SHOWN);
        let c = p.class[s];
        shards.push(ShardWhy {
            id: id(s as u32),
            class: if c == NONE {
                String::new()
            } else {
                inst.class_names[c as usize].clone()
            },
            devices: p.members[s] as usize,
            load: p.load[s],
            usable: p.usable(s as u32),
            locations: top,
            distinct_locations: distinct,
        });
    }
    let index: std::collections::HashMap<&str, usize> = inst
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    let mut whys = Vec::new();
    for name in devices {
        let &d = index
            .get(name.as_str())
            .ok_or_else(|| format!("device {name:?} is not in the workload"))?;
        let here = p.assign[d];
        let topics = inst
            .subscriptions(d)
            .iter()
            .map(|&t| {
                let mut held: Vec<u32> = p.pins[t as usize].iter().map(|&(s, _)| id(s)).collect();
                held.sort_unstable();
                (
                    inst.topics[t as usize].clone(),
                    inst.rates[t as usize],
                    held,
                )
            })
            .collect();
        let mut alternatives: Vec<Alternative> = (0..p.load.len() as u32)
            .filter(|&b| b != here && p.members[b as usize] > 0)
            .map(|b| {
                let ruled_out = |why: String| Alternative {
                    shard: id(b),
                    cost_change: None,
                    load_after: None,
                    why_not: Some(why),
                };
                if !p.admits(b, d) {
                    return ruled_out(format!(
                        "hard boundary: the shard holds class {:?}",
                        inst.class_names[p.class[b as usize] as usize]
                    ));
                }
                match p.delta(d, b) {
                    None => ruled_out(
                        "a topic of the device would span more shards than a route allows".into(),
                    ),
                    Some((c, after)) => Alternative {
                        shard: id(b),
                        cost_change: Some(c),
                        load_after: Some(after),
                        why_not: p.over(b, after).then(|| {
                            format!(
                                "capacity: {after:.1} msg/s above its usable {:.1}",
                                p.usable(b)
                            )
                        }),
                    },
                }
            })
            .collect();
        alternatives.sort_by(|a, b| {
            let key = |x: &Alternative| x.cost_change.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b)).then(a.shard.cmp(&b.shard))
        });
        whys.push(DeviceWhy {
            device: name.clone(),
            shard: id(here),
            class: inst.class_names[inst.class[d] as usize].clone(),
            topics,
            alternatives,
        });
    }
    Ok(Explanation {
        shards,
        devices: whys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, plan, workload::Workload};

    #[test]
    fn explains_classes_locations_and_the_price_of_each_move() {
        let w: Workload = serde_json::from_str(
            r#"{"resources": {"shard_capacity": 100, "max_shards": 4, "egress": "eth1"},
                "topics": [{"name": "a", "rate": 10}, {"name": "b", "rate": 5}],
                "devices": [
                  {"id": "m1", "subscriptions": ["a", "b"], "sla": "gold", "location": "s1/b1"},
                  {"id": "m2", "subscriptions": ["a"], "sla": "gold", "location": "s1/b2"},
                  {"id": "t1", "subscriptions": ["a"], "sla": "be", "location": "s1/b1"},
                  {"id": "t2", "subscriptions": ["b"], "sla": "be", "location": "s2/b1"}
                ],
                "policy": {"separate_by": ["sla"]}}"#,
        )
        .unwrap();
        let inst = w.index().unwrap();
        let out = plan(&inst, None, Options::default()).unwrap();
        let locs: Vec<Option<&str>> = w.devices.iter().map(|d| d.location.as_deref()).collect();
        let e = explain(&inst, &out, &locs, &["m2".into(), "t1".into()]).unwrap();
        assert_eq!(e.shards.len(), 2);
        let gold = e.shards.iter().find(|s| s.class == "sla=gold").unwrap();
        assert_eq!(gold.devices, 2);
        assert_eq!(gold.distinct_locations, 2);
        assert_eq!(gold.load, 15.0);
        let m2 = &e.devices[0];
        assert_eq!(m2.class, "sla=gold");
        assert_eq!(m2.alternatives.len(), 1);
        assert!(
            m2.alternatives[0]
                .why_not
                .as_ref()
                .unwrap()
                .contains("hard boundary")
        );
        assert_eq!(m2.topics[0].0, "a");
        assert_eq!(m2.topics[0].2.len(), 2, "a is held by both shards");
        assert!(explain(&inst, &out, &locs, &["nobody".into()]).is_err());
        // Without boundaries one shard holds all; a device put in a shard
        // of its own is told that going back saves its copy and a shard.
        let mut free = w.clone();
        free.policy = Default::default();
        let inst = free.index().unwrap();
        let mut out = plan(&inst, None, Options::default()).unwrap();
        assert_eq!(out.plan.shards.len(), 1);
        out.plan.shards.push(shardcast_plan::ShardSpec {
            id: 99,
            ..out.plan.shards[0].clone()
        });
        out.assignment[3] = 1;
        let e = explain(&inst, &out, &locs, &["t2".into()]).unwrap();
        let alt = &e.devices[0].alternatives[0];
        assert_eq!(alt.shard, out.plan.shards[0].id);
        assert!(alt.why_not.is_none());
        let saved = -alt.cost_change.unwrap();
        let w = inst.weights;
        assert!(saved > w.copies * 5.0 + w.shard - 1.0, "{saved}");
    }
}

//! Make-before-break: while devices move from one plan's shards to the
//! next's, every topic is routed to its shards in the new plan *and* to
//! the shards the still-moving devices are leaving (where the old plan
//! routed it), so a device receives its topics in its old group until it
//! has joined the new one and confirmed. As devices confirm, their old
//! shards drop out of the routes; with nobody left moving the transition
//! is the new plan.
//!
//! A device still in its old shard can be sent a topic it does not follow
//! (its shard-mates moved, the topic stays): devices filter by
//! subscription, and nothing a device follows is ever missing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use router_common::maps::MAX_ROUTE_SHARDS;

use crate::Plan;

/// A device changing shard between two plans.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Move {
    pub device: String,
    pub from: u32,
    pub to: u32,
}

/// Why no transition plan can be built: the caller installs the new plan
/// directly (break-before-make) and says so.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error(
        "topic {topic:?} would need {shards} shards while devices move (at most {MAX_ROUTE_SHARDS})"
    )]
    TooManyShards { topic: String, shards: usize },
    #[error("shard {0} changes its group or egress while devices are leaving it")]
    ShardChanged(u32),
}

/// The devices whose shard differs between `old` and `new` (devices in
/// only one of them are not moving: they join or leave).
pub fn moves(old: &Plan, new: &Plan) -> Vec<Move> {
    let before: HashMap<&str, u32> = old
        .devices
        .iter()
        .map(|d| (d.id.as_str(), d.shard))
        .collect();
    let mut out: Vec<Move> = new
        .devices
        .iter()
        .filter_map(|d| {
            let from = *before.get(d.id.as_str())?;
            (from != d.shard).then(|| Move {
                device: d.id.clone(),
                from,
                to: d.shard,
            })
        })
        .collect();
    out.sort();
    out
}

/// The devices `new` places and `old` does not: each must be told its
/// shard (a device registered after `old` was made). Written as moves
/// from their new shard to itself (`from == to`): there is no old route
/// to keep for them.
pub fn joins(old: &Plan, new: &Plan) -> Vec<Move> {
    let before: BTreeSet<&str> = old.devices.iter().map(|d| d.id.as_str()).collect();
    let mut out: Vec<Move> = new
        .devices
        .iter()
        .filter(|d| !before.contains(d.id.as_str()))
        .map(|d| Move {
            device: d.id.clone(),
            from: d.shard,
            to: d.shard,
        })
        .collect();
    out.sort();
    out
}

/// `new`, with every topic also routed to the shards `moving` devices
/// leave, where `old` routed it there. Same generation as `new`. Joins
/// (`from == to`) leave nothing.
pub fn transition(old: &Plan, new: &Plan, moving: &[Move]) -> Result<Plan, TransitionError> {
    let sources: BTreeSet<u32> = moving
        .iter()
        .filter(|m| m.from != m.to)
        .map(|m| m.from)
        .collect();
    let mut out = new.clone();
    if sources.is_empty() {
        return Ok(out);
    }
    // Shards being left stay in the plan, as they were.
    for s in old.shards.iter().filter(|s| sources.contains(&s.id)) {
        match out.shards.iter().find(|n| n.id == s.id) {
            Some(n)
                if n.group_v4 != s.group_v4
                    || n.group_v6 != s.group_v6
                    || n.egress != s.egress
                    || n.port != s.port =>
            {
                return Err(TransitionError::ShardChanged(s.id));
            }
            Some(_) => {}
            None => out.shards.push(s.clone()),
        }
    }
    let old_routes: HashMap<&str, &Vec<u32>> = old
        .topics
        .iter()
        .map(|t| (t.name.as_str(), &t.shards))
        .collect();
    for t in &mut out.topics {
        if let Some(was) = old_routes.get(t.name.as_str()) {
            for s in was.iter().filter(|s| sources.contains(s)) {
                if !t.shards.contains(s) {
                    t.shards.push(*s);
                }
            }
        }
        if t.shards.len() > MAX_ROUTE_SHARDS {
            return Err(TransitionError::TooManyShards {
                topic: t.name.clone(),
                shards: t.shards.len(),
            });
        }
    }
    // Topics the new plan drops but a moving device may still follow:
    // kept on the shards being left.
    let kept: BTreeMap<&str, Vec<u32>> = old
        .topics
        .iter()
        .filter(|t| !out.topics.iter().any(|n| n.name == t.name))
        .filter_map(|t| {
            let s: Vec<u32> = t
                .shards
                .iter()
                .copied()
                .filter(|s| sources.contains(s))
                .collect();
            (!s.is_empty()).then_some((t.name.as_str(), s))
        })
        .collect();
    for t in old.topics.iter() {
        if let Some(s) = kept.get(t.name.as_str()) {
            let mut t = t.clone();
            t.shards = s.clone();
            out.topics.push(t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceSpec, ShardSpec, TopicSpec};

    fn shard(id: u32) -> ShardSpec {
        ShardSpec {
            id,
            group_v4: Some(format!("239.1.0.{id}")),
            group_v6: None,
            egress: "eth0".into(),
            port: None,
            capacity: None,
            class: None,
        }
    }

    fn plan(generation: u64, devices: &[(&str, u32)], topics: &[(&str, &[u32])]) -> Plan {
        let mut shards: BTreeSet<u32> = devices.iter().map(|d| d.1).collect();
        shards.extend(topics.iter().flat_map(|t| t.1.iter().copied()));
        Plan {
            generation,
            shards: shards.into_iter().map(shard).collect(),
            devices: devices
                .iter()
                .map(|(id, s)| DeviceSpec {
                    id: id.to_string(),
                    address: None,
                    shard: *s,
                    group: None,
                })
                .collect(),
            topics: topics
                .iter()
                .map(|(n, s)| TopicSpec {
                    name: n.to_string(),
                    shards: s.to_vec(),
                    mqttsn_predefined_id: None,
                    mqttsn_registered_ids: vec![],
                })
                .collect(),
            policy: Default::default(),
        }
    }

    #[test]
    fn devices_placed_for_the_first_time_join_and_keep_no_old_route() {
        let old = plan(1, &[("a", 1)], &[("t", &[1]), ("u", &[2])]);
        let new = plan(2, &[("a", 1), ("b", 2)], &[("t", &[1, 2]), ("u", &[3])]);
        let j = joins(&old, &new);
        assert_eq!(
            j,
            [Move {
                device: "b".into(),
                from: 2,
                to: 2
            }]
        );
        assert!(moves(&old, &new).is_empty());
        // A join leaves no shard: `u` is not routed to 2 any more.
        assert_eq!(transition(&old, &new, &j).unwrap(), new);
    }

    #[test]
    fn moving_devices_keep_their_old_routes_until_they_confirm() {
        let old = plan(
            1,
            &[("a", 1), ("b", 1), ("c", 2)],
            &[("t", &[1, 2]), ("u", &[1]), ("gone", &[1])],
        );
        let new = plan(
            2,
            &[("a", 3), ("b", 1), ("c", 3)],
            &[("t", &[1, 3]), ("u", &[3])],
        );
        let m = moves(&old, &new);
        assert_eq!(
            m,
            [
                Move {
                    device: "a".into(),
                    from: 1,
                    to: 3
                },
                Move {
                    device: "c".into(),
                    from: 2,
                    to: 3
                },
            ]
        );
        let tr = transition(&old, &new, &m).unwrap();
        assert_eq!(tr.generation, 2);
        let route = |p: &Plan, n: &str| {
            let mut s = p
                .topics
                .iter()
                .find(|t| t.name == n)
                .unwrap()
                .shards
                .clone();
            s.sort();
            s
        };
        assert_eq!(route(&tr, "t"), [1, 2, 3]);
        assert_eq!(route(&tr, "u"), [1, 3]);
        assert_eq!(route(&tr, "gone"), [1]);
        assert!(tr.compile().is_ok());
        // `c` confirmed: shard 2 drops out.
        let tr = transition(&old, &new, &m[..1]).unwrap();
        assert_eq!(route(&tr, "t"), [1, 3]);
        assert!(tr.shards.iter().all(|s| s.id != 2));
        // Nobody moving: the new plan.
        assert_eq!(transition(&old, &new, &[]).unwrap(), new);
    }

    #[test]
    fn impossible_transitions_are_named() {
        let wide: Vec<u32> = (1..=16).collect();
        let old = plan(1, &[("a", 17)], &[("t", &[17])]);
        let new = plan(2, &[("a", 1)], &[("t", &wide)]);
        let e = transition(&old, &new, &moves(&old, &new)).unwrap_err();
        assert_eq!(
            e,
            TransitionError::TooManyShards {
                topic: "t".into(),
                shards: 17
            }
        );
        let old = plan(1, &[("a", 1)], &[("t", &[1])]);
        let mut new = plan(2, &[("a", 2)], &[("t", &[1, 2])]);
        new.shards[0].group_v4 = Some("239.9.9.9".into());
        assert_eq!(
            transition(&old, &new, &moves(&old, &new)).unwrap_err(),
            TransitionError::ShardChanged(1)
        );
    }
}

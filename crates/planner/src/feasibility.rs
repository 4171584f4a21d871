//! Lower bounds that prove a workload has no plan within capacity, checked
//! before planning so that an impossible fleet is named as such (with the
//! bound that rules it out) instead of being planned into overloaded
//! shards.
//!
//! In the load model a shard's load is the rate of every topic it holds a
//! subscriber of, so:
//!
//! - a device alone puts the rate of all its topics on its shard: above
//!   usable capacity, no shard can take it;
//! - every topic is carried by at least one shard: the total rate over
//!   usable capacity is a lower bound on the shards;
//! - the subscribers of a topic `t` (rate `r`) lie in some `k` shards, each
//!   carrying `r` and, together, every topic those subscribers follow
//!   (total rate `R`, `t` included): `k (C - r) >= R - r`, so they need
//!   `k >= (R - r) / (C - r)` shards; and devices no two of which fit one
//!   shard together (with `t`) need a shard each. A route names at most
//!   [`MAX_ROUTE_SHARDS`].

use router_common::maps::MAX_ROUTE_SHARDS;
use serde::Serialize;

use crate::{subscribers::Subscribers, workload::Instance};

/// Why no plan keeps every shard within usable capacity.
#[derive(Clone, Debug, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Infeasible {
    #[error(
        "device {device:?} alone needs {load:.3} msg/s (the rates of its topics), above a shard's usable capacity of {usable:.3}"
    )]
    Device {
        device: String,
        load: f64,
        usable: f64,
    },
    #[error(
        "the topics' total rate {total:.3} msg/s needs at least {shards} shards of usable capacity {usable:.3}; max_shards is {max_shards}"
    )]
    Shards {
        total: f64,
        usable: f64,
        shards: u64,
        max_shards: u32,
    },
    #[error(
        "the policy's {classes} boundary classes need at least {shards} shards of usable capacity {usable:.3} (each class its own, the most, {class:?}, at least {class_shards}); max_shards is {max_shards}"
    )]
    ClassShards {
        classes: usize,
        shards: u64,
        class: String,
        class_shards: u64,
        usable: f64,
        max_shards: u32,
    },
    #[error(
        "topic {topic:?} is followed by devices of {classes} boundary classes (e.g. {example:?}); each class needs its own shard and a route spans at most {MAX_ROUTE_SHARDS}"
    )]
    TopicClasses {
        topic: String,
        classes: usize,
        example: String,
    },
    #[error(
        "topic {topic:?} ({rate:.3} msg/s) is followed by {subscribers} devices whose topics total {reach:.3} msg/s: with it in every shard they share, they need at least {shards} shards of usable capacity {usable:.3}, and a route spans at most {MAX_ROUTE_SHARDS}"
    )]
    Topic {
        topic: String,
        rate: f64,
        subscribers: u32,
        reach: f64,
        shards: u64,
        usable: f64,
    },
}

/// Relative slack on the bounds: rates that fill shards exactly must not be
/// called infeasible by rounding.
const SLACK: f64 = 1e-9;

/// The first bound `inst` violates, if any (the per-topic bound for the
/// topic that needs the most shards).
pub(crate) fn check(inst: &Instance, subscribers: &Subscribers) -> Option<Infeasible> {
    // Bounds over all shards take the most any class's shard may carry.
    let usable = inst.class_usable.iter().copied().fold(0.0, f64::max);
    let limit = usable * (1.0 + SLACK);
    // Each device's own load, once: the per-topic bound reads it again.
    let own: Vec<f64> = (0..inst.devices.len())
        .map(|d| {
            inst.subscriptions(d)
                .iter()
                .map(|&t| inst.rates[t as usize])
                .sum()
        })
        .collect();
    let class_usable = |d: usize| inst.class_usable[inst.class[d] as usize];
    if let Some((d, load)) = own
        .iter()
        .copied()
        .enumerate()
        .filter(|&(d, l)| l > class_usable(d) * (1.0 + SLACK))
        .max_by(|a, b| a.1.total_cmp(&b.1))
    {
        return Some(Infeasible::Device {
            device: inst.devices[d].clone(),
            load,
            usable: class_usable(d),
        });
    }
    // Topics with no subscriber are routed nowhere and load no shard.
    let nt = inst.topics.len();
    let total: f64 = (0..nt as u32)
        .filter(|&t| subscribers.count(t) > 0)
        .map(|t| inst.rates[t as usize])
        .sum();
    let shards = (total / limit).ceil() as u64;
    if shards > inst.resources.max_shards as u64 {
        return Some(Infeasible::Shards {
            total,
            usable,
            shards,
            max_shards: inst.resources.max_shards,
        });
    }
    // With hard boundaries each class needs its own shards: the sum of
    // the classes' bounds.
    let nc = inst.class_names.len();
    if nc > 1 {
        let mut need = 0u64;
        let mut most = (0u64, 0usize);
        for (c, &total) in inst.class_rate.iter().enumerate() {
            let k = (total / (inst.class_usable[c] * (1.0 + SLACK))).ceil() as u64;
            need += k.max(1);
            if k > most.0 {
                most = (k, c);
            }
        }
        if need > inst.resources.max_shards as u64 {
            return Some(Infeasible::ClassShards {
                classes: nc,
                shards: need,
                class: inst.class_names[most.1].clone(),
                class_shards: most.0,
                usable: inst.class_usable[most.1],
                max_shards: inst.resources.max_shards,
            });
        }
        // A topic's followers of c classes need c shards at least.
        for t in 0..nt as u32 {
            let mut cs: Vec<u32> = subscribers
                .of_topic(t)
                .iter()
                .map(|&d| inst.class[d as usize])
                .collect();
            cs.sort_unstable();
            cs.dedup();
            if cs.len() > MAX_ROUTE_SHARDS {
                return Some(Infeasible::TopicClasses {
                    topic: inst.topics[t as usize].clone(),
                    classes: cs.len(),
                    example: inst.class_names[cs[0] as usize].clone(),
                });
            }
        }
    }
    // R_t for every topic whose bound could exceed the fan-out: the union
    // of its subscribers' topics, marked with the topic's index.
    let mut seen = vec![u32::MAX; nt];
    let mut worst: Option<Infeasible> = None;
    for t in 0..nt as u32 {
        let n = subscribers.count(t);
        let r = inst.rates[t as usize];
        if n == 0 || r <= 0.0 {
            continue;
        }
        let mut reach = 0.0;
        for &d in subscribers.of_topic(t) {
            for &u in inst.subscriptions(d as usize) {
                if seen[u as usize] != t {
                    seen[u as usize] = t;
                    reach += inst.rates[u as usize];
                }
            }
        }
        // r itself fits (no device is over capacity), so C - r > 0.
        let fractional = ((reach - r) / (limit - r)).ceil().max(1.0) as u64;
        let need = fractional.max(apart(
            inst,
            &own,
            subscribers.of_topic(t),
            limit,
            MAX_ROUTE_SHARDS + 1,
        ));
        if need > MAX_ROUTE_SHARDS as u64
            && worst.as_ref().is_none_or(|w| match w {
                Infeasible::Topic { shards, .. } => need > *shards,
                _ => false,
            })
        {
            worst = Some(Infeasible::Topic {
                topic: inst.topics[t as usize].clone(),
                rate: r,
                subscribers: n,
                reach,
                shards: need,
                usable,
            });
        }
    }
    worst
}

/// How many of `devices` (up to `enough`) were found no two of which fit
/// one shard together: a greedy set of pairwise incompatible devices, the
/// heaviest first. Only devices above half of `limit` can be incompatible
/// with a device like them, so the rest are not looked at.
fn apart(inst: &Instance, own: &[f64], devices: &[u32], limit: f64, enough: usize) -> u64 {
    let load = |subs: &[u32]| -> f64 { subs.iter().map(|&t| inst.rates[t as usize]).sum() };
    let mut heavy: Vec<(f64, u32)> = devices
        .iter()
        .map(|&d| (own[d as usize], d))
        .filter(|&(l, _)| l > limit / 2.0)
        .collect();
    if heavy.len() <= 1 {
        return heavy.len() as u64;
    }
    heavy.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut picked: Vec<u32> = Vec::new();
    let mut union: Vec<u32> = Vec::new();
    for &(_, d) in &heavy {
        let mut fits_with = |e: u32| {
            union.clear();
            union.extend_from_slice(inst.subscriptions(d as usize));
            union.extend_from_slice(inst.subscriptions(e as usize));
            union.sort_unstable();
            union.dedup();
            load(&union) <= limit
        };
        if picked.iter().all(|&e| !fits_with(e)) {
            picked.push(d);
            if picked.len() >= enough {
                break;
            }
        }
    }
    picked.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_instance;

    #[test]
    fn a_fleet_that_fits_passes() {
        let inst = test_instance(
            &[("a", 100.0), ("b", 300.0)],
            &[vec!["a"], vec!["a", "b"], vec!["b"]],
        );
        assert_eq!(check(&inst, &Subscribers::of(&inst)), None);
    }

    #[test]
    fn a_device_above_capacity_is_named() {
        // Usable capacity 800 (1000, 20% headroom).
        let inst = test_instance(&[("a", 500.0), ("b", 400.0)], &[vec!["a"], vec!["a", "b"]]);
        let e = check(&inst, &Subscribers::of(&inst)).unwrap();
        assert!(
            matches!(&e, Infeasible::Device { device, .. } if device == "d1"),
            "{e}"
        );
    }

    #[test]
    fn too_few_shards_is_named_with_the_bound() {
        // 65 topics of 790 msg/s, one device each: 65 shards, max 64.
        let names: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        let topics: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 790.0)).collect();
        let devices: Vec<Vec<&str>> = names.iter().map(|n| vec![n.as_str()]).collect();
        let inst = test_instance(&topics, &devices);
        let e = check(&inst, &Subscribers::of(&inst)).unwrap();
        assert!(
            matches!(
                e,
                Infeasible::Shards {
                    shards: 65,
                    max_shards: 64,
                    ..
                }
            ),
            "{e}"
        );
        // One fewer fits exactly (64 shards of 790 within 800).
        let inst = test_instance(&topics[..64], &devices[..64]);
        assert_eq!(check(&inst, &Subscribers::of(&inst)), None);
    }

    #[test]
    fn a_topic_whose_followers_need_more_shards_than_a_route_names() {
        // "all" (400 msg/s) is followed by 20 devices that each follow
        // their own 390 msg/s topic: with "all" in every shard of theirs,
        // each shard takes at most one of them (400 + 2 * 390 > 800), so
        // they need 20 shards; 16 is the fan-out.
        let names: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        let mut topics: Vec<(&str, f64)> = vec![("all", 400.0)];
        topics.extend(names.iter().map(|n| (n.as_str(), 390.0)));
        let devices: Vec<Vec<&str>> = names.iter().map(|n| vec!["all", n.as_str()]).collect();
        let inst = test_instance(&topics, &devices);
        let e = check(&inst, &Subscribers::of(&inst)).unwrap();
        match &e {
            Infeasible::Topic {
                topic,
                shards,
                subscribers,
                ..
            } => {
                assert_eq!((topic.as_str(), *shards, *subscribers), ("all", 20, 20));
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("at least 20 shards"), "{e}");
        // Where the fractional bound is met but no two followers fit a
        // shard together: 17 devices of 70 + 0.1 msg/s, 80 usable... here
        // with capacity 1000: "all" at 0.1 and 17 topics of 700.
        let names: Vec<String> = (0..17).map(|i| format!("u{i}")).collect();
        let mut topics: Vec<(&str, f64)> = vec![("all", 0.1)];
        topics.extend(names.iter().map(|n| (n.as_str(), 700.0)));
        let devices: Vec<Vec<&str>> = names.iter().map(|n| vec!["all", n.as_str()]).collect();
        let inst = test_instance(&topics, &devices);
        let e = check(&inst, &Subscribers::of(&inst)).unwrap();
        assert!(matches!(e, Infeasible::Topic { shards: 17, .. }), "{e}");
        // Two devices on the same heavy topic do fit together.
        let devices: Vec<Vec<&str>> = (0..17)
            .map(|i| vec!["all", names[i / 2].as_str()])
            .collect();
        let inst = test_instance(&topics[..10], &devices);
        assert_eq!(check(&inst, &Subscribers::of(&inst)), None);
        // With 16 such devices the bound is met.
        let inst = test_instance(&topics[..17], &devices[..16]);
        assert_eq!(check(&inst, &Subscribers::of(&inst)), None);
    }
}

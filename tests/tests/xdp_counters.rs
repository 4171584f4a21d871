//! The counters the XDP program leaves: per topic, per (topic, device
//! group) read by the iterator or in batches, and sampled group counters.

use std::collections::{BTreeMap, BTreeSet};

use integration_tests::{
    L3, build,
    fixtures::{self, device},
    frame,
    xdp::{lab, repeatable_publish, repeatable_publish_from, routed, routed_with, short_publish},
};
use router_common::{
    maps::{GroupStatKey, group_cell_key, group_cell_line},
    reason::Reason,
    topic::{TopicKey, topic_key},
};
use shardcast_dataplane::{FanoutPath, RouterConfig, action};

#[test]
fn per_topic_counters_count_packets_and_bytes() {
    let ns = lab();
    ns.run(|| {
        let dp = routed(RouterConfig::default());
        let hv = short_publish(*b"hv", b"abc");
        let predefined = frame(
            L3::V4,
            None,
            1,
            fixtures::MQTTSN,
            &build::mqttsn_publish(false, 1, [0, 5], 0, b"abc"),
        );
        let predefined_v6 = frame(
            L3::V6,
            None,
            1,
            fixtures::MQTTSN,
            &build::mqttsn_publish(true, 1, [0, 5], 0, b"abcdef"),
        );
        for _ in 0..3 {
            dp.test_run(&hv, 1).unwrap();
        }
        dp.test_run(&predefined, 1).unwrap();
        dp.test_run(&predefined_v6, 1).unwrap();
        let c = dp.counters().unwrap();
        let hv_c = c.topics[&topic_key(b"hv")].1;
        assert_eq!((hv_c.packets, hv_c.bytes), (3, 3 * hv.len() as u64));
        // The predefined id is an alias of temp/room1: one counter for both.
        let room = c.topics[&topic_key(b"temp/room1")].1;
        assert_eq!(
            (room.packets, room.bytes),
            (2, (predefined.len() + predefined_v6.len()) as u64)
        );
    })
    .unwrap();
}

/// A multi-shard publish counts once for its topic, and once as handed
/// off, whichever path parses it: the fast path hands an untagged one off
/// itself, a tagged one takes the general path. By the TC way and by
/// broadcast (or the TC way again where the kernel refused the copy
/// program).
#[test]
fn a_multi_shard_publish_counts_once_on_either_path() {
    let ns = lab();
    ns.run(|| {
        for path in [FanoutPath::Tc, FanoutPath::Auto] {
            let dp = routed_with(RouterConfig::default(), path);
            let (way, verdict) = if dp.broadcasts() {
                (Reason::Broadcast, action::REDIRECT)
            } else {
                (Reason::FannedOut, action::PASS)
            };
            // `mu`: shards 1 and 2 of the fixture plan.
            let mqttsn = build::mqttsn_publish(false, 2, *b"mu", 0, b"abc");
            let coap = build::coap_request(
                router_common::coap::TYPE_NON,
                router_common::coap::CODE_PUT,
                7,
                &[0x5c, 0x01],
                &["ps", "data", "mu"],
                b"21.5",
            );
            let frames = [
                frame(L3::V4, None, 1, fixtures::MQTTSN, &mqttsn),
                frame(L3::V6, None, 1, fixtures::MQTTSN, &mqttsn),
                frame(L3::V4, None, 1, fixtures::COAP, &coap),
                frame(L3::V6, None, 1, fixtures::COAP, &coap),
                frame(L3::V4, Some(42), 1, fixtures::MQTTSN, &mqttsn),
                frame(L3::V6, Some(7), 1, fixtures::COAP, &coap),
            ];
            for f in &frames {
                let r = dp.test_run(f, 1).unwrap();
                assert_eq!(r.action, verdict, "{path:?}: {f:02x?}");
            }
            let c = dp.counters().unwrap();
            let mu = c.topics[&topic_key(b"mu")].1;
            let bytes: usize = frames.iter().map(Vec::len).sum();
            assert_eq!(
                (mu.packets, mu.bytes),
                (frames.len() as u64, bytes as u64),
                "{path:?}"
            );
            assert_eq!(c.reasons[&way].packets, frames.len() as u64, "{path:?}");
            // Nothing else was counted: no publish went both ways.
            let others: u64 = c
                .reasons
                .iter()
                .filter(|(r, _)| **r != way)
                .map(|(_, n)| n.packets)
                .sum();
            assert_eq!(others, 0, "{path:?}: {:?}", c.reasons);
        }
    })
    .unwrap();
}

#[test]
fn group_counters_count_per_topic_and_source_group_and_both_readers_agree() {
    let ns = lab();
    ns.run(|| {
        let mut dp = counting_groups();
        let mut plan = fixtures::plan("sc0", 2);
        plan.devices
            .push(device("d1", integration_tests::SRC_V4.into(), "north"));
        let compiled = plan.compile().unwrap();
        assert_eq!(compiled.groups, ["north"]);
        dp.install(&compiled, false).unwrap();
        // Shard 1 keeps the port, so every repetition routes again.
        // temp/room1 by predefined id 5 (flags 1), alerts by registered id 300.
        let runs = [
            (repeatable_publish(L3::V4, 1, 5), 3),
            (repeatable_publish(L3::V6, 1, 5), 1),
            (repeatable_publish(L3::V4, 0, 300), 2),
        ];
        for (f, calls) in &runs {
            for _ in 0..*calls {
                assert_eq!(dp.test_run(f, 254).unwrap().action, action::REDIRECT);
            }
        }
        let slots: BTreeMap<TopicKey, u32> = dp.slot_table().unwrap().into_iter().collect();
        let slot = |name: &str| slots[&topic_key(name.as_bytes())];
        let (north, unknown) = (1, 0);
        let want: BTreeMap<(u32, u32), u64> = [
            ((slot("temp/room1"), north), 3 * 254),
            ((slot("temp/room1"), unknown), 254),
            ((slot("alerts"), north), 2 * 254),
        ]
        .into();
        let read = |v: Vec<(GroupStatKey, u64)>| {
            v.into_iter()
                .map(|(k, n)| ((k.slot, k.group), n))
                .collect::<BTreeMap<_, _>>()
        };
        // The product reads with the iterator where the kernel runs it and
        // in batches where it is refused (no BTF; EPERM on some hosts that
        // have BTF): check whichever this kernel gives, then force the
        // fallback, so that both readers are checked wherever both work
        // and the fallback on every machine.
        let reader = match dp.group_iterator_refused() {
            None => "iterator".to_string(),
            Some(why) => format!("batches ({why})"),
        };
        eprintln!("group counters read by: {reader}");
        assert_eq!(read(dp.group_counters().unwrap()), want, "{reader}");
        assert_eq!(read(dp.group_counters_batched().unwrap()), want, "batches");
        if dp.group_iterator() {
            // Whatever the iterator answered, it still runs.
            assert!(dp.group_iterator_refused().is_none());
        }
        dp.force_batched_group_counters();
        assert!(!dp.group_iterator());
        assert!(dp.group_iterator_refused().unwrap().contains("forced"));
        assert_eq!(read(dp.group_counters().unwrap()), want, "forced batches");
    })
    .unwrap();
}

#[test]
fn sampled_group_counters_estimate_the_publish_count() {
    let ns = lab();
    ns.run(|| {
        let dp = routed(RouterConfig {
            group_stats: true,
            group_sample: 4,
            ..RouterConfig::default()
        });
        // Predefined id 5 (temp/room1).
        let f = repeatable_publish(L3::V4, 1, 5);
        const CALLS: u64 = 16;
        const K: u64 = CALLS * 254;
        for _ in 0..CALLS {
            assert_eq!(dp.test_run(&f, 254).unwrap().action, action::REDIRECT);
        }
        assert_eq!(
            dp.counters().unwrap().reasons[&Reason::Redirected].packets,
            K,
            "every run was routed"
        );
        let total: u64 = dp.group_counters().unwrap().iter().map(|(_, n)| n).sum();
        assert!(total.is_multiple_of(4), "each counted publish weighs 4");
        // Binomial(K, 1/4) x 4: standard deviation ~110; six of them.
        assert!(total.abs_diff(K) < 660, "estimate {total} for {K}");
    })
    .unwrap();
}

/// The router with the fixture plan, counting per device group.
fn counting_groups() -> shardcast_dataplane::Dataplane {
    routed(RouterConfig {
        group_stats: true,
        ..RouterConfig::default()
    })
}

/// Per (topic, group) counts of `dp`, by (slot, group).
fn group_counts(dp: &shardcast_dataplane::Dataplane) -> BTreeMap<(u32, u32), u64> {
    dp.group_counters()
        .unwrap()
        .into_iter()
        .map(|(k, n)| ((k.slot, k.group), n))
        .collect()
}

/// Pins this thread to its current CPU: `BPF_PROG_TEST_RUN` runs the
/// program on the caller's CPU, and each CPU counts in its own lines.
fn stay_on_this_cpu() {
    // SAFETY: plain libc calls on this thread's own affinity.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

#[test]
fn devices_sharing_a_direct_entry_are_told_apart_and_the_entry_follows_the_plan() {
    use std::net::{IpAddr, Ipv6Addr};
    let ns = lab();
    ns.run(|| {
        let mut dp = counting_groups();
        // The direct table indexes by the low 20 bits of an address's last
        // 32: these three IPv6 addresses share an entry; the IPv4 device
        // and the second unknown source have entries of their own.
        let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        let (a, b, stranger) = (
            v6("2001:db8::10:5"),
            v6("2001:db8::20:5"),
            v6("2001:db8::30:5"),
        );
        let (c, unknown) = (IpAddr::from(integration_tests::SRC_V4), v6("2001:db8::99"));
        let mut plan = fixtures::plan("sc0", 2);
        plan.devices = vec![
            device("a", a, "ga"),
            device("b", b, "gb"),
            device("c", c, "gc"),
        ];
        dp.install(&plan.compile().unwrap(), false).unwrap();
        assert!(dp.device_indexed(a), "first in plan order takes the entry");
        assert!(!dp.device_indexed(b), "b shares a's entry: found by hash");
        assert!(dp.device_indexed(c));
        let slot = dp
            .slot_table()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == topic_key(b"temp/room1"))
            .unwrap()
            .1;
        let send = |dp: &shardcast_dataplane::Dataplane, src: IpAddr, n: u32| {
            let f = repeatable_publish_from(src, 1, 5);
            assert_eq!(dp.test_run(&f, n).unwrap().action, action::REDIRECT);
        };
        for (src, n) in [(a, 3), (b, 5), (c, 7), (stranger, 2), (unknown, 4)] {
            send(&dp, src, n);
        }
        // Groups by sorted name: ga 1, gb 2, gc 3; 0 is unknown.
        let want: BTreeMap<(u32, u32), u64> = [
            ((slot, 1), 3),
            ((slot, 2), 5),
            ((slot, 3), 7),
            ((slot, 0), 6),
        ]
        .into();
        assert_eq!(group_counts(&dp), want);

        // a leaves: b takes the entry; c moves to a new group "gd".
        plan.generation = 3;
        plan.devices = vec![device("b", b, "gb"), device("c", c, "gd")];
        dp.install(&plan.compile().unwrap(), false).unwrap();
        assert!(!dp.device_indexed(a));
        assert!(dp.device_indexed(b), "the freed entry goes to b");
        for (src, n) in [(a, 1), (b, 2), (c, 3)] {
            send(&dp, src, n);
        }
        // Groups now: gb 1, gd 2. Counters are per (slot, group index):
        // a's publish counts as unknown, b's under index 1 (ga's before),
        // c's under index 2.
        let want: BTreeMap<(u32, u32), u64> = [
            ((slot, 1), 3 + 2),
            ((slot, 2), 5 + 3),
            ((slot, 3), 7),
            ((slot, 0), 6 + 1),
        ]
        .into();
        assert_eq!(group_counts(&dp), want);
    })
    .unwrap();
}

#[test]
fn a_full_line_of_cells_spills_to_the_shared_counters_and_nothing_is_lost() {
    use std::net::{IpAddr, Ipv4Addr};
    const GROUPS: u32 = 1 << 15;
    const TOPICS: u16 = 8;
    let ns = lab();
    ns.run(|| {
        stay_on_this_cpu();
        let mut dp = counting_groups();
        // One device per group, from 198.18.0.0 up, and eight topics
        // (predefined ids 10..18): enough (topic, group) pairs that some
        // line of cells is wanted by six of them. (Consecutive groups of
        // one topic spread evenly over the lines: that is the hash's job.)
        let addr = |i: u32| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i));
        let mut plan = fixtures::plan("sc0", 2);
        plan.devices = (0..GROUPS)
            .map(|i| device(&format!("d{i}"), addr(i), &format!("g{i:05}")))
            .collect();
        for t in 0..TOPICS {
            plan.topics.push(shardcast_plan::TopicSpec {
                name: format!("spill/{t}"),
                shards: vec![1],
                mqttsn_predefined_id: Some(10 + t),
                mqttsn_registered_ids: vec![],
            });
        }
        dp.install(&plan.compile().unwrap(), false).unwrap();
        let slots: BTreeMap<TopicKey, u32> = dp.slot_table().unwrap().into_iter().collect();
        // Device i is in group g{i:05}, index i + 1.
        let mut by_line: BTreeMap<u32, Vec<(u16, u32)>> = BTreeMap::new();
        for t in 0..TOPICS {
            let slot = slots[&topic_key(format!("spill/{t}").as_bytes())];
            for i in 0..GROUPS {
                by_line
                    .entry(group_cell_line(group_cell_key(slot, i + 1)))
                    .or_default()
                    .push((t, i));
            }
        }
        let crowded = by_line
            .values()
            .find(|v| v.len() >= 6)
            .expect("some line wanted by six pairs")[..6]
            .to_vec();
        let mut want = BTreeMap::new();
        for (n, (t, i)) in crowded.iter().enumerate() {
            let f = repeatable_publish_from(addr(*i), 1, 10 + t);
            let runs = 10 + n as u32;
            assert_eq!(dp.test_run(&f, runs).unwrap().action, action::REDIRECT);
            let slot = slots[&topic_key(format!("spill/{t}").as_bytes())];
            want.insert((slot, i + 1), runs as u64);
        }
        assert_eq!(
            dp.group_cells_used().0,
            4,
            "four pairs in the line's cells, two spilled"
        );
        assert_eq!(group_counts(&dp), want, "cells and spilled counters");
        let batched: BTreeMap<(u32, u32), u64> = dp
            .group_counters_batched()
            .unwrap()
            .into_iter()
            .map(|(k, n)| ((k.slot, k.group), n))
            .collect();
        assert_eq!(batched, want, "spilled counters read in batches");
    })
    .unwrap();
}

/// How a generated fleet's addresses are laid out.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One IPv4 pool, numbered from its start: no two devices share a
    /// direct-table entry.
    V4Pool,
    /// IPv4 addresses from many /12s whose low 20 bits fall in a small
    /// range: most devices share their entry with others.
    V4Crowded,
    /// IPv6 with random interface identifiers, a third of them forced to
    /// share their low 20 bits.
    V6Random,
    /// Both families.
    Mixed,
}

fn fleet_address(rng: &mut rand_pcg::Pcg64Mcg, shape: Shape, i: u32) -> std::net::IpAddr {
    use rand::Rng;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match shape {
        Shape::V4Pool => IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i)),
        Shape::V4Crowded => {
            let high: u32 = rng.random_range(1..0xdff);
            IpAddr::V4(Ipv4Addr::from(high << 20 | rng.random_range(0..256u32)))
        }
        Shape::V6Random => {
            let mut iid: u64 = rng.random();
            if rng.random_bool(0.33) {
                iid = (iid & !0xf_ffff) | rng.random_range(0..64u64);
            }
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_0000_0000_u128 << 64 | iid as u128,
            ))
        }
        Shape::Mixed => {
            if rng.random_bool(0.5) {
                fleet_address(rng, Shape::V4Pool, i)
            } else {
                fleet_address(rng, Shape::V6Random, i)
            }
        }
    }
}

#[test]
fn group_counts_are_exact_for_fleets_of_many_shapes() {
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;
    for (seed, shape) in [
        (1, Shape::V4Pool),
        (2, Shape::V4Crowded),
        (3, Shape::V6Random),
        (4, Shape::Mixed),
    ] {
        let ns = lab();
        ns.run(move || {
            let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
            let mut dp = counting_groups();
            let groups: u32 = rng.random_range(1..60);
            let topics: u16 = rng.random_range(1..24);
            let mut plan = fixtures::plan("sc0", 2);
            let mut seen = HashSet::new();
            let mut devices = Vec::new();
            for i in 0..3000u32 {
                let a = fleet_address(&mut rng, shape, i);
                if seen.insert(a) {
                    // Group g{n:03} has index n + 1 (names sort as numbers).
                    let g = rng.random_range(0..groups);
                    devices.push((a, g + 1));
                    plan.devices
                        .push(device(&format!("d{i}"), a, &format!("g{g:03}")));
                }
            }
            for t in 0..topics {
                plan.topics.push(shardcast_plan::TopicSpec {
                    name: format!("shape/{t}"),
                    shards: vec![1],
                    mqttsn_predefined_id: Some(10 + t),
                    mqttsn_registered_ids: vec![],
                });
            }
            let compiled = plan.compile().unwrap();
            dp.install(&compiled, false).unwrap();
            let slots: BTreeMap<TopicKey, u32> = dp.slot_table().unwrap().into_iter().collect();
            let shared = devices
                .iter()
                .filter(|(a, _)| !dp.device_indexed(*a))
                .count();
            // Publishes from devices and from strangers (some sharing a
            // device's entry), on every topic, each run 1 to 3 times.
            let mut want: BTreeMap<(u32, u32), u64> = BTreeMap::new();
            for _ in 0..4000 {
                let (src, group) = if rng.random_bool(0.9) {
                    devices[rng.random_range(0..devices.len())]
                } else {
                    let i = 100_000 + rng.random_range(0..1000);
                    let a = fleet_address(&mut rng, shape, i);
                    match devices.iter().find(|(d, _)| *d == a) {
                        Some(d) => *d,
                        None => (a, 0),
                    }
                };
                let t = rng.random_range(0..topics);
                let runs = rng.random_range(1..4u32);
                let f = repeatable_publish_from(src, 1, 10 + t);
                // Runs of one (a call repeating the program installs it
                // in the kernel's XDP dispatcher first: ~10 ms a call).
                for _ in 0..runs {
                    assert_eq!(dp.test_run(&f, 1).unwrap().action, action::REDIRECT);
                }
                let slot = slots[&topic_key(format!("shape/{t}").as_bytes())];
                *want.entry((slot, group)).or_default() += runs as u64;
            }
            let got = group_counts(&dp);
            let differ: Vec<String> = want
                .keys()
                .chain(got.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|k| want.get(k) != got.get(k))
                .take(8)
                .map(|k| format!("{k:?}: router {:?}, sent {:?}", got.get(k), want.get(k)))
                .collect();
            assert!(
                differ.is_empty(),
                "{shape:?}: {} devices in {groups} groups, {shared} behind a shared entry, {topics} topics; (slot, group) counts differ: {differ:?}",
                devices.len()
            );
            match shape {
                Shape::V4Pool => assert_eq!(shared, 0, "a pool's devices have entries of their own"),
                Shape::V4Crowded => assert!(shared > devices.len() / 2, "{shared}"),
                _ => assert!(shared > 0, "{shared}"),
            }
        })
        .unwrap();
    }
}

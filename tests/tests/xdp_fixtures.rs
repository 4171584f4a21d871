//! In-kernel tests of the real XDP program (`BPF_PROG_TEST_RUN` via aya's
//! `TestRun`): every fixture's verdict and output bytes, the counters it
//! leaves, and topic-key parity between the eBPF side and userspace.

use std::collections::BTreeMap;

use integration_tests::{
    L3, NetNs, build,
    fixtures::{self, Expect, ShardOut},
    frame,
};
use router_common::{
    reason::Reason,
    topic::{TopicKey, topic_key},
};
use shardcast_dataplane::{Dataplane, RouterConfig, action, mac_address};

/// A namespace with a veth pair; the router is loaded (not attached) in it
/// and the fixture plan installed with `sc0` as every shard's egress.
fn lab() -> NetNs {
    let ns = NetNs::new("scfx").unwrap();
    ns.ip(&["link", "add", "sc0", "type", "veth", "peer", "name", "sc1"])
        .unwrap();
    ns.ip(&["link", "set", "sc0", "up"]).unwrap();
    ns.ip(&["link", "set", "sc1", "up"]).unwrap();
    ns
}

/// The router loaded in this thread's namespace with the fixture plan
/// installed (`sc0` as every shard's egress).
fn routed(config: RouterConfig) -> Dataplane {
    let mut dp = Dataplane::load(&integration_tests::object(), &config).unwrap();
    dp.install(&fixtures::plan("sc0", 1).compile().unwrap(), false)
        .unwrap();
    dp
}

/// An MQTT-SN QoS 0/-1 PUBLISH of `id` (TopicIdType in `flags`) with TTL
/// 255: routed to shard 1 of the fixture plan (which keeps the port), every
/// repetition on the buffer routes again (see `max_ttl`).
fn repeatable_publish(l3: L3, flags: u8, id: u16) -> Vec<u8> {
    integration_tests::max_ttl(frame(
        l3,
        None,
        1,
        fixtures::MQTTSN,
        &build::mqttsn_publish(false, flags, id.to_be_bytes(), 0, b"x"),
    ))
}

/// Loads the router in a fresh lab with `plan`, runs every frame (each
/// must go to the stack: its topic is not routed) and returns the keys the
/// kernel counted as unrouted, sorted.
fn unrouted_keys(plan: shardcast_plan::Plan, frames: Vec<Vec<u8>>) -> Vec<TopicKey> {
    let mut keys = lab()
        .run(move || {
            let mut dp =
                Dataplane::load(&integration_tests::object(), &RouterConfig::default()).unwrap();
            dp.install(&plan.compile().unwrap(), false).unwrap();
            for (i, f) in frames.iter().enumerate() {
                let r = dp.test_run(f, 1).unwrap();
                assert_eq!(r.action, action::PASS, "frame {i}");
            }
            dp.counters()
                .unwrap()
                .unrouted
                .keys()
                .copied()
                .collect::<Vec<_>>()
        })
        .unwrap();
    keys.sort();
    keys
}

/// An IPv4 MQTT-SN QoS 0 PUBLISH to the short topic `name`.
fn short_publish(name: [u8; 2], data: &[u8]) -> Vec<u8> {
    frame(
        L3::V4,
        None,
        1,
        fixtures::MQTTSN,
        &build::mqttsn_publish(false, 2, name, 0, data),
    )
}

/// Where each shard of the fixture plan sends, read off the plan itself.
fn shard_outs(mac: [u8; 6]) -> BTreeMap<u32, ShardOut> {
    fixtures::plan("sc0", 1)
        .shards
        .iter()
        .map(|s| {
            let out = ShardOut {
                group_v4: s.group_v4.as_ref().map(|g| {
                    g.parse::<std::net::Ipv4Addr>()
                        .expect("fixture v4 group")
                        .octets()
                }),
                group_v6: s.group_v6.as_ref().map(|g| {
                    g.parse::<std::net::Ipv6Addr>()
                        .expect("fixture v6 group")
                        .octets()
                }),
                port: s.port.unwrap_or(0),
                src_mac: mac,
            };
            (s.id, out)
        })
        .collect()
}

#[test]
fn every_fixture_gets_its_verdict_and_bytes() {
    let ns = lab();
    let failures = ns
        .run(|| {
            let dp = routed(RouterConfig::default());
            let outs = shard_outs(mac_address("sc0").unwrap());
            let table = fixtures::all();
            assert!(table.len() >= 30, "at least 30 fixtures");
            let mut failures = Vec::new();
            let mut want_reasons: BTreeMap<Reason, u64> = BTreeMap::new();
            for f in &table {
                let r = dp.test_run(&f.packet, 1).unwrap();
                match &f.expect {
                    Expect::Pass(reason) => {
                        *want_reasons.entry(*reason).or_default() += 1;
                        if r.action != action::PASS {
                            failures.push(format!(
                                "{}: action {} (want PASS/{:?})",
                                f.name, r.action, reason
                            ));
                        } else if r.output != f.packet {
                            failures.push(format!("{}: passed packet was modified", f.name));
                        }
                    }
                    Expect::Redirect { shard } => {
                        *want_reasons.entry(Reason::Redirected).or_default() += 1;
                        let want = fixtures::expected_output(&f.packet, &outs[shard]);
                        if r.action != action::REDIRECT {
                            failures.push(format!(
                                "{}: action {} (want REDIRECT to shard {shard})",
                                f.name, r.action
                            ));
                        } else if r.output != want {
                            failures.push(format!(
                                "{}: output differs\n got  {:02x?}\n want {:02x?}",
                                f.name, r.output, want
                            ));
                        }
                    }
                }
            }
            // Every verdict was counted under its reason, nothing else.
            let counters = dp.counters().unwrap();
            for reason in Reason::ALL {
                let got = counters.reasons[reason].packets;
                let want = want_reasons.get(reason).copied().unwrap_or(0);
                if got != want {
                    failures.push(format!("counter {}: {got} (want {want})", reason.label()));
                }
            }
            failures
        })
        .unwrap();
    assert!(
        failures.is_empty(),
        "{} fixture failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

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

#[test]
fn kernel_and_userspace_derive_the_same_topic_keys() {
    // Unrouted topics are counted by the key the kernel computed; each must
    // equal router_common::topic_key of the name we sent. Short MQTT-SN
    // names are hashed in the kernel byte by byte like any name.
    let names: Vec<[u8; 2]> = (0u16..200)
        .map(|i| (i.wrapping_mul(7919) ^ 0x5a5a).to_be_bytes())
        .collect();
    let mut plan = fixtures::plan("sc0", 1);
    // Keep only routes whose names cannot collide with the probes.
    plan.topics.retain(|t| t.name.len() > 2);
    let frames = names.iter().map(|n| short_publish(*n, b"1")).collect();
    let mut want: Vec<_> = names.iter().map(|n| topic_key(n)).collect();
    want.sort();
    want.dedup();
    assert_eq!(unrouted_keys(plan, frames), want);
}

#[test]
fn a_new_generation_replaces_the_old_one_entirely() {
    let ns = lab();
    ns.run(|| {
        let mut dp =
            Dataplane::load(&integration_tests::object(), &RouterConfig::default()).unwrap();
        let hv = short_publish(*b"hv", b"x");
        assert_eq!(
            dp.test_run(&hv, 1).unwrap().action,
            action::PASS,
            "no plan yet"
        );
        dp.install(&fixtures::plan("sc0", 1).compile().unwrap(), false)
            .unwrap();
        assert_eq!(dp.test_run(&hv, 1).unwrap().action, action::REDIRECT);
        // Generation 2 drops "hv".
        let mut p2 = fixtures::plan("sc0", 2);
        p2.topics.retain(|t| t.name != "hv");
        dp.install(&p2.compile().unwrap(), false).unwrap();
        assert_eq!(dp.test_run(&hv, 1).unwrap().action, action::PASS);
        // A stale generation is refused and changes nothing.
        let err = dp
            .install(&fixtures::plan("sc0", 2).compile().unwrap(), false)
            .unwrap_err();
        assert!(err.to_string().contains("not newer"), "{err}");
        assert_eq!(dp.test_run(&hv, 1).unwrap().action, action::PASS);
        assert_eq!(dp.meta().unwrap().generation, 2);
        let c = dp.counters().unwrap();
        assert_eq!(c.reasons[&Reason::NoPlan].packets, 1);
    })
    .unwrap();
}

#[test]
fn a_vanished_egress_sends_publishes_up_untouched() {
    let ns = lab();
    ns.run(|| {
        let dp = routed(RouterConfig::default());
        let f = short_publish(*b"hv", b"abc");
        assert_eq!(dp.test_run(&f, 1).unwrap().action, action::REDIRECT);
        // Unregistering the interface empties its devmap slot (the kernel
        // does it): the route still names the slot.
        integration_tests::sh("ip", &["link", "del", "sc0"]).unwrap();
        let r = dp.test_run(&f, 1).unwrap();
        assert_eq!(r.action, action::PASS);
        assert_eq!(r.output, f, "passed packet was modified");
        let c = dp.counters().unwrap();
        assert_eq!(c.reasons[&Reason::EgressMissing].packets, 1);
        assert_eq!(c.reasons[&Reason::Redirected].packets, 1);
    })
    .unwrap();
}

#[test]
fn kernel_and_userspace_derive_the_same_coap_topic_keys() {
    // CoAP topics are hashed in the kernel segment by segment out of the
    // Uri-Path options, '/' between; each must key like the joined name.
    let mut names: Vec<String> = Vec::new();
    for len in 1..=router_common::topic::TOPIC_MAX {
        let name: String = (0..len)
            .map(|i| (b'a' + ((i * 7 + len) % 26) as u8) as char)
            .collect();
        names.push(name);
    }
    // Multi-segment names, including segments of 13+ bytes (extended
    // option length) and a 64-byte name split in eight.
    names.push("a/b".into());
    names.push("building-7/floor-12/room-1234/co2".into());
    names.push((0..8).map(|_| "abcdefg").collect::<Vec<_>>().join("/") + "x");
    let mut plan = fixtures::plan("sc0", 1);
    plan.topics.clear();
    plan.topics
        .push(serde_json::from_str(r#"{"name": "zz-none", "shards": [1]}"#).unwrap());
    let frames = names
        .iter()
        .map(|n| {
            let mut path = vec!["ps", "data"];
            path.extend(n.split('/'));
            let m = build::coap_request(1, 3, 1, &[], &path, b"v");
            frame(L3::V6, None, 1, fixtures::COAP, &m)
        })
        .collect();
    let mut want: Vec<_> = names.iter().map(|n| topic_key(n.as_bytes())).collect();
    want.sort();
    let got = unrouted_keys(plan, frames);
    assert_eq!(got.len(), names.len(), "one unrouted key per name");
    assert_eq!(got, want);
}

#[test]
fn a_full_slot_table_reclaims_and_zeroes_the_slots_of_departed_topics() {
    use router_common::maps::MAX_TOPICS;
    use shardcast_plan::{Plan, ShardSpec, TopicSpec};
    let plan = |generation: u64, names: &mut dyn Iterator<Item = String>| Plan {
        generation,
        shards: vec![ShardSpec {
            id: 1,
            group_v4: Some("239.9.9.9".into()),
            group_v6: None,
            egress: "sc0".into(),
            port: None,
            capacity: None,
        }],
        devices: vec![],
        topics: names
            .map(|name| TopicSpec {
                name,
                shards: vec![1],
                mqttsn_predefined_id: None,
                mqttsn_registered_ids: vec![],
            })
            .collect(),
    };
    let ns = lab();
    ns.run(move || {
        let mut dp =
            Dataplane::load(&integration_tests::object(), &RouterConfig::default()).unwrap();
        let n = MAX_TOPICS as usize;
        let p1 = plan(1, &mut (0..n).map(|i| format!("t/{i}")));
        dp.install(&p1.compile().unwrap(), false).unwrap();
        let coap = |topic: &str| {
            let mut path = vec!["ps", "data"];
            path.extend(topic.split('/'));
            frame(
                L3::V4,
                None,
                1,
                fixtures::COAP,
                &build::coap_request(1, 3, 1, &[], &path, b"v"),
            )
        };
        for _ in 0..3 {
            assert_eq!(
                dp.test_run(&coap("t/0"), 1).unwrap().action,
                action::REDIRECT
            );
        }
        let before = dp.counters().unwrap();
        let (slot0, c0) = before.topics[&topic_key(b"t/0")];
        assert_eq!(c0.packets, 3);
        // The table is full: "fresh" can only have t/0's slot, zeroed.
        let p2 = plan(
            2,
            &mut (1..n)
                .map(|i| format!("t/{i}"))
                .chain(["fresh".to_string()]),
        );
        dp.install(&p2.compile().unwrap(), false).unwrap();
        let after = dp.counters().unwrap();
        assert!(!after.topics.contains_key(&topic_key(b"t/0")));
        let (slot, c) = after.topics[&topic_key(b"fresh")];
        assert_eq!(slot, slot0, "the departed topic's slot is reused");
        assert_eq!(c.packets, 0, "and starts from zero");
        assert_eq!(
            dp.test_run(&coap("fresh"), 1).unwrap().action,
            action::REDIRECT
        );
        assert_eq!(
            dp.counters().unwrap().topics[&topic_key(b"fresh")]
                .1
                .packets,
            1
        );
        // One more new topic than free slots: refused, nothing changed.
        let p3 = plan(
            3,
            &mut (1..n)
                .map(|i| format!("t/{i}"))
                .chain(["fresh".into(), "x".into(), "y".into()]),
        );
        let e = dp.install(&p3.compile().unwrap_or_else(|e| panic!("{e}")), false);
        assert!(
            e.is_err(),
            "a plan with more topics than slots must be refused"
        );
        assert_eq!(dp.meta().unwrap().generation, 2);
    })
    .unwrap();
}

#[test]
fn an_incremental_install_outgrowing_the_idle_map_gets_a_fresh_one() {
    use shardcast_dataplane::routes_capacity;
    use shardcast_plan::TopicSpec;
    let small = fixtures::plan("sc0", 1);
    let cap = routes_capacity(small.compile().unwrap().routes.len()) as usize;
    // Enough topics that generation 3 does not fit the map generation 1
    // left in the idle slot.
    let mut big = fixtures::plan("sc0", 3);
    big.topics.extend((0..cap).map(|i| TopicSpec {
        name: format!("grown/{i}"),
        shards: vec![3],
        mqttsn_predefined_id: None,
        mqttsn_registered_ids: vec![],
    }));
    let big = big.compile().unwrap();
    assert!(big.routes.len() > cap);
    let ns = lab();
    ns.run(move || {
        let mut dp =
            Dataplane::load(&integration_tests::object(), &RouterConfig::default()).unwrap();
        dp.set_incremental(true);
        dp.install(&small.compile().unwrap(), false).unwrap();
        dp.install(&fixtures::plan("sc0", 2).compile().unwrap(), false)
            .unwrap();
        let r = dp.install(&big, false).unwrap();
        assert_eq!(
            r.changed,
            big.routes.len(),
            "written whole into a fresh map"
        );
        let last = format!("grown/{}", cap - 1);
        let m = build::coap_request(1, 3, 1, &[], &["ps", "data", &last], b"v");
        let f = frame(L3::V6, None, 1, fixtures::COAP, &m);
        assert_eq!(dp.test_run(&f, 1).unwrap().action, action::REDIRECT);
        // And back: the small plan fits the idle map (generation 2's, which
        // holds exactly these routes), updated in place: nothing to write.
        let again = fixtures::plan("sc0", 4).compile().unwrap();
        let r = dp.install(&again, false).unwrap();
        assert_eq!(r.changed, 0, "{r:?}");
        assert_eq!(dp.test_run(&f, 1).unwrap().action, action::PASS);
    })
    .unwrap();
}

#[test]
fn incremental_installs_add_move_and_drop_mqttsn_ids_in_place() {
    // temp/room1 is predefined id 5; registered 300 is alerts.
    let with = |g| fixtures::plan("sc0", g).compile().unwrap();
    let without = |g| {
        let mut p = fixtures::plan("sc0", g);
        p.topics[0].mqttsn_predefined_id = None;
        p.topics[4].mqttsn_registered_ids = vec![301];
        p.compile().unwrap()
    };
    let ns = lab();
    ns.run(move || {
        let mut dp =
            Dataplane::load(&integration_tests::object(), &RouterConfig::default()).unwrap();
        dp.set_incremental(true);
        let verdict = |dp: &Dataplane, id, flags| {
            dp.test_run(&repeatable_publish(L3::V4, flags, id), 1)
                .unwrap()
                .action
        };
        let (predefined, normal) = (1, 0);
        // Generations 1 and 2 fill both slots afresh; 3 and 4 update them
        // in place, each against what its slot held two generations ago.
        for (g, plan, has) in [
            (1, with(1), true),
            (2, with(2), true),
            (3, without(3), false),
            (4, without(4), false),
            (5, with(5), true),
        ] {
            let r = dp.install(&plan, false).unwrap();
            let id5 = verdict(&dp, 5, predefined);
            let id300 = verdict(&dp, 300, normal);
            let id301 = verdict(&dp, 301, normal);
            if has {
                assert_eq!(
                    (id5, id300, id301),
                    (action::REDIRECT, action::REDIRECT, action::PASS),
                    "generation {g} {r:?}"
                );
            } else {
                assert_eq!(
                    (id5, id300, id301),
                    (action::PASS, action::PASS, action::REDIRECT),
                    "generation {g} {r:?}"
                );
            }
        }
    })
    .unwrap();
}

#[test]
fn mac_address_reads_the_namespace_interface_and_names_what_is_wrong() {
    let ns = lab();
    let shown = ns.ip(&["-o", "link", "show", "sc0"]).unwrap();
    let want = shown
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("ip shows the MAC")
        .to_string();
    ns.run(move || {
        let mac = mac_address("sc0").unwrap();
        let text: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(text.join(":"), want);
        let e = mac_address("nosuchif0").unwrap_err().to_string();
        assert!(e.contains("nosuchif0"), "{e}");
        let e = mac_address("lo").unwrap_err().to_string();
        assert!(e.contains("lo") && e.contains("not an Ethernet"), "{e}");
    })
    .unwrap();
}

#[test]
fn group_counters_count_per_topic_and_source_group_and_both_readers_agree() {
    let ns = lab();
    ns.run(|| {
        let mut dp = routed(RouterConfig {
            group_stats: true,
            ..RouterConfig::default()
        });
        let mut plan = fixtures::plan("sc0", 2);
        plan.devices.push(shardcast_plan::DeviceSpec {
            id: "d1".into(),
            address: Some(std::net::Ipv4Addr::from(integration_tests::SRC_V4).to_string()),
            shard: 1,
            group: Some("north".into()),
        });
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
        let read = |v: Vec<(
            router_common::maps::GroupStatKey,
            router_common::maps::Counter,
        )>| {
            v.into_iter()
                .map(|(k, c)| ((k.slot, k.group), c.packets))
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
        let total: u64 = dp
            .group_counters()
            .unwrap()
            .iter()
            .map(|(_, c)| c.packets)
            .sum();
        assert!(total.is_multiple_of(4), "each counted publish weighs 4");
        // Binomial(K, 1/4) x 4: standard deviation ~110; six of them.
        assert!(total.abs_diff(K) < 660, "estimate {total} for {K}");
    })
    .unwrap();
}

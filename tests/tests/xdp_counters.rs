//! The counters the XDP program leaves: per topic, per (topic, device
//! group) read by the iterator or in batches, and sampled group counters.

use std::collections::BTreeMap;

use integration_tests::{
    L3, build,
    fixtures::{self},
    frame,
    xdp::{lab, repeatable_publish, routed, short_publish},
};
use router_common::{
    reason::Reason,
    topic::{TopicKey, topic_key},
};
use shardcast_dataplane::{RouterConfig, action};

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

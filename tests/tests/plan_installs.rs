//! Plan installs into the kernel: generations replace each other whole,
//! counter slots are reclaimed, incremental installs grow and update the
//! maps in place.

use integration_tests::{
    L3, build,
    fixtures::{self},
    frame,
    xdp::{lab, repeatable_publish, short_publish},
};
use router_common::{reason::Reason, topic::topic_key};
use shardcast_dataplane::{Dataplane, RouterConfig, action};

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
        // Routes out of key order (a plan built by hand, not compiled) are
        // refused before anything changes: the name array and the
        // incremental diff rely on the order.
        let mut p3 = fixtures::plan("sc0", 3).compile().unwrap();
        p3.routes.reverse();
        let err = dp.install(&p3, false).unwrap_err();
        assert!(err.to_string().contains("not sorted by key"), "{err}");
        assert_eq!(dp.test_run(&hv, 1).unwrap().action, action::PASS);
        assert_eq!(dp.meta().unwrap().generation, 2);
        let c = dp.counters().unwrap();
        assert_eq!(c.reasons[&Reason::NoPlan].packets, 1);
    })
    .unwrap();
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
            class: None,
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
        policy: Default::default(),
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
        let meta = dp.meta().unwrap();
        assert_eq!(meta.generation, 2);
        // It had put its shard table into the idle slot already: that
        // slot's generation is unknown now, no plan's.
        let idle = (dp.active_slot().unwrap() & 1) ^ 1;
        assert_eq!(meta.slot_generation[idle as usize], 0, "{meta:?}");
        // The plan in force still routes, and the next install, whole,
        // routes by its own tables.
        let hits = |dp: &Dataplane, t: &str| dp.test_run(&coap(t), 1).unwrap().action;
        assert_eq!(hits(&dp, "fresh"), action::REDIRECT);
        let p4 = plan(4, &mut (2..n).map(|i| format!("t/{i}")).chain(["x".into()]));
        dp.install(&p4.compile().unwrap(), false).unwrap();
        assert_eq!(hits(&dp, "x"), action::REDIRECT);
        assert_eq!(hits(&dp, "t/1"), action::PASS);
        assert_eq!(hits(&dp, "fresh"), action::PASS);
        assert_eq!(dp.meta().unwrap().slot_generation, [4, 4]);
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

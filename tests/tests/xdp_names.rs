//! The direct-mapped name array (`SC_NAMES`) in front of the route hash
//! map, through the real XDP program (`BPF_PROG_TEST_RUN`), by the fast
//! path and by the general path (a VLAN-tagged frame): topic names
//! that share an entry each reach their own shard, byte for byte; an
//! unrouted name whose entry another name holds, or whose entry is free,
//! goes to the stack counted as unrouted; and incremental installs that
//! take the holder away or bring it back leave no stale entry.

use integration_tests::{
    L3, build,
    fixtures::{self, ShardOut},
    frame,
    xdp::lab,
};
use router_common::{
    coap,
    maps::name_index,
    reason::Reason,
    topic::{TopicKey, topic_key},
};
use shardcast_dataplane::{Dataplane, RouterConfig, action, mac_address};
use shardcast_plan::Plan;

/// Three names of the form `n/<i>` sharing one entry, sorted by key (the
/// smallest holds the entry when routed), and one whose entry none of them
/// has.
fn colliding_names() -> ([String; 3], String) {
    let first = "n/0";
    let mut same = integration_tests::names_sharing_entry_of(first, "n/", 2);
    same.push(first.into());
    same.sort_by_key(|n| topic_key(n.as_bytes()));
    let index = name_index(topic_key(first.as_bytes()));
    let other = (1u32..)
        .map(|i| format!("n/{i}"))
        .find(|n| name_index(topic_key(n.as_bytes())) != index)
        .expect("a name elsewhere");
    (same.try_into().expect("three names"), other)
}

/// A plan of three IPv4 shards on `sc0` and `topics` (name, shard id).
fn plan(generation: u64, topics: &[(&str, u32)]) -> Plan {
    let topics: Vec<String> = topics
        .iter()
        .map(|(n, s)| format!(r#"{{"name": "{n}", "shards": [{s}]}}"#))
        .collect();
    Plan::from_json(&format!(
        r#"{{
      "generation": {generation},
      "shards": [
        {{"id": 1, "group_v4": "239.1.1.1", "egress": "sc0"}},
        {{"id": 2, "group_v4": "239.1.1.2", "egress": "sc0"}},
        {{"id": 3, "group_v4": "239.1.1.3", "egress": "sc0"}}
      ],
      "topics": [{}]
    }}"#,
        topics.join(",")
    ))
    .expect("test plan parses")
}

/// A CoAP NON PUT of the usual shape to `ps/data/<name>`, untagged (the
/// fast path takes it) or with an 802.1Q tag (the general path does).
fn publish(name: &str, vlan: Option<u16>) -> Vec<u8> {
    let mut path = vec!["ps", "data"];
    path.extend(name.split('/'));
    frame(
        L3::V4,
        vlan,
        40000,
        fixtures::COAP,
        &build::coap_request(coap::TYPE_NON, coap::CODE_PUT, 7, &[0xa1], &path, b"21.5"),
    )
}

/// Routes `name` by both paths and checks it left for shard `shard` (1-3)
/// byte for byte, or went to the stack unchanged and counted unrouted
/// (`None`): both look names up the same way (`route_by_name`).
fn check(dp: &Dataplane, name: &str, shard: Option<u8>, step: &str) {
    for vlan in [None, Some(42)] {
        check_one(
            dp,
            &publish(name, vlan),
            name,
            shard,
            &format!("{step}, vlan {vlan:?}"),
        );
    }
}

fn check_one(dp: &Dataplane, f: &[u8], name: &str, shard: Option<u8>, step: &str) {
    let before = unrouted(dp, topic_key(name.as_bytes()));
    let r = dp.test_run(f, 1).unwrap();
    match shard {
        Some(s) => {
            let out = ShardOut {
                group_v4: Some([239, 1, 1, s]),
                group_v6: None,
                port: 0,
                src_mac: mac_address("sc0").unwrap(),
            };
            assert_eq!(r.action, action::REDIRECT, "{step}: {name} not routed");
            assert_eq!(
                r.output,
                fixtures::expected_output(f, &out),
                "{step}: {name} rewritten for another shard than {s}"
            );
        }
        None => {
            assert_eq!(r.action, action::PASS, "{step}: {name} routed");
            assert_eq!(r.output, f, "{step}: {name} modified");
            assert_eq!(
                unrouted(dp, topic_key(name.as_bytes())),
                before + 1,
                "{step}: {name} not counted as unrouted"
            );
        }
    }
}

/// The routes the data plane reports (`snapshot`: the hash map and the
/// name array together, neither holding a route the other does) are the
/// plan's, each once, to its shard.
fn check_snapshot(dp: &Dataplane, topics: &[(&str, u32)], step: &str) {
    let mut got: Vec<(TopicKey, u32)> = dp
        .snapshot()
        .unwrap()
        .routes
        .iter()
        .map(|(k, r)| (*k, r.first.id))
        .collect();
    got.sort();
    let mut want: Vec<(TopicKey, u32)> = topics
        .iter()
        .map(|(n, s)| (topic_key(n.as_bytes()), *s))
        .collect();
    want.sort();
    assert_eq!(got, want, "{step}: the routes read back");
}

fn unrouted(dp: &Dataplane, key: TopicKey) -> u64 {
    dp.counters()
        .unwrap()
        .unrouted
        .get(&key)
        .map_or(0, |c| c.packets)
}

#[test]
fn names_sharing_an_entry_each_reach_their_shard() {
    lab()
        .run(|| {
            let ([a, b, c], elsewhere) = colliding_names();
            let mut dp =
                Dataplane::load(&integration_tests::object(), &RouterConfig::default()).unwrap();
            dp.set_incremental(true);
            let reasons = |dp: &Dataplane| dp.counters().unwrap().reasons;

            // `a` holds the entry, `b` is found in the hash map, `c` (same
            // entry) and `elsewhere` (a free entry) are not in the plan.
            let first = plan(1, &[(&a, 1), (&b, 2)]);
            dp.install(&first.compile().unwrap(), false).unwrap();
            check_snapshot(&dp, &[(&a, 1), (&b, 2)], "gen 1");
            check(&dp, &a, Some(1), "gen 1");
            check(&dp, &b, Some(2), "gen 1");
            check(&dp, &c, None, "gen 1");
            check(&dp, &elsewhere, None, "gen 1");
            assert_eq!(
                reasons(&dp).get(&Reason::NoRoute).map(|c| c.packets),
                Some(4),
                "the two unrouted publishes, by both paths, are counted no_route"
            );

            // The same plan again fills the other slot; the next installs
            // then rewrite each slot in place (incremental).
            dp.install(&plan(2, &[(&a, 1), (&b, 2)]).compile().unwrap(), false)
                .unwrap();
            // The holder leaves the plan: `b` takes its entry, moved to shard 3.
            let r = dp
                .install(&plan(3, &[(&b, 3)]).compile().unwrap(), false)
                .unwrap();
            assert!(r.changed <= 2, "gen 3 was not incremental: {r:?}");
            check_snapshot(&dp, &[(&b, 3)], "gen 3");
            check(&dp, &a, None, "gen 3");
            check(&dp, &b, Some(3), "gen 3");
            check(&dp, &c, None, "gen 3");

            // Written over gen 2's slot: `a` back on shard 2, `b` gone, `c`
            // routed now (held by `a`, so found in the hash map).
            dp.install(&plan(4, &[(&a, 2), (&c, 1)]).compile().unwrap(), false)
                .unwrap();
            check_snapshot(&dp, &[(&a, 2), (&c, 1)], "gen 4");
            check(&dp, &a, Some(2), "gen 4");
            check(&dp, &b, None, "gen 4");
            check(&dp, &c, Some(1), "gen 4");

            // And over gen 3's slot, which had `b` in the entry.
            dp.install(
                &plan(5, &[(&c, 3), (&elsewhere, 2)]).compile().unwrap(),
                false,
            )
            .unwrap();
            check(&dp, &a, None, "gen 5");
            check(&dp, &b, None, "gen 5");
            check(&dp, &c, Some(3), "gen 5");
            check(&dp, &elsewhere, Some(2), "gen 5");
            check_snapshot(&dp, &[(&c, 3), (&elsewhere, 2)], "gen 5");
        })
        .unwrap();
}

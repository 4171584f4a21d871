//! Topic-key parity: the keys the XDP program derives in the kernel are
//! the keys the control plane derives from the names, for MQTT-SN and CoAP.

use integration_tests::{
    L3, build,
    fixtures::{self},
    frame,
    xdp::{short_publish, unrouted_keys},
};
use router_common::topic::topic_key;

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

//! Helpers of the in-kernel tests of the XDP program: a namespace to load
//! it in, the router with the fixture plan, frames that route again on
//! every repetition, and the unrouted keys a plan leaves.

use std::collections::BTreeMap;

use router_common::topic::TopicKey;
use shardcast_dataplane::{Dataplane, FanoutPath, RouterConfig, action};

use crate::{
    L3, NetNs, build,
    fixtures::{self, ShardOut},
    frame,
};

/// A namespace with a veth pair; the router is loaded (not attached) in it
/// and the fixture plan installed with `sc0` as every shard's egress.
pub fn lab() -> NetNs {
    let ns = NetNs::new("scfx").unwrap();
    ns.ip(&["link", "add", "sc0", "type", "veth", "peer", "name", "sc1"])
        .unwrap();
    ns.ip(&["link", "set", "sc0", "up"]).unwrap();
    ns.ip(&["link", "set", "sc1", "up"]).unwrap();
    ns
}

/// The router loaded in this thread's namespace with the fixture plan
/// installed (`sc0` as every shard's egress), multi-shard publishes handed
/// to the TC fan-out (the hand-off the model computes).
pub fn routed(config: RouterConfig) -> Dataplane {
    routed_with(config, FanoutPath::Tc)
}

/// [`routed`] with multi-shard publishes fanned out by `path`.
pub fn routed_with(config: RouterConfig, path: FanoutPath) -> Dataplane {
    let mut dp = Dataplane::load(&crate::object(), &config).unwrap();
    dp.set_fanout_path(path);
    dp.install(&fixtures::plan("sc0", 1).compile().unwrap(), false)
        .unwrap();
    dp
}

/// An MQTT-SN QoS 0/-1 PUBLISH of `id` (TopicIdType in `flags`) with TTL
/// 255: routed to shard 1 of the fixture plan (which keeps the port), every
/// repetition on the buffer routes again (see `max_ttl`).
pub fn repeatable_publish(l3: L3, flags: u8, id: u16) -> Vec<u8> {
    crate::max_ttl(frame(
        l3,
        None,
        1,
        fixtures::MQTTSN,
        &build::mqttsn_publish(false, flags, id.to_be_bytes(), 0, b"x"),
    ))
}

/// [`repeatable_publish`] of IPv4 or IPv6 from `src`.
pub fn repeatable_publish_from(src: std::net::IpAddr, flags: u8, id: u16) -> Vec<u8> {
    crate::max_ttl(crate::frame_from(
        src,
        1,
        fixtures::MQTTSN,
        &build::mqttsn_publish(false, flags, id.to_be_bytes(), 0, b"x"),
    ))
}

/// Loads the router in a fresh lab with `plan`, runs every frame (each
/// must go to the stack: its topic is not routed) and returns the keys the
/// kernel counted as unrouted, sorted.
pub fn unrouted_keys(plan: shardcast_plan::Plan, frames: Vec<Vec<u8>>) -> Vec<TopicKey> {
    let mut keys = lab()
        .run(move || {
            let mut dp = Dataplane::load(&crate::object(), &RouterConfig::default()).unwrap();
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
pub fn short_publish(name: [u8; 2], data: &[u8]) -> Vec<u8> {
    frame(
        L3::V4,
        None,
        1,
        fixtures::MQTTSN,
        &build::mqttsn_publish(false, 2, name, 0, data),
    )
}

/// Where each shard of the fixture plan sends, read off the plan itself.
pub fn shard_outs(mac: [u8; 6]) -> BTreeMap<u32, ShardOut> {
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

//! Multi-shard publishes through the attached router (XDP on the ingress,
//! the fan-out program at its TC ingress) with real frames: one copy per
//! shard of the route, in route order, each byte for byte what the host
//! model computes for that shard (the single-shard rewrite), for 2 and 16
//! shards, both families, MQTT-SN and CoAP, tagged and untagged; and the
//! same by both ways a multi-shard publish leaves: by XDP broadcast (the
//! copy program on each copy, the default where every shard shares an
//! egress) and by the TC fan-out program, through the clsact (netlink)
//! attachment kernels before 6.6 get, which `detach` removes again.
//!
//! ```text
//!  a0 ──veth── a1 [XDP router, TC fan-out]      b0 ──veth── b1 (captured)
//!  (frames sent raw)                            (shards 1-16's egress)
//!                                               c0 ──veth── c1 (captured)
//!                                               (shard 17's egress)
//! ```

use std::{path::PathBuf, time::Duration};

use integration_tests::{
    L3, NetNs, frame,
    model::{self, Settings, Verdict},
    rawsock::{captured, packet_socket, send_raw},
    shape_plan::{shape_number, shape_plan},
    unique,
};
use router_common::{maps::names, mqttsn::TOPIC_SHORT, reason::Reason};
use shardcast_dataplane::{
    AttachOptions, Dataplane, FanoutPath, Mode, RouterConfig, TcAttach, mac_address,
};
use shardcast_plan::Plan;

const MQTTSN: u16 = 1884;
const COAP: u16 = 5683;

/// A topic name sharing `ab`'s entry in the name array: the array holds
/// the smaller key's route and the hash map the other's, so one of the two
/// is found in the hash map by every program that looks it up (the
/// router, the copy program, the TC fan-out).
fn sharing_abs_entry() -> String {
    integration_tests::names_sharing_entry_of("ab", "z", 1).remove(0)
}

/// 16 shards on `b0` (shard 2 on port 7000, the rest keep the publish's)
/// and shard 17 on `c0`; `ab` on shards 1-16, `cd` on 9 and 3, `ef` on 3,
/// 17 and 5 (two egresses), and the name sharing `ab`'s name-array entry
/// on 2 and 17.
fn plan() -> Plan {
    let shards: Vec<String> = (1..=17)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "group_v4": "239.3.0.{i}", "group_v6": "ff15::3:{i}", "egress": "{}"{}}}"#,
                if i == 17 { "c0" } else { "b0" },
                if i == 2 { r#", "port": 7000"# } else { "" }
            )
        })
        .collect();
    let all: Vec<String> = (1..=16).map(|i| i.to_string()).collect();
    Plan::from_json(&format!(
        r#"{{"generation": 1, "shards": [{}],
            "topics": [{{"name": "ab", "shards": [{}]}}, {{"name": "cd", "shards": [9, 3]}},
                       {{"name": "ef", "shards": [3, 17, 5]}},
                       {{"name": "{}", "shards": [2, 17]}}]}}"#,
        shards.join(","),
        all.join(","),
        sharing_abs_entry()
    ))
    .unwrap()
}

fn mqttsn(topic: &[u8; 2]) -> Vec<u8> {
    router_common::build::mqttsn_publish(
        false,
        router_common::build::qos0(TOPIC_SHORT),
        *topic,
        0,
        b"21.5C",
    )
}

fn coap(topic: &str) -> Vec<u8> {
    router_common::build::coap_request(
        router_common::coap::TYPE_NON,
        router_common::coap::CODE_PUT,
        7,
        &[],
        &["ps", "data", topic],
        b"on",
    )
}

/// How each route of the installed generation leaves: (key, `fanout`),
/// sorted.
fn ways(dp: &Dataplane) -> Result<Vec<(u64, u16)>, String> {
    let mut w: Vec<(u64, u16)> = dp
        .snapshot()
        .map_err(|e| e.to_string())?
        .routes
        .iter()
        .map(|(k, r)| (k.hash, r.fanout))
        .collect();
    w.sort_unstable();
    Ok(w)
}

/// What a process adopting the pins (a daemon restarted) does with the
/// same plan again (as generation 2): how its routes leave.
fn ways_after_adopting(pin_root: &std::path::Path, plan: &Plan) -> Result<Vec<(u64, u16)>, String> {
    let mut adopted = Dataplane::open(pin_root).map_err(|e| e.to_string())?;
    let mut again = plan.clone();
    again.generation = 2;
    adopted
        .install(&again.compile().map_err(|e| e.to_string())?, false)
        .map_err(|e| e.to_string())?;
    ways(&adopted)
}

/// What these tests attach: the router on `ingress` (its TC fan-out too),
/// with `egresses`.
fn options(
    ingress: &str,
    egresses: &[&str],
    mode: Mode,
    tc: TcAttach,
    fanout: FanoutPath,
) -> AttachOptions {
    AttachOptions {
        object: integration_tests::object(),
        ingress: vec![ingress.into()],
        egress: egresses.iter().map(|e| e.to_string()).collect(),
        mode,
        tc,
        fanout,
        config: RouterConfig::default(),
    }
}

/// Attaches the router in the namespace this thread is in, sends each
/// frame into `a1` and checks what leaves `b0` against the model.
fn check_copies(tc: TcAttach, fanout: FanoutPath, mode: Mode) -> Result<(), String> {
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/{}", unique("scfan")));
    let mut dp = Dataplane::attach(&pin_root, &options("a1", &["b0", "c0"], mode, tc, fanout))
        .map_err(|e| format!("attach: {e}"))?;
    // veth hands XDP frames (single-shard redirects, broadcast copies)
    // only to a peer that runs XDP; the TC way sends skbs, which need not.
    if fanout == FanoutPath::Auto {
        for peer in ["b1", "c1"] {
            dp.attach_pass(peer, Mode::Driver)
                .map_err(|e| format!("attach pass {peer}: {e}"))?;
        }
    }
    let result = (|| {
        // The netlink attachment is a clsact filter, the TCX one a link.
        let filters = integration_tests::sh("tc", &["filter", "show", "dev", "a1", "ingress"])
            .map_err(|e| e.to_string())?;
        let pinned_link = pin_root
            .join(format!("v{}", router_common::maps::LAYOUT_VERSION))
            .join(format!("link_{}_a1", names::PROG_FANOUT))
            .exists();
        match tc {
            TcAttach::Netlink => {
                // The kernel keeps 15 bytes of a program's name.
                if !filters.contains(&names::PROG_FANOUT[..15]) || pinned_link {
                    let qdiscs = integration_tests::sh("tc", &["qdisc", "show", "dev", "a1"])
                        .unwrap_or_default();
                    return Err(format!(
                        "not a clsact filter: {filters:?} (qdiscs {qdiscs:?}), link pinned {pinned_link}"
                    ));
                }
            }
            _ => {
                if !pinned_link {
                    return Err("no pinned TCX link".into());
                }
            }
        }
        let plan = plan();
        let compiled = plan.compile().map_err(|e| e.to_string())?;
        dp.install(&compiled, false).map_err(|e| e.to_string())?;
        // A process adopting the pins (a daemon restarted) finds the
        // device maps already made and routes by the same ones.
        let before = ways(&dp)?;
        let after = ways_after_adopting(&pin_root, &plan)?;
        if after != before {
            return Err(format!(
                "an adopting process routes by other device maps: {before:?} then {after:?}"
            ));
        }
        // What `maps dump` tells the operator: how each route leaves.
        let dump = std::process::Command::new(integration_tests::ctl_binary())
            .args(["--json", "--pin-root"])
            .arg(&pin_root)
            .args(["maps", "dump"])
            .output()
            .map_err(|e| format!("router-ctl maps dump: {e}"))?;
        let dump: serde_json::Value = serde_json::from_slice(&dump.stdout)
            .map_err(|e| format!("maps dump --json: {e}: {:?}", dump))?;
        // What the attach chose: broadcast where asked, but never in
        // generic XDP, nor where the kernel refused the copy program.
        let fanout = if dp.broadcasts() {
            FanoutPath::Auto
        } else {
            FanoutPath::Tc
        };
        if mode == Mode::Skb && fanout == FanoutPath::Auto {
            return Err("generic XDP attached with the broadcast way".into());
        }
        let way = match fanout {
            FanoutPath::Auto => "broadcast",
            FanoutPath::Tc => "tc",
        };
        let ways: Vec<&str> = dump["routes"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r["fanout"].as_str()).collect())
            .unwrap_or_default();
        let egress_broadcast: Vec<Option<bool>> = (0..2)
            .map(|i| dump["egress"][i]["broadcast"].as_bool())
            .collect();
        let auto = Some(fanout == FanoutPath::Auto);
        if ways != [way; 4] || egress_broadcast != [auto, auto] {
            return Err(format!(
                "maps dump: routes {ways:?} (want {way} four times), egress broadcast {egress_broadcast:?}"
            ));
        }
        // Each egress's copies, computed with its own source MAC.
        let egresses = [("b0", "b1"), ("c0", "c1")];
        let settings: Vec<Settings> = egresses
            .iter()
            .map(|(e, _)| Settings::default_with_mac(mac_address(e).unwrap()))
            .collect();
        let leaves_by = |shard_index: usize| -> usize {
            usize::from(compiled.shards[shard_index].egress == "c0")
        };
        let tx = packet_socket("a0");
        let rx: Vec<_> = egresses
            .iter()
            .map(|(_, peer)| packet_socket(peer))
            .collect();
        for r in &rx {
            captured(r);
        }
        let frames = [
            (
                "v4 MQTT-SN to 16 shards",
                frame(L3::V4, None, 40000, MQTTSN, &mqttsn(b"ab")),
            ),
            (
                "v6 CoAP to 16 shards",
                frame(L3::V6, None, 40001, COAP, &coap("ab")),
            ),
            (
                "tagged v4 CoAP to 2 shards",
                frame(L3::V4, Some(42), 40001, COAP, &coap("cd")),
            ),
            (
                "v6 MQTT-SN to 2 shards",
                frame(L3::V6, None, 40000, MQTTSN, &mqttsn(b"cd")),
            ),
            (
                "v4 MQTT-SN to 3 shards on 2 egresses",
                frame(L3::V4, None, 40000, MQTTSN, &mqttsn(b"ef")),
            ),
            (
                "tagged v6 CoAP to 3 shards on 2 egresses",
                frame(L3::V6, Some(7), 40001, COAP, &coap("ef")),
            ),
            (
                "v4 CoAP to 2 shards on 2 egresses, its name sharing ab's entry",
                frame(L3::V4, None, 40001, COAP, &coap(&sharing_abs_entry())),
            ),
        ];
        let mut copies_sent = 0;
        for (name, f) in &frames {
            // Per egress, its shards' copies in route order.
            let mut want: [Vec<Vec<u8>>; 2] = Default::default();
            for (e, settings) in settings.iter().enumerate() {
                match model::classify(f, &compiled, settings).verdict {
                    Verdict::FanOut { copies, .. } => want[e].extend(
                        copies
                            .into_iter()
                            .filter(|(shard, _)| leaves_by(*shard) == e)
                            .map(|(_, c)| c.expect("every shard has both families")),
                    ),
                    other => return Err(format!("{name}: the model says {other:?}")),
                }
            }
            send_raw(&tx, f);
            let got: Vec<Vec<Vec<u8>>> = rx.iter().map(captured).collect();
            if got != want {
                let counted: Vec<String> = dp
                    .counters()
                    .map(|c| {
                        c.reasons
                            .iter()
                            .filter(|(_, n)| n.packets != 0)
                            .map(|(r, n)| format!("{} {}", r.label(), n.packets))
                            .collect()
                    })
                    .unwrap_or_default();
                let n = |v: &[Vec<Vec<u8>>]| v.iter().map(Vec::len).collect::<Vec<_>>();
                return Err(format!(
                    "{name}: copies per egress {:?}, want {:?}\n got  {:02x?}\n want {:02x?}\n counted: {}",
                    n(&got),
                    n(&want),
                    got.iter().flatten().next(),
                    want.iter().flatten().next(),
                    counted.join(", ")
                ));
            }
            copies_sent += want.iter().map(Vec::len).sum::<usize>() as u64;
        }
        let c = dp.counters().map_err(|e| e.to_string())?;
        // Each publish went the way asked for, every copy counted once.
        let (way, other) = match fanout {
            FanoutPath::Auto => (Reason::Broadcast, Reason::FannedOut),
            FanoutPath::Tc => (Reason::FannedOut, Reason::Broadcast),
        };
        let (went, not) = (c.reasons[&way].packets, c.reasons[&other].packets);
        let redirected = c.reasons[&Reason::Redirected].packets;
        if went != frames.len() as u64 || not != 0 || redirected != copies_sent {
            return Err(format!(
                "counters: {} {went} (want {}), {} {not} (want 0), redirected {redirected} (want {copies_sent})",
                way.label(),
                frames.len(),
                other.label(),
            ));
        }
        Ok(())
    })();
    drop(dp);
    Dataplane::detach(&pin_root).map_err(|e| format!("detach: {e}"))?;
    let filters = integration_tests::sh("tc", &["filter", "show", "dev", "a1", "ingress"])
        .unwrap_or_default();
    if filters.contains(&names::PROG_FANOUT[..15]) {
        return Err(format!("detach left the fan-out filter: {filters}"));
    }
    result
}

fn lab() -> NetNs {
    let ns = NetNs::new("scfan").unwrap();
    for (a, b) in [("a0", "a1"), ("b0", "b1"), ("c0", "c1")] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])
            .unwrap();
        ns.ip(&["link", "set", a, "up"]).unwrap();
        ns.ip(&["link", "set", b, "up"]).unwrap();
    }
    // Quiet links: no IPv6 autoconfiguration chatter in the capture.
    ns.sysctl("net.ipv6.conf.all.disable_ipv6=1").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    ns
}

#[test]
fn every_shard_of_a_route_gets_its_own_copy() {
    let ns = lab();
    ns.run(|| check_copies(TcAttach::Auto, FanoutPath::Auto, Mode::Driver))
        .unwrap()
        .unwrap();
}

/// What a kernel that refuses the copy program (or `--fanout tc`) does.
#[test]
fn the_tc_fan_out_by_clsact_sends_the_same_copies_and_detaches() {
    let ns = lab();
    ns.run(|| check_copies(TcAttach::Netlink, FanoutPath::Tc, Mode::Driver))
        .unwrap()
        .unwrap();
}

/// Generic XDP (`--mode skb`) keeps no XDP metadata for a device-map
/// egress program, so a broadcast's copies could not be told what they
/// are: an attach in that mode fans out by TC, whatever was asked.
#[test]
fn generic_xdp_fans_out_by_tc() {
    let ns = lab();
    ns.run(|| check_copies(TcAttach::Auto, FanoutPath::Auto, Mode::Skb))
        .unwrap()
        .unwrap();
}

/// Adding a generic-XDP ingress to a data plane that broadcasts is refused
/// with the way out, and leaves the data plane as it was.
#[test]
fn a_generic_ingress_is_refused_where_routes_broadcast() {
    let ns = lab();
    ns.run(|| {
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/{}", unique("scfan")));
        let opts =
            |iface: &str, mode| options(iface, &["b0"], mode, TcAttach::Auto, FanoutPath::Auto);
        let dp = Dataplane::attach(&pin_root, &opts("a1", Mode::Driver)).unwrap();
        let broadcasts = dp.broadcasts();
        drop(dp);
        if !broadcasts {
            Dataplane::detach(&pin_root).unwrap();
            eprintln!("the kernel refused the copy program: nothing broadcasts to refuse");
            return;
        }
        let err = Dataplane::attach(&pin_root, &opts("b1", Mode::Skb))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let link_b1 = pin_root
            .join(format!("v{}", router_common::maps::LAYOUT_VERSION))
            .join(format!("link_{}_b1", names::PROG_ROUTER))
            .exists();
        Dataplane::detach(&pin_root).unwrap();
        assert!(err.contains("--fanout tc"), "error: {err:?}");
        assert!(!link_b1, "the refused attach left a link on b1");
    })
    .unwrap();
}

/// Attaches the router on `a1` with `egresses` in a namespace holding
/// those veths (and `a0`-`a1`), installs the shape plan of `egresses`
/// (`shape_plan`) and hands the data plane and its pin root to `check`;
/// detaches whatever happens. Where the kernel refuses the copy program
/// nothing broadcasts, and there is nothing to check here (the TC way has
/// its own tests).
fn with_shapes(
    egresses: &'static [&'static str],
    limit: usize,
    reversed: bool,
    check: impl FnOnce(&Dataplane, &std::path::Path, &Plan) -> Result<(), String> + Send + 'static,
) {
    let ns = NetNs::new("scfan").unwrap();
    for a in std::iter::once("a0").chain(egresses.iter().copied()) {
        let b = format!("{}1", &a[..1]);
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", &b])
            .unwrap();
        ns.ip(&["link", "set", a, "up"]).unwrap();
        ns.ip(&["link", "set", &b, "up"]).unwrap();
    }
    ns.run(move || {
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/{}", unique("scfan")));
        let mut dp = Dataplane::attach(
            &pin_root,
            &options(
                "a1",
                egresses,
                Mode::Driver,
                TcAttach::Auto,
                FanoutPath::Auto,
            ),
        )
        .unwrap();
        let result = (|| -> Result<(), String> {
            if !dp.broadcasts() {
                eprintln!("the kernel refused the copy program: no shapes to make");
                return Ok(());
            }
            let plan = shape_plan(egresses, limit, reversed);
            dp.install(&plan.compile().map_err(|e| e.to_string())?, false)
                .map_err(|e| e.to_string())?;
            check(&dp, &pin_root, &plan)
        })();
        drop(dp);
        Dataplane::detach(&pin_root).unwrap();
        result.unwrap();
    })
    .unwrap();
}

/// A plan whose routes span two egresses in every way they can (120
/// shapes: k = 2..16 shards, 1..k - 1 of them on the first egress), each
/// shape twice (its shards in two orders): each shape gets its own device
/// map at the first install, made together, routes of one shape share
/// it, and a process adopting the pins finds every map again by its
/// entries' egresses (a map with the wrong entries would be made anew,
/// under another slot).
#[test]
fn every_two_egress_shape_gets_a_map_and_is_adopted() {
    with_shapes(&["b0", "c0"], usize::MAX, true, |dp, pin_root, plan| {
        let shape_of: std::collections::HashMap<u64, usize> = plan
            .topics
            .iter()
            .map(|t| {
                let n = shape_number(&t.name).expect("a shape plan's topic");
                (router_common::topic::topic_key(t.name.as_bytes()).hash, n)
            })
            .collect();
        let before = ways(dp)?;
        if before.len() != 240 {
            return Err(format!("{} routes installed, want 240", before.len()));
        }
        // One map per shape: the same slot for a shape's two topics,
        // another for every other shape, none by TC (0) or by an
        // egress's own maps (slots below the shapes').
        let mut slot_of_shape = std::collections::HashMap::new();
        for &(key, fanout) in &before {
            let shape = shape_of[&key];
            if (fanout as u32) <= router_common::maps::FANOUT_SINGLE_EGRESS {
                return Err(format!("shape {shape} routed by fan-out slot {fanout}"));
            }
            if *slot_of_shape.entry(shape).or_insert(fanout) != fanout {
                return Err(format!("shape {shape}'s topics by two maps"));
            }
        }
        let slots: std::collections::HashSet<u16> = slot_of_shape.values().copied().collect();
        if slots.len() != 120 {
            return Err(format!("{} maps for 120 shapes", slots.len()));
        }
        if ways_after_adopting(pin_root, plan)? != before {
            return Err("an adopting process routes shapes by other device maps".into());
        }
        Ok(())
    });
}

/// More shapes than `SC_FANOUT` has slots for (routes over four egresses
/// in 1,100 ways): the install still succeeds, the first 1,024 shapes get
/// their maps and the routes of the rest fan out by TC.
#[test]
fn shapes_beyond_the_slots_fan_out_by_tc() {
    use router_common::maps::{FANOUT_SHAPES, FANOUT_SINGLE_EGRESS};
    with_shapes(&["d0", "e0", "f0", "g0"], 1_100, false, |dp, _, _| {
        let ways = ways(dp)?;
        let by_shape: std::collections::HashSet<u16> = ways
            .iter()
            .map(|&(_, f)| f)
            .filter(|&f| f as u32 > FANOUT_SINGLE_EGRESS)
            .collect();
        let by_tc = ways.iter().filter(|&&(_, f)| f == 0).count();
        if by_shape.len() != FANOUT_SHAPES as usize || by_tc != 1_100 - by_shape.len() {
            return Err(format!(
                "{} shapes by their maps, {by_tc} routes by TC; want {FANOUT_SHAPES} and {}",
                by_shape.len(),
                1_100 - FANOUT_SHAPES
            ));
        }
        Ok(())
    });
}

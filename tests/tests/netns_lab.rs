//! Real packets through real namespaces: publisher → XDP router → bridge →
//! subscribers (see `integration_tests::lab`). Each subscriber must get
//! exactly its shard's publishes, byte for byte; nothing may leak; ordinary
//! traffic must still cross the router; a third-party CoAP client must be
//! routed; and what the router emits must decode cleanly in tshark.

use std::{
    collections::BTreeMap,
    net::{IpAddr, UdpSocket},
    time::Duration,
};

use integration_tests::{
    build,
    lab::{COAP_PORT, Lab, LabShard, MQTTSN_PORT, PUBLISHER_V4, PUBLISHER_V6, ROUTER_V4},
};
use router_common::{coap, reason::Reason};

const GRACE: Duration = Duration::from_millis(500);

/// MQTT-SN PUBLISH, QoS 0, short topic name (TopicIdType 0b10).
fn mqttsn(topic: &str, data: &[u8]) -> Vec<u8> {
    let t: [u8; 2] = topic.as_bytes().try_into().expect("2-byte short name");
    build::mqttsn_publish(false, 0b10, t, 1, data)
}

/// CoAP NON PUT to `ps/data/<topic>`.
fn coap_put(topic: &str, data: &[u8]) -> Vec<u8> {
    build::coap_request(
        coap::TYPE_NON,
        coap::CODE_PUT,
        7,
        &[0xab],
        &["ps", "data", topic],
        data,
    )
}

fn groups_of(shard: &LabShard) -> Vec<(IpAddr, u16)> {
    let mut g = Vec::new();
    for port in [MQTTSN_PORT, COAP_PORT] {
        g.push((IpAddr::V4(shard.group_v4), port));
        g.push((IpAddr::V6(shard.group_v6), port));
    }
    g
}

/// Three shards, one subscriber each, topics t1..t3 on shards 1..3.
fn lab3() -> (Lab, Vec<LabShard>) {
    let mut lab = Lab::new(3).unwrap();
    lab.attach().unwrap();
    let shards: Vec<_> = (1..=3).map(LabShard::numbered).collect();
    let plan = Lab::plan_json(1, &shards, &[("t1", &[1]), ("t2", &[2]), ("t3", &[3])]);
    lab.apply(&plan).unwrap();
    (lab, shards)
}

/// Subscriber `k` listening on shard `k`'s groups, for each shard.
fn listen_all(lab: &Lab, shards: &[LabShard]) -> Vec<integration_tests::lab::Listener> {
    shards
        .iter()
        .enumerate()
        .map(|(k, s)| lab.listen(k, groups_of(s)).unwrap())
        .collect()
}

/// A publish sent: over IPv6?, to which port, the datagram.
type Sent = (bool, u16, Vec<u8>);

/// Per topic, per family, per protocol: 10 publishes with unique bodies;
/// returns what was sent, per topic.
fn publish_each<'t>(lab: &Lab, topics: &[&'t str]) -> BTreeMap<&'t str, Vec<Sent>> {
    let mut sent: BTreeMap<&str, Vec<Sent>> = BTreeMap::new();
    for &topic in topics {
        for v6 in [false, true] {
            let mut m = Vec::new();
            let mut c = Vec::new();
            for n in 0..10 {
                let body = format!("{topic}/{}/{n}", if v6 { "v6" } else { "v4" });
                m.push(mqttsn(topic, body.as_bytes()));
                c.push(coap_put(topic, body.as_bytes()));
            }
            lab.publish(v6, MQTTSN_PORT, m.clone()).unwrap();
            lab.publish(v6, COAP_PORT, c.clone()).unwrap();
            let e = sent.entry(topic).or_default();
            e.extend(m.into_iter().map(|p| (v6, MQTTSN_PORT, p)));
            e.extend(c.into_iter().map(|p| (v6, COAP_PORT, p)));
        }
    }
    sent
}

#[test]
fn each_subscriber_gets_exactly_its_shards_publishes() {
    let (lab, shards) = lab3();
    let listeners = listen_all(&lab, &shards);

    // "zz" has no route: it must reach nobody.
    let sent = publish_each(&lab, &["t1", "t2", "t3", "zz"]);

    for (k, l) in listeners.into_iter().enumerate() {
        let got = l.finish(GRACE).unwrap();
        let topic = ["t1", "t2", "t3"][k];
        let shard = &shards[k];
        let mut want: Vec<_> = sent[topic]
            .iter()
            .map(|(v6, port, p)| {
                let group = if *v6 {
                    IpAddr::V6(shard.group_v6)
                } else {
                    IpAddr::V4(shard.group_v4)
                };
                let from = if *v6 {
                    IpAddr::V6(PUBLISHER_V6)
                } else {
                    IpAddr::V4(PUBLISHER_V4)
                };
                (group, *port, from, p.clone())
            })
            .collect();
        let mut have: Vec<_> = got
            .into_iter()
            .map(|r| (r.group, r.port, r.from, r.payload))
            .collect();
        want.sort();
        have.sort();
        let missing: Vec<_> = want.iter().filter(|w| !have.contains(w)).collect();
        let extra: Vec<_> = have.iter().filter(|h| !want.contains(h)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "subscriber {k}: {} missing, {} extra; first missing {:?}, first extra {:?}",
            missing.len(),
            extra.len(),
            missing.first(),
            extra.first()
        );
        assert_eq!(
            have, want,
            "subscriber {k} got other datagrams than its shard's"
        );
    }

    let c = lab.counters().unwrap();
    let n = |r: Reason| c.reasons.get(&r).map_or(0, |c| c.packets);
    assert_eq!(n(Reason::Redirected), 3 * 40, "redirected");
    assert_eq!(n(Reason::NoRoute), 40, "unrouted publishes counted");

    // What `status` says of the installed plan (read without its routes)
    // agrees with `maps dump` (which reads them all, from the hash map and
    // the name array).
    let json = |args: &[&str]| -> serde_json::Value {
        let mut argv = vec!["--json"];
        argv.extend(args);
        serde_json::from_str(&lab.ctl_output(&argv).unwrap()).unwrap()
    };
    let status = json(&["status"]);
    let dump = json(&["maps", "dump"]);
    assert_eq!(status["generation"], 1, "{status}");
    assert_eq!(status["shards"], 3, "{status}");
    assert_eq!(
        status["routes"].as_u64(),
        dump["routes"].as_array().map(|r| r.len() as u64),
        "status {status}\ndump {dump}"
    );
    assert!(status["active_slot"].is_u64(), "{status}");
    assert_eq!(status["active_slot"], dump["active_slot"], "{status}");
    assert_eq!(
        status["egress"].as_u64(),
        dump["egress"].as_array().map(|e| e.len() as u64),
        "{status}"
    );
}

/// A topic on three of four shards, published over both families and
/// both protocols: each of the three shards' subscribers gets every
/// publish exactly once (one copy per shard, by broadcast or by TC), the
/// fourth shard's subscriber only its own topic.
#[test]
fn a_topic_on_three_shards_reaches_each_once_and_no_one_else() {
    let mut lab = Lab::new(4).unwrap();
    lab.attach().unwrap();
    let shards: Vec<_> = (1..=4).map(LabShard::numbered).collect();
    let plan = Lab::plan_json(1, &shards, &[("al", &[1, 2, 3]), ("t4", &[4])]);
    lab.apply(&plan).unwrap();
    let listeners = listen_all(&lab, &shards);
    let sent = publish_each(&lab, &["al", "t4"]);
    for (k, l) in listeners.into_iter().enumerate() {
        let got = l.finish(GRACE).unwrap();
        let topic = if k < 3 { "al" } else { "t4" };
        let shard = &shards[k];
        let mut want: Vec<_> = sent[topic]
            .iter()
            .map(|(v6, port, p)| {
                let (group, from) = if *v6 {
                    (IpAddr::V6(shard.group_v6), IpAddr::V6(PUBLISHER_V6))
                } else {
                    (IpAddr::V4(shard.group_v4), IpAddr::V4(PUBLISHER_V4))
                };
                (group, *port, from, p.clone())
            })
            .collect();
        let mut have: Vec<_> = got
            .into_iter()
            .map(|r| (r.group, r.port, r.from, r.payload))
            .collect();
        want.sort();
        have.sort();
        // Exactly once: no duplicate, nothing missing, nothing else.
        assert_eq!(
            have.len(),
            want.len(),
            "subscriber {k} (shard {}) got {} datagrams, want {}",
            k + 1,
            have.len(),
            want.len()
        );
        assert_eq!(
            have, want,
            "subscriber {k} got other datagrams than its shard's"
        );
    }
    let c = lab.counters().unwrap();
    let n = |r: Reason| c.reasons.get(&r).map_or(0, |c| c.packets);
    // The three shards share the lab's egress: broadcast, not TC (unless
    // the kernel refused the copy program).
    let (way, other) = if lab.broadcasts() {
        (Reason::Broadcast, Reason::FannedOut)
    } else {
        (Reason::FannedOut, Reason::Broadcast)
    };
    assert_eq!(n(way), 40, "{}", way.label());
    assert_eq!(n(other), 0, "{}", other.label());
    assert_eq!(
        n(Reason::Redirected),
        3 * 40 + 40,
        "copies and single-shard redirects"
    );
    assert_eq!(n(Reason::MultiShard), 0);
}

#[test]
fn ping_unrelated_udp_and_non_publishes_reach_the_stack() {
    let (lab, _shards) = lab3();
    // Ping the router and, through it, a subscriber (forwarded by the stack).
    for dst in [
        "198.18.1.1",
        "198.18.2.10",
        "2001:db8:1::1",
        "2001:db8:2::10",
    ] {
        lab.publisher
            .exec("ping", &["-c", "2", "-i", "0.2", "-W", "2", dst])
            .unwrap_or_else(|e| panic!("ping {dst}: {e}"));
    }

    // Unrelated UDP to a subscriber, and MQTT-SN / CoAP messages that are
    // not forwardable publishes to the router's own sockets (the future
    // gateway's): all must arrive intact.
    let unicast = lab.subscribers[0]
        .ns
        .run(|| UdpSocket::bind(("0.0.0.0", 9999)).unwrap())
        .unwrap();
    let gateway = lab
        .router
        .run(|| {
            (
                UdpSocket::bind((ROUTER_V4, MQTTSN_PORT)).unwrap(),
                UdpSocket::bind((ROUTER_V4, COAP_PORT)).unwrap(),
            )
        })
        .unwrap();
    let connect = vec![0x08, 0x04, 0x04, 0x01, 0x00, 0x3c, b'd', b'1'];
    let qos1 = build::mqttsn_publish(false, 0b0010_0010, *b"t1", 9, b"q1");
    let con = build::coap_request(
        coap::TYPE_CON,
        coap::CODE_PUT,
        8,
        &[],
        &["ps", "data", "t1"],
        b"con",
    );
    let (c2, q2, con2) = (connect.clone(), qos1.clone(), con.clone());
    lab.publisher
        .run(move || {
            let s = UdpSocket::bind((PUBLISHER_V4, 0)).unwrap();
            s.send_to(b"hello", ("198.18.2.10", 9999)).unwrap();
            s.send_to(&c2, (ROUTER_V4, MQTTSN_PORT)).unwrap();
            s.send_to(&q2, (ROUTER_V4, MQTTSN_PORT)).unwrap();
            s.send_to(&con2, (ROUTER_V4, COAP_PORT)).unwrap();
        })
        .unwrap();
    let recv = |s: &UdpSocket| {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = s.recv_from(&mut buf).expect("datagram");
        assert_eq!(from.ip(), IpAddr::V4(PUBLISHER_V4));
        buf[..n].to_vec()
    };
    assert_eq!(recv(&unicast), b"hello");
    assert_eq!(recv(&gateway.0), connect);
    assert_eq!(recv(&gateway.0), qos1);
    assert_eq!(recv(&gateway.1), con);

    let c = lab.counters().unwrap();
    let n = |r: Reason| c.reasons.get(&r).map_or(0, |c| c.packets);
    assert_eq!(n(Reason::MqttSnControl), 1);
    assert_eq!(n(Reason::MqttSnQos), 1);
    assert_eq!(n(Reason::CoapConfirmable), 1);
    assert_eq!(n(Reason::Redirected), 0);
}

/// libcoap's client, as a device would run it, publishing NON PUTs over
/// both families.
#[test]
fn coap_client_notls_publishes_reach_their_shard() {
    let (lab, shards) = lab3();
    let l1 = lab.listen(1, groups_of(&shards[1])).unwrap();
    let l2 = lab.listen(2, groups_of(&shards[2])).unwrap();
    let l0 = lab.listen(0, groups_of(&shards[0])).unwrap();
    for (uri, body) in [
        ("coap://198.18.1.1/ps/data/t2", "21.5"),
        ("coap://[2001:db8:1::1]/ps/data/t3", "v6-body"),
    ] {
        // -N: non-confirmable; -B 1: do not wait long for a response that a
        // router forwarding to a group never sends.
        lab.publisher
            .exec(
                "coap-client-notls",
                &["-m", "put", "-N", "-B", "1", "-e", body, uri],
            )
            .unwrap();
    }
    let got1 = l1.finish(GRACE).unwrap();
    let got2 = l2.finish(Duration::ZERO).unwrap();
    let got0 = l0.finish(Duration::ZERO).unwrap();
    assert!(got0.is_empty(), "shard 1 got {got0:?}");
    for (got, group, body, topic) in [
        (&got1, IpAddr::V4(shards[1].group_v4), "21.5", "t2"),
        (&got2, IpAddr::V6(shards[2].group_v6), "v6-body", "t3"),
    ] {
        assert_eq!(got.len(), 1, "{topic}: {got:?}");
        let r = &got[0];
        assert_eq!((r.group, r.port), (group, COAP_PORT));
        // The datagram is libcoap's own: it parses as a publish of `topic`
        // and ends with the body after the payload marker.
        let (prefix, n) = {
            let mut p = [0u8; router_common::maps::PREFIX_MAX];
            p[..8].copy_from_slice(b"ps/data/");
            (p, 8)
        };
        let parsed = coap::parse_publish(&r.payload[..], &prefix, n).unwrap();
        assert_eq!(
            parsed.key,
            router_common::topic::topic_key(topic.as_bytes())
        );
        assert!(
            r.payload
                .ends_with(&[&[coap::PAYLOAD_MARKER], body.as_bytes()].concat())
        );
    }
}

/// The rewritten frames, captured on a subscriber's link, decode in
/// Wireshark's dissectors as well-formed MQTT-SN and CoAP to the group, with
/// good IP and UDP checksums.
#[test]
fn tshark_decodes_what_the_router_emits() {
    let (lab, shards) = lab3();
    let pcap = std::env::temp_dir().join(format!("{}.pcap", integration_tests::unique("sccap")));
    let mut tshark =
        integration_tests::tshark_capture(&lab.subscribers[0].ns.name, "eth0", "udp", &pcap)
            .unwrap();
    let l = lab.listen(0, groups_of(&shards[0])).unwrap();
    for v6 in [false, true] {
        lab.publish(v6, MQTTSN_PORT, vec![mqttsn("t1", b"m-body")])
            .unwrap();
        lab.publish(v6, COAP_PORT, vec![coap_put("t1", b"c-body")])
            .unwrap();
    }
    assert_eq!(l.finish(GRACE).unwrap().len(), 4);
    integration_tests::sh("kill", &["-INT", &tshark.id().to_string()]).unwrap();
    tshark.wait().unwrap();

    let out = integration_tests::sh(
        "tshark",
        &[
            "-r",
            &pcap.display().to_string(),
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-d",
            "udp.port==1884,mqttsn",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
            "-e",
            "ip.checksum.status",
            "-e",
            "udp.checksum.status",
            "-e",
            "mqttsn.msg.type",
            "-e",
            "mqttsn.topic.id",
            "-e",
            "coap.type",
            "-e",
            "coap.opt.uri_path_recon",
            "-e",
            "_ws.malformed",
            "-e",
            "_ws.expert.severity",
            "-e",
            "_ws.expert.message",
        ],
    )
    .unwrap();
    let _ = std::fs::remove_file(&pcap);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 4, "four frames captured:\n{out}");
    let g4 = shards[0].group_v4.to_string();
    let g6 = shards[0].group_v6.to_string();
    let mut kinds = Vec::new();
    for r in &rows {
        let [
            ip,
            ip6,
            ipck,
            udpck,
            mtype,
            mtopic,
            ctype,
            cpath,
            malformed,
            expert,
            expert_message,
        ] = r[..]
        else {
            panic!("unexpected row {r:?}");
        };
        assert!(ip == g4 || ip6 == g6, "to the group: {r:?}");
        // Wireshark: checksum status 1 = good.
        if !ip.is_empty() {
            assert_eq!(ipck, "1", "IPv4 header checksum: {r:?}");
        }
        assert_eq!(udpck, "1", "UDP checksum: {r:?}");
        // Wireshark's expert levels: chat (0x200000) and note (0x400000)
        // are information (e.g. a dissector remarking on a field); warning
        // (0x600000) and error (0x800000) are findings.
        let worst = expert
            .split(',')
            .filter_map(|s| s.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        assert!(
            malformed.is_empty() && worst < 0x60_0000,
            "clean decode: {r:?} ({expert_message})"
        );
        if !mtype.is_empty() {
            assert_eq!(mtype, "0x0c", "MQTT-SN PUBLISH: {r:?}");
            let t1 = u16::from_be_bytes(*b"t1").to_string();
            assert_eq!(mtopic, t1, "short topic name t1: {r:?}");
            kinds.push(format!("mqttsn/{}", if ip.is_empty() { 6 } else { 4 }));
        } else {
            assert_eq!(ctype, "1", "CoAP NON: {r:?}");
            assert_eq!(cpath, "/ps/data/t1", "{r:?}");
            kinds.push(format!("coap/{}", if ip.is_empty() { 6 } else { 4 }));
        }
    }
    kinds.sort();
    assert_eq!(kinds, ["coap/4", "coap/6", "mqttsn/4", "mqttsn/6"]);
}

/// The end-to-end bench's driver (`SHARDCAST_BENCH=e2e`): live frames run
/// through the pinned router as if they had arrived on its ingress
/// (`BPF_F_TEST_XDP_LIVE_FRAMES`) are routed and sent on like frames from
/// the wire: each shard's subscriber gets every one of its topic's, by
/// broadcast for a topic on two shards, and the counters say so.
#[test]
fn live_frames_into_the_ingress_reach_their_shards() {
    // Live frames came in Linux 5.18; the router runs on older kernels.
    if !integration_tests::kernel_at_least(5, 18) {
        eprintln!("a kernel before 5.18 runs no live frames: nothing to test");
        return;
    }
    let (lab, shards) = lab3();
    let plan = Lab::plan_json(2, &shards, &[("al", &[1, 2]), ("t3", &[3])]);
    lab.apply(&plan).unwrap();
    let listeners = listen_all(&lab, &shards);
    let frame = |topic: &str| {
        integration_tests::max_ttl(integration_tests::frame_from(
            PUBLISHER_V4.into(),
            40000,
            MQTTSN_PORT,
            &mqttsn(topic, format!("live {topic}").as_bytes()),
        ))
    };
    let (al, t3) = (frame("al"), frame("t3"));
    let pin_root = lab.pin_root().to_path_buf();
    // Few enough that a subscriber's default socket buffer holds them all
    // at once (a frame redirected over veth arrives in a page of its own).
    const FRAMES: u32 = 32;
    lab.router
        .run(move || {
            let dp = shardcast_dataplane::Dataplane::open(&pin_root).unwrap();
            let live = dp.live_frames().unwrap();
            let ingress = shardcast_dataplane::ifindex("r-in").unwrap();
            live.send(&al, ingress, FRAMES, 8).unwrap();
            live.send(&t3, ingress, FRAMES, 8).unwrap();
        })
        .unwrap();
    for (k, l) in listeners.into_iter().enumerate() {
        let got = l.finish(GRACE).unwrap();
        let topic = if k < 2 { "al" } else { "t3" };
        let want = format!("live {topic}");
        let mine = got
            .iter()
            .filter(|r| r.group == IpAddr::V4(shards[k].group_v4) && r.from == PUBLISHER_V4)
            .filter(|r| r.payload.ends_with(want.as_bytes()))
            .count();
        assert_eq!(
            mine,
            FRAMES as usize,
            "subscriber {k}: {} datagrams",
            got.len()
        );
        assert_eq!(got.len(), mine, "subscriber {k} got others' datagrams");
    }
    let c = lab.counters().unwrap();
    let n = |r: Reason| c.reasons.get(&r).map_or(0, |c| c.packets);
    let way = if lab.broadcasts() {
        Reason::Broadcast
    } else {
        Reason::FannedOut
    };
    assert_eq!(n(way), FRAMES as u64, "{}", way.label());
    assert_eq!(n(Reason::Redirected), 3 * FRAMES as u64);
}

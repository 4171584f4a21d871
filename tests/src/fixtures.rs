//! The fixture table: crafted frames, each with the verdict the router must
//! reach and, for redirected frames, the exact bytes it must emit. Used by the
//! in-kernel TestRun tests and by the benchmark (Katran's lib/testing style).
//!
//! Expected output frames are computed independently of the router: the
//! input is parsed with etherparse, the headers changed as the router should
//! change them, and the checksums recomputed from scratch.

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use router_common::{
    build::{coap_option, coap_request, mqttsn_publish, qos_minus1, qos0},
    coap::{CODE_POST, CODE_PUT, TYPE_CON, TYPE_NON},
    mqttsn::{TOPIC_NORMAL, TOPIC_PREDEFINED, TOPIC_SHORT},
    reason::Reason,
};
use shardcast_plan::Plan;

use crate::{L3, frame, frame_v4_options};

pub const MQTTSN: u16 = 1884;
pub const COAP: u16 = 5683;

/// What the router must do with a fixture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// XDP_PASS, counted under this reason.
    Pass(Reason),
    /// XDP_REDIRECT to this shard id.
    Redirect { shard: u32 },
}

#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: &'static str,
    pub packet: Vec<u8>,
    pub expect: Expect,
}

/// The plan the fixtures are written against; `egress` is the interface
/// every shard leaves by. Shard 2's group has the bit that IPv4 multicast
/// MACs drop (239.129 → 01:00:5e:01) and shard 3's a full low word, so the
/// fixtures check how the router derives MACs from groups.
pub fn plan(egress: &str, generation: u64) -> Plan {
    let text = format!(
        r#"{{
      "generation": {generation},
      "shards": [
        {{"id": 1, "group_v4": "239.1.1.1", "group_v6": "ff15::1:1", "egress": "{egress}"}},
        {{"id": 2, "group_v4": "239.129.1.2", "egress": "{egress}", "port": 7000}},
        {{"id": 3, "group_v6": "ff15::8a9b:c3d4", "egress": "{egress}"}}
      ],
      "topics": [
        {{"name": "temp/room1", "shards": [1], "mqttsn_predefined_id": 5}},
        {{"name": "hv", "shards": [2]}},
        {{"name": "ab", "shards": [3]}},
        {{"name": "mu", "shards": [1, 2]}},
        {{"name": "alerts", "shards": [1], "mqttsn_registered_ids": [300]}}
      ]
    }}"#
    );
    Plan::from_json(&text).expect("fixture plan parses")
}

/// CoAP NON PUT to ps/data/hv, no other option: 15 bytes with no token
/// and no payload.
fn coap_sized(token: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = vec![1 << 6 | TYPE_NON << 4 | token.len() as u8, CODE_PUT, 0, 1];
    m.extend_from_slice(token);
    coap_option(&mut m, 11, b"ps");
    coap_option(&mut m, 0, b"data");
    coap_option(&mut m, 0, b"hv");
    if !payload.is_empty() {
        m.push(0xff);
        m.extend_from_slice(payload);
    }
    let want = 15
        + token.len()
        + if payload.is_empty() {
            0
        } else {
            1 + payload.len()
        };
    assert_eq!(m.len(), want);
    m
}

fn pass(name: &'static str, packet: Vec<u8>, r: Reason) -> Fixture {
    Fixture {
        name,
        packet,
        expect: Expect::Pass(r),
    }
}

fn redirect(name: &'static str, packet: Vec<u8>, shard: u32) -> Fixture {
    Fixture {
        name,
        packet,
        expect: Expect::Redirect { shard },
    }
}

fn with_udp_checksum(mut f: Vec<u8>, l4_off: usize, check: u16) -> Vec<u8> {
    f[l4_off + 6..l4_off + 8].copy_from_slice(&check.to_be_bytes());
    f
}

/// Every fixture.
pub fn all() -> Vec<Fixture> {
    use L3::*;
    let short = |t: &[u8; 2], flags: u8, long: bool| mqttsn_publish(long, flags, *t, 0, b"21.5C");
    let coap = |t: u8, code: u8, path: &[&str]| {
        coap_request(t, code, 0x4242, &[1, 2, 3, 4], path, b"{\"v\":1}")
    };
    let room = ["ps", "data", "temp", "room1"];

    let mut ext = vec![1 << 6 | TYPE_NON << 4 | 8, CODE_PUT, 0, 9];
    ext.extend_from_slice(&[9; 8]);
    coap_option(&mut ext, 3, &[b'h'; 20]); // Uri-Host, 1-byte extended length
    coap_option(&mut ext, 8, b"ps");
    coap_option(&mut ext, 0, b"data");
    coap_option(&mut ext, 0, b"alerts");
    coap_option(&mut ext, 289, &[7; 300]); // option 300: 2-byte delta and length
    ext.extend_from_slice(&[0xff, 1, 2, 3]);

    let mut past_end = coap(TYPE_NON, CODE_PUT, &room);
    let cut = past_end.len() - 12;
    past_end.truncate(cut);
    // A 200-byte Uri-Host pushes the path's last segment past the first
    // `coap::WINDOW` bytes; a 300-byte Uri-Query after a short path does not
    // matter, the walk stops before it.
    let mut beyond_window = vec![1 << 6 | TYPE_NON << 4, CODE_PUT, 0, 9];
    coap_option(&mut beyond_window, 3, &[b'h'; 200]);
    coap_option(&mut beyond_window, 8, b"ps");
    coap_option(&mut beyond_window, 0, b"data");
    coap_option(&mut beyond_window, 0, &[b't'; 60]);
    beyond_window.extend_from_slice(&[0xff, 1]);
    let mut big_tail = vec![1 << 6 | TYPE_NON << 4, CODE_PUT, 0, 9];
    for seg in room {
        coap_option(
            &mut big_tail,
            if seg == "ps" { 11 } else { 0 },
            seg.as_bytes(),
        );
    }
    coap_option(&mut big_tail, 4, &[b'q'; 300]);
    big_tail.extend_from_slice(&[0xff, 1]);
    let reserved15 = vec![1 << 6 | TYPE_NON << 4, CODE_PUT, 0, 1, 0xF1, 0];
    let long_topic = "x".repeat(65);

    let mut lie_long = short(b"hv", qos0(TOPIC_SHORT), false);
    lie_long[0] += 1;
    let mut lie_short = short(b"hv", qos0(TOPIC_SHORT), false);
    lie_short[0] -= 1;

    // IPv4 fragment: set More Fragments.
    let mut frag = frame(
        V4,
        None,
        40000,
        MQTTSN,
        &short(b"hv", qos0(TOPIC_SHORT), false),
    );
    frag[20] |= 0x20;
    // IPv6 with a hop-by-hop header announced.
    let mut hbh = frame(
        V6,
        None,
        40000,
        MQTTSN,
        &short(b"hv", qos0(TOPIC_SHORT), false),
    );
    hbh[20] = 0;
    // UDP length larger than the frame.
    let mut trunc = frame(
        V4,
        None,
        40000,
        MQTTSN,
        &short(b"hv", qos0(TOPIC_SHORT), false),
    );
    trunc[38] = 0x05;
    // TTL 1.
    let mut ttl1 = frame(
        V4,
        None,
        40000,
        MQTTSN,
        &short(b"hv", qos0(TOPIC_SHORT), false),
    );
    ttl1[22] = 1;
    let ttl1 = fix_ipv4_checksum(ttl1, 14);
    // Ethernet padding after a short datagram.
    let mut padded = frame(
        V4,
        None,
        40000,
        MQTTSN,
        &mqttsn_publish(false, qos0(TOPIC_SHORT), *b"hv", 0, b""),
    );
    padded.resize(60, 0);
    // QinQ outer tag.
    let mut qinq = frame(
        V4,
        Some(7),
        40000,
        MQTTSN,
        &short(b"hv", qos0(TOPIC_SHORT), false),
    );
    qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
    qinq[16..18].copy_from_slice(&[0x81, 0x00]);
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&crate::SRC_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        f.resize(42, 0);
        f
    };
    let tcp = {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(crate::SRC_MAC, crate::DST_MAC)
            .ipv4(crate::SRC_V4, crate::DST_V4, 64)
            .tcp(40000, MQTTSN, 1, 1024)
            .write(&mut out, b"xx")
            .unwrap();
        out
    };

    vec![
        // MQTT-SN publishes that route.
        redirect(
            "mqttsn v4 short QoS0 1-octet length",
            frame(
                V4,
                None,
                40000,
                MQTTSN,
                &short(b"hv", qos0(TOPIC_SHORT), false),
            ),
            2,
        ),
        redirect(
            "mqttsn v4 short QoS-1 3-octet length",
            frame(
                V4,
                None,
                40000,
                MQTTSN,
                &short(b"hv", qos_minus1(TOPIC_SHORT), true),
            ),
            2,
        ),
        redirect(
            "mqttsn v6 predefined QoS-1",
            frame(
                V6,
                None,
                40000,
                MQTTSN,
                &mqttsn_publish(false, qos_minus1(TOPIC_PREDEFINED), [0, 5], 0, b"x"),
            ),
            1,
        ),
        redirect(
            "mqttsn v4 predefined QoS0 3-octet length",
            frame(
                V4,
                None,
                40000,
                MQTTSN,
                &mqttsn_publish(true, qos0(TOPIC_PREDEFINED), [0, 5], 0, &[0x55; 300]),
            ),
            1,
        ),
        redirect(
            "mqttsn v4 registered id QoS0",
            frame(
                V4,
                None,
                40000,
                MQTTSN,
                &mqttsn_publish(false, qos0(TOPIC_NORMAL), [1, 44], 0, b"on"),
            ),
            1,
        ),
        redirect(
            "mqttsn v4 vlan short",
            frame(
                V4,
                Some(100),
                40000,
                MQTTSN,
                &short(b"hv", qos0(TOPIC_SHORT), false),
            ),
            2,
        ),
        redirect(
            "mqttsn v6 vlan predefined",
            frame(
                V6,
                Some(4000),
                40000,
                MQTTSN,
                &mqttsn_publish(false, qos0(TOPIC_PREDEFINED), [0, 5], 0, b"x"),
            ),
            1,
        ),
        redirect(
            "mqttsn v4 with ip options",
            frame_v4_options(
                &[1, 1, 1, 1, 0x94, 4, 0, 0],
                MQTTSN,
                &short(b"hv", qos0(TOPIC_SHORT), false),
            ),
            2,
        ),
        redirect(
            "mqttsn v4 udp checksum zero kept",
            with_udp_checksum(
                frame(
                    V4,
                    None,
                    40000,
                    MQTTSN,
                    &short(b"hv", qos0(TOPIC_SHORT), false),
                ),
                34,
                0,
            ),
            2,
        ),
        redirect("mqttsn v4 ethernet padding", padded, 2),
        // MQTT-SN that goes to the gateway or is refused.
        pass(
            "mqttsn v6 short, shard without v6 group",
            frame(
                V6,
                None,
                40000,
                MQTTSN,
                &short(b"hv", qos0(TOPIC_SHORT), false),
            ),
            Reason::NoGroupForFamily,
        ),
        pass(
            "mqttsn QoS1",
            frame(
                V4,
                None,
                40000,
                MQTTSN,
                &short(b"hv", 0b0010_0000 | TOPIC_SHORT, false),
            ),
            Reason::MqttSnQos,
        ),
        pass(
            "mqttsn QoS2",
            frame(
                V4,
                None,
                40000,
                MQTTSN,
                &short(b"hv", 0b0100_0000 | TOPIC_SHORT, false),
            ),
            Reason::MqttSnQos,
        ),
        pass(
            "mqttsn CONNECT",
            frame(
                V4,
                None,
                40000,
                MQTTSN,
                &[8, 0x04, 0x04, 0x01, 0, 30, b'c', b'1'],
            ),
            Reason::MqttSnControl,
        ),
        pass(
            "mqttsn REGISTER long form",
            frame(V4, None, 40000, MQTTSN, &[1, 0, 9, 0x0A, 0, 0, 0, 1, b't']),
            Reason::MqttSnControl,
        ),
        pass(
            "mqttsn PINGREQ",
            frame(V4, None, 40000, MQTTSN, &[2, 0x16]),
            Reason::MqttSnControl,
        ),
        pass(
            "mqttsn length says more",
            frame(V4, None, 40000, MQTTSN, &lie_long),
            Reason::MqttSnBadLength,
        ),
        pass(
            "mqttsn length says less",
            frame(V4, None, 40000, MQTTSN, &lie_short),
            Reason::MqttSnBadLength,
        ),
        pass(
            "mqttsn reserved topic id type",
            frame(V4, None, 40000, MQTTSN, &short(b"hv", 0b11, false)),
            Reason::MqttSnMalformed,
        ),
        pass(
            "mqttsn QoS-1 with registered id",
            frame(
                V4,
                None,
                40000,
                MQTTSN,
                &mqttsn_publish(false, qos_minus1(TOPIC_NORMAL), [1, 44], 0, b"x"),
            ),
            Reason::MqttSnMalformed,
        ),
        pass(
            "mqttsn unrouted short topic",
            frame(
                V4,
                None,
                40000,
                MQTTSN,
                &short(b"zz", qos0(TOPIC_SHORT), false),
            ),
            Reason::NoRoute,
        ),
        pass(
            "mqttsn two-shard topic",
            frame(
                V4,
                None,
                40000,
                MQTTSN,
                &short(b"mu", qos0(TOPIC_SHORT), false),
            ),
            Reason::MultiShard,
        ),
        pass(
            "mqttsn empty datagram",
            frame(V4, None, 40000, MQTTSN, &[]),
            Reason::MqttSnBadLength,
        ),
        // CoAP publishes that route.
        redirect(
            "coap v4 NON PUT",
            frame(V4, None, 40001, COAP, &coap(TYPE_NON, CODE_PUT, &room)),
            1,
        ),
        redirect(
            "coap v6 NON POST",
            frame(V6, None, 40001, COAP, &coap(TYPE_NON, CODE_POST, &room)),
            1,
        ),
        redirect(
            "coap v4 extended option forms, 8-byte token",
            frame(V4, None, 40001, COAP, &ext),
            1,
        ),
        redirect(
            "coap v4 vlan",
            frame(V4, Some(5), 40001, COAP, &coap(TYPE_NON, CODE_PUT, &room)),
            1,
        ),
        redirect(
            "coap v6 to v6-only shard",
            frame(
                V6,
                None,
                40001,
                COAP,
                &coap(TYPE_NON, CODE_PUT, &["ps", "data", "ab"]),
            ),
            3,
        ),
        redirect(
            "coap v4 port rewritten by shard",
            frame(
                V4,
                None,
                40001,
                COAP,
                &coap(TYPE_NON, CODE_PUT, &["ps", "data", "hv"]),
            ),
            2,
        ),
        // Message lengths around the copy's 16-byte chunks: below one
        // chunk (copied by the helper), exactly one, one and a bit
        // (overlapping last chunk), exactly two, two and a bit.
        redirect(
            "coap 15 bytes",
            frame(V4, None, 40001, COAP, &coap_sized(&[], b"")),
            2,
        ),
        redirect(
            "coap 16 bytes",
            frame(V4, None, 40001, COAP, &coap_sized(&[9], b"")),
            2,
        ),
        redirect(
            "coap 17 bytes",
            frame(V4, None, 40001, COAP, &coap_sized(&[], b"1")),
            2,
        ),
        redirect(
            "coap 32 bytes",
            frame(V4, None, 40001, COAP, &coap_sized(&[], &[b'x'; 16])),
            2,
        ),
        redirect(
            "coap 33 bytes",
            frame(V4, None, 40001, COAP, &coap_sized(&[], &[b'x'; 17])),
            2,
        ),
        redirect(
            "coap v4 path ends within the window, message does not",
            frame(V4, None, 40001, COAP, &big_tail),
            1,
        ),
        // CoAP that goes up.
        pass(
            "coap CON PUT",
            frame(V4, None, 40001, COAP, &coap(TYPE_CON, CODE_PUT, &room)),
            Reason::CoapConfirmable,
        ),
        pass(
            "coap NON GET",
            frame(V4, None, 40001, COAP, &coap(TYPE_NON, 0x01, &room)),
            Reason::CoapNotPublish,
        ),
        pass(
            "coap other path",
            frame(
                V4,
                None,
                40001,
                COAP,
                &coap(TYPE_NON, CODE_PUT, &["ps", "other", "x"]),
            ),
            Reason::CoapOtherPath,
        ),
        pass(
            "coap option past the end",
            frame(V4, None, 40001, COAP, &past_end),
            Reason::CoapMalformed,
        ),
        pass(
            "coap reserved nibble 15",
            frame(V4, None, 40001, COAP, &reserved15),
            Reason::CoapMalformed,
        ),
        pass(
            "coap empty datagram",
            frame(V4, None, 40001, COAP, &[]),
            Reason::Truncated,
        ),
        pass(
            "coap topic too long",
            frame(
                V4,
                None,
                40001,
                COAP,
                &coap(TYPE_NON, CODE_PUT, &["ps", "data", &long_topic]),
            ),
            Reason::TopicTooLong,
        ),
        pass(
            "coap v4 to v6-only shard",
            frame(
                V4,
                None,
                40001,
                COAP,
                &coap(TYPE_NON, CODE_PUT, &["ps", "data", "ab"]),
            ),
            Reason::NoGroupForFamily,
        ),
        pass(
            "coap unrouted topic",
            frame(
                V4,
                None,
                40001,
                COAP,
                &coap(TYPE_NON, CODE_PUT, &["ps", "data", "nobody"]),
            ),
            Reason::NoRoute,
        ),
        pass(
            "coap two-shard topic",
            frame(
                V4,
                None,
                40001,
                COAP,
                &coap(TYPE_NON, CODE_PUT, &["ps", "data", "mu"]),
            ),
            Reason::MultiShard,
        ),
        pass(
            "coap path beyond the window",
            frame(V4, None, 40001, COAP, &beyond_window),
            Reason::CoapBeyondWindow,
        ),
        // Lower layers.
        pass("arp", arp, Reason::NotIp),
        pass("tcp to the mqtt-sn port", tcp, Reason::NotUdp),
        pass(
            "udp to another port",
            frame(V4, None, 40000, 9999, b"hello"),
            Reason::OtherPort,
        ),
        pass("ipv4 fragment", frag, Reason::Fragment),
        pass("ipv6 hop-by-hop header", hbh, Reason::Ipv6ExtHeader),
        pass("udp length beyond the frame", trunc, Reason::Truncated),
        pass("ttl 1", ttl1, Reason::TtlExpired),
        pass(
            "ipv6 udp checksum zero",
            with_udp_checksum(
                frame(
                    V6,
                    None,
                    40000,
                    MQTTSN,
                    &mqttsn_publish(false, qos0(TOPIC_PREDEFINED), [0, 5], 0, b"x"),
                ),
                54,
                0,
            ),
            Reason::ZeroChecksumV6,
        ),
        pass("qinq double tag", qinq, Reason::NotIp),
        pass(
            "vlan tag cut off",
            {
                let mut f = vec![0u8; 14];
                f[12] = 0x81;
                f
            },
            Reason::Truncated,
        ),
    ]
}

fn fix_ipv4_checksum(mut f: Vec<u8>, off: usize) -> Vec<u8> {
    f[off + 10] = 0;
    f[off + 11] = 0;
    let ihl = ((f[off] & 0x0f) as usize) * 4;
    let c = router_common::checksum::internet_checksum(&f[off..off + ihl]);
    f[off + 10..off + 12].copy_from_slice(&c.to_be_bytes());
    f
}

/// Where a shard sends, as the expected-output builder needs it.
#[derive(Clone, Debug)]
pub struct ShardOut {
    pub group_v4: Option<[u8; 4]>,
    pub group_v6: Option<[u8; 16]>,
    pub port: u16,
    pub src_mac: [u8; 6],
}

/// The frame the router must emit for `input` sent to `shard`: untagged,
/// MACs rewritten, destination = group, TTL/hop limit − 1, port, checksums
/// recomputed from scratch (0 kept for an IPv4 datagram without checksum).
pub fn expected_output(input: &[u8], shard: &ShardOut) -> Vec<u8> {
    let h = PacketHeaders::from_ethernet_slice(input).expect("fixture parses");
    let Some(TransportHeader::Udp(mut udp)) = h.transport else {
        panic!("redirect fixtures are UDP")
    };
    let payload = h.payload.slice();
    let payload = &payload[..udp.length as usize - 8];
    if shard.port != 0 {
        udp.destination_port = shard.port;
    }
    let l2_len = if h.vlan.is_some() { 18 } else { 14 };
    let mut out = Vec::new();
    let (l3_bytes, dst_mac) = match h.net.expect("fixture has IP") {
        NetHeaders::Ipv4(mut ip, _) => {
            let g = shard.group_v4.expect("v4 group");
            ip.destination = g;
            ip.time_to_live -= 1;
            ip.header_checksum = ip.calc_header_checksum();
            if udp.checksum != 0 {
                udp.checksum = udp.calc_checksum_ipv4(&ip, payload).unwrap();
            }
            (
                ip.to_bytes().to_vec(),
                [0x01, 0x00, 0x5e, g[1] & 0x7f, g[2], g[3]],
            )
        }
        NetHeaders::Ipv6(mut ip, _) => {
            let g = shard.group_v6.expect("v6 group");
            ip.destination = g;
            ip.hop_limit -= 1;
            udp.checksum = udp.calc_checksum_ipv6(&ip, payload).unwrap();
            (
                ip.to_bytes().to_vec(),
                [0x33, 0x33, g[12], g[13], g[14], g[15]],
            )
        }
    };
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&shard.src_mac);
    let ether_type = if l3_bytes[0] >> 4 == 4 {
        [0x08, 0x00]
    } else {
        [0x86, 0xdd]
    };
    out.extend_from_slice(&ether_type);
    out.extend_from_slice(&l3_bytes);
    out.extend_from_slice(&udp.to_bytes());
    out.extend_from_slice(payload);
    // Link-layer padding after the datagram is forwarded as it came.
    let datagram_end = l2_len + l3_bytes.len() + udp.length as usize;
    out.extend_from_slice(&input[datagram_end..]);
    out
}

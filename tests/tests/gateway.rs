//! The MQTT-SN gateway (`router-ctl gateway`) with a third-party client,
//! the Python `mqtt-sn-12` package's `mqtt_sn_pub` and `mqtt_sn_sub`, in a
//! namespace of the test's own: connect, register, subscribe (a wildcard
//! and a plain name, a short name), publish with QoS 0, 1 and 2 and a QoS
//! -1 publish to a short topic, disconnect; and a malformed datagram does
//! not stop it; Wireshark's MQTT-SN dissector (tshark) decodes every
//! exchange, CONNECT to DISCONNECT and the QoS 2 handshake, without an
//! error. And a `kill -9` of the gateway keeps its topic ids and
//! persistent sessions (the device registry); and in the lab, a QoS 1
//! publish goes through the data plane's pass-up and the gateway into the
//! planned shard's group. The device protocol on the wire (tokens across
//! `kill -9`, every refusal), registered ids installed into the data
//! plane, the relay to standard clients, and CoAP with libcoap's and
//! aiocoap's clients (tshark decoding the CoAP exchanges too).

use std::{
    net::UdpSocket,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{NetNs, ctl_binary, python_tool};
use shardcast_gateway::mqttsn::{Flags, Message, Qos, ReturnCode, TopicRef, decode, encode};

fn in_ns(ns: &NetNs, cmd: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name]).arg(cmd).args(args);
    c
}

/// `router-ctl gateway` in `ns`, with its log read line by line: tests wait
/// for what it says (listening, sessions committed) instead of sleeping.
struct Gw {
    child: std::process::Child,
    log: std::sync::mpsc::Receiver<String>,
}

impl Gw {
    fn start(ns: &NetNs, state_dir: &std::path::Path, listen: &str) -> Gw {
        Gw::start_with(ns, state_dir, listen, &[])
    }

    fn start_with(ns: &NetNs, state_dir: &std::path::Path, listen: &str, extra: &[&str]) -> Gw {
        let state = state_dir.display().to_string();
        let mut args = vec!["--state-dir", &state, "gateway", "--listen", listen];
        args.extend_from_slice(extra);
        let mut child = in_ns(ns, &ctl_binary(), &args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let gw = Gw { child, log };
        gw.wait_for(|l| l.contains("MQTT-SN gateway"), 1);
        gw
    }

    /// Waits (at most 20 s) until `n` log lines match.
    fn wait_for(&self, matches: impl Fn(&str) -> bool, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = 0;
        while seen < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(l) if matches(&l) => seen += 1,
                Ok(_) => {}
                Err(_) => panic!("gateway log: {seen} of {n} lines expected"),
            }
        }
    }

    fn kill(mut self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn mqtt_sn_clients_subscribe_and_publish_through_the_gateway() {
    let pub_tool = python_tool("mqtt-sn-12", "mqtt_sn_pub").unwrap();
    let sub_tool = python_tool("mqtt-sn-12", "mqtt_sn_sub").unwrap();
    let ns = NetNs::new("scgw").unwrap();
    let state = std::env::temp_dir().join(integration_tests::unique("scgw"));
    let gw = Gw::start(&ns, &state, "127.0.0.1:1884");
    // Every exchange captured, for Wireshark's MQTT-SN dissector below.
    let pcap = std::env::temp_dir().join(format!("{}.pcap", integration_tests::unique("scgwcap")));
    let tshark = integration_tests::tshark_capture(&ns.name, "lo", "udp port 1884", &pcap).unwrap();
    // Bounded: a subscriber missing a message exits, failing the test.
    let sub = |topic: &str, count: u32| {
        in_ns(
            &ns,
            std::path::Path::new("timeout"),
            &[
                "20",
                &sub_tool.display().to_string(),
                "-h",
                "127.0.0.1",
                "-p",
                "1884",
                "-t",
                topic,
                "-C",
                &count.to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let wild = sub("sensors/+", 5);
    let plain = sub("sensors/t1", 2);
    let short = sub("ab", 1);
    // Publish once the three subscriptions are in (sessions are logged as
    // they are committed).
    gw.wait_for(
        |l| l.contains("session") && l.contains("subscriptions=1"),
        3,
    );
    // A malformed datagram first: counted and ignored.
    ns.run(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&[0x05, 0x0c, 0x00], "127.0.0.1:1884").unwrap();
    })
    .unwrap();
    for (topic, qos, msg) in [
        ("sensors/t1", "0", "a"),
        ("sensors/t1", "1", "b"),
        ("sensors/t2", "1", "c"),
        ("sensors/t2", "0", "d"),
        ("sensors/t2", "2", "e"),
        ("ab", "-1", "z"),
    ] {
        let out = in_ns(
            &ns,
            &pub_tool,
            &[
                "-h",
                "127.0.0.1",
                "-p",
                "1884",
                "-q",
                qos,
                "-t",
                topic,
                "-m",
                msg,
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "mqtt_sn_pub {topic} QoS {qos}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wait = |c: std::process::Child| {
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let got_wild = wait(wild);
    let got_plain = wait(plain);
    let got_short = wait(short);
    let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(lines(&got_wild), ["a", "b", "c", "d", "e"], "{got_wild}");
    assert_eq!(lines(&got_plain), ["a", "b"], "{got_plain}");
    assert_eq!(lines(&got_short), ["z"], "{got_short}");
    // Our one malformed datagram is the only frame Wireshark flags.
    let d = integration_tests::decode_capture(
        tshark,
        &pcap,
        Some("udp.port==1884,mqttsn"),
        &["mqttsn.msg.type"],
    );
    assert_eq!(
        d.flagged.len(),
        1,
        "frames Wireshark flags: {:?}\n{}",
        d.flagged,
        d.text
    );
    let rows = d.rows;
    let types: std::collections::BTreeSet<u8> = rows
        .iter()
        .filter_map(|r| u8::from_str_radix(r[0].trim_start_matches("0x"), 16).ok())
        .collect();
    for t in [
        0x04, 0x05, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x12, 0x13, 0x18,
    ] {
        assert!(
            types.contains(&t),
            "no message type {t:#04x} in the capture: {types:?}"
        );
    }
    gw.kill("-TERM");
    let _ = std::fs::remove_dir_all(&state);
}

/// One request/answer exchange with the gateway over UDP, in the caller's
/// namespace.
fn ask(sock: &UdpSocket, m: &Message) -> Message {
    sock.send_to(&encode(m).unwrap(), "127.0.0.1:1884").unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer");
    decode(&buf[..n]).unwrap()
}

/// `kill -9` of the gateway: the topic ids it assigned come back with the
/// same numbers from the device registry, and a persistent session's
/// subscription too.
#[test]
fn registered_ids_and_sessions_survive_kill_dash_9() {
    let ns = NetNs::new("scgwk").unwrap();
    let state = std::env::temp_dir().join(integration_tests::unique("scgwk"));
    let start = || Gw::start(&ns, &state, "127.0.0.1:1884");
    let connect = |sock: &UdpSocket, clean: bool| {
        let m = ask(
            sock,
            &Message::Connect {
                flags: Flags {
                    clean_session: clean,
                    ..Flags::NONE
                },
                duration: 60,
                client_id: "survivor".into(),
            },
        );
        assert_eq!(
            m,
            Message::ConnAck {
                rc: ReturnCode::Accepted
            }
        );
    };
    let register = |sock: &UdpSocket, name: &str| match ask(
        sock,
        &Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: name.into(),
        },
    ) {
        Message::RegAck {
            topic_id,
            rc: ReturnCode::Accepted,
            ..
        } => topic_id,
        other => panic!("{other:?}"),
    };
    let gw = start();
    let ids = ns
        .run(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            connect(&sock, false);
            let ids: Vec<u16> = ["a/1", "a/2", "b/1"]
                .iter()
                .map(|n| register(&sock, n))
                .collect();
            let m = ask(
                &sock,
                &Message::Subscribe {
                    flags: Flags::NONE,
                    msg_id: 2,
                    topic: TopicRef::Name("b/+".into()),
                },
            );
            assert!(matches!(
                m,
                Message::SubAck {
                    rc: ReturnCode::Accepted,
                    ..
                }
            ));
            ids
        })
        .unwrap();
    // Sessions are committed within a second: wait for the commit's log
    // line, then kill.
    gw.wait_for(
        |l| l.contains("session") && l.contains("subscriptions=1"),
        1,
    );
    gw.kill("-9");
    let gw = start();
    ns.run(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        connect(&sock, false);
        // The same names, the same ids, asked in another order (a fresh
        // gateway would number them 1, 2, 3 again); a new name, a new id.
        let mut again: Vec<u16> = ["b/1", "a/2", "a/1"]
            .iter()
            .map(|n| register(&sock, n))
            .collect();
        again.reverse();
        assert_eq!(again, ids);
        let new = register(&sock, "c/1");
        assert!(!ids.contains(&new));
        // The persistent subscription is back: a QoS 1 publish to b/1 is
        // acknowledged, then delivered to us.
        let puback = ask(
            &sock,
            &Message::Publish {
                flags: Flags {
                    qos: Qos::One,
                    ..Flags::NONE
                },
                topic_id: ids[2],
                msg_id: 9,
                data: b"back".to_vec(),
            },
        );
        let mut got = vec![puback];
        let mut buf = [0u8; 512];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(decode(&buf[..n]).unwrap());
            if got.len() == 2 {
                break;
            }
        }
        assert!(
            got.iter()
                .any(|m| matches!(m, Message::Publish { data, .. } if data == b"back")),
            "{got:?}"
        );
    })
    .unwrap();
    gw.kill("-TERM");
    let _ = std::fs::remove_dir_all(&state);
}

/// The whole control path on the lab: `mqtt_sn_pub` in the publisher
/// namespace connects, registers and publishes with QoS 1 to the router's
/// address; the XDP router passes those up (they need session state), the
/// gateway in the router namespace acknowledges and puts the publish into
/// the shard group the installed plan routes the topic to, out of the
/// router's egress: shard 1's subscriber receives it, shard 2's does not.
#[test]
fn qos1_publishes_reach_the_planned_shard_through_the_gateway() {
    use integration_tests::lab::{Lab, LabShard};
    let pub_tool = python_tool("mqtt-sn-12", "mqtt_sn_pub").unwrap();
    let mut lab = Lab::new(2).unwrap();
    lab.attach().unwrap();
    let shards: Vec<_> = (1..=2).map(LabShard::numbered).collect();
    lab.apply(&Lab::plan_json(
        1,
        &shards,
        &[("t/one", &[1]), ("t/two", &[2])],
    ))
    .unwrap();
    let gw = Gw::start(&lab.router, lab.state_dir(), "198.18.1.1:1884");
    let groups = |s: &LabShard| {
        vec![
            (std::net::IpAddr::V4(s.group_v4), 1884),
            (std::net::IpAddr::V6(s.group_v6), 1884),
        ]
    };
    let l1 = lab.listen(0, groups(&shards[0])).unwrap();
    let l2 = lab.listen(1, groups(&shards[1])).unwrap();
    let out = in_ns(
        &lab.publisher,
        &pub_tool,
        &[
            "-h",
            "198.18.1.1",
            "-p",
            "1884",
            "-q",
            "1",
            "-t",
            "t/one",
            "-m",
            "over-the-control-path",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got1 = l1.finish(Duration::from_millis(500)).unwrap();
    let got2 = l2.finish(Duration::from_millis(10)).unwrap();
    assert!(got2.is_empty(), "shard 2 got {} datagrams", got2.len());
    assert_eq!(got1.len(), 1, "shard 1 got {} datagrams", got1.len());
    match decode(&got1[0].payload).unwrap() {
        Message::Publish { flags, data, .. } => {
            assert_eq!(flags.qos, Qos::Zero);
            assert_eq!(data, b"over-the-control-path");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(got1[0].group, std::net::IpAddr::V4(shards[0].group_v4));
    // The data plane passed the control messages up, counted.
    let c = lab.counters().unwrap();
    let n = |r: router_common::reason::Reason| c.reasons.get(&r).map_or(0, |c| c.packets);
    assert!(
        n(router_common::reason::Reason::MqttSnControl) >= 2,
        "CONNECT, REGISTER"
    );
    assert_eq!(n(router_common::reason::Reason::MqttSnQos), 1);
    gw.kill("-TERM");
}

/// The daemon with a `[gateway]` section runs the same gateway beside its
/// tick: it installs the offered plan, and a QoS 1 publish reaches the
/// planned shard through it; its registry lives in the state directory.
#[test]
fn the_daemon_runs_the_gateway() {
    use integration_tests::lab::{Lab, LabShard};
    let pub_tool = python_tool("mqtt-sn-12", "mqtt_sn_pub").unwrap();
    let mut lab = Lab::new(2).unwrap();
    lab.attach().unwrap();
    let shards: Vec<_> = (1..=2).map(LabShard::numbered).collect();
    let daemon = lab
        .start_daemon_with("200ms", "[gateway]\nlisten = \"198.18.1.1:1884\"")
        .unwrap();
    lab.offer_plan(&Lab::plan_json(
        1,
        &shards,
        &[("t/one", &[1]), ("t/two", &[2])],
    ))
    .unwrap();
    lab.wait_generation(1).unwrap();
    let groups = |s: &LabShard| vec![(std::net::IpAddr::V4(s.group_v4), 1884)];
    let l1 = lab.listen(0, groups(&shards[0])).unwrap();
    let l2 = lab.listen(1, groups(&shards[1])).unwrap();
    // The gateway routes by the plan's copy, written after the install.
    let copy = lab.daemon_state_dir().join("plan.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !copy.is_file() {
        assert!(std::time::Instant::now() < deadline, "no plan copy");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = in_ns(
        &lab.publisher,
        &pub_tool,
        &[
            "-h",
            "198.18.1.1",
            "-p",
            "1884",
            "-q",
            "1",
            "-t",
            "t/two",
            "-m",
            "via-the-daemon",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got2 = l2.finish(Duration::from_millis(500)).unwrap();
    let got1 = l1.finish(Duration::from_millis(10)).unwrap();
    assert!(got1.is_empty(), "shard 1 got {} datagrams", got1.len());
    assert_eq!(got2.len(), 1, "shard 2 got {}", got2.len());
    assert!(
        matches!(decode(&got2[0].payload).unwrap(), Message::Publish { data, .. } if data == b"via-the-daemon")
    );
    assert!(lab.daemon_state_dir().join("registry.redb").is_file());
    drop(daemon);
}

/// Publishes `payload` on the control topic (QoS 1) from `sock` and
/// returns the control messages the gateway answers until 300 ms of quiet
/// after the PUBACK (which it checks).
fn control(sock: &UdpSocket, payload: &str) -> Vec<shardcast_gateway::control::Control> {
    use shardcast_gateway::control::{CONTROL_ID, Control};
    let publish = Message::Publish {
        flags: Flags {
            qos: Qos::One,
            topic_id_type: router_common::mqttsn::TOPIC_PREDEFINED,
            ..Flags::NONE
        },
        topic_id: CONTROL_ID,
        msg_id: 9,
        data: payload.as_bytes().to_vec(),
    };
    sock.send_to(&encode(&publish).unwrap(), "127.0.0.1:1884")
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut out = Vec::new();
    let mut acked = false;
    let mut buf = [0u8; 2048];
    // Answers until 300 ms of quiet after the PUBACK; before it, up to 5 s
    // (a gateway on a loaded machine, CI's, can take longer than 300 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = match sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(_) if !acked && std::time::Instant::now() < deadline => continue,
            Err(_) => break,
        };
        match decode(&buf[..n]).unwrap() {
            Message::PubAck { msg_id: 9, rc, .. } => {
                assert_eq!(rc, ReturnCode::Accepted);
                acked = true;
            }
            Message::Publish { topic_id, data, .. } if topic_id == CONTROL_ID => {
                out.push(Control::decode(&data).unwrap())
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(acked, "no PUBACK for {payload:?}");
    out
}

fn connect_as(sock: &UdpSocket, client: &str) {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let m = ask(
        sock,
        &Message::Connect {
            flags: Flags {
                clean_session: true,
                ..Flags::NONE
            },
            duration: 60,
            client_id: client.into(),
        },
    );
    assert_eq!(
        m,
        Message::ConnAck {
            rc: ReturnCode::Accepted
        }
    );
}

/// The device protocol on the wire: `hello` issues a token, committed to
/// the registry before it is sent, so a `kill -9` keeps it (the same token
/// comes back to the same host); another host is refused it; forged and
/// misdirected confirms are refused and change nothing; the token expires
/// (the device is out) and a new `hello` gets a new one.
#[test]
fn tokens_survive_kill_dash_9_and_bad_control_messages_are_refused() {
    use shardcast_gateway::control::{Control, Refusal, Token, confirm_tag};
    let ns = NetNs::new("scgwt").unwrap();
    let state = std::env::temp_dir().join(integration_tests::unique("scgwt"));
    let start = || Gw::start_with(&ns, &state, "127.0.0.1:1884", &["--token-lifetime", "4s"]);
    let gw = start();
    let token = ns
        .run(|| {
            let a = UdpSocket::bind("127.0.0.1:0").unwrap();
            connect_as(&a, "dev-x");
            let got = control(&a, "hello battery=80 location=s1/b2 sla=premium");
            let [
                Control::Assign {
                    token, to: None, ..
                },
            ] = got[..]
            else {
                panic!("{got:?}")
            };
            // A confirm with a MAC under another key.
            let forged = Control::Confirm {
                generation: 1,
                shard: 1,
                tag: confirm_tag(&Token([1; 16]), "dev-x", 1, 1),
            };
            assert_eq!(
                control(&a, &forged.encode()),
                [Control::Refused(Refusal::BadMac)]
            );
            // A valid MAC, but no migration pending.
            let unasked = Control::Confirm {
                generation: 1,
                shard: 1,
                tag: confirm_tag(&token, "dev-x", 1, 1),
            };
            assert_eq!(
                control(&a, &unasked.encode()),
                [Control::Refused(Refusal::NotMigrating)]
            );
            // Another host taking the client id: no token for it, and its
            // confirms are refused by source.
            let b = UdpSocket::bind("127.0.0.2:0").unwrap();
            connect_as(&b, "dev-x");
            assert_eq!(control(&b, "hello"), [Control::Refused(Refusal::TokenHeld)]);
            assert_eq!(
                control(&b, &unasked.encode()),
                [Control::Refused(Refusal::WrongSource)]
            );
            // Gateway-to-device verbs from a device are malformed.
            assert_eq!(
                control(&b, "ack 1 1"),
                [Control::Refused(Refusal::Malformed)]
            );
            token
        })
        .unwrap();
    gw.wait_for(|l| l.contains("control message refused"), 5);
    gw.kill("-9");
    let gw = start();
    ns.run(move || {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        connect_as(&a, "dev-x");
        let got = control(&a, "hello");
        assert!(
            matches!(got[..], [Control::Assign { token: t, .. }] if t == token),
            "the token did not survive: {got:?}"
        );
    })
    .unwrap();
    // Silent past its lifetime: expired, out of the membership.
    gw.wait_for(|l| l.contains("token expired"), 1);
    ns.run(move || {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        connect_as(&a, "dev-x");
        let stale = Control::Confirm {
            generation: 1,
            shard: 1,
            tag: confirm_tag(&token, "dev-x", 1, 1),
        };
        assert_eq!(
            control(&a, &stale.encode()),
            [Control::Refused(Refusal::Expired)]
        );
        let got = control(&a, "hello");
        assert!(
            matches!(got[..], [Control::Assign { token: t, .. }] if t != token),
            "{got:?}"
        );
    })
    .unwrap();
    gw.kill("-TERM");
    let _ = std::fs::remove_dir_all(&state);
}

/// Topic ids the daemon's gateway assigns reach the data plane: a QoS 0
/// publish naming a freshly registered id is first passed up (the gateway
/// forwards it), then, once the daemon has installed the id into the plan
/// (same generation), routed by XDP itself.
#[test]
fn registered_ids_are_installed_into_the_data_plane() {
    use integration_tests::lab::{Lab, LabShard};
    use router_common::reason::Reason;
    let pub_tool = python_tool("mqtt-sn-12", "mqtt_sn_pub").unwrap();
    let mut lab = Lab::new(1).unwrap();
    lab.attach().unwrap();
    let shards = [LabShard::numbered(1)];
    let daemon = lab
        .start_daemon_with("100ms", "[gateway]\nlisten = \"198.18.1.1:1884\"")
        .unwrap();
    lab.offer_plan(&Lab::plan_json(1, &shards, &[("t/reg", &[1])]))
        .unwrap();
    lab.wait_generation(1).unwrap();
    daemon
        .wait_log(Duration::from_secs(10), |l| l.contains("MQTT-SN gateway"))
        .unwrap();
    let l = lab
        .listen(0, vec![(std::net::IpAddr::V4(shards[0].group_v4), 1884)])
        .unwrap();
    let publish = |m: &str| {
        let out = in_ns(
            &lab.publisher,
            &pub_tool,
            &[
                "-h",
                "198.18.1.1",
                "-p",
                "1884",
                "-q",
                "0",
                "-t",
                "t/reg",
                "-m",
                m,
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let redirected = || {
        let c = lab.counters().unwrap();
        c.reasons.get(&Reason::Redirected).map_or(0, |c| c.packets)
    };
    publish("first");
    daemon
        .wait_log(Duration::from_secs(10), |l| {
            l.contains("registered topic ids and relay routes installed")
        })
        .unwrap();
    let before = redirected();
    publish("second");
    let got = l.finish(Duration::from_millis(500)).unwrap();
    let data: Vec<Vec<u8>> = got
        .iter()
        .map(|r| match decode(&r.payload).unwrap() {
            Message::Publish { data, .. } => data,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(data, [b"first".to_vec(), b"second".to_vec()]);
    assert_eq!(
        redirected() - before,
        1,
        "the second publish was routed by XDP"
    );
    let installed =
        shardcast_plan::Plan::from_file(&lab.daemon_state_dir().join("plan.json")).unwrap();
    assert_eq!(installed.generation, 1);
    assert_eq!(installed.topics[0].mqttsn_registered_ids.len(), 1);
}

/// A standard MQTT-SN client subscribed through the gateway gets the QoS 0
/// publishes the data plane routes by itself, over IPv4 and IPv6: the
/// daemon routes the topics the gateway's subscribers follow to the relay's
/// shard as well, the gateway receives that shard's copies (in its IPv4 or
/// IPv6 group) on its relay interface and sends each subscriber its own.
#[test]
fn standard_subscribers_get_xdp_routed_publishes_through_the_relay() {
    use integration_tests::lab::{Lab, LabShard};
    use router_common::reason::Reason;
    let sub_tool = python_tool("mqtt-sn-12", "mqtt_sn_sub").unwrap();
    let mut lab = Lab::new(1).unwrap();
    lab.attach_with_relay().unwrap();
    let shards = [LabShard::numbered(1)];
    let daemon = lab
        .start_daemon_with(
            "100ms",
            "[gateway]\nlisten = \"198.18.1.1:1884\"\nrelay_egress = \"scgw0\"\nrelay_iface = \"scgw1\"",
        )
        .unwrap();
    lab.offer_plan(&Lab::plan_json(1, &shards, &[("ab", &[1]), ("cd", &[1])]))
        .unwrap();
    lab.wait_generation(1).unwrap();
    daemon
        .wait_log(Duration::from_secs(10), |l| l.contains("MQTT-SN gateway"))
        .unwrap();
    let sub = in_ns(
        &lab.subscribers[0].ns,
        std::path::Path::new("timeout"),
        &[
            // This mqtt_sn_sub ignores -C: it runs until the timeout.
            "8",
            &sub_tool.display().to_string(),
            "-h",
            "198.18.1.1",
            "-p",
            "1884",
            "-t",
            "ab",
            "-C",
            "2",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    daemon
        .wait_log(Duration::from_secs(20), |l| {
            l.contains("relay routes installed") && l.contains("relay_topics=1")
        })
        .unwrap();
    let installed =
        shardcast_plan::Plan::from_file(&lab.daemon_state_dir().join("plan.json")).unwrap();
    let route = |n: &str| {
        installed
            .topics
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .shards
            .clone()
    };
    assert_eq!(route("ab"), [1, 4095], "followed by a gateway subscriber");
    assert_eq!(route("cd"), [1], "followed by nobody at the gateway");
    let before = lab.counters().unwrap();
    let publish = |topic: &[u8; 2], m: &[u8]| {
        encode(&Message::Publish {
            flags: Flags {
                topic_id_type: router_common::mqttsn::TOPIC_SHORT,
                ..Flags::NONE
            },
            topic_id: u16::from_be_bytes(*topic),
            msg_id: 0,
            data: m.to_vec(),
        })
        .unwrap()
    };
    lab.publish(
        false,
        1884,
        vec![publish(b"ab", b"one"), publish(b"cd", b"other")],
    )
    .unwrap();
    // Over IPv6: the copy goes to the relay's IPv6 group, which the
    // gateway has joined too.
    std::thread::sleep(Duration::from_millis(200));
    lab.publish(true, 1884, vec![publish(b"ab", b"two")])
        .unwrap();
    let out = sub.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["one", "two"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Routed by the data plane (never passed up to the gateway).
    let after = lab.counters().unwrap();
    let n =
        |c: &shardcast_dataplane::Counters, r: Reason| c.reasons.get(&r).map_or(0, |c| c.packets);
    assert!(n(&after, Reason::Redirected) >= n(&before, Reason::Redirected) + 3);
    assert_eq!(n(&after, Reason::MqttSnQos), n(&before, Reason::MqttSnQos));
}

/// The gateway's CoAP side with libcoap's client: discovery lists the
/// plan's topics in CoRE Link Format, an Observe registration gets every
/// publish of its topic (CON PUTs from another client, and an MQTT-SN
/// QoS 1 publish: one pub/sub across both protocols) with increasing
/// Observe numbers, CON PUTs are acknowledged 2.04, an unknown topic is
/// 4.04.
#[test]
fn coap_clients_observe_and_publish_through_the_gateway() {
    let pub_tool = python_tool("mqtt-sn-12", "mqtt_sn_pub").unwrap();
    let ns = NetNs::new("scgwc").unwrap();
    let state = std::env::temp_dir().join(integration_tests::unique("scgwc"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("plan.json"),
        r#"{"generation": 1, "shards": [{"id": 1, "group_v4": "239.1.1.1", "egress": "lo"}],
            "topics": [{"name": "t1", "shards": [1]}, {"name": "t2", "shards": [1]}]}"#,
    )
    .unwrap();
    let gw = Gw::start_with(
        &ns,
        &state,
        "127.0.0.1:1884",
        &["--coap-listen", "127.0.0.1:5683"],
    );
    let pcap = std::env::temp_dir().join(integration_tests::unique("scgwc.pcap"));
    let tshark = integration_tests::tshark_capture(&ns.name, "lo", "udp port 5683", &pcap).unwrap();
    let coap = |args: &[&str]| {
        let mut c = in_ns(&ns, std::path::Path::new("coap-client-notls"), args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    };
    let out = coap(&["-m", "get", "coap://127.0.0.1/.well-known/core"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("</ps/data/t1>;obs") && text.contains("</ps/data/t2>;obs"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Observe t1 for 5 s.
    let observer = coap(&["-m", "get", "-s", "5", "coap://127.0.0.1/ps/data/t1"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for v in ["21.5", "22.0"] {
        let out = coap(&["-m", "put", "-e", v, "coap://127.0.0.1/ps/data/t1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = in_ns(
        &ns,
        &pub_tool,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            "1884",
            "-q",
            "1",
            "-t",
            "t1",
            "-m",
            "from-mqtt-sn",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = coap(&["-m", "put", "-e", "x", "coap://127.0.0.1/ps/data/nope"])
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4.04"), "{err}");
    let seen = observer.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&seen.stdout);
    // coap-client prints each payload as it comes, without separators.
    assert!(
        text.trim_end().ends_with("21.522.0from-mqtt-sn"),
        "{text} {}",
        String::from_utf8_lossy(&seen.stderr)
    );
    // Wireshark's CoAP dissector decodes every exchange without a
    // malformed frame or a warning: requests, ACKs, 4.04, notifications.
    let d =
        integration_tests::decode_capture(tshark, &pcap, None, &["coap.code", "coap.opt.observe"]);
    let out = &d.text;
    assert!(
        d.flagged.is_empty(),
        "frames Wireshark flags: {:?}\n{out}",
        d.flagged
    );
    let rows = d.rows;
    let codes: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    // GET, PUT, 2.04, 2.05, 4.04 (Wireshark's code numbers).
    for c in ["1", "3", "68", "69", "132"] {
        assert!(
            codes.contains(c),
            "no CoAP code {c} in the capture: {codes:?}"
        );
    }
    let observed = rows.iter().filter(|r| !r[1].is_empty()).count();
    assert!(
        observed >= 4,
        "registration, its answer and notifications: {out}"
    );
    gw.kill("-TERM");
    let _ = std::fs::remove_dir_all(&state);
}

/// aiocoap's client: discovery, CON PUT (acknowledged 2.04) and GET of
/// the last value. (Its command-line client cancels an observation once
/// the first response is in, in the release PyPI serves: Observe is
/// tested with libcoap's client above.)
#[test]
fn aiocoap_publishes_and_reads_through_the_gateway() {
    let client = python_tool("aiocoap", "aiocoap-client").unwrap();
    let ns = NetNs::new("scgwa").unwrap();
    let state = std::env::temp_dir().join(integration_tests::unique("scgwa"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("plan.json"),
        r#"{"generation": 1, "shards": [{"id": 1, "group_v4": "239.1.1.1", "egress": "lo"}],
            "topics": [{"name": "room/t", "shards": [1]}]}"#,
    )
    .unwrap();
    let gw = Gw::start_with(
        &ns,
        &state,
        "127.0.0.1:1884",
        &["--coap-listen", "127.0.0.1:5683"],
    );
    gw.wait_for(|l| l.contains("CoAP gateway"), 1);
    let run = |args: &[&str]| {
        let out = in_ns(&ns, &client, args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, text, err) = run(&["coap://127.0.0.1/.well-known/core"]);
    assert!(ok && text.contains("/ps/data/room/t"), "{text} {err}");
    for v in ["a1", "a2"] {
        let (ok, text, err) = run(&[
            "-m",
            "PUT",
            "--payload",
            v,
            "coap://127.0.0.1/ps/data/room/t",
        ]);
        assert!(ok, "{text} {err}");
    }
    let (ok, text, err) = run(&["coap://127.0.0.1/ps/data/room/t"]);
    assert!(ok && text.trim() == "a2", "{text} {err}");
    let (ok, text, err) = run(&[
        "-m",
        "PUT",
        "--payload",
        "x",
        "coap://127.0.0.1/ps/data/elsewhere",
    ]);
    assert!(!ok && (text + &err).contains("4.04"));
    gw.kill("-TERM");
    let _ = std::fs::remove_dir_all(&state);
}

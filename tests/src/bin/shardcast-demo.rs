//! `cargo xtask demo`: the router on the built-in lab (see
//! `integration_tests::lab`), with simulated devices publishing MQTT-SN and
//! CoAP over both IP families to three shards, a re-plan between two rounds,
//! and a report of what reached whom. Exits non-zero if any subscriber got
//! anything other than exactly what the installed plan promises it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use integration_tests::{
    build,
    lab::{COAP_PORT, Lab, LabShard, MQTTSN_PORT},
};
use router_common::{
    coap,
    maps::PREFIX_MAX,
    mqttsn,
    reason::Reason,
    topic::{AliasKind, TopicKey, alias_key, topic_key},
};

/// Messages each device publishes per round.
const PER_DEVICE: usize = 25;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Proto {
    MqttSn,
    Coap,
}

/// A simulated device: what it publishes and how.
struct Device {
    name: &'static str,
    topic: &'static str,
    proto: Proto,
    v6: bool,
}

const DEVICES: &[Device] = &[
    Device {
        name: "thermo-a1",
        topic: "temp/hall-a",
        proto: Proto::MqttSn,
        v6: false,
    },
    Device {
        name: "thermo-a2",
        topic: "temp/hall-a",
        proto: Proto::Coap,
        v6: true,
    },
    Device {
        name: "thermo-b1",
        topic: "temp/hall-b",
        proto: Proto::MqttSn,
        v6: true,
    },
    Device {
        name: "anemo-r1",
        topic: "wind/roof",
        proto: Proto::Coap,
        v6: false,
    },
    Device {
        name: "alarm-r2",
        topic: "al",
        proto: Proto::MqttSn,
        v6: false,
    },
    Device {
        name: "hygro-c1",
        topic: "hum/cellar",
        proto: Proto::Coap,
        v6: false,
    },
];

/// MQTT-SN predefined topic ids (long names do not fit a short topic).
const PREDEFINED: &[(&str, u16)] = &[("temp/hall-a", 11), ("temp/hall-b", 12)];

const SUBSCRIBERS: &[&str] = &["hall-a", "hall-b", "roof"];

fn plan(generation: u64, shards: &[LabShard], topics: &[(&str, &[u32])]) -> String {
    let mut doc: serde_json::Value =
        serde_json::from_str(&Lab::plan_json(generation, shards, topics)).expect("lab plan");
    for t in doc["topics"].as_array_mut().expect("topics") {
        let name = t["name"].as_str().expect("name").to_string();
        if let Some((_, id)) = PREDEFINED.iter().find(|(n, _)| *n == name) {
            t["mqttsn_predefined_id"] = (*id).into();
        }
    }
    serde_json::to_string_pretty(&doc).expect("plan")
}

fn payload(d: &Device, round: u64, n: usize) -> Vec<u8> {
    let body = format!("{} r{round} #{n}", d.name);
    match d.proto {
        Proto::MqttSn => match PREDEFINED.iter().find(|(t, _)| *t == d.topic) {
            Some((_, id)) => build::mqttsn_publish(
                false,
                build::qos_minus1(mqttsn::TOPIC_PREDEFINED),
                id.to_be_bytes(),
                0,
                body.as_bytes(),
            ),
            None => build::mqttsn_publish(
                false,
                build::qos0(mqttsn::TOPIC_SHORT),
                d.topic.as_bytes().try_into().expect("short topic name"),
                0,
                body.as_bytes(),
            ),
        },
        Proto::Coap => {
            let mut path = vec!["ps", "data"];
            path.extend(d.topic.split('/'));
            build::coap_request(
                coap::TYPE_NON,
                coap::CODE_POST,
                n as u16,
                &[],
                &path,
                body.as_bytes(),
            )
        }
    }
}

/// Names a received datagram's topic by parsing it as the router does.
fn topic_of(names: &BTreeMap<TopicKey, &'static str>, port: u16, p: &[u8]) -> String {
    let key = if port == MQTTSN_PORT {
        mqttsn::parse_publish(p).map(|x| x.key)
    } else {
        let mut prefix = [0u8; PREFIX_MAX];
        prefix[..8].copy_from_slice(b"ps/data/");
        coap::parse_publish(p, &prefix, 8).map(|x| x.key)
    };
    match key {
        Ok(k) => names
            .get(&k)
            .map_or_else(|| format!("{k:?}"), |n| n.to_string()),
        Err(r) => format!("<{}>", r.label()),
    }
}

/// One round: every device publishes; returns what each subscriber got as
/// (topic, protocol, family) → count.
type Tally = BTreeMap<(String, &'static str, &'static str), usize>;

fn round(
    lab: &Lab,
    shards: &[LabShard],
    sources: &[(IpAddr, IpAddr)],
    names: &BTreeMap<TopicKey, &'static str>,
    r: u64,
) -> Result<Vec<Tally>> {
    let mut listeners = Vec::new();
    for (k, s) in shards.iter().enumerate() {
        let mut groups = Vec::new();
        for port in [MQTTSN_PORT, COAP_PORT] {
            groups.push((IpAddr::V4(s.group_v4), port));
            groups.push((IpAddr::V6(s.group_v6), port));
        }
        listeners.push(lab.listen(k, groups)?);
    }
    for (d, (v4, v6)) in DEVICES.iter().zip(sources) {
        let port = if d.proto == Proto::MqttSn {
            MQTTSN_PORT
        } else {
            COAP_PORT
        };
        let from = if d.v6 { *v6 } else { *v4 };
        let msgs = (0..PER_DEVICE).map(|n| payload(d, r, n)).collect();
        lab.publish_from(from, port, msgs)
            .with_context(|| format!("device {}", d.name))?;
    }
    let mut out = Vec::new();
    for l in listeners {
        let mut t = Tally::new();
        for rx in l.finish(Duration::from_millis(400))? {
            let proto = if rx.port == MQTTSN_PORT {
                "mqtt-sn"
            } else {
                "coap"
            };
            let fam = if rx.group.is_ipv6() { "v6" } else { "v4" };
            *t.entry((topic_of(names, rx.port, &rx.payload), proto, fam))
                .or_default() += 1;
        }
        out.push(t);
    }
    Ok(out)
}

/// A plan's routes: topic name → shard ids.
type Routes = Vec<(&'static str, &'static [u32])>;

/// What the plan promises subscriber `k` (on shard k+1).
fn expected(k: usize, topics: &[(&str, &[u32])]) -> Tally {
    let mut t = Tally::new();
    for d in DEVICES {
        let routed_here = topics
            .iter()
            .any(|(name, s)| *name == d.topic && s.len() == 1 && s[0] == k as u32 + 1);
        if routed_here {
            let proto = if d.proto == Proto::MqttSn {
                "mqtt-sn"
            } else {
                "coap"
            };
            let fam = if d.v6 { "v6" } else { "v4" };
            *t.entry((d.topic.to_string(), proto, fam)).or_default() += PER_DEVICE;
        }
    }
    t
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("demo: delivery did not match the plan (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    println!("shardcast demo: building the lab (namespaces, veths, a bridge)…");
    let mut lab = Lab::new(SUBSCRIBERS.len())?;
    let sources: Vec<_> = (0..DEVICES.len() as u8)
        .map(|n| lab.add_device(n))
        .collect::<Result<_>>()?;
    lab.attach()?;
    let shards: Vec<_> = (1..=3).map(LabShard::numbered).collect();

    let mut names: BTreeMap<TopicKey, &'static str> = BTreeMap::new();
    for d in DEVICES {
        names.insert(topic_key(d.topic.as_bytes()), d.topic);
    }
    for (t, id) in PREDEFINED {
        names.insert(alias_key(AliasKind::MqttSnPredefined, *id), t);
    }

    println!();
    println!("lab");
    println!(
        "  publisher ns {}: {} devices",
        lab.publisher.name,
        DEVICES.len()
    );
    for (d, (v4, v6)) in DEVICES.iter().zip(&sources) {
        let (proto, from) = match (d.proto, d.v6) {
            (Proto::MqttSn, false) => ("MQTT-SN", v4),
            (Proto::MqttSn, true) => ("MQTT-SN", v6),
            (Proto::Coap, false) => ("CoAP NON POST", v4),
            (Proto::Coap, true) => ("CoAP NON POST", v6),
        };
        println!(
            "    {:<10} {:<22} publishes {:<12} via {proto}",
            d.name,
            from.to_string(),
            d.topic
        );
    }
    println!(
        "  router ns {}: XDP router on r-in (native), egress r-out → bridge",
        lab.router.name
    );
    for (k, s) in lab.subscribers.iter().enumerate() {
        println!(
            "  subscriber {:<7} ns {}: {} joined {} and {}",
            SUBSCRIBERS[k], s.ns.name, s.v4, shards[k].group_v4, shards[k].group_v6
        );
    }

    let plans: [(&str, Routes); 2] = [
        (
            "generation 1",
            vec![
                ("temp/hall-a", &[1]),
                ("temp/hall-b", &[2]),
                ("wind/roof", &[3]),
                ("al", &[3]),
            ],
        ),
        (
            "generation 2: wind/roof re-planned onto shard 1, al onto shards 2 and 3",
            vec![
                ("temp/hall-a", &[1]),
                ("temp/hall-b", &[2]),
                ("wind/roof", &[1]),
                ("al", &[2, 3]),
            ],
        ),
    ];
    let mut all_ok = true;
    for (i, (title, topics)) in plans.iter().enumerate() {
        let generation = i as u64 + 1;
        lab.apply(&plan(generation, &shards, topics))?;
        let before = lab.counters()?;
        let got = round(&lab, &shards, &sources, &names, generation)?;
        let after = lab.counters()?;
        println!();
        println!("== {title} ==");
        for (name, s) in topics {
            println!("  route {name:<12} → shard {s:?}");
        }
        println!("  delivered ({PER_DEVICE} publishes per device):");
        for (k, tally) in got.iter().enumerate() {
            let want = expected(k, topics);
            let ok = *tally == want;
            all_ok &= ok;
            println!(
                "    {:<7} (shard {}): {:>3} datagrams {}",
                SUBSCRIBERS[k],
                k + 1,
                tally.values().sum::<usize>(),
                if ok { "= plan" } else { "≠ PLAN" }
            );
            let keys: BTreeSet<_> = tally.keys().chain(want.keys()).collect();
            for key in keys {
                let (have, w) = (
                    tally.get(key).copied().unwrap_or(0),
                    want.get(key).copied().unwrap_or(0),
                );
                println!(
                    "        {:<12} {:<7} {}  {:>3}{}",
                    key.0,
                    key.1,
                    key.2,
                    have,
                    if have == w {
                        String::new()
                    } else {
                        format!("  (plan: {w})")
                    }
                );
            }
        }
        println!("  router counters this round (packets):");
        for (reason, c) in &after.reasons {
            let prev = before.reasons.get(reason).map_or(0, |c| c.packets);
            let n = c.packets - prev;
            if n > 0 && !matches!(reason, Reason::NotIp | Reason::NotUdp) {
                println!("    {:<20} {n:>4}", reason.label());
            }
        }
    }
    lab.detach()?;
    println!();
    println!(
        "{}",
        if all_ok {
            "every subscriber got exactly what the installed plan promises (no loss, no leak); \
             unrouted and multi-shard publishes went to the stack, counted"
        } else {
            "MISMATCH between deliveries and plan"
        }
    );
    Ok(all_ok)
}

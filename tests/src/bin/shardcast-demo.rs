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
    lab::{COAP_PORT, Lab, LabDaemon, LabShard, MQTTSN_PORT},
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
    /// Device group the telemetry counts it under.
    group: &'static str,
    topic: &'static str,
    proto: Proto,
    v6: bool,
}

const DEVICES: &[Device] = &[
    Device {
        name: "thermo-a1",
        group: "hall-a-thermo",
        topic: "temp/hall-a",
        proto: Proto::MqttSn,
        v6: false,
    },
    Device {
        name: "thermo-a2",
        group: "hall-a-thermo",
        topic: "temp/hall-a",
        proto: Proto::Coap,
        v6: true,
    },
    Device {
        name: "thermo-b1",
        group: "hall-b-thermo",
        topic: "temp/hall-b",
        proto: Proto::MqttSn,
        v6: true,
    },
    Device {
        name: "anemo-r1",
        group: "roof-sensors",
        topic: "wind/roof",
        proto: Proto::Coap,
        v6: false,
    },
    Device {
        name: "alarm-r2",
        group: "roof-sensors",
        topic: "al",
        proto: Proto::MqttSn,
        v6: false,
    },
    Device {
        name: "hygro-c1",
        group: "cellar",
        topic: "hum/cellar",
        proto: Proto::Coap,
        v6: false,
    },
];

/// MQTT-SN predefined topic ids (long names do not fit a short topic).
const PREDEFINED: &[(&str, u16)] = &[("temp/hall-a", 11), ("temp/hall-b", 12)];

const SUBSCRIBERS: &[&str] = &["hall-a", "hall-b", "roof"];

fn plan(
    generation: u64,
    shards: &[LabShard],
    topics: &[(&str, &[u32])],
    sources: &[(IpAddr, IpAddr)],
) -> String {
    let mut doc: serde_json::Value =
        serde_json::from_str(&Lab::plan_json(generation, shards, topics)).expect("lab plan");
    // Each device, by both its addresses, in its group (shard membership:
    // the shard of the subscriber nearest it).
    let mut devices = Vec::new();
    for (d, (v4, v6)) in DEVICES.iter().zip(sources) {
        let shard = match d.group {
            "hall-a-thermo" => 1,
            "hall-b-thermo" => 2,
            _ => 3,
        };
        for (suffix, a) in [("v4", v4), ("v6", v6)] {
            devices.push(serde_json::json!({
                "id": format!("{}-{suffix}", d.name),
                "address": a.to_string(),
                "shard": shard,
                "group": d.group,
            }));
        }
    }
    doc["devices"] = devices.into();
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
        mqttsn::parse_publish(p).map(|x| x.key())
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

/// What the plan promises subscriber `k` (on shard k+1): every publish of
/// a topic routed to its shard, whether the route names one shard or
/// several.
fn expected(k: usize, topics: &[(&str, &[u32])]) -> Tally {
    let mut t = Tally::new();
    for d in DEVICES {
        let routed_here = topics
            .iter()
            .any(|(name, s)| *name == d.topic && s.contains(&(k as u32 + 1)));
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

/// SIGTERM to the daemon (it writes its open bucket and exits, leaving the
/// data plane forwarding), then `router-ctl history export`, summed per
/// (topic, group).
fn stop_and_export(mut daemon: LabDaemon, lab: &Lab) -> Result<BTreeMap<(String, String), u64>> {
    // Let a tick read the last counters.
    std::thread::sleep(Duration::from_millis(300));
    integration_tests::sh("kill", &["-TERM", &daemon.child.pid().to_string()])?;
    let status = daemon.child.child.wait()?;
    anyhow::ensure!(status.success(), "daemon exit: {status}");
    anyhow::ensure!(lab.generation()? == 2, "the data plane outlives the daemon");
    let out = std::process::Command::new(integration_tests::ctl_binary())
        .args(["history", "--config"])
        .arg(&daemon.config)
        .arg("export")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "history export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sums = BTreeMap::new();
    for r in shardcast_records::history::parse_csv(&String::from_utf8(out.stdout)?)? {
        *sums.entry((r.topic, r.group)).or_default() += r.count;
    }
    Ok(sums)
}

/// The closed loop, live: the same lab with a fleet of 2,000 shard-aware
/// devices (and 200 visiting midway), a compressed day played through the
/// XDP router, the daemon forecasting, creating shards before the peak,
/// migrating devices and merging at night on its own; then the same day
/// with the daemon in reactive mode. Returns whether nothing was lost.
fn closed_loop() -> Result<bool> {
    use integration_tests::closed_loop::{self as story, Story};
    integration_tests::lab::ECHO_DAEMON.store(false, std::sync::atomic::Ordering::Relaxed);
    println!();
    println!(
        "== the closed loop: 2,000 shard-aware devices, a compressed day (30 s), the daemon on its own =="
    );
    let mut runs = Vec::new();
    // `SHARDCAST_DEMO_MODES=predictive` plays one mode only.
    let modes: Vec<&'static str> = match std::env::var("SHARDCAST_DEMO_MODES") {
        Ok(m) if m == "predictive" => vec!["predictive"],
        Ok(m) if m == "reactive" => vec!["reactive"],
        _ => vec!["predictive", "reactive"],
    };
    for mode in modes {
        let s = Story::demo(mode);
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {prefix:>10} [{bar:40}] {pos}% {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(mode);
        bar.set_message("warm-up day, then the measured one");
        let out = story::run(&s, Some(std::path::Path::new("target/demo")), |f| {
            bar.set_position((f * 100.0) as u64)
        })?;
        bar.finish_with_message("done");
        runs.push(out);
    }
    println!();
    println!(
        "  {:<11} {:>9} {:>8} {:>7} {:>9} {:>5} {:>5} {:>10} {:>8} {:>6} {:>7} {:>10}",
        "mode",
        "overload-s",
        "shard-s",
        "sent",
        "delivered",
        "lost",
        "dups",
        "migrations",
        "created",
        "merged",
        "cycles",
        "fc. MASE"
    );
    let mut ok = true;
    for r in &runs {
        println!(
            "  {:<11} {:>9} {:>8} {:>7} {:>9} {:>5} {:>5} {:>10} {:>8} {:>6} {:>7} {:>10}",
            r.mode,
            r.overload_seconds,
            r.shard_seconds,
            r.sent,
            r.delivered,
            r.missing,
            r.duplicates,
            r.migrations,
            r.created,
            r.merged,
            r.cycles,
            r.forecast_mase
                .map_or("-".to_string(), |e| format!("{e:.2}")),
        );
        ok &= r.missing == 0 && r.devices_assigned == Story::demo(r.mode).devices as u64;
    }
    println!();
    println!("  latency through the data plane (the daemon's probes, every shard, every 200 ms):");
    for r in &runs {
        match r.probes {
            Some((received, lost, p50, p99)) => println!(
                "  {:<11} {received} probes back, {lost} lost; p50 ≤ {:.0} µs, p99 ≤ {:.0} µs (histogram bounds)",
                r.mode,
                p50 * 1e6,
                p99 * 1e6
            ),
            None => println!("  {:<11} no probe came back", r.mode),
        }
    }
    println!();
    println!(
        "  standard clients through the gateway's relay (each follows one load topic, numbered per topic):"
    );
    for r in &runs {
        for c in &r.standard {
            println!(
                "  {:<11} {:<26} topic {:<3} sent {:>5}  received {:>5}  lost {:>3}  dups {:>3}",
                r.mode, c.client, c.topic, c.sent, c.received, c.missing, c.duplicates
            );
            ok &= c.missing == 0 && c.sent > 0;
        }
    }
    println!(
        "  (overload-s: shard-seconds above capacity; shard-s: shard-seconds, both over the day's one-second buckets; sent/lost: the numbered \
         publisher's messages and those a device following them missed; dups: second copies dropped by devices; \
         fc. MASE: the daemon's one-bucket-ahead forecasts over the last day against seasonal naive's, below 1 is better)"
    );
    for r in &runs {
        let season = Story::demo(r.mode).season as usize;
        if r.samples.len() != season {
            println!(
                "  {}: {} of the day's {season} buckets measured (the metrics endpoint missed some): \
                 its seconds are not comparable",
                r.mode,
                r.samples.len()
            );
        }
    }
    if let [p, re] = &runs[..]
        && re.overload_seconds > 0
    {
        println!(
            "  predictive: {:.0}% fewer overload-seconds than reactive, at {:.0}% of its shard-seconds",
            100.0 * (1.0 - p.overload_seconds as f64 / re.overload_seconds as f64),
            100.0 * p.shard_seconds as f64 / re.shard_seconds.max(1) as f64
        );
    }
    let dir = std::path::Path::new("target/demo");
    std::fs::create_dir_all(dir)?;
    let svg = dir.join("closed-loop.svg");
    story::plot(&runs, &svg)?;
    println!("  plots: {}", svg.display());
    if !ok {
        println!(
            "  LOST: a device or a standard client missed a publish the plan promised it, or a device was never placed"
        );
        for r in &runs {
            for m in &r.missed {
                println!("    {}: {m}", r.mode);
            }
        }
    }
    Ok(ok)
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
    // `SHARDCAST_DEMO=loop`: the closed loop only.
    if std::env::var("SHARDCAST_DEMO").is_ok_and(|v| v == "loop") {
        return closed_loop();
    }
    println!("shardcast demo: building the lab (namespaces, veths, a bridge)…");
    let mut lab = Lab::new(SUBSCRIBERS.len())?;
    let sources: Vec<_> = (0..DEVICES.len() as u8)
        .map(|n| lab.add_device(n))
        .collect::<Result<_>>()?;
    lab.attach()?;
    let shards: Vec<_> = (1..=3).map(LabShard::numbered).collect();
    let daemon = lab.start_daemon("100ms")?;
    println!(
        "  daemon: router-ctl daemon (pid {}) adopts the data plane",
        daemon.child.pid()
    );

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
    // Promised deliveries that did not arrive, on single-shard routes (the
    // XDP redirect) and on multi-shard ones (the broadcast's or the fan-out
    // program's copies),
    // told apart in the report.
    let (mut lost_single, mut lost_multi) = (0usize, 0usize);
    for (i, (title, topics)) in plans.iter().enumerate() {
        let generation = i as u64 + 1;
        lab.offer_plan(&plan(generation, &shards, topics, &sources))?;
        lab.wait_generation(generation)?;
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
            // Per (topic, protocol, family): delivered and promised.
            let rows: Vec<_> = tally
                .keys()
                .chain(want.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|key| {
                    let have = tally.get(key).copied().unwrap_or(0);
                    (key, have, want.get(key).copied().unwrap_or(0))
                })
                .collect();
            let (mut leaked, mut lost_here) = (0, 0);
            for &(key, have, w) in &rows {
                leaked += have.saturating_sub(w);
                let lost = w.saturating_sub(have);
                lost_here += lost;
                if topics.iter().any(|(n, s)| *n == key.0 && s.len() > 1) {
                    lost_multi += lost;
                } else {
                    lost_single += lost;
                }
            }
            // Leaks and losses of either kind fail the demo.
            all_ok &= leaked == 0;
            println!(
                "    {:<7} (shard {}): {:>3} datagrams {}",
                SUBSCRIBERS[k],
                k + 1,
                tally.values().sum::<usize>(),
                if ok {
                    "= plan".to_string()
                } else {
                    format!("≠ PLAN: {lost_here} promised publishes LOST, {leaked} not promised")
                }
            );
            for (key, have, w) in rows {
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
    let history = stop_and_export(daemon, &lab)?;
    println!();
    println!("== telemetry: the daemon's history, publishes per topic × device group ==");
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (title, topics) in &plans {
        let _ = title;
        for d in DEVICES {
            if topics.iter().any(|(t, _)| *t == d.topic) {
                *want
                    .entry((d.topic.to_string(), d.group.to_string()))
                    .or_default() += PER_DEVICE as u64;
            }
        }
    }
    let keys: BTreeSet<_> = history.keys().chain(want.keys()).collect();
    let mut history_ok = true;
    for k in keys {
        let (have, w) = (
            history.get(k).copied().unwrap_or(0),
            want.get(k).copied().unwrap_or(0),
        );
        history_ok &= have == w;
        println!(
            "    {:<12} {:<14} {:>4}{}",
            k.0,
            k.1,
            have,
            if have == w {
                String::new()
            } else {
                format!("  (published and routed: {w})")
            }
        );
    }
    println!(
        "  {}",
        if history_ok {
            "every routed publish is in the history under its device's group (unrouted ones are not counted)"
        } else {
            "MISMATCH between the history and what was published"
        }
    );
    all_ok &= history_ok;
    lab.detach()?;
    drop(lab);
    all_ok &= closed_loop()?;
    println!();
    all_ok &= lost_single == 0 && lost_multi == 0;
    if all_ok {
        println!(
            "every subscriber got exactly what the installed plan promises (no loss, no leak), \
             topics routed to several shards included (one copy per shard, by XDP broadcast \
             or the TC fan-out program: the `broadcast` or `fanned_out` counter); unrouted \
             publishes went to the stack, counted"
        );
    } else {
        if lost_multi > 0 {
            println!(
                "LOST: {lost_multi} publishes the plan promised to subscribers of topics routed to \
                 several shards never reached them"
            );
        }
        if lost_single > 0 {
            println!("LOST: {lost_single} publishes on single-shard routes never arrived");
        }
        if !all_ok {
            println!("MISMATCH between deliveries and plan");
        }
    }
    Ok(all_ok)
}

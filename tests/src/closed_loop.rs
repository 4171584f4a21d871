//! The closed loop on the live router, as the demo tells it: a lab with a
//! `devsim` fleet of shard-aware devices (subscribing through the daemon's
//! gateway), a second fleet joining and leaving midway, a load generator
//! playing a compressed day (a smooth diurnal cycle per topic and a flash
//! event) through the XDP router, and the daemon running its control
//! cycle in one mode. Measured from outside the daemon, once a second,
//! through its metrics endpoint: per shard the load routed into it over
//! the last complete bucket against its capacity (overload-seconds:
//! shard-seconds above it, as the simulator counts overload-minutes; the
//! planner keeps the headroom below it) and the shards holding devices
//! (shard-seconds).
//! Deliveries are the fleet's own account: every device following the
//! numbered publisher's topic says what it missed. Beside the fleet, a few
//! standard clients (mqtt-sn-12's `mqtt_sn_sub`, libcoap's `coap-client`
//! observing) follow load topics through the gateway's relay; the load's
//! payloads are numbered per topic, so each says what it missed too.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::{ctl_binary, lab::Lab, load_gen::Generator};

/// What one run plays.
#[derive(Clone, Debug)]
pub struct Story {
    /// `predictive` or `reactive`.
    pub mode: &'static str,
    pub devices: usize,
    /// Devices joining a third into the measured day and leaving at two
    /// thirds.
    pub visitors: usize,
    /// The compressed day, seconds.
    pub season: u64,
    /// Days played before the measured one (the forecaster's history).
    pub warmup: f64,
    pub topics: usize,
    /// Per topic, messages/s at night and at the peak.
    pub night: f64,
    pub peak: f64,
    /// A flash on one topic: (start, length) in seconds into the measured
    /// day, and its extra rate.
    pub flash: (u64, u64, f64),
    pub shard_capacity: f64,
    pub headroom: f64,
    /// The numbered publisher's rate (loss is counted on its topic).
    pub numbered: u32,
}

impl Story {
    /// The demo's story: 2,000 devices, twelve topics, a 30-second day.
    pub fn demo(mode: &'static str) -> Story {
        Story {
            mode,
            devices: 2000,
            visitors: 200,
            season: 30,
            warmup: 1.0,
            topics: 12,
            night: 2.0,
            peak: 12.0,
            flash: (20, 4, 20.0),
            shard_capacity: 50.0,
            headroom: 0.2,
            numbered: 10,
        }
    }

    /// Topic `i`'s name (a two-character short name: `a0`, `a1`, …).
    fn topic(i: usize) -> String {
        format!("{}{}", (b'a' + (i / 10) as u8) as char, i % 10)
    }
}

/// One second of the measured day.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub t: f64,
    /// (shard, load msg/s, capacity msg/s) of every shard holding devices.
    pub shards: Vec<(u32, f64, f64)>,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub mode: &'static str,
    pub overload_seconds: u64,
    pub shard_seconds: u64,
    pub sent: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub migrations: u64,
    pub devices_assigned: u64,
    pub created: u64,
    pub merged: u64,
    pub cycles: u64,
    pub installs: u64,
    /// The daemon's live forecast error at the end (MASE of its
    /// one-bucket-ahead forecasts over the last day; predictive only).
    pub forecast_mase: Option<f64>,
    pub samples: Vec<Sample>,
    pub load_sent: u64,
    /// A few devices that missed publishes: id, count, first sequence
    /// numbers.
    pub missed: Vec<String>,
    /// When the measured day's load started (unix seconds, fractional).
    pub t0: f64,
    /// The standard clients' account.
    pub standard: Vec<Standard>,
    /// The daemon's latency probes through the data plane, all shards:
    /// (received, lost, p50, p99 upper bounds in seconds).
    pub probes: Option<(u64, u64, f64, f64)>,
}

/// Probes received and lost, and the median's and the 99th percentile's
/// histogram bucket bounds, from a scrape (all shards together).
pub fn probe_latency(m: &BTreeMap<String, f64>) -> Option<(u64, u64, f64, f64)> {
    let mut cum: BTreeMap<u64, f64> = BTreeMap::new();
    for (k, v) in m {
        let Some(rest) = k.strip_prefix("shardcast_probe_latency_seconds_bucket{") else {
            continue;
        };
        let Some(le) = rest.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        // Keyed by the bound's bits (ordered for positive floats).
        *cum.entry(le.to_bits()).or_default() += v;
    }
    let total = *cum.values().last()?;
    let sum = |p: &str| -> u64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(p))
            .map(|(_, v)| *v as u64)
            .sum()
    };
    let q = |f: f64| {
        cum.iter()
            .find(|(_, c)| **c >= f * total)
            .map_or(f64::INFINITY, |(b, _)| f64::from_bits(*b))
    };
    Some((
        sum("shardcast_probes_received_total{"),
        sum("shardcast_probes_lost_total{"),
        q(0.5),
        q(0.99),
    ))
}

/// A standard client following one load topic through the gateway's relay
/// from before the load started until after it stopped: it should have
/// every publish of the topic.
#[derive(Clone, Debug, Default)]
pub struct Standard {
    pub client: &'static str,
    pub topic: String,
    pub sent: u64,
    pub received: u64,
    pub missing: u64,
    pub duplicates: u64,
}

impl Standard {
    /// Counts the `load <i> <seq> <t>` records of topic `i` in a client's
    /// output (lines, or payloads printed back to back).
    fn count(client: &'static str, topic: usize, sent: u64, output: &str) -> Standard {
        let mut seen = std::collections::BTreeSet::new();
        let mut received = 0;
        for record in output.split("load ").skip(1) {
            let mut f = record.split_whitespace();
            let (Some(i), Some(seq)) = (f.next(), f.next()) else {
                continue;
            };
            if i.parse::<usize>().ok() != Some(topic) {
                continue;
            }
            if let Ok(seq) = seq.parse::<u64>() {
                received += 1;
                seen.insert(seq);
            }
        }
        let distinct = seen.range(1..=sent).count() as u64;
        Standard {
            client,
            topic: Story::topic(topic),
            sent,
            received,
            missing: sent - distinct,
            duplicates: received - seen.len() as u64,
        }
    }
}

/// The standard clients: (label, topic index, whether CoAP). `mqtt_sn_sub`
/// reads one datagram per 100 ms (10 msg/s at most; the queue drains at
/// night) and drops what arrives while it waits for a PINGRESP: it follows
/// topics without the flash and pings only once an hour. libcoap's client
/// follows the flash's topic.
const STANDARD: [(&str, usize, bool); 3] = [
    ("mqtt_sn_sub (mqtt-sn-12)", 1, false),
    ("mqtt_sn_sub (mqtt-sn-12)", 2, false),
    ("coap-client (libcoap)", 3, true),
];

/// Starts the standard clients in the subscribers' namespace, each
/// writing what it receives to a file in `dir` (not a pipe: nobody reads
/// it until the end).
fn standard_clients(lab: &Lab, dir: &std::path::Path) -> Result<Vec<(crate::Child, PathBuf)>> {
    (0..STANDARD.len())
        .map(|n| standard_client(lab, dir, n))
        .collect()
}

/// Waits (30 s at most) until the gateway's CoAP resource directory
/// lists `topic`, asked with libcoap's client from the subscribers'
/// namespace.
fn coap_topic_served(lab: &Lab, topic: &str) -> Result<()> {
    let ns = &lab.subscribers[0].ns.name;
    let want = format!("</ps/data/{topic}>");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "coap-client-notls",
                "-m",
                "get",
                "-B",
                "2",
            ])
            .arg("coap://198.18.1.1/.well-known/core")
            .output()
            .context("asking the gateway's /.well-known/core with coap-client-notls")?;
        let listed = String::from_utf8_lossy(&out.stdout);
        if listed.contains(&want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the gateway's CoAP resources did not list {topic} within 30 s: {listed}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Starts standard client `n` (its output file truncated).
fn standard_client(lab: &Lab, dir: &std::path::Path, n: usize) -> Result<(crate::Child, PathBuf)> {
    let sub = crate::python_tool("mqtt-sn-12", "mqtt_sn_sub")?;
    let ns = &lab.subscribers[0].ns.name;
    {
        let (_, topic, coap) = &STANDARD[n];
        let file = dir.join(format!("standard-{n}.out"));
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        let name = Story::topic(*topic);
        if *coap {
            // Unbuffered: payloads are printed without a newline, and the
            // client is ended by a signal.
            cmd.args(["stdbuf", "-o0", "coap-client-notls", "-m", "get"])
                .args(["-s", "3600"])
                .arg(format!("coap://198.18.1.1/ps/data/{name}"));
        } else {
            cmd.arg(&sub)
                .args(["-h", "198.18.1.1", "-p", "1884", "-k", "3600", "-t", &name])
                // Give up on a lost CONNACK or SUBACK in 5 s, not 60: the
                // demo starts it again.
                .args(["--timeout", "5"])
                .env("PYTHONUNBUFFERED", "1");
        }
        cmd.stdout(std::fs::File::create(&file)?)
            .stderr(std::fs::File::create(file.with_extension("err"))?);
        Ok((
            crate::Child {
                child: cmd
                    .spawn()
                    .with_context(|| format!("starting {}", STANDARD[n].0))?,
            },
            file,
        ))
    }
}

fn unix_f() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The day's shape, 0 (night) to 1 (peak), at `phase` in 0..1: night
/// until 0.3, a steep morning rise (shift start) to 0.38, the working day,
/// a slower evening decline from 0.7 to 0.9.
pub fn shape(phase: f64) -> f64 {
    match phase {
        p if p < 0.30 => 0.0,
        p if p < 0.38 => (p - 0.30) / 0.08,
        p if p < 0.70 => 1.0,
        p if p < 0.90 => 1.0 - (p - 0.70) / 0.20,
        _ => 0.0,
    }
}

/// `GET /metrics` from inside the router's namespace: sample line →
/// value.
pub fn scrape(lab: &Lab, port: u16) -> Result<BTreeMap<String, f64>> {
    let text = lab.router.run(move || -> Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lab\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no HTTP head in the metrics answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics: {head}");
    }
    let mut m = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.rsplit_once(' ')
            && let Ok(v) = v.parse::<f64>()
        {
            m.insert(k.to_string(), v);
        }
    }
    Ok(m)
}

/// The shard id in a `…{shard="N"}` sample name.
fn shard_of(key: &str) -> Option<u32> {
    key.split("shard=\"")
        .nth(1)?
        .split('"')
        .next()?
        .parse()
        .ok()
}

fn devsim(
    lab: &Lab,
    story: &Story,
    prefix: &str,
    devices: usize,
    duration: Duration,
    numbered: bool,
    report: &std::path::Path,
) -> Result<crate::Child> {
    let topics: Vec<String> = (0..story.topics).map(Story::topic).collect();
    let mut cmd = std::process::Command::new(ctl_binary());
    cmd.args(["--netns", &lab.subscribers[0].ns.name, "devsim"])
        .args(["--gateway", "198.18.1.1:1884", "--prefix", prefix])
        .args(["--devices", &devices.to_string()])
        .args(["--subscribe", &topics.join(",")])
        .args(["--duration", &format!("{}s", duration.as_secs())])
        .args(["--keep-alive", "20s", "--grace", "1s"])
        .arg("--report")
        .arg(report)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if numbered {
        cmd.args(["--topic", &Story::topic(0)])
            .args(["--publish-to", "198.18.1.1:1884"])
            .args(["--publish-netns", &lab.publisher.name])
            .args(["--rate", &story.numbered.to_string()]);
    }
    Ok(crate::Child {
        child: cmd.spawn().context("starting devsim")?,
    })
}

/// Plays `story` on a fresh lab; `tick` is called once a second with the
/// fraction done.
pub fn run(
    story: &Story,
    keep: Option<&std::path::Path>,
    mut tick: impl FnMut(f64),
) -> Result<Outcome> {
    anyhow::ensure!(
        story.topics >= 4,
        "the story needs at least 4 topics (the standard clients follow 1, 2 and 3)"
    );
    let mut lab = Lab::new(1)?;
    lab.attach_with_relay()?;
    let port = 9464;
    let config = format!(
        r#"migration_deadline = "1s"
[gateway]
listen = "198.18.1.1:1884"
coap_listen = "198.18.1.1:5683"
relay_egress = "scgw0"
relay_iface = "scgw1"
migrate_retry = "300ms"
token_lifetime = "20s"
[cycle]
mode = "{mode}"
period = "1s"
lead = "1s"
season = "{season}s"
window = "{window}s"
horizons = ["5s", "15s"]
refit = "10s"
[cycle.resources]
shard_capacity = {cap:.1}
headroom = {headroom}
max_shards = 16
egress = "r-out"
group_v4_base = "239.1.2.0"
[metrics]
listen = "127.0.0.1:{port}"
[probe]
iface = "scpr0"
every = "200ms"
"#,
        mode = story.mode,
        season = story.season,
        window = story.season * 4,
        cap = story.shard_capacity,
        headroom = story.headroom,
    );
    let daemon = lab.start_daemon_with("100ms", &config)?;
    let state = lab.daemon_state_dir();
    std::fs::create_dir_all(&state)?;
    let warm = (story.warmup * story.season as f64) as u64;
    let total = warm + story.season;
    let report = state.join("fleet.json");
    let mut fleet = devsim(
        &lab,
        story,
        "dev-",
        story.devices,
        Duration::from_secs(total + 30),
        true,
        &report,
    )?;
    // Every device placed before the day starts.
    let placed = Instant::now();
    loop {
        let m = scrape(&lab, port).unwrap_or_default();
        let shards: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("shardcast_shard_devices{"))
            .map(|(_, v)| v)
            .sum();
        if shards as usize >= story.devices {
            break;
        }
        if placed.elapsed() > Duration::from_secs(60) {
            bail!("{} of {} devices placed after 60 s", shards, story.devices);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // The standard clients subscribe; the load starts once the daemon
    // routes their topics to the relay. The CoAP client observes a topic
    // the gateway serves once it is in the installed plan (the gateway
    // re-reads the plan each second): it starts when the gateway's
    // /.well-known/core lists its topic, as an operator would check, not
    // into a 4.04.
    for (_, topic, coap) in STANDARD {
        if coap {
            coap_topic_served(&lab, &Story::topic(topic))?;
        }
    }
    let mut standard = standard_clients(&lab, &state)?;
    let relay = router_ctl::gateway::RelayOptions::DEFAULT_SHARD;
    let routed = Instant::now();
    let mut restarts = 0;
    loop {
        // mqtt-sn-12's client sends CONNECT once and gives up when no
        // CONNACK comes (the gateway busy with 2,000 devices' joins): a
        // client that ended before the load starts is started again.
        for n in 0..standard.len() {
            if let Ok(Some(status)) = standard[n].0.child.try_wait() {
                let said = std::fs::read_to_string(standard[n].1.with_extension("err"))
                    .unwrap_or_default();
                anyhow::ensure!(
                    restarts < 3,
                    "{} ended before the load ({status}): {said}",
                    STANDARD[n].0
                );
                restarts += 1;
                eprintln!(
                    "  ({} ended before the load ({status}), started again: {})",
                    STANDARD[n].0,
                    said.lines().last().unwrap_or("")
                );
                standard[n] = standard_client(&lab, &state, n)?;
            }
        }
        let followed = shardcast_plan::Plan::from_file(&state.join("plan.json"))
            .map(|p| {
                STANDARD.iter().all(|(_, i, _)| {
                    p.topics
                        .iter()
                        .any(|t| t.name == Story::topic(*i) && t.shards.contains(&relay))
                })
            })
            .unwrap_or(false);
        if followed {
            break;
        }
        if routed.elapsed() > Duration::from_secs(45) {
            let routed: Vec<String> = shardcast_plan::Plan::from_file(&state.join("plan.json"))
                .map(|p| {
                    p.topics
                        .iter()
                        .filter(|t| t.shards.contains(&relay))
                        .map(|t| t.name.clone())
                        .collect()
                })
                .unwrap_or_default();
            let errs: Vec<String> = standard
                .iter()
                .map(|(_, f)| std::fs::read_to_string(f.with_extension("err")).unwrap_or_default())
                .collect();
            bail!(
                "the standard clients' topics not routed to the gateway's relay after 45 s (routed: {routed:?}; clients said: {errs:?})"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let t0 = unix_f();
    let s = story.clone();
    // The flash's topic (followed by the CoAP client, not by `mqtt_sn_sub`).
    let flash_topic = 3;
    let load = Generator::start(
        &lab.publisher.name,
        "198.18.1.1:1884".parse()?,
        (0..story.topics)
            .map(|i| {
                let n = Story::topic(i);
                [n.as_bytes()[0], n.as_bytes()[1]]
            })
            .collect(),
        Arc::new(move |i, t| {
            let el = t - t0;
            // Topics start their day slightly apart.
            let phase = (el / s.season as f64 + 0.01 * i as f64).fract();
            let mut r = s.night + (s.peak - s.night) * shape(phase);
            let into = el - warm as f64;
            if i == flash_topic && into >= s.flash.0 as f64 && into < (s.flash.0 + s.flash.1) as f64
            {
                r += s.flash.2;
            }
            r
        }),
    );
    let mut out = Outcome {
        mode: story.mode,
        ..Default::default()
    };
    let visitors_report = state.join("visitors.json");
    let mut visitors: Option<crate::Child> = None;
    let mut next = Instant::now();
    let mut last_bucket = 0.0;
    loop {
        next += Duration::from_millis(400);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let el = unix_f() - t0;
        tick((el / total as f64).min(1.0));
        // The day's last bucket is written a tick after it ends; a
        // stalled one is given up on.
        if el >= total as f64 + 3.0 {
            break;
        }
        let into = el - warm as f64;
        if visitors.is_none() && story.visitors > 0 && into >= story.season as f64 / 3.0 {
            visitors = Some(devsim(
                &lab,
                story,
                "visitor-",
                story.visitors,
                Duration::from_secs(story.season / 3),
                false,
                &visitors_report,
            )?);
        }
        if into < 0.0 {
            continue;
        }
        let m = scrape(&lab, port)?;
        // One sample per bucket the daemon wrote (the rates delivered
        // under the routes in force during it).
        let bucket = m
            .get("shardcast_delivered_bucket_timestamp_seconds")
            .copied()
            .unwrap_or(0.0);
        if bucket <= last_bucket {
            continue;
        }
        last_bucket = bucket;
        // The day's buckets, the same number in every run: those whose
        // start is nearest to one of the day's seconds (buckets are whole
        // seconds; the day starts at any fraction of one, so a window
        // of `bucket >= start - 1` held 30 buckets in one run and 31 in
        // the next).
        let t = bucket - t0 - warm as f64;
        let k = t.round();
        if k < 0.0 {
            continue;
        }
        if k >= story.season as f64 {
            break;
        }
        let mut sample = Sample {
            t,
            ..Default::default()
        };
        for (k, v) in &m {
            let Some(id) = shard_of(k) else { continue };
            if id == relay {
                // The gateway's relay: no devices, not planned.
                continue;
            }
            if k.starts_with("shardcast_shard_delivered_messages_per_second{") {
                let members = m
                    .get(&format!("shardcast_shard_devices{{shard=\"{id}\"}}"))
                    .copied()
                    .unwrap_or(0.0);
                // Shards holding devices, and any other carrying load (a
                // shard being left, during a migration).
                if members > 0.0 || *v > 0.0 {
                    sample.shards.push((id, *v, story.shard_capacity));
                }
            }
        }
        out.shard_seconds += sample.shards.len() as u64;
        out.overload_seconds += sample.shards.iter().filter(|s| s.1 > s.2).count() as u64;
        out.samples.push(sample);
        if k + 1.0 >= story.season as f64 {
            break;
        }
    }
    let per_topic = load.stop()?;
    out.load_sent = per_topic.iter().sum();
    // The clients end once what is queued for them is read (their
    // output stops growing).
    let drained = Instant::now();
    let mut sizes = Vec::new();
    let mut still = Instant::now();
    while drained.elapsed() < Duration::from_secs(30)
        && still.elapsed() < Duration::from_millis(1500)
    {
        std::thread::sleep(Duration::from_millis(250));
        let now: Vec<u64> = standard
            .iter()
            .map(|(_, f)| std::fs::metadata(f).map_or(0, |m| m.len()))
            .collect();
        if now != sizes {
            sizes = now;
            still = Instant::now();
        }
    }
    for (n, (mut c, file)) in standard.drain(..).enumerate() {
        let _ = c.terminate();
        let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let (client, topic, _) = STANDARD[n];
        out.standard.push(Standard::count(
            client,
            topic,
            per_topic[topic],
            &String::from_utf8_lossy(&text),
        ));
    }
    let m = scrape(&lab, port)?;
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0) as u64;
    out.created = get("shardcast_cycle_shards_total{change=\"created\"}");
    out.merged = get("shardcast_cycle_shards_total{change=\"merged\"}");
    out.installs = get("shardcast_cycles_total{action=\"install\"}");
    out.cycles = out.installs
        + get("shardcast_cycles_total{action=\"none\"}")
        + get("shardcast_cycles_total{action=\"advise\"}");
    if let Some(mut v) = visitors.take() {
        let _ = v.child.wait();
    }
    fleet.terminate()?;
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?,
    )?;
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    out.sent = n("sent");
    out.delivered = n("delivered");
    out.missing = n("missing");
    out.duplicates = n("duplicates");
    out.migrations = n("migrations");
    out.devices_assigned = n("assigned");
    out.forecast_mase = m.get("shardcast_forecast_mase").copied();
    out.probes = probe_latency(&m);
    out.missed = r["per_device"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| d["missing"].as_u64().unwrap_or(0) > 0)
                .take(5)
                .map(|d| format!("{}: {} {}", d["id"], d["missing"], d["missed"]))
                .collect()
        })
        .unwrap_or_default();
    drop(daemon);
    // Kept for the reader: the decision log, the fleet's report, the
    // daemon's plan.
    if let Some(dir) = keep {
        std::fs::create_dir_all(dir)?;
        for (f, to) in [
            ("decisions.jsonl", "decisions.jsonl"),
            ("fleet.json", "fleet.json"),
            ("plan.json", "plan.json"),
        ] {
            let _ = std::fs::copy(state.join(f), dir.join(format!("{}-{to}", story.mode)));
        }
        out.t0 = t0;
        let mut csv = String::from("t,shard,delivered_per_s,capacity\n");
        for smp in &out.samples {
            for (id, load, cap) in &smp.shards {
                csv.push_str(&format!("{:.0},{id},{load:.1},{cap:.1}\n", smp.t));
            }
        }
        std::fs::write(dir.join(format!("{}-shards.csv", story.mode)), csv)?;
    }
    Ok(out)
}

/// An SVG of each run's busiest shard's load over its usable capacity and
/// its shard count, second by second.
pub fn plot(runs: &[Outcome], path: &std::path::Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(300);
    let tmax = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.t))
        .fold(1.0f64, f64::max);
    let umax = runs
        .iter()
        .flat_map(|r| {
            r.samples
                .iter()
                .flat_map(|s| s.shards.iter().map(|x| x.1 / x.2))
        })
        .fold(1.2f64, f64::max);
    let colors = [RED, BLUE];
    let mut chart = ChartBuilder::on(&top)
        .caption("busiest shard: load / capacity", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..tmax, 0.0..umax)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the day")
        .draw()?;
    chart.draw_series(LineSeries::new([(0.0, 1.0), (tmax, 1.0)], BLACK.mix(0.5)))?;
    for (r, c) in runs.iter().zip(colors) {
        let pts: Vec<(f64, f64)> = r
            .samples
            .iter()
            .map(|s| {
                let u = s.shards.iter().map(|x| x.1 / x.2).fold(0.0, f64::max);
                (s.t, u)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c))?
            .label(r.mode)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c));
    }
    chart.configure_series_labels().border_style(BLACK).draw()?;
    let smax = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.shards.len()))
        .max()
        .unwrap_or(1) as f64
        + 1.0;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("shards holding devices", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..tmax, 0.0..smax)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the day")
        .draw()?;
    for (r, c) in runs.iter().zip(colors) {
        let pts: Vec<(f64, f64)> = r
            .samples
            .iter()
            .map(|s| (s.t, s.shards.len() as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c))?
            .label(r.mode)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c));
    }
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

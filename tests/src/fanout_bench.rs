//! The fan-out benchmark (`SHARDCAST_BENCH=fanout cargo xtask bench`): what
//! a publish routed to k = 1, 2, 4, 8, 16 shards (on one egress, and half
//! on each of two; MQTT-SN, and CoAP at k = 1 and 4) costs on the live
//! path, by
//! each way a multi-shard publish leaves (the TC fan-out program, an XDP
//! broadcast with the copy program), side by side in every round,
//! from the kernel's own accounting of each program's run time
//! (`kernel.bpf_stats_enabled`, switched back afterwards) and the sender's
//! wall time per frame (XDP, the fan-out, every copy's transmit and the
//! receiving veth, all in the sender's softirq on this test bed).
//!
//! ```text
//!  a0 ──veth── a1 [XDP router, TC fan-out] ... b0 ──veth── b1
//!  (frames sent raw, AF_PACKET)               (shards 1-16's egress)
//!                                             c0 ──veth── c1
//!                                             (shards 17-32's egress)
//! ```

use std::{path::PathBuf, time::Instant};

use anyhow::{Result, bail};
use router_common::{
    build::{coap_request, mqttsn_publish, qos0},
    coap,
    maps::{LAYOUT_VERSION, names},
    mqttsn::TOPIC_SHORT,
};
use shardcast_dataplane::{AttachOptions, Dataplane, FanoutPath, Mode, RouterConfig, TcAttach};
use shardcast_plan::Plan;

use crate::{
    L3, NetNs, frame,
    measure::{BpfStats, cpu_model, median, prog_stats},
    rawsock, unique,
};

/// Fan-outs measured: (shards, topic, over two egresses, as CoAP). On
/// one egress the topic goes to shards 1..=k (on `b0`); over two, half to
/// shards 1.. (on `b0`), half to shards 17.. (on `c0`). Publishes are
/// MQTT-SN (short topic), or CoAP to `ps/data/<topic>` (a 2-byte token, a
/// Content-Format option): the same topics, whose parse costs more.
const FANOUTS: [(u32, &str, bool, bool); 11] = [
    (1, "01", false, false),
    (2, "02", false, false),
    (4, "04", false, false),
    (8, "08", false, false),
    (16, "16", false, false),
    (2, "x2", true, false),
    (4, "x4", true, false),
    (8, "x8", true, false),
    (16, "xg", true, false),
    (1, "01", false, true),
    (4, "04", false, true),
];
/// The 21-byte payload of every publish.
const PAYLOAD: &[u8; 21] = b"21-byte payload......";
/// Frames per fan-out per round.
const FRAMES: usize = 20_000;
/// The two ways a multi-shard publish leaves, measured side by side.
const WAYS: [FanoutPath; 2] = [FanoutPath::Tc, FanoutPath::Auto];

/// The pinned programs whose run time is read.
struct Progs {
    xdp: PathBuf,
    tc: PathBuf,
    copy: PathBuf,
}

/// Sends `FRAMES` publishes of topic `name` (as CoAP if `coap`); returns
/// XDP ns per publish, the fan-out (TC) or copy programs' ns per publish,
/// and the sender's wall ns per publish.
fn send(
    tx: &std::os::fd::OwnedFd,
    progs: &Progs,
    path: FanoutPath,
    name: &str,
    coap: bool,
) -> Result<[f64; 3]> {
    let f = if coap {
        frame(
            L3::V4,
            None,
            40001,
            5683,
            &coap_request(
                coap::TYPE_NON,
                coap::CODE_PUT,
                7,
                &[0x5c, 0x01],
                &["ps", "data", name],
                PAYLOAD,
            ),
        )
    } else {
        frame(
            L3::V4,
            None,
            40000,
            1884,
            &mqttsn_publish(
                false,
                qos0(TOPIC_SHORT),
                name.as_bytes().try_into().expect("two bytes"),
                0,
                PAYLOAD,
            ),
        )
    };
    // The copy program also runs on single-shard frames (it passes them):
    // its time counts for every way that uses it.
    let copy_prog = match path {
        FanoutPath::Tc => &progs.tc,
        FanoutPath::Auto => &progs.copy,
    };
    let (x0, xc0) = prog_stats(&progs.xdp)?;
    let (t0, _) = prog_stats(copy_prog)?;
    let start = Instant::now();
    for _ in 0..FRAMES {
        rawsock::send_raw(tx, &f);
    }
    let wall = start.elapsed().as_nanos() as f64 / FRAMES as f64;
    let (x1, xc1) = prog_stats(&progs.xdp)?;
    let (t1, _) = prog_stats(copy_prog)?;
    if xc1 - xc0 < FRAMES as u64 {
        bail!("the router ran {} times for {FRAMES} frames", xc1 - xc0);
    }
    Ok([
        (x1 - x0) as f64 / (xc1 - xc0) as f64,
        t1.saturating_sub(t0) as f64 / FRAMES as f64,
        wall,
    ])
}

pub fn bench(rounds: usize) -> Result<String> {
    let ns = NetNs::new("scfob")?;
    for (a, b) in [("a0", "a1"), ("b0", "b1"), ("c0", "c1")] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        ns.ip(&["link", "set", a, "up"])?;
        ns.ip(&["link", "set", b, "up"])?;
    }
    ns.sysctl("net.ipv6.conf.all.disable_ipv6=1")?;
    let _stats = BpfStats::enable()?;
    ns.run(move || run(rounds))?
}

fn run(rounds: usize) -> Result<String> {
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/{}", unique("scfob")));
    let mut dp = Dataplane::attach(
        &pin_root,
        &AttachOptions {
            object: crate::object(),
            ingress: vec!["a1".into()],
            egress: vec!["b0".into(), "c0".into()],
            mode: Mode::Driver,
            tc: TcAttach::Auto,
            fanout: Default::default(),
            config: RouterConfig::default(),
        },
    )?;
    let result = (|| -> Result<String> {
        // Copies reach b1's stack (veth hands XDP frames only to a peer
        // that runs XDP); the TC way's skbs would arrive without it.
        dp.attach_pass("b1", Mode::Driver)?;
        dp.attach_pass("c1", Mode::Driver)?;
        let shards: Vec<String> = (1..=32)
            .map(|i| {
                format!(
                    r#"{{"id": {i}, "group_v4": "239.4.0.{i}", "egress": "{}"}}"#,
                    if i > 16 { "c0" } else { "b0" }
                )
            })
            .collect();
        // The CoAP rows publish to the MQTT-SN rows' topics.
        let topics: Vec<String> = FANOUTS
            .iter()
            .filter(|f| !f.3)
            .map(|&(k, name, two, _)| {
                let ids: Vec<u32> = if two {
                    (1..=k / 2).chain(17..17 + k / 2).collect()
                } else {
                    (1..=k).collect()
                };
                let s: Vec<String> = ids.iter().map(u32::to_string).collect();
                format!(r#"{{"name": "{name}", "shards": [{}]}}"#, s.join(","))
            })
            .collect();
        let plan_json = |generation: u64| {
            format!(
                r#"{{"generation": {generation}, "shards": [{}], "topics": [{}]}}"#,
                shards.join(","),
                topics.join(",")
            )
        };
        let dir = pin_root.join(format!("v{LAYOUT_VERSION}"));
        let progs = Progs {
            xdp: dir.join(names::PROG_ROUTER),
            tc: dir.join(names::PROG_FANOUT),
            copy: dir.join(names::PROG_COPY),
        };
        // A kernel that refused the copy program: the TC way alone.
        let ways: &[FanoutPath] = if progs.copy.exists() {
            &WAYS
        } else {
            &WAYS[..1]
        };
        let tx = rawsock::packet_socket("a0");
        // Per way, per fan-out, per round: XDP ns, fan-out or copy program
        // ns (per publish), wall ns.
        let mut samples: [Vec<[Vec<f64>; 3]>; 2] =
            std::array::from_fn(|_| FANOUTS.iter().map(|_| Default::default()).collect());
        let mut generation = 0;
        for _ in 0..rounds {
            // Both ways in every round, the same plan installed again with
            // the other way.
            for (w, path) in ways.iter().enumerate() {
                dp.set_fanout_path(*path);
                generation += 1;
                dp.install(&Plan::from_json(&plan_json(generation))?.compile()?, false)?;
                for (i, &(_, name, _, coap)) in FANOUTS.iter().enumerate() {
                    let s = send(&tx, &progs, *path, name, coap)?;
                    for (j, v) in s.into_iter().enumerate() {
                        samples[w][i][j].push(v);
                    }
                }
            }
        }
        let c = dp.counters()?;
        let copies = c.reasons[&router_common::reason::Reason::Redirected].packets;
        let want: u64 =
            FANOUTS.iter().map(|f| f.0 as u64).sum::<u64>() * (FRAMES * rounds * ways.len()) as u64;
        if copies != want {
            bail!("{copies} copies counted, {want} sent for");
        }
        let cpu = cpu_model();
        // Each protocol's rows against its own single-shard publish.
        let base = |coap: bool| {
            let i = FANOUTS
                .iter()
                .position(|f| f.0 == 1 && f.3 == coap)
                .expect("a single-shard row per protocol");
            median(samples[0][i][0].clone())
        };
        let mut out = String::new();
        if ways.len() < WAYS.len() {
            out.push_str("The kernel refused the copy program: the TC way alone, no broadcast.\n");
        }
        out.push_str(&format!(
            "Fan-out on the live path ({cpu}; {rounds} rounds of {FRAMES} frames per fan-out and way, medians; \
             kernel BPF run-time accounting; 21-byte MQTT-SN payload, or CoAP where the way says so, IPv4, \
             veth; a row's programs against the single-shard publish of its protocol). Programs: XDP (parse, \
             route, hand-off), then per copy the TC fan-out program (clone, rewrite, redirect) or the \
             copy program (rewrite; the kernel clones the frame outside any program). Wall: the sender's \
             time per publish (send syscall, XDP, every copy's transmit and the receiving veth):\n\n\
             | shards | egresses | way | XDP ns/publish | fan-out or copy ns/copy | programs / single-shard XDP | sender wall ns/publish | wall ns/copy |\n\
             |---:|---:|---|---:|---:|---:|---:|---:|\n"
        ));
        for (i, &(k, _, two, coap)) in FANOUTS.iter().enumerate() {
            for (w, path) in ways.iter().enumerate() {
                if k == 1 && w > 0 {
                    continue;
                }
                let x = median(samples[w][i][0].clone());
                let t = median(samples[w][i][1].clone());
                let wall = median(samples[w][i][2].clone());
                let way = match (k, path) {
                    (1, _) => "single shard",
                    (_, FanoutPath::Tc) => "TC",
                    (_, FanoutPath::Auto) => "broadcast",
                };
                let way = if coap {
                    format!("{way}, CoAP")
                } else {
                    way.to_string()
                };
                out.push_str(&format!(
                    "| {k} | {} | {way} | {x:.0} | {:.0} | {:.2} | {wall:.0} | {:.0} |\n",
                    if two { 2 } else { 1 },
                    if k > 1 { t / k as f64 } else { 0.0 },
                    (x + t) / base(coap),
                    wall / k as f64
                ));
            }
        }
        Ok(out)
    })();
    drop(dp);
    Dataplane::detach(&pin_root)?;
    result
}

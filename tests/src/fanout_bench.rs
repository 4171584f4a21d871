//! The fan-out benchmark (`SHARDCAST_BENCH=fanout cargo xtask bench`): what
//! a publish routed to k = 1, 2, 4, 8, 16 shards costs on the live path,
//! from the kernel's own accounting of each program's run time
//! (`kernel.bpf_stats_enabled`, switched back afterwards) and the sender's
//! wall time per frame (XDP, the fan-out, every copy's transmit and the
//! receiving veth, all in the sender's softirq on this test bed).
//!
//! ```text
//!  a0 ──veth── a1 [XDP router, TC fan-out] ... b0 ──veth── b1
//!  (frames sent raw, AF_PACKET)               (every shard's egress)
//! ```

use std::{path::PathBuf, time::Instant};

use anyhow::{Result, bail};
use router_common::{
    build::{mqttsn_publish, qos0},
    maps::{LAYOUT_VERSION, names},
    mqttsn::TOPIC_SHORT,
};
use shardcast_dataplane::{AttachOptions, Dataplane, Mode, RouterConfig, TcAttach};
use shardcast_plan::Plan;

use crate::{
    L3, NetNs, frame,
    measure::{BpfStats, cpu_model, median, prog_stats},
    rawsock, unique,
};

/// Fan-outs measured; topic `kNN` is routed to shards 1..=NN.
const FANOUTS: [u32; 5] = [1, 2, 4, 8, 16];
/// Frames per fan-out per round.
const FRAMES: usize = 20_000;

pub fn bench(rounds: usize) -> Result<String> {
    let ns = NetNs::new("scfob")?;
    for (a, b) in [("a0", "a1"), ("b0", "b1")] {
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
            egress: vec!["b0".into()],
            mode: Mode::Driver,
            tc: TcAttach::Auto,
            config: RouterConfig::default(),
        },
    )?;
    let result = (|| -> Result<String> {
        let shards: Vec<String> = (1..=16)
            .map(|i| format!(r#"{{"id": {i}, "group_v4": "239.4.0.{i}", "egress": "b0"}}"#))
            .collect();
        let topics: Vec<String> = FANOUTS
            .iter()
            .map(|&k| {
                let s: Vec<String> = (1..=k).map(|i| i.to_string()).collect();
                format!(r#"{{"name": "{k:02}", "shards": [{}]}}"#, s.join(","))
            })
            .collect();
        let plan = Plan::from_json(&format!(
            r#"{{"generation": 1, "shards": [{}], "topics": [{}]}}"#,
            shards.join(","),
            topics.join(",")
        ))?;
        dp.install(&plan.compile()?, false)?;
        let dir = pin_root.join(format!("v{LAYOUT_VERSION}"));
        let (xdp, tc) = (dir.join(names::PROG_ROUTER), dir.join(names::PROG_FANOUT));
        let tx = rawsock::packet_socket("a0");
        // Per fan-out, per round: XDP ns, TC ns (per publish), wall ns.
        let mut samples: Vec<[Vec<f64>; 3]> = FANOUTS.iter().map(|_| Default::default()).collect();
        for _ in 0..rounds {
            for (i, &k) in FANOUTS.iter().enumerate() {
                let name = format!("{k:02}");
                let f = frame(
                    L3::V4,
                    None,
                    40000,
                    1884,
                    &mqttsn_publish(
                        false,
                        qos0(TOPIC_SHORT),
                        name.as_bytes().try_into().expect("two bytes"),
                        0,
                        b"21-byte payload......",
                    ),
                );
                let (x0, xc0) = prog_stats(&xdp)?;
                let (t0, tc0) = prog_stats(&tc)?;
                let start = Instant::now();
                for _ in 0..FRAMES {
                    rawsock::send_raw(&tx, &f);
                }
                let wall = start.elapsed().as_nanos() as f64 / FRAMES as f64;
                let (x1, xc1) = prog_stats(&xdp)?;
                let (t1, tc1) = prog_stats(&tc)?;
                if xc1 - xc0 < FRAMES as u64 {
                    bail!("the router ran {} times for {FRAMES} frames", xc1 - xc0);
                }
                samples[i][0].push((x1 - x0) as f64 / (xc1 - xc0) as f64);
                // The fan-out program runs once per frame passed up.
                samples[i][1].push(if tc1 > tc0 {
                    (t1 - t0) as f64 / FRAMES as f64
                } else {
                    0.0
                });
                samples[i][2].push(wall);
            }
        }
        let c = dp.counters()?;
        let copies = c.reasons[&router_common::reason::Reason::Redirected].packets;
        let want: u64 = FANOUTS.iter().map(|&k| k as u64).sum::<u64>() * (FRAMES * rounds) as u64;
        if copies != want {
            bail!("{copies} copies counted, {want} sent for");
        }
        let cpu = cpu_model();
        let base = median(samples[0][0].clone());
        let mut out = format!(
            "Fan-out on the live path ({cpu}; {rounds} rounds of {FRAMES} frames per fan-out, medians; \
             kernel BPF run-time accounting; 21-byte MQTT-SN payload, IPv4, veth):\n\n\
             | shards | XDP ns/publish | fan-out ns/publish | fan-out ns/copy | both / single-shard XDP | sender wall ns/publish | wall ns/copy |\n\
             |---:|---:|---:|---:|---:|---:|---:|\n"
        );
        for (i, &k) in FANOUTS.iter().enumerate() {
            let x = median(samples[i][0].clone());
            let t = median(samples[i][1].clone());
            let w = median(samples[i][2].clone());
            out.push_str(&format!(
                "| {k} | {x:.0} | {t:.0} | {:.0} | {:.2} | {w:.0} | {:.0} |\n",
                if k > 1 { t / k as f64 } else { 0.0 },
                (x + t) / base,
                w / k as f64
            ));
        }
        Ok(out)
    })();
    drop(dp);
    Dataplane::detach(&pin_root)?;
    result
}

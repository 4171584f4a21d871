//! `cargo xtask bench`: ns/packet of the XDP router under
//! `BPF_PROG_TEST_RUN`, side by side with two reference programs built from
//! `router-ebpf/src/bin/bench-reference.rs`:
//!
//! - floor: parse Ethernet/IPv4/UDP, `XDP_TX`;
//! - forwarder: the same plus one hash lookup on 8 payload bytes and a
//!   destination rewrite, `XDP_TX`.
//!
//! The machine is noisy, so every case runs once per round, rounds
//! interleave the programs, and each case is reported as the median over
//! rounds of its time and of its ratio to the forwarder *in the same round*.
//! Prints a Markdown table (the one in BENCHMARKS.md).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use integration_tests::{L3, NetNs, build, fixtures, frame, object, reference_object};
use router_common::{coap, mqttsn};
use router_ctl::dataplane::{Dataplane, ReferenceProgram, RouterConfig, action};

/// Runs per `BPF_PROG_TEST_RUN` call (the kernel reports the mean).
const REPEAT: u32 = 1_000_000;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct Case {
    name: &'static str,
    prog: Prog,
    packet: Vec<u8>,
    want: u32,
}

#[derive(Clone, Copy, PartialEq)]
enum Prog {
    Floor,
    Forwarder,
    Router,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run() -> Result<()> {
    let rounds: usize = match std::env::var("SHARDCAST_BENCH_ROUNDS") {
        Ok(s) => s
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .with_context(|| format!("SHARDCAST_BENCH_ROUNDS={s:?} is not a positive count"))?,
        Err(_) => 9,
    };
    let ns = NetNs::new("scbench")?;
    ns.ip(&["link", "add", "sc0", "type", "veth", "peer", "name", "sc1"])?;
    ns.ip(&["link", "set", "sc0", "up"])?;
    ns.ip(&["link", "set", "sc1", "up"])?;
    // Everything that names interfaces runs in the namespace.
    let table = ns.run(move || bench(rounds))??;
    println!("{table}");
    Ok(())
}

fn bench(rounds: usize) -> Result<String> {
    let mut dp = Dataplane::load(&object(), &RouterConfig::default())?;
    dp.install(&fixtures::plan("sc0", 1).compile()?, false)?;
    let floor = ReferenceProgram::load(&reference_object(), "ref_floor")?;
    let mut fwd = ReferenceProgram::load(&reference_object(), "ref_forwarder")?;

    // A typical sensor reading: predefined topic id 5 ("temp/room1").
    let body = b"{\"t\":21.5,\"seq\":1042}";
    let m = build::mqttsn_publish(
        false,
        build::qos0(mqttsn::TOPIC_PREDEFINED),
        5u16.to_be_bytes(),
        0,
        body,
    );
    let c = build::coap_request(
        coap::TYPE_NON,
        coap::CODE_PUT,
        0x4242,
        &[0xa1, 0xb2],
        &["ps", "data", "temp", "room1"],
        body,
    );
    let unrouted = build::coap_request(
        coap::TYPE_NON,
        coap::CODE_PUT,
        0x4243,
        &[0xa1, 0xb2],
        &["ps", "data", "temp", "room9"],
        body,
    );
    let m4 = frame(L3::V4, None, 40000, 1884, &m);
    // The forwarder keys on the first 8 payload bytes of the same frame.
    let key = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
    fwd.insert(key, u64::from_be_bytes([239, 1, 1, 1, 0x07, 0x5c, 0, 0]))?;

    let cases = vec![
        Case {
            name: "floor (parse, XDP_TX)",
            prog: Prog::Floor,
            packet: m4.clone(),
            want: action::TX,
        },
        Case {
            name: "forwarder (1 lookup, rewrite, XDP_TX)",
            prog: Prog::Forwarder,
            packet: m4.clone(),
            want: action::TX,
        },
        Case {
            name: "router: MQTT-SN v4 publish",
            prog: Prog::Router,
            packet: m4,
            want: action::REDIRECT,
        },
        Case {
            name: "router: MQTT-SN v6 publish",
            prog: Prog::Router,
            packet: frame(L3::V6, None, 40000, 1884, &m),
            want: action::REDIRECT,
        },
        Case {
            name: "router: CoAP v4 publish",
            prog: Prog::Router,
            packet: frame(L3::V4, None, 40000, 5683, &c),
            want: action::REDIRECT,
        },
        Case {
            name: "router: CoAP v6 publish",
            prog: Prog::Router,
            packet: frame(L3::V6, None, 40000, 5683, &c),
            want: action::REDIRECT,
        },
        Case {
            name: "router: CoAP v4 unrouted (counted, PASS)",
            prog: Prog::Router,
            packet: frame(L3::V4, None, 40000, 5683, &unrouted),
            want: action::PASS,
        },
    ];
    let run = |case: &Case, repeat: u32| -> Result<(u32, Duration)> {
        let r = match case.prog {
            Prog::Floor => floor.test_run(&case.packet, repeat)?,
            Prog::Forwarder => fwd.test_run(&case.packet, repeat)?,
            Prog::Router => dp.test_run(&case.packet, repeat)?,
        };
        Ok((r.action, r.duration))
    };
    // Each case must do what it is said to do before it is timed.
    for case in &cases {
        let (a, _) = run(case, 1)?;
        ensure!(
            a == case.want,
            "{}: verdict {a}, want {}",
            case.name,
            case.want
        );
    }

    let fwd_idx = cases
        .iter()
        .position(|c| c.prog == Prog::Forwarder)
        .expect("forwarder case");
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut ratio: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        let mut this = Vec::new();
        for case in &cases {
            let (_, d) = run(case, REPEAT)?;
            this.push(d.as_nanos() as f64);
        }
        if this[fwd_idx] <= 0.0 {
            bail!("the forwarder measured 0 ns: timer resolution too coarse");
        }
        for (i, t) in this.iter().enumerate() {
            ns[i].push(*t);
            ratio[i].push(t / this[fwd_idx]);
        }
    }
    let kernel = integration_tests::sh("uname", &["-r"])?.trim().to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mut out = format!(
        "kernel {kernel}, {cpu}; BPF_PROG_TEST_RUN repeat {REPEAT}, median of {rounds} interleaved rounds; \
         router verified in {} instructions\n\n\
         | case | ns/packet | × forwarder |\n|---|---:|---:|\n",
        dp.verified_instructions()
            .map_or_else(|| "?".into(), |n| n.to_string())
    );
    for (i, case) in cases.iter().enumerate() {
        out.push_str(&format!(
            "| {} | {:.1} | {:.2} |\n",
            case.name,
            median(ns[i].clone()),
            median(ratio[i].clone())
        ));
    }
    Ok(out)
}

//! `cargo xtask bench`: ns/packet of the XDP router under
//! `BPF_PROG_TEST_RUN`, side by side with reference programs built from
//! `router-ebpf/src/bin/bench-reference.rs`:
//!
//! - floor: parse Ethernet/IPv4/UDP, `XDP_TX`;
//! - the floor plus one call of a helper that returns at once (what a call
//!   out of a program costs on this host);
//! - forwarder: the floor plus one hash lookup on 8 payload bytes and a
//!   destination rewrite, `XDP_TX`.
//!
//! The machine is noisy, so every case runs once per round, rounds
//! interleave the programs, and each case is reported as the median over
//! rounds of its time and of its ratio to the forwarder *in the same round*.
//! The time per packet is the steady state: the difference between the
//! mean of the fastest half of the calls of 254 runs and of 127 (each
//! call's first run is cold, see `bench`). Prints a Markdown table (the
//! one in BENCHMARKS.md).
//!
//! `SHARDCAST_BENCH_BASELINE=old.o` also times another build of the router
//! on the same packets and prints each publish case's ratio to it (A/B in
//! one run); `SHARDCAST_BENCH_CASES=substring` keeps only matching cases.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use integration_tests::{
    L3, NetNs, build, fixtures, frame, max_ttl,
    measure::{median, rss_mib},
    object, reference_object,
};
use router_common::coap;
use router_ctl::{config::DaemonConfig, daemon::Daemon};
use shardcast_dataplane::{AttachOptions, Dataplane, Mode, ReferenceProgram, RouterConfig, action};

/// Runs per `BPF_PROG_TEST_RUN` call (the kernel reports the mean). The
/// kernel runs the program again and again on the *same* buffer, which the
/// router rewrites: TTL − 1 each time, so from TTL 255 the packet stays on
/// the redirect path for 254 runs and no more (a million-run call would
/// time the TTL-expired path after the 254th). Every timed call is checked
/// to end with its case's verdict.
const REPEAT: u32 = 254;
/// Calls per case per round, of each length. Each call also costs ~10 ms
/// of kernel set-up outside the timed loop (the program is swapped into the
/// XDP dispatcher and out again, an RCU grace period each way), so a
/// million runs per case (3,940 calls) would take minutes per case.
const CALLS: u32 = 40;
/// Runs per call of the second, shorter series: the per-packet time is
/// taken from the difference between the two series (see `bench`).
const SHORT: u32 = REPEAT / 2;

fn main() -> std::process::ExitCode {
    if let Ok(f) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(f)
            .with_writer(std::io::stderr)
            .init();
    }
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
    /// The floor and one helper call.
    Call,
    Forwarder,
    Router,
    /// The router with per (topic, device group) counting on.
    RouterGroups,
    /// The same, counting one publish in 16.
    RouterGroupsSampled,
    /// Another build of the router (`SHARDCAST_BENCH_BASELINE`), for A/B
    /// comparisons of a change in the same run.
    Baseline,
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
    let which = std::env::var("SHARDCAST_BENCH").unwrap_or_else(|_| "all".into());
    if ![
        "all", "xdp", "control", "tick", "planner", "shapes", "policy", "forecast", "fanout",
        "e2e", "migrate", "relay", "cycle",
    ]
    .contains(&which.as_str())
    {
        bail!(
            "SHARDCAST_BENCH={which:?}: expected all, xdp, control, tick, planner, shapes, policy, forecast, fanout, e2e, migrate, relay or cycle"
        );
    }
    // target/<profile>/shardcast-bench -> target/
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .context("bench binary outside a target directory")?;
    if which == "all" || which == "forecast" {
        println!("{}", integration_tests::forecast_bench::bench(target)?);
        if which == "forecast" {
            return Ok(());
        }
    }
    if which == "all" || which == "planner" {
        println!("{}", integration_tests::planner_bench::bench(target)?);
    }
    if which == "all" || which == "planner" || which == "shapes" {
        println!("{}", integration_tests::planner_bench::shapes(target)?);
    }
    if which == "all" || which == "planner" || which == "policy" {
        println!("{}", integration_tests::planner_bench::policies()?);
    }
    if ["planner", "shapes", "policy"].contains(&which.as_str()) {
        return Ok(());
    }
    if which == "all" || which == "e2e" {
        println!("{}", integration_tests::e2e_bench::bench()?);
        if which == "e2e" {
            return Ok(());
        }
    }
    if which == "all" || which == "relay" {
        println!("{}", integration_tests::e2e_bench::relay_bench()?);
        if which == "relay" {
            return Ok(());
        }
    }
    if which == "all" || which == "migrate" {
        println!("{}", integration_tests::migrate_bench::bench()?);
        if which == "migrate" {
            return Ok(());
        }
    }
    if which == "all" || which == "fanout" {
        println!("{}", integration_tests::fanout_bench::bench(rounds)?);
        if which == "fanout" {
            return Ok(());
        }
    }
    let ns = NetNs::new("scbench")?;
    ns.ip(&["link", "add", "sc0", "type", "veth", "peer", "name", "sc1"])?;
    ns.ip(&["link", "set", "sc0", "up"])?;
    ns.ip(&["link", "set", "sc1", "up"])?;
    // Everything that names interfaces runs in the namespace.
    if which == "tick" {
        println!("{}", ns.run(tick_bench)??);
        return Ok(());
    }
    if which == "all" || which == "cycle" {
        println!("{}", ns.run(integration_tests::cycle_bench::bench)??);
        if which == "cycle" {
            return Ok(());
        }
    }
    if which != "control" {
        let table = ns.run(move || bench(rounds))??;
        println!("{table}");
    }
    if which != "xdp" {
        let table = ns.run(control_plane)??;
        println!("{table}");
    }
    Ok(())
}

/// A plan of `n` topics `t/<i>` over 64 shards; `variant` moves every tenth
/// topic to the next shard (10% of the routes change between variants).
fn big_plan(n: usize, generation: u64, variant: u32) -> shardcast_plan::Plan {
    use shardcast_plan::{Plan, ShardSpec, TopicSpec};
    let shards: Vec<ShardSpec> = (1..=64u32)
        .map(|id| ShardSpec {
            id,
            group_v4: Some(format!("239.2.{}.{}", id / 256, id % 256)),
            group_v6: None,
            egress: "sc0".into(),
            port: None,
            capacity: None,
            class: None,
        })
        .collect();
    let topics = (0..n)
        .map(|i| {
            let moved = if i % 10 == 0 { variant } else { 0 };
            TopicSpec {
                name: format!("t/{i}"),
                shards: vec![((i as u32 + moved) % 64) + 1],
                mqttsn_predefined_id: None,
                mqttsn_registered_ids: vec![],
            }
        })
        .collect();
    Plan {
        generation,
        shards,
        devices: vec![],
        topics,
        policy: Default::default(),
    }
}

/// Plan installs (full and 10%-changed) and the daemon's tick.
fn control_plane() -> Result<String> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // The tick first: freeing the big plans' maps below keeps kernel
    // workers busy for a while afterwards.
    let tick = tick_bench()?;
    let mut out = String::from(
        "| routes | compile | full install (fresh maps) | 10% changed (incremental) | kernel route memory (both slots) | process RSS |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for n in [10_000usize, 100_000, 1_000_000] {
        // Three runs each, medians reported: installs are single events on
        // a noisy machine.
        let (mut compile, mut full, mut inc) = (Vec::new(), Vec::new(), Vec::new());
        let mut memory = 0;
        for _ in 0..3 {
            let mut dp = Dataplane::load(&object(), &RouterConfig::default())?;
            let t = std::time::Instant::now();
            let p1 = big_plan(n, 1, 0).compile()?;
            compile.push(ms(t.elapsed()));
            // Full: what `router-ctl apply` does (fresh inner map, old freed).
            let r = dp.install(&p1, false)?;
            ensure!(r.changed == n, "full install wrote {} of {n}", r.changed);
            full.push(ms(r.total));
            // Incremental (the daemon): prime both slots, then a 10% change.
            dp.set_incremental(true);
            dp.install(&big_plan(n, 2, 0).compile()?, false)?;
            dp.install(&big_plan(n, 3, 0).compile()?, false)?;
            let r = dp.install(&big_plan(n, 4, 1).compile()?, false)?;
            ensure!(
                r.changed == n / 10,
                "incremental install wrote {} entries, want {}",
                r.changed,
                n / 10
            );
            inc.push(ms(r.total));
            memory = dp.route_memory();
        }
        out.push_str(&format!(
            "| {n} | {:.0} ms | {:.1} ms | {:.1} ms | {:.1} MiB | {:.0} MiB |\n",
            median(compile),
            median(full),
            median(inc),
            memory as f64 / (1 << 20) as f64,
            rss_mib(),
        ));
    }
    out.push('\n');
    out.push_str(&shapes_install()?);
    out.push('\n');
    out.push_str(&tick);
    Ok(out)
}

/// The first install of multi-shard routes on a fresh data plane: 240
/// routes of 2-16 shards, all on one egress, or over two in all 120 ways
/// they can be split (a broadcast device map per shape, made by the
/// install). The difference is what making the shapes' maps costs.
fn shapes_install() -> Result<String> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // The same routes with the second egress's shards on the first: no
    // shapes, only the egress's own maps.
    let plan = |two: bool| {
        let egresses: &[&str] = if two {
            &["sc0", "sc1"]
        } else {
            &["sc0", "sc0"]
        };
        integration_tests::shape_plan::shape_plan(egresses, usize::MAX, true).compile()
    };
    let mut out = String::from(
        "| 240 multi-shard routes, first install on a fresh data plane | broadcast maps made | install (median of 3) |\n|---|---:|---:|\n",
    );
    for (label, two, maps) in [
        ("all shards on one egress", false, "15 (the egress's)"),
        (
            "over two egresses, all 120 shapes",
            true,
            "30 (the egresses') + 120 (the shapes')",
        ),
    ] {
        let p = plan(two)?;
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut dp = Dataplane::load(&object(), &RouterConfig::default())?;
            if !dp.broadcasts() {
                return Ok(
                    "Shapes' broadcast maps: not measured, the kernel refused the copy program (multi-shard routes fan out by TC)\n"
                        .into(),
                );
            }
            let r = dp.install(&p, false)?;
            times.push(ms(r.total));
        }
        out.push_str(&format!("| {label} | {maps} | {:.0} ms |\n", median(times)));
    }
    Ok(out)
}

/// The daemon's tick with 100k topics active: counters read and folded
/// into the bucket, then the bucket written to the history.
fn tick_bench() -> Result<String> {
    const TOPICS: usize = 100_000;
    let dir = std::env::temp_dir().join(integration_tests::unique("scbench-daemon"));
    let pin_root = PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        integration_tests::unique("scbench")
    ));
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> Result<String> {
        let mut dp = Dataplane::attach(
            &pin_root,
            &AttachOptions {
                object: object(),
                ingress: vec!["sc1".into()],
                egress: vec!["sc0".into()],
                mode: Mode::Skb,
                tc: Default::default(),
                fanout: Default::default(),
                config: RouterConfig {
                    group_stats: true,
                    ..RouterConfig::default()
                },
            },
        )?;
        let plan = big_plan(TOPICS, 1, 0);
        dp.install(&plan.compile()?, false)?;
        std::fs::write(dir.join("plan.json"), plan.to_json())?;
        let cfg = DaemonConfig::from_toml(
            &format!(
                "[dataplane]\npin_root = {pin_root:?}\n[daemon]\nstate_dir = {dir:?}\n[history]\nbucket = \"1m\"\n"
            ),
            "bench",
        )?;
        let mut daemon = Daemon::start(cfg)?;
        let frames: Vec<Vec<u8>> = (0..TOPICS)
            .map(|i| {
                let name = format!("{i}");
                let m = build::coap_request(
                    coap::TYPE_NON,
                    coap::CODE_PUT,
                    1,
                    &[],
                    &["ps", "data", "t", &name],
                    b"1",
                );
                frame(L3::V4, None, 40000, 5683, &m)
            })
            .collect();
        let traffic = |dp: &Dataplane| -> Result<()> {
            for f in &frames {
                let r = dp.test_run(f, 1)?;
                ensure!(r.action == action::REDIRECT, "traffic not routed");
            }
            Ok(())
        };
        let t0 = 1_800_000_000u64;
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        let mut commits = Vec::new();
        traffic(&dp)?;
        let first = daemon.tick_at(t0)?;
        ensure!(first.counters >= TOPICS, "{} counters", first.counters);
        for round in 1..=5u64 {
            traffic(&dp)?;
            let r = daemon.tick_at(t0 + 60 * round)?;
            ensure!(r.flushed && r.packets == TOPICS as u64, "tick {r:?}");
            reads.push(r.read.as_secs_f64() * 1e3);
            writes.push(r.write.as_secs_f64() * 1e3);
            commits.push(daemon.wait_written()?.as_secs_f64() * 1e3);
        }
        let (read, write, commit) = (median(reads), median(writes), median(commits));
        Ok(format!(
            "Daemon tick with {TOPICS} active topics, crossing a bucket boundary (median of 5): counters read and folded into the bucket {read:.1} ms, bucket handed to the writer {write:.1} ms, tick total {:.1} ms; the writer thread then commits the {TOPICS}-row bucket in {commit:.1} ms\n",
            read + write
        ))
    })();
    let _ = Dataplane::detach(&pin_root);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A device sharing `SRC_V4`'s entry in the direct-mapped device table
/// (the same low 20 bits).
const SHARED_ENTRY_SRC: [u8; 4] = [198, 34, 0, 1];

/// The fixture plan with a fleet for group telemetry: the test frames'
/// IPv4 and IPv6 sources, a device sharing the IPv4 source's direct entry,
/// and 20,000 more in 100 groups.
fn telemetry_fleet_plan() -> Result<shardcast_plan::CompiledPlan> {
    use fixtures::device;
    use std::net::{IpAddr, Ipv4Addr};
    let mut plan = fixtures::plan("sc0", 1);
    plan.devices = vec![
        device("v4", integration_tests::SRC_V4.into(), "g000"),
        device("v6", integration_tests::SRC_V6.into(), "g001"),
        device("shared", SHARED_ENTRY_SRC.into(), "g002"),
    ];
    let base = u32::from(Ipv4Addr::new(198, 18, 1, 0));
    plan.devices.extend((0..20_000u32).map(|i| {
        device(
            &format!("d{i}"),
            IpAddr::V4(Ipv4Addr::from(base + i)),
            &format!("g{:03}", i % 100),
        )
    }));
    Ok(plan.compile()?)
}

fn bench(rounds: usize) -> Result<String> {
    let mut dp = Dataplane::load(&object(), &RouterConfig::default())?;
    dp.install(&fixtures::plan("sc0", 1).compile()?, false)?;
    // Group telemetry counts against a fleet: the frames' sources and
    // 20,000 other devices in 100 groups, one of them (198.34.0.1) sharing
    // the IPv4 source's entry in the direct-mapped device table, so found
    // by a hash lookup.
    let fleet = telemetry_fleet_plan()?;
    let mut dpg = Dataplane::load(
        &object(),
        &RouterConfig {
            group_stats: true,
            ..RouterConfig::default()
        },
    )?;
    dpg.install(&fleet, false)?;
    let mut dps = Dataplane::load(
        &object(),
        &RouterConfig {
            group_stats: true,
            group_sample: 16,
            ..RouterConfig::default()
        },
    )?;
    dps.install(&fleet, false)?;
    ensure!(
        dpg.device_indexed(std::net::IpAddr::from(integration_tests::SRC_V4))
            && !dpg.device_indexed(std::net::IpAddr::from(SHARED_ENTRY_SRC)),
        "the bench fleet's direct-mapped device table is not as the cases assume"
    );
    // An older build of the router to compare against, side by side.
    let baseline = match std::env::var_os("SHARDCAST_BENCH_BASELINE") {
        Some(path) => {
            let path = PathBuf::from(path);
            let mut b = Dataplane::load(&path, &RouterConfig::default())
                .with_context(|| format!("SHARDCAST_BENCH_BASELINE={}", path.display()))?;
            b.install(&fixtures::plan("sc0", 1).compile()?, false)?;
            Some(b)
        }
        None => None,
    };
    let floor = ReferenceProgram::load(&reference_object(), "ref_floor")?;
    let call = ReferenceProgram::load(&reference_object(), "ref_call")?;
    let mut fwd = ReferenceProgram::load(&reference_object(), "ref_forwarder")?;

    // The frames timed are the fixture table's typical readings (checked
    // byte for byte by the fixture tests).
    use integration_tests::fixtures::{Expect, named, typical};
    let m4 = named(typical::MQTTSN_V4).packet;
    // The forwarder keys on the first 8 payload bytes of the same frame.
    let m = typical::mqttsn_reading();
    let key = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
    fwd.insert(key, u64::from_be_bytes([239, 1, 1, 1, 0x07, 0x5c, 0, 0]))?;
    // A router case: the named fixture on `prog`, with the fixture's verdict.
    let fixture = |name: &'static str, label: &'static str, prog: Prog| {
        let f = named(name);
        Case {
            name: label,
            prog,
            want: match f.expect {
                Expect::Redirect { .. } => action::REDIRECT,
                Expect::Pass(_) | Expect::FanOut { .. } => action::PASS,
            },
            packet: f.packet,
        }
    };

    let cases = vec![
        Case {
            name: "floor (parse, XDP_TX)",
            prog: Prog::Floor,
            packet: m4.clone(),
            want: action::TX,
        },
        Case {
            name: "floor + 1 helper call (returns at once)",
            prog: Prog::Call,
            packet: m4.clone(),
            want: action::TX,
        },
        Case {
            name: "forwarder (1 lookup, rewrite, XDP_TX)",
            prog: Prog::Forwarder,
            packet: m4.clone(),
            want: action::TX,
        },
        fixture(
            typical::MQTTSN_V4,
            "router: MQTT-SN v4 publish",
            Prog::Router,
        ),
        fixture(
            typical::MQTTSN_V6,
            "router: MQTT-SN v6 publish",
            Prog::Router,
        ),
        fixture(typical::COAP_V4, "router: CoAP v4 publish", Prog::Router),
        fixture(typical::COAP_V6, "router: CoAP v6 publish", Prog::Router),
        fixture(
            typical::COAP_UNROUTED,
            "router: CoAP v4 unrouted (counted, PASS)",
            Prog::Router,
        ),
        fixture(
            typical::MQTTSN_V4,
            "router + group telemetry: MQTT-SN v4 publish",
            Prog::RouterGroups,
        ),
        Case {
            name: "router + group telemetry: MQTT-SN v4 publish, source's device found by hash",
            prog: Prog::RouterGroups,
            // The typical reading from the other device (the port the
            // fixture frames use; `max_ttl` is applied to every case).
            packet: integration_tests::frame_from(
                SHARED_ENTRY_SRC.into(),
                40000,
                fixtures::MQTTSN,
                &typical::mqttsn_reading(),
            ),
            want: action::REDIRECT,
        },
        fixture(
            typical::MQTTSN_V6,
            "router + group telemetry: MQTT-SN v6 publish",
            Prog::RouterGroups,
        ),
        fixture(
            typical::MQTTSN_V4,
            "router + group telemetry 1 in 16: MQTT-SN v4 publish",
            Prog::RouterGroupsSampled,
        ),
        fixture(
            typical::COAP_V4,
            "router + group telemetry: CoAP v4 publish",
            Prog::RouterGroups,
        ),
    ];
    let run = |case: &Case, repeat: u32| -> Result<(u32, Duration)> {
        let r = match case.prog {
            Prog::Floor => floor.test_run(&case.packet, repeat)?,
            Prog::Call => call.test_run(&case.packet, repeat)?,
            Prog::Forwarder => fwd.test_run(&case.packet, repeat)?,
            Prog::Router => dp.test_run(&case.packet, repeat)?,
            Prog::RouterGroups => dpg.test_run(&case.packet, repeat)?,
            Prog::RouterGroupsSampled => dps.test_run(&case.packet, repeat)?,
            Prog::Baseline => baseline
                .as_ref()
                .expect("baseline cases only with a baseline")
                .test_run(&case.packet, repeat)?,
        };
        Ok((r.action, r.duration))
    };
    let mut cases = cases;
    if baseline.is_some() {
        // The same routed publishes on the other build, under the same
        // names (the table marks them by their program).
        let again: Vec<Case> = cases
            .iter()
            .filter(|c| c.prog == Prog::Router && c.want == action::REDIRECT)
            .map(|c| Case {
                name: c.name,
                prog: Prog::Baseline,
                packet: c.packet.clone(),
                want: c.want,
            })
            .collect();
        cases.extend(again);
    }
    // SHARDCAST_BENCH_CASES=substring keeps only the matching cases (and
    // the forwarder every ratio is taken against).
    if let Ok(only) = std::env::var("SHARDCAST_BENCH_CASES") {
        cases.retain(|c| c.prog == Prog::Forwarder || c.name.contains(only.as_str()));
    }
    let cases: Vec<Case> = cases
        .into_iter()
        .map(|c| Case {
            packet: max_ttl(c.packet),
            ..c
        })
        .collect();
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
    let mut cold: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        let mut this = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            // Calls of REPEAT and of SHORT runs, interleaved. The
            // difference of the two lengths is the time of REPEAT - SHORT
            // runs with each call's fixed costs (the cold first run) taken
            // out. Each length's figure is the mean of its fastest half
            // of calls: the calls least disturbed by the rest of the
            // machine (a disturbance only adds time), and more than one
            // of them because the kernel reports each call's mean per
            // run in whole nanoseconds: the fastest call alone would
            // carry that truncation into the difference, doubled (up to
            // 2 ns a packet, 10% of the forwarder), while calls that
            // differ by more than a nanosecond a run average it out.
            let mut long = 0u128;
            let (mut longs, mut shorts) = (Vec::new(), Vec::new());
            for _ in 0..CALLS {
                for repeat in [REPEAT, SHORT] {
                    let (a, d) = run(case, repeat)?;
                    ensure!(
                        a == case.want,
                        "{}: a timed call ended with verdict {a}, want {}",
                        case.name,
                        case.want
                    );
                    // The kernel reports the mean per run, in whole ns.
                    let total = d.as_nanos() * repeat as u128;
                    if repeat == REPEAT {
                        long += total;
                        longs.push(total);
                    } else {
                        shorts.push(total);
                    }
                }
            }
            let steady = (fastest_half_mean(longs) - fastest_half_mean(shorts)).max(0.0)
                / (REPEAT - SHORT) as f64;
            this.push(steady);
            cold[i].push(long as f64 / (CALLS * REPEAT) as f64);
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
    let cpu = integration_tests::measure::cpu_model();
    let mut out = format!(
        "kernel {kernel}, {cpu}; BPF_PROG_TEST_RUN {CALLS} calls x repeat {REPEAT} and {CALLS} x {SHORT} per case, median of {rounds} interleaved rounds; \
         router verified in {} instructions\n\n\
         | case | ns/packet | × forwarder | ns/packet in calls of {REPEAT} (with the cold first run) |\n|---|---:|---:|---:|\n",
        dp.verified_instructions()
            .map_or_else(|| "?".into(), |n| n.to_string())
    );
    for (i, case) in cases.iter().enumerate() {
        let baseline_mark = if case.prog == Prog::Baseline {
            "baseline build, "
        } else {
            ""
        };
        out.push_str(&format!(
            "| {baseline_mark}{} | {:.1} | {:.2} | {:.1} |\n",
            case.name,
            median(ns[i].clone()),
            median(ratio[i].clone()),
            median(cold[i].clone())
        ));
    }
    out.push_str(&goals(&cpu, &cases, &ns, &ratio));
    // A/B: each router publish case against the same packet on the
    // baseline build, as the median of per-round ratios.
    let pairs: Vec<(usize, usize)> = cases
        .iter()
        .enumerate()
        .filter(|(_, c)| c.prog == Prog::Baseline)
        .filter_map(|(b, base)| {
            cases
                .iter()
                .position(|c| c.prog == Prog::Router && c.name == base.name)
                .map(|r| (r, b))
        })
        .collect();
    if !pairs.is_empty() {
        out.push_str("\n| case | × baseline (median of rounds) |\n|---|---:|\n");
        for (r, b) in pairs {
            let per_round: Vec<f64> = ns[r].iter().zip(&ns[b]).map(|(x, y)| x / y).collect();
            out.push_str(&format!(
                "| {} | {:.3} |\n",
                cases[r].name,
                median(per_round)
            ));
        }
    }
    Ok(out)
}

/// Issue 18's ratio goals, read off this run (the cases present: a run
/// with `SHARDCAST_BENCH_CASES` may leave some out), so that a run on
/// any host says at once whether they hold there: each publish at most
/// its multiple of the forwarder (the median of the per-round ratios),
/// and group telemetry at most 25% over the same route without it (the
/// median of the per-round quotients of the two cases).
fn goals(cpu: &str, cases: &[Case], ns: &[Vec<f64>], ratio: &[Vec<f64>]) -> String {
    let at = |name: &str| {
        cases
            .iter()
            .position(|c| c.name == name && c.prog != Prog::Baseline)
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut lines = Vec::new();
    for (label, limit, names) in [
        (
            "MQTT-SN publish",
            1.5,
            ["router: MQTT-SN v4 publish", "router: MQTT-SN v6 publish"],
        ),
        (
            "CoAP publish",
            2.5,
            ["router: CoAP v4 publish", "router: CoAP v6 publish"],
        ),
    ] {
        let got: Vec<(&str, f64)> = names
            .iter()
            .filter_map(|n| at(n).map(|i| (*n, median(ratio[i].clone()))))
            .collect();
        if got.is_empty() {
            continue;
        }
        let each: Vec<String> = got
            .iter()
            .map(|(n, r)| format!("{} {r:.2}x", family(n)))
            .collect();
        lines.push(format!(
            "- {label} at most {limit}x the forwarder: {}: {}",
            each.join(", "),
            verdict(got.iter().all(|(_, r)| *r <= limit))
        ));
    }
    let pairs = [
        (
            "router + group telemetry: MQTT-SN v4 publish",
            "router: MQTT-SN v4 publish",
        ),
        (
            "router + group telemetry: MQTT-SN v6 publish",
            "router: MQTT-SN v6 publish",
        ),
        (
            "router + group telemetry: CoAP v4 publish",
            "router: CoAP v4 publish",
        ),
    ];
    let extra: Vec<(&str, f64)> = pairs
        .iter()
        .filter_map(|(with, without)| {
            let (w, o) = (at(with)?, at(without)?);
            let per_round: Vec<f64> = ns[w].iter().zip(&ns[o]).map(|(a, b)| a / b).collect();
            Some((*without, median(per_round) - 1.0))
        })
        .collect();
    if !extra.is_empty() {
        let each: Vec<String> = extra
            .iter()
            .map(|(n, e)| format!("{} {:+.0}%", protocol_family(n), e * 100.0))
            .collect();
        lines.push(format!(
            "- group telemetry at most +25% over the same route without it: {}: {}",
            each.join(", "),
            verdict(extra.iter().all(|(_, e)| *e <= 0.25))
        ));
    }
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\nGoals (issue 18) on this host ({cpu}), medians over the rounds:\n{}\n",
        lines.join("\n")
    )
}

/// "v4" of "router: MQTT-SN v4 publish".
fn family(name: &str) -> &str {
    name.split_whitespace().nth(2).unwrap_or(name)
}

/// "MQTT-SN v4" of "router: MQTT-SN v4 publish".
fn protocol_family(name: &str) -> &str {
    let rest = name.strip_prefix("router: ").unwrap_or(name);
    rest.strip_suffix(" publish").unwrap_or(rest)
}

/// The mean of the smaller half of `totals` (at least one).
fn fastest_half_mean(mut totals: Vec<u128>) -> f64 {
    totals.sort_unstable();
    let half = &totals[..totals.len().div_ceil(2)];
    half.iter().sum::<u128>() as f64 / half.len().max(1) as f64
}

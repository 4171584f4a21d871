//! `SHARDCAST_BENCH=migrate`: registrations and make-before-break
//! migrations per second on the live lab. A `router-ctl devsim` fleet of
//! shard-aware devices (one subscriber namespace) registers with the
//! daemon's gateway while a numbered publisher sends through the XDP
//! router; then the daemon installs plans that move every device to a
//! shard its topic was not routed to before. Reported per fleet size:
//! registrations/s (fleet start to the last device joined its group),
//! migrations/s per round (commands sent to the old routes removed, as the
//! daemon logs it: transition install, commands, confirms, final install),
//! the daemon's CPU time per migration (the router's side: transition and
//! final installs, commands, MAC checks, acks; the lab's wall rate is
//! bounded by the simulated fleet sharing the same two cores), and what
//! the devices missed (must be 0).

use std::{fmt::Write as _, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    ctl_binary,
    lab::{Lab, LabShard},
    measure::{cpu_model, process_cpu_seconds},
};

/// Fleet sizes measured (`SHARDCAST_BENCH_FLEETS` replaces them).
/// (Each device holds up to three sockets; 20,000 open files are the
/// limit on hosts of this kind.)
const FLEETS: [usize; 3] = [1_000, 2_500, 5_000];
const ROUNDS: u64 = 4;

fn plan(g: u64, shards: &[LabShard], devices: usize) -> String {
    let base = if g % 2 == 1 { 0 } else { 4 };
    let placed: Vec<(String, u32)> = (0..devices)
        .map(|i| (format!("dev-{i}"), base + (i as u32 + g as u32) % 4 + 1))
        .collect();
    let route: Vec<u32> = (base + 1..=base + 4).collect();
    Lab::plan_json_with_devices(g, shards, &[("ab", &route)], &placed)
}

/// The publisher's rate: 50k deliveries/s at most (the devices share one
/// process, two cores).
fn rate(devices: usize) -> usize {
    (50_000 / devices).clamp(10, 50)
}

fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

struct Row {
    devices: usize,
    register_per_s: f64,
    rounds: Vec<(u64, u64, u64)>,
    sent: u64,
    missing: u64,
    duplicates: u64,
    /// The daemon's (gateway's) CPU seconds over the rounds.
    daemon_cpu: f64,
}

fn one(devices: usize) -> Result<Row> {
    let mut lab = Lab::new(1)?;
    lab.attach()?;
    let shards: Vec<LabShard> = (1..=8).map(LabShard::numbered).collect();
    let daemon = lab.start_daemon_with(
        "100ms",
        "migration_deadline = \"30s\"\n[gateway]\nlisten = \"198.18.1.1:1884\"\nmigrate_retry = \"2s\"",
    )?;
    lab.offer_plan(&plan(1, &shards, devices))?;
    lab.wait_generation(1)?;
    let report = lab.daemon_state_dir().join("devsim.json");
    let mut devsim = crate::Child {
        child: std::process::Command::new(ctl_binary())
            .args(["--netns", &lab.subscribers[0].ns.name, "devsim"])
            .args(["--gateway", "198.18.1.1:1884"])
            .args(["--devices", &devices.to_string()])
            .args(["--duration", "300s", "--keep-alive", "60s"])
            .args(["--publish-to", "198.18.1.1:1884"])
            .args(["--publish-netns", &lab.publisher.name])
            .args(["--rate", &rate(devices).to_string()])
            .args(["--grace", "2s"])
            .arg("--report")
            .arg(&report)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting devsim")?,
    };
    daemon.wait_log(Duration::from_secs(120), |l| {
        l.contains("membership") && l.contains(&format!("members={devices}"))
    })?;
    let mut rounds = Vec::new();
    let cpu0 = process_cpu_seconds(daemon.child.pid());
    for g in 2..=ROUNDS + 1 {
        lab.offer_plan(&plan(g, &shards, devices))?;
        let done = daemon.wait_log(Duration::from_secs(120), |l| {
            l.contains("migration done") && l.contains(&format!("generation={g}"))
        })?;
        let (Some(confirmed), Some(ms)) = (field(&done, "confirmed"), field(&done, "elapsed_ms"))
        else {
            bail!("unreadable: {done}");
        };
        rounds.push((devices as u64, confirmed, ms));
    }
    let daemon_cpu = process_cpu_seconds(daemon.child.pid()) - cpu0;
    // SAFETY: kill(2) on our own child's pid.
    if unsafe { libc::kill(devsim.pid() as i32, libc::SIGTERM) } != 0 {
        bail!("cannot stop devsim");
    }
    devsim.child.wait()?;
    // Where packets were dropped, if anywhere: the subscribers' sockets,
    // the interfaces on the way.
    let mut drops = lab.subscribers[0]
        .ns
        .exec("nstat", &["-az", "UdpRcvbufErrors", "UdpInErrors"])
        .unwrap_or_default();
    for (ns, dev) in [
        (&lab.router, "r-out"),
        (&lab.lan, "up0"),
        (&lab.lan, "s0"),
        (&lab.subscribers[0].ns, "eth0"),
    ] {
        drops.push_str(
            &ns.exec("ip", &["-s", "link", "show", dev])
                .unwrap_or_default(),
        );
    }
    eprintln!("migrate bench: drops\n{drops}");
    let text = std::fs::read(&report)?;
    // Kept for a look at every device (the lab's directory goes).
    let kept = std::env::temp_dir().join(format!("shardcast-migrate-bench-{devices}.json"));
    std::fs::write(&kept, &text)?;
    eprintln!("migrate bench: devsim report in {}", kept.display());
    let r: serde_json::Value = serde_json::from_slice(&text)?;
    let joined = r["all_joined_ms"].as_u64().context("no device joined")?;
    Ok(Row {
        devices,
        register_per_s: devices as f64 / (joined as f64 / 1e3),
        rounds,
        sent: r["sent"].as_u64().unwrap_or(0),
        missing: r["missing"].as_u64().unwrap_or(u64::MAX),
        duplicates: r["duplicates"].as_u64().unwrap_or(0),
        daemon_cpu,
    })
}

pub fn bench() -> Result<String> {
    let fleets: Vec<usize> = match std::env::var("SHARDCAST_BENCH_FLEETS") {
        Ok(s) => s
            .split(',')
            .map(|n| n.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("SHARDCAST_BENCH_FLEETS={s:?}"))?,
        Err(_) => FLEETS.to_vec(),
    };
    let mut out = String::new();
    writeln!(
        out,
        "## Registrations and migrations (live lab, one devsim process, {} rounds; {})\n",
        ROUNDS,
        cpu_model()
    )?;
    writeln!(
        out,
        "| devices | registrations/s | migrations/s per round (median, min-max) | daemon CPU µs/migration | migrations/s per daemon core | confirmed | publish rate | publishes sent | missed | duplicates dropped |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for n in fleets {
        eprintln!("migrate bench: {n} devices");
        let r = one(n)?;
        let mut rates: Vec<f64> = r
            .rounds
            .iter()
            .map(|(moves, _, ms)| *moves as f64 / (*ms).max(1) as f64 * 1e3)
            .collect();
        rates.sort_by(f64::total_cmp);
        let confirmed: u64 = r.rounds.iter().map(|x| x.1).sum();
        writeln!(
            out,
            "| {} | {:.0} | {:.0} ({:.0}-{:.0}) | {:.0} | {:.0} | {}/{} | {}/s | {} | {} | {} |",
            r.devices,
            r.register_per_s,
            crate::measure::median(rates.clone()),
            rates[0],
            rates[rates.len() - 1],
            r.daemon_cpu / confirmed.max(1) as f64 * 1e6,
            confirmed as f64 / r.daemon_cpu.max(1e-9),
            confirmed,
            r.devices as u64 * ROUNDS,
            rate(r.devices),
            r.sent,
            r.missing,
            r.duplicates
        )?;
    }
    Ok(out)
}

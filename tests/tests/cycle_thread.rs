//! The control cycle decides on a thread of its own (`router-ctl/src/daemon.rs`):
//! a cycle for a large fleet does not hold up the daemon's loop, and the
//! device updates arriving while it decides are applied when the decision
//! comes back, nothing lost. In-process, on a data plane
//! attached to a veth pair in a namespace of its own.

use std::time::{Duration, Instant};

use integration_tests::NetNs;
use router_ctl::{config::DaemonConfig, daemon::Daemon};
use shardcast_dataplane::{AttachOptions, Dataplane, Mode, RouterConfig};

/// A planner device following one of `topics` topics.
fn device(i: usize, topics: usize) -> (String, Option<shardcast_planner::workload::Device>) {
    let id = format!("dev-{i}");
    let d = serde_json::from_value(serde_json::json!({
        "id": id,
        "subscriptions": [format!("t{}", i % topics)],
    }))
    .unwrap();
    (id, Some(d))
}

#[test]
fn a_large_cycle_decides_aside_and_what_arrives_meanwhile_is_kept() {
    const DEVICES: usize = 60_000;
    const TOPICS: usize = 3_000;
    const LATE: usize = 500;
    let ns = NetNs::new("sccyth").unwrap();
    ns.ip(&["link", "add", "sc0", "type", "veth", "peer", "name", "sc1"])
        .unwrap();
    ns.ip(&["link", "set", "sc0", "up"]).unwrap();
    ns.ip(&["link", "set", "sc1", "up"]).unwrap();
    let dir = std::env::temp_dir().join(integration_tests::unique("sccyth"));
    let pin_root = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        integration_tests::unique("sccyth")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (dir2, pins2) = (dir.clone(), pin_root.clone());
    let result = ns
        .run(move || -> anyhow::Result<()> {
            let _dp = Dataplane::attach(
                &pins2,
                &AttachOptions {
                    object: integration_tests::object(),
                    ingress: vec!["sc1".into()],
                    egress: vec!["sc0".into()],
                    mode: Mode::Skb,
                    tc: Default::default(),
                    fanout: Default::default(),
                    config: RouterConfig::default(),
                },
            )?;
            let cfg = DaemonConfig::from_toml(
                &format!(
                    "[dataplane]\npin_root = {pins2:?}\n[daemon]\nstate_dir = {dir2:?}\n\
                     [history]\nbucket = \"1s\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n\
                     [cycle]\nperiod = \"1s\"\nwindow = \"1m\"\nseason = \"20s\"\nhorizons = [\"5s\"]\n\
                     [cycle.resources]\nshard_capacity = 1000.0\nmax_shards = 64\negress = \"sc0\"\n\
                     group_v4_base = \"239.3.0.0\"\n"
                ),
                "test",
            )?;
            let mut daemon = Daemon::start(cfg)?;
            for i in 0..DEVICES {
                daemon.on_device(device(i, TOPICS));
            }
            let t0 = 1_800_000_000u64;
            // The first tick starts the cycle and returns: a tick never
            // waits for a decision (placing 60k devices takes the planner
            // far longer than the tick's own work).
            let r = daemon.tick_at(t0)?;
            anyhow::ensure!(
                r.decision.is_none() && daemon.cycle_running(),
                "the cycle decided within the tick: {r:?}"
            );
            // Meanwhile: devices join and leave.
            for i in DEVICES..DEVICES + LATE {
                daemon.on_device(device(i, TOPICS));
            }
            for i in 0..LATE {
                daemon.on_device((format!("dev-{i}"), None));
            }
            anyhow::ensure!(daemon.view()?.cycle.unwrap().devices == DEVICES);
            // The decision comes back on a later tick.
            let deadline = Instant::now() + Duration::from_secs(600);
            let decision = loop {
                std::thread::sleep(Duration::from_millis(50));
                let r = daemon.tick_at(t0)?;
                if let Some(d) = r.decision {
                    break d;
                }
                anyhow::ensure!(daemon.cycle_running(), "the cycle ended without a decision");
                anyhow::ensure!(Instant::now() < deadline, "no decision after 600 s");
            };
            anyhow::ensure!(decision.action == "install", "{}", decision.reason);
            // Every update that arrived meanwhile is applied: as many
            // devices as before, the late ones in, the first ones out.
            let view = daemon.view()?;
            anyhow::ensure!(!daemon.cycle_running());
            let known = view.cycle.unwrap().devices;
            anyhow::ensure!(known == DEVICES, "{known} devices known after the cycle");
            // The next cycle places the late devices (the first ones the
            // plan placed are gone from what it plans).
            let next = loop {
                std::thread::sleep(Duration::from_millis(50));
                if let Some(d) = daemon.tick_at(t0 + 2)?.decision {
                    break d;
                }
                anyhow::ensure!(Instant::now() < deadline, "no second decision");
            };
            anyhow::ensure!(next.action == "install", "{}", next.reason);
            let plan = shardcast_plan::Plan::from_file(&dir2.join("plan.json"))?;
            anyhow::ensure!(plan.devices.len() == DEVICES, "{} placed", plan.devices.len());
            anyhow::ensure!(plan.devices.iter().any(|d| d.id == format!("dev-{DEVICES}")));
            anyhow::ensure!(!plan.devices.iter().any(|d| d.id == "dev-0"));
            Ok(())
        })
        .unwrap();
    let _ = Dataplane::detach(&pin_root);
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap();
}

//! Token-based migration on the live router (issue 19): a `devsim` fleet
//! of shard-aware devices in a subscriber namespace registers with the
//! daemon's gateway, and a numbered publisher sends continuously through
//! the XDP router while the daemon installs plans that move every device
//! to a shard its topic was not routed to before. Only make-before-break
//! (the transition routes, the device joining before it confirms) lets a
//! device miss nothing: each round the old shards leave the route.

use std::{process::Stdio, time::Duration};

use integration_tests::{
    ctl_binary,
    lab::{Lab, LabDaemon, LabShard},
};

const DEVICES: usize = 100;
const ROUNDS: u64 = 10;
/// Rounds after those in which the daemon is killed (`kill -9`) with the
/// migration half done, and started again.
const KILLED: u64 = 2;

/// Device `i`'s shard in round `g`: odd generations on shards 1-4, even
/// ones on 5-8, each round a shard its topic was not routed to before.
fn home(i: usize, g: u64) -> u32 {
    let base = if g % 2 == 1 { 0 } else { 4 };
    base + (i as u32 + g as u32) % 4 + 1
}

/// Round `g`'s route of topic `ab`: only where the devices are.
fn route(g: u64) -> Vec<u32> {
    let base = if g % 2 == 1 { 0 } else { 4 };
    (base + 1..=base + 4).collect()
}

/// Round `g`'s plan for `devices` devices.
fn plan(g: u64, devices: usize, shards: &[LabShard]) -> String {
    let placed: Vec<(String, u32)> = (0..devices)
        .map(|i| (format!("dev-{i}"), home(i, g)))
        .collect();
    Lab::plan_json_with_devices(g, shards, &[("ab", &route(g))], &placed)
}

/// `router-ctl devsim`: `devices` devices in the subscriber namespace
/// talking to `gateway` (over CoAP with `coap`), a numbered publisher at
/// 500/s through the XDP router.
fn devsim(
    lab: &Lab,
    devices: usize,
    coap: bool,
    gateway: &str,
    report: &std::path::Path,
    stdout: Stdio,
) -> integration_tests::Child {
    let mut cmd = std::process::Command::new(ctl_binary());
    cmd.args(["--netns", &lab.subscribers[0].ns.name, "devsim"]);
    if coap {
        cmd.arg("--coap");
    }
    integration_tests::Child {
        child: cmd
            .args(["--gateway", gateway, "--devices", &devices.to_string()])
            .args(["--duration", "180s", "--keep-alive", "10s"])
            .args([
                "--publish-to",
                "198.18.1.1:1884",
                "--publish-netns",
                &lab.publisher.name,
            ])
            .args(["--rate", "500", "--grace", "1s"])
            .arg("--report")
            .arg(report)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    }
}

/// Offers round `g`'s plan and waits for its migration to end with every
/// device confirmed.
fn migrate(lab: &Lab, daemon: &LabDaemon, g: u64, devices: usize, shards: &[LabShard]) {
    lab.offer_plan(&plan(g, devices, shards)).unwrap();
    let done = daemon
        .wait_log(Duration::from_secs(30), |l| {
            l.contains("migration done") && l.contains(&format!("generation={g}"))
        })
        .unwrap();
    assert!(
        done.contains(&format!("confirmed={devices}")),
        "round {g}: {done}"
    );
}

/// Every device in the fleet's report ends where round `last` put it,
/// having received publishes.
fn check_homes(r: &serde_json::Value, last: u64) {
    for d in r["per_device"].as_array().unwrap() {
        let i: usize = d["id"].as_str().unwrap()["dev-".len()..].parse().unwrap();
        assert_eq!(d["shard"], home(i, last), "{d}");
        assert_eq!(d["generation"], last, "{d}");
        assert!(d["received"].as_u64().unwrap() > 0, "{d}");
    }
}

#[test]
fn a_thousand_migrations_lose_no_message() {
    let mut lab = Lab::new(1).unwrap();
    lab.attach().unwrap();
    let shards: Vec<LabShard> = (1..=8).map(LabShard::numbered).collect();
    // Batches of 10: a migration takes ten, so a kill lands in one.
    let config = "migration_deadline = \"10s\"\nmigration_batch = 10\n[gateway]\nlisten = \"198.18.1.1:1884\"\nmigrate_retry = \"300ms\"";
    let mut daemon = lab.start_daemon_with("100ms", config).unwrap();
    lab.offer_plan(&plan(1, DEVICES, &shards)).unwrap();
    lab.wait_generation(1).unwrap();
    let report = lab.daemon_state_dir().join("devsim.json");
    let stdout = lab.daemon_state_dir().join("devsim.out");
    let mut devsim = devsim(
        &lab,
        DEVICES,
        false,
        "198.18.1.1:1884",
        &report,
        std::fs::File::create(&stdout).unwrap().into(),
    );
    daemon
        .wait_log(Duration::from_secs(30), |l| {
            l.contains("membership") && l.contains(&format!("members={DEVICES}"))
        })
        .unwrap();
    for g in 2..=ROUNDS + 1 {
        migrate(&lab, &daemon, g, DEVICES, &shards);
    }
    // Killed in the middle: the transition is installed, the first batch
    // of commands out, then `kill -9`. The data plane goes on forwarding
    // both routes; the restarted daemon finds the migration's record and
    // sends every command again.
    for g in ROUNDS + 2..=ROUNDS + 1 + KILLED {
        lab.offer_plan(&plan(g, DEVICES, &shards)).unwrap();
        daemon
            .wait_log(Duration::from_secs(30), |l| {
                l.contains("migrate commands sent") && l.contains(&format!("generation={g}"))
            })
            .unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(daemon.child.pid() as i32, libc::SIGKILL) },
            0
        );
        let _ = daemon.child.child.wait();
        assert!(
            lab.daemon_state_dir().join("migration.json").exists(),
            "round {g}: the migration finished before the kill"
        );
        daemon = lab.start_daemon_with("100ms", config).unwrap();
        daemon
            .wait_log(Duration::from_secs(30), |l| {
                l.contains("migration resumed") && l.contains(&format!("generation={g}"))
            })
            .unwrap();
        let done = daemon
            .wait_log(Duration::from_secs(30), |l| {
                l.contains("migration done") && l.contains(&format!("generation={g}"))
            })
            .unwrap();
        assert!(
            done.contains(&format!("confirmed={DEVICES}")),
            "round {g}: {done}"
        );
        assert!(!lab.daemon_state_dir().join("migration.json").exists());
    }
    // Stop the fleet: it reports.
    let status = devsim.terminate().unwrap();
    let summary = std::fs::read_to_string(&stdout).unwrap();
    for ns in [&lab.router, &lab.lan, &lab.subscribers[0].ns] {
        eprintln!(
            "{}: {}",
            ns.name,
            ns.exec("ip", &["-s", "link"]).unwrap_or_default()
        );
    }
    eprintln!(
        "softnet: {}",
        std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default()
    );
    // Drops by the subscribers' kernel, if any (socket buffers).
    eprintln!(
        "{}",
        lab.subscribers[0]
            .ns
            .exec(
                "nstat",
                &["-az", "UdpRcvbufErrors", "UdpInErrors", "Udp6RcvbufErrors"]
            )
            .unwrap_or_default()
    );
    eprintln!("{summary}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let missed: Vec<String> = r["per_device"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["missing"] != 0)
        .take(8)
        .map(|d| format!("{}: {}", d["id"], d["missed"]))
        .collect();
    assert!(status.success(), "devsim: {summary}\n{}", missed.join("\n"));
    assert_eq!(r["errors"], 0);
    assert_eq!(r["assigned"], DEVICES);
    assert_eq!(r["missing"], 0, "{summary}");
    assert!(r["sent"].as_u64().unwrap() > 1000, "{summary}");
    // A device that reconnects to the restarted gateway may learn its new
    // shard from the `assign` answering its `hello` instead of a migrate
    // command: not counted as a migration.
    let migrations = r["migrations"].as_u64().unwrap();
    assert!(
        (DEVICES as u64 * ROUNDS..=DEVICES as u64 * (ROUNDS + KILLED)).contains(&migrations),
        "{migrations}"
    );
    // Every device ends where the last plan put it.
    let last = ROUNDS + 1 + KILLED;
    check_homes(&r, last);
    // The installed plan is the last one itself: no transition routes left.
    let installed =
        shardcast_plan::Plan::from_file(&lab.daemon_state_dir().join("plan.json")).unwrap();
    assert_eq!(installed.generation, last);
    assert_eq!(installed.topics[0].shards, route(last));
    assert_eq!(installed.shards.len(), 8);
}

/// The CoAP variant of the device protocol (docs/device-protocol.md):
/// devices observe their control resource `sc/<id>` on the gateway's CoAP
/// side and POST their messages there; they register, are placed, and
/// migrate through rounds of plans like MQTT-SN devices, missing nothing
/// of the numbered publisher's stream.
#[test]
fn coap_devices_register_and_migrate_without_loss() {
    const COAP_DEVICES: usize = 40;
    const COAP_ROUNDS: u64 = 4;
    let mut lab = Lab::new(1).unwrap();
    lab.attach().unwrap();
    let shards: Vec<LabShard> = (1..=8).map(LabShard::numbered).collect();
    let config = "migration_deadline = \"10s\"\n[gateway]\nlisten = \"198.18.1.1:1884\"\ncoap_listen = \"198.18.1.1:5683\"\nmigrate_retry = \"300ms\"";
    let daemon = lab.start_daemon_with("100ms", config).unwrap();
    lab.offer_plan(&plan(1, COAP_DEVICES, &shards)).unwrap();
    lab.wait_generation(1).unwrap();
    daemon
        .wait_log(Duration::from_secs(10), |l| l.contains("CoAP gateway"))
        .unwrap();
    let report = lab.daemon_state_dir().join("devsim-coap.json");
    // Every CoAP exchange on the devices' side, for Wireshark to judge.
    let pcap = std::env::temp_dir().join(integration_tests::unique("sccoapdev.pcap"));
    let tshark = integration_tests::tshark_capture(
        &lab.subscribers[0].ns.name,
        "eth0",
        "udp port 5683",
        &pcap,
    )
    .unwrap();
    let mut devsim = devsim(
        &lab,
        COAP_DEVICES,
        true,
        "198.18.1.1:5683",
        &report,
        Stdio::null(),
    );
    daemon
        .wait_log(Duration::from_secs(30), |l| {
            l.contains("membership") && l.contains(&format!("members={COAP_DEVICES}"))
        })
        .unwrap();
    for g in 2..=COAP_ROUNDS + 1 {
        migrate(&lab, &daemon, g, COAP_DEVICES, &shards);
    }
    let status = devsim.terminate().unwrap();
    // Wireshark's CoAP dissector reads every exchange without a malformed
    // frame or a warning: registrations, POSTs, their ACKs, notifications.
    let d =
        integration_tests::decode_capture(tshark, &pcap, None, &["coap.code", "coap.opt.observe"]);
    assert!(
        d.flagged.is_empty(),
        "frames Wireshark flags: {:?}",
        d.flagged
    );
    let codes: std::collections::BTreeSet<&str> = d.rows.iter().map(|r| r[0].as_str()).collect();
    // GET, POST, 2.04, 2.05 (Wireshark's code numbers).
    for c in ["1", "2", "68", "69"] {
        assert!(
            codes.contains(c),
            "no CoAP code {c} in the capture: {codes:?}"
        );
    }
    let notifications = d
        .rows
        .iter()
        .filter(|r| r[0] == "69" && !r[1].is_empty())
        .count();
    // At least an assign and, per round, a migrate and an ack per device.
    assert!(
        notifications >= COAP_DEVICES * (1 + 2 * COAP_ROUNDS as usize),
        "{notifications} notifications"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(status.success());
    assert_eq!(r["errors"], 0);
    assert_eq!(r["assigned"], COAP_DEVICES);
    assert_eq!(r["missing"], 0, "{r}");
    // Publishing all along (the rounds take about a second).
    assert!(r["sent"].as_u64().unwrap() > 100, "{r}");
    // The daemon confirmed every device in every round (`migrate`). A
    // device whose observe registration is answered again while a round
    // is under way (a retransmitted CON GET on a loaded machine) learns
    // its new shard from that `assign` rather than from the migrate
    // command, which devsim does not count as a migration: as for
    // MQTT-SN devices above, a range.
    let migrations = r["migrations"].as_u64().unwrap();
    let rounds = COAP_DEVICES as u64 * COAP_ROUNDS;
    assert!(
        (rounds - COAP_DEVICES as u64..=rounds).contains(&migrations),
        "{migrations} of {rounds}: {r}"
    );
    check_homes(&r, COAP_ROUNDS + 1);
}

//! The daemon's latency probes through the live data plane: probes leave
//! by `probe.iface` (a veth whose far end the XDP program serves), the
//! plan routes each shard's probe topic to the shard and to the gateway's
//! relay, the gateway hands the relay's copies back, and the metrics
//! endpoint reports per shard probes sent, received, lost and a latency
//! histogram.

use std::time::{Duration, Instant};

use integration_tests::{
    closed_loop::scrape,
    lab::{Lab, LabShard},
};

#[test]
fn probes_measure_each_shards_latency_through_the_data_plane() {
    let mut lab = Lab::new(1).unwrap();
    lab.attach_with_relay().unwrap();
    let port = 9473;
    let _daemon = lab
        .start_daemon_with(
            "100ms",
            &format!(
                "[gateway]\nlisten = \"198.18.1.1:1884\"\nrelay_egress = \"scgw0\"\nrelay_iface = \"scgw1\"\n\
                 [probe]\niface = \"scpr0\"\nevery = \"100ms\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{port}\"\n"
            ),
        )
        .unwrap();
    let shards = [LabShard::numbered(1), LabShard::numbered(2)];
    lab.offer_plan(&Lab::plan_json(1, &shards, &[("ab", &[1]), ("cd", &[2])]))
        .unwrap();
    lab.wait_generation(1).unwrap();
    // Every install carries a probe topic per shard, to it and the relay.
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = scrape(&lab, port).unwrap_or_default();
        let got = |s: u32| {
            m.get(&format!(
                "shardcast_probe_latency_seconds_count{{shard=\"{s}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
        };
        if got(1) >= 20.0 && got(2) >= 20.0 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "probes back after 20 s: shard 1 {}, shard 2 {}; {m:?}",
            got(1),
            got(2)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let installed =
        shardcast_plan::Plan::from_file(&lab.daemon_state_dir().join("plan.json")).unwrap();
    for s in [1u32, 2] {
        let t = installed
            .topics
            .iter()
            .find(|t| t.name == format!("$probe/{s}"))
            .unwrap_or_else(|| panic!("no probe topic for shard {s}: {installed:?}"));
        assert_eq!(t.shards, [s, 4095]);
        assert_eq!(t.mqttsn_predefined_id, Some(0xE000 + s as u16));
        let k = |name: &str| format!("{name}{{shard=\"{s}\"}}");
        let count = m[&k("shardcast_probe_latency_seconds_count")];
        let sum = m[&k("shardcast_probe_latency_seconds_sum")];
        let mean = sum / count;
        eprintln!(
            "shard {s}: {count} probes, mean one-way latency {:.1} µs",
            mean * 1e6
        );
        // Timed on one clock, after the send (how long it takes is the
        // benchmark's and the demo's to report, not this test's).
        assert!(mean > 0.0, "shard {s}: mean {mean} s");
        let sent = m[&k("shardcast_probes_sent_total")];
        let received = m[&k("shardcast_probes_received_total")];
        assert_eq!(m[&k("shardcast_probes_lost_total")], 0.0, "shard {s}");
        // Routed probes took group counter cells (the daemon counts per
        // device group by default), and the metrics say how many.
        assert!(m["shardcast_group_cells_in_use"] > 0.0, "{m:?}");
        assert!(m["shardcast_group_cells"] >= m["shardcast_group_cells_in_use"]);
        // Probes are the router's own traffic: no shard's load.
        assert_eq!(
            m.get(&k("shardcast_shard_delivered_messages_per_second"))
                .copied()
                .unwrap_or(0.0),
            0.0,
            "shard {s}"
        );
        // Each probe back is timed once; none is lost.
        assert!(
            received >= count && received <= sent,
            "{received} of {sent}"
        );
    }
    // `router-ctl status` shows them (the daemon's report, each bucket),
    // and the group counter cells the routed probes took (group
    // telemetry is the daemon's default).
    let cells_in_use = |out: &str| -> usize {
        out.lines()
            .find_map(|l| l.strip_prefix("group counters: "))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = lab.ctl_output(&["status"]).unwrap_or_default();
        if out.contains("latency probes")
            && out.contains("shard    1: p50 ")
            && out.contains("shard    2: p50 ")
            && cells_in_use(&out) > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "status: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The relay's shard has no probe of its own.
    assert!(
        !m.contains_key("shardcast_probes_sent_total{shard=\"4095\"}"),
        "{m:?}"
    );
}

//! The nowcast on the live router: a topic surging mid-bucket makes the
//! predictive daemon re-plan within that bucket, from what the readings
//! of the bucket under way show, not a bucket later; the reactive
//! baseline, switched to at run time, waits for the bucket to complete.
//! Devices migrate with nothing missed either way.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use integration_tests::{
    decisions,
    lab::{CYCLE_RESOURCES, Fleet, Lab},
    load_gen::Generator,
};

const DEVICES: usize = 40;

fn unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits for the first decision at or after `from` (unix seconds) that
/// `want` accepts.
fn wait_decision(
    log: &std::path::Path,
    from: u64,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(d) = decisions(log)
            .into_iter()
            .find(|d| d["at"].as_u64().unwrap() >= from && want(d))
        {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "no such decision since {from}: {:?}",
            decisions(log)
                .iter()
                .filter(|d| d["at"].as_u64().unwrap() >= from)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A whole second at least 1 s away and at most 5 s after the last
/// cycle: the next periodic one is 10 s after that.
fn quiet_second(log: &std::path::Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = decisions(log)
            .last()
            .map_or(0, |d| d["at"].as_u64().unwrap());
        let s = unix().ceil() as u64 + 1;
        if s <= last + 5 {
            return s;
        }
        assert!(Instant::now() < deadline, "no cycle for 15 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_surge_mid_bucket_is_acted_on_within_the_bucket_in_predictive_mode_only() {
    let mut lab = Lab::new(1).unwrap();
    lab.attach().unwrap();
    // Buckets of 1 s read every 100 ms. Any cycle puts the next periodic
    // one 10 s off: surges are timed a few seconds after a cycle, so that
    // only a trigger can act on them.
    let daemon = lab
        .start_daemon_with(
            "100ms",
            &[
                r#"migration_deadline = "2s"
[gateway]
listen = "198.18.1.1:1884"
migrate_retry = "300ms"
[cycle]
mode = "predictive"
period = "10s"
lead = "1s"
season = "60s"
window = "240s"
horizons = ["5s"]
refit = "1h"
"#,
                CYCLE_RESOURCES,
            ]
            .concat(),
        )
        .unwrap();
    let state = lab.daemon_state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let log = state.join("decisions.jsonl");
    // The numbered publisher sends on aa at 10/s.
    let devsim = Fleet::start(&lab, DEVICES, 10, "120s").unwrap();
    Fleet::wait_placed(&lab, DEVICES, Duration::from_secs(30)).unwrap();
    // ab, ac, ad at 10 msg/s each: with aa, 40 msg/s, one shard of 80
    // usable. A surge: a topic at a higher rate from a whole second on
    // (the buckets' boundaries).
    let surges: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let surge_at = |s: &[AtomicU64; 3], i: usize, from: u64| s[i].store(from, Ordering::Relaxed);
    let gen_surges = surges.clone();
    let load = Generator::start(
        &lab.publisher.name,
        "198.18.1.1:1884".parse().unwrap(),
        vec![*b"ab", *b"ac", *b"ad"],
        Arc::new(move |i, t| {
            let from = gen_surges[i].load(Ordering::Relaxed);
            match (i, from != 0 && t >= from as f64) {
                // ab: its shard on course for 100, well over usable
                // (80), so that the bucket's first readings, with few
                // messages counted, already show it (at 90 a reading
                // half a second in once put it at 80, and the cycle it
                // triggered saw no need to act); two shards hold the
                // load.
                (0, true) => 70.0,
                // ac: over usable whichever shard holds it.
                (1, true) => 90.0,
                _ => 10.0,
            }
        }),
    );
    // A few buckets of steady load first: the daemon's rates settle.
    std::thread::sleep(Duration::from_secs(5));
    let one_shard = shardcast_plan::Plan::from_file(&state.join("plan.json")).unwrap();
    assert_eq!(one_shard.shards.len(), 1, "{:?}", decisions(&log).last());

    // Predictive: ab surges.
    let s1 = quiet_second(&log);
    surge_at(&surges, 0, s1);
    let d = wait_decision(&log, s1, |d| d["action"] == "install");
    eprintln!("predictive: {d}");
    // From part of the surge's bucket: once that bucket is complete, its
    // own check comes first and names the trigger "overload" (as in
    // reactive mode below).
    assert_eq!(d["trigger"]["kind"], "nowcast", "{d}");
    assert!(d["trigger"]["into"].as_f64().unwrap() > 0.0, "{d}");
    assert!(d["created"].as_u64().unwrap() >= 1, "{d}");
    // The surging topic is planned at the rate it runs at.
    let ab_rate = d["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "ab")
        .unwrap()["planned"]
        .as_f64()
        .unwrap();
    assert!(ab_rate > 30.0, "{d}");
    daemon
        .wait_log(Duration::from_secs(10), |l| l.contains("migration done"))
        .unwrap();

    // Reactive, switched to at run time: ac surges, and the cycle comes
    // once the bucket is complete.
    lab.set_cycle_mode("reactive").unwrap();
    daemon
        .wait_log(Duration::from_secs(5), |l| l.contains("mode changed"))
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let s2 = quiet_second(&log);
    surge_at(&surges, 1, s2);
    let d = wait_decision(&log, s2, |d| d["trigger"]["kind"] != "unserved");
    eprintln!("reactive: {d}");
    assert_eq!(d["mode"], "reactive");
    assert_eq!(d["trigger"]["kind"], "overload", "{d}");
    assert!(d["at"].as_u64().unwrap() > s2, "{d}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        decisions(&log)
            .iter()
            .all(|d| d["mode"] != "reactive" || d["trigger"]["kind"] != "nowcast")
    );

    // Nothing missed.
    let sent = load.stop().unwrap();
    assert!(sent.iter().all(|&n| n > 100), "{sent:?}");
    let r = devsim.finish().unwrap();
    assert_eq!(r["errors"], 0);
    assert_eq!(r["missing"], 0, "{r}");
    drop(daemon);
}

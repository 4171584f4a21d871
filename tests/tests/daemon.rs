//! The control daemon with real traffic: atomic plan swaps under load (a
//! multi-shard topic among them, its copies by broadcast), a
//! data plane that outlives `kill -9` of the daemon, and a history store
//! that survives `kill -9` mid-write.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    net::{IpAddr, UdpSocket},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use integration_tests::{
    Child, build, ctl_binary,
    lab::{Lab, LabShard, MQTTSN_PORT, ROUTER_V4},
};
use router_common::mqttsn;

/// Publishes MQTT-SN QoS 0 short-topic messages round-robin over `topics`,
/// payload = 8-byte sequence number, until stopped; returns how many of each
/// it sent (sequence numbers are 0..n per topic).
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<BTreeMap<[u8; 2], u64>>>,
}

impl Traffic {
    fn start(lab: &Lab, topics: &[&str], gap: Duration) -> Traffic {
        let ns = lab.publisher.name.clone();
        let topics: Vec<[u8; 2]> = topics
            .iter()
            .map(|t| t.as_bytes().try_into().unwrap())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            shardcast_dataplane::netns::enter(&ns).unwrap();
            let s = UdpSocket::bind(("198.18.1.2", 0)).unwrap();
            let mut sent: BTreeMap<[u8; 2], u64> = BTreeMap::new();
            while !stop2.load(Ordering::Relaxed) {
                for t in &topics {
                    let seq = sent.entry(*t).or_default();
                    let m = build::mqttsn_publish(
                        false,
                        build::qos0(mqttsn::TOPIC_SHORT),
                        *t,
                        0,
                        &seq.to_be_bytes(),
                    );
                    s.send_to(&m, (ROUTER_V4, MQTTSN_PORT)).unwrap();
                    *seq += 1;
                }
                std::thread::sleep(gap);
            }
            sent
        });
        Traffic {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> BTreeMap<[u8; 2], u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// (topic, seq) of a received publish.
fn decode(p: &[u8]) -> ([u8; 2], u64) {
    assert_eq!(p[1], mqttsn::MSG_PUBLISH);
    (
        [p[3], p[4]],
        u64::from_be_bytes(p[7..15].try_into().unwrap()),
    )
}

fn listen_all(lab: &Lab, shards: &[LabShard]) -> Vec<integration_tests::lab::Listener> {
    shards
        .iter()
        .enumerate()
        .map(|(k, s)| {
            lab.listen(k, vec![(IpAddr::V4(s.group_v4), MQTTSN_PORT)])
                .unwrap()
        })
        .collect()
}

/// Plan X (odd generations) and Y (even): every topic but "dd" is routed in
/// both, to different shards, and the shard table is in another order, so
/// a packet routed by a mix of the two would land somewhere neither says.
/// "mm" goes to two shards in each (a broadcast: the lab's shards share an
/// egress), so a publish whose copies mixed the generations would reach a
/// set of shards neither says.
fn plan_xy(generation: u64, shards: &[LabShard]) -> String {
    if generation % 2 == 1 {
        Lab::plan_json(
            generation,
            shards,
            &[
                ("aa", &[1]),
                ("bb", &[2]),
                ("cc", &[3]),
                ("dd", &[1]),
                ("mm", &[1, 2]),
            ],
        )
    } else {
        let reordered = [shards[2].clone(), shards[0].clone(), shards[1].clone()];
        Lab::plan_json(
            generation,
            &reordered,
            &[("aa", &[2]), ("bb", &[3]), ("cc", &[1]), ("mm", &[3, 1])],
        )
    }
}

/// The shard sets "mm" reaches in X and in Y.
const MM_SHARDS: [&[u32]; 2] = [&[1, 2], &[1, 3]];

fn shard_in(generation_odd: bool, topic: &[u8; 2]) -> Option<u32> {
    match (generation_odd, topic) {
        (true, b"aa") | (true, b"dd") => Some(1),
        (true, b"bb") => Some(2),
        (true, b"cc") => Some(3),
        (false, b"aa") => Some(2),
        (false, b"bb") => Some(3),
        (false, b"cc") => Some(1),
        _ => None,
    }
}

#[test]
fn five_hundred_swaps_under_traffic_route_every_packet_by_one_generation() {
    swaps_under_traffic(true);
}

/// The same with full installs (fresh maps every time, as `apply` does),
/// whose last outer-map update finishes on a thread after the flip.
#[test]
fn five_hundred_full_installs_under_traffic_route_every_packet_by_one_generation() {
    swaps_under_traffic(false);
}

fn swaps_under_traffic(incremental: bool) {
    let mut lab = Lab::new(3).unwrap();
    lab.attach().unwrap();
    let shards: Vec<_> = (1..=3).map(LabShard::numbered).collect();
    let _d = lab
        .start_daemon_with("10ms", &format!("incremental = {incremental}"))
        .unwrap();
    lab.offer_plan(&plan_xy(1, &shards)).unwrap();
    lab.wait_generation(1).unwrap();

    let listeners = listen_all(&lab, &shards);
    let traffic = Traffic::start(
        &lab,
        &["aa", "bb", "cc", "dd", "mm"],
        Duration::from_micros(500),
    );
    const SWAPS: u64 = 500;
    let started = Instant::now();
    for g in 2..=SWAPS + 1 {
        lab.offer_plan(&plan_xy(g, &shards)).unwrap();
        lab.wait_generation(g).unwrap();
    }
    let swap_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let sent = traffic.stop();

    let mut seen: BTreeMap<[u8; 2], BTreeSet<u64>> = BTreeMap::new();
    // The multi-shard topic: which shards each publish reached.
    let mut mm: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut dupes = 0;
    let mut inconsistent = Vec::new();
    for (k, l) in listeners.into_iter().enumerate() {
        let shard = k as u32 + 1;
        for r in l.finish(Duration::from_millis(300)).unwrap() {
            let (topic, seq) = decode(&r.payload);
            if &topic == b"mm" {
                mm.entry(seq).or_default().push(shard);
                continue;
            }
            if shard_in(true, &topic) != Some(shard) && shard_in(false, &topic) != Some(shard) {
                inconsistent.push((topic, seq, shard));
            }
            if !seen.entry(topic).or_default().insert(seq) {
                dupes += 1;
            }
        }
    }
    eprintln!(
        "{SWAPS} swaps in {swap_time:?}; sent {:?}",
        sent.iter()
            .map(|(t, n)| (String::from_utf8_lossy(t).into_owned(), *n))
            .collect::<Vec<_>>()
    );
    assert!(
        inconsistent.is_empty(),
        "{} packets at a shard no generation routes their topic to, e.g. {:?}",
        inconsistent.len(),
        &inconsistent[..inconsistent.len().min(5)]
    );
    assert_eq!(dupes, 0, "duplicated packets");
    for t in [b"aa", b"bb", b"cc"] {
        let n = sent[t];
        let got = seen.get(t).map_or(0, |s| s.len() as u64);
        assert!(n > 1000, "too little traffic to prove anything ({n})");
        assert_eq!(
            got,
            n,
            "topic {} routed in both plans lost {} of {n} packets",
            String::from_utf8_lossy(t),
            n - got
        );
    }
    // Every multi-shard publish reached exactly one generation's shards,
    // each once: its copies never mixed two generations, none was lost.
    let mixed: Vec<_> = mm
        .iter()
        .filter(|(_, got)| !MM_SHARDS.contains(&&got[..]))
        .collect();
    assert!(
        mixed.is_empty(),
        "{} multi-shard publishes reached a set of shards no generation routes them to, e.g. {:?}",
        mixed.len(),
        &mixed[..mixed.len().min(5)]
    );
    let n = sent[b"mm"];
    assert!(n > 1000, "too little multi-shard traffic ({n})");
    assert_eq!(mm.len() as u64, n, "multi-shard publishes lost");
    let c = lab.counters().unwrap();
    let way = if lab.broadcasts() {
        router_common::reason::Reason::Broadcast
    } else {
        router_common::reason::Reason::FannedOut
    };
    assert!(
        c.reasons[&way].packets >= n,
        "the multi-shard topic went by {}",
        way.label()
    );
    assert_eq!(lab.generation().unwrap(), SWAPS + 1);
}

#[test]
fn kill_dash_9_loses_nothing_and_a_new_daemon_adopts_the_data_plane() {
    let mut lab = Lab::new(3).unwrap();
    lab.attach().unwrap();
    let shards: Vec<_> = (1..=3).map(LabShard::numbered).collect();
    let mut first = lab.start_daemon("50ms").unwrap();
    lab.offer_plan(&plan_xy(1, &shards)).unwrap();
    lab.wait_generation(1).unwrap();

    let listeners = listen_all(&lab, &shards);
    let traffic = Traffic::start(&lab, &["aa", "bb", "cc"], Duration::from_micros(500));
    std::thread::sleep(Duration::from_millis(300));
    first.child.child.kill().unwrap(); // SIGKILL
    first.child.child.wait().unwrap();
    // Forwarding goes on with no daemon at all.
    std::thread::sleep(Duration::from_millis(500));
    let spawned = Instant::now();
    let second = lab.start_daemon("50ms").unwrap();
    let ready = loop {
        let line = second
            .log
            .recv_timeout(Duration::from_secs(10))
            .expect("the new daemon said nothing");
        if line.contains("data plane ready") {
            break line;
        }
    };
    let adopted_in = spawned.elapsed();
    assert!(
        ready.contains("generation=1"),
        "resumed at generation 1: {ready}"
    );
    assert!(ready.contains("adopted=true"), "{ready}");
    eprintln!("new daemon adopted the data plane {adopted_in:?} after spawn");
    // The new daemon goes on installing plans.
    lab.offer_plan(&plan_xy(2, &shards)).unwrap();
    lab.wait_generation(2).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let sent = traffic.stop();

    let mut seen: BTreeMap<[u8; 2], BTreeSet<u64>> = BTreeMap::new();
    for l in listeners {
        for r in l.finish(Duration::from_millis(300)).unwrap() {
            let (topic, seq) = decode(&r.payload);
            seen.entry(topic).or_default().insert(seq);
        }
    }
    for (t, n) in &sent {
        let got = seen.get(t).map_or(0, |s| s.len() as u64);
        assert_eq!(
            got,
            *n,
            "topic {} lost {} packets",
            String::from_utf8_lossy(t),
            n - got
        );
    }
}

#[test]
fn history_survives_kill_dash_9_mid_write() {
    let dir = std::env::temp_dir().join(integration_tests::unique("schist"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("history.redb");
    for round in 0..3 {
        let mut child = Child {
            child: Command::new(env!("CARGO_BIN_EXE_history-writer"))
                .arg(&db)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        };
        let out = child.child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Let it commit a few buckets, then kill it wherever it is.
        let mut last = None;
        while last.is_none_or(|n: u64| n < 3 + round) {
            let l = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("writer progress");
            last = Some(l.trim_start_matches("committed ").parse().unwrap());
        }
        std::thread::sleep(Duration::from_millis(7 * (round + 1)));
        child.child.kill().unwrap();
        child.child.wait().unwrap();
        while let Ok(l) = rx.try_recv() {
            last = Some(l.trim_start_matches("committed ").parse().unwrap());
        }
        let last = last.unwrap();

        // Reopen: every bucket present is whole; all committed ones are
        // there; at most the one being written is missing.
        let h = router_ctl::history::History::open(&db, Default::default()).unwrap();
        let rows = h.rows().unwrap();
        let mut per_bucket: BTreeMap<u64, (usize, BTreeSet<u64>)> = BTreeMap::new();
        for r in &rows {
            let e = per_bucket.entry(r.ts).or_default();
            e.0 += 1;
            e.1.insert(r.count);
        }
        let base = 1_800_000_000u64;
        for (ts, (n, counts)) in &per_bucket {
            let i = (ts - base) / 60;
            // Each restart begins again at bucket 0 and adds to it.
            assert_eq!(*n, 2_000, "bucket {i} is partial");
            assert_eq!(counts.len(), 1, "bucket {i} has mixed counts {counts:?}");
        }
        let buckets = per_bucket.len() as u64;
        assert!(
            buckets > last,
            "round {round}: committed bucket {last} missing ({buckets} buckets)"
        );
        drop(h);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn telemetry_reaches_the_history_per_topic_and_device_group() {
    let mut lab = Lab::new(1).unwrap();
    lab.attach().unwrap();
    let north = lab.add_device(0).unwrap().0;
    let south = lab.add_device(1).unwrap().0;
    let shards = vec![LabShard::numbered(1)];
    let mut plan: serde_json::Value =
        serde_json::from_str(&Lab::plan_json(1, &shards, &[("aa", &[1]), ("bb", &[1])])).unwrap();
    plan["devices"] = serde_json::json!([
        {"id": "n1", "address": north.to_string(), "shard": 1, "group": "north"},
        {"id": "s1", "address": south.to_string(), "shard": 1, "group": "south"},
    ]);
    let mut d = lab.start_daemon("50ms").unwrap();
    lab.offer_plan(&plan.to_string()).unwrap();
    lab.wait_generation(1).unwrap();

    let msg = |t: &[u8; 2]| build::mqttsn_publish(false, 2, *t, 0, b"x");
    lab.publish_from(north, MQTTSN_PORT, vec![msg(b"aa"); 30])
        .unwrap();
    lab.publish_from(south, MQTTSN_PORT, vec![msg(b"aa"); 20])
        .unwrap();
    lab.publish_from(south, MQTTSN_PORT, vec![msg(b"bb"); 5])
        .unwrap();
    lab.publish(false, MQTTSN_PORT, vec![msg(b"aa"); 10])
        .unwrap();
    // A new plan mid-bucket whose device groups shift the indices the
    // kernel counts under (alpha sorts first: north 1 -> 2, south 2 -> 3):
    // what was counted before keeps the names it was counted under.
    std::thread::sleep(Duration::from_millis(300));
    plan["generation"] = 2.into();
    plan["devices"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"id": "a1", "shard": 1, "group": "alpha"}));
    lab.offer_plan(&plan.to_string()).unwrap();
    lab.wait_generation(2).unwrap();
    lab.publish_from(north, MQTTSN_PORT, vec![msg(b"aa"); 7])
        .unwrap();
    // Let a tick read the counters, then stop the daemon the polite way:
    // it writes the open bucket and leaves the data plane forwarding.
    std::thread::sleep(Duration::from_millis(300));
    integration_tests::sh("kill", &["-TERM", &d.child.pid().to_string()]).unwrap();
    let status = d.child.child.wait().unwrap();
    assert!(status.success(), "daemon exit: {status}");
    // The reader thread ends at the daemon's EOF: read to the end.
    assert!(
        d.log.iter().any(|l| l.contains("keeps forwarding")),
        "the daemon said it leaves the data plane forwarding"
    );
    assert_eq!(lab.generation().unwrap(), 2, "data plane still installed");

    let out = Command::new(ctl_binary())
        .args(["history", "--config"])
        .arg(&d.config)
        .arg("export")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows = shardcast_records::history::parse_csv(&csv).unwrap();
    let mut sums: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in rows {
        *sums.entry((r.topic, r.group)).or_default() += r.count;
    }
    let want: BTreeMap<(String, String), u64> = [
        (("aa", "north"), 37),
        (("aa", "south"), 20),
        (("aa", "unknown"), 10),
        (("bb", "south"), 5),
    ]
    .into_iter()
    .map(|((t, g), n)| ((t.to_string(), g.to_string()), n))
    .collect();
    assert_eq!(sums, want, "history:\n{csv}");
}

#[test]
fn history_import_refuses_bad_csv_whole_and_names_the_line() {
    let dir = std::env::temp_dir().join(integration_tests::unique("schcsv"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!("[history]\npath = {:?}\n", dir.join("h.redb")),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(ctl_binary())
            .args(["history", "--config"])
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap()
    };
    let good = dir.join("good.csv");
    std::fs::write(
        &good,
        "timestamp,topic,group,count\n2026-11-25T10:00:00Z,t/a,g1,5\n1795600000,t/b,g2,7\n",
    )
    .unwrap();
    let out = run(&["import", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "1795600000,t/c,g,1\n1795600060,t/c,g,lots\n").unwrap();
    let out = run(&["import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("count"), "{err}");
    // Nothing of the bad file went in.
    let out = run(&["export", "--rfc3339"]);
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(csv.contains("2026-11-25T10:00:00Z,t/a,g1,5"), "{csv}");
    assert!(!csv.contains("t/c"), "{csv}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plan_whose_copy_cannot_be_saved_is_installed_and_said_so() {
    let mut lab = Lab::new(3).unwrap();
    lab.attach().unwrap();
    let shards: Vec<_> = (1..=3).map(LabShard::numbered).collect();
    let d = lab.start_daemon("50ms").unwrap();
    // The copy's path is taken by a directory: saving it fails.
    std::fs::create_dir_all(lab.daemon_state_dir().join("plan.json")).unwrap();
    lab.offer_plan(&plan_xy(1, &shards)).unwrap();
    lab.wait_generation(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut said = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = d.log.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let done = line.contains("its copy was not saved");
        said.push(line);
        if done {
            break;
        }
    }
    assert!(
        said.iter()
            .any(|l| l.contains("plan installed, but its copy was not saved")),
        "{said:#?}"
    );
    assert!(
        !said.iter().any(|l| l.contains("plan not installed")),
        "{said:#?}"
    );
    assert_eq!(lab.generation().unwrap(), 1);
}

//! `router-ctl plan` and `router-ctl simulate` as an operator runs them:
//! the plan they write installs (`router-ctl check`), re-planning from it
//! keeps what can be kept, and bad input is refused with a non-zero exit,
//! a message naming what is wrong, and no output file.

use std::{path::Path, process::Command};

use integration_tests::ctl_binary;

fn ctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ctl_binary()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two buildings: room topics, a building-wide topic, one cross-building
/// subscriber; capacity forces at least two shards.
fn workload(rate_scale: f64) -> serde_json::Value {
    let mut topics = Vec::new();
    let mut devices = Vec::new();
    for b in 0..2 {
        topics.push(serde_json::json!({"name": format!("b{b}/alerts"), "rate": 1.0 * rate_scale}));
        for r in 0..5 {
            topics
                .push(serde_json::json!({"name": format!("b{b}/r{r}"), "rate": 6.0 * rate_scale}));
            for i in 0..4 {
                let id = b * 100 + r * 10 + i;
                devices.push(serde_json::json!({
                    "id": format!("d{id}"),
                    "group": format!("b{b}"),
                    "address": format!("198.18.{b}.{}", r * 10 + i + 1),
                    "subscriptions": [format!("b{b}/alerts"), format!("b{b}/r{r}")],
                    "battery": if i == 0 { 0.2 } else { 1.0 },
                }));
            }
        }
    }
    devices.push(serde_json::json!({"id": "x", "subscriptions": ["b0/r0", "b1/r0"]}));
    serde_json::json!({
        "resources": {"shard_capacity": 40, "max_shards": 8, "egress": "eth1"},
        "topics": topics,
        "devices": devices,
    })
}

fn write(dir: &Path, name: &str, v: &serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn plans_replans_and_refuses_bad_workloads() {
    let dir = std::env::temp_dir().join(integration_tests::unique("scplan"));
    std::fs::create_dir_all(&dir).unwrap();
    let w = write(&dir, "w.json", &workload(1.0));
    let p1 = dir.join("p1.json");
    let (ok, out, err) = ctl(&["plan", "--workload", &w, "--out", p1.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("generation 1:") && out.contains("inter-shard copies"),
        "{out}"
    );
    let (ok, _, err) = ctl(&["check", p1.to_str().unwrap()]);
    assert!(ok, "the plan installs: {err}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p1).unwrap()).unwrap();
    let shards = plan["shards"].as_array().unwrap().len();
    assert!(shards >= 2, "{plan}");
    // Each building stays in one shard: its room topics go to one shard.
    for t in plan["topics"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        if name.ends_with("/r3") {
            assert_eq!(t["shards"].as_array().unwrap().len(), 1, "{t}");
        }
    }
    // The load doubles: re-planning from p1 creates shards, keeps ids.
    let w2 = write(&dir, "w2.json", &workload(2.0));
    let p2 = dir.join("p2.json");
    let (ok, out, err) = ctl(&[
        "plan",
        "--workload",
        &w2,
        "--current",
        p1.to_str().unwrap(),
        "--out",
        p2.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["generation"], 2);
    assert_eq!(report["cost"]["overloaded_shards"], 0, "{report}");
    let plan2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p2).unwrap()).unwrap();
    assert!(plan2["shards"].as_array().unwrap().len() > shards);
    let ids = |p: &serde_json::Value| -> Vec<u64> {
        p["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_u64().unwrap())
            .collect()
    };
    assert!(ids(&plan).iter().all(|i| ids(&plan2).contains(i)));
    // Rates from a forecast file.
    let fc = dir.join("f.csv");
    std::fs::write(
        &fc,
        "topic,group,horizon,timestamp,predicted,lower,upper\nb0/r0,b0,1h,0,6000,5000,7000\n",
    )
    .unwrap();
    let p3 = dir.join("p3.json");
    let args = [
        "plan",
        "--workload",
        &w,
        "--forecast",
        fc.to_str().unwrap(),
        "--out",
        p3.to_str().unwrap(),
        "--json",
    ];
    // b0/r0 at 100 msg/s cannot fit a 32 msg/s usable shard: no plan
    // within capacity exists, the bound is named, nothing is written.
    let (ok, _, err) = ctl(&args);
    assert!(!ok);
    assert!(
        err.contains("no plan within capacity exists") && err.contains("usable capacity of 32"),
        "{err}"
    );
    assert!(!p3.exists());
    // With --best-effort: the least overloaded plan, and why.
    let mut best = args.to_vec();
    best.push("--best-effort");
    let (ok, out, err) = ctl(&best);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["cost"]["max_load"].as_f64().unwrap() >= 100.0,
        "{report}"
    );
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("above usable capacity"), "{warnings}");
    assert!(
        warnings.contains("no plan within capacity exists"),
        "{warnings}"
    );
    assert!(p3.exists());

    // Refusals: non-zero exit, the offender named, nothing written.
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown topic",
            Box::new(|w| w["devices"][0]["subscriptions"][0] = "nope".into()),
            "unknown topic \"nope\"",
        ),
        (
            "duplicate device",
            Box::new(|w| w["devices"][1]["id"] = "d0".into()),
            "device id \"d0\" appears more than once",
        ),
        (
            "capacity",
            Box::new(|w| w["resources"]["shard_capacity"] = 0.into()),
            "resources.shard_capacity",
        ),
        (
            "negative rate",
            Box::new(|w| w["topics"][0]["rate"] = (-1).into()),
            "rate -1",
        ),
        (
            "unknown field",
            Box::new(|w| w["resources"]["colour"] = "red".into()),
            "unknown field `colour`",
        ),
    ];
    for (what, edit, want) in cases {
        let mut bad = workload(1.0);
        edit(&mut bad);
        let b = write(&dir, "bad.json", &bad);
        let out = dir.join("never.json");
        let (ok, _, err) = ctl(&["plan", "--workload", &b, "--out", out.to_str().unwrap()]);
        assert!(!ok, "{what}");
        assert!(err.contains(want), "{what}: {err}");
        assert!(!out.exists(), "{what}: nothing written");
    }
    let (ok, _, err) = ctl(&[
        "plan",
        "--workload",
        &w,
        "--forecast",
        fc.to_str().unwrap(),
        "--horizon",
        "5m",
        "--out",
        dir.join("never.json").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no rows for horizon \"5m\""), "{err}");
    // A --current plan apply would refuse (a shard group that is not
    // multicast) is named as such, not an internal error of the planner.
    let mut current: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p1).unwrap()).unwrap();
    current["shards"][0]["group_v4"] = "198.18.9.9".into();
    let c = write(&dir, "current-bad.json", &current);
    let out = dir.join("never.json");
    let (ok, _, err) = ctl(&[
        "plan",
        "--workload",
        &w,
        "--current",
        &c,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("--current") && err.contains("not a multicast group"),
        "{err}"
    );
    assert!(!err.contains("internal error"), "{err}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// The workload's buildings as sites, `x` premium: under `separate_by =
/// ["sla"]` the plan names each shard's class, `check` shows the policy,
/// `--explain` says what each shard holds and why a device is where it
/// is, and a policy or explained device that does not exist is refused.
#[test]
fn plans_under_a_policy_and_explains() {
    let dir = std::env::temp_dir().join(integration_tests::unique("scpolicy"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut v = workload(1.0);
    for d in v["devices"].as_array_mut().unwrap() {
        let id = d["id"].as_str().unwrap().to_string();
        let site = if id.starts_with("d1") {
            "north"
        } else {
            "south"
        };
        d["location"] = format!("{site}/main").into();
        d["sla"] = if id == "x" { "premium" } else { "standard" }.into();
    }
    v["policy"] = serde_json::json!({
        "separate_by": ["sla"],
        "prefer_together": [{"key": "location:1", "weight": 2.0}],
        "classes": {"premium": {"headroom": 0.5, "priority": 1}}
    });
    let w = write(&dir, "w.json", &v);
    let p = dir.join("p.json");
    let (ok, out, err) = ctl(&[
        "plan",
        "--workload",
        &w,
        "--explain",
        "--explain-device",
        "x",
        "--out",
        p.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("policy              separate_by sla; prefer_together location:1 (weight 2)"),
        "{out}"
    );
    assert!(
        out.contains("sla=premium") && out.contains("sla=standard"),
        "{out}"
    );
    assert!(out.contains("device \"x\" is in shard"), "{out}");
    assert!(
        out.contains("not allowed (hard boundary: the shard holds class \"sla=standard\")"),
        "{out}"
    );
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(plan["policy"], v["policy"]);
    let premium: Vec<&serde_json::Value> = plan["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["class"] == "sla=premium")
        .collect();
    assert_eq!(premium.len(), 1, "{plan}");
    let (ok, out, err) = ctl(&["check", p.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("policy: separate_by sla") && out.contains("1 shards of class sla=premium"),
        "{out}"
    );
    // A plan whose shard class does not fit its policy is refused.
    let mut bad = plan.clone();
    bad["shards"][0]["class"] = "type=camera".into();
    let b = write(&dir, "bad-plan.json", &bad);
    let (ok, _, err) = ctl(&["check", &b]);
    assert!(
        !ok && err.contains("does not fit the policy's separate_by"),
        "{err}"
    );
    // Bad input: an unknown explained device, an unknown policy key, a
    // class without the sla boundary. Nothing is written.
    let never = dir.join("never.json");
    let (ok, _, err) = ctl(&[
        "plan",
        "--workload",
        &w,
        "--explain-device",
        "nobody",
        "--out",
        never.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("\"nobody\" is not in the workload"),
        "{err}"
    );
    for (policy, want) in [
        (
            serde_json::json!({"separate_by": ["floor"]}),
            "\"floor\" is not a policy key",
        ),
        (
            serde_json::json!({"classes": {"premium": {"priority": 1}}}),
            "need \"sla\" in separate_by",
        ),
    ] {
        let mut v = v.clone();
        v["policy"] = policy;
        let w = write(&dir, "bad.json", &v);
        let (ok, _, err) = ctl(&["plan", "--workload", &w, "--out", never.to_str().unwrap()]);
        assert!(!ok && err.contains(want), "{err}");
    }
    assert!(!never.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn simulates_and_plots() {
    let dir = std::env::temp_dir().join(integration_tests::unique("scsim"));
    let (ok, out, err) = ctl(&[
        "simulate",
        "--scenario",
        "small",
        "--days",
        "1",
        "--plot",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for s in ["static", "reactive", "predictive"] {
        assert!(out.lines().any(|l| l.starts_with(s)), "{out}");
    }
    assert!(err.contains("simulate: day"), "progress shown: {err}");
    for f in ["shards.svg", "load.svg", "offered.svg"] {
        let svg = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{f}");
    }
    let (ok, _, err) = ctl(&["simulate", "--scenario", "nope"]);
    assert!(!ok && err.contains("unknown scenario \"nope\""), "{err}");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"fleet\": 1}").unwrap();
    let (ok, _, err) = ctl(&["simulate", "--scenario", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("not valid JSON"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

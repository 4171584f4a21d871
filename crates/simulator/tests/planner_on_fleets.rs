//! The planner on the simulator's seeded fleets: thousands of devices in
//! sites, daily cycles and flash events, planned fresh and re-planned
//! through peaks and quiet hours. (These live here, not in the planner's
//! own tests, because the fleet generator belongs to the simulator, which
//! depends on the planner.)

use std::collections::{BTreeMap, BTreeSet};

use router_common::maps::MAX_ROUTE_SHARDS;
use shardcast_plan::Plan;
use shardcast_planner::{
    Infeasible, Options, Outcome, PlannerError, plan,
    workload::{Instance, Resources},
};
use shardcast_sim::scenario::{Fleet, FleetSpec};

fn resources(capacity: f64, max_shards: u32) -> Resources {
    Resources {
        shard_capacity: capacity,
        max_shards,
        headroom: 0.2,
        merge_below: 0.5,
        bandwidth: None,
        max_migrations: 100_000,
        egress: "eth1".into(),
        group_v4_base: "239.1.0.0".into(),
        group_v6_base: Some("ff15::1:0".into()),
    }
}

fn fleet(seed: u64) -> Fleet {
    Fleet::generate(FleetSpec {
        seed,
        sites: 12,
        devices: 3000,
        topics: 360,
        zone_rate: 1.0,
        days: 7,
        flashes_per_day: 2.0,
        premium_sites: 0.0,
    })
}

fn instance(f: &Fleet, scale: f64, res: Resources) -> Instance {
    let rates: Vec<f64> = f.rates(12 * 60).iter().map(|r| r * scale).collect();
    f.workload(&f.present_devices(0), 0, &rates, res)
        .index()
        .unwrap()
}

/// Every device in exactly one shard, every topic routed to exactly the
/// shards holding its subscribers, fan-out and capacity honoured.
fn check_invariants(inst: &Instance, out: &Outcome) {
    let plan = &out.plan;
    plan.compile().expect("the plan installs");
    assert_eq!(plan.devices.len(), inst.devices.len());
    let mut holders: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for (d, dev) in plan.devices.iter().enumerate() {
        assert_eq!(dev.id, inst.devices[d]);
        for &t in inst.subscriptions(d) {
            holders
                .entry(inst.topics[t as usize].as_str())
                .or_default()
                .insert(dev.shard);
        }
    }
    assert_eq!(plan.topics.len(), holders.len());
    for t in &plan.topics {
        let want: Vec<u32> = holders[t.name.as_str()].iter().copied().collect();
        assert_eq!(t.shards, want, "topic {}", t.name);
        assert!(t.shards.len() <= MAX_ROUTE_SHARDS);
    }
    // Loads recomputed from the plan agree with what the planner says.
    let rate: BTreeMap<&str, f64> = inst
        .topics
        .iter()
        .map(|t| t.as_str())
        .zip(inst.rates.iter().copied())
        .collect();
    for (i, s) in plan.shards.iter().enumerate() {
        let l: f64 = plan
            .topics
            .iter()
            .filter(|t| t.shards.contains(&s.id))
            .map(|t| rate[t.name.as_str()])
            .sum();
        assert!(
            (l - out.loads[i]).abs() < 1e-6,
            "shard {}: {l} vs {}",
            s.id,
            out.loads[i]
        );
    }
}

#[test]
fn fresh_plan_is_valid_and_within_capacity() {
    let f = fleet(1);
    let inst = instance(&f, 1.0, resources(60.0, 64));
    let out = plan(&inst, None, Options::default()).unwrap();
    check_invariants(&inst, &out);
    assert_eq!(out.cost.overloaded_shards, 0, "{:?}", out.cost);
    assert!(out.cost.shards > 1);
    // Sites are the natural clusters: copies stay a small part of load.
    let total: f64 = inst.rates.iter().sum();
    assert!(
        out.cost.copies < 0.25 * total,
        "{} of {total}",
        out.cost.copies
    );
}

#[test]
fn deterministic_for_a_seed() {
    let f = fleet(2);
    let inst = instance(&f, 1.0, resources(60.0, 64));
    let opts = Options {
        seed: 7,
        rounds: 4,
        ..Default::default()
    };
    let a = plan(&inst, None, opts).unwrap();
    let b = plan(&inst, None, opts).unwrap();
    assert_eq!(a.plan, b.plan);
    assert_eq!(a.cost, b.cost);
}

#[test]
fn flat_load_does_not_flap() {
    let f = fleet(3);
    let inst = instance(&f, 1.0, resources(60.0, 64));
    let mut cur = plan(&inst, None, Options::default()).unwrap();
    for round in 0..5 {
        let next = plan(&inst, Some(&cur.plan), Options::default()).unwrap();
        check_invariants(&inst, &next);
        assert_eq!(next.plan.generation, cur.plan.generation + 1);
        assert_eq!((next.created, next.merged), (0, 0), "round {round}");
        let ids = |p: &Plan| p.shards.iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(&next.plan), ids(&cur.plan));
        // The first re-plan may finish the refinement the fresh plan
        // cut short (a few moves that pay for their migration); after
        // that a flat load moves nobody.
        if round == 0 {
            assert!(next.cost.migrations <= inst.devices.len() / 100);
        } else {
            assert_eq!(next.cost.migrations, 0, "round {round}");
        }
        cur = next;
    }
}

#[test]
fn creates_before_a_peak_and_merges_when_quiet() {
    let f = fleet(4);
    let base = instance(&f, 1.0, resources(60.0, 128));
    let first = plan(&base, None, Options::default()).unwrap();
    // The predicted peak is 2.5x the load: shards are created, ids and
    // groups of kept shards stay, no shard is left overloaded.
    let peak = instance(&f, 2.5, resources(60.0, 128));
    let up = plan(&peak, Some(&first.plan), Options::default()).unwrap();
    check_invariants(&peak, &up);
    assert!(up.created > 0 && up.cost.shards > first.cost.shards);
    assert_eq!(up.cost.overloaded_shards, 0, "{:?}", up.warnings);
    for s in &first.plan.shards {
        let kept = up.plan.shards.iter().find(|k| k.id == s.id).unwrap();
        assert_eq!(kept.group_v4, s.group_v4);
    }
    // Then it goes quiet: shards are merged, nothing overloads.
    let quiet = instance(&f, 0.3, resources(60.0, 128));
    let down = plan(&quiet, Some(&up.plan), Options::default()).unwrap();
    check_invariants(&quiet, &down);
    assert!(down.merged > 0 && down.cost.shards < up.cost.shards);
    assert_eq!(down.cost.overloaded_shards, 0);
}

#[test]
fn migrations_stay_within_budget() {
    let f = fleet(5);
    let base = instance(&f, 1.0, resources(60.0, 128));
    let first = plan(&base, None, Options::default()).unwrap();
    let mut res = resources(60.0, 128);
    res.max_migrations = 50;
    let peak = instance(&f, 3.0, res);
    // 50 moves cannot take a 3x peak: without best effort that is an
    // error naming the overload, not a plan.
    assert!(matches!(
        plan(&peak, Some(&first.plan), Options::default()),
        Err(PlannerError::Overloaded { .. })
    ));
    let best = Options {
        best_effort: true,
        ..Default::default()
    };
    let up = plan(&peak, Some(&first.plan), best).unwrap();
    check_invariants(&peak, &up);
    assert!(up.cost.migrations <= 50, "{}", up.cost.migrations);
    assert!(up.warnings.iter().any(|w| w.contains("migration budget")));
}

#[test]
fn overload_at_max_shards_is_reported() {
    let f = fleet(6);
    let inst = instance(&f, 1.0, resources(60.0, 2));
    // 236 msg/s in shards of 48 usable: at least 5 shards, 2 allowed.
    match plan(&inst, None, Options::default()) {
        Err(PlannerError::Infeasible(Infeasible::Shards {
            shards, max_shards, ..
        })) => assert_eq!((shards, max_shards), (5, 2)),
        other => panic!("{:?}", other.map(|o| o.cost)),
    }
    let best = Options {
        best_effort: true,
        ..Default::default()
    };
    let out = plan(&inst, None, best).unwrap();
    assert!(out.cost.shards <= 2);
    assert!(out.cost.overloaded_shards > 0);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("above usable capacity"))
    );
}

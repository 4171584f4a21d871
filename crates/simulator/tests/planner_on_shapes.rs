//! The planner on fleets of every shape of `shardcast_sim::shapes`: a plan
//! within capacity and fan-out where one exists, the known optimum where
//! it is known, infeasibility named with its bound, and more shards
//! allowed never giving a worse plan.

use router_common::maps::MAX_ROUTE_SHARDS;
use shardcast_planner::{
    Infeasible, Options, PlannerError, plan,
    workload::{ClassSpec, Instance, Preference},
};
use shardcast_sim::shapes::{Shape, generate};

const FEASIBLE: [Shape; 4] = [
    Shape::Campus,
    Shape::Vehicles,
    Shape::Communities,
    Shape::Geometric,
];

fn instance(shape: Shape, devices: usize, seed: u64, max_shards: u32) -> Instance {
    generate(shape, devices, seed, max_shards)
        .workload
        .index()
        .expect("generated workloads are valid")
}

#[test]
fn every_feasible_shape_is_planned_within_capacity_and_fan_out() {
    for shape in FEASIBLE {
        for seed in [1, 2] {
            let inst = instance(shape, 20_000, seed, 256);
            let out = plan(&inst, None, Options::default())
                .unwrap_or_else(|e| panic!("{shape:?} seed {seed}: {e}"));
            out.plan.compile().expect("the plan installs");
            let cap = inst.resources.usable_capacity();
            assert_eq!(out.cost.overloaded_shards, 0, "{shape:?} seed {seed}");
            assert!(
                out.loads.iter().all(|&l| l <= cap * (1.0 + 1e-9)),
                "{shape:?} seed {seed}"
            );
            assert!(out.cost.max_fanout <= MAX_ROUTE_SHARDS, "{shape:?}");
            assert!(out.warnings.is_empty(), "{shape:?}: {:?}", out.warnings);
        }
    }
}

#[test]
fn disjoint_communities_get_the_optimum_whatever_max_shards_allows() {
    let g = generate(Shape::Communities, 20_000, 3, 256);
    let k = g.optimum_shards.expect("known optimum");
    for max in [k as u32, k as u32 + 1, 2 * k as u32, 256] {
        let mut w = g.workload.clone();
        w.resources.max_shards = max;
        let inst = w.index().unwrap();
        let out = plan(&inst, None, Options::default()).unwrap();
        // Copies sum rates: zero up to rounding.
        assert_eq!(out.cost.shards, k, "max_shards {max}");
        assert!(
            out.cost.copies < 1e-6,
            "max_shards {max}: {}",
            out.cost.copies
        );
    }
}

#[test]
fn more_shards_allowed_never_costs_more() {
    for shape in FEASIBLE {
        let wide = instance(shape, 10_000, 4, 256);
        let best = plan(&wide, None, Options::default()).unwrap();
        // Allowing fewer shards (down to what the plan used, and a few
        // more) never finds a cheaper plan than allowing 256.
        let used = best.cost.shards as u32;
        let mut compared = 0;
        for max in [used, used + 2, used * 2] {
            let mut narrow = wide.clone();
            narrow.resources.max_shards = max;
            // Fewer shards allowed may find no plan within capacity at all.
            if let Ok(out) = plan(&narrow, None, Options::default()) {
                compared += 1;
                assert!(
                    best.cost.total <= out.cost.total * (1.0 + 1e-9),
                    "{shape:?}: max_shards 256 costs {} > {} at {max}",
                    best.cost.total,
                    out.cost.total
                );
            }
        }
        // At least the looser limits plan: the comparison happened.
        assert!(compared >= 2, "{shape:?}: only {compared} comparisons");
    }
}

#[test]
fn an_infeasible_fleet_is_named_with_its_bound() {
    let inst = instance(Shape::Infeasible, 20_000, 1, 256);
    match plan(&inst, None, Options::default()) {
        Err(PlannerError::Infeasible(Infeasible::Topic {
            topic,
            shards,
            subscribers,
            ..
        })) => {
            assert_eq!(topic, "campus/feed0");
            assert!(shards > MAX_ROUTE_SHARDS as u64, "{shards}");
            assert_eq!(subscribers as usize, inst.devices.len());
        }
        other => panic!("{:?}", other.map(|o| o.cost)),
    }
    // Best effort: the plan, installable, with the reason in its warnings.
    let best = Options {
        best_effort: true,
        ..Default::default()
    };
    let out = plan(&inst, None, best).unwrap();
    out.plan.compile().expect("the best effort installs");
    assert!(out.cost.max_fanout <= MAX_ROUTE_SHARDS);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("no plan within capacity exists")),
        "{:?}",
        out.warnings
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Small fleets of every shape, any seed, tight or loose `max_shards`
    /// and capacity: a plan returned without best effort is within
    /// capacity and fan-out and installs; a refusal is about capacity or
    /// fan-out, and best effort then plans (unless a route cannot be
    /// made to fit the fan-out at all).
    #[test]
    fn every_returned_plan_keeps_the_contract(
        shape in proptest::sample::select(Shape::ALL.to_vec()),
        devices in 60usize..800,
        seed in 0u64..1000,
        max_shards in 1u32..40,
        capacity_scale in 0.3f64..3.0,
    ) {
        let mut w = generate(shape, devices, seed, max_shards).workload;
        w.resources.shard_capacity *= capacity_scale;
        let inst = w.index().unwrap();
        match plan(&inst, None, Options::default()) {
            Ok(out) => {
                out.plan.compile().expect("the plan installs");
                proptest::prop_assert_eq!(out.cost.overloaded_shards, 0);
                proptest::prop_assert!(out.cost.max_fanout <= MAX_ROUTE_SHARDS);
                proptest::prop_assert!(out.cost.shards <= max_shards as usize);
            }
            Err(PlannerError::Infeasible(_) | PlannerError::Overloaded { .. }) => {
                let best = Options { best_effort: true, ..Default::default() };
                match plan(&inst, None, best) {
                    Ok(out) => {
                        out.plan.compile().expect("the best effort installs");
                        proptest::prop_assert!(!out.warnings.is_empty());
                    }
                    Err(e) => proptest::prop_assert!(
                        matches!(e, PlannerError::FanOut { .. }),
                        "best effort: {e}"
                    ),
                }
            }
            Err(e) => proptest::prop_assert!(
                matches!(e, PlannerError::FanOut { .. }),
                "{e}"
            ),
        }
    }
}

/// Where the planner leaves shards over capacity with unused shards
/// allowed, the error says why they could not help: the campus-wide topic
/// every device follows already spans the 16 shards a route allows.
#[test]
fn an_overload_blocked_by_the_fan_out_says_so() {
    let found = (0..200u64).find_map(|seed| {
        let mut w = generate(Shape::Infeasible, 600, seed, 38).workload;
        w.resources.shard_capacity *= 1.5;
        match plan(&w.index().unwrap(), None, Options::default()) {
            Err(e @ PlannerError::Overloaded { .. }) => Some(e),
            _ => None,
        }
    });
    let e = found.expect("a seed where the fan-out blocks new shards");
    match &e {
        PlannerError::Overloaded {
            active,
            max_shards,
            blocking,
            ..
        } => {
            assert!(*active < *max_shards as usize, "{e}");
            assert_eq!(blocking.as_deref(), Some("campus/feed0"), "{e}");
        }
        _ => unreachable!(),
    }
    assert!(e.to_string().contains("already spans the 16 shards"), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    /// Hard boundaries: fleets of every shape with random locations, types
    /// and service classes, a random `separate_by`, per-class headroom and
    /// soft preferences: no plan ever puts devices of two classes in one
    /// shard or a shard above its class's usable capacity, the plan names
    /// each shard's class and the policy, and a refusal is about capacity,
    /// fan-out or the classes' shard count.
    #[test]
    fn no_plan_crosses_a_hard_boundary(
        shape in proptest::sample::select(Shape::ALL.to_vec()),
        devices in 60usize..600,
        seed in 0u64..1000,
        keys in proptest::sample::subsequence(
            vec!["sla", "type", "location:1", "location:2", "location"], 1..3),
        slas in 1usize..4,
        sites in 1usize..5,
        headroom in proptest::collection::vec(0.0f64..0.6, 3),
        together in proptest::option::of(0.0f64..50.0),
    ) {
        let mut w = generate(shape, devices, seed, 64).workload;
        for (i, d) in w.devices.iter_mut().enumerate() {
            // Attributes correlated with the fleet's own groups (as an
            // operator's would be), with some spread.
            let g = d.group.clone().unwrap_or_default();
            let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
            d.sla = (!h.is_multiple_of(7)).then(|| format!("class{}", (h >> 8) as usize % slas));
            d.kind = Some(["sensor", "screen"][(h >> 16) as usize % 2].to_string());
            d.location = Some(format!("site{}/{g}/f{}", (h >> 24) as usize % sites, (h >> 32) % 3));
        }
        w.policy.separate_by = keys.iter().map(|k| k.to_string()).collect();
        if keys.contains(&"sla") {
            for (c, &h) in headroom.iter().enumerate() {
                w.policy.classes.insert(
                    format!("class{c}"),
                    ClassSpec { headroom: Some(h), priority: c as u32, ..Default::default() },
                );
            }
        }
        if let Some(weight) = together {
            w.policy.prefer_together = vec![Preference { key: "location:2".into(), weight }];
        }
        let inst = w.index().unwrap();
        match plan(&inst, None, Options::default()) {
            Ok(out) => {
                out.plan.compile().expect("the plan installs");
                proptest::prop_assert_eq!(&out.plan.policy, &w.policy);
                for (d, &s) in out.assignment.iter().enumerate() {
                    let c = inst.class[d] as usize;
                    proptest::prop_assert_eq!(
                        out.plan.shards[s as usize].class.as_deref(),
                        Some(inst.class_names[c].as_str())
                    );
                    proptest::prop_assert!(
                        out.loads[s as usize] <= inst.class_usable[c] * (1.0 + 1e-9),
                        "shard {} at {} above its class's usable {}",
                        s, out.loads[s as usize], inst.class_usable[c]
                    );
                }
                let mut class_of_shard = std::collections::HashMap::new();
                for (d, &s) in out.assignment.iter().enumerate() {
                    let c = inst.class[d];
                    let first = *class_of_shard.entry(s).or_insert(c);
                    proptest::prop_assert_eq!(
                        first, c,
                        "shard {} holds classes {} and {}",
                        s, &inst.class_names[first as usize], &inst.class_names[c as usize]
                    );
                }
                proptest::prop_assert_eq!(out.cost.overloaded_shards, 0);
            }
            Err(e) => proptest::prop_assert!(
                matches!(
                    e,
                    PlannerError::Infeasible(_)
                        | PlannerError::Overloaded { .. }
                        | PlannerError::FanOut { .. }
                        | PlannerError::BoundaryShards { .. }
                ),
                "{e}"
            ),
        }
    }
}

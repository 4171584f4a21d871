//! The planner on fleets of every shape of `shardcast_sim::shapes`: a plan
//! within capacity and fan-out where one exists, the known optimum where
//! it is known, infeasibility named with its bound, and more shards
//! allowed never giving a worse plan.

use router_common::maps::MAX_ROUTE_SHARDS;
use shardcast_planner::{Infeasible, Options, PlannerError, plan, workload::Instance};
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
        for max in [used, used + 2, used * 2] {
            let mut narrow = wide.clone();
            narrow.resources.max_shards = max;
            if let Ok(out) = plan(&narrow, None, Options::default()) {
                assert!(
                    best.cost.total <= out.cost.total * (1.0 + 1e-9),
                    "{shape:?}: max_shards 256 costs {} > {} at {max}",
                    best.cost.total,
                    out.cost.total
                );
            }
        }
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

//! The built-in "sla" scenario: a quarter of the sites premium, premium
//! shards kept 40% free and served first, on fewer shards than the daily
//! peak wants. The predictive strategy never overloads a premium shard;
//! the standard class absorbs the shortage.

use shardcast_sim::{Scenario, run};

#[test]
fn premium_is_never_overloaded_while_standard_absorbs_the_peak() {
    let sc = Scenario::builtin("sla", 2).unwrap();
    assert!(sc.fleet.premium_sites > 0.0 && !sc.policy.is_empty());
    let report = run(&sc, &mut |_, _| {}).unwrap();
    let by = |name: &str| report.totals.iter().find(|t| t.strategy == name).unwrap();
    let predictive = by("predictive");
    assert_eq!(predictive.premium_overload_minutes, 0, "{}", report.table());
    // Capacity really is short: the standard class is overloaded.
    assert!(
        predictive.overload_minutes > 0,
        "the scenario must be short of shards: {}",
        report.table()
    );
    // The static strategy ignores the policy (it hashes sites to shards)
    // and does overload premium sites: the policy is what protects them.
    assert!(
        by("static").premium_overload_minutes > 0,
        "{}",
        report.table()
    );
    assert!(report.table().contains("overload by class"));
}

#[test]
fn bad_class_settings_are_refused_before_running() {
    let mut sc = Scenario::builtin("sla", 1).unwrap();
    sc.fleet.premium_sites = 1.5;
    let e = run(&sc, &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("premium_sites"), "{e}");
    let mut sc = Scenario::builtin("sla", 1).unwrap();
    sc.policy.separate_by.clear();
    let e = run(&sc, &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("need \"sla\" in separate_by"), "{e}");
}

//! The checks behind every fuzz target (`fuzz/fuzz_targets/`), shared
//! with the regression test that replays the corpora and every crash ever
//! found (`tests/tests/fuzz_regressions.rs`): one source, so a fixed crash
//! stays fixed. Each takes any bytes; a panic is a finding.

#![allow(dead_code)]

use router_common::{
    coap::{self, PrefixStart},
    coap_reference,
    maps::PREFIX_MAX,
    topic::topic_key,
};
use router_common::{mqttsn, payload::Head};
use router_ctl::config::DaemonConfig;
use shardcast_forecast as forecast;
use shardcast_gateway::mqttsn as gateway;
use shardcast_plan::Plan;
use shardcast_planner::{Options, PlannerError, plan, workload::Workload};
use shardcast_records::history::{parse_csv, write_csv};
use shardcast_sim::Scenario;

fn coap_check(msg: &[u8], p: &[u8]) {
    let mut prefix = [0u8; PREFIX_MAX];
    prefix[..p.len()].copy_from_slice(p);
    let fast = coap::parse_publish_from(msg, &prefix, p.len(), &PrefixStart::encode(p));
    let walk = coap::parse_publish(msg, &prefix, p.len());
    assert_eq!(fast.map(|r| r.key), walk.map(|r| r.key));
    // Routed exactly when RFC 7252, read plainly, sees a publish under
    // the prefix, and to the same topic.
    let rfc = coap_reference::publish_topic(msg, p);
    assert_eq!(
        walk.ok().map(|r| (r.key, r.topic_len)),
        rfc.map(|t| (topic_key(&t), t.len()))
    );
}

/// The CoAP publish parser on any message, under the default prefix and
/// under one taken from the input (when it is one the product accepts):
/// never a panic; the fast start agrees with the option walk, and both
/// with the plain RFC 7252 reading (`router_common::coap_reference`). (Its first
/// finding: they disagree for prefixes that are not in normal form, which
/// the product refuses; kept in fuzz/regressions/coap/.)
pub fn coap(data: &[u8]) {
    coap_check(data, b"ps/data/");
    if let Some((&n, rest)) = data.split_first() {
        let n = (n as usize % PREFIX_MAX).min(rest.len());
        let (p, msg) = rest.split_at(n);
        // Only prefixes the product can be configured with (the config,
        // the CLI and the data plane all insist on the normal form).
        if let Ok(text) = std::str::from_utf8(p)
            && shardcast_plan::normalize_prefix(text).as_deref() == Ok(text)
        {
            coap_check(msg, p);
        }
    }
}

/// The daemon's config: any text is a config or an error naming a key.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = DaemonConfig::from_toml(text, "fuzz.toml");
}

/// The forecaster's inputs: history series, forecast rates, device
/// status, horizons; never a panic, never an allocation past its limits.
pub fn forecast_csv(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for step in [60, 3600] {
        let _ = forecast::series_from_csv(text, step);
        let _ = forecast::rates_from_csv(text, "1h", false, step);
        let _ = forecast::parse_horizons(text, step);
    }
    if let Ok(rows) = shardcast_records::history::parse_csv_lines(text) {
        let _ = forecast::series_from_rows(rows.clone(), forecast::infer_bucket(&rows));
    }
    let _ = forecast::status_from_csv(text);
}

/// History CSV: any text parses or is refused with a line; what parses
/// writes back and parses again to the same rows.
pub fn history_csv(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rows) = parse_csv(text) {
        for rfc in [false, true] {
            let mut out = Vec::new();
            write_csv(&rows, rfc, &mut out).expect("parsed rows write");
            let back = parse_csv(std::str::from_utf8(&out).unwrap()).expect("written rows parse");
            assert_eq!(back, rows);
        }
    }
}

/// The MQTT-SN PUBLISH parser on any datagram: never a panic; a parsed
/// publish keys the same whether read whole or from its head. And the
/// gateway's codec: a decoded message encodes back to one that decodes
/// the same, and a publish the data plane routes is one the gateway reads
/// with the same topic id.
pub fn mqttsn(data: &[u8]) {
    let whole = mqttsn::parse_publish(data);
    let head = mqttsn::parse_publish(&Head::<{ mqttsn::HEADER_READ }>::of(data));
    assert_eq!(whole.map(|p| p.key()), head.map(|p| p.key()));
    let decoded = gateway::decode(data);
    if let Ok(m) = &decoded {
        let again = gateway::encode(m).expect("a decoded message encodes");
        assert_eq!(gateway::decode(&again).as_ref(), Ok(m));
    }
    if let Ok(p) = whole {
        match decoded {
            Ok(gateway::Message::Publish { topic_id, .. }) => assert_eq!(topic_id, p.topic_id),
            other => panic!("the data plane routes {data:02x?}, the gateway reads {other:?}"),
        }
    }
}

/// Plan documents: parse and validate any text without a panic; a plan
/// that compiles writes out and reads back the same.
pub fn plan_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(plan) = Plan::from_json(text)
        && plan.compile().is_ok()
    {
        let again = Plan::from_json(&plan.to_json()).expect("a written plan reads back");
        assert_eq!(again, plan);
    }
}

/// Scenario files: parse and validate any text without a panic or an
/// allocation past the documented limits.
pub fn scenario_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sc) = serde_json::from_str::<Scenario>(text) {
        let _ = sc.validate();
    }
}

/// Workloads: parse, validate and (when small) plan any text without a
/// panic; what the planner emits always compiles.
pub fn workload_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(w) = serde_json::from_str::<Workload>(text) else {
        return;
    };
    let Ok(inst) = w.index() else { return };
    if inst.devices.len() <= 64 && inst.topics.len() <= 64 && inst.resources.max_shards <= 64 {
        // A plan returned without best effort has no shard over capacity;
        // where capacity is what stopped it, best effort gives a plan.
        let strict = plan(&inst, None, Options::default());
        match &strict {
            Ok(out) => {
                out.plan.compile().expect("the planner's plans install");
                assert_eq!(
                    out.cost.overloaded_shards, 0,
                    "an overloaded plan without best effort"
                );
            }
            Err(PlannerError::Infeasible(_) | PlannerError::Overloaded { .. }) => {
                let best = Options {
                    best_effort: true,
                    ..Default::default()
                };
                if let Ok(out) = plan(&inst, None, best) {
                    out.plan.compile().expect("best-effort plans install");
                }
            }
            Err(_) => {}
        }
    }
}

//! The XDP program against the host model on generated and mutated
//! frames: verdict, output bytes, reason counters and unrouted keys agree
//! on every one (`SHARDCAST_DIFF_FRAMES`, default 100,000 here; `cargo
//! xtask fuzz` runs a million).

use integration_tests::{differential, xdp::lab};
use shardcast_dataplane::FanoutPath;

#[test]
fn the_router_and_the_host_model_agree_on_every_frame() {
    let n: u64 = std::env::var("SHARDCAST_DIFF_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("SHARDCAST_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let report = lab()
        .run(move || differential::run(n, seed, |_| {}))
        .unwrap()
        .unwrap();
    eprintln!("{report}");
    assert_eq!(report.frames, n);
    // Multi-shard publishes, by broadcast or (a kernel that refused the
    // copy program) by TC.
    assert!(
        ["broadcast", "fanned_out"]
            .iter()
            .any(|r| report.passed.get(r).is_some_and(|c| *c > 0)),
        "{report}"
    );
    // The generator reaches both verdicts and the interesting reasons.
    assert!(report.redirected > n / 50, "{report}");
    assert!(report.bytes_compared > n / 100, "{report}");
    // And CoAP verdicts met the RFC 7252 reading often.
    assert!(report.coap_checked > n / 20, "{report}");
    for reason in [
        "mqttsn_control",
        "coap_malformed",
        "coap_too_many_options",
        "coap_beyond_window",
        "no_route",
        "truncated",
    ] {
        assert!(
            report.passed.get(reason).is_some_and(|c| *c > 0),
            "{reason}: {report}"
        );
    }
}

/// The same with every multi-shard publish handed to the TC fan-out (what
/// a kernel that refuses the copy program, generic XDP or `--fanout tc`
/// get): the hand-off in the metadata, passed up, counted `fanned_out`.
#[test]
fn the_router_and_the_host_model_agree_with_the_tc_fan_out() {
    let n = 20_000;
    let report = lab()
        .run(move || differential::run_with(n, 2, FanoutPath::Tc, |_| {}))
        .unwrap()
        .unwrap();
    assert_eq!(report.frames, n);
    assert!(
        report.passed.get("fanned_out").is_some_and(|c| *c > 0),
        "{report}"
    );
    assert!(!report.passed.contains_key("broadcast"), "{report}");
}

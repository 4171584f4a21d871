//! The XDP program against the host model on generated and mutated
//! frames: verdict, output bytes, reason counters and unrouted keys agree
//! on every one (`SHARDCAST_DIFF_FRAMES`, default 100,000 here; `cargo
//! xtask fuzz` runs a million).

use integration_tests::{differential, xdp::lab};

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
        "broadcast",
        "truncated",
    ] {
        assert!(
            report.passed.get(reason).is_some_and(|c| *c > 0),
            "{reason}: {report}"
        );
    }
}

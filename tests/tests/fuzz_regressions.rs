//! Every fuzz target's checks (`fuzz/checks.rs`, the same source the
//! fuzzers run) over the seed corpora and every input a fuzzer ever
//! crashed (`fuzz/regressions/<target>/`, kept by `cargo xtask fuzz`): a
//! fixed crash stays fixed, on stable Rust, in every test run.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::Path;

type Check = fn(&[u8]);

const TARGETS: &[(&str, Check)] = &[
    ("mqttsn", checks::mqttsn),
    ("coap", checks::coap),
    ("plan_json", checks::plan_json),
    ("workload_json", checks::workload_json),
    ("scenario_json", checks::scenario_json),
    ("history_csv", checks::history_csv),
    ("forecast_csv", checks::forecast_csv),
    ("config_toml", checks::config_toml),
];

#[test]
fn seed_corpora_and_past_crashes_pass_every_check() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut seen = 0;
    for (target, check) in TARGETS {
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
                continue;
            };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).unwrap();
                let r = std::panic::catch_unwind(|| check(&data));
                assert!(r.is_ok(), "{target}: {} panics", e.path().display());
                seen += 1;
            }
        }
    }
    // Every target has seeds.
    assert!(seen >= TARGETS.len(), "only {seen} inputs");
}

//! `cargo xtask fuzz [--secs N] [--frames N] [--target NAME]`: the
//! differential run of the XDP program against the host model (a million
//! generated and mutated frames by default), then every cargo-fuzz target
//! (`fuzz/`) for `--secs` seconds each. Inputs that crash a target are
//! copied into `fuzz/regressions/<target>/`, which every test run replays
//! (`tests/tests/fuzz_regressions.rs`): commit them with the fix.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::build;

/// The cargo-fuzz targets (`fuzz/Cargo.toml`).
pub const TARGETS: &[&str] = &[
    "mqttsn",
    "coap",
    "plan_json",
    "workload_json",
    "scenario_json",
    "history_csv",
    "forecast_csv",
    "config_toml",
];

pub fn run(secs: u64, frames: u64, only: Option<&str>) -> Result<()> {
    if let Some(t) = only
        && !TARGETS.contains(&t)
    {
        bail!("--target {t:?}: the targets are {}", TARGETS.join(", "));
    }
    crate::setup::ensure()?;
    let objects = build::build_ebpf()?;
    let root = build::root();
    if frames > 0 {
        eprintln!("fuzz: differential run of {frames} frames through the XDP program");
        let mut env = objects.env();
        env.push(("SHARDCAST_DIFF_FRAMES".into(), frames.to_string()));
        build::cargo(
            &[
                "test",
                "--release",
                "-p",
                "integration-tests",
                "--test",
                "differential",
                "--",
                "--nocapture",
            ],
            &env,
        )?;
    }
    if secs == 0 {
        return Ok(());
    }
    cargo_fuzz()?;
    // Built first, on their own: a target that does not compile is a build
    // error, not a crash (libFuzzer's exit status cannot tell them apart).
    let mut build = Command::new("rustup");
    build.args([
        "run",
        "nightly",
        "cargo",
        "fuzz",
        "build",
        "--fuzz-dir",
        "fuzz",
    ]);
    if let Some(t) = only {
        build.arg(t);
    }
    let built = build
        .current_dir(&root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .status()
        .context("running cargo fuzz build")?;
    if !built.success() {
        bail!("building the fuzz targets failed (see the compiler's output above)");
    }
    let mut crashed = Vec::new();
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        eprintln!("fuzz: {target} for {secs} s");
        // New inputs go to a working corpus under target/, the committed
        // seeds stay as they are.
        let work = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&work)?;
        let status = Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "fuzz",
                "run",
                "--fuzz-dir",
                "fuzz",
                target,
            ])
            .arg(&work)
            .arg(root.join("fuzz/corpus").join(target))
            .args([
                "--",
                &format!("-max_total_time={secs}"),
                "-rss_limit_mb=4096",
                "-max_len=65536",
                "-print_final_stats=1",
            ])
            .current_dir(&root)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            if keep_crashes(&root, target)? == 0 {
                bail!("fuzz target {target} failed without a crash input (see its output above)");
            }
            crashed.push(*target);
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {} (inputs copied to fuzz/regressions/)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// Copies what libFuzzer left in `fuzz/artifacts/<target>/` into the
/// regression inputs.
/// Copies the target's crash inputs to fuzz/regressions/; returns how many.
fn keep_crashes(root: &Path, target: &str) -> Result<usize> {
    let from = root.join("fuzz/artifacts").join(target);
    let to = root.join("fuzz/regressions").join(target);
    let mut kept = 0;
    for e in std::fs::read_dir(&from).into_iter().flatten().flatten() {
        std::fs::create_dir_all(&to)?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
        eprintln!("fuzz: kept {}", to.join(e.file_name()).display());
        kept += 1;
    }
    Ok(kept)
}

/// Installs cargo-fuzz when missing (idempotent).
fn cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("fuzz: installing cargo-fuzz");
        build::cargo(&["install", "--locked", "cargo-fuzz@0.13.2"], &[])?;
    }
    Ok(())
}

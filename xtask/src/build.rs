//! Building the eBPF objects (the router and the benchmark references).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Paths of the built objects.
pub struct Objects {
    pub router: PathBuf,
    pub reference: PathBuf,
}

impl Objects {
    /// Environment telling router-ctl and the tests where the objects are.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SHARDCAST_OBJECT".into(), self.router.display().to_string()),
            (
                "SHARDCAST_REFERENCE_OBJECT".into(),
                self.reference.display().to_string(),
            ),
        ]
    }
}

/// Runs cargo in the workspace root with extra environment.
pub fn cargo(args: &[&str], env: &[(String, String)]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds router-ebpf for bpfel-unknown-none and copies each binary to
/// `target/bpf/<name>.o`. The object's path is taken from cargo's JSON
/// messages, not guessed.
pub fn build_ebpf() -> Result<Objects> {
    let root = root();
    let out_dir = root.join("target/bpf");
    std::fs::create_dir_all(&out_dir)?;
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
        "--message-format=json-render-diagnostics",
        "--bins",
    ])
    .current_dir(root.join("router-ebpf"))
    .env("CARGO_TARGET_DIR", root.join("target/ebpf"))
    // BTF is required for the map-in-map definitions (#[btf_map]).
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
    )
    .env_remove("RUSTUP_TOOLCHAIN")
    .env_remove("RUSTC")
    .env_remove("CARGO")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .context("running cargo +nightly build for router-ebpf")?;
    if !out.status.success() {
        bail!("building router-ebpf failed ({})", out.status);
    }
    let mut built = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && let Some(exe) = msg["executable"].as_str()
        {
            let name = msg["target"]["name"]
                .as_str()
                .unwrap_or("object")
                .to_string();
            built.push((name, PathBuf::from(exe)));
        }
    }
    let copy = |name: &str| -> Result<PathBuf> {
        let (_, src) = built
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("cargo reported no artifact for {name}"))?;
        let dst = out_dir.join(format!("{name}.o"));
        std::fs::copy(src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        Ok(dst)
    };
    Ok(Objects {
        router: copy("router-ebpf")?,
        reference: copy("bench-reference")?,
    })
}

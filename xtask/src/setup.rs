//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks, the
//! recipe of shared/TOOLCHAIN.md. Every step checks first and does nothing
//! when already done.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Debian packages the build, the tests and the demo use, each with a
/// command that proves it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    ("tcpdump", "tcpdump"),
    ("tshark", "tshark"),
    ("libcoap3-bin", "coap-client-notls"),
    ("ethtool", "ethtool"),
    // The end-to-end benchmark's broker to compare against (it starts its
    // own instance in the lab; the package's system service is stopped).
    ("mosquitto", "mosquitto"),
];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn ensure() -> Result<()> {
    packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, cmd)| !have(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    if missing.contains(&"mosquitto") {
        // Debian starts a broker on the host at install: the benchmark
        // needs none (best effort: no systemd, no service).
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "mosquitto"])
            .status();
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
            .context("the nightly toolchain is required (rustup toolchain list)")?,
    ))
}

fn rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    let library = sysroot.join("lib/rustlib/src/rust/library");
    if library.exists() {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to nightly");
    let added = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .is_ok_and(|s| s.success());
    if added && library.exists() {
        return Ok(());
    }
    // Fallback from TOOLCHAIN.md: the vendored component beside the repo.
    let tarball =
        super::build::root().join("../shared/vendor/rust-src-nightly-1.97.0-2026-05-19.tar.xz");
    if !tarball.exists() {
        bail!(
            "rust-src is missing and neither rustup nor {} could provide it",
            tarball.display()
        );
    }
    run(Command::new("tar")
        .arg("-xJf")
        .arg(&tarball)
        .arg("-C")
        .arg(sysroot.join("lib/rustlib")))?;
    if !library.exists() {
        bail!(
            "extracted {} but {} is still missing",
            tarball.display(),
            library.display()
        );
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    // bpf-linker must link against the LLVM that rustc nightly ships: a
    // prefix with libLLVM.so and the versioned soname, both pointing at it.
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or("")
        .to_string();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let prefix = Path::new(&home).join(".cache/shardcast/llvm-prefix");
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib)?;
    for link in [plib.join("libLLVM.so"), plib.join(&llvm)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("setup: building bpf-linker against rustc's LLVM {major}");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

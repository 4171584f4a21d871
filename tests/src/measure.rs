//! What the benchmarks report (medians, this process's memory) and the
//! Python venv the reference tools run in.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

/// The median (mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A `kB` field of /proc/self/status, in MiB (0 if unreadable).
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Resident memory now.
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// Highest resident memory so far.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Resets the peak [`peak_rss_mib`] reports to the current RSS.
pub fn reset_peak_rss() {
    // "5" in clear_refs resets VmHWM (proc(5)).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The bench's venv under `target/` with `spec` installed (checked by
/// importing `module`), made or extended once.
pub fn bench_python(target: &Path, module: &str, spec: &str) -> Result<PathBuf> {
    let venv = target.join("bench-venv");
    let python = venv.join("bin/python");
    let ok = |p: &Path| {
        Command::new(p)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ok(&python) {
        return Ok(python);
    }
    if !python.exists() {
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        if !st.success() {
            bail!("python3 -m venv failed (Debian: apt install python3-venv)");
        }
    }
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", spec])
        .output()?;
    if !out.status.success() || !ok(&python) {
        bail!(
            "pip install {spec} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(python)
}

/// The host's CPU model (`/proc/cpuinfo`): every benchmark table names it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The kernel's run-time accounting of BPF programs
/// (`kernel.bpf_stats_enabled`), on while this guard lives and set back to
/// what it was when it drops.
pub struct BpfStats(String);

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let was = crate::sh("sysctl", &["-n", "kernel.bpf_stats_enabled"])?
            .trim()
            .to_string();
        crate::sh("sysctl", &["-q", "-w", "kernel.bpf_stats_enabled=1"])?;
        Ok(BpfStats(was))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = crate::sh(
            "sysctl",
            &["-q", "-w", &format!("kernel.bpf_stats_enabled={}", self.0)],
        );
    }
}

/// (run time ns, run count) of the program pinned at `path`, from the
/// kernel's accounting (`bpftool prog show`; see [`BpfStats`]).
pub fn prog_stats(path: &Path) -> Result<(u64, u64)> {
    let out = crate::sh(
        "bpftool",
        &["-j", "prog", "show", "pinned", &path.display().to_string()],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok((
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// A process's CPU seconds so far (user and system, /proc/<pid>/stat).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: the state, ppid ...
    // utime (11th) and stime (12th).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (field(11) + field(12)) as f64 / hz
}

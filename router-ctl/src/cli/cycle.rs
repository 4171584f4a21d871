//! `router-ctl cycle`: the control cycle's mode and its last decisions
//! (the daemon's decision log), and switching the mode at run time.

use std::fmt;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::Globals;
use crate::{cycle::Mode, state};

#[derive(Args, Debug)]
pub struct CycleArgs {
    /// Switch the running daemon's mode (`predictive`, `reactive`,
    /// `advise`), or `config` to go back to `cycle.mode`. Takes effect at
    /// the daemon's next tick and lasts across restarts until changed.
    #[arg(long)]
    pub mode: Option<String>,
    /// How many of the last decisions to show.
    #[arg(long, default_value_t = 5)]
    pub last: usize,
}

#[derive(Serialize)]
struct View {
    /// The run-time override, if any (else the config's `cycle.mode`).
    mode_override: Option<String>,
    decisions: Vec<serde_json::Value>,
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode_override {
            Some(m) => writeln!(f, "mode: {m} (set at run time)")?,
            None => writeln!(f, "mode: as cycle.mode in the daemon's config")?,
        }
        if self.decisions.is_empty() {
            writeln!(f, "no decision logged yet")?;
        }
        for d in &self.decisions {
            writeln!(f, "{}", summary(d))?;
        }
        Ok(())
    }
}

/// One decision in a line: when, mode, what started it, what it did, why.
pub(crate) fn summary(d: &serde_json::Value) -> String {
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let trigger = d
        .get("trigger")
        .and_then(|t| t.get("kind"))
        .and_then(|k| k.as_str())
        .unwrap_or("?");
    let generation = d
        .get("generation")
        .and_then(|g| g.as_u64())
        .map(|g| format!(" generation {g}"))
        .unwrap_or_default();
    format!(
        "unix {} {} [{trigger}] {}{generation}: {}",
        d.get("at").and_then(|v| v.as_u64()).unwrap_or(0),
        s("mode"),
        s("action"),
        s("reason")
    )
}

/// The last `n` decisions of the log in `dir` (oldest first).
pub(crate) fn last_decisions(dir: &std::path::Path, n: usize) -> Result<Vec<serde_json::Value>> {
    let path = state::decisions_file(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!("{} line {}: not a decision", path.display(), from + i + 1)
            })
        })
        .collect()
}

pub fn run(g: &Globals, a: CycleArgs) -> Result<()> {
    let file = state::mode_file(&g.state_dir);
    match a.mode.as_deref() {
        None => {}
        Some("config") => match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        },
        Some(m) => {
            let mode: Mode = match m.parse() {
                Ok(mode) => mode,
                Err(e) => bail!("--mode: {e}, or config"),
            };
            std::fs::create_dir_all(&g.state_dir)
                .with_context(|| format!("creating {}", g.state_dir.display()))?;
            state::write_atomically(&file, |w| writeln!(w, "{}", mode.label()))?;
        }
    }
    let mode_override = std::fs::read_to_string(&file)
        .ok()
        .map(|t| t.trim().to_string());
    g.print(&View {
        mode_override,
        decisions: last_decisions(&g.state_dir, a.last)?,
    })
}

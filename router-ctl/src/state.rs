//! The files the CLI and the daemon keep beside the pins: the installed
//! plan document (`<state dir>/plan.json`), which gives topic names to the
//! keys `maps dump`, `stats` and the daemon's telemetry read back from the
//! kernel. One place writes and reads them, so both agree on the path and
//! on how a file is replaced (whole or not at all).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use router_common::topic::TopicKey;
use shardcast_plan::Plan;

/// Where the CLI and the daemon keep the installed plan unless told
/// otherwise (`--state-dir`, `daemon.state_dir`): one default, so a plan
/// the daemon installed is named by `router-ctl maps dump` too.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shardcast";

/// The installed plan's copy in `dir`.
pub fn plan_file(dir: &Path) -> PathBuf {
    dir.join("plan.json")
}

/// Keeps `plan` as the installed plan's copy in `dir`, atomically.
pub fn save_plan(dir: &Path, plan: &Plan) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomically(&plan_file(dir), |w| w.write_all(plan.to_json().as_bytes()))
}

/// The installed plan's copy in `dir`, if it is of `generation` and valid.
pub fn load_plan(dir: &Path, generation: u64) -> Option<Plan> {
    Plan::from_file(&plan_file(dir))
        .ok()
        .filter(|p| p.generation == generation)
}

/// The installed plan's copy in `dir`, whatever its generation (for a
/// process without the data plane's maps, such as the gateway).
pub fn load_installed_plan(dir: &Path) -> Option<Plan> {
    Plan::from_file(&plan_file(dir)).ok()
}

/// The run-time mode of the control cycle (`router-ctl cycle --mode`),
/// overriding `cycle.mode` while it exists.
pub fn mode_file(dir: &Path) -> PathBuf {
    dir.join("cycle-mode")
}

/// The control cycle's decision log: one JSON object per cycle.
pub fn decisions_file(dir: &Path) -> PathBuf {
    dir.join("decisions.jsonl")
}

/// The decision log is rotated (to `decisions.jsonl.1`) past this size.
pub const DECISIONS_MAX_BYTES: u64 = 64 << 20;

/// Appends one line to the decision log, rotating it first when full.
pub fn append_decision(dir: &Path, line: &str) -> Result<()> {
    let path = decisions_file(dir);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= DECISIONS_MAX_BYTES) {
        std::fs::rename(&path, path.with_extension("jsonl.1"))
            .with_context(|| format!("rotating {}", path.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // One write per line: a reader never sees half a decision.
    f.write_all(format!("{line}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The migration in progress: the plan devices move from and the one
/// they move to. Kept from the transition's install until the last batch
/// resolves, so that a daemon killed in between picks the migration up
/// where the data plane is (the transition installed) and sends the
/// commands again.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct MigrationRecord {
    pub old: Plan,
    pub new: Plan,
}

/// The latency probes' last report (`crate::probe::ProbeReport`).
pub fn probes_file(dir: &Path) -> PathBuf {
    dir.join("probes.json")
}

pub fn migration_file(dir: &Path) -> PathBuf {
    dir.join("migration.json")
}

pub fn save_migration(dir: &Path, old: &Plan, new: &Plan) -> Result<()> {
    let rec = MigrationRecord {
        old: old.clone(),
        new: new.clone(),
    };
    write_atomically(&migration_file(dir), |w| {
        serde_json::to_writer(w, &rec).map_err(std::io::Error::other)
    })
}

/// The migration record in `dir`, if any (a record that does not parse
/// is an error: it is not silently dropped).
pub fn load_migration(dir: &Path) -> Result<Option<MigrationRecord>> {
    let path = migration_file(dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("{} is not a migration record", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn forget_migration(dir: &Path) {
    let _ = std::fs::remove_file(migration_file(dir));
}

/// Removes the installed plan's copy (after a detach).
pub fn forget_plan(dir: &Path) {
    let _ = std::fs::remove_file(plan_file(dir));
}

/// Writes `path` whole or not at all: into a hidden file beside it, then
/// renamed over it, so readers never see half a file. A path that exists
/// and is not a regular file (`/dev/stdout`, a pipe) is written in place.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        return write(&mut f).with_context(|| format!("writing {}", path.display()));
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let written = std::fs::File::create(&tmp).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        write(&mut w)?;
        w.flush()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Names for the installed keys, from the saved plan if it is the
/// installed generation (empty otherwise: keys are then shown as hashes).
pub fn key_names(dir: &Path, generation: u64) -> BTreeMap<TopicKey, String> {
    let mut out = BTreeMap::new();
    let Some(plan) = load_plan(dir, generation) else {
        return out;
    };
    if let Ok(c) = plan.compile() {
        for r in &c.routes {
            let name = &c.topics[r.topic];
            let label = if r.key == c.name_keys[r.topic] {
                name.clone()
            } else {
                format!("{name} (MQTT-SN id)")
            };
            out.insert(r.key, label);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_whole() {
        let dir = std::env::temp_dir().join(format!("sc-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.txt");
        write_atomically(&p, |w| w.write_all(b"old")).unwrap();
        let err = write_atomically(&p, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        assert!(!dir.join(".f.txt.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

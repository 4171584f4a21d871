//! Telemetry history: publish counts per (bucket, topic, device group), in
//! an embedded redb database.
//!
//! redb (pure Rust, copy-on-write B-trees, checksummed atomic commits) gives
//! the crash safety the daemon needs without a C dependency: each bucket is
//! written by one transaction, so `kill -9` at any moment leaves either the
//! whole bucket or none of it, and the file is never corrupt.
//!
//! Layout: one row per bucket, its value a compact sorted list of
//! `(topic id, group id, count)` triples; topic and group names are interned
//! in their own tables. A bucket of 100k topics is then one insert of ~1.6
//! MB rather than 100k inserts, which keeps the daemon's tick short.
//! Buckets older than the retention are merged into coarser buckets
//! (`downsample_to`), never dropped.

use rustc_hash::FxHashMap as HashMap;
use std::{collections::BTreeMap, path::Path, time::Duration};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Fine buckets: bucket start (unix s) → encoded triples.
const FINE: TableDefinition<u64, &[u8]> = TableDefinition::new("fine");
/// Downsampled buckets, same encoding.
const COARSE: TableDefinition<u64, &[u8]> = TableDefinition::new("coarse");
const TOPICS: TableDefinition<&str, u32> = TableDefinition::new("topic_ids");
const GROUPS: TableDefinition<&str, u32> = TableDefinition::new("group_ids");
/// Settings the file was created with.
const SETTINGS: TableDefinition<&str, u64> = TableDefinition::new("settings");
/// The data-plane counter readings the stored buckets account for, written
/// in the same transaction as the buckets: a daemon restarted after a crash
/// counts everything since from there, so nothing is lost or counted twice.
const BASELINE: TableDefinition<&str, &[u8]> = TableDefinition::new("baseline");

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history database {path}: {reason}")]
    Db { path: String, reason: String },
    #[error(
        "history database {path} was created with {key} = {found}s, the config says {want}s; \
         export it, move it away and import into a new one"
    )]
    Settings {
        path: String,
        key: &'static str,
        found: u64,
        want: u64,
    },
    #[error(transparent)]
    Csv(#[from] shardcast_records::RecordError),
    #[error(
        "a count of the bucket at unix {bucket} would exceed {} (2^64 - 1): nothing was added",
        u64::MAX
    )]
    Overflow { bucket: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type Result<T, E = HistoryError> = std::result::Result<T, E>;

/// Bucket sizes and retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub bucket: Duration,
    pub retention: Duration,
    pub downsample_to: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bucket: Duration::from_secs(60),
            retention: Duration::from_secs(35 * 86_400),
            downsample_to: Duration::from_secs(3_600),
        }
    }
}

pub use shardcast_records::history::Row;

/// The open history.
pub struct History {
    db: Database,
    path: String,
    settings: Settings,
    topic_ids: HashMap<String, u32>,
    group_ids: HashMap<String, u32>,
}

/// (topic id, group id) → count.
type Cells = BTreeMap<(u32, u32), u64>;

fn encode(cells: &Cells) -> Vec<u8> {
    let mut v = Vec::with_capacity(cells.len() * 16);
    for ((t, g), c) in cells {
        v.extend_from_slice(&t.to_le_bytes());
        v.extend_from_slice(&g.to_le_bytes());
        v.extend_from_slice(&c.to_le_bytes());
    }
    v
}

/// Adds the encoded cells to `into`; `None` if a count would pass
/// `u64::MAX` (then `into` is partly added to: the caller drops it).
#[must_use]
fn decode(bytes: &[u8], into: &mut Cells) -> Option<()> {
    for c in bytes.chunks_exact(16) {
        let t = u32::from_le_bytes(c[0..4].try_into().expect("4 bytes"));
        let g = u32::from_le_bytes(c[4..8].try_into().expect("4 bytes"));
        let n = u64::from_le_bytes(c[8..16].try_into().expect("8 bytes"));
        let cell = into.entry((t, g)).or_default();
        *cell = cell.checked_add(n)?;
    }
    Some(())
}

impl History {
    /// Opens (creating if needed) the database at `path`. A database made
    /// with other bucket sizes is refused, never reinterpreted.
    pub fn open(path: &Path, settings: Settings) -> Result<History> {
        let p = path.display().to_string();
        let db_err = |e: &dyn std::fmt::Display| HistoryError::Db {
            path: p.clone(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path).map_err(|e| db_err(&e))?;
        let mut h = History {
            db,
            path: p.clone(),
            settings,
            topic_ids: HashMap::default(),
            group_ids: HashMap::default(),
        };
        let txn = h.db.begin_write().map_err(|e| db_err(&e))?;
        {
            let mut s = txn.open_table(SETTINGS).map_err(|e| db_err(&e))?;
            for (key, want) in [
                ("bucket", settings.bucket.as_secs()),
                ("downsample_to", settings.downsample_to.as_secs()),
            ] {
                let found = s.get(key).map_err(|e| db_err(&e))?.map(|v| v.value());
                match found {
                    Some(found) if found != want => {
                        return Err(HistoryError::Settings {
                            path: p,
                            key,
                            found,
                            want,
                        });
                    }
                    Some(_) => {}
                    None => {
                        s.insert(key, want).map_err(|e| db_err(&e))?;
                    }
                }
            }
            txn.open_table(FINE).map_err(|e| db_err(&e))?;
            txn.open_table(COARSE).map_err(|e| db_err(&e))?;
            let t = txn.open_table(TOPICS).map_err(|e| db_err(&e))?;
            for kv in t.iter().map_err(|e| db_err(&e))? {
                let (k, v) = kv.map_err(|e| db_err(&e))?;
                h.topic_ids.insert(k.value().to_string(), v.value());
            }
            let g = txn.open_table(GROUPS).map_err(|e| db_err(&e))?;
            for kv in g.iter().map_err(|e| db_err(&e))? {
                let (k, v) = kv.map_err(|e| db_err(&e))?;
                h.group_ids.insert(k.value().to_string(), v.value());
            }
        }
        txn.commit().map_err(|e| db_err(&e))?;
        Ok(h)
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    fn err(&self, e: impl std::fmt::Display) -> HistoryError {
        HistoryError::Db {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Start of the bucket holding unix time `ts`.
    pub fn bucket_of(&self, ts: u64) -> u64 {
        let b = self.settings.bucket.as_secs();
        ts - ts % b
    }

    fn coarse_of(&self, ts: u64) -> u64 {
        let b = self.settings.downsample_to.as_secs();
        ts - ts % b
    }

    /// Adds `rows` (topic, group, count) to the bucket holding `ts`, in one
    /// transaction (with any rows already there), then downsamples what
    /// has aged past the retention as of `now`. Timestamps older than the
    /// retention go straight to the coarse table.
    pub fn add<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (u64, &'a str, &'a str, u64)>,
        now: u64,
    ) -> Result<()> {
        self.add_with_baseline(rows, now, None)
    }

    /// [`add`](Self::add), recording in the same transaction the counter
    /// readings (`(slot, group) → packets`) these rows account for.
    pub fn add_with_baseline<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (u64, &'a str, &'a str, u64)>,
        now: u64,
        baseline: Option<&BTreeMap<(u32, u32), u64>>,
    ) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        // Interned ids are committed with the rows or not at all: on any
        // failure the in-memory maps are rebuilt from the database.
        let written = self
            .fill(&txn, rows, now, baseline)
            .and_then(|()| txn.commit().map_err(|e| self.err(e)));
        if let Err(e) = written {
            self.reload_ids()?;
            return Err(e);
        }
        Ok(())
    }

    /// The writes of [`add_with_baseline`](Self::add_with_baseline), in
    /// `txn`.
    fn fill<'a>(
        &mut self,
        txn: &redb::WriteTransaction,
        rows: impl IntoIterator<Item = (u64, &'a str, &'a str, u64)>,
        now: u64,
        baseline: Option<&BTreeMap<(u32, u32), u64>>,
    ) -> Result<()> {
        let overflow = |ts: u64| HistoryError::Overflow { bucket: ts };
        if let Some(b) = baseline {
            let mut t = txn.open_table(BASELINE).map_err(|e| self.err(e))?;
            t.insert("group_counters", encode(b).as_slice())
                .map_err(|e| self.err(e))?;
        }
        let horizon = now.saturating_sub(self.settings.retention.as_secs());
        {
            let mut topics = txn.open_table(TOPICS).map_err(|e| self.err(e))?;
            let mut groups = txn.open_table(GROUPS).map_err(|e| self.err(e))?;
            let mut by_bucket: BTreeMap<(bool, u64), Cells> = BTreeMap::new();
            for (ts, topic, group, count) in rows {
                let t = match self.topic_ids.get(topic) {
                    Some(id) => *id,
                    None => {
                        let id = self.topic_ids.len() as u32;
                        topics.insert(topic, id).map_err(|e| self.err(e))?;
                        self.topic_ids.insert(topic.to_string(), id);
                        id
                    }
                };
                let g = match self.group_ids.get(group) {
                    Some(id) => *id,
                    None => {
                        let id = self.group_ids.len() as u32;
                        groups.insert(group, id).map_err(|e| self.err(e))?;
                        self.group_ids.insert(group.to_string(), id);
                        id
                    }
                };
                let key = if ts < horizon {
                    (true, self.coarse_of(ts))
                } else {
                    (false, self.bucket_of(ts))
                };
                let cell = by_bucket.entry(key).or_default().entry((t, g)).or_default();
                *cell = cell.checked_add(count).ok_or(overflow(key.1))?;
            }
            let mut fine = txn.open_table(FINE).map_err(|e| self.err(e))?;
            let mut coarse = txn.open_table(COARSE).map_err(|e| self.err(e))?;
            for ((is_coarse, ts), mut cells) in by_bucket {
                let table = if is_coarse { &mut coarse } else { &mut fine };
                if let Some(old) = table.get(ts).map_err(|e| self.err(e))? {
                    decode(old.value(), &mut cells).ok_or(overflow(ts))?;
                }
                table
                    .insert(ts, encode(&cells).as_slice())
                    .map_err(|e| self.err(e))?;
            }
            // Downsample fine buckets that aged past the retention.
            let aged: Vec<u64> = fine
                .range(..horizon)
                .map_err(|e| self.err(e))?
                .map(|kv| kv.map(|(k, _)| k.value()))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?;
            let mut merged: BTreeMap<u64, Cells> = BTreeMap::new();
            for ts in aged {
                let v = fine.remove(ts).map_err(|e| self.err(e))?.expect("listed");
                let into = self.coarse_of(ts);
                decode(v.value(), merged.entry(into).or_default()).ok_or(overflow(into))?;
            }
            for (ts, mut cells) in merged {
                if let Some(old) = coarse.get(ts).map_err(|e| self.err(e))? {
                    decode(old.value(), &mut cells).ok_or(overflow(ts))?;
                }
                coarse
                    .insert(ts, encode(&cells).as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    fn reload_ids(&mut self) -> Result<()> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        self.topic_ids.clear();
        self.group_ids.clear();
        for (def, into) in [(TOPICS, &mut self.topic_ids), (GROUPS, &mut self.group_ids)] {
            let t = txn.open_table(def).map_err(|e| HistoryError::Db {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            for kv in t.iter().map_err(|e| HistoryError::Db {
                path: self.path.clone(),
                reason: e.to_string(),
            })? {
                let (k, v) = kv.map_err(|e| HistoryError::Db {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
                into.insert(k.value().to_string(), v.value());
            }
        }
        Ok(())
    }

    /// Every row, coarse (older) and fine, sorted by time, topic, group.
    pub fn rows(&self) -> Result<Vec<Row>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut topic_names = vec![String::new(); self.topic_ids.len()];
        for (n, i) in &self.topic_ids {
            topic_names[*i as usize] = n.clone();
        }
        let mut group_names = vec![String::new(); self.group_ids.len()];
        for (n, i) in &self.group_ids {
            group_names[*i as usize] = n.clone();
        }
        let mut out = Vec::new();
        for def in [COARSE, FINE] {
            let t = txn.open_table(def).map_err(|e| self.err(e))?;
            for kv in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                let mut cells = Cells::new();
                decode(v.value(), &mut cells)
                    .ok_or(HistoryError::Overflow { bucket: k.value() })?;
                for ((ti, gi), count) in cells {
                    out.push(Row {
                        ts: k.value(),
                        topic: topic_names.get(ti as usize).cloned().unwrap_or_default(),
                        group: group_names.get(gi as usize).cloned().unwrap_or_default(),
                        count,
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The counter readings last recorded with
    /// [`add_with_baseline`](Self::add_with_baseline), if any.
    pub fn baseline(&self) -> Result<Option<BTreeMap<(u32, u32), u64>>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match txn.open_table(BASELINE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some(v) = t.get("group_counters").map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let mut cells = Cells::new();
        // Stored cells are distinct: nothing is summed here.
        decode(v.value(), &mut cells).ok_or(HistoryError::Overflow { bucket: 0 })?;
        Ok(Some(cells))
    }

    /// Number of fine and coarse buckets stored.
    pub fn bucket_counts(&self) -> Result<(u64, u64)> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let fine = txn
            .open_table(FINE)
            .map_err(|e| self.err(e))?
            .len()
            .map_err(|e| self.err(e))?;
        let coarse = txn
            .open_table(COARSE)
            .map_err(|e| self.err(e))?
            .len()
            .map_err(|e| self.err(e))?;
        Ok((fine, coarse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sc-hist-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    #[test]
    fn buckets_merge_and_age_into_coarse_buckets() {
        let p = tmp("age");
        let s = Settings {
            bucket: Duration::from_secs(60),
            retention: Duration::from_secs(3_600),
            downsample_to: Duration::from_secs(600),
        };
        let mut h = History::open(&p, s).unwrap();
        let now = 100_000;
        // Two writes to one bucket add up.
        h.add([(now - 30, "t", "g", 2), (now - 10, "t", "g", 3)], now)
            .unwrap();
        h.add([(now - 5, "t", "g", 1), (now - 5, "u", "g", 7)], now)
            .unwrap();
        // Old data lands in coarse buckets.
        h.add(
            [(now - 4_000, "t", "g", 5), (now - 3_900, "t", "g", 6)],
            now,
        )
        .unwrap();
        let rows = h.rows().unwrap();
        let bucket = now - now % 60;
        assert!(rows.contains(&Row {
            ts: bucket,
            topic: "t".into(),
            group: "g".into(),
            count: 6
        }));
        assert!(rows.contains(&Row {
            ts: bucket,
            topic: "u".into(),
            group: "g".into(),
            count: 7
        }));
        let coarse = (now - 4_000) - (now - 4_000) % 600;
        assert!(
            rows.contains(&Row {
                ts: coarse,
                topic: "t".into(),
                group: "g".into(),
                count: 11
            }),
            "{rows:?}"
        );
        // Time passes: the fine bucket ages out and is merged, not dropped.
        let later = now + 4_000;
        h.add([(later, "t", "g", 1)], later).unwrap();
        let total: u64 = h
            .rows()
            .unwrap()
            .iter()
            .filter(|r| r.topic == "t")
            .map(|r| r.count)
            .sum();
        assert_eq!(total, 6 + 11 + 1);
        let (fine, _) = h.bucket_counts().unwrap();
        assert_eq!(fine, 1);
        drop(h);
        // Reopened, same data; other settings are refused.
        let h = History::open(&p, s).unwrap();
        assert_eq!(
            h.rows().unwrap().iter().map(|r| r.count).sum::<u64>(),
            6 + 7 + 11 + 1
        );
        drop(h);
        let other = Settings {
            bucket: Duration::from_secs(30),
            ..s
        };
        assert!(matches!(
            History::open(&p, other),
            Err(HistoryError::Settings { .. })
        ));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn counts_summing_past_u64_are_refused_whole() {
        let p = tmp("overflow");
        let mut h = History::open(&p, Settings::default()).unwrap();
        let now = 1_000_000;
        // In one call: nothing of it is stored, not even the new names.
        let e = h
            .add([(now, "t", "g", u64::MAX), (now, "t", "g", 1)], now)
            .unwrap_err();
        assert!(matches!(e, HistoryError::Overflow { .. }), "{e}");
        assert!(h.rows().unwrap().is_empty());
        // Across two: the second is refused, the first stays.
        h.add([(now, "t", "g", u64::MAX)], now).unwrap();
        let e = h
            .add([(now, "t", "g", 1), (now, "u", "g", 1)], now)
            .unwrap_err();
        assert!(e.to_string().contains("would exceed"), "{e}");
        let rows = h.rows().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].count, u64::MAX);
        // The ids interned by the refused call were forgotten with it.
        h.add([(now, "u", "g", 2)], now).unwrap();
        assert_eq!(h.rows().unwrap().len(), 2);
        drop(h);
        let _ = std::fs::remove_file(&p);
    }
}

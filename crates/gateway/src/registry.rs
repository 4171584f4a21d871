//! The device registry: what the gateway learns about each device (its
//! session: address, connectivity, subscriptions) and the topic ids it
//! assigned, kept in a redb database (copy-on-write B-trees, atomic
//! checksummed commits), so a `kill -9` at any moment leaves the last
//! committed state whole. A restarted gateway restores its ids (a client's
//! registered id keeps its meaning) and persistent sessions from it; the
//! planner's workload and the forecaster's status input are built from it
//! (issue 20).
//!
//! Topic ids are committed as they are assigned (before the REGACK or
//! SUBACK that carries one leaves); sessions in batches
//! ([`Registry::put_sessions`]), a second at most behind.

use std::{net::SocketAddr, path::Path};

use redb::{Database, ReadableTable, TableDefinition};

use crate::session::{SessionRecord, Status};

const TOPIC_IDS: TableDefinition<&str, u16> = TableDefinition::new("topic_ids");
/// client id → `status \t address \t persistent \t subscription \t ...`
const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("sessions");
/// client id → last seen (unix ms).
const LAST_SEEN: TableDefinition<&str, u64> = TableDefinition::new("last_seen");

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("device registry {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("device registry: {0}")]
    Db(String),
    #[error("device registry: session of {client:?} is unreadable: {reason}")]
    Record { client: String, reason: String },
}

fn db<E: std::fmt::Display>(e: E) -> RegistryError {
    RegistryError::Db(e.to_string())
}

/// The registry on disk.
pub struct Registry {
    db: Database,
}

/// Everything a gateway restores at start.
#[derive(Debug, Default)]
pub struct Restored {
    pub topic_ids: Vec<(String, u16)>,
    pub sessions: Vec<(SessionRecord, u64)>,
}

impl Registry {
    /// Opens (or creates) the registry at `path`.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let open_err = |e: &dyn std::fmt::Display| RegistryError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| open_err(&e))?;
        let txn = db.begin_write().map_err(|e| open_err(&e))?;
        {
            txn.open_table(TOPIC_IDS).map_err(|e| open_err(&e))?;
            txn.open_table(SESSIONS).map_err(|e| open_err(&e))?;
            txn.open_table(LAST_SEEN).map_err(|e| open_err(&e))?;
        }
        txn.commit().map_err(|e| open_err(&e))?;
        Ok(Registry { db })
    }

    /// Commits a topic id.
    pub fn put_topic_id(&self, topic: &str, id: u16) -> Result<(), RegistryError> {
        let txn = self.db.begin_write().map_err(db)?;
        txn.open_table(TOPIC_IDS)
            .map_err(db)?
            .insert(topic, id)
            .map_err(db)?;
        txn.commit().map_err(db)
    }

    /// Commits sessions (each with when it was seen, unix ms) in one
    /// transaction.
    pub fn put_sessions(&self, records: &[(SessionRecord, u64)]) -> Result<(), RegistryError> {
        if records.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut sessions = txn.open_table(SESSIONS).map_err(db)?;
            let mut seen = txn.open_table(LAST_SEEN).map_err(db)?;
            for (r, at) in records {
                let mut line = format!(
                    "{}\t{}\t{}",
                    r.status.label(),
                    r.address.map_or(String::new(), |a| a.to_string()),
                    r.persistent as u8
                );
                for s in &r.subscriptions {
                    line.push('\t');
                    line.push_str(s);
                }
                sessions
                    .insert(r.client_id.as_str(), line.as_str())
                    .map_err(db)?;
                seen.insert(r.client_id.as_str(), *at).map_err(db)?;
            }
        }
        txn.commit().map_err(db)
    }

    /// Everything kept.
    pub fn restore(&self) -> Result<Restored, RegistryError> {
        let txn = self.db.begin_read().map_err(db)?;
        let mut out = Restored::default();
        for e in txn.open_table(TOPIC_IDS).map_err(db)?.iter().map_err(db)? {
            let (k, v) = e.map_err(db)?;
            out.topic_ids.push((k.value().to_string(), v.value()));
        }
        let seen = txn.open_table(LAST_SEEN).map_err(db)?;
        for e in txn.open_table(SESSIONS).map_err(db)?.iter().map_err(db)? {
            let (k, v) = e.map_err(db)?;
            let client = k.value().to_string();
            let bad = |reason: &str| RegistryError::Record {
                client: client.clone(),
                reason: reason.into(),
            };
            let line = v.value();
            let mut f = line.split('\t');
            let status = f
                .next()
                .and_then(Status::from_label)
                .ok_or_else(|| bad("no status"))?;
            let address = match f.next() {
                Some("") | None => None,
                Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| bad("address"))?),
            };
            let persistent = f.next() == Some("1");
            let subscriptions = f.map(str::to_string).collect();
            let at = seen
                .get(client.as_str())
                .map_err(db)?
                .map_or(0, |v| v.value());
            out.sessions.push((
                SessionRecord {
                    client_id: client,
                    address,
                    status,
                    subscriptions,
                    persistent,
                },
                at,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_sessions_round_trip_and_reopen() {
        let dir = std::env::temp_dir().join(format!("screg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.redb");
        let _ = std::fs::remove_file(&path);
        {
            let r = Registry::open(&path).unwrap();
            r.put_topic_id("a/b", 7).unwrap();
            let rec = SessionRecord {
                client_id: "dev-1".into(),
                address: Some("198.18.0.1:4000".parse().unwrap()),
                status: Status::Asleep,
                subscriptions: vec!["a/+".into(), "ab".into()],
                persistent: true,
            };
            r.put_sessions(&[(rec, 1234)]).unwrap();
        }
        let r = Registry::open(&path).unwrap();
        let got = r.restore().unwrap();
        assert_eq!(got.topic_ids, [("a/b".to_string(), 7)]);
        assert_eq!(got.sessions.len(), 1);
        let (s, at) = &got.sessions[0];
        assert_eq!((s.status, *at, s.persistent), (Status::Asleep, 1234, true));
        assert_eq!(s.subscriptions, ["a/+", "ab"]);
        // Not a registry: refused by name.
        std::fs::write(dir.join("junk"), b"not a database").unwrap();
        let e = Registry::open(&dir.join("junk")).err().unwrap().to_string();
        assert!(e.contains("junk"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

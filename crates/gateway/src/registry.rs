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

use crate::{
    control::{Attributes, Token},
    membership::{MemberRecord, MemberUpdate},
    session::{SessionRecord, Status},
};

const TOPIC_IDS: TableDefinition<&str, u16> = TableDefinition::new("topic_ids");
/// client id → `status \t address \t persistent \t subscription \t ...`
const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("sessions");
/// client id → a member's token and attributes (see [`member_line`]).
const MEMBERS: TableDefinition<&str, &str> = TableDefinition::new("members");
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
    /// Shard-aware devices' tokens (expired ones included: the
    /// membership expires them on its first tick).
    pub members: Vec<MemberRecord>,
}

/// `address \t token \t expires \t next token \t next expires \t
/// confirmed generation \t battery \t location \t type \t sla`, `-` for
/// none.
fn member_line(r: &MemberRecord) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let (nt, ne) = match r.next {
        Some((t, e)) => (t.to_hex(), e.to_string()),
        None => ("-".into(), "-".into()),
    };
    [
        r.address.to_string(),
        r.token.to_hex(),
        r.expires_ms.to_string(),
        nt,
        ne,
        r.confirmed_generation.to_string(),
        r.attributes.battery.map_or("-".into(), |b| b.to_string()),
        opt(&r.attributes.location),
        opt(&r.attributes.kind),
        opt(&r.attributes.sla),
    ]
    .join("\t")
}

fn parse_member(client: &str, line: &str) -> Option<MemberRecord> {
    let f: Vec<&str> = line.split('\t').collect();
    let [
        address,
        token,
        expires,
        nt,
        ne,
        confirmed,
        battery,
        location,
        kind,
        sla,
    ] = f[..]
    else {
        return None;
    };
    let opt = |v: &str| (v != "-").then(|| v.to_string());
    let next = match (nt, ne) {
        ("-", "-") => None,
        (t, e) => Some((Token::from_hex(t)?, e.parse().ok()?)),
    };
    Some(MemberRecord {
        client: client.to_string(),
        address: address.parse().ok()?,
        token: Token::from_hex(token)?,
        expires_ms: expires.parse().ok()?,
        next,
        confirmed_generation: confirmed.parse().ok()?,
        attributes: Attributes {
            battery: match battery {
                "-" => None,
                b => Some(b.parse().ok()?),
            },
            location: opt(location),
            kind: opt(kind),
            sla: opt(sla),
        },
    })
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
            txn.open_table(MEMBERS).map_err(|e| open_err(&e))?;
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

    /// Commits members' records (`None` deletes) in one transaction.
    pub fn put_members(&self, records: &[MemberUpdate]) -> Result<(), RegistryError> {
        if records.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut t = txn.open_table(MEMBERS).map_err(db)?;
            for (client, r) in records {
                match r {
                    Some(r) => {
                        t.insert(client.as_str(), member_line(r).as_str())
                            .map_err(db)?;
                    }
                    None => {
                        t.remove(client.as_str()).map_err(db)?;
                    }
                }
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
        for e in txn.open_table(MEMBERS).map_err(db)?.iter().map_err(db)? {
            let (k, v) = e.map_err(db)?;
            let client = k.value();
            out.members
                .push(
                    parse_member(client, v.value()).ok_or_else(|| RegistryError::Record {
                        client: client.to_string(),
                        reason: "membership record".into(),
                    })?,
                );
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
            let member = MemberRecord {
                client: "dev-1".into(),
                address: "[2001:db8::1]:4000".parse().unwrap(),
                token: Token([7; 16]),
                expires_ms: 99,
                next: Some((Token([8; 16]), 199)),
                attributes: Attributes {
                    battery: Some(40),
                    location: Some("s1/b2".into()),
                    kind: None,
                    sla: Some("premium".into()),
                },
                confirmed_generation: 12,
            };
            let gone = MemberRecord {
                client: "dev-2".into(),
                ..member.clone()
            };
            r.put_members(&[("dev-1".into(), Some(member)), ("dev-2".into(), Some(gone))])
                .unwrap();
            r.put_members(&[("dev-2".into(), None)]).unwrap();
        }
        let r = Registry::open(&path).unwrap();
        let got = r.restore().unwrap();
        assert_eq!(got.topic_ids, [("a/b".to_string(), 7)]);
        assert_eq!(got.sessions.len(), 1);
        let (s, at) = &got.sessions[0];
        assert_eq!((s.status, *at, s.persistent), (Status::Asleep, 1234, true));
        assert_eq!(s.subscriptions, ["a/+", "ab"]);
        assert_eq!(got.members.len(), 1);
        let m = &got.members[0];
        assert_eq!(
            (m.client.as_str(), m.token, m.next, m.confirmed_generation),
            ("dev-1", Token([7; 16]), Some((Token([8; 16]), 199)), 12)
        );
        assert_eq!(m.attributes.location.as_deref(), Some("s1/b2"));
        // Not a registry: refused by name.
        std::fs::write(dir.join("junk"), b"not a database").unwrap();
        let e = Registry::open(&dir.join("junk")).err().unwrap().to_string();
        assert!(e.contains("junk"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

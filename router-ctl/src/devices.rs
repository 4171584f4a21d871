//! The gateway's shard-aware devices as the planner sees them: each
//! member of the device protocol (token, address, reported attributes)
//! joined with its MQTT-SN session (what it subscribes to, whether it is
//! connected). The gateway keeps this book from its registry and hands
//! every change to the daemon, whose control cycle builds the planner's
//! workload from it.

use std::collections::HashMap;

use shardcast_gateway::{
    membership::MemberRecord,
    session::{SessionRecord, Status},
};
use shardcast_planner::workload::Device;

/// Whether a session is up (connected or asleep).
fn live(s: &SessionRecord) -> bool {
    matches!(s.status, Status::Active | Status::Asleep)
}

/// A device as the planner should see it now (`None`: gone, not a member
/// any more).
pub type DeviceUpdate = (String, Option<Device>);

/// Members and sessions, by client id.
#[derive(Debug, Default)]
pub struct DeviceBook {
    members: HashMap<String, MemberRecord>,
    sessions: HashMap<String, SessionRecord>,
}

impl DeviceBook {
    /// Whether `client` is a member (served by its shard's group).
    pub fn is_member(&self, client: &str) -> bool {
        self.members.contains_key(client)
    }

    /// A member's record changed (`None`: it left the membership).
    pub fn member(&mut self, client: &str, rec: Option<&MemberRecord>) -> Option<DeviceUpdate> {
        let before = self.device(client);
        match rec {
            Some(r) => {
                self.members.insert(client.to_string(), r.clone());
            }
            None => {
                self.members.remove(client);
                if self.sessions.get(client).is_some_and(|s| !live(s)) {
                    self.sessions.remove(client);
                }
            }
        }
        self.changed(client, before)
    }

    /// A session's record changed.
    pub fn session(&mut self, rec: &SessionRecord) -> Option<DeviceUpdate> {
        let before = self.device(&rec.client_id);
        // A standard client's session that ended is forgotten (the book
        // does not grow with every client ever seen); a member's is kept
        // (what it follows is still what it is placed by).
        if !self.is_member(&rec.client_id) && !live(rec) {
            self.sessions.remove(&rec.client_id);
        } else {
            self.sessions.insert(rec.client_id.clone(), rec.clone());
        }
        self.changed(&rec.client_id, before)
    }

    /// Every member, as the planner sees it.
    pub fn all(&self) -> Vec<DeviceUpdate> {
        self.members
            .keys()
            .map(|c| (c.clone(), self.device(c)))
            .collect()
    }

    fn changed(&self, client: &str, before: Option<Device>) -> Option<DeviceUpdate> {
        let now = self.device(client);
        (now != before).then(|| (client.to_string(), now))
    }

    /// The planner's device for `client`, if it is a member. Only a
    /// session that is up counts as connected: an asleep device receives
    /// nothing from its group until it wakes (its waste weighs nothing),
    /// and a lost one is about to lose its token.
    pub fn device(&self, client: &str) -> Option<Device> {
        let m = self.members.get(client)?;
        let s = self.sessions.get(client);
        let a = &m.attributes;
        Some(Device {
            id: client.to_string(),
            group: None,
            // Not the device's address: devices behind one host (a NAT,
            // a gateway node, the lab's simulator) share it, and a plan's
            // address names one device's telemetry group.
            address: None,
            subscriptions: s.map(|s| s.subscriptions.clone()).unwrap_or_default(),
            connected: s.is_some_and(|s| s.status == Status::Active),
            battery: a.battery.map_or(1.0, |b| f64::from(b.min(100)) / 100.0),
            location: a.location.clone(),
            kind: a.kind.clone(),
            sla: a.sla.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcast_gateway::control::{Attributes, Token};

    fn member(client: &str, battery: Option<u8>) -> MemberRecord {
        MemberRecord {
            client: client.into(),
            address: "198.18.0.9:4000".parse().unwrap(),
            token: Token([7; 16]),
            expires_ms: 1,
            next: None,
            attributes: Attributes {
                battery,
                location: Some("s1/b2".into()),
                kind: None,
                sla: Some("premium".into()),
            },
            confirmed_generation: 0,
        }
    }

    fn session(client: &str, status: Status, subs: &[&str]) -> SessionRecord {
        SessionRecord {
            client_id: client.into(),
            address: None,
            status,
            subscriptions: subs.iter().map(|s| s.to_string()).collect(),
            persistent: false,
        }
    }

    #[test]
    fn members_joined_with_their_sessions_and_only_changes_reported() {
        let mut b = DeviceBook::default();
        // A session alone (a standard client) is nobody's business here.
        assert_eq!(b.session(&session("std", Status::Active, &["a"])), None);
        assert!(!b.is_member("std"));
        b.session(&session("std", Status::Lost, &["a"]));
        assert!(
            b.sessions.is_empty(),
            "a standard client's ended session is forgotten"
        );
        let (id, d) = b.member("dev", Some(&member("dev", Some(40)))).unwrap();
        assert_eq!(id, "dev");
        let d = d.unwrap();
        assert_eq!((d.connected, d.battery), (false, 0.4));
        assert_eq!(d.sla.as_deref(), Some("premium"));
        let (_, d) = b
            .session(&session("dev", Status::Active, &["t/1", "t/+"]))
            .unwrap();
        let d = d.unwrap();
        assert!(d.connected);
        assert_eq!(d.subscriptions, ["t/1", "t/+"]);
        // The same again: no update.
        assert_eq!(
            b.session(&session("dev", Status::Active, &["t/1", "t/+"])),
            None
        );
        // Asleep: not connected.
        let (_, d) = b
            .session(&session("dev", Status::Asleep, &["t/1"]))
            .unwrap();
        assert!(!d.unwrap().connected);
        // Battery beyond 100 reads as full; leaving the membership is `None`.
        let (_, d) = b.member("dev", Some(&member("dev", Some(250)))).unwrap();
        assert_eq!(d.unwrap().battery, 1.0);
        assert_eq!(b.all().len(), 1);
        assert_eq!(b.member("dev", None), Some(("dev".into(), None)));
        assert!(b.all().is_empty());
    }
}

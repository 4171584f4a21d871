//! The plan: one JSON document describing the whole routing state.
//!
//! The planner emits it, `router-ctl apply` installs it, the daemon swaps it,
//! `router-ctl maps dump` shows it. Format: `docs/plan-format.md`.
//!
//! [`Plan::compile`] validates a plan and turns it into the exact entries the
//! data plane will hold (route keys, shard table), without touching the
//! kernel. Everything that can be wrong with a plan is found here, before a
//! single map is written, so a bad plan never leaves a partial state.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use router_common::{
    maps::{MAX_ROUTE_SHARDS, MAX_SHARDS, PREFIX_MAX, mqttsn_id_index},
    mqttsn::{TOPIC_NORMAL, TOPIC_PREDEFINED, TOPIC_SHORT},
    topic::{AliasKind, TOPIC_MAX, TopicKey, alias_key, topic_key},
};
use serde::{Deserialize, Serialize};

pub mod device;
pub mod policy;
pub mod text;
pub mod transition;

pub use device::{DeviceChecker, DeviceError, NAME_MAX};
pub use policy::{Policy, PolicyError};
use text::cut;

/// Everything that can be wrong with a plan. Each names the offender.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("cannot read plan {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("plan is not valid JSON: {0}")]
    Json(String),
    #[error("plan has no shards")]
    NoShards,
    #[error("plan has {0} shards; the data plane holds at most {MAX_SHARDS}")]
    TooManyShards(usize),
    #[error("shard id {0} appears more than once")]
    DuplicateShard(u32),
    #[error("shard {shard}: {field} {value:?} is not an address: {reason}")]
    BadAddress {
        shard: u32,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("shard {shard}: {field} {value} is of the wrong family (expected {expected})")]
    WrongFamily {
        shard: u32,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("shard {shard}: {field} {value} is not a multicast group")]
    NotMulticast {
        shard: u32,
        field: &'static str,
        value: String,
    },
    #[error("shard {0} has neither group_v4 nor group_v6")]
    NoGroup(u32),
    #[error("shards {a} and {b} share the multicast group {group}")]
    SharedGroup { a: u32, b: u32, group: String },
    #[error("shard {0}: egress interface name is empty or longer than 15 bytes")]
    BadEgress(u32),
    #[error("shard {shard}: capacity {capacity} must be > 0")]
    BadCapacity { shard: u32, capacity: String },
    #[error("topic {0:?} appears more than once")]
    DuplicateTopic(String),
    #[error("topic {0:?}: name must be 1..={TOPIC_MAX} bytes")]
    BadTopicName(String),
    #[error("topic {topic:?} names unknown shard {shard}")]
    UnknownShard { topic: String, shard: u32 },
    #[error("topic {0:?} has no shards")]
    TopicWithoutShards(String),
    #[error("topic {topic:?} lists shard {shard} twice")]
    RepeatedShard { topic: String, shard: u32 },
    #[error("topic {topic:?} spans {count} shards; at most {MAX_ROUTE_SHARDS}")]
    TooManyTopicShards { topic: String, count: usize },
    #[error("MQTT-SN {kind} topic id {id} is reserved (0 and 65535 are)")]
    ReservedTopicId { kind: &'static str, id: u16 },
    #[error("MQTT-SN {kind} topic id {id} is given to both {a:?} and {b:?}")]
    DuplicateTopicId {
        kind: &'static str,
        id: u16,
        a: String,
        b: String,
    },
    #[error("topics {a:?} and {b:?} hash to the same key {key:#018x}; rename one")]
    KeyCollision { a: String, b: String, key: u64 },
    #[error("topic {0:?} hashes to key 0, which marks a free counter slot; rename it")]
    ReservedKey(String),
    #[error("device {device:?} names unknown shard {shard}")]
    DeviceUnknownShard { device: String, shard: u32 },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("shard {shard}: class {class:?} does not fit the policy's separate_by {keys:?}")]
    ShardClass {
        shard: u32,
        class: String,
        keys: Vec<String>,
    },
}

/// A shard: one multicast group (per family) its members join.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShardSpec {
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_v4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_v6: Option<String>,
    /// Interface the shard's traffic leaves by.
    pub egress: String,
    /// UDP destination port on the group; absent or 0 keeps the publish's
    /// port (so MQTT-SN and CoAP stay apart on a shared group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Deliveries per second the shard can take (for the planner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<f64>,
    /// The policy's boundary class of its members (`sla=premium,...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

/// A device and the shard it is a member of.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub shard: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A topic and the shards holding its subscribers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub shards: Vec<u32>,
    /// MQTT-SN predefined topic id standing for this topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqttsn_predefined_id: Option<u16>,
    /// MQTT-SN topic ids the gateway assigned on REGISTER.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mqttsn_registered_ids: Vec<u16>,
}

/// The whole routing state of one generation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub generation: u64,
    pub shards: Vec<ShardSpec>,
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    pub topics: Vec<TopicSpec>,
    /// The policy the plan was made under (none: anything may share).
    #[serde(default, skip_serializing_if = "Policy::is_empty")]
    pub policy: Policy,
}

/// A validated shard, addresses parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledShard {
    pub id: u32,
    pub group_v4: Option<Ipv4Addr>,
    pub group_v6: Option<Ipv6Addr>,
    pub egress: String,
    pub port: u16,
}

/// One key the data plane looks up, and what it resolves to.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledRoute {
    pub key: TopicKey,
    /// Index into [`CompiledPlan::topics`].
    pub topic: usize,
    /// Indices into [`CompiledPlan::shards`].
    pub shards: Vec<u16>,
    /// Where the route also goes in the data plane's MQTT-SN id array
    /// (`router_common::maps::mqttsn_id_index`): for a predefined or
    /// registered id, and for a two-byte name (an MQTT-SN short topic name).
    pub mqttsn_index: Option<u32>,
}

/// One key of a plan being compiled: its topic and, for an MQTT-SN id
/// alias, (kind label, id).
struct KeyEntry {
    key: TopicKey,
    topic: usize,
    alias: Option<(&'static str, u16)>,
    mqttsn_index: Option<u32>,
}

/// What the data plane will hold for a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledPlan {
    pub generation: u64,
    pub shards: Vec<CompiledShard>,
    /// Topic names, in plan order; `name_keys[i]` is `topics[i]`'s key.
    pub topics: Vec<String>,
    pub name_keys: Vec<TopicKey>,
    /// Every key (names and MQTT-SN id aliases), sorted by key.
    pub routes: Vec<CompiledRoute>,
    /// Device group names, sorted; group index `i + 1` is `groups[i]`
    /// (index 0 is "no group / unknown source").
    pub groups: Vec<String>,
    /// Devices with an address, for attributing traffic to groups.
    pub devices: Vec<CompiledDevice>,
}

/// A device the data plane can recognise by source address.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledDevice {
    pub address: IpAddr,
    /// Group index (see [`CompiledPlan::groups`]).
    pub group: u32,
    pub shard: u32,
}

impl CompiledPlan {
    /// Name of device group index `i` (0 is `"unknown"`).
    pub fn group_name(&self, i: u32) -> &str {
        group_name(&self.groups, i)
    }
}

/// Name of device group index `i` in a compiled plan's `groups` (index 0,
/// and any index the list does not hold, is `"unknown"`): the one rule
/// for naming the group indices the data plane counts under.
pub fn group_name(groups: &[String], i: u32) -> &str {
    match i {
        0 => "unknown",
        i => groups.get(i as usize - 1).map_or("unknown", |s| s.as_str()),
    }
}

impl Plan {
    /// Shards per boundary class (`-` for shards without one).
    pub fn shards_by_class(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for s in &self.shards {
            *m.entry(s.class.clone().unwrap_or_else(|| "-".into()))
                .or_default() += 1;
        }
        m
    }

    /// Reads and parses a plan file (not yet validated: see [`Plan::compile`]).
    pub fn from_file(path: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Plan::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Plan, PlanError> {
        serde_json::from_str(text::strip_bom(text)).map_err(|e| PlanError::Json(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serialises")
    }

    /// Validates the plan and computes the data-plane entries.
    pub fn compile(&self) -> Result<CompiledPlan, PlanError> {
        if self.shards.is_empty() {
            return Err(PlanError::NoShards);
        }
        if self.shards.len() > MAX_SHARDS as usize {
            return Err(PlanError::TooManyShards(self.shards.len()));
        }
        self.policy.check()?;
        let mut index_of: HashMap<u32, u16> = HashMap::new();
        let mut groups: HashMap<IpAddr, u32> = HashMap::new();
        let mut shards = Vec::with_capacity(self.shards.len());
        for (i, s) in self.shards.iter().enumerate() {
            if index_of.insert(s.id, i as u16).is_some() {
                return Err(PlanError::DuplicateShard(s.id));
            }
            if s.egress.is_empty() || s.egress.len() > 15 {
                return Err(PlanError::BadEgress(s.id));
            }
            if let Some(class) = &s.class
                && !self.policy.check_class_name(class)
            {
                return Err(PlanError::ShardClass {
                    shard: s.id,
                    class: cut(class),
                    keys: self.policy.separate_by.clone(),
                });
            }
            if let Some(c) = s.capacity
                && (c.is_nan() || c <= 0.0)
            {
                return Err(PlanError::BadCapacity {
                    shard: s.id,
                    capacity: c.to_string(),
                });
            }
            let group_v4 = s
                .group_v4
                .as_deref()
                .map(|g| parse_group(s.id, "group_v4", g, false))
                .transpose()?;
            let group_v6 = s
                .group_v6
                .as_deref()
                .map(|g| parse_group(s.id, "group_v6", g, true))
                .transpose()?;
            if group_v4.is_none() && group_v6.is_none() {
                return Err(PlanError::NoGroup(s.id));
            }
            for g in group_v4.into_iter().chain(group_v6) {
                if let Some(other) = groups.insert(g, s.id) {
                    return Err(PlanError::SharedGroup {
                        a: other,
                        b: s.id,
                        group: g.to_string(),
                    });
                }
            }
            shards.push(CompiledShard {
                id: s.id,
                group_v4: group_v4.map(|g| match g {
                    IpAddr::V4(a) => a,
                    IpAddr::V6(_) => unreachable!(),
                }),
                group_v6: group_v6.map(|g| match g {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(_) => unreachable!(),
                }),
                egress: s.egress.clone(),
                port: s.port.unwrap_or(0),
            });
        }

        let groups: Vec<String> = self
            .devices
            .iter()
            .filter_map(|d| d.group.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut devices = Vec::new();
        let mut checker = DeviceChecker::default();
        for (index, d) in self.devices.iter().enumerate() {
            let address = checker.check(index, &d.id, d.group.as_deref(), d.address.as_deref())?;
            if !index_of.contains_key(&d.shard) {
                return Err(PlanError::DeviceUnknownShard {
                    device: d.id.clone(),
                    shard: d.shard,
                });
            }
            if let Some(address) = address {
                let group = match &d.group {
                    Some(g) => groups.binary_search(g).map_or(0, |i| i as u32 + 1),
                    None => 0,
                };
                devices.push(CompiledDevice {
                    address,
                    group,
                    shard: d.shard,
                });
            }
        }

        let mut topics = Vec::with_capacity(self.topics.len());
        let mut name_keys = Vec::with_capacity(self.topics.len());
        // Every key with its topic and, for an alias, (label, id); sorted by
        // key below. (A sort: inserting a million random keys one by one
        // into a BTreeMap took twice as long, all cache misses.)
        let mut entries: Vec<KeyEntry> = Vec::with_capacity(self.topics.len());
        let mut ids: HashMap<(u8, u16), String> = HashMap::new();
        let mut topic_shards: Vec<Vec<u16>> = Vec::with_capacity(self.topics.len());
        for (ti, t) in self.topics.iter().enumerate() {
            if t.name.is_empty() || t.name.len() > TOPIC_MAX {
                return Err(PlanError::BadTopicName(cut(&t.name)));
            }
            if t.shards.is_empty() {
                return Err(PlanError::TopicWithoutShards(t.name.clone()));
            }
            if t.shards.len() > MAX_ROUTE_SHARDS {
                return Err(PlanError::TooManyTopicShards {
                    topic: t.name.clone(),
                    count: t.shards.len(),
                });
            }
            let mut idx = Vec::with_capacity(t.shards.len());
            for &s in &t.shards {
                let i = *index_of.get(&s).ok_or_else(|| PlanError::UnknownShard {
                    topic: t.name.clone(),
                    shard: s,
                })?;
                if idx.contains(&i) {
                    return Err(PlanError::RepeatedShard {
                        topic: t.name.clone(),
                        shard: s,
                    });
                }
                idx.push(i);
            }
            let name_key = topic_key(t.name.as_bytes());
            if name_key.hash == 0 {
                return Err(PlanError::ReservedKey(t.name.clone()));
            }
            // A two-byte name is also an MQTT-SN short topic name.
            let short = <[u8; 2]>::try_from(t.name.as_bytes())
                .ok()
                .map(|b| mqttsn_id_index(TOPIC_SHORT, u16::from_be_bytes(b)));
            entries.push(KeyEntry {
                key: name_key,
                topic: ti,
                alias: None,
                mqttsn_index: short,
            });
            let aliases = t
                .mqttsn_predefined_id
                .map(|id| (AliasKind::MqttSnPredefined, "predefined", id))
                .into_iter()
                .chain(
                    t.mqttsn_registered_ids
                        .iter()
                        .map(|&id| (AliasKind::MqttSnNormal, "registered", id)),
                );
            for (kind, label, id) in aliases {
                // 0xFFFE predefined names each device's control topic
                // (the gateway's device protocol).
                if id == 0
                    || id == 0xffff
                    || (kind == AliasKind::MqttSnPredefined
                        && id == router_common::mqttsn::CONTROL_ID)
                {
                    return Err(PlanError::ReservedTopicId { kind: label, id });
                }
                if let Some(other) = ids.insert((kind as u8, id), t.name.clone()) {
                    return Err(PlanError::DuplicateTopicId {
                        kind: label,
                        id,
                        a: other,
                        b: t.name.clone(),
                    });
                }
                let id_type = match kind {
                    AliasKind::MqttSnNormal => TOPIC_NORMAL,
                    AliasKind::MqttSnPredefined => TOPIC_PREDEFINED,
                };
                entries.push(KeyEntry {
                    key: alias_key(kind, id),
                    topic: ti,
                    alias: Some((label, id)),
                    mqttsn_index: Some(mqttsn_id_index(id_type, id)),
                });
            }
            topic_shards.push(idx);
            topics.push(t.name.clone());
            name_keys.push(name_key);
        }
        // Equal keys end up side by side, in plan order.
        entries.sort_unstable_by_key(|e| (e.key, e.topic, e.alias.map(|(_, id)| id)));
        let label = |e: &KeyEntry| match e.alias {
            None => self.topics[e.topic].name.clone(),
            Some((kind, id)) => format!("{} (MQTT-SN {kind} id {id})", self.topics[e.topic].name),
        };
        if let Some(w) = entries.windows(2).find(|w| w[0].key == w[1].key) {
            let (a, b) = (&w[0], &w[1]);
            return Err(
                if a.topic == b.topic || self.topics[a.topic].name == self.topics[b.topic].name {
                    PlanError::DuplicateTopic(self.topics[b.topic].name.clone())
                } else {
                    PlanError::KeyCollision {
                        a: label(a),
                        b: label(b),
                        key: a.key.hash,
                    }
                },
            );
        }
        Ok(CompiledPlan {
            generation: self.generation,
            shards,
            topics,
            name_keys,
            routes: entries
                .into_iter()
                .map(|e| CompiledRoute {
                    key: e.key,
                    topic: e.topic,
                    shards: topic_shards[e.topic].clone(),
                    mqttsn_index: e.mqttsn_index,
                })
                .collect(),
            groups,
            devices,
        })
    }
}

fn parse_group(
    shard: u32,
    field: &'static str,
    value: &str,
    v6: bool,
) -> Result<IpAddr, PlanError> {
    let addr: IpAddr =
        value
            .parse()
            .map_err(|e: std::net::AddrParseError| PlanError::BadAddress {
                shard,
                field,
                value: value.to_string(),
                reason: e.to_string(),
            })?;
    if addr.is_ipv6() != v6 {
        return Err(PlanError::WrongFamily {
            shard,
            field,
            value: value.to_string(),
            expected: if v6 { "IPv6" } else { "IPv4" },
        });
    }
    if !addr.is_multicast() {
        return Err(PlanError::NotMulticast {
            shard,
            field,
            value: value.to_string(),
        });
    }
    Ok(addr)
}

/// Normalises a CoAP pub/sub prefix: no leading '/', a trailing '/' unless
/// empty, at most [`PREFIX_MAX`] bytes.
pub fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let p = prefix.trim_start_matches('/');
    let p = if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    };
    if p.len() > PREFIX_MAX {
        return Err(format!(
            "CoAP prefix {prefix:?} is {} bytes; at most {PREFIX_MAX}",
            p.len()
        ));
    }
    if p.contains("//") {
        return Err(format!("CoAP prefix {prefix:?} has an empty path segment"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::from_json(
            r#"{
              "generation": 3,
              "shards": [
                {"id": 1, "group_v4": "239.1.1.1", "group_v6": "ff15::1", "egress": "eth1", "capacity": 1000},
                {"id": 2, "group_v4": "239.1.1.2", "egress": "eth1", "port": 7000}
              ],
              "devices": [{"id": "d1", "address": "198.18.0.7", "shard": 1}],
              "topics": [
                {"name": "temp/room1", "shards": [1], "mqttsn_predefined_id": 5},
                {"name": "hv", "shards": [2, 1], "mqttsn_registered_ids": [17, 18]}
              ]
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn compiles_routes_for_names_and_aliases() {
        let c = plan().compile().unwrap();
        assert_eq!(c.generation, 3);
        assert_eq!(c.routes.len(), 2 + 1 + 2);
        let find = |k: TopicKey| c.routes.iter().find(|r| r.key == k).unwrap();
        assert_eq!(find(topic_key(b"temp/room1")).shards, vec![0]);
        assert_eq!(find(alias_key(AliasKind::MqttSnPredefined, 5)).topic, 0);
        assert_eq!(
            find(alias_key(AliasKind::MqttSnNormal, 18)).shards,
            vec![1, 0]
        );
        assert_eq!(c.shards[1].port, 7000);
        assert_eq!(c.shards[0].port, 0);
        assert!(c.routes.windows(2).all(|w| w[0].key < w[1].key));
        // The MQTT-SN id array: predefined 5 (type 1), registered 17 and 18
        // (type 0), and "hv" as a short topic name (type 2); not the long
        // name.
        let index = |k: TopicKey| find(k).mqttsn_index;
        assert_eq!(
            index(alias_key(AliasKind::MqttSnPredefined, 5)),
            Some(1 << 16 | 5)
        );
        assert_eq!(index(alias_key(AliasKind::MqttSnNormal, 17)), Some(17));
        assert_eq!(index(topic_key(b"hv")), Some(2 << 16 | 0x6876));
        assert_eq!(index(topic_key(b"temp/room1")), None);
    }

    fn err(edit: impl FnOnce(&mut Plan)) -> PlanError {
        let mut p = plan();
        edit(&mut p);
        p.compile().unwrap_err()
    }

    #[test]
    fn refuses_invalid_plans_naming_the_offender() {
        assert_eq!(
            err(|p| p.topics[0].shards = vec![9]),
            PlanError::UnknownShard {
                topic: "temp/room1".into(),
                shard: 9
            }
        );
        assert!(matches!(
            err(|p| p.shards[0].group_v4 = Some("10.0.0.1".into())),
            PlanError::NotMulticast { shard: 1, .. }
        ));
        assert!(matches!(
            err(|p| p.shards[0].group_v4 = Some("239.1.1".into())),
            PlanError::BadAddress {
                shard: 1,
                field: "group_v4",
                ..
            }
        ));
        assert!(matches!(
            err(|p| p.shards[0].group_v4 = Some("ff15::9".into())),
            PlanError::WrongFamily {
                expected: "IPv4",
                ..
            }
        ));
        assert!(matches!(
            err(|p| p.shards[0].group_v6 = Some("239.9.9.9".into())),
            PlanError::WrongFamily {
                expected: "IPv6",
                ..
            }
        ));
        assert_eq!(
            err(|p| p.topics[1].name = "temp/room1".into()),
            PlanError::DuplicateTopic("temp/room1".into())
        );
        assert_eq!(err(|p| p.shards[1].id = 1), PlanError::DuplicateShard(1));
        assert!(matches!(
            err(|p| p.shards[1].group_v4 = Some("239.1.1.1".into())),
            PlanError::SharedGroup { .. }
        ));
        assert_eq!(
            err(|p| {
                p.shards[1].group_v4 = None;
            }),
            PlanError::NoGroup(2)
        );
        assert_eq!(
            err(|p| p.topics[0].name = String::new()),
            PlanError::BadTopicName(String::new())
        );
        assert!(matches!(
            err(|p| p.topics[1].mqttsn_predefined_id = Some(5)),
            PlanError::DuplicateTopicId { id: 5, .. }
        ));
        assert!(matches!(
            err(|p| p.topics[1].mqttsn_predefined_id = Some(router_common::mqttsn::CONTROL_ID)),
            PlanError::ReservedTopicId { id: 0xFFFE, .. }
        ));
        assert!(matches!(
            err(|p| p.topics[1].mqttsn_registered_ids = vec![0]),
            PlanError::ReservedTopicId { id: 0, .. }
        ));
        assert_eq!(
            err(|p| p.topics[0].shards = vec![1, 1]),
            PlanError::RepeatedShard {
                topic: "temp/room1".into(),
                shard: 1
            }
        );
        assert_eq!(
            err(|p| p.topics[0].shards.clear()),
            PlanError::TopicWithoutShards("temp/room1".into())
        );
        assert!(matches!(
            err(|p| p.shards[0].capacity = Some(0.0)),
            PlanError::BadCapacity { shard: 1, .. }
        ));
        assert_eq!(err(|p| p.shards.clear()), PlanError::NoShards);
        assert!(matches!(
            err(|p| p.devices[0].shard = 4),
            PlanError::DeviceUnknownShard { shard: 4, .. }
        ));
        assert!(matches!(
            err(|p| p.devices.push(p.devices[0].clone())),
            PlanError::Device(DeviceError::Duplicate(_))
        ));
        assert!(matches!(
            Plan::from_json("{\"generation\": 1}"),
            Err(PlanError::Json(_))
        ));
        assert!(matches!(
            Plan::from_json(r#"{"generation":1,"shards":[],"topics":[],"extra":1}"#),
            Err(PlanError::Json(_))
        ));
    }

    #[test]
    fn json_round_trip() {
        let p = plan();
        assert_eq!(Plan::from_json(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefix("ps/data").unwrap(), "ps/data/");
        assert_eq!(normalize_prefix("/ps/data/").unwrap(), "ps/data/");
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert!(normalize_prefix("a//b").is_err());
        assert!(normalize_prefix(&"x".repeat(40)).is_err());
    }

    #[test]
    fn device_ids_groups_and_addresses_are_checked() {
        let base = || {
            Plan::from_json(
                r#"{"generation": 1,
                    "shards": [{"id": 1, "group_v4": "239.1.1.1", "egress": "eth1"}],
                    "topics": [{"name": "a", "shards": [1]}],
                    "devices": [{"id": "d1", "address": "198.18.0.7", "shard": 1},
                                {"id": "d2", "shard": 1}]}"#,
            )
            .unwrap()
        };
        let err = |f: &dyn Fn(&mut Plan)| {
            let mut p = base();
            f(&mut p);
            p.compile().unwrap_err()
        };
        assert!(matches!(
            err(&|p| p.devices[1].id.clear()),
            PlanError::Device(DeviceError::BadId { index: 1, .. })
        ));
        for bad in ["239.1.2.3", "0.0.0.0", "255.255.255.255", "ff02::1", "::"] {
            assert!(
                matches!(
                    err(&|p| p.devices[0].address = Some(bad.into())),
                    PlanError::Device(DeviceError::NotUnicast { .. })
                ),
                "{bad}"
            );
        }
        // The IPv4-mapped form of d1's address is d1's address.
        assert!(matches!(
            err(&|p| p.devices[1].address = Some("::ffff:198.18.0.7".into())),
            PlanError::Device(DeviceError::SharedAddress { .. })
        ));
        let huge = "g".repeat(100_000);
        let e = err(&|p| p.devices[0].group = Some(huge.clone()));
        assert!(e.to_string().len() < 400, "{} bytes", e.to_string().len());
        // A byte-order mark before the JSON is not an error.
        assert!(Plan::from_json(&format!("\u{feff}{}", base().to_json())).is_ok());
    }
}

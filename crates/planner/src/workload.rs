//! The planner's input: devices with their subscriptions and status, topics
//! with the publish rate to plan for, resources and cost weights. Format:
//! `docs/workload-format.md`.
//!
//! [`Workload::index`] validates a workload and turns it into the dense,
//! index-based [`Instance`] the planner works on (a hypergraph: devices are
//! vertices, each topic is a net over its subscribers), so that everything
//! wrong with the input is found before planning starts.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use router_common::{maps::MAX_SHARDS, topic::TOPIC_MAX};
use serde::{Deserialize, Serialize};
pub use shardcast_plan::policy::{ClassSpec, Policy, Preference};
use shardcast_plan::{
    DeviceChecker, DeviceError,
    policy::{Attributes, PolicyError},
    text::cut,
};

/// Everything that can be wrong with a workload. Each names the offender.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkloadError {
    #[error("cannot read workload {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("workload is not valid JSON: {0}")]
    Json(String),
    #[error("resources.{field}: {reason}")]
    Resource { field: &'static str, reason: String },
    #[error("cost.{field}: weight {value} must be a number within 0..={MAX_RATE}")]
    Weight { field: &'static str, value: f64 },
    #[error("topic {0:?} appears more than once")]
    DuplicateTopic(String),
    #[error("topic {0:?}: name must be 1..={TOPIC_MAX} bytes")]
    BadTopicName(String),
    #[error("topic {topic:?}: rate {rate} must be a number within 0..={MAX_RATE} (messages/s)")]
    BadRate { topic: String, rate: f64 },
    #[error("device {device:?} subscribes to unknown topic {topic:?}")]
    UnknownTopic { device: String, topic: String },
    #[error("device {device:?}: battery {battery} must be within 0..=1")]
    BadBattery { device: String, battery: f64 },
    #[error("topic {topic:?}: MQTT-SN predefined id {id} is reserved (0 and 65535 are)")]
    ReservedPredefinedId { topic: String, id: u16 },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("MQTT-SN predefined id {id} is given to both {a:?} and {b:?}")]
    DuplicatePredefinedId { id: u16, a: String, b: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(
        "policy.classes[{class:?}]: headroom and latency target leave no usable capacity ({usable:.3} msg/s of {capacity})"
    )]
    ClassCapacity {
        class: String,
        usable: f64,
        capacity: f64,
    },
    #[error(
        "device {device:?}: {field} must be 1..={ATTRIBUTE_MAX} bytes without control characters"
    )]
    BadAttribute { device: String, field: &'static str },
}

/// Longest device attribute (`location`, `type`, `sla`), in bytes.
pub const ATTRIBUTE_MAX: usize = 256;

type Result<T, E = WorkloadError> = std::result::Result<T, E>;

/// The highest publish rate of one topic (messages/s) a workload may give:
/// far above what one router carries, low enough that sums and costs over
/// a million topics stay finite.
pub const MAX_RATE: f64 = 1e9;

/// What the shards run on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Messages/s one shard's multicast group carries (every message routed
    /// to a shard is one delivery into it, whatever its member count).
    pub shard_capacity: f64,
    /// Upper bound on shards (the data plane holds at most 4096).
    pub max_shards: u32,
    /// Fraction of capacity kept free: a shard counts as overloaded above
    /// `shard_capacity * (1 - headroom)`.
    #[serde(default = "default_headroom")]
    pub headroom: f64,
    /// Hysteresis: two shards are merged only when their combined load stays
    /// below this fraction of the usable capacity (splits happen above it).
    #[serde(default = "default_merge_below")]
    pub merge_below: f64,
    /// Messages/s the router may send out over all shards together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<f64>,
    /// Devices the plan may move between shards in one cycle.
    #[serde(default = "default_max_migrations")]
    pub max_migrations: usize,
    /// Interface new shards' traffic leaves by.
    pub egress: String,
    /// Shard `n` gets the group `group_v4_base + n` (and `group_v6_base + n`).
    #[serde(default = "default_group_v4_base")]
    pub group_v4_base: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_v6_base: Option<String>,
}

fn default_headroom() -> f64 {
    0.2
}
fn default_merge_below() -> f64 {
    0.7
}
fn default_max_migrations() -> usize {
    100_000
}
fn default_group_v4_base() -> String {
    "239.1.0.0".into()
}

/// Weights of the planner's cost terms; see `docs/workload-format.md` for
/// the cost function and what each term measures.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CostWeights {
    /// Per message/s above a shard's usable capacity (and above bandwidth).
    pub overload: f64,
    /// Per inter-shard copy (message/s sent to one more shard).
    pub copies: f64,
    /// Per wasted delivery (message/s reaching a member not subscribed).
    pub wasted: f64,
    /// Extra waste weight of an empty battery (a device at battery `b`
    /// weighs `1 + low_battery * (1 - b)`).
    pub low_battery: f64,
    /// Per unit of queueing delay, `load * rho / (1 - rho)` per shard.
    pub latency: f64,
    /// Per active shard.
    pub shard: f64,
    /// Per device moved away from its shard in the current plan.
    pub migration: f64,
}

impl Default for CostWeights {
    fn default() -> Self {
        CostWeights {
            overload: 1000.0,
            copies: 1.0,
            wasted: 0.001,
            low_battery: 4.0,
            latency: 0.1,
            shard: 50.0,
            migration: 1.0,
        }
    }
}

/// A topic and the publish rate to plan for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicLoad {
    pub name: String,
    /// Messages/s (the forecaster's prediction at the planning horizon).
    pub rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqttsn_predefined_id: Option<u16>,
}

/// A device, what it subscribes to and its status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub subscriptions: Vec<String>,
    #[serde(default = "yes")]
    pub connected: bool,
    /// Charge left, 0..=1 (mains-powered devices: 1).
    #[serde(default = "full")]
    pub battery: f64,
    /// Where the device is: a path such as `site/building/floor` (nearness
    /// is the length of the common prefix). A boundary key of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// What kind of device it is (a boundary key of the policy).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its service-level class (a boundary key of the policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<String>,
}

/// Each class's shard limit when `max_shards` is short for all (their
/// rates, padded like a fresh plan's, need more) and the classes'
/// priorities differ: classes in order of priority reserve the shards their
/// rate needs, each leaving one shard for every class after it. The others
/// get what is left, and overload first. `usize::MAX` otherwise.
pub fn class_limits(rate: &[f64], usable: &[f64], priority: &[u32], max: usize) -> Vec<usize> {
    let nc = usable.len();
    let mut limit = vec![usize::MAX; nc];
    if nc < 2 || rate.len() != nc || priority.iter().all(|&p| p == priority[0]) {
        return limit;
    }
    let need: Vec<usize> = (0..nc)
        .map(|c| ((rate[c] * crate::GRAPH_LOAD_FACTOR / usable[c]).ceil() as usize).max(1))
        .collect();
    if need.iter().sum::<usize>() <= max {
        return limit;
    }
    let mut order: Vec<usize> = (0..nc).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(priority[c]), c));
    let mut left = max;
    for (i, &c) in order.iter().enumerate() {
        let l = left.saturating_sub(nc - i - 1).max(1);
        limit[c] = l;
        left = left.saturating_sub(need[c].min(l));
    }
    limit
}

impl Device {
    /// The attributes the policy reads.
    pub fn attributes(&self) -> Attributes<'_> {
        Attributes {
            location: self.location.as_deref(),
            kind: self.kind.as_deref(),
            sla: self.sla.as_deref(),
        }
    }
}

fn yes() -> bool {
    true
}
fn full() -> f64 {
    1.0
}

/// The planner's whole input.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub resources: Resources,
    #[serde(default)]
    pub cost: CostWeights,
    pub topics: Vec<TopicLoad>,
    pub devices: Vec<Device>,
    /// What may share a shard; none: anything may.
    #[serde(default, skip_serializing_if = "Policy::is_empty")]
    pub policy: Policy,
}

/// A validated workload in index form. Topic `t` is `topics[t]`; device
/// `d`'s subscriptions are `subs[sub_start[d]..sub_start[d + 1]]`.
#[derive(Clone, Debug)]
pub struct Instance {
    pub resources: Resources,
    pub weights: CostWeights,
    pub topics: Vec<String>,
    pub rates: Vec<f64>,
    pub predefined: Vec<Option<u16>>,
    pub devices: Vec<String>,
    pub groups: Vec<Option<String>>,
    pub addresses: Vec<Option<String>>,
    /// Waste weight of each device: 0 when disconnected (it receives
    /// nothing), `1 + low_battery * (1 - battery)` otherwise.
    pub waste_weight: Vec<f64>,
    pub sub_start: Vec<u32>,
    pub subs: Vec<u32>,
    /// Boundary class of each device (index into `class_names`): devices of
    /// different classes never share a shard. All 0 without a policy.
    pub class: Vec<u32>,
    /// Each class as `key=value` pairs (`sla=premium,location:1=site-a`);
    /// one empty name without a policy.
    pub class_names: Vec<String>,
    /// Usable capacity of a shard of each class (its SLA class's headroom
    /// and latency target; `resources.usable_capacity()` without).
    pub class_usable: Vec<f64>,
    /// Priority of each class (higher: its shards first when `max_shards`
    /// is short).
    pub class_priority: Vec<u32>,
    /// Messages/s each class carries: the rates of the distinct topics its
    /// devices follow (the least its shards together hold). Empty with a
    /// single class.
    pub class_rate: Vec<f64>,
    /// Most shards each class may open (`usize::MAX`: no limit); see
    /// [`class_limits`].
    pub class_limit: Vec<usize>,
    /// Soft preferences: each distinct value of the key in a shard costs
    /// the weight.
    pub together: Vec<Together>,
    /// The policy as given (emitted into the plan).
    pub policy: Policy,
}

/// One soft preference in index form.
#[derive(Clone, Debug)]
pub struct Together {
    pub key: String,
    pub weight: f64,
    /// Each device's value, as an index into `names`.
    pub value: Vec<u32>,
    pub names: Vec<String>,
}

impl Instance {
    pub fn subscriptions(&self, d: usize) -> &[u32] {
        &self.subs[self.sub_start[d] as usize..self.sub_start[d + 1] as usize]
    }
}

impl Workload {
    pub fn from_file(path: &Path) -> Result<Workload> {
        let text = std::fs::read_to_string(path).map_err(|e| WorkloadError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(shardcast_plan::text::strip_bom(&text))
            .map_err(|e| WorkloadError::Json(e.to_string()))
    }

    /// Validates the workload and builds its index form.
    pub fn index(&self) -> Result<Instance> {
        self.resources.validate()?;
        let w = &self.cost;
        for (field, value) in [
            ("overload", w.overload),
            ("copies", w.copies),
            ("wasted", w.wasted),
            ("low_battery", w.low_battery),
            ("latency", w.latency),
            ("shard", w.shard),
            ("migration", w.migration),
        ] {
            if !(0.0..=MAX_RATE).contains(&value) {
                return Err(WorkloadError::Weight { field, value });
            }
        }
        let mut topic_index: HashMap<&str, u32> = HashMap::with_capacity(self.topics.len());
        let mut predefined: HashMap<u16, &str> = HashMap::new();
        for (i, t) in self.topics.iter().enumerate() {
            if t.name.is_empty() || t.name.len() > TOPIC_MAX {
                return Err(WorkloadError::BadTopicName(cut(&t.name)));
            }
            if !(0.0..=MAX_RATE).contains(&t.rate) {
                return Err(WorkloadError::BadRate {
                    topic: t.name.clone(),
                    rate: t.rate,
                });
            }
            if topic_index.insert(&t.name, i as u32).is_some() {
                return Err(WorkloadError::DuplicateTopic(t.name.clone()));
            }
            if let Some(id) = t.mqttsn_predefined_id {
                if id == 0 || id == u16::MAX {
                    return Err(WorkloadError::ReservedPredefinedId {
                        topic: t.name.clone(),
                        id,
                    });
                }
                if let Some(other) = predefined.insert(id, &t.name) {
                    return Err(WorkloadError::DuplicatePredefinedId {
                        id,
                        a: other.to_string(),
                        b: t.name.clone(),
                    });
                }
            }
        }
        let checked = self.policy.check()?;
        let n = self.devices.len();
        let mut checker = DeviceChecker::default();
        let mut sub_start = Vec::with_capacity(n + 1);
        let mut subs = Vec::new();
        let mut waste_weight = Vec::with_capacity(n);
        sub_start.push(0u32);
        for (index, d) in self.devices.iter().enumerate() {
            checker.check(index, &d.id, d.group.as_deref(), d.address.as_deref())?;
            for (field, v) in [
                ("location", &d.location),
                ("type", &d.kind),
                ("sla", &d.sla),
            ] {
                if let Some(v) = v
                    && (v.is_empty() || v.len() > ATTRIBUTE_MAX || v.chars().any(char::is_control))
                {
                    return Err(WorkloadError::BadAttribute {
                        device: d.id.clone(),
                        field,
                    });
                }
            }
            if !(0.0..=1.0).contains(&d.battery) {
                return Err(WorkloadError::BadBattery {
                    device: d.id.clone(),
                    battery: d.battery,
                });
            }
            let mut mine = d
                .subscriptions
                .iter()
                .map(|s| {
                    topic_index.get(s.as_str()).copied().ok_or_else(|| {
                        WorkloadError::UnknownTopic {
                            device: d.id.clone(),
                            topic: s.clone(),
                        }
                    })
                })
                .collect::<Result<Vec<u32>>>()?;
            // A topic listed twice is one subscription.
            mine.sort_unstable();
            mine.dedup();
            subs.extend(mine);
            sub_start.push(subs.len() as u32);
            waste_weight.push(if d.connected {
                1.0 + w.low_battery * (1.0 - d.battery)
            } else {
                0.0
            });
        }
        // Boundary classes, numbered in order of first appearance.
        let mut class_names: Vec<String> = Vec::new();
        let mut class_of: HashMap<String, u32> = HashMap::new();
        let mut class_sla: Vec<&str> = Vec::new();
        let class: Vec<u32> = self
            .devices
            .iter()
            .map(|d| {
                let a = d.attributes();
                let name = self.policy.class_name(&checked, &a);
                *class_of.entry(name).or_insert_with_key(|name| {
                    class_names.push(name.clone());
                    class_sla.push(a.sla.unwrap_or(""));
                    class_names.len() as u32 - 1
                })
            })
            .collect();
        if class_names.is_empty() {
            class_names.push(String::new());
            class_sla.push("");
        }
        let r = &self.resources;
        let mut class_usable = Vec::with_capacity(class_names.len());
        for &sla in &class_sla {
            let usable = self.policy.usable(sla, r.shard_capacity, r.headroom);
            if usable <= 0.0 {
                return Err(WorkloadError::ClassCapacity {
                    class: cut(sla),
                    usable,
                    capacity: r.shard_capacity,
                });
            }
            class_usable.push(usable);
        }
        let class_priority: Vec<u32> = class_sla.iter().map(|s| self.policy.priority(s)).collect();
        let nc = class_names.len();
        // Per class only where there are classes: one pass over every
        // subscription, kept off the path of a fleet without boundaries.
        let mut class_rate = Vec::new();
        if nc > 1 {
            class_rate = vec![0.0; nc];
            let mut seen = vec![u32::MAX; self.topics.len()];
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_unstable_by_key(|&d| class[d]);
            for &d in &order {
                let c = class[d];
                for &t in &subs[sub_start[d] as usize..sub_start[d + 1] as usize] {
                    if seen[t as usize] != c {
                        seen[t as usize] = c;
                        class_rate[c as usize] += self.topics[t as usize].rate;
                    }
                }
            }
        }
        let class_limit = class_limits(
            &class_rate,
            &class_usable,
            &class_priority,
            r.max_shards as usize,
        );
        let together = checked
            .together
            .iter()
            .zip(&self.policy.prefer_together)
            .map(|(&(k, weight), p)| {
                let mut names: Vec<String> = Vec::new();
                let mut index: HashMap<&str, u32> = HashMap::new();
                let value = self
                    .devices
                    .iter()
                    .map(|d| {
                        let v = k.value(&d.attributes());
                        *index.entry(v).or_insert_with(|| {
                            names.push(v.to_string());
                            names.len() as u32 - 1
                        })
                    })
                    .collect();
                Together {
                    key: p.key.clone(),
                    weight,
                    value,
                    names,
                }
            })
            .collect();
        Ok(Instance {
            resources: self.resources.clone(),
            weights: self.cost,
            topics: self.topics.iter().map(|t| t.name.clone()).collect(),
            rates: self.topics.iter().map(|t| t.rate).collect(),
            predefined: self.topics.iter().map(|t| t.mqttsn_predefined_id).collect(),
            devices: self.devices.iter().map(|d| d.id.clone()).collect(),
            groups: self.devices.iter().map(|d| d.group.clone()).collect(),
            addresses: self.devices.iter().map(|d| d.address.clone()).collect(),
            waste_weight,
            sub_start,
            subs,
            class,
            class_names,
            class_usable,
            class_priority,
            class_rate,
            class_limit,
            together,
            policy: self.policy.clone(),
        })
    }
}

impl Resources {
    /// Checks every resource field; also used for simulator scenarios.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(WorkloadError::Resource { field, reason });
        if !self.shard_capacity.is_finite() || self.shard_capacity <= 0.0 {
            return bad(
                "shard_capacity",
                format!("{} must be > 0 (messages/s)", self.shard_capacity),
            );
        }
        if self.max_shards == 0 || self.max_shards > MAX_SHARDS {
            return bad(
                "max_shards",
                format!("{} must be within 1..={MAX_SHARDS}", self.max_shards),
            );
        }
        if !(0.0..1.0).contains(&self.headroom) {
            return bad("headroom", format!("{} must be within 0..1", self.headroom));
        }
        if !(0.0..1.0).contains(&self.merge_below) {
            return bad(
                "merge_below",
                format!("{} must be within 0..1", self.merge_below),
            );
        }
        if let Some(b) = self.bandwidth
            && (!b.is_finite() || b <= 0.0)
        {
            return bad("bandwidth", format!("{b} must be > 0 (messages/s)"));
        }
        if self.egress.is_empty() || self.egress.len() > 15 {
            return bad(
                "egress",
                format!("{:?} is not an interface name", self.egress),
            );
        }
        match self.group_v4_base.parse::<Ipv4Addr>() {
            Ok(a) if a.is_multicast() => {}
            _ => {
                return bad(
                    "group_v4_base",
                    format!("{:?} is not an IPv4 multicast address", self.group_v4_base),
                );
            }
        }
        if let Some(v6) = &self.group_v6_base {
            match v6.parse::<Ipv6Addr>() {
                Ok(a) if a.is_multicast() => {}
                _ => {
                    return bad(
                        "group_v6_base",
                        format!("{v6:?} is not an IPv6 multicast address"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Load above which a shard counts as overloaded.
    pub fn usable_capacity(&self) -> f64 {
        self.shard_capacity * (1.0 - self.headroom)
    }

    /// These resources for rates that are forecast peaks over the time
    /// until the next plan can take effect: merges two thirds of the way
    /// from `merge_below` to usable capacity. `merge_below` is hysteresis
    /// for rates measured in the past, which cannot see a rise coming (a
    /// merge into one would be split again a cycle later); a forecast
    /// peak already holds the rise, and the headroom keeps the margin for
    /// what it misses, so only a band against flapping on its error is
    /// left (0.7 becomes 0.9).
    pub fn foreseeing(&self) -> Resources {
        Resources {
            merge_below: self.merge_below + (1.0 - self.merge_below) * 2.0 / 3.0,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Workload {
        serde_json::from_str(
            r#"{
              "resources": {"shard_capacity": 100, "max_shards": 4, "egress": "eth1"},
              "topics": [{"name": "a", "rate": 10}, {"name": "b", "rate": 5}],
              "devices": [
                {"id": "d1", "subscriptions": ["a", "b", "a"], "battery": 0.5},
                {"id": "d2", "subscriptions": ["b"], "connected": false}
              ]
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn foreseeing_merges_two_thirds_of_the_way_to_usable_and_changes_nothing_else() {
        let r = sample().resources;
        assert_eq!(r.merge_below, 0.7);
        let f = r.foreseeing();
        assert!((f.merge_below - 0.9).abs() < 1e-12, "{}", f.merge_below);
        assert_eq!(
            Resources {
                merge_below: 0.7,
                ..f.clone()
            },
            r
        );
        // Still a valid bound: below usable, whatever merge_below was.
        for m in [0.0, 0.5, 0.99] {
            let f = Resources {
                merge_below: m,
                ..r.clone()
            }
            .foreseeing();
            assert!(f.merge_below >= m && f.merge_below < 1.0);
            f.validate().unwrap();
        }
    }

    #[test]
    fn indexes_and_weighs() {
        let i = sample().index().unwrap();
        assert_eq!(i.subscriptions(0), &[0, 1]);
        assert_eq!(i.subscriptions(1), &[1]);
        assert_eq!(i.waste_weight, vec![1.0 + 4.0 * 0.5, 0.0]);
        assert_eq!(i.resources.usable_capacity(), 80.0);
    }

    #[test]
    fn refuses_bad_input() {
        let mut w = sample();
        w.devices[1].subscriptions.push("zz".into());
        assert_eq!(
            w.index().unwrap_err(),
            WorkloadError::UnknownTopic {
                device: "d2".into(),
                topic: "zz".into()
            }
        );
        let mut w = sample();
        w.devices[1].id = "d1".into();
        assert_eq!(
            w.index().unwrap_err(),
            WorkloadError::Device(DeviceError::Duplicate("d1".into()))
        );
        let mut w = sample();
        w.resources.shard_capacity = 0.0;
        assert!(
            w.index()
                .unwrap_err()
                .to_string()
                .starts_with("resources.shard_capacity")
        );
        let mut w = sample();
        w.topics[1].name = "a".into();
        assert_eq!(
            w.index().unwrap_err(),
            WorkloadError::DuplicateTopic("a".into())
        );
        let mut w = sample();
        w.topics[0].rate = -1.0;
        assert!(matches!(w.index(), Err(WorkloadError::BadRate { .. })));
        let mut w = sample();
        w.devices[0].battery = 1.5;
        assert!(matches!(w.index(), Err(WorkloadError::BadBattery { .. })));
        let mut w = sample();
        w.resources.max_shards = 0;
        assert!(w.index().is_err());
        let mut w = sample();
        w.resources.group_v4_base = "10.0.0.1".into();
        assert!(w.index().is_err());
        let mut w = sample();
        w.devices[0].address = Some("198.18.0.1".into());
        w.devices[1].address = Some("198.18.0.1".into());
        assert!(matches!(
            w.index(),
            Err(WorkloadError::Device(DeviceError::SharedAddress { .. }))
        ));
        let mut w = sample();
        w.cost.copies = f64::NAN;
        assert!(matches!(w.index(), Err(WorkloadError::Weight { .. })));
    }

    #[test]
    fn a_byte_order_mark_is_not_an_error() {
        let p = std::env::temp_dir().join(format!("sc-bom-{}.json", std::process::id()));
        let text = serde_json::to_string(&sample()).unwrap();
        std::fs::write(&p, format!("\u{feff}{text}")).unwrap();
        let w = Workload::from_file(&p).unwrap();
        assert_eq!(w, sample());
        std::fs::remove_file(&p).unwrap();
    }
}

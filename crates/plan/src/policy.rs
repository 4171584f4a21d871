//! The shard boundary policy: what may share a shard, what should, and
//! what each service-level class gets. It lives in the plan crate because
//! both documents carry it: the planner's workload states it
//! (`docs/workload-format.md`, "Policy") and the plan records the policy it
//! was planned under (`docs/plan-format.md`), so `router-ctl check`,
//! `maps dump` and `status` can show and validate it without the workload.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::text::cut;

/// Deepest `location:N` a policy may name.
pub const LOCATION_DEPTH_MAX: usize = 64;
/// Highest weight of a soft preference (the scale of the planner's other
/// cost weights).
pub const WEIGHT_MAX: f64 = 1e9;
/// Most service-level classes a policy may describe.
pub const CLASSES_MAX: usize = 1024;

/// Everything that can be wrong with a policy; each names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "policy.{field}: {key:?} is not a policy key (sla, type, location, location:N with N in 1..={LOCATION_DEPTH_MAX}), or is listed twice"
    )]
    Key { field: &'static str, key: String },
    #[error(
        "policy.prefer_together[{key:?}]: weight {weight} must be a number within 0..={WEIGHT_MAX}"
    )]
    Weight { key: String, weight: String },
    #[error(
        "policy.classes: per-class resources need \"sla\" in separate_by (a class's headroom cannot be kept while other classes' load shares its shards)"
    )]
    ClassesWithoutSla,
    #[error("policy.classes: {0} classes; at most {CLASSES_MAX}")]
    TooManyClasses(usize),
    #[error("policy.classes[{class:?}].{field}: {reason}")]
    Class {
        class: String,
        field: &'static str,
        reason: String,
    },
}

/// What may share a shard, what should, and per-class resources.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Hard boundaries: devices that differ in any of these keys never
    /// share a shard. Keys: `sla`, `type`, `location` (the whole path) and
    /// `location:N` (its first N segments: `location:1` never across
    /// sites).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub separate_by: Vec<String>,
    /// Soft preferences: each distinct value of the key a shard holds costs
    /// `weight` (so a location split over two shards, or two locations in
    /// one shard, costs one `weight` more than neither), priced beside the
    /// copies in the planner's cost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefer_together: Vec<Preference>,
    /// Resources per service-level class (the device's `sla`; devices
    /// without one are the class `""`), used only with `sla` in
    /// `separate_by`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, ClassSpec>,
}

/// One soft preference of [`Policy::prefer_together`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preference {
    pub key: String,
    /// Cost of one more distinct value in a shard, in the units of the
    /// planner's cost (a copy of one message/s costs `cost.copies`).
    pub weight: f64,
}

/// What one service-level class gets.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    /// Fraction of a shard's capacity kept free in this class's shards
    /// (default: `resources.headroom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headroom: Option<f64>,
    /// Mean queueing latency the class's shards must stay under
    /// (milliseconds). A shard is modelled as an M/M/1 queue serving
    /// `shard_capacity` messages/s, whose mean time in system is
    /// `1 / (capacity - load)`: the target caps the load at
    /// `capacity - 1000 / target_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_target_ms: Option<f64>,
    /// Classes with a higher priority get their shards first when
    /// `max_shards` is short; the others absorb the overload.
    #[serde(default)]
    pub priority: u32,
}

/// One key of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Sla,
    Type,
    /// The first N segments of the location (all of them: `None`).
    Location(Option<usize>),
}

/// A device's attributes, as the policy reads them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attributes<'a> {
    pub location: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub sla: Option<&'a str>,
}

impl Key {
    pub fn parse(key: &str) -> Option<Key> {
        match key {
            "sla" => Some(Key::Sla),
            "type" => Some(Key::Type),
            "location" => Some(Key::Location(None)),
            _ => {
                let n: usize = key.strip_prefix("location:")?.parse().ok()?;
                (1..=LOCATION_DEPTH_MAX)
                    .contains(&n)
                    .then_some(Key::Location(Some(n)))
            }
        }
    }

    /// The device's value for this key ("" when it has none).
    pub fn value<'a>(self, a: &Attributes<'a>) -> &'a str {
        match self {
            Key::Sla => a.sla.unwrap_or(""),
            Key::Type => a.kind.unwrap_or(""),
            Key::Location(depth) => {
                let loc = a.location.unwrap_or("");
                match depth {
                    None => loc,
                    Some(n) => match loc.match_indices('/').nth(n - 1) {
                        Some((i, _)) => &loc[..i],
                        None => loc,
                    },
                }
            }
        }
    }
}

/// A validated policy in the form the planner uses.
#[derive(Clone, Debug, Default)]
pub struct Checked {
    /// The hard boundary keys, in the policy's order.
    pub separate: Vec<Key>,
    /// Soft keys with their weights.
    pub together: Vec<(Key, f64)>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.separate_by.is_empty() && self.prefer_together.is_empty() && self.classes.is_empty()
    }

    /// Checks every field (keys known and not repeated, weights and class
    /// resources in range, classes only with `sla` a boundary).
    pub fn check(&self) -> Result<Checked, PolicyError> {
        let mut separate = Vec::new();
        for key in &self.separate_by {
            match Key::parse(key) {
                Some(k) if !separate.contains(&k) => separate.push(k),
                _ => {
                    return Err(PolicyError::Key {
                        field: "separate_by",
                        key: cut(key),
                    });
                }
            }
        }
        let mut together: Vec<(Key, f64)> = Vec::new();
        for p in &self.prefer_together {
            match Key::parse(&p.key) {
                Some(k) if !together.iter().any(|t| t.0 == k) => {
                    if !(0.0..=WEIGHT_MAX).contains(&p.weight) {
                        return Err(PolicyError::Weight {
                            key: cut(&p.key),
                            weight: p.weight.to_string(),
                        });
                    }
                    together.push((k, p.weight));
                }
                _ => {
                    return Err(PolicyError::Key {
                        field: "prefer_together",
                        key: cut(&p.key),
                    });
                }
            }
        }
        if !self.classes.is_empty() && !separate.contains(&Key::Sla) {
            return Err(PolicyError::ClassesWithoutSla);
        }
        if self.classes.len() > CLASSES_MAX {
            return Err(PolicyError::TooManyClasses(self.classes.len()));
        }
        for (name, c) in &self.classes {
            let bad = |field, reason: String| {
                Err(PolicyError::Class {
                    class: cut(name),
                    field,
                    reason,
                })
            };
            if let Some(h) = c.headroom
                && !(0.0..1.0).contains(&h)
            {
                return bad("headroom", format!("{h} must be within 0..1"));
            }
            if let Some(t) = c.latency_target_ms
                && !(t.is_finite() && t > 0.0 && t <= 1e9)
            {
                return bad(
                    "latency_target_ms",
                    format!("{t} must be a number of milliseconds within (0, 1e9]"),
                );
            }
        }
        Ok(Checked { separate, together })
    }

    /// The boundary class name of a device: `key=value` pairs of
    /// `separate_by`, comma-separated (empty without boundaries).
    pub fn class_name(&self, checked: &Checked, a: &Attributes) -> String {
        checked
            .separate
            .iter()
            .zip(&self.separate_by)
            .map(|(k, key)| format!("{key}={}", k.value(a)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The usable capacity of a shard of service-level class `sla`: the
    /// class's headroom (or `default_headroom`), and its latency target.
    pub fn usable(&self, sla: &str, capacity: f64, default_headroom: f64) -> f64 {
        let spec = self.classes.get(sla);
        let headroom = spec.and_then(|c| c.headroom).unwrap_or(default_headroom);
        let mut usable = capacity * (1.0 - headroom);
        if let Some(t) = spec.and_then(|c| c.latency_target_ms) {
            usable = usable.min(capacity - 1000.0 / t);
        }
        usable
    }

    pub fn priority(&self, sla: &str) -> u32 {
        self.classes.get(sla).map_or(0, |c| c.priority)
    }

    /// One line for operators: the boundaries, preferences and classes
    /// (`none` for an empty policy).
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "none (any devices may share a shard)".into();
        }
        let mut parts = Vec::new();
        if !self.separate_by.is_empty() {
            parts.push(format!("separate_by {}", self.separate_by.join(", ")));
        }
        if !self.prefer_together.is_empty() {
            let p: Vec<String> = self
                .prefer_together
                .iter()
                .map(|p| format!("{} (weight {})", p.key, p.weight))
                .collect();
            parts.push(format!("prefer_together {}", p.join(", ")));
        }
        if !self.classes.is_empty() {
            let c: Vec<String> = self
                .classes
                .iter()
                .map(|(name, c)| {
                    let mut v = vec![format!("priority {}", c.priority)];
                    if let Some(h) = c.headroom {
                        v.push(format!("headroom {h}"));
                    }
                    if let Some(t) = c.latency_target_ms {
                        v.push(format!("latency target {t} ms"));
                    }
                    format!("{name:?} ({})", v.join(", "))
                })
                .collect();
            parts.push(format!("classes {}", c.join(", ")));
        }
        parts.join("; ")
    }

    /// Checks that a shard's class name fits the policy: one `key=value`
    /// per boundary key, in order (empty without boundaries).
    pub fn check_class_name(&self, name: &str) -> bool {
        if self.separate_by.is_empty() {
            return name.is_empty();
        }
        // Values may hold commas and '=' (a location is free text), so
        // the name is matched key by key from the front.
        let mut rest = name;
        for (i, key) in self.separate_by.iter().enumerate() {
            let Some(after) = rest
                .strip_prefix(key.as_str())
                .and_then(|r| r.strip_prefix('='))
            else {
                return false;
            };
            rest = match self.separate_by.get(i + 1) {
                None => "",
                Some(next) => match after.find(&format!(",{next}=")) {
                    Some(j) => &after[j + 1..],
                    None => return false,
                },
            };
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: &str) -> Policy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn keys_values_and_class_names() {
        let a = Attributes {
            location: Some("north/b1/f3"),
            kind: Some("camera"),
            sla: Some("premium"),
        };
        assert_eq!(Key::parse("location:2").unwrap().value(&a), "north/b1");
        assert_eq!(Key::parse("location:9").unwrap().value(&a), "north/b1/f3");
        assert_eq!(Key::parse("type").unwrap().value(&a), "camera");
        assert_eq!(Key::Sla.value(&Attributes::default()), "");
        for bad in ["", "site", "location:0", "location:65", "location:x", "SLA"] {
            assert_eq!(Key::parse(bad), None, "{bad}");
        }
        let pol = p(r#"{"separate_by": ["location:1", "sla"]}"#);
        let c = pol.check().unwrap();
        let name = pol.class_name(&c, &a);
        assert_eq!(name, "location:1=north,sla=premium");
        assert!(pol.check_class_name(&name));
        assert!(!pol.check_class_name("sla=premium,location:1=north"));
        assert!(!pol.check_class_name(""));
        assert!(Policy::default().check_class_name(""));
        assert!(!Policy::default().check_class_name("sla=x"));
        // Values holding the separators still read back.
        let odd = Attributes {
            location: Some("a,sla=b"),
            ..a
        };
        assert!(pol.check_class_name(&pol.class_name(&c, &odd)));
    }

    #[test]
    fn bad_policies_are_named() {
        for (json, want) in [
            (r#"{"separate_by": ["sla", "sla"]}"#, "separate_by"),
            (
                r#"{"prefer_together": [{"key": "floor", "weight": 1}]}"#,
                "prefer_together",
            ),
            (
                r#"{"prefer_together": [{"key": "type", "weight": -1}]}"#,
                "weight -1",
            ),
            (
                r#"{"prefer_together": [{"key": "type", "weight": 1e10}]}"#,
                "weight",
            ),
            (r#"{"classes": {"gold": {"priority": 1}}}"#, "need \"sla\""),
            (
                r#"{"separate_by": ["sla"], "classes": {"gold": {"headroom": 1}}}"#,
                "headroom",
            ),
            (
                r#"{"separate_by": ["sla"], "classes": {"gold": {"latency_target_ms": 0}}}"#,
                "latency_target_ms",
            ),
        ] {
            let e = p(json).check().unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        assert!(serde_json::from_str::<Policy>(r#"{"separate": ["sla"]}"#).is_err());
    }

    #[test]
    fn class_capacity_follows_headroom_and_latency() {
        let pol = p(r#"{"separate_by": ["sla"], "classes": {
                "gold": {"headroom": 0.5, "priority": 2},
                "fast": {"latency_target_ms": 1}}}"#);
        pol.check().unwrap();
        assert_eq!(pol.usable("gold", 100.0, 0.2), 50.0);
        assert_eq!(pol.usable("", 100.0, 0.2), 80.0);
        // M/M/1: 1 ms in system at 10k msg/s leaves 9k.
        assert_eq!(pol.usable("fast", 10_000.0, 0.0), 9_000.0);
        assert_eq!(pol.usable("fast", 10_000.0, 0.2), 8_000.0);
        assert_eq!((pol.priority("gold"), pol.priority("other")), (2, 0));
    }
}

//! The routes in force since the last counter reading, by topic key: what
//! the daemon charges each topic's count to when it works out the
//! messages delivered into each shard's group. Charged per reading (a
//! tick), not per bucket: a topic a migration moves off a shard mid-bucket
//! costs that shard what it sent before it left, not the whole bucket.
//!
//! Kept by the data plane's topic key (what plans name), and indexed by
//! counter slot ([`SlotRoutes`]) whenever they change, so that charging a
//! reading of 100k topics costs two array reads per topic; by name (a
//! string hash, a key compare and a tree node each on the heap) folding a
//! bucket took ~70 ms of a tick, by key through hash maps ~40 ms.

use std::collections::BTreeSet;

use router_common::topic::TopicKey;
use rustc_hash::FxHashMap;
use shardcast_plan::CompiledPlan;

/// One topic's routes since the last reading.
#[derive(Clone, Debug, Default)]
pub struct TickRoute {
    /// False for the router's own `$` topics (the probes): no one's load.
    pub load: bool,
    /// Shards, ascending, each once.
    pub shards: Vec<u32>,
}

/// Every route in force since the last reading: the installed plan's then
/// and every plan's installed since.
#[derive(Clone, Debug, Default)]
pub struct TickRoutes {
    by_key: FxHashMap<TopicKey, TickRoute>,
    /// Every shard any of them names.
    shards: BTreeSet<u32>,
}

impl TickRoutes {
    /// The routes of `plan` alone.
    pub fn of(plan: Option<&CompiledPlan>) -> Self {
        let mut r = Self::default();
        if let Some(p) = plan {
            r.extend(p);
        }
        r
    }

    /// Adds `plan`'s routes to those already in force: each topic's under
    /// its name key, as the compiled plan holds it (MQTT-SN id aliases
    /// count under the name's slot, so they are left out).
    pub fn extend(&mut self, plan: &CompiledPlan) {
        self.by_key.reserve(plan.topics.len());
        for r in plan
            .routes
            .iter()
            .filter(|r| r.key == plan.name_keys[r.topic])
        {
            let e = self.by_key.entry(r.key).or_insert_with(|| TickRoute {
                load: crate::load::is_load(&plan.topics[r.topic]),
                shards: Vec::new(),
            });
            for &i in &r.shards {
                let s = plan.shards[i as usize].id;
                if let Err(at) = e.shards.binary_search(&s) {
                    e.shards.insert(at, s);
                }
                self.shards.insert(s);
            }
        }
    }

    /// Every shard a route names.
    pub fn shards(&self) -> impl Iterator<Item = u32> + '_ {
        self.shards.iter().copied()
    }

    /// The same routes by counter slot (`slots`: slot → topic key), the
    /// load's only: what a reading is charged with, by array index.
    pub fn by_slot(&self, slots: &FxHashMap<u32, TopicKey>) -> SlotRoutes {
        let n = slots.keys().max().map_or(0, |&m| m as usize + 1);
        let mut keys = vec![None; n];
        for (&slot, key) in slots {
            keys[slot as usize] = Some(key);
        }
        let mut r = SlotRoutes {
            starts: Vec::with_capacity(n + 1),
            shards: Vec::new(),
        };
        r.starts.push(0);
        for key in keys {
            if let Some(route) = key.and_then(|k| self.by_key.get(k))
                && route.load
            {
                r.shards.extend_from_slice(&route.shards);
            }
            r.starts.push(r.shards.len() as u32);
        }
        r
    }
}

/// [`TickRoutes`] indexed by counter slot: each slot's shards in one flat
/// array. Charging a reading of 100k topics by topic key took three hash
/// lookups per topic (~40 ms of a tick); by slot it is two array reads.
#[derive(Clone, Debug, Default)]
pub struct SlotRoutes {
    /// Slot `i`'s shards are `shards[starts[i]..starts[i + 1]]`.
    starts: Vec<u32>,
    shards: Vec<u32>,
}

impl SlotRoutes {
    /// The shards `slot`'s topic was routed to (none: no route, a slot
    /// past the table, or not load).
    pub fn shards(&self, slot: u32) -> &[u32] {
        let i = slot as usize;
        match (self.starts.get(i), self.starts.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.shards[a as usize..b as usize],
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use router_common::topic::topic_key;
    use shardcast_plan::Plan;

    fn plan(generation: u64, topics: &[(&str, &[u32])]) -> CompiledPlan {
        let text = format!(
            r#"{{"generation": {generation}, "shards": [{}], "topics": [{}]}}"#,
            (1..=4)
                .map(|i| format!(r#"{{"id": {i}, "group_v4": "239.1.1.{i}", "egress": "e"}}"#))
                .collect::<Vec<_>>()
                .join(","),
            topics
                .iter()
                .map(|(n, s)| format!(r#"{{"name": "{n}", "shards": {s:?}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        Plan::from_json(&text).unwrap().compile().unwrap()
    }

    #[test]
    fn routes_union_over_the_bucket_and_probes_are_no_load() {
        let mut r = TickRoutes::of(Some(&plan(1, &[("a", &[2, 1]), ("$probe/1", &[1])])));
        r.extend(&plan(2, &[("a", &[3, 1]), ("b", &[4])]));
        assert_eq!(r.shards().collect::<Vec<_>>(), [1, 2, 3, 4]);
        // By slot: a's shards over both plans, b's, the probe's none (no
        // one's load), an unknown topic's none, past the end none.
        let slots = FxHashMap::from_iter([
            (0, topic_key(b"a")),
            (1, topic_key(b"c")),
            (2, topic_key(b"$probe/1")),
            (3, topic_key(b"b")),
        ]);
        let by = r.by_slot(&slots);
        assert_eq!(by.shards(0), [1, 2, 3]);
        assert!(by.shards(1).is_empty());
        assert!(by.shards(2).is_empty());
        assert_eq!(by.shards(3), [4]);
        assert!(by.shards(4).is_empty());
        assert!(TickRoutes::default().by_slot(&slots).shards(0).is_empty());
        assert!(TickRoutes::of(None).shards().next().is_none());
    }
}

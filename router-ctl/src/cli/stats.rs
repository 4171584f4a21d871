//! `router-ctl stats`: counters per verdict/reason, per topic, and the
//! keys of publishes no route matched.

use std::fmt;

use anyhow::Result;
use serde::Serialize;
use shardcast_dataplane::Dataplane;

use super::Globals;
use crate::state;

#[derive(Serialize)]
struct Count {
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct TopicCount {
    key: String,
    topic: Option<String>,
    slot: u32,
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct UnroutedCount {
    key: String,
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct Stats {
    generation: u64,
    /// Every reason, in the data plane's order (zeros included); a JSON
    /// object keyed by label.
    #[serde(serialize_with = "as_map")]
    reasons: Vec<(&'static str, Count)>,
    topics: Vec<TopicCount>,
    unrouted: Vec<UnroutedCount>,
}

fn as_map<S: serde::Serializer>(v: &[(&'static str, Count)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(k, c)| (k, c)))
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "generation {}", self.generation)?;
        writeln!(
            f,
            "{:<22} {:>12} {:>14}",
            "verdict/reason", "packets", "bytes"
        )?;
        for (r, c) in &self.reasons {
            if c.packets > 0 {
                writeln!(f, "{:<22} {:>12} {:>14}", r, c.packets, c.bytes)?;
            }
        }
        writeln!(f, "{:<32} {:>12} {:>14}", "topic", "packets", "bytes")?;
        for t in &self.topics {
            writeln!(
                f,
                "{:<32} {:>12} {:>14}",
                t.topic.as_deref().unwrap_or(&t.key),
                t.packets,
                t.bytes
            )?;
        }
        if !self.unrouted.is_empty() {
            writeln!(f, "unrouted topic keys: {}", self.unrouted.len())?;
        }
        Ok(())
    }
}

pub fn run(g: &Globals) -> Result<()> {
    let dp = Dataplane::open(&g.pin_root)?;
    let c = dp.counters()?;
    let meta = dp.meta()?;
    let names = state::key_names(&g.state_dir, meta.generation);
    let stats = Stats {
        generation: meta.generation,
        reasons: c
            .reasons
            .iter()
            .map(|(r, v)| {
                (
                    r.label(),
                    Count {
                        packets: v.packets,
                        bytes: v.bytes,
                    },
                )
            })
            .collect(),
        topics: c
            .topics
            .iter()
            .map(|(k, (slot, v))| TopicCount {
                key: format!("{:016x}", k.hash),
                topic: names.get(k).cloned(),
                slot: *slot,
                packets: v.packets,
                bytes: v.bytes,
            })
            .collect(),
        unrouted: c
            .unrouted
            .iter()
            .map(|(k, v)| UnroutedCount {
                key: format!("{:016x}", k.hash),
                packets: v.packets,
                bytes: v.bytes,
            })
            .collect(),
    };
    g.print(&stats)
}

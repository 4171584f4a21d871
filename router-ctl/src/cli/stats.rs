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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_keep_the_data_plane_order_in_text_and_are_an_object_in_json() {
        let stats = Stats {
            generation: 3,
            reasons: vec![
                (
                    "redirected",
                    Count {
                        packets: 5,
                        bytes: 500,
                    },
                ),
                (
                    "not_ip",
                    Count {
                        packets: 0,
                        bytes: 0,
                    },
                ),
                (
                    "fragment",
                    Count {
                        packets: 2,
                        bytes: 90,
                    },
                ),
            ],
            topics: vec![],
            unrouted: vec![],
        };
        let json: serde_json::Value = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["reasons"]["fragment"]["packets"], 2);
        assert_eq!(json["reasons"]["not_ip"]["bytes"], 0);
        let text = stats.to_string();
        let (r, f) = (
            text.find("redirected").unwrap(),
            text.find("fragment").unwrap(),
        );
        assert!(r < f, "{text}");
        assert!(
            !text.contains("not_ip"),
            "zero reasons are left out: {text}"
        );
    }
}

//! Plans whose multi-shard routes span several egresses in many ways
//! ("shapes": the egresses of a route's copies), for the tests and the
//! bench of the broadcast maps an install makes per shape.

use shardcast_plan::{Plan, ShardSpec, TopicSpec};

/// Shards per egress in a shape plan: shard `16 * e + i + 1` is egress
/// `e`'s `i`-th.
const PER_EGRESS: u32 = 16;

/// A plan with 16 shards on each of `egresses` and, for k = 2..16 in
/// turn, a topic per way to split k shards over the egresses that uses
/// two of them at least (each egress's first shards), up to `limit`
/// shapes. Shape `i`'s topic is `s<i>`; with `reversed`, topic `r<i>`
/// lists the same shards in the opposite order (the same shape).
pub fn shape_plan(egresses: &[&str], limit: usize, reversed: bool) -> Plan {
    let shards = (0..egresses.len() as u32 * PER_EGRESS)
        .map(|i| ShardSpec {
            id: i + 1,
            group_v4: Some(format!("239.5.{}.{}", i / 200, i % 200 + 1)),
            group_v6: None,
            egress: egresses[(i / PER_EGRESS) as usize].into(),
            port: None,
            capacity: None,
            class: None,
        })
        .collect();
    let mut topics = Vec::new();
    let mut shapes = 0;
    for k in 2..=PER_EGRESS {
        for split in splits(k, egresses.len()) {
            if shapes == limit {
                break;
            }
            if split.iter().filter(|&&n| n > 0).count() < 2 {
                continue;
            }
            let list: Vec<u32> = split
                .iter()
                .enumerate()
                .flat_map(|(e, &n)| (0..n).map(move |i| PER_EGRESS * e as u32 + i + 1))
                .collect();
            if reversed {
                topics.push(topic(
                    format!("r{shapes}"),
                    list.iter().rev().copied().collect(),
                ));
            }
            topics.push(topic(format!("s{shapes}"), list));
            shapes += 1;
        }
    }
    Plan {
        generation: 1,
        shards,
        devices: vec![],
        topics,
        policy: Default::default(),
    }
}

/// The shape number of a topic of [`shape_plan`] (`s<i>` or `r<i>`).
pub fn shape_number(topic: &str) -> Option<usize> {
    topic.get(1..)?.parse().ok()
}

fn topic(name: String, shards: Vec<u32>) -> TopicSpec {
    TopicSpec {
        name,
        shards,
        mqttsn_predefined_id: None,
        mqttsn_registered_ids: vec![],
    }
}

/// Every way to put `k` shards on `parts` egresses (counts per egress).
fn splits(k: u32, parts: usize) -> Vec<Vec<u32>> {
    if parts == 1 {
        return vec![vec![k]];
    }
    (0..=k)
        .flat_map(|first| {
            splits(k - first, parts - 1)
                .into_iter()
                .map(move |mut rest| {
                    rest.insert(0, first);
                    rest
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_egresses_split_in_120_ways_four_in_more_than_the_slots() {
        let two = shape_plan(&["a", "b"], usize::MAX, true);
        assert_eq!(two.topics.len(), 240);
        assert!(two.compile().is_ok());
        let four = shape_plan(&["a", "b", "c", "d"], 1_100, false);
        assert_eq!(four.topics.len(), 1_100);
        assert!(four.compile().is_ok());
        // Every split uses two egresses at least, 2 to 16 shards.
        for t in &four.topics {
            let egresses: std::collections::HashSet<u32> =
                t.shards.iter().map(|s| (s - 1) / PER_EGRESS).collect();
            assert!(egresses.len() >= 2 && (2..=16).contains(&t.shards.len()));
        }
        assert_eq!(shape_number("r17"), Some(17));
    }
}

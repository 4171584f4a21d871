//! The fleet's connected components as a start: devices linked by the
//! topics they share fall apart, in many real fleets (sites with no common
//! topic, disjoint tenants), into groups no copy ever needs to cross. When
//! every group fits one shard, packing whole groups into shards (first fit
//! by decreasing load) is a plan with no inter-shard copy at all, which a
//! partitioner balancing many shards at once may miss.

use crate::{NONE, subscribers::Subscribers, workload::Instance};

/// Shard of each device when every component fits `cap` (its topics'
/// rates summed), packed first-fit decreasing into at most `max` shards;
/// `None` when a component is too big, or the packing needs more shards.
pub(crate) fn pack(
    inst: &Instance,
    subscribers: &Subscribers,
    cap: f64,
    max: usize,
) -> Option<Vec<u32>> {
    let nt = inst.topics.len();
    let mut parent: Vec<u32> = (0..nt as u32).collect();
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            parent[x as usize] = parent[parent[x as usize] as usize];
            x = parent[x as usize];
        }
        x
    }
    for d in 0..inst.devices.len() {
        let subs = inst.subscriptions(d);
        if let Some((&first, rest)) = subs.split_first() {
            for &t in rest {
                let (a, b) = (find(&mut parent, first), find(&mut parent, t));
                if a != b {
                    parent[a.max(b) as usize] = a.min(b);
                }
            }
        }
    }
    let mut load = vec![0.0f64; nt];
    for t in 0..nt as u32 {
        if subscribers.count(t) > 0 {
            let root = find(&mut parent, t);
            load[root as usize] += inst.rates[t as usize];
        }
    }
    let limit = cap * (1.0 + 1e-9);
    let mut roots: Vec<u32> = (0..nt as u32)
        .filter(|&t| parent[t as usize] == t && load[t as usize] > 0.0)
        .collect();
    if roots.len() < 2 || roots.iter().any(|&r| load[r as usize] > limit) {
        return None;
    }
    roots.sort_unstable_by(|&a, &b| {
        load[b as usize]
            .total_cmp(&load[a as usize])
            .then(a.cmp(&b))
    });
    let mut bins: Vec<f64> = Vec::new();
    let mut bin_of = vec![NONE; nt];
    for &r in &roots {
        let l = load[r as usize];
        let b = match bins.iter().position(|&f| f + l <= limit) {
            Some(b) => b,
            None if bins.len() < max => {
                bins.push(0.0);
                bins.len() - 1
            }
            None => return None,
        };
        bins[b] += l;
        bin_of[r as usize] = b as u32;
    }
    Some(
        (0..inst.devices.len())
            .map(|d| match inst.subscriptions(d).first() {
                Some(&t) => bin_of[find(&mut parent, t) as usize],
                // A device with no topic receives nothing: the first shard.
                None => 0,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_instance;

    #[test]
    fn whole_components_are_packed_and_big_ones_refused() {
        // {a, b} (300 msg/s) and {c} (500) and {d} (200): two shards of
        // 700 hold them with no copy ({c, d} and {a, b}, first fit).
        let inst = test_instance(
            &[("a", 100.0), ("b", 200.0), ("c", 500.0), ("d", 200.0)],
            &[vec!["a", "b"], vec!["b"], vec!["c"], vec!["d"], vec!["a"]],
        );
        let subs = Subscribers::of(&inst);
        let parts = pack(&inst, &subs, 700.0, 64).unwrap();
        assert_eq!(parts[0], parts[1]);
        assert_eq!(parts[0], parts[4]);
        assert_ne!(parts[2], parts[0]);
        assert_eq!(parts[2], parts[3]);
        assert_eq!(parts.iter().max(), Some(&1));
        // One shard allowed: no packing.
        assert_eq!(pack(&inst, &subs, 700.0, 1), None);
        // A component above capacity: no packing.
        assert_eq!(pack(&inst, &subs, 400.0, 64), None);
    }
}

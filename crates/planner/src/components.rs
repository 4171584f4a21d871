//! The fleet's connected components as a start: devices linked by the
//! topics they share fall apart, in many real fleets (sites with no common
//! topic, disjoint tenants), into groups no copy ever needs to cross. When
//! every group fits one shard, packing whole groups into shards (first fit
//! by decreasing load) is a plan with no inter-shard copy at all, which a
//! partitioner balancing many shards at once may miss.

use std::collections::HashMap;

use crate::{NONE, subscribers::Subscribers, workload::Instance};

/// Shard of each device, whole components packed first-fit by decreasing
/// load into at most `max` shards, each component with the others of its
/// boundary class only and within that class's usable capacity. A
/// component is a set of (class, topic) pairs linked by the devices that
/// follow them (devices of two classes never share a shard, so their
/// common topic does not join them). A component above its class's
/// capacity is left out (`NONE`: placed by the caller); `None` when no
/// component fits or packing needs more than `max` shards.
pub(crate) fn pack(inst: &Instance, subscribers: &Subscribers, max: usize) -> Option<Vec<u32>> {
    let nt = inst.topics.len();
    let classes = inst.class_names.len();
    // Vertex of (class, topic): the topic itself without classes.
    let mut ids: HashMap<(u32, u32), u32> = HashMap::new();
    let mut vertex_topic: Vec<u32> = Vec::new();
    let mut vertex_class: Vec<u32> = Vec::new();
    let mut vertex = |c: u32, t: u32| -> u32 {
        if classes < 2 {
            return t;
        }
        *ids.entry((c, t)).or_insert_with(|| {
            vertex_topic.push(t);
            vertex_class.push(c);
            vertex_topic.len() as u32 - 1
        })
    };
    let mut first_vertex = vec![NONE; inst.devices.len()];
    let mut edges: Vec<(u32, u32)> = Vec::new();
    for (d, fv) in first_vertex.iter_mut().enumerate() {
        let c = inst.class[d];
        let subs = inst.subscriptions(d);
        if let Some((&first, rest)) = subs.split_first() {
            let a = vertex(c, first);
            *fv = a;
            for &t in rest {
                edges.push((a, vertex(c, t)));
            }
        }
    }
    let (nv, vertex_topic, vertex_class) = if classes < 2 {
        (nt, (0..nt as u32).collect::<Vec<u32>>(), vec![0u32; nt])
    } else {
        (vertex_topic.len(), vertex_topic, vertex_class)
    };
    let mut parent: Vec<u32> = (0..nv as u32).collect();
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            parent[x as usize] = parent[parent[x as usize] as usize];
            x = parent[x as usize];
        }
        x
    }
    for (a, b) in edges {
        let (a, b) = (find(&mut parent, a), find(&mut parent, b));
        if a != b {
            parent[a.max(b) as usize] = a.min(b);
        }
    }
    let mut load = vec![0.0f64; nv];
    for v in 0..nv as u32 {
        let t = vertex_topic[v as usize];
        if subscribers.count(t) > 0 {
            let root = find(&mut parent, v);
            load[root as usize] += inst.rates[t as usize];
        }
    }
    let limit = |c: u32| inst.class_usable[c as usize] * (1.0 + 1e-9);
    let mut roots: Vec<u32> = (0..nv as u32)
        .filter(|&v| parent[v as usize] == v && load[v as usize] > 0.0)
        .filter(|&v| load[v as usize] <= limit(vertex_class[v as usize]))
        .collect();
    if roots.len() < 2 {
        return None;
    }
    roots.sort_unstable_by(|&a, &b| {
        load[b as usize]
            .total_cmp(&load[a as usize])
            .then(a.cmp(&b))
    });
    // Bins: (class, fill).
    let mut bins: Vec<(u32, f64)> = Vec::new();
    let mut bin_of = vec![NONE; nv];
    for &r in &roots {
        let (c, l) = (vertex_class[r as usize], load[r as usize]);
        let b = match bins
            .iter()
            .position(|&(bc, f)| bc == c && f + l <= limit(c))
        {
            Some(b) => b,
            None if bins.len() < max => {
                bins.push((c, 0.0));
                bins.len() - 1
            }
            None => return None,
        };
        bins[b].1 += l;
        bin_of[r as usize] = b as u32;
    }
    Some(
        (0..inst.devices.len())
            .map(|d| match first_vertex[d] {
                NONE => NONE,
                v => bin_of[find(&mut parent, v) as usize],
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
        let at = |cap: f64| {
            let mut i = inst.clone();
            i.class_usable = vec![cap];
            i
        };
        let parts = pack(&at(700.0), &subs, 64).unwrap();
        assert_eq!(parts[0], parts[1]);
        assert_eq!(parts[0], parts[4]);
        assert_ne!(parts[2], parts[0]);
        assert_eq!(parts[2], parts[3]);
        assert_eq!(parts.iter().max(), Some(&1));
        // One shard allowed: no packing.
        assert_eq!(pack(&at(700.0), &subs, 1), None);
        // A component above capacity is left to the caller.
        let parts = pack(&at(400.0), &subs, 64).unwrap();
        assert_eq!(parts[2], NONE);
        assert_ne!(parts[0], NONE);
        assert_ne!(parts[3], NONE);
        // Only one fits: no packing.
        assert_eq!(pack(&at(250.0), &subs, 64), None);
    }
}

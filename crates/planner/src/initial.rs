//! The initial partition of a fresh plan, from a multilevel graph
//! partitioner (METIS) run on the *topic graph*.
//!
//! Partitioning the devices directly would hand METIS a graph of a million
//! vertices whose hyperedges (topics) must be expanded into cliques. The
//! dual is much smaller and closer to what a copy costs: one vertex per
//! topic, weighted by its rate (the load it puts on the shard that holds
//! it), and an edge between two topics that some device subscribes to
//! both, weighted by the cheaper of the two rates. Cutting that edge puts
//! the two topics in different shards; the devices that want both then
//! sit in one of them and the other topic is copied to them, so the cut
//! costs at least the cheaper rate, however many devices share the pair
//! (one copy serves them all). METIS's k-way scheme (coarsening by heavy
//! edge matching, initial bisections, boundary refinement while
//! uncoarsening) minimises the total weight cut under a balance bound.
//!
//! Topics with many subscribers ("broadcast" topics, e.g. a site's alerts)
//! are left out: they span several shards whatever the partition, and as
//! cliques they would dominate the graph. "Many" is more than 256, or,
//! for fleets within the planner's thorough size, more than half the
//! devices a shard holds on average (see `broadcast_subscribers`). Each device then goes to the
//! shard holding most of the rate of its graph topics; devices with none
//! are placed by the greedy placement afterwards.

use metis::{Graph, Idx};

use super::{NONE, Subscribers};
use crate::workload::Instance;

/// A topic with more subscribers than this is a broadcast topic, not a
/// vertex of the topic graph.
const BROADCAST_SUBSCRIBERS: u32 = 256;
/// A device with more graph topics than this links them in a chain rather
/// than pairwise (its pairs would grow quadratically).
const PAIRWISE_TOPICS: usize = 8;
/// The total vertex weight METIS sees: rates are scaled to integers with
/// this much resolution (METIS weights are 32-bit; sums must not overflow).
const WEIGHT_SCALE: f64 = 1e7;
/// Fewest graph topics per part for the graph partition to be used.
const MIN_TOPICS_PER_PART: usize = 4;
/// METIS keeps its random generator in process-wide state (GKlib's
/// `gk_randinit`, or libc's `srand`): two partitions running at once
/// would race on it, and neither would be reproducible from its seed.
static METIS: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Allowed imbalance of topic rate per part, in 1/1000 (METIS `ufactor`).
const UFACTOR: Idx = 30;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("graph partitioner (METIS) failed: {0}")]
pub struct GraphError(String);

/// The topic graph of an instance, in METIS's CSR form.
pub(super) struct TopicGraph {
    /// Σ rate of the graph's topics.
    total_rate: f64,
    /// Graph vertex -> topic.
    topics: Vec<u32>,
    /// Topic -> graph vertex (NONE: broadcast or unsubscribed).
    vertex: Vec<u32>,
    xadj: Vec<Idx>,
    adjncy: Vec<Idx>,
    vwgt: Vec<Idx>,
    adjwgt: Vec<Idx>,
}

/// Subscribers above which a topic is left out of the graph: at least
/// [`BROADCAST_SUBSCRIBERS`], and, within the planner's thorough size, up
/// to half the devices a shard holds on average (a region's traffic in a
/// vehicle fleet is followed by thousands, yet fits a shard and must pull
/// its followers together: 413 to 198 msg/s of copies on the 200k vehicle
/// fleet). Above that size the bigger graph costs too much time (14 s
/// instead of 3 for the 1M bench fleet, for no better cut).
fn broadcast_subscribers(inst: &Instance, subscribers: &Subscribers) -> u32 {
    if inst.subs.len() > crate::THOROUGH_MAX_SUBSCRIPTIONS {
        return BROADCAST_SUBSCRIBERS;
    }
    let total: f64 = (0..inst.topics.len() as u32)
        .filter(|&t| subscribers.count(t) > 0)
        .map(|t| inst.rates[t as usize])
        .sum();
    let shards = (total / inst.resources.usable_capacity()).max(1.0);
    let per_shard = inst.devices.len() as f64 / shards;
    ((per_shard / 2.0) as u32).max(BROADCAST_SUBSCRIBERS)
}

impl TopicGraph {
    pub(super) fn build(inst: &Instance, subscribers: &Subscribers) -> TopicGraph {
        let nt = inst.topics.len();
        let mut vertex = vec![NONE; nt];
        let mut topics = Vec::new();
        let broadcast = broadcast_subscribers(inst, subscribers);
        for t in 0..nt as u32 {
            if (1..=broadcast).contains(&subscribers.count(t)) {
                vertex[t as usize] = topics.len() as u32;
                topics.push(t);
            }
        }
        // Every linked pair once, (lower vertex, higher vertex).
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        let mut own = Vec::new();
        for d in 0..inst.devices.len() {
            own.clear();
            own.extend(
                inst.subscriptions(d)
                    .iter()
                    .map(|&t| vertex[t as usize])
                    .filter(|&v| v != NONE),
            );
            own.sort_unstable();
            own.dedup();
            if own.len() <= PAIRWISE_TOPICS {
                for (i, &a) in own.iter().enumerate() {
                    pairs.extend(own[i + 1..].iter().map(|&b| (a, b)));
                }
            } else {
                pairs.extend(own.windows(2).map(|w| (w[0], w[1])));
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        let nv = topics.len();
        let rate = |v: u32| inst.rates[topics[v as usize] as usize];
        let total: f64 = (0..nv as u32).map(rate).sum();
        let scale = if total > 0.0 {
            WEIGHT_SCALE / total
        } else {
            1.0
        };
        let weight = |r: f64| ((r * scale).round() as Idx).max(1);
        let mut degree = vec![0 as Idx; nv + 1];
        for &(a, b) in &pairs {
            degree[a as usize + 1] += 1;
            degree[b as usize + 1] += 1;
        }
        for v in 0..nv {
            degree[v + 1] += degree[v];
        }
        let xadj = degree;
        let mut fill: Vec<Idx> = xadj[..nv].to_vec();
        let mut adjncy = vec![0 as Idx; pairs.len() * 2];
        let mut adjwgt = vec![0 as Idx; pairs.len() * 2];
        for &(a, b) in &pairs {
            let w = weight(rate(a).min(rate(b)));
            for (x, y) in [(a, b), (b, a)] {
                let at = fill[x as usize] as usize;
                adjncy[at] = y as Idx;
                adjwgt[at] = w;
                fill[x as usize] += 1;
            }
        }
        let vwgt = (0..nv as u32).map(|v| weight(rate(v))).collect();
        TopicGraph {
            total_rate: total,
            topics,
            vertex,
            xadj,
            adjncy,
            vwgt,
            adjwgt,
        }
    }

    /// Σ rate of the topics in the graph (what the parts share).
    pub(super) fn total_rate(&self) -> f64 {
        self.total_rate
    }

    /// Whether the graph is worth partitioning into `k` parts: at least
    /// [`MIN_TOPICS_PER_PART`] topics per part, none heavier than a part's
    /// share. Otherwise the greedy placement does as well, and METIS,
    /// asked for parts it cannot fill, prints to stdout (and a plan
    /// printed as JSON there would be corrupted).
    fn suits(&self, k: usize) -> bool {
        let total: i64 = self.vwgt.iter().map(|&w| w as i64).sum();
        let heaviest = self.vwgt.iter().copied().max().unwrap_or(0) as i64;
        k > 1 && self.topics.len() >= MIN_TOPICS_PER_PART * k && heaviest * k as i64 <= total
    }

    /// The part (0..k) of every topic (NONE for topics not in the graph);
    /// `None` when the graph does not suit `k` parts (see `suits`).
    pub(super) fn partition(&self, k: usize, seed: u64) -> Result<Option<Vec<u32>>, GraphError> {
        if !self.suits(k) {
            return Ok(None);
        }
        let mut part = vec![0 as Idx; self.topics.len()];
        {
            let _one_at_a_time = METIS.lock().unwrap_or_else(|e| e.into_inner());
            Graph::new(1, k as Idx, &self.xadj, &self.adjncy)
                .map_err(|e| GraphError(e.to_string()))?
                .set_vwgt(&self.vwgt)
                .set_adjwgt(&self.adjwgt)
                .set_option(metis::option::UFactor(UFACTOR))
                .set_option(metis::option::Seed((seed & 0x7fff_ffff) as Idx))
                .part_kway(&mut part)
                .map_err(|e| GraphError(e.to_string()))?;
        }
        let mut home = vec![NONE; self.vertex.len()];
        for (v, &p) in part.iter().enumerate() {
            home[self.topics[v] as usize] = p as u32;
        }
        Ok(Some(home))
    }
}

/// The part each device goes to: the one holding the most rate of its
/// graph topics (lowest part on ties); NONE for a device with none.
pub(super) fn device_parts(inst: &Instance, home: &[u32]) -> Vec<u32> {
    let mut score: Vec<(u32, f64)> = Vec::new();
    (0..inst.devices.len())
        .map(|d| {
            score.clear();
            for &t in inst.subscriptions(d) {
                let h = home[t as usize];
                if h == NONE {
                    continue;
                }
                let r = inst.rates[t as usize];
                match score.iter_mut().find(|s| s.0 == h) {
                    Some(s) => s.1 += r,
                    None => score.push((h, r)),
                }
            }
            score
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
                .map_or(NONE, |s| s.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_instance as instance;

    fn graph(inst: &Instance) -> TopicGraph {
        TopicGraph::build(inst, &Subscribers::of(inst))
    }

    fn edges(g: &TopicGraph) -> Vec<(u32, u32, Idx)> {
        let mut out = Vec::new();
        for v in 0..g.topics.len() {
            for i in g.xadj[v] as usize..g.xadj[v + 1] as usize {
                out.push((g.topics[v], g.topics[g.adjncy[i] as usize], g.adjwgt[i]));
            }
        }
        out.sort_unstable();
        out
    }

    #[test]
    fn graph_links_each_pair_once_at_the_cheaper_rate() {
        let topics = [("all", 0.5), ("a", 10.0), ("b", 4.0), ("c", 2.0)];
        let mut devices = vec![vec!["all", "a", "b"], vec!["a", "b"], vec!["b", "c"]];
        // "all" is heard by more devices than a graph topic may have.
        devices.extend((0..BROADCAST_SUBSCRIBERS).map(|_| vec!["all"]));
        let inst = instance(&topics, &devices);
        let g = graph(&inst);
        let (all, a, b, c) = (0, 1, 2, 3);
        let has = |t: u32| g.vertex[t as usize] != NONE;
        assert!(!has(all) && has(a) && has(b) && has(c));
        // Weights scale rates so the vertices sum to WEIGHT_SCALE.
        let unit = WEIGHT_SCALE / 16.0;
        let w = |r: f64| (r * unit).round() as Idx;
        assert_eq!(g.vwgt, vec![w(10.0), w(4.0), w(2.0)]);
        // a-b is shared by two devices but cut costs one copy of b.
        assert_eq!(
            edges(&g),
            vec![
                (a, b, w(4.0)),
                (b, a, w(4.0)),
                (b, c, w(2.0)),
                (c, b, w(2.0))
            ]
        );
    }

    #[test]
    fn many_topics_are_chained_not_paired() {
        let names: Vec<String> = (0..PAIRWISE_TOPICS + 2).map(|i| format!("t{i}")).collect();
        let topics: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 1.0)).collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        let inst = instance(&topics, &[all]);
        let g = graph(&inst);
        // A path over the topics: two ends of degree 1, the rest 2.
        assert_eq!(edges(&g).len(), 2 * (names.len() - 1));
    }

    #[test]
    fn partition_cuts_the_weak_link() {
        // Two rings of six equal topics, joined by one device.
        let names: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
        let topics: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 1.0)).collect();
        let mut devices = Vec::new();
        for ring in [0, 6] {
            for i in 0..6 {
                devices.push(vec![
                    names[ring + i].as_str(),
                    names[ring + (i + 1) % 6].as_str(),
                ]);
            }
        }
        devices.push(vec!["t0", "t6"]);
        let inst = instance(&topics, &devices);
        let home = graph(&inst).partition(2, 1).unwrap().expect("suits");
        assert!(home[..6].iter().all(|&p| p == home[0]), "{home:?}");
        assert!(home[6..].iter().all(|&p| p == home[6]), "{home:?}");
        assert_ne!(home[0], home[6]);
        // Same seed, same cut.
        assert_eq!(Some(home), graph(&inst).partition(2, 1).unwrap());
    }

    #[test]
    fn small_or_lopsided_graphs_are_not_partitioned() {
        let names: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
        let chain: Vec<Vec<&str>> = names
            .windows(2)
            .map(|w| vec![w[0].as_str(), w[1].as_str()])
            .collect();
        let even: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 1.0)).collect();
        let g = graph(&instance(&even, &chain));
        assert!(g.suits(2));
        // Fewer than MIN_TOPICS_PER_PART topics per part, or one part.
        assert!(!g.suits(3) && !g.suits(1));
        // One topic carries more than half the rate: no 2-way balance.
        let mut lopsided = even.clone();
        lopsided[0].1 = 8.0;
        assert!(!graph(&instance(&lopsided, &chain)).suits(2));
        // Unsuitable: no partition (METIS is not called; the planner
        // places greedily).
        assert_eq!(g.partition(3, 1).unwrap(), None);
        assert!(g.partition(2, 1).unwrap().is_some());
    }

    #[test]
    fn devices_follow_the_rate_of_their_graph_topics() {
        let topics = [("x", 3.0), ("y", 5.0), ("z", 3.0), ("w", 1.0)];
        let devices = vec![vec!["x", "y"], vec!["x", "z"], vec!["w"], vec!["x"]];
        let inst = instance(&topics, &devices);
        // x in part 0, y and z in part 1, w broadcast (not in the graph).
        let home = vec![0, 1, 1, NONE];
        assert_eq!(device_parts(&inst, &home), vec![1, 0, NONE, 0]);
    }
}

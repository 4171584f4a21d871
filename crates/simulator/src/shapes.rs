//! Fleets of several shapes for the planner's tests and benchmark, built
//! the way operators describe their sites rather than the way the
//! simulator's day-cycle fleet ([`crate::scenario`]) is: a partitioner
//! tuned to one generator must be seen to hold on the others.
//!
//! - [`Shape::Campus`]: buildings of 2-14 floors; each device follows 3-8
//!   topics, mostly of its own floor, some of its building; 1.5% are
//!   signage following 2-4 campus-wide topics and their building's
//!   alerts. Zipf-Mandelbrot rates.
//! - [`Shape::Vehicles`]: regions of very different sizes and a few
//!   feeds per zone of regions; topic popularity heavy-tailed, so the biggest topics
//!   have a sixth of the fleet as subscribers.
//! - [`Shape::Communities`]: disjoint communities, each exactly one shard's
//!   usable capacity: the optimum (one shard each, no copies) is known.
//! - [`Shape::Geometric`]: devices at random points of a square, topics at
//!   random centres, a device following the topics within a radius.
//! - [`Shape::Infeasible`]: a campus where every device follows one
//!   campus-wide topic heavy enough (60% of a shard) that no plan within
//!   the data plane's fan-out keeps every shard within capacity.
//!
//! Each is sized by its device count and seeded; shard capacity is set so
//! that the fleet needs about `devices / DEVICES_PER_SHARD` shards.

use rand::{
    Rng, SeedableRng,
    seq::{IndexedRandom, SliceRandom},
};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};
use shardcast_planner::workload::{CostWeights, Device, Resources, TopicLoad, Workload};

/// The shapes of [`generate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Campus,
    Vehicles,
    Communities,
    Geometric,
    Infeasible,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Campus,
        Shape::Vehicles,
        Shape::Communities,
        Shape::Geometric,
        Shape::Infeasible,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Campus => "campus",
            Shape::Vehicles => "vehicles",
            Shape::Communities => "communities",
            Shape::Geometric => "geometric",
            Shape::Infeasible => "infeasible",
        }
    }
}

/// Devices per shard the capacity is sized for (about 100 shards at 200k
/// devices).
pub const DEVICES_PER_SHARD: usize = 2000;

/// A generated fleet and what is known about its optimum.
#[derive(Clone, Debug)]
pub struct Generated {
    pub workload: Workload,
    /// For [`Shape::Communities`]: the optimum's shard count (copies 0).
    pub optimum_shards: Option<usize>,
}

/// Builds topics and devices, then sizes resources.
struct Builder {
    rng: Pcg64Mcg,
    topics: Vec<TopicLoad>,
    devices: Vec<Device>,
}

impl Builder {
    fn new(seed: u64) -> Self {
        Builder {
            rng: Pcg64Mcg::seed_from_u64(seed),
            topics: Vec::new(),
            devices: Vec::new(),
        }
    }

    fn topic(&mut self, name: String, rate: f64) -> usize {
        self.topics.push(TopicLoad {
            name,
            rate,
            mqttsn_predefined_id: None,
        });
        self.topics.len() - 1
    }

    fn device(&mut self, group: &str, mut subs: Vec<usize>) {
        subs.sort_unstable();
        subs.dedup();
        let i = self.devices.len();
        self.devices.push(Device {
            id: format!("d{i}"),
            group: Some(group.to_string()),
            address: None,
            subscriptions: subs.iter().map(|&t| self.topics[t].name.clone()).collect(),
            connected: true,
            battery: 1.0,
            location: None,
            kind: None,
            sla: None,
        });
    }

    /// A Zipf-Mandelbrot rate for the `rank`-th topic (1-based) of a
    /// population, scaled so the top one publishes `top` msg/s.
    fn zipf(rank: usize, top: f64) -> f64 {
        let q = 2.7;
        top * ((1.0 + q) / (rank as f64 + q)).powf(1.1)
    }

    fn finish(self, capacity: f64, max_shards: u32) -> Workload {
        Workload {
            resources: resources(capacity, max_shards),
            cost: CostWeights::default(),
            topics: self.topics,
            devices: self.devices,
            policy: Default::default(),
        }
    }

    /// [`Builder::finish`], with no topic above `share` of a shard's
    /// usable capacity: a popularity law's head must not outgrow the
    /// shards as the fleet (and so the capacity per shard) changes size.
    fn finish_capped(mut self, capacity: f64, max_shards: u32, share: f64) -> Workload {
        let cap = capacity * 0.8 * share;
        for t in &mut self.topics {
            t.rate = t.rate.min(cap);
        }
        self.finish(capacity, max_shards)
    }

    /// Capacity that fits the fleet in about `shards` shards at 90% of
    /// usable capacity, assuming a quarter of the rate is copied.
    fn capacity_for(&self, shards: usize) -> f64 {
        let total: f64 = self.topics.iter().map(|t| t.rate).sum();
        total * 1.25 / (shards.max(1) as f64 * 0.9 * 0.8)
    }
}

fn resources(capacity: f64, max_shards: u32) -> Resources {
    Resources {
        shard_capacity: capacity,
        max_shards,
        headroom: 0.2,
        merge_below: 0.7,
        bandwidth: None,
        max_migrations: usize::MAX,
        egress: "eth1".into(),
        group_v4_base: "239.1.0.0".into(),
        group_v6_base: None,
    }
}

/// A fleet of `shape` with about `devices` devices, `max_shards` allowed.
pub fn generate(shape: Shape, devices: usize, seed: u64, max_shards: u32) -> Generated {
    let devices = devices.max(50);
    let shards = devices.div_ceil(DEVICES_PER_SHARD).max(2);
    match shape {
        Shape::Campus => {
            let b = campus(devices, seed, false);
            let cap = b.capacity_for(shards);
            Generated {
                workload: b.finish_capped(cap, max_shards, 0.1),
                optimum_shards: None,
            }
        }
        Shape::Infeasible => {
            let mut b = campus(devices, seed, true);
            // Local rates flat (0.05-0.5 msg/s, so no device is heavy on
            // its own), shards of an eighth of the total rate, and the
            // campus-wide topic, followed by every device, at 60% of a
            // shard: its followers then need about 20 shards of the 16 a
            // route may span, at any fleet size.
            for t in b.topics.iter_mut().skip(1) {
                t.rate = b.rng.random_range(0.05..0.5);
            }
            let total: f64 = b.topics.iter().skip(1).map(|t| t.rate).sum();
            let usable = total / 8.0;
            let mut w = b.finish(usable / 0.8, max_shards);
            w.topics[0].rate = usable * 0.6;
            Generated {
                workload: w,
                optimum_shards: None,
            }
        }
        Shape::Vehicles => {
            let b = vehicles(devices, seed);
            let cap = b.capacity_for(shards * 2 / 3);
            Generated {
                workload: b.finish_capped(cap, max_shards, 0.25),
                optimum_shards: None,
            }
        }
        Shape::Communities => {
            let (b, k) = communities(devices, seed);
            // Each community's rate is exactly one shard's usable capacity.
            let per: f64 = b.topics.iter().map(|t| t.rate).sum::<f64>() / k as f64;
            Generated {
                workload: b.finish(per / 0.8, max_shards),
                optimum_shards: Some(k),
            }
        }
        Shape::Geometric => {
            let b = geometric(devices, seed);
            let cap = b.capacity_for(shards);
            Generated {
                workload: b.finish_capped(cap, max_shards, 0.1),
                optimum_shards: None,
            }
        }
    }
}

/// Buildings of 2-14 floors of ~40 devices; per floor 4 topics, per
/// building 3; 1.5% signage; with `global_for_all`, every device also
/// follows topic 0, a campus-wide feed.
fn campus(devices: usize, seed: u64, global_for_all: bool) -> Builder {
    let mut b = Builder::new(seed);
    let campus_wide: Vec<usize> = (0..6)
        .map(|i| b.topic(format!("campus/feed{i}"), 0.0))
        .collect();
    let mut ranked: Vec<usize> = Vec::new();
    let mut building = 0;
    let mut made = 0;
    while made < devices {
        let floors = b.rng.random_range(2..=14usize);
        let alerts = b.topic(format!("b{building}/alerts"), 0.0);
        let bldg: Vec<usize> = (0..3)
            .map(|i| b.topic(format!("b{building}/t{i}"), 0.0))
            .collect();
        ranked.extend(&bldg);
        for f in 0..floors {
            let floor: Vec<usize> = (0..4)
                .map(|i| b.topic(format!("b{building}/f{f}/t{i}"), 0.0))
                .collect();
            ranked.extend(&floor);
            let n = b.rng.random_range(20..=60usize);
            for _ in 0..n {
                if made >= devices {
                    break;
                }
                let group = format!("b{building}");
                let mut subs = Vec::new();
                if b.rng.random_bool(0.015) {
                    let k = b.rng.random_range(2..=4);
                    subs.extend(campus_wide.choose_multiple(&mut b.rng, k).copied());
                    subs.push(alerts);
                } else {
                    let k = b.rng.random_range(3..=8usize);
                    for _ in 0..k {
                        let t = if b.rng.random_bool(0.75) {
                            floor[b.rng.random_range(0..floor.len())]
                        } else if b.rng.random_bool(0.8) {
                            bldg[b.rng.random_range(0..bldg.len())]
                        } else {
                            alerts
                        };
                        subs.push(t);
                    }
                }
                if global_for_all {
                    subs.push(campus_wide[0]);
                }
                b.device(&group, subs);
                made += 1;
            }
        }
        ranked.push(alerts);
        building += 1;
    }
    // Zipf-Mandelbrot rates over the local topics in a random order (a
    // building's popularity has nothing to do with its number).
    ranked.shuffle(&mut b.rng);
    for (r, &t) in ranked.iter().enumerate() {
        b.topics[t].rate = Builder::zipf(r + 1, 5.0) + 0.01;
    }
    for (i, &t) in campus_wide.iter().enumerate() {
        b.topics[t].rate = 2.0 / (i + 1) as f64;
    }
    b
}

/// Regions of Pareto-distributed sizes; each has traffic, weather and a
/// few route topics; four feeds per zone (an eighth of the regions, in
/// order: a fleet-wide feed followed from everywhere could not be routed
/// to the 40-odd shards a big fleet needs). A vehicle follows its region's
/// traffic (its biggest topics: region sizes are heavy-tailed), some of
/// its routes, near a border (5%) a neighbouring region's traffic, and
/// perhaps a feed.
fn vehicles(devices: usize, seed: u64) -> Builder {
    let mut b = Builder::new(seed);
    let feeds: Vec<usize> = (0..8 * 4)
        .map(|i| {
            b.topic(
                format!("zone{}/feed{}", i / 4, i % 4),
                0.5 / (i % 4 + 1) as f64,
            )
        })
        .collect();
    // Region sizes: Pareto (alpha 1.2), the biggest near a sixth of all.
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < devices {
        let u: f64 = b.rng.random_range(0.0..1.0);
        let s = ((30.0 / (1.0 - u).powf(1.0 / 1.2)) as usize).min(devices / 6 + 1);
        let s = s.min(devices - total).max(1);
        sizes.push(s);
        total += s;
    }
    let regions = sizes.len();
    let traffic: Vec<usize> = (0..regions)
        .map(|r| b.topic(format!("region{r}/traffic"), 0.0))
        .collect();
    let weather: Vec<usize> = (0..regions)
        .map(|r| b.topic(format!("region{r}/weather"), 0.05))
        .collect();
    for (r, &size) in sizes.iter().enumerate() {
        // Traffic rate grows with the region's vehicles (sub-linearly).
        b.topics[traffic[r]].rate = 0.02 * (size as f64).powf(0.8);
        let routes: Vec<usize> = (0..size.div_ceil(150).max(1))
            .map(|i| b.topic(format!("region{r}/route{i}"), 0.0))
            .collect();
        for (i, &t) in routes.iter().enumerate() {
            b.topics[t].rate = Builder::zipf(i + 1, 1.5);
        }
        for _ in 0..size {
            let mut subs = vec![traffic[r]];
            if b.rng.random_bool(0.6) {
                subs.push(weather[r]);
            }
            let k = b.rng.random_range(1..=3);
            for _ in 0..k {
                // Routes by popularity: the first ones most.
                let i = ((routes.len() as f64) * b.rng.random_range(0.0f64..1.0).powi(3)) as usize;
                subs.push(routes[i.min(routes.len() - 1)]);
            }
            // Near a border: the neighbouring region's traffic too.
            if b.rng.random_bool(0.05) {
                let n = if b.rng.random_bool(0.5) {
                    r + 1
                } else {
                    r + regions - 1
                };
                subs.push(traffic[n % regions]);
            }
            if b.rng.random_bool(0.3) {
                let zone = r * 8 / regions;
                subs.push(feeds[zone * 4 + b.rng.random_range(0..4)]);
            }
            b.device(&format!("region{r}"), subs);
        }
    }
    b
}

/// `k` disjoint communities (one per 3,125 devices: 64 at 200k) of uneven
/// size (±40%) on 20 topics each; returns the builder and `k`. Community
/// rates are equal, so the optimum puts each community in its own shard.
fn communities(devices: usize, seed: u64) -> (Builder, usize) {
    let mut b = Builder::new(seed);
    let k = devices.div_ceil(3125).max(2);
    let mean = devices / k;
    for c in 0..k {
        let topics: Vec<usize> = (0..20)
            .map(|i| b.topic(format!("c{c}/t{i}"), 0.0))
            .collect();
        // Uneven rates inside, the same total (10 msg/s) per community.
        let w: Vec<f64> = (0..20).map(|i| Builder::zipf(i + 1, 1.0)).collect();
        let sum: f64 = w.iter().sum();
        for (i, &t) in topics.iter().enumerate() {
            b.topics[t].rate = 10.0 * w[i] / sum;
        }
        let n = b.rng.random_range(mean * 6 / 10..=mean * 14 / 10).max(20);
        for j in 0..n {
            // A chain over the topics keeps the community connected.
            let mut subs = vec![topics[j % 20], topics[(j + 1) % 20]];
            for _ in 0..b.rng.random_range(0..3) {
                subs.push(topics[b.rng.random_range(0..20)]);
            }
            b.device(&format!("c{c}"), subs);
        }
    }
    (b, k)
}

/// Devices uniform in the unit square; one topic per 25 devices at a
/// random centre; a device follows every topic within radius r (at least
/// its nearest), r sized for about 5 topics each.
fn geometric(devices: usize, seed: u64) -> Builder {
    let mut b = Builder::new(seed);
    let nt = (devices / 25).max(4);
    // A grid of cells of side r indexes the centres.
    let r = (5.0 / (std::f64::consts::PI * nt as f64)).sqrt();
    let cells = (1.0 / r).ceil() as usize;
    let mut grid: Vec<Vec<(usize, f64, f64)>> = vec![Vec::new(); cells * cells];
    for i in 0..nt {
        let (x, y): (f64, f64) = (b.rng.random_range(0.0..1.0), b.rng.random_range(0.0..1.0));
        let rate = 0.05 + b.rng.random_range(0.0f64..1.0).powi(4) * 3.0;
        let t = b.topic(format!("cell{i}"), rate);
        let cell = |v: f64| ((v / r) as usize).min(cells - 1);
        grid[cell(y) * cells + cell(x)].push((t, x, y));
    }
    for _ in 0..devices {
        let (x, y): (f64, f64) = (b.rng.random_range(0.0..1.0), b.rng.random_range(0.0..1.0));
        let (cx, cy) = (
            ((x / r) as usize).min(cells - 1),
            ((y / r) as usize).min(cells - 1),
        );
        let mut subs = Vec::new();
        let mut nearest = (f64::MAX, usize::MAX);
        for gy in cy.saturating_sub(2)..(cy + 3).min(cells) {
            for gx in cx.saturating_sub(2)..(cx + 3).min(cells) {
                for &(t, tx, ty) in &grid[gy * cells + gx] {
                    let d = (tx - x).hypot(ty - y);
                    if d <= r {
                        subs.push(t);
                    }
                    if d < nearest.0 {
                        nearest = (d, t);
                    }
                }
            }
        }
        if subs.is_empty() && nearest.1 != usize::MAX {
            subs.push(nearest.1);
        }
        let group = format!("g{}", cy * cells + cx);
        b.device(&group, subs);
    }
    b
}

/// Gives every device of a generated fleet the attributes an operator's
/// inventory would: `location` = `site<k>/<group>/f<n>` (each group, a
/// building or region, in one of `sites` sites, devices spread over three
/// floors), `sla` = `premium` for a `premium` fraction of the groups and
/// `standard` for the rest, `type` sensor or screen. Attributes follow the
/// fleet's groups, as they do in the field (a hospital's monitors are on
/// its floors), but are decided by hashes, not by the topics.
pub fn with_attributes(w: &mut Workload, sites: usize, premium: f64) {
    for (i, d) in w.devices.iter_mut().enumerate() {
        let group = d.group.clone().unwrap_or_default();
        let g = group.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let g = shardcast_planner::mix(g);
        let h = shardcast_planner::mix(i as u64);
        d.location = Some(format!(
            "site{}/{group}/f{}",
            g as usize % sites.max(1),
            h % 3
        ));
        d.sla = Some(
            if ((g >> 32) % 1000) as f64 / 1000.0 < premium {
                "premium"
            } else {
                "standard"
            }
            .to_string(),
        );
        d.kind = Some(["sensor", "screen"][(h >> 8) as usize % 2].to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_is_a_valid_workload_of_about_the_size_asked() {
        for shape in Shape::ALL {
            let g = generate(shape, 5000, 1, 256);
            let inst = g
                .workload
                .index()
                .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
            let n = inst.devices.len();
            assert!((4000..=6000).contains(&n), "{shape:?}: {n} devices");
            assert!(inst.rates.iter().all(|r| *r > 0.0), "{shape:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_fleet() {
        for shape in Shape::ALL {
            let a = generate(shape, 2000, 7, 64).workload;
            let b = generate(shape, 2000, 7, 64).workload;
            assert_eq!(a, b, "{shape:?}");
        }
    }
}

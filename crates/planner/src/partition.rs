//! A partition under construction: which shard each device is in, the
//! per-(topic, shard) subscriber counts ("pins") that make every move's
//! cost change O(subscriptions), and the cost model itself
//! (`docs/workload-format.md`).

use std::collections::HashMap;

use router_common::maps::MAX_ROUTE_SHARDS;

use crate::{
    Cost, EPS, GRAPH_LOAD_FACTOR, NONE, PlannerError, THOROUGH_MAX_SUBSCRIPTIONS, initial,
    subscribers::Subscribers,
    workload::{CostWeights, Instance},
};

/// A partition under construction, with the per-(topic, shard) subscriber
/// counts ("pins") that make every move's cost change O(subscriptions).
pub(crate) struct Partition<'a> {
    pub(crate) inst: &'a Instance,
    pub(crate) w: CostWeights,
    pub(crate) cap: f64,
    pub(crate) cap_eff: f64,
    pub(crate) assign: Vec<u32>,
    /// Shard slot in the current plan (NONE: new device).
    pub(crate) orig: Vec<u32>,
    /// Per topic: (shard slot, subscribers there); at most a few entries.
    pub(crate) pins: Vec<Vec<(u32, u32)>>,
    pub(crate) load: Vec<f64>,
    pub(crate) wsum: Vec<f64>,
    pub(crate) members: Vec<u32>,
    /// Boundary class of each shard's members (NONE while empty): a shard
    /// only ever holds devices of one class (the policy's hard boundaries).
    pub(crate) class: Vec<u32>,
    pub(crate) total: f64,
    /// Per soft preference, per shard: devices of each value there.
    pub(crate) together: Vec<Vec<HashMap<u32, u32>>>,
    /// Per soft preference: (shard, value) pairs with a device.
    pub(crate) together_pairs: Vec<u64>,
    /// Most shards each class may open (the class priorities when
    /// `max_shards` is short; unlimited otherwise).
    pub(crate) class_limit: Vec<usize>,
    pub(crate) migrations: usize,
    /// Moves not made because the migration budget was spent.
    pub(crate) deferred: usize,
}

impl<'a> Partition<'a> {
    /// Places every device of a fresh plan by the graph partitioner's
    /// topic parts ([`initial`]). Two starts: as few shards as the rates
    /// allow (total rate over usable capacity) and [`GRAPH_LOAD_FACTOR`]
    /// times that (room for copies); from each, more shards while one
    /// comes out above usable capacity (at most four tries). The cheaper
    /// start is kept, so a looser `max_shards` never forces more shards
    /// on a fleet that fits in fewer. Returns false, placing nothing, when
    /// the graph does not suit partitioning (see `TopicGraph::partition`):
    /// greedy placement then.
    pub(crate) fn seed_from_graph(
        &mut self,
        subscribers: &Subscribers,
        seed: u64,
    ) -> Result<bool, PlannerError> {
        let inst = self.inst;
        let graph = initial::TopicGraph::build(inst, subscribers);
        let max = (inst.resources.max_shards as usize).max(1);
        let fit = |f: f64| ((graph.total_rate() * f / self.cap_eff).ceil() as usize).clamp(1, max);
        // The fewest-shards start only where the extra starts are
        // affordable (see `THOROUGH_MAX_SUBSCRIPTIONS`).
        let mut starts = vec![fit(GRAPH_LOAD_FACTOR)];
        if inst.subs.len() <= THOROUGH_MAX_SUBSCRIPTIONS {
            starts.insert(0, fit(1.0 - 1e-9));
        }
        starts.dedup();
        let mut best: Option<(f64, Partition<'a>)> = None;
        for k in starts {
            let Some(p) = Self::seeded(inst, &graph, k, max, seed)? else {
                continue;
            };
            let c = p.cost();
            // Overload first (a plan within capacity beats any that is
            // not), then the total cost.
            let key = c.total + if c.overloaded_shards > 0 { 1e300 } else { 0.0 };
            tracing::debug!(
                k,
                shards = c.shards,
                copies = c.copies,
                total = c.total,
                "graph start"
            );
            if best.as_ref().is_none_or(|b| key < b.0) {
                best = Some((key, p));
            }
        }
        match best {
            Some((_, p)) => {
                *self = p;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// One start of [`Partition::seed_from_graph`] at `k` shards.
    fn seeded(
        inst: &'a Instance,
        graph: &initial::TopicGraph,
        mut k: usize,
        max: usize,
        seed: u64,
    ) -> Result<Option<Partition<'a>>, PlannerError> {
        let Some(mut home) = graph.partition(k, seed)? else {
            return Ok(None);
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let parts = initial::device_parts(inst, &home);
            let mut p = Partition::new(inst);
            for _ in 0..k {
                p.open();
            }
            for (d, &s) in parts.iter().enumerate() {
                if s != NONE {
                    p.place(d, s);
                }
            }
            let max_load = p.load.iter().fold(0.0f64, |a, &b| a.max(b));
            tracing::debug!(k, max_load, "graph partition");
            if !Self::above(max_load, p.cap_eff) || k >= max || attempt == 4 {
                return Ok(Some(p));
            }
            let more = ((k as f64 * max_load / p.cap_eff * 1.02).ceil() as usize).min(max);
            match graph.partition(more, seed)? {
                Some(h) => (k, home) = (more, h),
                None => return Ok(Some(p)),
            }
        }
    }

    pub(crate) fn new(inst: &'a Instance) -> Self {
        let n = inst.devices.len();
        Partition {
            inst,
            w: inst.weights,
            cap: inst.resources.shard_capacity,
            cap_eff: inst.resources.usable_capacity(),
            assign: vec![NONE; n],
            orig: vec![NONE; n],
            pins: vec![Vec::new(); inst.topics.len()],
            load: Vec::new(),
            wsum: Vec::new(),
            members: Vec::new(),
            class: Vec::new(),
            total: 0.0,
            together: vec![Vec::new(); inst.together.len()],
            together_pairs: vec![0; inst.together.len()],
            class_limit: inst.class_limit.clone(),
            migrations: 0,
            deferred: 0,
        }
    }

    pub(crate) fn open(&mut self) -> u32 {
        self.load.push(0.0);
        self.wsum.push(0.0);
        self.members.push(0);
        self.class.push(NONE);
        for t in &mut self.together {
            t.push(HashMap::new());
        }
        (self.load.len() - 1) as u32
    }

    pub(crate) fn active(&self) -> usize {
        self.members.iter().filter(|&&m| m > 0).count()
    }

    pub(crate) fn pin(&self, t: u32, s: u32) -> u32 {
        self.pins[t as usize]
            .iter()
            .find(|p| p.0 == s)
            .map_or(0, |p| p.1)
    }

    pub(crate) fn migrated(&self, d: usize, s: u32) -> bool {
        self.orig[d] != NONE && s != self.orig[d]
    }

    pub(crate) fn place(&mut self, d: usize, s: u32) {
        debug_assert_eq!(self.assign[d], NONE);
        for &t in self.inst.subscriptions(d) {
            let pins = &mut self.pins[t as usize];
            match pins.iter_mut().find(|p| p.0 == s) {
                Some(p) => p.1 += 1,
                None => {
                    pins.push((s, 1));
                    let r = self.inst.rates[t as usize];
                    self.load[s as usize] += r;
                    self.total += r;
                }
            }
        }
        self.wsum[s as usize] += self.inst.waste_weight[d];
        for (k, t) in self.inst.together.iter().enumerate() {
            let n = self.together[k][s as usize].entry(t.value[d]).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.together_pairs[k] += 1;
            }
        }
        if self.members[s as usize] == 0 {
            self.class[s as usize] = self.inst.class[d];
        }
        self.members[s as usize] += 1;
        self.assign[d] = s;
        self.migrations += self.migrated(d, s) as usize;
    }

    pub(crate) fn unplace(&mut self, d: usize) {
        let s = self.assign[d];
        self.migrations -= self.migrated(d, s) as usize;
        for &t in self.inst.subscriptions(d) {
            let pins = &mut self.pins[t as usize];
            let i = pins.iter().position(|p| p.0 == s).expect("pinned");
            pins[i].1 -= 1;
            if pins[i].1 == 0 {
                pins.swap_remove(i);
                let r = self.inst.rates[t as usize];
                self.load[s as usize] -= r;
                self.total -= r;
            }
        }
        self.wsum[s as usize] -= self.inst.waste_weight[d];
        for (k, t) in self.inst.together.iter().enumerate() {
            let counts = &mut self.together[k][s as usize];
            let n = counts.get_mut(&t.value[d]).expect("counted");
            *n -= 1;
            if *n == 0 {
                counts.remove(&t.value[d]);
                self.together_pairs[k] -= 1;
            }
        }
        self.members[s as usize] -= 1;
        if self.members[s as usize] == 0 {
            // Clear rounding residue so an empty shard reads exactly 0.
            self.load[s as usize] = 0.0;
            self.wsum[s as usize] = 0.0;
            self.class[s as usize] = NONE;
        }
        self.assign[d] = NONE;
    }

    pub(crate) fn move_to(&mut self, d: usize, s: u32) {
        self.unplace(d);
        self.place(d, s);
    }

    /// The cost terms that depend on one shard alone (`usable`: its
    /// class's usable capacity).
    pub(crate) fn shard_cost(&self, load: f64, wsum: f64, members: u32, usable: f64) -> f64 {
        if members == 0 {
            return 0.0;
        }
        let rho = (load / self.cap).min(0.99);
        self.w.overload * (load - usable).max(0.0)
            + self.w.wasted * load * wsum
            + self.w.latency * load * rho / (1.0 - rho)
            + self.w.shard
    }

    pub(crate) fn bandwidth_cost(&self, total: f64) -> f64 {
        self.inst
            .resources
            .bandwidth
            .map_or(0.0, |b| self.w.overload * (total - b).max(0.0))
    }

    /// Cost change of putting device `d` (placed or not) into shard `b`, and
    /// `b`'s load after; `None` when a topic would exceed the fan-out.
    pub(crate) fn delta(&self, d: usize, b: u32) -> Option<(f64, f64)> {
        let a = self.assign[d];
        // A hard boundary: never into a shard of another class.
        if !self.admits(b, d) {
            return None;
        }
        let (mut lose, mut gain) = (0.0, 0.0);
        for &t in self.inst.subscriptions(d) {
            let r = self.inst.rates[t as usize];
            let leaves = a != NONE && self.pin(t, a) == 1;
            if leaves {
                lose += r;
            }
            if self.pin(t, b) == 0 {
                gain += r;
                if !leaves && self.pins[t as usize].len() >= MAX_ROUTE_SHARDS {
                    return None;
                }
            }
        }
        let wd = self.inst.waste_weight[d];
        let (bu, ls, ws, ms) = (b as usize, &self.load, &self.wsum, &self.members);
        // `b` admits `d`: it is of `d`'s class, or becomes so.
        let ub = self.usable_of_class(self.inst.class[d]);
        let mut c = self.shard_cost(ls[bu] + gain, ws[bu] + wd, ms[bu] + 1, ub)
            - self.shard_cost(ls[bu], ws[bu], ms[bu], ub);
        if a != NONE {
            let au = a as usize;
            let ua = self.usable(a);
            c += self.shard_cost(ls[au] - lose, ws[au] - wd, ms[au] - 1, ua)
                - self.shard_cost(ls[au], ws[au], ms[au], ua);
        }
        for (k, t) in self.inst.together.iter().enumerate() {
            let v = t.value[d];
            let count = |s: u32| self.together[k][s as usize].get(&v).copied().unwrap_or(0);
            if a != NONE && count(a) == 1 {
                c -= t.weight;
            }
            if count(b) == 0 {
                c += t.weight;
            }
        }
        c += self.w.copies * (gain - lose);
        c += self.bandwidth_cost(self.total + gain - lose) - self.bandwidth_cost(self.total);
        if self.orig[d] != NONE {
            let was = a != NONE && self.migrated(d, a);
            c += self.w.migration * (self.migrated(d, b) as i32 - was as i32) as f64;
        }
        Some((c, ls[bu] + gain))
    }

    /// Shards holding any of `d`'s topics, other than its own.
    pub(crate) fn neighbours(&self, d: usize, out: &mut Vec<u32>) {
        out.clear();
        for &t in self.inst.subscriptions(d) {
            for &(s, _) in &self.pins[t as usize] {
                if s != self.assign[d] {
                    out.push(s);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }

    /// Whether a new shard can take unplaced device `d` without a topic of
    /// it exceeding the fan-out.
    pub(crate) fn can_open_for(&self, d: usize) -> bool {
        self.can_open_class(self.inst.class[d])
            && self
                .inst
                .subscriptions(d)
                .iter()
                .all(|&t| self.pins[t as usize].len() < MAX_ROUTE_SHARDS)
    }

    pub(crate) fn can_open(&self) -> bool {
        self.active() < self.inst.resources.max_shards as usize
    }

    /// Whether a shard of class `c` can be opened: within `max_shards` and
    /// the class's limit.
    pub(crate) fn can_open_class(&self, c: u32) -> bool {
        self.can_open()
            && (self.class_limit[c as usize] == usize::MAX
                || (0..self.class.len())
                    .filter(|&s| self.members[s] > 0 && self.class[s] == c)
                    .count()
                    < self.class_limit[c as usize])
    }

    /// Usable capacity of a shard of class `c` (NONE: an empty shard).
    pub(crate) fn usable_of_class(&self, c: u32) -> f64 {
        if c == NONE {
            self.cap_eff
        } else {
            self.inst.class_usable[c as usize]
        }
    }

    /// Usable capacity of shard `s` (its class's).
    pub(crate) fn usable(&self, s: u32) -> f64 {
        self.usable_of_class(self.class[s as usize])
    }

    /// Whether shard `s` at `load` is above its usable capacity.
    pub(crate) fn over(&self, s: u32, load: f64) -> bool {
        Self::above(load, self.usable(s))
    }

    /// Whether a shard holding device `d` (so of its class) at `load` is
    /// above usable capacity.
    pub(crate) fn over_for(&self, d: usize, load: f64) -> bool {
        Self::above(load, self.usable_of_class(self.inst.class[d]))
    }

    /// Whether `load` is above `usable`. Loads are sums of rates: a fleet
    /// sized to fill shards exactly must not read as over capacity by
    /// rounding, hence the relative tolerance.
    fn above(load: f64, usable: f64) -> bool {
        load > usable * (1.0 + 1e-9)
    }

    /// The highest load over usable capacity of any shard.
    pub(crate) fn worst_ratio(&self) -> f64 {
        (0..self.load.len() as u32)
            .filter(|&s| self.members[s as usize] > 0)
            .map(|s| self.load[s as usize] / self.usable(s))
            .fold(0.0, f64::max)
    }

    /// A fresh slot, reusing an empty one when there is.
    pub(crate) fn open_reusing(&mut self) -> u32 {
        self.open_reusing_except(&[])
    }

    /// A fresh slot, reusing an empty one not marked in `except`.
    pub(crate) fn open_reusing_except(&mut self, except: &[bool]) -> u32 {
        let free = (0..self.members.len())
            .find(|&s| self.members[s] == 0 && !except.get(s).copied().unwrap_or(false));
        match free {
            Some(s) => s as u32,
            None => self.open(),
        }
    }

    /// Moves every device of `group` (all in one shard) to `to`, one by
    /// one; returns the summed cost change when all could go. When one
    /// cannot (a topic past the fan-out, another boundary class), the ones
    /// moved go back to `from` and the answer is `None`. The caller keeps
    /// the move or undoes it with [`Partition::move_all`].
    pub(crate) fn move_group(&mut self, group: &[u32], from: u32, to: u32) -> Option<f64> {
        let mut total = 0.0;
        for (i, &d) in group.iter().enumerate() {
            match self.delta(d as usize, to) {
                Some((c, _)) => {
                    total += c;
                    self.move_to(d as usize, to);
                }
                None => {
                    self.move_all(&group[..i], from);
                    return None;
                }
            }
        }
        Some(total)
    }

    /// Moves every device of `group` to `to` (in reverse, undoing a
    /// [`Partition::move_group`] in the order it moved them).
    pub(crate) fn move_all(&mut self, group: &[u32], to: u32) {
        for &d in group.iter().rev() {
            self.move_to(d as usize, to);
        }
    }

    /// Whether shard `s` may take device `d` under the policy's hard
    /// boundaries (it is empty, or its members are of `d`'s class).
    pub(crate) fn admits(&self, s: u32, d: usize) -> bool {
        let c = self.class[s as usize];
        c == NONE || c == self.inst.class[d]
    }

    /// Unplaces every device whose shard is held by another class (after a
    /// start that ignores the boundaries): each shard keeps the class most
    /// of its members have. Returns the devices unplaced.
    pub(crate) fn evict_other_classes(&mut self) -> Vec<u32> {
        if self.inst.class_names.len() < 2 {
            return Vec::new();
        }
        let mut count: std::collections::HashMap<(u32, u32), u32> = Default::default();
        for (d, &s) in self.assign.iter().enumerate() {
            if s != NONE {
                *count.entry((s, self.inst.class[d])).or_default() += 1;
            }
        }
        let mut keep = vec![(0u32, NONE); self.load.len()];
        for (&(s, c), &n) in &count {
            let k = &mut keep[s as usize];
            if (n, std::cmp::Reverse(c)) > (k.0, std::cmp::Reverse(k.1)) {
                *k = (n, c);
            }
        }
        let evicted: Vec<u32> = (0..self.assign.len() as u32)
            .filter(|&d| {
                let s = self.assign[d as usize];
                s != NONE && keep[s as usize].1 != self.inst.class[d as usize]
            })
            .collect();
        for &d in &evicted {
            self.unplace(d as usize);
        }
        for (s, k) in keep.iter().enumerate() {
            if self.members[s] > 0 {
                self.class[s] = k.1;
            }
        }
        evicted
    }

    /// Shards above usable capacity.
    pub(crate) fn overloaded(&self) -> usize {
        (0..self.load.len())
            .filter(|&s| self.members[s] > 0 && self.over(s as u32, self.load[s]))
            .count()
    }

    /// The heaviest topic at the fan-out bound that an overloaded shard
    /// holds: its followers there can go to no new shard.
    pub(crate) fn blocking_topic(&self) -> Option<u32> {
        (0..self.pins.len() as u32)
            .filter(|&t| {
                let p = &self.pins[t as usize];
                p.len() >= MAX_ROUTE_SHARDS
                    && p.iter().any(|&(s, _)| self.over(s, self.load[s as usize]))
            })
            .max_by(|&a, &b| {
                self.inst.rates[a as usize]
                    .total_cmp(&self.inst.rates[b as usize])
                    .then(b.cmp(&a))
            })
    }

    /// The most shards one topic spans.
    pub(crate) fn widest(&self) -> usize {
        self.pins.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The least loaded non-empty shard that may take `d` (its class).
    pub(crate) fn lightest_admitting(&self, d: usize) -> Option<u32> {
        (0..self.load.len() as u32)
            .filter(|&s| self.members[s as usize] > 0 && self.admits(s, d))
            .min_by(|&a, &b| self.load[a as usize].total_cmp(&self.load[b as usize]))
    }

    pub(crate) fn lightest(&self) -> u32 {
        (0..self.load.len() as u32)
            .filter(|&s| self.members[s as usize] > 0)
            .min_by(|&a, &b| self.load[a as usize].total_cmp(&self.load[b as usize]))
            .unwrap_or(NONE)
    }

    pub(crate) fn members_of(&self, s: u32) -> Vec<u32> {
        (0..self.assign.len() as u32)
            .filter(|&d| self.assign[d as usize] == s)
            .collect()
    }

    pub(crate) fn budget_left(&self) -> usize {
        self.inst
            .resources
            .max_migrations
            .saturating_sub(self.migrations)
    }

    /// Refinement never pushes a shard above usable capacity (or further
    /// above it), whatever the other terms would gain.
    pub(crate) fn within_capacity(&self, s: u32, after: f64) -> bool {
        !self.over(s, after) || after <= self.load[s as usize]
    }

    pub(crate) fn cost(&self) -> Cost {
        let inst = self.inst;
        let mut c = Cost::default();
        let mut own = 0.0;
        for d in 0..inst.devices.len() {
            let r: f64 = inst
                .subscriptions(d)
                .iter()
                .map(|&t| inst.rates[t as usize])
                .sum();
            own += r * inst.waste_weight[d];
        }
        c.max_fanout = self.pins.iter().map(Vec::len).max().unwrap_or(0);
        let subscribed: f64 = self
            .pins
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, _)| inst.rates[t])
            .sum();
        let mut sum = 0.0;
        for s in 0..self.load.len() {
            if self.members[s] == 0 {
                continue;
            }
            let l = self.load[s];
            let usable = self.usable(s as u32);
            c.shards += 1;
            sum += l;
            c.max_load = c.max_load.max(l);
            if self.over(s as u32, l) && l > usable + EPS {
                c.overload += l - usable;
                c.overloaded_shards += 1;
            }
            c.wasted += l * self.wsum[s];
            let rho = (l / self.cap).min(0.99);
            c.latency += l * rho / (1.0 - rho);
        }
        c.mean_load = if c.shards > 0 {
            sum / c.shards as f64
        } else {
            0.0
        };
        c.wasted = (c.wasted - own).max(0.0);
        c.copies = (sum - subscribed).max(0.0);
        c.migrations = self.migrations;
        c.together = inst
            .together
            .iter()
            .zip(&self.together_pairs)
            .map(|(t, &n)| t.weight * n as f64)
            .fold(0.0, |a, b| a + b);
        c.bandwidth_excess = inst.resources.bandwidth.map_or(0.0, |b| (sum - b).max(0.0));
        let w = &self.w;
        c.total = w.overload * (c.overload + c.bandwidth_excess)
            + w.copies * c.copies
            + w.wasted * c.wasted
            + w.latency * c.latency
            + w.shard * c.shards as f64
            + w.migration * c.migrations as f64
            + c.together;
        c
    }
}

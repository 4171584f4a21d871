//! The planner's steps on a [`Partition`]: placement of new devices,
//! **create** (split a shard predicted above capacity), **refine** (single
//! and net moves), the fan-out repair, and **merge** of quiet shards.

use std::collections::BTreeSet;

use router_common::maps::MAX_ROUTE_SHARDS;

use crate::{EPS, NONE, mix, partition::Partition, subscribers::Subscribers};

impl<'a> Partition<'a> {
    /// Places unplaced devices, in the given order, into the cheapest shard;
    /// opens a shard when every candidate would go above usable capacity.
    pub(crate) fn place_new(&mut self, order: &[u32]) {
        let mut fill = NONE;
        let mut lightest = self.lightest();
        let mut active = self.active();
        let max = self.inst.resources.max_shards as usize;
        let mut cands = Vec::new();
        for (i, &d) in order.iter().enumerate() {
            let d = d as usize;
            if i % 1024 == 0 {
                lightest = self.lightest();
            }
            self.neighbours(d, &mut cands);
            cands.extend([fill, lightest].into_iter().filter(|&s| s != NONE));
            let own: f64 = self
                .inst
                .subscriptions(d)
                .iter()
                .map(|&t| self.inst.rates[t as usize])
                .sum();
            // Among shards with room: the fewest new copies first (the
            // load the device adds), then the shard its cluster is filling
            // (so neighbouring zones stay together), then the cost.
            let mut fitting: Option<(f64, bool, f64, u32)> = None;
            let mut any: Option<(f64, u32)> = None;
            for &s in &cands {
                let Some((c, after)) = self.delta(d, s) else {
                    continue;
                };
                if any.is_none_or(|b| c < b.0) {
                    any = Some((c, s));
                }
                if !self.over_for(d, after) || self.over_for(d, own) {
                    let key = (after - self.load[s as usize], s != fill, c, s);
                    let better = |b: &(f64, bool, f64, u32)| {
                        if (key.0 - b.0).abs() > EPS {
                            key.0 < b.0
                        } else {
                            (key.1, key.2) < (b.1, b.2)
                        }
                    };
                    if fitting.as_ref().is_none_or(better) {
                        fitting = Some(key);
                    }
                }
            }
            let target = match (fitting, any) {
                (Some(f), _) => f.3,
                _ if active < max && self.can_open_for(d) => {
                    active += 1;
                    self.open_reusing()
                }
                (None, Some((_, s))) => s,
                // Every shard is at the fan-out limit for one of this
                // device's topics, or of another boundary class: least
                // harm in its own class (the plan will be refused), or a
                // shard of its own (the shard count is checked at the end).
                (None, None) => match self.lightest_admitting(d) {
                    Some(s) => s,
                    None => {
                        active += 1;
                        self.open_reusing()
                    }
                },
            };
            if self.members[target as usize] == 0 {
                fill = target;
            }
            self.place(d, target);
        }
    }

    /// Creates shards where the load overflows: the members of every
    /// shard above usable capacity are laid out again together, in cluster
    /// order, each into the cheapest shard with room (its old one, or one
    /// holding its topics), new shards opening as the last ones fill.
    /// Laying them out jointly and in cluster order keeps a site in as few
    /// pieces as its load needs, so fan-out and copies stay low. Devices
    /// stay where they were once the migration budget is spent.
    pub(crate) fn split_overloaded(&mut self, keys: &[(u32, u32, u64)]) {
        let over: Vec<bool> = (0..self.load.len())
            .map(|s| self.over(s as u32, self.load[s]) && self.members[s] > 1)
            .collect();
        if !over.contains(&true) || !self.can_open() {
            return;
        }
        let mut members: Vec<u32> = (0..self.assign.len() as u32)
            .filter(|&d| over[self.assign[d as usize] as usize])
            .collect();
        members.sort_unstable_by_key(|&d| keys[d as usize]);
        let prev: Vec<u32> = members.iter().map(|&d| self.assign[d as usize]).collect();
        for &d in &members {
            self.unplace(d as usize);
        }
        let mut fill = NONE;
        let mut cands = Vec::new();
        for (&d, &home) in members.iter().zip(&prev) {
            let d = d as usize;
            self.neighbours(d, &mut cands);
            // Not into another shard being laid out: its own members
            // come first there (else every member shifts along).
            cands.retain(|&s| !over.get(s as usize).copied().unwrap_or(false));
            cands.push(home);
            if fill != NONE {
                cands.push(fill);
            }
            // Staying home is free; anything else needs budget.
            let may_migrate = self.budget_left() > 0 || self.migrated(d, home);
            let (mut fitting, mut any) = (None::<(f64, u32)>, None::<(f64, u32)>);
            for &s in &cands {
                if !may_migrate && self.migrated(d, s) {
                    continue;
                }
                if let Some((c, after)) = self.delta(d, s) {
                    if !self.over_for(d, after) && fitting.is_none_or(|b| c < b.0) {
                        fitting = Some((c, s));
                    }
                    if any.is_none_or(|b| c < b.0) {
                        any = Some((c, s));
                    }
                }
            }
            // Home first while it has room: only the overflow moves.
            let home_fits = self
                .delta(d, home)
                .is_some_and(|(_, after)| !self.over_for(d, after));
            if !home_fits && !may_migrate {
                self.deferred += 1;
            }
            // No shard of its topics has room: the least loaded shard of
            // its class, before a new one (a copy more rather than a shard
            // more: a shard opened for a sliver of load is not merged
            // again while its partners are busy). Every such shard costs
            // the same copies (it holds none of the member's topics), so
            // the load alone chooses, and one shard is priced, not all.
            if fitting.is_none() && !home_fits && may_migrate {
                let spare = (0..self.load.len() as u32)
                    .filter(|&s| {
                        // `over` predates the shards this layout opened.
                        self.members[s as usize] > 0
                            && !over.get(s as usize).copied().unwrap_or(false)
                            && s != home
                            && !cands.contains(&s)
                            && self.class[s as usize] == self.inst.class[d]
                    })
                    .min_by(|&a, &b| {
                        self.load[a as usize]
                            .total_cmp(&self.load[b as usize])
                            .then(a.cmp(&b))
                    });
                if let Some(s) = spare
                    && let Some((c, after)) = self.delta(d, s)
                    && !self.over_for(d, after)
                {
                    fitting = Some((c, s));
                }
            }
            let target = match (fitting, any) {
                _ if home_fits => home,
                (Some((_, s)), _) => s,
                _ if may_migrate && self.can_open_in_layout(d, &over) => {
                    fill = self.open_reusing_except(&over);
                    fill
                }
                (None, Some((_, s))) => s,
                (None, None) => home,
            };
            self.place(d, target);
        }
    }

    /// Whether a shard can be opened for `d` while the shards marked in
    /// `over` are being laid out again (emptied, they still count).
    pub(crate) fn can_open_in_layout(&self, d: usize, over: &[bool]) -> bool {
        let emptied = (0..over.len())
            .filter(|&s| over[s] && self.members[s] == 0)
            .count();
        self.can_open_for(d) && self.active() + emptied < self.inst.resources.max_shards as usize
    }

    /// The cheapest improving move of `d` to a neighbouring shard.
    pub(crate) fn best_move(&self, d: usize, cands: &mut Vec<u32>) -> Option<(f64, u32)> {
        self.neighbours(d, cands);
        let mut best: Option<(f64, u32)> = None;
        for &s in cands.iter() {
            if let Some((c, after)) = self.delta(d, s)
                && c < -EPS
                && self.within_capacity(s, after)
                && best.is_none_or(|b| c < b.0)
            {
                best = Some((c, s));
            }
        }
        best
    }

    /// Label-propagation refinement; returns the number of moves. Each
    /// round proposes moves for all devices in parallel against the same
    /// snapshot, then applies them in a seeded order, each re-checked
    /// against the partition as it is by then (so no move ever raises the
    /// cost, and the result does not depend on thread timing).
    pub(crate) fn refine(&mut self, rounds: usize, seed: u64) -> usize {
        let n = self.assign.len();
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(8);
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut total = 0;
        for round in 0..rounds {
            let r = mix(seed.wrapping_add(round as u64));
            order.sort_unstable_by_key(|&d| mix(r ^ d as u64));
            let chunk = order.len().div_ceil(threads).max(1);
            let this = &*self;
            let proposals: Vec<(u32, u32)> = std::thread::scope(|scope| {
                let handles: Vec<_> = order
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || {
                            let mut cands = Vec::new();
                            part.iter()
                                .filter_map(|&d| {
                                    this.best_move(d as usize, &mut cands).map(|(_, s)| (d, s))
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("refinement worker"))
                    .collect()
            });
            let mut moves = 0;
            for (d, s) in proposals {
                let d = d as usize;
                let a = self.assign[d];
                if !self
                    .delta(d, s)
                    .is_some_and(|(c, after)| c < -EPS && self.within_capacity(s, after))
                {
                    continue;
                }
                let costs_budget = !self.migrated(d, a) && self.migrated(d, s);
                if costs_budget && self.budget_left() == 0 {
                    self.deferred += 1;
                    continue;
                }
                self.move_to(d, s);
                moves += 1;
            }
            total += moves;
            tracing::debug!(round, moves, "refinement round");
            if moves <= n / 1000 {
                break;
            }
        }
        total
    }

    /// Brings every topic within the data plane's fan-out: while a topic
    /// spans more than [`MAX_ROUTE_SHARDS`] shards, its subscribers in the
    /// shard where it has the fewest move, each to the shard already
    /// holding it where the move costs least (overload included, so
    /// shards with room are preferred). Gives up on a topic when one of
    /// those devices has nowhere to go (another of its topics is at the
    /// bound); the plan is then refused. Returns the devices moved.
    pub(crate) fn enforce_fanout(&mut self, subscribers: &Subscribers) -> usize {
        let mut over: Vec<u32> = (0..self.pins.len() as u32)
            .filter(|&t| self.pins[t as usize].len() > MAX_ROUTE_SHARDS)
            .collect();
        over.sort_unstable_by_key(|&t| (std::cmp::Reverse(self.pins[t as usize].len()), t));
        let mut moved = 0;
        let mut kept = Vec::new();
        for t in over {
            let tu = t as usize;
            'topic: while self.pins[tu].len() > MAX_ROUTE_SHARDS {
                let a = self.pins[tu]
                    .iter()
                    .min_by_key(|p| (p.1, p.0))
                    .expect("pinned")
                    .0;
                kept.clear();
                kept.extend(self.pins[tu].iter().map(|p| p.0).filter(|&s| s != a));
                for &d in subscribers.of_topic(t) {
                    let d = d as usize;
                    if self.assign[d] != a {
                        continue;
                    }
                    let best = kept
                        .iter()
                        .filter_map(|&b| self.delta(d, b).map(|(c, _)| (c, b)))
                        .min_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
                    let Some((_, b)) = best else {
                        break 'topic;
                    };
                    self.move_to(d, b);
                    moved += 1;
                }
            }
        }
        moved
    }

    /// Net moves: for each topic spread over several shards, heaviest
    /// first, the subscribers it has in a shard where it has few move
    /// together to the shard where it has the most, kept when the whole
    /// move lowers the cost. Single-device refinement cannot see this gain:
    /// a topic's copy into a shard goes only when its last subscriber there
    /// leaves, so no one move pays on its own. Groups of at most
    /// `max_group` devices; returns the net moves kept.
    pub(crate) fn net_moves(&mut self, subscribers: &Subscribers, max_group: u32) -> usize {
        let inst = self.inst;
        let nt = inst.topics.len();
        let mut order: Vec<u32> = (0..nt as u32)
            .filter(|&t| self.pins[t as usize].len() > 1)
            .collect();
        order.sort_unstable_by(|&a, &b| {
            inst.rates[b as usize]
                .total_cmp(&inst.rates[a as usize])
                .then(a.cmp(&b))
        });
        let mut kept = 0;
        let mut group = Vec::new();
        for t in order {
            let tu = t as usize;
            let mut i = 0;
            while i < self.pins[tu].len() {
                let pins = &self.pins[tu];
                let (a, count) = pins[i];
                let main = pins
                    .iter()
                    .max_by_key(|p| (p.1, u32::MAX - p.0))
                    .expect("pinned")
                    .0;
                i += 1;
                if a == main || count > max_group {
                    continue;
                }
                group.clear();
                group.extend(
                    subscribers
                        .of_topic(t)
                        .iter()
                        .copied()
                        .filter(|&d| self.assign[d as usize] == a),
                );
                let budget = group
                    .iter()
                    .filter(|&&d| !self.migrated(d as usize, a) && self.migrated(d as usize, main))
                    .count();
                if budget > self.budget_left() {
                    continue;
                }
                match self.move_group(&group, a, main) {
                    Some(total) if total < -EPS && !self.over(main, self.load[main as usize]) => {
                        kept += 1;
                        // The topic left shard `a`: look at the same index again.
                        i = 0;
                    }
                    Some(_) => self.move_all(&group, a),
                    None => {}
                }
            }
        }
        kept
    }

    /// Soft-preference moves: the devices a shard holds of one value of a
    /// preferred key (a site's few devices in another site's shard) move
    /// together to the shard holding most of that value, kept when the
    /// whole move lowers the cost within capacity. One device alone cannot
    /// take a value out of a shard (the price goes with the last one), so
    /// single moves never see this gain, as with a topic's copies. Returns
    /// the groups moved.
    pub(crate) fn together_moves(&mut self, max_group: usize) -> usize {
        let inst = self.inst;
        let mut moved = 0;
        for (k, t) in inst.together.iter().enumerate() {
            // Devices by (shard, value).
            let mut order: Vec<u32> = (0..inst.devices.len() as u32).collect();
            order.sort_unstable_by_key(|&d| (self.assign[d as usize], t.value[d as usize], d));
            let mut i = 0;
            while i < order.len() {
                let first = order[i] as usize;
                let (a, v) = (self.assign[first], t.value[first]);
                let mut j = i + 1;
                while j < order.len()
                    && self.assign[order[j] as usize] == a
                    && t.value[order[j] as usize] == v
                {
                    j += 1;
                }
                let group: Vec<u32> = order[i..j].to_vec();
                i = j;
                if group.len() > max_group || group.len() > self.budget_left() {
                    continue;
                }
                // The shard holding most of this value, other than `a`.
                let Some(main) = (0..self.load.len() as u32)
                    .filter(|&s| s != a && self.members[s as usize] > 0)
                    .filter_map(|s| Some((*self.together[k][s as usize].get(&v)?, s)))
                    .max_by(|x, y| x.0.cmp(&y.0).then(y.1.cmp(&x.1)))
                    .map(|(_, s)| s)
                else {
                    continue;
                };
                if self.together[k][main as usize][&v] < group.len() as u32 {
                    continue;
                }
                match self.move_group(&group, a, main) {
                    Some(total) if total < -EPS && !self.over(main, self.load[main as usize]) => {
                        moved += 1;
                    }
                    Some(_) => self.move_all(&group, a),
                    None => {}
                }
            }
        }
        moved
    }

    /// Group moves: devices of one shard with the very same subscriptions
    /// move together to the neighbouring shard where the whole group
    /// lowers the cost most (kept only then, within capacity and
    /// fan-out). A shard's topic goes with its last subscriber, so a group
    /// of look-alikes (the vehicles of a route, the sensors of a room) can
    /// leave where no one of them alone would: a coarse level for the
    /// local search, the groups being the coarse vertices. Returns the
    /// groups moved.
    pub(crate) fn group_moves(&mut self, max_group: usize) -> usize {
        let inst = self.inst;
        let n = inst.devices.len();
        let mut order: Vec<u32> = (0..n as u32)
            .filter(|&d| !inst.subscriptions(d as usize).is_empty())
            .collect();
        order.sort_unstable_by(|&a, &b| {
            (self.assign[a as usize], inst.subscriptions(a as usize), a).cmp(&(
                self.assign[b as usize],
                inst.subscriptions(b as usize),
                b,
            ))
        });
        let mut moved = 0;
        let mut cands = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let first = order[i] as usize;
            let a = self.assign[first];
            let mut j = i + 1;
            while j < order.len()
                && self.assign[order[j] as usize] == a
                && inst.subscriptions(order[j] as usize) == inst.subscriptions(first)
            {
                j += 1;
            }
            let group: Vec<u32> = order[i..j].to_vec();
            i = j;
            if group.len() < 2 || group.len() > max_group || group.len() > self.budget_left() {
                continue;
            }
            self.neighbours(first, &mut cands);
            let mut best: Option<(f64, u32)> = None;
            for &b in &cands {
                let before = self.load[b as usize];
                let Some(total) = self.move_group(&group, a, b) else {
                    continue;
                };
                let fits = !self.over(b, self.load[b as usize]) || self.load[b as usize] <= before;
                if fits && total < -EPS && best.is_none_or(|x| total < x.0) {
                    best = Some((total, b));
                }
                self.move_all(&group, a);
            }
            if let Some((_, b)) = best {
                self.move_all(&group, b);
                moved += 1;
            }
        }
        moved
    }

    /// Relieves shards above usable capacity by moving topics out of them:
    /// for an overloaded shard, the subscribers it holds of one topic (a
    /// "piece") move together to another shard that holds the topic and
    /// has room for them, or to a new shard, which takes the topic's rate
    /// off the overloaded one. Pieces are tried by rate relieved per
    /// device moved, and a move is kept only when the destination stays
    /// within capacity and every topic within the fan-out. Where single
    /// moves cannot help (a topic at the fan-out bound blocks every new
    /// shard for its followers; the load falls only when a topic's last
    /// subscriber leaves), whole pieces can. Returns the pieces moved.
    pub(crate) fn relieve_overloaded(&mut self, subscribers: &Subscribers) -> usize {
        let mut moved = 0;
        let mut piece: Vec<u32> = Vec::new();
        let mut cands: Vec<u32> = Vec::new();
        let mut tries = 0usize;
        loop {
            let Some(s) = (0..self.load.len() as u32)
                .filter(|&s| self.members[s as usize] > 1 && self.over(s, self.load[s as usize]))
                .max_by(|&a, &b| {
                    self.load[a as usize]
                        .total_cmp(&self.load[b as usize])
                        .then(b.cmp(&a))
                })
            else {
                return moved;
            };
            // Topics of `s`, best relief per device first; none that
            // would empty the shard.
            let mut topics: Vec<(f64, u32)> = self
                .pins
                .iter()
                .enumerate()
                .filter_map(|(t, p)| {
                    let n = p.iter().find(|q| q.0 == s)?.1;
                    (n < self.members[s as usize])
                        .then(|| (self.inst.rates[t] / n as f64, t as u32))
                })
                .collect();
            topics.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let before = self.load[s as usize];
            let mut relieved = false;
            for &(_, t) in &topics {
                tries += 1;
                // Bounded work on pathological fleets.
                if tries > 200_000 {
                    return moved;
                }
                piece.clear();
                piece.extend(
                    subscribers
                        .of_topic(t)
                        .iter()
                        .copied()
                        .filter(|&d| self.assign[d as usize] == s),
                );
                if piece.is_empty() || piece.len() > self.budget_left() {
                    continue;
                }
                cands.clear();
                cands.extend(
                    self.pins[t as usize]
                        .iter()
                        .map(|p| p.0)
                        .filter(|&b| b != s && !self.over(b, self.load[b as usize])),
                );
                cands.sort_unstable_by(|&a, &b| {
                    self.load[a as usize].total_cmp(&self.load[b as usize])
                });
                if self.can_open_class(self.class[s as usize])
                    && self.pins[t as usize].len() < MAX_ROUTE_SHARDS
                {
                    cands.push(NONE);
                }
                for &b in &cands {
                    let b = if b == NONE { self.open_reusing() } else { b };
                    if self.move_group(&piece, s, b).is_none() {
                        continue;
                    }
                    if !self.over(b, self.load[b as usize]) && self.load[s as usize] < before - EPS
                    {
                        moved += 1;
                        relieved = true;
                        break;
                    }
                    self.move_all(&piece, s);
                }
                if relieved {
                    break;
                }
            }
            if !relieved {
                // Nothing helps this shard: leave it for the caller.
                return moved;
            }
        }
    }

    /// Brings every class down to its shard limit (see
    /// `Partition::limit_classes`): while a class holds more shards than
    /// its limit (a current plan made for other rates), its lightest shard
    /// is folded into the shard of its class where the union is smallest,
    /// overload or not: the shards go to the classes of higher priority.
    /// Returns the shards folded.
    pub(crate) fn enforce_class_limits(&mut self) -> usize {
        let mut folded = 0;
        for c in 0..self.class_limit.len() as u32 {
            let limit = self.class_limit[c as usize];
            if limit == usize::MAX {
                continue;
            }
            loop {
                let mine: Vec<u32> = (0..self.load.len() as u32)
                    .filter(|&s| self.members[s as usize] > 0 && self.class[s as usize] == c)
                    .collect();
                if mine.len() <= limit.max(1) {
                    break;
                }
                let from = *mine
                    .iter()
                    .min_by(|&&a, &&b| {
                        self.load[a as usize]
                            .total_cmp(&self.load[b as usize])
                            .then(a.cmp(&b))
                    })
                    .expect("non-empty");
                // The partner sharing the most rate with it grows least.
                let mut shared = vec![0.0; self.load.len()];
                for (t, pins) in self.pins.iter().enumerate() {
                    if pins.iter().any(|p| p.0 == from) {
                        for &(q, _) in pins {
                            shared[q as usize] += self.inst.rates[t];
                        }
                    }
                }
                let to = *mine
                    .iter()
                    .filter(|&&q| q != from)
                    .min_by(|&&a, &&b| {
                        let union = |q: u32| self.load[q as usize] - shared[q as usize];
                        union(a).total_cmp(&union(b)).then(a.cmp(&b))
                    })
                    .expect("two shards at least");
                for d in self.members_of(from) {
                    self.move_to(d as usize, to);
                }
                folded += 1;
            }
        }
        folded
    }

    /// Folds quiet shards into a partner while their union stays below
    /// `merge_below` of usable capacity. Returns merges done.
    pub(crate) fn merge_quiet(&mut self) -> usize {
        let merge_below = self.inst.resources.merge_below;
        let limit = |p: &Partition, s: u32| merge_below * p.usable(s);
        let mut merged = 0;
        let mut tried: BTreeSet<u32> = BTreeSet::new();
        loop {
            let mut quiet: Vec<u32> = (0..self.load.len() as u32)
                .filter(|&s| self.members[s as usize] > 0 && !tried.contains(&s))
                .filter(|&s| self.load[s as usize] < limit(self, s))
                .collect();
            if quiet.is_empty() || self.active() < 2 {
                return merged;
            }
            quiet.sort_by(|&a, &b| self.load[a as usize].total_cmp(&self.load[b as usize]));
            let s = quiet[0];
            // Rate shared with every other shard.
            let mut shared = vec![0.0; self.load.len()];
            for (t, pins) in self.pins.iter().enumerate() {
                if pins.iter().any(|p| p.0 == s) {
                    for &(q, _) in pins {
                        shared[q as usize] += self.inst.rates[t];
                    }
                }
            }
            let partner = (0..self.load.len() as u32)
                .filter(|&q| q != s && self.members[q as usize] > 0)
                // Hard boundaries: only shards of one class merge.
                .filter(|&q| self.class[q as usize] == self.class[s as usize])
                .map(|q| {
                    let union = self.load[s as usize] + self.load[q as usize] - shared[q as usize];
                    (union, q)
                })
                .filter(|&(u, _)| u < limit(self, s))
                .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let Some((_, q)) = partner else {
                tried.insert(s);
                continue;
            };
            // The smaller membership moves.
            let (from, to) = if self.members[s as usize] <= self.members[q as usize] {
                (s, q)
            } else {
                (q, s)
            };
            let moving = self.members_of(from);
            let cost: usize = moving
                .iter()
                .filter(|&&d| !self.migrated(d as usize, from) && self.migrated(d as usize, to))
                .count();
            if cost > self.budget_left() {
                self.deferred += cost;
                tried.insert(s);
                continue;
            }
            for d in moving {
                self.move_to(d as usize, to);
            }
            merged += 1;
        }
    }
}

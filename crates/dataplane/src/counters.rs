//! Reading the installed state and the counters back from the kernel.

use std::{collections::BTreeMap, os::fd::AsFd};

use aya::maps::{MapData, PerCpuValues};
use router_common::{
    maps::{
        Counter, GROUP_CELL_WAYS, GroupCellLine, GroupStatKey, GroupStatRecord, MAX_TOPICS, Meta,
        NameEntry, Route, Shard, device_index, group_cell_of, names,
    },
    reason::Reason,
    topic::TopicKey,
};

use rustc_hash::FxHashMap as StdHashMap;

use crate::{Dataplane, GroupReader, RouterConfig, RoutesMap, ShardsMap, batch, error::*, iter};

fn sum_cpus(v: PerCpuValues<Counter>) -> Counter {
    let mut c = Counter::default();
    for x in v.iter() {
        c.add(x);
    }
    c
}

impl Dataplane {
    /// The installed routing state, read back from the kernel.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let meta = self.meta()?;
        let active = self.active_slot()? & 1;
        let mut routes = Vec::new();
        let mut shards = Vec::new();
        if meta.generation != 0 {
            let inner: RoutesMap = self
                .routes
                .get(&active, 0)
                .map_err(map_err(names::ROUTES))?;
            for kv in inner.iter() {
                routes.push(kv.map_err(map_err(names::ROUTES))?);
            }
            // The routes the name array holds, which the hash map does not
            // (see `install::split_routes`).
            let names_inner: MapData = self.names.get(&active, 0).map_err(map_err(names::NAMES))?;
            let held = batch::TypedMap::<u32, NameEntry>::new(names_inner.fd().as_fd())
                .and_then(|m| m.lookup())
                .map_err(|e| batch_err(names::NAMES, e))?;
            routes.extend(
                held.into_iter()
                    .filter(|(_, e)| e.key.hash != 0)
                    .map(|(_, e)| (e.key, e.route)),
            );
            routes.sort_by_key(|(k, _)| *k);
            let inner: ShardsMap = self
                .shards
                .get(&active, 0)
                .map_err(map_err(names::SHARDS))?;
            for i in 0..meta.shards {
                shards.push(inner.get(&i, 0).map_err(map_err(names::SHARDS))?);
            }
        }
        Ok(Snapshot {
            config: self.config()?,
            meta,
            active_slot: active,
            routes,
            shards,
            egress: self.egress_table(),
        })
    }

    /// The per-reason counters alone, summed over CPUs: a few dozen
    /// lookups, where [`Dataplane::counters`] also reads every topic's
    /// (100k topics: tens of ms) — what a metrics scrape needs.
    pub fn reason_counters(&self) -> Result<BTreeMap<Reason, Counter>> {
        let mut reasons = BTreeMap::new();
        for r in Reason::ALL {
            let v = self
                .reasons
                .get(&(*r as u32), 0)
                .map_err(map_err(names::REASONS))?;
            reasons.insert(*r, sum_cpus(v));
        }
        Ok(reasons)
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let sum = sum_cpus;
        let reasons = self.reason_counters()?;
        let mut topics = BTreeMap::new();
        for (k, slot) in self.slot_table()? {
            let v = self
                .topic_stats
                .get(&slot, 0)
                .map_err(map_err(names::TOPIC_STATS))?;
            topics.insert(k, (slot, sum(v)));
        }
        let mut unrouted = BTreeMap::new();
        for kv in self.unrouted.iter() {
            let (k, v) = kv.map_err(map_err(names::UNROUTED))?;
            unrouted.insert(k, sum(v));
        }
        Ok(Counters {
            reasons,
            topics,
            unrouted,
        })
    }

    /// Routed publishes per (topic counter slot, device group): the
    /// per-CPU cells (`SC_GROUP_CELLS`, read from memory) plus the shared
    /// LRU counters a full line spilled to, read with the map iterator (or
    /// in batches without it: a tick with 100k topics must stay cheap).
    /// Counters only grow; the caller takes differences between reads.
    ///
    /// Some kernels load the iterator program but refuse to run it (an
    /// LSM or a lockdown policy answering EPERM when the iterator is
    /// created): the first such refusal switches this data plane to
    /// batched reads for good, with a warning, and the read is answered.
    pub fn group_counters(&self) -> Result<Vec<(GroupStatKey, u64)>> {
        let shared = self.group_counters_shared()?;
        Ok(self.merge_cells(shared.into_iter().map(|(k, c)| (k, c.packets))))
    }

    /// [`Dataplane::group_counters`] with the shared counters read in
    /// batches (`BPF_MAP_LOOKUP_BATCH`): the way on kernels without BTF,
    /// and the reference the iterator is tested against.
    pub fn group_counters_batched(&self) -> Result<Vec<(GroupStatKey, u64)>> {
        let shared = self.group_stats_batched()?;
        Ok(self.merge_cells(shared.into_iter().map(|(k, c)| (k, c.packets))))
    }

    /// How many (topic, device group) counters the per-CPU cells hold, and
    /// how many they have room for (over all CPUs): one scan of the cells.
    pub fn group_cells_used(&self) -> (usize, usize) {
        (
            self.cells().count(),
            self.group_cells.len() * GROUP_CELL_WAYS,
        )
    }

    /// Every cell in use on every CPU: (key, packets).
    fn cells(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.group_cells.len())
            .map(|i| self.group_cells.get(i))
            // Cells fill from the front: an empty first cell, an empty line.
            .filter(|line: &GroupCellLine| line.keys[0] != 0)
            .flat_map(|line| line.keys.into_iter().zip(line.packets))
            .filter(|(k, _)| *k != 0)
    }

    /// [`Dataplane::group_cells_used`] as of the last
    /// [`Dataplane::group_counters`] read, without reading the cells again
    /// (the daemon's metrics).
    pub fn group_cells_read(&self) -> (usize, usize) {
        (
            self.cells_in_use.get(),
            self.group_cells.len() * GROUP_CELL_WAYS,
        )
    }

    /// Whether the router finds `addr`'s device group by its entry in the
    /// direct-mapped device table (the fast path) rather than by a hash
    /// lookup (a device whose entry another device holds, or no device).
    pub fn device_indexed(&self, addr: std::net::IpAddr) -> bool {
        let addr = crate::install::device_addr(addr);
        let e = self.device_index.get(device_index(&addr.addr) as usize);
        e.addr == addr
    }

    /// Adds every CPU's cells to the shared counters, per key.
    fn merge_cells(
        &self,
        shared: impl Iterator<Item = (GroupStatKey, u64)>,
    ) -> Vec<(GroupStatKey, u64)> {
        let mut all: StdHashMap<GroupStatKey, u64> = shared.collect();
        let mut in_use = 0;
        for (k, n) in self.cells() {
            in_use += 1;
            *all.entry(group_cell_of(k)).or_default() += n;
        }
        self.cells_in_use.set(in_use);
        all.into_iter().collect()
    }

    /// The shared LRU counters (`SC_GROUP_STATS`), with the iterator where
    /// it runs.
    fn group_counters_shared(&self) -> Result<Vec<(GroupStatKey, Counter)>> {
        let read = match &*self.group_dump.borrow() {
            GroupReader::Iterator(prog) => iter::dump_map(
                prog.as_fd(),
                self.raw_group_stats.fd().as_fd(),
                |r: GroupStatRecord| (r.key, r.counter),
            ),
            GroupReader::Batched(_) => return self.group_stats_batched(),
        };
        match read {
            Ok(v) => Ok(v),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::Unsupported
                ) =>
            {
                let why = format!("the kernel refused to run the iterator ({e})");
                tracing::warn!("{why}: group counters will be read in batches");
                *self.group_dump.borrow_mut() = GroupReader::Batched(why);
                self.group_stats_batched()
            }
            Err(source) => Err(DataplaneError::Iter {
                name: names::GROUP_STATS,
                source,
            }),
        }
    }

    /// True when [`Dataplane::group_counters`] reads with the map iterator.
    pub fn group_iterator(&self) -> bool {
        matches!(&*self.group_dump.borrow(), GroupReader::Iterator(_))
    }

    /// Why [`Dataplane::group_counters`] reads in batches (no kernel BTF,
    /// the iterator refused at load or at run time); `None` while it uses
    /// the iterator.
    pub fn group_iterator_refused(&self) -> Option<String> {
        match &*self.group_dump.borrow() {
            GroupReader::Iterator(_) => None,
            GroupReader::Batched(why) => Some(why.clone()),
        }
    }

    /// The shared LRU counters read with `BPF_MAP_LOOKUP_BATCH`.
    fn group_stats_batched(&self) -> Result<Vec<(GroupStatKey, Counter)>> {
        batch::TypedMap::<GroupStatKey, Counter>::new(self.raw_group_stats.fd().as_fd())
            .and_then(|m| m.lookup())
            .map_err(|e| batch_err(names::GROUP_STATS, e))
    }

    /// Topic name key → counter slot.
    pub fn slot_table(&self) -> Result<Vec<(TopicKey, u32)>> {
        Ok(self.slots_cached()?.iter().map(|(k, v)| (*k, *v)).collect())
    }

    /// The slot table, from this process's copy when it is current: only
    /// an install changes slots, and every install rewrites `SC_META`, so a
    /// copy taken at the same `Meta` is exact, and building the map from
    /// the shared array costs ~10 ms per million slots.
    pub(crate) fn slots_cached(&self) -> Result<std::cell::Ref<'_, StdHashMap<TopicKey, u32>>> {
        let meta = self.meta()?;
        let fresh = matches!(&*self.slot_cache.borrow(), Some((m, _)) if *m == meta);
        if !fresh {
            let high = (meta.slot_high_water as usize).min(MAX_TOPICS as usize);
            let table: StdHashMap<TopicKey, u32> = (0..high)
                .map(|s| (self.slots.get(s), s as u32))
                .filter(|(k, _)| k.hash != 0)
                .collect();
            *self.slot_cache.borrow_mut() = Some((meta, table));
        }
        Ok(std::cell::Ref::map(self.slot_cache.borrow(), |c| {
            &c.as_ref().expect("filled above").1
        }))
    }
}

/// The installed state as the kernel holds it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub config: RouterConfig,
    pub meta: Meta,
    pub active_slot: u32,
    pub routes: Vec<(TopicKey, Route)>,
    pub shards: Vec<Shard>,
    pub egress: Vec<(u32, u32)>,
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub reasons: BTreeMap<Reason, Counter>,
    /// Topic name key → (slot, counter).
    pub topics: BTreeMap<TopicKey, (u32, Counter)>,
    pub unrouted: BTreeMap<TopicKey, Counter>,
}

//! Plan installs: a generation's inner maps filled off to the side, then
//! the outer-slot swap and the flip of `SC_ACTIVE` (see the crate docs).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{Array, MapData, PerCpuValues};
use router_common::{
    maps::{
        Counter, DeviceAddr, DeviceEntry, IDS_MAP_FLAGS, MAX_ROUTES, MAX_SHARDS, MAX_TOPICS,
        MQTTSN_ID_ROUTES, Meta, NAME_INDEX_ENTRIES, NAMES_MAP_FLAGS, NameEntry, ROUTES_MAP_FLAGS,
        Route, SHARD_HAS_V4, SHARD_HAS_V6, Shard, device_index, name_index, names,
    },
    topic::TopicKey,
};

use rustc_hash::{FxHashMap as StdHashMap, FxHashSet as HashSet};
use shardcast_plan::CompiledPlan;

use crate::{Dataplane, batch, error::*, joined, mmap, netdev::*};

/// Route capacity of a fresh inner map for a plan of `routes` keys: room to
/// grow (a daemon updates the map in place while plans stay within it),
/// never beyond the template's `MAX_ROUTES`.
///
/// Why not always `MAX_ROUTES`: the kernel sizes a hash map's bucket array
/// by its capacity (a power of two), and creating and zeroing 2M buckets
/// takes ~17 ms, while every insert into a 32 MiB bucket array misses the
/// cache. Inner hash maps may differ from the template in capacity alone
/// (since Linux 5.10; type, sizes and flags must match).
pub fn routes_capacity(routes: usize) -> u32 {
    let want = (routes.max(1).next_power_of_two() as u64 * 2).max(4096);
    want.min(MAX_ROUTES as u64) as u32
}

/// A fresh, empty inner map for the outer map `outer` (type, key and value
/// sizes and flags must be the template's).
pub(crate) fn create_inner<K, V>(
    map_type: aya_obj::generated::bpf_map_type,
    entries: u32,
    flags: u32,
    kernel_name: &str,
    outer: &'static str,
) -> Result<MapData> {
    MapData::create(
        aya_obj::Map::new_from_params(
            map_type as u32,
            size_of::<K>() as u32,
            size_of::<V>() as u32,
            entries,
            flags,
        ),
        kernel_name,
        None,
    )
    .map_err(map_err(outer))
}

/// The routes inner map behind `fd`, checked to hold `TopicKey → Route`.
fn routes_map(fd: std::os::fd::BorrowedFd<'_>) -> Result<batch::TypedMap<'_, TopicKey, Route>> {
    batch::TypedMap::new(fd).map_err(|e| batch_err(names::ROUTES, e))
}

/// An outer map (slot → inner map descriptor) behind `fd`.
fn outer_map<'fd>(
    fd: std::os::fd::BorrowedFd<'fd>,
    name: &'static str,
) -> Result<batch::TypedMap<'fd, u32, u32>> {
    batch::TypedMap::new(fd).map_err(|e| batch_err(name, e))
}

/// A fresh, empty inner routes map (same shape as the template).
pub(crate) fn create_routes_map(capacity: u32) -> Result<MapData> {
    create_inner::<TopicKey, Route>(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH,
        capacity,
        ROUTES_MAP_FLAGS,
        "sc_routes",
        names::ROUTES,
    )
}

/// Logs how long each phase of an install took (`RUST_LOG=router_ctl=debug`).
pub(crate) struct Phases {
    last: std::time::Instant,
}

impl Phases {
    pub(crate) fn new() -> Self {
        Self {
            last: std::time::Instant::now(),
        }
    }

    pub(crate) fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        tracing::debug!(phase, elapsed = ?(now - self.last), "install");
        self.last = now;
    }
}

/// An IP address as `SC_DEVICES` keys it.
pub(crate) fn device_addr(a: std::net::IpAddr) -> DeviceAddr {
    match a {
        std::net::IpAddr::V4(v4) => DeviceAddr::v4(v4.octets()),
        std::net::IpAddr::V6(v6) => DeviceAddr { addr: v6.octets() },
    }
}

/// What this process last wrote to one routes slot.
pub(crate) struct Written {
    pub(crate) generation: u64,
    /// The inner map's route capacity (see [`routes_capacity`]).
    pub(crate) capacity: u32,
    pub(crate) entries: StdHashMap<TopicKey, Route>,
    pub(crate) map: MapData,
    /// The slot's MQTT-SN id array and what this process wrote there.
    pub(crate) ids: DirectArray<Route>,
    pub(crate) id_entries: StdHashMap<u32, Route>,
    /// The slot's name array and what this process wrote there.
    pub(crate) names: DirectArray<NameEntry>,
    pub(crate) name_entries: StdHashMap<u32, NameEntry>,
}

/// One generation's array the program indexes directly: the MQTT-SN id
/// routes (`SC_IDS` inner map, `Route`s) or the name array (`SC_NAMES`,
/// `NameEntry`s), mapped into this process and filled with plain memory
/// writes (12 MiB of routes through syscalls would cost a batch update
/// per entry).
pub(crate) struct DirectArray<T: aya::Pod> {
    pub(crate) map: MapData,
    pub(crate) mem: mmap::ArrayMmap<T>,
}

impl DirectArray<Route> {
    /// A fresh, zeroed id array (zero: no route).
    pub(crate) fn ids() -> Result<Self> {
        Self::create(MQTTSN_ID_ROUTES, IDS_MAP_FLAGS, "sc_ids", names::IDS)
    }
}

impl DirectArray<NameEntry> {
    /// A fresh, zeroed name array (zero: a free entry).
    pub(crate) fn names() -> Result<Self> {
        Self::create(
            NAME_INDEX_ENTRIES,
            NAMES_MAP_FLAGS,
            "sc_names",
            names::NAMES,
        )
    }
}

impl<T: aya::Pod + Default + PartialEq> DirectArray<T> {
    fn create(entries: u32, flags: u32, kernel_name: &str, outer: &'static str) -> Result<Self> {
        let map = create_inner::<u32, T>(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY,
            entries,
            flags,
            kernel_name,
            outer,
        )?;
        let mem = mmap::ArrayMmap::new(map.fd().as_fd(), entries as usize).map_err(|source| {
            DataplaneError::Mmap {
                name: outer,
                source,
            }
        })?;
        Ok(DirectArray { map, mem })
    }

    /// Makes the array hold `want` (index → value, zero elsewhere),
    /// writing only what differs from `prev`, what this process last
    /// wrote here (`None`: a fresh array). Returns how many entries it
    /// wrote.
    pub(crate) fn write(
        &mut self,
        want: &StdHashMap<u32, T>,
        prev: Option<&StdHashMap<u32, T>>,
    ) -> usize {
        let mut n = 0;
        for (&i, r) in want {
            if prev.and_then(|p| p.get(&i)) != Some(r) {
                self.mem.set(i as usize, *r);
                n += 1;
            }
        }
        for &i in prev.into_iter().flat_map(|p| p.keys()) {
            if !want.contains_key(&i) {
                self.mem.set(i as usize, T::default());
                n += 1;
            }
        }
        n
    }
}

/// The name array's entries for a plan: each name key's route at its
/// [`name_index`], the smallest key where several share one (the plan's
/// routes are sorted by key). MQTT-SN id aliases are not names: the
/// program looks them up by id.
fn name_entries(plan: &CompiledPlan, values: &[Route]) -> StdHashMap<u32, NameEntry> {
    let mut out = StdHashMap::default();
    for (r, v) in plan.routes.iter().zip(values) {
        if plan.name_keys.get(r.topic) == Some(&r.key) {
            out.entry(name_index(r.key)).or_insert(NameEntry {
                key: r.key,
                route: *v,
            });
        }
    }
    out
}

/// What an install did and how long it took.
#[derive(Clone, Debug)]
pub struct InstallReport {
    pub generation: u64,
    pub routes: usize,
    /// Route entries written or deleted (all of them unless incremental).
    pub changed: usize,
    pub shards: usize,
    /// Building the new generation's maps.
    pub fill: Duration,
    /// Slot updates and the flip.
    pub swap: Duration,
    pub total: Duration,
}

impl Dataplane {
    /// Counter slots for the plan's topics: existing assignments are kept;
    /// new topics take free slots, reclaiming those of topics absent from
    /// the plan when the table is full (their counters are zeroed first).
    pub(crate) fn assign_slots(&mut self, plan: &CompiledPlan) -> Result<Vec<u32>> {
        let mut current: StdHashMap<TopicKey, u32> = self.slots_cached()?.clone();
        // Whatever happens below, the kernel's table may change: re-read
        // it next time unless this install completes (see `install`).
        *self.slot_cache.borrow_mut() = None;
        let wanted: HashSet<TopicKey> = plan.name_keys.iter().copied().collect();
        let mut used = vec![false; MAX_TOPICS as usize];
        for s in current.values() {
            if let Some(u) = used.get_mut(*s as usize) {
                *u = true;
            }
        }
        // Slots never assigned hold zero counters; a slot is only freed by
        // reclaiming it below, which zeroes it.
        let mut free = (0..MAX_TOPICS).filter(|s| !used[*s as usize]);
        let mut reclaimable: Vec<(TopicKey, u32)> = current
            .iter()
            .filter(|(k, _)| !wanted.contains(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        reclaimable.sort_by_key(|(_, s)| *s);
        let mut reclaimable = reclaimable.into_iter();
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut out = Vec::with_capacity(plan.name_keys.len());
        let (mut new_keys, mut new_slots) = (Vec::new(), Vec::new());
        for key in &plan.name_keys {
            let slot = match current.get(key) {
                Some(s) => *s,
                None => {
                    let s = match free.next() {
                        Some(s) => s,
                        None => {
                            let (old, s) = reclaimable.next().ok_or(DataplaneError::SlotsFull)?;
                            // The array write below gives the slot its new key.
                            current.remove(&old);
                            self.topic_stats
                                .set(
                                    s,
                                    PerCpuValues::try_from(vec![Counter::default(); ncpus])?,
                                    0,
                                )
                                .map_err(map_err(names::TOPIC_STATS))?;
                            s
                        }
                    };
                    new_keys.push(*key);
                    new_slots.push(s);
                    current.insert(*key, s);
                    s
                }
            };
            out.push(slot);
        }
        // SC_SLOTS is an array slot → key (a reclaimed slot is simply
        // overwritten), mapped into this process: plain memory writes.
        for (s, k) in new_slots.iter().zip(&new_keys) {
            self.slots.set(*s as usize, *k);
        }
        self.pending_slots = Some(current);
        Ok(out)
    }

    /// Keep both generations' route maps and remember what this process
    /// wrote to each, so that the next [`install`](Self::install) writes
    /// only the routes that differ from what the idle slot already holds.
    /// Costs a second copy of the routes in the kernel and one in this
    /// process; meant for the long-running daemon, whose plans change a
    /// little at a time.
    pub fn set_incremental(&mut self, on: bool) {
        self.incremental = on;
        if !on {
            self.written = [None, None];
            self.written_shards = [None, None];
        }
    }

    /// Installs a compiled plan as the next generation (see the module docs
    /// for the protocol). `force` allows a generation that is not newer.
    pub fn install(&mut self, plan: &CompiledPlan, force: bool) -> Result<InstallReport> {
        self.settle()?;
        let started = std::time::Instant::now();
        let mut ph = Phases::new();
        let installed = self.meta()?;
        if !force && installed.generation != 0 && plan.generation <= installed.generation {
            return Err(DataplaneError::StaleGeneration {
                new: plan.generation,
                installed: installed.generation,
            });
        }
        // Everything that can fail on bad input fails here, before any
        // routing map changes: egress lookups and MACs.
        // Each distinct egress is resolved once (MAC lookup, devmap scan),
        // not once per shard: plans have thousands of shards and few egresses.
        let mut egresses: StdHashMap<&str, (u32, [u8; 6])> = StdHashMap::default();
        for s in &plan.shards {
            if !egresses.contains_key(s.egress.as_str()) {
                let resolved = (self.egress_slot(&s.egress)?, mac_address(&s.egress)?);
                egresses.insert(&s.egress, resolved);
            }
        }
        let mut shard_values = Vec::with_capacity(plan.shards.len());
        for s in &plan.shards {
            let (egress_slot, src_mac) = egresses[s.egress.as_str()];
            let mut flags = 0;
            if s.group_v4.is_some() {
                flags |= SHARD_HAS_V4;
            }
            if s.group_v6.is_some() {
                flags |= SHARD_HAS_V6;
            }
            shard_values.push(Shard {
                group_v4: s.group_v4.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
                group_v6: s.group_v6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets(),
                egress_slot,
                port: s.port,
                flags,
                src_mac,
                _pad: 0,
                id: s.id,
            });
        }
        // The device maps of the plan's new multi-egress shapes, made
        // together before the routes name them.
        if self.broadcasts() {
            let route_egresses: Vec<Vec<u32>> = plan
                .routes
                .iter()
                .filter(|r| r.shards.len() >= 2)
                .map(|r| {
                    r.shards
                        .iter()
                        .map(|&s| shard_values[s as usize].egress_slot)
                        .collect()
                })
                .collect();
            self.make_shapes(route_egresses.iter().map(Vec::as_slice));
        }
        ph.mark("egress and shards resolved");
        let old = self.active_slot()? & 1;
        let new = old ^ 1;
        // What the idle slot holds, if this process wrote it and nobody has
        // written since (the kernel's record of the slot's generation
        // agrees): then only the difference needs writing.
        let reuse = self.incremental
            && self.written[new as usize].as_ref().is_some_and(|w| {
                installed.slot_generation[new as usize] == w.generation
                    && plan.routes.len() <= w.capacity as usize
            });
        let incremental = self.incremental;
        let (routes, capacity, changed, entries, ids, id_entries, names_array, name_entries) =
            std::thread::scope(|scope| -> Result<_> {
                // Creating a route map allocates and clears its bucket array
                // (tens of ms at this capacity): done on the other core while
                // this one assigns counter slots.
                let capacity = routes_capacity(plan.routes.len());
                let fresh = (!reuse).then(|| scope.spawn(move || create_routes_map(capacity)));
                let fresh_ids = (!reuse).then(|| scope.spawn(DirectArray::ids));
                let fresh_names = (!reuse).then(|| scope.spawn(DirectArray::names));
                let slots = self.assign_slots(plan)?;
                ph.mark("counter slots assigned");
                let mut keys = Vec::with_capacity(plan.routes.len());
                let mut values = Vec::with_capacity(plan.routes.len());
                let mut egress_slots = Vec::with_capacity(router_common::maps::MAX_ROUTE_SHARDS);
                for r in &plan.routes {
                    let mut shards = [0u16; router_common::maps::MAX_ROUTE_SHARDS];
                    shards[..r.shards.len()].copy_from_slice(&r.shards);
                    keys.push(r.key);
                    egress_slots.clear();
                    egress_slots.extend(
                        r.shards
                            .iter()
                            .map(|&s| shard_values[s as usize].egress_slot),
                    );
                    values.push(Route {
                        stats_slot: slots[r.topic],
                        shard_count: r.shards.len() as u16,
                        fanout: self.route_fanout(&egress_slots),
                        shards,
                        first: shard_values[r.shards[0] as usize],
                    });
                }
                // The daemon keeps what it wrote, to diff the next plan against.
                let entries: Option<StdHashMap<TopicKey, Route>> =
                    incremental.then(|| keys.iter().copied().zip(values.iter().copied()).collect());
                ph.mark("route values built");
                // The MQTT-SN id array's entries: the same route values.
                let id_entries: StdHashMap<u32, Route> = plan
                    .routes
                    .iter()
                    .zip(&values)
                    .filter_map(|(r, v)| r.mqttsn_index.map(|i| (i, *v)))
                    .collect();
                let name_entries = name_entries(plan, &values);
                let (routes, capacity, changed, ids, names_array) = if reuse {
                    let mut w = self.written[new as usize].take().expect("checked above");
                    let id_changed = w.ids.write(&id_entries, Some(&w.id_entries));
                    w.names.write(&name_entries, Some(&w.name_entries));
                    let now = entries.as_ref().expect("incremental");
                    let (mut ck, mut cv) = (Vec::new(), Vec::new());
                    for (k, v) in keys.iter().zip(&values) {
                        if w.entries.get(k) != Some(v) {
                            ck.push(*k);
                            cv.push(*v);
                        }
                    }
                    let gone: Vec<TopicKey> = w
                        .entries
                        .keys()
                        .filter(|k| !now.contains_key(k))
                        .copied()
                        .collect();
                    let m = routes_map(w.map.fd().as_fd())?;
                    m.update(&ck, &cv)
                        .map_err(|e| batch_err(names::ROUTES, e))?;
                    m.delete(&gone).map_err(|e| batch_err(names::ROUTES, e))?;
                    (
                        w.map,
                        w.capacity,
                        ck.len() + gone.len() + id_changed,
                        w.ids,
                        w.names,
                    )
                } else {
                    let data = joined(
                        fresh.expect("spawned when not reusing").join(),
                        "map creation",
                    )??;
                    let mut ids = joined(
                        fresh_ids.expect("spawned when not reusing").join(),
                        "map creation",
                    )??;
                    ids.write(&id_entries, None);
                    let mut names_array = joined(
                        fresh_names.expect("spawned when not reusing").join(),
                        "map creation",
                    )??;
                    names_array.write(&name_entries, None);
                    ph.mark("fresh routes map ready");
                    // Two writers, one per core: the kernel locks per bucket.
                    let half = keys.len() / 2;
                    let m = routes_map(data.fd().as_fd())?;
                    let (k1, k2) = keys.split_at(half);
                    let (v1, v2) = values.split_at(half);
                    std::thread::scope(|inner| -> Result<()> {
                        let other = inner.spawn(move || m.update(k2, v2));
                        m.update(k1, v1).map_err(|e| batch_err(names::ROUTES, e))?;
                        joined(other.join(), "route writer")?
                            .map_err(|e| batch_err(names::ROUTES, e))
                    })?;
                    (data, capacity, keys.len(), ids, names_array)
                };
                Ok((
                    routes,
                    capacity,
                    changed,
                    entries,
                    ids,
                    id_entries,
                    names_array,
                    name_entries,
                ))
            })?;
        ph.mark("routes written");
        // The shard table is small; it is rebuilt unless the idle slot
        // already holds exactly these shards.
        let shards_held =
            reuse && self.written_shards[new as usize].as_deref() == Some(shard_values.as_slice());
        let shards = if shards_held {
            None
        } else {
            let mut shards: Array<MapData, Shard> =
                Array::create(MAX_SHARDS, 0).map_err(map_err(names::SHARDS))?;
            for (i, v) in shard_values.iter().enumerate() {
                shards.set(i as u32, v, 0).map_err(map_err(names::SHARDS))?;
            }
            Some(shards)
        };
        ph.mark("shard table built");
        // Devices first, so that once the generation is visible its devices
        // are counted under their groups.
        self.set_devices(plan)?;
        ph.mark("devices set");
        let filled = started.elapsed();

        // Each update of an outer map waits an RCU grace period (several
        // ms), so only what changed is written: an updated-in-place routes
        // map is already in its slot.
        // The outer maps are updated from parallel threads: each update
        // waits for a grace period, and waits that overlap share one.
        // Slot writes go through the raw descriptors (an outer map's value
        // is the inner map's descriptor), one thread each.
        let shards_outer = &mut self.shards;
        let (routes_outer, routes_fd) = (
            outer_map(self.raw_routes.fd().as_fd(), names::ROUTES)?,
            routes.fd().as_fd().as_raw_fd() as u32,
        );
        let (ids_outer, ids_fd) = (
            outer_map(self.raw_ids.fd().as_fd(), names::IDS)?,
            ids.map.fd().as_fd().as_raw_fd() as u32,
        );
        let (names_outer, names_fd) = (
            outer_map(self.raw_names.fd().as_fd(), names::NAMES)?,
            names_array.map.fd().as_fd().as_raw_fd() as u32,
        );
        std::thread::scope(|scope| -> Result<()> {
            let routes_set =
                (!reuse).then(|| scope.spawn(move || routes_outer.update_one(&new, &routes_fd)));
            let ids_set =
                (!reuse).then(|| scope.spawn(move || ids_outer.update_one(&new, &ids_fd)));
            let names_set =
                (!reuse).then(|| scope.spawn(move || names_outer.update_one(&new, &names_fd)));
            if let Some(shards) = &shards {
                shards_outer
                    .set(new, shards, 0)
                    .map_err(map_err(names::SHARDS))?;
            }
            for (h, name) in [
                (routes_set, names::ROUTES),
                (ids_set, names::IDS),
                (names_set, names::NAMES),
            ] {
                if let Some(h) = h {
                    joined(h.join(), "map update")?.map_err(|e| batch_err(name, e))?;
                }
            }
            Ok(())
        })?;
        self.active.set(0, new, 0).map_err(map_err(names::ACTIVE))?;
        let swapped = started.elapsed();
        ph.mark("slots set and flipped");
        let mut slot_generation = installed.slot_generation;
        slot_generation[new as usize] = plan.generation;
        // One more outer-map update, whose RCU grace period the kernel waits
        // out before the call returns (every map-of-maps update does):
        // - full install: point the old routes slot at the new map too (the
        //   old id array and shard table, tens of MiB at most, stay in the
        //   old slot until the next install replaces them). A packet
        //   that read the parity before the flip then finds either the old
        //   map (if it got there first) or the new one: one generation either
        //   way. When the update returns no program uses the old map, which
        //   is freed.
        // - incremental: re-point the new slot at its own map, only for the
        //   wait: afterwards no program runs with the old slot, which the
        //   next install updates in place.
        // The plan is in force already (the flip above); the wait (8-16 ms)
        // runs on a thread, and the next install (or dropping this handle)
        // joins it before touching the slots.
        let slot = if self.incremental {
            new
        } else {
            slot_generation[old as usize] = plan.generation;
            old
        };
        let outer = self.raw_routes.fd().as_fd().try_clone_to_owned()?;
        let inner = routes.fd().as_fd().try_clone_to_owned()?;
        self.settling = Some(std::thread::spawn(move || {
            batch::TypedMap::<u32, u32>::new(outer.as_fd())?
                .update_one(&slot, &(inner.as_raw_fd() as u32))
        }));
        ph.mark("old slot settling (background)");
        if self.incremental {
            self.written_shards[new as usize] = Some(shard_values);
        }
        self.meta
            .set(
                0,
                Meta {
                    generation: plan.generation,
                    routes: plan.routes.len() as u32,
                    shards: plan.shards.len() as u32,
                    installed_unix: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs(),
                    slot_generation,
                    slot_high_water: self
                        .pending_slots
                        .as_ref()
                        .and_then(|t| t.values().max())
                        .map_or(installed.slot_high_water, |m| {
                            installed.slot_high_water.max(*m as u64 + 1)
                        }),
                },
                0,
            )
            .map_err(map_err(names::META))?;
        if let Some(table) = self.pending_slots.take() {
            *self.slot_cache.borrow_mut() = Some((self.meta()?, table));
        }
        if let Some(entries) = entries {
            self.written[new as usize] = Some(Written {
                generation: plan.generation,
                capacity,
                entries,
                map: routes,
                ids,
                id_entries,
                names: names_array,
                name_entries,
            });
        }
        Ok(InstallReport {
            generation: plan.generation,
            routes: plan.routes.len(),
            changed,
            shards: plan.shards.len(),
            fill: filled,
            swap: swapped - filled,
            total: started.elapsed(),
        })
    }

    /// Waits for the previous install's last outer-map update (see
    /// [`Dataplane::install`]).
    pub fn settle(&mut self) -> Result<()> {
        match self.settling.take() {
            Some(h) => joined(h.join(), "map update")?.map_err(|e| batch_err(names::ROUTES, e)),
            None => Ok(()),
        }
    }

    /// Makes `SC_DEVICES` hold exactly the plan's devices (address → group),
    /// and `SC_DEVICE_INDEX` as many of them as have an entry to themselves.
    /// Not generational: a device briefly counted under its old group (or
    /// as unknown, while its direct entry changes hands) while a plan lands
    /// is harmless, and devices change rarely.
    pub(crate) fn set_devices(&mut self, plan: &CompiledPlan) -> Result<()> {
        let want: StdHashMap<DeviceAddr, u32> = plan
            .devices
            .iter()
            .map(|d| (device_addr(d.address), d.group))
            .collect();
        let devices = batch::TypedMap::<DeviceAddr, u32>::new(self.raw_devices.fd().as_fd())
            .map_err(|e| batch_err(names::DEVICES, e))?;
        let held: Vec<(DeviceAddr, u32)> =
            devices.lookup().map_err(|e| batch_err(names::DEVICES, e))?;
        // Only what changed is written: a device keeps its entry (and its
        // group) while its group is unchanged.
        let gone: Vec<DeviceAddr> = held
            .iter()
            .filter(|(k, _)| !want.contains_key(k))
            .map(|(k, _)| *k)
            .collect();
        let held: StdHashMap<DeviceAddr, u32> = held.into_iter().collect();
        let (keys, values): (Vec<DeviceAddr>, Vec<u32>) = want
            .iter()
            .filter(|(k, v)| held.get(k) != Some(v))
            .map(|(k, v)| (*k, *v))
            .unzip();
        devices
            .update(&keys, &values)
            .map_err(|e| batch_err(names::DEVICES, e))?;
        devices
            .delete(&gone)
            .map_err(|e| batch_err(names::DEVICES, e))?;
        self.set_device_index(plan, &want, &gone);
        Ok(())
    }

    /// Brings `SC_DEVICE_INDEX` (the direct-mapped table the fast path
    /// tries before `SC_DEVICES`) in line with the plan's devices. An entry
    /// another wanted device holds stays with it (that device keeps its
    /// fast path); of two new devices for one entry the first in plan order
    /// takes it, and the other is found in `SC_DEVICES`.
    fn set_device_index(
        &mut self,
        plan: &CompiledPlan,
        want: &StdHashMap<DeviceAddr, u32>,
        gone: &[DeviceAddr],
    ) {
        let table = &mut self.device_index;
        for g in gone {
            let i = device_index(&g.addr) as usize;
            if table.get(i).addr == *g {
                table.set(i, DeviceEntry::default());
            }
        }
        for d in &plan.devices {
            let addr = device_addr(d.address);
            let i = device_index(&addr.addr) as usize;
            let held = table.get(i);
            let entry = DeviceEntry {
                addr,
                group: d.group,
                _pad: 0,
            };
            if held.addr == addr {
                if held.group != d.group {
                    // A reader sees the old group or the new one.
                    table.set(i, entry);
                }
            } else if held.addr == DeviceAddr::default() || !want.contains_key(&held.addr) {
                // Free, or held by a device no longer in any plan. The
                // group goes in under a cleared address first: a reader
                // that catches the second write half done matches no
                // device, and one that matches sees this device's group.
                table.set(
                    i,
                    DeviceEntry {
                        addr: DeviceAddr::default(),
                        ..entry
                    },
                );
                std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
                table.set(i, entry);
            }
        }
    }
}

//! Plan installs: a generation's inner maps filled off to the side, then
//! the outer-slot swap and the flip of `SC_ACTIVE` (see the crate docs).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, PerCpuValues};
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
    /// What the hash map holds (every route the name array does not).
    pub(crate) hashed: Hashed,
    pub(crate) map: MapData,
    /// The slot's MQTT-SN id array and what this process wrote there.
    pub(crate) ids: DirectArray<Route>,
    pub(crate) id_entries: StdHashMap<u32, Route>,
    /// The slot's name array (what it holds is read back from the shared
    /// mapping, see [`DirectArray::write_dense`]).
    pub(crate) names: DirectArray<NameEntry>,
}

/// Routes for the hash map, sorted by key (as the plan's are), keys and
/// values side by side as a batch update takes them.
#[derive(Default)]
pub(crate) struct Hashed {
    pub(crate) keys: Vec<TopicKey>,
    pub(crate) values: Vec<Route>,
}

/// What turns the hash map holding `old` into one holding `new`: the
/// routes to write (new, or with another value) and the keys to delete.
/// Both sorted by key, each key once: one merge, where a hash map of a
/// million routes took a quarter of a second to build and as long to
/// compare against (BENCHMARKS.md).
fn diff_hashed(old: &Hashed, new: &Hashed) -> (Hashed, Vec<TopicKey>) {
    let (mut write, mut gone) = (Hashed::default(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.keys.len() && j < new.keys.len() {
        match old.keys[i].cmp(&new.keys[j]) {
            std::cmp::Ordering::Less => {
                gone.push(old.keys[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                write.keys.push(new.keys[j]);
                write.values.push(new.values[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if old.values[i] != new.values[j] {
                    write.keys.push(new.keys[j]);
                    write.values.push(new.values[j]);
                }
                i += 1;
                j += 1;
            }
        }
    }
    gone.extend_from_slice(&old.keys[i..]);
    write.keys.extend_from_slice(&new.keys[j..]);
    write.values.extend_from_slice(&new.values[j..]);
    (write, gone)
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

    /// Makes the array hold `want` (one value per index, from 0), writing
    /// only the entries that differ from what it holds: read back from the
    /// shared mapping, or, for a `fresh` array, known to be zero (not read).
    /// Returns how many entries it wrote.
    pub(crate) fn write_dense(&mut self, want: &[T], fresh: bool) -> usize {
        let zero = T::default();
        let mut n = 0;
        for (i, v) in want.iter().enumerate() {
            let held = if fresh { zero } else { self.mem.get(i) };
            if *v != held {
                self.mem.set(i, *v);
                n += 1;
            }
        }
        n
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

/// Puts each route of `plan` (values in plan order) where the program
/// looks for it: a name key's route in the name array at its
/// [`name_index`], the smallest key where several share one (the plan's
/// routes are sorted by key); every other route, MQTT-SN id aliases
/// included (the program looks them up by id), in the hash map. A route in
/// the name array is not in the hash map (`route_by_name` in the program
/// goes to the hash map only when the entry at the key's index holds
/// another key): a 100k-route plan puts about half its routes in the
/// array, each a plain memory write where an insert into the hash map
/// costs about a microsecond of kernel time (BENCHMARKS.md).
fn split_routes(
    plan: &CompiledPlan,
    values: impl Iterator<Item = Route>,
) -> (Vec<NameEntry>, Hashed) {
    let mut names = vec![NameEntry::default(); NAME_INDEX_ENTRIES as usize];
    let mut hashed = Hashed {
        keys: Vec::with_capacity(plan.routes.len()),
        values: Vec::with_capacity(plan.routes.len()),
    };
    for (r, v) in plan.routes.iter().zip(values) {
        if plan.name_keys.get(r.topic) == Some(&r.key) {
            let e = &mut names[name_index(r.key) as usize];
            if e.key.hash == 0 {
                *e = NameEntry {
                    key: r.key,
                    route: v,
                };
                continue;
            }
        }
        hashed.keys.push(r.key);
        hashed.values.push(v);
    }
    (names, hashed)
}

/// The egress slots `route`'s shards leave by, one per shard.
fn egress_slots_of<'a>(
    route: &'a shardcast_plan::CompiledRoute,
    shards: &'a [Shard],
) -> impl Iterator<Item = u32> + 'a {
    route.shards.iter().map(|&s| shards[s as usize].egress_slot)
}

/// What an install did and how long it took.
#[derive(Clone, Debug)]
pub struct InstallReport {
    pub generation: u64,
    pub routes: usize,
    /// Route entries written or deleted, in the hash map and the arrays
    /// (every route unless incremental).
    pub changed: usize,
    pub shards: usize,
    /// Building the new generation's maps and putting them into the idle
    /// slot.
    pub fill: Duration,
    /// The flip.
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
        let mut used = vec![false; MAX_TOPICS as usize];
        for s in current.values() {
            if let Some(u) = used.get_mut(*s as usize) {
                *u = true;
            }
        }
        // Slots never assigned hold zero counters; a slot is only freed by
        // reclaiming it below, which zeroes it.
        let mut free = (0..MAX_TOPICS).filter(|s| !used[*s as usize]);
        // The slots of topics absent from the plan, lowest first: looked
        // for only once the free slots run out (a set of a million keys
        // costs tens of ms, and most installs never need it).
        let mut reclaimable: Option<std::vec::IntoIter<(TopicKey, u32)>> = None;
        let reclaimable_of = |current: &StdHashMap<TopicKey, u32>| {
            let wanted: HashSet<TopicKey> = plan.name_keys.iter().copied().collect();
            let mut r: Vec<(TopicKey, u32)> = current
                .iter()
                .filter(|(k, _)| !wanted.contains(k))
                .map(|(k, v)| (*k, *v))
                .collect();
            r.sort_by_key(|(_, s)| *s);
            r.into_iter()
        };
        current.reserve(plan.name_keys.len().saturating_sub(current.len()));
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
                            let (old, s) = reclaimable
                                .get_or_insert_with(|| reclaimable_of(&current))
                                .next()
                                .ok_or(DataplaneError::SlotsFull)?;
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
        // routing map changes: the routes' order (the name array and the
        // incremental diff rely on it), egress lookups and MACs.
        if let Some(w) = plan.routes.windows(2).find(|w| w[0].key >= w[1].key) {
            return Err(DataplaneError::BadPlan(format!(
                "routes are not sorted by key, each key once ({:#018x} before {:#018x}): compile the plan with Plan::compile",
                w[0].key.hash, w[1].key.hash
            )));
        }
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
        self.make_shapes(
            plan.routes
                .iter()
                .filter(|r| r.shards.len() >= 2)
                .map(|r| egress_slots_of(r, &shard_values).collect()),
        );
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
        let shards_held =
            reuse && self.written_shards[new as usize].as_deref() == Some(shard_values.as_slice());
        // Fresh maps go into the idle slot as soon as they exist, and are
        // filled there (no packet reads the idle slot: the last install
        // waited out a grace period after its flip). Each outer-map update
        // waits out a grace period of its own (8-19 ms here), which then
        // overlaps the filling instead of following it. Until the flip, the
        // slot's generation is unknown: neither this process nor another
        // may take what it holds for a plan it wrote (see `reuse`), should
        // the install fail half-way.
        if !reuse || !shards_held {
            let mut unknown = installed;
            unknown.slot_generation[new as usize] = 0;
            self.meta.set(0, unknown, 0).map_err(map_err(names::META))?;
        }
        if !reuse {
            self.written[new as usize] = None;
        }
        if !shards_held {
            self.written_shards[new as usize] = None;
        }
        // The shard table is small; it is rebuilt unless the idle slot
        // already holds exactly these shards.
        let shards = if shards_held {
            None
        } else {
            let map = create_inner::<u32, Shard>(
                aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY,
                MAX_SHARDS,
                0,
                "sc_shards",
                names::SHARDS,
            )?;
            let ids: Vec<u32> = (0..shard_values.len() as u32).collect();
            batch::TypedMap::<u32, Shard>::new(map.fd().as_fd())
                .and_then(|m| m.update(&ids, &shard_values))
                .map_err(|e| batch_err(names::SHARDS, e))?;
            Some(map)
        };
        // The outer maps, for the threads that put fresh maps into them.
        let outer_fds = [
            self.raw_routes.fd().as_fd().try_clone_to_owned()?,
            self.raw_ids.fd().as_fd().try_clone_to_owned()?,
            self.raw_names.fd().as_fd().try_clone_to_owned()?,
            self.raw_shards.fd().as_fd().try_clone_to_owned()?,
        ];
        let (routes, capacity, changed, hashed, ids, id_entries, names_array) =
            std::thread::scope(|scope| -> Result<_> {
                // Puts `inner` into the idle slot of outer map `which` on a
                // thread (the scope joins it before the flip, whatever
                // happens).
                let place = |which: usize, inner: &MapData, name: &'static str| {
                    let outer = outer_fds[which].as_fd();
                    let inner = inner.fd().as_fd().as_raw_fd() as u32;
                    scope.spawn(move || {
                        outer_map(outer, name)?
                            .update_one(&new, &inner)
                            .map_err(|e| batch_err(name, e))
                    })
                };
                let mut placed = Vec::new();
                if let Some(map) = &shards {
                    placed.push(place(3, map, names::SHARDS));
                }
                // Creating a route map allocates and clears its bucket array
                // (tens of ms at this capacity): done on the other core while
                // this one assigns counter slots.
                let capacity = routes_capacity(plan.routes.len());
                let fresh = (!reuse).then(|| scope.spawn(move || create_routes_map(capacity)));
                let fresh_ids = (!reuse).then(|| scope.spawn(DirectArray::ids));
                let fresh_names = (!reuse).then(|| scope.spawn(DirectArray::names));
                let slots = self.assign_slots(plan)?;
                ph.mark("counter slots assigned");
                let mut egress_slots = Vec::with_capacity(router_common::maps::MAX_ROUTE_SHARDS);
                // Each route's value, put straight where the program looks
                // for it (no vector of a million values in between).
                let mut id_entries: StdHashMap<u32, Route> = StdHashMap::default();
                let values = plan.routes.iter().map(|r| {
                    let mut shards = [0u16; router_common::maps::MAX_ROUTE_SHARDS];
                    shards[..r.shards.len()].copy_from_slice(&r.shards);
                    // A single-shard route has no fan-out to choose.
                    let fanout = if r.shards.len() < 2 {
                        0
                    } else {
                        egress_slots.clear();
                        egress_slots.extend(egress_slots_of(r, &shard_values));
                        self.route_fanout(&egress_slots)
                    };
                    let v = Route {
                        stats_slot: slots[r.topic],
                        shard_count: r.shards.len() as u16,
                        fanout,
                        shards,
                        first: shard_values[r.shards[0] as usize],
                    };
                    // The MQTT-SN id array's entries: the same route values.
                    if let Some(i) = r.mqttsn_index {
                        id_entries.insert(i, v);
                    }
                    v
                });
                let (name_entries, hashed) = split_routes(plan, values);
                ph.mark("route values built");
                let (routes, capacity, changed, ids, names_array) = if reuse {
                    let mut w = self.written[new as usize].take().expect("checked above");
                    let id_changed = w.ids.write(&id_entries, Some(&w.id_entries));
                    let name_changed = w.names.write_dense(&name_entries, false);
                    let (write, gone) = diff_hashed(&w.hashed, &hashed);
                    // Deletions first: the map never holds more than the
                    // larger of the two generations.
                    let m = routes_map(w.map.fd().as_fd())?;
                    m.delete(&gone).map_err(|e| batch_err(names::ROUTES, e))?;
                    m.update(&write.keys, &write.values)
                        .map_err(|e| batch_err(names::ROUTES, e))?;
                    (
                        w.map,
                        w.capacity,
                        write.keys.len() + gone.len() + id_changed + name_changed,
                        w.ids,
                        w.names,
                    )
                } else {
                    let data = joined(
                        fresh.expect("spawned when not reusing").join(),
                        "map creation",
                    )??;
                    placed.push(place(0, &data, names::ROUTES));
                    let mut ids = joined(
                        fresh_ids.expect("spawned when not reusing").join(),
                        "map creation",
                    )??;
                    placed.push(place(1, &ids.map, names::IDS));
                    ids.write(&id_entries, None);
                    let mut names_array = joined(
                        fresh_names.expect("spawned when not reusing").join(),
                        "map creation",
                    )??;
                    placed.push(place(2, &names_array.map, names::NAMES));
                    names_array.write_dense(&name_entries, true);
                    ph.mark("fresh maps ready and placed");
                    // Two writers, one per core: the kernel locks per bucket.
                    let half = hashed.keys.len() / 2;
                    let m = routes_map(data.fd().as_fd())?;
                    let (k1, k2) = hashed.keys.split_at(half);
                    let (v1, v2) = hashed.values.split_at(half);
                    std::thread::scope(|inner| -> Result<()> {
                        let other = inner.spawn(move || m.update(k2, v2));
                        m.update(k1, v1).map_err(|e| batch_err(names::ROUTES, e))?;
                        joined(other.join(), "route writer")?
                            .map_err(|e| batch_err(names::ROUTES, e))
                    })?;
                    (data, capacity, plan.routes.len(), ids, names_array)
                };
                ph.mark("routes written");
                for h in placed {
                    joined(h.join(), "map update")??;
                }
                ph.mark("fresh maps in the idle slot");
                Ok((
                    routes,
                    capacity,
                    changed,
                    hashed,
                    ids,
                    id_entries,
                    names_array,
                ))
            })?;
        // Devices first, so that once the generation is visible its devices
        // are counted under their groups.
        self.set_devices(plan)?;
        ph.mark("devices set");
        let filled = started.elapsed();
        self.active.set(0, new, 0).map_err(map_err(names::ACTIVE))?;
        let swapped = started.elapsed();
        ph.mark("flipped");
        let mut slot_generation = installed.slot_generation;
        slot_generation[new as usize] = plan.generation;
        // One more outer-map update, whose RCU grace period the kernel waits
        // out before the call returns (every map-of-maps update does): the
        // new slot re-pointed at its own routes map, only for the wait.
        // Afterwards no program runs with the old slot: the next install
        // may fill it (in place, incremental) or put fresh maps into it.
        // - full install: then the old routes slot is pointed at the new
        //   map too, which frees the old map (the old id and name arrays and
        //   shard table, tens of MiB at most, stay in the old slot until the
        //   next install replaces them). Only after the wait: a packet that
        //   read the old parity before the flip looks a name up in the old
        //   slot's name array and then, for a name the array does not hold,
        //   in its routes map, and a generation's routes map lacks the
        //   routes its name array holds; the old array with the new map
        //   could miss a route both generations have.
        // The plan is in force already (the flip above); the waits (8-16 ms
        // each) run on a thread, and the next install (or dropping this
        // handle) joins it before touching the slots.
        let free_old = (!self.incremental).then_some(old);
        if free_old.is_some() {
            slot_generation[old as usize] = plan.generation;
        }
        let outer = self.raw_routes.fd().as_fd().try_clone_to_owned()?;
        let inner = routes.fd().as_fd().try_clone_to_owned()?;
        self.settling = Some(std::thread::spawn(move || {
            let outer = batch::TypedMap::<u32, u32>::new(outer.as_fd())?;
            let inner = inner.as_raw_fd() as u32;
            outer.update_one(&new, &inner)?;
            match free_old {
                Some(old) => outer.update_one(&old, &inner),
                None => Ok(()),
            }
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
        // The daemon keeps what it wrote, to diff the next plan against.
        if self.incremental {
            self.written[new as usize] = Some(Written {
                generation: plan.generation,
                capacity,
                hashed,
                map: routes,
                ids,
                id_entries,
                names: names_array,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn route(slot: u32) -> Route {
        Route {
            stats_slot: slot,
            shard_count: 1,
            ..Route::default()
        }
    }

    fn hashed(m: &BTreeMap<u64, u32>) -> Hashed {
        Hashed {
            keys: m.keys().map(|&hash| TopicKey { hash }).collect(),
            values: m.values().map(|&s| route(s)).collect(),
        }
    }

    proptest! {
        /// Applying the diff to the old routes gives the new ones, and it
        /// writes or deletes nothing it need not.
        #[test]
        fn the_diff_turns_old_into_new_and_no_more(
            old in prop::collection::btree_map(0u64..64, 0u32..3, 0..40),
            new in prop::collection::btree_map(0u64..64, 0u32..3, 0..40),
        ) {
            let (write, gone) = diff_hashed(&hashed(&old), &hashed(&new));
            let mut held = old.clone();
            for k in &gone {
                prop_assert!(held.remove(&k.hash).is_some(), "deleted {k:?}, not held");
            }
            for (k, v) in write.keys.iter().zip(&write.values) {
                prop_assert_ne!(old.get(&k.hash).map(|&s| route(s)), Some(*v), "rewrote {:?} unchanged", k);
                held.insert(k.hash, v.stats_slot);
            }
            prop_assert_eq!(&held, &new);
            prop_assert!(gone.iter().all(|k| !new.contains_key(&k.hash)));
        }
    }

    #[test]
    fn names_sharing_an_index_put_the_smallest_in_the_array_the_rest_in_the_hash_map() {
        use shardcast_plan::{Plan, ShardSpec, TopicSpec};
        // Names in pairs that share an index, and a predefined MQTT-SN id
        // (an alias key: never in the name array).
        let mut names: Vec<String> = Vec::new();
        let first = name_index(router_common::topic::topic_key(b"a/0"));
        for i in 0u32.. {
            let n = format!("a/{i}");
            if i == 0 || name_index(router_common::topic::topic_key(n.as_bytes())) == first {
                names.push(n);
            }
            if names.len() == 3 {
                break;
            }
        }
        names.push("lonely".into());
        let plan = Plan {
            generation: 1,
            shards: vec![ShardSpec {
                id: 1,
                group_v4: Some("239.1.1.1".into()),
                group_v6: None,
                egress: "lo".into(),
                port: None,
                capacity: None,
                class: None,
            }],
            devices: vec![],
            topics: names
                .iter()
                .enumerate()
                .map(|(i, name)| TopicSpec {
                    name: name.clone(),
                    shards: vec![1],
                    mqttsn_predefined_id: (i == 0).then_some(7),
                    mqttsn_registered_ids: vec![],
                })
                .collect(),
            policy: Default::default(),
        }
        .compile()
        .unwrap();
        let values: Vec<Route> = (0..plan.routes.len() as u32).map(route).collect();
        let (array, hashed) = split_routes(&plan, values.into_iter());
        let in_array: Vec<TopicKey> = array
            .iter()
            .filter(|e| e.key.hash != 0)
            .map(|e| e.key)
            .collect();
        // Every route exactly once, in one place or the other.
        let mut all: Vec<TopicKey> = in_array.iter().chain(&hashed.keys).copied().collect();
        all.sort();
        let want: Vec<TopicKey> = plan.routes.iter().map(|r| r.key).collect();
        assert_eq!(all, want);
        // The three sharing an index: the smallest in the array.
        let mut shared: Vec<TopicKey> = names[..3]
            .iter()
            .map(|n| router_common::topic::topic_key(n.as_bytes()))
            .collect();
        shared.sort();
        assert!(in_array.contains(&shared[0]));
        assert!(hashed.keys.contains(&shared[1]) && hashed.keys.contains(&shared[2]));
        assert!(in_array.contains(&router_common::topic::topic_key(b"lonely")));
        // The alias and only it among the rest: in the hash map, sorted.
        assert_eq!(hashed.keys.len(), 3, "{:?}", hashed.keys);
        assert!(hashed.keys.windows(2).all(|w| w[0] < w[1]));
        // Each route keeps its own value wherever it went.
        for (k, v) in hashed.keys.iter().zip(&hashed.values) {
            let i = plan.routes.iter().position(|r| r.key == *k).unwrap();
            assert_eq!(v.stats_slot, i as u32);
        }
    }
}

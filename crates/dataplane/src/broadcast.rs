//! Multi-shard publishes by XDP broadcast: the copy program and the device
//! maps a route's copies are broadcast into.
//!
//! A multi-shard route sends its k copies by redirecting the publish into
//! a device map with `BPF_F_BROADCAST`, one entry per shard, each the
//! shard's egress with the copy program (`shardcast_copy`), which
//! rewrites each copy for its shard (see `router-ebpf/src/broadcast.rs`).
//! No skb is built. Routes whose shards share an egress use the maps made
//! with the egress, `SC_FANOUT[fanout_slot(egress, k)]`; routes over
//! several egresses the map of their *shape* (the egresses, one per copy,
//! sorted), made the first time a plan needs it, up to `FANOUT_SHAPES`
//! shapes. Where the kernel refused the copy program (device-map egress
//! programs need Linux 5.8) or the router runs as generic XDP (which
//! keeps no XDP metadata for an egress program: the copies could not be
//! told apart), routes fan out by the TC program instead, as they do when
//! the operator asks for [`FanoutPath::Tc`] or the shapes are all taken.
//!
//! The kernel runs one egress program for a device's whole per-CPU bulk
//! queue, the first frame's: so an egress with broadcast maps gets the
//! copy program on its `SC_EGRESS` entry as well (it passes other frames
//! untouched), or a copy queued behind a single-shard publish would leave
//! unrewritten.

use std::os::fd::{AsFd, AsRawFd};

use aya::{
    Ebpf,
    maps::{DevMap, Map, MapData},
    programs::{ProgramFd, Xdp},
};
use aya_obj::programs::XdpAttachType;
use router_common::maps::{
    FANOUT_SINGLE_EGRESS, FANOUT_SLOTS, MAX_EGRESS, MAX_ROUTE_SHARDS, fanout_slot, names,
};
use rustc_hash::FxHashMap as StdHashMap;

use crate::{Dataplane, error::*, install::create_inner, pins::*};

/// How multi-shard publishes fan out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FanoutPath {
    /// By XDP broadcast where the kernel takes the copy program (and the
    /// mode is driver); by the TC program otherwise.
    #[default]
    Auto,
    /// By the TC program always (the copy program is not loaded).
    Tc,
}

impl FanoutPath {
    /// The names [`FanoutPath::from_str`](std::str::FromStr) takes.
    pub const NAMES: &'static [&'static str] = &["auto", "tc"];
}

impl std::str::FromStr for FanoutPath {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(FanoutPath::Auto),
            "tc" => Ok(FanoutPath::Tc),
            other => Err(format!(
                "{other:?} is not a fan-out path (expected {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Loads (and pins, when asked) the copy program. A kernel that refuses it
/// still routes: multi-shard publishes then fan out by TC.
pub(crate) fn load_copy(
    ebpf: &mut Ebpf,
    pin: &mut Option<(&PinPaths, &mut Vec<std::path::PathBuf>)>,
) -> Result<Option<ProgramFd>> {
    let name = names::PROG_COPY;
    let prog: &mut Xdp = program_of(ebpf, name)?;
    if let Err(e) = prog.load() {
        tracing::warn!(
            "the kernel refused the copy program ({}): multi-shard publishes fan out by TC",
            verifier_message(&e)
        );
        return Ok(None);
    }
    if let Some((pins, created)) = pin {
        let path = pins.prog(name);
        record_pin(created, path.clone(), prog.pin(&path))?;
    }
    let fd = prog.fd().map_err(prog_err(name))?.try_clone()?;
    Ok(Some(fd))
}

/// The pinned copy program, if the attach loaded it.
pub(crate) fn open_copy(pins: &PinPaths) -> Result<Option<ProgramFd>> {
    let name = names::PROG_COPY;
    let path = pins.prog(name);
    if !path.exists() {
        return Ok(None);
    }
    let prog = Xdp::from_pin(&path, XdpAttachType::DevMap).map_err(prog_err(name))?;
    Ok(Some(prog.fd().map_err(prog_err(name))?.try_clone()?))
}

impl Dataplane {
    /// Chooses how multi-shard publishes fan out from the next install on.
    /// `Auto` needs the copy program loaded: where the attach (or the
    /// kernel) left it out, routes keep the TC way.
    pub fn set_fanout_path(&mut self, path: FanoutPath) {
        self.fanout_path = path;
    }

    /// Whether multi-shard routes may go by broadcast at the next install:
    /// the path is `Auto` and the kernel took the copy program (false on a
    /// kernel that refuses it: then every route fans out by TC).
    pub fn broadcasts(&self) -> bool {
        self.fanout_path == FanoutPath::Auto && self.copy_prog.is_some()
    }

    /// Whether multi-shard routes over `egress_slot` alone go by broadcast
    /// at the next install.
    pub fn broadcasts_on(&self, egress_slot: u32) -> bool {
        self.broadcasts()
            && egress_slot < MAX_EGRESS
            && match self.broadcast_egress {
                Some(ready) => ready >> egress_slot & 1 != 0,
                None => self.egress_ready(egress_slot),
            }
    }

    /// The `Route::fanout` of a route whose shards leave by
    /// `egress_slots`: `1 +` its broadcast map's slot, or 0 for the TC
    /// fan-out. A route over several egresses gets the device map of its
    /// shape, which `make_shapes` made the first time a plan needed it.
    pub(crate) fn route_fanout(&mut self, egress_slots: &[u32]) -> u16 {
        if !self.broadcasts() {
            return 0;
        }
        match fanout_of(egress_slots, self.broadcast_state()) {
            Fanout::Tc => 0,
            Fanout::Single(slot) => (slot + 1) as u16,
            Fanout::Shape(shape) => match self.shape_slot(shape) {
                Some(slot) => (slot + 1) as u16,
                None => 0,
            },
        }
    }

    /// The `SC_FANOUT` slot of the device map for `shape` (egress slots,
    /// sorted, one per copy). The install made the plan's new shapes
    /// before (`make_shapes`): `None` (the TC way) when the shape slots
    /// were all taken or the kernel refused the map; not tried again for
    /// each of the shape's routes.
    fn shape_slot(&self, shape: Vec<u32>) -> Option<u32> {
        self.shapes.get(&shape).copied()
    }

    /// Makes the device maps of the shapes among `routes` (each the egress
    /// slots of one route's shards) that have none yet, all together: each
    /// update of `SC_FANOUT` waits out an RCU grace period, so a plan with
    /// a hundred new shapes took a hundred waits one after the other at
    /// its first install; together they overlap (`set_fanout_slots`).
    /// Nothing is read from `routes` where routes do not broadcast.
    pub(crate) fn make_shapes(&mut self, routes: impl IntoIterator<Item = Vec<u32>>) {
        if !self.broadcasts() {
            return;
        }
        let ready = self.broadcast_state();
        let mut new: Vec<Vec<u32>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for slots in routes {
            if let Fanout::Shape(shape) = fanout_of(&slots, ready)
                && !self.shapes.contains_key(&shape)
                && seen.insert(shape.clone())
            {
                new.push(shape);
            }
        }
        if !new.is_empty() {
            self.add_shapes(new);
        }
    }

    /// Makes and adds the maps of `shapes` (none of them made yet), in the
    /// lowest free slots; a shape without a free slot, or whose map the
    /// kernel refuses, is left out (its routes fan out by TC), with a
    /// warning.
    fn add_shapes(&mut self, shapes: Vec<Vec<u32>>) {
        // A slot a route of the active generation may still name is not
        // taken again: not a forgotten shape's either.
        let taken: std::collections::HashSet<u32> = self
            .shapes
            .values()
            .chain(&self.retired_shapes)
            .copied()
            .collect();
        let mut free = (FANOUT_SINGLE_EGRESS..FANOUT_SLOTS).filter(|s| !taken.contains(s));
        let mut made = Vec::with_capacity(shapes.len());
        for shape in shapes {
            let Some(slot) = free.next() else {
                tracing::warn!(
                    "no broadcast map for egress slots {shape:?}: all {} shape slots are taken; by TC",
                    FANOUT_SLOTS - FANOUT_SINGLE_EGRESS
                );
                continue;
            };
            let ifindexes: Option<Vec<u32>> = shape
                .iter()
                .map(|&e| self.egress.get(e, 0).ok().map(|v| v.if_index))
                .collect();
            let map = ifindexes
                .ok_or_else(|| DataplaneError::Pin {
                    path: names::FANOUT.into(),
                    reason: format!("an egress of {shape:?} is gone"),
                })
                .and_then(|ifs| self.device_map(&ifs));
            match map {
                Ok(map) => made.push((shape, slot, map)),
                Err(e) => {
                    tracing::warn!("no broadcast map for egress slots {shape:?} ({e}): by TC")
                }
            }
        }
        let maps: Vec<(u32, &MapData)> = made.iter().map(|(_, slot, map)| (*slot, map)).collect();
        let results = match self.set_fanout_slots(&maps) {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(
                    "no broadcast maps for {} new shapes ({e}): by TC",
                    made.len()
                );
                return;
            }
        };
        for ((shape, slot, _), result) in made.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    self.shapes.insert(shape, slot);
                }
                Err(e) => {
                    tracing::warn!("no broadcast map for egress slots {shape:?} ({e}): by TC")
                }
            }
        }
    }

    /// A fresh device map whose entries are `ifindexes`, each with the copy
    /// program.
    fn device_map(&self, ifindexes: &[u32]) -> Result<MapData> {
        let prog = self.copy_prog.as_ref().ok_or(DataplaneError::Pin {
            path: names::PROG_COPY.into(),
            reason: "not loaded".into(),
        })?;
        let data = create_inner::<u32, [u32; 2]>(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_DEVMAP,
            MAX_ROUTE_SHARDS as u32,
            0,
            "sc_fanout",
            names::FANOUT,
        )?;
        let mut any = Map::DevMap(data);
        let mut map: DevMap<&mut MapData> =
            DevMap::try_from(&mut any).map_err(map_err(names::FANOUT))?;
        for (i, &ifindex) in ifindexes.iter().enumerate() {
            map.set(i as u32, ifindex, Some(prog), 0)
                .map_err(|e| DataplaneError::Pin {
                    path: names::FANOUT.into(),
                    reason: format!("copy {i} to ifindex {ifindex}: {e}"),
                })?;
        }
        match any {
            Map::DevMap(data) => Ok(data),
            _ => Err(DataplaneError::Pin {
                path: names::FANOUT.into(),
                reason: "not a device map".into(),
            }),
        }
    }

    /// Forgets what this process knows of broadcasts through `egress_slot`
    /// before a new interface takes it: the slot is not ready until its
    /// maps are made again, and the shapes that use it (their maps name the
    /// old interface) are retired, never given to another shape by this
    /// process (a route of the active generation may still name them).
    pub(crate) fn retire_egress(&mut self, egress_slot: u32) {
        let ready = self.broadcast_state();
        self.broadcast_egress = Some(ready & !(1u64 << egress_slot));
        let retired = &mut self.retired_shapes;
        self.shapes.retain(|shape, slot| {
            let keep = !shape.contains(&egress_slot);
            if !keep {
                retired.push(*slot);
            }
            keep
        });
    }

    /// Gives a new egress slot its broadcast maps: for each copy count
    /// 2..=16 a device map of that many entries, each the egress with the
    /// copy program. The slot's `SC_EGRESS` entry must carry the copy
    /// program already. A refusal leaves the egress to the TC fan-out.
    pub(crate) fn add_broadcast(&mut self, slot: u32, ifindex: u32) {
        if self.copy_prog.is_none() {
            return;
        }
        let made = (|| -> Result<Vec<(u32, MapData)>> {
            let mut maps = Vec::new();
            for k in 2..=MAX_ROUTE_SHARDS {
                let map = self.device_map(&vec![ifindex; k])?;
                maps.push((fanout_slot(slot, k as u32), map));
            }
            Ok(maps)
        })();
        let maps = match made {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    "no broadcast maps for egress slot {slot} ({e}): its multi-shard publishes fan out by TC"
                );
                return;
            }
        };
        let maps: Vec<(u32, &MapData)> = maps.iter().map(|(s, m)| (*s, m)).collect();
        let all = self.set_fanout_slots(&maps).and_then(|results| {
            results
                .into_iter()
                .try_for_each(|r| r.map_err(DataplaneError::Io))
        });
        if let Err(e) = all {
            tracing::warn!(
                "no broadcast maps for egress slot {slot} ({e}): its multi-shard publishes fan out by TC"
            );
            return;
        }
        let ready = self.broadcast_state();
        self.broadcast_egress = Some(ready | 1u64 << slot);
    }

    /// Puts `maps` (outer slot, device map) into `SC_FANOUT`, returning
    /// each update's result in order. Each update of an outer map waits
    /// out an RCU grace period (8-16 ms here; the kernel has no batch
    /// update for an array of maps): one after the other, an egress's
    /// fifteen maps made the first install that named it 130 ms longer;
    /// from threads, the waits overlap. At most `SET_THREADS` threads,
    /// each taking every `SET_THREADS`-th map. An egress whose maps are
    /// not all in is not ready (see `egress_ready`); a shape whose map is
    /// not in has none: their multi-shard routes fan out by TC.
    fn set_fanout_slots(&self, maps: &[(u32, &MapData)]) -> Result<Vec<std::io::Result<()>>> {
        const SET_THREADS: usize = 64;
        let outer = crate::batch::TypedMap::<u32, u32>::new(self.raw_fanout.fd().as_fd())?;
        let threads = maps.len().min(SET_THREADS);
        let mut results: Vec<Option<std::io::Result<()>>> = maps.iter().map(|_| None).collect();
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let mine: Vec<(usize, u32, u32)> = maps
                        .iter()
                        .enumerate()
                        .skip(t)
                        .step_by(threads)
                        .map(|(i, (slot, map))| (i, *slot, map.fd().as_fd().as_raw_fd() as u32))
                        .collect();
                    scope.spawn(move || {
                        mine.into_iter()
                            .map(|(i, slot, inner)| (i, outer.update_one(&slot, &inner)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for w in workers {
                for (i, r) in crate::joined(w.join(), "map update")? {
                    results[i] = Some(r);
                }
            }
            Ok(())
        })?;
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(std::io::Error::other("not written"))))
            .collect())
    }

    /// Whether `slot`'s broadcast maps are in place: its `SC_EGRESS` entry
    /// carries the copy program and `SC_FANOUT` holds a map for each copy
    /// count (written together, and one may have failed: see
    /// `set_fanout_slots`).
    fn egress_ready(&self, slot: u32) -> bool {
        matches!(self.egress.get(slot, 0), Ok(v) if v.prog_id.is_some())
            && (2..=MAX_ROUTE_SHARDS as u32)
                .all(|k| self.fanout_maps.get(&fanout_slot(slot, k), 0).is_ok())
    }

    /// The egress slots with broadcast maps (bits), and the shape maps,
    /// read from the pinned maps the first time a process that adopted
    /// them needs them (an install), not at every open: a `stats` or
    /// `status` never does.
    pub(crate) fn broadcast_state(&mut self) -> u64 {
        if let Some(ready) = self.broadcast_egress {
            return ready;
        }
        let table = self.egress_table();
        let mut ready = 0u64;
        if self.copy_prog.is_some() {
            for &(slot, _) in &table {
                if self.egress_ready(slot) {
                    ready |= 1 << slot;
                }
            }
            // The shapes' maps: their entries' egresses, back to slots. A
            // map this process cannot read as a shape of today's egresses
            // (one of them replaced since) may still be named by a route of
            // the active generation: its slot is retired, not reused.
            let slot_of: StdHashMap<u32, u32> = table.iter().map(|&(s, i)| (i, s)).collect();
            for outer in FANOUT_SINGLE_EGRESS..FANOUT_SLOTS {
                let Ok(data) = self.fanout_maps.get(&outer, 0) else {
                    continue;
                };
                let ifindexes: Option<Vec<u32>> = DevMap::<MapData>::try_from(Map::DevMap(data))
                    .ok()
                    .map(|map| {
                        map.iter()
                            .map_while(|v| v.ok())
                            .map(|v| v.if_index)
                            .collect()
                    });
                match ifindexes.and_then(|ifs| shape_of(&ifs, &slot_of)) {
                    Some(shape) => {
                        self.shapes.entry(shape).or_insert(outer);
                    }
                    None => self.retired_shapes.push(outer),
                }
            }
        }
        self.broadcast_egress = Some(ready);
        ready
    }
}

/// The shape (egress slots, sorted) of a shape map whose entries are
/// `ifindexes`, given today's egresses (`slot_of`: ifindex → slot); `None`
/// if an entry is no egress of the table or the map has fewer than two.
fn shape_of(ifindexes: &[u32], slot_of: &StdHashMap<u32, u32>) -> Option<Vec<u32>> {
    let mut shape: Vec<u32> = ifindexes
        .iter()
        .map(|i| slot_of.get(i).copied())
        .collect::<Option<_>>()?;
    shape.sort_unstable();
    (shape.len() >= 2).then_some(shape)
}

/// How a route whose shards leave by `egress_slots` fans out.
#[derive(Debug, PartialEq, Eq)]
enum Fanout {
    /// By the TC program (one shard, more than 16, or an egress without
    /// broadcast maps).
    Tc,
    /// By the device map at this `SC_FANOUT` slot: every shard on one
    /// egress.
    Single(u32),
    /// By the device map of this shape: the egress slots, sorted, one per
    /// copy.
    Shape(Vec<u32>),
}

/// Classifies a route whose shards leave by `egress_slots`, given the
/// egress slots with broadcast maps (bits of `ready`).
fn fanout_of(egress_slots: &[u32], ready: u64) -> Fanout {
    let k = egress_slots.len();
    if !(2..=MAX_ROUTE_SHARDS).contains(&k)
        || egress_slots
            .iter()
            .any(|&e| e >= MAX_EGRESS || ready >> e & 1 == 0)
    {
        return Fanout::Tc;
    }
    let first = egress_slots[0];
    if egress_slots.iter().all(|&e| e == first) {
        return Fanout::Single(fanout_slot(first, k as u32));
    }
    let mut shape = egress_slots.to_vec();
    shape.sort_unstable();
    Fanout::Shape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_maps_read_back_only_over_todays_egresses() {
        let slot_of: StdHashMap<u32, u32> = [(10, 0), (11, 1), (12, 5)].into_iter().collect();
        assert_eq!(shape_of(&[12, 10, 12], &slot_of), Some(vec![0, 5, 5]));
        assert_eq!(shape_of(&[11, 10], &slot_of), Some(vec![0, 1]));
        // An interface no longer an egress, one entry, none.
        assert_eq!(shape_of(&[10, 99], &slot_of), None);
        assert_eq!(shape_of(&[10], &slot_of), None);
        assert_eq!(shape_of(&[], &slot_of), None);
    }

    #[test]
    fn routes_broadcast_over_ready_egresses_only() {
        let ready = 1 << 3 | 1 << 4 | 1 << 63;
        // Two to sixteen shards on one ready egress.
        assert_eq!(fanout_of(&[3, 3], ready), Fanout::Single(3 * 16 + 1));
        assert_eq!(fanout_of(&[63; 16], ready), Fanout::Single(63 * 16 + 15));
        // Several ready egresses: the shape, sorted.
        assert_eq!(fanout_of(&[4, 3, 4], ready), Fanout::Shape(vec![3, 4, 4]));
        assert_eq!(fanout_of(&[63, 3], ready), Fanout::Shape(vec![3, 63]));
        // One shard: the single-shard path, not a fan-out.
        assert_eq!(fanout_of(&[3], ready), Fanout::Tc);
        assert_eq!(fanout_of(&[], ready), Fanout::Tc);
        // An egress without maps, more than 16 shards.
        assert_eq!(fanout_of(&[5, 5], ready), Fanout::Tc);
        assert_eq!(fanout_of(&[3, 5], ready), Fanout::Tc);
        assert_eq!(fanout_of(&[3; 17], ready), Fanout::Tc);
        // Every slot of SC_FANOUT fits the route's u16.
        assert!(FANOUT_SLOTS < u16::MAX as u32);
    }
}

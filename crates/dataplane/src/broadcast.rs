//! Multi-shard publishes by XDP broadcast: the copy program and the device
//! maps a route's copies are broadcast into.
//!
//! A route whose shards all leave through one egress sends its k copies
//! by redirecting the publish into the device map at `SC_FANOUT[
//! fanout_slot(egress, k)]` with `BPF_F_BROADCAST`: its k entries are that
//! egress with the copy program (`shardcast_copy`), which rewrites each
//! copy for its shard (see `router-ebpf/src/broadcast.rs`). No skb is
//! built. Routes over several egresses, and every route where the kernel
//! refused the copy program (device-map egress programs need Linux 5.8)
//! or the router runs as generic XDP (which keeps no XDP metadata for an
//! egress program: the copies could not be told apart), fan out by the TC
//! program instead, as does everything when the operator asks for
//! [`FanoutPath::Tc`].
//!
//! The kernel runs one egress program for a device's whole per-CPU bulk
//! queue, the first frame's: so an egress with broadcast maps gets the
//! copy program on its `SC_EGRESS` entry as well (it passes other frames
//! untouched), or a copy queued behind a single-shard publish would leave
//! unrewritten.

use aya::{
    Ebpf,
    maps::{DevMap, Map, MapData},
    programs::{ProgramFd, Xdp},
};
use aya_obj::programs::XdpAttachType;
use router_common::maps::{MAX_EGRESS, MAX_ROUTE_SHARDS, fanout_slot, names};

use crate::{Dataplane, error::*, install::create_inner, pins::*};

/// How multi-shard publishes fan out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FanoutPath {
    /// By XDP broadcast where a route's shards share an egress and the
    /// kernel takes the copy program; by the TC program otherwise.
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
            && self.broadcast_egress >> egress_slot & 1 != 0
    }

    /// The `Route::fanout` of a route whose shards leave by
    /// `egress_slots`: `1 +` its broadcast map's slot, or 0 for the TC
    /// fan-out.
    pub(crate) fn route_fanout(&self, egress_slots: impl Iterator<Item = u32>) -> u16 {
        match (&self.copy_prog, self.fanout_path) {
            (Some(_), FanoutPath::Auto) => fanout_of(egress_slots, self.broadcast_egress),
            _ => 0,
        }
    }

    /// Gives a new egress slot its broadcast maps: for each copy count
    /// 2..=16 a device map of that many entries, each the egress with the
    /// copy program. The slot's `SC_EGRESS` entry must carry the copy
    /// program already. A refusal leaves the egress to the TC fan-out.
    pub(crate) fn add_broadcast(&mut self, slot: u32, ifindex: u32) {
        let Some(prog) = self.copy_prog.as_ref() else {
            return;
        };
        let made = (|| -> Result<Vec<(u32, MapData)>> {
            let mut maps = Vec::new();
            for k in 2..=MAX_ROUTE_SHARDS as u32 {
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
                for i in 0..k {
                    map.set(i, ifindex, Some(prog), 0)
                        .map_err(|e| DataplaneError::Pin {
                            path: names::FANOUT.into(),
                            reason: format!("copy {i} to ifindex {ifindex}: {e}"),
                        })?;
                }
                if let Map::DevMap(data) = any {
                    maps.push((fanout_slot(slot, k), data));
                }
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
        for (outer, inner) in &maps {
            if let Err(e) = self.fanout_maps.set(*outer, inner, 0) {
                tracing::warn!(
                    "no broadcast maps for egress slot {slot} ({e}): its multi-shard publishes fan out by TC"
                );
                return;
            }
        }
        self.broadcast_egress |= 1 << slot;
    }

    /// Which egress slots have their broadcast maps (read from the pinned
    /// maps when a process adopts them).
    pub(crate) fn scan_broadcast(&mut self) {
        if self.copy_prog.is_none() {
            return;
        }
        for slot in 0..MAX_EGRESS {
            let with_copy = matches!(self.egress.get(slot, 0), Ok(v) if v.prog_id.is_some());
            // Written in order of k and given up at the first refusal: the
            // last one there means all are.
            let all = || {
                self.fanout_maps
                    .get(&fanout_slot(slot, MAX_ROUTE_SHARDS as u32), 0)
                    .is_ok()
            };
            if with_copy && all() {
                self.broadcast_egress |= 1 << slot;
            }
        }
    }
}

/// The `Route::fanout` of a route whose shards leave by `egress_slots`,
/// given the egress slots with broadcast maps (bits of `ready`): by
/// broadcast when there are 2 to 16 shards and all leave by one ready
/// egress; else 0 (the TC fan-out).
fn fanout_of(egress_slots: impl Iterator<Item = u32>, ready: u64) -> u16 {
    let mut k = 0u32;
    let mut one = None;
    for e in egress_slots {
        k += 1;
        match one {
            None => one = Some(e),
            Some(first) if first != e => return 0,
            Some(_) => {}
        }
    }
    match one {
        Some(e)
            if (2..=MAX_ROUTE_SHARDS as u32).contains(&k)
                && e < MAX_EGRESS
                && ready >> e & 1 != 0 =>
        {
            (fanout_slot(e, k) + 1) as u16
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_routes_over_one_ready_egress_broadcast() {
        let ready = 1 << 3 | 1 << 63;
        // Two to sixteen shards on one ready egress.
        assert_eq!(fanout_of([3, 3].into_iter(), ready), 3 * 16 + 1 + 1);
        assert_eq!(
            fanout_of(std::iter::repeat_n(63, 16), ready),
            (63 * 16 + 15 + 1) as u16
        );
        // One shard: the single-shard path, not a fan-out.
        assert_eq!(fanout_of([3].into_iter(), ready), 0);
        assert_eq!(fanout_of(std::iter::empty(), ready), 0);
        // Two egresses, an egress without maps, more than 16 shards.
        assert_eq!(fanout_of([3, 3, 4].into_iter(), ready), 0);
        assert_eq!(fanout_of([3, 63].into_iter(), ready), 0);
        assert_eq!(fanout_of([5, 5].into_iter(), ready), 0);
        assert_eq!(fanout_of(std::iter::repeat_n(3, 17), ready), 0);
        // Every slot of SC_FANOUT fits the route's u16.
        assert!(fanout_slot(MAX_EGRESS - 1, MAX_ROUTE_SHARDS as u32) < u16::MAX as u32);
    }
}

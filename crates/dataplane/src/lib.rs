//! The data plane as the control plane sees it: the only crate that talks
//! to aya and the kernel's BPF syscalls, and the only userspace `unsafe`
//! (raw `bpf()` attributes, the mmap'ed slot table, interface ioctls).
//!
//! It loads the XDP object, pins programs, maps and links under
//! `<pin root>/v<LAYOUT_VERSION>/` (default `/sys/fs/bpf/shardcast/v9/`) so
//! forwarding outlives the process, adopts those pins later, installs plan
//! generations atomically, and reads counters.
//!
//! ## Generation swap
//! Each routing table lives in a two-slot `ArrayOfMaps`; `SC_ACTIVE` names
//! the slot packets use. [`Dataplane::install`]:
//! 1. prepares the idle slot's inner maps (that slot is idle: no packet
//!    reads it): *fresh* maps, put into the idle slot as soon as they
//!    exist and filled with the whole plan while those outer-map updates
//!    wait out their grace periods; or, in incremental mode (the daemon),
//!    the maps already in the idle slot with only the differences written;
//! 2. waits for those updates;
//! 3. flips `SC_ACTIVE` to that slot (one 4-byte write: a packet reads it
//!    once and routes wholly by that slot; a route carries its first
//!    shard's data, so the fast path makes a single lookup in it);
//! 4. waits an RCU grace period on a thread, which the next install (or
//!    [`Dataplane::settle`]) joins before it touches the slots: afterwards
//!    no program runs with the old slot (an update of a map-of-maps returns
//!    only after one, `synchronize_rcu` in the kernel). In full mode the
//!    old slot's routes map is then pointed at the new map as well, which
//!    frees the old one; in incremental mode the old slot is kept, to be
//!    brought up to date by the next install.
//!
//! A failure before step 3 leaves the installed generation untouched (the
//! idle slot's generation is then recorded as unknown, 0, in `SC_META`).

use std::os::fd::OwnedFd;

use aya::{
    Ebpf,
    maps::{Array, ArrayOfMaps, DevMap, HashMap, MapData, PerCpuArray, PerCpuHashMap},
};
use router_common::{
    maps::{Config, Counter, DeviceEntry, GroupCellLine, Meta, Route, Shard},
    topic::TopicKey,
};

use rustc_hash::FxHashMap as StdHashMap;

mod batch;
mod broadcast;
mod config;
mod counters;
mod error;
mod install;
mod iter;
mod lifecycle;
pub mod limits;
mod mmap;
mod netdev;
pub mod netns;
mod object;
mod pins;
#[cfg(feature = "test-helpers")]
mod test_helpers;

pub use broadcast::FanoutPath;
pub use config::{Mode, RouterConfig};
pub use counters::{Counters, Snapshot};
pub use error::DataplaneError;
pub use install::{InstallReport, routes_capacity};
pub use lifecycle::{AttachOptions, TcAttach};
pub use limits::raise_fd_limit;
pub use netdev::{ifindex, is_root, mac_address, multicast_socket, udp_no_checksum};
pub use object::find_object;
pub use pins::PinPaths;
#[cfg(feature = "test-helpers")]
pub use test_helpers::{LiveFrames, ReferenceProgram, TestRunOutcome};

use crate::{error::*, install::*};

/// Default root of the pins; the layout version is appended.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/shardcast";

/// What a worker thread returned, or an error saying it panicked.
pub(crate) fn joined<T>(r: std::thread::Result<T>, what: &str) -> Result<T> {
    r.map_err(|_| DataplaneError::Io(std::io::Error::other(format!("{what} panicked"))))
}

/// Issues the BPF command `cmd` with `attr`, a member of `union bpf_attr`
/// (include/uapi/linux/bpf.h) holding only integers and pointers to live
/// buffers the command reads or fills. Returns the non-negative result (a
/// new descriptor, for the commands that make one). The one raw `bpf()`
/// call of this module and its children.
pub(crate) fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised `bpf_attr` member of the size
    // we pass; the pointers in it reference buffers of the sizes the
    // kernel derives from the command, the map and the counts it holds.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as u32) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub(crate) type RoutesMap = HashMap<MapData, TopicKey, Route>;
pub(crate) type IdsMap = Array<MapData, Route>;
pub(crate) type NamesMap = Array<MapData, router_common::maps::NameEntry>;
pub(crate) type ShardsMap = Array<MapData, Shard>;

/// How [`Dataplane::group_counters`] reads `SC_GROUP_STATS`.
pub(crate) enum GroupReader {
    /// With the `shardcast_group_dump` map iterator: one read() for the
    /// whole map.
    Iterator(OwnedFd),
    /// In batches (`BPF_MAP_LOOKUP_BATCH`), because the iterator is not
    /// available; the reason is kept for `group_iterator_refused`.
    Batched(String),
}

/// Handles to every map of the data plane.
pub struct Dataplane {
    /// Present when this process loaded the object (tests, benchmarks,
    /// `attach`), keeping its programs alive; absent when adopted from
    /// pins. Read only by the test helpers.
    #[cfg_attr(not(feature = "test-helpers"), allow(dead_code))]
    ebpf: Option<Ebpf>,
    pins: Option<PinPaths>,
    config: Array<MapData, Config>,
    active: Array<MapData, u32>,
    meta: Array<MapData, Meta>,
    routes: ArrayOfMaps<MapData, RoutesMap>,
    shards: ArrayOfMaps<MapData, ShardsMap>,
    egress: DevMap<MapData>,
    /// `SC_EGRESS_IF`: the egress table again, slot → ifindex, for the
    /// fan-out program.
    egress_if: Array<MapData, u32>,
    /// `SC_FANOUT`: the broadcast device maps (see `broadcast`).
    fanout_maps: ArrayOfMaps<MapData, MapData>,
    /// `SC_FANOUT` again, for updates from several threads at once (see
    /// `add_broadcast`).
    raw_fanout: MapData,
    /// The copy program, when multi-shard routes may go by broadcast.
    copy_prog: Option<aya::programs::ProgramFd>,
    /// Egress slots (bits) whose broadcast maps are in place; `None` until
    /// read from the pins (see `broadcast_state`).
    broadcast_egress: Option<u64>,
    /// How the next install fans multi-shard routes out.
    fanout_path: FanoutPath,
    /// The device maps of routes over several egresses: shape (egress
    /// slots, sorted, one per copy) → `SC_FANOUT` slot.
    shapes: StdHashMap<Vec<u32>, u32>,
    /// Slots of shapes forgotten (an egress slot changed interface): not
    /// given to another shape by this process.
    retired_shapes: Vec<u32>,
    reasons: PerCpuArray<MapData, Counter>,
    topic_stats: PerCpuArray<MapData, Counter>,
    unrouted: PerCpuHashMap<MapData, TopicKey, Counter>,
    /// Second handles on maps read or written in batches (see `batch`),
    /// which need the raw descriptor the typed maps keep to themselves.
    raw_devices: MapData,
    raw_group_stats: MapData,
    /// `SC_SLOTS`, mapped (see `mmap`).
    slots: mmap::ArrayMmap<TopicKey>,
    /// `SC_DEVICE_INDEX`, mapped: the direct-mapped device table.
    device_index: mmap::ArrayMmap<DeviceEntry>,
    /// `SC_GROUP_CELLS`, mapped: the per-CPU (topic, group) counters.
    group_cells: mmap::ArrayMmap<GroupCellLine>,
    /// Cells in use at the last [`Dataplane::group_counters`] read.
    cells_in_use: std::cell::Cell<usize>,
    /// The `SC_GROUP_STATS` iterator program, when the kernel could load it
    /// (it needs the kernel's BTF); without it counters are read in batches.
    group_dump: std::cell::RefCell<GroupReader>,
    /// `SC_ROUTES` again, for the update [`Dataplane::install`] finishes on
    /// a thread.
    raw_routes: MapData,
    /// `SC_IDS`, the MQTT-SN id arrays' outer map (written with raw
    /// descriptors only).
    raw_ids: MapData,
    /// `SC_NAMES`, the name arrays' outer map: read through this typed
    /// handle ([`Dataplane::snapshot`]), written through the raw one.
    names: ArrayOfMaps<MapData, MapData>,
    raw_names: MapData,
    /// `SC_SHARDS` again, for the install's threads.
    raw_shards: MapData,
    /// That update, until joined (see [`Dataplane::settle`]).
    settling: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// See [`Dataplane::set_incremental`].
    incremental: bool,
    /// This process's copy of `SC_SLOTS`, valid at the `Meta` it was taken.
    slot_cache: std::cell::RefCell<Option<(Meta, StdHashMap<TopicKey, u32>)>>,
    /// The slot table an install in progress made, cached once its `Meta`
    /// is written.
    pending_slots: Option<StdHashMap<TopicKey, u32>>,
    /// The shard table this process last wrote to each slot.
    written_shards: [Option<Vec<Shard>>; 2],
    /// Per outer slot: the generation this process wrote there, its routes,
    /// and a handle on that inner map.
    written: [Option<Written>; 2],
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::warn!("last routes slot update: {e}");
        }
    }
}

/// XDP action numbers.
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

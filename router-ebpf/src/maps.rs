//! The maps the program reads and writes, and what each holds (layout and
//! the generation-swap protocol: `router_common::maps`).

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, DevMap, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    macros::btf_map,
};
use router_common::{
    maps::{
        Config, Counter, DEVICE_INDEX_ENTRIES, DEVICE_INDEX_FLAGS, DeviceAddr, DeviceEntry,
        FANOUT_SLOTS, FanoutSeq, GROUP_CELL_LINES, GROUP_CELLS_FLAGS, GroupCellLine, GroupStatKey,
        IDS_MAP_FLAGS, MAX_DEVICES, MAX_EGRESS, MAX_GROUP_STATS, MAX_ROUTE_SHARDS, MAX_ROUTES,
        MAX_SHARDS, MAX_TOPICS, MAX_UNROUTED, MQTTSN_ID_ROUTES, Meta, NAME_INDEX_ENTRIES,
        NAMES_MAP_FLAGS, NameEntry, ROUTES_MAP_FLAGS, Route, SLOTS_MAP_FLAGS, Shard, name_index,
    },
    reason::{REASON_COUNT, Reason},
    topic::TopicKey,
};

use crate::packet::{Scratch, Window};

/// The router's configuration, as global data in a section of its own
/// (`.bss.sc_config`, which the loader makes a one-entry array holding
/// just this value and the control plane pins as `SC_CONFIG`): the program
/// finds it with one instruction, where an array map took a lookup (its
/// key through the stack, a bounds check, a null check) and, a call to
/// LLVM, the spilling of every register live across it. All zeroes until
/// the control plane writes it (port 0 matches no frame: everything is
/// passed up, counted `other_port`, as a zeroed map entry was). Read
/// through [`config`] only.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.sc_config")]
static mut SC_CONFIG: Config = unsafe { core::mem::zeroed() };
/// The active generation's parity (`router_common::maps`), global data the
/// same way (`.bss.sc_active`, pinned as `SC_ACTIVE`), flipped by the
/// control plane with one 4-byte write. Read through [`active_parity`].
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.sc_active")]
static mut SC_ACTIVE: u32 = 0;

/// The configuration. Its address is a constant LLVM puts wherever a field
/// is read (one instruction), so it holds no register across the path.
/// The global is exported (`no_mangle`), so LLVM cannot assume that nothing
/// writes it and fold its reads into the zeroes it starts with; were that
/// to change, nothing would route and every routing test would fail.
#[inline(always)]
#[expect(
    clippy::deref_addrof,
    reason = "`&SC_CONFIG`, the lint's suggestion, is a reference to a `static mut` (refused)"
)]
pub(crate) fn config() -> &'static Config {
    // SAFETY: a shared view of our own global, which only the control
    // plane writes (as it wrote the map value this replaced).
    unsafe { &*(&raw const SC_CONFIG) }
}

/// The active generation's parity (0 or 1), one load.
#[inline(always)]
pub(crate) fn active_parity() -> u32 {
    // SAFETY: an aligned 4-byte load of our own global, which only the
    // control plane writes (a whole 4-byte value). Volatile, so LLVM keeps
    // the load (see [`config`]).
    unsafe { core::ptr::read_volatile(&raw const SC_ACTIVE) & 1 }
}
#[btf_map]
pub(crate) static SC_META: Array<Meta, 1> = Array::new();
#[btf_map]
pub(crate) static SC_ROUTES: ArrayOfMaps<
    HashMap<TopicKey, Route, { MAX_ROUTES as usize }, { ROUTES_MAP_FLAGS as usize }>,
    2,
> = ArrayOfMaps::new();
/// MQTT-SN (TopicIdType, id) → route, per generation parity (see
/// `router_common::maps::mqttsn_id_index`): an array lookup where a name
/// takes a hash lookup. A zeroed entry (no shards) is "no route".
#[btf_map]
pub(crate) static SC_IDS: ArrayOfMaps<
    Array<Route, { MQTTSN_ID_ROUTES as usize }, { IDS_MAP_FLAGS as usize }>,
    2,
> = ArrayOfMaps::new();
/// Topic name key → route, direct-mapped (`router_common::maps::NameEntry`),
/// per generation parity: the fast path's CoAP lookup, which falls back
/// to `SC_ROUTES` when another name holds the entry.
#[btf_map]
pub(crate) static SC_NAMES: ArrayOfMaps<
    Array<NameEntry, { NAME_INDEX_ENTRIES as usize }, { NAMES_MAP_FLAGS as usize }>,
    2,
> = ArrayOfMaps::new();
#[btf_map]
pub(crate) static SC_SHARDS: ArrayOfMaps<Array<Shard, { MAX_SHARDS as usize }>, 2> =
    ArrayOfMaps::new();
#[btf_map]
pub(crate) static SC_EGRESS: DevMap<{ MAX_EGRESS as usize }> = DevMap::new();
/// Egress slot → ifindex (0: empty), the same table as `SC_EGRESS` for the
/// fan-out program, which cannot read a device map.
#[btf_map]
pub(crate) static SC_EGRESS_IF: Array<u32, { MAX_EGRESS as usize }> = Array::new();
/// `fanout_slot(egress slot, k)` → a device map whose first k entries are
/// that egress with the copy program, and from `FANOUT_SINGLE_EGRESS` on,
/// device maps of routes over several egresses (an entry per shard, each
/// its egress): a multi-shard publish redirected to one with
/// `BPF_F_BROADCAST` leaves as one copy per entry (see `broadcast`).
#[btf_map]
pub(crate) static SC_FANOUT: ArrayOfMaps<DevMap<MAX_ROUTE_SHARDS>, { FANOUT_SLOTS as usize }> =
    ArrayOfMaps::new();
/// Per-CPU: the broadcast nonces handed out and the copy program's place
/// among one publish's copies (see `broadcast`).
#[btf_map]
pub(crate) static SC_FANOUT_SEQ: PerCpuArray<FanoutSeq, 1> = PerCpuArray::new();
#[btf_map]
pub(crate) static SC_REASONS: PerCpuArray<Counter, REASON_COUNT> = PerCpuArray::new();
#[btf_map]
pub(crate) static SC_TOPIC_STATS: PerCpuArray<Counter, { MAX_TOPICS as usize }> =
    PerCpuArray::new();
#[btf_map]
pub(crate) static SC_UNROUTED: LruPerCpuHashMap<TopicKey, Counter, { MAX_UNROUTED as usize }> =
    LruPerCpuHashMap::new();
/// Per-CPU scratch for the parsers (see `packet::Scratch`).
#[btf_map]
pub(crate) static SC_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();
/// Per-CPU copy of the CoAP message being parsed (see `packet::Window`).
#[btf_map]
pub(crate) static SC_COAP_WINDOW: PerCpuArray<Window, 1> = PerCpuArray::new();
/// Counter slot → topic name key (hash 0: free). Only the control plane
/// reads and writes it; it lives here so the slot assignment is pinned with
/// the counters it indexes and outlives any daemon.
#[btf_map]
pub(crate) static SC_SLOTS: Array<TopicKey, { MAX_TOPICS as usize }, { SLOTS_MAP_FLAGS as usize }> =
    Array::new();
/// Device source address → device group index (from the plan's devices).
#[btf_map]
pub(crate) static SC_DEVICES: HashMap<
    DeviceAddr,
    u32,
    { MAX_DEVICES as usize },
    { ROUTES_MAP_FLAGS as usize },
> = HashMap::new();
/// Routed packets per (topic slot, device group), when `CONFIG_GROUP_STATS`.
/// Shared by the CPUs (see `add_shared`) and read by `shardcast_group_dump`.
#[btf_map]
pub(crate) static SC_GROUP_STATS: LruHashMap<GroupStatKey, Counter, { MAX_GROUP_STATS as usize }> =
    LruHashMap::new();
/// Direct-mapped source address → device group (entry at
/// `router_common::maps::device_index`): an array lookup and a compare
/// where `SC_DEVICES` takes a hash of 16 bytes and a bucket walk. A
/// device whose entry another device holds is only in `SC_DEVICES`.
#[btf_map]
pub(crate) static SC_DEVICE_INDEX: Array<
    DeviceEntry,
    { DEVICE_INDEX_ENTRIES as usize },
    { DEVICE_INDEX_FLAGS as usize },
> = Array::new();
/// (topic slot, device group) counters, `GROUP_CELL_LINES` lines per CPU
/// (CPU `c`'s lines start at `c * GROUP_CELL_LINES`; the loader sizes the
/// map for the host's CPUs). Only its CPU writes a line: plain adds, no
/// locked instruction, no shared cache line. Pairs a full line has no room
/// for go to `SC_GROUP_STATS`.
#[btf_map]
pub(crate) static SC_GROUP_CELLS: Array<
    GroupCellLine,
    { GROUP_CELL_LINES as usize },
    { GROUP_CELLS_FLAGS as usize },
> = Array::new();

/// The route of the topic name `key` in the generation of `parity`: the
/// name array's entry when it holds `key`; none when the entry is free (no
/// name of the plan has its index); else the hash map, which holds every
/// route. `Err(NoPlan)`: the generation's hash map is missing. Every
/// lookup of a route by name goes through here (the fast path, the
/// general path, the fan-out's copies), so each finds a name where the
/// others do.
#[inline(always)]
pub(crate) fn route_by_name(parity: u32, key: TopicKey) -> Result<Option<&'static Route>, Reason> {
    let entry = SC_NAMES
        .get(parity)
        .and_then(|names| names.get(name_index(key)));
    match entry {
        Some(e) if e.key == key => Ok(Some(&e.route)),
        Some(e) if e.key.hash == 0 => Ok(None),
        _ => {
            let routes = SC_ROUTES.get(parity).ok_or(Reason::NoPlan)?;
            // SAFETY: only the control plane writes route maps, and never
            // a map a program may be reading (generation swap).
            Ok(unsafe { routes.get(key) })
        }
    }
}

//! Map names, capacities and `#[repr(C)]` map values shared with the XDP
//! program.
//!
//! Routing state is one *plan generation*: a topic → route hash map, an
//! MQTT-SN (TopicIdType, id) → route array, a direct-mapped array of topic
//! names in front of the hash map, and a shard table. Each lives
//! in a two-slot outer array (`ArrayOfMaps`), one slot per generation
//! parity, and `ACTIVE` says which parity packets use. Installing
//! generation N+1 fills fresh inner maps into the idle parity, then flips
//! `ACTIVE`; the program reads `ACTIVE` once per packet and uses that
//! parity for every lookup, so a packet is routed wholly by N or by N+1.
//! The control plane waits an RCU grace period after each flip before it
//! touches the now idle parity again (see `router-ctl`'s `dataplane`).
//!
//! Changing any type or capacity here changes the pinned layout: bump
//! [`LAYOUT_VERSION`], which names the pin directory.

/// Version of the map layout; part of the pin path so that a pin of another
/// layout is never silently misread.
pub const LAYOUT_VERSION: u32 = 9;

/// Longest CoAP pub/sub prefix (bytes, including the trailing '/'); the
/// CoAP parser's constant, sized here into `Config`.
pub use crate::coap::PREFIX_MAX;
/// Shards per route the data plane can name: the most shards one topic
/// may span. 16 rather than 8 (layout v4): a site-wide topic of a large
/// site is cheapest cut into many pieces, each sharing a shard with the
/// zones its cross-site subscribers listen to; with at most 8 the planner
/// made 2x the copies at 100k devices (BENCHMARKS.md), for 16 bytes more
/// per route.
pub const MAX_ROUTE_SHARDS: usize = 16;
/// Shards per plan (inner shard array size).
pub const MAX_SHARDS: u32 = 4096;
/// Route keys per plan (names plus MQTT-SN id aliases). The inner hash map
/// is not preallocated, so an empty plan costs nothing.
pub const MAX_ROUTES: u32 = 1 << 21;
/// Per-topic counter slots: a plan holds at most this many topic names.
/// The counters are a per-CPU array (16 B per slot per CPU: 16 MiB per CPU),
/// the cheapest counter the fast path can update.
pub const MAX_TOPICS: u32 = 1 << 20;
/// Entries of a plan's MQTT-SN id route array: one per (TopicIdType, id)
/// for the three id types (normal, predefined, short): see
/// [`mqttsn_id_index`].
pub const MQTTSN_ID_ROUTES: u32 = 3 << 16;
/// `BPF_F_MMAPABLE`: an array the control plane reads and writes through a
/// shared mapping instead of syscalls.
const BPF_F_MMAPABLE: u32 = 1 << 10;
/// The id route arrays' flags: the control plane fills a fresh array
/// through a shared mapping (inner maps created by the control plane must
/// match the template's flags exactly).
pub const IDS_MAP_FLAGS: u32 = BPF_F_MMAPABLE;

/// Entries of a plan's direct-mapped name array ([`NameEntry`], at
/// [`name_index`]): 2^16, 6 MiB a generation. A plan of up to some tens
/// of thousands of named topics finds most of them there; beyond that,
/// most take the hash map, which holds every route the array does not.
pub const NAME_INDEX_ENTRIES: u32 = 1 << 16;
/// The name arrays' flags: filled through a shared mapping, as the id
/// arrays are.
pub const NAMES_MAP_FLAGS: u32 = BPF_F_MMAPABLE;

/// One entry of a plan's direct-mapped name array: the route of the
/// topic name whose key is `key`, at [`name_index`]`(key)`.
///
/// Why: a CoAP publish names its topic, whose route is a hash-map lookup
/// (the kernel's `jhash` of the key, a bucket walk, and a call out of the
/// program): about a tenth of a CoAP publish's time on the fast path
/// (BENCHMARKS.md). Here it is an array lookup and a compare. Each entry
/// holds the smallest of the plan's name keys with that index; the others
/// are only in the hash map, and a route held here is not (since layout
/// v9: half the hash-map inserts of a 100k-route install, BENCHMARKS.md).
/// So a free entry (`key` 0, a key no plan holds) means no name of the
/// plan has that index: unrouted, without a hash lookup; an entry holding
/// another key sends the lookup to the hash map.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameEntry {
    pub key: crate::topic::TopicKey,
    pub route: Route,
}

/// Where a topic name's key lives in the name array.
#[inline(always)]
pub fn name_index(key: crate::topic::TopicKey) -> u32 {
    key.hash as u32 & (NAME_INDEX_ENTRIES - 1)
}

/// Index of an MQTT-SN PUBLISH's route in the id route array: every
/// PUBLISH names its topic with a 16-bit id of a 2-bit TopicIdType
/// (0 normal, 1 predefined, 2 short name), so the fast path indexes an
/// array where a name needs a hash lookup. The reserved type 3 (which the
/// parser refuses) would index past the array's end.
#[inline(always)]
pub fn mqttsn_id_index(topic_id_type: u8, topic_id: u16) -> u32 {
    ((topic_id_type & 0b11) as u32) << 16 | topic_id as u32
}

/// `SC_SLOTS`'s flags: the control plane writes and reads the slot table
/// through a shared mapping.
pub const SLOTS_MAP_FLAGS: u32 = BPF_F_MMAPABLE;
/// Egress device slots.
pub const MAX_EGRESS: u32 = 64;
/// Unrouted topic keys tracked (LRU).
pub const MAX_UNROUTED: u32 = 4096;
/// Device source addresses mapped to a device group (not preallocated).
pub const MAX_DEVICES: u32 = 1 << 20;
/// (topic slot, device group) counters tracked (LRU; shared by the CPUs,
/// added to atomically: see `SC_GROUP_STATS` in router-ebpf): where a
/// counter goes when its CPU's line of [`GroupCellLine`]s is full.
pub const MAX_GROUP_STATS: u32 = 1 << 18;

/// Entries of the direct-mapped device table (`SC_DEVICE_INDEX`): the
/// fast way from a source address to its device group (see
/// [`device_index`]). 24 MiB, allocated once.
pub const DEVICE_INDEX_ENTRIES: u32 = 1 << 20;
/// `SC_DEVICE_INDEX`'s flags: the control plane writes it through a
/// shared mapping.
pub const DEVICE_INDEX_FLAGS: u32 = BPF_F_MMAPABLE;

/// Where a device's entry goes in `SC_DEVICE_INDEX`: the low 20 bits of
/// the address's last 32 bits (an IPv4 address's host part, an IPv6
/// interface identifier's tail). Fleets are numbered from pools, so
/// devices of one IPv4 /12 never share an entry; a device whose entry
/// another holds is found in `SC_DEVICES` (the hash map every device is
/// in) instead, at the cost of a hash lookup.
#[inline(always)]
pub fn device_index(addr: &[u8; 16]) -> u32 {
    u32::from_be_bytes([addr[12], addr[13], addr[14], addr[15]]) & (DEVICE_INDEX_ENTRIES - 1)
}

/// One entry of `SC_DEVICE_INDEX`. All zero: free (an address `::` then
/// matches with group 0, "unknown", which is what it is).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceEntry {
    pub addr: DeviceAddr,
    pub group: u32,
    pub _pad: u32,
}

/// Cells per line of the per-CPU (topic slot, device group) counter table
/// `SC_GROUP_CELLS`: a line is one 64-byte cache line, four keys then
/// their four counts.
pub const GROUP_CELL_WAYS: usize = 4;
/// Lines per CPU in `SC_GROUP_CELLS` (2 MiB per CPU): room for 131,072
/// (topic, group) counters on every CPU before pairs spill to the LRU.
pub const GROUP_CELL_LINES_BITS: u32 = 15;
pub const GROUP_CELL_LINES: u32 = 1 << GROUP_CELL_LINES_BITS;
/// `SC_GROUP_CELLS`'s flags: the control plane reads it through a shared
/// mapping (one memory scan a tick, no syscall per counter).
pub const GROUP_CELLS_FLAGS: u32 = BPF_F_MMAPABLE;

/// One line of `SC_GROUP_CELLS`: up to [`GROUP_CELL_WAYS`] (topic slot,
/// device group) counters of one CPU. A key is [`group_cell_key`]; 0 is a
/// free cell. Only its CPU writes a line, so counts are plain adds.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCellLine {
    pub keys: [u64; GROUP_CELL_WAYS],
    pub packets: [u64; GROUP_CELL_WAYS],
}

/// The cell key of (topic slot, device group): never 0 (a free cell).
#[inline(always)]
pub fn group_cell_key(slot: u32, group: u32) -> u64 {
    ((slot as u64 + 1) << 32) | group as u64
}

/// (topic slot, device group) of a cell key.
#[inline(always)]
pub fn group_cell_of(key: u64) -> GroupStatKey {
    GroupStatKey {
        slot: ((key >> 32) as u32).wrapping_sub(1),
        group: key as u32,
    }
}

/// The line a cell key lives in within its CPU's lines (a multiplicative
/// hash: slots and groups are small consecutive numbers, which a plain
/// mask would crowd into few lines).
#[inline(always)]
pub fn group_cell_line(key: u64) -> u32 {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - GROUP_CELL_LINES_BITS)) as u32
}
/// `BPF_F_NO_PREALLOC`, the route map's flags (inner maps created by the
/// control plane must match the template's flags exactly).
pub const ROUTES_MAP_FLAGS: u32 = 1;

pub mod names {
    //! Map and program names, as the loader and `bpftool` see them.
    /// The configuration's pin. In the object it is global data, the
    /// section [`CONFIG_SECTION`], which the loader makes a map of that
    /// name.
    pub const CONFIG: &str = "SC_CONFIG";
    /// The active parity's pin; in the object, [`ACTIVE_SECTION`].
    pub const ACTIVE: &str = "SC_ACTIVE";
    pub const CONFIG_SECTION: &str = ".bss.sc_config";
    pub const ACTIVE_SECTION: &str = ".bss.sc_active";
    pub const META: &str = "SC_META";
    pub const ROUTES: &str = "SC_ROUTES";
    pub const IDS: &str = "SC_IDS";
    /// The direct-mapped name arrays' outer map ([`NameEntry`](super::NameEntry)).
    pub const NAMES: &str = "SC_NAMES";
    pub const SHARDS: &str = "SC_SHARDS";
    pub const EGRESS: &str = "SC_EGRESS";
    pub const REASONS: &str = "SC_REASONS";
    pub const TOPIC_STATS: &str = "SC_TOPIC_STATS";
    pub const UNROUTED: &str = "SC_UNROUTED";
    pub const SLOTS: &str = "SC_SLOTS";
    pub const DEVICES: &str = "SC_DEVICES";
    pub const GROUP_STATS: &str = "SC_GROUP_STATS";
    pub const DEVICE_INDEX: &str = "SC_DEVICE_INDEX";
    pub const GROUP_CELLS: &str = "SC_GROUP_CELLS";
    /// Egress slot → ifindex, for the fan-out program (a TC program
    /// cannot read the XDP device map `SC_EGRESS`).
    pub const EGRESS_IF: &str = "SC_EGRESS_IF";
    /// (egress slot, copy count) → a device map that broadcasts a
    /// multi-shard publish as that many copies (see `fanout_slot`).
    pub const FANOUT: &str = "SC_FANOUT";
    /// Per-CPU broadcast sequence (`FanoutSeq`).
    pub const FANOUT_SEQ: &str = "SC_FANOUT_SEQ";
    /// The router program.
    pub const PROG_ROUTER: &str = "shardcast_router";
    /// A program that passes everything: attached to the peer of a veth
    /// egress, because veth only delivers redirected frames to a peer that
    /// runs XDP.
    pub const PROG_PASS: &str = "shardcast_pass";
    /// The fan-out program (TC ingress): sends one rewritten copy of a
    /// multi-shard publish to each of its shards.
    pub const PROG_FANOUT: &str = "shardcast_fanout";
    /// The copy program (a device-map egress program): rewrites each copy
    /// of a broadcast multi-shard publish for its shard.
    pub const PROG_COPY: &str = "shardcast_copy";
    /// The `SC_GROUP_STATS` dump: a map-element iterator that writes one
    /// [`GroupStatRecord`](super::GroupStatRecord) per counter.
    pub const PROG_GROUP_DUMP: &str = "shardcast_group_dump";
}

/// Router configuration (SC_CONFIG[0]). Ports in host order; 0 disables a
/// protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub mqttsn_port: u16,
    pub coap_port: u16,
    /// Bytes of `prefix` in use.
    pub prefix_len: u32,
    /// CoAP pub/sub Uri-Path prefix, joined with '/', ending in '/'.
    pub prefix: [u8; PREFIX_MAX],
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// With `CONFIG_GROUP_STATS`: count one routed publish in this many
    /// (chosen at random), weighted by it; 0 or 1 counts every one.
    pub group_sample: u32,
    /// `prefix` encoded as a message's first options, for the CoAP
    /// parser's fast start (`coap::PrefixStart::encode` of `prefix`).
    pub prefix_start: crate::coap::PrefixStart,
}

/// Count routed publishes per (topic, device group) too, for the
/// forecaster's topic × group load: the source's group from
/// `SC_DEVICE_INDEX` (or `SC_DEVICES` for a device sharing its entry) and
/// a count in this CPU's `SC_GROUP_CELLS` (or the shared `SC_GROUP_STATS`
/// when its line is full): about +3 ns per publish (BENCHMARKS.md).
/// [`Config::group_sample`] counts one publish in N instead. Off by
/// default (`attach`); the daemon's config turns it on.
pub const CONFIG_GROUP_STATS: u32 = 1;

impl Config {
    pub const DEFAULT_MQTTSN_PORT: u16 = 1884;
    pub const DEFAULT_COAP_PORT: u16 = 5683;
    pub const DEFAULT_PREFIX: &'static str = "ps/data/";

    /// The configured prefix bytes.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..(self.prefix_len as usize).min(PREFIX_MAX)]
    }
}

/// A device's source address: IPv6, or IPv4 as `::ffff:a.b.c.d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddr {
    pub addr: [u8; 16],
}

impl DeviceAddr {
    /// IPv4 `a.b.c.d` as `::ffff:a.b.c.d`.
    pub const fn v4(a: [u8; 4]) -> Self {
        Self {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
            ],
        }
    }
}

/// Device group index of sources not in `SC_DEVICES`.
pub const GROUP_UNKNOWN: u32 = 0;

/// Key of a (topic counter slot, device group index) counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupStatKey {
    pub slot: u32,
    pub group: u32,
}

/// One (topic slot, device group) counter: what the `SC_GROUP_STATS`
/// iterator writes per element. The daemon reads every counter each tick;
/// the map-element iterator does it in one pass over the buckets, where
/// `BPF_MAP_LOOKUP_BATCH` pays a lock, an RCU section and two user copies
/// per bucket (BENCHMARKS.md: 22 ms against 30 ms for 100k counters).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStatRecord {
    pub key: GroupStatKey,
    pub counter: Counter,
}

/// Installed plan metadata (SC_META[0]), for `status` and adoption.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub generation: u64,
    pub routes: u32,
    pub shards: u32,
    pub installed_unix: u64,
    /// Generation each routes slot holds (0: empty). Lets a control plane
    /// that remembers what it wrote to a slot check that nobody else has
    /// written since, before it updates the slot in place.
    pub slot_generation: [u64; 2],
    /// Counter slots in use lie below this index (slots are handed out
    /// from the bottom), so a control plane reads only that much of
    /// `SC_SLOTS`.
    pub slot_high_water: u64,
}

/// A route: the shards (indices into the shard table) that subscribe to a
/// topic, and the topic's counter slot.
///
/// `first` is a copy of the shard table entry of `shards[0]`: a
/// single-shard publish, the fast path, is then routed with one map lookup
/// instead of two (the shard table is an inner map too: another outer-slot
/// lookup and an array lookup on every publish). Both live in the same plan
/// generation, so the copy cannot disagree with the table.
// Aligned to 8 (map values are) so that the data plane loads a shard's
// group and MAC with whole-word loads rather than byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    pub stats_slot: u32,
    pub shard_count: u16,
    /// How a multi-shard route's copies leave: 0, by the TC fan-out
    /// program; otherwise `1 +` the [`fanout_slot`] of the device map that
    /// sends them by XDP broadcast (one entry per shard, and the
    /// kernel took the copy program; see `names::PROG_COPY`).
    pub fanout: u16,
    pub shards: [u16; MAX_ROUTE_SHARDS],
    pub first: Shard,
}

pub const SHARD_HAS_V4: u16 = 1;
pub const SHARD_HAS_V6: u16 = 2;

/// What the XDP program hands the fan-out program (or the copy program of
/// a broadcast) with a multi-shard publish, in the frame's XDP metadata
/// (`bpf_xdp_adjust_meta`, just before the packet; the kernel keeps it
/// with the skb up to TC ingress, and with every copy of an XDP frame):
/// which route to send it by. Both look the route up again in the plan
/// generation active when they run, so they never read a generation the
/// control plane may be rewriting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanoutMeta {
    /// [`FANOUT_MAGIC`]: metadata of ours, not another program's.
    pub magic: u32,
    /// [`FANOUT_BY_ID`] or [`FANOUT_BY_NAME`].
    pub kind: u16,
    /// Broadcast only: the plan generation parity the XDP program routed
    /// the publish by, which its copies follow (still readable when they
    /// are rewritten: in the same softirq, and the control plane waits a
    /// grace period before it rewrites a parity it flipped away from).
    /// 0 on the TC way, which looks the route up in the generation active
    /// when it runs.
    pub parity: u16,
    /// The MQTT-SN id route index ([`mqttsn_id_index`]) or the name's
    /// [`TopicKey`](crate::topic::TopicKey) hash.
    pub key: u64,
    /// Broadcast only: this publish's number among those its CPU handed
    /// off ([`FanoutSeq::issued`]). The copies of one publish are
    /// identical, so the copy program tells them apart by order: the kernel
    /// queues them one after the other and runs the program on them in
    /// that order, on the CPU that queued them.
    pub nonce: u64,
}

/// Per-CPU state of the broadcast path (`SC_FANOUT_SEQ`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanoutSeq {
    /// Publishes this CPU handed to a broadcast (the last nonce issued).
    pub issued: u64,
    /// The nonce of the publish whose copies the copy program is at.
    pub seen: u64,
    /// The egress (ifindex) those copies leave by: a publish's copies to
    /// each egress are queued, and rewritten, one run per egress.
    pub egress: u32,
    /// Copies of that publish to that egress rewritten so far: the next
    /// copy's index into `shards`.
    pub next: u32,
    /// The route's shards that leave by that egress, as the first of those
    /// copies found them (`count` of them; none if the route had none):
    /// the route is looked up once per publish and egress, not per copy.
    pub count: u32,
    pub _pad: u32,
    pub shards: [u16; MAX_ROUTE_SHARDS],
}

/// `SC_FANOUT` slots of routes whose shards share one egress: one device
/// map per (egress slot, copy count 1..=16), at [`fanout_slot`].
pub const FANOUT_SINGLE_EGRESS: u32 = MAX_EGRESS * MAX_ROUTE_SHARDS as u32;
/// `SC_FANOUT` slots of routes over several egresses: one device map per
/// shape (how many copies to each egress), made as plans need them, from
/// `FANOUT_SINGLE_EGRESS` on.
pub const FANOUT_SHAPES: u32 = 1024;
/// `SC_FANOUT` slots in all.
pub const FANOUT_SLOTS: u32 = FANOUT_SINGLE_EGRESS + FANOUT_SHAPES;

/// The `SC_FANOUT` slot of the device map that sends `copies` copies
/// (1..=16) to egress slot `egress_slot`: its first `copies` entries are
/// that egress, each with the copy program.
pub const fn fanout_slot(egress_slot: u32, copies: u32) -> u32 {
    egress_slot * MAX_ROUTE_SHARDS as u32 + (copies - 1)
}

/// `FanoutMeta::magic`: "SCFO".
pub const FANOUT_MAGIC: u32 = u32::from_be_bytes(*b"SCFO");
/// The route is `SC_IDS[parity][key]`.
pub const FANOUT_BY_ID: u16 = 1;
/// The route is `SC_ROUTES[parity][TopicKey { hash: key }]`.
pub const FANOUT_BY_NAME: u16 = 2;

/// A shard: where packets for it go.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shard {
    /// IPv4 group, network order.
    pub group_v4: [u8; 4],
    /// IPv6 group, network order.
    pub group_v6: [u8; 16],
    /// Slot in SC_EGRESS to redirect to.
    pub egress_slot: u32,
    /// UDP destination port (host order).
    pub port: u16,
    /// `SHARD_HAS_V4 | SHARD_HAS_V6`.
    pub flags: u16,
    /// Source MAC to write: the egress interface's address.
    pub src_mac: [u8; 6],
    pub _pad: u16,
    /// The plan's shard id (for display and counters).
    pub id: u32,
}

/// Packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    pub fn add(&mut self, other: &Counter) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, contain only integers and
    // byte arrays, and have no implicit padding (explicit `_pad` fields).
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Meta {}
    unsafe impl aya::Pod for super::Route {}
    unsafe impl aya::Pod for super::NameEntry {}
    unsafe impl aya::Pod for super::Shard {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::DeviceAddr {}
    unsafe impl aya::Pod for super::GroupStatKey {}
    unsafe impl aya::Pod for super::GroupStatRecord {}
    unsafe impl aya::Pod for super::DeviceEntry {}
    unsafe impl aya::Pod for super::GroupCellLine {}
    unsafe impl aya::Pod for crate::topic::TopicKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn name_entries_are_a_key_and_a_route_without_padding() {
        assert_eq!(size_of::<NameEntry>(), 8 + size_of::<Route>());
        assert_eq!(size_of::<NameEntry>() % 8, 0);
        let k = crate::topic::topic_key(b"temp/room1");
        assert!(name_index(k) < NAME_INDEX_ENTRIES);
        assert_eq!(name_index(k), (k.hash & 0xffff) as u32);
    }

    #[test]
    fn cell_keys_round_trip_are_never_free_and_lines_stay_in_range() {
        for (slot, group) in [(0, 0), (0, 1), (MAX_TOPICS - 1, u32::MAX), (7, 3)] {
            let k = group_cell_key(slot, group);
            assert_ne!(k, 0, "0 marks a free cell");
            assert_eq!(group_cell_of(k), GroupStatKey { slot, group });
            assert!(group_cell_line(k) < GROUP_CELL_LINES);
        }
    }

    #[test]
    fn consecutive_groups_of_a_topic_spread_over_the_lines() {
        // Groups are numbered 1..=G: one topic's G groups must not crowd a
        // line (a line holds four before pairs spill to the shared map).
        for slot in [0, 1, 1000, MAX_TOPICS - 1] {
            let mut per_line = [0u8; GROUP_CELL_LINES as usize];
            for g in 1..=GROUP_CELL_LINES {
                per_line[group_cell_line(group_cell_key(slot, g)) as usize] += 1;
            }
            let worst = per_line.iter().max().copied().unwrap_or(0);
            assert!(worst <= 3, "slot {slot}: a line wanted by {worst} groups");
        }
    }

    #[test]
    fn device_index_is_the_low_bits_of_the_last_word() {
        let a = DeviceAddr::v4([198, 18, 0, 1]);
        assert_eq!(device_index(&a.addr), 0x2_0001);
        // 198.34.0.1 shares 198.18.0.1's low 20 bits.
        assert_eq!(
            device_index(&DeviceAddr::v4([198, 34, 0, 1]).addr),
            0x2_0001
        );
        let mut v6 = [0u8; 16];
        v6[12..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(device_index(&v6), 0xd_beef);
        assert!(device_index(&[0xff; 16]) < DEVICE_INDEX_ENTRIES);
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(
            size_of::<Config>(),
            2 + 2 + 4 + PREFIX_MAX + 4 + 4 + size_of::<crate::coap::PrefixStart>()
        );
        assert_eq!(size_of::<crate::coap::PrefixStart>(), 8 * 5 + 4 + 4);
        assert_eq!(size_of::<DeviceAddr>(), 16);
        assert_eq!(size_of::<GroupStatKey>(), 8);
        assert_eq!(size_of::<Meta>(), 48);
        assert_eq!(
            size_of::<Route>(),
            4 + 2 + 2 + 2 * MAX_ROUTE_SHARDS + size_of::<Shard>()
        );
        assert_eq!(size_of::<Shard>(), 4 + 16 + 4 + 2 + 2 + 6 + 2 + 4);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<GroupStatRecord>(), 24);
        assert_eq!(size_of::<DeviceEntry>(), 24);
        assert_eq!(size_of::<GroupCellLine>(), 64);
        // XDP metadata: at most 32 bytes, a multiple of 4.
        assert_eq!(size_of::<FanoutMeta>(), 24);
        // XDP metadata is at most 32 bytes.
        const { assert!(size_of::<FanoutMeta>() <= 32) };
        assert_eq!(size_of::<FanoutSeq>(), 8 + 8 + 4 * 4 + 2 * MAX_ROUTE_SHARDS);
    }
}

//! The shardcast XDP router.
//!
//! For each frame: Ethernet (at most one 802.1Q tag) → IPv4/IPv6 → UDP to the
//! MQTT-SN or CoAP port → the shared publish parser from `router-common` →
//! topic key → route in the active plan generation → shard → rewrite to the
//! shard's multicast group → redirect to its egress. Anything else goes to
//! the kernel stack (`XDP_PASS`) and is counted by reason: the router never
//! drops what it does not understand.
//!
//! Layout of the maps and the generation-swap protocol: see
//! `router_common::maps`.
#![no_std]
#![no_main]
// BPF inline assembly (`packet::copy16`); router-ebpf builds with nightly.
#![feature(asm_experimental_arch)]

mod packet;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, seq_file, xdp_action},
    btf_maps::{Array, ArrayOfMaps, DevMap, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    helpers::{bpf_get_prandom_u32, bpf_seq_write, bpf_xdp_adjust_head},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use router_common::{
    checksum::Patch,
    coap,
    maps::{
        CONFIG_GROUP_STATS, Config, Counter, DeviceAddr, GROUP_UNKNOWN, GroupStatKey,
        GroupStatRecord, IDS_MAP_FLAGS, MAX_DEVICES, MAX_EGRESS, MAX_GROUP_STATS, MAX_ROUTES,
        MAX_SHARDS, MAX_TOPICS, MAX_UNROUTED, MQTTSN_ID_ROUTES, Meta, ROUTES_MAP_FLAGS, Route,
        SHARD_HAS_V4, SHARD_HAS_V6, SLOTS_MAP_FLAGS, Shard,
    },
    mqttsn,
    reason::{REASON_COUNT, Reason},
    topic::TopicKey,
};

use packet::{
    ETH_HLEN, EthHdr, Ipv4Hdr, Ipv6Hdr, Scratch, UdpHdr, Window, WindowPayload, ptr_at, word,
};

#[btf_map]
static SC_CONFIG: Array<Config, 1> = Array::new();
#[btf_map]
static SC_ACTIVE: Array<u32, 1> = Array::new();
#[btf_map]
static SC_META: Array<Meta, 1> = Array::new();
#[btf_map]
static SC_ROUTES: ArrayOfMaps<
    HashMap<TopicKey, Route, { MAX_ROUTES as usize }, { ROUTES_MAP_FLAGS as usize }>,
    2,
> = ArrayOfMaps::new();
/// MQTT-SN (TopicIdType, id) → route, per generation parity (see
/// `router_common::maps::mqttsn_id_index`): an array lookup where a name
/// takes a hash lookup. A zeroed entry (no shards) is "no route".
#[btf_map]
static SC_IDS: ArrayOfMaps<
    Array<Route, { MQTTSN_ID_ROUTES as usize }, { IDS_MAP_FLAGS as usize }>,
    2,
> = ArrayOfMaps::new();
#[btf_map]
static SC_SHARDS: ArrayOfMaps<Array<Shard, { MAX_SHARDS as usize }>, 2> = ArrayOfMaps::new();
#[btf_map]
static SC_EGRESS: DevMap<{ MAX_EGRESS as usize }> = DevMap::new();
#[btf_map]
static SC_REASONS: PerCpuArray<Counter, REASON_COUNT> = PerCpuArray::new();
#[btf_map]
static SC_TOPIC_STATS: PerCpuArray<Counter, { MAX_TOPICS as usize }> = PerCpuArray::new();
#[btf_map]
static SC_UNROUTED: LruPerCpuHashMap<TopicKey, Counter, { MAX_UNROUTED as usize }> =
    LruPerCpuHashMap::new();
/// Per-CPU scratch for the parsers (see `packet::Scratch`).
#[btf_map]
static SC_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();
/// Per-CPU copy of the CoAP message being parsed (see `packet::Window`).
#[btf_map]
static SC_COAP_WINDOW: PerCpuArray<Window, 1> = PerCpuArray::new();
/// Counter slot → topic name key (hash 0: free). Only the control plane
/// reads and writes it; it lives here so the slot assignment is pinned with
/// the counters it indexes and outlives any daemon.
#[btf_map]
static SC_SLOTS: Array<TopicKey, { MAX_TOPICS as usize }, { SLOTS_MAP_FLAGS as usize }> =
    Array::new();
/// Device source address → device group index (from the plan's devices).
#[btf_map]
static SC_DEVICES: HashMap<
    DeviceAddr,
    u32,
    { MAX_DEVICES as usize },
    { ROUTES_MAP_FLAGS as usize },
> = HashMap::new();
/// Routed packets per (topic slot, device group), when `CONFIG_GROUP_STATS`.
/// Shared by the CPUs (see `add_shared`) and read by `shardcast_group_dump`.
#[btf_map]
static SC_GROUP_STATS: LruHashMap<GroupStatKey, Counter, { MAX_GROUP_STATS as usize }> =
    LruHashMap::new();

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;
const VLAN_HLEN: usize = 4;

#[xdp]
pub fn shardcast_router(ctx: XdpContext) -> u32 {
    match route(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason, (ctx.data_end() - ctx.data()) as u64);
            xdp_action::XDP_PASS
        }
    }
}

/// Passes everything. Attached to the peer of a veth egress: veth delivers
/// XDP-redirected frames only to a peer that runs an XDP program.
#[xdp]
pub fn shardcast_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// `struct bpf_iter_meta` (include/linux/bpf.h): only `seq` is read.
#[repr(C)]
pub struct IterMeta {
    seq: *mut seq_file,
}

/// `struct bpf_iter__bpf_map_elem`, the context of a map-element iterator.
/// `key` and `value` are null on the final call after the last element.
#[repr(C)]
pub struct MapElemCtx {
    meta: *const IterMeta,
    map: *const u8,
    key: *const GroupStatKey,
    value: *const Counter,
}

/// Dumps `SC_GROUP_STATS` (the control plane attaches it to that map): one
/// [`GroupStatRecord`] per counter, for the daemon's tick.
///
/// # Safety
/// Called by the kernel's map iterator with a valid context.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_map_elem")]
pub unsafe extern "C" fn shardcast_group_dump(ctx: *const MapElemCtx) -> i32 {
    // SAFETY: the context and the pointers in it are the kernel's; key and
    // value are checked for null (the verifier insists) and are exactly a
    // key and a value of the map the iterator was attached to.
    unsafe {
        let ctx = &*ctx;
        let (key, value) = (ctx.key, ctx.value);
        if key.is_null() || value.is_null() {
            return 0;
        }
        let rec = GroupStatRecord {
            key: *key,
            counter: *value,
        };
        bpf_seq_write(
            (*ctx.meta).seq,
            &rec as *const GroupStatRecord as *const _,
            size_of::<GroupStatRecord>() as u32,
        );
    }
    0
}

#[inline(always)]
fn count(reason: Reason, bytes: u64) {
    if let Some(c) = SC_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, written only by this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
fn count_topic(slot: u32, bytes: u64) {
    if let Some(c) = SC_TOPIC_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, written only by this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(never)]
fn count_unrouted(key: &TopicKey, bytes: u64) {
    // Off the fast path: unrouted publishes go to the stack anyway.
    match SC_UNROUTED.get_ptr_mut(key) {
        // SAFETY: per-CPU value, written only by this CPU.
        Some(c) => unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        },
        None => {
            let _ = SC_UNROUTED.insert(key, Counter { packets: 1, bytes }, 0);
        }
    }
}

/// Counts a routed publish under (topic slot, its source's device group).
#[inline(never)]
fn count_group(ctx: &XdpContext, l3: L3, slot: u32, bytes: u64, weight: u64) {
    let src = match l3 {
        L3::V4 { off, .. } => match ptr_at::<Ipv4Hdr>(ctx, off) {
            // SAFETY: bounds checked by `ptr_at`.
            Some(ip) => DeviceAddr::v4(unsafe { (*ip).saddr }),
            None => return,
        },
        L3::V6 { off } => match ptr_at::<Ipv6Hdr>(ctx, off) {
            // SAFETY: bounds checked by `ptr_at`.
            Some(ip) => DeviceAddr {
                addr: unsafe { (*ip).saddr },
            },
            None => return,
        },
    };
    // SAFETY: the value is copied out at once.
    let group = unsafe { SC_DEVICES.get(&src) }
        .copied()
        .unwrap_or(GROUP_UNKNOWN);
    let key = GroupStatKey { slot, group };
    if let Some(c) = SC_GROUP_STATS.get_ptr_mut(&key) {
        add_shared(c, weight, bytes * weight);
        return;
    }
    let c = Counter {
        packets: weight,
        bytes: bytes * weight,
    };
    // Another CPU may have added the key since the lookup: then add to its.
    if SC_GROUP_STATS.insert(&key, c, BPF_NOEXIST as u64).is_err()
        && let Some(c) = SC_GROUP_STATS.get_ptr_mut(&key)
    {
        add_shared(c, weight, bytes * weight);
    }
}

/// Adds to a counter every CPU may update (atomically).
///
/// `SC_GROUP_STATS` is shared rather than per-CPU: the daemon reads every
/// counter each tick, and a per-CPU value costs that read a pointer chase
/// per CPU per counter (BENCHMARKS.md: 38 ms against 22 ms for 100k
/// counters), while two CPUs rarely count the same (topic, group) at once.
#[inline(always)]
fn add_shared(c: *mut Counter, packets: u64, bytes: u64) {
    // SAFETY: `c` points into a live map value; its fields are 8-aligned
    // `u64`s. The BPF target has no `AtomicU64::fetch_add` in `core`, so
    // the atomic add (`BPF_ATOMIC | BPF_ADD`) is written out.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({pp} + 0) += {p}",
            "lock *(u64 *)({bp} + 0) += {b}",
            pp = in(reg) &raw mut (*c).packets, p = in(reg) packets,
            bp = in(reg) &raw mut (*c).bytes, b = in(reg) bytes,
            options(nostack, preserves_flags),
        );
    }
}

/// Where the IP header of the packet is, and which family.
#[derive(Clone, Copy)]
enum L3 {
    V4 { off: usize, ihl: usize },
    V6 { off: usize },
}

#[inline(always)]
fn route(ctx: &XdpContext) -> Result<u32, Reason> {
    let cfg = SC_CONFIG.get(0).ok_or(Reason::NoConfig)?;
    let frame_len = (ctx.data_end() - ctx.data()) as u64;

    // L2: Ethernet with at most one 802.1Q tag.
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::Truncated)?;
    // SAFETY: `ptr_at` checked the header lies within the packet.
    let mut ether_type = unsafe { word::load_be16(&raw const (*eth).ether_type) };
    let mut l3_off = ETH_HLEN;
    let tagged = ether_type == ETH_P_8021Q;
    if tagged {
        let tag: *const [[u8; 2]; 2] = ptr_at(ctx, ETH_HLEN).ok_or(Reason::Truncated)?;
        // SAFETY: bounds checked by `ptr_at`.
        ether_type = unsafe { word::load_be16(&raw const (*tag)[1]) };
        l3_off += VLAN_HLEN;
    }
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(Reason::NotIp);
    }

    // L3.
    let l3 = match ether_type {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, l3_off).ok_or(Reason::Truncated)?;
            // SAFETY: bounds checked by `ptr_at`.
            let ip = unsafe { &*ip };
            if ip.ver_ihl >> 4 != 4 {
                return Err(Reason::Truncated);
            }
            let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Err(Reason::Truncated);
            }
            // More-fragments flag or a fragment offset.
            // SAFETY: within the header `ptr_at` checked.
            if unsafe { word::load_be16(&raw const ip.frag_off) } & 0x3fff != 0 {
                return Err(Reason::Fragment);
            }
            if ip.protocol != IPPROTO_UDP {
                return Err(Reason::NotUdp);
            }
            L3::V4 { off: l3_off, ihl }
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off).ok_or(Reason::Truncated)?;
            // SAFETY: bounds checked by `ptr_at`.
            let ip = unsafe { &*ip };
            if ip.ver_tc_flow[0] >> 4 != 6 {
                return Err(Reason::Truncated);
            }
            match ip.next_header {
                IPPROTO_UDP => {}
                // Hop-by-hop, routing, fragment, destination options, AH,
                // mobility, HIP, shim6: headers we do not walk.
                0 | 43 | 44 | 60 | 51 | 135 | 139 | 140 => {
                    return Err(Reason::Ipv6ExtHeader);
                }
                _ => return Err(Reason::NotUdp),
            }
            L3::V6 { off: l3_off }
        }
        _ => return Err(Reason::NotIp),
    };
    let l4_off = match l3 {
        L3::V4 { off, ihl } => off + ihl,
        L3::V6 { off } => off + Ipv6Hdr::LEN,
    };

    // L4.
    let udp: *mut UdpHdr = ptr_at(ctx, l4_off).ok_or(Reason::Truncated)?;
    // SAFETY: bounds checked by `ptr_at`.
    let (dport, udp_len) = unsafe {
        (
            word::load_be16(&raw const (*udp).dest),
            word::load_be16(&raw const (*udp).len) as usize,
        )
    };
    if udp_len < UdpHdr::LEN {
        return Err(Reason::Truncated);
    }
    let (payload_off, payload_len) = (l4_off + UdpHdr::LEN, udp_len - UdpHdr::LEN);
    if !packet::payload_fits(ctx, payload_off, payload_len) {
        return Err(Reason::Truncated);
    }

    // The plan: one parity for every lookup, read once.
    let parity = *SC_ACTIVE.get(0).ok_or(Reason::NoPlan)? & 1;

    // L7: the shared parsers, then the route. Each protocol looks its route
    // up in its own branch (an enum carried out of the branches leaves the
    // verifier unable to tell which one a later lookup came from).
    let (route, l3, tagged) = if dport != 0 && dport == cfg.mqttsn_port {
        // Fixed offsets: parsed from a copy of the header, with the L2/L3
        // layout left in registers.
        let head = packet::mqttsn_head(ctx, payload_off, payload_len);
        let publish = mqttsn::parse_publish(&head)?;
        let ids = SC_IDS.get(parity).ok_or(Reason::NoPlan)?;
        // A zeroed entry: the plan has no route for this id.
        match ids.get(publish.id_index()).filter(|r| r.shard_count != 0) {
            Some(r) => (r, l3, tagged),
            None => {
                count_unrouted(&publish.key(), frame_len);
                return Err(Reason::NoRoute);
            }
        }
    } else if dport != 0 && dport == cfg.coap_port {
        let (key, l3, tagged) = coap_key(ctx, cfg, l3, tagged, payload_off, payload_len)?;
        let routes = SC_ROUTES.get(parity).ok_or(Reason::NoPlan)?;
        // SAFETY: only the control plane writes route maps, and never a map
        // a program may be reading (generation swap), so the value is stable.
        match unsafe { routes.get(&key) } {
            Some(r) => (r, l3, tagged),
            None => {
                count_unrouted(&key, frame_len);
                return Err(Reason::NoRoute);
            }
        }
    } else {
        return Err(Reason::OtherPort);
    };
    let route: &Route = route;
    let l4_off = match l3 {
        L3::V4 { off, ihl } => off + ihl,
        L3::V6 { off } => off + Ipv6Hdr::LEN,
    };
    let udp: *mut UdpHdr = ptr_at(ctx, l4_off).ok_or(Reason::Truncated)?;
    count_topic(route.stats_slot, frame_len);
    if cfg.flags & CONFIG_GROUP_STATS != 0 {
        let sample = cfg.group_sample;
        // One packet in `sample`, at random (a fixed stride could alias
        // with devices publishing in turn), counted `sample` times.
        // SAFETY: plain helper call.
        if sample <= 1 || unsafe { bpf_get_prandom_u32() } % sample == 0 {
            count_group(ctx, l3, route.stats_slot, frame_len, sample.max(1) as u64);
        }
    }
    match route.shard_count {
        1 => {}
        0 => return Err(Reason::NoRoute),
        _ => return Err(Reason::MultiShard),
    }
    // The route's copy of its shard: no second lookup (see `Route`).
    let shard: &Shard = &route.first;
    // Aim the redirect first: the helper only records the target (the
    // frame moves after the program returns) and says whether the egress
    // slot is filled, which saves a separate devmap lookup. If a check
    // below then sends the packet up instead, the recorded target is
    // simply never used.
    if SC_EGRESS.redirect(shard.egress_slot, xdp_action::XDP_PASS as u64)
        != Ok(xdp_action::XDP_REDIRECT)
    {
        return Err(Reason::EgressMissing);
    }

    // Validate everything, then write: a packet handed back to the stack
    // must leave this function untouched.
    let dst_mac = match l3 {
        L3::V4 { off, .. } => rewrite_v4(ctx, off, udp, shard)?,
        L3::V6 { off } => rewrite_v6(ctx, off, udp, shard)?,
    };
    let mac_off = if tagged { VLAN_HLEN } else { 0 };
    let macs: *mut [u8; 12] = ptr_at(ctx, mac_off).ok_or(Reason::Truncated)?;
    let src = shard.src_mac;
    // SAFETY: bounds checked by `ptr_at` (the 12 MAC bytes precede the
    // inner EtherType, which lies within the checked span).
    unsafe {
        let macs = macs as *mut u8;
        word::store64(
            macs,
            dst_mac | (u16::from_ne_bytes([src[0], src[1]]) as u64) << 48,
        );
        word::store32(
            macs.add(8),
            u32::from_ne_bytes([src[2], src[3], src[4], src[5]]),
        );
    }
    count(Reason::Redirected, frame_len);
    if tagged {
        // The MACs now sit in front of the inner EtherType: dropping the
        // first 4 bytes leaves an untagged frame for the egress.
        // SAFETY: plain helper call on our own context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_HLEN as i32) } != 0 {
            return Ok(xdp_action::XDP_ABORTED);
        }
    }
    Ok(xdp_action::XDP_REDIRECT)
}

/// The topic key of a CoAP publish, with the header layout it arrived
/// with.
///
/// The option walk is a bounded loop the verifier follows path by path, so
/// the layout is parked in untracked per-CPU memory while it runs (every
/// L2/L3 variant then reaches the loop in the same state and it is
/// verified once, not once per variant), then reloaded and re-bounded.
#[inline(always)]
fn coap_key(
    ctx: &XdpContext,
    cfg: &Config,
    l3: L3,
    tagged: bool,
    payload_off: usize,
    payload_len: usize,
) -> Result<(TopicKey, L3, bool), Reason> {
    let scratch = SC_SCRATCH.get_ptr_mut(0).ok_or(Reason::NoConfig)?;
    let (family, l3_off, ihl) = match l3 {
        L3::V4 { off, ihl } => (4u64, off, ihl),
        L3::V6 { off } => (6u64, off, 0),
    };
    // SAFETY: this CPU's scratch slot; XDP does not migrate between CPUs.
    unsafe {
        core::ptr::write_volatile(
            &raw mut (*scratch).parked,
            [family | (tagged as u64) << 8, l3_off as u64, ihl as u64],
        );
    }
    let window = SC_COAP_WINDOW.get_ptr_mut(0).ok_or(Reason::NoConfig)?;
    let (msg, cut) = WindowPayload::load(ctx, payload_off, payload_len, window, scratch)
        .ok_or(Reason::Truncated)?;
    let key = match coap::parse_publish_from(
        &msg,
        &cfg.prefix,
        cfg.prefix_len as usize,
        &cfg.prefix_start,
    ) {
        Ok(p) => p.key,
        // Within the window, a message running out is a message cut
        // short by the window, not a malformed one.
        Err(Reason::CoapMalformed) if cut => return Err(Reason::CoapBeyondWindow),
        Err(r) => return Err(r),
    };

    // SAFETY: as above.
    let [fam_tag, l3_off, ihl] = unsafe { core::ptr::read_volatile(&raw const (*scratch).parked) };
    let tagged = fam_tag >> 8 != 0;
    let (l3_off, ihl) = (l3_off as usize, ihl as usize);
    if l3_off > ETH_HLEN + VLAN_HLEN || ihl > 60 {
        return Err(Reason::Truncated);
    }
    let l3 = match fam_tag & 0xff {
        4 => L3::V4 { off: l3_off, ihl },
        _ => L3::V6 { off: l3_off },
    };
    Ok((key, l3, tagged))
}

// The header rewrite composes MAC and header words in native order.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "shardcast's XDP program is built for little-endian BPF (bpfel)"
);

/// The UDP header's destination port and checksum fields, for word access.
#[inline(always)]
fn udp_fields(udp: *mut UdpHdr) -> (*mut u8, *mut u8) {
    // SAFETY: field addresses only; no access.
    unsafe {
        (
            (&raw mut (*udp).dest).cast(),
            (&raw mut (*udp).check).cast(),
        )
    }
}

/// The destination port (native order) of a publish's copy for `shard`:
/// the shard's, or with port 0 the publish's own `old` (MQTT-SN and CoAP
/// then stay apart on a shared group).
#[inline(always)]
fn shard_port(shard: &Shard, old: u16) -> u16 {
    if shard.port == 0 {
        old
    } else {
        shard.port.to_be()
    }
}

/// IPv4: destination → group, TTL − 1, port, both checksums patched.
/// Returns the destination MAC (the group's, RFC 1112) as the low 48 bits
/// of a native word, ready to store.
#[inline(always)]
fn rewrite_v4(
    ctx: &XdpContext,
    off: usize,
    udp: *mut UdpHdr,
    shard: &Shard,
) -> Result<u64, Reason> {
    if shard.flags & SHARD_HAS_V4 == 0 {
        return Err(Reason::NoGroupForFamily);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, off).ok_or(Reason::Truncated)?;
    // SAFETY: bounds checked by `ptr_at` (here and in the caller for `udp`).
    unsafe {
        let ttl = (*ip).ttl;
        if ttl <= 1 {
            return Err(Reason::TtlExpired);
        }
        let group = u32::from_ne_bytes(shard.group_v4);
        let daddr = (&raw mut (*ip).daddr).cast::<u8>();
        let old_daddr = word::load32(daddr);
        // TTL shares a checksummed 16-bit word with the protocol.
        let ttl_word = word::load16(&raw const (*ip).ttl);
        let ip_check = (&raw mut (*ip).check).cast::<u8>();
        let mut ipc = Patch::new(word::load16(ip_check));
        ipc.replace16(ttl_word, u16::from_ne_bytes([ttl - 1, (*ip).protocol]));
        ipc.replace32(old_daddr, group);
        (*ip).ttl = ttl - 1;
        word::store32(daddr, group);
        word::store16(ip_check, ipc.finish());

        let (dest, udp_check) = udp_fields(udp);
        let old_port = word::load16(dest);
        let new_port = shard_port(shard, old_port);
        let check = word::load16(udp_check);
        if check != 0 {
            let mut uc = Patch::new(check);
            uc.replace32(old_daddr, group);
            uc.replace16(old_port, new_port);
            word::store16(udp_check, uc.finish_udp());
        }
        word::store16(dest, new_port);
        // 01:00:5e, then the group's low 23 bits.
        Ok(0x5e_0001 | ((group as u64 & 0xffff_7f00) << 16))
    }
}

/// IPv6: destination → group, hop limit − 1, port, UDP checksum patched.
/// Returns the destination MAC (33:33 and the group's low 32 bits, RFC
/// 2464) as the low 48 bits of a native word.
#[inline(always)]
fn rewrite_v6(
    ctx: &XdpContext,
    off: usize,
    udp: *mut UdpHdr,
    shard: &Shard,
) -> Result<u64, Reason> {
    if shard.flags & SHARD_HAS_V6 == 0 {
        return Err(Reason::NoGroupForFamily);
    }
    let ip: *mut Ipv6Hdr = ptr_at(ctx, off).ok_or(Reason::Truncated)?;
    // SAFETY: bounds checked by `ptr_at` (here and in the caller for `udp`).
    unsafe {
        let hops = (*ip).hop_limit;
        if hops <= 1 {
            return Err(Reason::TtlExpired);
        }
        let (dest, udp_check) = udp_fields(udp);
        let check = word::load16(udp_check);
        if check == 0 {
            return Err(Reason::ZeroChecksumV6);
        }
        let g = &shard.group_v6;
        let group = [
            u32::from_ne_bytes([g[0], g[1], g[2], g[3]]),
            u32::from_ne_bytes([g[4], g[5], g[6], g[7]]),
            u32::from_ne_bytes([g[8], g[9], g[10], g[11]]),
            u32::from_ne_bytes([g[12], g[13], g[14], g[15]]),
        ];
        let old_port = word::load16(dest);
        let new_port = shard_port(shard, old_port);
        let daddr = (&raw mut (*ip).daddr).cast::<u8>();
        let mut uc = Patch::new(check);
        for (i, &w) in group.iter().enumerate() {
            uc.replace32(word::load32(daddr.add(4 * i)), w);
        }
        uc.replace16(old_port, new_port);
        (*ip).hop_limit = hops - 1;
        for (i, &w) in group.iter().enumerate() {
            word::store32(daddr.add(4 * i), w);
        }
        word::store16(dest, new_port);
        word::store16(udp_check, uc.finish_udp());
        Ok(0x3333 | (group[3] as u64) << 16)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path
    // (it would be an unbounded loop), so this is never reached at run time.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

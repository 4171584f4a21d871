//! The counters the data plane keeps: per reason (every verdict), per
//! topic slot, per unrouted topic key, and per (topic, device group).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_get_smp_processor_id},
    programs::XdpContext,
};
use router_common::{
    maps::{
        CONFIG_GROUP_STATS, Config, Counter, DEVICE_INDEX_ENTRIES, DeviceAddr, GROUP_CELL_LINES,
        GROUP_CELL_WAYS, GROUP_UNKNOWN, GroupStatKey, group_cell_key, group_cell_line,
    },
    reason::Reason,
    topic::TopicKey,
};

use crate::{
    maps::{
        SC_DEVICE_INDEX, SC_DEVICES, SC_GROUP_CELLS, SC_GROUP_STATS, SC_REASONS, SC_TOPIC_STATS,
        SC_UNROUTED,
    },
    packet::{self, L3},
};

/// Counts a routed publish: per topic, and per (topic, device group)
/// when the config asks for group telemetry.
#[inline(always)]
pub(crate) fn routed(ctx: &XdpContext, cfg: &Config, l3: L3, slot: u32, bytes: u64) {
    count_topic(slot, bytes);
    if cfg.flags & CONFIG_GROUP_STATS != 0 {
        let sample = cfg.group_sample;
        // One packet in `sample`, at random (a fixed stride could alias
        // with devices publishing in turn), counted `sample` times.
        // SAFETY: plain helper call.
        if sample <= 1 || unsafe { bpf_get_prandom_u32() } % sample == 0 {
            count_group(ctx, l3, slot, bytes, sample.max(1) as u64);
        }
    }
}

#[inline(always)]
pub(crate) fn count(reason: Reason, bytes: u64) {
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
pub(crate) fn count_unrouted(key: &TopicKey, bytes: u64) {
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

/// Counts a routed publish under (topic slot, its source's device group):
/// in this CPU's line of `SC_GROUP_CELLS` when it has room, else in the
/// shared LRU `SC_GROUP_STATS`.
#[inline(always)]
fn count_group(ctx: &XdpContext, l3: L3, slot: u32, bytes: u64, weight: u64) {
    let src = match l3 {
        L3::V4 { off, .. } => packet::saddr_v4_words(ctx, off),
        L3::V6 { off } => packet::saddr_v6_words(ctx, off),
    };
    let Some(src) = src else { return };
    let group = device_group(src);
    let key = group_cell_key(slot, group);
    // SAFETY: plain helper call (inlined by the verifier on x86-64).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let line = cpu
        .wrapping_mul(GROUP_CELL_LINES)
        .wrapping_add(group_cell_line(key));
    if let Some(l) = SC_GROUP_CELLS.get_ptr_mut(line) {
        // SAFETY: this CPU's line of a live map value; no other CPU
        // writes it (XDP runs with migration off).
        let l = unsafe { &mut *l };
        for w in 0..GROUP_CELL_WAYS {
            if l.keys[w] == key {
                l.packets[w] += weight;
                return;
            }
            if l.keys[w] == 0 {
                // The count first: a reader that sees the key sees it.
                l.packets[w] = weight;
                l.keys[w] = key;
                return;
            }
        }
    }
    count_group_shared(GroupStatKey { slot, group }, bytes, weight);
}

/// The device group of a source address: its entry in `SC_DEVICE_INDEX`,
/// else (another device holds the entry) its entry in `SC_DEVICES`. A free
/// entry means no device with that index: unknown, without a hash lookup.
#[inline(always)]
fn device_group(src: [u64; 2]) -> u32 {
    let index = ((src[1] >> 32) as u32).swap_bytes() & (DEVICE_INDEX_ENTRIES - 1);
    let Some(e) = SC_DEVICE_INDEX.get_ptr(index) else {
        return GROUP_UNKNOWN;
    };
    // SAFETY: a live map value; read once (the control plane may rewrite
    // it: a device then counts under its old group for a moment).
    let (a, b, group) = unsafe {
        let p: *const u64 = (&raw const (*e).addr).cast();
        (
            core::ptr::read_volatile(p),
            core::ptr::read_volatile(p.add(1)),
            core::ptr::read_volatile(&raw const (*e).group),
        )
    };
    if a == src[0] && b == src[1] {
        return group;
    }
    if a == 0 && b == 0 {
        return GROUP_UNKNOWN;
    }
    device_group_hashed(src)
}

#[inline(never)]
fn device_group_hashed(src: [u64; 2]) -> u32 {
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&src[0].to_ne_bytes());
    addr[8..].copy_from_slice(&src[1].to_ne_bytes());
    // SAFETY: the value is copied out at once.
    unsafe { SC_DEVICES.get(DeviceAddr { addr }) }
        .copied()
        .unwrap_or(GROUP_UNKNOWN)
}

/// The shared LRU counter of (topic slot, device group).
#[inline(never)]
fn count_group_shared(key: GroupStatKey, bytes: u64, weight: u64) {
    if let Some(c) = SC_GROUP_STATS.get_ptr_mut(key) {
        add_shared(c, weight, bytes * weight);
        return;
    }
    let c = Counter {
        packets: weight,
        bytes: bytes * weight,
    };
    // Another CPU may have added the key since the lookup: then add to its.
    if SC_GROUP_STATS.insert(key, c, BPF_NOEXIST as u64).is_err()
        && let Some(c) = SC_GROUP_STATS.get_ptr_mut(key)
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

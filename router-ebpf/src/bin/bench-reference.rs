//! Reference XDP programs for `cargo xtask bench`, measured side by side
//! with the router so its cost reads as a ratio on a noisy machine:
//!
//! - `ref_floor`: parses Ethernet/IPv4/UDP and returns `XDP_TX`;
//! - `ref_forwarder`: the same, plus one hash-map lookup keyed by 8 payload
//!   bytes and a destination rewrite (MAC, IP, port) before `XDP_TX`: the
//!   least any table-driven forwarder does;
//! - `ref_call`: the floor plus one call of a helper that returns at once
//!   (`bpf_get_numa_node_id`): what a call out of a program costs on the
//!   host, which differs most between hosts (their return mitigations).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::HashMap,
    helpers::bpf_get_numa_node_id,
    macros::{btf_map, xdp},
    programs::XdpContext,
};

#[btf_map]
static REF_TABLE: HashMap<u64, u64, 1024> = HashMap::new();

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Offset of the UDP payload of an untagged IPv4/UDP frame.
#[inline(always)]
fn udp_payload(ctx: &XdpContext) -> Option<usize> {
    let eth: *const [u8; 14] = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    let eth = unsafe { *eth };
    if eth[12] != 0x08 || eth[13] != 0x00 {
        return None;
    }
    let ip: *const [u8; 20] = ptr_at(ctx, 14)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { *ip };
    if ip[9] != 17 {
        return None;
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let udp: *const [u8; 8] = ptr_at(ctx, 14 + ihl)?;
    // SAFETY: bounds checked by `ptr_at`.
    let _ = unsafe { *udp };
    Some(14 + ihl + 8)
}

#[xdp]
pub fn ref_floor(ctx: XdpContext) -> u32 {
    match udp_payload(&ctx) {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn ref_call(ctx: XdpContext) -> u32 {
    match udp_payload(&ctx) {
        // SAFETY: a helper without arguments.
        Some(_) if unsafe { bpf_get_numa_node_id() } >= 0 => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn ref_forwarder(ctx: XdpContext) -> u32 {
    let Some(off) = udp_payload(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(key) = ptr_at::<[u8; 8]>(&ctx, off) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds checked by `ptr_at`.
    let key = u64::from_le_bytes(unsafe { *key });
    // SAFETY: value copied out at once.
    let Some(&dst) = (unsafe { REF_TABLE.get(key) }) else {
        return xdp_action::XDP_PASS;
    };
    let d = dst.to_be_bytes();
    let ihl = off - 14 - 8;
    if let (Some(eth), Some(daddr), Some(port)) = (
        ptr_at::<[u8; 6]>(&ctx, 0),
        ptr_at::<[u8; 4]>(&ctx, 14 + 16),
        ptr_at::<[u8; 2]>(&ctx, 14 + ihl + 2),
    ) {
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            *eth = [0x01, 0x00, 0x5e, d[1] & 0x7f, d[2], d[3]];
            *daddr = [d[0], d[1], d[2], d[3]];
            *port = [d[4], d[5]];
        }
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: unreachable in a verified program.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

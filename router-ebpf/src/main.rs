//! The shardcast XDP router.
//!
//! For each frame: Ethernet (at most one 802.1Q tag) → IPv4/IPv6 → UDP to the
//! MQTT-SN or CoAP port → the shared publish parser from `router-common` →
//! topic key → route in the active plan generation → shard → rewrite to the
//! shard's multicast group → redirect to its egress. Anything else goes to
//! the kernel stack (`XDP_PASS`) and is counted by reason: the router never
//! drops what it does not understand.
//!
//! - [`maps`]: the maps and what each holds (layout and the generation
//!   swap: `router_common::maps`);
//! - [`route`]: one frame's way through the headers, the plan and the
//!   shard;
//! - [`fast`]: the same way for the most common frames (untagged IPv4 or
//!   IPv6, an MQTT-SN publish or a CoAP publish of the usual shape to one
//!   shard), at fixed offsets, the CoAP message read in place;
//! - [`rewrite`]: the header rewrite, the XDP program's only packet writes;
//! - [`fanout`]: multi-shard publishes, handed from XDP to a broadcast or
//!   to the TC program `shardcast_fanout`: one rewritten copy per shard;
//! - [`broadcast`]: the copy program, which rewrites each copy of a
//!   broadcast for its shard on its way out;
//! - [`counters`]: per reason, topic, unrouted key and device group;
//! - [`iterator`]: the map iterator the daemon reads group counters with;
//! - [`packet`]: header layouts and the audited helpers that touch packet
//!   memory.
#![no_std]
#![no_main]
// BPF inline assembly (`packet::copy16`); router-ebpf builds with nightly.
#![feature(asm_experimental_arch)]

mod broadcast;
mod counters;
mod fanout;
mod fast;
mod iterator;
mod maps;
mod packet;
mod rewrite;
mod route;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn shardcast_router(ctx: XdpContext) -> u32 {
    route::route(&ctx)
}

/// The fan-out of multi-shard publishes (TC ingress of the router's
/// interfaces): one rewritten copy per shard (see [`fanout`]).
#[classifier]
pub fn shardcast_fanout(ctx: TcContext) -> i32 {
    fanout::fan_out(&ctx)
}

/// Each copy of a broadcast multi-shard publish, rewritten for its shard
/// (the egress program of the device-map entries; see [`broadcast`]).
#[xdp(map = "devmap")]
pub fn shardcast_copy(ctx: XdpContext) -> u32 {
    broadcast::copy(&ctx)
}

/// Passes everything. Attached to the peer of a veth egress: veth delivers
/// XDP-redirected frames only to a peer that runs an XDP program.
#[xdp]
pub fn shardcast_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program with a reachable panic path, so this
    // never runs; a loop (as aya's template has) rather than
    // `unreachable_unchecked`, so that a panic path the optimiser failed to
    // remove is refused by the verifier, never undefined behaviour.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

//! The copy program: each copy of a broadcast multi-shard publish,
//! rewritten for its shard on its way out (a device-map egress program).
//!
//! The XDP program redirects a multi-shard publish into the device map its
//! route names (`SC_FANOUT`) with `BPF_F_BROADCAST` (see
//! `fanout::hand_off`): one entry per shard, each the shard's egress, so
//! the kernel queues k identical frames (k − 1 clones and the frame
//! itself) on the egresses' per-CPU bulk queues and, when it flushes a
//! queue, runs this program on each frame before the transmit. Nothing in
//! a copy says which shard it is for; their order does. The kernel queues
//! one publish's copies to an egress one after the other and runs the
//! program over the queue in order, on the CPU that queued them, so the
//! copy program counts them: the hand-off gave the publish a per-CPU
//! number (`FanoutMeta::nonce`), and the i-th frame with that number on
//! an egress is the copy of the i-th of the route's shards that leave by
//! that egress (`SC_FANOUT_SEQ`, which also keeps those shards, found at
//! the first such copy). Publishes handed off in one NAPI poll are
//! flushed together, but never interleaved: each one's copies to an
//! egress are queued whole.
//!
//! A device's bulk queue runs one egress program for everything in it,
//! whichever entry the first frame came through: the control plane gives
//! the single-shard egress map's entries this program too, and it passes
//! frames without our metadata untouched.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use router_common::{
    maps::{FANOUT_MAGIC, FANOUT_SINGLE_EGRESS, FanoutMeta, MAX_ROUTE_SHARDS, Shard},
    reason::Reason,
};

use crate::{
    counters::count,
    fanout,
    maps::{SC_EGRESS_IF, SC_FANOUT_SEQ, SC_SHARDS},
    packet::{self, ETH_HLEN, L3, UdpHdr, ptr_at, word},
    rewrite,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// One frame on its way out of an egress: a copy of ours is rewritten for
/// its shard and sent (`XDP_PASS` goes on to the transmit), or dropped
/// and counted when it cannot be; any other frame passes untouched.
#[inline(always)]
pub(crate) fn copy(ctx: &XdpContext) -> u32 {
    const META: usize = core::mem::size_of::<FanoutMeta>();
    let meta = ctx.metadata();
    if meta + META > ctx.data() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: `META` bytes of metadata, checked above.
    let m = unsafe { fanout::read_meta(meta as *const u8) };
    if m.magic != FANOUT_MAGIC {
        return xdp_action::XDP_PASS;
    }
    // The copy must not pass for a hand-off downstream (a veth peer that
    // is another router's ingress, with its TC fan-out): its magic goes.
    // A store, not `bpf_xdp_adjust_meta` (a helper call that would also
    // invalidate every packet pointer); a NIC does not send metadata.
    // SAFETY: within the metadata checked above.
    unsafe { word::store32_at::<{ fanout::META_MAGIC }>(meta as *mut u8, 0) };
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    match rewrite_copy(ctx, &m) {
        Ok(()) => {
            count(Reason::Redirected, frame_len);
            xdp_action::XDP_PASS
        }
        Err(reason) => {
            count(reason, frame_len);
            xdp_action::XDP_DROP
        }
    }
}

/// Finds which copy this is, its shard, and rewrites it.
#[inline(always)]
fn rewrite_copy(ctx: &XdpContext, m: &FanoutMeta) -> Result<(), Reason> {
    let seq = SC_FANOUT_SEQ.get_ptr_mut(0).ok_or(Reason::NoConfig)?;
    // The generation the publish was routed by: the same route that chose
    // this broadcast.
    let parity = m.parity as u32 & 1;
    // SAFETY: reading the context's own field.
    let egress = unsafe { (*ctx.ctx).egress_ifindex };
    // SAFETY (every access to `*seq`): this CPU's entry; the program does
    // not migrate between CPUs.
    let shard: &Shard = if unsafe { (*seq).seen != m.nonce || (*seq).egress != egress } {
        // A publish's first copy to this egress: the route's shards that
        // leave here, kept for the others (none kept if the route has
        // none: then they fail alike).
        unsafe {
            (*seq).seen = m.nonce;
            (*seq).egress = egress;
            (*seq).next = 1;
            (*seq).count = 0;
        }
        let route = fanout::route_of(m, parity)?;
        if route.fanout as u32 <= FANOUT_SINGLE_EGRESS {
            // Every shard leaves by this egress.
            unsafe {
                (*seq).count = route.shard_count as u32;
                (*seq).shards = route.shards;
            }
            &route.first
        } else {
            // Shards on several egresses: this one's, in route order.
            let shards = SC_SHARDS.get(parity).ok_or(Reason::NoPlan)?;
            let count = route.shard_count as usize;
            let mut n = 0usize;
            for i in 0..MAX_ROUTE_SHARDS {
                if i >= count {
                    break;
                }
                let id = route.shards[i];
                let here = shards
                    .get(id as u32)
                    .is_some_and(|s| SC_EGRESS_IF.get(s.egress_slot).copied() == Some(egress));
                if here {
                    unsafe { (*seq).shards[n & (MAX_ROUTE_SHARDS - 1)] = id };
                    n += 1;
                }
            }
            unsafe { (*seq).count = n as u32 };
            if n == 0 {
                return Err(Reason::EgressMissing);
            }
            let id = unsafe { (*seq).shards[0] };
            shards.get(id as u32).ok_or(Reason::NoRoute)?
        }
    } else {
        let (index, count) = unsafe {
            let i = (*seq).next;
            (*seq).next = i + 1;
            (i as usize, (*seq).count as usize)
        };
        // More copies than the route has shards here: not from this
        // route's device map (never, short of a bug), or its first copy
        // failed.
        if index >= count.min(MAX_ROUTE_SHARDS) {
            return Err(Reason::NoRoute);
        }
        let id = unsafe { (*seq).shards[index & (MAX_ROUTE_SHARDS - 1)] };
        SC_SHARDS
            .get(parity)
            .ok_or(Reason::NoPlan)?
            .get(id as u32)
            .ok_or(Reason::NoRoute)?
    };
    // The hand-off stripped any VLAN tag: Ethernet, then IP.
    let l3 = match packet::be16_at(ctx, 12).ok_or(Reason::Truncated)? {
        ETH_P_IP => {
            let ip = packet::ipv4_at(ctx, ETH_HLEN).ok_or(Reason::Truncated)?;
            let ihl = ip.ihl();
            if ihl < 20 {
                return Err(Reason::Truncated);
            }
            L3::V4 { off: ETH_HLEN, ihl }
        }
        ETH_P_IPV6 => L3::V6 { off: ETH_HLEN },
        _ => return Err(Reason::NotIp),
    };
    let udp: *mut UdpHdr = ptr_at(ctx, l3.l4_off()).ok_or(Reason::Truncated)?;
    rewrite::frame(ctx, l3, false, udp, shard)
}

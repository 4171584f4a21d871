//! Multi-shard publishes: one rewritten copy per shard, by one of two
//! ways.
//!
//! The XDP program checks what every copy would check, writes the route's
//! identity into the frame's XDP metadata ([`FanoutMeta`]) and drops a
//! VLAN tag ([`hand_off`]). Then:
//!
//! - **broadcast** (where the kernel took the copy program): it redirects
//!   the frame into the device map the route names with
//!   `BPF_F_BROADCAST` (an entry per shard, each the shard's egress); the
//!   kernel queues one copy per entry, and the copy program (`broadcast`)
//!   rewrites each for its shard on the way out. No skb is built.
//! - **TC** (otherwise): it passes the frame up (`fanned_out`);
//!   `shardcast_fanout`, at TC ingress of the same interface, finds the
//!   metadata, looks the route up in the plan generation active then, and
//!   for each shard rewrites the headers and `bpf_clone_redirect`s a copy
//!   to the shard's egress; the last copy is the frame itself, redirected.
//!
//! Each copy is counted `redirected` (or why it could not go).
//!
//! On the TC way the copies are computed from the headers as they
//! arrived, not from the previous copy, so each is exactly what the
//! single-shard XDP path would have sent for that shard.
//! `bpf_skb_store_bytes` makes the skb's data private before writing (a
//! clone shares it), so a copy already sent never sees the next one's
//! bytes.

use aya_ebpf::{
    bindings::{BPF_F_BROADCAST, TC_ACT_OK, TC_ACT_SHOT, xdp_action, xdp_md},
    btf_maps::DevMap,
    helpers::{bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_meta},
    programs::{TcContext, XdpContext},
};
use router_common::{
    checksum::Patch,
    maps::{
        FANOUT_BY_ID, FANOUT_BY_NAME, FANOUT_MAGIC, FanoutMeta, MAX_ROUTE_SHARDS, Route,
        SHARD_HAS_V4, SHARD_HAS_V6, Shard,
    },
    reason::Reason,
    topic::TopicKey,
};

use crate::{
    counters::{self, count},
    maps::{self, SC_EGRESS_IF, SC_FANOUT, SC_FANOUT_SEQ, SC_IDS, SC_SHARDS},
    packet::{ETH_HLEN, Ipv4Hdr, Ipv6Hdr, L3, UdpHdr, VLAN_HLEN, ptr_at, word},
};

/// A multi-shard publish, from whichever path found its route (the fast
/// path or the general one): counted as routed, then handed off
/// ([`hand_off`]) by broadcast where the route names a device map whose
/// first egress is still there, else to the TC program. `l3` and
/// `tagged`: where the frame's headers are; `kind` and `key`: the
/// route's identity for the copies; `parity`: the generation `route`
/// came from, which the copies follow. Returns the verdict; a refusal is
/// counted by reason and the frame passed up.
#[inline(always)]
pub(crate) fn multi_shard(
    ctx: &XdpContext,
    l3: L3,
    tagged: bool,
    route: &Route,
    kind: u16,
    key: u64,
    parity: u32,
) -> u32 {
    let at = At::pack(l3, tagged);
    multi_shard_call(ctx.ctx, route, at, key, kind as u64 | (parity as u64) << 16) as u32
}

/// [`multi_shard`] as a BPF function of its own, so that the fast path
/// can call it (where it would otherwise be inlined once per family and
/// protocol) and a multi-shard publish is parsed once: the fast path used
/// to leave it to the general path, which parsed the frame again from
/// the start. A call takes five arguments: the headers' place goes as one
/// scalar ([`At`]), the kind and the parity as another (the parity from
/// bit 16).
#[inline(never)]
fn multi_shard_call(raw: *mut xdp_md, route: &Route, at: u64, key: u64, kind_parity: u64) -> u64 {
    let ctx = XdpContext::new(raw);
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    match multi_shard_inner(&ctx, route, At(at), key, kind_parity, frame_len) {
        Ok(action) => action as u64,
        Err(reason) => {
            count(reason, frame_len);
            xdp_action::XDP_PASS as u64
        }
    }
}

#[inline(always)]
fn multi_shard_inner(
    ctx: &XdpContext,
    route: &Route,
    at: At,
    key: u64,
    kind_parity: u64,
    frame_len: u64,
) -> Result<u32, Reason> {
    let (l3, tagged) = at.unpack()?;
    let udp: *mut UdpHdr = ptr_at(ctx, l3.l4_off()).ok_or(Reason::Truncated)?;
    counters::routed(ctx, maps::config(), l3, route.stats_slot, frame_len);
    let broadcast = match route.fanout {
        0 => None,
        n => SC_FANOUT.get(n as u32 - 1),
    }
    // An egress gone (the kernel empties its device-map entries): the TC
    // way counts each copy it cannot send. (Only the first entry is
    // checked: of a route over several egresses, the copies to another
    // that vanished are not sent, uncounted.)
    .filter(|m| m.get_ifindex(0).is_some());
    hand_off(
        ctx,
        l3,
        tagged,
        udp,
        kind_parity as u16,
        key,
        (kind_parity >> 16) as u32 & 1,
        frame_len,
        broadcast,
    )
}

/// Where a frame's headers are, as one scalar: bit 0 set for IPv6, bit 1
/// for a VLAN tag, the IP header's offset in bits 8-15 and the IPv4
/// header's length in bits 16-23.
#[derive(Clone, Copy)]
struct At(u64);

impl At {
    #[inline(always)]
    fn pack(l3: L3, tagged: bool) -> u64 {
        let t = (tagged as u64) << 1;
        match l3 {
            L3::V4 { off, ihl } => t | (off as u64) << 8 | (ihl as u64) << 16,
            L3::V6 { off } => 1 | t | (off as u64) << 8,
        }
    }

    /// Bounded again, so that the verifier can follow the offsets.
    #[inline(always)]
    fn unpack(self) -> Result<(L3, bool), Reason> {
        let off = (self.0 >> 8) as usize & 0xff;
        let ihl = (self.0 >> 16) as usize & 0xff;
        if off > ETH_HLEN + VLAN_HLEN || ihl > 60 {
            return Err(Reason::Truncated);
        }
        let l3 = if self.0 & 1 != 0 {
            L3::V6 { off }
        } else {
            L3::V4 { off, ihl }
        };
        Ok((l3, self.0 & 2 != 0))
    }
}

/// XDP side: hands a multi-shard publish to the copy program by a
/// broadcast into `broadcast` (the route's device map), or without one to
/// the TC fan-out program. Checks first what would make every copy go to
/// the stack (TTL, a zero IPv6 UDP checksum), so such a frame goes up
/// untouched, as on the single-shard path.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn hand_off(
    ctx: &XdpContext,
    l3: L3,
    tagged: bool,
    udp: *mut UdpHdr,
    kind: u16,
    key: u64,
    parity: u32,
    frame_len: u64,
    broadcast: Option<&DevMap<MAX_ROUTE_SHARDS>>,
) -> Result<u32, Reason> {
    match l3 {
        L3::V4 { off, .. } => {
            let ip: *mut Ipv4Hdr = ptr_at(ctx, off).ok_or(Reason::Truncated)?;
            // SAFETY: bounds checked by `ptr_at`.
            if unsafe { (*ip).ttl } <= 1 {
                return Err(Reason::TtlExpired);
            }
        }
        L3::V6 { off } => {
            let ip: *mut Ipv6Hdr = ptr_at(ctx, off).ok_or(Reason::Truncated)?;
            // SAFETY: bounds checked by `ptr_at` (here and in the caller).
            unsafe {
                if (*ip).hop_limit <= 1 {
                    return Err(Reason::TtlExpired);
                }
                if word::load16((&raw const (*udp).check).cast()) == 0 {
                    return Err(Reason::ZeroChecksumV6);
                }
            }
        }
    }
    const META: usize = core::mem::size_of::<FanoutMeta>();
    // SAFETY: plain helper call on our own context. A driver without XDP
    // metadata refuses: the frame then goes up as before, unrouted.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(META as i32)) } != 0 {
        return Err(Reason::MultiShard);
    }
    let meta = ctx.metadata();
    if meta + META > ctx.data() {
        return Err(Reason::MultiShard);
    }
    let (nonce, parity) = match broadcast {
        Some(_) => {
            let seq = SC_FANOUT_SEQ.get_ptr_mut(0).ok_or(Reason::NoConfig)?;
            // SAFETY: this CPU's entry; XDP does not migrate between CPUs.
            let n = unsafe {
                let n = (*seq).issued.wrapping_add(1);
                (*seq).issued = n;
                n
            };
            (n, parity as u16)
        }
        None => (0, 0),
    };
    // SAFETY: `META` bytes at `meta` lie before `data`, checked above.
    unsafe {
        write_meta(
            meta as *mut u8,
            &FanoutMeta {
                magic: FANOUT_MAGIC,
                kind,
                parity,
                key,
                nonce,
            },
        );
    }
    if tagged {
        // Move the MACs over the tag, then drop the 4 bytes in front: the
        // stack and the fan-out program see an untagged frame (the kernel
        // moves the metadata along).
        let macs: *mut [u8; 16] = ptr_at(ctx, 0).ok_or(Reason::Truncated)?;
        // SAFETY: 16 bytes checked by `ptr_at`; all loads before stores.
        unsafe {
            let p = macs as *mut u8;
            let a = word::load64(p);
            let b = word::load32(p.add(8));
            word::store64(p.add(VLAN_HLEN), a);
            word::store32(p.add(VLAN_HLEN + 8), b);
        }
        // SAFETY: plain helper call on our own context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_HLEN as i32) } != 0 {
            return Ok(xdp_action::XDP_ABORTED);
        }
    }
    match broadcast {
        Some(map) => {
            count(Reason::Broadcast, frame_len);
            // The index is ignored by a broadcast; the low bits of the
            // flags (the verdict of a failed lookup) likewise.
            Ok(match map.redirect(0, BPF_F_BROADCAST as u64) {
                Ok(action) | Err(action) => action,
            })
        }
        None => {
            count(Reason::FannedOut, frame_len);
            Ok(xdp_action::XDP_PASS)
        }
    }
}

/// Writes the hand-off's metadata at `p`: a word store per field. A
/// `write_unaligned` of the struct (as it was) goes byte by byte, about
/// 50 instructions, and its read as many on every copy.
///
/// # Safety
/// `p` must point to `size_of::<FanoutMeta>()` writable bytes verified in
/// bounds.
#[inline(always)]
unsafe fn write_meta(p: *mut u8, m: &FanoutMeta) {
    // SAFETY: per the function's contract; the offsets are the fields'.
    unsafe {
        word::store32_at::<{ META_MAGIC }>(p, m.magic);
        word::store16_at::<{ META_KIND }>(p, m.kind);
        word::store16_at::<{ META_PARITY }>(p, m.parity);
        word::store64_at::<{ META_KEY }>(p, m.key);
        word::store64_at::<{ META_NONCE }>(p, m.nonce);
    }
}

/// Reads the hand-off's metadata at `p`, a word load per field (see
/// [`write_meta`]).
///
/// # Safety
/// `p` must point to `size_of::<FanoutMeta>()` readable bytes verified in
/// bounds.
#[inline(always)]
pub(crate) unsafe fn read_meta(p: *const u8) -> FanoutMeta {
    // SAFETY: per the function's contract; the offsets are the fields'.
    unsafe {
        FanoutMeta {
            magic: word::load32_at::<{ META_MAGIC }>(p),
            kind: word::load16_at::<{ META_KIND }>(p),
            parity: word::load16_at::<{ META_PARITY }>(p),
            key: word::load64_at::<{ META_KEY }>(p),
            nonce: word::load64_at::<{ META_NONCE }>(p),
        }
    }
}

/// The fields' offsets in [`FanoutMeta`], as instruction offsets.
pub(crate) const META_MAGIC: i16 = core::mem::offset_of!(FanoutMeta, magic) as i16;
const META_KIND: i16 = core::mem::offset_of!(FanoutMeta, kind) as i16;
const META_PARITY: i16 = core::mem::offset_of!(FanoutMeta, parity) as i16;
const META_KEY: i16 = core::mem::offset_of!(FanoutMeta, key) as i16;
const META_NONCE: i16 = core::mem::offset_of!(FanoutMeta, nonce) as i16;
const _: () = assert!(
    core::mem::size_of::<FanoutMeta>() == 24,
    "write_meta and read_meta write and read every field"
);

/// The route a hand-off names, in the plan generation of `parity`.
#[inline(always)]
pub(crate) fn route_of(m: &FanoutMeta, parity: u32) -> Result<&'static Route, Reason> {
    match m.kind {
        FANOUT_BY_ID => {
            let ids = SC_IDS.get(parity).ok_or(Reason::NoPlan)?;
            ids.get(m.key as u32)
                .filter(|r| r.shard_count != 0)
                .ok_or(Reason::NoRoute)
        }
        FANOUT_BY_NAME => {
            maps::route_by_name(parity, TopicKey { hash: m.key })?.ok_or(Reason::NoRoute)
        }
        _ => Err(Reason::NoRoute),
    }
}

/// The headers of the frame as it arrived, read once.
struct Original {
    v6: bool,
    l4_off: usize,
    /// IPv4: TTL, protocol, checksum, source, destination (bytes 8..20).
    v4: [u8; 12],
    /// IPv6: hop limit (byte 7) and destination (24..40).
    hop_limit: u8,
    daddr6: [u8; 16],
    /// UDP: destination port, length, checksum (bytes 2..8).
    udp: [u8; 6],
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// TC side: the fan-out itself. Frames without our metadata pass.
#[inline(always)]
pub(crate) fn fan_out(ctx: &TcContext) -> i32 {
    // SAFETY: the context's own skb.
    let (meta, data) = unsafe { ((*ctx.skb.skb).data_meta as usize, ctx.data()) };
    const META: usize = core::mem::size_of::<FanoutMeta>();
    if meta + META > data {
        return TC_ACT_OK;
    }
    // SAFETY: `META` bytes of metadata, checked above.
    let m = unsafe { read_meta(meta as *const u8) };
    if m.magic != FANOUT_MAGIC {
        return TC_ACT_OK;
    }
    let frame_len = ctx.len() as u64;
    match send_copies(ctx, &m, frame_len) {
        Ok(action) => action,
        Err(reason) => {
            count(reason, frame_len);
            TC_ACT_OK
        }
    }
}

/// Sends the copies, each counted `redirected` or with why it could not
/// go, and returns the program's verdict. All but the last are clones
/// (`bpf_clone_redirect`); the last is the frame itself, redirected
/// (`TC_ACT_REDIRECT`), which saves a clone and the copy of its headers
/// that the next write to a cloned frame costs. When the last copy cannot
/// go, the frame is dropped: every copy went or was counted with why not,
/// and the stack could not route it either. Nothing about one copy's
/// outcome is carried to the next (not even a count): the verifier then
/// sees the same state at every turn of the loop whatever happened in the
/// last, and checks 16 turns, not 2^16 paths.
#[inline(always)]
fn send_copies(ctx: &TcContext, m: &FanoutMeta, frame_len: u64) -> Result<i32, Reason> {
    let parity = maps::active_parity();
    let route = route_of(m, parity)?;
    let shards = SC_SHARDS.get(parity).ok_or(Reason::NoPlan)?;
    let o = original(ctx)?;
    let n = (route.shard_count as usize).min(MAX_ROUTE_SHARDS);
    if n == 0 {
        return Err(Reason::NoRoute);
    }
    for i in 0..MAX_ROUTE_SHARDS - 1 {
        if i + 1 >= n {
            break;
        }
        if i == 0 {
            copy(ctx, &o, &route.first, frame_len);
        } else {
            match shards.get(route.shards[i] as u32) {
                Some(s) => copy(ctx, &o, s, frame_len),
                None => count(Reason::NoRoute, frame_len),
            }
        }
    }
    let last = if n == 1 {
        &route.first
    } else {
        match shards.get(route.shards[(n - 1) & (MAX_ROUTE_SHARDS - 1)] as u32) {
            Some(s) => s,
            None => {
                count(Reason::NoRoute, frame_len);
                return Ok(TC_ACT_SHOT);
            }
        }
    };
    Ok(last_copy(ctx, &o, last, frame_len))
}

/// The last copy: the frame itself, rewritten and redirected.
#[inline(never)]
fn last_copy(ctx: &TcContext, o: &Original, shard: &Shard, frame_len: u64) -> i32 {
    match rewrite(ctx, o, shard) {
        Ok(ifindex) => {
            count(Reason::Redirected, frame_len);
            // SAFETY: plain helper call; the verdict it returns is
            // TC_ACT_REDIRECT (or TC_ACT_SHOT for bad flags, which ours
            // are not).
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Err(reason) => {
            count(reason, frame_len);
            TC_ACT_SHOT
        }
    }
}

/// Reads the headers every copy is computed from.
#[inline(always)]
fn original(ctx: &TcContext) -> Result<Original, Reason> {
    let ether_type = u16::from_be(ctx.load::<u16>(12).map_err(|_| Reason::Truncated)?);
    let mut o = Original {
        v6: false,
        l4_off: 0,
        v4: [0; 12],
        hop_limit: 0,
        daddr6: [0; 16],
        udp: [0; 6],
    };
    match ether_type {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| Reason::Truncated)?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Err(Reason::Truncated);
            }
            o.l4_off = ETH_HLEN + ihl;
            o.v4 = ctx.load(ETH_HLEN + 8).map_err(|_| Reason::Truncated)?;
        }
        ETH_P_IPV6 => {
            o.v6 = true;
            o.l4_off = ETH_HLEN + Ipv6Hdr::LEN;
            o.hop_limit = ctx.load(ETH_HLEN + 7).map_err(|_| Reason::Truncated)?;
            o.daddr6 = ctx.load(ETH_HLEN + 24).map_err(|_| Reason::Truncated)?;
        }
        _ => return Err(Reason::NotIp),
    }
    if o.l4_off > ETH_HLEN + 60 {
        return Err(Reason::Truncated);
    }
    // Fixed-size loads: the helper's length must be a constant.
    o.udp = ctx.load(o.l4_off + 2).map_err(|_| Reason::Truncated)?;
    Ok(o)
}

/// Rewrites the frame for `shard` from the original headers, sends a copy
/// to the shard's egress, and counts it. A function of its own (a BPF
/// call) that returns nothing: its paths join again at the return.
#[inline(never)]
fn copy(ctx: &TcContext, o: &Original, shard: &Shard, frame_len: u64) {
    let sent = rewrite(ctx, o, shard).and_then(|ifindex| {
        ctx.clone_redirect(ifindex, 0)
            .map_err(|_| Reason::EgressMissing)
    });
    match sent {
        Ok(()) => count(Reason::Redirected, frame_len),
        Err(reason) => count(reason, frame_len),
    }
}

/// Rewrites the frame's headers for `shard` from the original ones;
/// returns the shard's egress ifindex.
#[inline(always)]
fn rewrite(ctx: &TcContext, o: &Original, shard: &Shard) -> Result<u32, Reason> {
    let ifindex = *SC_EGRESS_IF
        .get(shard.egress_slot)
        .filter(|&&i| i != 0)
        .ok_or(Reason::EgressMissing)?;
    let old_port = u16::from_ne_bytes([o.udp[0], o.udp[1]]);
    let new_port = if shard.port == 0 {
        old_port
    } else {
        shard.port.to_be()
    };
    let old_check = u16::from_ne_bytes([o.udp[4], o.udp[5]]);
    let mut udp = o.udp;
    udp[0..2].copy_from_slice(&new_port.to_ne_bytes());
    let dst_mac: [u8; 6];
    if !o.v6 {
        if shard.flags & SHARD_HAS_V4 == 0 {
            return Err(Reason::NoGroupForFamily);
        }
        let h = &o.v4;
        let ttl = h[0];
        if ttl <= 1 {
            return Err(Reason::TtlExpired);
        }
        let group = u32::from_ne_bytes(shard.group_v4);
        let old_daddr = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
        let mut ipc = Patch::new(u16::from_ne_bytes([h[2], h[3]]));
        ipc.replace16(
            u16::from_ne_bytes([ttl, h[1]]),
            u16::from_ne_bytes([ttl - 1, h[1]]),
        );
        ipc.replace32(old_daddr, group);
        let mut v4 = *h;
        v4[0] = ttl - 1;
        v4[2..4].copy_from_slice(&ipc.finish().to_ne_bytes());
        v4[8..12].copy_from_slice(&shard.group_v4);
        ctx.store(ETH_HLEN + 8, &v4, 0)
            .map_err(|_| Reason::Truncated)?;
        if old_check != 0 {
            let mut uc = Patch::new(old_check);
            uc.replace32(old_daddr, group);
            uc.replace16(old_port, new_port);
            udp[4..6].copy_from_slice(&uc.finish_udp().to_ne_bytes());
        }
        let g = shard.group_v4;
        dst_mac = [0x01, 0x00, 0x5e, g[1] & 0x7f, g[2], g[3]];
    } else {
        if shard.flags & SHARD_HAS_V6 == 0 {
            return Err(Reason::NoGroupForFamily);
        }
        if o.hop_limit <= 1 {
            return Err(Reason::TtlExpired);
        }
        let g = &shard.group_v6;
        let mut uc = Patch::new(old_check);
        for w in 0..4 {
            let i = 4 * w;
            uc.replace32(
                u32::from_ne_bytes([
                    o.daddr6[i],
                    o.daddr6[i + 1],
                    o.daddr6[i + 2],
                    o.daddr6[i + 3],
                ]),
                u32::from_ne_bytes([g[i], g[i + 1], g[i + 2], g[i + 3]]),
            );
        }
        uc.replace16(old_port, new_port);
        udp[4..6].copy_from_slice(&uc.finish_udp().to_ne_bytes());
        ctx.store(ETH_HLEN + 7, &(o.hop_limit - 1), 0)
            .map_err(|_| Reason::Truncated)?;
        ctx.store(ETH_HLEN + 24, g, 0)
            .map_err(|_| Reason::Truncated)?;
        dst_mac = [0x33, 0x33, g[12], g[13], g[14], g[15]];
    }
    ctx.store(o.l4_off + 2, &udp, 0)
        .map_err(|_| Reason::Truncated)?;
    let s = shard.src_mac;
    let macs = [
        dst_mac[0], dst_mac[1], dst_mac[2], dst_mac[3], dst_mac[4], dst_mac[5], s[0], s[1], s[2],
        s[3], s[4], s[5],
    ];
    ctx.store(0, &macs, 0).map_err(|_| Reason::Truncated)?;
    Ok(ifindex)
}

//! The header rewrite of a routed frame: IPv4 or IPv6 destination to the
//! shard's group, TTL or hop limit, UDP port, checksums patched
//! incrementally, MACs. The only packet writes of the program.

use core::mem::offset_of;

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use router_common::{
    checksum::Patch,
    maps::{SHARD_HAS_V4, SHARD_HAS_V6, Shard},
    reason::Reason,
};

use crate::packet::{Ipv4Hdr, Ipv6Hdr, L3, UdpHdr, VLAN_HLEN, ptr_at, word};

/// Rewrites the frame for `shard`: IP destination, TTL or hop limit, UDP
/// port and checksums, then the MACs (the group's as destination, the
/// shard's source). Checks everything before it writes anything, so a frame
/// sent to the stack instead leaves untouched.
#[inline(always)]
pub(crate) fn frame(
    ctx: &XdpContext,
    l3: L3,
    tagged: bool,
    udp: *mut UdpHdr,
    shard: &Shard,
) -> Result<(), Reason> {
    let ip: *mut u8 = match l3 {
        L3::V4 { off, .. } => ptr_at::<Ipv4Hdr>(ctx, off).map(|p| p.cast()),
        L3::V6 { off } => ptr_at::<Ipv6Hdr>(ctx, off).map(|p| p.cast()),
    }
    .ok_or(Reason::Truncated)?;
    let mac_off = if tagged { VLAN_HLEN } else { 0 };
    let macs: *mut [u8; 12] = ptr_at(ctx, mac_off).ok_or(Reason::Truncated)?;
    // SAFETY: every pointer checked in bounds just above (`udp` by the
    // caller).
    unsafe { frame_at::<false>(ip, l3, macs.cast(), udp, shard) }
}

/// [`frame`] with the headers already found: the fast path's are at
/// constant offsets within bytes it checked once. `CHECKED`: the caller
/// has checked that the shard has a group of the frame's family and the
/// TTL or hop limit is over 1 (the fast path does, before it counts
/// anything), so the rewrite does not check them again.
///
/// # Safety
/// `ip` must point to a whole IP header of `l3`'s family, `macs` to the
/// frame's 12 MAC bytes and `udp` to a whole UDP header, all within the
/// packet (checked against `data_end` in the form the verifier tracks).
#[inline(always)]
pub(crate) unsafe fn frame_at<const CHECKED: bool>(
    ip: *mut u8,
    l3: L3,
    macs: *mut u8,
    udp: *mut UdpHdr,
    shard: &Shard,
) -> Result<(), Reason> {
    // SAFETY: per the function's contract.
    let dst_mac = unsafe {
        match l3 {
            L3::V4 { .. } => rewrite_v4::<CHECKED>(ip.cast(), udp, shard)?,
            L3::V6 { .. } => rewrite_v6::<CHECKED>(ip.cast(), udp, shard)?,
        }
    };
    // SAFETY: per the function's contract. The source MAC is read as two
    // words (at offsets 4- and 2-aligned within the 8-aligned `Shard`)
    // instead of six bytes.
    unsafe {
        let s: *const u8 = (shard as *const Shard).cast();
        let s0 = word::load32_at::<{ SRC_MAC }>(s) as u64;
        let s1 = word::load16_at::<{ SRC_MAC + 4 }>(s) as u64;
        word::store64_at::<0>(macs, dst_mac | (s0 & 0xffff) << 48);
        word::store32_at::<8>(macs, (s0 >> 16 | s1 << 16) as u32);
    }
    Ok(())
}

/// Drops the 802.1Q tag of a rewritten frame: the MACs already sit in
/// front of the inner EtherType, so removing the first 4 bytes leaves an
/// untagged frame for the egress. False if the kernel refused.
#[inline(always)]
pub(crate) fn strip_vlan(ctx: &XdpContext) -> bool {
    // SAFETY: plain helper call on our own context.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_HLEN as i32) == 0 }
}

// The header rewrite composes MAC and header words in native order.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "shardcast's XDP program is built for little-endian BPF (bpfel)"
);

// Field offsets as instruction offsets: each access below names its
// header's address and the field's offset, so that one register holds
// the header for all its fields (a field's own address took a register
// copy and an add before each access).
const SRC_MAC: i16 = offset_of!(Shard, src_mac) as i16;
const UDP_DEST: i16 = offset_of!(UdpHdr, dest) as i16;
const UDP_CHECK: i16 = offset_of!(UdpHdr, check) as i16;
const V4_TTL: i16 = offset_of!(Ipv4Hdr, ttl) as i16;
const V4_CHECK: i16 = offset_of!(Ipv4Hdr, check) as i16;
const V4_DADDR: i16 = offset_of!(Ipv4Hdr, daddr) as i16;
const V6_DADDR: i16 = offset_of!(Ipv6Hdr, daddr) as i16;

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
///
/// # Safety
/// `ip` and `udp` must point to whole headers within the packet.
#[inline(always)]
unsafe fn rewrite_v4<const CHECKED: bool>(
    ip: *mut Ipv4Hdr,
    udp: *mut UdpHdr,
    shard: &Shard,
) -> Result<u64, Reason> {
    if !CHECKED && shard.flags & SHARD_HAS_V4 == 0 {
        return Err(Reason::NoGroupForFamily);
    }
    // SAFETY: per the function's contract.
    unsafe {
        if !CHECKED && (*ip).ttl <= 1 {
            return Err(Reason::TtlExpired);
        }
        let group = u32::from_ne_bytes(shard.group_v4);
        let (ip, udp) = (ip.cast::<u8>(), udp.cast::<u8>());
        let old_daddr = word::load32_at::<V4_DADDR>(ip);
        // TTL shares a checksummed 16-bit word with the protocol; it is
        // the word's first byte, the low one of a native (little-endian)
        // load, and over 1: the word less 1 is the new TTL beside the
        // same protocol.
        let ttl_word = word::load16_at::<V4_TTL>(ip);
        let mut ipc = Patch::new(word::load16_at::<V4_CHECK>(ip));
        ipc.replace16(ttl_word, ttl_word - 1);
        ipc.replace32(old_daddr, group);
        word::store16_at::<V4_TTL>(ip, ttl_word - 1);
        word::store32_at::<V4_DADDR>(ip, group);
        word::store16_at::<V4_CHECK>(ip, ipc.finish());

        let old_port = word::load16_at::<UDP_DEST>(udp);
        let new_port = shard_port(shard, old_port);
        let check = word::load16_at::<UDP_CHECK>(udp);
        if check != 0 {
            let mut uc = Patch::new(check);
            uc.replace32(old_daddr, group);
            uc.replace16(old_port, new_port);
            word::store16_at::<UDP_CHECK>(udp, uc.finish_udp());
        }
        word::store16_at::<UDP_DEST>(udp, new_port);
        // 01:00:5e, then the group's low 23 bits.
        Ok(0x5e_0001 | ((group as u64 & 0xffff_7f00) << 16))
    }
}

/// IPv6: destination → group, hop limit − 1, port, UDP checksum patched.
/// Returns the destination MAC (33:33 and the group's low 32 bits, RFC
/// 2464) as the low 48 bits of a native word.
///
/// # Safety
/// `ip` and `udp` must point to whole headers within the packet.
#[inline(always)]
unsafe fn rewrite_v6<const CHECKED: bool>(
    ip: *mut Ipv6Hdr,
    udp: *mut UdpHdr,
    shard: &Shard,
) -> Result<u64, Reason> {
    if !CHECKED && shard.flags & SHARD_HAS_V6 == 0 {
        return Err(Reason::NoGroupForFamily);
    }
    // SAFETY: per the function's contract.
    unsafe {
        let hops = (*ip).hop_limit;
        if !CHECKED && hops <= 1 {
            return Err(Reason::TtlExpired);
        }
        let (ip, udp) = (ip.cast::<u8>(), udp.cast::<u8>());
        let check = word::load16_at::<UDP_CHECK>(udp);
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
        let old_port = word::load16_at::<UDP_DEST>(udp);
        let new_port = shard_port(shard, old_port);
        let old = [
            word::load32_at::<V6_DADDR>(ip),
            word::load32_at::<{ V6_DADDR + 4 }>(ip),
            word::load32_at::<{ V6_DADDR + 8 }>(ip),
            word::load32_at::<{ V6_DADDR + 12 }>(ip),
        ];
        let mut uc = Patch::new(check);
        for (&o, &w) in old.iter().zip(&group) {
            uc.replace32(o, w);
        }
        uc.replace16(old_port, new_port);
        *ip.add(offset_of!(Ipv6Hdr, hop_limit)) = hops - 1;
        word::store32_at::<V6_DADDR>(ip, group[0]);
        word::store32_at::<{ V6_DADDR + 4 }>(ip, group[1]);
        word::store32_at::<{ V6_DADDR + 8 }>(ip, group[2]);
        word::store32_at::<{ V6_DADDR + 12 }>(ip, group[3]);
        word::store16_at::<UDP_DEST>(udp, new_port);
        word::store16_at::<UDP_CHECK>(udp, uc.finish_udp());
        Ok(0x3333 | (group[3] as u64) << 16)
    }
}

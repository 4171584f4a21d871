//! The fast path: an untagged IPv4 frame without options, or an untagged
//! IPv6 frame without extension headers, carrying an MQTT-SN PUBLISH
//! (short length form) or a CoAP NON publish of the usual shape (below):
//! the most common frames a router of sensors sees. A route to one shard
//! it finishes itself; a route to several it hands off from here
//! (`fanout::multi_shard`, which the general path calls too), so such a
//! publish is parsed once; a publish the plan does not route it counts.
//!
//! Every header sits at a fixed offset, so the shared helpers (the
//! MQTT-SN parser, the counters, the rewrite) are inlined here with
//! constant offsets and the frame's layout never has to be carried in
//! registers or on the stack; a CoAP message is read in place, without
//! the general path's copy into a per-CPU window. It decides nothing on
//! its own: any frame it does not finish (another shape, a check that
//! fails, a route with no shard, a missing egress) it leaves
//! exactly as it found it, uncounted, and
//! [`route`](crate::route::route) takes it from the start. What it
//! finishes, it finishes exactly as that path would: the same counters,
//! the same bytes out, the same verdict (the fixture and differential
//! tests hold the router to the host model frame by frame, whichever path
//! a frame takes).
//!
//! The CoAP shape it takes is `router_common::coap_fast`'s.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect_map, programs::XdpContext};
use router_common::{
    coap_fast::{self, InPlace},
    maps::{Config, FANOUT_BY_ID, FANOUT_BY_NAME, SHARD_HAS_V4, SHARD_HAS_V6},
    mqttsn,
    payload::Head,
    reason::Reason,
    topic::TopicKey,
};

use crate::{
    counters::{self, count},
    fanout,
    maps::{self, SC_EGRESS, SC_IDS},
    packet::{self, ETH_HLEN, Ipv6Hdr, L3, UdpHdr, word},
    rewrite,
};

const IP: usize = ETH_HLEN;
const UDP_V4: usize = IP + 20;
const UDP_V6: usize = IP + Ipv6Hdr::LEN;
/// Version 4, header length 20 (no options).
const VER_IHL_NO_OPTIONS: u8 = 0x45;
/// The fragment offset and more-fragments bits of the big-endian flags
/// word, as a little-endian load sees them.
const FRAGMENT_BITS_LE: u16 = 0xff3f;
const IPPROTO_UDP: u8 = 17;
/// The EtherTypes, little-endian as loaded (bytes 0x08 0x00, 0x86 0xdd).
const ETH_P_IP_LE: u16 = 0x0008;
const ETH_P_IPV6_LE: u16 = 0xdd86;

/// `Some(action)`: routed here; or unrouted (no route in the plan), or
/// failed after the publish was counted (an IPv6 datagram without a UDP
/// checksum, which the rewrite refuses): then counted by reason and
/// passed up, as the general path does.
/// `None`: not this path's frame, or not one it finishes; untouched and
/// uncounted.
///
/// Inlined into the program itself, while the general path is a BPF
/// function of its own (`route::general_call`): a frame this path
/// finishes makes no BPF-to-BPF call, whose return goes through the
/// kernel's return thunk on hosts with that mitigation (Intel here:
/// "indirect_target_selection: Aligned branch/return thunks").
#[inline(always)]
pub(crate) fn publish(ctx: &XdpContext, cfg: &Config) -> Option<u32> {
    // The IPv4 span is the shorter: checked once, it also holds the
    // EtherType.
    let h = packet::ptr_at::<[u8; V4_HEAD]>(ctx, 0)? as *mut u8;
    // SAFETY: within the bytes just checked.
    let done = match unsafe { word::load16_at::<12>(h) } {
        ETH_P_IP_LE => v4(ctx, cfg, h),
        ETH_P_IPV6_LE => v6(ctx, cfg),
        _ => Ok(None),
    };
    match done {
        Ok(action) => action,
        Err(reason) => {
            count(reason, (ctx.data_end() - ctx.data()) as u64);
            Some(xdp_action::XDP_PASS)
        }
    }
}

/// The payload's offset from the UDP header, as an instruction offset.
const PAYLOAD: i16 = UdpHdr::LEN as i16;

/// The headers and the payload's first bytes (the MQTT-SN header's, the
/// CoAP header's and token's first), one bounds check for all (a shorter
/// frame takes the general path).
const V4_HEAD: usize = UDP_V4 + UdpHdr::LEN + mqttsn::HEADER_READ;
const V6_HEAD: usize = UDP_V6 + UdpHdr::LEN + mqttsn::HEADER_READ;

/// `h`: the frame, its first `V4_HEAD` bytes checked in bounds.
#[inline(always)]
fn v4(ctx: &XdpContext, cfg: &Config, h: *mut u8) -> Result<Option<u32>, Reason> {
    // SAFETY: within the bytes the caller checked.
    let ttl = unsafe {
        if *h.add(IP) != VER_IHL_NO_OPTIONS
            || word::load16_at::<{ IP as i16 + 6 }>(h) & FRAGMENT_BITS_LE != 0
            || *h.add(IP + 9) != IPPROTO_UDP
        {
            return Ok(None);
        }
        *h.add(IP + 8)
    };
    let l3 = L3::V4 { off: IP, ihl: 20 };
    datagram(ctx, cfg, h, l3, UDP_V4, ttl, SHARD_HAS_V4)
}

#[inline(always)]
fn v6(ctx: &XdpContext, cfg: &Config) -> Result<Option<u32>, Reason> {
    let Some(h) = packet::ptr_at::<[u8; V6_HEAD]>(ctx, 0) else {
        return Ok(None);
    };
    let h = h as *mut u8;
    // SAFETY: `ptr_at` checked these bytes lie in the frame.
    let hops = unsafe {
        if *h.add(IP) >> 4 != 6 || *h.add(IP + 6) != IPPROTO_UDP {
            return Ok(None);
        }
        *h.add(IP + 7)
    };
    datagram(ctx, cfg, h, L3::V6 { off: IP }, UDP_V6, hops, SHARD_HAS_V6)
}

/// From the UDP header on, both families: `h` points at the frame, whose
/// first `udp + 8 + HEADER_READ` bytes were checked in bounds.
#[inline(always)]
fn datagram(
    ctx: &XdpContext,
    cfg: &Config,
    h: *mut u8,
    l3: L3,
    udp: usize,
    ttl: u8,
    family: u16,
) -> Result<Option<u32>, Reason> {
    let payload = udp + UdpHdr::LEN;
    // Each field at a constant offset from the UDP header's address: one
    // register for all of them.
    // SAFETY: inside the bytes the caller checked.
    let (dport, udp_len, word) = unsafe {
        let u = h.add(udp);
        (
            u16::from_be(word::load16_at::<2>(u)),
            u16::from_be(word::load16_at::<4>(u)) as usize,
            // What `packet::mqttsn_head` reads, from the payload's start.
            word::load32_at::<{ PAYLOAD }>(u) as u64
                | (word::load16_at::<{ PAYLOAD + 4 }>(u) as u64) << 32
                | (*u.add(PAYLOAD as usize + 6) as u64) << 48,
        )
    };
    if dport == 0 || udp_len < UdpHdr::LEN {
        return Ok(None);
    }
    let payload_len = udp_len - UdpHdr::LEN;
    if !packet::payload_fits(ctx, payload, payload_len) {
        return Ok(None);
    }
    // The generation's parity is read in each branch just before its
    // lookup: read up here, it lived on the stack across the parse.
    let route = if dport == cfg.mqttsn_port {
        // The long length form (messages over 255 bytes) takes the
        // general path; without it the parser's offsets are constants.
        if word as u8 == mqttsn::LONG_LENGTH_MARK {
            return Ok(None);
        }
        let head = Head::<{ mqttsn::HEADER_READ }> {
            word,
            len: payload_len,
        };
        // The short form: the Length field is the first byte.
        let Ok(publish) = mqttsn::parse_publish_after_length(&head, word as u8 as usize, 1) else {
            return Ok(None);
        };
        let parity = maps::active_parity();
        let Some(ids) = SC_IDS.get(parity) else {
            return Ok(None);
        };
        // A zeroed entry: the plan has no route for this id. The key (a
        // hash of the id) is computed only then: a routed publish needs
        // none, and computed beside the lookup it cost every publish
        // three multiplications.
        let index = publish.id_index();
        let Some(route) = ids.get(index).filter(|r| r.shard_count != 0) else {
            return unrouted(ctx, &publish.key());
        };
        // Several shards: handed off from here, the copies to follow the
        // generation this route came from.
        if route.shard_count != 1 {
            return Ok(Some(fanout::multi_shard(
                ctx,
                l3,
                false,
                route,
                FANOUT_BY_ID,
                index as u64,
                parity,
            )));
        }
        route
    } else if dport == cfg.coap_port {
        let msg = InFrame { ctx, at: payload };
        let Some(key) = coap_fast::publish_key(&msg, payload_len, &cfg.prefix_start) else {
            return Ok(None);
        };
        let parity = maps::active_parity();
        match maps::route_by_name(parity, key) {
            // A route without shards is the general path's to count.
            Ok(Some(route)) if route.shard_count > 1 => {
                return Ok(Some(fanout::multi_shard(
                    ctx,
                    l3,
                    false,
                    route,
                    FANOUT_BY_NAME,
                    key.hash,
                    parity,
                )));
            }
            Ok(Some(route)) => route,
            Ok(None) => return unrouted(ctx, &key),
            Err(_) => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    let shard = &route.first;
    // The rewrite's and the redirect's preconditions, before anything is
    // counted or written (the helper only records the target).
    if route.shard_count != 1
        || shard.flags & family == 0
        || ttl <= 1
        || !redirect(shard.egress_slot)
    {
        return Ok(None);
    }
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    counters::routed(ctx, cfg, l3, route.stats_slot, frame_len);
    // SAFETY: the MACs, the IP header and the UDP header lie inside the
    // bytes the caller checked.
    unsafe { rewrite::frame_at::<true>(h.add(IP), l3, h, h.add(udp).cast(), shard)? };
    count(Reason::Redirected, frame_len);
    Ok(Some(xdp_action::XDP_REDIRECT))
}

/// Redirects the frame to egress `slot` (the helper only records the
/// target): true if the slot holds a device. The helper's own return
/// compared as it comes, where `DevMap::redirect` folds it into a
/// `Result` through its absolute value (five instructions more on every
/// publish).
#[inline(always)]
fn redirect(slot: u32) -> bool {
    let map: *const _ = &SC_EGRESS;
    // SAFETY: a plain helper call on our own device map (a map's address
    // is what the helper takes, as `DevMap::redirect` passes it).
    let ret = unsafe {
        bpf_redirect_map(
            map.cast_mut().cast(),
            slot as u64,
            xdp_action::XDP_PASS as u64,
        )
    };
    ret == xdp_action::XDP_REDIRECT as i64
}

/// A publish the plan does not route: counted as the general path counts
/// it (its key among the unrouted, `no_route`), and passed up without
/// parsing it a second time there.
#[inline(always)]
fn unrouted(ctx: &XdpContext, key: &TopicKey) -> Result<Option<u32>, Reason> {
    counters::count_unrouted(key, (ctx.data_end() - ctx.data()) as u64);
    Err(Reason::NoRoute)
}

/// A CoAP message in the frame, read in place (`coap_fast`): each read
/// checked against the frame's end, in the form the verifier tracks.
struct InFrame<'a> {
    ctx: &'a XdpContext,
    /// Where the message starts.
    at: usize,
}

impl InPlace for InFrame<'_> {
    #[inline(always)]
    fn byte(&self, off: usize) -> Option<u8> {
        packet::byte_at(self.ctx, self.at + off)
    }

    #[inline(always)]
    fn word(&self, off: usize) -> Option<u64> {
        let p = packet::ptr_at::<[u8; 8]>(self.ctx, self.at + off)?;
        // SAFETY: `ptr_at` checked the 8 bytes lie within the packet.
        Some(unsafe { word::load64(p as *const u8) })
    }
}

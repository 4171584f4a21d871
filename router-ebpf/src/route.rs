//! The route of one frame: its headers parsed, its topic's route looked up
//! in the active plan generation, counted, rewritten for its shard and
//! redirected; or the reason it goes to the stack instead.

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    programs::XdpContext,
};
use router_common::{
    coap,
    maps::{Config, FANOUT_BY_ID, FANOUT_BY_NAME, Route, Shard},
    mqttsn,
    reason::Reason,
    topic::TopicKey,
};

use crate::{
    counters::{self, count, count_unrouted},
    fanout, fast,
    maps::{self, SC_COAP_WINDOW, SC_EGRESS, SC_IDS, SC_SCRATCH},
    packet::{self, ETH_HLEN, EthHdr, L3, UdpHdr, VLAN_HLEN, WindowPayload, ptr_at},
    rewrite,
};

const ETH_TYPE_OFF: usize = core::mem::offset_of!(EthHdr, ether_type);
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;

/// One frame's verdict: the common frame at fixed offsets first
/// ([`fast`]), anything it leaves untouched then the general path.
#[inline(always)]
pub(crate) fn route(ctx: &XdpContext) -> u32 {
    let cfg = maps::config();
    if let Some(action) = fast::publish(ctx, cfg) {
        return action;
    }
    general_call(ctx.ctx, cfg) as u32
}

/// The general path, a BPF function of its own: LLVM would otherwise
/// merge its blocks with the fast path's (the same parser, counters and
/// rewrite) and with them its register pressure, spilling what the fast
/// path keeps in registers. What it refuses is counted by reason and
/// passed up.
#[inline(never)]
fn general_call(raw: *mut xdp_md, cfg: &Config) -> u64 {
    let ctx = XdpContext::new(raw);
    match general(&ctx, cfg) {
        Ok(action) => action as u64,
        Err(reason) => {
            count(reason, (ctx.data_end() - ctx.data()) as u64);
            xdp_action::XDP_PASS as u64
        }
    }
}

#[inline(always)]
fn general(ctx: &XdpContext, cfg: &Config) -> Result<u32, Reason> {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;

    let (l3, tagged) = l2_l3(ctx)?;
    let l4_off = l3.l4_off();

    // L4.
    let (dport, udp_len) = packet::udp_at(ctx, l4_off).ok_or(Reason::Truncated)?;
    if udp_len < UdpHdr::LEN {
        return Err(Reason::Truncated);
    }
    let (payload_off, payload_len) = (l4_off + UdpHdr::LEN, udp_len - UdpHdr::LEN);
    if !packet::payload_fits(ctx, payload_off, payload_len) {
        return Err(Reason::Truncated);
    }

    // The plan: one parity for every lookup, read once.
    let parity = maps::active_parity();

    // L7: the shared parsers, then the route. Each protocol looks its route
    // up in its own branch (an enum carried out of the branches leaves the
    // verifier unable to tell which one a later lookup came from).
    let (route, l3, tagged, kind, key) = if dport != 0 && dport == cfg.mqttsn_port {
        // Fixed offsets: parsed from a copy of the header, with the L2/L3
        // layout left in registers.
        let head = packet::mqttsn_head(ctx, payload_off, payload_len);
        let publish = mqttsn::parse_publish(&head)?;
        let ids = SC_IDS.get(parity).ok_or(Reason::NoPlan)?;
        // A zeroed entry: the plan has no route for this id.
        let index = publish.id_index();
        match ids.get(index).filter(|r| r.shard_count != 0) {
            Some(r) => (r, l3, tagged, FANOUT_BY_ID, index as u64),
            None => {
                count_unrouted(&publish.key(), frame_len);
                return Err(Reason::NoRoute);
            }
        }
    } else if dport != 0 && dport == cfg.coap_port {
        let (key, l3, tagged) = coap_key(ctx, cfg, l3, tagged, payload_off, payload_len)?;
        match maps::route_by_name(parity, key)? {
            Some(r) => (r, l3, tagged, FANOUT_BY_NAME, key.hash),
            None => {
                count_unrouted(&key, frame_len);
                return Err(Reason::NoRoute);
            }
        }
    } else {
        return Err(Reason::OtherPort);
    };
    let route: &Route = route;
    // One copy per shard: by broadcast where the route names a device map,
    // else by the fan-out program at TC ingress.
    if route.shard_count > 1 {
        return Ok(fanout::multi_shard(
            ctx, l3, tagged, route, kind, key, parity,
        ));
    }
    let udp: *mut UdpHdr = ptr_at(ctx, l3.l4_off()).ok_or(Reason::Truncated)?;
    counters::routed(ctx, cfg, l3, route.stats_slot, frame_len);
    if route.shard_count == 0 {
        return Err(Reason::NoRoute);
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
    rewrite::frame(ctx, l3, tagged, udp, shard)?;
    count(Reason::Redirected, frame_len);
    if tagged && !rewrite::strip_vlan(ctx) {
        return Ok(xdp_action::XDP_ABORTED);
    }
    Ok(xdp_action::XDP_REDIRECT)
}

/// Ethernet (at most one 802.1Q tag) and the IP header: where the IP
/// header is and which family, and whether a tag was there.
#[inline(always)]
fn l2_l3(ctx: &XdpContext) -> Result<(L3, bool), Reason> {
    let mut ether_type = packet::be16_at(ctx, ETH_TYPE_OFF).ok_or(Reason::Truncated)?;
    let mut l3_off = ETH_HLEN;
    let tagged = ether_type == ETH_P_8021Q;
    if tagged {
        ether_type = packet::be16_at(ctx, ETH_HLEN + 2).ok_or(Reason::Truncated)?;
        l3_off += VLAN_HLEN;
    }
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(Reason::NotIp);
    }
    let l3 = match ether_type {
        ETH_P_IP => {
            let ip = packet::ipv4_at(ctx, l3_off).ok_or(Reason::Truncated)?;
            if ip.version() != 4 {
                return Err(Reason::Truncated);
            }
            let ihl = ip.ihl();
            if ihl < 20 {
                return Err(Reason::Truncated);
            }
            if ip.fragment() {
                return Err(Reason::Fragment);
            }
            if ip.protocol() != IPPROTO_UDP {
                return Err(Reason::NotUdp);
            }
            L3::V4 { off: l3_off, ihl }
        }
        ETH_P_IPV6 => {
            let ip = packet::ipv6_at(ctx, l3_off).ok_or(Reason::Truncated)?;
            if ip.version() != 6 {
                return Err(Reason::Truncated);
            }
            match ip.next_header() {
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
    Ok((l3, tagged))
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
    let msg = WindowPayload::load(ctx, payload_off, payload_len, window, scratch)
        .ok_or(Reason::Truncated)?;
    // A message longer than the window that runs out within it is not
    // malformed but unexamined: the parser says `CoapBeyondWindow`.
    let key = coap::parse_publish_from(
        &msg,
        &cfg.prefix,
        cfg.prefix_len as usize,
        &cfg.prefix_start,
    )?
    .key;

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

//! A host model of the XDP router: for one frame, the verdict the program
//! must reach (the reason it goes to the stack, or the shard it is
//! redirected to), the topic key it counts as unrouted, and the bytes it
//! must emit. Written from the protocol rules and the data plane's
//! documented limits, with the shared parsers of `router-common` for the
//! application layer, and used by the differential run
//! ([`crate::differential`]) against the real program in the kernel.
//!
//! The output bytes are computed independently of the router: fields set,
//! then every checksum recomputed from scratch (the router patches them
//! incrementally, which agrees exactly when the input's were right).

use router_common::{
    checksum::internet_checksum,
    coap::{self, PrefixStart},
    maps::{Config, FANOUT_BY_ID, FANOUT_BY_NAME, FANOUT_MAGIC, FanoutMeta, PREFIX_MAX},
    mqttsn,
    payload::{FirstBytes, Head, Payload},
    reason::Reason,
    topic::TopicKey,
};
use shardcast_plan::CompiledPlan;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// The data plane's bounds on where a payload starts and how long it is.
const MAX_PAYLOAD: usize = 0x3fff;
const MAX_PAYLOAD_OFFSET: usize = 128;

/// What the router must do with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass(Reason),
    Redirect {
        /// Index into the plan's shards.
        shard: usize,
        /// The frame the router must emit.
        output: Vec<u8>,
    },
    /// A multi-shard publish: passed up to the fan-out program with its
    /// route in the XDP metadata.
    FanOut {
        /// What the XDP program's test run outputs: the metadata, then
        /// the frame, untagged.
        handoff: Vec<u8>,
        /// Per shard of the route (indices into the plan's shards): the
        /// copy the fan-out program must send, or why that copy cannot go.
        copies: Vec<(usize, Result<Vec<u8>, Reason>)>,
    },
}

/// The model's answer for one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The key counted as unrouted (a publish whose topic has no route).
    pub unrouted: Option<TopicKey>,
    /// The input's IP and UDP checksums were right, so the output bytes
    /// are exact (otherwise only the verdict is checked).
    pub exact: bool,
}

/// The router's settings as the model needs them.
pub struct Settings {
    pub mqttsn_port: u16,
    pub coap_port: u16,
    prefix: [u8; PREFIX_MAX],
    prefix_len: usize,
    prefix_start: PrefixStart,
    /// The egress interface's MAC: every shard's source MAC.
    pub src_mac: [u8; 6],
}

impl Settings {
    /// The defaults (`router_common::maps::Config`), shards sending from
    /// `src_mac`.
    pub fn default_with_mac(src_mac: [u8; 6]) -> Settings {
        let p = Config::DEFAULT_PREFIX.as_bytes();
        let mut prefix = [0u8; PREFIX_MAX];
        prefix[..p.len()].copy_from_slice(p);
        Settings {
            mqttsn_port: Config::DEFAULT_MQTTSN_PORT,
            coap_port: Config::DEFAULT_COAP_PORT,
            prefix,
            prefix_len: p.len(),
            prefix_start: PrefixStart::encode(p),
            src_mac,
        }
    }
}

fn be16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]))
}

/// Where the IP header is.
#[derive(Clone, Copy)]
enum L3 {
    V4 { off: usize, ihl: usize },
    V6 { off: usize },
}

impl L3 {
    fn l4(self) -> usize {
        match self {
            L3::V4 { off, ihl } => off + ihl,
            L3::V6 { off } => off + 40,
        }
    }
}

/// The UDP checksum the segment at `l4` (of `udp_len` bytes) should carry
/// (`router_common::checksum::internet_checksum` over the pseudo-header
/// and the segment; a computed 0 is sent as 0xffff).
fn udp_checksum(f: &[u8], l3: L3, l4: usize, udp_len: usize) -> u16 {
    let mut data = match l3 {
        L3::V4 { off, .. } => {
            let mut d = f[off + 12..off + 20].to_vec();
            d.extend_from_slice(&[0, 17]);
            d.extend_from_slice(&(udp_len as u16).to_be_bytes());
            d
        }
        L3::V6 { off } => {
            let mut d = f[off + 8..off + 40].to_vec();
            d.extend_from_slice(&(udp_len as u32).to_be_bytes());
            d.extend_from_slice(&[0, 0, 0, 17]);
            d
        }
    };
    data.extend_from_slice(&f[l4..l4 + 6]);
    data.extend_from_slice(&[0, 0]);
    data.extend_from_slice(&f[l4 + 8..l4 + udp_len]);
    match internet_checksum(&data) {
        0 => 0xffff,
        c => c,
    }
}

/// The IPv4 header checksum the header at `off` should carry.
pub fn ipv4_checksum(f: &[u8], off: usize, ihl: usize) -> u16 {
    let mut h = f[off..off + ihl].to_vec();
    h[10] = 0;
    h[11] = 0;
    internet_checksum(&h)
}

/// True when the frame's IPv4 header checksum and UDP checksum (unless
/// zero on IPv4) are right.
fn checksums_ok(f: &[u8], l3: L3, udp_len: usize) -> bool {
    let l4 = l3.l4();
    if let L3::V4 { off, ihl } = l3
        && be16(f, off + 10) != Some(ipv4_checksum(f, off, ihl))
    {
        return false;
    }
    let check = be16(f, l4 + 6).unwrap_or(0);
    if check == 0 && matches!(l3, L3::V4 { .. }) {
        return true;
    }
    check == udp_checksum(f, l3, l4, udp_len)
}

/// Makes the IP and UDP checksums of `f` right where its headers can be
/// read (a frame as a wire delivers it); a zero IPv4 UDP checksum stays
/// zero. Leaves anything it cannot parse as it is.
pub fn fix_checksums(f: &mut [u8]) {
    let Some(mut et) = be16(f, 12) else { return };
    let mut off = ETH_HLEN;
    if et == 0x8100 {
        let Some(inner) = be16(f, 16) else { return };
        et = inner;
        off += VLAN_HLEN;
    }
    let l3 = match et {
        0x0800 if f.len() >= off + 20 => {
            let ihl = (f[off] & 0x0f) as usize * 4;
            if ihl < 20 || f.len() < off + ihl {
                return;
            }
            let c = ipv4_checksum(f, off, ihl);
            f[off + 10..off + 12].copy_from_slice(&c.to_be_bytes());
            if f[off + 9] != 17 {
                return;
            }
            L3::V4 { off, ihl }
        }
        0x86dd if f.len() >= off + 40 && f[off + 6] == 17 => L3::V6 { off },
        _ => return,
    };
    let l4 = l3.l4();
    let Some(udp_len) = be16(f, l4 + 4).map(usize::from) else {
        return;
    };
    if udp_len < 8 || l4 + udp_len > f.len() {
        return;
    }
    let old = be16(f, l4 + 6).unwrap_or(0);
    if old == 0 && matches!(l3, L3::V4 { .. }) {
        return;
    }
    let c = udp_checksum(f, l3, l4, udp_len);
    f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
}

/// The frame the router emits for a publish routed to `shard`: group,
/// TTL/hop limit, port, checksums, MACs, VLAN tag dropped.
fn rewrite(
    f: &[u8],
    l3: L3,
    tagged: bool,
    udp_len: usize,
    plan: &CompiledPlan,
    shard: usize,
    src_mac: [u8; 6],
) -> Result<Vec<u8>, Reason> {
    let s = &plan.shards[shard];
    let mut out = f.to_vec();
    let l4 = l3.l4();
    let dst_mac = match l3 {
        L3::V4 { off, ihl } => {
            let g = s.group_v4.ok_or(Reason::NoGroupForFamily)?.octets();
            if out[off + 8] <= 1 {
                return Err(Reason::TtlExpired);
            }
            out[off + 8] -= 1;
            out[off + 16..off + 20].copy_from_slice(&g);
            let c = ipv4_checksum(&out, off, ihl);
            out[off + 10..off + 12].copy_from_slice(&c.to_be_bytes());
            [0x01, 0x00, 0x5e, g[1] & 0x7f, g[2], g[3]]
        }
        L3::V6 { off } => {
            let g = s.group_v6.ok_or(Reason::NoGroupForFamily)?.octets();
            if out[off + 7] <= 1 {
                return Err(Reason::TtlExpired);
            }
            if be16(&out, l4 + 6) == Some(0) {
                return Err(Reason::ZeroChecksumV6);
            }
            out[off + 7] -= 1;
            out[off + 24..off + 40].copy_from_slice(&g);
            [0x33, 0x33, g[12], g[13], g[14], g[15]]
        }
    };
    if s.port != 0 {
        out[l4 + 2..l4 + 4].copy_from_slice(&s.port.to_be_bytes());
    }
    let zero_v4 = matches!(l3, L3::V4 { .. }) && be16(&out, l4 + 6) == Some(0);
    if !zero_v4 {
        let c = udp_checksum(&out, l3, l4, udp_len);
        out[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
    }
    out[0..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&src_mac);
    if tagged {
        // MACs, then the inner EtherType and what follows the tag.
        let mut untagged = out[..12].to_vec();
        untagged.extend_from_slice(&out[16..]);
        out = untagged;
    }
    Ok(out)
}

/// What the router must do with frame `f` under `plan`.
pub fn classify(f: &[u8], plan: &CompiledPlan, cfg: &Settings) -> Outcome {
    let mut unrouted = None;
    let mut exact = false;
    let verdict = match route(f, plan, cfg, &mut unrouted, &mut exact) {
        Ok(v) => v,
        Err(r) => Verdict::Pass(r),
    };
    Outcome {
        verdict,
        unrouted,
        exact,
    }
}

fn route(
    f: &[u8],
    plan: &CompiledPlan,
    cfg: &Settings,
    unrouted: &mut Option<TopicKey>,
    exact: &mut bool,
) -> Result<Verdict, Reason> {
    // L2: Ethernet, at most one 802.1Q tag.
    let mut et = be16(f, 12).ok_or(Reason::Truncated)?;
    let mut off = ETH_HLEN;
    let tagged = et == 0x8100;
    if tagged {
        et = be16(f, 16).ok_or(Reason::Truncated)?;
        off += VLAN_HLEN;
    }
    if et == 0x8100 || et == 0x88a8 {
        return Err(Reason::NotIp);
    }
    // L3.
    let l3 = match et {
        0x0800 => {
            if f.len() < off + 20 {
                return Err(Reason::Truncated);
            }
            let ihl = (f[off] & 0x0f) as usize * 4;
            if f[off] >> 4 != 4 || ihl < 20 {
                return Err(Reason::Truncated);
            }
            if be16(f, off + 6).unwrap_or(0) & 0x3fff != 0 {
                return Err(Reason::Fragment);
            }
            if f[off + 9] != 17 {
                return Err(Reason::NotUdp);
            }
            L3::V4 { off, ihl }
        }
        0x86dd => {
            if f.len() < off + 40 {
                return Err(Reason::Truncated);
            }
            if f[off] >> 4 != 6 {
                return Err(Reason::Truncated);
            }
            match f[off + 6] {
                17 => {}
                0 | 43 | 44 | 60 | 51 | 135 | 139 | 140 => return Err(Reason::Ipv6ExtHeader),
                _ => return Err(Reason::NotUdp),
            }
            L3::V6 { off }
        }
        _ => return Err(Reason::NotIp),
    };
    // L4.
    let l4 = l3.l4();
    if f.len() < l4 + 8 {
        return Err(Reason::Truncated);
    }
    let dport = be16(f, l4 + 2).expect("checked");
    let udp_len = be16(f, l4 + 4).expect("checked") as usize;
    if udp_len < 8 {
        return Err(Reason::Truncated);
    }
    let (poff, plen) = (l4 + 8, udp_len - 8);
    if plen > MAX_PAYLOAD || poff > MAX_PAYLOAD_OFFSET || poff + plen > f.len() {
        return Err(Reason::Truncated);
    }
    let payload = &f[poff..poff + plen];
    // L7 and the route.
    let handoff: FanoutMeta;
    let route = if dport != 0 && dport == cfg.mqttsn_port {
        let head = Head::<{ mqttsn::HEADER_READ }>::of(payload);
        let publish = mqttsn::parse_publish(&head)?;
        let index = publish.id_index();
        handoff = FanoutMeta {
            magic: FANOUT_MAGIC,
            kind: FANOUT_BY_ID,
            parity: 0,
            key: index as u64,
            nonce: 0,
        };
        match plan
            .routes
            .iter()
            .find(|r| r.mqttsn_index == Some(index) && !r.shards.is_empty())
        {
            Some(r) => r,
            None => {
                *unrouted = Some(publish.key());
                return Err(Reason::NoRoute);
            }
        }
    } else if dport != 0 && dport == cfg.coap_port {
        let window = FirstBytes::of(payload, coap::WINDOW);
        if window.is_empty() {
            return Err(Reason::Truncated);
        }
        let key =
            coap::parse_publish_from(&window, &cfg.prefix, cfg.prefix_len, &cfg.prefix_start)?.key;
        handoff = FanoutMeta {
            magic: FANOUT_MAGIC,
            kind: FANOUT_BY_NAME,
            parity: 0,
            key: key.hash,
            nonce: 0,
        };
        match plan.routes.iter().find(|r| r.key == key) {
            Some(r) => r,
            None => {
                *unrouted = Some(key);
                return Err(Reason::NoRoute);
            }
        }
    } else {
        return Err(Reason::OtherPort);
    };
    let shard = match route.shards.len() {
        1 => route.shards[0] as usize,
        0 => return Err(Reason::NoRoute),
        _ => {
            // What every copy would fail alike goes up untouched.
            match l3 {
                L3::V4 { off, .. } if f[off + 8] <= 1 => return Err(Reason::TtlExpired),
                L3::V6 { off } if f[off + 7] <= 1 => return Err(Reason::TtlExpired),
                L3::V6 { .. } if be16(f, l4 + 6) == Some(0) => {
                    return Err(Reason::ZeroChecksumV6);
                }
                _ => {}
            }
            let m = handoff;
            let mut out = Vec::with_capacity(f.len() + 24);
            out.extend_from_slice(&m.magic.to_ne_bytes());
            out.extend_from_slice(&m.kind.to_ne_bytes());
            out.extend_from_slice(&m.parity.to_ne_bytes());
            out.extend_from_slice(&m.key.to_ne_bytes());
            out.extend_from_slice(&m.nonce.to_ne_bytes());
            if tagged {
                out.extend_from_slice(&f[..12]);
                out.extend_from_slice(&f[16..]);
            } else {
                out.extend_from_slice(f);
            }
            *exact = checksums_ok(f, l3, udp_len);
            let copies = route
                .shards
                .iter()
                .map(|&s| {
                    let s = s as usize;
                    (s, rewrite(f, l3, tagged, udp_len, plan, s, cfg.src_mac))
                })
                .collect();
            return Ok(Verdict::FanOut {
                handoff: out,
                copies,
            });
        }
    };
    *exact = checksums_ok(f, l3, udp_len);
    let output = rewrite(f, l3, tagged, udp_len, plan, shard, cfg.src_mac)?;
    Ok(Verdict::Redirect { shard, output })
}

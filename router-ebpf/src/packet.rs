//! Header layouts and the audited helpers that touch packet memory.
//!
//! Every access to the packet goes through [`ptr_at`] (one bounds check
//! against `data_end`, in the shape the verifier tracks) or through
//! [`PacketPayload::byte`]. Headers are byte arrays so no access is ever
//! misaligned.

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use router_common::payload::Payload;

pub const ETH_HLEN: usize = 14;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub ver_tc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl Ipv6Hdr {
    pub const LEN: usize = 40;
}

#[repr(C)]
pub struct UdpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

impl UdpHdr {
    pub const LEN: usize = 8;
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Pointer to a `T` at `off` in the packet, if all of it lies before
/// `data_end`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Per-CPU scratch the verifier does not track (see `Payload::opaque`):
/// word 0 launders parser values, words 1.. park the router's header
/// offsets while the parser runs, so that every L2/L3 variant reaches the
/// parser in the same verifier state.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub opaque: u64,
    pub parked: [u64; 3],
}

/// Longest payload the router parses. An XDP frame's linear data is at most
/// a page, so no real datagram comes near; the bound keeps every packet
/// offset below the verifier's MAX_PACKET_OFF (0xffff) so that its bounds
/// checks are accepted.
const MAX_PAYLOAD: usize = 0x3fff;
/// Largest offset of a UDP payload (Ethernet + VLAN + IPv4 with options or
/// IPv6 + UDP is at most 14 + 4 + 60 + 8).
pub const MAX_PAYLOAD_OFFSET: usize = 128;

/// The UDP payload as the parsers see it: bytes are addressed as packet
/// start + offset, with the payload's offset laundered, so the parsers'
/// loops verify once whatever headers came before.
pub struct PacketPayload {
    ctx: *mut xdp_md,
    base: usize,
    len: usize,
    scratch: *mut Scratch,
}

impl PacketPayload {
    /// The `len` bytes at `off`, if they are all in the packet.
    #[inline(always)]
    pub fn new(ctx: &XdpContext, off: usize, len: usize, scratch: *mut Scratch) -> Option<Self> {
        if len > MAX_PAYLOAD || ctx.data() + off + len > ctx.data_end() {
            return None;
        }
        let mut p = Self {
            ctx: ctx.ctx,
            base: 0,
            len: 0,
            scratch,
        };
        p.base = p.opaque(off);
        p.len = p.opaque(len);
        // Re-bound the laundered values for the verifier.
        if p.base > MAX_PAYLOAD_OFFSET || p.len > MAX_PAYLOAD {
            return None;
        }
        Some(p)
    }
}

impl Payload for PacketPayload {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn opaque(&self, v: usize) -> usize {
        // SAFETY: `scratch` points at this CPU's slot of a per-CPU array
        // (XDP runs with preemption disabled, so nothing else touches it).
        unsafe {
            core::ptr::write_volatile(&raw mut (*self.scratch).opaque, v as u64);
            core::ptr::read_volatile(&raw const (*self.scratch).opaque) as usize
        }
    }

    #[inline(always)]
    fn byte(&self, off: usize) -> Option<u8> {
        if off >= self.len {
            return None;
        }
        // Volatile reads of data/data_end: LLVM would otherwise prove the
        // check below redundant (off < len, base + len <= data_end) and drop
        // it, but the verifier cannot follow that proof.
        // SAFETY: `ctx` is the program's live context.
        let (data, end) = unsafe {
            (
                core::ptr::read_volatile(&(*self.ctx).data) as usize,
                core::ptr::read_volatile(&(*self.ctx).data_end) as usize,
            )
        };
        let p = data + self.base + off;
        // LLVM rewrites `p + 1 > end` as `p >= end`, from which the verifier
        // derives no range for a pointer at fixed offset 0. A 1 read through
        // a volatile stack slot is opaque to LLVM but a known constant to the
        // verifier, so the check reaches it in the form it understands.
        let one = 1usize;
        // SAFETY: reading a local.
        let one = unsafe { core::ptr::read_volatile(&one) };
        if p + one > end {
            return None;
        }
        // SAFETY: `p` is within [data, data_end) as checked just above.
        Some(unsafe { *(p as *const u8) })
    }
}

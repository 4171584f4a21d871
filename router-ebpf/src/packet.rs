//! Header layouts and the audited helpers that touch packet memory.
//!
//! Every access to the packet goes through [`ptr_at`] (one bounds check
//! against `data_end`, in the shape the verifier tracks) or through
//! [`PacketPayload::byte`]. Headers are byte arrays so no access is ever
//! misaligned.

use aya_ebpf::{
    bindings::xdp_md, cty::c_void, helpers::bpf_xdp_load_bytes, programs::XdpContext,
};
use router_common::{coap, payload::Payload};

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
    /// Length of the CoAP message in [`Window`] (see [`WindowPayload::len`]).
    pub window_len: u64,
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

/// The first [`coap::WINDOW`] bytes of a CoAP message, copied out of the
/// packet into per-CPU map memory.
///
/// The option walk branches nine ways per option (delta and length each in
/// one of three forms); on packet memory every branch carries its own
/// packet-range state and the verifier's path count explodes past its
/// budget. Indices into a fixed-size map value need no range proof (they are
/// masked), so the same shared parser verifies in a few thousand steps.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Window {
    pub bytes: [u8; coap::WINDOW],
}

/// A CoAP message as the parser sees it: `len` bytes of [`Window`].
pub struct WindowPayload {
    window: *const Window,
    scratch: *mut Scratch,
}

impl WindowPayload {
    /// Copies `min(len, WINDOW)` bytes at packet offset `off` into `window`.
    /// Returns the payload and whether the message was cut short.
    #[inline(always)]
    pub fn load(
        ctx: &XdpContext,
        off: usize,
        len: usize,
        window: *mut Window,
        scratch: *mut Scratch,
    ) -> Option<(Self, bool)> {
        let cut = len > coap::WINDOW;
        // Laundered, then bounded: LLVM would otherwise test one copy of the
        // length and pass the helper another the verifier knows less about.
        // SAFETY: this CPU's scratch slot (see `PacketPayload::opaque`).
        let n = unsafe {
            let n = if cut { coap::WINDOW } else { len };
            core::ptr::write_volatile(&raw mut (*scratch).opaque, n as u64);
            core::ptr::read_volatile(&raw const (*scratch).opaque) as usize
        };
        if n == 0 || n > coap::WINDOW || off > MAX_PAYLOAD_OFFSET {
            return None;
        }
        // SAFETY: the helper bounds-checks against the packet and writes at
        // most `n` <= size_of::<Window>() bytes into our per-CPU slot.
        let rc = unsafe {
            bpf_xdp_load_bytes(ctx.ctx, off as u32, window as *mut c_void, n as u32)
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&raw mut (*scratch).window_len, n as u64) };
        Some((Self { window, scratch }, cut))
    }
}

impl Payload for WindowPayload {
    /// Read from untracked map memory on every call. Kept in a register or
    /// on the stack, the length would pick up a different range at every
    /// comparison the parser makes (`off + olen > len`, …) and, being live
    /// to the end, keep otherwise identical verifier states apart: the path
    /// count then grows with every option until the verifier gives up.
    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: this CPU's scratch slot (see `PacketPayload::opaque`).
        unsafe { core::ptr::read_volatile(&raw const (*self.scratch).window_len) as usize }
    }

    #[inline(always)]
    fn opaque(&self, v: usize) -> usize {
        // SAFETY: as for `PacketPayload::opaque`.
        unsafe {
            core::ptr::write_volatile(&raw mut (*self.scratch).opaque, v as u64);
            core::ptr::read_volatile(&raw const (*self.scratch).opaque) as usize
        }
    }

    #[inline(always)]
    fn byte(&self, off: usize) -> Option<u8> {
        // The mask below is what proves the access in bounds to the
        // verifier; reading the length from map memory also keeps LLVM
        // from dropping it as redundant (it cannot know `len <= WINDOW`).
        if off >= self.len() {
            return None;
        }
        // SAFETY: the mask keeps the index inside the window.
        Some(unsafe { (*self.window).bytes[off & (coap::WINDOW - 1)] })
    }
}

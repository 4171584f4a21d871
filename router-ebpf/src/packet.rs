//! Header layouts and the audited helpers that touch packet memory.
//!
//! Every access to the packet goes through [`ptr_at`] (one bounds check
//! against `data_end`, in the shape the verifier tracks) or through the
//! few helpers here (`byte_at`, `mqttsn_head`, `WindowPayload::load`, and
//! the header accessors `be16_at`, `ipv4_at`, `ipv6_at`, `udp_at`).
//! Headers are byte arrays, so LLVM never assumes an alignment the packet
//! may not have; whole-word access goes through [`word`], explicitly.

use aya_ebpf::{cty::c_void, helpers::bpf_xdp_load_bytes, programs::XdpContext};
use router_common::{
    coap, mqttsn,
    payload::{Head, Payload},
};

pub const ETH_HLEN: usize = 14;
/// An 802.1Q tag.
pub const VLAN_HLEN: usize = 4;

/// Where the IP header of the packet is, and which family.
#[derive(Clone, Copy)]
pub enum L3 {
    V4 { off: usize, ihl: usize },
    V6 { off: usize },
}

impl L3 {
    /// Where the UDP header starts: after the IPv4 header and its
    /// options, or after the fixed IPv6 header (extension headers are
    /// refused before an `L3` is made).
    #[inline(always)]
    pub fn l4_off(self) -> usize {
        match self {
            L3::V4 { off, ihl } => off + ihl,
            L3::V6 { off } => off + Ipv6Hdr::LEN,
        }
    }
}

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

/// Native-order loads and stores of 16-, 32- and 64-bit words at any
/// alignment, for the header rewrite (with `checksum::Patch`, which works
/// in native order).
///
/// BPF assembly for the same reason as [`copy16`]: the BPF backend splits
/// an access it cannot prove aligned into single bytes, and headers after a
/// 14-byte Ethernet header are only 2-byte aligned. The verifier and the
/// JIT accept misaligned packet access where the CPU does (x86-64, arm64).
pub mod word {
    /// A load and a store of one width, as BPF assembly (`*(u16 *)...`),
    /// and the same at a constant offset from `p` (`..._at::<OFF>`): the
    /// offset goes into the instruction, where `p.add(OFF)` takes a
    /// register copy and an add before each access (the assembly needs
    /// its address in a register).
    macro_rules! width {
        ($load:ident, $load_at:ident, $store:ident, $store_at:ident, $t:ty, $bytes:literal, $asm:literal) => {
            /// # Safety
            #[doc = concat!("`p` must point to ", $bytes, " readable bytes verified in bounds.")]
            #[inline(always)]
            pub unsafe fn $load(p: *const u8) -> $t {
                // SAFETY: per the function's contract.
                unsafe { $load_at::<0>(p) }
            }

            /// # Safety
            #[doc = concat!("`p + OFF` must point to ", $bytes, " readable bytes verified in bounds.")]
            #[inline(always)]
            pub unsafe fn $load_at<const OFF: i16>(p: *const u8) -> $t {
                let v: u64;
                // SAFETY: per the function's contract.
                unsafe {
                    core::arch::asm!(concat!("{v} = *(", $asm, " *)({p} + {off})"),
                        p = in(reg) p, v = out(reg) v, off = const OFF,
                        options(nostack, readonly, preserves_flags));
                    // A narrow load zero-extends its register (BPF ISA);
                    // told so, LLVM drops the mask it put after each.
                    core::hint::assert_unchecked(v >> (8 * $bytes - 1) >> 1 == 0);
                }
                v as $t
            }

            /// # Safety
            #[doc = concat!("`p` must point to ", $bytes, " writable bytes verified in bounds.")]
            #[inline(always)]
            #[allow(dead_code, reason = "not every width is stored at its register's own address")]
            pub unsafe fn $store(p: *mut u8, v: $t) {
                // SAFETY: per the function's contract.
                unsafe { $store_at::<0>(p, v) }
            }

            /// # Safety
            #[doc = concat!("`p + OFF` must point to ", $bytes, " writable bytes verified in bounds.")]
            #[inline(always)]
            pub unsafe fn $store_at<const OFF: i16>(p: *mut u8, v: $t) {
                // SAFETY: per the function's contract.
                unsafe {
                    core::arch::asm!(concat!("*(", $asm, " *)({p} + {off}) = {v}"),
                        p = in(reg) p, v = in(reg) v as u64, off = const OFF,
                        options(nostack, preserves_flags));
                }
            }
        };
    }

    width!(load16, load16_at, store16, store16_at, u16, 2, "u16");
    width!(load32, load32_at, store32, store32_at, u32, 4, "u32");
    width!(load64, load64_at, store64, store64_at, u64, 8, "u64");

    /// A big-endian field, in host order.
    ///
    /// # Safety
    /// `p` must point to 2 readable bytes verified in bounds.
    #[inline(always)]
    pub unsafe fn load_be16(p: *const [u8; 2]) -> u16 {
        // SAFETY: per the function's contract.
        u16::from_be(unsafe { load16(p.cast()) })
    }
}

/// The big-endian 16-bit field at `off` (an EtherType), if it lies within
/// the packet.
#[inline(always)]
pub fn be16_at(ctx: &XdpContext, off: usize) -> Option<u16> {
    let p: *const [u8; 2] = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`.
    Some(unsafe { word::load_be16(p) })
}

/// An IPv4 header the packet holds (its fixed part checked in bounds):
/// fields are read when asked for, in the order the caller asks.
#[derive(Clone, Copy)]
pub struct Ipv4View(*const Ipv4Hdr);

impl Ipv4View {
    #[inline(always)]
    pub fn version(self) -> u8 {
        // SAFETY: bounds checked by `ptr_at` when the view was made.
        unsafe { (*self.0).ver_ihl >> 4 }
    }

    /// Header length in bytes (options included).
    #[inline(always)]
    pub fn ihl(self) -> usize {
        // SAFETY: as above.
        unsafe { ((*self.0).ver_ihl & 0x0f) as usize * 4 }
    }

    /// A fragment: more-fragments flag or a fragment offset.
    #[inline(always)]
    pub fn fragment(self) -> bool {
        // SAFETY: as above.
        unsafe { word::load_be16(&raw const (*self.0).frag_off) & 0x3fff != 0 }
    }

    #[inline(always)]
    pub fn protocol(self) -> u8 {
        // SAFETY: as above.
        unsafe { (*self.0).protocol }
    }
}

/// The IPv4 header at `off`, if its fixed part lies within the packet.
#[inline(always)]
pub fn ipv4_at(ctx: &XdpContext, off: usize) -> Option<Ipv4View> {
    ptr_at::<Ipv4Hdr>(ctx, off).map(|p| Ipv4View(p))
}

/// An IPv6 header the packet holds (checked in bounds).
#[derive(Clone, Copy)]
pub struct Ipv6View(*const Ipv6Hdr);

impl Ipv6View {
    #[inline(always)]
    pub fn version(self) -> u8 {
        // SAFETY: bounds checked by `ptr_at` when the view was made.
        unsafe { (*self.0).ver_tc_flow[0] >> 4 }
    }

    #[inline(always)]
    pub fn next_header(self) -> u8 {
        // SAFETY: as above.
        unsafe { (*self.0).next_header }
    }
}

/// The IPv6 header at `off`, if it lies within the packet.
#[inline(always)]
pub fn ipv6_at(ctx: &XdpContext, off: usize) -> Option<Ipv6View> {
    ptr_at::<Ipv6Hdr>(ctx, off).map(|p| Ipv6View(p))
}

/// The UDP header at `off`: destination port and length (host order), if
/// it lies within the packet.
#[inline(always)]
pub fn udp_at(ctx: &XdpContext, off: usize) -> Option<(u16, usize)> {
    let udp: *const UdpHdr = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        Some((
            word::load_be16(&raw const (*udp).dest),
            word::load_be16(&raw const (*udp).len) as usize,
        ))
    }
}

/// The source address of the IPv4 header at `off`, as `SC_DEVICE_INDEX`
/// keys it (`::ffff:a.b.c.d`): two native-order words.
#[inline(always)]
pub fn saddr_v4_words(ctx: &XdpContext, off: usize) -> Option<[u64; 2]> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`. Bytes 8..16 of `::ffff:a.b.c.d`
    // are 0, 0, 0xff, 0xff, a, b, c, d: in a little-endian word the
    // address's own four bytes are its high half.
    let s = unsafe { word::load32((&raw const (*ip).saddr).cast()) };
    Some([0, 0xffff_0000 | (s as u64) << 32])
}

/// The source address of the IPv6 header at `off`: two native-order
/// words.
#[inline(always)]
pub fn saddr_v6_words(ctx: &XdpContext, off: usize) -> Option<[u64; 2]> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        let p: *const u8 = (&raw const (*ip).saddr).cast();
        Some([word::load64(p), word::load64(p.add(8))])
    }
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
    /// Non-zero when the message is longer than [`Window`] holds (see
    /// [`WindowPayload::cut_short`]). In memory, not a register: a flag
    /// the verifier knew would split every state of the option walk in two.
    pub window_cut: u64,
}

/// Passes `v` through this CPU's scratch slot: the verifier does not track
/// map memory, so the value comes back with nothing known about it (see
/// `Payload::opaque`).
///
/// # Safety
/// `scratch` must point at this CPU's slot of a per-CPU array (XDP runs
/// with preemption disabled, so nothing else touches it).
#[inline(always)]
unsafe fn launder(scratch: *mut Scratch, v: usize) -> usize {
    // SAFETY: per the function's contract.
    unsafe {
        core::ptr::write_volatile(&raw mut (*scratch).opaque, v as u64);
        core::ptr::read_volatile(&raw const (*scratch).opaque) as usize
    }
}

/// Longest payload the router parses. An XDP frame's linear data is at most
/// a page, so no real datagram comes near; the bound keeps every packet
/// offset below the verifier's MAX_PACKET_OFF (0xffff) so that its bounds
/// checks are accepted.
const MAX_PAYLOAD: usize = 0x3fff;
/// Largest offset of a UDP payload (Ethernet + VLAN + IPv4 with options or
/// IPv6 + UDP is at most 14 + 4 + 60 + 8).
pub const MAX_PAYLOAD_OFFSET: usize = 128;

/// Whether the `len`-byte payload at `off` lies within the frame (and
/// within the bounds the parsers are verified for).
#[inline(always)]
pub fn payload_fits(ctx: &XdpContext, off: usize, len: usize) -> bool {
    len <= MAX_PAYLOAD && off <= MAX_PAYLOAD_OFFSET && ctx.data() + off + len <= ctx.data_end()
}

/// The packet byte at `off`, if the frame holds it.
///
/// The check and the read are assembly, in the one form the verifier
/// derives the byte's bounds from (`p + 1 > end`). Written in Rust, LLVM
/// may rewrite the check as `p >= end`, from which the verifier derives no
/// range for a pointer at fixed offset 0, or merge it with earlier checks;
/// whether it does depends on the code around the call, and when it does
/// the program no longer loads.
#[inline(always)]
pub(crate) fn byte_at(ctx: &XdpContext, off: usize) -> Option<u8> {
    let p = ctx.data() + off;
    let end = ctx.data_end();
    let v: u64;
    // SAFETY: reads the byte at `p` only when `p + 1 <= end`, i.e. inside
    // the frame, and touches no other memory. 256: not in the frame.
    unsafe {
        core::arch::asm!(
            "{v} = 256",
            "{t} = {p}",
            "{t} += 1",
            "if {t} > {e} goto +1",
            "{v} = *(u8 *)({p} + 0)",
            p = in(reg) p,
            e = in(reg) end,
            t = out(reg) _,
            v = out(reg) v,
            options(nostack, readonly, preserves_flags),
        );
    }
    if v > u8::MAX as u64 {
        None
    } else {
        Some(v as u8)
    }
}

/// The first [`mqttsn::HEADER_READ`] bytes of the `len`-byte payload at
/// `off` (which [`payload_fits`] accepted), with one bounds check and three
/// word loads (see [`Head`]).
#[inline(always)]
pub fn mqttsn_head(ctx: &XdpContext, off: usize, len: usize) -> Head<{ mqttsn::HEADER_READ }> {
    const N: usize = mqttsn::HEADER_READ;
    const _: () = assert!(N == 7, "the loads below read 4 + 2 + 1 bytes");
    if let Some(p) = ptr_at::<[u8; N]>(ctx, off) {
        let p = p as *const u8;
        // SAFETY: `ptr_at` checked the N bytes lie within the packet.
        let w = unsafe {
            word::load32(p) as u64
                | (word::load16(p.add(4)) as u64) << 32
                | (*p.add(6) as u64) << 48
        };
        return Head { word: w, len };
    }
    // The frame ends less than N bytes past the payload's start, so does
    // the payload: a rare short datagram (a PINGREQ, say), read byte by
    // byte up to the frame's end.
    let mut bytes = [0u8; N];
    for (i, b) in bytes.iter_mut().enumerate() {
        match byte_at(ctx, off + i) {
            Some(v) => *b = v,
            None => break,
        }
    }
    Head::new(bytes, len)
}

/// The first [`coap::WINDOW`] bytes of a CoAP message, copied out of the
/// packet into per-CPU map memory.
///
/// The option walk reads at offsets that depend on every option before it.
/// On packet memory each such read needs `data`/`data_end` reloaded and a
/// bounds check the verifier can follow; in a fixed-size map value an index
/// masked with `WINDOW - 1` is in bounds by construction, so each byte is a
/// single masked load. With the chunked copy in [`WindowPayload::load`] the
/// CoAP path is about 20% faster than parsing in place (BENCHMARKS.md).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Window {
    /// The message, then `CHUNK` bytes of slack so that a chunk stored at
    /// any masked index stays inside the value. Bytes at or past the
    /// message length are stale and never read.
    pub bytes: [u8; coap::WINDOW + CHUNK],
}

/// Bytes copied per step by [`WindowPayload::load`].
pub const CHUNK: usize = 16;

/// Copies 16 bytes with two 8-byte loads and stores ([`word`]: the BPF
/// backend would split an unaligned 8-byte access into single bytes, which
/// made the copy dearer than the helper it replaces).
///
/// # Safety
/// `src` must be a packet pointer with 16 bytes verified in bounds and
/// `dst` must point to 16 writable bytes of a map value.
#[inline(always)]
unsafe fn copy16(src: *const u8, dst: *mut u8) {
    // SAFETY: per the function's contract.
    unsafe {
        word::store64(dst, word::load64(src));
        word::store64(dst.add(8), word::load64(src.add(8)));
    }
}

/// A CoAP message as the parser sees it: `len` bytes of [`Window`].
pub struct WindowPayload {
    window: *const Window,
    scratch: *mut Scratch,
}

impl WindowPayload {
    /// Copies `min(len, WINDOW)` bytes at packet offset `off` into `window`.
    #[inline(always)]
    pub fn load(
        ctx: &XdpContext,
        off: usize,
        len: usize,
        window: *mut Window,
        scratch: *mut Scratch,
    ) -> Option<Self> {
        let cut = len > coap::WINDOW;
        // Laundered, then bounded: LLVM would otherwise test one copy of the
        // length and pass the helper another the verifier knows less about.
        // SAFETY: `scratch` is this CPU's slot of a per-CPU array.
        let n = unsafe { launder(scratch, if cut { coap::WINDOW } else { len }) };
        if n == 0 || n > coap::WINDOW || off > MAX_PAYLOAD_OFFSET {
            return None;
        }
        if n >= CHUNK {
            // CHUNK bytes at a time, the last chunk ending exactly at `n`
            // (overlapping the one before it): for a typical publish this
            // is a few instructions where `bpf_xdp_load_bytes` costs some
            // 20 ns (BENCHMARKS.md).
            let chunks = n.div_ceil(CHUNK);
            for k in 0..coap::WINDOW / CHUNK {
                if k >= chunks {
                    break;
                }
                let start = if k + 1 == chunks {
                    n - CHUNK
                } else {
                    k * CHUNK
                };
                let src: *const [u8; CHUNK] = ptr_at(ctx, off + start)?;
                // SAFETY: `ptr_at` checked the chunk lies in the packet; the
                // mask keeps the destination inside the window's slack.
                unsafe {
                    let dst = (&raw mut (*window).bytes)
                        .cast::<u8>()
                        .add(start & (coap::WINDOW - 1));
                    copy16(src.cast(), dst);
                }
            }
        } else {
            // Too short to chunk.
            // SAFETY: the helper bounds-checks against the packet and writes
            // at most `n` < CHUNK bytes into our per-CPU slot.
            let rc =
                unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, window as *mut c_void, n as u32) };
            if rc != 0 {
                return None;
            }
        }
        // SAFETY: as above.
        unsafe {
            core::ptr::write_volatile(&raw mut (*scratch).window_len, n as u64);
            core::ptr::write_volatile(&raw mut (*scratch).window_cut, cut as u64);
        }
        Some(Self { window, scratch })
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
        // SAFETY: this CPU's scratch slot (see `Payload::opaque`).
        unsafe { core::ptr::read_volatile(&raw const (*self.scratch).window_len) as usize }
    }

    #[inline(always)]
    fn opaque(&self, v: usize) -> usize {
        // SAFETY: `scratch` is this CPU's slot of a per-CPU array.
        unsafe { launder(self.scratch, v) }
    }

    #[inline(always)]
    fn cut_short(&self) -> bool {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&raw const (*self.scratch).window_cut) != 0 }
    }

    #[inline(always)]
    fn byte(&self, off: usize) -> Option<u8> {
        // The mask below is what proves the access in bounds to the
        // verifier; reading the length from map memory also keeps LLVM
        // from dropping it as redundant (it cannot know `len <= WINDOW`).
        if off >= self.len() {
            return None;
        }
        Some(self.byte_within(off))
    }

    #[inline(always)]
    fn byte_within(&self, off: usize) -> u8 {
        // SAFETY: the mask keeps the index inside the window.
        unsafe { (*self.window).bytes[off & (coap::WINDOW - 1)] }
    }

    /// One 8-byte load: the mask keeps the word inside the window and its
    /// slack (`CHUNK` >= 8 bytes past `WINDOW`).
    #[inline(always)]
    fn word_within(&self, off: usize) -> u64 {
        // SAFETY: as above; the load may be unaligned, which BPF allows
        // for map values (`word::load64` keeps LLVM from splitting it).
        unsafe {
            word::load64(
                (&raw const (*self.window).bytes)
                    .cast::<u8>()
                    .add(off & (coap::WINDOW - 1)),
            )
        }
    }
}

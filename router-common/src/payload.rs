//! Byte access to a UDP payload, the one abstraction the parsers are written
//! against.
//!
//! On the host the payload is a slice; in the XDP program it is packet memory
//! that must be bounds-checked against `data_end` on every access, in a shape
//! the verifier accepts. Writing the parsers against this trait lets both
//! sides run the same parser code.

/// Read-only, bounds-checked access to a datagram payload.
pub trait Payload {
    /// Length of the payload in bytes (from the UDP header, not the frame:
    /// Ethernet padding is not payload).
    fn len(&self) -> usize;

    /// The byte at `off`, or `None` past the end.
    fn byte(&self, off: usize) -> Option<u8>;

    /// The byte at `off`, for an `off` the caller has already checked is
    /// below `len()`; past the end the result is unspecified (but never an
    /// out-of-bounds read). Lets a parser that validated a whole field once
    /// read it without a bounds check per byte.
    #[inline(always)]
    fn byte_within(&self, off: usize) -> u8 {
        self.byte(off).unwrap_or(0)
    }

    /// The eight bytes at `off` as a little-endian word, for an `off` the
    /// caller has already checked is below `len()`; bytes past the end are
    /// unspecified (but never an out-of-bounds read): the caller masks
    /// them off.
    #[inline(always)]
    fn word_within(&self, off: usize) -> u64 {
        let mut w = 0;
        for i in 0..8 {
            w |= (self.byte(off + i).unwrap_or(0) as u64) << (8 * i);
        }
        w
    }

    /// True when these bytes are only the first part of a longer message
    /// (the XDP program copies out a bounded window): a parser that runs
    /// out of bytes then cannot tell a malformed message from one it was
    /// not shown whole.
    #[inline(always)]
    fn cut_short(&self) -> bool {
        false
    }

    /// True when the payload is empty.
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns `v` unchanged, but lets an implementation hide the value from
    /// static analysis. The XDP implementation passes loop-carried parser
    /// state through memory the BPF verifier does not track, so that paths
    /// which differ only in those values converge at each loop head instead
    /// of multiplying (bounded loops are verified path by path). Host
    /// implementations keep the identity.
    #[inline(always)]
    fn opaque(&self, v: usize) -> usize {
        v
    }

    /// Big-endian `u16` at `off`, or `None` if it does not fit.
    #[inline(always)]
    fn be16(&self, off: usize) -> Option<u16> {
        let hi = self.byte(off)?;
        let lo = self.byte(off + 1)?;
        Some(u16::from_be_bytes([hi, lo]))
    }
}

/// The first `N` (at most 8) bytes of a payload of `len` bytes, held by
/// value in one word.
///
/// For a parser that reads only fixed offsets below `N` (the MQTT-SN
/// PUBLISH header, [`crate::mqttsn::HEADER_READ`]): the XDP program copies
/// the head out of the packet with one bounds check, where reading packet
/// memory byte by byte costs a reload of `data`/`data_end` and a check per
/// byte. A byte is a shift of the word, not an indexed load (the verifier
/// refuses the `|` LLVM makes of "stack array + variable offset"). Bytes
/// at or past `N` read as absent, so a parser that strayed there would
/// refuse the datagram, never misread it.
#[derive(Clone, Copy, Debug)]
pub struct Head<const N: usize> {
    /// The payload's first `min(N, len)` bytes, little-endian (byte `i` is
    /// bits `8i..8i+8`). Bytes at or past `len` are whatever followed the
    /// payload (frame padding, say) and are never read: [`Payload::byte`]
    /// checks `len`.
    pub word: u64,
    /// Length of the whole payload.
    pub len: usize,
}

impl<const N: usize> Head<N> {
    const FITS: () = assert!(N <= 8, "a Head holds at most 8 bytes");

    /// The head of a payload of `len` bytes whose first bytes are `bytes`.
    #[inline(always)]
    pub fn new(bytes: [u8; N], len: usize) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS;
        let mut word = 0u64;
        let mut i = 0;
        while i < N {
            word |= (bytes[i] as u64) << (8 * i);
            i += 1;
        }
        Self { word, len }
    }

    /// The head of `payload` (host side and tests).
    pub fn of(payload: &[u8]) -> Self {
        let mut bytes = [0u8; N];
        let n = payload.len().min(N);
        bytes[..n].copy_from_slice(&payload[..n]);
        Self::new(bytes, payload.len())
    }
}

impl<const N: usize> Payload for Head<N> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn byte(&self, off: usize) -> Option<u8> {
        if off < self.len && off < N {
            Some((self.word >> (8 * off)) as u8)
        } else {
            None
        }
    }
}

/// The first `max` bytes of a message, as a data plane that copies out a
/// bounded window sees it: a parser reading it knows, through
/// [`Payload::cut_short`], when the message went on past them. The host's
/// model of the XDP program reads CoAP messages through this.
#[derive(Clone, Copy, Debug)]
pub struct FirstBytes<'a> {
    bytes: &'a [u8],
    cut: bool,
}

impl<'a> FirstBytes<'a> {
    /// The first `max` bytes of `message` (all of it if shorter).
    pub fn of(message: &'a [u8], max: usize) -> Self {
        let cut = message.len() > max;
        Self {
            bytes: if cut { &message[..max] } else { message },
            cut,
        }
    }
}

impl Payload for FirstBytes<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.bytes.len()
    }

    #[inline(always)]
    fn byte(&self, off: usize) -> Option<u8> {
        self.bytes.get(off).copied()
    }

    #[inline(always)]
    fn cut_short(&self) -> bool {
        self.cut
    }
}

impl Payload for [u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline(always)]
    fn byte(&self, off: usize) -> Option<u8> {
        self.get(off).copied()
    }
}

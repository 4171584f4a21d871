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

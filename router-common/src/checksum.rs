//! Incremental Internet checksum updates (RFC 1624), shared by the XDP
//! program and host tests.
//!
//! The router changes a handful of header words (destination address, TTL,
//! port); recomputing a UDP checksum over the whole payload would cost a
//! loop per packet, so it patches the checksum with the difference instead.

/// Accumulates "replace word `old` by `new`" steps for one checksum.
///
/// Works in *native* byte order: the caller loads the header words and the
/// checksum field as native integers and stores the result the same way.
/// One's-complement sums do not depend on byte order (RFC 1071, 2.B: the
/// sum of byte-swapped words is the byte-swapped sum), so this patches the
/// big-endian checksum correctly while the data plane reads whole 16- and
/// 32-bit words with single loads, no byte shuffling. No step folds: the
/// 64-bit accumulator folds once, at the end, in three 16-bit steps, which
/// is exact for up to [`Patch::MAX_STEPS`] steps (a header rewrite takes
/// six at most).
#[derive(Clone, Copy, Debug)]
pub struct Patch {
    sum: u64,
}

impl Patch {
    /// Replace steps a patch may take: each adds less than 2^33, so with
    /// the start (under 2^16) the sum stays under 2^38, within the 2^40
    /// that three 16-bit folds bring to 16 bits.
    pub const MAX_STEPS: u32 = 16;

    /// Starts from an existing checksum field, as loaded (native order).
    #[inline(always)]
    pub fn new(check: u16) -> Self {
        Self {
            sum: (!check) as u64,
        }
    }

    /// HC' = ~(~HC + ~m + m') for one 16-bit word (RFC 1624, eqn. 3).
    #[inline(always)]
    pub fn replace16(&mut self, old: u16, new: u16) {
        self.sum += (!old) as u64 + new as u64;
    }

    /// The same for a 32-bit word: two 16-bit words at once (`!old` is
    /// the one's-complement negation of both halves, as 0xFFFF_FFFF is a
    /// one's-complement zero).
    #[inline(always)]
    pub fn replace32(&mut self, old: u32, new: u32) {
        self.sum += (!old) as u64 + new as u64;
    }

    /// The patched checksum (native order), after at most
    /// [`Patch::MAX_STEPS`] steps. Sum < 2^40: the first fold leaves less
    /// than 2^24 + 2^16, the second at most 0x1_00ff, the third 16 bits
    /// (a fold of the whole 64 bits first cost four instructions more per
    /// checksum on the data plane).
    #[inline(always)]
    pub fn finish(self) -> u16 {
        debug_assert!(self.sum < 1 << 40, "more than MAX_STEPS steps");
        let mut s = (self.sum & 0xffff) + (self.sum >> 16);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        !(s as u16)
    }

    /// The patched UDP checksum: a computed 0 is sent as 0xFFFF (RFC 768),
    /// because 0 means "no checksum" (both are the same in either order).
    #[inline(always)]
    pub fn finish_udp(self) -> u16 {
        match self.finish() {
            0 => 0xffff,
            c => c,
        }
    }
}

/// Full Internet checksum of `data` (host tests and userspace only use it
/// to check the incremental path).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ne16(b: &[u8], off: usize) -> u16 {
        u16::from_ne_bytes([b[off], b[off + 1]])
    }

    fn ne32(b: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    /// An IPv4 header with a valid checksum and the given TTL and daddr.
    fn ipv4(ttl: u8, daddr: [u8; 4], id: u16) -> [u8; 20] {
        let [a, b] = id.to_be_bytes();
        let mut hdr = [
            0x45u8, 0, 0, 0x30, a, b, 0x40, 0, ttl, 17, 0, 0, 198, 18, 0, 1, 0, 0, 0, 0,
        ];
        hdr[16..20].copy_from_slice(&daddr);
        let c = internet_checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        hdr
    }

    /// What the data plane does to an IPv4 header: TTL - 1 (the low byte
    /// of the native word at 8) and a new destination.
    fn route_v4(hdr: &mut [u8; 20], group: [u8; 4]) {
        let mut p = Patch::new(ne16(hdr, 10));
        let ttl_word = ne16(hdr, 8);
        p.replace16(ttl_word, ttl_word - 1);
        p.replace32(ne32(hdr, 16), u32::from_ne_bytes(group));
        hdr[8] -= 1;
        hdr[16..20].copy_from_slice(&group);
        hdr[10..12].copy_from_slice(&p.finish().to_ne_bytes());
    }

    #[test]
    fn incremental_equals_full_recompute() {
        let mut hdr = ipv4(64, [198, 18, 0, 254], 0x1234);
        assert_eq!(internet_checksum(&hdr), 0);
        route_v4(&mut hdr, [239, 1, 2, 3]);
        assert_eq!(hdr[8], 63);
        assert_eq!(internet_checksum(&hdr), 0);
    }

    #[test]
    fn udp_zero_becomes_ffff() {
        // A sum that folds to 0xFFFF finishes as 0.
        let p = Patch { sum: 0xffff };
        assert_eq!(p.finish(), 0);
        assert_eq!(p.finish_udp(), 0xffff);
        // Carries out of every half fold back in, up to the bound.
        for sum in [0xff_ffff_fffe, (1 << 40) - 1, 0xffff_ffff, 0x1_0000] {
            assert_eq!(Patch { sum }.finish(), !fold_reference(sum), "{sum:#x}");
        }
    }

    #[test]
    fn max_steps_of_the_largest_words_stay_exact() {
        let mut p = Patch::new(0);
        for _ in 0..Patch::MAX_STEPS {
            p.replace32(0, u32::MAX);
        }
        assert_eq!(p.finish(), !fold_reference(p.sum));
    }

    /// Folding by repeated end-around carry, one 16-bit word at a time.
    fn fold_reference(mut s: u64) -> u16 {
        let mut acc: u32 = 0;
        while s != 0 {
            acc += (s & 0xffff) as u32;
            acc = (acc & 0xffff) + (acc >> 16);
            s >>= 16;
        }
        acc as u16
    }

    proptest! {
        /// Any sum up to the bound folds as the word-by-word reference.
        #[test]
        fn finish_folds_like_the_reference(sum in 0u64..1 << 40) {
            prop_assert_eq!(Patch { sum }.finish(), !fold_reference(sum));
        }

        #[test]
        fn any_ipv4_route_keeps_the_header_valid(ttl in 2u8.., daddr in any::<[u8; 4]>(),
                group in any::<[u8; 4]>(), id in any::<u16>()) {
            let mut hdr = ipv4(ttl, daddr, id);
            route_v4(&mut hdr, group);
            prop_assert_eq!(internet_checksum(&hdr), 0);
        }

        /// A UDP-style patch of many words (an IPv6 destination and a port)
        /// equals the checksum recomputed over the changed data.
        #[test]
        fn any_word_changes_patch_like_a_recompute(data in proptest::collection::vec(any::<u8>(), 24..64),
                new in any::<[u8; 18]>()) {
            let mut data = data;
            data.truncate(data.len() & !1);
            // The checksum field is the first word; bytes 2..20 change.
            data[0] = 0;
            data[1] = 0;
            let c = internet_checksum(&data);
            data[..2].copy_from_slice(&c.to_be_bytes());
            let mut p = Patch::new(ne16(&data, 0));
            for w in 0..4 {
                let off = 2 + 4 * w;
                p.replace32(ne32(&data, off), ne32(&new, 4 * w));
            }
            p.replace16(ne16(&data, 18), ne16(&new, 16));
            data[2..20].copy_from_slice(&new);
            let sum = p.finish();
            data[..2].copy_from_slice(&sum.to_ne_bytes());
            prop_assert_eq!(internet_checksum(&data), 0);
        }
    }
}

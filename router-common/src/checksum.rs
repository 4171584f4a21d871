//! Incremental Internet checksum updates (RFC 1624), shared by the XDP
//! program and host tests.
//!
//! The router changes a handful of header words (destination address, TTL,
//! port); recomputing a UDP checksum over the whole payload would cost a
//! loop per packet, so it patches the checksum with the difference instead.

/// One's-complement add of 16-bit words accumulated in a u32.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Accumulates "replace word `old` by `new`" steps for one checksum.
#[derive(Clone, Copy, Debug)]
pub struct Patch {
    sum: u32,
}

impl Patch {
    /// Starts from an existing checksum field value (as read, host order of
    /// the big-endian field).
    #[inline(always)]
    pub fn new(check: u16) -> Self {
        Self {
            sum: (!check) as u32,
        }
    }

    /// HC' = ~(~HC + ~m + m') for one 16-bit word.
    #[inline(always)]
    pub fn replace16(&mut self, old: u16, new: u16) {
        self.sum += (!old) as u32 + new as u32;
    }

    /// Replaces a run of bytes (even length) word by word.
    #[inline(always)]
    pub fn replace_bytes<const N: usize>(&mut self, old: &[u8; N], new: &[u8; N]) {
        let mut i = 0;
        while i + 1 < N {
            self.replace16(
                u16::from_be_bytes([old[i], old[i + 1]]),
                u16::from_be_bytes([new[i], new[i + 1]]),
            );
            // Keep the accumulator from overflowing on long runs.
            self.sum = (self.sum & 0xffff) + (self.sum >> 16);
            i += 2;
        }
    }

    /// The patched checksum.
    #[inline(always)]
    pub fn finish(self) -> u16 {
        !fold(self.sum)
    }

    /// The patched UDP checksum: a computed 0 is sent as 0xFFFF (RFC 768),
    /// because 0 means "no checksum".
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
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_equals_full_recompute() {
        // An IPv4 header with a valid checksum, then change TTL and daddr.
        let mut hdr = [
            0x45u8, 0, 0, 0x30, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 254,
        ];
        let c = internet_checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(internet_checksum(&hdr), 0);

        let mut p = Patch::new(c);
        p.replace16(u16::from_be_bytes([64, 17]), u16::from_be_bytes([63, 17]));
        p.replace_bytes(&[198, 18, 0, 254], &[239, 1, 2, 3]);
        hdr[8] = 63;
        hdr[16..20].copy_from_slice(&[239, 1, 2, 3]);
        hdr[10..12].copy_from_slice(&p.finish().to_be_bytes());
        assert_eq!(internet_checksum(&hdr), 0);
    }

    #[test]
    fn udp_zero_becomes_ffff() {
        // Choose a patch whose result is exactly 0.
        let p = Patch { sum: 0xffff };
        assert_eq!(p.finish(), 0);
        assert_eq!(p.finish_udp(), 0xffff);
    }
}

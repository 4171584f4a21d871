//! The topic key: the fixed-size value the data plane looks routes up by.
//!
//! A topic is identified by its name (CoAP: the Uri-Path under the pub/sub
//! prefix; MQTT-SN: a short two-character name, or a name that a predefined
//! or gateway-assigned topic id stands for). Names hash to 64 bits eight
//! bytes at a time: the name's bytes as little-endian words (the last one
//! zero-padded), each folded in with one multiply, then the length and a
//! final avalanche. The XDP program feeds a CoAP path to the hasher one
//! Uri-Path segment at a time, a word per step ([`TopicHasher::push_word`]),
//! where a byte-at-a-time hash (FNV-1a, this project's first) cost a
//! dependent multiply per byte; the host feeds bytes ([`TopicHasher::push`]).
//! Both give the same key (proptests below, and the in-kernel parity test).
//!
//! MQTT-SN topic *ids* are keyed as aliases: the hash of a 4-byte string that
//! starts with 0xFF, a byte that never occurs in a UTF-8 topic name, so an id
//! can never hash like a name by construction. The control plane installs a
//! route under a topic's name key and under every alias key that stands for
//! it, so the packet path needs one lookup whatever form the topic came in.

/// Longest topic name (bytes, after the CoAP prefix) the data plane hashes.
/// Longer names are passed to the stack and counted, never truncated (two
/// long names sharing a prefix must not collide).
pub const TOPIC_MAX: usize = 64;

const SEED: u64 = 0xcbf2_9ce4_8422_2325;
/// 2^64 / φ, odd: the multiplier of Fibonacci hashing.
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// Marker byte that starts an alias (never valid in UTF-8).
const ALIAS_MARK: u8 = 0xFF;

/// Key of a topic in the route map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicKey {
    pub hash: u64,
}

/// Which MQTT-SN topic id namespace an alias belongs to.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AliasKind {
    /// Ids assigned by our gateway on REGISTER (TopicIdType 0b00).
    MqttSnNormal = 1,
    /// Ids fixed by configuration (TopicIdType 0b01).
    MqttSnPredefined = 2,
}

/// Streaming topic hash (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct TopicHasher {
    /// Words folded in so far.
    state: u64,
    /// Bytes pushed since the last whole word, little-endian.
    pending: u64,
    /// Bytes pushed in all.
    len: u64,
}

/// Folds one word into the state: a bijection of the state for a given
/// word, so two names differing in one word differ in the state.
#[inline(always)]
fn fold(state: u64, word: u64) -> u64 {
    (state ^ word).wrapping_mul(MUL).rotate_left(29)
}

impl Default for TopicHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl TopicHasher {
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            state: SEED,
            pending: 0,
            len: 0,
        }
    }

    /// Appends one byte.
    #[inline(always)]
    pub fn push(&mut self, byte: u8) {
        self.pending |= (byte as u64) << (8 * (self.len & 7));
        self.len += 1;
        if self.len & 7 == 0 {
            self.state = fold(self.state, self.pending);
            self.pending = 0;
        }
    }

    /// Appends the `n` low bytes of `word` (little-endian), `1 <= n <= 8`;
    /// the bytes of `word` above them must be zero. The same as `n` calls
    /// of [`TopicHasher::push`], with one fold at most.
    #[inline(always)]
    pub fn push_word(&mut self, word: u64, n: u64) {
        let have = self.len & 7;
        // Bytes shifted past bit 63 are the ones the next word starts with.
        self.pending |= word << (8 * have);
        if have + n >= 8 {
            self.state = fold(self.state, self.pending);
            // `word >> (64 - 8 * have)`, written so that `have == 0`
            // shifts by 63 + 1 rather than by 64 (which Rust forbids).
            self.pending = (word >> 1) >> (63 - 8 * have);
        }
        self.len += n;
    }

    /// Bytes pushed so far.
    #[inline(always)]
    pub fn len(&self) -> u64 {
        self.len
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Passes the byte count through `f`, which must return it unchanged:
    /// the XDP program hides it from the verifier there, like its other
    /// loop-carried parser state (see `payload::Payload::opaque`).
    #[inline(always)]
    pub fn map_len(&mut self, f: impl FnOnce(u64) -> u64) {
        self.len = f(self.len);
    }

    #[inline(always)]
    pub fn finish(self) -> TopicKey {
        let mut h = fold(self.state, self.pending) ^ self.len;
        // The final avalanche of MurmurHash3 (fmix64).
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        TopicKey { hash: h }
    }
}

/// The key of a topic name. Names longer than [`TOPIC_MAX`] are hashed all
/// the same (the control plane refuses them in plans; the data plane never
/// produces them).
#[inline(always)]
pub fn topic_key(name: &[u8]) -> TopicKey {
    let mut h = TopicHasher::new();
    for &b in name {
        h.push(b);
    }
    h.finish()
}

/// The key an MQTT-SN topic id stands for.
#[inline(always)]
pub fn alias_key(kind: AliasKind, id: u16) -> TopicKey {
    let [hi, lo] = id.to_be_bytes();
    let mut h = TopicHasher::new();
    h.push(ALIAS_MARK);
    h.push(kind as u8);
    h.push(hi);
    h.push(lo);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash from its definition: whole little-endian words, the last
    /// zero-padded, folded in order, then the length and the avalanche.
    fn by_definition(name: &[u8]) -> u64 {
        let mut state = SEED;
        let mut last = 0;
        let mut chunks = name.chunks_exact(8);
        for c in &mut chunks {
            state = fold(state, u64::from_le_bytes(c.try_into().unwrap()));
        }
        for (i, b) in chunks.remainder().iter().enumerate() {
            last |= (*b as u64) << (8 * i);
        }
        let mut h = TopicHasher::new();
        h.state = state;
        h.pending = last;
        h.len = name.len() as u64;
        h.finish().hash
    }

    #[test]
    fn keys_are_stable() {
        // Keys are part of the pinned layout (installed routes): a change
        // here needs a new `maps::LAYOUT_VERSION`.
        // (Also computed by an independent Python transcription.)
        assert_eq!(topic_key(b"").hash, 0xd102_b704_521d_c6eb);
        assert_eq!(topic_key(b"a").hash, 0x983a_8a7e_9152_b592);
        assert_eq!(topic_key(b"temp/room1").hash, 0xbe5f_851a_fbfa_40f7);
    }

    #[test]
    fn bytes_and_words_hash_like_the_definition() {
        let name = b"building-7/floor-12/room-1234/co2";
        assert_eq!(topic_key(name).hash, by_definition(name));
        for split in 0..name.len() {
            let mut h = TopicHasher::new();
            for part in [&name[..split], &name[split..]] {
                for c in part.chunks(8) {
                    let mut w = [0u8; 8];
                    w[..c.len()].copy_from_slice(c);
                    h.push_word(u64::from_le_bytes(w), c.len() as u64);
                }
            }
            assert_eq!(h.finish().hash, by_definition(name), "split at {split}");
        }
    }

    #[test]
    fn trailing_zero_bytes_and_lengths_differ() {
        assert_ne!(topic_key(b"a"), topic_key(b"a\0"));
        assert_ne!(topic_key(b""), topic_key(b"\0"));
        assert_ne!(topic_key(b"abcdefgh"), topic_key(b"abcdefgh\0"));
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_hashes_like_the_definition(
            name in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            cuts in proptest::collection::vec(1usize..=8, 0..80),
        ) {
            let mut h = TopicHasher::new();
            let (mut at, mut cut) = (0, cuts.iter().cycle());
            while at < name.len() {
                let n = (*cut.next().unwrap_or(&8)).min(name.len() - at);
                let mut w = [0u8; 8];
                w[..n].copy_from_slice(&name[at..at + n]);
                h.push_word(u64::from_le_bytes(w), n as u64);
                at += n;
            }
            proptest::prop_assert_eq!(h.finish().hash, by_definition(&name));
            proptest::prop_assert_eq!(topic_key(&name).hash, by_definition(&name));
        }
    }

    #[test]
    fn aliases_differ_by_kind_and_id_and_from_names() {
        let a = alias_key(AliasKind::MqttSnNormal, 7);
        let b = alias_key(AliasKind::MqttSnPredefined, 7);
        let c = alias_key(AliasKind::MqttSnNormal, 8);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, topic_key(&[0xFF, 1, 0, 7][1..]));
        assert_eq!(a, topic_key(&[0xFF, 1, 0, 7]));
    }
}

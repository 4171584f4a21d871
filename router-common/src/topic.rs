//! The topic key: the fixed-size value the data plane looks routes up by.
//!
//! A topic is identified by its name (CoAP: the Uri-Path under the pub/sub
//! prefix; MQTT-SN: a short two-character name, or a name that a predefined
//! or gateway-assigned topic id stands for). Names hash with 64-bit FNV-1a,
//! fed one byte at a time so the XDP program can hash straight out of packet
//! memory in a bounded loop without copying.
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

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

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

/// Streaming FNV-1a over topic bytes.
#[derive(Clone, Copy, Debug)]
pub struct TopicHasher {
    state: u64,
}

impl Default for TopicHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl TopicHasher {
    #[inline(always)]
    pub const fn new() -> Self {
        Self { state: FNV_OFFSET }
    }

    #[inline(always)]
    pub fn push(&mut self, byte: u8) {
        self.state ^= byte as u64;
        self.state = self.state.wrapping_mul(FNV_PRIME);
    }

    #[inline(always)]
    pub fn finish(self) -> TopicKey {
        TopicKey { hash: self.state }
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

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(topic_key(b"").hash, 0xcbf29ce484222325);
        assert_eq!(topic_key(b"a").hash, 0xaf63dc4c8601ec8c);
        assert_eq!(topic_key(b"foobar").hash, 0x85944171f73967e8);
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

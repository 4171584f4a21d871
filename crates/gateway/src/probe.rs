//! Latency probes through the data plane. The daemon sends, every so
//! often and for every shard, an MQTT-SN QoS 0 publish on the shard's
//! probe topic (predefined id [`BASE`]` + shard`) into an ingress the XDP
//! program serves; the plan routes that id to the shard's group and to the
//! gateway's relay, and the gateway, receiving the relay's copy, reads the
//! send time from the payload and the kernel's receive time from the
//! socket: one-way latency through the router (parse, route, copy,
//! rewrite, egress), on one clock, with no sync between hosts.
//! Shard-aware devices receive the shard's copy too and ignore it.

use crate::mqttsn::{Flags, Message, decode, encode};
use router_common::mqttsn::TOPIC_PREDEFINED;

/// Predefined topic ids `BASE ..= BASE + MAX_SHARDS - 1` are the probes'.
pub const BASE: u16 = 0xE000;

/// Probe topics' names (never routed by the planner; `$`-names are the
/// router's own).
pub const PREFIX: &str = "$probe/";

/// The payload's first bytes.
const MAGIC: &[u8; 8] = b"scprobe1";

/// The probe topic id of `shard`, if it has one.
pub fn topic_id(shard: u32) -> Option<u16> {
    (shard < router_common::maps::MAX_SHARDS).then(|| BASE + shard as u16)
}

/// The shard a probe topic id is of.
pub fn shard_of(topic_id_type: u8, id: u16) -> Option<u32> {
    (topic_id_type == TOPIC_PREDEFINED
        && id >= BASE
        && u32::from(id - BASE) < router_common::maps::MAX_SHARDS)
        .then(|| u32::from(id - BASE))
}

/// The probe topic's name for `shard`.
pub fn topic_name(shard: u32) -> String {
    format!("{PREFIX}{shard}")
}

/// One probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub shard: u32,
    pub seq: u64,
    /// When it was sent: unix time, ns.
    pub sent_ns: u64,
}

impl Probe {
    /// The MQTT-SN datagram (None: the shard has no probe id).
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut data = Vec::with_capacity(24);
        data.extend_from_slice(MAGIC);
        data.extend_from_slice(&self.seq.to_be_bytes());
        data.extend_from_slice(&self.sent_ns.to_be_bytes());
        encode(&Message::Publish {
            flags: Flags {
                topic_id_type: TOPIC_PREDEFINED,
                ..Flags::NONE
            },
            topic_id: topic_id(self.shard)?,
            msg_id: 0,
            data,
        })
        .ok()
    }

    /// A probe, if the datagram is one.
    pub fn decode(datagram: &[u8]) -> Option<Probe> {
        let Ok(Message::Publish {
            flags,
            topic_id,
            data,
            ..
        }) = decode(datagram)
        else {
            return None;
        };
        let shard = shard_of(flags.topic_id_type, topic_id)?;
        let rest = data.strip_prefix(MAGIC.as_slice())?;
        if rest.len() != 16 {
            return None;
        }
        Some(Probe {
            shard,
            seq: u64::from_be_bytes(rest[..8].try_into().ok()?),
            sent_ns: u64::from_be_bytes(rest[8..].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_other_publishes_are_not_probes() {
        let p = Probe {
            shard: 4095,
            seq: 7,
            sent_ns: 1_800_000_000_123_456_789,
        };
        let d = p.encode().unwrap();
        assert_eq!(Probe::decode(&d), Some(p));
        assert_eq!(topic_id(4096), None);
        assert!(Probe { shard: 4096, ..p }.encode().is_none());
        assert_eq!(shard_of(TOPIC_PREDEFINED, BASE + 3), Some(3));
        assert_eq!(shard_of(TOPIC_PREDEFINED, BASE - 1), None);
        assert_eq!(shard_of(router_common::mqttsn::TOPIC_SHORT, BASE + 3), None);
        // A publish on a probe id without the probe's payload, and a
        // truncated one, are not probes.
        let other = encode(&Message::Publish {
            flags: Flags {
                topic_id_type: TOPIC_PREDEFINED,
                ..Flags::NONE
            },
            topic_id: BASE + 1,
            msg_id: 0,
            data: b"hello".to_vec(),
        })
        .unwrap();
        assert_eq!(Probe::decode(&other), None);
        assert_eq!(Probe::decode(&d[..d.len() - 1]), None);
    }

    proptest::proptest! {
        #[test]
        fn any_probe_round_trips(shard in 0u32..4096, seq: u64, sent_ns: u64) {
            let p = Probe { shard, seq, sent_ns };
            proptest::prop_assert_eq!(Probe::decode(&p.encode().unwrap()), Some(p));
        }

        #[test]
        fn any_datagram_decodes_without_panic(d in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Some(p) = Probe::decode(&d) {
                proptest::prop_assert!(p.shard < 4096);
            }
        }
    }
}

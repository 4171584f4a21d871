//! MQTT-SN v1.2 PUBLISH recognition (OASIS MQTT-SN v1.2, sections 5.2, 5.3.4, 5.4.12).
//!
//! The data plane forwards only what needs no session state: PUBLISH with
//! QoS 0 or QoS -1. Everything else (CONNECT, REGISTER, SUBSCRIBE, PINGREQ,
//! QoS 1/2 PUBLISH, ...) is a control message for the gateway in userspace.
//!
//! Wire format of PUBLISH:
//! `Length(1 | 0x01 + 2) MsgType(0x0C) Flags TopicId(2) MsgId(2) Data`,
//! Flags = `DUP | QoS(2) | Retain | Will | CleanSession | TopicIdType(2)`.

use crate::{
    payload::Payload,
    reason::Reason,
    topic::{AliasKind, TopicKey, alias_key, topic_key},
};

pub const MSG_PUBLISH: u8 = 0x0C;
/// First length octet announcing the 3-octet length form.
pub const LONG_LENGTH_MARK: u8 = 0x01;

/// Topic id types (Flags bits 1..0).
pub const TOPIC_NORMAL: u8 = 0b00;
pub const TOPIC_PREDEFINED: u8 = 0b01;
pub const TOPIC_SHORT: u8 = 0b10;
/// The predefined topic id that names, for each client, its own control
/// topic in shardcast's device protocol (docs/device-protocol.md): never
/// a plan's predefined id.
pub const CONTROL_ID: u16 = 0xFFFE;

/// QoS as carried in Flags bits 6..5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Zero,
    One,
    Two,
    /// QoS -1: "publish without connection", predefined or short topics only.
    MinusOne,
}

impl Qos {
    #[inline(always)]
    pub fn from_flags(flags: u8) -> Qos {
        match (flags >> 5) & 0b11 {
            0 => Qos::Zero,
            1 => Qos::One,
            2 => Qos::Two,
            _ => Qos::MinusOne,
        }
    }
}

/// A PUBLISH the data plane may forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    pub qos: Qos,
    pub topic_id_type: u8,
    pub topic_id: u16,
    /// Offset of the first data byte.
    pub data_offset: usize,
}

impl Publish {
    /// The topic key the id stands for: a short name's key is the name's
    /// (two bytes), an id's is its alias key. Computed on demand: the fast
    /// path finds the route by [`Publish::id_index`] and needs the key only
    /// to count a topic it has no route for.
    #[inline(always)]
    pub fn key(&self) -> TopicKey {
        match self.topic_id_type {
            TOPIC_SHORT => topic_key(&self.topic_id.to_be_bytes()),
            TOPIC_NORMAL => alias_key(AliasKind::MqttSnNormal, self.topic_id),
            _ => alias_key(AliasKind::MqttSnPredefined, self.topic_id),
        }
    }

    /// Where the route of this id is in a plan's id route array.
    #[inline(always)]
    pub fn id_index(&self) -> u32 {
        crate::maps::mqttsn_id_index(self.topic_id_type, self.topic_id)
    }
}

/// `parse_publish` reads no byte at or past this offset (the longest
/// header it inspects: 3 length octets, MsgType, Flags, TopicId), so a
/// [`crate::payload::Head`] of this many bytes is all it needs.
pub const HEADER_READ: usize = 7;

/// Length of the header: the Length field plus MsgType, Flags, TopicId, MsgId.
const fn publish_header_len(length_field: usize) -> usize {
    length_field + 1 + 1 + 2 + 2
}

/// Recognises a forwardable PUBLISH, or says why the datagram must go to the
/// gateway instead.
#[inline(always)]
pub fn parse_publish<P: Payload + ?Sized>(p: &P) -> Result<Publish, Reason> {
    let first = p.byte(0).ok_or(Reason::MqttSnBadLength)?;
    if first == LONG_LENGTH_MARK {
        let length = p.be16(1).ok_or(Reason::MqttSnBadLength)? as usize;
        parse_publish_after_length(p, length, 3)
    } else {
        parse_publish_after_length(p, first as usize, 1)
    }
}

/// [`parse_publish`] once the Length field is read: `length` is its value
/// and `length_field` its size (1, or 3 in the long form). The XDP fast
/// path, which takes only the short form, calls it with a constant 1, so
/// every offset below is a constant there.
#[inline(always)]
pub fn parse_publish_after_length<P: Payload + ?Sized>(
    p: &P,
    length: usize,
    length_field: usize,
) -> Result<Publish, Reason> {
    let msg_type = p.byte(length_field).ok_or(Reason::MqttSnBadLength)?;
    if msg_type != MSG_PUBLISH {
        return Err(Reason::MqttSnControl);
    }
    // The length field counts the whole message, itself included; it must
    // match the datagram exactly (a lie in either direction is refused).
    if length != p.len() || length < publish_header_len(length_field) {
        return Err(Reason::MqttSnBadLength);
    }
    let flags = p.byte(length_field + 1).ok_or(Reason::MqttSnBadLength)?;
    let qos = Qos::from_flags(flags);
    if matches!(qos, Qos::One | Qos::Two) {
        return Err(Reason::MqttSnQos);
    }
    let topic_id_type = flags & 0b11;
    let topic_id = p.be16(length_field + 2).ok_or(Reason::MqttSnBadLength)?;
    match topic_id_type {
        TOPIC_SHORT => {}
        TOPIC_NORMAL | TOPIC_PREDEFINED => {
            // 0x0000 and 0xFFFF are reserved topic ids (section 5.3.11).
            if topic_id == 0 || topic_id == 0xffff {
                return Err(Reason::MqttSnMalformed);
            }
            // QoS -1 has no session, so no REGISTERed ids (section 6.8).
            if topic_id_type == TOPIC_NORMAL && qos == Qos::MinusOne {
                return Err(Reason::MqttSnMalformed);
            }
        }
        _ => return Err(Reason::MqttSnMalformed),
    }
    Ok(Publish {
        qos,
        topic_id_type,
        topic_id,
        data_offset: publish_header_len(length_field),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    extern crate std;
    use std::vec::Vec;

    fn publish(long: bool, flags: u8, topic: [u8; 2], data: &[u8]) -> Vec<u8> {
        crate::build::mqttsn_publish(long, flags, topic, 0, data)
    }

    #[test]
    fn short_topic_qos0_both_length_forms() {
        for long in [false, true] {
            let pkt = publish(long, TOPIC_SHORT, *b"ab", b"hello");
            let p = parse_publish(&pkt[..]).unwrap();
            assert_eq!(p.key(), topic_key(b"ab"));
            assert_eq!(p.qos, Qos::Zero);
            assert_eq!(&pkt[p.data_offset..], b"hello");
        }
    }

    #[test]
    fn predefined_and_normal_ids_are_aliases() {
        let pkt = publish(false, 0b0110_0000 | TOPIC_PREDEFINED, [0, 42], b"x");
        let p = parse_publish(&pkt[..]).unwrap();
        assert_eq!(p.qos, Qos::MinusOne);
        assert_eq!(p.key(), alias_key(AliasKind::MqttSnPredefined, 42));

        let pkt = publish(false, TOPIC_NORMAL, [1, 2], b"x");
        let p = parse_publish(&pkt[..]).unwrap();
        assert_eq!(p.key(), alias_key(AliasKind::MqttSnNormal, 0x0102));
    }

    #[test]
    fn long_form_with_large_payload() {
        let data = [7u8; 600];
        let pkt = publish(true, TOPIC_SHORT, *b"zz", &data);
        assert_eq!(pkt.len(), 609);
        assert!(parse_publish(&pkt[..]).is_ok());
    }

    #[test]
    fn qos1_qos2_go_to_gateway() {
        for q in [0b0010_0000, 0b0100_0000] {
            let pkt = publish(false, q | TOPIC_SHORT, *b"ab", b"x");
            assert_eq!(parse_publish(&pkt[..]), Err(Reason::MqttSnQos));
        }
    }

    #[test]
    fn control_messages_go_to_gateway() {
        // PINGREQ: length 2, type 0x16. CONNECT: type 0x04.
        assert_eq!(parse_publish(&[2u8, 0x16][..]), Err(Reason::MqttSnControl));
        let connect = [8u8, 0x04, 0x04, 0x01, 0, 30, b'c', b'1'];
        assert_eq!(parse_publish(&connect[..]), Err(Reason::MqttSnControl));
        // REGISTER with the long length form.
        let reg = [1u8, 0, 9, 0x0A, 0, 0, 0, 1, b't'];
        assert_eq!(parse_publish(&reg[..]), Err(Reason::MqttSnControl));
    }

    #[test]
    fn length_lies_in_both_directions() {
        let mut pkt = publish(false, TOPIC_SHORT, *b"ab", b"hello");
        pkt[0] += 1;
        assert_eq!(parse_publish(&pkt[..]), Err(Reason::MqttSnBadLength));
        pkt[0] -= 2;
        assert_eq!(parse_publish(&pkt[..]), Err(Reason::MqttSnBadLength));
        let mut pkt = publish(true, TOPIC_SHORT, *b"ab", b"hello");
        pkt[2] += 1;
        assert_eq!(parse_publish(&pkt[..]), Err(Reason::MqttSnBadLength));
        pkt[2] -= 2;
        assert_eq!(parse_publish(&pkt[..]), Err(Reason::MqttSnBadLength));
    }

    #[test]
    fn truncated_and_empty() {
        assert_eq!(parse_publish(&[][..]), Err(Reason::MqttSnBadLength));
        assert_eq!(parse_publish(&[1u8][..]), Err(Reason::MqttSnBadLength));
        assert_eq!(parse_publish(&[1u8, 0][..]), Err(Reason::MqttSnBadLength));
        // Consistent length but shorter than a PUBLISH header.
        assert_eq!(
            parse_publish(&[5u8, MSG_PUBLISH, 2, b'a', b'b'][..]),
            Err(Reason::MqttSnBadLength)
        );
    }

    #[test]
    fn reserved_values_are_malformed() {
        let pkt = publish(false, 0b11, *b"ab", b"x");
        assert_eq!(parse_publish(&pkt[..]), Err(Reason::MqttSnMalformed));
        for id in [[0, 0], [0xff, 0xff]] {
            let pkt = publish(false, TOPIC_PREDEFINED, id, b"x");
            assert_eq!(parse_publish(&pkt[..]), Err(Reason::MqttSnMalformed));
        }
        // QoS -1 with a normal (REGISTERed) id.
        let pkt = publish(false, 0b0110_0000 | TOPIC_NORMAL, [0, 5], b"x");
        assert_eq!(parse_publish(&pkt[..]), Err(Reason::MqttSnMalformed));
    }

    proptest! {
        #[test]
        fn never_panics_and_accepts_only_consistent_lengths(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(p) = parse_publish(&bytes[..]) {
                let len = if bytes[0] == 1 { u16::from_be_bytes([bytes[1], bytes[2]]) as usize } else { bytes[0] as usize };
                prop_assert_eq!(len, bytes.len());
                prop_assert!(p.data_offset <= bytes.len());
            }
        }

        /// The XDP program parses a copy of the first `HEADER_READ` bytes:
        /// it must reach the same verdict as the whole datagram.
        #[test]
        fn the_head_decides_like_the_whole(bytes in proptest::collection::vec(any::<u8>(), 0..40),
                publishy in any::<bool>(), long in any::<bool>()) {
            let mut bytes = bytes;
            // Steer half the cases into consistent PUBLISH headers.
            if publishy && bytes.len() >= HEADER_READ {
                let n = bytes.len();
                if long {
                    bytes[..4].copy_from_slice(&[1, (n >> 8) as u8, n as u8, MSG_PUBLISH]);
                } else {
                    bytes[..2].copy_from_slice(&[n as u8, MSG_PUBLISH]);
                }
            }
            let head = crate::payload::Head::<HEADER_READ>::of(&bytes);
            prop_assert_eq!(parse_publish(&head), parse_publish(&bytes[..]));
        }

        #[test]
        fn every_wellformed_short_publish_is_accepted(long in any::<bool>(), a in any::<u8>(), b in any::<u8>(),
                dup in any::<bool>(), retain in any::<bool>(), qm1 in any::<bool>(),
                data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assume!(long || data.len() <= 248);
            let flags = (dup as u8) << 7 | if qm1 { 0b0110_0000 } else { 0 } | (retain as u8) << 4 | TOPIC_SHORT;
            let pkt = publish(long, flags, [a, b], &data);
            let p = parse_publish(&pkt[..]).unwrap();
            prop_assert_eq!(p.key(), topic_key(&[a, b]));
            prop_assert_eq!(&pkt[p.data_offset..], &data[..]);
        }
    }
}

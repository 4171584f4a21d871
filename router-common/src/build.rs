//! Encoders for the messages the router recognises, for tests, fixtures,
//! benchmarks and the demo's simulated devices (feature `builders`). One
//! encoder, used everywhere, so every test speaks the same wire format.

extern crate alloc;

use alloc::vec::Vec;

use crate::{coap, mqttsn};

/// An MQTT-SN PUBLISH: `long` picks the 3-octet length form; `flags` carries
/// QoS and TopicIdType; `msg_id` is 0 for QoS 0/-1.
pub fn mqttsn_publish(long: bool, flags: u8, topic: [u8; 2], msg_id: u16, data: &[u8]) -> Vec<u8> {
    let body_len = 1 + 1 + 2 + 2 + data.len();
    let mut v = Vec::with_capacity(3 + body_len);
    if long {
        v.push(mqttsn::LONG_LENGTH_MARK);
        v.extend_from_slice(&((3 + body_len) as u16).to_be_bytes());
    } else {
        v.push((1 + body_len) as u8);
    }
    v.push(mqttsn::MSG_PUBLISH);
    v.push(flags);
    v.extend_from_slice(&topic);
    v.extend_from_slice(&msg_id.to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Flags for a QoS 0 PUBLISH with the given TopicIdType.
pub const fn qos0(topic_id_type: u8) -> u8 {
    topic_id_type
}

/// Flags for a QoS -1 PUBLISH with the given TopicIdType.
pub const fn qos_minus1(topic_id_type: u8) -> u8 {
    0b0110_0000 | topic_id_type
}

/// Appends one CoAP option with the shortest delta/length encoding.
pub fn coap_option(out: &mut Vec<u8>, delta: u16, value: &[u8]) {
    fn nibble(v: u16) -> (u8, Vec<u8>) {
        match v {
            0..=12 => (v as u8, Vec::new()),
            13..=268 => (13, alloc::vec![(v - 13) as u8]),
            _ => (14, (v - 269).to_be_bytes().to_vec()),
        }
    }
    let (d, dx) = nibble(delta);
    let (l, lx) = nibble(value.len() as u16);
    out.push(d << 4 | l);
    out.extend(dx);
    out.extend(lx);
    out.extend_from_slice(value);
}

/// A CoAP request: type `t`, `code`, token, one Uri-Path option per path
/// segment, Content-Format text/plain, then the payload (marker omitted when
/// empty).
pub fn coap_request(
    t: u8,
    code: u8,
    msg_id: u16,
    token: &[u8],
    path: &[&str],
    payload: &[u8],
) -> Vec<u8> {
    let [a, b] = msg_id.to_be_bytes();
    let mut v = alloc::vec![coap::VERSION << 6 | t << 4 | token.len() as u8, code, a, b];
    v.extend_from_slice(token);
    let mut last = 0;
    for seg in path {
        coap_option(&mut v, coap::OPTION_URI_PATH - last, seg.as_bytes());
        last = coap::OPTION_URI_PATH;
    }
    coap_option(&mut v, 12 - last, &[0]);
    if !payload.is_empty() {
        v.push(coap::PAYLOAD_MARKER);
        v.extend_from_slice(payload);
    }
    v
}

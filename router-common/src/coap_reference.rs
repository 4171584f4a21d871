//! RFC 7252 read plainly: the independent reading that the data plane's
//! CoAP parser ([`crate::coap`]) is held to, by a property test and by the
//! differential run through the loaded XDP program (feature `builders`).
//!
//! It decodes the whole message into options first, with no budget, no
//! window, no hashing and no early exit, then matches the path against
//! the prefix: nothing shared with the parser but the constants.

extern crate alloc;

use alloc::vec::Vec;

use crate::{
    coap::{CODE_POST, CODE_PUT, MAX_OPTIONS, OPTION_MAX, OPTION_URI_PATH, TYPE_NON},
    topic::TOPIC_MAX,
};

/// The topic `message` publishes to under `prefix` (segments joined with
/// '/', ending in '/', or empty), when it is a well-formed (RFC 7252
/// section 3) NON POST or PUT whose Uri-Path starts with the prefix's
/// segments and goes on, with at most [`MAX_OPTIONS`] options and a topic
/// of 1..=[`TOPIC_MAX`] bytes; `None` for anything else.
pub fn publish_topic(message: &[u8], prefix: &[u8]) -> Option<Vec<u8>> {
    let m = message;
    if m.len() < 4 || m[0] >> 6 != 1 || m[0] & 0x0f > 8 {
        return None;
    }
    if (m[0] >> 4) & 3 != TYPE_NON || !(m[1] == CODE_POST || m[1] == CODE_PUT) {
        return None;
    }
    let mut off = 4 + (m[0] & 0x0f) as usize;
    if off > m.len() {
        return None;
    }
    let (mut number, mut count, mut path) = (0u32, 0, Vec::new());
    while off < m.len() {
        if m[off] == 0xff {
            // A marker must be followed by a payload.
            if off + 1 == m.len() {
                return None;
            }
            break;
        }
        let b = m[off];
        off += 1;
        let mut field = |nibble: u8| -> Option<u32> {
            let (v, ext) = match nibble {
                0..=12 => (nibble as u32, 0),
                13 => (*m.get(off)? as u32 + 13, 1),
                14 => (
                    u16::from_be_bytes([*m.get(off)?, *m.get(off + 1)?]) as u32 + 269,
                    2,
                ),
                _ => return None,
            };
            off += ext;
            Some(v)
        };
        number += field(b >> 4)?;
        let len = field(b & 0x0f)? as usize;
        if number > OPTION_MAX || off + len > m.len() {
            return None;
        }
        if number == OPTION_URI_PATH as u32 {
            path.push(&m[off..off + len]);
        }
        off += len;
        count += 1;
    }
    if count > MAX_OPTIONS {
        return None;
    }
    // The prefix is the first k segments, each followed by '/'.
    let k = (0..path.len()).find(|&k| {
        let mut joined = path[..k].join(&b'/');
        if k > 0 {
            joined.push(b'/');
        }
        joined == prefix
    })?;
    let topic = path[k..].join(&b'/');
    (!topic.is_empty() && topic.len() <= TOPIC_MAX).then_some(topic)
}

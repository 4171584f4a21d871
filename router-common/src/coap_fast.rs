//! The CoAP publish of the usual shape, read in place: the XDP program's
//! fast path for CoAP (`router-ebpf/src/fast.rs`), with no copy of the
//! message into a per-CPU window and no walk of the general form.
//!
//! The shape: version 1, NON, POST or PUT, a token of at most 8 bytes;
//! options starting with the pub/sub prefix's own encoding
//! ([`PrefixStart`]), then at most [`SEGMENTS`] topic segments of at most
//! 12 bytes each, then at most [`TRAILING`] other options with one-nibble
//! deltas and lengths (Content-Format, Uri-Query...); then the payload
//! marker with a payload after it, or the end of the message. Every
//! option it reads is checked as [`coap::parse_publish_from`] checks it,
//! and a message of this shape holds too few options for that walk's
//! budget to matter, so for every message either this gives `None`, or
//! both give the same topic key (a property test below holds it to
//! that). `None` only means "not this shape": the general parser then
//! decides.

use crate::{
    coap::{self, PrefixStart},
    topic::{TopicHasher, TopicKey},
};

/// Topic segments read after the prefix's.
pub const SEGMENTS: usize = 4;
/// Other options read after the path.
pub const TRAILING: usize = 2;
/// The longest one-nibble option length (13 and up take extension bytes).
const NIBBLE_MAX: usize = 12;

/// A message's bytes where they lie (the XDP program: the frame, checked
/// against its end at each read).
pub trait InPlace {
    /// The byte at `off`, if the buffer holds it.
    fn byte(&self, off: usize) -> Option<u8>;
    /// The 8 bytes at `off`, little-endian, if the buffer holds them
    /// (they may run past the message: the caller masks what it uses).
    fn word(&self, off: usize) -> Option<u64>;
}

impl InPlace for [u8] {
    fn byte(&self, off: usize) -> Option<u8> {
        self.get(off).copied()
    }

    fn word(&self, off: usize) -> Option<u64> {
        let b = self.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }
}

/// The low `n` bytes of a word (`1 <= n <= 8`).
#[inline(always)]
fn low_bytes(word: u64, n: usize) -> u64 {
    word & (u64::MAX >> (64 - 8 * n))
}

/// The topic key of the `len`-byte CoAP message at the start of `m`, if
/// it is a publish of the fast shape under the prefix `start` encodes;
/// `None` for any other message.
#[inline(always)]
pub fn publish_key<M: InPlace + ?Sized>(
    m: &M,
    len: usize,
    start: &PrefixStart,
) -> Option<TopicKey> {
    let head = m.word(0)?;
    let (b0, code) = (head as u8, (head >> 8) as u8);
    let tkl = (b0 & 0x0f) as usize;
    if b0 >> 4 != (coap::VERSION << 2 | coap::TYPE_NON)
        || tkl > 8
        || (code != coap::CODE_POST && code != coap::CODE_PUT)
    {
        return None;
    }
    let plen = start.len as usize;
    // The walk's option budget cannot run out on this shape.
    if plen == 0
        || plen > PrefixStart::WORDS * 8
        || start.segments as usize + SEGMENTS + TRAILING > coap::MAX_OPTIONS
    {
        return None;
    }
    let mut off = 4 + tkl;
    if off + plen > len {
        return None;
    }
    if start.matches_words(|at| m.word(off + at)) != Some(true) {
        return None;
    }
    off += plen;
    // The topic: the Uri-Path segments after the prefix's, joined by '/'.
    let mut hasher = TopicHasher::new();
    for segment in 0..SEGMENTS {
        if off >= len {
            break;
        }
        let h = m.byte(off)?;
        // Another Uri-Path option has delta 0 (a marker or any other
        // option ends the path).
        if h >> 4 != 0 {
            break;
        }
        let n = (h & 0x0f) as usize;
        off += 1;
        if n > NIBBLE_MAX || off + n > len {
            return None;
        }
        if segment > 0 {
            hasher.push(b'/');
        }
        if n > 0 {
            let first = if n > 8 { 8 } else { n };
            hasher.push_word(low_bytes(m.word(off)?, first), first as u64);
            if n > 8 {
                let rest = n - 8;
                hasher.push_word(low_bytes(m.word(off + 8)?, rest), rest as u64);
            }
        }
        off += n;
    }
    if hasher.is_empty() {
        return None;
    }
    // Options after the path: read to their end, as the walk does.
    for _ in 0..TRAILING {
        if off >= len {
            break;
        }
        let h = m.byte(off)?;
        if h == coap::PAYLOAD_MARKER {
            break;
        }
        let (delta, n) = ((h >> 4) as usize, (h & 0x0f) as usize);
        // Delta 0 here: a fifth segment, or an option repeated; the walk's.
        if delta == 0 || delta > NIBBLE_MAX || n > NIBBLE_MAX {
            return None;
        }
        off += 1 + n;
        if off > len {
            return None;
        }
    }
    // The end of the message, or a marker with a payload after it.
    if off < len && (m.byte(off)? != coap::PAYLOAD_MARKER || off + 1 >= len) {
        return None;
    }
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build::coap_option, topic::topic_key};
    use proptest::prelude::*;

    extern crate std;
    use std::{string::String, vec, vec::Vec};

    const PREFIX: &str = "ps/data/";

    fn general(msg: &[u8], prefix: &str) -> Result<TopicKey, crate::reason::Reason> {
        let mut p = [0u8; coap::PREFIX_MAX];
        p[..prefix.len()].copy_from_slice(prefix.as_bytes());
        coap::parse_publish_from(
            msg,
            &p,
            prefix.len(),
            &PrefixStart::encode(prefix.as_bytes()),
        )
        .map(|r| r.key)
    }

    /// A message: header, token, then `options` as (number, value), then
    /// `tail` (a marker and payload, or nothing).
    fn message(b0: u8, code: u8, token: &[u8], options: &[(u16, Vec<u8>)], tail: &[u8]) -> Vec<u8> {
        let mut m = vec![b0 | token.len() as u8, code, 0x12, 0x34];
        m.extend_from_slice(token);
        let mut number = 0;
        for (n, v) in options {
            coap_option(&mut m, n - number, v);
            number = *n;
        }
        m.extend_from_slice(tail);
        m
    }

    fn path(topic: &str) -> Vec<(u16, Vec<u8>)> {
        ["ps", "data"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .chain(topic.split('/').map(|s| s.as_bytes().to_vec()))
            .map(|v| (coap::OPTION_URI_PATH, v))
            .collect()
    }

    #[test]
    fn the_usual_publishes_are_read_in_place() {
        let start = PrefixStart::encode(PREFIX.as_bytes());
        for topic in [
            "temp/room1",
            "a",
            "building-12/floor-3/room-42/t",
            "twelve-bytes/x",
            "a//b",
            "x/",
        ] {
            for token in [&[][..], &[1, 2], &[9; 8]] {
                for extra in [
                    vec![],
                    vec![(12u16, vec![0x32])],
                    vec![(12, vec![]), (15, b"k=v".to_vec())],
                ] {
                    for tail in [&b"\xff21.5"[..], b""] {
                        let mut opts = path(topic);
                        opts.extend(extra.iter().cloned());
                        let m = message(0x50, coap::CODE_PUT, token, &opts, tail);
                        // Room for the last word read past a short message.
                        let mut buf = m.clone();
                        buf.extend_from_slice(&[0xaa; 8]);
                        let key = publish_key(&buf[..], m.len(), &start);
                        assert_eq!(
                            key,
                            Some(topic_key(topic.as_bytes())),
                            "{topic} {token:?} {extra:?}"
                        );
                        assert_eq!(general(&m, PREFIX), Ok(key.unwrap()));
                    }
                }
            }
        }
    }

    #[test]
    fn other_shapes_are_left_to_the_walk() {
        let start = PrefixStart::encode(PREFIX.as_bytes());
        let pad = |m: &[u8]| {
            let mut b = m.to_vec();
            b.extend_from_slice(&[0; 8]);
            b
        };
        let none = |m: Vec<u8>, why: &str| {
            assert_eq!(publish_key(&pad(&m)[..], m.len(), &start), None, "{why}");
        };
        let marker = b"\xffx";
        none(
            message(0x40, coap::CODE_PUT, &[], &path("t"), marker),
            "confirmable",
        );
        none(message(0x50, 0x01, &[], &path("t"), marker), "GET");
        none(
            message(0x50, coap::CODE_POST, &[], &path("a/b/c/d/e"), marker),
            "five segments",
        );
        none(
            message(0x50, coap::CODE_POST, &[], &path("thirteen-byte/x"), marker),
            "13-byte segment",
        );
        none(
            message(0x50, coap::CODE_POST, &[], &path(""), marker),
            "empty topic",
        );
        none(
            message(0x50, coap::CODE_POST, &[], &path("t"), b"\xff"),
            "bare marker",
        );
        let mut opts = vec![(3u16, b"host".to_vec())];
        opts.extend(path("t"));
        none(
            message(0x50, coap::CODE_POST, &[], &opts, marker),
            "Uri-Host first",
        );
        let mut opts = path("t");
        opts.extend([(12, vec![]), (15, vec![]), (60, vec![1])]);
        none(
            message(0x50, coap::CODE_POST, &[], &opts, marker),
            "three options after",
        );
        let mut opts = path("t");
        opts.push((2000, vec![]));
        none(
            message(0x50, coap::CODE_POST, &[], &opts, marker),
            "extended delta",
        );
        let mut m = message(0x50, coap::CODE_POST, &[], &path("t"), b"");
        m.extend_from_slice(&[0x1b, b'x']);
        none(m, "option past the end");
    }

    /// Any bytes: the fast shape's key is the walk's, or there is none.
    /// Whether the fast shape took it.
    fn agrees(msg: &[u8], extra: &[u8]) -> Result<bool, TestCaseError> {
        let start = PrefixStart::encode(PREFIX.as_bytes());
        let mut buf = msg.to_vec();
        buf.extend_from_slice(extra);
        let key = publish_key(&buf[..], msg.len(), &start);
        if let Some(key) = key {
            prop_assert_eq!(general(msg, PREFIX), Ok(key));
        }
        Ok(key.is_some())
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-z0-9-]{0,14}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn never_disagrees_with_the_walk_on_bytes(
            msg in proptest::collection::vec(any::<u8>(), 0..80),
            extra in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            agrees(&msg, &extra)?;
        }
    }

    /// Publishes near the fast shape, many of them in it, some one change
    /// away (a header, a long segment, a fifth, an extended option, a
    /// format error at the end, a byte flipped anywhere): the fast shape's
    /// key is the walk's or there is none, and the fast shape takes a good
    /// share of them (the property is not met by refusing everything).
    #[test]
    fn never_disagrees_with_the_walk_on_publishes() {
        use proptest::collection::vec as bytes;
        let strategy = (
            prop_oneof![8 => Just(0x50u8), 1 => Just(0x40), 1 => any::<u8>()],
            prop_oneof![4 => Just(coap::CODE_PUT), 4 => Just(coap::CODE_POST), 1 => any::<u8>()],
            bytes(any::<u8>(), 0..9),
            bytes(segment(), 0..6),
            bytes(
                prop_oneof![
                    4 => (1u16..13, bytes(any::<u8>(), 0..13)),
                    1 => (0u16..300, bytes(any::<u8>(), 0..16)),
                ],
                0..4,
            ),
            prop_oneof![
                6 => bytes(any::<u8>(), 1..6).prop_map(|p| [&[0xffu8][..], &p].concat()),
                1 => Just(vec![]),
                1 => Just(vec![0xff]),
                1 => bytes(any::<u8>(), 0..6),
            ],
            prop_oneof![6 => Just(0usize), 1 => 1usize..4],
            prop_oneof![3 => Just(None), 1 => (any::<usize>(), any::<u8>()).prop_map(Some)],
            bytes(any::<u8>(), 0..8),
        );
        let cases = 4000;
        let accepted = core::cell::Cell::new(0u32);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
        runner
            .run(
                &strategy,
                |(b0, code, token, segs, after, tail, cut, flip, extra)| {
                    let mut opts = path("");
                    opts.pop();
                    opts.extend(
                        segs.iter()
                            .map(|s| (coap::OPTION_URI_PATH, s.as_bytes().to_vec())),
                    );
                    let mut number = coap::OPTION_URI_PATH;
                    for (d, v) in after {
                        number = number.saturating_add(d);
                        opts.push((number, v));
                    }
                    let mut m = message(b0 & 0xf0, code, &token, &opts, &tail);
                    m.truncate(m.len().saturating_sub(cut));
                    if let Some((at, b)) = flip
                        && !m.is_empty()
                    {
                        let i = at % m.len();
                        m[i] = b;
                    }
                    if agrees(&m, &extra)? {
                        accepted.set(accepted.get() + 1);
                    }
                    Ok(())
                },
            )
            .unwrap();
        assert!(
            accepted.get() >= cases / 10,
            "the fast shape took {} of {cases}",
            accepted.get()
        );
    }
}

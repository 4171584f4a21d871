//! CoAP (RFC 7252) publish recognition, after draft-ietf-core-coap-pubsub:
//! a NON POST or PUT whose Uri-Path starts with the pub/sub prefix
//! (default `ps/data/`) publishes to the topic named by the rest of the path.
//!
//! Confirmable requests need an ACK and go to userspace; so does every other
//! message. The parser walks the options once, in a bounded loop, hashing
//! Uri-Path bytes as it goes, and stops at the payload marker or at the
//! first option numbered after Uri-Path (11), whichever comes first: options
//! are ordered, so the topic is complete there, and later options (a large
//! Uri-Query, say) need not fit in the part of the message the data plane
//! looks at. No allocation; the same code in the XDP program and on the
//! host.

use crate::{
    payload::Payload,
    reason::Reason,
    topic::{TOPIC_MAX, TopicHasher, TopicKey},
};

/// Longest pub/sub prefix (bytes, including the trailing '/'): the room
/// `maps::Config` gives it. A power of two (the walk masks indices with it).
pub const PREFIX_MAX: usize = 32;

pub const VERSION: u8 = 1;
pub const TYPE_CON: u8 = 0;
pub const TYPE_NON: u8 = 1;
pub const CODE_POST: u8 = 0x02;
pub const CODE_PUT: u8 = 0x03;
pub const OPTION_URI_PATH: u16 = 11;
pub const PAYLOAD_MARKER: u8 = 0xFF;
/// Options examined before giving up (a publish carries a handful).
pub const MAX_OPTIONS: usize = 16;
/// Bytes of a CoAP message the XDP program copies out and parses: header,
/// token and options up to the topic must lie within them. A power of two,
/// so that an index masked with `WINDOW - 1` is in bounds by construction.
pub const WINDOW: usize = 256;

/// A CoAP publish the data plane may forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    pub key: TopicKey,
    /// Length of the topic name (path after the prefix).
    pub topic_len: usize,
}

/// The pub/sub prefix's segments encoded as a message's first options
/// (Uri-Path, option numbers counted from 0), for the parser's fast start:
/// when a message's options begin with exactly these bytes (the usual
/// case: nothing before Uri-Path), the walk starts after them, in the
/// state it would have reached by walking them, and so skips one option
/// iteration per prefix segment. Any other message is walked from the
/// first option. Computed by the control plane ([`PrefixStart::encode`])
/// and kept in the router's `Config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStart {
    /// The encoding's bytes, little-endian words, zero past `len`.
    pub words: [u64; PrefixStart::WORDS],
    /// Bytes of encoding; 0: no fast start.
    pub len: u32,
    /// Prefix segments the encoding holds.
    pub segments: u32,
}

impl PrefixStart {
    pub const WORDS: usize = 5;
    /// No fast start: every message is walked from its first option.
    pub const NONE: PrefixStart = PrefixStart {
        words: [0; PrefixStart::WORDS],
        len: 0,
        segments: 0,
    };

    /// The encoding of `prefix` (segments joined with '/', ending in '/',
    /// as the parser takes it); [`PrefixStart::NONE`] for an empty prefix
    /// or one that is not of that form.
    pub fn encode(prefix: &[u8]) -> PrefixStart {
        let Some(path) = prefix.strip_suffix(b"/") else {
            return Self::NONE;
        };
        if path.is_empty() || prefix.len() > PREFIX_MAX {
            return Self::NONE;
        }
        let mut bytes = [0u8; PrefixStart::WORDS * 8];
        let (mut len, mut segments, mut delta) = (0, 0u32, OPTION_URI_PATH as u8);
        for segment in path.split(|&b| b == b'/') {
            let n = segment.len();
            if n == 0 || n >= 269 {
                return Self::NONE;
            }
            let (nibble, ext) = if n < 13 {
                (n as u8, None)
            } else {
                (13, Some((n - 13) as u8))
            };
            let need = 1 + ext.is_some() as usize + n;
            if len + need > bytes.len() {
                return Self::NONE;
            }
            bytes[len] = delta << 4 | nibble;
            len += 1;
            if let Some(e) = ext {
                bytes[len] = e;
                len += 1;
            }
            bytes[len..len + n].copy_from_slice(segment);
            len += n;
            segments += 1;
            delta = 0;
        }
        let mut words = [0u64; PrefixStart::WORDS];
        for (w, c) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        }
        PrefixStart {
            words,
            len: len as u32,
            segments,
        }
    }

    /// True when `p`'s bytes at `off` are the encoding.
    #[inline(always)]
    fn matches<P: Payload + ?Sized>(&self, p: &P, off: usize) -> bool {
        let len = self.len as usize;
        if len == 0 || len > PrefixStart::WORDS * 8 || off + len > p.len() {
            return false;
        }
        for (i, &want) in self.words.iter().enumerate() {
            let at = i * 8;
            if at >= len {
                break;
            }
            let n = if len - at > 8 { 8 } else { len - at };
            let mask = u64::MAX >> (64 - 8 * n);
            // In bounds: `off + len <= p.len()` above.
            if p.word_within(off + at) & mask != want & mask {
                return false;
            }
        }
        true
    }
}

/// Decodes an option delta or length nibble with its extension bytes.
#[inline(always)]
fn extended<P: Payload + ?Sized>(p: &P, nibble: u8, off: &mut usize) -> Result<u16, Reason> {
    match nibble {
        0..=12 => Ok(nibble as u16),
        13 => {
            let v = p.byte(*off).ok_or(Reason::CoapMalformed)?;
            *off += 1;
            Ok(v as u16 + 13)
        }
        14 => {
            let v = p.be16(*off).ok_or(Reason::CoapMalformed)?;
            *off += 2;
            v.checked_add(269).ok_or(Reason::CoapMalformed)
        }
        // 15 is reserved outside the payload marker (section 3.1).
        _ => Err(Reason::CoapMalformed),
    }
}

/// Matches the joined Uri-Path against the prefix and hashes the rest.
///
/// The prefix always ends in '/' (the control plane normalises it), so each
/// Uri-Path segment lies wholly in the prefix or wholly in the topic: a
/// segment is either compared or hashed, one short loop each, with the
/// length checks done once per segment rather than per byte.
struct PathMatcher<'a> {
    prefix: &'a [u8; PREFIX_MAX],
    prefix_len: usize,
    /// Prefix bytes matched so far.
    pos: usize,
    segments: usize,
    hasher: TopicHasher,
}

impl PathMatcher<'_> {
    /// Topic bytes hashed so far (separators included).
    #[inline(always)]
    fn topic_len(&self) -> usize {
        self.hasher.len() as usize
    }

    #[inline(always)]
    fn segment<P: Payload + ?Sized>(
        &mut self,
        p: &P,
        off: usize,
        olen: usize,
    ) -> Result<(), Reason> {
        let in_prefix = self.pos < self.prefix_len;
        if self.segments > 0 {
            if in_prefix {
                // The virtual '/' between segments must match the prefix.
                if self.prefix.get(self.pos & (PREFIX_MAX - 1)) != Some(&b'/') {
                    return Err(Reason::CoapOtherPath);
                }
                self.pos += 1;
            } else if self.topic_len() > 0 {
                if self.topic_len() >= TOPIC_MAX {
                    return Err(Reason::TopicTooLong);
                }
                self.hasher.push(b'/');
            }
        }
        self.segments += 1;
        if self.pos < self.prefix_len {
            // A prefix segment ends before the prefix's final '/'.
            if self.pos + olen >= self.prefix_len {
                return Err(Reason::CoapOtherPath);
            }
            for i in 0..PREFIX_MAX {
                if i >= olen {
                    break;
                }
                // In bounds: the caller checked `off + olen <= len`.
                let c = p.byte_within(off + i);
                if Some(&c) != self.prefix.get((self.pos + i) & (PREFIX_MAX - 1)) {
                    return Err(Reason::CoapOtherPath);
                }
            }
            self.pos += olen;
        } else {
            if self.topic_len() + olen > TOPIC_MAX {
                return Err(Reason::TopicTooLong);
            }
            // A word (eight bytes) per step, not a byte.
            for chunk in 0..TOPIC_MAX / 8 {
                let at = chunk * 8;
                if at >= olen {
                    break;
                }
                let n = if olen - at > 8 { 8 } else { olen - at };
                // `off + at` is in bounds (the caller checked
                // `off + olen <= len`); the bytes past the segment are
                // masked off.
                let word = p.word_within(off + at) & (u64::MAX >> (64 - 8 * n));
                self.hasher.push_word(word, n as u64);
            }
        }
        Ok(())
    }
}

/// Recognises a forwardable CoAP publish under `prefix[..prefix_len]`, or
/// says why the datagram goes to the stack.
#[inline(always)]
pub fn parse_publish<P: Payload + ?Sized>(
    p: &P,
    prefix: &[u8; PREFIX_MAX],
    prefix_len: usize,
) -> Result<Publish, Reason> {
    parse_publish_from(p, prefix, prefix_len, &PrefixStart::NONE)
}

/// [`parse_publish`] with a fast start: `start` must be
/// [`PrefixStart::encode`] of the same prefix (or [`PrefixStart::NONE`]).
/// The result is the same either way (tested below); only the work differs.
#[inline(always)]
pub fn parse_publish_from<P: Payload + ?Sized>(
    p: &P,
    prefix: &[u8; PREFIX_MAX],
    prefix_len: usize,
    start: &PrefixStart,
) -> Result<Publish, Reason> {
    let len = p.len();
    let b0 = p.byte(0).ok_or(Reason::CoapMalformed)?;
    let code = p.byte(1).ok_or(Reason::CoapMalformed)?;
    if len < 4 || b0 >> 6 != VERSION {
        return Err(Reason::CoapMalformed);
    }
    let tkl = (b0 & 0x0f) as usize;
    if tkl > 8 {
        return Err(Reason::CoapMalformed);
    }
    let msg_type = (b0 >> 4) & 0b11;
    if msg_type == TYPE_CON {
        return Err(Reason::CoapConfirmable);
    }
    if msg_type != TYPE_NON || (code != CODE_POST && code != CODE_PUT) {
        return Err(Reason::CoapNotPublish);
    }
    let mut off = 4 + tkl;
    if off > len {
        return Err(Reason::CoapMalformed);
    }
    let mut m = PathMatcher {
        prefix,
        prefix_len: if prefix_len > PREFIX_MAX {
            PREFIX_MAX
        } else {
            prefix_len
        },
        pos: 0,
        segments: 0,
        hasher: TopicHasher::new(),
    };
    let mut number: u32 = 0;
    // Options the walk may still read: the fast start has read the
    // prefix's, and counts them, so that both ways give up at the same
    // option (a fuzzer found them disagreeing past the bound).
    let mut budget = MAX_OPTIONS;
    if start.matches(p, off) {
        // Where walking the prefix's options would have left the walk:
        // every prefix byte but the trailing '/' matched.
        off += start.len as usize;
        number = OPTION_URI_PATH as u32;
        m.segments = start.segments as usize;
        m.pos = m.prefix_len.saturating_sub(1);
        budget = MAX_OPTIONS.saturating_sub(start.segments as usize);
    }
    let mut ended = false;
    for i in 0..MAX_OPTIONS {
        if i >= budget {
            break;
        }
        // Loop-carried state converges here (see `Payload::opaque`).
        off = p.opaque(off);
        number = p.opaque(number as usize) as u32;
        m.segments = p.opaque(m.segments);
        m.pos = p.opaque(m.pos);
        // The topic's length is the hasher's byte count.
        m.hasher.map_len(|n| p.opaque(n as usize) as u64);
        m.prefix_len = p.opaque(m.prefix_len);
        if off >= len {
            ended = true;
            break;
        }
        let b = p.byte(off).ok_or(Reason::CoapMalformed)?;
        if b == PAYLOAD_MARKER {
            // A marker followed by nothing is a format error (section 3).
            if off + 1 >= len {
                return Err(Reason::CoapMalformed);
            }
            ended = true;
            break;
        }
        off += 1;
        let delta = extended(p, b >> 4, &mut off)?;
        let olen = extended(p, b & 0x0f, &mut off)? as usize;
        // Let the nine header encodings converge (see `Payload::opaque`).
        let (off_, delta, olen) = (p.opaque(off), p.opaque(delta as usize), p.opaque(olen));
        off = off_;
        number += delta as u32;
        if number > OPTION_URI_PATH as u32 {
            // Options come in order: the path is complete. What follows
            // (Content-Format, Uri-Query, the payload) is the receivers'
            // business, so the walk stops here.
            if m.segments == 0 {
                return Err(Reason::CoapOtherPath);
            }
            ended = true;
            break;
        }
        // Also re-bounds the laundered values for the verifier.
        if off > len || olen > len || off + olen > len {
            return Err(Reason::CoapMalformed);
        }
        if number == OPTION_URI_PATH as u32 {
            m.segment(p, off, olen)?;
        }
        off += olen;
    }
    if !ended {
        return Err(Reason::CoapMalformed);
    }
    if m.pos < m.prefix_len || m.topic_len() == 0 {
        return Err(Reason::CoapOtherPath);
    }
    Ok(Publish {
        key: m.hasher.finish(),
        topic_len: m.topic_len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::topic_key;
    use proptest::prelude::*;

    extern crate std;
    use std::vec::Vec;

    fn prefix(s: &str) -> ([u8; PREFIX_MAX], usize) {
        let mut p = [0u8; PREFIX_MAX];
        p[..s.len()].copy_from_slice(s.as_bytes());
        (p, s.len())
    }

    use crate::build::coap_option as option;

    fn request(t: u8, code: u8, token: &[u8], path: &[&str], payload: &[u8]) -> Vec<u8> {
        crate::build::coap_request(t, code, 0x1234, token, path, payload)
    }

    #[test]
    fn non_put_and_post_under_prefix() {
        let (p, n) = prefix("ps/data/");
        for code in [CODE_POST, CODE_PUT] {
            let pkt = request(
                TYPE_NON,
                code,
                &[1, 2, 3],
                &["ps", "data", "temp", "room1"],
                b"21.5",
            );
            let r = parse_publish(&pkt[..], &p, n).unwrap();
            assert_eq!(r.key, topic_key(b"temp/room1"));
            assert_eq!(r.topic_len, 10);
        }
    }

    #[test]
    fn con_and_other_messages_go_up() {
        let (p, n) = prefix("ps/data/");
        let con = request(TYPE_CON, CODE_PUT, &[], &["ps", "data", "t"], b"x");
        assert_eq!(parse_publish(&con[..], &p, n), Err(Reason::CoapConfirmable));
        let get = request(TYPE_NON, 0x01, &[], &["ps", "data", "t"], b"");
        assert_eq!(parse_publish(&get[..], &p, n), Err(Reason::CoapNotPublish));
        let ack = request(2, 0x44, &[], &[], b"");
        assert_eq!(parse_publish(&ack[..], &p, n), Err(Reason::CoapNotPublish));
        let other = request(TYPE_NON, CODE_PUT, &[], &["ps", "other", "t"], b"x");
        assert_eq!(parse_publish(&other[..], &p, n), Err(Reason::CoapOtherPath));
        // The prefix alone names no topic.
        let bare = request(TYPE_NON, CODE_PUT, &[], &["ps", "data"], b"x");
        assert_eq!(parse_publish(&bare[..], &p, n), Err(Reason::CoapOtherPath));
        let nopath = request(TYPE_NON, CODE_PUT, &[], &[], b"x");
        assert_eq!(
            parse_publish(&nopath[..], &p, n),
            Err(Reason::CoapOtherPath)
        );
        // "ps/database/x" must not match the prefix "ps/data/".
        let near = request(TYPE_NON, CODE_PUT, &[], &["ps", "database", "x"], b"x");
        assert_eq!(parse_publish(&near[..], &p, n), Err(Reason::CoapOtherPath));
    }

    #[test]
    fn extended_delta_and_length_forms() {
        let (p, n) = prefix("ps/data/");
        // Uri-Host (3) with a 20-byte value (length nibble 13), then the path,
        // then option 300 (delta 14 form) with a 300-byte value (length 14).
        let mut v = std::vec![VERSION << 6 | TYPE_NON << 4, CODE_PUT, 0, 1];
        option(&mut v, 3, &[b'h'; 20]);
        option(&mut v, 8, b"ps");
        option(&mut v, 0, b"data");
        option(&mut v, 0, &[b'k'; 40]);
        option(&mut v, 300 - 11, &[9u8; 300]);
        v.push(PAYLOAD_MARKER);
        v.push(1);
        let r = parse_publish(&v[..], &p, n).unwrap();
        assert_eq!(r.key, topic_key(&[b'k'; 40]));
    }

    #[test]
    fn empty_prefix_means_whole_path() {
        let (p, _) = prefix("");
        let pkt = request(TYPE_NON, CODE_POST, &[], &["a", "b"], b"x");
        assert_eq!(
            parse_publish(&pkt[..], &p, 0).unwrap().key,
            topic_key(b"a/b")
        );
    }

    #[test]
    fn malformed_framing() {
        let (p, n) = prefix("ps/data/");
        let good = request(TYPE_NON, CODE_PUT, &[7; 8], &["ps", "data", "t"], b"x");
        assert!(parse_publish(&good[..], &p, n).is_ok());
        // Zero-length and truncated headers.
        assert_eq!(parse_publish(&[][..], &p, n), Err(Reason::CoapMalformed));
        assert_eq!(parse_publish(&good[..3], &p, n), Err(Reason::CoapMalformed));
        // Version 2.
        let mut bad = good.clone();
        bad[0] = 2 << 6 | bad[0] & 0x3f;
        assert_eq!(parse_publish(&bad[..], &p, n), Err(Reason::CoapMalformed));
        // Token length 9..15 is reserved.
        let mut bad = good.clone();
        bad[0] = bad[0] & 0xf0 | 9;
        assert_eq!(parse_publish(&bad[..], &p, n), Err(Reason::CoapMalformed));
        // Token runs past the end.
        assert_eq!(parse_publish(&good[..8], &p, n), Err(Reason::CoapMalformed));
        // Option value running past the end.
        assert_eq!(
            parse_publish(&good[..14], &p, n),
            Err(Reason::CoapMalformed)
        );
        // Reserved nibble 15 in delta (not a marker) and in length.
        let mut v = std::vec![VERSION << 6 | TYPE_NON << 4, CODE_PUT, 0, 1, 0xF1, 0];
        assert_eq!(parse_publish(&v[..], &p, n), Err(Reason::CoapMalformed));
        v[4] = 0xBF;
        assert_eq!(parse_publish(&v[..], &p, n), Err(Reason::CoapMalformed));
        // Extension bytes missing.
        let v = [VERSION << 6 | TYPE_NON << 4, CODE_PUT, 0, 1, 0xD0];
        assert_eq!(parse_publish(&v[..], &p, n), Err(Reason::CoapMalformed));
        let v = [VERSION << 6 | TYPE_NON << 4, CODE_PUT, 0, 1, 0xE0, 1];
        assert_eq!(parse_publish(&v[..], &p, n), Err(Reason::CoapMalformed));
        // Payload marker with no payload, right after the path.
        let mut v = std::vec![VERSION << 6 | TYPE_NON << 4, CODE_PUT, 0, 1];
        option(&mut v, 11, b"ps");
        option(&mut v, 0, b"data");
        option(&mut v, 0, b"t");
        let mut with_payload = v.clone();
        with_payload.extend_from_slice(&[PAYLOAD_MARKER, 1]);
        assert!(parse_publish(&with_payload[..], &p, n).is_ok());
        v.push(PAYLOAD_MARKER);
        assert_eq!(parse_publish(&v[..], &p, n), Err(Reason::CoapMalformed));
        // Options after the path are not the router's business: the walk
        // stops at the first one, even if it runs past the end.
        let mut v = std::vec![VERSION << 6 | TYPE_NON << 4, CODE_PUT, 0, 1];
        option(&mut v, 11, b"ps");
        option(&mut v, 0, b"data");
        option(&mut v, 0, b"t");
        option(&mut v, 15 - 11, &[b'q'; 40]);
        v.truncate(v.len() - 20);
        assert!(parse_publish(&v[..], &p, n).is_ok());
    }

    #[test]
    fn too_long_topics_and_too_many_options() {
        let (p, n) = prefix("ps/data/");
        let long = std::string::String::from_utf8(std::vec![b'x'; TOPIC_MAX + 1]).unwrap();
        let pkt = request(TYPE_NON, CODE_PUT, &[], &["ps", "data", &long], b"x");
        assert_eq!(parse_publish(&pkt[..], &p, n), Err(Reason::TopicTooLong));
        let exact = std::string::String::from_utf8(std::vec![b'x'; TOPIC_MAX]).unwrap();
        let pkt = request(TYPE_NON, CODE_PUT, &[], &["ps", "data", &exact], b"x");
        assert!(parse_publish(&pkt[..], &p, n).is_ok());
        let segs: Vec<&str> = core::iter::repeat_n("a", MAX_OPTIONS + 1).collect();
        let (p0, _) = prefix("");
        let pkt = request(TYPE_NON, CODE_PUT, &[], &segs, b"x");
        assert_eq!(parse_publish(&pkt[..], &p0, 0), Err(Reason::CoapMalformed));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (p, n) = prefix("ps/data/");
            let _ = parse_publish(&bytes[..], &p, n);
        }

        #[test]
        fn topic_key_is_the_joined_path(segs in proptest::collection::vec("[a-z0-9]{1,8}", 1..5),
                token in proptest::collection::vec(any::<u8>(), 0..9),
                payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (p, n) = prefix("ps/data/");
            let mut path = std::vec!["ps", "data"];
            path.extend(segs.iter().map(|s| s.as_str()));
            let pkt = request(TYPE_NON, CODE_PUT, &token, &path, &payload);
            let r = parse_publish(&pkt[..], &p, n).unwrap();
            prop_assert_eq!(r.key, topic_key(segs.join("/").as_bytes()));
        }

        /// The fast start never changes a result: messages built from
        /// prefix-like segments (with and without an option before
        /// Uri-Path, long segments, payloads), then with one byte changed.
        #[test]
        fn fast_start_parses_like_the_walk(
                pre in proptest::sample::select(std::vec![
                    "ps/data/", "ps/", "a/", "abcdefghijklmn/x/", "ps/data/more/", "",
                ]),
                segs in proptest::collection::vec(
                    proptest::sample::select(std::vec![
                        "ps", "data", "more", "x", "a", "abcdefghijklmn", "t", "datax", "",
                    ]),
                    0..6),
                host in proptest::bool::ANY,
                lead in proptest::bool::ANY,
                token in proptest::collection::vec(any::<u8>(), 0..9),
                payload in proptest::collection::vec(any::<u8>(), 0..16),
                flip in proptest::option::of((any::<usize>(), any::<u8>()))) {
            let (p, n) = prefix(pre);
            let start = PrefixStart::encode(pre.as_bytes());
            let mut v = std::vec![VERSION << 6 | TYPE_NON << 4 | token.len() as u8, CODE_PUT, 0, 1];
            v.extend_from_slice(&token);
            let mut last = 0;
            if host {
                option(&mut v, 3, b"h");
                last = 3;
            }
            // Often the prefix's own segments first: the fast start's case.
            let leading = pre.split('/').filter(|s| lead && !s.is_empty());
            for seg in leading.chain(segs.iter().copied()) {
                option(&mut v, OPTION_URI_PATH - last, seg.as_bytes());
                last = OPTION_URI_PATH;
            }
            if !payload.is_empty() {
                v.push(PAYLOAD_MARKER);
                v.extend_from_slice(&payload);
            }
            if let Some((at, b)) = flip {
                let at = at % v.len();
                v[at] = b;
            }
            prop_assert_eq!(
                parse_publish_from(&v[..], &p, n, &start),
                parse_publish(&v[..], &p, n)
            );
        }
    }

    #[test]
    fn prefix_start_encodes_the_prefix_as_first_options() {
        let s = PrefixStart::encode(b"ps/data/");
        assert_eq!((s.len, s.segments), (8, 2));
        assert_eq!(s.words[0].to_le_bytes(), *b"\xb2ps\x04data");
        // A 14-byte segment takes the extended length form (13 + 1).
        let s = PrefixStart::encode(b"abcdefghijklmn/x/");
        assert_eq!((s.len, s.segments), (1 + 1 + 14 + 1 + 1, 2));
        assert_eq!(s.words[0].to_le_bytes()[..3], [0xbd, 1, b'a']);
        for none in [&b""[..], b"ps", b"ps//", b"/"] {
            assert_eq!(PrefixStart::encode(none), PrefixStart::NONE, "{none:?}");
        }
        // A message whose first options are the prefix's takes the fast
        // start and parses to the topic after it.
        let (p, n) = prefix("ps/data/");
        let start = PrefixStart::encode(b"ps/data/");
        let pkt = request(TYPE_NON, CODE_PUT, &[1], &["ps", "data", "t"], b"x");
        assert!(start.matches(&pkt[..], 5));
        assert_eq!(
            parse_publish_from(&pkt[..], &p, n, &start).unwrap().key,
            topic_key(b"t")
        );
    }

    #[test]
    fn the_fast_start_and_the_walk_give_up_at_the_same_option() {
        // The fuzzer's finding: ps/data/ then 15 empty segments and an
        // option running past the end. Walked, the 16-option budget runs
        // out first (malformed); the fast start used to read two options
        // more and call it another path.
        let mut m = std::vec![0x58, 0x03, 0x42, 0x42, 1, 2, 3, 4, 1, 0, 3, 4];
        m.extend_from_slice(&[0xb2, b'p', b's', 0x04, b'd', b'a', b't', b'a']);
        m.extend_from_slice(&[0; 15]);
        m.extend_from_slice(&[0x6d, b'1', 0xff, b'{', b'}']);
        let (p, n) = prefix("ps/data/");
        let start = PrefixStart::encode(b"ps/data/");
        assert_eq!(
            parse_publish_from(&m[..], &p, n, &start).map(|r| r.key),
            parse_publish(&m[..], &p, n).map(|r| r.key)
        );
        // And a path of 15 topic segments is refused both ways, not routed
        // by one of them.
        let mut long = std::vec![0x58, 0x02, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8];
        long.extend_from_slice(&[0xb2, b'p', b's', 0x04, b'd', b'a', b't', b'a']);
        for _ in 0..15 {
            long.extend_from_slice(&[0x01, b'x']);
        }
        assert_eq!(
            parse_publish_from(&long[..], &p, n, &start).map(|r| r.key),
            parse_publish(&long[..], &p, n).map(|r| r.key)
        );
    }
}

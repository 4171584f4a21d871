//! CoAP (RFC 7252) publish recognition, after draft-ietf-core-coap-pubsub:
//! a NON POST or PUT whose Uri-Path starts with the pub/sub prefix
//! (default `ps/data/`) publishes to the topic named by the rest of the path.
//!
//! Confirmable requests need an ACK and go to userspace; so does every other
//! message. The parser walks the options once, in a bounded loop, hashing
//! Uri-Path bytes as it goes, and validates the whole option sequence up to
//! the payload marker (or the end of the message): a message the router
//! multicasts must be one its subscribers' CoAP stacks accept, so a format
//! error after the path (an option running past the end, a reserved nibble,
//! a marker with no payload) refuses the message as surely as one before
//! it. A message longer than the walk may examine (more than
//! [`MAX_OPTIONS`] options, or option headers past the bytes the data plane
//! copies out) is never routed unchecked: it goes to the stack, counted by
//! its own reason. No allocation; the same code in the XDP program and on
//! the host.
//!
//! The topic is the Uri-Path after the prefix exactly as the URI writes
//! it: segments joined with '/', an empty segment kept wherever it lies
//! (`/ps/data//x` names the topic `/x`, `/ps/data/a//b` the topic `a//b`,
//! `/ps/data/a/` the topic `a/`).

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
/// Options examined before giving up (a publish carries a handful: the
/// prefix's and the topic's path segments, Content-Format, perhaps a
/// Uri-Host or a Uri-Query). A message with more goes to the stack as
/// [`Reason::CoapTooManyOptions`].
pub const MAX_OPTIONS: usize = 16;
/// Largest option number (option numbers are 16-bit, RFC 7252 section 12.2).
pub const OPTION_MAX: u32 = 0xFFFF;
/// Bytes of a CoAP message the XDP program copies out and parses: header,
/// token, every option and the payload marker with a first payload byte
/// must lie within them (the rest of the payload need not). A power of two,
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
        // In bounds: `off + len <= p.len()` above.
        self.matches_words(|at| Some(p.word_within(off + at))) == Some(true)
    }

    /// Whether the bytes `word` reads (the 8 at offset `at` of the
    /// encoding, little-endian) are the encoding; `None` where `word`
    /// could not read. The caller checks `len` is within the words.
    #[inline(always)]
    pub(crate) fn matches_words(&self, mut word: impl FnMut(usize) -> Option<u64>) -> Option<bool> {
        let len = self.len as usize;
        for (i, &want) in self.words.iter().enumerate() {
            let at = i * 8;
            if at >= len {
                break;
            }
            let n = if len - at > 8 { 8 } else { len - at };
            let mask = u64::MAX >> (64 - 8 * n);
            if word(at)? & mask != want & mask {
                return Some(false);
            }
        }
        Some(true)
    }
}

/// Why a walk that ran out of bytes stopped: a malformed message, or, when
/// `p` holds only the first bytes of a longer one, the end of what the
/// data plane copied out ([`Payload::cut_short`]).
#[inline(always)]
fn ran_out<P: Payload + ?Sized>(p: &P) -> Reason {
    if p.cut_short() {
        Reason::CoapBeyondWindow
    } else {
        Reason::CoapMalformed
    }
}

/// Whether the options end at `off`: `None` when another option starts
/// there; `Some(Ok)` at the end of the message or at a payload marker with
/// a payload after it; `Some(Err)` for a marker with nothing after it (a
/// format error, RFC 7252 section 3) or bytes the walk was not shown.
#[inline(always)]
fn options_end<P: Payload + ?Sized>(p: &P, off: usize, len: usize) -> Option<Result<(), Reason>> {
    if off >= len {
        // Past the copied bytes the message goes on, unexamined.
        return Some(if p.cut_short() {
            Err(Reason::CoapBeyondWindow)
        } else {
            Ok(())
        });
    }
    if p.byte(off) == Some(PAYLOAD_MARKER) {
        return Some(if off + 1 >= len {
            Err(ran_out(p))
        } else {
            Ok(())
        });
    }
    None
}

/// Decodes an option delta or length nibble with its extension bytes.
#[inline(always)]
fn extended<P: Payload + ?Sized>(p: &P, nibble: u8, off: &mut usize) -> Result<u16, Reason> {
    match nibble {
        0..=12 => Ok(nibble as u16),
        13 => {
            let v = p.byte(*off).ok_or_else(|| ran_out(p))?;
            *off += 1;
            Ok(v as u16 + 13)
        }
        14 => {
            let v = p.be16(*off).ok_or_else(|| ran_out(p))?;
            *off += 2;
            // Past 65535 - 269 the value names no option number and no
            // length a datagram can hold.
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
    /// Prefix bytes matched so far; `prefix_len + 1` once a topic segment
    /// (even an empty one) has been read, so that every later segment is
    /// preceded by its '/'.
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
            } else if self.pos > self.prefix_len {
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
            self.pos = self.prefix_len + 1;
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
        if let Some(end) = options_end(p, off, len) {
            end?;
            ended = true;
            break;
        }
        let b = p.byte(off).ok_or(Reason::CoapMalformed)?;
        off += 1;
        let delta = extended(p, b >> 4, &mut off)?;
        let olen = extended(p, b & 0x0f, &mut off)? as usize;
        // Let the nine header encodings converge (see `Payload::opaque`).
        let (off_, delta, olen) = (p.opaque(off), p.opaque(delta as usize), p.opaque(olen));
        off = off_;
        number += delta as u32;
        if number > OPTION_MAX {
            return Err(Reason::CoapMalformed);
        }
        // Options come in order: past Uri-Path with no path read, the
        // message names no topic under the prefix.
        if number > OPTION_URI_PATH as u32 && m.segments == 0 {
            return Err(Reason::CoapOtherPath);
        }
        // Also re-bounds the laundered values for the verifier.
        if off > len || olen > len || off + olen > len {
            return Err(ran_out(p));
        }
        if number == OPTION_URI_PATH as u32 {
            m.segment(p, off, olen)?;
        }
        off += olen;
    }
    if !ended {
        // The budget is spent: the options must end here, or the message
        // holds more than the walk examines and is not known to be well
        // formed.
        options_end(p, p.opaque(off), len).ok_or(Reason::CoapTooManyOptions)??;
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
    }

    /// A NON POST to ps/data/site/a/temp with the given options after the
    /// path (option number, value) and then `tail` (a marker and payload).
    fn with_tail(after: &[(u16, &[u8])], tail: &[u8]) -> Vec<u8> {
        let mut v = std::vec![VERSION << 6 | TYPE_NON << 4 | 2, CODE_POST, 0, 7, 0xa, 0xb];
        let mut last = 0;
        for seg in ["ps", "data", "site", "a", "temp"] {
            option(&mut v, OPTION_URI_PATH - last, seg.as_bytes());
            last = OPTION_URI_PATH;
        }
        for &(number, value) in after {
            option(&mut v, number - last, value);
            last = number;
        }
        v.extend_from_slice(tail);
        v
    }

    /// The format errors the issue found routed because they lie after the
    /// path: each is now refused, as the same error before the path is.
    #[test]
    fn format_errors_after_the_path_are_refused() {
        let (p, n) = prefix("ps/data/");
        let start = PrefixStart::encode(b"ps/data/");
        let parse = |m: &[u8]| {
            let walked = parse_publish(m, &p, n).map(|r| r.key);
            assert_eq!(
                parse_publish_from(m, &p, n, &start).map(|r| r.key),
                walked,
                "{m:02x?}"
            );
            walked
        };
        let key = Ok(topic_key(b"site/a/temp"));
        // Well-formed: query, content-format, payload; no payload; a
        // 2-byte-delta option; the largest option number.
        assert_eq!(
            parse(&with_tail(&[(15, b"k=v")], &[PAYLOAD_MARKER, 1])),
            key
        );
        assert_eq!(parse(&with_tail(&[(12, &[50]), (15, b"k=v")], &[])), key);
        assert_eq!(parse(&with_tail(&[(300, &[9; 20])], &[0xff, 0])), key);
        assert_eq!(parse(&with_tail(&[(65535, b"")], &[0xff, 0])), key);
        // Uri-Query k=v then a bare marker: "MUST be processed as a message
        // format error" (section 3).
        let bare = with_tail(&[(15, b"k=v")], &[PAYLOAD_MARKER]);
        assert_eq!(parse(&bare), Err(Reason::CoapMalformed));
        // Option 16 declaring 11 bytes with none left.
        let mut past = with_tail(&[], &[]);
        past.push(5 << 4 | 11);
        assert_eq!(parse(&past), Err(Reason::CoapMalformed));
        // ... and with some, not all, of them.
        let mut short = with_tail(&[(16, &[b'x'; 11])], &[]);
        short.truncate(short.len() - 3);
        assert_eq!(parse(&short), Err(Reason::CoapMalformed));
        // Reserved nibble 15 in the delta (not a marker) or the length.
        for b in [0xF1, 0x1F, 0xDF] {
            let mut v = with_tail(&[], &[]);
            v.extend_from_slice(&[b, 0, 0]);
            assert_eq!(parse(&v), Err(Reason::CoapMalformed), "{b:#x}");
        }
        // Extension bytes missing after the path.
        for tail in [&[0xD0][..], &[0xE0, 1]] {
            let mut v = with_tail(&[], &[]);
            v.extend_from_slice(tail);
            assert_eq!(parse(&v), Err(Reason::CoapMalformed), "{tail:x?}");
        }
        // An option number past 65535: delta 65535 after Uri-Path (11).
        let mut v = with_tail(&[], &[]);
        let ext = (65535u16 - 269).to_be_bytes();
        v.extend_from_slice(&[0xE0, ext[0], ext[1], 0xff, 1]);
        assert_eq!(parse(&v), Err(Reason::CoapMalformed));
    }

    /// Shown only the first bytes of a longer message (the XDP window), a
    /// walk that runs out says so, never "malformed" and never routed; a
    /// format error within the bytes shown is still malformed.
    #[test]
    fn a_message_cut_short_is_unexamined_not_malformed() {
        use crate::payload::FirstBytes;
        let (p, n) = prefix("ps/data/");
        let whole = with_tail(&[(15, &[b'q'; 60])], &[0xff, 1, 2, 3]);
        let at = |cut: usize| parse_publish(&FirstBytes::of(&whole, cut), &p, n);
        assert_eq!(
            at(whole.len()).map(|r| r.key),
            Ok(topic_key(b"site/a/temp"))
        );
        // Cut inside the query's value, at its header, right after it
        // (marker unseen), right after the marker (payload unseen).
        let marker = whole.len() - 4;
        for cut in [marker - 30, marker - 62, marker, marker + 1] {
            assert_eq!(at(cut), Err(Reason::CoapBeyondWindow), "cut at {cut}");
        }
        // Cut after a byte of payload: the rest is the subscribers'.
        assert!(at(marker + 2).is_ok());
        // A reserved nibble within the window stays malformed.
        let mut bad = with_tail(&[], &[0xF1]);
        bad.extend_from_slice(&[0; 100]);
        assert_eq!(
            parse_publish(&FirstBytes::of(&bad, 40), &p, n),
            Err(Reason::CoapMalformed)
        );
    }

    /// An empty Uri-Path segment is part of the URI, wherever it lies.
    #[test]
    fn empty_segments_follow_the_uri() {
        let (p, n) = prefix("ps/data/");
        let (p0, _) = prefix("");
        let start = PrefixStart::encode(b"ps/data/");
        for (path, topic) in [
            (&["ps", "data", "", "tttt"][..], Some(&b"/tttt"[..])),
            (&["ps", "data", "a", "", "b"], Some(b"a//b")),
            (&["ps", "data", "a", ""], Some(b"a/")),
            (&["ps", "data", "", ""], Some(b"/")),
            (&["ps", "data", "", "", "x"], Some(b"//x")),
            // An empty topic names nothing.
            (&["ps", "data", ""], None),
            (&["ps", "data"], None),
        ] {
            let m = request(TYPE_NON, CODE_PUT, &[1], path, b"x");
            let got = parse_publish(&m[..], &p, n).map(|r| (r.key, r.topic_len));
            let want = topic
                .map(|t| (topic_key(t), t.len()))
                .ok_or(Reason::CoapOtherPath);
            assert_eq!(got, want, "{path:?}");
            assert_eq!(
                parse_publish_from(&m[..], &p, n, &start).map(|r| (r.key, r.topic_len)),
                want,
                "{path:?} (fast start)"
            );
        }
        // With no prefix the whole path is the topic, a leading empty
        // segment included.
        let m = request(TYPE_NON, CODE_PUT, &[], &["", "a"], b"x");
        assert_eq!(
            parse_publish(&m[..], &p0, 0).map(|r| r.key),
            Ok(topic_key(b"/a"))
        );
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
        // MAX_OPTIONS options are examined, with or without a payload;
        // one more and the message goes up unexamined (`request` adds a
        // Content-Format option to the path's).
        let (p0, _) = prefix("");
        for payload in [&b""[..], b"x"] {
            let segs: Vec<&str> = core::iter::repeat_n("a", MAX_OPTIONS - 1).collect();
            let pkt = request(TYPE_NON, CODE_PUT, &[], &segs, payload);
            assert!(parse_publish(&pkt[..], &p0, 0).is_ok());
            let segs: Vec<&str> = core::iter::repeat_n("a", MAX_OPTIONS).collect();
            let pkt = request(TYPE_NON, CODE_PUT, &[], &segs, payload);
            assert_eq!(
                parse_publish(&pkt[..], &p0, 0),
                Err(Reason::CoapTooManyOptions)
            );
        }
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

    proptest! {
        /// The parser routes exactly what the plain reading of RFC 7252
        /// routes, under the same topic: messages of any option sequence
        /// (numbers before, at and after Uri-Path, extended forms, values
        /// with '/' and empty ones, a payload or a bare marker), then
        /// often mutated anywhere, the tail included.
        #[test]
        fn routes_what_rfc_7252_reads_as_a_publish(
                pre in proptest::sample::select(std::vec!["ps/data/", "a/", ""]),
                code in proptest::sample::select(std::vec![CODE_POST, CODE_PUT, CODE_POST, 1]),
                token in proptest::collection::vec(any::<u8>(), 0..9),
                before in proptest::collection::vec((1u16..11, 0usize..20), 0..2),
                lead in proptest::bool::ANY,
                segs in proptest::collection::vec(
                    proptest::sample::select(std::vec!["ps", "data", "a", "", "t", "x/y", "ps/data"]),
                    0..8),
                after in proptest::collection::vec(
                    (proptest::sample::select(std::vec![0u16, 1, 3, 4, 5, 289, 1000, 65000]),
                     0usize..300), 0..4),
                tail in proptest::sample::select(std::vec![&b""[..], b"\xff", b"\xff{}"]),
                edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 0..3)) {
            let (p, n) = prefix(pre);
            let start = PrefixStart::encode(pre.as_bytes());
            let mut v = std::vec![VERSION << 6 | TYPE_NON << 4 | token.len() as u8, code, 0, 1];
            v.extend_from_slice(&token);
            let mut last = 0;
            for &(number, len) in &before {
                if number >= last {
                    option(&mut v, number - last, &std::vec![b'b'; len]);
                    last = number;
                }
            }
            let leading = pre.split('/').filter(|s| lead && !s.is_empty());
            for seg in leading.chain(segs.iter().copied()) {
                option(&mut v, OPTION_URI_PATH - last.min(OPTION_URI_PATH), seg.as_bytes());
                last = OPTION_URI_PATH;
            }
            for &(delta, len) in &after {
                // Deltas may carry the number past 65535: malformed.
                let delta = delta.max(1);
                option(&mut v, delta, &std::vec![b'q'; len]);
                last = last.saturating_add(delta);
            }
            v.extend_from_slice(tail);
            for (at, b, kind) in edits {
                let at = at % (v.len() + 1);
                match kind {
                    0 if at < v.len() => v[at] = b,
                    1 => v.truncate(at),
                    2 => v.insert(at, b),
                    _ => v.push(b),
                }
            }
            let want = crate::coap_reference::publish_topic(&v, pre.as_bytes())
                .map(|t| (topic_key(&t), t.len()));
            let got = parse_publish(&v[..], &p, n).map(|r| (r.key, r.topic_len)).ok();
            prop_assert_eq!(got, want, "{:02x?}", v);
            let fast = parse_publish_from(&v[..], &p, n, &start);
            prop_assert_eq!(fast.map(|r| (r.key, r.topic_len)).ok(), want);
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

//! The differential run: generated and mutated frames through the real XDP
//! program (`BPF_PROG_TEST_RUN`) and through the host model
//! ([`crate::model`]); verdict, output bytes, reason counters and unrouted
//! topic keys must agree on every frame.
//!
//! Frames come from the fixture table and from a generator of publishes of
//! every shape (both IP families, VLAN or not, IPv4 options, MQTT-SN
//! short/predefined/registered ids in both length forms, CoAP with random
//! option sequences, tokens and payload markers, topics routed, unrouted
//! and multi-shard, empty path segments, options and format errors after
//! the path), then most are mutated: bytes flipped (in the headers, and in
//! a CoAP message's last bytes, after its path), cut short, grown, TTLs
//! and lengths changed, and their checksums made right again (as a wire
//! would deliver them) or not.
//!
//! CoAP verdicts are also held to an independent reading of RFC 7252
//! ([`router_common::coap_reference`]): every CoAP message the router
//! redirects is a well-formed publish by that reading, and every one it
//! calls malformed or too long to examine is not.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use etherparse::{SlicedPacket, TransportSlice};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use router_common::{
    build::{coap_option, mqttsn_publish},
    coap_reference,
    maps::MAX_UNROUTED,
    reason::Reason,
    topic::TopicKey,
};
use shardcast_dataplane::{Dataplane, FanoutPath, RouterConfig, action, mac_address};

use crate::{
    L3, frame, frame_v4_options,
    model::{self, Settings, Verdict},
};

/// What a run checked.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub frames: u64,
    pub redirected: u64,
    /// Redirected frames whose every output byte was compared (the rest
    /// carried a wrong checksum, which the router keeps wrong).
    pub bytes_compared: u64,
    /// Frames passed up, by reason, and multi-shard publishes handed to a
    /// broadcast (`broadcast`; `fanned_out` where the kernel refused the
    /// copy program).
    pub passed: BTreeMap<&'static str, u64>,
    pub unrouted_keys: usize,
    /// CoAP verdicts checked against the RFC 7252 reading.
    pub coap_checked: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} frames agreed: {} redirected ({} byte for byte), {} passed up, {} unrouted keys",
            self.frames,
            self.redirected,
            self.bytes_compared,
            self.passed.values().sum::<u64>(),
            self.unrouted_keys
        )?;
        writeln!(
            f,
            "{} CoAP verdicts agreed with the RFC 7252 reading",
            self.coap_checked
        )?;
        for (r, n) in &self.passed {
            writeln!(f, "  {r:<22} {n:>9}")?;
        }
        Ok(())
    }
}

/// Longest frame a test run takes here (a page less the kernel's room).
const MAX_FRAME: usize = 1500;

const TOPICS: &[&str] = &[
    "hv",
    "ab",
    "mu",
    "zz",
    "alerts",
    "temp/room1",
    "nobody",
    "",
    // Routed: four segments (one of two words), and five.
    "building-12/floor-3/room-42/t",
    "a/b/c/d/e",
];

fn mqttsn_frame(rng: &mut Pcg64Mcg) -> Vec<u8> {
    let kind = rng.random_range(0..4u8);
    let id: [u8; 2] = match kind {
        0 => *[b"hv", b"ab", b"mu", b"zz"][rng.random_range(0..4)],
        1 => [0, [5u8, 6, 0, 255][rng.random_range(0..4)]],
        2 => {
            let v: u16 = [300u16, 301, 1, 65535][rng.random_range(0..4)];
            v.to_be_bytes()
        }
        _ => rng.random(),
    };
    // Mostly QoS 0 or -1 with a valid TopicIdType, the rest anything.
    let flags = if rng.random_bool(0.7) {
        let id_type = [0b10u8, 0b01, 0b00, rng.random_range(0..4)][kind as usize];
        [0x00u8, 0x60][rng.random_range(0..2)] | id_type
    } else {
        rng.random::<u8>()
    };
    let data: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
    let msg = mqttsn_publish(rng.random_bool(0.2), flags, id, rng.random(), &data);
    wrap(rng, 1884, &msg)
}

fn coap_frame(rng: &mut Pcg64Mcg) -> Vec<u8> {
    let ty = if rng.random_bool(0.8) {
        1
    } else {
        rng.random_range(0..4)
    };
    let code = [2u8, 3, 1, rng.random()][rng.random_range(0..4)];
    let tkl = rng.random_range(0..9usize);
    let mut m = vec![
        1 << 6 | ty << 4 | tkl as u8,
        code,
        rng.random(),
        rng.random(),
    ];
    m.extend((0..tkl).map(|_| rng.random::<u8>()));
    let mut number = 0u16;
    let mut opt = |m: &mut Vec<u8>, n: u16, v: &[u8]| {
        let n = n.max(number);
        coap_option(m, n - number, v);
        number = n;
    };
    if rng.random_bool(0.2) {
        opt(&mut m, 3, &vec![b'h'; rng.random_range(0..250)]);
    }
    let path: Vec<&str> = match rng.random_range(0..8) {
        0 => vec!["ps"],
        1 => vec!["ps", "other"],
        2 => vec![],
        _ => vec!["ps", "data"],
    };
    for s in path {
        opt(&mut m, 11, s.as_bytes());
    }
    // Mostly one topic (routed ones most of all), sometimes none or two;
    // sometimes an empty segment before, within or after it.
    let topics = [1, 1, 1, 0, 2][rng.random_range(0..5)];
    for _ in 0..topics {
        let t = if rng.random_bool(0.6) {
            [
                "hv",
                "ab",
                "temp/room1",
                "alerts",
                "/hv",
                "building-12/floor-3/room-42/t",
                "a/b/c/d/e",
            ][rng.random_range(0..7)]
        } else {
            TOPICS[rng.random_range(0..TOPICS.len())]
        };
        let mut segs: Vec<&str> = t.split('/').collect();
        if rng.random_bool(0.1) {
            segs.insert(rng.random_range(0..=segs.len()), "");
        }
        for seg in segs {
            opt(&mut m, 11, seg.as_bytes());
        }
    }
    // Options after the path: mostly short (within the window), sometimes
    // long, sometimes many.
    let after = [0, 0, 1, 2, 3, 15][rng.random_range(0..6)];
    for _ in 0..after {
        let n = [12u16, 15, 15, 17, 60, 300, 2000][rng.random_range(0..7)];
        let len = if rng.random_bool(0.85) {
            rng.random_range(0..12)
        } else {
            rng.random_range(0..300)
        };
        let v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        opt(&mut m, n, &v);
    }
    match rng.random_range(0..10) {
        // A format error after the path: a bare marker, an option that
        // runs past the end, a reserved nibble, a missing extension byte.
        0 => match rng.random_range(0..4) {
            0 => m.push(0xff),
            1 => m.extend_from_slice(&[0x1b, b'x']),
            2 => m.extend_from_slice(&[[0xf1u8, 0x1f, 0xdf][rng.random_range(0..3)], 0, 0]),
            _ => m.push([0xd0u8, 0x0d, 0xe0][rng.random_range(0..3)]),
        },
        1..=7 => {
            m.push(0xff);
            m.extend((0..rng.random_range(0..30)).map(|_| rng.random::<u8>()));
        }
        _ => {}
    }
    wrap(rng, 5683, &m)
}

/// `payload` in Ethernet/IP/UDP: either family, VLAN or not, IPv4
/// options sometimes.
fn wrap(rng: &mut Pcg64Mcg, dport: u16, payload: &[u8]) -> Vec<u8> {
    let dport = if rng.random_bool(0.95) {
        dport
    } else {
        rng.random()
    };
    match rng.random_range(0..6) {
        0 => frame_v4_options(&[1, 1, 1, 1, 0x94, 4, 0, 0], dport, payload),
        1 | 2 => frame(L3::V6, vlan(rng), 40000, dport, payload),
        _ => frame(L3::V4, vlan(rng), 40000, dport, payload),
    }
}

fn vlan(rng: &mut Pcg64Mcg) -> Option<u16> {
    rng.random_bool(0.2).then(|| rng.random_range(1..4095))
}

/// A mutation of `f`: flipped bytes, a cut, growth, a new TTL; then the
/// checksums made right, mostly.
fn mutate(rng: &mut Pcg64Mcg, mut f: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.random_range(0..4) {
        match rng.random_range(0..6) {
            0 | 1 if !f.is_empty() => {
                let i = rng.random_range(0..f.len());
                f[i] ^= 1 << rng.random_range(0..8);
            }
            2 if !f.is_empty() => {
                // Mostly in the headers and the start of the payload.
                let i = rng.random_range(0..f.len().min(80));
                f[i] = rng.random();
            }
            // BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet
            // header (the shorter ones are fixtures' business).
            3 => f.truncate(rng.random_range(14.min(f.len())..=f.len())),
            4 => f.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>())),
            // In the last bytes: a CoAP message's options after its path
            // and its payload marker.
            5 if f.len() > 16 && rng.random_bool(0.5) => {
                let i = rng.random_range(f.len() - 16..f.len());
                f[i] = [0xff, 0xf1, 0x1b, 0xd0, rng.random()][rng.random_range(0..5)];
            }
            _ if f.len() > 23 => f[22] = [0, 1, 2, 255][rng.random_range(0..4)],
            _ => {}
        }
    }
    // Nor one past what fits a page with the kernel's head- and tailroom.
    f.truncate(MAX_FRAME);
    if rng.random_bool(0.9) {
        model::fix_checksums(&mut f);
    }
    f
}

/// The next frame of the run.
fn next(rng: &mut Pcg64Mcg, fixtures: &[Vec<u8>]) -> Vec<u8> {
    let base = match rng.random_range(0..10) {
        0..=1 => loop {
            let f = &fixtures[rng.random_range(0..fixtures.len())];
            if f.len() >= 14 {
                break f.clone();
            }
        },
        2..=5 => mqttsn_frame(rng),
        _ => coap_frame(rng),
    };
    if rng.random_bool(0.6) {
        mutate(rng, base)
    } else {
        base
    }
}

/// Runs `n` frames (seeded by `seed`) through the router loaded in the
/// current network namespace, which must hold an interface `sc0`, and
/// through the model; the first disagreement is an error naming the frame.
pub fn run(n: u64, seed: u64, progress: impl FnMut(u64)) -> Result<Report> {
    run_with(n, seed, FanoutPath::Auto, progress)
}

/// [`run`] with multi-shard publishes fanned out by `path` (`Auto`: by
/// broadcast, unless the kernel refuses the copy program).
pub fn run_with(
    n: u64,
    seed: u64,
    path: FanoutPath,
    mut progress: impl FnMut(u64),
) -> Result<Report> {
    let plan = crate::fixtures::plan("sc0", 1);
    let compiled = plan.compile()?;
    let mut dp = Dataplane::load(&crate::object(), &RouterConfig::default())?;
    dp.set_fanout_path(path);
    dp.install(&compiled, false)?;
    let parity = dp.active_slot()? & 1;
    let broadcasts = dp.broadcasts();
    let settings = Settings::default_with_mac(mac_address("sc0")?);
    let fixtures: Vec<Vec<u8>> = crate::fixtures::all()
        .into_iter()
        .map(|f| f.packet)
        .collect();
    let before = dp.counters()?;
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut report = Report::default();
    let mut want_reasons: BTreeMap<Reason, u64> = BTreeMap::new();
    let mut want_unrouted: BTreeSet<TopicKey> = BTreeSet::new();
    for i in 0..n {
        let f = next(&mut rng, &fixtures);
        let want = model::classify(&f, &compiled, &settings);
        let got = dp.test_run(&f, 1)?;
        let show = || format!("frame {i} (seed {seed}): {}", hex(&f));
        match &want.verdict {
            Verdict::Pass(reason) => {
                if got.action != action::PASS || got.output != f {
                    bail!(
                        "{}: the model passes it up ({reason:?}), the router gave action {} and {}",
                        show(),
                        got.action,
                        if got.output == f {
                            "the frame untouched"
                        } else {
                            "other bytes"
                        }
                    );
                }
                *want_reasons.entry(*reason).or_default() += 1;
                *report.passed.entry(reason.label()).or_default() += 1;
            }
            Verdict::FanOut { handoff, .. } if broadcasts => {
                // Every fixture shard leaves by sc0: a broadcast, the
                // hand-off's nonce (bytes 16..24) any but the model's 0.
                let (masked, nonce) = crate::fixtures::without_nonce(&got.output);
                // The generation the router routed by goes along (the
                // model's hand-off has 0 there).
                let mut want = handoff.clone();
                if let Some(p) = want.get_mut(6..8) {
                    p.copy_from_slice(&(parity as u16).to_ne_bytes());
                }
                if got.action != action::REDIRECT || masked != want || !nonce {
                    bail!(
                        "{}: the model broadcasts it, the router gave action {} and\n  router {}\n  model  {} (nonce any but 0)",
                        show(),
                        got.action,
                        hex(&got.output),
                        hex(&want)
                    );
                }
                *want_reasons.entry(Reason::Broadcast).or_default() += 1;
                *report.passed.entry(Reason::Broadcast.label()).or_default() += 1;
            }
            // A kernel that refused the copy program: the TC hand-off.
            Verdict::FanOut { handoff, .. } => {
                if got.action != action::PASS || got.output != *handoff {
                    bail!(
                        "{}: the model hands it to the TC fan-out, the router gave action {} and\n  router {}\n  model  {}",
                        show(),
                        got.action,
                        hex(&got.output),
                        hex(handoff)
                    );
                }
                *want_reasons.entry(Reason::FannedOut).or_default() += 1;
                *report.passed.entry(Reason::FannedOut.label()).or_default() += 1;
            }
            Verdict::Redirect { shard, output } => {
                if got.action != action::REDIRECT {
                    bail!(
                        "{}: the model redirects it to shard index {shard}, the router gave action {}",
                        show(),
                        got.action
                    );
                }
                if want.exact {
                    if got.output != *output {
                        bail!(
                            "{}: output differs\n  router {}\n  model  {}",
                            show(),
                            hex(&got.output),
                            hex(output)
                        );
                    }
                    report.bytes_compared += 1;
                }
                *want_reasons.entry(Reason::Redirected).or_default() += 1;
                report.redirected += 1;
            }
        }
        if let Some(rfc) = coap_against_rfc(&f, &want.verdict) {
            rfc.map_err(|e| anyhow::anyhow!("{}: {e}", show()))?;
            report.coap_checked += 1;
        }
        want_unrouted.extend(want.unrouted);
        report.frames += 1;
        if i % 10_000 == 0 {
            progress(i);
        }
    }
    let after = dp.counters()?;
    for (reason, want) in &want_reasons {
        let got = after.reasons.get(reason).map_or(0, |c| c.packets)
            - before.reasons.get(reason).map_or(0, |c| c.packets);
        if got != *want {
            bail!(
                "reason {}: the router counted {got}, the model {want}",
                reason.label()
            );
        }
    }
    let got_unrouted: BTreeSet<TopicKey> = after.unrouted.keys().copied().collect();
    // The kernel keeps the most recent MAX_UNROUTED keys (an LRU): past
    // that, what it holds must be among the model's.
    let same = if want_unrouted.len() <= MAX_UNROUTED as usize {
        got_unrouted == want_unrouted
    } else {
        got_unrouted.is_subset(&want_unrouted)
    };
    if !same {
        bail!(
            "unrouted keys differ: router {} keys, model {} keys",
            got_unrouted.len(),
            want_unrouted.len()
        );
    }
    report.unrouted_keys = got_unrouted.len();
    Ok(report)
}

/// Holds a CoAP verdict to the RFC 7252 reading: a redirected message is
/// a well-formed publish under the prefix, and one passed up as malformed
/// or as having too many options is not. `None` when the frame is not a
/// CoAP datagram on the standard port that etherparse reads, or the
/// verdict says nothing about the message's form.
fn coap_against_rfc(f: &[u8], verdict: &Verdict) -> Option<Result<(), String>> {
    let prefix = router_common::Config::DEFAULT_PREFIX;
    let sliced = SlicedPacket::from_ethernet(f).ok()?;
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        return None;
    };
    if udp.destination_port() != 5683 {
        return None;
    }
    let topic = coap_reference::publish_topic(udp.payload(), prefix.as_bytes());
    match verdict {
        Verdict::Redirect { .. } | Verdict::FanOut { .. } if topic.is_none() => Some(Err(
            "redirected, but RFC 7252 reads no publish under the prefix".into(),
        )),
        Verdict::Pass(r @ (Reason::CoapMalformed | Reason::CoapTooManyOptions))
            if topic.is_some() =>
        {
            Some(Err(format!(
                "passed up as {}, but RFC 7252 reads a publish to {:?}",
                r.label(),
                String::from_utf8_lossy(&topic.unwrap_or_default())
            )))
        }
        Verdict::Redirect { .. }
        | Verdict::FanOut { .. }
        | Verdict::Pass(Reason::CoapMalformed | Reason::CoapTooManyOptions) => Some(Ok(())),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

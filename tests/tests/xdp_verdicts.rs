//! Every fixture of the table (`tests/src/fixtures/`) through the real XDP
//! program in the kernel (`BPF_PROG_TEST_RUN`): its verdict, the reason it
//! is counted under, and for redirected frames every output byte.

use std::collections::BTreeMap;

use integration_tests::{
    fixtures::{self, Expect},
    xdp::{lab, routed, routed_with, shard_outs, short_publish},
};
use router_common::{maps::FanoutMeta, reason::Reason};
use shardcast_dataplane::{FanoutPath, RouterConfig, action, mac_address};

#[test]
fn every_fixture_gets_its_verdict_and_bytes() {
    check_table(FanoutPath::Tc);
}

/// The same table with multi-shard routes broadcast (every fixture shard
/// leaves by `sc0`): a multi-shard publish is redirected, its hand-off in
/// the metadata with a nonce, and counted `broadcast`; every other verdict
/// is the same.
#[test]
fn every_fixture_gets_its_verdict_and_bytes_by_broadcast() {
    check_table(FanoutPath::Auto);
}

fn check_table(path: FanoutPath) {
    let ns = lab();
    let failures = ns
        .run(move || {
            let dp = routed_with(RouterConfig::default(), path);
            // A kernel that refused the copy program fans out by TC: the
            // table then holds the router to the TC hand-off.
            let broadcast = dp.broadcasts();
            if path == FanoutPath::Auto && !broadcast {
                eprintln!("the kernel refused the copy program: checking the TC hand-off");
            }
            let outs = shard_outs(mac_address("sc0").unwrap());
            let table = fixtures::all();
            assert!(table.len() >= 30, "at least 30 fixtures");
            let mut failures = Vec::new();
            let mut want_reasons: BTreeMap<Reason, u64> = BTreeMap::new();
            for f in &table {
                let r = dp.test_run(&f.packet, 1).unwrap();
                match &f.expect {
                    Expect::Pass(reason) => {
                        *want_reasons.entry(*reason).or_default() += 1;
                        if r.action != action::PASS {
                            failures.push(format!(
                                "{}: action {} (want PASS/{:?})",
                                f.name, r.action, reason
                            ));
                        } else if r.output != f.packet {
                            failures.push(format!("{}: passed packet was modified", f.name));
                        }
                    }
                    Expect::FanOut { handoff, .. } if broadcast => {
                        *want_reasons.entry(Reason::Broadcast).or_default() += 1;
                        // The generation the router routed by goes along.
                        let handoff = FanoutMeta {
                            parity: (dp.active_slot().unwrap() & 1) as u16,
                            ..*handoff
                        };
                        let want = fixtures::handoff_output(&f.packet, &handoff);
                        let (got, nonce) = fixtures::without_nonce(&r.output);
                        if r.action != action::REDIRECT {
                            failures.push(format!(
                                "{}: action {} (want REDIRECT, a broadcast)",
                                f.name, r.action
                            ));
                        } else if got != want || !nonce {
                            failures.push(format!(
                                "{}: broadcast hand-off differs\n got  {:02x?}\n want {:02x?} (nonce any but 0)",
                                f.name, r.output, want
                            ));
                        }
                    }
                    Expect::FanOut { handoff, .. } => {
                        *want_reasons.entry(Reason::FannedOut).or_default() += 1;
                        let want = fixtures::handoff_output(&f.packet, handoff);
                        if r.action != action::PASS {
                            failures.push(format!(
                                "{}: action {} (want PASS to the fan-out)",
                                f.name, r.action
                            ));
                        } else if r.output != want {
                            failures.push(format!(
                                "{}: hand-off differs\n got  {:02x?}\n want {:02x?}",
                                f.name, r.output, want
                            ));
                        }
                    }
                    Expect::Redirect { shard } => {
                        *want_reasons.entry(Reason::Redirected).or_default() += 1;
                        let want = fixtures::expected_output(&f.packet, &outs[shard]);
                        if r.action != action::REDIRECT {
                            failures.push(format!(
                                "{}: action {} (want REDIRECT to shard {shard})",
                                f.name, r.action
                            ));
                        } else if r.output != want {
                            failures.push(format!(
                                "{}: output differs\n got  {:02x?}\n want {:02x?}",
                                f.name, r.output, want
                            ));
                        }
                    }
                }
            }
            // Every verdict was counted under its reason, nothing else.
            let counters = dp.counters().unwrap();
            for reason in Reason::ALL {
                let got = counters.reasons[reason].packets;
                let want = want_reasons.get(reason).copied().unwrap_or(0);
                if got != want {
                    failures.push(format!("counter {}: {got} (want {want})", reason.label()));
                }
            }
            failures
        })
        .unwrap();
    assert!(
        failures.is_empty(),
        "{} fixture failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_vanished_egress_sends_publishes_up_untouched() {
    let ns = lab();
    ns.run(|| {
        let dp = routed(RouterConfig::default());
        let f = short_publish(*b"hv", b"abc");
        assert_eq!(dp.test_run(&f, 1).unwrap().action, action::REDIRECT);
        // Unregistering the interface empties its devmap slot (the kernel
        // does it): the route still names the slot.
        integration_tests::sh("ip", &["link", "del", "sc0"]).unwrap();
        let r = dp.test_run(&f, 1).unwrap();
        assert_eq!(r.action, action::PASS);
        assert_eq!(r.output, f, "passed packet was modified");
        let c = dp.counters().unwrap();
        assert_eq!(c.reasons[&Reason::EgressMissing].packets, 1);
        assert_eq!(c.reasons[&Reason::Redirected].packets, 1);
    })
    .unwrap();
}

/// A broadcast whose egress is gone (the kernel empties the device maps'
/// entries of an unregistered interface) is not sent into an empty map,
/// where the kernel would drop it uncounted: it goes the TC way, whose
/// fan-out program counts each copy it cannot send.
#[test]
fn a_broadcast_to_a_vanished_egress_goes_the_tc_way() {
    let ns = lab();
    ns.run(|| {
        let dp = routed_with(RouterConfig::default(), FanoutPath::Auto);
        if !dp.broadcasts() {
            eprintln!("the kernel refused the copy program: no broadcast to lose an egress");
            return;
        }
        let (f, handoff) = fixtures::all()
            .into_iter()
            .find_map(|f| match f.expect {
                Expect::FanOut { handoff, .. } => Some((f.packet, handoff)),
                _ => None,
            })
            .expect("the table has multi-shard publishes");
        assert_eq!(dp.test_run(&f, 1).unwrap().action, action::REDIRECT);
        integration_tests::sh("ip", &["link", "del", "sc0"]).unwrap();
        let r = dp.test_run(&f, 1).unwrap();
        assert_eq!(r.action, action::PASS);
        assert_eq!(r.output, fixtures::handoff_output(&f, &handoff));
        let c = dp.counters().unwrap();
        assert_eq!(c.reasons[&Reason::Broadcast].packets, 1);
        assert_eq!(c.reasons[&Reason::FannedOut].packets, 1);
    })
    .unwrap();
}

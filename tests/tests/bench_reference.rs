//! The benchmark's reference programs do what BENCHMARKS.md says they do:
//! the floor parses Ethernet/IPv4/UDP and returns XDP_TX; the forwarder also
//! looks up 8 payload bytes and rewrites the destination before XDP_TX; the
//! call reference is the floor plus one helper call.

use integration_tests::{L3, frame, reference_object};
use shardcast_dataplane::{ReferenceProgram, action};

#[test]
fn floor_transmits_udp_and_passes_the_rest() {
    let floor = ReferenceProgram::load(&reference_object(), "ref_floor").unwrap();
    let udp = frame(L3::V4, None, 1, 1884, b"12345678rest");
    assert_eq!(floor.test_run(&udp, 1).unwrap().action, action::TX);
    let v6 = frame(L3::V6, None, 1, 1884, b"12345678rest");
    assert_eq!(floor.test_run(&v6, 1).unwrap().action, action::PASS);
}

#[test]
fn call_reference_is_the_floor_with_a_call() {
    let call = ReferenceProgram::load(&reference_object(), "ref_call").unwrap();
    let udp = frame(L3::V4, None, 1, 1884, b"12345678rest");
    let r = call.test_run(&udp, 1).unwrap();
    assert_eq!(r.action, action::TX);
    assert_eq!(r.output, udp, "the call reference writes nothing");
    let v6 = frame(L3::V6, None, 1, 1884, b"12345678rest");
    assert_eq!(call.test_run(&v6, 1).unwrap().action, action::PASS);
}

#[test]
fn forwarder_rewrites_only_what_its_table_names() {
    let mut fwd = ReferenceProgram::load(&reference_object(), "ref_forwarder").unwrap();
    let hit = frame(L3::V4, None, 1, 1884, b"KEY00001rest");
    let miss = frame(L3::V4, None, 1, 1884, b"KEY00002rest");
    // Destination 239.1.2.3, port 7000, packed big-endian in the value.
    let dst = u64::from_be_bytes([239, 1, 2, 3, 0x1b, 0x58, 0, 0]);
    fwd.insert(u64::from_le_bytes(*b"KEY00001"), dst).unwrap();

    assert_eq!(fwd.test_run(&miss, 1).unwrap().action, action::PASS);
    let r = fwd.test_run(&hit, 1).unwrap();
    assert_eq!(r.action, action::TX);
    assert_eq!(&r.output[..6], &[0x01, 0x00, 0x5e, 0x01, 0x02, 0x03]);
    assert_eq!(&r.output[30..34], &[239, 1, 2, 3]);
    assert_eq!(&r.output[36..38], &7000u16.to_be_bytes());
}

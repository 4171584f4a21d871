//! Everything the shardcast XDP program and its control plane must agree on.
//!
//! This crate is `no_std` so that the very same code runs inside the kernel
//! (compiled to BPF by `router-ebpf`) and on the host (in `router-ctl` and in
//! tests). Sharing the *code*, not a re-implementation, is what makes the
//! topic key and the parsers agree on both sides by construction; the parity
//! tests (`tests/tests/topic_key_parity.rs`, and every fixture in
//! `tests/tests/xdp_verdicts.rs`) prove it against the loaded program.
//!
//! ```
//! use router_common::{mqttsn, payload::Payload, topic::topic_key};
//! // A QoS 0 PUBLISH with a short topic name "tp": length, type, flags,
//! // topic (2 bytes), message id (2 bytes), data.
//! let pkt = [9u8, 0x0C, 0b0000_0010, b't', b'p', 0, 0, b'h', b'i'];
//! let publish = mqttsn::parse_publish(&pkt[..]).unwrap();
//! assert_eq!(publish.key(), topic_key(b"tp"));
//! ```
#![no_std]

#[cfg(any(test, feature = "builders"))]
pub mod build;
pub mod checksum;
pub mod coap;
pub mod coap_fast;
#[cfg(any(test, feature = "builders"))]
pub mod coap_reference;
pub mod maps;
pub mod mqttsn;
pub mod payload;
pub mod reason;
pub mod topic;

pub use maps::{Config, Counter, Meta, Route, Shard};
pub use reason::Reason;
pub use topic::TopicKey;

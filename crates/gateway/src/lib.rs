//! The gateway: the control path of the router. The XDP program forwards
//! the publishes it can route without session state and passes every other
//! MQTT-SN and CoAP message up the stack; the gateway answers them.
//!
//! - [`mqttsn`]: MQTT-SN v1.2 messages, decoded and encoded;
//! - [`session`]: the MQTT-SN gateway's protocol state, a pure state
//!   machine (clients, topic ids, subscriptions, keep-alive, sleep, QoS 1
//!   and 2, wills);
//! - [`service`]: the state machine on a UDP socket;
//! - [`registry`]: devices' sessions and the topic ids, on disk;
//! - [`batch`]: paced, batched sends (`sendmmsg`, adaptive chunks);
//! - [`coap`]: the CoAP side (Observe, CON publishes, discovery);
//! - [`control`]: the device protocol's messages and MACs;
//! - [`membership`]: shard-aware devices' tokens and migrations;
//! - [`probe`]: latency probes through the data plane.

pub mod batch;
pub mod coap;
pub mod control;
pub mod membership;
pub mod mqttsn;
pub mod probe;
pub mod registry;
pub mod service;
pub mod session;

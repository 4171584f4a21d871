//! A shard-aware MQTT-SN device (docs/device-protocol.md): it connects to
//! the gateway, says `hello` on its control topic, joins the multicast
//! group of the shard it is assigned, renews its migration token, and on
//! an authenticated `migrate` command joins the new shard's group before
//! it confirms and leaves the old one only once the gateway acknowledged:
//! make-before-break on the device's side. Publishes arriving twice
//! meanwhile (from both groups) are dropped by [`Dedup`].
//!
//! - [`protocol`]: the device's side of the control protocol, pure;
//! - [`dedup`]: duplicate detection;
//! - [`client`]: the protocol on sockets (tokio);
//! - [`fleet`]: many devices and a numbered publisher, with loss accounted.

pub mod client;
pub mod dedup;
pub mod fleet;
pub mod protocol;

pub use client::{Delivery, Device, DeviceConfig, DeviceError};
pub use dedup::Dedup;
pub use protocol::{Action, DeviceStats, Protocol};

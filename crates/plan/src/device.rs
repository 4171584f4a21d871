//! The rules for a device entry, one place for the plan and the planner's
//! workload (which becomes a plan): an id of 1..=[`NAME_MAX`] bytes,
//! unique; a group name of 1..=[`NAME_MAX`] bytes; an address that is
//! unicast and unique, `::ffff:a.b.c.d` being `a.b.c.d` (as the data plane
//! keys it).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use crate::text::cut;

/// Longest device id and device group name (bytes): names end up in
/// history rows and error messages, and an unbounded one costs both.
pub const NAME_MAX: usize = 256;

/// What can be wrong with a device entry. Each names the device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("device #{index}: id {id:?} must be 1..={NAME_MAX} bytes")]
    BadId { index: usize, id: String },
    #[error("device {device:?}: group {group:?} must be 1..={NAME_MAX} bytes")]
    BadGroup { device: String, group: String },
    #[error("device id {0:?} appears more than once")]
    Duplicate(String),
    #[error("device {device:?}: address {value:?} is not an IP address")]
    BadAddress { device: String, value: String },
    #[error(
        "device {device:?}: address {address} is not a unicast address (multicast, broadcast and unspecified addresses never send)"
    )]
    NotUnicast { device: String, address: IpAddr },
    #[error("devices {a:?} and {b:?} share the address {address}")]
    SharedAddress {
        a: String,
        b: String,
        address: IpAddr,
    },
}

/// Checks a list's devices one by one, remembering ids and addresses.
#[derive(Default)]
pub struct DeviceChecker<'a> {
    ids: HashSet<&'a str>,
    addresses: HashMap<IpAddr, &'a str>,
}

impl<'a> DeviceChecker<'a> {
    /// Checks device #`index`; returns its address, canonical.
    pub fn check(
        &mut self,
        index: usize,
        id: &'a str,
        group: Option<&str>,
        address: Option<&str>,
    ) -> Result<Option<IpAddr>, DeviceError> {
        if id.is_empty() || id.len() > NAME_MAX {
            return Err(DeviceError::BadId { index, id: cut(id) });
        }
        if let Some(g) = group
            && (g.is_empty() || g.len() > NAME_MAX)
        {
            return Err(DeviceError::BadGroup {
                device: id.to_string(),
                group: cut(g),
            });
        }
        if !self.ids.insert(id) {
            return Err(DeviceError::Duplicate(id.to_string()));
        }
        let Some(a) = address else {
            return Ok(None);
        };
        let address = a
            .parse::<IpAddr>()
            .map_err(|_| DeviceError::BadAddress {
                device: id.to_string(),
                value: cut(a),
            })?
            .to_canonical();
        let unicast = match address {
            IpAddr::V4(v4) => !(v4.is_multicast() || v4.is_unspecified() || v4.is_broadcast()),
            IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_unspecified()),
        };
        if !unicast {
            return Err(DeviceError::NotUnicast {
                device: id.to_string(),
                address,
            });
        }
        if let Some(other) = self.addresses.insert(address, id) {
            return Err(DeviceError::SharedAddress {
                a: other.to_string(),
                b: id.to_string(),
                address,
            });
        }
        Ok(Some(address))
    }
}

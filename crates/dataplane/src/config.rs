//! The router's settings (`SC_CONFIG`) and the XDP attach mode.

use aya::programs::xdp::XdpMode;
use router_common::maps::{CONFIG_GROUP_STATS, Config, PREFIX_MAX};

use crate::DataplaneError;

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Native (driver) XDP: the fast path on real NICs and veth.
    Driver,
    /// Generic (skb) XDP: works everywhere, slower.
    Skb,
}

impl Mode {
    /// The names [`Mode::from_str`](std::str::FromStr) takes (CLI values,
    /// `dataplane.mode` in the config).
    pub const NAMES: [&'static str; 2] = ["driver", "skb"];

    pub(crate) fn xdp(self) -> XdpMode {
        match self {
            Mode::Driver => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "driver" => Ok(Mode::Driver),
            "skb" => Ok(Mode::Skb),
            other => Err(format!(
                "unknown XDP mode {other:?} (expected one of: {})",
                Mode::NAMES.join(", ")
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Driver => "driver",
            Mode::Skb => "skb",
        })
    }
}

/// Router settings written to `SC_CONFIG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    pub mqttsn_port: u16,
    pub coap_port: u16,
    /// Normalised CoAP prefix (see [`shardcast_plan::normalize_prefix`]).
    pub coap_prefix: String,
    /// Count routed publishes per (topic, device group) as well
    /// (`CONFIG_GROUP_STATS`): costs the fast path a lookup or two.
    pub group_stats: bool,
    /// Count one publish in this many for the group counters (1: all).
    pub group_sample: u32,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            mqttsn_port: Config::DEFAULT_MQTTSN_PORT,
            coap_port: Config::DEFAULT_COAP_PORT,
            coap_prefix: Config::DEFAULT_PREFIX.to_string(),
            group_stats: false,
            group_sample: 1,
        }
    }
}

impl RouterConfig {
    /// The map value, or an error naming the prefix if it is not one
    /// [`shardcast_plan::normalize_prefix`] accepts (too long for the map,
    /// an empty segment): checked here too, since any caller of the public
    /// API can build a `RouterConfig`.
    pub(crate) fn to_map(&self) -> Result<Config, DataplaneError> {
        let normal =
            shardcast_plan::normalize_prefix(&self.coap_prefix).map_err(DataplaneError::Config)?;
        if normal != self.coap_prefix {
            return Err(DataplaneError::Config(format!(
                "CoAP prefix {:?} is not normalised (expected {normal:?})",
                self.coap_prefix
            )));
        }
        let mut prefix = [0u8; PREFIX_MAX];
        let b = self.coap_prefix.as_bytes();
        prefix[..b.len()].copy_from_slice(b);
        Ok(Config {
            mqttsn_port: self.mqttsn_port,
            coap_port: self.coap_port,
            prefix_len: b.len() as u32,
            prefix,
            flags: if self.group_stats {
                CONFIG_GROUP_STATS
            } else {
                0
            },
            group_sample: self.group_sample,
            prefix_start: router_common::coap::PrefixStart::encode(b),
        })
    }

    pub(crate) fn from_map(c: &Config) -> Self {
        Self {
            mqttsn_port: c.mqttsn_port,
            coap_port: c.coap_port,
            coap_prefix: String::from_utf8_lossy(c.prefix()).into_owned(),
            group_stats: c.flags & CONFIG_GROUP_STATS != 0,
            group_sample: c.group_sample.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_prefix_is_an_error_not_a_panic() {
        let long = RouterConfig {
            coap_prefix: format!("{}/", "x".repeat(PREFIX_MAX)),
            ..RouterConfig::default()
        };
        assert!(matches!(long.to_map(), Err(DataplaneError::Config(_))));
        let raw = RouterConfig {
            coap_prefix: "ps/data".into(),
            ..RouterConfig::default()
        };
        assert!(matches!(raw.to_map(), Err(DataplaneError::Config(_))));
        let ok = RouterConfig::default().to_map().unwrap();
        assert_eq!(RouterConfig::from_map(&ok), RouterConfig::default());
        assert_eq!("skb".parse::<Mode>(), Ok(Mode::Skb));
        assert!(
            "native"
                .parse::<Mode>()
                .unwrap_err()
                .contains("driver, skb")
        );
    }
}

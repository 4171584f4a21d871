//! The daemon's configuration file (`docs/config.md`).
//!
//! Parsed with serde (unknown keys refused) and then validated as a whole
//! before the daemon touches anything: every error names the key
//! (`history.bucket`) and says what is wrong with its value.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use router_common::maps::Config;
use shardcast_dataplane::{DEFAULT_PIN_ROOT, FanoutPath, Mode};
use shardcast_plan::normalize_prefix;

use crate::{gateway::RelayOptions, state::DEFAULT_STATE_DIR};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config {path}: {reason}")]
    Syntax { path: String, reason: String },
    #[error("config {path}: {key}: {reason}")]
    Invalid {
        path: String,
        key: &'static str,
        reason: String,
    },
}

/// The whole file.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    pub dataplane: DataplaneSection,
    pub daemon: DaemonSection,
    pub history: HistorySection,
    /// The MQTT-SN gateway the daemon runs (absent: none).
    pub gateway: Option<crate::gateway::GatewayOptions>,
    /// The control cycle (absent: the daemon installs plan files only).
    pub cycle: Option<crate::cycle::CycleConfig>,
    /// Where the Prometheus endpoint listens (`metrics.listen`; absent:
    /// none).
    pub metrics: Option<std::net::SocketAddr>,
    /// Latency probes through the data plane (`[probe]`; absent: none).
    pub probe: Option<ProbeSection>,
}

/// `[probe]`: the daemon sends, every `every`, one probe per shard out of
/// `iface`, an interface whose far end is an ingress the XDP program
/// serves (in the lab a veth pair inside the router's namespace); the
/// gateway's relay receives the copies (`crate::probe`).
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSection {
    pub iface: String,
    pub every: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DataplaneSection {
    pub pin_root: PathBuf,
    /// Interfaces to attach to when nothing is pinned yet (else adopt).
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
    pub mode: Mode,
    /// How multi-shard publishes fan out when the daemon attaches.
    pub fanout: FanoutPath,
    pub object: Option<PathBuf>,
    pub mqttsn_port: u16,
    pub coap_port: u16,
    pub coap_prefix: String,
    pub group_stats: bool,
    pub group_sample: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSection {
    pub tick: Duration,
    /// Plan file installed whenever it holds a newer generation.
    pub plan: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub detach_on_exit: bool,
    pub incremental: bool,
    /// Devices sent migrate commands at once (with a gateway).
    pub migration_batch: usize,
    /// How long a device has to confirm a migrate command.
    pub migration_deadline: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HistorySection {
    pub path: PathBuf,
    pub bucket: Duration,
    pub retention: Duration,
    pub downsample_to: Duration,
}

/// History buckets the cycle keeps in memory per topic.
pub const MAX_CYCLE_BUCKETS: u64 = 20_000;

// What the file holds, before validation.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    history: RawHistory,
    gateway: Option<RawGateway>,
    cycle: Option<RawCycle>,
    metrics: Option<RawMetrics>,
    probe: Option<RawProbe>,
    /// Shard boundary policy of the cycle's plans (`docs/workload-format.md`).
    policy: Option<shardcast_planner::workload::Policy>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    iface: Option<String>,
    every: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCycle {
    mode: Option<String>,
    period: Option<String>,
    lead: Option<String>,
    season: Option<String>,
    window: Option<String>,
    horizons: Option<Vec<String>>,
    refit: Option<String>,
    seed: Option<u64>,
    resources: Option<shardcast_planner::workload::Resources>,
    cost: Option<shardcast_planner::workload::CostWeights>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: Option<String>,
    gw_id: Option<u8>,
    registry: Option<PathBuf>,
    token_lifetime: Option<String>,
    migrate_retry: Option<String>,
    send_rate: Option<f64>,
    relay_egress: Option<String>,
    relay_iface: Option<String>,
    relay_group: Option<String>,
    relay_group_v6: Option<String>,
    relay_shard: Option<u32>,
    coap_listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    pin_root: Option<PathBuf>,
    #[serde(default)]
    ingress: Vec<String>,
    #[serde(default)]
    egress: Vec<String>,
    mode: Option<String>,
    fanout: Option<String>,
    object: Option<PathBuf>,
    mqttsn_port: Option<u16>,
    coap_port: Option<u16>,
    coap_prefix: Option<String>,
    group_stats: Option<bool>,
    group_sample: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    tick: Option<String>,
    plan: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    detach_on_exit: Option<bool>,
    incremental: Option<bool>,
    migration_batch: Option<usize>,
    migration_deadline: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    path: Option<PathBuf>,
    bucket: Option<String>,
    retention: Option<String>,
    downsample_to: Option<String>,
}

/// A multicast group of `default`'s family given as `text`, or `default`.
fn multicast<A>(text: Option<String>, default: A) -> Result<A, String>
where
    A: std::str::FromStr + Into<std::net::IpAddr> + Copy,
{
    let Some(t) = text else {
        return Ok(default);
    };
    let family = if default.into().is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    t.parse::<A>()
        .ok()
        .filter(|a| (*a).into().is_multicast())
        .ok_or_else(|| format!("{t:?} is not an {family} multicast group"))
}

impl DaemonConfig {
    pub fn from_file(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    pub fn from_toml(text: &str, path: &str) -> Result<DaemonConfig, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        let bad = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.into(),
            key,
            reason,
        };
        let duration = |key: &'static str, v: Option<String>, default: &str, min: Duration| {
            let s = v.unwrap_or_else(|| default.to_string());
            let d = humantime::parse_duration(&s).map_err(|e| {
                bad(
                    key,
                    format!("{s:?} is not a duration ({e}); e.g. \"1s\", \"1m\", \"35d\""),
                )
            })?;
            if d < min {
                return Err(bad(
                    key,
                    format!(
                        "{s:?} is shorter than the minimum {}",
                        humantime::format_duration(min)
                    ),
                ));
            }
            Ok(d)
        };

        // A path given empty is a mistake, not "the current directory".
        for (key, path) in [
            ("dataplane.pin_root", raw.dataplane.pin_root.as_ref()),
            ("dataplane.object", raw.dataplane.object.as_ref()),
            ("daemon.plan", raw.daemon.plan.as_ref()),
            ("daemon.state_dir", raw.daemon.state_dir.as_ref()),
            ("history.path", raw.history.path.as_ref()),
            (
                "gateway.registry",
                raw.gateway.as_ref().and_then(|g| g.registry.as_ref()),
            ),
        ] {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(bad(
                    key,
                    "is empty; give a path or leave the key out".into(),
                ));
            }
        }
        let d = raw.dataplane;
        let mode: Mode = d
            .mode
            .as_deref()
            .unwrap_or("driver")
            .parse()
            .map_err(|e| bad("dataplane.mode", e))?;
        let fanout: FanoutPath = d
            .fanout
            .as_deref()
            .unwrap_or("auto")
            .parse()
            .map_err(|e| bad("dataplane.fanout", e))?;
        for (key, list) in [
            ("dataplane.ingress", &d.ingress),
            ("dataplane.egress", &d.egress),
        ] {
            for name in list {
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                    return Err(bad(key, format!("{name:?} is not an interface name")));
                }
            }
        }
        if d.ingress.is_empty() && !d.egress.is_empty() {
            return Err(bad(
                "dataplane.ingress",
                "egress given without ingress: nothing to attach".into(),
            ));
        }
        let mqttsn_port = d.mqttsn_port.unwrap_or(Config::DEFAULT_MQTTSN_PORT);
        let coap_port = d.coap_port.unwrap_or(Config::DEFAULT_COAP_PORT);
        if mqttsn_port != 0 && mqttsn_port == coap_port {
            return Err(bad(
                "dataplane.coap_port",
                format!("{coap_port} is also the MQTT-SN port"),
            ));
        }
        let coap_prefix =
            normalize_prefix(d.coap_prefix.as_deref().unwrap_or(Config::DEFAULT_PREFIX))
                .map_err(|e| bad("dataplane.coap_prefix", e))?;
        let dataplane = DataplaneSection {
            pin_root: d
                .pin_root
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT)),
            ingress: d.ingress,
            egress: d.egress,
            mode,
            fanout,
            object: d.object,
            mqttsn_port,
            coap_port,
            coap_prefix,
            group_stats: d.group_stats.unwrap_or(true),
            group_sample: match d.group_sample.unwrap_or(1) {
                n @ 1..=65_536 => n,
                n => {
                    return Err(bad(
                        "dataplane.group_sample",
                        format!("{n} is not between 1 (count every publish) and 65536"),
                    ));
                }
            },
        };

        let m = raw.daemon;
        let daemon = DaemonSection {
            tick: duration("daemon.tick", m.tick, "1s", Duration::from_millis(10))?,
            plan: m.plan,
            state_dir: m
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            detach_on_exit: m.detach_on_exit.unwrap_or(false),
            incremental: m.incremental.unwrap_or(true),
            migration_batch: match m.migration_batch {
                None => 10_000,
                Some(0) => {
                    return Err(bad(
                        "daemon.migration_batch",
                        "is 0: no device could ever move".into(),
                    ));
                }
                Some(n) => n,
            },
            migration_deadline: duration(
                "daemon.migration_deadline",
                m.migration_deadline,
                "30s",
                Duration::from_millis(100),
            )?,
        };

        let h = raw.history;
        let bucket = duration("history.bucket", h.bucket, "1m", Duration::from_secs(1))?;
        if bucket.subsec_nanos() != 0 || 86_400 % bucket.as_secs() != 0 {
            return Err(bad(
                "history.bucket",
                format!(
                    "{} does not divide a day into whole seconds",
                    humantime::format_duration(bucket)
                ),
            ));
        }
        let retention = duration("history.retention", h.retention, "35d", bucket)?;
        let downsample_to = duration("history.downsample_to", h.downsample_to, "1h", bucket)?;
        if downsample_to.subsec_nanos() != 0 || downsample_to.as_secs() % bucket.as_secs() != 0 {
            return Err(bad(
                "history.downsample_to",
                format!(
                    "{} is not a whole number of buckets ({})",
                    humantime::format_duration(downsample_to),
                    humantime::format_duration(bucket)
                ),
            ));
        }
        if daemon.tick > bucket {
            return Err(bad(
                "daemon.tick",
                format!(
                    "{} is longer than history.bucket ({}): buckets would be skipped",
                    humantime::format_duration(daemon.tick),
                    humantime::format_duration(bucket)
                ),
            ));
        }
        let history = HistorySection {
            path: h
                .path
                .unwrap_or_else(|| daemon.state_dir.join("history.redb")),
            bucket,
            retention,
            downsample_to,
        };
        let gateway = match raw.gateway {
            None => None,
            Some(g) => {
                let text = g.listen.ok_or_else(|| {
                    bad(
                        "gateway.listen",
                        "is missing: the address and port to serve MQTT-SN on (e.g. \"198.18.1.1:1884\")".into(),
                    )
                })?;
                let listen: std::net::SocketAddr = text.parse().map_err(|_| {
                    bad(
                        "gateway.listen",
                        format!("{text:?} is not an address and port (e.g. \"198.18.1.1:1884\")"),
                    )
                })?;
                let relay = match (g.relay_egress, g.relay_iface) {
                    (None, None) => None,
                    (Some(egress), Some(iface)) => {
                        let group = multicast(g.relay_group, RelayOptions::DEFAULT_GROUP)
                            .map_err(|e| bad("gateway.relay_group", e))?;
                        let group_v6 = multicast(g.relay_group_v6, RelayOptions::DEFAULT_GROUP_V6)
                            .map_err(|e| bad("gateway.relay_group_v6", e))?;
                        let shard = g.relay_shard.unwrap_or(RelayOptions::DEFAULT_SHARD);
                        if shard >= router_common::maps::MAX_SHARDS {
                            return Err(bad(
                                "gateway.relay_shard",
                                format!(
                                    "{shard} is not a shard id (below {})",
                                    router_common::maps::MAX_SHARDS
                                ),
                            ));
                        }
                        Some(RelayOptions {
                            egress,
                            iface,
                            group,
                            group_v6,
                            shard,
                        })
                    }
                    (Some(_), None) => {
                        return Err(bad(
                            "gateway.relay_iface",
                            "is missing: relay_egress needs the interface the gateway receives on"
                                .into(),
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(bad(
                            "gateway.relay_egress",
                            "is missing: relay_iface needs the interface the data plane sends out of".into(),
                        ));
                    }
                };
                let coap_listen = match g.coap_listen {
                    None => None,
                    Some(t) => Some(t.parse::<std::net::SocketAddr>().map_err(|_| {
                        bad(
                            "gateway.coap_listen",
                            format!("{t:?} is not an address and port (e.g. \"198.18.1.1:5683\")"),
                        )
                    })?),
                };
                Some(crate::gateway::GatewayOptions {
                    relay,
                    coap_listen,
                    coap_prefix: dataplane.coap_prefix.clone(),
                    coap_port: dataplane.coap_port,
                    listen,
                    gw_id: g.gw_id.unwrap_or(1),
                    registry: g
                        .registry
                        .unwrap_or_else(|| daemon.state_dir.join("registry.redb")),
                    state_dir: daemon.state_dir.clone(),
                    token_lifetime: duration(
                        "gateway.token_lifetime",
                        g.token_lifetime,
                        "1h",
                        Duration::from_secs(1),
                    )?,
                    migrate_retry: duration(
                        "gateway.migrate_retry",
                        g.migrate_retry,
                        "1s",
                        Duration::from_millis(10),
                    )?,
                    send_rate: match g.send_rate {
                        None => shardcast_gateway::batch::SEND_RATE,
                        Some(r) if r.is_finite() && (100.0..=1e8).contains(&r) => r,
                        Some(r) => {
                            return Err(bad(
                                "gateway.send_rate",
                                format!(
                                    "{r} is not a rate between 100 and 100,000,000 datagrams/s"
                                ),
                            ));
                        }
                    },
                })
            }
        };
        if raw.policy.is_some() && raw.cycle.is_none() {
            return Err(bad(
                "policy",
                "is given without a [cycle] section: only the cycle's plans follow it".into(),
            ));
        }
        let cycle = match raw.cycle {
            None => None,
            Some(c) => {
                let mode = c
                    .mode
                    .as_deref()
                    .unwrap_or("predictive")
                    .parse()
                    .map_err(|e| bad("cycle.mode", e))?;
                let period = duration("cycle.period", c.period, "5m", daemon.tick)?;
                let lead = duration("cycle.lead", c.lead, "10m", Duration::ZERO)?;
                let season = duration("cycle.season", c.season, "1d", bucket)?;
                let window = duration("cycle.window", c.window, "3d", bucket)?;
                let buckets = window.as_secs() / bucket.as_secs();
                if buckets > MAX_CYCLE_BUCKETS {
                    return Err(bad(
                        "cycle.window",
                        format!(
                            "{} is {buckets} history buckets; at most {MAX_CYCLE_BUCKETS} are kept in memory (a longer history.bucket, or a shorter window)",
                            humantime::format_duration(window)
                        ),
                    ));
                }
                let refit = duration("cycle.refit", c.refit, "1h", period)?;
                let mut horizons = Vec::new();
                for h in c
                    .horizons
                    .unwrap_or_else(|| vec!["5m".into(), "1h".into(), "24h".into()])
                {
                    let d = duration("cycle.horizons", Some(h.clone()), "", bucket)?;
                    if d > window {
                        return Err(bad(
                            "cycle.horizons",
                            format!("{h:?} is beyond cycle.window: nothing to forecast it from"),
                        ));
                    }
                    horizons.push((h, d));
                }
                if horizons.len() > 8 {
                    return Err(bad("cycle.horizons", "more than 8 horizons".into()));
                }
                let resources = c.resources.ok_or_else(|| {
                    bad(
                        "cycle.resources",
                        "is missing: the shards' capacity and egress (shard_capacity, max_shards, egress)".into(),
                    )
                })?;
                resources
                    .validate()
                    .map_err(|e| bad("cycle.resources", e.to_string()))?;
                let policy = raw.policy.unwrap_or_default();
                policy.check().map_err(|e| bad("policy", e.to_string()))?;
                Some(crate::cycle::CycleConfig {
                    mode,
                    period,
                    lead,
                    season,
                    window,
                    horizons,
                    refit,
                    resources,
                    cost: c.cost.unwrap_or_default(),
                    policy,
                    seed: c.seed.unwrap_or(1),
                })
            }
        };
        let metrics = match raw.metrics {
            None => None,
            Some(m) => {
                let text = m.listen.ok_or_else(|| {
                    bad(
                        "metrics.listen",
                        "is missing: the address and port to serve /metrics on (e.g. \"127.0.0.1:9464\")".into(),
                    )
                })?;
                Some(text.parse().map_err(|_| {
                    bad(
                        "metrics.listen",
                        format!("{text:?} is not an address and port (e.g. \"127.0.0.1:9464\")"),
                    )
                })?)
            }
        };
        let probe = match raw.probe {
            None => None,
            Some(p) => {
                let iface = p.iface.filter(|i| !i.is_empty()).ok_or_else(|| {
                    bad(
                        "probe.iface",
                        "is missing: the interface probes leave by (its far end an ingress of the router)".into(),
                    )
                })?;
                if gateway.as_ref().and_then(|g| g.relay.as_ref()).is_none() {
                    return Err(bad(
                        "probe",
                        "needs the gateway's relay (gateway.relay_egress, gateway.relay_iface): the probes come back through it".into(),
                    ));
                }
                Some(ProbeSection {
                    iface,
                    every: duration("probe.every", p.every, "1s", Duration::from_millis(10))?,
                })
            }
        };
        Ok(DaemonConfig {
            dataplane,
            daemon,
            history,
            gateway,
            cycle,
            metrics,
            probe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        DaemonConfig::from_toml(text, "t.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_and_the_documented_example() {
        let c = DaemonConfig::from_toml("", "t.toml").unwrap();
        assert_eq!(c.daemon.tick, Duration::from_secs(1));
        assert_eq!(c.history.bucket, Duration::from_secs(60));
        assert_eq!(c.history.retention, Duration::from_secs(35 * 86_400));
        assert!(c.dataplane.group_stats);
        let doc = include_str!("../../docs/config.md");
        let example = doc
            .split("```toml")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("docs/config.md has a toml example");
        let c = DaemonConfig::from_toml(example, "docs/config.md").unwrap();
        assert_eq!(c.dataplane.ingress, ["eth0"]);
    }

    #[test]
    fn every_error_names_its_key() {
        for (text, key) in [
            ("[daemon]\ntick = \"soon\"", "daemon.tick"),
            ("[daemon]\ntick = \"1ms\"", "daemon.tick"),
            ("[daemon]\ntick = \"2m\"", "daemon.tick"),
            ("[history]\nbucket = \"7s\"", "history.bucket"),
            (
                "[history]\nbucket = \"1m\"\ndownsample_to = \"90s\"",
                "history.downsample_to",
            ),
            ("[history]\nretention = \"1s\"", "history.retention"),
            ("[dataplane]\nmode = \"fast\"", "dataplane.mode"),
            ("[dataplane]\nfanout = \"udp\"", "dataplane.fanout"),
            ("[dataplane]\ningress = [\"a/b\"]", "dataplane.ingress"),
            ("[dataplane]\negress = [\"eth1\"]", "dataplane.ingress"),
            ("[dataplane]\ncoap_port = 1884", "dataplane.coap_port"),
            ("[dataplane]\ngroup_sample = 0", "dataplane.group_sample"),
            ("[history]\npath = \"\"", "history.path"),
            ("[daemon]\nstate_dir = \"\"", "daemon.state_dir"),
            ("[dataplane]\npin_root = \"\"", "dataplane.pin_root"),
            ("[gateway]\ngw_id = 2", "gateway.listen"),
            ("[daemon]\nmigration_batch = 0", "daemon.migration_batch"),
            (
                "[daemon]\nmigration_deadline = \"1ms\"",
                "daemon.migration_deadline",
            ),
            (
                "[gateway]\nlisten = \"0.0.0.0:1884\"\ntoken_lifetime = \"0s\"",
                "gateway.token_lifetime",
            ),
            (
                "[gateway]\nlisten = \"0.0.0.0:1884\"\ncoap_listen = \"x\"",
                "gateway.coap_listen",
            ),
            (
                "[gateway]\nlisten = \"0.0.0.0:1884\"\nrelay_egress = \"a\"",
                "gateway.relay_iface",
            ),
            (
                "[gateway]\nlisten = \"0.0.0.0:1884\"\nrelay_egress = \"a\"\nrelay_iface = \"b\"\nrelay_group = \"10.0.0.1\"",
                "gateway.relay_group",
            ),
            (
                "[gateway]\nlisten = \"0.0.0.0:1884\"\nsend_rate = 0.5",
                "gateway.send_rate",
            ),
            (
                "[gateway]\nlisten = \"0.0.0.0:1884\"\nrelay_egress = \"a\"\nrelay_iface = \"b\"\nrelay_group_v6 = \"2001:db8::1\"",
                "gateway.relay_group_v6",
            ),
            (
                "[gateway]\nlisten = \"0.0.0.0:1884\"\nrelay_egress = \"a\"\nrelay_iface = \"b\"\nrelay_shard = 5000",
                "gateway.relay_shard",
            ),
            ("[gateway]\nlisten = \"198.18.1.1\"", "gateway.listen"),
            ("[gateway]\nlisten = \"x:1884\"", "gateway.listen"),
            (
                "[gateway]\nlisten = \"0.0.0.0:1884\"\nregistry = \"\"",
                "gateway.registry",
            ),
            (
                "[dataplane]\ncoap_prefix = \"/much/too/long/a/prefix/for/the/data/plane\"",
                "dataplane.coap_prefix",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(key), "{text:?}: {e}");
        }
        let res = "[cycle.resources]\nshard_capacity = 100.0\nmax_shards = 4\negress = \"eth1\"\n";
        for (text, key) in [
            ("[cycle]\nperiod = \"1m\"".to_string(), "cycle.resources"),
            ("[policy]\nseparate_by = [\"sla\"]".into(), "policy"),
            (format!("[cycle]\nmode = \"fast\"\n{res}"), "cycle.mode"),
            (format!("[cycle]\nperiod = \"1ms\"\n{res}"), "cycle.period"),
            (format!("[cycle]\nwindow = \"365d\"\n{res}"), "cycle.window"),
            (
                format!("[cycle]\nhorizons = [\"7d\"]\n{res}"),
                "cycle.horizons",
            ),
            (format!("[cycle]\nrefit = \"1s\"\n{res}"), "cycle.refit"),
            (
                "[cycle.resources]\nshard_capacity = -1.0\nmax_shards = 4\negress = \"eth1\""
                    .into(),
                "cycle.resources",
            ),
            (
                format!("[cycle]\n{res}[policy]\nseparate_by = [\"colour\"]"),
                "policy",
            ),
            ("[metrics]\nlisten = \"x\"".into(), "metrics.listen"),
            ("[metrics]".into(), "metrics.listen"),
            ("[probe]\nevery = \"1s\"".into(), "probe.iface"),
            ("[probe]\niface = \"p0\"".into(), "probe"),
            (
                "[gateway]\nlisten = \"0.0.0.0:1\"\nrelay_egress = \"a\"\nrelay_iface = \"b\"\n[probe]\niface = \"p0\"\nevery = \"1ms\""
                    .into(),
                "probe.every",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(key), "{text:?}: {e}");
        }
        let c = DaemonConfig::from_toml(&format!("[cycle]\n{res}"), "t.toml").unwrap();
        let cycle = c.cycle.unwrap();
        assert_eq!(cycle.mode, crate::cycle::Mode::Predictive);
        assert_eq!(cycle.period, Duration::from_secs(300));
        assert_eq!(cycle.horizons.len(), 3);
        // Unknown keys and wrong types: the TOML parser names the key.
        assert!(err("[daemon]\ntik = \"1s\"").contains("tik"));
        assert!(err("[dataplane]\nmqttsn_port = \"x\"").contains("mqttsn_port"));
        assert!(err("[dataplane]\nmqttsn_port = 70000").contains("mqttsn_port"));
        assert!(err("[nonsense]").contains("nonsense"));
        assert!(err("[gateway]\nlisten = \"0.0.0.0:1\"\nport = 2").contains("port"));
        assert!(err("[gateway]\nlisten = \"0.0.0.0:1\"\ngw_id = 300").contains("gw_id"));
    }

    #[test]
    fn the_gateway_section() {
        let c = DaemonConfig::from_toml("", "t.toml").unwrap();
        assert_eq!(c.gateway, None);
        let c = DaemonConfig::from_toml(
            "[daemon]\nstate_dir = \"/var/lib/sc\"\n[gateway]\nlisten = \"198.18.1.1:1884\"",
            "t.toml",
        )
        .unwrap();
        let g = c.gateway.unwrap();
        assert_eq!(g.listen, "198.18.1.1:1884".parse().unwrap());
        assert_eq!(g.gw_id, 1);
        assert_eq!(g.registry, PathBuf::from("/var/lib/sc/registry.redb"));
    }
}

//! `router-ctl devsim`: a simulated fleet of shard-aware devices (the
//! device library, `shardcast-device`) against a gateway, with an optional
//! numbered publisher through the router; reports what every device
//! received, missed (publishes sent after it joined and never received)
//! and how often it migrated. Exits non-zero when a device missed a
//! publish or failed.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Args;
use shardcast_device::fleet::{self, FleetConfig, FleetReport, PublisherConfig};

use super::Globals;

#[derive(Args, Debug)]
pub struct DevsimArgs {
    /// The gateway's address and port.
    #[arg(long)]
    pub gateway: SocketAddr,
    /// How many devices.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub devices: u32,
    /// Device ids are this followed by the device's index.
    #[arg(long, default_value = "dev-")]
    pub prefix: String,
    /// The interface to join shard groups on (default: by route).
    #[arg(long)]
    pub interface: Option<String>,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub keep_alive: Duration,
    /// How long to run (SIGINT or SIGTERM end it sooner, with the report).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Send numbered QoS 0 publishes to this address (the router's MQTT-SN
    /// port), so that every device's losses are counted.
    #[arg(long)]
    pub publish_to: Option<SocketAddr>,
    /// The network namespace the publisher sends from (`ip netns` name):
    /// the router's ingress side, while the devices run in this one.
    #[arg(long)]
    pub publish_netns: Option<String>,
    /// The publishes' short topic name (two characters).
    #[arg(long, default_value = "ab")]
    pub topic: String,
    /// Publishes per second.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,
    /// How long devices keep listening after the publisher stops.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Topics the devices follow (comma-separated names): device `i`
    /// subscribes to the `i mod n`-th; only those following `--topic`
    /// expect the numbered publishes.
    #[arg(long, value_delimiter = ',')]
    pub subscribe: Vec<String>,
    /// Write the per-device report here (JSON).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Speak the device protocol over CoAP (the control resource
    /// `sc/<id>`): `--gateway` is then the gateway's CoAP address.
    #[arg(long)]
    pub coap: bool,
}

pub fn run(g: &Globals, a: DevsimArgs) -> Result<()> {
    let topic: [u8; 2] =
        a.topic.as_bytes().try_into().map_err(|_| {
            anyhow::anyhow!("--topic {:?} is not a two-byte short topic name", a.topic)
        })?;
    if a.coap && !a.subscribe.is_empty() {
        bail!("--subscribe needs MQTT-SN sessions: CoAP devices (--coap) subscribe through none");
    }
    for t in &a.subscribe {
        if !shardcast_gateway::session::valid_filter(t) || t.starts_with('$') || t.len() > 1024 {
            bail!("--subscribe: {t:?} is not a topic name or filter");
        }
    }
    let interface = match &a.interface {
        Some(i) => shardcast_dataplane::ifindex(i)?,
        None => 0,
    };
    // Each device: a socket to the gateway and one or two group sockets.
    let want = a.devices as u64 * 3 + 64;
    let limit = shardcast_dataplane::raise_fd_limit(want).context("raising the open-file limit")?;
    if limit < want {
        bail!(
            "{} devices need {want} open files; the limit is {limit} (raise it, or run fewer devices)",
            a.devices
        );
    }
    let socket = match (&a.publish_netns, a.publish_to) {
        (Some(ns), Some(to)) => Some(socket_in(ns, to)?),
        (Some(_), None) => bail!("--publish-netns needs --publish-to"),
        _ => None,
    };
    let cfg = FleetConfig {
        gateway: a.gateway,
        devices: a.devices as usize,
        prefix: a.prefix,
        interface,
        keep_alive: a.keep_alive,
        duration: a.duration,
        publisher: a.publish_to.map(|to| PublisherConfig {
            socket,
            to,
            topic,
            rate: a.rate,
        }),
        grace: a.grace,
        subscriptions: a.subscribe,
        transport: if a.coap {
            shardcast_device::client::Transport::Coap
        } else {
            shardcast_device::client::Transport::MqttSn
        },
    };
    // Every core: thousands of devices each read their groups.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        fleet::run(cfg, stop).await
    });
    if let Some(path) = &a.report {
        crate::state::write_atomically(path, |w| {
            serde_json::to_writer_pretty(&mut *w, &report).map_err(std::io::Error::other)
        })
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if g.json {
        println!("{}", serde_json::to_string_pretty(&summary(&report))?);
    } else {
        print_summary(&report);
    }
    if report.missing > 0 || report.errors > 0 {
        bail!(
            "{} publishes missed, {} devices failed",
            report.missing,
            report.errors
        );
    }
    Ok(())
}

/// A UDP socket made in network namespace `ns` (a socket keeps the
/// namespace it was made in), by a thread that enters it.
fn socket_in(ns: &str, to: SocketAddr) -> Result<std::net::UdpSocket> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<std::net::UdpSocket> {
        shardcast_dataplane::netns::enter(&ns)?;
        let bind: SocketAddr = if to.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let s = std::net::UdpSocket::bind(bind)?;
        s.connect(to)
            .with_context(|| format!("the publisher in {ns} cannot reach {to}"))?;
        Ok(s)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the publisher's socket thread panicked"))?
}

fn summary(r: &FleetReport) -> FleetReport {
    FleetReport {
        per_device: r
            .per_device
            .iter()
            .filter(|d| d.missing > 0 || d.error.is_some())
            .cloned()
            .collect(),
        ..r.clone()
    }
}

fn print_summary(r: &FleetReport) {
    println!(
        "devices {} (assigned {}), publishes sent {}, delivered {}, missed {}, duplicates dropped {}, migrations {}, errors {}",
        r.devices, r.assigned, r.sent, r.delivered, r.missing, r.duplicates, r.migrations, r.errors
    );
    let shards: Vec<String> = r.shards.iter().map(|(s, n)| format!("{s}:{n}")).collect();
    println!("devices per shard: {}", shards.join(" "));
    for d in r
        .per_device
        .iter()
        .filter(|d| d.missing > 0 || d.error.is_some())
        .take(20)
    {
        println!(
            "  {}: missed {}{}",
            d.id,
            d.missing,
            d.error
                .as_deref()
                .map(|e| format!(", {e}"))
                .unwrap_or_default()
        );
    }
}

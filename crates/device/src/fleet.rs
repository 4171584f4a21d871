//! A simulated fleet of shard-aware devices (what `router-ctl devsim`
//! runs), with an optional publisher numbering its publishes, so that
//! every device can say which publish it missed: those sent after it
//! joined its first group and never received, on whatever group. Used by
//! tests, the demo and the benchmark.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use shardcast_gateway::mqttsn::{Flags, Message, encode};
use tokio::time::Instant;

use crate::{Device, DeviceConfig, DeviceError};

const TOPIC_SHORT: u8 = 0b10;

/// A publisher sending numbered QoS 0 publishes through the router.
#[derive(Debug)]
pub struct PublisherConfig {
    /// A socket made elsewhere (another network namespace: the router's
    /// ingress side); `None`: one bound here.
    pub socket: Option<std::net::UdpSocket>,
    /// The router's MQTT-SN address and port.
    pub to: SocketAddr,
    /// A two-character short topic name.
    pub topic: [u8; 2],
    /// Publishes per second.
    pub rate: u32,
}

/// What to simulate.
#[derive(Debug)]
pub struct FleetConfig {
    pub gateway: SocketAddr,
    pub devices: usize,
    /// Device ids are `<prefix><index>`.
    pub prefix: String,
    pub interface: u32,
    pub keep_alive: Duration,
    pub duration: Duration,
    pub publisher: Option<PublisherConfig>,
    /// After the publisher stops, how long devices keep listening for
    /// publishes in flight.
    pub grace: Duration,
    /// Topics the devices follow: device `i` subscribes to
    /// `subscriptions[i % len]` (none: the devices subscribe to nothing
    /// and expect the publisher's topic from whatever group they are in).
    /// A device expects the numbered publishes only if it follows the
    /// publisher's topic.
    pub subscriptions: Vec<String>,
    /// How the devices talk to the gateway.
    pub transport: crate::client::Transport,
}

/// One device's account.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceReport {
    pub id: String,
    pub shard: Option<u32>,
    pub generation: Option<u64>,
    pub received: u64,
    pub duplicates: u64,
    pub migrations: u64,
    pub forged: u64,
    pub hellos: u64,
    pub assigns: u64,
    /// Numbered publishes sent after it joined and never received.
    pub missing: u64,
    /// When it joined its first group, ms after the fleet started.
    pub joined_ms: Option<u64>,
    /// The first few it missed (sequence numbers).
    pub missed: Vec<u64>,
    pub error: Option<String>,
    /// Whether it follows the numbered publishes' topic (else `missing`
    /// is not counted).
    pub expects: bool,
}

/// The fleet's account.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetReport {
    pub devices: usize,
    pub assigned: usize,
    pub sent: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub migrations: u64,
    pub errors: usize,
    /// When the last device joined its first group, ms after the start
    /// (every device connected, said hello and was assigned).
    pub all_joined_ms: Option<u64>,
    /// Devices per shard at the end.
    pub shards: BTreeMap<u32, usize>,
    pub per_device: Vec<DeviceReport>,
}

/// The sequence number in a numbered publish's payload.
fn seq_of(data: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(..8)?.try_into().ok()?))
}

/// Runs the fleet (and its publisher) for `cfg.duration` or until `stop`
/// completes, whichever is first; devices listen `cfg.grace` longer.
pub async fn run(mut cfg: FleetConfig, stop: impl std::future::Future<Output = ()>) -> FleetReport {
    // The last sequence number sent (0: none yet).
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + cfg.duration;
    // When devices stop listening: moved earlier if `stop` completes.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(end + cfg.grace);
    let mut tasks = Vec::with_capacity(cfg.devices);
    for i in 0..cfg.devices {
        let mut dc = DeviceConfig::new(&format!("{}{i}", cfg.prefix), cfg.gateway);
        dc.interface = cfg.interface;
        dc.keep_alive = cfg.keep_alive;
        dc.transport = cfg.transport;
        if !cfg.subscriptions.is_empty() {
            dc.subscriptions = vec![cfg.subscriptions[i % cfg.subscriptions.len()].clone()];
        }
        let sent = sent.clone();
        let topic = cfg.publisher.as_ref().map(|p| p.topic).filter(|t| {
            dc.subscriptions.is_empty() || dc.subscriptions.iter().any(|s| s.as_bytes() == t)
        });
        tasks.push(tokio::spawn(run_device(
            dc,
            sent,
            stop_rx.clone(),
            topic,
            started,
        )));
    }
    let (end_tx, end_rx) = tokio::sync::watch::channel(end);
    let publisher = cfg.publisher.take().map(|p| {
        let sent = sent.clone();
        tokio::spawn(async move { publish(p, sent, end_rx).await })
    });
    tokio::select! {
        _ = stop => {
            let now = Instant::now();
            let _ = end_tx.send(now);
            let _ = stop_tx.send(now + cfg.grace);
        }
        _ = tokio::time::sleep_until(end) => {}
    }
    if let Some(p) = publisher {
        match p.await {
            Ok(Err(e)) => tracing::error!("publisher: {e}"),
            Err(e) => tracing::error!("publisher: {e}"),
            Ok(Ok(())) => {}
        }
    }
    let last = sent.load(Ordering::SeqCst);
    let mut report = FleetReport {
        devices: cfg.devices,
        sent: last,
        ..Default::default()
    };
    for t in tasks {
        let (mut d, received) = match t.await {
            Ok(r) => r,
            Err(e) => (
                DeviceReport {
                    error: Some(e.to_string()),
                    ..Default::default()
                },
                None,
            ),
        };
        match (received, d.expects) {
            (Some((from, got)), true) => {
                // Sent after it joined (`from` was the last sent then).
                let missed: Vec<u64> = (from + 1..=last).filter(|s| !got.contains(s)).collect();
                d.missing = missed.len() as u64;
                d.missed = missed.into_iter().take(16).collect();
            }
            // Never told a shard while the publisher ran: it missed them
            // all.
            (None, true) if d.error.is_none() => {
                d.missing = last;
                d.missed = (1..=last).take(16).collect();
            }
            _ => {}
        }
        report.assigned += d.shard.is_some() as usize;
        report.all_joined_ms = match (report.all_joined_ms, d.joined_ms) {
            (_, None) => report.all_joined_ms,
            (None, j) => j,
            (Some(a), Some(b)) => Some(a.max(b)),
        };
        report.delivered += d.received;
        report.missing += d.missing;
        report.duplicates += d.duplicates;
        report.migrations += d.migrations;
        report.errors += d.error.is_some() as usize;
        if let Some(s) = d.shard {
            *report.shards.entry(s).or_default() += 1;
        }
        report.per_device.push(d);
    }
    report
}

type Received = Option<(u64, std::collections::HashSet<u64>)>;

async fn run_device(
    cfg: DeviceConfig,
    sent: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<Instant>,
    topic: Option<[u8; 2]>,
    started: Instant,
) -> (DeviceReport, Received) {
    let mut report = DeviceReport {
        id: cfg.client_id.clone(),
        expects: topic.is_some(),
        ..Default::default()
    };
    let mut d = match connect(cfg, &stop).await {
        Ok(d) => d,
        Err(e) => {
            report.error = Some(e.to_string());
            return (report, None);
        }
    };
    let mut received: Received = None;
    let err = loop {
        // In slices, so that an earlier stop is seen.
        let until = (*stop.borrow()).min(Instant::now() + Duration::from_millis(200));
        let r = d.next(until).await;
        // Joined (inside `next`): count from the last publish sent before
        // now (the publisher advances the counter before each send, so
        // nothing older can still be on its way).
        if received.is_none() && d.joined() > 0 {
            received = Some((sent.load(Ordering::SeqCst), Default::default()));
            report.joined_ms = Some(started.elapsed().as_millis() as u64);
        }
        match r {
            Ok(None) if Instant::now() >= *stop.borrow() => break None,
            Ok(None) => {}
            Ok(Some(p)) => {
                if let (Some(t), Some((_, got))) = (topic, &mut received)
                    && p.topic_id_type == TOPIC_SHORT
                    && p.topic_id == u16::from_be_bytes(t)
                    && let Some(seq) = seq_of(&p.data)
                {
                    got.insert(seq);
                }
            }
            Err(e) => break Some(e.to_string()),
        }
    };
    if received.is_none() && d.joined() > 0 {
        received = Some((sent.load(Ordering::SeqCst), Default::default()));
    }
    let s = d.stats();
    report.shard = d.assignment().map(|a| a.shard);
    report.generation = d.assignment().map(|a| a.generation);
    report.received = s.delivered;
    report.duplicates = s.duplicates;
    report.migrations = s.migrations;
    report.forged = s.forged;
    report.hellos = s.hellos;
    report.assigns = s.assigns;
    report.error = err;
    (report, received)
}

/// Connects, retrying until `stop` (the gateway may start after us).
async fn connect(
    cfg: DeviceConfig,
    stop: &tokio::sync::watch::Receiver<Instant>,
) -> Result<Device, DeviceError> {
    loop {
        match Device::connect(cfg.clone()).await {
            Ok(d) => return Ok(d),
            Err(e @ DeviceError::NoAnswer { .. }) if Instant::now() < *stop.borrow() => {
                tracing::debug!("{e}; retrying");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends numbered publishes (`seq` as 8 big-endian bytes, then the send
/// time in µs; the MQTT-SN msg id cycles through 1..=65535 with it)
/// at `p.rate` until `end`.
async fn publish(
    p: PublisherConfig,
    sent: Arc<AtomicU64>,
    end: tokio::sync::watch::Receiver<Instant>,
) -> std::io::Result<()> {
    let bind: SocketAddr = if p.to.is_ipv6() {
        "[::]:0".parse().expect("an address")
    } else {
        "0.0.0.0:0".parse().expect("an address")
    };
    let sock = match p.socket {
        Some(s) => {
            s.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(s)?
        }
        None => tokio::net::UdpSocket::bind(bind).await?,
    };
    sock.connect(p.to).await?;
    let start = Instant::now();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while Instant::now() < *end.borrow() {
        tick.tick().await;
        // Publishes due by now at the rate.
        let due = (start.elapsed().as_secs_f64() * p.rate as f64) as u64;
        while seq < due {
            seq += 1;
            let mut data = seq.to_be_bytes().to_vec();
            data.extend_from_slice(&(start.elapsed().as_micros() as u64).to_be_bytes());
            let msg = encode(&Message::Publish {
                flags: Flags {
                    topic_id_type: TOPIC_SHORT,
                    ..Flags::NONE
                },
                topic_id: u16::from_be_bytes(p.topic),
                msg_id: ((seq - 1) % 65_535 + 1) as u16,
                data,
            })
            .expect("a publish encodes");
            // Counted before it leaves: a device that joins reads the
            // counter, and must not be held to a publish that was on the
            // wire before it joined.
            sent.store(seq, Ordering::SeqCst);
            match sock.send(&msg).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

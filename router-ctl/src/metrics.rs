//! The daemon's Prometheus endpoint (`metrics.listen`): the router's state
//! in the OpenMetrics text format, encoded by the Prometheus project's
//! `prometheus-client` crate. A scrape asks the daemon's loop for a fresh
//! rendering ([`render`]), so what it reads is never older than the
//! request, and the daemon spends nothing on metrics nobody scrapes.
//!
//! The HTTP side is one read-only path (`GET /metrics`), one response per
//! connection, with the request's head bounded in size and time: enough
//! for Prometheus and `curl`, and nothing a client can use to hold memory.

use std::{net::SocketAddr, sync::atomic::AtomicU64, time::Duration};

use anyhow::{Context, Result};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::daemon::Daemon;

/// A scrape: the daemon's loop answers with the rendered text.
pub type Scrape = oneshot::Sender<String>;

/// Topics named by the per-topic series (the busiest by planned rate):
/// a label per topic for 10k topics would swamp a Prometheus server.
pub const TOP_TOPICS: usize = crate::cycle::TOP_TOPICS;

type Labels = Vec<(String, String)>;
type F64 = Gauge<f64, AtomicU64>;

fn gauge(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g = F64::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// A family of gauges, one per label set.
fn family(reg: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, f64)>) {
    let f = Family::<Labels, F64>::default();
    for (labels, v) in rows {
        f.get_or_create(&labels).set(v);
    }
    reg.register(name, help, f);
}

fn counter_family(reg: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
    let f = Family::<Labels, Counter>::default();
    for (labels, v) in rows {
        f.get_or_create(&labels).inc_by(v);
    }
    reg.register(name, help, f);
}

fn label(k: &str, v: impl ToString) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// The daemon's state as OpenMetrics text.
pub fn render(d: &Daemon) -> Result<String> {
    let mut reg = Registry::default();
    let v = d.view()?;
    gauge(
        &mut reg,
        "shardcast_plan_generation",
        "Generation of the installed plan",
        v.generation as f64,
    );
    counter(
        &mut reg,
        "shardcast_plan_installs",
        "Plans (and their make-before-break forms) installed by this daemon",
        v.installs,
    );
    gauge(
        &mut reg,
        "shardcast_plan_install_duration_seconds",
        "How long the last install took (maps filled, slot flipped)",
        v.last_install.as_secs_f64(),
    );
    gauge(
        &mut reg,
        "shardcast_group_cells_in_use",
        "Per-CPU (topic, device group) counter cells in use at the last tick (every CPU's); pairs a full line has no room for are counted in a shared map, more slowly",
        v.group_cells.0 as f64,
    );
    gauge(
        &mut reg,
        "shardcast_group_cells",
        "Per-CPU (topic, device group) counter cells, every CPU's",
        v.group_cells.1 as f64,
    );
    gauge(
        &mut reg,
        "shardcast_shards",
        "Shards in the installed plan",
        v.shards.len() as f64,
    );
    family(
        &mut reg,
        "shardcast_shard_load_messages_per_second",
        "Messages/s the last complete bucket's topics would route into each shard under the installed plan's routes",
        v.shards
            .iter()
            .map(|s| (label("shard", s.id), s.measured))
            .collect(),
    );
    if let Some((start, delivered)) = &v.delivered {
        family(
            &mut reg,
            "shardcast_shard_delivered_messages_per_second",
            "Messages/s delivered into each shard's group over the last bucket written, under the routes in force during it (a migration's transition routes included)",
            delivered
                .iter()
                .map(|(s, r)| (label("shard", s), *r))
                .collect(),
        );
        gauge(
            &mut reg,
            "shardcast_delivered_bucket_timestamp_seconds",
            "Start of the bucket the delivered rates are of (unix time)",
            *start as f64,
        );
    }
    family(
        &mut reg,
        "shardcast_shard_predicted_messages_per_second",
        "Messages/s the last control cycle planned each shard for",
        v.shards
            .iter()
            .map(|s| (label("shard", s.id), s.planned))
            .collect(),
    );
    family(
        &mut reg,
        "shardcast_shard_usable_capacity_messages_per_second",
        "Each shard's capacity less its headroom",
        v.shards
            .iter()
            .map(|s| (label("shard", s.id), s.usable))
            .collect(),
    );
    family(
        &mut reg,
        "shardcast_shard_devices",
        "Devices the installed plan places in each shard",
        v.shards
            .iter()
            .map(|s| (label("shard", s.id), s.devices as f64))
            .collect(),
    );
    counter_family(
        &mut reg,
        "shardcast_packets",
        "Packets seen by the data plane, by verdict and reason (redirected, passed to the stack and why, dropped)",
        v.reasons
            .iter()
            .map(|(r, n)| (label("reason", r), *n))
            .collect(),
    );
    counter_family(
        &mut reg,
        "shardcast_migrations",
        "Device migrations by outcome (started: migrate commands planned; confirmed, timed_out, unreachable: how they ended)",
        [
            ("started", v.migrations.started),
            ("confirmed", v.migrations.confirmed),
            ("timed_out", v.migrations.timed_out),
            ("unreachable", v.migrations.unreachable),
        ]
        .into_iter()
        .map(|(k, n)| (label("outcome", k), n))
        .collect(),
    );
    gauge(
        &mut reg,
        "shardcast_migrating",
        "1 while a migration is in progress",
        f64::from(u8::from(v.migrating)),
    );
    if let Some(c) = &v.cycle {
        family(
            &mut reg,
            "shardcast_cycle_mode",
            "The control cycle's mode in force (1) and the others (0)",
            crate::cycle::Mode::ALL
                .iter()
                .map(|m| (label("mode", m.label()), f64::from(u8::from(*m == c.mode))))
                .collect(),
        );
        counter_family(
            &mut reg,
            "shardcast_cycles",
            "Control cycles run, by what they did",
            [
                ("install", c.counts.installs),
                ("advise", c.counts.advised),
                (
                    "none",
                    c.counts.cycles - c.counts.installs - c.counts.advised,
                ),
                ("failed", c.counts.failed),
            ]
            .into_iter()
            .map(|(k, n)| (label("action", k), n))
            .collect(),
        );
        counter_family(
            &mut reg,
            "shardcast_cycle_shards",
            "Shards the control cycle's installed plans created and merged",
            vec![
                (label("change", "created"), c.counts.created),
                (label("change", "merged"), c.counts.merged),
            ],
        );
        gauge(
            &mut reg,
            "shardcast_cycle_devices",
            "Shard-aware devices the gateway reports",
            c.devices as f64,
        );
        if let Some(last) = &c.last {
            family(
                &mut reg,
                "shardcast_cycle_duration_seconds",
                "How long the last cycle's phases took",
                vec![
                    (label("phase", "forecast"), last.forecast_ms / 1e3),
                    (label("phase", "plan"), last.plan_ms / 1e3),
                ],
            );
            if let Some(m) = last.mase {
                gauge(
                    &mut reg,
                    "shardcast_forecast_mase",
                    "Live forecast error: MASE of the one-bucket-ahead forecasts of every topic over the last season (below 1: better than seasonal naive)",
                    m,
                );
            }
            gauge(
                &mut reg,
                "shardcast_cycle_last_run_timestamp_seconds",
                "When the last cycle ran (unix time)",
                last.at as f64,
            );
            family(
                &mut reg,
                "shardcast_topic_rate_messages_per_second",
                "The busiest topics' measured rate over the last complete bucket",
                last.topics
                    .iter()
                    .map(|t| (label("topic", &t.topic), t.measured))
                    .collect(),
            );
            family(
                &mut reg,
                "shardcast_topic_forecast_messages_per_second",
                "The busiest topics' forecast rate at each horizon (and `plan`: what the plan carries)",
                last.topics
                    .iter()
                    .flat_map(|t| {
                        let planned = (
                            vec![
                                ("topic".to_string(), t.topic.clone()),
                                ("horizon".to_string(), "plan".to_string()),
                            ],
                            t.planned,
                        );
                        t.horizons
                            .iter()
                            .map(|(h, r)| {
                                (
                                    vec![
                                        ("topic".to_string(), t.topic.clone()),
                                        ("horizon".to_string(), h.clone()),
                                    ],
                                    *r,
                                )
                            })
                            .chain(std::iter::once(planned))
                    })
                    .collect(),
            );
        }
    }
    if let Some(p) = d.prober() {
        // Kept by the prober across scrapes (a histogram accumulates).
        reg.register(
            "shardcast_probe_latency_seconds",
            "One-way latency of the daemon's probes through the data plane, per shard: sent into an ingress of the router, received from the shard's route by the gateway's relay (one clock)",
            p.latency.clone(),
        );
        let per_shard = |get: fn(&crate::probe::ShardProbes) -> u64| {
            p.shards
                .iter()
                .map(|(id, s)| (label("shard", id), get(s)))
                .collect()
        };
        counter_family(
            &mut reg,
            "shardcast_probes_sent",
            "Latency probes sent, per shard",
            per_shard(|s| s.sent),
        );
        counter_family(
            &mut reg,
            "shardcast_probes_received",
            "Latency probes back through the relay, per shard",
            per_shard(|s| s.received),
        );
        counter_family(
            &mut reg,
            "shardcast_probes_lost",
            "Latency probes not back within 2 s, per shard (dropped on the way)",
            per_shard(|s| s.lost),
        );
    }
    let mut out = String::new();
    encode(&mut out, &reg).context("encoding the metrics")?;
    Ok(out)
}

/// Largest request head read.
const MAX_HEAD: usize = 8 << 10;
/// A client has this long to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listen`, asking the daemon's loop on
/// `scrapes` for each response.
pub async fn serve(listener: TcpListener, scrapes: mpsc::Sender<Scrape>) {
    loop {
        let Ok((mut conn, peer)) = listener.accept().await else {
            continue;
        };
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(&mut conn, scrapes).await {
                tracing::debug!(%peer, "metrics request: {e:#}");
            }
        });
    }
}

/// Binds the endpoint (errors name the address).
pub async fn bind(listen: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics.listen {listen}: cannot listen"))
}

async fn answer(conn: &mut tokio::net::TcpStream, scrapes: mpsc::Sender<Scrape>) -> Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_HEAD {
                anyhow::bail!("request head over {MAX_HEAD} bytes");
            }
        }
        Ok(())
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .context("request not received in time")??;
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => {
            let (tx, rx) = oneshot::channel();
            scrapes
                .send(tx)
                .await
                .map_err(|_| anyhow::anyhow!("the daemon is stopping"))?;
            let text = rx.await.context("the daemon did not answer")?;
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only /metrics is served\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET is served\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await?;
    Ok(())
}

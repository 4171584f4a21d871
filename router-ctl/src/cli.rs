//! Command-line interface: parses arguments, calls the library, prints.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use router_common::{maps::SHARD_HAS_V4, maps::SHARD_HAS_V6, topic::TopicKey};
use serde_json::json;

use crate::{
    dataplane::{AttachOptions, DEFAULT_PIN_ROOT, Dataplane, Mode, RouterConfig},
    plan::{Plan, normalize_prefix},
};

#[derive(Parser, Debug)]
#[command(
    name = "router-ctl",
    version,
    about = "shardcast: XDP pub/sub router control"
)]
pub struct Cli {
    /// Directory under bpffs holding the pins (a layout version is appended).
    #[arg(long, global = true, default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// Where the installed plan document is kept (names for dumps).
    #[arg(long, global = true, default_value = "/run/shardcast")]
    pub state_dir: PathBuf,
    /// Run inside this network namespace (`ip netns` name). Unlike
    /// `ip netns exec`, keeps /sys/fs/bpf visible.
    #[arg(long, global = true)]
    pub netns: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load, pin and attach the XDP router.
    Attach(AttachArgs),
    /// Attach the pass-all XDP program (peer of a veth egress).
    AttachPass {
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value = "driver")]
        mode: Mode,
    },
    /// Detach everything and remove the pins.
    Detach,
    /// Validate a plan and install it as the next generation, atomically.
    Apply {
        plan: PathBuf,
        /// Install even if the generation is not newer than the installed one.
        #[arg(long)]
        force: bool,
    },
    /// Validate a plan without installing it.
    Check { plan: PathBuf },
    /// Inspect the installed maps.
    Maps {
        #[command(subcommand)]
        command: MapsCommand,
    },
    /// Counters: per verdict/reason, per topic, unrouted topics.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Installed generation, shards, routes and counter totals.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run the control daemon (docs/config.md).
    Daemon {
        #[arg(long)]
        config: PathBuf,
    },
    /// Predict load per topic x device group (docs/forecasting.md).
    Forecast(ForecastArgs),
    /// Plan shards for a workload (docs/workload-format.md); prints the cost.
    Plan(PlanArgs),
    /// Compare static, reactive and predictive sharding on a synthetic
    /// trace (docs/simulator.md).
    Simulate(SimulateArgs),
    /// Telemetry history (counts per bucket, topic and device group).
    History {
        /// The daemon's config names the database and its bucket sizes.
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        command: HistoryCommand,
    },
}

#[derive(Args, Debug)]
pub struct ForecastArgs {
    /// History CSV (`timestamp,topic,group,count`; unix s or RFC 3339).
    #[arg(long)]
    pub history: PathBuf,
    #[arg(long, default_value = "5m,1h,24h")]
    pub horizons: String,
    /// Bucket length of the history.
    #[arg(long, default_value = "1m")]
    pub bucket: String,
    /// Write `topic,group,horizon,timestamp,predicted,lower,upper` here
    /// (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print per-horizon MASE and sMAPE of each model and of the selection
    /// (rolling origin over the last day).
    #[arg(long)]
    pub backtest: bool,
    /// Device status per group now (`group,connected,devices[,low_battery]`):
    /// scales each group's forecast by its share of active devices.
    #[arg(long)]
    pub status: Option<PathBuf>,
    /// Draw actual vs predicted with the band (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// The series to draw, `topic/group` (default: the busiest).
    #[arg(long, requires = "plot")]
    pub plot_series: Option<String>,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Devices, subscriptions, topic rates, resources, cost weights.
    #[arg(long)]
    pub workload: PathBuf,
    /// The plan in force: devices stay put unless moving pays, ids and
    /// groups of kept shards are kept, the generation goes up by one.
    #[arg(long)]
    pub current: Option<PathBuf>,
    /// Topic rates from a forecast (`router-ctl forecast --out`) instead of
    /// the workload's, summed over device groups.
    #[arg(long)]
    pub forecast: Option<PathBuf>,
    /// The forecast horizon to plan for (a label present in the forecast).
    #[arg(long, default_value = "1h", requires = "forecast")]
    pub horizon: String,
    /// Plan for the upper band instead of the point forecast.
    #[arg(long, requires = "forecast")]
    pub upper: bool,
    /// Bucket length of the forecast's counts.
    #[arg(long, default_value = "1m")]
    pub bucket: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the plan here (atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Print the cost breakdown as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// A built-in scenario (default, small, flashy) or a JSON file.
    #[arg(long, default_value = "default")]
    pub scenario: String,
    /// Days compared (after the scenario's warm-up).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: Option<u32>,
    /// Write shards.svg, load.svg and offered.svg here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the totals as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum HistoryCommand {
    /// Write `timestamp,topic,group,count` CSV to stdout (or --out).
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
        /// Timestamps as RFC 3339 instead of unix seconds.
        #[arg(long)]
        rfc3339: bool,
    },
    /// Add the rows of a CSV file (unix seconds or RFC 3339), all or none.
    Import { csv: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum MapsCommand {
    /// Print config, generation, shards, routes and egress table.
    Dump {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Interface(s) that receive device traffic.
    #[arg(long, required = true)]
    pub ingress: Vec<String>,
    /// Interface(s) shard traffic leaves by.
    #[arg(long)]
    pub egress: Vec<String>,
    #[arg(long, value_enum, default_value = "driver")]
    pub mode: Mode,
    /// The eBPF object (default: SHARDCAST_OBJECT, then next to the binary).
    #[arg(long)]
    pub object: Option<PathBuf>,
    #[arg(long, default_value_t = 1884)]
    pub mqttsn_port: u16,
    #[arg(long, default_value_t = 5683)]
    pub coap_port: u16,
    #[arg(long, default_value = "ps/data/")]
    pub coap_prefix: String,
    /// Also count routed publishes per (topic, device group); the daemon
    /// turns this on itself when its config asks for group telemetry.
    #[arg(long)]
    pub group_stats: bool,
    /// With --group-stats: count one publish in N (at random, weighted by
    /// N), trading exactness for fast-path time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub group_sample: u32,
}

/// Finds the eBPF object: flag, environment, then beside the binary
/// (`target/<profile>/../bpf/`), then the system location.
pub fn find_object(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("SHARDCAST_OBJECT") {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        tried.push(dir.join("../bpf/router-ebpf.o"));
        tried.push(dir.join("router-ebpf.o"));
    }
    tried.push(PathBuf::from("/usr/lib/shardcast/router-ebpf.o"));
    for p in &tried {
        if p.exists() {
            return Ok(p.clone());
        }
    }
    bail!(
        "eBPF object not found (tried {}); run `cargo xtask build-ebpf` or pass --object",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("plan.json")
}

/// Writes the installed plan beside the pins' state, atomically (rename).
fn save_plan(dir: &Path, plan: &Plan) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomically(&state_file(dir), |w| w.write_all(plan.to_json().as_bytes()))
}

/// Writes `path` whole or not at all: into a hidden file beside it, then
/// renamed over it, so readers never see half a file. A path that exists
/// and is not a regular file (`/dev/stdout`, a pipe) is written in place.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write;
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        return write(&mut f).with_context(|| format!("writing {}", path.display()));
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let written = std::fs::File::create(&tmp).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        write(&mut w)?;
        w.flush()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Names for keys, from the saved plan if it is the installed generation.
fn key_names(dir: &Path, generation: u64) -> BTreeMap<TopicKey, String> {
    let mut out = BTreeMap::new();
    let Ok(plan) = Plan::from_file(&state_file(dir)) else {
        return out;
    };
    if plan.generation != generation {
        return out;
    }
    if let Ok(c) = plan.compile() {
        for r in &c.routes {
            let name = &c.topics[r.topic];
            let label = if r.key == c.name_keys[r.topic] {
                name.clone()
            } else {
                format!("{name} (MQTT-SN id)")
            };
            out.insert(r.key, label);
        }
    }
    out
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(ns) = &cli.netns {
        crate::netns::enter(ns)?;
    }
    match cli.command {
        Command::Attach(a) => {
            let coap_prefix = normalize_prefix(&a.coap_prefix).map_err(anyhow::Error::msg)?;
            let opts = AttachOptions {
                object: find_object(a.object.as_deref())?,
                ingress: a.ingress,
                egress: a.egress,
                mode: a.mode,
                config: RouterConfig {
                    mqttsn_port: a.mqttsn_port,
                    coap_port: a.coap_port,
                    coap_prefix,
                    group_stats: a.group_stats,
                    group_sample: a.group_sample,
                },
            };
            Dataplane::attach(&cli.pin_root, &opts)?;
            println!(
                "attached to {} ({:?} mode); pins in {}",
                opts.ingress.join(", "),
                opts.mode,
                crate::dataplane::PinPaths::new(&cli.pin_root)
                    .dir()
                    .display()
            );
        }
        Command::AttachPass { iface, mode } => {
            let mut dp = Dataplane::open(&cli.pin_root)?;
            let pin = dp.attach_pass(&iface, mode)?;
            println!("pass program attached to {iface} (pin {})", pin.display());
        }
        Command::Detach => {
            if !crate::dataplane::is_root() {
                bail!(crate::dataplane::DataplaneError::NotRoot);
            }
            let removed = Dataplane::detach(&cli.pin_root)?;
            let _ = std::fs::remove_file(state_file(&cli.state_dir));
            println!("detached; removed {} pins", removed.len());
        }
        Command::Check { plan } => {
            let p = Plan::from_file(&plan)?;
            let c = p
                .compile()
                .with_context(|| format!("plan {} is invalid", plan.display()))?;
            println!(
                "plan {} is valid: generation {}, {} shards, {} topics, {} route keys",
                plan.display(),
                c.generation,
                c.shards.len(),
                c.topics.len(),
                c.routes.len()
            );
        }
        Command::Apply { plan, force } => {
            let p = Plan::from_file(&plan)?;
            let c = p
                .compile()
                .with_context(|| format!("plan {} is invalid", plan.display()))?;
            let mut dp = Dataplane::open(&cli.pin_root)?;
            let r = dp
                .install(&c, force)
                .with_context(|| format!("installing {}", plan.display()))?;
            save_plan(&cli.state_dir, &p)?;
            println!(
                "generation {} installed: {} shards, {} route keys (fill {:?}, swap {:?}, total {:?})",
                r.generation, r.shards, r.routes, r.fill, r.swap, r.total
            );
        }
        Command::Maps {
            command: MapsCommand::Dump { json },
        } => {
            let dp = Dataplane::open(&cli.pin_root)?;
            let s = dp.snapshot()?;
            let names = key_names(&cli.state_dir, s.meta.generation);
            let shards: Vec<_> = s
                .shards
                .iter()
                .map(|sh| {
                    json!({
                        "id": sh.id,
                        "group_v4": (sh.flags & SHARD_HAS_V4 != 0).then(|| Ipv4Addr::from(sh.group_v4).to_string()),
                        "group_v6": (sh.flags & SHARD_HAS_V6 != 0).then(|| Ipv6Addr::from(sh.group_v6).to_string()),
                        "egress_slot": sh.egress_slot,
                        "port": sh.port,
                        "src_mac": mac(&sh.src_mac),
                    })
                })
                .collect();
            let routes: Vec<_> = s
                .routes
                .iter()
                .map(|(k, r)| {
                    json!({
                        "key": format!("{:016x}", k.hash),
                        "topic": names.get(k),
                        "stats_slot": r.stats_slot,
                        "shards": r.shards[..r.shard_count as usize]
                            .iter()
                            .map(|&i| s.shards.get(i as usize).map(|sh| sh.id))
                            .collect::<Vec<_>>(),
                    })
                })
                .collect();
            let doc = json!({
                "config": {
                    "mqttsn_port": s.config.mqttsn_port,
                    "coap_port": s.config.coap_port,
                    "coap_prefix": s.config.coap_prefix,
                },
                "generation": s.meta.generation,
                "installed_unix": s.meta.installed_unix,
                "active_slot": s.active_slot,
                "egress": s.egress.iter().map(|(slot, ifx)| json!({"slot": slot, "ifindex": ifx})).collect::<Vec<_>>(),
                "shards": shards,
                "routes": routes,
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!(
                    "config: mqtt-sn port {}, coap port {}, coap prefix {:?}",
                    s.config.mqttsn_port, s.config.coap_port, s.config.coap_prefix
                );
                println!(
                    "generation {} (slot {}), {} shards, {} route keys",
                    s.meta.generation,
                    s.active_slot,
                    s.shards.len(),
                    s.routes.len()
                );
                println!("egress: {:?}", s.egress);
                println!(
                    "{:>6}  {:<16} {:<24} {:>6} {:>6}",
                    "shard", "group_v4", "group_v6", "egress", "port"
                );
                for sh in &shards {
                    println!(
                        "{:>6}  {:<16} {:<24} {:>6} {:>6}",
                        sh["id"],
                        sh["group_v4"].as_str().unwrap_or("-"),
                        sh["group_v6"].as_str().unwrap_or("-"),
                        sh["egress_slot"],
                        sh["port"]
                    );
                }
                println!("{:<16}  {:<32} {:>5}  shards", "key", "topic", "slot");
                for r in &routes {
                    println!(
                        "{:<16}  {:<32} {:>5}  {}",
                        r["key"].as_str().unwrap_or(""),
                        r["topic"].as_str().unwrap_or("?"),
                        r["stats_slot"],
                        r["shards"]
                    );
                }
            }
        }
        Command::Status { json } => {
            let dp = Dataplane::open(&cli.pin_root)?;
            let s = dp.snapshot()?;
            let c = dp.counters()?;
            let total =
                |r: router_common::reason::Reason| c.reasons.get(&r).map_or(0, |v| v.packets);
            let passed: u64 = c
                .reasons
                .iter()
                .filter(|(r, _)| **r != router_common::reason::Reason::Redirected)
                .map(|(_, v)| v.packets)
                .sum();
            let cfg = &s.config;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "pins": crate::dataplane::PinPaths::new(&cli.pin_root).dir(),
                        "generation": s.meta.generation,
                        "installed_unix": s.meta.installed_unix,
                        "slot_generations": s.meta.slot_generation,
                        "active_slot": s.active_slot,
                        "shards": s.meta.shards,
                        "routes": s.meta.routes,
                        "egress": s.egress.len(),
                        "mqttsn_port": cfg.mqttsn_port,
                        "coap_port": cfg.coap_port,
                        "coap_prefix": cfg.coap_prefix,
                        "group_stats": cfg.group_stats,
                        "redirected": total(router_common::reason::Reason::Redirected),
                        "passed": passed,
                        "topics_counted": c.topics.len(),
                        "unrouted_keys": c.unrouted.len(),
                    }))?
                );
            } else {
                println!(
                    "data plane at {}",
                    crate::dataplane::PinPaths::new(&cli.pin_root)
                        .dir()
                        .display()
                );
                println!(
                    "generation {} (installed at unix {}), active slot {}, slots hold {:?}",
                    s.meta.generation, s.meta.installed_unix, s.active_slot, s.meta.slot_generation
                );
                println!(
                    "{} shards, {} route keys, {} egress interfaces",
                    s.meta.shards,
                    s.meta.routes,
                    s.egress.len()
                );
                println!(
                    "MQTT-SN port {}, CoAP port {} prefix {:?}, group telemetry {}",
                    cfg.mqttsn_port,
                    cfg.coap_port,
                    cfg.coap_prefix,
                    if cfg.group_stats { "on" } else { "off" }
                );
                println!(
                    "packets: {} redirected, {} passed to the stack; {} topics counted, {} unrouted keys",
                    total(router_common::reason::Reason::Redirected),
                    passed,
                    c.topics.len(),
                    c.unrouted.len()
                );
            }
        }
        Command::Forecast(a) => {
            use crate::forecast;
            let bucket = parse_bucket(&a.bucket)?;
            let horizons =
                forecast::parse_horizons(&a.horizons, bucket).with_context(|| "--horizons")?;
            let text = std::fs::read_to_string(&a.history)
                .with_context(|| format!("reading {}", a.history.display()))?;
            let series = forecast::series_from_csv(&text, bucket)
                .with_context(|| format!("{} is not usable history", a.history.display()))?;
            let status = a
                .status
                .as_ref()
                .map(|p| {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    forecast::status_from_csv(&text)
                        .with_context(|| format!("{} is not a usable status file", p.display()))
                })
                .transpose()?;
            let cal = forecast::Calendar::new(forecast::daily_season(bucket));
            let mut lm = forecast::forecast_all(&series, &horizons, &cal);
            if let Some(st) = &status {
                lm.apply_status(st);
            }
            if let Some(plot) = &a.plot {
                let index = match &a.plot_series {
                    Some(name) => series
                        .iter()
                        .position(|s| format!("{}/{}", s.topic, s.group) == *name)
                        .with_context(|| format!("--plot-series {name:?}: no such topic/group"))?,
                    None => (0..series.len())
                        .max_by(|&i, &j| {
                            let sum = |k: usize| series[k].values.iter().sum::<f64>();
                            sum(i).total_cmp(&sum(j))
                        })
                        .context("no series to plot")?,
                };
                forecast::plot_series(plot, &series[index], &lm, index, &cal)
                    .map_err(|e| anyhow::anyhow!("--plot {}: {e}", plot.display()))?;
            }
            match &a.out {
                Some(p) => write_atomically(p, |w| forecast::write_csv(&lm, w))?,
                None => forecast::write_csv(&lm, std::io::stdout().lock())?,
            }
            eprintln!("{} series; models chosen:", lm.series.len());
            for (j, (h, _)) in lm.horizons.iter().enumerate() {
                let mut chosen: BTreeMap<&str, usize> = BTreeMap::new();
                for m in &lm.models {
                    *chosen.entry(m[j]).or_default() += 1;
                }
                eprintln!("  {h}: {chosen:?}");
            }
            if a.backtest {
                eprintln!(
                    "{:<8} {:<16} {:>8} {:>8}",
                    "horizon", "model", "MASE", "sMAPE%"
                );
                for (j, (h, _)) in lm.horizons.iter().enumerate() {
                    for r in &lm.backtest[j] {
                        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
                        eprintln!("{h:<8} {:<16} {:>8} {:>8}", r.model, f(r.mase), f(r.smape));
                    }
                }
            }
        }
        Command::Plan(a) => plan_command(a)?,
        Command::Simulate(a) => simulate_command(a)?,
        Command::Daemon { config } => {
            let cfg = crate::config::DaemonConfig::from_file(&config)?;
            crate::daemon::run(cfg)?;
        }
        Command::History { config, command } => {
            let cfg = crate::config::DaemonConfig::from_file(&config)?;
            let settings = crate::history::Settings {
                bucket: cfg.history.bucket,
                retention: cfg.history.retention,
                downsample_to: cfg.history.downsample_to,
            };
            let mut h = crate::history::History::open(&cfg.history.path, settings)?;
            match command {
                HistoryCommand::Export { out, rfc3339 } => {
                    let rows = h.rows()?;
                    match out {
                        Some(p) => {
                            write_atomically(&p, |w| crate::history::write_csv(&rows, rfc3339, w))?;
                            eprintln!("{} rows written to {}", rows.len(), p.display());
                        }
                        None => {
                            crate::history::write_csv(&rows, rfc3339, std::io::stdout().lock())?
                        }
                    }
                }
                HistoryCommand::Import { csv } => {
                    let text = std::fs::read_to_string(&csv)
                        .with_context(|| format!("reading {}", csv.display()))?;
                    let rows = crate::history::parse_csv(&text)
                        .with_context(|| format!("{} is not valid history CSV", csv.display()))?;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    let n = rows.len();
                    h.add(
                        rows.iter()
                            .map(|r| (r.ts, r.topic.as_str(), r.group.as_str(), r.count)),
                        now,
                    )?;
                    println!("{n} rows imported from {}", csv.display());
                }
            }
        }
        Command::Stats { json } => {
            let dp = Dataplane::open(&cli.pin_root)?;
            let c = dp.counters()?;
            let meta = dp.meta()?;
            let names = key_names(&cli.state_dir, meta.generation);
            let reasons: BTreeMap<&str, _> = c
                .reasons
                .iter()
                .map(|(r, v)| (r.label(), json!({"packets": v.packets, "bytes": v.bytes})))
                .collect();
            let topics: Vec<_> = c
                .topics
                .iter()
                .map(|(k, (slot, v))| json!({"key": format!("{:016x}", k.hash), "topic": names.get(k), "slot": slot, "packets": v.packets, "bytes": v.bytes}))
                .collect();
            let unrouted: Vec<_> = c
                .unrouted
                .iter()
                .map(|(k, v)| json!({"key": format!("{:016x}", k.hash), "packets": v.packets, "bytes": v.bytes}))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"generation": meta.generation, "reasons": reasons, "topics": topics, "unrouted": unrouted})
                    )?
                );
            } else {
                println!("generation {}", meta.generation);
                println!("{:<22} {:>12} {:>14}", "verdict/reason", "packets", "bytes");
                for (r, v) in &c.reasons {
                    if v.packets > 0 {
                        println!("{:<22} {:>12} {:>14}", r.label(), v.packets, v.bytes);
                    }
                }
                println!("{:<32} {:>12} {:>14}", "topic", "packets", "bytes");
                for t in &topics {
                    println!(
                        "{:<32} {:>12} {:>14}",
                        t["topic"]
                            .as_str()
                            .unwrap_or(t["key"].as_str().unwrap_or("")),
                        t["packets"],
                        t["bytes"]
                    );
                }
                if !unrouted.is_empty() {
                    println!("unrouted topic keys: {}", unrouted.len());
                }
            }
        }
    }
    Ok(())
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_bucket(text: &str) -> Result<u64> {
    Ok(humantime::parse_duration(text)
        .ok()
        .filter(|d| d.as_secs() > 0 && d.subsec_nanos() == 0)
        .with_context(|| format!("--bucket {text:?} is not a whole number of seconds"))?
        .as_secs())
}

fn plan_command(a: PlanArgs) -> Result<()> {
    use crate::{planner, workload::Workload};
    let mut w = Workload::from_file(&a.workload)?;
    if let Some(f) = &a.forecast {
        let bucket = parse_bucket(&a.bucket)?;
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let rates = crate::forecast::rates_from_csv(&text, &a.horizon, a.upper, bucket)
            .with_context(|| format!("{} is not a usable forecast", f.display()))?;
        for t in &mut w.topics {
            if let Some(r) = rates.get(&t.name) {
                t.rate = *r;
            }
        }
    }
    let inst = w
        .index()
        .with_context(|| format!("{} is not a valid workload", a.workload.display()))?;
    let current = a
        .current
        .as_ref()
        .map(|p| Plan::from_file(p).with_context(|| format!("--current {}", p.display())))
        .transpose()?;
    let out = planner::plan(
        &inst,
        current.as_ref(),
        planner::Options {
            seed: a.seed,
            ..Default::default()
        },
    )?;
    // What we emit must install: validate it as `apply` would.
    out.plan
        .compile()
        .context("internal error: the planner produced an invalid plan")?;
    write_atomically(&a.out, |w| w.write_all(out.plan.to_json().as_bytes()))?;
    if a.json {
        println!(
            "{}",
            json!({
                "generation": out.plan.generation,
                "cost": out.cost,
                "created": out.created,
                "merged": out.merged,
                "refine_moves": out.refine_moves,
                "warnings": out.warnings,
                "elapsed_ms": out.elapsed.as_secs_f64() * 1e3,
            })
        );
    } else {
        let c = &out.cost;
        println!(
            "generation {}: {} shards ({} created, {} merged), {} devices, {} topics routed, planned in {:.1} ms",
            out.plan.generation,
            c.shards,
            out.created,
            out.merged,
            out.plan.devices.len(),
            out.plan.topics.len(),
            out.elapsed.as_secs_f64() * 1e3
        );
        println!(
            "  load (msg/s)        max {:.1}, mean {:.1}, usable capacity {:.1}",
            c.max_load,
            c.mean_load,
            inst.resources.usable_capacity()
        );
        println!(
            "  overload (msg/s)    {:.1} over {} shards",
            c.overload, c.overloaded_shards
        );
        println!("  inter-shard copies  {:.1} msg/s", c.copies);
        println!(
            "  wasted deliveries   {:.1} /s (battery-weighted)",
            c.wasted
        );
        println!("  latency             {:.1}", c.latency);
        println!("  migrations          {}", c.migrations);
        if c.bandwidth_excess > 0.0 {
            println!("  above bandwidth     {:.1} msg/s", c.bandwidth_excess);
        }
        println!("  total cost          {:.1}", c.total);
        for warning in &out.warnings {
            println!("warning: {warning}");
        }
    }
    Ok(())
}

fn simulate_command(a: SimulateArgs) -> Result<()> {
    use crate::simulate::{self, Scenario};
    let path = Path::new(&a.scenario);
    let sc = if path.exists() || a.scenario.ends_with(".json") {
        Scenario::from_file(path, a.days)?
    } else {
        Scenario::builtin(&a.scenario, a.days.unwrap_or(7))?
    };
    let started = std::time::Instant::now();
    let mut last_day = u32::MAX;
    let mut progress = |m: u32, end: u32| {
        let day = m / 1440;
        if day != last_day || m == end {
            last_day = day;
            eprintln!(
                "simulate: day {}/{} ({:.0} s)",
                day.min(end / 1440),
                end / 1440,
                started.elapsed().as_secs_f64()
            );
        }
    };
    let report = simulate::run(&sc, &mut progress)?;
    if let Some(dir) = &a.plot {
        report.plot(dir)?;
        eprintln!("plots written to {}", dir.display());
    }
    if a.json {
        println!(
            "{}",
            json!({"totals": report.totals, "static_shards": report.static_shards, "elapsed_s": report.elapsed_s})
        );
    } else {
        println!("{}", report.table());
    }
    Ok(())
}

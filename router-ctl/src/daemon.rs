//! `router-ctl daemon`: the control loop.
//!
//! On start it adopts the pinned data plane (or attaches one, if the config
//! names interfaces and nothing is pinned) and resumes at the installed
//! generation. Every tick it installs the plan file if it holds a newer
//! generation, reads the (topic, device group) counters and adds the
//! differences to the current history bucket; when the next bucket begins
//! the finished one is handed to a writer thread, which commits it to the
//! history store together with the counter readings it accounts for, so a
//! daemon killed at any moment and started again neither loses nor
//! double-counts a packet. With a `[cycle]` section each tick may also run
//! the control cycle ([`crate::cycle`]): forecast, plan against the
//! installed plan, install make-before-break and migrate, each decision
//! logged; with `[metrics]` a scrape is answered from the loop
//! ([`crate::metrics`]). SIGTERM and SIGINT end it
//! after writing the open bucket; the data plane keeps forwarding unless
//! `daemon.detach_on_exit` says otherwise.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use router_common::topic::TopicKey;

use crate::tick_routes::TickRoutes;
use rustc_hash::FxHashMap;
use tracing::{error, info, warn};

use shardcast_dataplane::{
    AttachOptions, Dataplane, DataplaneError, PinPaths, RouterConfig, find_object, is_root,
};
use shardcast_plan::{CompiledPlan, Plan};

use shardcast_gateway::{membership::Event, service::MigrateCommand};
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    config::DaemonConfig,
    cycle::{CycleConfig, Decision, Mode, Trigger},
    history::{History, Settings},
    load::LoadSeries,
    migrate::Migration,
    state,
};

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The daemon's state between ticks.
pub struct Daemon {
    cfg: DaemonConfig,
    dp: Dataplane,
    /// The history's writer thread (see [`Writer`]).
    writer: Writer,
    /// Bucket length, seconds.
    bucket_secs: u64,
    /// The installed plan, when known (names for telemetry).
    plan: Option<CompiledPlan>,
    /// Every topic name seen in a plan, by key (slots outlive plans).
    /// Shared with the writer thread; copied on write when a plan adds
    /// names while a bucket is being written.
    names: Arc<HashMap<TopicKey, String>>,
    /// Plan file identity when last looked at (mtime, length).
    plan_seen: Option<(SystemTime, u64)>,
    /// Counter readings the history accounts for: (slot, group) → packets.
    baseline: FxHashMap<(u32, u32), u64>,
    /// The open bucket: its start and (topic, group) → packets.
    open: Option<(u64, Bucket)>,
    /// The installed plan's document (what a migration starts from).
    document: Option<Plan>,
    /// Where migrate commands go: the gateway running beside the daemon.
    commands: Option<UnboundedSender<MigrateCommand>>,
    /// The migration in progress, with when its batch was sent.
    migration: Option<(Migration, Instant)>,
    /// Topic ids the gateway assigned, by topic: every plan installed
    /// carries them (`mqttsn_registered_ids`), so that the data plane
    /// routes QoS 0 publishes naming them instead of passing them up.
    registered: BTreeMap<String, std::collections::BTreeSet<u16>>,
    /// The topic filters the gateway's subscribers hold: with a relay,
    /// every plan routes the topics they match to the relay's shard.
    /// `None` until the gateway first reports them: until then the relay
    /// routes a plan already has are kept (a restarted daemon must not
    /// drop them before it knows who subscribes).
    relay_filters: Option<std::collections::BTreeSet<String>>,
    /// Ids or filters learned since the installed plan was built.
    gateway_changed: bool,
    /// The control cycle, with a `[cycle]` section.
    cycle: Option<CycleState>,
    /// A migration a killed daemon left under way (its transition
    /// installed), resumed once the gateway is linked.
    resume: Option<state::MigrationRecord>,
    /// Every route in force since the last counter reading (the installed
    /// plan's then, and every plan installed since): topic → shards. Each
    /// reading charges what it counted to these, so a topic moved off a
    /// shard mid-bucket is charged to it only until it left (to within a
    /// tick), not for the whole bucket.
    tick_routes: TickRoutes,
    /// A plan was installed since the last reading: `tick_routes` holds
    /// more than the installed plan's routes, and the next reading starts
    /// from those alone (rebuilding them costs ~40 ms at 100k topics, so
    /// only then).
    routes_changed: bool,
    /// Counter slot → topic key, as of the data plane's `Meta` kept beside
    /// it (only installs assign slots, and each rewrites `Meta`).
    /// Shared with the writer thread, as `names` is: each bucket hands it
    /// over without a copy.
    slot_keys: Arc<FxHashMap<u32, TopicKey>>,
    slot_keys_meta: Option<router_common::maps::Meta>,
    /// `tick_routes` by slot.
    slot_routes: crate::tick_routes::SlotRoutes,
    /// Messages charged to each shard's group in the open bucket (every
    /// shard a route named during it, even at 0).
    open_shards: BTreeMap<u32, u64>,
    /// Messages per topic counter slot in the open bucket (the nowcast's).
    open_slots: PerSlot,
    /// The last two readings, older first: the seconds each covered and
    /// what it counted per slot (a surge must show in both).
    recent: [(f64, PerSlot); 2],
    /// When the open bucket's counting started (the reading before its
    /// first), and when the last reading was: the span its counts cover.
    open_from: Option<Instant>,
    last_read: Option<Instant>,
    /// Messages/s delivered into each shard's group in the last bucket
    /// written: (bucket start, shard → rate).
    delivered: Option<(u64, BTreeMap<u32, f64>)>,
    /// Installs by this daemon, and how long the last took.
    installs: u64,
    last_install: Duration,
    migrations: MigrationCounts,
    /// The latency probes (`[probe]`).
    prober: Option<crate::probe::Prober>,
}

/// Device migrations by outcome, since the daemon started.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct MigrationCounts {
    pub started: u64,
    pub confirmed: u64,
    pub timed_out: u64,
    pub unreachable: u64,
}

/// What the metrics endpoint shows of a running daemon.
pub struct View {
    pub generation: u64,
    /// Messages/s delivered into each shard's group in the last bucket
    /// written, under the routes in force during it: (bucket start,
    /// shard → rate).
    pub delivered: Option<(u64, BTreeMap<u32, f64>)>,
    pub installs: u64,
    pub last_install: Duration,
    pub shards: Vec<crate::cycle::ShardLoad>,
    pub reasons: Vec<(&'static str, u64)>,
    pub migrations: MigrationCounts,
    pub migrating: bool,
    pub cycle: Option<CycleView>,
    /// Per-CPU (topic, device group) cells in use at the last tick, and
    /// in all.
    pub group_cells: (usize, usize),
}

/// The control cycle's part of a [`View`].
pub struct CycleView {
    pub mode: Mode,
    pub counts: CycleCounts,
    pub devices: usize,
    pub last: Option<Decision>,
}

/// What the control cycle keeps between cycles.
pub struct CycleState {
    pub cfg: CycleConfig,
    /// Recent load per topic (complete buckets and the one under way).
    pub load: LoadSeries,
    /// The shard-aware devices, as the gateway reports them.
    pub devices: BTreeMap<String, shardcast_planner::workload::Device>,
    /// The forecaster's paths, refitted a share per cycle.
    forecasts: crate::cycle::Forecasts,
    /// The mode in force (`cycle.mode`, or the run-time override).
    pub mode: Mode,
    /// The override file's mtime when last read.
    mode_seen: Option<SystemTime>,
    /// When the last cycle ran (unix seconds).
    last_run: Option<u64>,
    /// Start of the newest bucket checked for a measured overload.
    overload_checked: Option<u64>,
    /// A measured overload a cycle judged needs no change: (shard, rate).
    /// The same shard triggers again only above that rate (+5%), until the
    /// next periodic cycle: a shard a little over its usable capacity
    /// every bucket must not make a cycle every bucket.
    overload_judged: Option<(u32, f64)>,
    /// Devices changed since the last check for unserved ones.
    devices_changed: bool,
    /// The last decision (for the metrics; `status` reads the log).
    pub last: Option<Decision>,
    pub counts: CycleCounts,
    /// Messages/s per topic in the last bucket written (the metrics read
    /// these: the series may be away with a cycle).
    last_rates: HashMap<String, f64>,
    /// The cycle being decided on its own thread, if one is.
    running: Option<Running>,
}

impl CycleState {
    /// Each topic's rate as the last cycle planned it, else as the last
    /// bucket measured it (0 for a topic neither knows): what the
    /// nowcast measures a surge against.
    fn expected_rates(&self) -> impl Fn(&str) -> f64 + '_ {
        let planned: HashMap<&str, f64> = self
            .last
            .iter()
            .flat_map(|d| d.rates.iter().map(|r| (r.topic.as_str(), r.planned)))
            .collect();
        move |t| {
            planned
                .get(t)
                .or_else(|| self.last_rates.get(t))
                .copied()
                .unwrap_or(0.0)
        }
    }
}

/// A cycle deciding on its own thread. The decision (forecast and plan: a
/// second and more at 100k devices) must not hold up the loop the gateway
/// shares, so the series, forecasts and devices go to the thread (moved,
/// not copied) and come back with the decision; what arrives meanwhile
/// (buckets, device updates) waits here and is applied on their return.
struct Running {
    done: mpsc::Receiver<Decided>,
    /// The installed plan's generation the decision plans against: a plan
    /// installed meanwhile (a plan file) makes the decision stale.
    base: Option<u64>,
    mode: Mode,
    /// Devices known when the cycle started (for the metrics).
    known: usize,
    buckets: Vec<(u64, String, f64)>,
    devices: Vec<crate::devices::DeviceUpdate>,
}

/// What a cycle's thread is given.
struct CycleJob {
    cfg: CycleConfig,
    now: u64,
    mode: Mode,
    trigger: Trigger,
    load: LoadSeries,
    devices: BTreeMap<String, shardcast_planner::workload::Device>,
    /// The installed plan as the planner sees it.
    base: Option<Plan>,
    forecasts: crate::cycle::Forecasts,
    /// Topics surging in the bucket under way (predictive and advise).
    nowcast: HashMap<String, f64>,
}

/// What a cycle's thread hands back.
struct Decided {
    decision: Result<Decision>,
    load: LoadSeries,
    forecasts: crate::cycle::Forecasts,
    devices: BTreeMap<String, shardcast_planner::workload::Device>,
}

/// Counters of the cycle's work (for the metrics).
#[derive(Clone, Debug, Default)]
pub struct CycleCounts {
    pub cycles: u64,
    pub installs: u64,
    pub advised: u64,
    pub created: u64,
    pub merged: u64,
    pub failed: u64,
}

/// Packets per (topic counter slot, device group) in one bucket; named
/// when written.
type Bucket = FxHashMap<(u32, u32), u64>;

/// What one tick did (for logs and the benchmark).
#[derive(Clone, Debug, Default)]
pub struct TickReport {
    pub installed: Option<u64>,
    pub counters: usize,
    pub packets: u64,
    pub flushed: bool,
    pub read: Duration,
    pub write: Duration,
    /// The control cycle's decision, when one ran.
    pub decision: Option<Decision>,
}

impl Daemon {
    /// Adopts or attaches the data plane and opens the history.
    pub fn start(cfg: DaemonConfig) -> Result<Daemon> {
        let started = Instant::now();
        let d = &cfg.dataplane;
        let router_config = RouterConfig {
            mqttsn_port: d.mqttsn_port,
            coap_port: d.coap_port,
            coap_prefix: d.coap_prefix.clone(),
            group_stats: d.group_stats,
            group_sample: d.group_sample,
        };
        let pinned = PinPaths::new(&d.pin_root).dir().exists();
        let mut dp = if pinned {
            let mut dp = Dataplane::open(&d.pin_root).context("adopting the pinned data plane")?;
            // Ports and prefix stay as attached; telemetry follows the config.
            let mut c = dp.config()?;
            c.group_stats = d.group_stats;
            c.group_sample = d.group_sample;
            dp.set_config(&c)?;
            dp
        } else if !d.ingress.is_empty() {
            let object = find_object(d.object.as_deref())?;
            Dataplane::attach(
                &d.pin_root,
                &AttachOptions {
                    object,
                    ingress: d.ingress.clone(),
                    egress: d.egress.clone(),
                    mode: d.mode,
                    tc: Default::default(),
                    fanout: d.fanout,
                    config: router_config,
                },
            )
            .context("attaching the data plane")?
        } else {
            bail!(
                "no data plane is pinned at {} and dataplane.ingress names no interface to attach to",
                d.pin_root.display()
            );
        };
        dp.set_incremental(cfg.daemon.incremental);
        let meta = dp.meta()?;
        std::fs::create_dir_all(&cfg.daemon.state_dir).with_context(|| {
            format!(
                "creating daemon.state_dir {}",
                cfg.daemon.state_dir.display()
            )
        })?;
        let history = History::open(
            &cfg.history.path,
            Settings {
                bucket: cfg.history.bucket,
                retention: cfg.history.retention,
                downsample_to: cfg.history.downsample_to,
            },
        )?;
        let baseline = history
            .baseline()?
            .unwrap_or_default()
            .into_iter()
            .collect();
        let bucket_secs = history.settings().bucket.as_secs();
        let cycle = match &cfg.cycle {
            None => None,
            Some(c) => {
                let cap = (c.window.as_secs() / bucket_secs).max(1) as usize;
                let mut load = LoadSeries::new(bucket_secs, cap);
                let since = now_unix().saturating_sub(c.window.as_secs());
                let mut rows = history.rows()?;
                rows.retain(|r| r.ts >= since);
                rows.sort_by_key(|r| r.ts);
                for r in &rows {
                    load.add(r.ts, &r.topic, r.count as f64);
                }
                info!(
                    buckets = load.len(),
                    mode = c.mode.label(),
                    period = %humantime::format_duration(c.period),
                    "control cycle: load history loaded"
                );
                Some(CycleState {
                    cfg: c.clone(),
                    load,
                    devices: BTreeMap::new(),
                    forecasts: Default::default(),
                    mode: c.mode,
                    mode_seen: None,
                    last_run: None,
                    overload_checked: None,
                    overload_judged: None,
                    devices_changed: false,
                    last: None,
                    counts: CycleCounts::default(),
                    last_rates: HashMap::new(),
                    running: None,
                })
            }
        };
        let prober = match &cfg.probe {
            None => None,
            Some(p) => Some(crate::probe::Prober::open(
                &p.iface,
                cfg.dataplane.mqttsn_port,
                cfg.gateway
                    .as_ref()
                    .and_then(|g| g.relay.as_ref())
                    .map(|r| r.iface.as_str()),
            )?),
        };
        let mut daemon = Daemon {
            cfg,
            dp,
            writer: Writer::start(history)?,
            bucket_secs,
            plan: None,
            names: Arc::new(HashMap::new()),
            plan_seen: None,
            baseline,
            open: None,
            document: None,
            commands: None,
            migration: None,
            registered: BTreeMap::new(),
            relay_filters: None,
            gateway_changed: false,
            cycle,
            resume: None,
            tick_routes: Default::default(),
            routes_changed: false,
            slot_keys: Default::default(),
            slot_keys_meta: None,
            slot_routes: Default::default(),
            open_shards: BTreeMap::new(),
            open_slots: PerSlot::default(),
            recent: Default::default(),
            open_from: None,
            last_read: None,
            delivered: None,
            installs: 0,
            last_install: Duration::ZERO,
            migrations: MigrationCounts::default(),
            prober,
        };
        // The plan the data plane holds, if we kept it.
        if meta.generation != 0
            && let Some(p) = state::load_plan(&daemon.cfg.daemon.state_dir, meta.generation)
            && let Ok(c) = p.compile()
        {
            daemon.learn(&c);
            daemon.plan = Some(c);
            daemon.document = Some(p);
        }
        daemon.tick_routes = TickRoutes::of(daemon.plan.as_ref());
        daemon.refresh_slot_routes()?;
        // A migration a killed daemon left under way.
        match state::load_migration(&daemon.cfg.daemon.state_dir) {
            Ok(Some(rec)) if rec.new.generation == meta.generation => {
                info!(
                    generation = meta.generation,
                    "migration under way when the daemon stopped: resumed once the gateway runs"
                );
                daemon.resume = Some(rec);
            }
            Ok(Some(_)) => state::forget_migration(&daemon.cfg.daemon.state_dir),
            Ok(None) => {}
            Err(e) => warn!("{e:#}; the migration it described is not resumed"),
        }
        info!(
            generation = meta.generation,
            adopted = pinned,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "data plane ready"
        );
        Ok(daemon)
    }

    fn learn(&mut self, plan: &CompiledPlan) {
        let names = Arc::make_mut(&mut self.names);
        for (name, key) in plan.topics.iter().zip(&plan.name_keys) {
            names.insert(*key, name.clone());
        }
    }

    /// Sends migrate commands to the gateway on `commands`: new plans
    /// that move devices are installed make-before-break
    /// ([`crate::migrate`]).
    pub fn link_gateway(&mut self, commands: UnboundedSender<MigrateCommand>) {
        self.commands = Some(commands);
        // Every command again: devices that confirmed before the daemon
        // stopped confirm again (they are in the group already), the
        // others move now; the transition routes are still installed.
        if let Some(rec) = self.resume.take() {
            match Migration::new(&rec.old, &rec.new) {
                Ok(Some(m)) => {
                    info!(
                        generation = rec.new.generation,
                        moves = m.stats.moves,
                        "migration resumed"
                    );
                    self.migration = Some((m, Instant::now()));
                    self.send_batch();
                }
                _ => state::forget_migration(&self.cfg.daemon.state_dir),
            }
        }
    }

    /// Whether a migration is in progress.
    pub fn migrating(&self) -> bool {
        self.migration.is_some()
    }

    /// Installs the plan file if it changed and holds a newer generation.
    fn check_plan(&mut self, now: u64) -> Result<Option<u64>> {
        let Some(path) = self.cfg.daemon.plan.clone() else {
            return Ok(None);
        };
        // The next plan waits for the migration in progress (bounded by its
        // deadlines): devices move from one placement at a time.
        if self.migration.is_some() {
            return Ok(None);
        }
        let seen = match std::fs::metadata(&path) {
            Ok(m) => (m.modified()?, m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("plan file {}", path.display())),
        };
        if self.plan_seen == Some(seen) {
            return Ok(None);
        }
        self.plan_seen = Some(seen);
        let plan = Plan::from_file(&path)?;
        let installed = self.dp.meta()?.generation;
        if plan.generation <= installed {
            return Ok(None);
        }
        plan.compile()
            .with_context(|| format!("plan {} is invalid", path.display()))?;
        self.offer(plan, now).map(Some)
    }

    /// Installs `plan` (a newer generation), make-before-break when it
    /// moves devices and a gateway carries the migrate commands.
    fn offer(&mut self, plan: Plan, now: u64) -> Result<u64> {
        if self.commands.is_some() {
            // With nothing installed before, every device the plan places
            // is told its shard (a join).
            let empty = Plan {
                generation: 0,
                shards: Vec::new(),
                devices: Vec::new(),
                topics: Vec::new(),
                policy: Default::default(),
            };
            let old = self.document.as_ref().unwrap_or(&empty);
            match Migration::new(old, &plan) {
                Ok(Some(m)) => {
                    let first = m.installable();
                    // Recorded before the transition is: a daemon killed
                    // after the install finds it.
                    if let Err(e) = state::save_migration(&self.cfg.daemon.state_dir, old, &plan) {
                        error!(
                            "the migration's record was not saved (a restart would not resume it): {e:#}"
                        );
                    }
                    let r = self.install_document(&first, false, now)?;
                    self.migrations.started += m.stats.moves as u64;
                    info!(
                        generation = plan.generation,
                        moves = m.stats.moves,
                        "migration: transition installed (old and new shards both served)"
                    );
                    self.migration = Some((m, Instant::now()));
                    self.send_batch();
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => warn!(
                    generation = plan.generation,
                    "devices move without make-before-break: {e}"
                ),
            }
        }
        self.install_document(&plan, false, now)
    }

    /// Sends the migration's next batch of commands.
    fn send_batch(&mut self) {
        let (Some((m, sent)), Some(tx)) = (&mut self.migration, &self.commands) else {
            return;
        };
        let deadline = SystemTime::now() + self.cfg.daemon.migration_deadline;
        let deadline_ms = deadline
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let batch = m.next_batch(
            self.cfg.daemon.migration_batch,
            deadline_ms,
            self.cfg.dataplane.mqttsn_port,
        );
        info!(
            generation = m.generation(),
            devices = batch.len(),
            "migration: migrate commands sent"
        );
        for c in batch {
            if tx.send(c).is_err() {
                warn!("the gateway is gone: migrate commands not sent");
                break;
            }
        }
        *sent = Instant::now();
    }

    /// A topic id the gateway assigned: installed with the next plan, or
    /// at the next tick into the installed one.
    pub fn on_registered(&mut self, topic: String, id: u16) {
        if self.registered.entry(topic).or_default().insert(id) {
            self.gateway_changed = true;
        }
    }

    /// The filters the gateway's subscribers hold changed.
    pub fn on_filters(&mut self, filters: std::collections::BTreeSet<String>) {
        if self.relay_filters.as_ref() != Some(&filters) {
            self.relay_filters = Some(filters);
            self.gateway_changed = true;
        }
    }

    /// `plan` with the ids the gateway assigned to its topics (an id a
    /// plan already gives another topic stays that topic's) and, with a
    /// relay, the relay's shard on the routes of every topic a gateway
    /// subscriber follows.
    fn with_registered(&self, plan: &Plan) -> Plan {
        let mut plan = plan.clone();
        if let Some(relay) = self.cfg.gateway.as_ref().and_then(|g| g.relay.as_ref()) {
            plan.shards.retain(|s| s.id != relay.shard);
            plan.shards.push(relay.shard_spec());
            if let Some(filters) = &self.relay_filters {
                for t in &mut plan.topics {
                    t.shards.retain(|s| *s != relay.shard);
                    let followed = filters
                        .iter()
                        .any(|f| shardcast_gateway::session::matches(f, &t.name));
                    if followed {
                        if t.shards.len() < router_common::maps::MAX_ROUTE_SHARDS {
                            t.shards.push(relay.shard);
                        } else {
                            warn!(
                                topic = t.name,
                                "no room on the route for the relay: its gateway subscribers get only what the gateway accepts"
                            );
                        }
                    }
                }
            }
        }
        // A probe topic per shard, to the shard and the relay (the relay
        // gives the copies back to the daemon).
        if let (Some(relay), Some(_)) = (
            self.cfg.gateway.as_ref().and_then(|g| g.relay.as_ref()),
            &self.prober,
        ) {
            use shardcast_gateway::probe;
            plan.topics.retain(|t| !t.name.starts_with(probe::PREFIX));
            let taken: std::collections::BTreeSet<u16> = plan
                .topics
                .iter()
                .filter_map(|t| t.mqttsn_predefined_id)
                .collect();
            let shards: Vec<u32> = plan
                .shards
                .iter()
                .map(|s| s.id)
                .filter(|&s| s != relay.shard)
                .collect();
            for shard in shards {
                match probe::topic_id(shard) {
                    Some(id) if !taken.contains(&id) => {
                        plan.topics.push(shardcast_plan::TopicSpec {
                            name: probe::topic_name(shard),
                            shards: vec![shard, relay.shard],
                            mqttsn_predefined_id: Some(id),
                            mqttsn_registered_ids: Vec::new(),
                        })
                    }
                    _ => warn!(
                        shard,
                        "no latency probe for this shard: its probe topic id is the plan's own predefined id"
                    ),
                }
            }
        }
        let used: std::collections::BTreeSet<u16> = plan
            .topics
            .iter()
            .flat_map(|t| t.mqttsn_registered_ids.iter().copied())
            .collect();
        for t in &mut plan.topics {
            if let Some(ids) = self.registered.get(&t.name) {
                for id in ids {
                    if !used.contains(id) {
                        t.mqttsn_registered_ids.push(*id);
                    }
                }
            }
        }
        plan
    }

    /// Re-installs the installed plan with the ids the gateway assigned
    /// since (same generation), unless a migration is in progress (its
    /// installs carry them).
    fn install_registered(&mut self, now: u64) -> Result<()> {
        if !self.gateway_changed || self.migration.is_some() {
            return Ok(());
        }
        self.gateway_changed = false;
        let Some(doc) = self.document.clone() else {
            return Ok(());
        };
        let merged = self.with_registered(&doc);
        if merged != doc {
            self.install_document(&merged, true, now)?;
            let relay_topics = self
                .cfg
                .gateway
                .as_ref()
                .and_then(|g| g.relay.as_ref())
                .map_or(0, |r| {
                    merged
                        .topics
                        .iter()
                        .filter(|t| t.shards.contains(&r.shard))
                        .count()
                });
            info!(
                generation = merged.generation,
                relay_topics, "registered topic ids and relay routes installed"
            );
        }
        Ok(())
    }

    /// A membership event from the gateway.
    pub fn on_event(&mut self, e: &Event, now: u64) -> Result<()> {
        if let Some((m, _)) = &mut self.migration
            && m.event(e)
        {
            self.advance(now)?;
        }
        Ok(())
    }

    /// Moves the migration on once its batch is resolved: the transition
    /// without the shards nobody leaves any more and the next batch, or
    /// the new plan. A batch the gateway never resolves (it is gone) is
    /// given up a few seconds past its deadline.
    fn advance(&mut self, now: u64) -> Result<()> {
        let Some((m, sent)) = &mut self.migration else {
            return Ok(());
        };
        if !m.batch_done() {
            if sent.elapsed() < self.cfg.daemon.migration_deadline + Duration::from_secs(5) {
                return Ok(());
            }
            warn!(
                generation = m.generation(),
                "migration: no answer from the gateway past the deadline; the batch is given up"
            );
            m.give_up_batch();
        }
        let plan = m.installable();
        if !m.done() {
            self.install_document(&plan, true, now)?;
            self.send_batch();
            return Ok(());
        }
        let (m, _) = self.migration.take().expect("checked above");
        self.install_document(&plan, true, now)?;
        state::forget_migration(&self.cfg.daemon.state_dir);
        let s = m.stats;
        self.migrations.confirmed += s.confirmed as u64;
        self.migrations.timed_out += s.timed_out as u64;
        self.migrations.unreachable += s.unreachable as u64;
        info!(
            generation = m.generation(),
            moves = s.moves,
            confirmed = s.confirmed,
            timed_out = s.timed_out,
            unreachable = s.unreachable,
            elapsed_ms = m.started.elapsed().as_millis() as u64,
            "migration done: old routes removed"
        );
        Ok(())
    }

    /// Installs `plan` (a plan file's, or a migration's form of one),
    /// keeps its copy and its names.
    fn install_document(&mut self, plan: &Plan, force: bool, now: u64) -> Result<u64> {
        let plan = &self.with_registered(plan);
        let compiled = plan.compile().context("plan is invalid")?;
        // Group counters are kept by group index, and a plan with other
        // device groups gives the indices other names: what was counted
        // under the old plan is written under the old names first (the
        // writer adds it into the same bucket), then counting starts over.
        let old_groups = self.plan.as_ref().map(|p| p.groups.as_slice());
        if old_groups.is_some_and(|g| g != compiled.groups.as_slice()) {
            self.collect(now, &mut TickReport::default())?;
            self.flush(now)?;
        }
        let r = self.dp.install(&compiled, force)?;
        self.installs += 1;
        self.last_install = r.total;
        // Keep the document beside the pins' state (names for `maps dump`
        // and for a restarted daemon), atomically. The plan is installed
        // whether or not that works: a failed save is logged as what it is,
        // never as a plan not installed.
        if let Err(e) = state::save_plan(&self.cfg.daemon.state_dir, plan) {
            error!(
                generation = r.generation,
                "plan installed, but its copy was not saved: {e:#}"
            );
        }
        info!(
            generation = r.generation,
            routes = r.routes,
            changed = r.changed,
            total_ms = r.total.as_secs_f64() * 1e3,
            "plan installed"
        );
        self.learn(&compiled);
        self.tick_routes.extend(&compiled);
        self.refresh_slot_routes()?;
        self.plan = Some(compiled);
        self.routes_changed = true;
        self.document = Some(plan.clone());
        Ok(r.generation)
    }

    /// Reads the counters into the open bucket; writes the bucket out when
    /// `now` has moved past it.
    fn collect(&mut self, now: u64, report: &mut TickReport) -> Result<()> {
        let t = Instant::now();
        let counters = self.dp.group_counters()?;
        tracing::debug!(elapsed = ?t.elapsed(), n = counters.len(), "counters read");
        report.counters = counters.len();
        let bucket = now - now % self.bucket_secs;
        let mut flushed_in = Duration::ZERO;
        if let Some((start, _)) = &self.open
            && *start != bucket
        {
            let f = Instant::now();
            self.flush(now)?;
            flushed_in = f.elapsed();
            report.flushed = true;
        }
        let read_at = Instant::now();
        if self.open.is_none() {
            self.open_from = Some(self.last_read.unwrap_or(read_at));
        }
        let open = &mut self
            .open
            .get_or_insert_with(|| (bucket, Bucket::default()))
            .1;
        // This reading's counts per slot, in the older reading's buffer.
        let (_, mut per_slot) = std::mem::take(&mut self.recent[0]);
        per_slot.clear();
        for (k, packets) in counters {
            let cell = (k.slot, k.group);
            let prev = self.baseline.insert(cell, packets).unwrap_or(0);
            // A counter below its last reading was reset (evicted from the
            // LRU, or its slot given to another topic): count from zero.
            let delta = if packets >= prev {
                packets - prev
            } else {
                packets
            };
            if delta != 0 {
                report.packets += delta;
                *open.entry(cell).or_default() += delta;
                per_slot.add(k.slot, delta);
            }
        }
        self.charge(&per_slot)?;
        let span = self
            .last_read
            .map_or(0.0, |l| read_at.saturating_duration_since(l).as_secs_f64());
        self.recent[0] = (span, per_slot);
        self.recent.swap(0, 1);
        self.last_read = Some(read_at);
        report.read = t.elapsed().saturating_sub(flushed_in);
        Ok(())
    }

    /// Charges what one reading counted to every shard each topic was
    /// routed to since the previous reading; then the routes start over
    /// from the installed plan's.
    fn charge(&mut self, per_slot: &PerSlot) -> Result<()> {
        for s in self.tick_routes.shards() {
            self.open_shards.entry(s).or_default();
        }
        // Per shard in a hash map first: one tree update per shard, not
        // per topic.
        let mut by_shard: FxHashMap<u32, u64> = FxHashMap::default();
        for (slot, n) in per_slot.iter() {
            self.open_slots.add(slot, n);
            for &s in self.slot_routes.shards(slot) {
                *by_shard.entry(s).or_default() += n;
            }
        }
        for (s, n) in by_shard {
            *self.open_shards.entry(s).or_default() += n;
        }
        if self.routes_changed {
            self.tick_routes = TickRoutes::of(self.plan.as_ref());
            self.routes_changed = false;
            self.refresh_slot_routes()?;
        }
        Ok(())
    }

    /// Reads the slot table into `slot_keys` when an install changed it,
    /// and indexes `tick_routes` by slot.
    fn refresh_slot_routes(&mut self) -> Result<()> {
        let meta = self.dp.meta()?;
        if self.slot_keys_meta != Some(meta) {
            self.slot_keys = Arc::new(
                self.dp
                    .slot_table()?
                    .into_iter()
                    .map(|(k, s)| (s, k))
                    .collect(),
            );
            self.slot_keys_meta = Some(meta);
        }
        self.slot_routes = self.tick_routes.by_slot(&self.slot_keys);
        Ok(())
    }

    /// Hands the open bucket (with the readings it accounts for) to the
    /// writer thread, which names topics and groups and commits it.
    fn flush(&mut self, now: u64) -> Result<()> {
        let Some((start, cells)) = self.open.take() else {
            return Ok(());
        };
        // A plan another process installed: its slots.
        if self.slot_keys_meta != Some(self.dp.meta()?) {
            self.refresh_slot_routes()?;
        }
        let slots = self.slot_keys.clone();
        let mut per_topic: FxHashMap<u32, u64> = FxHashMap::default();
        for ((slot, _), n) in &cells {
            *per_topic.entry(*slot).or_default() += n;
        }
        if let Some(c) = &mut self.cycle {
            c.last_rates.clear();
        }
        for (slot, n) in &per_topic {
            let Some(key) = slots.get(slot) else {
                continue;
            };
            // The names only for the cycle's series: a topic with routes
            // came with a plan, whose names the daemon learned.
            if let Some(c) = &mut self.cycle {
                let Some(name) = self.names.get(key) else {
                    continue;
                };
                if !crate::load::is_load(name) {
                    continue;
                }
                match &mut c.running {
                    Some(r) => r.buckets.push((start, name.clone(), *n as f64)),
                    None => c.load.add(start, name, *n as f64),
                }
                *c.last_rates.entry(name.clone()).or_default() +=
                    *n as f64 / self.bucket_secs as f64;
            }
        }
        // Messages delivered into each shard's group in the bucket, as
        // each reading charged them.
        let delivered = std::mem::take(&mut self.open_shards)
            .into_iter()
            .map(|(s, n)| (s, n as f64 / self.bucket_secs as f64))
            .collect();
        self.delivered = Some((start, delivered));
        self.open_from = None;
        self.open_slots.clear();
        if let Some(p) = &self.prober {
            let report = crate::probe::ProbeReport {
                at: now,
                shards: p.shards.clone(),
            };
            let file = state::probes_file(&self.cfg.daemon.state_dir);
            if let Err(e) = serde_json::to_vec(&report)
                .map_err(anyhow::Error::from)
                .and_then(|b| state::write_atomically(&file, |w| w.write_all(&b)))
            {
                warn!(file = %file.display(), "probe report: {e:#}");
            }
        }
        self.writer.send(Job::Bucket {
            start,
            now,
            cells,
            baseline: self.baseline.clone(),
            slots,
            names: self.names.clone(),
            groups: Arc::new(
                self.plan
                    .as_ref()
                    .map(|p| p.groups.clone())
                    .unwrap_or_default(),
            ),
        })
    }

    /// Waits until every bucket handed over so far is committed; returns
    /// how long the last commit took.
    pub fn wait_written(&self) -> Result<Duration> {
        self.writer.barrier()
    }

    /// One pass of the control loop.
    pub fn tick(&mut self) -> Result<TickReport> {
        self.tick_at(now_unix())
    }

    /// [`tick`](Self::tick) with an explicit clock (unix seconds), for
    /// tests and benchmarks that need a bucket boundary on demand.
    pub fn tick_at(&mut self, now: u64) -> Result<TickReport> {
        let mut report = TickReport::default();
        match self.check_plan(now) {
            Ok(g) => report.installed = g,
            // A bad plan is logged and skipped; the installed one stays.
            Err(e) => error!("plan not installed: {e:#}"),
        }
        if let Err(e) = self.advance(now) {
            error!("migration: {e:#}");
        }
        if let Err(e) = self.install_registered(now) {
            error!("registered topic ids: {e:#}");
        }
        let t = Instant::now();
        self.collect(now, &mut report)?;
        report.write = t.elapsed().saturating_sub(report.read);
        match self.maybe_cycle(now) {
            Ok(Some(d)) => report.decision = Some(d),
            Ok(None) => {}
            Err(e) => {
                if let Some(c) = &mut self.cycle {
                    c.counts.failed += 1;
                }
                error!("control cycle: {e:#}");
            }
        }
        Ok(report)
    }

    /// A device update from the gateway.
    pub fn on_device(&mut self, (client, device): crate::devices::DeviceUpdate) {
        if let Some(c) = &mut self.cycle {
            c.devices_changed = true;
            if let Some(r) = &mut c.running {
                r.devices.push((client, device));
                return;
            }
            match device {
                Some(d) => {
                    c.devices.insert(client, d);
                }
                None => {
                    c.devices.remove(&client);
                }
            }
        }
    }

    /// The relay's shard, with a relay.
    fn relay_shard(&self) -> Option<u32> {
        self.cfg
            .gateway
            .as_ref()
            .and_then(|g| g.relay.as_ref())
            .map(|r| r.shard)
    }

    /// Sends a latency probe to every shard of the installed plan.
    pub fn send_probes(&mut self) {
        let relay = self.relay_shard();
        let shards: Vec<u32> = self
            .document
            .iter()
            .flat_map(|p| &p.shards)
            .map(|s| s.id)
            .filter(|&s| Some(s) != relay)
            .collect();
        if let Some(p) = &mut self.prober {
            p.send(shards);
        }
    }

    /// A probe back through the gateway's relay.
    pub fn on_probe(&mut self, (probe, arrived_ns): (shardcast_gateway::probe::Probe, u64)) {
        if let Some(p) = &mut self.prober {
            p.on_probe(probe, arrived_ns);
        }
    }

    /// The latency probes, with `[probe]`.
    pub fn prober(&self) -> Option<&crate::probe::Prober> {
        self.prober.as_ref()
    }

    /// The daemon's state for the metrics: the installed plan's shards
    /// with their load over the last complete bucket (and what the last
    /// cycle planned them for), the data plane's counters by reason.
    pub fn view(&self) -> Result<View> {
        // The reasons only: a scrape must not read 100k topic counters.
        let reasons = self.dp.reason_counters()?;
        let base = self.planning_base();
        let planned: HashMap<u32, f64> = self
            .cycle
            .as_ref()
            .and_then(|c| c.last.as_ref())
            .map(|d| d.shards.iter().map(|s| (s.id, s.planned)).collect())
            .unwrap_or_default();
        let shards = base
            .iter()
            .flat_map(|p| {
                p.shards.iter().map(|s| {
                    let measured = self.cycle.as_ref().map_or(0.0, |c| {
                        p.topics
                            .iter()
                            .filter(|t| t.shards.contains(&s.id))
                            .filter_map(|t| c.last_rates.get(&t.name))
                            .sum()
                    });
                    let (capacity, headroom) = self.cycle.as_ref().map_or((0.0, 0.0), |c| {
                        (c.cfg.resources.shard_capacity, c.cfg.resources.headroom)
                    });
                    crate::cycle::ShardLoad {
                        id: s.id,
                        devices: p.devices.iter().filter(|d| d.shard == s.id).count(),
                        measured,
                        planned: planned.get(&s.id).copied().unwrap_or(0.0),
                        usable: s.capacity.unwrap_or(capacity) * (1.0 - headroom),
                    }
                })
            })
            .collect();
        Ok(View {
            group_cells: self.dp.group_cells_read(),
            delivered: self.delivered.clone(),
            generation: self.dp.meta()?.generation,
            installs: self.installs,
            last_install: self.last_install,
            shards,
            reasons: reasons
                .iter()
                .map(|(r, c)| (r.label(), c.packets))
                .collect(),
            migrations: self.migrations,
            migrating: self.migration.is_some(),
            cycle: self.cycle.as_ref().map(|c| CycleView {
                mode: c.mode,
                counts: c.counts.clone(),
                // The devices are away with a running cycle.
                devices: c.running.as_ref().map_or(c.devices.len(), |r| r.known),
                last: c.last.clone(),
            }),
        })
    }

    /// The control cycle's state (with a `[cycle]` section).
    pub fn cycle(&self) -> Option<&CycleState> {
        self.cycle.as_ref()
    }

    /// Whether a cycle is deciding on its thread now.
    pub fn cycle_running(&self) -> bool {
        self.cycle.as_ref().is_some_and(|c| c.running.is_some())
    }

    /// The installed plan as the planner should see it: without the
    /// relay's shard and routes (the daemon adds those to every plan).
    fn planning_base(&self) -> Option<Plan> {
        let mut p = self.document.clone()?;
        if let Some(relay) = self.cfg.gateway.as_ref().and_then(|g| g.relay.as_ref()) {
            p.shards.retain(|s| s.id != relay.shard);
            for t in &mut p.topics {
                t.shards.retain(|s| *s != relay.shard);
            }
            p.topics.retain(|t| !t.shards.is_empty());
        }
        // The probes' topics are the daemon's own, added to every install.
        p.topics
            .retain(|t| !t.name.starts_with(shardcast_gateway::probe::PREFIX));
        for t in &mut p.topics {
            t.mqttsn_registered_ids.clear();
        }
        Some(p)
    }

    /// Seconds the open bucket's counts cover (from the reading before
    /// its first to the last).
    fn open_into(&self) -> Option<f64> {
        Some(
            self.last_read?
                .saturating_duration_since(self.open_from?)
                .as_secs_f64(),
        )
    }

    /// Predictive and advise: the bucket under way, once two readings'
    /// worth of it are counted: the seconds counted, and the topics
    /// running clearly above the rate the last cycle planned for them
    /// (else their last bucket's; see [`crate::cycle::surging`]) and above
    /// it in each of the last two readings, with the rate they run at.
    fn surges(&self, expected: &dyn Fn(&str) -> f64) -> Option<(f64, HashMap<String, f64>)> {
        let c = self.cycle.as_ref()?;
        if c.mode == Mode::Reactive {
            return None;
        }
        let into = self.open_into()?;
        if into < 1.5 * self.cfg.daemon.tick.as_secs_f64() {
            return None;
        }
        let mut out = HashMap::new();
        for (slot, n) in self.open_slots.iter() {
            let Some(name) = self.slot_keys.get(&slot).and_then(|k| self.names.get(k)) else {
                continue;
            };
            if !crate::load::is_load(name) {
                continue;
            }
            let e = expected(name);
            let readings = self
                .recent
                .iter()
                .map(|(span, counted)| (*span, counted.get(slot)));
            if crate::cycle::lasting(readings, e) && crate::cycle::surging(n, e * into) {
                out.insert(name.clone(), n as f64 / into);
            }
        }
        Some((into, out))
    }

    /// Predictive and advise, between the buckets' own checks: a shard
    /// whose count so far in the bucket under way runs above its usable
    /// capacity, and which topics surging there put on course to carry
    /// more than it (its topics at the rates planned for them, the
    /// surging ones at theirs). Cheap unless a shard runs over: the
    /// topics are looked at only then. With the trigger, the surges (the
    /// cycle plans for them).
    fn nowcast_trigger(&self) -> Option<(Trigger, HashMap<String, f64>)> {
        let c = self.cycle.as_ref()?;
        let relay = self.relay_shard();
        let into = self.open_into()?;
        let over: Vec<(u32, f64)> = self
            .open_shards
            .iter()
            .filter(|(s, _)| Some(**s) != relay)
            .map(|(&s, &n)| (s, n, usable_of(&c.cfg, self.document.as_ref(), s)))
            .filter(|&(_, n, usable)| n as f64 > usable * into)
            .map(|(s, _, usable)| (s, usable))
            .collect();
        if over.is_empty() {
            return None;
        }
        let expected = c.expected_rates();
        let (into, surging) = self.surges(&expected)?;
        if surging.is_empty() {
            return None;
        }
        let plan = self.document.as_ref()?;
        for (shard, usable) in over {
            let mut rate = 0.0;
            let mut surges = false;
            for t in plan.topics.iter().filter(|t| t.shards.contains(&shard)) {
                if let Some(r) = surging.get(&t.name) {
                    rate += r;
                    surges = true;
                } else {
                    rate += expected(&t.name);
                }
            }
            let judged = c
                .overload_judged
                .is_some_and(|(s, r)| s == shard && rate <= r * 1.05);
            if surges && rate > usable && !judged {
                let trigger = Trigger::Nowcast {
                    shard,
                    rate,
                    usable,
                    into,
                };
                return Some((trigger, surging));
            }
        }
        None
    }

    /// Runs a cycle when one is due: the period elapsed, a shard ran over
    /// its usable capacity in the bucket just completed, surges in the
    /// bucket under way put one on course over it (predictive and advise:
    /// [`Self::nowcast_trigger`]), or devices wait
    /// for a placement (at most every tenth of the period). Never during a
    /// migration: devices move from one placement at a time.
    fn maybe_cycle(&mut self, now: u64) -> Result<Option<Decision>> {
        let relay = self.relay_shard();
        let Some(c) = &mut self.cycle else {
            return Ok(None);
        };
        // The run-time mode override.
        let file = state::mode_file(&self.cfg.daemon.state_dir);
        let seen = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
        if seen != c.mode_seen {
            c.mode_seen = seen;
            let mode = match std::fs::read_to_string(&file) {
                Ok(text) => match text.trim().parse::<Mode>() {
                    Ok(m) => m,
                    Err(e) => {
                        error!(file = %file.display(), "mode override ignored: {e}");
                        c.cfg.mode
                    }
                },
                Err(_) => c.cfg.mode,
            };
            if mode != c.mode {
                info!(
                    from = c.mode.label(),
                    to = mode.label(),
                    "control cycle: mode changed"
                );
                c.mode = mode;
            }
        }
        if c.running.is_some() {
            return self.collect_decision(now);
        }
        if self.migration.is_some() {
            return Ok(None);
        }
        let period = c.cfg.period.as_secs().max(1);
        let mut trigger = None;
        if c.last_run.is_none_or(|t| now >= t + period) {
            trigger = Some(Trigger::Period);
        }
        // The bucket just written: what each shard's group received in it
        // (under the routes in force then), against its usable capacity.
        if trigger.is_none()
            && let Some((start, rates)) = &self.delivered
            && c.overload_checked != Some(*start)
        {
            c.overload_checked = Some(*start);
            for (&shard, &rate) in rates {
                if Some(shard) == relay {
                    continue;
                }
                let usable = usable_of(&c.cfg, self.document.as_ref(), shard);
                let judged = c
                    .overload_judged
                    .is_some_and(|(s, r)| s == shard && rate <= r * 1.05);
                if rate > usable && !judged {
                    trigger = Some(Trigger::Overload {
                        shard,
                        rate,
                        usable,
                    });
                    break;
                }
            }
        }
        // The surges a nowcast trigger found, for the cycle it starts.
        let mut surging = None;
        if trigger.is_none()
            && let Some((t, s)) = self.nowcast_trigger()
        {
            trigger = Some(t);
            surging = Some(s);
        }
        let Some(c) = &mut self.cycle else {
            return Ok(None);
        };
        if trigger.is_none()
            && c.devices_changed
            && c.last_run.is_none_or(|t| now >= t + (period / 10).max(1))
        {
            c.devices_changed = false;
            let unserved = unserved(&c.devices, self.document.as_ref());
            if unserved > 0 {
                trigger = Some(Trigger::Unserved { devices: unserved });
            }
        }
        let Some(trigger) = trigger else {
            return Ok(None);
        };
        // Only now the installed plan is copied (without the relay's
        // routes): a tick with no cycle due copies nothing.
        let base = self.planning_base();
        let base_generation = self.document.as_ref().map(|p| p.generation);
        let nowcast = match surging {
            Some(s) => s,
            None => self
                .cycle
                .as_ref()
                .and_then(|c| self.surges(&c.expected_rates()))
                .map(|(_, s)| s)
                .unwrap_or_default(),
        };
        let Some(c) = &mut self.cycle else {
            return Ok(None);
        };
        let mode = c.mode;
        // A cycle that fails is tried again a period later, not every tick.
        c.last_run = Some(now);
        // The thread first, holding nothing of ours: if it cannot start,
        // or ends before taking the job, the series, forecasts and devices
        // are still here (a failed send hands the job back).
        let (job_tx, job_rx) = mpsc::sync_channel::<CycleJob>(1);
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("shardcast-cycle".into())
            .spawn(move || {
                let Ok(job) = job_rx.recv() else {
                    return;
                };
                let CycleJob {
                    cfg,
                    now,
                    mode,
                    trigger,
                    load,
                    devices,
                    base,
                    mut forecasts,
                    nowcast,
                } = job;
                // A panic in the decision must not take the series with
                // it: it comes back with an error (and no forecasts, whose
                // state it may have left half-updated).
                let decision = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::cycle::decide(
                        &cfg,
                        crate::cycle::Inputs {
                            now,
                            mode,
                            trigger,
                            load: &load,
                            devices: &devices,
                            installed: base.as_ref(),
                            forecasts: &mut forecasts,
                            nowcast: &nowcast,
                        },
                    )
                }));
                let decision = match decision {
                    Ok(d) => d.map_err(anyhow::Error::from),
                    Err(p) => {
                        forecasts = Default::default();
                        let what = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Err(anyhow::anyhow!("the decision panicked: {what}"))
                    }
                };
                let _ = tx.send(Decided {
                    decision,
                    load,
                    forecasts,
                    devices,
                });
            });
        if let Err(e) = spawned {
            return Err(anyhow::Error::from(e).context("starting the cycle's thread"));
        }
        let bucket = c.load.bucket_secs();
        let cap = (c.cfg.window.as_secs() / bucket).max(1) as usize;
        let job = CycleJob {
            cfg: c.cfg.clone(),
            now,
            mode,
            trigger,
            load: std::mem::replace(&mut c.load, LoadSeries::new(bucket, cap)),
            devices: std::mem::take(&mut c.devices),
            base,
            forecasts: std::mem::take(&mut c.forecasts),
            nowcast,
        };
        let known = job.devices.len();
        if let Err(mpsc::SendError(job)) = job_tx.send(job) {
            c.load = job.load;
            c.devices = job.devices;
            c.forecasts = job.forecasts;
            bail!("the cycle's thread ended before taking the cycle");
        }
        c.running = Some(Running {
            done: rx,
            base: base_generation,
            mode,
            known,
            buckets: Vec::new(),
            devices: Vec::new(),
        });
        // Taken up by a later tick: the loop never waits for a decision.
        Ok(None)
    }

    /// Takes up the running cycle's decision if it is made: puts back the
    /// series, forecasts and devices with what arrived meanwhile, logs the
    /// decision and installs its plan.
    fn collect_decision(&mut self, now: u64) -> Result<Option<Decision>> {
        let Some(c) = &mut self.cycle else {
            return Ok(None);
        };
        let Some(r) = &c.running else {
            return Ok(None);
        };
        let done = match r.done.try_recv() {
            Ok(d) => d,
            Err(mpsc::TryRecvError::Empty) => return Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => {
                // Unreachable unless the thread died outside the decision:
                // go on from an empty series rather than never again.
                let r = c.running.take().expect("checked");
                for (start, topic, n) in r.buckets {
                    c.load.add(start, &topic, n);
                }
                for (client, d) in r.devices {
                    self.on_device((client, d));
                }
                bail!("the cycle's thread ended without a decision");
            }
        };
        let r = c.running.take().expect("checked");
        c.load = done.load;
        for (start, topic, n) in &r.buckets {
            c.load.add(*start, topic, *n);
        }
        c.forecasts = done.forecasts;
        c.devices = done.devices;
        for (client, d) in r.devices {
            self.on_device((client, d));
        }
        let mut d = done.decision?;
        let Some(c) = &mut self.cycle else {
            return Ok(None);
        };
        let mode = r.mode;
        let current = self.document.as_ref().map(|p| p.generation);
        if current != r.base || c.mode != mode {
            // A plan installed (or the mode changed) while the cycle was
            // deciding: its plan would undo what is installed now. Decide
            // again from what is in force.
            info!(
                planned_against = r.base,
                installed = current,
                mode = c.mode.label(),
                "control cycle: decision dropped, the installed plan or the mode changed meanwhile"
            );
            c.last_run = None;
            return Ok(None);
        }
        c.counts.cycles += 1;
        match (&d.trigger, d.action) {
            (
                Trigger::Overload { shard, rate, .. } | Trigger::Nowcast { shard, rate, .. },
                "none",
            ) => c.overload_judged = Some((*shard, *rate)),
            (Trigger::Period, _) | (_, "install") => c.overload_judged = None,
            _ => {}
        }
        match d.action {
            "install" => {
                c.counts.installs += 1;
                c.counts.created += d.created as u64;
                c.counts.merged += d.merged as u64;
            }
            "advise" => c.counts.advised += 1,
            _ => {}
        }
        // The plan carries on from the data plane's generation (a plan
        // file may have installed past the document's).
        let installed = self.dp.meta()?.generation;
        if let Some(p) = &mut d.plan {
            p.generation = p.generation.max(installed + 1);
            d.generation = Some(p.generation);
        }
        let line = serde_json::to_string(&d)?;
        if let Err(e) = state::append_decision(&self.cfg.daemon.state_dir, &line) {
            error!("decision log: {e:#}");
        }
        info!(
            mode = mode.label(),
            trigger = %d.trigger,
            action = d.action,
            generation = d.generation,
            forecast_ms = d.forecast_ms,
            plan_ms = d.plan_ms,
            "control cycle: {}",
            d.reason
        );
        let plan = (d.action == "install").then(|| d.plan.clone()).flatten();
        if let Some(c) = &mut self.cycle {
            let mut kept = d.clone();
            kept.plan = None;
            c.last = Some(kept);
        }
        if let Some(plan) = plan {
            self.offer(plan, now)?;
        }
        Ok(Some(d))
    }

    /// Writes the open bucket; detaches if configured to.
    pub fn shutdown(mut self) -> Result<()> {
        self.flush(now_unix())?;
        self.writer.finish()?;
        if self.cfg.daemon.detach_on_exit {
            let removed = Dataplane::detach(&self.cfg.dataplane.pin_root)?;
            info!(pins = removed.len(), "data plane detached");
        } else {
            info!("exiting; the data plane keeps forwarding");
        }
        Ok(())
    }
}

/// Devices `plan` does not place, or whose shard it does not send a topic
/// they follow by name (filters are matched when the cycle plans).
fn unserved(
    devices: &BTreeMap<String, shardcast_planner::workload::Device>,
    plan: Option<&Plan>,
) -> usize {
    let Some(plan) = plan else {
        return devices.len();
    };
    let shard: HashMap<&str, u32> = plan
        .devices
        .iter()
        .map(|d| (d.id.as_str(), d.shard))
        .collect();
    let routes: HashMap<&str, &[u32]> = plan
        .topics
        .iter()
        .map(|t| (t.name.as_str(), t.shards.as_slice()))
        .collect();
    devices
        .values()
        .filter(|d| match shard.get(d.id.as_str()) {
            None => true,
            Some(s) => d.subscriptions.iter().any(|t| {
                !t.contains(['+', '#']) && !routes.get(t.as_str()).is_some_and(|r| r.contains(s))
            }),
        })
        .count()
}

/// Work for the writer thread.
enum Job {
    Bucket {
        start: u64,
        now: u64,
        cells: Bucket,
        baseline: FxHashMap<(u32, u32), u64>,
        slots: Arc<FxHashMap<u32, TopicKey>>,
        names: Arc<HashMap<TopicKey, String>>,
        groups: Arc<Vec<String>>,
    },
    /// Reply once everything before it is committed.
    Barrier(mpsc::Sender<Duration>),
}

/// The thread that owns the history store. Writing a bucket of 100k rows
/// takes longer than a tick may; the tick hands the bucket over by value
/// and goes on. Buckets are committed in order, each with the counter
/// readings it accounts for, so a crash loses at most what was not yet
/// committed and a restarted daemon counts it again from the kernel.
struct Writer {
    tx: Option<mpsc::SyncSender<Job>>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// The first error the thread met (it stops writing after one).
    failed: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn start(mut history: History) -> Result<Writer> {
        let (tx, rx) = mpsc::sync_channel::<Job>(4);
        let failed = Arc::new(Mutex::new(None));
        let failed2 = failed.clone();
        let handle = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || {
                let mut last = Duration::ZERO;
                for job in rx {
                    match job {
                        Job::Barrier(reply) => {
                            let _ = reply.send(last);
                        }
                        Job::Bucket { .. } if failed2.lock().is_ok_and(|f| f.is_some()) => {}
                        Job::Bucket {
                            start,
                            now,
                            cells,
                            baseline,
                            slots,
                            names,
                            groups,
                        } => {
                            let t = Instant::now();
                            if let Err(e) = write_bucket(
                                &mut history,
                                start,
                                now,
                                &cells,
                                &baseline,
                                &slots,
                                &names,
                                &groups,
                            ) {
                                error!("history write failed: {e:#}");
                                if let Ok(mut f) = failed2.lock() {
                                    *f = Some(format!("{e:#}"));
                                }
                            }
                            last = t.elapsed();
                        }
                    }
                }
            })?;
        Ok(Writer {
            tx: Some(tx),
            handle: Some(handle),
            failed,
        })
    }

    fn check(&self) -> Result<()> {
        match self.failed.lock().ok().and_then(|f| f.clone()) {
            Some(e) => bail!("history writer stopped: {e}"),
            None => Ok(()),
        }
    }

    fn send(&self, job: Job) -> Result<()> {
        self.check()?;
        self.tx
            .as_ref()
            .context("history writer finished")?
            .send(job)
            .map_err(|_| anyhow::anyhow!("history writer thread is gone"))
    }

    fn barrier(&self) -> Result<Duration> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Barrier(tx))?;
        let d = rx
            .recv()
            .map_err(|_| anyhow::anyhow!("history writer thread is gone"))?;
        self.check()?;
        Ok(d)
    }

    /// Commits what is queued and stops the thread.
    fn finish(&mut self) -> Result<()> {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            h.join()
                .map_err(|_| anyhow::anyhow!("history writer panicked"))?;
        }
        self.check()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Names a bucket's cells and commits them with their baseline.
#[allow(clippy::too_many_arguments)]
fn write_bucket(
    history: &mut History,
    start: u64,
    now: u64,
    cells: &Bucket,
    baseline: &FxHashMap<(u32, u32), u64>,
    slots: &FxHashMap<u32, TopicKey>,
    names: &HashMap<TopicKey, String>,
    groups: &[String],
) -> Result<()> {
    // Topics no plan named (slots of keys seen only in the kernel) are
    // written under their key.
    let mut unnamed: FxHashMap<u32, String> = FxHashMap::default();
    for (slot, _) in cells.keys() {
        if !slots.get(slot).is_some_and(|k| names.contains_key(k)) {
            unnamed
                .entry(*slot)
                .or_insert_with(|| match slots.get(slot) {
                    Some(key) => format!("key:{:016x}", key.hash),
                    None => format!("slot:{slot}"),
                });
        }
    }
    let rows = cells.iter().map(|((slot, group), n)| {
        let topic = match slots.get(slot).and_then(|k| names.get(k)) {
            Some(name) => name.as_str(),
            None => unnamed[slot].as_str(),
        };
        (start, topic, shardcast_plan::group_name(groups, *group), *n)
    });
    let baseline: BTreeMap<(u32, u32), u64> = baseline.iter().map(|(k, v)| (*k, *v)).collect();
    history.add_with_baseline(rows, now, Some(&baseline))?;
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(cfg: DaemonConfig) -> Result<()> {
    if !is_root() {
        bail!(DataplaneError::NotRoot);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let tick = cfg.daemon.tick;
        let gateway = cfg.gateway.clone();
        // Bound before the data plane is touched: a taken port is named
        // at once.
        let metrics = match cfg.metrics {
            Some(addr) => Some(crate::metrics::bind(addr).await?),
            None => None,
        };
        let mut daemon = Daemon::start(cfg)?;
        let (scrape_tx, mut scrape_rx) = tokio::sync::mpsc::channel::<crate::metrics::Scrape>(16);
        if let Some(l) = metrics {
            info!(listen = %l.local_addr()?, "metrics endpoint");
            tokio::spawn(crate::metrics::serve(l, scrape_tx));
        }
        // The gateway runs beside the tick loop on this thread, and stops
        // with it; migrate commands go to it, membership events come back.
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let (reg_tx, mut reg_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u16)>();
        let (filters_tx, mut filters_rx) = tokio::sync::mpsc::unbounded_channel();
        let (dev_tx, mut dev_rx) = tokio::sync::mpsc::unbounded_channel();
        let (probe_tx, mut probe_rx) = tokio::sync::mpsc::unbounded_channel();
        // The gateway times relayed datagrams only for probes.
        let probe_tx = daemon.cfg.probe.is_some().then_some(probe_tx);
        let mut probe_every = tokio::time::interval(
            daemon.cfg.probe.as_ref().map_or(Duration::from_secs(3600), |p| p.every),
        );
        probe_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if gateway.is_some() {
            daemon.link_gateway(cmd_tx);
        }
        let stop = std::rc::Rc::new(tokio::sync::Notify::new());
        let gateway_task = {
            let stop = stop.clone();
            async move {
                match gateway {
                    None => Ok(()),
                    Some(opts) => {
                        let links = crate::gateway::Links {
                            devices: Some(dev_tx),
                            commands: Some(cmd_rx),
                            events: Some(ev_tx),
                            registered: Some(reg_tx),
                            filters: Some(filters_tx),
                            probes: probe_tx,
                        };
                        crate::gateway::serve(opts, links, async move { stop.notified().await }).await
                    }
                }
            }
        };
        tokio::pin!(gateway_task);
        let mut gateway_done = false;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    // The tick is short, synchronous kernel and disk work.
                    match daemon.tick() {
                        Ok(r) if r.installed.is_some() || r.flushed => {
                            info!(counters = r.counters, packets = r.packets, flushed = r.flushed, "tick");
                        }
                        Ok(_) => {}
                        Err(e) => warn!("tick failed: {e:#}"),
                    }
                }
                Some((topic, id)) = reg_rx.recv() => daemon.on_registered(topic, id),
                Some(f) = filters_rx.recv() => daemon.on_filters(f),
                Some(u) = dev_rx.recv() => daemon.on_device(u),
                Some(p) = probe_rx.recv() => daemon.on_probe(p),
                _ = probe_every.tick(), if daemon.prober.is_some() => daemon.send_probes(),
                Some(reply) = scrape_rx.recv() => {
                    let text = crate::metrics::render(&daemon).unwrap_or_else(|e| {
                        warn!("metrics: {e:#}");
                        format!("# metrics unavailable: {e:#}\n# EOF\n")
                    });
                    let _ = reply.send(text);
                }
                Some(e) = ev_rx.recv() => {
                    if let Err(e) = daemon.on_event(&e, now_unix()) {
                        warn!("migration: {e:#}");
                    }
                }
                _ = term.recv() => { info!("SIGTERM"); break; }
                _ = int.recv() => { info!("SIGINT"); break; }
                r = &mut gateway_task, if !gateway_done => {
                    gateway_done = true;
                    // A gateway that cannot serve (its address taken, its
                    // registry unreadable) stops the daemon: the operator
                    // asked for it.
                    if let Err(e) = r {
                        daemon.shutdown()?;
                        return Err(e.context("the gateway stopped"));
                    }
                }
            }
        }
        stop.notify_one();
        if !gateway_done {
            gateway_task.await?;
        }
        daemon.shutdown()
    })
}

/// A shard's usable capacity: its own capacity if the plan gives one,
/// else the cycle's, less the headroom.
fn usable_of(cfg: &CycleConfig, plan: Option<&Plan>, shard: u32) -> f64 {
    plan.iter()
        .flat_map(|p| &p.shards)
        .find(|s| s.id == shard)
        .and_then(|s| s.capacity)
        .map_or(cfg.resources.usable_capacity(), |cap| {
            cap * (1.0 - cfg.resources.headroom)
        })
}

/// Counts per topic counter slot, dense: a reading of 100k topics adds
/// into an array instead of a hash map, and the slots counted are kept
/// in a list so that iterating and clearing cost what was counted.
#[derive(Clone, Debug, Default)]
struct PerSlot {
    counts: Vec<u64>,
    counted: Vec<u32>,
}

impl PerSlot {
    fn add(&mut self, slot: u32, n: u64) {
        if n == 0 {
            return;
        }
        let i = slot as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        if self.counts[i] == 0 {
            self.counted.push(slot);
        }
        self.counts[i] += n;
    }

    fn get(&self, slot: u32) -> u64 {
        self.counts.get(slot as usize).copied().unwrap_or(0)
    }

    /// Every slot counted, with its count.
    fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.counted.iter().map(|&s| (s, self.counts[s as usize]))
    }

    fn clear(&mut self) {
        for &s in &self.counted {
            self.counts[s as usize] = 0;
        }
        self.counted.clear();
    }
}

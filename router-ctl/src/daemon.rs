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
//! double-counts a packet. SIGTERM and SIGINT end it
//! after writing the open bucket; the data plane keeps forwarding unless
//! `daemon.detach_on_exit` says otherwise.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use router_common::topic::TopicKey;
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
    history::{History, Settings},
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
        if self.commands.is_some()
            && let Some(old) = &self.document
        {
            match Migration::new(old, &plan) {
                Ok(Some(m)) => {
                    let first = m.installable();
                    let r = self.install_document(&first, false, now)?;
                    info!(
                        generation = plan.generation,
                        moves = m.stats.moves,
                        "migration: transition installed (old and new shards both served)"
                    );
                    self.migration = Some((m, Instant::now()));
                    self.send_batch();
                    return Ok(Some(r));
                }
                Ok(None) => {}
                Err(e) => warn!(
                    generation = plan.generation,
                    "devices move without make-before-break: {e}"
                ),
            }
        }
        self.install_document(&plan, false, now).map(Some)
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
        let s = m.stats;
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
        self.plan = Some(compiled);
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
        let open = &mut self
            .open
            .get_or_insert_with(|| (bucket, Bucket::default()))
            .1;
        for (k, c) in counters {
            let cell = (k.slot, k.group);
            let prev = self.baseline.insert(cell, c.packets).unwrap_or(0);
            // A counter below its last reading was reset (evicted from the
            // LRU, or its slot given to another topic): count from zero.
            let delta = if c.packets >= prev {
                c.packets - prev
            } else {
                c.packets
            };
            if delta != 0 {
                report.packets += delta;
                *open.entry(cell).or_default() += delta;
            }
        }
        report.read = t.elapsed().saturating_sub(flushed_in);
        Ok(())
    }

    /// Hands the open bucket (with the readings it accounts for) to the
    /// writer thread, which names topics and groups and commits it.
    fn flush(&mut self, now: u64) -> Result<()> {
        let Some((start, cells)) = self.open.take() else {
            return Ok(());
        };
        let slots: FxHashMap<u32, TopicKey> = self
            .dp
            .slot_table()?
            .into_iter()
            .map(|(k, s)| (s, k))
            .collect();
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
        Ok(report)
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

/// Work for the writer thread.
enum Job {
    Bucket {
        start: u64,
        now: u64,
        cells: Bucket,
        baseline: FxHashMap<(u32, u32), u64>,
        slots: FxHashMap<u32, TopicKey>,
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
        let mut daemon = Daemon::start(cfg)?;
        // The gateway runs beside the tick loop on this thread, and stops
        // with it; migrate commands go to it, membership events come back.
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let (reg_tx, mut reg_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u16)>();
        let (filters_tx, mut filters_rx) = tokio::sync::mpsc::unbounded_channel();
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
                            commands: Some(cmd_rx),
                            events: Some(ev_tx),
                            registered: Some(reg_tx),
                            filters: Some(filters_tx),
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

//! The control cycle's decision: from the recent load per topic (the
//! daemon's [`LoadSeries`]), the shard-aware devices the gateway knows
//! (their subscriptions, battery, connectivity, attributes) and the
//! installed plan, forecast what each topic will carry until the next
//! cycle's plan can take effect, plan against the installed plan and say
//! what to do and why. Pure: the daemon gathers the inputs, installs what
//! is decided and starts the migrations ([`crate::daemon`]).
//!
//! Modes:
//! - `predictive` plans each topic for the larger of its last bucket's
//!   rate and the forecast's peak over the next `period + lead` (the
//!   forecaster's chosen model per topic, [`shardcast_forecast`]), so
//!   shards exist before a peak and merge only when the forecast stays
//!   quiet;
//! - `reactive` plans for the last bucket's rate (threshold scaling: the
//!   baseline predictive is compared against);
//! - `advise` decides as `predictive` does and installs nothing: the
//!   decision log says what would have happened.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use serde::Serialize;
use shardcast_forecast as forecast;
use shardcast_plan::Plan;
use shardcast_planner::{
    self as planner, Options,
    workload::{CostWeights, Device, Policy, Resources, TopicLoad, Workload},
};

use crate::load::LoadSeries;

/// How the daemon plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Predictive,
    Reactive,
    Advise,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Predictive, Mode::Reactive, Mode::Advise];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Predictive => "predictive",
            Mode::Reactive => "reactive",
            Mode::Advise => "advise",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.label() == s)
            .ok_or_else(|| format!("{s:?} is not a mode: predictive, reactive or advise"))
    }
}

/// The `[cycle]` section, validated (`docs/config.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct CycleConfig {
    pub mode: Mode,
    /// Time between cycles.
    pub period: Duration,
    /// How long a plan takes to take effect (install and migrations): the
    /// forecast looks `period + lead` ahead.
    pub lead: Duration,
    /// The load's season (a day; shorter in a compressed-time lab).
    pub season: Duration,
    /// Load history kept in memory for the forecast.
    pub window: Duration,
    /// Horizons the decision log and the metrics report forecasts at.
    pub horizons: Vec<(String, Duration)>,
    /// Every topic's forecast is refitted once per this long (a share of
    /// them each cycle).
    pub refit: Duration,
    pub resources: Resources,
    pub cost: CostWeights,
    pub policy: Policy,
    pub seed: u64,
}

/// What started a cycle.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// The period elapsed (or the first cycle).
    Period,
    /// A shard carried more than its usable capacity in the last bucket.
    Overload { shard: u32, rate: f64, usable: f64 },
    /// Predictive and advise: in the bucket under way, topics running
    /// clearly above the rate planned for them put a shard on course to
    /// carry more than its usable capacity (`into`: seconds of the bucket
    /// counted so far).
    Nowcast {
        shard: u32,
        rate: f64,
        usable: f64,
        into: f64,
    },
    /// Devices the installed plan does not place, or whose shard does not
    /// receive a topic they follow.
    Unserved { devices: usize },
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Period => write!(f, "period"),
            Trigger::Overload {
                shard,
                rate,
                usable,
            } => write!(
                f,
                "shard {shard} measured {rate:.1} msg/s over its usable {usable:.1}"
            ),
            Trigger::Nowcast {
                shard,
                rate,
                usable,
                into,
            } => write!(
                f,
                "shard {shard} on course for {rate:.1} msg/s over its usable {usable:.1} \
                 ({into:.1} s into the bucket)"
            ),
            Trigger::Unserved { devices } => {
                write!(
                    f,
                    "{devices} device(s) not placed or not sent a topic they follow"
                )
            }
        }
    }
}

/// What the cycle sees.
pub struct Inputs<'a> {
    pub now: u64,
    pub mode: Mode,
    pub trigger: Trigger,
    pub load: &'a LoadSeries,
    pub devices: &'a BTreeMap<String, Device>,
    /// The installed plan, without routes the daemon adds itself (the
    /// relay's shard).
    pub installed: Option<&'a Plan>,
    /// The forecasts kept between cycles.
    pub forecasts: &'a mut Forecasts,
    /// Topics running clearly above their planned rate in the bucket under
    /// way, with that rate (msg/s; see [`surging`]): predictive and advise
    /// plan for at least it.
    pub nowcast: &'a HashMap<String, f64>,
}

/// Whether `count` messages, where a topic planned at some rate was
/// expected to send `expected` in the same time, show it running above
/// that rate rather than a random excess: over two standard deviations
/// of a Poisson count and two messages besides. A paced sender a third
/// over its rate passes within a few tenths of a second at tens of
/// messages per second; the noise of a random one seldom does.
pub fn surging(count: u64, expected: f64) -> bool {
    count as f64 > expected.max(0.0) + noise(expected)
}

/// Counting noise around an `expected` count: two Poisson sigmas and two
/// messages.
fn noise(expected: f64) -> f64 {
    2.0 * expected.max(0.0).sqrt() + 2.0
}

/// Whether a topic expected at `rate` msg/s ran above it in every one of
/// `readings` (seconds covered, messages counted), by a message at least:
/// a burst (a sender catching up after a stall) lifts a bucket's count as
/// a surge does, but shows in one reading only.
pub fn lasting(mut readings: impl Iterator<Item = (f64, u64)>, rate: f64) -> bool {
    readings.all(|(span, n)| span > 0.0 && n as f64 > rate * span + 1.0)
}

/// Whether a bucket's `count` differs from the `expected` count, either
/// way, by more than counting noise (the same bounds as [`surging`]).
fn beyond_noise(count: f64, expected: f64) -> bool {
    (count - expected.max(0.0)).abs() > noise(expected)
}

/// One shard in a decision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShardLoad {
    pub id: u32,
    pub devices: usize,
    /// Messages/s routed to it in the last bucket.
    pub measured: f64,
    /// Messages/s the plan carries it for (the forecast's, in
    /// predictive and advise mode).
    pub planned: f64,
    pub usable: f64,
}

/// One topic's rates in a decision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopicRate {
    pub topic: String,
    pub measured: f64,
    pub planned: f64,
    /// Forecast rate at each configured horizon (predictive and advise).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub horizons: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'static str>,
}

/// What a cycle decided, and why (one line of the decision log).
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub at: u64,
    pub mode: Mode,
    pub trigger: Trigger,
    /// `install`, `advise` (would install) or `none`.
    pub action: &'static str,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    pub shards_before: usize,
    pub shards_after: usize,
    pub created: usize,
    pub merged: usize,
    /// Devices the new plan moves to another shard.
    pub moves: usize,
    /// Devices placed for the first time.
    pub placed: usize,
    /// The installed plan's shards above usable capacity at the planned
    /// rates: what the plan had to fix.
    pub over_before: Vec<ShardLoad>,
    /// The new plan's shards.
    pub shards: Vec<ShardLoad>,
    /// The busiest topics (at most [`TOP_TOPICS`]).
    pub topics: Vec<TopicRate>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub forecast_ms: f64,
    pub plan_ms: f64,
    /// The live forecast error (MASE over the last season; predictive and
    /// advise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mase: Option<f64>,
    /// Every topic's (measured, planned) rate, for the metrics.
    #[serde(skip)]
    pub rates: Vec<TopicRate>,
    /// The plan to install (`action` install or advise).
    #[serde(skip)]
    pub plan: Option<Plan>,
}

/// Topics a decision's log line names.
pub const TOP_TOPICS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("workload")]
    Workload(#[from] shardcast_planner::workload::WorkloadError),
    #[error("planner")]
    Planner(#[from] shardcast_planner::PlannerError),
}

/// Whether a subscription is a filter (matched against known topics).
fn is_filter(s: &str) -> bool {
    s.contains(['+', '#'])
}

/// Topic names unnamed in the history (`key:…`, `slot:…`: seen by the
/// kernel, named by no plan) cannot be routed by name.
fn routable(name: &str) -> bool {
    crate::load::is_load(name) && !(name.starts_with("key:") || name.starts_with("slot:"))
}

/// Runs one cycle's decision.
pub fn decide(cfg: &CycleConfig, inp: Inputs) -> Result<Decision, CycleError> {
    // Topics: measured ones, the installed plan's and every concrete name
    // a device follows; filters match among those.
    let mut names: BTreeSet<String> = inp
        .load
        .topics()
        .filter(|t| routable(t))
        .map(str::to_string)
        .collect();
    let mut predefined: HashMap<&str, u16> = HashMap::new();
    for t in inp.installed.iter().flat_map(|p| &p.topics) {
        names.insert(t.name.clone());
        if let Some(id) = t.mqttsn_predefined_id {
            predefined.insert(&t.name, id);
        }
    }
    for d in inp.devices.values() {
        for s in &d.subscriptions {
            if !is_filter(s) && routable(s) {
                names.insert(s.clone());
            }
        }
    }
    let names: Vec<String> = names.into_iter().collect();

    // Rates.
    let t0 = Instant::now();
    let predictive = inp.mode != Mode::Reactive;
    let rates = rates(
        cfg,
        inp.load,
        inp.now,
        &names,
        predictive.then_some(inp.nowcast),
        &mut *inp.forecasts,
    );
    let mase = if predictive {
        inp.forecasts.mase()
    } else {
        None
    };
    let forecast_ms = t0.elapsed().as_secs_f64() * 1e3;

    // The workload: the devices as the gateway knows them, subscriptions
    // resolved to topic names.
    // Predictive merges closer to capacity, as the simulator's predictive
    // strategy does: its rates hold the rise hysteresis guards against.
    let resources = if predictive {
        cfg.resources.foreseeing()
    } else {
        cfg.resources.clone()
    };
    let devices: Vec<Device> = inp
        .devices
        .values()
        .map(|d| {
            let mut d = d.clone();
            let mut subs: BTreeSet<String> = BTreeSet::new();
            for s in &d.subscriptions {
                if is_filter(s) {
                    subs.extend(
                        names
                            .iter()
                            .filter(|n| shardcast_gateway::session::matches(s, n))
                            .cloned(),
                    );
                } else if routable(s) {
                    subs.insert(s.clone());
                }
            }
            d.subscriptions = subs.into_iter().collect();
            d
        })
        .collect();
    let w = Workload {
        resources,
        cost: cfg.cost,
        topics: names
            .iter()
            .zip(&rates)
            .map(|(n, r)| TopicLoad {
                name: n.clone(),
                rate: r.planned,
                mqttsn_predefined_id: predefined.get(n.as_str()).copied(),
            })
            .collect(),
        devices,
        policy: cfg.policy.clone(),
    };
    let usable = w.resources.usable_capacity();
    let planned_of: HashMap<&str, f64> = rates
        .iter()
        .map(|r| (r.topic.as_str(), r.planned))
        .collect();
    let measured_of: HashMap<&str, f64> = rates
        .iter()
        .map(|r| (r.topic.as_str(), r.measured))
        .collect();
    let loads_of = |plan: &Plan| -> Vec<ShardLoad> {
        plan.shards
            .iter()
            .map(|s| {
                let on = |rate: &HashMap<&str, f64>| {
                    plan.topics
                        .iter()
                        .filter(|t| t.shards.contains(&s.id))
                        .map(|t| rate.get(t.name.as_str()).copied().unwrap_or(0.0))
                        // An empty sum is -0.0: shown as 0.
                        .sum::<f64>()
                        + 0.0
                };
                ShardLoad {
                    id: s.id,
                    devices: plan.devices.iter().filter(|d| d.shard == s.id).count(),
                    measured: on(&measured_of),
                    planned: on(&planned_of),
                    usable: s
                        .capacity
                        .map_or(usable, |c| c * (1.0 - w.resources.headroom)),
                }
            })
            .collect()
    };
    let over_before: Vec<ShardLoad> = inp
        .installed
        .map(&loads_of)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.planned > s.usable)
        .collect();
    let mut top: Vec<TopicRate> = rates.clone();
    top.sort_by(|a, b| b.planned.total_cmp(&a.planned).then(a.topic.cmp(&b.topic)));
    top.truncate(TOP_TOPICS);
    let shards_before = inp.installed.map_or(0, |p| p.shards.len());
    let mut d = Decision {
        at: inp.now,
        mode: inp.mode,
        trigger: inp.trigger,
        action: "none",
        reason: String::new(),
        generation: None,
        shards_before,
        shards_after: shards_before,
        created: 0,
        merged: 0,
        moves: 0,
        placed: 0,
        over_before,
        shards: Vec::new(),
        topics: top,
        warnings: Vec::new(),
        forecast_ms,
        plan_ms: 0.0,
        mase,
        rates: rates.clone(),
        plan: None,
    };
    if w.devices.is_empty() {
        d.reason = "no shard-aware device is registered: nothing to plan".into();
        return Ok(d);
    }
    let inst = w.index()?;
    let t1 = Instant::now();
    let out = planner::plan(
        &inst,
        inp.installed,
        Options {
            seed: cfg.seed,
            rounds: 4,
            best_effort: true,
        },
    )?;
    d.plan_ms = t1.elapsed().as_secs_f64() * 1e3;
    let new = out.plan;
    d.shards = loads_of(&new);
    d.shards_after = new.shards.len();
    d.created = out.created;
    d.merged = out.merged;
    d.warnings = out.warnings;
    let before: HashMap<&str, u32> = inp
        .installed
        .iter()
        .flat_map(|p| p.devices.iter().map(|d| (d.id.as_str(), d.shard)))
        .collect();
    for dev in &new.devices {
        match before.get(dev.id.as_str()) {
            Some(&s) if s != dev.shard => d.moves += 1,
            Some(_) => {}
            None => d.placed += 1,
        }
    }
    let routes = |p: &Plan| -> BTreeMap<String, BTreeSet<u32>> {
        p.topics
            .iter()
            .map(|t| (t.name.clone(), t.shards.iter().copied().collect()))
            .collect()
    };
    let removed = inp
        .installed
        .map_or(0, |p| p.devices.len() + d.placed - new.devices.len());
    let changed = match inp.installed {
        None => true,
        Some(p) => {
            d.created > 0
                || d.merged > 0
                || d.moves > 0
                || d.placed > 0
                || removed > 0
                || routes(p) != routes(&new)
                || p.shards.iter().map(|s| s.id).collect::<Vec<_>>()
                    != new.shards.iter().map(|s| s.id).collect::<Vec<_>>()
        }
    };
    let busiest = d
        .shards
        .iter()
        .max_by(|a, b| a.planned.total_cmp(&b.planned))
        .map(|s| (s.id, s.planned, s.usable));
    let ahead = humantime::format_duration(cfg.period + cfg.lead);
    let mut why = Vec::new();
    if let Some(s) = d.over_before.first() {
        why.push(format!(
            "shard {} would carry {:.1} msg/s over its usable {:.1} within {ahead}{}",
            s.id,
            s.planned,
            s.usable,
            if d.over_before.len() > 1 {
                format!(" ({} shards over)", d.over_before.len())
            } else {
                String::new()
            }
        ));
    }
    if d.created > 0 {
        why.push(format!("{} shard(s) created", d.created));
    }
    if d.merged > 0 {
        why.push(format!(
            "{} shard(s) merged: the load planned for the next {ahead} fits in fewer",
            d.merged
        ));
    }
    if d.moves > 0 {
        why.push(format!("{} device(s) move", d.moves));
    }
    if d.placed > 0 {
        why.push(format!("{} device(s) placed", d.placed));
    }
    if removed > 0 {
        why.push(format!("{removed} device(s) gone"));
    }
    if let Some((id, load, usable)) = busiest {
        why.push(format!(
            "busiest shard {id} planned at {load:.1} of {usable:.1} msg/s usable"
        ));
    }
    if changed {
        d.action = if inp.mode == Mode::Advise {
            "advise"
        } else {
            "install"
        };
        d.generation = Some(new.generation);
        if why.len() == 1 && busiest.is_some() {
            why.insert(0, "routes changed".into());
        }
        d.plan = Some(new);
    } else {
        why.insert(0, "no change".into());
    }
    d.reason = why.join("; ");
    Ok(d)
}

/// The forecaster's paths per topic, kept between cycles: a fit of 10k
/// topics costs seconds, and the load's shape does not change every five
/// minutes. Each cycle refits the topics whose fit is oldest, a share
/// such that every topic is refitted once per `cycle.refit` (new topics
/// and paths run out are fitted at once), and reads the others' paths
/// from where they now are, corrected by how far the last bucket measured
/// is from what the path said (a flash under way, a level shift).
#[derive(Debug, Default)]
pub struct Forecasts {
    fits: HashMap<String, Fit>,
    /// The one-bucket-ahead forecast each cycle made for the bucket then
    /// under way, per topic, scored once that bucket is complete.
    pending: Vec<(u64, Vec<(String, f64)>)>,
    /// Per scored bucket: (its start, Σ |forecast − actual|, Σ |actual −
    /// actual one season before|), over the last season.
    scores: std::collections::VecDeque<(u64, f64, f64)>,
}

#[derive(Clone, Debug)]
struct Fit {
    /// Start (unix seconds) of the first bucket the path forecasts.
    origin: u64,
    model: &'static str,
    /// Messages per bucket, from `origin` on.
    path: Vec<f64>,
    /// Rates at the configured horizons, as of the fit.
    horizons: BTreeMap<String, f64>,
}

impl Forecasts {
    /// Topics with a fit.
    pub fn len(&self) -> usize {
        self.fits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fits.is_empty()
    }

    /// The live forecast error: MASE of the one-bucket-ahead forecasts
    /// over the last season (the forecasts' absolute error over seasonal
    /// naive's), all topics together; `None` before any score, or while
    /// seasonal naive made no error (an exactly repeating season: MASE is
    /// undefined).
    pub fn mase(&self) -> Option<f64> {
        let (e, n) = self
            .scores
            .iter()
            .fold((0.0, 0.0), |(e, n), s| (e + s.1, n + s.2));
        (!self.scores.is_empty() && n > 0.0).then(|| e / n)
    }

    /// Scores the forecasts made for buckets now complete.
    fn score(&mut self, load: &LoadSeries, now: u64, season: u64) {
        let bucket = load.bucket_secs();
        let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(b, _)| b + bucket <= now);
        self.pending = wait;
        for (b, forecasts) in done {
            let (mut e, mut n) = (0.0, 0.0);
            for (topic, f) in &forecasts {
                let (Some(a), Some(before)) = (
                    load.at(topic, b),
                    b.checked_sub(season).and_then(|s| load.at(topic, s)),
                ) else {
                    continue;
                };
                e += (f - a).abs();
                n += (a - before).abs();
            }
            self.scores.push_back((b, e, n));
        }
        while self.scores.front().is_some_and(|(b, ..)| b + season < now) {
            self.scores.pop_front();
        }
    }

    /// Forgets topics not in `names`.
    fn retain(&mut self, names: &[String]) {
        if self.fits.len() > names.len() {
            let keep: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
            self.fits.retain(|k, _| keep.contains(k.as_str()));
        }
    }
}

/// Each topic's measured rate (last complete bucket) and the rate to plan
/// for; with `nowcast` (predictive), the forecast's (its peak over the
/// next `period + lead`, corrected by the last bucket's departure from it
/// and never below the measured rate, where those are beyond counting
/// noise, nor below a surge under way). Refits run in parallel over the
/// available cores.
fn rates(
    cfg: &CycleConfig,
    load: &LoadSeries,
    now: u64,
    names: &[String],
    nowcast: Option<&HashMap<String, f64>>,
    cache: &mut Forecasts,
) -> Vec<TopicRate> {
    let bucket = load.bucket_secs();
    let measured: Vec<f64> = names.iter().map(|n| load.last_rate(n, now)).collect();
    let Some(nowcast) = nowcast else {
        return names
            .iter()
            .zip(measured)
            .map(|(n, m)| TopicRate {
                topic: n.clone(),
                measured: m,
                planned: m,
                horizons: BTreeMap::new(),
                model: None,
            })
            .collect();
    };
    cache.retain(names);
    cache.score(load, now, cfg.season.as_secs());
    let buckets = |d: Duration| (d.as_secs().div_ceil(bucket) as usize).max(1);
    let plan_h = buckets(cfg.period + cfg.lead);
    let refit_b = buckets(cfg.refit);
    // The path a fit keeps: until its next refit, plus the plan's span.
    let keep = refit_b + plan_h;
    // The bucket the forecasts start at: the one under way.
    let origin = now - now % bucket;
    let offset = |f: &Fit| (origin.saturating_sub(f.origin) / bucket) as usize;
    // Due: no fit, a path that ends before the plan's span, and the
    // oldest share of the rest.
    let mut due: Vec<usize> = Vec::new();
    let mut aged: Vec<(u64, usize)> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match cache.fits.get(n) {
            Some(f) if offset(f) + plan_h <= f.path.len() && f.origin <= origin => {
                aged.push((f.origin, i))
            }
            _ => due.push(i),
        }
    }
    let share = (names.len() * cfg.period.as_secs() as usize)
        .div_ceil(cfg.refit.as_secs().max(1) as usize)
        .max(1);
    if due.len() < share {
        aged.sort_unstable();
        due.extend(aged.iter().take(share - due.len()).map(|&(_, i)| i));
    }
    // Refit what is due, in parallel.
    let mut leads: Vec<usize> = cfg.horizons.iter().map(|(_, h)| buckets(*h)).collect();
    leads.push(keep);
    let cal = forecast::Calendar::new(buckets(cfg.season));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = due.len().div_ceil(threads).max(1);
    let fitted: Vec<(usize, Fit)> = std::thread::scope(|scope| {
        let handles: Vec<_> = due
            .chunks(chunk)
            .map(|part| {
                let (cal, leads) = (&cal, &leads);
                scope.spawn(move || {
                    part.iter()
                        .map(|&i| {
                            let y = load.complete(&names[i], now);
                            let f = forecast::forecast_series(&y, cal, leads);
                            let last = leads.len() - 1;
                            let fit = Fit {
                                origin,
                                model: f.chosen[last].name(),
                                path: f.paths[last].clone(),
                                horizons: cfg
                                    .horizons
                                    .iter()
                                    .zip(&f.values)
                                    .map(|((label, _), v)| (label.clone(), v[0] / bucket as f64))
                                    .collect(),
                            };
                            (i, fit)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a forecast thread panicked"))
            .collect()
    });
    for (i, fit) in fitted {
        cache.fits.insert(names[i].clone(), fit);
    }
    // What each topic's path says of the bucket under way, scored when
    // it is complete (one entry per bucket: a second cycle in the same
    // bucket keeps the first's).
    if cache.pending.last().is_none_or(|(b, _)| *b != origin) {
        let next: Vec<(String, f64)> = names
            .iter()
            .filter_map(|n| {
                let f = &cache.fits[n];
                f.path.get(offset(f)).map(|v| (n.clone(), *v))
            })
            .collect();
        cache.pending.push((origin, next));
    }
    names
        .iter()
        .zip(measured)
        .map(|(n, m)| {
            let f = &cache.fits[n];
            let off = offset(f);
            // How far the last bucket measured is from the path (nothing
            // to compare for a fit made this cycle), when beyond what
            // counting noise explains: a level shift, a flash. Within it,
            // the correction and the measured rate would only add their
            // noise to the plan (and every plan is the higher of several
            // numbers, so the noise pushes it up: shards created for it).
            let count = m * bucket as f64;
            let correction = match off {
                0 => 0.0,
                k if beyond_noise(count, f.path[k - 1]) => count - f.path[k - 1],
                _ => 0.0,
            };
            let window = &f.path[off..(off + plan_h).min(f.path.len())];
            let ahead = forecast::peak_ahead(window, correction, 0.0) / bucket as f64;
            let measured = if beyond_noise(count, ahead * bucket as f64) {
                m
            } else {
                0.0
            };
            let surge = nowcast.get(n).copied().unwrap_or(0.0);
            TopicRate {
                topic: n.clone(),
                measured: m,
                planned: ahead.max(measured).max(surge),
                horizons: f.horizons.clone(),
                model: Some(f.model),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUCKET: u64 = 10;

    fn cfg() -> CycleConfig {
        CycleConfig {
            mode: Mode::Predictive,
            period: Duration::from_secs(30),
            lead: Duration::from_secs(20),
            season: Duration::from_secs(400),
            window: Duration::from_secs(4000),
            horizons: vec![("1m".into(), Duration::from_secs(60))],
            refit: Duration::from_secs(30),
            resources: serde_json::from_str(
                r#"{"shard_capacity": 100, "max_shards": 8, "egress": "veth0", "headroom": 0.2}"#,
            )
            .unwrap(),
            cost: CostWeights::default(),
            policy: Policy::default(),
            seed: 1,
        }
    }

    /// `topics` topics, each followed by `per` devices of its own; the
    /// rate of every topic follows `rate(bucket index)` over `n` buckets.
    fn lab(
        topics: usize,
        per: usize,
        n: u64,
        rate: impl Fn(u64) -> f64,
    ) -> (LoadSeries, BTreeMap<String, Device>) {
        let mut load = LoadSeries::new(BUCKET, 1000);
        for b in 0..n {
            for t in 0..topics {
                load.add(b * BUCKET, &format!("t/{t}"), rate(b) * BUCKET as f64);
            }
        }
        let mut devices = BTreeMap::new();
        for t in 0..topics {
            for k in 0..per {
                let id = format!("d{t}-{k}");
                devices.insert(
                    id.clone(),
                    Device {
                        id,
                        group: None,
                        address: None,
                        subscriptions: vec![format!("t/{t}")],
                        connected: true,
                        battery: 1.0,
                        location: None,
                        kind: None,
                        sla: None,
                    },
                );
            }
        }
        (load, devices)
    }

    fn run(
        cfg: &CycleConfig,
        mode: Mode,
        load: &LoadSeries,
        devices: &BTreeMap<String, Device>,
        installed: Option<&Plan>,
        now: u64,
    ) -> Decision {
        decide(
            cfg,
            Inputs {
                now,
                mode,
                trigger: Trigger::Period,
                load,
                devices,
                installed,
                forecasts: &mut Forecasts::default(),
                nowcast: &HashMap::new(),
            },
        )
        .unwrap()
    }

    /// A diurnal load: 4 topics at 5 msg/s each at night, 35 at the peak
    /// (season 40 buckets, peak at buckets 20..30 of each season).
    fn diurnal(b: u64) -> f64 {
        if (20..30).contains(&(b % 40)) {
            35.0
        } else {
            5.0
        }
    }

    #[test]
    fn predictive_creates_shards_before_the_peak_reactive_after() {
        let cfg = cfg();
        // Three seasons and a half of history (season: 40 buckets): the
        // fourth season's peak starts at bucket 140, past the planning
        // span (period + lead = 5 buckets: 134..=138) of a cycle at 134.
        let (load, devices) = lab(4, 3, 134, diurnal);
        let now = 134 * BUCKET;
        let first = run(&cfg, Mode::Predictive, &load, &devices, None, now);
        assert_eq!(first.action, "install");
        let quiet = first.plan.unwrap();
        // Night: 4 x 5 msg/s fit one shard of 80 usable.
        assert_eq!(quiet.shards.len(), 1, "{}", first.reason);
        assert_eq!(first.placed, 12);
        // Four buckets on, the peak is within period + lead (138..=142);
        // the last bucket measured is still a night's.
        let (load, _) = lab(4, 3, 138, diurnal);
        let now = 138 * BUCKET;
        let r = run(&cfg, Mode::Reactive, &load, &devices, Some(&quiet), now);
        assert_eq!(
            r.action, "none",
            "reactive sees nothing coming: {}",
            r.reason
        );
        let p = run(&cfg, Mode::Predictive, &load, &devices, Some(&quiet), now);
        assert_eq!(p.action, "install", "{}", p.reason);
        assert!(p.created >= 1, "{}", p.reason);
        assert!(p.moves > 0);
        assert_eq!(p.over_before.len(), 1);
        assert!(p.reason.contains("would carry"), "{}", p.reason);
        assert!(
            p.shards.iter().all(|s| s.planned <= s.usable),
            "{:?}",
            p.shards
        );
        // Advise decides the same and says it would install.
        let a = run(&cfg, Mode::Advise, &load, &devices, Some(&quiet), now);
        assert_eq!((a.action, a.created), ("advise", p.created));
        assert!(a.plan.is_some());
        // The log line is JSON naming the trigger, the action and why.
        let line = serde_json::to_string(&p).unwrap();
        assert!(
            line.contains("\"action\":\"install\"") && line.contains("\"kind\":\"period\""),
            "{line}"
        );
        // At the peak, reactive creates them too (late).
        let (load, _) = lab(4, 3, 142, diurnal);
        let r = run(
            &cfg,
            Mode::Reactive,
            &load,
            &devices,
            Some(&quiet),
            142 * BUCKET,
        );
        assert!(r.created >= 1, "{}", r.reason);
    }

    #[test]
    fn a_quiet_night_merges_and_a_steady_state_changes_nothing() {
        let cfg = cfg();
        // In the third season's peak (buckets 100..110) the plan needs
        // several shards.
        let (load, devices) = lab(4, 3, 105, diurnal);
        let peak = run(&cfg, Mode::Reactive, &load, &devices, None, 105 * BUCKET);
        let busy = peak.plan.unwrap();
        assert!(busy.shards.len() >= 2, "{}", peak.reason);
        // At night, with another night forecast, they merge.
        let (load, _) = lab(4, 3, 112, diurnal);
        let night = run(
            &cfg,
            Mode::Predictive,
            &load,
            &devices,
            Some(&busy),
            112 * BUCKET,
        );
        assert_eq!(night.action, "install", "{}", night.reason);
        assert!(night.merged >= 1, "{}", night.reason);
        let calm = night.plan.unwrap();
        let again = run(
            &cfg,
            Mode::Predictive,
            &load,
            &devices,
            Some(&calm),
            112 * BUCKET,
        );
        assert_eq!(again.action, "none", "{}", again.reason);
        assert!(again.reason.starts_with("no change"));
    }

    #[test]
    fn filters_resolve_against_known_topics_and_nobody_means_no_plan() {
        let cfg = cfg();
        let (load, mut devices) = lab(3, 1, 10, |_| 1.0);
        let empty = BTreeMap::new();
        let none = run(&cfg, Mode::Predictive, &load, &empty, None, 100);
        assert_eq!(none.action, "none");
        assert!(none.plan.is_none());
        devices.get_mut("d0-0").unwrap().subscriptions = vec!["t/+".into()];
        let d = run(&cfg, Mode::Reactive, &load, &devices, None, 100);
        let plan = d.plan.unwrap();
        for t in ["t/0", "t/1", "t/2"] {
            let route = plan.topics.iter().find(|x| x.name == t).unwrap();
            let d0 = plan.devices.iter().find(|x| x.id == "d0-0").unwrap().shard;
            assert!(route.shards.contains(&d0), "{t}");
        }
    }

    #[test]
    fn the_policy_holds_in_the_cycles_plans() {
        // `[policy] separate_by = ["sla"]`: premium and best-effort
        // devices following the same topics never share a shard.
        let mut cfg = cfg();
        cfg.policy.separate_by = vec!["sla".into()];
        let (load, mut devices) = lab(4, 4, 10, |_| 5.0);
        for (i, d) in devices.values_mut().enumerate() {
            d.sla = Some(if i % 2 == 0 { "premium" } else { "best-effort" }.into());
        }
        let d = run(&cfg, Mode::Predictive, &load, &devices, None, 100);
        let plan = d.plan.expect("a plan");
        assert_eq!(plan.policy.separate_by, ["sla"]);
        let mut class_of: BTreeMap<u32, &str> = BTreeMap::new();
        for dev in &plan.devices {
            let sla = devices[&dev.id].sla.as_deref().unwrap();
            assert_eq!(
                *class_of.entry(dev.shard).or_insert(sla),
                sla,
                "shard {}",
                dev.shard
            );
        }
        assert!(class_of.len() >= 2);
    }

    #[test]
    fn the_live_forecast_error_is_scored_as_buckets_complete() {
        let cfg = cfg();
        // A day shape on a rising trend: seasonal naive is off by the
        // trend's growth over a season, every bucket.
        let rate = |b: u64| diurnal(b) + 0.1 * b as f64;
        let (load, devices) = lab(2, 1, 200, rate);
        let mut forecasts = Forecasts::default();
        let mut last = None;
        for b in 150..190 {
            let d = decide(
                &cfg,
                Inputs {
                    now: b * BUCKET,
                    mode: Mode::Predictive,
                    trigger: Trigger::Period,
                    load: &load,
                    devices: &devices,
                    installed: None,
                    forecasts: &mut forecasts,
                    nowcast: &HashMap::new(),
                },
            )
            .unwrap();
            last = d.mase;
        }
        let m = last.expect("scored");
        assert!(m.is_finite() && m >= 0.0, "{m}");
        assert_eq!(forecasts.mase(), Some(m));
        // Reactive forecasts nothing: no score.
        let (load, devices) = lab(2, 1, 20, rate);
        let r = run(&cfg, Mode::Reactive, &load, &devices, None, 200);
        assert_eq!(r.mase, None);
    }

    #[test]
    fn a_surge_is_told_from_noise() {
        // Nothing expected: a couple of messages are not yet a surge.
        assert!(!surging(2, 0.0));
        assert!(surging(3, 0.0));
        // A flash: 12 msg/s planned, 32 running, 0.4 s into the bucket.
        assert!(surging(13, 12.0 * 0.4));
        // The same topic at its planned rate, or a little over it.
        assert!(!surging(5, 12.0 * 0.4));
        assert!(!surging(8, 12.0 * 0.4));
        // Poisson noise at the planned rate passes about 2% of the time.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for expected in [1.0f64, 5.0, 20.0, 200.0] {
            let trials = 20_000;
            let mut passed = 0;
            for _ in 0..trials {
                // Knuth's Poisson draw (products of uniforms) in chunks of
                // at most 20 expected, to stay within f64.
                let mut n = 0u64;
                let mut left = expected;
                while left > 0.0 {
                    let l = (-left.min(20.0)).exp();
                    left -= 20.0;
                    let mut p = 1.0;
                    loop {
                        p *= uniform();
                        if p <= l {
                            break;
                        }
                        n += 1;
                    }
                }
                passed += surging(n, expected) as u32;
            }
            let share = passed as f64 / trials as f64;
            assert!(share < 0.03, "expected {expected}: {share}");
        }
    }

    #[test]
    fn a_surge_lasts_a_burst_does_not() {
        // 12 msg/s expected, readings of 0.1 s.
        // A flash at 32 msg/s: above in both readings.
        assert!(lasting([(0.1, 3), (0.1, 4)].into_iter(), 12.0));
        // A burst of 40 in one reading, then the usual rate.
        assert!(!lasting([(0.1, 40), (0.1, 1)].into_iter(), 12.0));
        assert!(!lasting([(0.1, 1), (0.1, 40)].into_iter(), 12.0));
        // No reading yet (a daemon just started): nothing lasts.
        assert!(!lasting([(0.0, 0), (0.1, 40)].into_iter(), 12.0));
    }

    #[test]
    fn a_surge_under_way_is_planned_for_in_predictive_mode_only() {
        let cfg = cfg();
        let (load, devices) = lab(4, 3, 134, diurnal);
        let now = 134 * BUCKET;
        let first = run(&cfg, Mode::Predictive, &load, &devices, None, now);
        let quiet = first.plan.unwrap();
        // At night one topic runs at 70 msg/s: far above what the
        // forecast says, and its shard (80 usable) on course for 85.
        let topic = quiet.topics[0].name.clone();
        let nowcast = HashMap::from([(topic.clone(), 70.0)]);
        let decide_with = |mode| {
            decide(
                &cfg,
                Inputs {
                    now,
                    mode,
                    trigger: Trigger::Nowcast {
                        shard: quiet.shards[0].id,
                        rate: 85.0,
                        usable: 80.0,
                        into: 3.0,
                    },
                    load: &load,
                    devices: &devices,
                    installed: Some(&quiet),
                    forecasts: &mut Forecasts::default(),
                    nowcast: &nowcast,
                },
            )
            .unwrap()
        };
        let p = decide_with(Mode::Predictive);
        let rate = p.rates.iter().find(|r| r.topic == topic).unwrap();
        assert_eq!(rate.planned, 70.0);
        assert!(rate.measured < 10.0);
        assert_eq!(p.action, "install", "{}", p.reason);
        assert!(p.created >= 1, "{}", p.reason);
        assert!(p.over_before.iter().any(|s| s.planned > s.usable));
        let line = serde_json::to_string(&p).unwrap();
        assert!(line.contains(r#""kind":"nowcast""#), "{line}");
        assert!(p.trigger.to_string().contains("on course for 85.0"));
        // Reactive plans from the last complete bucket alone.
        let r = decide_with(Mode::Reactive);
        assert_eq!(r.action, "none", "{}", r.reason);
        assert!(r.rates.iter().all(|r| r.planned < 10.0));
    }

    #[test]
    fn a_last_bucket_within_counting_noise_of_the_forecast_is_not_planned_for() {
        let cfg = cfg();
        let planned = |last: f64| {
            // 20 msg/s (200 a bucket) for 120 buckets, then `last`.
            let (load, devices) = lab(1, 2, 121, |b| if b == 120 { last } else { 20.0 });
            let d = run(&cfg, Mode::Predictive, &load, &devices, None, 121 * BUCKET);
            d.rates[0].planned
        };
        // 210 where 200 was expected: noise (2 sigmas are 28).
        assert!((planned(21.0) - 20.0).abs() < 0.5, "{}", planned(21.0));
        assert!((planned(19.0) - 20.0).abs() < 0.5, "{}", planned(19.0));
        // 300: a shift, planned for.
        assert!(planned(30.0) >= 30.0, "{}", planned(30.0));
    }

    #[test]
    fn modes_parse_and_name_themselves() {
        for m in Mode::ALL {
            assert_eq!(m.label().parse::<Mode>().unwrap(), m);
        }
        assert!("fast".parse::<Mode>().unwrap_err().contains("predictive"));
    }
}

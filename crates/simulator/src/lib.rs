//! The simulator: days of a seeded synthetic fleet ([`crate::scenario`])
//! in compressed time, minute by minute, through the real forecaster and
//! planner, comparing three sharding strategies on the same trace:
//!
//! - **static**: devices hashed by device group (site) onto a fixed number
//!   of shards, provisioned for the peak total load seen in the warm-up;
//! - **reactive**: the planner every cycle, fed the rates observed over the
//!   last 5 minutes (threshold scaling: split above capacity, merge below
//!   the hysteresis mark);
//! - **predictive** (ours): the same planner fed, per topic, the larger of
//!   that nowcast and the forecaster's peak over the coming cycle plus the
//!   lead time (so shards exist before the load arrives).
//!
//! Reactive and predictive also re-plan at once after a minute in which a
//! shard ran above capacity (the daemon sees counters every tick), so the
//! difference between them is the forecast alone.
//!
//! Reported per strategy: overload-minutes (shard-minutes above capacity),
//! shard-hours, inter-shard copies and wasted deliveries (messages), and
//! device migrations.

use std::{collections::VecDeque, path::Path, time::Instant};

use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use shardcast_forecast as forecast;
use shardcast_plan::Plan;
use shardcast_planner::workload::Policy;
use shardcast_planner::{
    self as planner, Options, PlannerError,
    workload::{Resources, WorkloadError},
};

mod report;
pub mod scenario;
pub mod shapes;

use crate::scenario::{Fleet, FleetSpec};

const DAY: u32 = 1440;
/// History bucket the forecaster works on (minutes).
const BUCKET: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read scenario {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("scenario is not valid JSON: {0}")]
    Json(String),
    #[error("unknown scenario {0:?}: built-in ones are {names}", names = BUILTIN.join(", "))]
    Unknown(String),
    #[error("scenario.{field}: {reason}")]
    Bad { field: &'static str, reason: String },
    #[error("scenario resources: {0}")]
    Workload(#[from] WorkloadError),
    #[error("planner: {0}")]
    Planner(#[from] PlannerError),
    #[error("plot {path}: {reason}")]
    Plot { path: String, reason: String },
}

pub const BUILTIN: &[&str] = &["default", "small", "flashy", "sla"];

/// Limits on what a scenario may ask for, checked before anything is
/// allocated (docs/simulator.md): a small file must not ask for terabytes.
pub mod limits {
    /// Simulated days in all, warm-up included.
    pub const MAX_DAYS: u32 = 366;
    pub const MAX_DEVICES: usize = 1_000_000;
    pub const MAX_TOPICS: usize = 100_000;
    pub const MAX_SITES: usize = 10_000;
    pub const MAX_FLASHES_PER_DAY: f64 = 1_000.0;
    /// Topics times simulated days: the per-topic series the forecaster
    /// keeps (5-minute buckets) stay within a few hundred MB.
    pub const MAX_TOPIC_DAYS: u64 = 100_000;
}

/// A simulation setup (JSON for `--scenario FILE`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub fleet: FleetSpec,
    /// Shard capacity, headroom, hysteresis, budgets (`egress` and group
    /// bases only matter for the emitted plans).
    pub resources: Resources,
    /// Minutes between planning cycles.
    #[serde(default = "fifteen")]
    pub cycle: u32,
    /// How far past the cycle the predictive strategy looks (minutes): the
    /// time a migration needs to take effect.
    #[serde(default = "ten")]
    pub lead: u32,
    /// Days of history gathered before the strategies start.
    #[serde(default = "three")]
    pub warmup_days: u32,
    /// Shard boundary policy the planner follows (`docs/workload-format.md`,
    /// "Policy"); the fleet's devices carry a location (`s<site>/z<zone>`)
    /// and, with `fleet.premium_sites`, a service class.
    #[serde(default, skip_serializing_if = "Policy::is_empty")]
    pub policy: Policy,
}

/// Shards of the built-in "sla" scenario: fewer than its daily peak needs.
const SLA_MAX_SHARDS: u32 = 8;

fn fifteen() -> u32 {
    15
}
fn ten() -> u32 {
    10
}
fn three() -> u32 {
    3
}

impl Scenario {
    /// A built-in scenario; `days` is the compared span.
    pub fn builtin(name: &str, days: u32) -> Result<Scenario, SimError> {
        let (devices, sites, topics, flashes, capacity) = match name {
            "default" | "sla" => (4000, 20, 400, 2.0, 40.0),
            "small" => (600, 6, 60, 2.0, 10.0),
            "flashy" => (4000, 20, 400, 8.0, 40.0),
            other => return Err(SimError::Unknown(other.to_string())),
        };
        // "sla": the default fleet with a quarter of its sites premium,
        // premium shards kept 40% free and served first, on fewer shards
        // than the peak wants: standard absorbs the shortage.
        let sla = name == "sla";
        let premium_sites = if sla { 0.25 } else { 0.0 };
        let policy: Policy = if sla {
            serde_json::from_str(
                r#"{"separate_by": ["sla"], "classes": {
                    "premium": {"headroom": 0.4, "priority": 1},
                    "standard": {"headroom": 0.1}}}"#,
            )
            .expect("built-in policy parses")
        } else {
            Policy::default()
        };
        let max_shards = if sla { SLA_MAX_SHARDS } else { 256 };
        Ok(Scenario {
            fleet: FleetSpec {
                seed: 1,
                sites,
                devices,
                topics,
                zone_rate: 0.5,
                days: 0,
                flashes_per_day: flashes,
                premium_sites,
            },
            resources: Resources {
                shard_capacity: capacity,
                max_shards,
                headroom: 0.2,
                merge_below: 0.7,
                bandwidth: None,
                max_migrations: devices / 4,
                egress: "eth1".into(),
                group_v4_base: "239.1.0.0".into(),
                group_v6_base: None,
            },
            cycle: 15,
            lead: 10,
            warmup_days: 3,
            policy,
        }
        .with_days(days))
    }

    pub fn from_file(path: &Path, days: Option<u32>) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let s: Scenario = serde_json::from_str(shardcast_plan::text::strip_bom(&text))
            .map_err(|e| SimError::Json(e.to_string()))?;
        let days = days.unwrap_or(s.fleet.days.saturating_sub(s.warmup_days).max(1));
        Ok(s.with_days(days))
    }

    fn with_days(mut self, days: u32) -> Scenario {
        // Saturating: an absurd count is refused by `validate`, not wrapped.
        self.fleet.days = self.warmup_days.saturating_add(days);
        self
    }

    /// Checks every size the scenario controls against [`limits`] (before
    /// [`run`] allocates anything), then the rest of its fields.
    pub fn validate(&self) -> Result<(), SimError> {
        use limits::*;
        let bad = |field, reason: String| Err(SimError::Bad { field, reason });
        let f = &self.fleet;
        if f.days > MAX_DAYS {
            return bad(
                "days",
                format!(
                    "{} simulated days (warm-up {} included); at most {MAX_DAYS}",
                    f.days, self.warmup_days
                ),
            );
        }
        for (field, n, max) in [
            ("fleet.devices", f.devices, MAX_DEVICES),
            ("fleet.topics", f.topics, MAX_TOPICS),
            ("fleet.sites", f.sites, MAX_SITES),
        ] {
            if n > max {
                return bad(field, format!("{n}; at most {max}"));
            }
        }
        if f.topics as u64 * f.days as u64 > MAX_TOPIC_DAYS {
            return bad(
                "fleet.topics",
                format!(
                    "{} topics over {} days is {} topic-days; at most {MAX_TOPIC_DAYS}",
                    f.topics,
                    f.days,
                    f.topics as u64 * f.days as u64
                ),
            );
        }
        if !(0.0..=MAX_FLASHES_PER_DAY).contains(&f.flashes_per_day) {
            return bad(
                "fleet.flashes_per_day",
                format!(
                    "{} must be within 0..={MAX_FLASHES_PER_DAY}",
                    f.flashes_per_day
                ),
            );
        }
        if self.fleet.devices == 0 || self.fleet.topics < 2 || self.fleet.sites == 0 {
            return bad(
                "fleet",
                "needs devices >= 1, sites >= 1 and topics >= 2".into(),
            );
        }
        if self.fleet.sites * 2 > self.fleet.topics {
            return bad("fleet.topics", "needs at least 2 topics per site".into());
        }
        if !self.fleet.zone_rate.is_finite()
            || self.fleet.zone_rate <= 0.0
            || self.fleet.zone_rate > 1e6
        {
            return bad(
                "fleet.zone_rate",
                format!("{} must be within (0, 1e6]", self.fleet.zone_rate),
            );
        }
        if self.cycle == 0 || self.cycle > 24 * 60 {
            return bad("cycle", format!("{} must be 1..=1440 minutes", self.cycle));
        }
        if self.lead > 24 * 60 {
            return bad(
                "lead",
                format!("{} must be at most 1440 minutes", self.lead),
            );
        }
        if self.warmup_days < 2 {
            return bad(
                "warmup_days",
                format!(
                    "{}: the forecaster needs at least 2 days of history",
                    self.warmup_days
                ),
            );
        }
        if !self.fleet.flashes_per_day.is_finite() || self.fleet.flashes_per_day < 0.0 {
            return bad(
                "fleet.flashes_per_day",
                format!("{} must be >= 0", self.fleet.flashes_per_day),
            );
        }
        if self.fleet.days <= self.warmup_days {
            return bad("days", "must compare at least one day".into());
        }
        if !(0.0..=1.0).contains(&f.premium_sites) {
            return bad(
                "fleet.premium_sites",
                format!("{} must be a fraction within 0..=1", f.premium_sites),
            );
        }
        if let Err(e) = self.policy.check() {
            return bad("policy", e.to_string());
        }
        Ok(self.resources.validate()?)
    }
}

/// Totals of one strategy over the compared span.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Totals {
    pub strategy: &'static str,
    pub overload_minutes: u64,
    /// Of those, shard-minutes of shards holding premium devices (with
    /// `fleet.premium_sites`).
    pub premium_overload_minutes: u64,
    pub shard_hours: f64,
    pub copies: f64,
    pub wasted: f64,
    pub migrations: u64,
    pub replans: u64,
    /// Time spent planning (and forecasting, for predictive), seconds.
    pub planning_s: f64,
}

/// One strategy's series, one point per minute.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub shards: Vec<u32>,
    /// Highest shard load over capacity.
    pub max_utilisation: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub scenario: Scenario,
    pub totals: Vec<Totals>,
    pub traces: Vec<Trace>,
    /// Offered load per minute (messages/s, all topics).
    pub offered: Vec<f64>,
    pub static_shards: u32,
    pub elapsed_s: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Static,
    Reactive,
    Predictive,
}

/// A strategy's plan in force, in the form the per-minute accounting needs.
struct Live {
    kind: Kind,
    plan: Option<Plan>,
    /// Shards holding each topic's subscribers.
    topic_shards: Vec<Vec<u32>>,
    members: Vec<u32>,
    /// Whether each shard holds a premium device.
    premium: Vec<bool>,
    /// Planned subscribers of each topic (what they want to hear is not
    /// wasted).
    subscribers: Vec<u32>,
    /// Per device index of the fleet: its shard id (None: not in the plan).
    device_shard: Vec<Option<u32>>,
    totals: Totals,
    trace: Trace,
    overloaded_last_minute: bool,
}

impl Live {
    fn new(kind: Kind, topics: usize, devices: usize) -> Live {
        Live {
            kind,
            plan: None,
            topic_shards: vec![Vec::new(); topics],
            members: Vec::new(),
            premium: Vec::new(),
            subscribers: vec![0; topics],
            device_shard: vec![None; devices],
            totals: Totals {
                strategy: match kind {
                    Kind::Static => "static",
                    Kind::Reactive => "reactive",
                    Kind::Predictive => "predictive",
                },
                ..Default::default()
            },
            trace: Trace::default(),
            overloaded_last_minute: false,
        }
    }

    /// Installs an assignment (fleet device index -> shard id) and counts
    /// the devices whose shard id changed as migrations.
    fn install(&mut self, fleet: &Fleet, assignment: Vec<Option<u32>>) {
        let migrations = self
            .device_shard
            .iter()
            .zip(&assignment)
            .filter(|(old, new)| matches!((old, new), (Some(o), Some(n)) if o != n))
            .count();
        self.totals.migrations += migrations as u64;
        let shards = assignment
            .iter()
            .flatten()
            .max()
            .map_or(0, |&m| m as usize + 1);
        self.members = vec![0; shards];
        self.premium = vec![false; shards];
        self.subscribers.fill(0);
        for ts in &mut self.topic_shards {
            ts.clear();
        }
        for (d, s) in assignment.iter().enumerate() {
            if let Some(s) = *s {
                self.members[s as usize] += 1;
                self.premium[s as usize] |=
                    fleet.spec.premium_sites > 0.0 && fleet.sla(d) == "premium";
                for &t in &fleet.devices[d].subscriptions {
                    self.subscribers[t as usize] += 1;
                    let ts = &mut self.topic_shards[t as usize];
                    if !ts.contains(&s) {
                        ts.push(s);
                    }
                }
            }
        }
        self.device_shard = assignment;
    }

    /// Accounts one minute of traffic (`counts` messages per topic).
    fn minute(&mut self, counts: &[f64], capacity: f64) {
        let mut load = vec![0.0; self.members.len()];
        let mut copies = 0.0;
        let mut wanted = 0.0;
        for (t, ts) in self.topic_shards.iter().enumerate() {
            wanted += counts[t] * self.subscribers[t] as f64;
            for &s in ts {
                load[s as usize] += counts[t];
            }
            copies += counts[t] * ts.len().saturating_sub(1) as f64;
        }
        let mut over = 0;
        let mut max_u: f64 = 0.0;
        let mut reached = 0.0;
        let mut active = 0;
        for (s, &l) in load.iter().enumerate() {
            if self.members[s] == 0 {
                continue;
            }
            active += 1;
            let rate = l / 60.0;
            if rate > capacity {
                over += 1;
                self.totals.premium_overload_minutes += self.premium[s] as u64;
            }
            max_u = max_u.max(rate / capacity);
            reached += l * self.members[s] as f64;
        }
        self.totals.overload_minutes += over;
        self.totals.shard_hours += active as f64 / 60.0;
        self.totals.copies += copies;
        self.totals.wasted += (reached - wanted).max(0.0);
        self.trace.shards.push(active);
        self.trace.max_utilisation.push(max_u);
        self.overloaded_last_minute = over > 0;
    }
}

/// Progress callback: (minute done, minutes total).
pub type Progress<'a> = &'a mut dyn FnMut(u32, u32);

/// Runs a scenario.
pub fn run(sc: &Scenario, progress: Progress) -> Result<Report, SimError> {
    sc.validate()?;
    let started = Instant::now();
    let fleet = Fleet::generate(sc.fleet);
    let topics = fleet.topics.len();
    let devices = fleet.devices.len();
    let mut rng = Pcg64Mcg::seed_from_u64(sc.fleet.seed ^ 0x51_7cc1_b727_220a);
    let warm = sc.warmup_days * DAY;
    let end = sc.fleet.days * DAY;
    let cap = sc.resources.shard_capacity;
    let cap_eff = sc.resources.usable_capacity();
    // Per topic, 5-minute bucket counts: the forecaster's history.
    let mut history: Vec<Vec<f64>> = vec![Vec::new(); topics];
    let mut recent: VecDeque<Vec<f64>> = VecDeque::new();
    let mut peak_total: f64 = 0.0;
    for m in 0..warm {
        let counts = fleet.observe(m, &mut rng);
        peak_total = peak_total.max(counts.iter().sum::<f64>() / 60.0);
        record(&mut history, &mut recent, &counts, m);
        if m % 60 == 0 {
            progress(m, end);
        }
    }
    // Static: sites hashed onto enough shards for the warm-up's peak.
    let static_shards = ((peak_total / cap_eff).ceil() as u32).clamp(1, sc.resources.max_shards);
    let mut lives = [
        Live::new(Kind::Static, topics, devices),
        Live::new(Kind::Reactive, topics, devices),
        Live::new(Kind::Predictive, topics, devices),
    ];
    let assignment: Vec<Option<u32>> = (0..devices)
        .map(|d| {
            fleet
                .present(d, warm)
                .then(|| (planner::mix(fleet.devices[d].site as u64) % static_shards as u64) as u32)
        })
        .collect();
    lives[0].install(&fleet, assignment);
    let mut predictor = Predictor::new(topics, sc);
    let mut offered = Vec::new();
    for m in warm..end {
        let cycle_start = (m - warm).is_multiple_of(sc.cycle);
        if cycle_start || lives.iter().any(|l| l.overloaded_last_minute) {
            let nowcast = nowcast(&recent, topics);
            let present = fleet.present_devices(m);
            for live in lives.iter_mut().skip(1) {
                if !(cycle_start || live.overloaded_last_minute) {
                    continue;
                }
                let t0 = Instant::now();
                let mut resources = sc.resources.clone();
                let rates = match live.kind {
                    Kind::Predictive => {
                        // Merges closer to capacity: the forecast holds
                        // the rise hysteresis guards against.
                        resources = resources.foreseeing();
                        predictor.rates(m, &history, &nowcast)
                    }
                    _ => nowcast.clone(),
                };
                let mut w = fleet.workload(&present, m, &rates, resources);
                w.policy = sc.policy.clone();
                let inst = w.index()?;
                // A run through an overload goes on: the strategies are
                // compared by the overload they leave.
                let options = Options {
                    seed: sc.fleet.seed,
                    rounds: 2,
                    best_effort: true,
                };
                let out = planner::plan(&inst, live.plan.as_ref(), options)?;
                // Shards are compared across plans by id, so migrations
                // count real moves.
                let mut assignment = vec![None; devices];
                for (i, &d) in present.iter().enumerate() {
                    assignment[d] = Some(out.plan.shards[out.assignment[i] as usize].id);
                }
                live.install(&fleet, assignment);
                live.plan = Some(out.plan);
                live.totals.replans += 1;
                live.totals.planning_s += t0.elapsed().as_secs_f64();
            }
        }
        let counts = fleet.observe(m, &mut rng);
        offered.push(counts.iter().sum::<f64>() / 60.0);
        record(&mut history, &mut recent, &counts, m);
        for live in &mut lives {
            live.minute(&counts, cap);
        }
        if m % 60 == 0 {
            progress(m, end);
        }
    }
    progress(end, end);
    Ok(Report {
        scenario: sc.clone(),
        totals: lives.iter().map(|l| l.totals.clone()).collect(),
        traces: lives.iter().map(|l| l.trace.clone()).collect(),
        offered,
        static_shards,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// The predictive strategy's view of the coming minutes: per topic, the
/// forecaster's path, refitted every [`REFIT`] minutes on complete
/// buckets.
struct Predictor {
    paths: Vec<Vec<f64>>,
    /// Minute the paths start at (`None`: not fitted yet).
    at: Option<u32>,
    /// Buckets each path covers: a refit interval plus cycle and lead.
    len: usize,
    cycle: u32,
    lead: u32,
    calendar: forecast::Calendar,
}

/// Minutes between refits of the forecasts.
const REFIT: u32 = 60;

impl Predictor {
    fn new(topics: usize, sc: &Scenario) -> Predictor {
        Predictor {
            paths: vec![Vec::new(); topics],
            at: None,
            len: ((REFIT + sc.cycle + sc.lead).div_ceil(BUCKET) + 1) as usize,
            cycle: sc.cycle,
            lead: sc.lead,
            calendar: forecast::Calendar::new((DAY / BUCKET) as usize),
        }
    }

    fn refit(&mut self, history: &[Vec<f64>], m: u32) {
        let cal = &self.calendar;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = self.paths.len().div_ceil(threads).max(1);
        let len = self.len;
        std::thread::scope(|scope| {
            for (i, paths) in self.paths.chunks_mut(chunk).enumerate() {
                scope.spawn(move || {
                    for (j, path) in paths.iter_mut().enumerate() {
                        let y = &history[i * chunk + j];
                        *path = forecast::forecast_path(y, cal, len).1;
                    }
                });
            }
        });
        self.at = Some(m);
    }

    /// Rates (messages/s) to plan for at minute `m`: per topic, the
    /// forecast's peak from now to the end of cycle + lead, corrected by
    /// the forecast's current error against the nowcast (a flash under
    /// way, a level shift), so the plan follows the forecast up before a
    /// peak and down before a lull.
    fn rates(&mut self, m: u32, history: &[Vec<f64>], nowcast: &[f64]) -> Vec<f64> {
        let stale = self.at.is_none_or(|at| m - at >= REFIT);
        if stale && m.is_multiple_of(BUCKET) {
            self.refit(history, m);
        }
        let at = self
            .at
            .expect("fitted at the first cycle, on a bucket boundary");
        let from = ((m - at) / BUCKET) as usize;
        let to = (m + self.cycle + self.lead - at).div_ceil(BUCKET) as usize;
        let per_bucket = BUCKET as f64 * 60.0;
        self.paths
            .iter()
            .enumerate()
            .map(|(t, p)| {
                let last = p.len() - 1;
                let expected_now = match from {
                    0 => history[t].last().copied().unwrap_or(0.0),
                    k => p[(k - 1).min(last)],
                };
                let error = nowcast[t] * per_bucket - expected_now;
                let window = &p[from.min(last)..to.clamp(from.min(last) + 1, p.len())];
                forecast::peak_ahead(window, error, 1.0) / per_bucket
            })
            .collect()
    }
}

/// Adds a minute's counts to the 5-minute history and the recent window.
fn record(history: &mut [Vec<f64>], recent: &mut VecDeque<Vec<f64>>, counts: &[f64], m: u32) {
    for (h, &c) in history.iter_mut().zip(counts) {
        if m.is_multiple_of(BUCKET) {
            h.push(0.0);
        }
        *h.last_mut().expect("pushed") += c;
    }
    recent.push_back(counts.to_vec());
    if recent.len() > BUCKET as usize {
        recent.pop_front();
    }
}

/// Mean rate (messages/s) per topic over the recent window.
fn nowcast(recent: &VecDeque<Vec<f64>>, topics: usize) -> Vec<f64> {
    let n = recent.len().max(1) as f64 * 60.0;
    (0..topics)
        .map(|t| recent.iter().map(|r| r[t]).sum::<f64>() / n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_past_the_limits_are_refused_before_anything_is_allocated() {
        let mut progress = |_: u32, _: u32| {};
        let base = Scenario::builtin("small", 1).unwrap();
        let mut refused = |sc: Scenario, field: &str| match run(&sc, &mut progress) {
            Err(SimError::Bad { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {:?}", other.map(|r| r.totals)),
        };
        refused(base.clone().with_days(u32::MAX), "days");
        refused(base.clone().with_days(3_000_000), "days");
        let mut sc = base.clone();
        sc.warmup_days = u32::MAX;
        refused(sc.with_days(1), "days");
        let mut sc = base.clone();
        sc.fleet.devices = usize::MAX;
        refused(sc, "fleet.devices");
        let mut sc = base.clone();
        sc.fleet.topics = 1 << 40;
        refused(sc, "fleet.topics");
        let mut sc = base.clone();
        sc.fleet.sites = 1 << 40;
        refused(sc, "fleet.sites");
        let mut sc = base.clone();
        sc.fleet.flashes_per_day = 1e9;
        refused(sc, "fleet.flashes_per_day");
        let mut sc = base;
        sc.fleet.topics = 50_000;
        refused(sc.with_days(300), "fleet.topics");
    }

    #[test]
    fn runs_deterministically_and_accounts_every_minute() {
        let sc = Scenario::builtin("small", 1).unwrap();
        let mut calls = 0;
        let a = run(&sc, &mut |_, _| calls += 1).unwrap();
        assert!(calls > 24, "progress is reported");
        let b = run(&sc, &mut |_, _| {}).unwrap();
        assert_eq!(
            a.totals
                .iter()
                .map(|t| t.overload_minutes)
                .collect::<Vec<_>>(),
            b.totals
                .iter()
                .map(|t| t.overload_minutes)
                .collect::<Vec<_>>()
        );
        assert_eq!(a.traces[2].shards, b.traces[2].shards);
        assert_eq!(a.offered.len(), 1440);
        for (t, tr) in a.totals.iter().zip(&a.traces) {
            assert_eq!(tr.shards.len(), 1440, "{}", t.strategy);
            let hours: f64 = tr.shards.iter().map(|&s| s as f64 / 60.0).sum();
            assert!((hours - t.shard_hours).abs() < 1e-6);
        }
        let st = &a.totals[0];
        assert_eq!((st.migrations, st.replans), (0, 0));
        // The planners re-plan at least every cycle.
        assert!(a.totals[1].replans >= 1440 / 15 && a.totals[2].replans >= 1440 / 15);
    }

    #[test]
    fn bad_scenarios_are_refused() {
        assert!(matches!(
            Scenario::builtin("nope", 1),
            Err(SimError::Unknown(_))
        ));
        let mut sc = Scenario::builtin("small", 1).unwrap();
        sc.warmup_days = 1;
        sc.fleet.days = 2;
        assert!(
            run(&sc, &mut |_, _| {})
                .unwrap_err()
                .to_string()
                .contains("warmup_days")
        );
        let mut sc = Scenario::builtin("small", 1).unwrap();
        sc.resources.shard_capacity = -1.0;
        assert!(
            run(&sc, &mut |_, _| {})
                .unwrap_err()
                .to_string()
                .contains("shard_capacity")
        );
        let mut sc = Scenario::builtin("small", 1).unwrap();
        sc.cycle = 0;
        assert!(
            run(&sc, &mut |_, _| {})
                .unwrap_err()
                .to_string()
                .contains("cycle")
        );
    }
}

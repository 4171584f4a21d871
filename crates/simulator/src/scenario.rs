//! Seeded synthetic IoT fleets: the workloads of the simulator and of the
//! planner benchmark. A seed and a [`FleetSpec`] name the same fleet and
//! the same traffic everywhere (PCG streams are fixed across platforms).
//!
//! A fleet is a set of **sites** (buildings). Each site has one site-wide
//! topic (`s7/alerts`, every device of the site subscribes) and zone topics
//! (`s7/z12`); a device subscribes to its zone, its site's alerts, with
//! probability 0.3 the neighbouring zone and with probability 0.02 a
//! zone of the next site (the cross-site traffic that forces copies).
//! Rates follow:
//! - a **diurnal** cycle per site (peak hour 8..20, a Gaussian bump over a
//!   30 % floor; sites sit in different "time zones");
//! - a **weekly** cycle: office sites drop to 40 % on weekends, home sites
//!   rise to 130 %;
//! - a **scheduled sync**: each site's zones burst to 3x for 20 minutes at
//!   the same minute every day (predictable from history);
//! - **flash events**: random site-wide bursts, 2-4x for 20-60 minutes,
//!   `flashes_per_day` across the fleet (default 2; not predictable);
//! - Poisson counting noise on what is observed.
//!
//! Devices: 90 % exist from the start, 10 % join at random minutes, 5 %
//! leave at random minutes; half are on battery, draining from 100 % to
//! 10 % over 2-6 days and then recharged.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Poisson};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use shardcast_planner::workload::{CostWeights, Device, Resources, TopicLoad, Workload};

const DAY: u32 = 1440;

/// The size and randomness of a fleet.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    pub seed: u64,
    pub sites: usize,
    pub devices: usize,
    pub topics: usize,
    /// Mean zone-topic rate (messages/s) at a site of average scale.
    #[serde(default = "one")]
    pub zone_rate: f64,
    /// Length of the traffic trace flash events are drawn for (days).
    #[serde(default = "seven")]
    pub days: u32,
    /// Flash events per day across the fleet.
    #[serde(default = "two")]
    pub flashes_per_day: f64,
    /// Fraction of sites whose devices are of service class `premium`
    /// (the others `standard`); 0: devices carry no class. Sites are
    /// picked by a hash of the seed and the site, so the fleet and its
    /// traffic are the same with or without classes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub premium_sites: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn one() -> f64 {
    1.0
}
fn seven() -> u32 {
    7
}
fn two() -> f64 {
    2.0
}

#[derive(Clone, Debug)]
pub struct Site {
    /// Minute of the day traffic peaks.
    pub peak: u32,
    pub scale: f64,
    pub office: bool,
    /// Minute of the day of the scheduled sync.
    pub sync: u32,
}

#[derive(Clone, Debug)]
pub struct FleetDevice {
    pub id: String,
    pub site: u32,
    pub address: String,
    pub subscriptions: Vec<u32>,
    pub joins: u32,
    pub leaves: Option<u32>,
    /// `None`: mains powered; else (minute of first full charge, days a
    /// charge lasts).
    pub battery: Option<(u32, f64)>,
}

#[derive(Clone, Debug)]
pub struct Flash {
    pub site: u32,
    pub start: u32,
    pub len: u32,
    pub factor: f64,
}

/// A generated fleet: structure plus the rate model over time.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub spec: FleetSpec,
    pub sites: Vec<Site>,
    /// Whether each site's devices are of the premium class.
    pub premium: Vec<bool>,
    pub topics: Vec<String>,
    pub topic_site: Vec<u32>,
    /// Whether a topic is a site's alerts topic (no scheduled sync on it).
    pub topic_alerts: Vec<bool>,
    pub base_rate: Vec<f64>,
    pub devices: Vec<FleetDevice>,
    pub flashes: Vec<Flash>,
}

impl Fleet {
    pub fn generate(spec: FleetSpec) -> Fleet {
        let mut rng = Pcg64Mcg::seed_from_u64(spec.seed);
        let sites_n = spec.sites.max(1);
        let per_site = (spec.topics / sites_n).max(2);
        let scale = LogNormal::new(0.0, 0.4).expect("valid");
        let zone = LogNormal::new(-0.5f64 * 0.5 * 0.5, 0.5).expect("valid");
        let sites: Vec<Site> = (0..sites_n)
            .map(|_| Site {
                peak: rng.random_range(8 * 60..20 * 60),
                scale: scale.sample(&mut rng),
                office: rng.random_bool(0.6),
                sync: rng.random_range(0..DAY),
            })
            .collect();
        let mut topics = Vec::new();
        let mut topic_site = Vec::new();
        let mut topic_alerts = Vec::new();
        let mut base_rate = Vec::new();
        for (s, site) in sites.iter().enumerate() {
            for z in 0..per_site {
                if z == 0 {
                    topics.push(format!("s{s}/alerts"));
                    base_rate.push(0.2 * spec.zone_rate * site.scale);
                } else {
                    topics.push(format!("s{s}/z{z}"));
                    base_rate.push(spec.zone_rate * site.scale * zone.sample(&mut rng));
                }
                topic_site.push(s as u32);
                topic_alerts.push(z == 0);
            }
        }
        let end = spec.days * DAY;
        let devices = (0..spec.devices)
            .map(|i| {
                let site = rng.random_range(0..sites_n);
                let first = (site * per_site) as u32;
                let zone =
                    |rng: &mut Pcg64Mcg, base: u32| base + rng.random_range(1..per_site as u32);
                let own = zone(&mut rng, first);
                let mut subscriptions = vec![first, own];
                if rng.random_bool(0.3) {
                    // Near a zone boundary: the neighbouring zone too.
                    let z = own - first;
                    subscriptions.push(first + z % (per_site as u32 - 1) + 1);
                }
                if sites_n > 1 && rng.random_bool(0.02) {
                    let next = (((site + 1) % sites_n) * per_site) as u32;
                    subscriptions.push(zone(&mut rng, next));
                }
                subscriptions.sort_unstable();
                subscriptions.dedup();
                let joins = if rng.random_bool(0.1) {
                    rng.random_range(0..end.max(1))
                } else {
                    0
                };
                let leaves = rng
                    .random_bool(0.05)
                    .then(|| rng.random_range(joins..end.max(joins + 1)));
                let battery = rng
                    .random_bool(0.5)
                    .then(|| (rng.random_range(0..DAY * 3), rng.random_range(2.0..6.0)));
                FleetDevice {
                    id: format!("dev-{i}"),
                    site: site as u32,
                    address: addr(i),
                    subscriptions,
                    joins,
                    leaves,
                    battery,
                }
            })
            .collect();
        let flashes_n = (spec.days as f64 * spec.flashes_per_day).round() as usize;
        let flashes = (0..flashes_n)
            .map(|_| Flash {
                site: rng.random_range(0..sites_n) as u32,
                start: rng.random_range(0..end.max(1)),
                len: rng.random_range(20..=60),
                factor: rng.random_range(2.0..4.0),
            })
            .collect();
        let premium = (0..sites.len())
            .map(|s| {
                let draw = shardcast_planner::mix(spec.seed ^ ((s as u64) << 20)) % 1_000_000;
                spec.premium_sites > 0.0 && (draw as f64) < spec.premium_sites * 1e6
            })
            .collect();
        Fleet {
            spec,
            premium,
            sites,
            topics,
            topic_site,
            topic_alerts,
            base_rate,
            devices,
            flashes,
        }
    }

    /// Expected rate (messages/s) of every topic at `minute` (site factors
    /// computed once per site).
    pub fn rates(&self, minute: u32) -> Vec<f64> {
        let factors: Vec<(f64, f64)> = (0..self.sites.len())
            .map(|s| (self.site_factor(s, minute), self.sync_factor(s, minute)))
            .collect();
        (0..self.topics.len())
            .map(|t| self.topic_rate(t, factors[self.topic_site[t] as usize]))
            .collect()
    }

    /// Expected rate (messages/s) of topic `t` at `minute`.
    pub fn rate(&self, t: usize, minute: u32) -> f64 {
        let s = self.topic_site[t] as usize;
        self.topic_rate(
            t,
            (self.site_factor(s, minute), self.sync_factor(s, minute)),
        )
    }

    /// A topic's rate given its site's (diurnal x weekly x flash, sync)
    /// factors: alerts topics have no scheduled sync.
    fn topic_rate(&self, t: usize, (site, sync): (f64, f64)) -> f64 {
        let sync = if self.topic_alerts[t] { 1.0 } else { sync };
        self.base_rate[t] * site * sync
    }

    fn site_factor(&self, s: usize, minute: u32) -> f64 {
        let site = &self.sites[s];
        let tod = (minute % DAY) as f64;
        // Distance to the peak around the clock, in hours.
        let d = ((tod - site.peak as f64).rem_euclid(DAY as f64))
            .min((site.peak as f64 - tod).rem_euclid(DAY as f64))
            / 60.0;
        let diurnal = 0.3 + 0.7 * (-(d / 3.5).powi(2) / 2.0).exp();
        let weekday = (minute / DAY) % 7;
        let weekly = match (weekday >= 5, site.office) {
            (true, true) => 0.4,
            (true, false) => 1.3,
            _ => 1.0,
        };
        let mut flash = 1.0;
        for f in &self.flashes {
            if f.site as usize == s && minute >= f.start && minute < f.start + f.len {
                // Five-minute ramp up: a flash builds, it does not jump.
                let ramp = ((minute - f.start) as f64 / 5.0).min(1.0);
                flash *= 1.0 + (f.factor - 1.0) * ramp;
            }
        }
        diurnal * weekly * flash
    }

    fn sync_factor(&self, s: usize, minute: u32) -> f64 {
        let tod = minute % DAY;
        let since = (tod + DAY - self.sites[s].sync) % DAY;
        if since < 20 { 3.0 } else { 1.0 }
    }

    /// Messages counted in one minute per topic (Poisson around the rate).
    pub fn observe(&self, minute: u32, rng: &mut Pcg64Mcg) -> Vec<f64> {
        self.rates(minute)
            .iter()
            .map(|&r| {
                let mean = r * 60.0;
                if mean <= 0.0 {
                    0.0
                } else {
                    Poisson::new(mean).map_or(mean, |p| p.sample(rng))
                }
            })
            .collect()
    }

    /// Whether a device is part of the fleet at `minute`.
    pub fn present(&self, d: usize, minute: u32) -> bool {
        let dev = &self.devices[d];
        dev.joins <= minute && dev.leaves.is_none_or(|l| minute < l)
    }

    /// Charge of a device at `minute` (1 for mains power).
    pub fn battery(&self, d: usize, minute: u32) -> f64 {
        match self.devices[d].battery {
            None => 1.0,
            Some((charged, days)) => {
                let age = (minute + DAY * 3 - charged) as f64 / (days * DAY as f64);
                1.0 - 0.9 * age.fract()
            }
        }
    }

    /// Device `d`'s service class (`premium` or `standard`).
    pub fn sla(&self, d: usize) -> &'static str {
        if self.premium[self.devices[d].site as usize] {
            "premium"
        } else {
            "standard"
        }
    }

    /// The devices that are part of the fleet at `minute`.
    pub fn present_devices(&self, minute: u32) -> Vec<usize> {
        (0..self.devices.len())
            .filter(|&d| self.present(d, minute))
            .collect()
    }

    /// The planner's input for `devices` (fleet indices, in the order the
    /// workload lists them) at `minute`, with the given topic rates.
    pub fn workload(
        &self,
        devices: &[usize],
        minute: u32,
        rates: &[f64],
        resources: Resources,
    ) -> Workload {
        Workload {
            resources,
            cost: CostWeights::default(),
            topics: self
                .topics
                .iter()
                .zip(rates)
                .map(|(name, &rate)| TopicLoad {
                    name: name.clone(),
                    rate,
                    mqttsn_predefined_id: None,
                })
                .collect(),
            devices: devices
                .iter()
                .map(|&d| {
                    let dev = &self.devices[d];
                    Device {
                        id: dev.id.clone(),
                        group: Some(format!("s{}", dev.site)),
                        address: Some(dev.address.clone()),
                        subscriptions: dev
                            .subscriptions
                            .iter()
                            .map(|&t| self.topics[t as usize].clone())
                            .collect(),
                        connected: true,
                        battery: self.battery(d, minute),
                        // Its zone topic's name is its place: `s<site>/z<zone>`.
                        location: dev
                            .subscriptions
                            .iter()
                            .find(|&&t| {
                                self.topic_site[t as usize] == dev.site
                                    && !self.topic_alerts[t as usize]
                            })
                            .map(|&t| self.topics[t as usize].clone()),
                        kind: None,
                        sla: (self.spec.premium_sites > 0.0).then(|| self.sla(d).to_string()),
                    }
                })
                .collect(),
            policy: Default::default(),
        }
    }
}

/// Device `i`'s address: 198.18.0.0/15 holds 131072; beyond it, IPv6
/// documentation space keeps a million devices unique.
fn addr(i: usize) -> String {
    if i < 1 << 17 {
        let v = (198u32 << 24) | (18 << 16) | i as u32;
        std::net::Ipv4Addr::from(v).to_string()
    } else {
        format!("2001:db8::{:x}:{:x}", i >> 16, i & 0xffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> FleetSpec {
        FleetSpec {
            seed: 3,
            sites: 4,
            devices: 200,
            topics: 40,
            zone_rate: 1.0,
            days: 7,
            flashes_per_day: 2.0,
            premium_sites: 0.0,
        }
    }

    #[test]
    fn same_seed_same_fleet() {
        let a = Fleet::generate(small());
        let b = Fleet::generate(small());
        assert_eq!(a.topics, b.topics);
        assert_eq!(a.base_rate, b.base_rate);
        assert_eq!(a.rates(600), b.rates(600));
        let c = Fleet::generate(FleetSpec { seed: 4, ..small() });
        assert_ne!(a.base_rate, c.base_rate);
    }

    #[test]
    fn workload_is_valid() {
        let f = Fleet::generate(small());
        let present = f.present_devices(0);
        // 90% exist from the start (200 devices: allow sampling spread).
        assert!((160..=200).contains(&present.len()), "{}", present.len());
        let w = f.workload(
            &present,
            0,
            &f.rates(0),
            shardcast_planner::workload::Resources {
                shard_capacity: 100.0,
                max_shards: 16,
                headroom: 0.2,
                merge_below: 0.5,
                bandwidth: None,
                max_migrations: 1000,
                egress: "eth1".into(),
                group_v4_base: "239.1.0.0".into(),
                group_v6_base: None,
            },
        );
        assert_eq!(w.devices.len(), present.len());
        w.index().expect("generated workloads are valid");
    }

    #[test]
    fn cycles_syncs_and_flashes_shape_the_rates() {
        let f = Fleet::generate(FleetSpec {
            flashes_per_day: 0.0,
            premium_sites: 0.0,
            ..small()
        });
        for (s, site) in f.sites.iter().enumerate() {
            // Diurnal: peak well above the night (weekday 0).
            let night = (site.peak + DAY / 2) % DAY;
            assert!(f.site_factor(s, site.peak) > 2.0 * f.site_factor(s, night));
            // Weekly: day 5 is a weekend day.
            let (wd, we) = (
                f.site_factor(s, site.peak),
                f.site_factor(s, 5 * DAY + site.peak),
            );
            let want = if site.office { 0.4 } else { 1.3 };
            assert!((we / wd - want).abs() < 1e-9, "site {s}: {}", we / wd);
            // The scheduled sync: 3x for 20 minutes, every day.
            assert_eq!(f.sync_factor(s, DAY + site.sync), 3.0);
            assert_eq!(f.sync_factor(s, DAY + site.sync + 19), 3.0);
            assert_eq!(f.sync_factor(s, DAY + site.sync + 20), 1.0);
        }
        // A flash multiplies its site's traffic once its ramp is up.
        let mut g = f.clone();
        g.flashes.push(Flash {
            site: 0,
            start: 600,
            len: 30,
            factor: 3.0,
        });
        assert!((g.site_factor(0, 610) / f.site_factor(0, 610) - 3.0).abs() < 1e-9);
        assert_eq!(g.site_factor(0, 630), f.site_factor(0, 630));
    }
}

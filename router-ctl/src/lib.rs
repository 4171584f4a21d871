//! shardcast control plane: the daemon and the command line.
//!
//! The work is done by the library crates under `crates/`
//! ([`shardcast_dataplane`] owns every interaction with the kernel,
//! [`shardcast_plan`] the routing-state document, [`shardcast_forecast`],
//! [`shardcast_planner`] and [`shardcast_sim`] the predictions, plans and
//! simulations); this crate holds what ties them together on a router:
//! the daemon's [`config`], the [`daemon`] itself, the [`devices`] its
//! gateway reports, its [`history`] store,
//! the MQTT-SN [`gateway`] it runs, its latency [`probe`]s, the [`state`] files the CLI and the
//! daemon share, and the [`cli`].
//!
//! ```no_run
//! use shardcast_dataplane::{Dataplane, DEFAULT_PIN_ROOT};
//! use shardcast_plan::Plan;
//! let plan = Plan::from_file("plan.json".as_ref())?.compile()?;
//! let mut dp = Dataplane::open(DEFAULT_PIN_ROOT.as_ref())?;
//! let report = dp.install(&plan, false)?;
//! println!("generation {} installed in {:?}", report.generation, report.total);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod cli;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod devices;
pub mod gateway;
pub mod history;
pub mod load;
pub mod metrics;
pub mod migrate;
pub mod probe;
pub mod state;
mod tick_routes;

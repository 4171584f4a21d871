//! shardcast control plane.
//!
//! `router-ctl` is a thin binary over this library: [`dataplane`] owns every
//! interaction with the kernel (load, pin, attach, atomic plan swaps,
//! counters); [`plan`] defines and validates the routing-state document;
//! [`cli`] turns commands into calls.
//!
//! ```no_run
//! use router_ctl::{dataplane::Dataplane, plan::Plan};
//! let plan = Plan::from_file("plan.json".as_ref())?.compile()?;
//! let mut dp = Dataplane::open(router_ctl::dataplane::DEFAULT_PIN_ROOT.as_ref())?;
//! let report = dp.install(&plan, false)?;
//! println!("generation {} installed in {:?}", report.generation, report.total);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod forecast;
pub mod history;
pub mod netns;
pub mod plan;
pub mod planner;
pub mod records;
pub mod scenario;
pub mod simulate;
pub mod workload;

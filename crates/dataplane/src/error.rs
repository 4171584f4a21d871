//! The data plane's errors: each names the map, program, pin, interface or
//! file that is wrong.

use std::path::PathBuf;

use aya::{maps::MapError, programs::ProgramError};
use router_common::maps::{LAYOUT_VERSION, MAX_EGRESS, MAX_TOPICS};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("must run as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    NotRoot,
    #[error("interface {0:?} does not exist in this network namespace")]
    NoInterface(String),
    #[error("eBPF object {path} is missing: run `cargo xtask build-ebpf` or pass --object")]
    ObjectMissing { path: PathBuf },
    #[error("bpffs is not mounted at {0} (mount -t bpf bpf {0}, or `cargo xtask setup`)")]
    NoBpffs(PathBuf),
    #[error("no shardcast data plane is pinned at {0}: run `router-ctl attach` first")]
    NotAttached(PathBuf),
    #[error(
        "pins of map layout {found} exist at {path}; this router-ctl uses layout v{LAYOUT_VERSION}. \
         Detach them with the router-ctl that made them (or remove {path}) first"
    )]
    OtherLayout { found: String, path: PathBuf },
    #[error("{iface} already has a shardcast program attached (pin {path})")]
    AlreadyAttached { iface: String, path: PathBuf },
    #[error(
        "the data plane pinned at {path} fans multi-shard publishes out by XDP broadcast, which \
         generic (skb) XDP cannot carry (it keeps no metadata for the copy program): attach in \
         driver mode, or detach and attach again with --fanout tc"
    )]
    BroadcastInSkbMode { path: PathBuf },
    #[error("pinned map {name} does not match layout v{LAYOUT_VERSION}: {reason}")]
    PinMismatch { name: &'static str, reason: String },
    #[error("cannot load eBPF object {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("pin {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("egress table is full ({MAX_EGRESS} interfaces)")]
    EgressFull,
    #[error("compiled plan: {0}")]
    BadPlan(String),
    #[error("topic counter slots are exhausted ({MAX_TOPICS})")]
    SlotsFull,
    #[error("plan generation {new} is not newer than installed generation {installed}")]
    StaleGeneration { new: u64, installed: u64 },
    #[error("cannot read the MAC address of {iface}: {reason}")]
    NoMac { iface: String, reason: String },
    #[error("map {name}: batch operation failed: {source}")]
    Batch {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("map {name}: cannot map it into memory: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("map {name}: iterator read failed: {source}")]
    Iter {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("router config: {0}")]
    Config(String),
    #[error("eBPF object not found (tried {tried}); run `cargo xtask build-ebpf` or pass --object")]
    ObjectNotFound { tried: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub(crate) type Result<T, E = DataplaneError> = std::result::Result<T, E>;

pub(crate) fn batch_err(name: &'static str, e: std::io::Error) -> DataplaneError {
    DataplaneError::Batch { name, source: e }
}

pub(crate) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

pub(crate) fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program { name, source }
}

pub(crate) fn verifier_message(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!(
                "{io_error}; verifier log (tail):\n{}",
                tail(&verifier_log.to_string(), 40)
            )
        }
        other => other.to_string(),
    }
}

pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

//! The data plane as the control plane sees it: the only module that talks
//! to aya and the kernel's BPF syscalls.
//!
//! It loads the XDP object, pins programs, maps and links under
//! `<pin root>/v<LAYOUT_VERSION>/` (default `/sys/fs/bpf/shardcast/v4/`) so
//! forwarding outlives the process, adopts those pins later, installs plan
//! generations atomically, and reads counters.
//!
//! ## Generation swap
//! Each routing table lives in a two-slot `ArrayOfMaps`; `SC_ACTIVE` names
//! the slot packets use. [`Dataplane::install`]:
//! 1. prepares the idle slot's inner maps off to the side: *fresh* maps
//!    filled with the whole plan, or, in incremental mode (the daemon), the
//!    map already in the idle slot with only the differences written (that
//!    slot is idle: no packet reads it);
//! 2. puts fresh maps into the idle slot of the outer maps;
//! 3. flips `SC_ACTIVE` to that slot (one 4-byte write: a packet reads it
//!    once and routes wholly by that slot; a route carries its first
//!    shard's data, so the fast path makes a single lookup in it);
//! 4. waits an RCU grace period, so that when `install` returns no program
//!    still runs with the old map: an update of a map-of-maps returns only
//!    after one (`synchronize_rcu` in the kernel). In full mode that update
//!    points the old slot at the new map as well (a packet holding the old
//!    parity then finds one generation or the other, never a mix) and so
//!    frees the old map; in incremental mode the new slot is rewritten and
//!    the old map kept, to be brought up to date by the next install.
//!
//! A failure before step 3 leaves the installed generation untouched.

use std::{
    collections::BTreeMap,
    ffi::CString,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        Array, ArrayOfMaps, DevMap, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues,
    },
    programs::{
        Iter, Program, ProgramError, TestRun, TestRunOptions, Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpMode,
    },
};
use aya_obj::programs::XdpAttachType;
use router_common::{
    maps::{
        CONFIG_GROUP_STATS, Config, Counter, DeviceAddr, GroupStatKey, GroupStatRecord,
        IDS_MAP_FLAGS, LAYOUT_VERSION, MAX_EGRESS, MAX_ROUTES, MAX_SHARDS, MAX_TOPICS,
        MQTTSN_ID_ROUTES, Meta, PREFIX_MAX, ROUTES_MAP_FLAGS, Route, SHARD_HAS_V4, SHARD_HAS_V6,
        Shard, names,
    },
    reason::Reason,
    topic::TopicKey,
};

use crate::plan::CompiledPlan;
use rustc_hash::{FxHashMap as StdHashMap, FxHashSet as HashSet};

mod batch;
mod iter;
mod mmap;

/// Default root of the pins; the layout version is appended.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/shardcast";

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
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn batch_err(name: &'static str, e: std::io::Error) -> DataplaneError {
    DataplaneError::Batch { name, source: e }
}

/// Route capacity of a fresh inner map for a plan of `routes` keys: room to
/// grow (a daemon updates the map in place while plans stay within it),
/// never beyond the template's `MAX_ROUTES`.
///
/// Why not always `MAX_ROUTES`: the kernel sizes a hash map's bucket array
/// by its capacity (a power of two), and creating and zeroing 2M buckets
/// takes ~17 ms, while every insert into a 32 MiB bucket array misses the
/// cache. Inner hash maps may differ from the template in capacity alone
/// (since Linux 5.10; type, sizes and flags must match).
pub fn routes_capacity(routes: usize) -> u32 {
    let want = (routes.max(1).next_power_of_two() as u64 * 2).max(4096);
    want.min(MAX_ROUTES as u64) as u32
}

/// What a worker thread returned, or an error saying it panicked.
fn joined<T>(r: std::thread::Result<T>, what: &str) -> Result<T> {
    r.map_err(|_| DataplaneError::Io(std::io::Error::other(format!("{what} panicked"))))
}

/// Issues the BPF command `cmd` with `attr`, a member of `union bpf_attr`
/// (include/uapi/linux/bpf.h) holding only integers and pointers to live
/// buffers the command reads or fills. Returns the non-negative result (a
/// new descriptor, for the commands that make one). The one raw `bpf()`
/// call of this module and its children.
fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised `bpf_attr` member of the size
    // we pass; the pointers in it reference buffers of the sizes the
    // kernel derives from the command, the map and the counts it holds.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as u32) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A fresh, empty inner map for the outer map `outer` (type, key and value
/// sizes and flags must be the template's).
fn create_inner<K, V>(
    map_type: aya_obj::generated::bpf_map_type,
    entries: u32,
    flags: u32,
    kernel_name: &str,
    outer: &'static str,
) -> Result<MapData> {
    MapData::create(
        aya_obj::Map::new_from_params(
            map_type as u32,
            size_of::<K>() as u32,
            size_of::<V>() as u32,
            entries,
            flags,
        ),
        kernel_name,
        None,
    )
    .map_err(map_err(outer))
}

/// A fresh, empty inner routes map (same shape as the template).
fn create_routes_map(capacity: u32) -> Result<MapData> {
    create_inner::<TopicKey, Route>(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH,
        capacity,
        ROUTES_MAP_FLAGS,
        "sc_routes",
        names::ROUTES,
    )
}

/// Logs how long each phase of an install took (`RUST_LOG=router_ctl=debug`).
struct Phases {
    last: std::time::Instant,
}

impl Phases {
    fn new() -> Self {
        Self {
            last: std::time::Instant::now(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        tracing::debug!(phase, elapsed = ?(now - self.last), "install");
        self.last = now;
    }
}

/// An IP address as `SC_DEVICES` keys it.
fn device_addr(a: std::net::IpAddr) -> DeviceAddr {
    match a {
        std::net::IpAddr::V4(v4) => DeviceAddr::v4(v4.octets()),
        std::net::IpAddr::V6(v6) => DeviceAddr { addr: v6.octets() },
    }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program { name, source }
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Native (driver) XDP: the fast path on real NICs and veth.
    Driver,
    /// Generic (skb) XDP: works everywhere, slower.
    Skb,
}

impl Mode {
    fn xdp(self) -> XdpMode {
        match self {
            Mode::Driver => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        }
    }
}

/// Router settings written to `SC_CONFIG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    pub mqttsn_port: u16,
    pub coap_port: u16,
    /// Normalised CoAP prefix (see [`crate::plan::normalize_prefix`]).
    pub coap_prefix: String,
    /// Count routed publishes per (topic, device group) as well
    /// (`CONFIG_GROUP_STATS`): costs the fast path a lookup or two.
    pub group_stats: bool,
    /// Count one publish in this many for the group counters (1: all).
    pub group_sample: u32,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            mqttsn_port: Config::DEFAULT_MQTTSN_PORT,
            coap_port: Config::DEFAULT_COAP_PORT,
            coap_prefix: Config::DEFAULT_PREFIX.to_string(),
            group_stats: false,
            group_sample: 1,
        }
    }
}

impl RouterConfig {
    fn to_map(&self) -> Config {
        let mut prefix = [0u8; PREFIX_MAX];
        let b = self.coap_prefix.as_bytes();
        prefix[..b.len()].copy_from_slice(b);
        Config {
            mqttsn_port: self.mqttsn_port,
            coap_port: self.coap_port,
            prefix_len: b.len() as u32,
            prefix,
            flags: if self.group_stats {
                CONFIG_GROUP_STATS
            } else {
                0
            },
            group_sample: self.group_sample,
            prefix_start: router_common::coap::PrefixStart::encode(b),
        }
    }

    fn from_map(c: &Config) -> Self {
        Self {
            mqttsn_port: c.mqttsn_port,
            coap_port: c.coap_port,
            coap_prefix: String::from_utf8_lossy(c.prefix()).into_owned(),
            group_stats: c.flags & CONFIG_GROUP_STATS != 0,
            group_sample: c.group_sample.max(1),
        }
    }
}

/// Where the pins of one layout version live.
#[derive(Clone, Debug)]
pub struct PinPaths {
    root: PathBuf,
    dir: PathBuf,
}

impl PinPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let dir = root.join(format!("v{LAYOUT_VERSION}"));
        Self { root, dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn prog(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn link(&self, prog: &str, iface: &str) -> PathBuf {
        self.dir.join(format!("link_{prog}_{iface}"))
    }

    /// Layout directories other than ours (e.g. `v0` left by an older build).
    fn other_layouts(&self) -> Vec<String> {
        let ours = format!("v{LAYOUT_VERSION}");
        std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with('v') && *n != ours)
            .collect()
    }
}

/// What `attach` needs.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub object: PathBuf,
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
    pub mode: Mode,
    pub config: RouterConfig,
}

type RoutesMap = HashMap<MapData, TopicKey, Route>;
type IdsMap = Array<MapData, Route>;
type ShardsMap = Array<MapData, Shard>;

/// Handles to every map of the data plane.
pub struct Dataplane {
    /// Present when this process loaded the object (tests, benchmarks,
    /// `attach`); absent when adopted from pins.
    ebpf: Option<Ebpf>,
    pins: Option<PinPaths>,
    config: Array<MapData, Config>,
    active: Array<MapData, u32>,
    meta: Array<MapData, Meta>,
    routes: ArrayOfMaps<MapData, RoutesMap>,
    shards: ArrayOfMaps<MapData, ShardsMap>,
    egress: DevMap<MapData>,
    reasons: PerCpuArray<MapData, Counter>,
    topic_stats: PerCpuArray<MapData, Counter>,
    unrouted: PerCpuHashMap<MapData, TopicKey, Counter>,
    /// Second handles on maps read or written in batches (see `batch`),
    /// which need the raw descriptor the typed maps keep to themselves.
    raw_devices: MapData,
    raw_group_stats: MapData,
    /// `SC_SLOTS`, mapped (see `mmap`).
    slots: mmap::ArrayMmap<TopicKey>,
    /// The `SC_GROUP_STATS` iterator program, when the kernel could load it
    /// (it needs the kernel's BTF); without it counters are read in batches.
    group_dump: Option<OwnedFd>,
    /// `SC_ROUTES` again, for the update [`Dataplane::install`] finishes on
    /// a thread.
    raw_routes: MapData,
    /// `SC_IDS`, the MQTT-SN id arrays' outer map (written with raw
    /// descriptors only).
    raw_ids: MapData,
    /// That update, until joined (see [`Dataplane::settle`]).
    settling: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// See [`Dataplane::set_incremental`].
    incremental: bool,
    /// This process's copy of `SC_SLOTS`, valid at the `Meta` it was taken.
    slot_cache: std::cell::RefCell<Option<(Meta, StdHashMap<TopicKey, u32>)>>,
    /// The slot table an install in progress made, cached once its `Meta`
    /// is written.
    pending_slots: Option<StdHashMap<TopicKey, u32>>,
    /// The shard table this process last wrote to each slot.
    written_shards: [Option<Vec<Shard>>; 2],
    /// Per outer slot: the generation this process wrote there, its routes,
    /// and a handle on that inner map.
    written: [Option<Written>; 2],
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::warn!("last routes slot update: {e}");
        }
    }
}

/// What this process last wrote to one routes slot.
struct Written {
    generation: u64,
    /// The inner map's route capacity (see [`routes_capacity`]).
    capacity: u32,
    entries: StdHashMap<TopicKey, Route>,
    map: MapData,
    /// The slot's MQTT-SN id array and what this process wrote there.
    ids: IdArray,
    id_entries: StdHashMap<u32, Route>,
}

/// One generation's MQTT-SN id route array (`SC_IDS` inner map), mapped
/// into this process: filled with plain memory writes (12 MiB of routes
/// through syscalls would cost a batch update per entry).
struct IdArray {
    map: MapData,
    mem: mmap::ArrayMmap<Route>,
}

impl IdArray {
    /// A fresh, zeroed array (zero: no route).
    fn create() -> Result<IdArray> {
        let map = create_inner::<u32, Route>(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY,
            MQTTSN_ID_ROUTES,
            IDS_MAP_FLAGS,
            "sc_ids",
            names::IDS,
        )?;
        let mem = mmap::ArrayMmap::new(map.fd().as_fd(), MQTTSN_ID_ROUTES as usize).map_err(
            |source| DataplaneError::Mmap {
                name: names::IDS,
                source,
            },
        )?;
        Ok(IdArray { map, mem })
    }

    /// Makes the array hold `want` (index → route), writing only what
    /// differs from `prev`, what this process last wrote here (`None`: a
    /// fresh array). Returns how many entries it wrote.
    fn write(
        &mut self,
        want: &StdHashMap<u32, Route>,
        prev: Option<&StdHashMap<u32, Route>>,
    ) -> usize {
        let mut n = 0;
        for (&i, r) in want {
            if prev.and_then(|p| p.get(&i)) != Some(r) {
                self.mem.set(i as usize, *r);
                n += 1;
            }
        }
        for &i in prev.into_iter().flat_map(|p| p.keys()) {
            if !want.contains_key(&i) {
                self.mem.set(i as usize, Route::default());
                n += 1;
            }
        }
        n
    }
}

/// A second handle on the map behind `map` (same kernel object).
fn second_handle(map: &Map, name: &'static str) -> Result<MapData> {
    let data = match map {
        Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::ArrayOfMaps(d) => d,
        _ => {
            return Err(DataplaneError::PinMismatch {
                name,
                reason: "not a hash or array map".into(),
            });
        }
    };
    let id = data.info().map_err(map_err(name))?.id();
    MapData::from_id(id).map_err(map_err(name))
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Index of `iface` in the current network namespace.
pub fn ifindex(iface: &str) -> Result<u32> {
    let c = CString::new(iface).map_err(|_| DataplaneError::NoInterface(iface.into()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DataplaneError::NoInterface(iface.into())),
        i => Ok(i),
    }
}

/// MAC address of `iface` in the current network namespace
/// (`SIOCGIFHWADDR` on a socket opened here, so it works after `setns` too,
/// unlike /sys/class/net). One ioctl: `getifaddrs` dumps every link and
/// address over netlink, which took 4-67 ms of each plan install.
pub fn mac_address(iface: &str) -> Result<[u8; 6]> {
    let no_mac = |reason: String| DataplaneError::NoMac {
        iface: iface.into(),
        reason,
    };
    let name = iface.as_bytes();
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains(&0) {
        return Err(DataplaneError::NoInterface(iface.into()));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2); the descriptor is owned (closed on drop).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(no_mac(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: `fd` was just returned to us and is not owned elsewhere.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR reads `ifr_name` and writes `ifr_hwaddr` of the
    // `ifreq` we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::ENODEV) {
            DataplaneError::NoInterface(iface.into())
        } else {
            no_mac(e.to_string())
        });
    }
    // SAFETY: the ioctl filled the `ifru_hwaddr` member.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(no_mac(format!(
            "not an Ethernet device (link type {})",
            hw.sa_family
        )));
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(hw.sa_data) {
        *d = s as u8;
    }
    Ok(mac)
}

fn check_bpffs(root: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let on_bpffs = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, mnt, fs) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        fs == "bpf" && root.starts_with(mnt)
    });
    if on_bpffs {
        Ok(())
    } else {
        Err(DataplaneError::NoBpffs(
            root.parent().unwrap_or(root).to_path_buf(),
        ))
    }
}

/// [`take`], plus a second handle on the same map for batch operations.
fn take_raw<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
    pin: &mut Option<(&PinPaths, &mut Vec<PathBuf>)>,
) -> Result<(T, MapData)> {
    let raw = second_handle(
        ebpf.map(name).ok_or(DataplaneError::PinMismatch {
            name,
            reason: "missing from the eBPF object".into(),
        })?,
        name,
    )?;
    Ok((take(ebpf, name, pin)?, raw))
}

/// Takes a map out of a freshly loaded object, pinning it first when asked.
fn take<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
    pin: &mut Option<(&PinPaths, &mut Vec<PathBuf>)>,
) -> Result<T> {
    let map = ebpf.take_map(name).ok_or(DataplaneError::PinMismatch {
        name,
        reason: "missing from the eBPF object".into(),
    })?;
    if let Some((pins, created)) = pin {
        let path = pins.map(name);
        record_pin(created, path.clone(), map.pin(&path))?;
    }
    T::try_from(map).map_err(map_err(name))
}

fn open_pinned<T: TryFrom<Map, Error = MapError>>(
    pins: &PinPaths,
    name: &'static str,
) -> Result<T> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    let map = Map::from_map_data(data).map_err(map_err(name))?;
    T::try_from(map).map_err(|e| DataplaneError::PinMismatch {
        name,
        reason: e.to_string(),
    })
}

/// A raw handle on a pinned map for batch operations, after checking the
/// pin has the type and sizes `T` says.
fn open_raw<T: TryFrom<Map, Error = MapError>>(
    pins: &PinPaths,
    name: &'static str,
) -> Result<MapData> {
    let _: T = open_pinned(pins, name)?;
    MapData::from_pin(pins.map(name)).map_err(map_err(name))
}

/// Loads (and pins, when asked) the `SC_GROUP_STATS` iterator. It needs the
/// kernel's BTF (`/sys/kernel/btf/vmlinux`); a kernel without it still
/// routes, and the daemon reads its counters in batches instead (slower).
fn load_group_dump(
    ebpf: &mut Ebpf,
    pin: &mut Option<(&PinPaths, &mut Vec<PathBuf>)>,
) -> Result<Option<OwnedFd>> {
    let name = names::PROG_GROUP_DUMP;
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => {
            tracing::warn!("no kernel BTF ({e}): group counters will be read in batches");
            return Ok(None);
        }
    };
    let prog: &mut Iter = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::PinMismatch {
            name,
            reason: "missing from the eBPF object".into(),
        })?
        .try_into()
        .map_err(prog_err(name))?;
    if let Err(e) = prog.load("bpf_map_elem", &btf) {
        tracing::warn!(
            "group counter iterator not loaded ({}): counters will be read in batches",
            verifier_message(&e)
        );
        return Ok(None);
    }
    if let Some((pins, created)) = pin {
        let path = pins.prog(name);
        record_pin(created, path.clone(), prog.pin(&path))?;
    }
    let fd = prog
        .fd()
        .map_err(prog_err(name))?
        .as_fd()
        .try_clone_to_owned()?;
    Ok(Some(fd))
}

/// Notes a pin just made at `path` (so a failed attach can remove it), or
/// says which pin failed.
fn record_pin<E: std::fmt::Display>(
    created: &mut Vec<PathBuf>,
    path: PathBuf,
    made: std::result::Result<(), E>,
) -> Result<()> {
    made.map_err(|e| DataplaneError::Pin {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    created.push(path);
    Ok(())
}

/// Maps `SC_SLOTS` (which the object declares `BPF_F_MMAPABLE`).
fn map_slots(map: &MapData) -> Result<mmap::ArrayMmap<TopicKey>> {
    mmap::ArrayMmap::new(map.fd().as_fd(), MAX_TOPICS as usize).map_err(|source| {
        DataplaneError::Mmap {
            name: names::SLOTS,
            source,
        }
    })
}

/// Removes the pins this attach created if it fails half-way.
struct PinRollback {
    created: Vec<PathBuf>,
    armed: bool,
}

impl Drop for PinRollback {
    fn drop(&mut self) {
        if self.armed {
            for p in self.created.iter().rev() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl Dataplane {
    /// Loads the object in this process without pinning or attaching
    /// anything: for in-kernel tests (`TestRun`) and benchmarks.
    pub fn load(object: &Path, config: &RouterConfig) -> Result<Dataplane> {
        Self::load_and_pin(object, config, None)
    }

    fn load_and_pin(
        object: &Path,
        config: &RouterConfig,
        mut pin: Option<(&PinPaths, &mut Vec<PathBuf>)>,
    ) -> Result<Dataplane> {
        if !object.exists() {
            return Err(DataplaneError::ObjectMissing {
                path: object.into(),
            });
        }
        let mut ebpf = EbpfLoader::new()
            .load_file(object)
            .map_err(|e| DataplaneError::Load {
                path: object.into(),
                reason: format!("{e:#}"),
            })?;
        for name in [names::PROG_ROUTER, names::PROG_PASS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Load {
                    path: object.into(),
                    reason: format!("no program {name}"),
                })?
                .try_into()
                .map_err(prog_err(name))?;
            prog.load().map_err(|e| DataplaneError::Load {
                path: object.into(),
                reason: verifier_message(&e),
            })?;
            if let Some((pins, created)) = &mut pin {
                let path = pins.prog(name);
                record_pin(created, path.clone(), prog.pin(&path))?;
            }
        }
        let group_dump = load_group_dump(&mut ebpf, &mut pin)?;
        let p = &mut pin;
        let (_, raw_devices): (HashMap<MapData, DeviceAddr, u32>, _) =
            take_raw(&mut ebpf, names::DEVICES, p)?;
        let (_, raw_group_stats): (HashMap<MapData, GroupStatKey, Counter>, _) =
            take_raw(&mut ebpf, names::GROUP_STATS, p)?;
        // SC_SLOTS: counter slot → topic name key (hash 0: free).
        let (_, raw_slots): (Array<MapData, TopicKey>, _) = take_raw(&mut ebpf, names::SLOTS, p)?;
        let slots = map_slots(&raw_slots)?;
        let (routes, raw_routes): (ArrayOfMaps<MapData, RoutesMap>, _) =
            take_raw(&mut ebpf, names::ROUTES, p)?;
        let (_, raw_ids): (ArrayOfMaps<MapData, IdsMap>, _) = take_raw(&mut ebpf, names::IDS, p)?;
        let mut dp = Dataplane {
            config: take(&mut ebpf, names::CONFIG, p)?,
            active: take(&mut ebpf, names::ACTIVE, p)?,
            meta: take(&mut ebpf, names::META, p)?,
            routes,
            shards: take(&mut ebpf, names::SHARDS, p)?,
            egress: take(&mut ebpf, names::EGRESS, p)?,
            reasons: take(&mut ebpf, names::REASONS, p)?,
            topic_stats: take(&mut ebpf, names::TOPIC_STATS, p)?,
            unrouted: take(&mut ebpf, names::UNROUTED, p)?,
            raw_devices,
            slots,
            raw_group_stats,
            group_dump,
            raw_routes,
            raw_ids,
            settling: None,
            incremental: false,
            slot_cache: Default::default(),
            pending_slots: None,
            written_shards: [None, None],
            written: [None, None],
            pins: pin.as_ref().map(|(p, _)| (*p).clone()),
            ebpf: Some(ebpf),
        };
        dp.set_config(config)?;
        Ok(dp)
    }

    /// Adopts a pinned data plane.
    pub fn open(pin_root: &Path) -> Result<Dataplane> {
        let pins = PinPaths::new(pin_root);
        if !pins.dir().exists() {
            if let Some(found) = pins.other_layouts().into_iter().next() {
                return Err(DataplaneError::OtherLayout {
                    found,
                    path: pin_root.into(),
                });
            }
            return Err(DataplaneError::NotAttached(pins.dir().into()));
        }
        let dp = Dataplane {
            config: open_pinned(&pins, names::CONFIG)?,
            active: open_pinned(&pins, names::ACTIVE)?,
            meta: open_pinned(&pins, names::META)?,
            routes: open_pinned(&pins, names::ROUTES)?,
            raw_routes: open_raw::<ArrayOfMaps<MapData, RoutesMap>>(&pins, names::ROUTES)?,
            raw_ids: open_raw::<ArrayOfMaps<MapData, IdsMap>>(&pins, names::IDS)?,
            settling: None,
            shards: open_pinned(&pins, names::SHARDS)?,
            egress: open_pinned(&pins, names::EGRESS)?,
            reasons: open_pinned(&pins, names::REASONS)?,
            topic_stats: open_pinned(&pins, names::TOPIC_STATS)?,
            unrouted: open_pinned(&pins, names::UNROUTED)?,
            slots: map_slots(&open_raw::<Array<MapData, TopicKey>>(&pins, names::SLOTS)?)?,
            raw_devices: open_raw::<HashMap<MapData, DeviceAddr, u32>>(&pins, names::DEVICES)?,
            raw_group_stats: open_raw::<HashMap<MapData, GroupStatKey, Counter>>(
                &pins,
                names::GROUP_STATS,
            )?,
            group_dump: match iter::obj_get(&pins.prog(names::PROG_GROUP_DUMP)) {
                Ok(fd) => Some(fd),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(DataplaneError::Pin {
                        path: pins.prog(names::PROG_GROUP_DUMP),
                        reason: e.to_string(),
                    });
                }
            },
            incremental: false,
            slot_cache: Default::default(),
            pending_slots: None,
            written_shards: [None, None],
            written: [None, None],
            ebpf: None,
            pins: Some(pins),
        };
        Ok(dp)
    }

    /// Loads (or adopts), pins, configures and attaches the router. Nothing
    /// is left behind if any step fails.
    pub fn attach(pin_root: &Path, opts: &AttachOptions) -> Result<Dataplane> {
        if !is_root() {
            return Err(DataplaneError::NotRoot);
        }
        for iface in opts.ingress.iter().chain(&opts.egress) {
            ifindex(iface)?;
        }
        check_bpffs(pin_root)?;
        let pins = PinPaths::new(pin_root);
        if let Some(found) = pins.other_layouts().into_iter().next() {
            return Err(DataplaneError::OtherLayout {
                found,
                path: pin_root.into(),
            });
        }
        for iface in &opts.ingress {
            let path = pins.link(names::PROG_ROUTER, iface);
            if path.exists() {
                return Err(DataplaneError::AlreadyAttached {
                    iface: iface.clone(),
                    path,
                });
            }
        }
        let mut rollback = PinRollback {
            created: Vec::new(),
            armed: true,
        };
        let fresh = !pins.map(names::CONFIG).exists();
        let mut dp = if fresh {
            std::fs::create_dir_all(pins.dir())?;
            Dataplane::load_and_pin(
                &opts.object,
                &opts.config,
                Some((&pins, &mut rollback.created)),
            )?
        } else {
            let mut dp = Dataplane::open(pin_root)?;
            dp.set_config(&opts.config)?;
            dp
        };
        for iface in &opts.egress {
            dp.egress_slot(iface)?;
        }
        for iface in &opts.ingress {
            let link = dp.attach_program(names::PROG_ROUTER, iface, opts.mode)?;
            rollback.created.push(link);
        }
        rollback.armed = false;
        Ok(dp)
    }

    /// Attaches a pinned program to `iface` and pins the link; returns the
    /// link's pin path.
    fn attach_program(
        &mut self,
        prog_name: &'static str,
        iface: &str,
        mode: Mode,
    ) -> Result<PathBuf> {
        let pins = self
            .pins
            .as_ref()
            .ok_or(DataplaneError::NotAttached(PathBuf::new()))?;
        let path = pins.link(prog_name, iface);
        if path.exists() {
            return Err(DataplaneError::AlreadyAttached {
                iface: iface.into(),
                path,
            });
        }
        let mut prog = Xdp::from_pin(pins.prog(prog_name), XdpAttachType::Interface)
            .map_err(prog_err(prog_name))?;
        let id = prog
            .attach(iface, mode.xdp())
            .map_err(prog_err(prog_name))?;
        let link = prog.take_link(id).map_err(prog_err(prog_name))?;
        let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::Pin {
            path: path.clone(),
            reason: format!("XDP attach did not give a bpf_link ({e}); kernel too old"),
        })?;
        let _: PinnedLink = fd_link.pin(&path).map_err(|e| DataplaneError::Pin {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(path)
    }

    /// Attaches the pass-everything program to `iface` (the peer of a veth
    /// egress must run XDP for redirected frames to arrive).
    pub fn attach_pass(&mut self, iface: &str, mode: Mode) -> Result<PathBuf> {
        ifindex(iface)?;
        self.attach_program(names::PROG_PASS, iface, mode)
    }

    /// Detaches every link and removes every pin of our layout.
    pub fn detach(pin_root: &Path) -> Result<Vec<PathBuf>> {
        let pins = PinPaths::new(pin_root);
        if !pins.dir().exists() {
            return Err(DataplaneError::NotAttached(pins.dir().into()));
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(pins.dir())?
            .flatten()
            .map(|e| e.path())
            .collect();
        // Links first, so traffic stops being steered before maps go away.
        entries.sort_by_key(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("link_"))
        });
        for p in &entries {
            std::fs::remove_file(p)?;
        }
        std::fs::remove_dir(pins.dir())?;
        let _ = std::fs::remove_dir(&pins.root);
        Ok(entries)
    }

    pub fn set_config(&mut self, config: &RouterConfig) -> Result<()> {
        self.config
            .set(0, config.to_map(), 0)
            .map_err(map_err(names::CONFIG))
    }

    pub fn config(&self) -> Result<RouterConfig> {
        Ok(RouterConfig::from_map(
            &self.config.get(&0, 0).map_err(map_err(names::CONFIG))?,
        ))
    }

    pub fn meta(&self) -> Result<Meta> {
        self.meta.get(&0, 0).map_err(map_err(names::META))
    }

    pub fn active_slot(&self) -> Result<u32> {
        self.active.get(&0, 0).map_err(map_err(names::ACTIVE))
    }

    /// The egress slot of `iface`, adding it to the egress map if new.
    pub fn egress_slot(&mut self, iface: &str) -> Result<u32> {
        let idx = ifindex(iface)?;
        let mut free = None;
        for slot in 0..MAX_EGRESS {
            match self.egress.get(slot, 0) {
                Ok(v) if v.if_index == idx => return Ok(slot),
                Ok(_) => {}
                Err(_) => {
                    free.get_or_insert(slot);
                }
            }
        }
        let slot = free.ok_or(DataplaneError::EgressFull)?;
        self.egress
            .set(slot, idx, None, 0)
            .map_err(|e| DataplaneError::Pin {
                path: PathBuf::from(names::EGRESS),
                reason: format!("cannot add {iface} (ifindex {idx}): {e}"),
            })?;
        Ok(slot)
    }

    /// Egress table: slot → ifindex.
    pub fn egress_table(&self) -> Vec<(u32, u32)> {
        (0..MAX_EGRESS)
            .filter_map(|s| self.egress.get(s, 0).ok().map(|v| (s, v.if_index)))
            .collect()
    }

    /// Counter slots for the plan's topics: existing assignments are kept;
    /// new topics take free slots, reclaiming those of topics absent from
    /// the plan when the table is full (their counters are zeroed first).
    fn assign_slots(&mut self, plan: &CompiledPlan) -> Result<Vec<u32>> {
        let mut current: StdHashMap<TopicKey, u32> = self.slots_cached()?.clone();
        // Whatever happens below, the kernel's table may change: re-read
        // it next time unless this install completes (see `install`).
        *self.slot_cache.borrow_mut() = None;
        let wanted: HashSet<TopicKey> = plan.name_keys.iter().copied().collect();
        let mut used = vec![false; MAX_TOPICS as usize];
        for s in current.values() {
            if let Some(u) = used.get_mut(*s as usize) {
                *u = true;
            }
        }
        // Slots never assigned hold zero counters; a slot is only freed by
        // reclaiming it below, which zeroes it.
        let mut free = (0..MAX_TOPICS).filter(|s| !used[*s as usize]);
        let mut reclaimable: Vec<(TopicKey, u32)> = current
            .iter()
            .filter(|(k, _)| !wanted.contains(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        reclaimable.sort_by_key(|(_, s)| *s);
        let mut reclaimable = reclaimable.into_iter();
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut out = Vec::with_capacity(plan.name_keys.len());
        let (mut new_keys, mut new_slots) = (Vec::new(), Vec::new());
        for key in &plan.name_keys {
            let slot = match current.get(key) {
                Some(s) => *s,
                None => {
                    let s = match free.next() {
                        Some(s) => s,
                        None => {
                            let (old, s) = reclaimable.next().ok_or(DataplaneError::SlotsFull)?;
                            // The array write below gives the slot its new key.
                            current.remove(&old);
                            self.topic_stats
                                .set(
                                    s,
                                    PerCpuValues::try_from(vec![Counter::default(); ncpus])?,
                                    0,
                                )
                                .map_err(map_err(names::TOPIC_STATS))?;
                            s
                        }
                    };
                    new_keys.push(*key);
                    new_slots.push(s);
                    current.insert(*key, s);
                    s
                }
            };
            out.push(slot);
        }
        // SC_SLOTS is an array slot → key (a reclaimed slot is simply
        // overwritten), mapped into this process: plain memory writes.
        for (s, k) in new_slots.iter().zip(&new_keys) {
            self.slots.set(*s as usize, *k);
        }
        self.pending_slots = Some(current);
        Ok(out)
    }

    /// Keep both generations' route maps and remember what this process
    /// wrote to each, so that the next [`install`](Self::install) writes
    /// only the routes that differ from what the idle slot already holds.
    /// Costs a second copy of the routes in the kernel and one in this
    /// process; meant for the long-running daemon, whose plans change a
    /// little at a time.
    pub fn set_incremental(&mut self, on: bool) {
        self.incremental = on;
        if !on {
            self.written = [None, None];
            self.written_shards = [None, None];
        }
    }

    /// Installs a compiled plan as the next generation (see the module docs
    /// for the protocol). `force` allows a generation that is not newer.
    pub fn install(&mut self, plan: &CompiledPlan, force: bool) -> Result<InstallReport> {
        self.settle()?;
        let started = std::time::Instant::now();
        let mut ph = Phases::new();
        let installed = self.meta()?;
        if !force && installed.generation != 0 && plan.generation <= installed.generation {
            return Err(DataplaneError::StaleGeneration {
                new: plan.generation,
                installed: installed.generation,
            });
        }
        // Everything that can fail on bad input fails here, before any
        // routing map changes: egress lookups and MACs.
        // Each distinct egress is resolved once (MAC lookup, devmap scan),
        // not once per shard: plans have thousands of shards and few egresses.
        let mut egresses: StdHashMap<&str, (u32, [u8; 6])> = StdHashMap::default();
        for s in &plan.shards {
            if !egresses.contains_key(s.egress.as_str()) {
                let resolved = (self.egress_slot(&s.egress)?, mac_address(&s.egress)?);
                egresses.insert(&s.egress, resolved);
            }
        }
        let mut shard_values = Vec::with_capacity(plan.shards.len());
        for s in &plan.shards {
            let (egress_slot, src_mac) = egresses[s.egress.as_str()];
            let mut flags = 0;
            if s.group_v4.is_some() {
                flags |= SHARD_HAS_V4;
            }
            if s.group_v6.is_some() {
                flags |= SHARD_HAS_V6;
            }
            shard_values.push(Shard {
                group_v4: s.group_v4.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
                group_v6: s.group_v6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets(),
                egress_slot,
                port: s.port,
                flags,
                src_mac,
                _pad: 0,
                id: s.id,
            });
        }
        ph.mark("egress and shards resolved");
        let old = self.active_slot()? & 1;
        let new = old ^ 1;
        // What the idle slot holds, if this process wrote it and nobody has
        // written since (the kernel's record of the slot's generation
        // agrees): then only the difference needs writing.
        let reuse = self.incremental
            && self.written[new as usize].as_ref().is_some_and(|w| {
                installed.slot_generation[new as usize] == w.generation
                    && plan.routes.len() <= w.capacity as usize
            });
        let incremental = self.incremental;
        let (routes, capacity, changed, entries, ids, id_entries) =
            std::thread::scope(|scope| -> Result<_> {
                // Creating a route map allocates and clears its bucket array
                // (tens of ms at this capacity): done on the other core while
                // this one assigns counter slots.
                let capacity = routes_capacity(plan.routes.len());
                let fresh = (!reuse).then(|| scope.spawn(move || create_routes_map(capacity)));
                let fresh_ids = (!reuse).then(|| scope.spawn(IdArray::create));
                let slots = self.assign_slots(plan)?;
                ph.mark("counter slots assigned");
                let mut keys = Vec::with_capacity(plan.routes.len());
                let mut values = Vec::with_capacity(plan.routes.len());
                for r in &plan.routes {
                    let mut shards = [0u16; router_common::maps::MAX_ROUTE_SHARDS];
                    shards[..r.shards.len()].copy_from_slice(&r.shards);
                    keys.push(r.key);
                    values.push(Route {
                        stats_slot: slots[r.topic],
                        shard_count: r.shards.len() as u16,
                        _pad: 0,
                        shards,
                        first: shard_values[r.shards[0] as usize],
                    });
                }
                // The daemon keeps what it wrote, to diff the next plan against.
                let entries: Option<StdHashMap<TopicKey, Route>> =
                    incremental.then(|| keys.iter().copied().zip(values.iter().copied()).collect());
                ph.mark("route values built");
                // The MQTT-SN id array's entries: the same route values.
                let id_entries: StdHashMap<u32, Route> = plan
                    .routes
                    .iter()
                    .zip(&values)
                    .filter_map(|(r, v)| r.mqttsn_index.map(|i| (i, *v)))
                    .collect();
                let (routes, capacity, changed, ids) = if reuse {
                    let mut w = self.written[new as usize].take().expect("checked above");
                    let id_changed = w.ids.write(&id_entries, Some(&w.id_entries));
                    let now = entries.as_ref().expect("incremental");
                    let (mut ck, mut cv) = (Vec::new(), Vec::new());
                    for (k, v) in keys.iter().zip(&values) {
                        if w.entries.get(k) != Some(v) {
                            ck.push(*k);
                            cv.push(*v);
                        }
                    }
                    let gone: Vec<TopicKey> = w
                        .entries
                        .keys()
                        .filter(|k| !now.contains_key(k))
                        .copied()
                        .collect();
                    batch::update(w.map.fd().as_fd(), &ck, &cv)
                        .map_err(|e| batch_err(names::ROUTES, e))?;
                    batch::delete(w.map.fd().as_fd(), &gone)
                        .map_err(|e| batch_err(names::ROUTES, e))?;
                    (w.map, w.capacity, ck.len() + gone.len() + id_changed, w.ids)
                } else {
                    let data = joined(
                        fresh.expect("spawned when not reusing").join(),
                        "map creation",
                    )??;
                    let mut ids = joined(
                        fresh_ids.expect("spawned when not reusing").join(),
                        "map creation",
                    )??;
                    ids.write(&id_entries, None);
                    ph.mark("fresh routes map ready");
                    // Two writers, one per core: the kernel locks per bucket.
                    let half = keys.len() / 2;
                    let fd = data.fd().as_fd();
                    let (k1, k2) = keys.split_at(half);
                    let (v1, v2) = values.split_at(half);
                    std::thread::scope(|inner| -> Result<()> {
                        let other = inner.spawn(move || batch::update(fd, k2, v2));
                        batch::update(fd, k1, v1).map_err(|e| batch_err(names::ROUTES, e))?;
                        joined(other.join(), "route writer")?
                            .map_err(|e| batch_err(names::ROUTES, e))
                    })?;
                    (data, capacity, keys.len(), ids)
                };
                Ok((routes, capacity, changed, entries, ids, id_entries))
            })?;
        ph.mark("routes written");
        // The shard table is small; it is rebuilt unless the idle slot
        // already holds exactly these shards.
        let shards_held =
            reuse && self.written_shards[new as usize].as_deref() == Some(shard_values.as_slice());
        let shards = if shards_held {
            None
        } else {
            let mut shards: Array<MapData, Shard> =
                Array::create(MAX_SHARDS, 0).map_err(map_err(names::SHARDS))?;
            for (i, v) in shard_values.iter().enumerate() {
                shards.set(i as u32, v, 0).map_err(map_err(names::SHARDS))?;
            }
            Some(shards)
        };
        ph.mark("shard table built");
        // Devices first, so that once the generation is visible its devices
        // are counted under their groups.
        self.set_devices(plan)?;
        ph.mark("devices set");
        let filled = started.elapsed();

        // Each update of an outer map waits an RCU grace period (several
        // ms), so only what changed is written: an updated-in-place routes
        // map is already in its slot.
        // The outer maps are updated from parallel threads: each update
        // waits for a grace period, and waits that overlap share one.
        // Slot writes go through the raw descriptors (an outer map's value
        // is the inner map's descriptor), one thread each.
        let shards_outer = &mut self.shards;
        let (routes_outer, routes_fd) = (
            self.raw_routes.fd().as_fd(),
            routes.fd().as_fd().as_raw_fd() as u32,
        );
        let (ids_outer, ids_fd) = (
            self.raw_ids.fd().as_fd(),
            ids.map.fd().as_fd().as_raw_fd() as u32,
        );
        std::thread::scope(|scope| -> Result<()> {
            let routes_set = (!reuse)
                .then(|| scope.spawn(move || batch::update_one(routes_outer, &new, &routes_fd)));
            let ids_set =
                (!reuse).then(|| scope.spawn(move || batch::update_one(ids_outer, &new, &ids_fd)));
            if let Some(shards) = &shards {
                shards_outer
                    .set(new, shards, 0)
                    .map_err(map_err(names::SHARDS))?;
            }
            for (h, name) in [(routes_set, names::ROUTES), (ids_set, names::IDS)] {
                if let Some(h) = h {
                    joined(h.join(), "map update")?.map_err(|e| batch_err(name, e))?;
                }
            }
            Ok(())
        })?;
        self.active.set(0, new, 0).map_err(map_err(names::ACTIVE))?;
        let swapped = started.elapsed();
        ph.mark("slots set and flipped");
        let mut slot_generation = installed.slot_generation;
        slot_generation[new as usize] = plan.generation;
        // One more outer-map update, whose RCU grace period the kernel waits
        // out before the call returns (every map-of-maps update does):
        // - full install: point the old routes slot at the new map too (the
        //   old id array and shard table, tens of MiB at most, stay in the
        //   old slot until the next install replaces them). A packet
        //   that read the parity before the flip then finds either the old
        //   map (if it got there first) or the new one: one generation either
        //   way. When the update returns no program uses the old map, which
        //   is freed.
        // - incremental: re-point the new slot at its own map, only for the
        //   wait: afterwards no program runs with the old slot, which the
        //   next install updates in place.
        // The plan is in force already (the flip above); the wait (8-16 ms)
        // runs on a thread, and the next install (or dropping this handle)
        // joins it before touching the slots.
        let slot = if self.incremental {
            new
        } else {
            slot_generation[old as usize] = plan.generation;
            old
        };
        let outer = self.raw_routes.fd().as_fd().try_clone_to_owned()?;
        let inner = routes.fd().as_fd().try_clone_to_owned()?;
        self.settling = Some(std::thread::spawn(move || {
            batch::update_one(outer.as_fd(), &slot, &(inner.as_raw_fd() as u32))
        }));
        ph.mark("old slot settling (background)");
        if self.incremental {
            self.written_shards[new as usize] = Some(shard_values);
        }
        self.meta
            .set(
                0,
                Meta {
                    generation: plan.generation,
                    routes: plan.routes.len() as u32,
                    shards: plan.shards.len() as u32,
                    installed_unix: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs(),
                    slot_generation,
                    slot_high_water: self
                        .pending_slots
                        .as_ref()
                        .and_then(|t| t.values().max())
                        .map_or(installed.slot_high_water, |m| {
                            installed.slot_high_water.max(*m as u64 + 1)
                        }),
                },
                0,
            )
            .map_err(map_err(names::META))?;
        if let Some(table) = self.pending_slots.take() {
            *self.slot_cache.borrow_mut() = Some((self.meta()?, table));
        }
        if let Some(entries) = entries {
            self.written[new as usize] = Some(Written {
                generation: plan.generation,
                capacity,
                entries,
                map: routes,
                ids,
                id_entries,
            });
        }
        Ok(InstallReport {
            generation: plan.generation,
            routes: plan.routes.len(),
            changed,
            shards: plan.shards.len(),
            fill: filled,
            swap: swapped - filled,
            total: started.elapsed(),
        })
    }

    /// Waits for the previous install's last outer-map update (see
    /// [`Dataplane::install`]).
    pub fn settle(&mut self) -> Result<()> {
        match self.settling.take() {
            Some(h) => joined(h.join(), "map update")?.map_err(|e| batch_err(names::ROUTES, e)),
            None => Ok(()),
        }
    }

    /// Makes `SC_DEVICES` hold exactly the plan's devices (address → group).
    /// Not generational: a device briefly counted under its old group while
    /// a plan lands is harmless, and devices change rarely.
    fn set_devices(&mut self, plan: &CompiledPlan) -> Result<()> {
        let want: StdHashMap<DeviceAddr, u32> = plan
            .devices
            .iter()
            .map(|d| (device_addr(d.address), d.group))
            .collect();
        let held: Vec<(DeviceAddr, u32)> = batch::lookup(self.raw_devices.fd().as_fd())
            .map_err(|e| batch_err(names::DEVICES, e))?;
        // Only what changed is written: a device keeps its entry (and its
        // group) while its group is unchanged.
        let gone: Vec<DeviceAddr> = held
            .iter()
            .filter(|(k, _)| !want.contains_key(k))
            .map(|(k, _)| *k)
            .collect();
        let held: StdHashMap<DeviceAddr, u32> = held.into_iter().collect();
        let (keys, values): (Vec<DeviceAddr>, Vec<u32>) = want
            .iter()
            .filter(|(k, v)| held.get(k) != Some(v))
            .map(|(k, v)| (*k, *v))
            .unzip();
        batch::update(self.raw_devices.fd().as_fd(), &keys, &values)
            .map_err(|e| batch_err(names::DEVICES, e))?;
        batch::delete(self.raw_devices.fd().as_fd(), &gone)
            .map_err(|e| batch_err(names::DEVICES, e))
    }

    /// The installed routing state, read back from the kernel.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let meta = self.meta()?;
        let active = self.active_slot()? & 1;
        let mut routes = Vec::new();
        let mut shards = Vec::new();
        if meta.generation != 0 {
            let inner: RoutesMap = self
                .routes
                .get(&active, 0)
                .map_err(map_err(names::ROUTES))?;
            for kv in inner.iter() {
                routes.push(kv.map_err(map_err(names::ROUTES))?);
            }
            routes.sort_by_key(|(k, _)| *k);
            let inner: ShardsMap = self
                .shards
                .get(&active, 0)
                .map_err(map_err(names::SHARDS))?;
            for i in 0..meta.shards {
                shards.push(inner.get(&i, 0).map_err(map_err(names::SHARDS))?);
            }
        }
        Ok(Snapshot {
            config: self.config()?,
            meta,
            active_slot: active,
            routes,
            shards,
            egress: self.egress_table(),
        })
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let sum = |v: PerCpuValues<Counter>| {
            let mut c = Counter::default();
            for x in v.iter() {
                c.add(x);
            }
            c
        };
        let mut reasons = BTreeMap::new();
        for r in Reason::ALL {
            let v = self
                .reasons
                .get(&(*r as u32), 0)
                .map_err(map_err(names::REASONS))?;
            reasons.insert(*r, sum(v));
        }
        let mut topics = BTreeMap::new();
        for (k, slot) in self.slot_table()? {
            let v = self
                .topic_stats
                .get(&slot, 0)
                .map_err(map_err(names::TOPIC_STATS))?;
            topics.insert(k, (slot, sum(v)));
        }
        let mut unrouted = BTreeMap::new();
        for kv in self.unrouted.iter() {
            let (k, v) = kv.map_err(map_err(names::UNROUTED))?;
            unrouted.insert(k, sum(v));
        }
        Ok(Counters {
            reasons,
            topics,
            unrouted,
        })
    }

    /// Kernel memory of the route maps and MQTT-SN id arrays this process
    /// wrote (both slots in incremental mode), as the kernel accounts it
    /// (`memlock` in the maps' fdinfo).
    pub fn route_memory(&self) -> u64 {
        let memlock = |map: &MapData| -> Option<u64> {
            let fd = map.fd().as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        self.written
            .iter()
            .flatten()
            .flat_map(|w| [memlock(&w.map), memlock(&w.ids.map)])
            .flatten()
            .sum()
    }

    /// Routed publishes per (topic counter slot, device group), read with
    /// the map iterator (or in batches without it: a tick with 100k topics
    /// must stay cheap). Counters only grow; the caller takes differences
    /// between reads.
    pub fn group_counters(&self) -> Result<Vec<(GroupStatKey, Counter)>> {
        match &self.group_dump {
            Some(prog) => iter::dump_map(
                prog.as_fd(),
                self.raw_group_stats.fd().as_fd(),
                |r: GroupStatRecord| (r.key, r.counter),
            )
            .map_err(|source| DataplaneError::Iter {
                name: names::GROUP_STATS,
                source,
            }),
            None => self.group_counters_batched(),
        }
    }

    /// True when [`Dataplane::group_counters`] reads with the map iterator.
    pub fn group_iterator(&self) -> bool {
        self.group_dump.is_some()
    }

    /// [`Dataplane::group_counters`] with `BPF_MAP_LOOKUP_BATCH`: the way
    /// on kernels without BTF, and the reference the iterator is tested
    /// against.
    pub fn group_counters_batched(&self) -> Result<Vec<(GroupStatKey, Counter)>> {
        batch::lookup(self.raw_group_stats.fd().as_fd())
            .map_err(|e| batch_err(names::GROUP_STATS, e))
    }

    /// Topic name key → counter slot.
    pub fn slot_table(&self) -> Result<Vec<(TopicKey, u32)>> {
        Ok(self.slots_cached()?.iter().map(|(k, v)| (*k, *v)).collect())
    }

    /// The slot table, from this process's copy when it is current: only
    /// an install changes slots, and every install rewrites `SC_META`, so a
    /// copy taken at the same `Meta` is exact, and building the map from
    /// the shared array costs ~10 ms per million slots.
    fn slots_cached(&self) -> Result<std::cell::Ref<'_, StdHashMap<TopicKey, u32>>> {
        let meta = self.meta()?;
        let fresh = matches!(&*self.slot_cache.borrow(), Some((m, _)) if *m == meta);
        if !fresh {
            let high = (meta.slot_high_water as usize).min(MAX_TOPICS as usize);
            let table: StdHashMap<TopicKey, u32> = (0..high)
                .map(|s| (self.slots.get(s), s as u32))
                .filter(|(k, _)| k.hash != 0)
                .collect();
            *self.slot_cache.borrow_mut() = Some((meta, table));
        }
        Ok(std::cell::Ref::map(self.slot_cache.borrow(), |c| {
            &c.as_ref().expect("filled above").1
        }))
    }

    /// Runs the router program once (or `repeat` times) on `packet` in the
    /// kernel (`BPF_PROG_TEST_RUN`). Only for a data plane this process
    /// loaded.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<TestRunOutcome> {
        self.test_run_program(names::PROG_ROUTER, packet, repeat)
    }

    /// Instructions the verifier processed to accept the router program
    /// (its complexity; the limit is 1,000,000). Only for a data plane this
    /// process loaded.
    pub fn verified_instructions(&self) -> Option<u32> {
        let Some(Program::Xdp(prog)) = self.ebpf.as_ref()?.program(names::PROG_ROUTER) else {
            return None;
        };
        prog.info().ok()?.verified_instruction_count()
    }

    fn test_run_program(
        &self,
        name: &'static str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        let ebpf = self
            .ebpf
            .as_ref()
            .ok_or(DataplaneError::NotAttached(PathBuf::from(
                "(test runs need a data plane loaded in this process)",
            )))?;
        run_xdp(ebpf, name, packet, repeat)
    }
}

/// One `BPF_PROG_TEST_RUN` of the XDP program `name` of a loaded object.
fn run_xdp(ebpf: &Ebpf, name: &str, packet: &[u8], repeat: u32) -> Result<TestRunOutcome> {
    let Some(Program::Xdp(prog)) = ebpf.program(name) else {
        return Err(DataplaneError::Load {
            path: PathBuf::new(),
            reason: format!("no XDP program {name}"),
        });
    };
    // Room for the packet plus anything a program could prepend.
    let mut out = vec![0u8; packet.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(prog_err("test run"))?;
    out.truncate(r.data_size_out as usize);
    Ok(TestRunOutcome {
        action: r.return_value,
        output: out,
        duration: r.duration,
    })
}

/// Loads a standalone XDP object (benchmark reference programs) and test-runs
/// one of its programs.
pub struct ReferenceProgram {
    ebpf: Ebpf,
    name: String,
}

impl ReferenceProgram {
    pub fn load(object: &Path, name: &str) -> Result<ReferenceProgram> {
        let mut ebpf = Ebpf::load_file(object).map_err(|e| DataplaneError::Load {
            path: object.into(),
            reason: format!("{e:#}"),
        })?;
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Load {
                path: object.into(),
                reason: format!("no program {name}"),
            })?
            .try_into()
            .map_err(prog_err("reference"))?;
        prog.load().map_err(|e| DataplaneError::Load {
            path: object.into(),
            reason: verifier_message(&e),
        })?;
        Ok(Self {
            ebpf,
            name: name.into(),
        })
    }

    /// Puts `key → value` (8-byte key, 8-byte value) in the program's
    /// `REF_TABLE` hash map.
    pub fn insert(&mut self, key: u64, value: u64) -> Result<()> {
        let mut m: HashMap<&mut MapData, u64, u64> =
            HashMap::try_from(self.ebpf.map_mut("REF_TABLE").ok_or(
                DataplaneError::PinMismatch {
                    name: "REF_TABLE",
                    reason: "missing".into(),
                },
            )?)
            .map_err(map_err("REF_TABLE"))?;
        m.insert(key, value, 0).map_err(map_err("REF_TABLE"))
    }

    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<TestRunOutcome> {
        run_xdp(&self.ebpf, &self.name, packet, repeat)
    }
}

fn verifier_message(e: &ProgramError) -> String {
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

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug)]
pub struct TestRunOutcome {
    /// XDP action (`XDP_PASS` = 2, `XDP_TX` = 3, `XDP_REDIRECT` = 4, ...).
    pub action: u32,
    pub output: Vec<u8>,
    /// Average time per run.
    pub duration: Duration,
}

/// What an install did and how long it took.
#[derive(Clone, Debug)]
pub struct InstallReport {
    pub generation: u64,
    pub routes: usize,
    /// Route entries written or deleted (all of them unless incremental).
    pub changed: usize,
    pub shards: usize,
    /// Building the new generation's maps.
    pub fill: Duration,
    /// Slot updates and the flip.
    pub swap: Duration,
    pub total: Duration,
}

/// The installed state as the kernel holds it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub config: RouterConfig,
    pub meta: Meta,
    pub active_slot: u32,
    pub routes: Vec<(TopicKey, Route)>,
    pub shards: Vec<Shard>,
    pub egress: Vec<(u32, u32)>,
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub reasons: BTreeMap<Reason, Counter>,
    /// Topic name key → (slot, counter).
    pub topics: BTreeMap<TopicKey, (u32, Counter)>,
    pub unrouted: BTreeMap<TopicKey, Counter>,
}

/// XDP action numbers.
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

//! Loading, pinning, attaching, adopting and detaching the data plane.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, HashMap, MapData},
    programs::{
        Iter, SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{NlOptions, TcAttachOptions},
    },
};
use aya_obj::programs::XdpAttachType;
use router_common::{
    maps::{
        Counter, DeviceAddr, DeviceEntry, GROUP_CELL_LINES, GroupCellLine, GroupStatKey,
        MAX_EGRESS, Meta, names,
    },
    topic::TopicKey,
};

use crate::{
    Dataplane, FanoutPath, GroupReader, IdsMap, Mode, NamesMap, RouterConfig, RoutesMap, ShardsMap,
    broadcast, error::*, iter, netdev::*, pins::*,
};

/// Loads (and pins, when asked) the `SC_GROUP_STATS` iterator. It needs the
/// kernel's BTF (`/sys/kernel/btf/vmlinux`); a kernel without it still
/// routes, and the daemon reads its counters in batches instead (slower).
pub(crate) fn load_group_dump(
    ebpf: &mut Ebpf,
    pin: &mut Option<(&PinPaths, &mut Vec<PathBuf>)>,
) -> Result<GroupReader> {
    let name = names::PROG_GROUP_DUMP;
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => {
            let why = format!("no kernel BTF ({e})");
            tracing::warn!("{why}: group counters will be read in batches");
            return Ok(GroupReader::Batched(why));
        }
    };
    let prog: &mut Iter = program_of(ebpf, name)?;
    if let Err(e) = prog.load("bpf_map_elem", &btf) {
        let why = format!("iterator not loaded: {}", verifier_message(&e));
        tracing::warn!("group counter {why}: counters will be read in batches");
        return Ok(GroupReader::Batched(why));
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
    Ok(GroupReader::Iterator(fd))
}

/// Loads the XDP program `name` of `ebpf` (read from `object`) into the
/// kernel; a refusal carries the tail of the verifier's log.
pub(crate) fn load_xdp<'e>(ebpf: &'e mut Ebpf, object: &Path, name: &str) -> Result<&'e mut Xdp> {
    let load_err = |reason: String| DataplaneError::Load {
        path: object.into(),
        reason,
    };
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| load_err(format!("no program {name}")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| load_err(format!("{name}: {e}")))?;
    prog.load().map_err(|e| load_err(verifier_message(&e)))?;
    Ok(prog)
}

/// What `attach` needs.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub object: PathBuf,
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
    pub mode: Mode,
    pub config: RouterConfig,
    /// How the fan-out program is attached at TC ingress.
    pub tc: TcAttach,
    /// How multi-shard publishes fan out (broadcast where possible, or TC).
    pub fanout: FanoutPath,
}

/// How the fan-out program is attached at TC ingress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcAttach {
    /// TCX where the kernel has it (6.6 and later), else a clsact filter.
    #[default]
    Auto,
    /// TCX only (an error where the kernel refuses it).
    Tcx,
    /// A clsact filter (netlink), as on kernels before 6.6.
    Netlink,
}

impl TcAttach {
    /// The names [`TcAttach::from_str`](std::str::FromStr) takes.
    pub const NAMES: &'static [&'static str] = &["auto", "tcx", "netlink"];
}

impl std::str::FromStr for TcAttach {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(TcAttach::Auto),
            "tcx" => Ok(TcAttach::Tcx),
            "netlink" => Ok(TcAttach::Netlink),
            other => Err(format!(
                "{other:?} is not a TC attach mode (expected {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Removes the fan-out's clsact filter from `iface`, if there is one. The
/// filter carries the program's name as the kernel keeps it: cut to 15
/// bytes (`BPF_OBJ_NAME_LEN`), so both spellings are tried.
pub(crate) fn detach_fanout_filter(iface: &str) {
    let full = names::PROG_FANOUT;
    for name in [full, &full[..full.len().min(15)]] {
        let _ = aya::programs::tc::qdisc_detach_program(iface, TcAttachType::Ingress, name);
    }
}

/// Where an attached fan-out lives.
pub(crate) enum FanoutLink {
    /// A TCX link, pinned here.
    Pinned(PathBuf),
    /// A clsact filter on the interface.
    Netlink,
}

impl Dataplane {
    /// Loads the object in this process without pinning or attaching
    /// anything: for in-kernel tests (`TestRun`) and benchmarks.
    pub fn load(object: &Path, config: &RouterConfig) -> Result<Dataplane> {
        Self::load_and_pin(object, config, FanoutPath::Auto, None)
    }

    pub(crate) fn load_and_pin(
        object: &Path,
        config: &RouterConfig,
        fanout: FanoutPath,
        mut pin: Option<(&PinPaths, &mut Vec<PathBuf>)>,
    ) -> Result<Dataplane> {
        if !object.exists() {
            return Err(DataplaneError::ObjectMissing {
                path: object.into(),
            });
        }
        // One line table per CPU the kernel may run the program on.
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Load {
            path: object.into(),
            reason: format!("counting the possible CPUs: {e}"),
        })?;
        let cells = u32::try_from(cpus)
            .ok()
            .and_then(|c| c.checked_mul(GROUP_CELL_LINES))
            .ok_or_else(|| DataplaneError::Load {
                path: object.into(),
                reason: format!("{cpus} possible CPUs: too many for the group counter table"),
            })?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::GROUP_CELLS, cells)
            .load_file(object)
            .map_err(|e| DataplaneError::Load {
                path: object.into(),
                reason: format!("{e:#}"),
            })?;
        for name in [names::PROG_ROUTER, names::PROG_PASS] {
            let prog = load_xdp(&mut ebpf, object, name)?;
            if let Some((pins, created)) = &mut pin {
                let path = pins.prog(name);
                record_pin(created, path.clone(), prog.pin(&path))?;
            }
        }
        {
            let name = names::PROG_FANOUT;
            let load_err = |reason: String| DataplaneError::Load {
                path: object.into(),
                reason: format!("{name}: {reason}"),
            };
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| load_err("missing from the object".into()))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| load_err(e.to_string()))?;
            prog.load().map_err(|e| load_err(verifier_message(&e)))?;
            if let Some((pins, created)) = &mut pin {
                let path = pins.prog(name);
                record_pin(created, path.clone(), prog.pin(&path))?;
            }
        }
        let copy_prog = match fanout {
            FanoutPath::Auto => broadcast::load_copy(&mut ebpf, &mut pin)?,
            FanoutPath::Tc => None,
        };
        let group_dump = load_group_dump(&mut ebpf, &mut pin)?;
        let p = &mut pin;
        let (_, raw_devices): (HashMap<MapData, DeviceAddr, u32>, _) =
            take_raw(&mut ebpf, names::DEVICES, p)?;
        let (_, raw_group_stats): (HashMap<MapData, GroupStatKey, Counter>, _) =
            take_raw(&mut ebpf, names::GROUP_STATS, p)?;
        // SC_SLOTS: counter slot → topic name key (hash 0: free).
        let (_, raw_slots): (Array<MapData, TopicKey>, _) = take_raw(&mut ebpf, names::SLOTS, p)?;
        let slots = map_slots(&raw_slots)?;
        let (_, raw_index): (Array<MapData, DeviceEntry>, _) =
            take_raw(&mut ebpf, names::DEVICE_INDEX, p)?;
        let device_index = map_device_index(&raw_index)?;
        let (_, raw_cells): (Array<MapData, GroupCellLine>, _) =
            take_raw(&mut ebpf, names::GROUP_CELLS, p)?;
        let group_cells = map_group_cells(&raw_cells)?;
        let (routes, raw_routes): (ArrayOfMaps<MapData, RoutesMap>, _) =
            take_raw(&mut ebpf, names::ROUTES, p)?;
        let (_, raw_ids): (ArrayOfMaps<MapData, IdsMap>, _) = take_raw(&mut ebpf, names::IDS, p)?;
        let (fanout_maps, raw_fanout): (ArrayOfMaps<MapData, MapData>, _) =
            take_raw(&mut ebpf, names::FANOUT, p)?;
        let (names_outer, raw_names): (ArrayOfMaps<MapData, MapData>, _) =
            take_raw(&mut ebpf, names::NAMES, p)?;
        let (shards, raw_shards): (ArrayOfMaps<MapData, ShardsMap>, _) =
            take_raw(&mut ebpf, names::SHARDS, p)?;
        let mut dp = Dataplane {
            config: take_global(&mut ebpf, names::CONFIG_SECTION, names::CONFIG, p)?,
            active: take_global(&mut ebpf, names::ACTIVE_SECTION, names::ACTIVE, p)?,
            meta: take(&mut ebpf, names::META, p)?,
            routes,
            shards,
            raw_shards,
            egress: take(&mut ebpf, names::EGRESS, p)?,
            egress_if: take(&mut ebpf, names::EGRESS_IF, p)?,
            fanout_maps,
            raw_fanout,
            copy_prog,
            broadcast_egress: Some(0),
            fanout_path: fanout,
            shapes: Default::default(),
            retired_shapes: Vec::new(),
            reasons: take(&mut ebpf, names::REASONS, p)?,
            topic_stats: take(&mut ebpf, names::TOPIC_STATS, p)?,
            unrouted: take(&mut ebpf, names::UNROUTED, p)?,
            raw_devices,
            slots,
            device_index,
            group_cells,
            cells_in_use: Default::default(),
            raw_group_stats,
            group_dump: group_dump.into(),
            raw_routes,
            raw_ids,
            names: names_outer,
            raw_names,
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
            names: open_pinned(&pins, names::NAMES)?,
            raw_names: open_raw::<ArrayOfMaps<MapData, NamesMap>>(&pins, names::NAMES)?,
            raw_shards: open_raw::<ArrayOfMaps<MapData, ShardsMap>>(&pins, names::SHARDS)?,
            settling: None,
            shards: open_pinned(&pins, names::SHARDS)?,
            egress: open_pinned(&pins, names::EGRESS)?,
            egress_if: open_pinned(&pins, names::EGRESS_IF)?,
            fanout_maps: open_pinned(&pins, names::FANOUT)?,
            raw_fanout: open_raw::<ArrayOfMaps<MapData, MapData>>(&pins, names::FANOUT)?,
            copy_prog: broadcast::open_copy(&pins)?,
            broadcast_egress: None,
            fanout_path: FanoutPath::Auto,
            shapes: Default::default(),
            retired_shapes: Vec::new(),
            reasons: open_pinned(&pins, names::REASONS)?,
            topic_stats: open_pinned(&pins, names::TOPIC_STATS)?,
            unrouted: open_pinned(&pins, names::UNROUTED)?,
            slots: map_slots(&open_raw::<Array<MapData, TopicKey>>(&pins, names::SLOTS)?)?,
            device_index: map_device_index(&open_raw::<Array<MapData, DeviceEntry>>(
                &pins,
                names::DEVICE_INDEX,
            )?)?,
            group_cells: map_group_cells(&open_raw::<Array<MapData, GroupCellLine>>(
                &pins,
                names::GROUP_CELLS,
            )?)?,
            cells_in_use: Default::default(),
            raw_devices: open_raw::<HashMap<MapData, DeviceAddr, u32>>(&pins, names::DEVICES)?,
            raw_group_stats: open_raw::<HashMap<MapData, GroupStatKey, Counter>>(
                &pins,
                names::GROUP_STATS,
            )?,
            group_dump: std::cell::RefCell::new(
                match iter::obj_get(&pins.prog(names::PROG_GROUP_DUMP)) {
                    Ok(fd) => GroupReader::Iterator(fd),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => GroupReader::Batched(
                        "the pinned data plane has no iterator (the kernel refused it at attach)"
                            .into(),
                    ),
                    Err(e) => {
                        return Err(DataplaneError::Pin {
                            path: pins.prog(names::PROG_GROUP_DUMP),
                            reason: e.to_string(),
                        });
                    }
                },
            ),
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
            netlink: Vec::new(),
            armed: true,
        };
        // Generic XDP keeps no XDP metadata for a device-map egress
        // program: the copies of a broadcast could not be told what they
        // are. In that mode multi-shard publishes fan out by TC.
        let fanout = match opts.mode {
            Mode::Skb => FanoutPath::Tc,
            Mode::Driver => opts.fanout,
        };
        let fresh = !pins.map(names::CONFIG).exists();
        let mut dp = if fresh {
            std::fs::create_dir_all(pins.dir())?;
            Dataplane::load_and_pin(
                &opts.object,
                &opts.config,
                fanout,
                Some((&pins, &mut rollback.created)),
            )?
        } else {
            let mut dp = Dataplane::open(pin_root)?;
            if opts.mode == Mode::Skb && dp.copy_prog.is_some() {
                return Err(DataplaneError::BroadcastInSkbMode {
                    path: pins.dir().into(),
                });
            }
            dp.set_config(&opts.config)?;
            dp.set_fanout_path(fanout);
            dp
        };
        for iface in &opts.egress {
            dp.egress_slot(iface)?;
        }
        for iface in &opts.ingress {
            // The fan-out first: the router hands it multi-shard publishes
            // from its first packet on.
            match dp.attach_fanout(iface, opts.tc)? {
                FanoutLink::Pinned(link) => rollback.created.push(link),
                FanoutLink::Netlink => rollback.netlink.push(iface.clone()),
            }
            let link = dp.attach_program(names::PROG_ROUTER, iface, opts.mode)?;
            rollback.created.push(link);
        }
        rollback.armed = false;
        Ok(dp)
    }

    /// Attaches the fan-out program at TC ingress of `iface`: a TCX link
    /// (kernel 6.6 and later), pinned beside the XDP link; or, where TCX
    /// is refused (or `TcAttach::Netlink` asks), a `clsact` filter, which
    /// the kernel keeps without a pin and [`Dataplane::detach`] removes by
    /// name.
    pub(crate) fn attach_fanout(&mut self, iface: &str, mode: TcAttach) -> Result<FanoutLink> {
        let name = names::PROG_FANOUT;
        let pins = self
            .pins
            .as_ref()
            .ok_or(DataplaneError::NotAttached(PathBuf::new()))?;
        let path = pins.link(name, iface);
        let mut prog = SchedClassifier::from_pin(pins.prog(name)).map_err(prog_err(name))?;
        if mode != TcAttach::Netlink {
            match prog.attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(id) => {
                    let link = prog.take_link(id).map_err(prog_err(name))?;
                    let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::Pin {
                        path: path.clone(),
                        reason: format!("TCX attach did not give a bpf_link ({e})"),
                    })?;
                    let _: PinnedLink = fd_link.pin(&path).map_err(|e| DataplaneError::Pin {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                    return Ok(FanoutLink::Pinned(path));
                }
                Err(e) if mode == TcAttach::Tcx => return Err(prog_err(name)(e)),
                Err(e) => {
                    tracing::info!(
                        "TCX refused on {iface} ({e}): fan-out attached as a clsact filter"
                    );
                }
            }
        }
        // `clsact` may already be there (ours from before, or another
        // tool's): adding it again fails harmlessly; the attach says
        // whether it is usable.
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
        let id = prog
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .map_err(prog_err(name))?;
        // The filter must outlive this process, as a pinned link does: aya
        // removes it when its link handle is dropped, so the handle is
        // let go of (`detach` removes the filter by name).
        let link = prog.take_link(id).map_err(prog_err(name))?;
        std::mem::forget(link);
        Ok(FanoutLink::Netlink)
    }

    /// Attaches a pinned program to `iface` and pins the link; returns the
    /// link's pin path.
    pub(crate) fn attach_program(
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

    /// Detaches every link and removes every pin of our layout (and the
    /// fan-out's `clsact` filters, where it was attached without TCX).
    pub fn detach(pin_root: &Path) -> Result<Vec<PathBuf>> {
        let pins = PinPaths::new(pin_root);
        if !pins.dir().exists() {
            return Err(DataplaneError::NotAttached(pins.dir().into()));
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(pins.dir())?
            .flatten()
            .map(|e| e.path())
            .collect();
        // A router interface whose fan-out link is not pinned has it as a
        // clsact filter: removed by name (an interface gone meanwhile has
        // nothing left to remove).
        let router_link = format!("link_{}_", names::PROG_ROUTER);
        let fanout_link = format!("link_{}_", names::PROG_FANOUT);
        let names_of: Vec<String> = entries
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        for n in &names_of {
            if let Some(iface) = n.strip_prefix(&router_link)
                && !names_of.contains(&format!("{fanout_link}{iface}"))
                && ifindex(iface).is_ok()
            {
                detach_fanout_filter(iface);
            }
        }
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
            .set(0, config.to_map()?, 0)
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
        // What a previous interface in this slot left is not this one's.
        self.retire_egress(slot);
        // The fan-out's copy first: a slot the router can use is one the
        // fan-out can too.
        self.egress_if
            .set(slot, idx, 0)
            .map_err(|e| DataplaneError::Pin {
                path: PathBuf::from(names::EGRESS_IF),
                reason: format!("cannot add {iface} (ifindex {idx}): {e}"),
            })?;
        // With the copy program where broadcasts may use this egress (see
        // `broadcast`); a device that refuses it takes plain redirects, and
        // its multi-shard publishes fan out by TC.
        let with_copy = match &self.copy_prog {
            Some(prog) => match self.egress.set(slot, idx, Some(prog), 0) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        "{iface} refused the copy program ({e}): its multi-shard publishes fan out by TC"
                    );
                    false
                }
            },
            None => false,
        };
        if !with_copy {
            self.egress
                .set(slot, idx, None, 0)
                .map_err(|e| DataplaneError::Pin {
                    path: PathBuf::from(names::EGRESS),
                    reason: format!("cannot add {iface} (ifindex {idx}): {e}"),
                })?;
        } else {
            self.add_broadcast(slot, idx);
        }
        Ok(slot)
    }

    /// Egress table: slot → ifindex.
    pub fn egress_table(&self) -> Vec<(u32, u32)> {
        (0..MAX_EGRESS)
            .filter_map(|s| self.egress.get(s, 0).ok().map(|v| (s, v.if_index)))
            .collect()
    }
}

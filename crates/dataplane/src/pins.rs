//! Pins under bpffs: where each program, map and link of a layout version
//! lives, how pinned maps are reopened and checked against the layout, and
//! the rollback that removes what a failed attach pinned.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapError},
};
use router_common::{
    maps::{DEVICE_INDEX_ENTRIES, DeviceEntry, GroupCellLine, LAYOUT_VERSION, MAX_TOPICS, names},
    topic::TopicKey,
};

use crate::{error::*, mmap};

/// Where the pins of one layout version live.
#[derive(Clone, Debug)]
pub struct PinPaths {
    pub(crate) root: PathBuf,
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

    pub(crate) fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn prog(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn link(&self, prog: &str, iface: &str) -> PathBuf {
        self.dir.join(format!("link_{prog}_{iface}"))
    }

    /// Layout directories other than ours (e.g. `v0` left by an older build).
    pub(crate) fn other_layouts(&self) -> Vec<String> {
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

pub(crate) fn check_bpffs(root: &Path) -> Result<()> {
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
pub(crate) fn take_raw<T: TryFrom<Map, Error = MapError>>(
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

/// The program `name` of a freshly loaded object, as the kind `T` it must
/// be (not yet loaded into the kernel).
pub(crate) fn program_of<'e, T>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut T>
where
    &'e mut T: TryFrom<&'e mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::PinMismatch {
            name,
            reason: "missing from the eBPF object".into(),
        })?
        .try_into()
        .map_err(prog_err(name))
}

/// Takes a map out of a freshly loaded object, pinning it first when asked.
pub(crate) fn take<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
    pin: &mut Option<(&PinPaths, &mut Vec<PathBuf>)>,
) -> Result<T> {
    take_as(ebpf, name, name, pin)
}

/// [`take`] for global data: the section `section` (a map of that name in
/// the object) pinned as `name`. An object built before the value became
/// global data (one the bench times beside this build) has a map `name`
/// instead, of the same type and size, and that is taken.
pub(crate) fn take_global<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    section: &'static str,
    name: &'static str,
    pin: &mut Option<(&PinPaths, &mut Vec<PathBuf>)>,
) -> Result<T> {
    let from = if ebpf.map(section).is_some() {
        section
    } else {
        name
    };
    take_as(ebpf, from, name, pin)
}

/// Takes the object's map `from`, pinned as `name`.
fn take_as<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    from: &'static str,
    name: &'static str,
    pin: &mut Option<(&PinPaths, &mut Vec<PathBuf>)>,
) -> Result<T> {
    let map = ebpf.take_map(from).ok_or(DataplaneError::PinMismatch {
        name,
        reason: format!("{from} missing from the eBPF object"),
    })?;
    if let Some((pins, created)) = pin {
        let path = pins.map(name);
        record_pin(created, path.clone(), map.pin(&path))?;
    }
    T::try_from(map).map_err(map_err(name))
}

pub(crate) fn open_pinned<T: TryFrom<Map, Error = MapError>>(
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
pub(crate) fn open_raw<T: TryFrom<Map, Error = MapError>>(
    pins: &PinPaths,
    name: &'static str,
) -> Result<MapData> {
    let _: T = open_pinned(pins, name)?;
    MapData::from_pin(pins.map(name)).map_err(map_err(name))
}

/// Notes a pin just made at `path` (so a failed attach can remove it), or
/// says which pin failed.
pub(crate) fn record_pin<E: std::fmt::Display>(
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

/// Removes the pins this attach created if it fails half-way.
pub(crate) struct PinRollback {
    pub(crate) created: Vec<PathBuf>,
    /// Interfaces given the fan-out as a clsact filter (no pin).
    pub(crate) netlink: Vec<String>,
    pub(crate) armed: bool,
}

impl Drop for PinRollback {
    fn drop(&mut self) {
        if self.armed {
            for iface in &self.netlink {
                crate::lifecycle::detach_fanout_filter(iface);
            }
            for p in self.created.iter().rev() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A second handle on the map behind `map` (same kernel object).
pub(crate) fn second_handle(map: &Map, name: &'static str) -> Result<MapData> {
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

/// Maps `SC_DEVICE_INDEX` (which the object declares `BPF_F_MMAPABLE`).
pub(crate) fn map_device_index(map: &MapData) -> Result<mmap::ArrayMmap<DeviceEntry>> {
    mmap::ArrayMmap::new(map.fd().as_fd(), DEVICE_INDEX_ENTRIES as usize).map_err(|source| {
        DataplaneError::Mmap {
            name: names::DEVICE_INDEX,
            source,
        }
    })
}

/// Maps `SC_GROUP_CELLS` whole: `GROUP_CELL_LINES` lines for each CPU the
/// loader sized it for.
pub(crate) fn map_group_cells(map: &MapData) -> Result<mmap::ArrayMmap<GroupCellLine>> {
    let err = |source| DataplaneError::Mmap {
        name: names::GROUP_CELLS,
        source,
    };
    let len = crate::batch::map_info(map.fd().as_fd())
        .map_err(err)?
        .max_entries as usize;
    mmap::ArrayMmap::new(map.fd().as_fd(), len).map_err(err)
}

/// Maps `SC_SLOTS` (which the object declares `BPF_F_MMAPABLE`).
pub(crate) fn map_slots(map: &MapData) -> Result<mmap::ArrayMmap<TopicKey>> {
    mmap::ArrayMmap::new(map.fd().as_fd(), MAX_TOPICS as usize).map_err(|source| {
        DataplaneError::Mmap {
            name: names::SLOTS,
            source,
        }
    })
}

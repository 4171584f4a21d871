//! Batched map operations (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_LOOKUP_BATCH`),
//! which aya does not wrap, and single updates through a raw descriptor.
//!
//! One `bpf()` call per element costs about a microsecond of syscall
//! overhead: a million routes would take seconds to install and a tick
//! reading 100k counters a few hundred milliseconds. The batch commands move
//! tens of thousands of elements per call. Only this module issues them.
//!
//! The kernel reads and writes as many bytes per key and per value as the
//! *map* says, whatever the caller's buffers hold. So every operation goes
//! through a [`TypedMap`], whose key and value types were checked against
//! the map's sizes when it was made: a wrong type parameter is an error,
//! never a buffer overrun.

use std::{
    marker::PhantomData,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `union bpf_attr`'s batch member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Elements per update call: large enough that syscall overhead vanishes,
/// small enough that one call never holds the CPU for long.
const UPDATE_CHUNK: usize = 65_536;
/// Elements per lookup call.
const LOOKUP_CHUNK: usize = 65_536;

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    super::sys_bpf(cmd, attr).map(drop)
}

/// `union bpf_attr`'s element member (`BPF_MAP_UPDATE_ELEM`).
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr`'s info member (`BPF_OBJ_GET_INFO_BY_FD`).
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info`: the kernel fills as much of its
/// struct as we give room for.
#[repr(C)]
#[derive(Default, Debug)]
pub struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
}

/// What the kernel says about the map behind `fd`.
pub fn map_info(fd: BorrowedFd<'_>) -> std::io::Result<MapInfo> {
    let mut info = MapInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<MapInfo>() as u32,
        info: &mut info as *mut MapInfo as u64,
    };
    super::sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// Per-CPU map types (`BPF_MAP_TYPE_PERCPU_HASH`, `_PERCPU_ARRAY`,
/// `_LRU_PERCPU_HASH`, `_PERCPU_CGROUP_STORAGE`): a lookup returns one
/// value per possible CPU, which a `V` buffer does not hold.
const PER_CPU_TYPES: [u32; 4] = [5, 6, 10, 21];

/// A map descriptor whose key and value sizes are `K`'s and `V`'s (and
/// which is not per-CPU), checked against the kernel's record of the map.
pub struct TypedMap<'fd, K, V> {
    fd: BorrowedFd<'fd>,
    _types: PhantomData<fn(K, V)>,
}

impl<K, V> Clone for TypedMap<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for TypedMap<'_, K, V> {}

impl<'fd, K: Pod, V: Pod> TypedMap<'fd, K, V> {
    /// Checks the map behind `fd` against `K` and `V`.
    pub fn new(fd: BorrowedFd<'fd>) -> std::io::Result<Self> {
        let info = map_info(fd)?;
        if info.key_size as usize != size_of::<K>() || info.value_size as usize != size_of::<V>() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "map {} has {}-byte keys and {}-byte values; the caller's types are {} and {} bytes",
                    info.id,
                    info.key_size,
                    info.value_size,
                    size_of::<K>(),
                    size_of::<V>()
                ),
            ));
        }
        if PER_CPU_TYPES.contains(&info.map_type) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "map {} is per-CPU (type {}): one value per CPU, not one per key",
                    info.id, info.map_type
                ),
            ));
        }
        Ok(TypedMap {
            fd,
            _types: PhantomData,
        })
    }

    /// Writes `keys[i] → values[i]` for all `i` (`BPF_ANY`).
    pub fn update(&self, keys: &[K], values: &[V]) -> std::io::Result<()> {
        if keys.len() != values.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} keys but {} values", keys.len(), values.len()),
            ));
        }
        let map = self.fd;
        for (ks, vs) in keys.chunks(UPDATE_CHUNK).zip(values.chunks(UPDATE_CHUNK)) {
            let mut attr = BatchAttr {
                keys: ks.as_ptr() as u64,
                values: vs.as_ptr() as u64,
                count: ks.len() as u32,
                map_fd: map.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
            if attr.count as usize != ks.len() {
                return Err(std::io::Error::other(format!(
                    "batch update wrote {} of {} elements",
                    attr.count,
                    ks.len()
                )));
            }
        }
        Ok(())
    }

    /// Writes one element (`BPF_ANY`) through a raw descriptor: for a
    /// thread that holds only a duplicate of the map's descriptor.
    pub fn update_one(&self, key: &K, value: &V) -> std::io::Result<()> {
        let map = self.fd;
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: key as *const K as u64,
            value: value as *const V as u64,
            ..ElemAttr::default()
        };
        super::sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// Deletes `keys`; every one must be present.
    pub fn delete(&self, keys: &[K]) -> std::io::Result<()> {
        let map = self.fd;
        for ks in keys.chunks(UPDATE_CHUNK) {
            let mut attr = BatchAttr {
                keys: ks.as_ptr() as u64,
                count: ks.len() as u32,
                map_fd: map.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            bpf(BPF_MAP_DELETE_BATCH, &mut attr)?;
        }
        Ok(())
    }

    /// Every element of the map.
    pub fn lookup(&self) -> std::io::Result<Vec<(K, V)>>
    where
        K: Default,
        V: Default,
    {
        let map = self.fd;
        let mut out = Vec::new();
        let mut keys = vec![K::default(); LOOKUP_CHUNK];
        let mut values = vec![V::default(); LOOKUP_CHUNK];
        // The cursor is a u32 (bucket or index); give it room to spare.
        let mut cursor = [0u64; 1];
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
                out_batch: cursor.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: LOOKUP_CHUNK as u32,
                map_fd: map.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
                Ok(()) => false,
                // The last batch: `count` says how many it holds.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Err(e) => return Err(e),
            };
            let n = attr.count as usize;
            out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
            if done {
                return Ok(out);
            }
            first = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use aya::maps::MapData;
    use aya_obj::generated::bpf_map_type;

    use super::*;

    fn map(kind: bpf_map_type, key: u32, value: u32) -> MapData {
        MapData::create(
            aya_obj::Map::new_from_params(kind as u32, key, value, 64, 0),
            "sc_batch_test",
            None,
        )
        .expect("creating a map (needs root / CAP_BPF)")
    }

    #[test]
    fn types_that_do_not_match_the_map_are_refused_before_any_access() {
        let m = map(bpf_map_type::BPF_MAP_TYPE_HASH, 4, 8);
        let fd = m.fd().as_fd();
        // A smaller value type would let the kernel write past each slot.
        let e = TypedMap::<u32, u32>::new(fd).err().expect("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("8-byte values"), "{e}");
        assert!(TypedMap::<u64, u64>::new(fd).is_err());
        // The right types work, both ways.
        let t = TypedMap::<u32, u64>::new(fd).unwrap();
        t.update(&[1, 2, 3], &[10, 20, 30]).unwrap();
        t.update_one(&4, &40).unwrap();
        t.delete(&[2]).unwrap();
        let mut got = t.lookup().unwrap();
        got.sort();
        assert_eq!(got, [(1, 10), (3, 30), (4, 40)]);
        // Mismatched slices are an error, not a panic.
        assert!(t.update(&[5], &[]).is_err());
        // A per-CPU map holds one value per CPU per key.
        let p = map(bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH, 4, 8);
        let e = TypedMap::<u32, u64>::new(p.fd().as_fd())
            .err()
            .expect("refused");
        assert!(e.to_string().contains("per-CPU"), "{e}");
    }
}

//! Batched map operations (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_LOOKUP_BATCH`),
//! which aya does not wrap, and single updates through a raw descriptor.
//!
//! One `bpf()` call per element costs about a microsecond of syscall
//! overhead: a million routes would take seconds to install and a tick
//! reading 100k counters a few hundred milliseconds. The batch commands move
//! tens of thousands of elements per call. Only this module issues them.

use std::os::fd::{AsRawFd, BorrowedFd};

use aya::Pod;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
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

/// Writes `keys[i] → values[i]` for all `i` (`BPF_ANY`). `K` and `V` must be
/// the map's key and value types (the kernel reads `size_of` of each).
pub fn update<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
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

/// Writes one element (`BPF_ANY`) through a raw descriptor: for a thread
/// that holds only a duplicate of the map's descriptor.
pub fn update_one<K: Pod, V: Pod>(map: BorrowedFd<'_>, key: &K, value: &V) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *const V as u64,
        ..ElemAttr::default()
    };
    super::sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Deletes `keys`; every one must be present.
pub fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> std::io::Result<()> {
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

/// Every element of a hash or array map (not a per-CPU one: `V` is one
/// value).
pub fn lookup<K: Pod + Default, V: Pod + Default>(
    map: BorrowedFd<'_>,
) -> std::io::Result<Vec<(K, V)>> {
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

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
    // SAFETY: `attr` is a valid, initialised `bpf_attr` batch member of the
    // size we pass; the pointers in it reference live buffers of the sizes
    // the kernel derives from the map's key and value sizes and `count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
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
    // SAFETY: `attr` is a valid `bpf_attr` element member of the size we
    // pass; key and value point at live values of the map's sizes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &mut attr as *mut ElemAttr,
            size_of::<ElemAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
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

/// Every element of a hash or array map. For a per-CPU map pass the
/// kernel's possible CPU count as `ncpus` and a `V` whose size is a multiple
/// of 8 (the kernel's per-CPU stride); values are folded over CPUs with
/// `add`. For a plain map pass `ncpus = 1`.
pub fn lookup<K: Pod + Default, V: Pod + Default>(
    map: BorrowedFd<'_>,
    ncpus: usize,
    add: impl FnMut(&mut V, &V),
) -> std::io::Result<Vec<(K, V)>> {
    lookup_first(map, ncpus, usize::MAX, add)
}

/// [`lookup`], stopping after `limit` elements (for an array: the first
/// `limit` indices).
pub fn lookup_first<K: Pod + Default, V: Pod + Default>(
    map: BorrowedFd<'_>,
    ncpus: usize,
    limit: usize,
    mut add: impl FnMut(&mut V, &V),
) -> std::io::Result<Vec<(K, V)>> {
    if ncpus > 1 {
        assert_eq!(size_of::<V>() % 8, 0, "per-CPU values must be 8-byte sized");
    }
    let ncpus = ncpus.max(1);
    let mut out = Vec::new();
    let mut keys = vec![K::default(); LOOKUP_CHUNK];
    let mut values = vec![V::default(); LOOKUP_CHUNK * ncpus];
    // The cursor is a u32 (bucket or index); give it room to spare.
    let mut cursor = [0u64; 1];
    let mut first = true;
    loop {
        let want = LOOKUP_CHUNK.min(limit - out.len());
        if want == 0 {
            return Ok(out);
        }
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
            out_batch: cursor.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: want as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
            // The last batch: `count` says how many it holds.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        for i in 0..attr.count as usize {
            let mut sum = V::default();
            for v in &values[i * ncpus..(i + 1) * ncpus] {
                add(&mut sum, v);
            }
            out.push((keys[i], sum));
        }
        if done {
            return Ok(out);
        }
        first = false;
    }
}

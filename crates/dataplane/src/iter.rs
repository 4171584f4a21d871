//! Map-element iterators (`BPF_LINK_CREATE` with a map target,
//! `BPF_ITER_CREATE`) and `BPF_OBJ_GET` of a pinned program: aya loads
//! iterator programs but only links ones without a target object.
//!
//! Why an iterator: the daemon reads every (topic, group) counter each tick.
//! `BPF_MAP_LOOKUP_BATCH` on a hash map takes the bucket lock, an RCU
//! section and two `copy_to_user` calls per non-empty bucket (about 0.35 µs
//! per counter here); the iterator walks the buckets under RCU, runs a
//! tiny program per element that appends a fixed-size record (key and
//! counter) to the seq_file buffer, and `read` copies that out in large
//! pieces. Only this module issues these commands.

use std::{
    ffi::CString,
    fs::File,
    io::Read,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya::Pod;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `enum bpf_attach_type`'s `BPF_TRACE_ITER`.
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr`'s `link_create` member, iterator variant.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `union bpf_iter_link_info` (its `map` member; 16 bytes in all).
#[repr(C)]
#[derive(Default)]
struct IterLinkInfo {
    map_fd: u32,
    _rest: [u32; 3],
}

/// `union bpf_attr`'s `iter_create` member.
#[repr(C)]
#[derive(Default)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

/// `union bpf_attr`'s `obj_get` member (`BPF_OBJ_GET`).
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Issues `cmd`, which returns a new descriptor.
fn bpf_fd<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<OwnedFd> {
    let fd = super::sys_bpf(cmd, attr)?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens the BPF object (program, map, link) pinned at `path`.
pub fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("pin path contains a NUL byte"))?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..ObjGetAttr::default()
    };
    bpf_fd(BPF_OBJ_GET, &mut attr)
}

/// Runs the map-element iterator `prog` over `map` once and returns what it
/// wrote, read as records of type `R` (the program must write whole
/// records) and passed through `f`.
pub fn dump_map<R: Pod, T>(
    prog: BorrowedFd<'_>,
    map: BorrowedFd<'_>,
    f: impl FnMut(R) -> T,
) -> std::io::Result<Vec<T>> {
    let info = IterLinkInfo {
        map_fd: map.as_raw_fd() as u32,
        ..IterLinkInfo::default()
    };
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TRACE_ITER,
        iter_info: &info as *const IterLinkInfo as u64,
        iter_info_len: size_of::<IterLinkInfo>() as u32,
        ..LinkCreateAttr::default()
    };
    let link = bpf_fd(BPF_LINK_CREATE, &mut attr)?;
    let mut attr = IterCreateAttr {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
    };
    let mut file = File::from(bpf_fd(BPF_ITER_CREATE, &mut attr)?);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let size = size_of::<R>();
    if bytes.len() % size != 0 {
        return Err(std::io::Error::other(format!(
            "iterator wrote {} bytes, not a whole number of {size}-byte records",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(size)
        // SAFETY: `R` is plain old data (any bytes are a valid value) and
        // each chunk holds exactly one, possibly unaligned.
        .map(|c| unsafe { (c.as_ptr() as *const R).read_unaligned() })
        .map(f)
        .collect())
}

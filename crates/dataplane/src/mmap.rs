//! A shared mapping of a `BPF_F_MMAPABLE` array map (aya has no wrapper).
//!
//! Why: `SC_SLOTS` (counter slot → topic key) is written for every new topic
//! of a plan and read whole when a process adopts the data plane. Through
//! `BPF_MAP_UPDATE_BATCH` / `LOOKUP_BATCH` that costs ~0.3 µs per element
//! (a copy from or to user memory and a map operation each): 30 ms of a
//! 100k-topic install. Mapped, it is plain memory.

use std::{
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
};

use aya::Pod;

/// `len` elements of type `T`, mapped read-write and shared with the
/// kernel and every other process that maps the same map.
pub struct ArrayMmap<T: Pod> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving it to
// another thread moves that ownership.
unsafe impl<T: Pod> Send for ArrayMmap<T> {}

impl<T: Pod> ArrayMmap<T> {
    /// Maps the first `len` elements of the array map `fd` (whose values
    /// must be `T`, 8-byte sized as the kernel strides them).
    ///
    /// The map's value size and length are checked against `T` and `len`
    /// first: a mapping shorter than `len` elements of `T` would let safe
    /// code read past it.
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        let info = super::batch::map_info(fd)?;
        if !size_of::<T>().is_multiple_of(8)
            || info.value_size as usize != size_of::<T>()
            || (info.max_entries as usize) < len
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "map {} holds {} values of {} bytes; mapping {len} elements of {} bytes (8-byte strided) does not fit it",
                    info.id,
                    info.max_entries,
                    info.value_size,
                    size_of::<T>()
                ),
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's memory; the kernel
        // checks the map is mmapable and at least `bytes` long.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(p as *mut T).expect("mmap succeeded"),
            len,
            bytes,
        })
    }

    /// Elements mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Element `i` (another process may be writing it: read once).
    pub fn get(&self, i: usize) -> T {
        assert!(i < self.len, "index {i} out of {}", self.len);
        // SAFETY: in bounds of the live mapping; `T` is plain old data.
        unsafe { self.ptr.as_ptr().add(i).read_volatile() }
    }

    pub fn set(&mut self, i: usize, v: T) {
        assert!(i < self.len, "index {i} out of {}", self.len);
        // SAFETY: in bounds of the live, writable mapping.
        unsafe { self.ptr.as_ptr().add(i).write_volatile(v) }
    }
}

impl<T: Pod> Drop for ArrayMmap<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped, once.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.bytes);
        }
    }
}

//! `shardcast_group_dump`: the map iterator the daemon reads the
//! (topic, device group) counters through, one `read()` for the whole map.

use aya_ebpf::{bindings::seq_file, helpers::bpf_seq_write};
use router_common::maps::{Counter, GroupStatKey, GroupStatRecord};

/// `struct bpf_iter_meta` (include/linux/bpf.h): only `seq` is read.
#[repr(C)]
pub struct IterMeta {
    seq: *mut seq_file,
}

/// `struct bpf_iter__bpf_map_elem`, the context of a map-element iterator.
/// `key` and `value` are null on the final call after the last element.
#[repr(C)]
pub struct MapElemCtx {
    meta: *const IterMeta,
    map: *const u8,
    key: *const GroupStatKey,
    value: *const Counter,
}

/// Dumps `SC_GROUP_STATS` (the control plane attaches it to that map): one
/// [`GroupStatRecord`] per counter, for the daemon's tick.
///
/// # Safety
/// Called by the kernel's map iterator with a valid context.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_map_elem")]
pub unsafe extern "C" fn shardcast_group_dump(ctx: *const MapElemCtx) -> i32 {
    // SAFETY: the context and the pointers in it are the kernel's; key and
    // value are checked for null (the verifier insists) and are exactly a
    // key and a value of the map the iterator was attached to.
    unsafe {
        let ctx = &*ctx;
        let (key, value) = (ctx.key, ctx.value);
        if key.is_null() || value.is_null() {
            return 0;
        }
        let rec = GroupStatRecord {
            key: *key,
            counter: *value,
        };
        bpf_seq_write(
            (*ctx.meta).seq,
            &rec as *const GroupStatRecord as *const _,
            size_of::<GroupStatRecord>() as u32,
        );
    }
    0
}

//! Where the router's eBPF object is found when no path is given.

use std::path::{Path, PathBuf};

use crate::DataplaneError;

/// Finds the eBPF object: `flag`, then `SHARDCAST_OBJECT`, then beside the
/// running binary (`target/<profile>/../bpf/`, as `cargo xtask build-ebpf`
/// leaves it), then the system location.
pub fn find_object(flag: Option<&Path>) -> Result<PathBuf, DataplaneError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("SHARDCAST_OBJECT") {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        tried.push(dir.join("../bpf/router-ebpf.o"));
        tried.push(dir.join("router-ebpf.o"));
    }
    tried.push(PathBuf::from("/usr/lib/shardcast/router-ebpf.o"));
    match tried.iter().find(|p| p.exists()) {
        Some(p) => Ok(p.clone()),
        None => Err(DataplaneError::ObjectNotFound {
            tried: tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

//! Entering a named network namespace (`ip netns` names).
//!
//! `ip netns exec` also remounts /sys, which hides the bpffs mounted at
//! /sys/fs/bpf and with it every pin. Joining only the network namespace
//! (`setns(CLONE_NEWNET)`) keeps the mount namespace, so pins stay visible
//! while interface names resolve inside the namespace.

use std::{fs::File, path::PathBuf};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name:?} not found at {path}: {reason}")]
    Open {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot enter network namespace {name:?}: {reason}")]
    Enter { name: String, reason: String },
}

/// Moves the calling thread into network namespace `name`
/// (`/run/netns/<name>`). Sockets and interface look-ups made afterwards by
/// this thread happen in that namespace.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let path = PathBuf::from("/run/netns").join(name);
    let file = File::open(&path).map_err(|e| NetnsError::Open {
        name: name.into(),
        path: path.clone(),
        reason: e.to_string(),
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
        name: name.into(),
        reason: e.to_string(),
    })
}

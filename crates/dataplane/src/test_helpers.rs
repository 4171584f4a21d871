//! In-kernel test runs (`BPF_PROG_TEST_RUN`) of the router and of the
//! benchmark's reference programs, and the route maps' kernel memory:
//! for tests and benchmarks only (feature `test-helpers`), not part of
//! the product's API.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{Program, TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use aya_obj::programs::XdpAttachType;
use router_common::maps::names;

use crate::{Dataplane, GroupReader, error::*};

impl Dataplane {
    /// Reads group counters in batches from now on, as on a kernel that
    /// refuses the iterator: so the fallback is tested on every machine.
    pub fn force_batched_group_counters(&mut self) {
        *self.group_dump.borrow_mut() =
            GroupReader::Batched("forced by force_batched_group_counters".into());
    }

    /// Kernel memory of the route maps and MQTT-SN id arrays this process
    /// wrote (both slots in incremental mode), as the kernel accounts it
    /// (`memlock` in the maps' fdinfo).
    pub fn route_memory(&self) -> u64 {
        let memlock = |map: &MapData| -> Option<u64> {
            let fd = map.fd().as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        self.written
            .iter()
            .flatten()
            .flat_map(|w| [memlock(&w.map), memlock(&w.ids.map), memlock(&w.names.map)])
            .flatten()
            .sum()
    }

    /// Runs the router program once (or `repeat` times) on `packet` in the
    /// kernel (`BPF_PROG_TEST_RUN`). Only for a data plane this process
    /// loaded.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<TestRunOutcome> {
        self.test_run_program(names::PROG_ROUTER, packet, repeat)
    }

    /// Instructions the verifier processed to accept the router program
    /// (its complexity; the limit is 1,000,000). Only for a data plane this
    /// process loaded.
    pub fn verified_instructions(&self) -> Option<u32> {
        let Some(Program::Xdp(prog)) = self.ebpf.as_ref()?.program(names::PROG_ROUTER) else {
            return None;
        };
        prog.info().ok()?.verified_instruction_count()
    }

    /// The pinned router program, to run live frames through (see
    /// [`LiveFrames`]).
    pub fn live_frames(&self) -> Result<LiveFrames> {
        let pins = self
            .pins
            .as_ref()
            .ok_or(DataplaneError::NotAttached(PathBuf::new()))?;
        let prog = Xdp::from_pin(pins.prog(names::PROG_ROUTER), XdpAttachType::Interface)
            .map_err(prog_err(names::PROG_ROUTER))?;
        Ok(LiveFrames { prog })
    }

    pub(crate) fn test_run_program(
        &self,
        name: &'static str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        let ebpf = self
            .ebpf
            .as_ref()
            .ok_or(DataplaneError::NotAttached(PathBuf::from(
                "(test runs need a data plane loaded in this process)",
            )))?;
        run_xdp(ebpf, name, packet, repeat)
    }
}

/// One `BPF_PROG_TEST_RUN` of the XDP program `name` of a loaded object.
pub(crate) fn run_xdp(
    ebpf: &Ebpf,
    name: &str,
    packet: &[u8],
    repeat: u32,
) -> Result<TestRunOutcome> {
    let Some(Program::Xdp(prog)) = ebpf.program(name) else {
        return Err(DataplaneError::Load {
            path: PathBuf::new(),
            reason: format!("no XDP program {name}"),
        });
    };
    // Room for the packet plus anything a program could prepend.
    let mut out = vec![0u8; packet.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(prog_err("test run"))?;
    out.truncate(r.data_size_out as usize);
    Ok(TestRunOutcome {
        action: r.return_value,
        output: out,
        duration: r.duration,
    })
}

/// The router program run on live frames (`BPF_PROG_TEST_RUN` with
/// `BPF_F_TEST_XDP_LIVE_FRAMES`, the way xdp-trafficgen makes traffic):
/// what the end-to-end bench drives the router's ingress with.
pub struct LiveFrames {
    prog: Xdp,
}

impl LiveFrames {
    /// Runs the router on `frames` copies of `packet`, `batch` at a time:
    /// each as if it had arrived on `ingress` (an ifindex of the calling
    /// thread's network namespace), and each verdict carried out (a
    /// redirect transmitted, a pass handed to the stack), as for frames
    /// from a NIC. Returns the time the kernel reports per frame.
    ///
    /// The kernel fills each page of its pool from `packet` once and hands
    /// a page back as it is recycled, with what the program wrote into it:
    /// a routed frame comes round again with its TTL one lower. Callers
    /// keep `frames / batch` under the TTL `packet` carries.
    pub fn send(&self, packet: &[u8], ingress: u32, frames: u32, batch: u32) -> Result<Duration> {
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex (u32 each); live frames take the
        // packet's length as `data_end` and nothing else but the ingress.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
        let r = self
            .prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                ctx_in: Some(&ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(batch),
                ..TestRunOptions::default()
            })
            .map_err(prog_err("live frames"))?;
        Ok(r.duration)
    }
}

/// Loads a standalone XDP object (benchmark reference programs) and test-runs
/// one of its programs.
pub struct ReferenceProgram {
    ebpf: Ebpf,
    name: String,
}

impl ReferenceProgram {
    pub fn load(object: &Path, name: &str) -> Result<ReferenceProgram> {
        let mut ebpf = Ebpf::load_file(object).map_err(|e| DataplaneError::Load {
            path: object.into(),
            reason: format!("{e:#}"),
        })?;
        crate::lifecycle::load_xdp(&mut ebpf, object, name)?;
        Ok(Self {
            ebpf,
            name: name.into(),
        })
    }

    /// Puts `key → value` (8-byte key, 8-byte value) in the program's
    /// `REF_TABLE` hash map.
    pub fn insert(&mut self, key: u64, value: u64) -> Result<()> {
        let mut m: HashMap<&mut MapData, u64, u64> =
            HashMap::try_from(self.ebpf.map_mut("REF_TABLE").ok_or(
                DataplaneError::PinMismatch {
                    name: "REF_TABLE",
                    reason: "missing".into(),
                },
            )?)
            .map_err(map_err("REF_TABLE"))?;
        m.insert(key, value, 0).map_err(map_err("REF_TABLE"))
    }

    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<TestRunOutcome> {
        run_xdp(&self.ebpf, &self.name, packet, repeat)
    }
}

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug)]
pub struct TestRunOutcome {
    /// XDP action (`XDP_PASS` = 2, `XDP_TX` = 3, `XDP_REDIRECT` = 4, ...).
    pub action: u32,
    pub output: Vec<u8>,
    /// Average time per run.
    pub duration: Duration,
}

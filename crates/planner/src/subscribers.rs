//! The topic -> subscribers index, built once per plan.

use crate::workload::Instance;

/// Topic -> subscribing devices (CSR), built once per plan: the graph
/// partition, the cluster order, the fan-out repair and net moves all ask
/// who subscribes to a topic, or how many do.
pub(crate) struct Subscribers {
    start: Vec<u32>,
    devices: Vec<u32>,
}

impl Subscribers {
    pub(crate) fn of(inst: &Instance) -> Subscribers {
        let nt = inst.topics.len();
        let mut start = vec![0u32; nt + 1];
        for &t in &inst.subs {
            start[t as usize + 1] += 1;
        }
        for t in 0..nt {
            start[t + 1] += start[t];
        }
        let mut fill = start.clone();
        let mut devices = vec![0u32; start[nt] as usize];
        for d in 0..inst.devices.len() {
            for &t in inst.subscriptions(d) {
                devices[fill[t as usize] as usize] = d as u32;
                fill[t as usize] += 1;
            }
        }
        Subscribers { start, devices }
    }

    /// The devices subscribed to `t`.
    pub(crate) fn of_topic(&self, t: u32) -> &[u32] {
        &self.devices[self.start[t as usize] as usize..self.start[t as usize + 1] as usize]
    }

    /// How many devices subscribe to `t`.
    pub(crate) fn count(&self, t: u32) -> u32 {
        self.start[t as usize + 1] - self.start[t as usize]
    }
}

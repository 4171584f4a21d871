//! The daemon's side of the latency probes ([`shardcast_gateway::probe`]):
//! every `probe.every` one probe per shard of the installed plan leaves by
//! `probe.iface` (a broadcast datagram bound to the interface: no address
//! or neighbour to configure) and enters the router at the interface's far
//! end; the gateway hands back each copy the relay receives. Probes leave
//! without a UDP checksum (`SO_NO_CHECK`), so that no offload needs to
//! finish them. Kept per
//! shard: probes sent, received, and a histogram of one-way latencies,
//! for the metrics. A probe not back within [`LOST_AFTER`] is lost: the
//! data plane dropped it (or it arrived too late to count).

use std::{
    collections::{BTreeMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use prometheus_client::metrics::{family::Family, histogram::Histogram};
use shardcast_gateway::probe::Probe;

/// A probe not back after this long is counted lost.
pub const LOST_AFTER: Duration = Duration::from_secs(2);

/// Latency buckets, seconds: 10 µs to 1 s.
fn buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(10e-6, 2.0, 17)
}

pub type Labels = Vec<(String, String)>;

/// Latencies kept per shard for `router-ctl status` (recent percentiles).
const RECENT: usize = 64;

/// What one shard's probes did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardProbes {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// The last one's latency, seconds.
    pub last: Option<f64>,
    /// The last [`RECENT`] latencies, seconds.
    pub recent: VecDeque<f64>,
}

impl ShardProbes {
    /// The `q` quantile (0..=1) of the recent latencies, seconds.
    pub fn recent_quantile(&self, q: f64) -> Option<f64> {
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(v[i])
    }
}

/// What `<state_dir>/probes.json` holds (written by the daemon each
/// bucket, read by `router-ctl status`).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ProbeReport {
    /// When written (unix seconds).
    pub at: u64,
    pub shards: BTreeMap<u32, ShardProbes>,
}

pub struct Prober {
    sock: UdpSocket,
    to: SocketAddrV4,
    seq: u64,
    /// Probes sent in the last [`LOST_AFTER`]: (seq, shard, sent ns, back),
    /// in sequence order.
    out: VecDeque<(u64, u32, u64, bool)>,
    pub shards: BTreeMap<u32, ShardProbes>,
    /// One-way latency per shard (seconds), kept across scrapes.
    pub latency: Family<Labels, Histogram>,
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Prober {
    /// A socket bound to `iface`, sending to the limited broadcast address
    /// on the router's MQTT-SN port. The copies come back on `relay_iface`
    /// from this router's own address, which Linux drops as a martian
    /// unless the interface accepts local sources: checked here, so that
    /// a missing setting is named at start, not seen as every probe lost.
    pub fn open(iface: &str, mqttsn_port: u16, relay_iface: Option<&str>) -> Result<Prober> {
        if let Some(r) = relay_iface {
            let path = format!("/proc/sys/net/ipv4/conf/{r}/accept_local");
            let v = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            anyhow::ensure!(
                v.trim() == "1",
                "probe: net.ipv4.conf.{r}.accept_local is {}: the relay interface would drop the probes' copies (they come from this router's own address); set it to 1 (sysctl -w net.ipv4.conf.{r}.accept_local=1)",
                v.trim()
            );
        }
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .context("probe socket")?;
        s.bind_device(Some(iface.as_bytes()))
            .with_context(|| format!("probe.iface {iface}: binding the probe socket to it"))?;
        s.set_broadcast(true)
            .context("probe socket: SO_BROADCAST")?;
        s.set_nonblocking(true)?;
        // Sent complete (checksum zero, kept zero by the router's rewrite),
        // whatever the interface offloads.
        shardcast_dataplane::udp_no_checksum(&s).context("probe socket: SO_NO_CHECK")?;
        Ok(Prober {
            sock: s.into(),
            to: SocketAddrV4::new(Ipv4Addr::BROADCAST, mqttsn_port),
            seq: 0,
            out: VecDeque::new(),
            shards: BTreeMap::new(),
            latency: Family::new_with_constructor(|| Histogram::new(buckets())),
        })
    }

    /// Sends one probe to each of `shards`; counts the lost ones first.
    pub fn send(&mut self, shards: impl IntoIterator<Item = u32>) {
        let now = unix_ns();
        self.expire(now);
        for shard in shards {
            self.seq += 1;
            let p = Probe {
                shard,
                seq: self.seq,
                sent_ns: unix_ns(),
            };
            let Some(d) = p.encode() else { continue };
            match self.sock.send_to(&d, self.to) {
                Ok(_) => {
                    self.shards.entry(shard).or_default().sent += 1;
                    self.out.push_back((p.seq, shard, p.sent_ns, false));
                }
                Err(e) => tracing::debug!(shard, "probe not sent: {e}"),
            }
        }
    }

    /// A probe back through the relay, at `arrived_ns`.
    pub fn on_probe(&mut self, p: Probe, arrived_ns: u64) {
        // Only probes this daemon sent and still waits for count (not a
        // forged or replayed one, nor one counted lost already).
        let Ok(i) = self.out.binary_search_by_key(&p.seq, |o| o.0) else {
            return;
        };
        let (_, shard, sent, back) = &mut self.out[i];
        if *back || *shard != p.shard || *sent != p.sent_ns {
            return;
        }
        *back = true;
        let (shard, sent) = (*shard, *sent);
        let secs = arrived_ns.saturating_sub(sent) as f64 / 1e9;
        let s = self.shards.entry(shard).or_default();
        s.received += 1;
        s.last = Some(secs);
        if s.recent.len() == RECENT {
            s.recent.pop_front();
        }
        s.recent.push_back(secs);
        self.latency
            .get_or_create(&vec![("shard".to_string(), shard.to_string())])
            .observe(secs);
    }

    fn expire(&mut self, now: u64) {
        let limit = LOST_AFTER.as_nanos() as u64;
        while let Some(&(_, shard, sent, back)) = self.out.front() {
            if now.saturating_sub(sent) < limit {
                break;
            }
            self.out.pop_front();
            if !back {
                self.shards.entry(shard).or_default().lost += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interface_or_setting_is_named_at_start() {
        let e = format!(
            "{:#}",
            Prober::open("lo", 1884, Some("no-such-if0")).err().unwrap()
        );
        assert!(
            e.contains("no-such-if0") && e.contains("accept_local"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            Prober::open("no-such-if0", 1884, None).err().unwrap()
        );
        assert!(e.contains("probe.iface no-such-if0"), "{e}");
    }

    #[test]
    fn probes_back_are_timed_once_and_the_others_are_lost_in_time() {
        let mut p = Prober::open("lo", 1884, None).unwrap();
        let t0 = 1_800_000_000_000_000_000u64;
        for (seq, shard) in [(1, 1), (2, 2), (3, 1)] {
            p.out.push_back((seq, shard, t0 + seq, false));
            p.shards.entry(shard).or_default().sent += 1;
        }
        let probe = |seq, shard| Probe {
            shard,
            seq,
            sent_ns: t0 + seq,
        };
        p.on_probe(probe(1, 1), t0 + 1 + 2_000_000);
        // Twice, forged (other shard, other send time), unknown: ignored.
        p.on_probe(probe(1, 1), t0 + 1 + 9_000_000);
        p.on_probe(probe(2, 1), t0 + 5_000_000);
        p.on_probe(
            Probe {
                sent_ns: 5,
                ..probe(3, 1)
            },
            t0 + 5_000_000,
        );
        p.on_probe(probe(99, 1), t0 + 5_000_000);
        assert_eq!(p.shards[&1].received, 1);
        assert_eq!(p.shards[&1].last, Some(0.002));
        assert_eq!(p.shards[&2].received, 0);
        p.expire(t0 + 3 + LOST_AFTER.as_nanos() as u64);
        assert!(p.out.is_empty());
        assert_eq!((p.shards[&1].lost, p.shards[&2].lost), (1, 1));
        // Too late to count once lost.
        p.on_probe(probe(2, 2), t0 + 10_000_000_000);
        assert_eq!(p.shards[&2].received, 0);
    }
}

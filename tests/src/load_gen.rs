//! A load generator for the control cycle's lab tests and the demo:
//! MQTT-SN QoS 0 publishes on short topic names, sent from a namespace
//! (the publisher's side of the router), each topic at a rate that is a
//! function of unix time, so that the load's phases line up with the
//! daemon's history buckets and its forecaster's season. Payloads are
//! text, `load <topic index> <sequence number> <unix time>`, readable by
//! any client.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use shardcast_gateway::mqttsn::{Flags, Message, encode};

/// Rate (messages/s) of topic `i` at unix time `t` (seconds).
pub type Schedule = dyn Fn(usize, f64) -> f64 + Send + Sync;

/// A running generator; [`Generator::stop`] ends it and says how many
/// publishes each topic sent.
pub struct Generator {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Vec<u64>>>>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Generator {
    /// Starts sending from namespace `ns` to `to`.
    pub fn start(ns: &str, to: SocketAddr, topics: Vec<[u8; 2]>, rate: Arc<Schedule>) -> Generator {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let ns = ns.to_string();
        let handle = std::thread::spawn(move || -> Result<Vec<u64>> {
            shardcast_dataplane::netns::enter(&ns)?;
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            sock.connect(to).with_context(|| format!("reaching {to}"))?;
            let mut sent = vec![0u64; topics.len()];
            // Fractional publishes owed per topic.
            let mut owed = vec![0.0f64; topics.len()];
            let mut last = Instant::now();
            let mut msg_id = 0u16;
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(2));
                let dt = last.elapsed().as_secs_f64();
                last = Instant::now();
                let t = unix_now();
                for (i, topic) in topics.iter().enumerate() {
                    owed[i] += rate(i, t) * dt;
                    while owed[i] >= 1.0 {
                        owed[i] -= 1.0;
                        msg_id = msg_id.wrapping_add(1).max(1);
                        let m = encode(&Message::Publish {
                            flags: Flags {
                                topic_id_type: 0b10,
                                ..Flags::NONE
                            },
                            topic_id: u16::from_be_bytes(*topic),
                            msg_id,
                            // Numbered per topic (from 1): a standard client
                            // following a topic can tell what it missed.
                            data: format!("load {i} {} {t:.3}", sent[i] + 1).into_bytes(),
                        })
                        .expect("a publish encodes");
                        match sock.send(&m) {
                            Ok(_) => sent[i] += 1,
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
            Ok(sent)
        });
        Generator {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops it; publishes sent per topic.
    pub fn stop(mut self) -> Result<Vec<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .map_err(|_| anyhow::anyhow!("the load generator panicked"))?
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

//! The gateway's sends: queued per batch of work, then handed to the
//! kernel many datagrams per `sendmmsg(2)`, paced, in chunks whose size
//! adapts.
//!
//! - **Pacing:** a token bucket: at most the egress's capacity per second
//!   (`gateway.send_rate`, [`SEND_RATE`] by default), in bursts of what
//!   that capacity drains in [`BURST_WINDOW`] ([`SEND_BURST`] datagrams
//!   at the default). A migration sends thousands of commands at
//!   once and the relay thousands of copies per publish; unpaced, such a
//!   burst overruns the egress queue it shares with the data plane's
//!   redirected publishes (a veth's ring holds 256 frames; a NIC's TX
//!   ring a few thousand) and publishes are dropped.
//! - **Chunk size:** as large as the queue (a short queue goes at once: no
//!   waiting to fill a batch), at most `cap` and never more than a burst
//!   (a slower egress gets smaller chunks); `cap` halves when one
//!   `sendmmsg` takes longer than [`LATENCY_TARGET`] (the last datagram of
//!   a chunk waits for the whole chunk) and grows while chunks are full
//!   and fast: the batch follows the queue depth and what the kernel
//!   takes within the latency target.

use std::{
    io::{self, IoSlice},
    net::SocketAddr,
    os::fd::AsRawFd,
    time::Duration,
};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use tokio::{io::Interest, net::UdpSocket, time::Instant};

/// The default capacity, datagrams per second.
pub const SEND_RATE: f64 = 100_000.0;
/// A burst is what the capacity drains in this long.
pub const BURST_WINDOW: Duration = Duration::from_micros(1280);
/// The burst at the default capacity.
pub const SEND_BURST: f64 = SEND_RATE * 0.00128;
/// One `sendmmsg` call should take at most this long.
pub const LATENCY_TARGET: Duration = Duration::from_micros(500);
/// Chunk sizes stay within these.
pub const CAP_MIN: usize = 8;
pub const CAP_MAX: usize = 1024;

/// What the sender did, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    pub datagrams: u64,
    pub calls: u64,
    /// Datagrams the kernel refused (unreachable destinations).
    pub failed: u64,
}

/// A socket's paced, batched sender.
pub struct Sender<'a> {
    sock: &'a UdpSocket,
    /// Capacity (datagrams/s) and burst.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    cap: usize,
    pub stats: SendStats,
}

impl<'a> Sender<'a> {
    pub fn new(sock: &'a UdpSocket) -> Sender<'a> {
        Sender::with_rate(sock, SEND_RATE)
    }

    /// A sender for an egress that takes `rate` datagrams per second.
    pub fn with_rate(sock: &'a UdpSocket, rate: f64) -> Sender<'a> {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            SEND_RATE
        };
        let burst = (rate * BURST_WINDOW.as_secs_f64()).max(CAP_MIN as f64);
        Sender {
            sock,
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
            cap: 64.min(burst as usize),
            stats: SendStats::default(),
        }
    }

    /// The chunk size now.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Waits until `want` datagrams may go (at most a burst); returns how
    /// many may.
    async fn tokens(&mut self, want: usize) -> usize {
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
                .min(self.burst);
            self.last = now;
            if self.tokens >= 1.0 {
                let n = (self.tokens as usize).min(want);
                self.tokens -= n as f64;
                return n;
            }
            let wait = (1.0 - self.tokens) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }

    /// Sends every queued datagram (the queue is emptied).
    pub async fn send_all(&mut self, queue: &mut Vec<(SocketAddr, Vec<u8>)>) -> io::Result<()> {
        let mut at = 0;
        while at < queue.len() {
            let want = (queue.len() - at).min(self.cap);
            let n = self.tokens(want).await;
            let chunk = &queue[at..at + n];
            let started = Instant::now();
            let sent = self.send_chunk(chunk).await?;
            self.stats.calls += 1;
            let took = started.elapsed();
            if sent == 0 {
                // The first datagram was refused (its destination is
                // unreachable): skip it, go on with the rest.
                self.stats.failed += 1;
                at += 1;
                continue;
            }
            self.stats.datagrams += sent as u64;
            at += sent;
            if took > LATENCY_TARGET {
                self.cap = (self.cap / 2).max(CAP_MIN);
            } else if n == self.cap {
                self.cap = (self.cap + self.cap / 4)
                    .min(CAP_MAX)
                    .min(self.burst as usize);
            }
        }
        queue.clear();
        Ok(())
    }

    /// One `sendmmsg`: how many of `chunk` the kernel took (0: the first
    /// was refused).
    async fn send_chunk(&self, chunk: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
        let addrs: Vec<Option<SockaddrStorage>> = chunk
            .iter()
            .map(|(a, _)| Some(SockaddrStorage::from(*a)))
            .collect();
        let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(_, d)| [IoSlice::new(d)]).collect();
        loop {
            self.sock.writable().await?;
            let r = self.sock.try_io(Interest::WRITABLE, || {
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
                match sendmmsg(
                    self.sock.as_raw_fd(),
                    &mut headers,
                    &slices,
                    &addrs,
                    [],
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(results) => Ok(results.count()),
                    Err(nix::errno::Errno::EAGAIN) => {
                        Err(io::Error::from(io::ErrorKind::WouldBlock))
                    }
                    // Refused for the first datagram (unreachable,
                    // a pending ICMP error): not the gateway's failure.
                    Err(e) => {
                        tracing::debug!(to = %chunk[0].0, "send: {e}");
                        Ok(0)
                    }
                }
            });
            match r {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Gives `sock` a receive buffer of `bytes` (past `net.core.rmem_max`
/// where the process may: root), so that bursts (a publish relayed to
/// thousands, a migration's confirms) wait in the kernel instead of being
/// dropped while the gateway works through the previous batch. Returns
/// whether the forced size was taken.
pub fn deepen(sock: &UdpSocket, bytes: usize) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(sock, sockopt::RcvBufForce, &bytes)
        .or_else(|_| setsockopt(sock, sockopt::RcvBuf, &bytes))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slower_egress_gets_smaller_chunks_at_its_rate() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // 2,000 datagrams/s: bursts of 8 (the least chunk), then one per
        // half millisecond.
        let mut s = Sender::with_rate(&tx, 2_000.0);
        let mut q: Vec<(SocketAddr, Vec<u8>)> = (0..108u32)
            .map(|i| (to, i.to_be_bytes().to_vec()))
            .collect();
        let t = std::time::Instant::now();
        s.send_all(&mut q).await.unwrap();
        // The bucket cannot give 100 tokens beyond the burst in less than
        // 100 / 2,000 s.
        assert!(
            t.elapsed() >= Duration::from_millis(49),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(s.stats.datagrams, 108);
        assert!(s.cap() <= 8 && s.stats.calls >= 108 / 8, "{:?}", s.stats);
        // A bad rate falls back to the default.
        assert_eq!(Sender::with_rate(&tx, f64::NAN).burst, SEND_BURST);
        assert_eq!(Sender::with_rate(&tx, -1.0).rate, SEND_RATE);
    }

    #[tokio::test]
    async fn every_datagram_arrives_in_order_and_the_chunk_adapts() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        // Read as they come (the socket buffer holds a few hundred).
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            while let Ok(n) = rx.recv(&mut buf) {
                got.push(buf[..n].to_vec());
                if got.len() == 200 {
                    break;
                }
            }
            got
        });
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut s = Sender::new(&tx);
        let mut q: Vec<(SocketAddr, Vec<u8>)> = (0..200u32)
            .map(|i| (to, i.to_be_bytes().to_vec()))
            .collect();
        // One unreachable destination in the middle does not stop the rest.
        q.insert(100, ("127.0.0.1:9".parse().unwrap(), b"x".to_vec()));
        s.send_all(&mut q).await.unwrap();
        assert!(q.is_empty());
        let got = reader.join().unwrap();
        // (200 fit in the receiver's socket buffer: none is lost however
        // late its thread runs.)
        let want: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_be_bytes().to_vec()).collect();
        assert!(got == want, "{} of 200 arrived in order", got.len());
        assert!(s.stats.datagrams >= 200);
        assert!(s.stats.calls < 40, "batched: {:?}", s.stats);
        assert!((CAP_MIN..=CAP_MAX).contains(&s.cap()));
    }
}

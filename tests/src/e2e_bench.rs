//! The end-to-end benchmark (`SHARDCAST_BENCH=e2e cargo xtask bench`): the
//! same publishers, topics and subscribers through three routers, one
//! after the other, in the lab of [`crate::lab`] (publisher namespace →
//! router namespace → bridge → 3 subscriber namespaces):
//!
//! - **shardcast**: the XDP router (and its fan-out program) on `r-in`,
//!   driven twice: by a publisher socket (`sendmmsg`) like the others, and
//!   by live frames run into its ingress from the router namespace
//!   (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, as
//!   xdp-trafficgen does), which leaves out the publisher's socket and veth
//!   that throttle the first;
//! - **relay**: a userspace UDP relay in the router namespace doing the same
//!   routing with `recvmmsg`/`sendmmsg` (the design of a userspace MQTT-SN
//!   gateway): parse with the shared parser, look the route up, send one
//!   datagram per shard group;
//! - **mosquitto** (the Debian package), MQTT 3.1.1 QoS 0, started by the
//!   bench on the lab's addresses, fed by several publisher connections.
//!
//! A topic `kN` goes to N of 8 shard groups (N subscriber connections for
//! mosquitto), spread over the 3 subscribers. Each message carries its
//! sequence number and send time (`CLOCK_MONOTONIC`, one host): the
//! subscribers count what arrives and sample the latency. Per system and
//! fan-out: delivered messages/s at saturation, whole-machine CPU seconds
//! per million delivered (`/proc/stat`: the sender, the router, the
//! bridge and the receivers share 2 cores, the same for every system, so
//! the difference is the router's), and p50/p99 latency and loss at half
//! the measured peak (live frames, all copies of one, have no latency).
//! Loss is accounted where it happens: the relay's socket, the egress
//! veth's refusals (`ethtool -S r-out`), the subscribers' sockets, the
//! router's counters. See `../shared/E2E-NOTES.md` for what limits a veth
//! lab: the numbers measure the testbed as much as the router.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use router_common::{
    build::{mqttsn_publish, qos0},
    mqttsn::{self, TOPIC_SHORT},
    payload::Head,
};

use crate::lab::{Lab, LabShard, MQTTSN_PORT, ROUTER_V4};

/// Shard groups; subscriber `s` joins shards `i` with `(i - 1) % 3 == s`.
const SHARDS: u32 = 8;
const FANOUTS: [u32; 4] = [1, 2, 4, 8];
const SIZES: [usize; 2] = [21, 200];
/// Seconds per measurement.
const WINDOW: Duration = Duration::from_secs(3);
const MAGIC: u32 = 0x5343_4231;
/// Latency samples kept per receiver.
const SAMPLES: usize = 200_000;
const MQTT_PORT: u16 = 1883;
/// Publisher connections for mosquitto (its load generator).
const MQTT_PUBLISHERS: usize = 4;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The body of message `seq`: magic, seq, send time, padding to `size`.
fn body(size: usize, seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(&MAGIC.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&now_ns().to_be_bytes());
    b.resize(size.max(16), b'.');
    b
}

/// Reads a message body found in `bytes` (at `off`): its send time.
fn sent_at(bytes: &[u8], off: usize) -> Option<u64> {
    let b = bytes.get(off..off + 16)?;
    (u32::from_be_bytes(b[0..4].try_into().ok()?) == MAGIC)
        .then(|| u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")))
}

/// What the receivers of one run saw.
#[derive(Default)]
struct Received {
    messages: u64,
    latencies_us: Vec<u32>,
    /// Datagrams the subscribers' kernels dropped (UDP receive buffer
    /// errors), or 0 for TCP.
    socket_drops: u64,
}

/// Whole-machine busy time (all CPUs) from /proc/stat, in seconds.
fn busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    busy as f64 / hz
}

fn udp_rcvbuf_errors() -> u64 {
    // The thread's own namespace.
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(h), Some(v)) = (lines.next(), lines.next()) else {
        return 0;
    };
    h.split_whitespace()
        .zip(v.split_whitespace())
        .find(|(k, _)| *k == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A thread in namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        shardcast_dataplane::netns::enter(&ns)?;
        f()
    })
}

fn join<T>(h: JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("a bench thread panicked"))?
}

/// UDP receivers: subscriber `s` joins its shards' groups on the MQTT-SN
/// port and counts (recvmmsg) until `stop`.
fn udp_receivers(lab: &Lab, stop: &Arc<AtomicBool>) -> Result<Vec<JoinHandle<Result<Received>>>> {
    let mut handles = Vec::new();
    for (s, sub) in lab.subscribers.iter().enumerate() {
        let stop = stop.clone();
        let v4 = sub.v4;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        handles.push(in_ns(&sub.ns.name, move || {
            let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MQTTSN_PORT))?;
            for i in 1..=SHARDS {
                if (i - 1) as usize % 3 == s {
                    sock.join_multicast_v4(&LabShard::numbered(i).group_v4, &v4)?;
                }
            }
            let fd = sock.as_raw_fd();
            let size: libc::c_int = 16 << 20;
            // SAFETY: SO_RCVBUFFORCE takes an int of this size.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&raw const size).cast(),
                    4,
                );
            }
            sock.set_read_timeout(Some(Duration::from_millis(20)))?;
            let drops0 = udp_rcvbuf_errors();
            let _ = ready_tx.send(());
            let mut r = Received::default();
            let mut bufs = vec![[0u8; 512]; 64];
            loop {
                let lens = recv_batch(fd, &mut bufs);
                let t = now_ns();
                for (b, &len) in bufs.iter().zip(&lens) {
                    // MQTT-SN PUBLISH (short form): 7-byte header.
                    if let Some(at) = sent_at(&b[..len], 7) {
                        r.messages += 1;
                        if r.latencies_us.len() < SAMPLES {
                            r.latencies_us.push((t.saturating_sub(at) / 1000) as u32);
                        }
                    }
                }
                let n = lens.len();
                if n == 0 && stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            r.socket_drops = udp_rcvbuf_errors() - drops0;
            Ok(r)
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("a receiver did not start")?;
    }
    Ok(handles)
}

/// Sends MQTT-SN publishes of `topic` (`size`-byte bodies) to `to` from the
/// publisher namespace for the window, as fast as possible (`rate` None)
/// or paced; returns messages sent.
fn udp_sender(
    lab: &Lab,
    to: SocketAddrV4,
    topic: [u8; 2],
    size: usize,
    rate: Option<f64>,
) -> Result<u64> {
    join(in_ns(&lab.publisher.name, move || {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(to)?;
        let fd = sock.as_raw_fd();
        const BATCH: usize = 32;
        for_window(rate, |sent| {
            let msgs: Vec<Vec<u8>> = (0..BATCH)
                .map(|i| {
                    mqttsn_publish(
                        false,
                        qos0(TOPIC_SHORT),
                        topic,
                        0,
                        &body(size, (sent + i as u64) as u32),
                    )
                })
                .collect();
            let batch: Vec<(&[u8], Option<&libc::sockaddr_in>)> =
                msgs.iter().map(|m| (m.as_slice(), None)).collect();
            Ok(send_batch(fd, &batch) as u64)
        })
    }))
}

/// Calls `send` (given the count sent so far; it returns how many more it
/// sent) for the window: as often as it returns (`rate` None), or paced
/// to `rate` messages/s. Returns the count sent.
fn for_window(rate: Option<f64>, mut send: impl FnMut(u64) -> Result<u64>) -> Result<u64> {
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < WINDOW {
        if let Some(r) = rate {
            let due = (start.elapsed().as_secs_f64() * r) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        sent += send(sent)?;
    }
    Ok(sent)
}

/// Batches per live-frames call (see [`live_sender`]): a call's pages come
/// round at most this many times, each time one hop lower.
const LIVE_BATCHES: u32 = 64;

/// Live frames per batch for a topic on `k` shards. The kernel flushes a
/// batch's redirects at once, and a veth takes at most 256 frames at a
/// time into its peer's ring (a NIC's transmit ring is larger): 64 frames
/// of 8 copies each would overflow it. At most 128 copies a batch.
fn live_batch(k: u32) -> u32 {
    (128 / k.max(1)).clamp(1, 64)
}

/// Drives the router's ingress with live frames for the window: MQTT-SN
/// publishes of `topic` (`size`-byte bodies) from the publisher's
/// address, run through the router program as if they had arrived on
/// `r-in` (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, as
/// xdp-trafficgen does) and sent on by its verdicts; as fast as the kernel
/// runs them (`rate` None) or paced. No publisher socket, no publisher
/// veth: the router's ingress sees what a NIC would give it. Every frame
/// is a copy of one, so its body's send time is not the frame's: these
/// rows have no latency. A call's pages come round at most
/// [`LIVE_BATCHES`] times (paced: once), each time one hop lower (see
/// `LiveFrames::send`): the frame starts at TTL 255. Returns frames
/// sent.
fn live_sender(lab: &Lab, topic: [u8; 2], k: u32, size: usize, rate: Option<f64>) -> Result<u64> {
    let batch = live_batch(k);
    // Paced, one batch a call: a call's batches go back to back, a burst
    // the LAN side's queues need not absorb below the peak.
    let call = if rate.is_some() {
        batch
    } else {
        LIVE_BATCHES * batch
    };
    let frame = crate::max_ttl(crate::frame_from(
        crate::lab::PUBLISHER_V4.into(),
        40000,
        MQTTSN_PORT,
        &mqttsn_publish(false, qos0(TOPIC_SHORT), topic, 0, &body(size, 0)),
    ));
    let pin_root = lab.pin_root().to_path_buf();
    join(in_ns(&lab.router.name, move || {
        let live = shardcast_dataplane::Dataplane::open(&pin_root)?.live_frames()?;
        let ingress = shardcast_dataplane::ifindex("r-in")?;
        for_window(rate, |_| {
            live.send(&frame, ingress, call, batch)?;
            Ok(call as u64)
        })
    }))
}

/// One live frame (an unrouted publish, passed to the stack): whether the
/// kernel runs live frames at all.
fn live_probe(lab: &Lab) -> Result<()> {
    let frame = crate::frame_from(
        crate::lab::PUBLISHER_V4.into(),
        40000,
        MQTTSN_PORT,
        &mqttsn_publish(false, qos0(TOPIC_SHORT), *b"zz", 0, &body(21, 0)),
    );
    let pin_root = lab.pin_root().to_path_buf();
    join(in_ns(&lab.router.name, move || {
        let live = shardcast_dataplane::Dataplane::open(&pin_root)?.live_frames()?;
        let ingress = shardcast_dataplane::ifindex("r-in")?;
        live.send(&frame, ingress, 1, 1)?;
        Ok(())
    }))
}

/// The userspace relay: in the router namespace, receives publishes on
/// the router's MQTT-SN port and sends each to its topic's shard groups out
/// of `r-out`. Runs until `stop`; returns its CPU seconds and the datagrams
/// its socket dropped (receive buffer full).
fn relay(lab: &Lab, stop: &Arc<AtomicBool>) -> JoinHandle<Result<(f64, u64)>> {
    let stop = stop.clone();
    in_ns(&lab.router.name, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(ROUTER_V4, MQTTSN_PORT))?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let out = UdpSocket::bind("198.18.2.1:0")?;
        out.set_multicast_ttl_v4(1)?;
        // Not back to this host: a router sends, it does not listen.
        out.set_multicast_loop_v4(false)?;
        // SAFETY: IP_MULTICAST_IF with the egress address.
        let ifaddr = libc::in_addr {
            s_addr: u32::from_ne_bytes([198, 18, 2, 1]),
        };
        unsafe {
            libc::setsockopt(
                out.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                (&raw const ifaddr).cast(),
                std::mem::size_of::<libc::in_addr>() as u32,
            );
        }
        // Topic `kN`'s short-name id → its groups.
        let mut routes: std::collections::HashMap<u32, Vec<libc::sockaddr_in>> = Default::default();
        for k in FANOUTS {
            let name = format!("k{k}");
            let id = u16::from_be_bytes(name.as_bytes().try_into().expect("2 bytes"));
            let groups = (1..=k)
                .map(|i| libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: MQTTSN_PORT.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(LabShard::numbered(i).group_v4.octets()),
                    },
                    sin_zero: [0; 8],
                })
                .collect();
            routes.insert(
                router_common::maps::mqttsn_id_index(TOPIC_SHORT, id),
                groups,
            );
        }
        let cpu0 = thread_cpu();
        let drops0 = udp_rcvbuf_errors();
        let (fd, ofd) = (sock.as_raw_fd(), out.as_raw_fd());
        let mut bufs = vec![[0u8; 512]; 64];
        while !stop.load(Ordering::Relaxed) {
            let lens = recv_batch(fd, &mut bufs);
            let mut out: Vec<(&[u8], Option<&libc::sockaddr_in>)> = Vec::new();
            for (b, &len) in bufs.iter().zip(&lens) {
                let Ok(p) = mqttsn::parse_publish(&Head::<{ mqttsn::HEADER_READ }>::of(&b[..len]))
                else {
                    continue;
                };
                if let Some(groups) = routes.get(&p.id_index()) {
                    out.extend(groups.iter().map(|g| (&b[..len], Some(g))));
                }
            }
            send_batch(ofd, &out);
        }
        Ok((thread_cpu() - cpu0, udp_rcvbuf_errors() - drops0))
    })
}

/// Receives up to `bufs.len()` datagrams with one `recvmmsg` (waiting for
/// the first until the socket's read timeout); returns their lengths.
fn recv_batch(fd: std::os::fd::RawFd, bufs: &mut [[u8; 512]]) -> Vec<usize> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: `mmsghdr` is plain old data.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: the headers point into `iov` and `bufs`, alive across the
    // call, each of the length it says.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as u32,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    hdrs.iter()
        .take(n.max(0) as usize)
        .map(|h| h.msg_len as usize)
        .collect()
}

/// Sends every datagram (to its address, or the connected peer) with
/// `sendmmsg`, as many calls as it takes; returns how many went.
fn send_batch(fd: std::os::fd::RawFd, msgs: &[(&[u8], Option<&libc::sockaddr_in>)]) -> usize {
    let mut iov: Vec<libc::iovec> = msgs
        .iter()
        .map(|(m, _)| libc::iovec {
            iov_base: m.as_ptr() as *mut _,
            iov_len: m.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .zip(msgs)
        .map(|(v, (_, to))| {
            // SAFETY: `mmsghdr` is plain old data.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            if let Some(to) = to {
                h.msg_hdr.msg_name = (*to as *const libc::sockaddr_in) as *mut _;
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            }
            h
        })
        .collect();
    let mut off = 0;
    while off < hdrs.len() {
        // SAFETY: the headers point into `iov`, `msgs` and the addresses,
        // alive across the call.
        let m = unsafe {
            libc::sendmmsg(
                fd,
                hdrs[off..].as_mut_ptr(),
                (hdrs.len() - off).min(1024) as u32,
                0,
            )
        };
        if m <= 0 {
            break;
        }
        off += m as usize;
    }
    off
}

/// This thread's CPU time (seconds).
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// MQTT 3.1.1 remaining length.
fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn mqtt_connect(addr: SocketAddrV4, id: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    var.extend_from_slice(&(id.len() as u16).to_be_bytes());
    var.extend_from_slice(id.as_bytes());
    let mut p = vec![0x10];
    varint(var.len(), &mut p);
    p.extend_from_slice(&var);
    s.write_all(&p)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        bail!("CONNACK refused: {ack:02x?}");
    }
    Ok(s)
}

fn mqtt_publish(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x30);
    varint(2 + topic.len() + payload.len(), out);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
}

/// `k` MQTT subscribers of `topic`, connection `i` from subscriber `i % 3`;
/// each counts PUBLISH packets until `stop`.
fn mqtt_receivers(
    lab: &Lab,
    topic: &str,
    k: u32,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<Result<Received>>>> {
    let mut handles = Vec::new();
    for i in 0..k as usize {
        let stop = stop.clone();
        let topic = topic.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        handles.push(in_ns(&lab.subscribers[i % 3].ns.name, move || {
            let setup = || -> Result<TcpStream> {
                let mut s = mqtt_connect(
                    SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 1), MQTT_PORT),
                    &format!("sub{i}"),
                )?;
                let mut var = vec![0, 1];
                var.extend_from_slice(&(topic.len() as u16).to_be_bytes());
                var.extend_from_slice(topic.as_bytes());
                var.push(0);
                let mut p = vec![0x82];
                varint(var.len(), &mut p);
                p.extend_from_slice(&var);
                s.write_all(&p)?;
                let mut ack = [0u8; 5];
                s.read_exact(&mut ack)?;
                if ack[0] != 0x90 || ack[4] != 0 {
                    bail!("SUBACK refused: {ack:02x?}");
                }
                s.set_read_timeout(Some(Duration::from_millis(20)))?;
                Ok(s)
            };
            let mut s = match setup() {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let mut r = Received::default();
            let mut buf = vec![0u8; 1 << 16];
            let mut pending: Vec<u8> = Vec::new();
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        let t = now_ns();
                        let mut off = 0;
                        // Whole packets: type, remaining length, body.
                        while let Some(&h) = pending.get(off) {
                            let (mut len, mut mul, mut j) = (0usize, 1usize, off + 1);
                            let mut complete = false;
                            while let Some(&b) = pending.get(j) {
                                len += (b & 0x7f) as usize * mul;
                                mul *= 128;
                                j += 1;
                                if b & 0x80 == 0 {
                                    complete = true;
                                    break;
                                }
                            }
                            if !complete || pending.len() < j + len {
                                break;
                            }
                            if h >> 4 == 3 {
                                let tl = u16::from_be_bytes([pending[j], pending[j + 1]]) as usize;
                                if let Some(at) = sent_at(&pending[..j + len], j + 2 + tl) {
                                    r.messages += 1;
                                    if r.latencies_us.len() < SAMPLES {
                                        r.latencies_us.push((t.saturating_sub(at) / 1000) as u32);
                                    }
                                }
                            }
                            off = j + len;
                        }
                        pending.drain(..off);
                    }
                    Err(_) => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            }
            Ok(r)
        }));
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("MQTT subscriber {i}: {e}"),
            Err(_) => bail!("MQTT subscriber {i} did not start"),
        }
    }
    Ok(handles)
}

/// Publishes `topic` from [`MQTT_PUBLISHERS`] connections for the window;
/// returns messages sent.
fn mqtt_senders(lab: &Lab, topic: &str, size: usize, rate: Option<f64>) -> Result<u64> {
    let handles: Vec<_> = (0..MQTT_PUBLISHERS)
        .map(|c| {
            let topic = topic.to_string();
            in_ns(&lab.publisher.name, move || {
                let mut s =
                    mqtt_connect(SocketAddrV4::new(ROUTER_V4, MQTT_PORT), &format!("pub{c}"))?;
                let start = Instant::now();
                let mut sent = 0u64;
                let per = rate.map(|r| r / MQTT_PUBLISHERS as f64);
                let mut out = Vec::new();
                while start.elapsed() < WINDOW {
                    if let Some(r) = per
                        && sent >= (start.elapsed().as_secs_f64() * r) as u64
                    {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    out.clear();
                    for i in 0..32 {
                        mqtt_publish(&topic, &body(size, (sent + i) as u32), &mut out);
                    }
                    s.write_all(&out)?;
                    sent += 32;
                }
                // DISCONNECT.
                let _ = s.write_all(&[0xe0, 0]);
                Ok(sent)
            })
        })
        .collect();
    let mut sent = 0;
    for h in handles {
        sent += join(h)?;
    }
    Ok(sent)
}

/// One measured run.
struct Run {
    sent: u64,
    delivered: u64,
    busy_s: f64,
    /// The router's own CPU seconds: the relay thread's, mosquitto's
    /// process time, the XDP, fan-out and copy programs' run time (the
    /// kernel's accounting; the transmit after XDP returns, and a
    /// broadcast's clones, are not in it).
    router_s: f64,
    /// Datagrams the relay's socket dropped.
    router_drops: u64,
    /// Frames redirected to the egress that its veth peer's ring refused
    /// (the kernel's count: `tx_queue_*_xdp_xmit_errors` of `r-out`).
    egress_drops: u64,
    socket_drops: u64,
    p50_us: u32,
    p99_us: u32,
}

fn collect(handles: Vec<JoinHandle<Result<Received>>>) -> Result<(u64, u64, Vec<u32>)> {
    let (mut delivered, mut drops, mut lat) = (0, 0, Vec::new());
    for h in handles {
        let r = join(h)?;
        delivered += r.messages;
        drops += r.socket_drops;
        lat.extend(r.latencies_us);
    }
    Ok((delivered, drops, lat))
}

fn percentile(v: &mut [u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

#[derive(Clone, Copy, PartialEq)]
enum System {
    Shardcast,
    /// Shardcast driven by live frames into its ingress.
    ShardcastLive,
    Relay,
    Mosquitto,
}

/// XDP frames the egress `r-out` could not hand to its peer so far (its
/// ring full), summed over its transmit queues.
fn egress_xmit_errors(lab: &Lab) -> u64 {
    lab.router
        .exec("ethtool", &["-S", "r-out"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("tx_queue_") && k.ends_with("_xdp_xmit_errors"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// The router's cumulative CPU seconds so far (not for the relay, which
/// reports its own thread's).
fn router_cpu(lab: &Lab, system: System, mosquitto: u32) -> f64 {
    match system {
        System::Mosquitto => crate::measure::process_cpu_seconds(mosquitto),
        System::Shardcast | System::ShardcastLive => {
            let dir = lab
                .pin_root()
                .join(format!("v{}", router_common::maps::LAYOUT_VERSION));
            [
                router_common::maps::names::PROG_ROUTER,
                router_common::maps::names::PROG_FANOUT,
                router_common::maps::names::PROG_COPY,
            ]
            .iter()
            .filter_map(|name| crate::measure::prog_stats(&dir.join(name)).ok())
            .map(|(ns, _)| ns)
            .sum::<u64>() as f64
                * 1e-9
        }
        System::Relay => 0.0,
    }
}

fn measure(
    lab: &Lab,
    system: System,
    k: u32,
    size: usize,
    rate: Option<f64>,
    mosquitto: u32,
) -> Result<Run> {
    let stop = Arc::new(AtomicBool::new(false));
    let topic = format!("k{k}");
    let receivers = match system {
        System::Mosquitto => mqtt_receivers(lab, &topic, k, &stop)?,
        _ => udp_receivers(lab, &stop)?,
    };
    let relay_thread = (system == System::Relay).then(|| relay(lab, &stop));
    std::thread::sleep(Duration::from_millis(100));
    let busy0 = busy_seconds();
    let router0 = router_cpu(lab, system, mosquitto);
    let xmit0 = egress_xmit_errors(lab);
    let sent = match system {
        System::Mosquitto => mqtt_senders(lab, &topic, size, rate)?,
        System::ShardcastLive => live_sender(
            lab,
            topic.as_bytes().try_into().expect("2 bytes"),
            k,
            size,
            rate,
        )?,
        _ => udp_sender(
            lab,
            SocketAddrV4::new(ROUTER_V4, MQTTSN_PORT),
            topic.as_bytes().try_into().expect("2 bytes"),
            size,
            rate,
        )?,
    };
    // Let queues drain, then stop.
    std::thread::sleep(Duration::from_millis(300));
    let busy = busy_seconds() - busy0;
    let mut router_s = router_cpu(lab, system, mosquitto) - router0;
    let egress_drops = egress_xmit_errors(lab).saturating_sub(xmit0);
    stop.store(true, Ordering::Relaxed);
    let (delivered, socket_drops, mut lat) = collect(receivers)?;
    let mut router_drops = 0;
    if let Some(h) = relay_thread {
        (router_s, router_drops) = join(h)?;
    }
    Ok(Run {
        sent,
        delivered,
        busy_s: busy,
        router_s,
        router_drops,
        egress_drops,
        socket_drops,
        p50_us: percentile(&mut lat, 0.5),
        p99_us: percentile(&mut lat, 0.99),
    })
}

type Row = (System, u32, usize, Run, Run);

/// Every fan-out and size for `system`: at saturation, then paced at half
/// the delivered peak.
fn run_system(lab: &Lab, system: System, mosquitto: u32, rows: &mut Vec<Row>) -> Result<()> {
    for &size in &SIZES {
        for &k in &FANOUTS {
            let peak = measure(lab, system, k, size, None, mosquitto)?;
            let half = (peak.delivered as f64 / WINDOW.as_secs_f64() / k as f64) * 0.5;
            let paced = measure(lab, system, k, size, Some(half.max(100.0)), mosquitto)?;
            rows.push((system, k, size, peak, paced));
        }
    }
    Ok(())
}

pub fn bench() -> Result<String> {
    let mut lab = Lab::new(3)?;
    // The bridge floods every group to every port without snooping.
    lab.lan.ip(&[
        "link",
        "set",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "1",
        "mcast_querier",
        "1",
    ])?;
    let cpu = crate::measure::cpu_model();
    let mut out = format!(
        "End to end in the lab ({cpu}, {} CPUs; {}-second windows; MQTT-SN QoS 0 over UDP for shardcast and the relay, MQTT 3.1.1 QoS 0 for mosquitto; topic kN delivered to N of 8 shard groups / N subscriber connections over 3 subscriber namespaces):\n\n\
         | system | fan-out | payload | sent/s | delivered/s at saturation | delivered / shardcast's | router CPU-s per M delivered | CPU-s per M delivered (whole machine) | relay socket drops | egress xmit drops | subscriber socket drops | at 50% of peak: loss | p50 µs | p99 µs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        WINDOW.as_secs()
    );
    // mosquitto first (TCP: the XDP router would pass it anyway), then the
    // relay, then shardcast attached.
    let (mut child, conf) = start_mosquitto(&lab)?;
    let mut rows: Vec<Row> = Vec::new();
    let r = run_system(&lab, System::Mosquitto, child.id(), &mut rows);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&conf);
    r?;
    run_system(&lab, System::Relay, 0, &mut rows)?;
    lab.attach()?;
    let shards: Vec<LabShard> = (1..=SHARDS).map(LabShard::numbered).collect();
    let topics: Vec<(String, Vec<u32>)> = FANOUTS
        .iter()
        .map(|&k| (format!("k{k}"), (1..=k).collect()))
        .collect();
    let refs: Vec<(&str, &[u32])> = topics
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    lab.apply(&Lab::plan_json(1, &shards, &refs))?;
    let mut live_refused = None;
    // The programs' run time, from the kernel's accounting while they run.
    {
        let _stats = crate::measure::BpfStats::enable()?;
        run_system(&lab, System::Shardcast, 0, &mut rows)?;
        // Live frames need Linux 5.18; without them, the rows above only.
        match live_probe(&lab) {
            Ok(_) => run_system(&lab, System::ShardcastLive, 0, &mut rows)?,
            Err(e) => live_refused = Some(format!("{e:#}")),
        }
    }
    let counters = lab.counters()?;
    lab.detach()?;
    if let Some(e) = &live_refused {
        out.insert_str(
            0,
            &format!("The kernel refused live frames ({e}): no live-frames rows.\n\n"),
        );
    }
    let name = |s: System| match s {
        System::Shardcast => "shardcast (XDP)",
        System::ShardcastLive => "shardcast (XDP), live frames",
        System::Relay => "userspace relay",
        System::Mosquitto => "mosquitto",
    };
    let shardcast_rate = |k: u32, size: usize| {
        rows.iter()
            .find(|r| r.0 == System::Shardcast && r.1 == k && r.2 == size)
            .map_or(0.0, |r| r.3.delivered as f64)
    };
    for (system, k, size, peak, paced) in &rows {
        let w = WINDOW.as_secs_f64();
        let loss = 1.0 - paced.delivered as f64 / (paced.sent as f64 * *k as f64).max(1.0);
        // Where the paced run's losses went, when it had any.
        let lost_where = if paced.egress_drops + paced.socket_drops + paced.router_drops > 0 {
            format!(
                " (relay {}, egress {}, sockets {})",
                paced.router_drops, paced.egress_drops, paced.socket_drops
            )
        } else {
            String::new()
        };
        // Live frames are copies of one: their send time is not theirs.
        let latency = |p: u32| {
            if *system == System::ShardcastLive {
                "-".to_string()
            } else {
                p.to_string()
            }
        };
        out.push_str(&format!(
            "| {} | {k} | {size} B | {:.0} | {:.0} | {:.2} | {:.3} | {:.2} | {} | {} | {} | {:.2}%{lost_where} | {} | {} |\n",
            name(*system),
            peak.sent as f64 / w,
            peak.delivered as f64 / w,
            peak.delivered as f64 / shardcast_rate(*k, *size).max(1.0),
            peak.router_s / (peak.delivered as f64 / 1e6).max(1e-9),
            peak.busy_s / (peak.delivered as f64 / 1e6).max(1e-9),
            peak.router_drops,
            peak.egress_drops,
            peak.socket_drops,
            100.0 * loss.max(0.0),
            latency(paced.p50_us),
            latency(paced.p99_us),
        ));
    }
    let n = |r: router_common::reason::Reason| counters.reasons.get(&r).map_or(0, |c| c.packets);
    out.push_str(&format!(
        "\nshardcast's counters over its runs: redirected {} (copies included), broadcast {}, fanned_out {}, no_route {}, multi_shard {}\n",
        n(router_common::reason::Reason::Redirected),
        n(router_common::reason::Reason::Broadcast),
        n(router_common::reason::Reason::FannedOut),
        n(router_common::reason::Reason::NoRoute),
        n(router_common::reason::Reason::MultiShard),
    ));
    Ok(out)
}

/// `k` standard MQTT-SN clients of the gateway (connection `i` from
/// subscriber `i % 3`), subscribed to the short topic `topic`; each counts
/// the PUBLISHes the gateway relays until `stop`.
fn gateway_receivers(
    lab: &Lab,
    topic: [u8; 2],
    k: u32,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<Result<Received>>>> {
    use shardcast_gateway::mqttsn::{Flags, Message, TopicRef, decode, encode};
    let mut handles = Vec::new();
    for i in 0..k as usize {
        let stop = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        handles.push(in_ns(&lab.subscribers[i % 3].ns.name, move || {
            let setup = || -> Result<UdpSocket> {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(SocketAddrV4::new(ROUTER_V4, MQTTSN_PORT))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let ask = |m: Message| -> Result<Message> {
                    s.send(&encode(&m)?)?;
                    let mut b = [0u8; 256];
                    let n = s.recv(&mut b)?;
                    Ok(decode(&b[..n])?)
                };
                let m = ask(Message::Connect {
                    flags: Flags {
                        clean_session: true,
                        ..Flags::NONE
                    },
                    duration: 600,
                    client_id: format!("std{i}"),
                })?;
                if !matches!(m, Message::ConnAck { .. }) {
                    bail!("CONNECT: {m:?}");
                }
                let m = ask(Message::Subscribe {
                    flags: Flags::NONE,
                    msg_id: 1,
                    topic: TopicRef::Short(topic),
                })?;
                if !matches!(m, Message::SubAck { .. }) {
                    bail!("SUBSCRIBE: {m:?}");
                }
                s.set_read_timeout(Some(Duration::from_millis(20)))?;
                Ok(s)
            };
            let s = match setup() {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let drops0 = udp_rcvbuf_errors();
            let mut r = Received::default();
            let mut bufs = vec![[0u8; 512]; 64];
            loop {
                let lens = recv_batch(s.as_raw_fd(), &mut bufs);
                let t = now_ns();
                for (b, &len) in bufs.iter().zip(&lens) {
                    if let Some(at) = sent_at(&b[..len], 7) {
                        r.messages += 1;
                        if r.latencies_us.len() < SAMPLES {
                            r.latencies_us.push((t.saturating_sub(at) / 1000) as u32);
                        }
                    }
                }
                if lens.is_empty() && stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            r.socket_drops = udp_rcvbuf_errors() - drops0;
            Ok(r)
        }));
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("gateway subscriber {i}: {e}"),
            Err(_) => bail!("gateway subscriber {i} did not start"),
        }
    }
    Ok(handles)
}

/// mosquitto (the Debian package) on the router's address in the lab,
/// listening: the process and its config file.
fn start_mosquitto(lab: &Lab) -> Result<(std::process::Child, std::path::PathBuf)> {
    let conf = std::env::temp_dir().join(format!("{}.conf", crate::unique("scmosq")));
    std::fs::write(
        &conf,
        format!("listener {MQTT_PORT} 0.0.0.0\nallow_anonymous true\nmax_queued_messages 0\n"),
    )?;
    let conf2 = conf.clone();
    let mut child = join(in_ns(&lab.router.name, move || {
        std::process::Command::new("mosquitto")
            .args(["-c", &conf2.display().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting mosquitto (cargo xtask setup installs it)")
    }))?;
    let ready = join(in_ns(&lab.router.name, || {
        for _ in 0..100 {
            if TcpStream::connect((ROUTER_V4, MQTT_PORT)).is_ok() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(false)
    }))?;
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&conf);
        bail!("mosquitto did not listen on {ROUTER_V4}:{MQTT_PORT}");
    }
    Ok((child, conf))
}

/// One row of the relay table: `sent` publishes to `k` subscribers each.
#[allow(clippy::too_many_arguments)]
fn relay_row(
    system: &str,
    k: u32,
    rate: f64,
    sent: u64,
    delivered: u64,
    cpu_s: f64,
    mut lat: Vec<u32>,
    per_call: Option<f64>,
) -> String {
    format!(
        "| {system} | {k} | {rate:.0} | {:.0} | {:.2} | {} | {} | {} | {} |\n",
        delivered as f64 / WINDOW.as_secs_f64(),
        cpu_s / delivered.max(1) as f64 * 1e6,
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        (sent * k as u64).saturating_sub(delivered),
        per_call.map_or("-".to_string(), |p| format!("{p:.1}")),
    )
}

/// Subscriber counts and publish rates of the relay benchmark.
const RELAY_SUBSCRIBERS: [u32; 2] = [10, 100];
const RELAY_RATES: [f64; 2] = [200.0, 800.0];

/// `SHARDCAST_BENCH=relay`: standard clients subscribed through the
/// gateway (MQTT-SN over UDP, the relay's unicast copies of what XDP
/// routes) against mosquitto's subscribers (MQTT over TCP), the same
/// numbers of subscriber connections over the same 3 namespaces, the same
/// offered publish rates and 21-byte bodies. Per row: deliveries/s, the
/// server's CPU µs per delivery (the daemon process with its gateway; the
/// mosquitto process), p50/p99 latency, loss, and the batch the gateway's
/// sender chose (datagrams per `sendmmsg`).
pub fn relay_bench() -> Result<String> {
    use std::fmt::Write as _;
    let mut lab = Lab::new(3)?;
    let cpu = crate::measure::cpu_model();
    let mut out = String::new();
    writeln!(
        out,
        "Relay to standard clients ({cpu}; {}-second windows, 21-byte bodies):\n\n\
         | system | subscribers | publishes/s offered | deliveries/s | server CPU µs/delivery | p50 µs | p99 µs | lost | datagrams per sendmmsg |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|",
        WINDOW.as_secs()
    )?;
    // mosquitto, on the router's address (TCP).
    let (mut child, conf) = start_mosquitto(&lab)?;
    let mosq = (|| -> Result<()> {
        for &k in &RELAY_SUBSCRIBERS {
            for &rate in &RELAY_RATES {
                let stop = Arc::new(AtomicBool::new(false));
                let receivers = mqtt_receivers(&lab, "k1", k, &stop)?;
                std::thread::sleep(Duration::from_millis(100));
                let cpu0 = crate::measure::process_cpu_seconds(child.id());
                let sent = mqtt_senders(&lab, "k1", 21, Some(rate))?;
                std::thread::sleep(Duration::from_millis(300));
                let cpu_s = crate::measure::process_cpu_seconds(child.id()) - cpu0;
                stop.store(true, Ordering::Relaxed);
                let (delivered, _, lat) = collect(receivers)?;
                out.push_str(&relay_row(
                    "mosquitto",
                    k,
                    rate,
                    sent,
                    delivered,
                    cpu_s,
                    lat,
                    None,
                ));
            }
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&conf);
    mosq?;
    // shardcast: the XDP router, the daemon's gateway with its relay.
    lab.attach_with_relay()?;
    let shards: Vec<LabShard> = (1..=1).map(LabShard::numbered).collect();
    lab.offer_plan(&Lab::plan_json(1, &shards, &[("k1", &[1])]))?;
    for &k in &RELAY_SUBSCRIBERS {
        for &rate in &RELAY_RATES {
            let daemon = lab.start_daemon_with(
                "100ms",
                "[gateway]\nlisten = \"198.18.1.1:1884\"\nrelay_egress = \"scgw0\"\nrelay_iface = \"scgw1\"",
            )?;
            daemon.wait_log(Duration::from_secs(10), |l| l.contains("MQTT-SN gateway"))?;
            let stop = Arc::new(AtomicBool::new(false));
            let receivers = gateway_receivers(&lab, *b"k1", k, &stop)?;
            daemon.wait_log(Duration::from_secs(10), |l| {
                l.contains("relay routes installed") && l.contains("relay_topics=1")
            })?;
            std::thread::sleep(Duration::from_millis(200));
            let pid = daemon.child.pid();
            let cpu0 = crate::measure::process_cpu_seconds(pid);
            let sent = udp_sender(
                &lab,
                SocketAddrV4::new(ROUTER_V4, MQTTSN_PORT),
                *b"k1",
                21,
                Some(rate),
            )?;
            std::thread::sleep(Duration::from_millis(300));
            let cpu_s = crate::measure::process_cpu_seconds(pid) - cpu0;
            stop.store(true, Ordering::Relaxed);
            let (delivered, _, lat) = collect(receivers)?;
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let stopped =
                daemon.wait_log(Duration::from_secs(10), |l| l.contains("gateway stopped"))?;
            let field = |key: &str| -> f64 {
                stopped
                    .split(&format!("{key}: "))
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0.0)
            };
            let per_call = field("sent") / field("send_calls").max(1.0);
            out.push_str(&relay_row(
                "shardcast relay",
                k,
                rate,
                sent,
                delivered,
                cpu_s,
                lat,
                Some(per_call),
            ));
            drop(daemon);
        }
    }
    // Where copies were lost, if anywhere: the router namespace's UDP
    // counters (the gateway's sockets) and the data plane's reasons.
    eprintln!(
        "relay bench: router UDP {}",
        lab.router
            .exec(
                "nstat",
                &["-az", "UdpRcvbufErrors", "UdpInErrors", "UdpInDatagrams"]
            )
            .unwrap_or_default()
    );
    let c = lab.counters()?;
    eprintln!("relay bench: data plane reasons {:?}", c.reasons);
    eprintln!(
        "relay bench: publisher link {}\nrouter ingress {}",
        lab.publisher
            .exec("ip", &["-s", "link", "show", "p0"])
            .unwrap_or_default(),
        lab.router.exec("ip", &["-s", "link"]).unwrap_or_default()
    );
    lab.detach()?;
    Ok(out)
}

//! The gateway on a UDP socket (sends batched and paced: [`crate::batch`]): datagrams in (drained in batches of up to
//! [`BATCH`]), [`Gateway::handle`] and [`Membership`], effects out;
//! [`Gateway::tick`] and [`Membership::tick`] every second. Publishes the
//! gateway accepts go to its own subscribers ([`Gateway::deliver`]) and to
//! `on_publish` (the caller routes them to shard groups); topic ids it
//! assigns go to `on_register`, membership records to `on_members`, both
//! before any message that depends on them leaves: one commit per batch
//! keeps registrations fast and every promise crash-safe.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use std::os::fd::AsRawFd;

use nix::sys::socket::MsgFlags;
use tokio::{io::Interest, net::UdpSocket, sync::mpsc::UnboundedReceiver};

use crate::{
    batch::Sender,
    coap::{CoapEffect, CoapGateway},
    control::{Assignment, unix_ms},
    membership::{Event, MemberUpdate, Membership, Out},
    mqttsn::{decode, encode},
    session::{Effect, Gateway, SessionRecord},
};

/// Datagrams handled before their effects are committed and sent.
pub const BATCH: usize = 256;

/// What the service saw, for status and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub malformed: u64,
    pub sent: u64,
    pub published: u64,
    /// Control messages from devices.
    pub controls: u64,
    /// Publishes received from the shard groups and relayed to the
    /// gateway's own subscribers.
    pub relayed: u64,
    /// `sendmmsg` calls on the MQTT-SN socket (`sent / send_calls`: the
    /// batch size the sender chose, on average).
    pub send_calls: u64,
}

/// A publish the gateway accepted.
#[derive(Clone, Copy, Debug)]
pub struct Accepted<'a> {
    pub topic: &'a str,
    pub data: &'a [u8],
    /// Its wire name for the shard groups: topic id type and id.
    pub id_type: u8,
    pub id: u16,
    /// Whether it came over IPv6 (`None`: a will, published by the
    /// gateway itself).
    pub origin_v6: Option<bool>,
}

/// Move a device: sent to it as a `migrate` command with the group of
/// its address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateCommand {
    pub client: String,
    pub generation: u64,
    pub shard: u32,
    pub group_v4: Option<Ipv4Addr>,
    pub group_v6: Option<Ipv6Addr>,
    pub port: u16,
    /// Unix ms.
    pub deadline_ms: u64,
}

/// Callbacks for what leaves the gateway's own state.
pub struct Hooks<'a> {
    pub on_publish: &'a mut dyn FnMut(&Accepted),
    /// A topic id was assigned: called before the message carrying it is
    /// sent (commit it here to keep it across a crash).
    pub on_register: &'a mut dyn FnMut(&str, u16),
    /// Sessions changed since the last call (at most a second behind).
    pub on_sessions: &'a mut dyn FnMut(&[SessionRecord]),
    /// Membership records to commit (`None`: delete), before the messages
    /// that carry their tokens leave.
    pub on_members: &'a mut dyn FnMut(&[MemberUpdate]),
    /// Membership events: joins, confirms, time-outs, expiries, refusals.
    pub on_event: &'a mut dyn FnMut(&Event),
    /// Where the installed plan places a device, in the group of the
    /// family given (`true`: IPv6).
    pub placement: &'a mut dyn FnMut(&str, bool) -> Option<Assignment>,
    /// The topics CoAP clients observe, when they change.
    pub on_observed: &'a mut dyn FnMut(&std::collections::BTreeSet<String>),
    /// The topics CoAP requests may name, when they changed (polled every
    /// second).
    pub coap_topics: &'a mut dyn FnMut() -> Option<Vec<String>>,
}

/// Serves MQTT-SN on `sock` until `shutdown` completes, sending the
/// migrate commands that arrive on `commands` and relaying the publishes
/// that arrive on `relay` (a socket in a shard group the data plane copies
/// the topics of the gateway's subscribers to) to its subscribers.
pub async fn serve(
    sock: UdpSocket,
    mut gw: Gateway,
    mut members: Membership,
    hooks: Hooks<'_>,
    mut commands: Option<UnboundedReceiver<MigrateCommand>>,
    extra: Extra,
    shutdown: impl Future<Output = ()>,
) -> io::Result<(Gateway, Membership, Stats)> {
    let Extra {
        relay,
        relay_v6,
        relay_coap,
        relay_coap_v6,
        coap,
        probes,
        send_rate,
    } = extra;
    let rate = send_rate.unwrap_or(crate::batch::SEND_RATE);
    if probes.is_some() {
        // Kernel receive times for the probes (best effort: without them
        // a probe is timed when the gateway reads it). Only then: reading
        // a timestamp with each datagram is not free.
        for r in relay.iter().chain(&relay_v6) {
            let _ = nix::sys::socket::setsockopt(
                r,
                nix::sys::socket::sockopt::ReceiveTimestampns,
                &true,
            );
        }
    }
    let (coap_sock, mut coap) = match coap {
        Some((s, g)) => (Some(s), Some(g)),
        None => (None, None),
    };
    for m in members.members() {
        gw.set_kernel_served(&m.client, true);
    }
    let mut observed = std::collections::BTreeSet::new();
    let mut cbuf = vec![0u8; 65_536];
    let mut crbuf = vec![0u8; 65_536];
    let mut r6buf = vec![0u8; 65_536];
    let mut cr6buf = vec![0u8; 65_536];
    let mut hooks = hooks;
    let mut changed: Vec<SessionRecord> = Vec::new();
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let mut stats = Stats::default();
    let mut paced = Sender::with_rate(&sock, rate);
    let mut coap_sender = coap_sock.as_ref().map(|s| Sender::with_rate(s, rate));
    let mut buf = vec![0u8; 65_536];
    let mut rbuf = vec![0u8; 65_536];
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    // (members, pending migrations) as last logged.
    let mut logged = (usize::MAX, usize::MAX);
    tokio::pin!(shutdown);
    loop {
        let mut batch = Batch::default();
        tokio::select! {
            _ = &mut shutdown => {
                (hooks.on_sessions)(&changed);
                stats.send_calls = paced.stats.calls;
                return Ok((gw, members, stats));
            }
            _ = tick.tick() => {
                if let (Some(c), Some(t)) = (&mut coap, (hooks.coap_topics)()) {
                    c.set_topics(t);
                }
                (hooks.on_sessions)(&changed);
                changed.clear();
                batch.effects.push((None, gw.tick(now())));
                batch.outs.extend(members.tick(unix_ms()));
                let now_counts = (members.len(), members.pending());
                if now_counts != logged {
                    logged = now_counts;
                    tracing::info!(members = now_counts.0, migrating = now_counts.1, "membership");
                }
            }
            c = async {
                match &mut commands {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match c {
                    Some(c) => migrate(&mut members, c, &mut batch.outs),
                    None => commands = None,
                }
                // Every command queued: one batch.
                while let Some(Ok(c)) = commands.as_mut().map(|rx| rx.try_recv()) {
                    migrate(&mut members, c, &mut batch.outs);
                }
            }
            r = readable(relay.as_ref()) => {
                r?;
                if let Some(s) = &relay {
                    relay_drain(s, &mut rbuf, &mut gw, coap.as_mut(), &mut batch, &mut stats, probes.as_ref())?;
                }
            }
            r = readable(relay_v6.as_ref()) => {
                r?;
                if let Some(s) = &relay_v6 {
                    relay_drain(s, &mut r6buf, &mut gw, coap.as_mut(), &mut batch, &mut stats, probes.as_ref())?;
                }
            }
            r = recv_from(relay_coap.as_ref(), &mut crbuf) => {
                let (n, _) = r?;
                relay_coap_one(&mut gw, coap.as_mut(), &crbuf[..n], &mut batch, &mut stats);
            }
            r = recv_from(relay_coap_v6.as_ref(), &mut cr6buf) => {
                let (n, _) = r?;
                relay_coap_one(&mut gw, coap.as_mut(), &cr6buf[..n], &mut batch, &mut stats);
            }
            r = recv_from(coap_sock.as_ref(), &mut cbuf) => {
                let (n, from) = r?;
                stats.received += 1;
                batch.datagrams += 1;
                if let Some(c) = &mut coap {
                    for e in c.handle(from, &cbuf[..n]) {
                        match e {
                            CoapEffect::Send(to, d) => batch.coap_out.push((to, d)),
                            CoapEffect::Publish { topic, data } => batch.effects.push((
                                Some(from.is_ipv6()),
                                vec![Effect::Publish { topic, data, retain: false }],
                            )),
                            // A CoAP device's control message: the same
                            // membership as MQTT-SN devices'.
                            CoapEffect::Control { client, from, data } => {
                                batch.effects.push((None, vec![Effect::Control { client, from, data }]))
                            }
                            CoapEffect::Seen { client, from } => {
                                batch.outs.extend(members.seen(&client, from, unix_ms()))
                            }
                        }
                    }
                }
            }
            r = sock.recv_from(&mut buf) => {
                let (n, from) = r?;
                receive(&mut gw, &mut members, &buf[..n], from, now(), &mut batch, &mut stats);
                while batch.datagrams < BATCH {
                    match sock.try_recv_from(&mut buf) {
                        Ok((n, from)) => receive(&mut gw, &mut members, &buf[..n], from, now(), &mut batch, &mut stats),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        };
        let coap_out = apply(
            &mut paced,
            (&mut gw, coap.as_mut()),
            &mut members,
            batch,
            &mut hooks,
            &mut changed,
            &mut stats,
        )
        .await?;
        if let Some(s) = &mut coap_sender {
            let mut q = coap_out;
            let before = s.stats.datagrams;
            s.send_all(&mut q).await?;
            stats.sent += s.stats.datagrams - before;
        }
        if let Some(c) = &coap {
            let now_observed = c.observed();
            if now_observed != observed {
                observed = now_observed;
                (hooks.on_observed)(&observed);
            }
        }
    }
}

/// A datagram from `sock`, or never when there is no such socket (a
/// `select!` branch for an optional socket).
/// Relays what the relay's socket `sock` holds, up to a batch; with
/// probes, each datagram read with its kernel receive time.
fn relay_drain(
    sock: &UdpSocket,
    buf: &mut [u8],
    gw: &mut Gateway,
    mut coap: Option<&mut CoapGateway>,
    batch: &mut Batch,
    stats: &mut Stats,
    probes: Option<&tokio::sync::mpsc::UnboundedSender<(crate::probe::Probe, u64)>>,
) -> io::Result<()> {
    while batch.datagrams < BATCH {
        let r = if probes.is_some() {
            try_recv_stamped(sock, buf)
        } else {
            sock.try_recv(buf).map(|n| (n, None))
        };
        match r {
            Ok((n, at)) => relay_one(gw, coap.as_deref_mut(), &buf[..n], at, batch, stats, probes),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until `sock` (if any) has a datagram.
async fn readable(sock: Option<&UdpSocket>) -> io::Result<()> {
    match sock {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// One datagram from `sock`, without waiting, with the time the kernel
/// received it (unix ns; `SO_TIMESTAMPNS`, asked for on the relay's
/// socket): a probe's latency then leaves out the gateway's own wake-up.
fn try_recv_stamped(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    use nix::sys::socket::{ControlMessageOwned, recvmsg};
    sock.try_io(Interest::READABLE, || {
        let mut iov = [io::IoSliceMut::new(buf)];
        let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let at = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|c| match c {
                ControlMessageOwned::ScmTimestampns(t) => {
                    Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
                }
                _ => None,
            })
        });
        Ok((msg.bytes, at))
    })
}

async fn recv_from(sock: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The gateway's other sockets.
#[derive(Default)]
pub struct Extra {
    /// In the relay's shard group, on the MQTT-SN port.
    pub relay: Option<UdpSocket>,
    /// In the relay's IPv6 group, on the MQTT-SN port.
    pub relay_v6: Option<UdpSocket>,
    /// In the relay's shard group, on the CoAP port.
    pub relay_coap: Option<UdpSocket>,
    /// In the relay's IPv6 group, on the CoAP port.
    pub relay_coap_v6: Option<UdpSocket>,
    /// The CoAP side: its socket and state.
    pub coap: Option<(UdpSocket, CoapGateway)>,
    /// What the egress takes, datagrams/s (`None`: [`crate::batch::SEND_RATE`]).
    pub send_rate: Option<f64>,
    /// Where latency probes arriving through the relay go, with when they
    /// arrived (unix ns); without it they are dropped.
    pub probes: Option<tokio::sync::mpsc::UnboundedSender<(crate::probe::Probe, u64)>>,
}

/// What a batch of datagrams (or a tick, or commands) asks for.
#[derive(Default)]
struct Batch {
    datagrams: usize,
    /// Each datagram's effects with the family it came by.
    effects: Vec<(Option<bool>, Vec<Effect>)>,
    outs: Vec<Out>,
    /// CoAP datagrams to send.
    coap_out: Vec<(SocketAddr, Vec<u8>)>,
}

fn receive(
    gw: &mut Gateway,
    members: &mut Membership,
    datagram: &[u8],
    from: SocketAddr,
    now: u64,
    batch: &mut Batch,
    stats: &mut Stats,
) {
    stats.received += 1;
    batch.datagrams += 1;
    match decode(datagram) {
        Ok(m) => {
            batch
                .effects
                .push((Some(from.is_ipv6()), gw.handle(from, now, m)));
            // Any message is a sign of life: renew the token past half.
            if let Some(client) = gw.client_id(&from) {
                batch.outs.extend(members.seen(client, from, unix_ms()));
            }
        }
        Err(e) => {
            stats.malformed += 1;
            tracing::debug!(%from, "malformed MQTT-SN datagram: {e}");
        }
    }
}

/// A datagram from the relay's shard group: a publish, delivered to the
/// gateway's subscribers (never routed again: it came from the routes),
/// or a latency probe, handed over with its arrival time.
fn relay_one(
    gw: &mut Gateway,
    coap: Option<&mut CoapGateway>,
    datagram: &[u8],
    arrived_ns: Option<u64>,
    batch: &mut Batch,
    stats: &mut Stats,
    probes: Option<&tokio::sync::mpsc::UnboundedSender<(crate::probe::Probe, u64)>>,
) {
    batch.datagrams += 1;
    if let Some(p) = crate::probe::Probe::decode(datagram) {
        if let Some(tx) = probes {
            let now = arrived_ns.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
            let _ = tx.send((p, now));
        }
        return;
    }
    let Ok(crate::mqttsn::Message::Publish {
        flags,
        topic_id,
        data,
        ..
    }) = decode(datagram)
    else {
        return;
    };
    if let Some(topic) = gw.topic_name(flags.topic_id_type, topic_id) {
        stats.relayed += 1;
        batch.effects.push((None, gw.deliver(&topic, &data)));
        if let Some(c) = coap {
            coap_sends(c.deliver(&topic, &data), batch);
        }
    }
}

fn coap_sends(fx: Vec<CoapEffect>, batch: &mut Batch) {
    for e in fx {
        if let CoapEffect::Send(to, d) = e {
            batch.coap_out.push((to, d));
        }
    }
}

/// A CoAP publish from the relay's shard group (the data plane keeps a
/// publish's protocol): delivered to both kinds of subscriber.
fn relay_coap_one(
    gw: &mut Gateway,
    coap: Option<&mut CoapGateway>,
    datagram: &[u8],
    batch: &mut Batch,
    stats: &mut Stats,
) {
    batch.datagrams += 1;
    let Some(c) = coap else { return };
    let Some((topic, data)) = c.publish_of(datagram) else {
        return;
    };
    stats.relayed += 1;
    batch.effects.push((None, gw.deliver(&topic, &data)));
    coap_sends(c.deliver(&topic, &data), batch);
}

fn migrate(members: &mut Membership, c: MigrateCommand, outs: &mut Vec<Out>) {
    let now = unix_ms();
    let group: Option<IpAddr> = match members.member(&c.client).map(|m| m.address.is_ipv6()) {
        Some(true) => c.group_v6.map(IpAddr::V6),
        Some(false) => c.group_v4.map(IpAddr::V4),
        None => None,
    };
    let sent = group.and_then(|group| {
        let to = Assignment {
            generation: c.generation,
            shard: c.shard,
            group,
            port: c.port,
        };
        members.migrate(&c.client, to, c.deadline_ms, now).ok()
    });
    match sent {
        Some(o) => outs.extend(o),
        None => outs.push(Out::Event(Event::Unreachable {
            client: c.client,
            generation: c.generation,
        })),
    }
}

async fn apply(
    sock: &mut Sender<'_>,
    (gw, mut coap): (&mut Gateway, Option<&mut CoapGateway>),
    members: &mut Membership,
    batch: Batch,
    hooks: &mut Hooks<'_>,
    changed: &mut Vec<SessionRecord>,
    stats: &mut Stats,
) -> io::Result<Vec<(SocketAddr, Vec<u8>)>> {
    let Batch {
        effects,
        mut outs,
        mut coap_out,
        ..
    } = batch;
    // Ids first: a REGACK or SUBACK must not carry an id a crash could
    // forget. Control messages go to the membership now, so that its
    // records are committed with the batch's.
    let mut queue: Vec<(Option<bool>, Effect)> = Vec::new();
    for (origin, fx) in effects {
        for e in fx {
            match e {
                Effect::Registered { ref topic, id } => (hooks.on_register)(topic, id),
                Effect::Control {
                    ref client,
                    from,
                    ref data,
                } => {
                    stats.controls += 1;
                    let placement = (hooks.placement)(client, from.is_ipv6());
                    outs.extend(members.control(client, from, data, unix_ms(), placement));
                    continue;
                }
                _ => {}
            }
            queue.push((origin, e));
        }
    }
    let records: Vec<MemberUpdate> = outs
        .iter()
        .filter_map(|o| match o {
            Out::Persist(c, r) => Some((c.clone(), r.clone())),
            _ => None,
        })
        .collect();
    if !records.is_empty() {
        // A member's session (what it subscribed to before its `hello`)
        // is committed and reported first: whoever places the member
        // sees what it follows.
        if !changed.is_empty() {
            (hooks.on_sessions)(changed);
            changed.clear();
        }
        (hooks.on_members)(&records);
    }
    for o in outs {
        match o {
            Out::Persist(client, r) => gw.set_kernel_served(&client, r.is_some()),
            Out::Send { to, msg, client } => {
                let payload = msg.encode();
                // A CoAP device observing its control resource gets it as
                // a notification; any other by MQTT-SN.
                if let Some(d) = coap
                    .as_deref_mut()
                    .and_then(|c| c.control_notification(&client, to, payload.as_bytes()))
                {
                    coap_out.push((to, d));
                    continue;
                }
                queue.extend(
                    gw.send_control(to, payload.as_bytes())
                        .into_iter()
                        .map(|e| (None, e)),
                );
            }
            Out::Event(e) => (hooks.on_event)(&e),
        }
    }
    // Everything this batch sends, handed to the kernel at the end in
    // `sendmmsg` chunks.
    let mut outq: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut first_round = true;
    while !queue.is_empty() {
        let mut next = Vec::new();
        for (origin_v6, e) in queue {
            match e {
                Effect::Send(to, m) => match encode(&m) {
                    Ok(d) => outq.push((to, d)),
                    Err(e) => tracing::warn!(%to, "cannot encode {m:?}: {e}"),
                },
                Effect::Publish { topic, data, .. } => {
                    stats.published += 1;
                    let (wire, assigned) = gw.wire_id(&topic);
                    for e in &assigned {
                        if let Effect::Registered { topic, id } = e {
                            (hooks.on_register)(topic, *id);
                        }
                    }
                    if let Some((id_type, id)) = wire {
                        (hooks.on_publish)(&Accepted {
                            topic: &topic,
                            data: &data,
                            id_type,
                            id,
                            origin_v6,
                        });
                    }
                    next.extend(gw.deliver(&topic, &data).into_iter().map(|e| (None, e)));
                    if let Some(c) = coap.as_deref_mut() {
                        for e in c.deliver(&topic, &data) {
                            if let CoapEffect::Send(to, d) = e {
                                coap_out.push((to, d));
                            }
                        }
                    }
                }
                Effect::Registered { topic, id } => {
                    if !first_round {
                        (hooks.on_register)(&topic, id);
                    }
                }
                Effect::Session(r) => {
                    changed.retain(|c| c.client_id != r.client_id);
                    changed.push(r);
                }
                // Handled above (a delivery never makes one).
                Effect::Control { .. } => {}
            }
        }
        queue = next;
        first_round = false;
    }
    let before = sock.stats.datagrams;
    sock.send_all(&mut outq).await?;
    stats.sent += sock.stats.datagrams - before;
    Ok(coap_out)
}

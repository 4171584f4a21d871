//! The gateway on a UDP socket: datagrams in, [`Gateway::handle`], effects
//! out; [`Gateway::tick`] every second. Publishes the gateway accepts go
//! to its own subscribers ([`Gateway::deliver`]) and to `on_publish` (the
//! caller routes them to shard groups); topic ids it assigns go to
//! `on_register` (for the plan and the registry).

use std::{future::Future, io, net::SocketAddr, time::Instant};

use tokio::net::UdpSocket;

use crate::{
    mqttsn::{decode, encode},
    session::{Effect, Gateway, SessionRecord},
};

/// What the service saw, for status and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub malformed: u64,
    pub sent: u64,
    pub published: u64,
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

/// Callbacks for what leaves the gateway's own state.
pub struct Hooks<'a> {
    pub on_publish: &'a mut dyn FnMut(&Accepted),
    /// A topic id was assigned: called before the message carrying it is
    /// sent (commit it here to keep it across a crash).
    pub on_register: &'a mut dyn FnMut(&str, u16),
    /// Sessions changed since the last call (at most a second behind).
    pub on_sessions: &'a mut dyn FnMut(&[SessionRecord]),
}

/// Serves MQTT-SN on `sock` until `shutdown` completes.
pub async fn serve(
    sock: UdpSocket,
    mut gw: Gateway,
    hooks: Hooks<'_>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<(Gateway, Stats)> {
    let mut hooks = hooks;
    let mut changed: Vec<SessionRecord> = Vec::new();
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let mut stats = Stats::default();
    let mut buf = vec![0u8; 65_536];
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        let mut origin_v6 = None;
        let effects = tokio::select! {
            _ = &mut shutdown => {
                (hooks.on_sessions)(&changed);
                return Ok((gw, stats));
            }
            _ = tick.tick() => {
                (hooks.on_sessions)(&changed);
                changed.clear();
                gw.tick(now())
            }
            r = sock.recv_from(&mut buf) => {
                let (n, from) = r?;
                stats.received += 1;
                origin_v6 = Some(from.is_ipv6());
                match decode(&buf[..n]) {
                    Ok(m) => gw.handle(from, now(), m),
                    Err(e) => {
                        stats.malformed += 1;
                        tracing::debug!(%from, "malformed MQTT-SN datagram: {e}");
                        Vec::new()
                    }
                }
            }
        };
        apply(
            &sock,
            &mut gw,
            effects,
            &mut hooks,
            origin_v6,
            &mut changed,
            &mut stats,
        )
        .await?;
    }
}

async fn apply(
    sock: &UdpSocket,
    gw: &mut Gateway,
    effects: Vec<Effect>,
    hooks: &mut Hooks<'_>,
    origin_v6: Option<bool>,
    changed: &mut Vec<SessionRecord>,
    stats: &mut Stats,
) -> io::Result<()> {
    // Ids first: a REGACK or SUBACK must not carry an id a crash could
    // forget.
    for e in &effects {
        if let Effect::Registered { topic, id } = e {
            (hooks.on_register)(topic, *id);
        }
    }
    let mut queue = effects;
    let mut first_round = true;
    while !queue.is_empty() {
        let mut next = Vec::new();
        for e in queue {
            match e {
                Effect::Send(to, m) => send(sock, to, &m, stats).await?,
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
                    next.extend(gw.deliver(&topic, &data));
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
            }
        }
        queue = next;
        first_round = false;
    }
    Ok(())
}

async fn send(
    sock: &UdpSocket,
    to: SocketAddr,
    m: &crate::mqttsn::Message,
    stats: &mut Stats,
) -> io::Result<()> {
    match encode(m) {
        Ok(d) => {
            // A client gone away (ICMP unreachable) is not the gateway's
            // failure.
            if let Err(e) = sock.send_to(&d, to).await {
                tracing::debug!(%to, "send: {e}");
            } else {
                stats.sent += 1;
            }
        }
        Err(e) => tracing::warn!(%to, "cannot encode {m:?}: {e}"),
    }
    Ok(())
}

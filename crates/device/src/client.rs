//! The device protocol on sockets: one UDP socket to the gateway (MQTT-SN
//! CONNECT, keep-alive PINGREQs, control messages on the predefined
//! control topic, QoS 1 with retries) and one multicast socket per group
//! the device is in (bound to the group's address, so each receives its
//! group only).

use std::{
    collections::VecDeque,
    future::poll_fn,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    task::Poll,
    time::Duration,
};

use shardcast_gateway::{
    control::{self, Assignment, Attributes, CONTROL_ID, Control},
    mqttsn::{Flags, Message, Qos, ReturnCode, TopicRef, decode, encode},
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol as SockProtocol, Socket, Type};
use tokio::{io::ReadBuf, net::UdpSocket, time::Instant};

use crate::{
    dedup::Dedup,
    protocol::{Action, DeviceStats, Protocol, TokenDue},
};

const TOPIC_PREDEFINED: u8 = 0b01;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {client}: {what}: {source}")]
    Io {
        client: String,
        what: String,
        source: io::Error,
    },
    #[error("device {client}: the gateway at {gateway} did not answer {what}")]
    NoAnswer {
        client: String,
        gateway: SocketAddr,
        what: &'static str,
    },
    #[error("device {client}: the gateway refused the connection ({rc:?})")]
    Refused { client: String, rc: ReturnCode },
}

/// How a device runs.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub client_id: String,
    pub gateway: SocketAddr,
    /// MQTT-SN keep-alive; a PINGREQ goes out every half of it.
    pub keep_alive: Duration,
    pub attributes: Attributes,
    /// The interface multicast groups are joined on (0: the kernel's
    /// choice by route).
    pub interface: u32,
    /// A control message not acknowledged is re-sent after this long.
    pub retry: Duration,
    /// Publishes remembered for duplicate detection.
    pub dedup_window: usize,
    /// How long a group is kept after the move that left it was
    /// acknowledged (publishes to it still on their way arrive).
    pub linger: Duration,
    /// Topic names (or `+`/`#` filters) the device follows: subscribed
    /// through the gateway after `hello`, so that the registry, and the
    /// planner placing the device, know what it listens to. Its publishes
    /// still come from its shard's group, never as unicast copies.
    pub subscriptions: Vec<String>,
    /// How the device talks to the gateway (`gateway` is its MQTT-SN or
    /// its CoAP address accordingly).
    pub transport: Transport,
}

/// The device protocol's two carriers (docs/device-protocol.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// The control topic over an MQTT-SN session.
    #[default]
    MqttSn,
    /// The control resource `sc/<client id>` over CoAP: observed for the
    /// gateway's messages (re-registered every half keep-alive), POSTed
    /// (confirmable) for the device's. No session and no subscriptions
    /// through the gateway: the planner places such a device by its
    /// attributes.
    Coap,
}

impl DeviceConfig {
    pub fn new(client_id: &str, gateway: SocketAddr) -> DeviceConfig {
        DeviceConfig {
            client_id: client_id.to_string(),
            gateway,
            keep_alive: Duration::from_secs(60),
            attributes: Attributes::default(),
            interface: 0,
            retry: Duration::from_millis(500),
            dedup_window: 4096,
            linger: Duration::from_millis(250),
            subscriptions: Vec::new(),
            transport: Transport::MqttSn,
        }
    }
}

/// What the device sends reliably, one at a time, re-sent until
/// acknowledged.
#[derive(Clone, Debug)]
enum Request {
    /// A control message (PUBACK acknowledges it).
    Control(Control),
    /// A SUBSCRIBE by name (SUBACK acknowledges it).
    Subscribe(String),
}

/// A publish received from a shard group (first copy only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub topic_id_type: u8,
    pub topic_id: u16,
    pub msg_id: u16,
    pub data: Vec<u8>,
    /// The shard whose group it came by.
    pub shard: u32,
}

/// A connected device.
pub struct Device {
    cfg: DeviceConfig,
    sock: UdpSocket,
    proto: Protocol,
    groups: Vec<(Assignment, UdpSocket)>,
    dedup: Dedup,
    /// Control messages to send, in order; the first is in flight once
    /// `inflight` says so.
    outbox: VecDeque<Request>,
    inflight: Option<(u16, Vec<u8>, Instant, u32)>,
    next_msg_id: u16,
    last_sent: Instant,
    /// When the last `hello` left.
    hello_sent: Instant,
    /// Groups to leave, and when.
    leaving: Vec<(Instant, Assignment)>,
    /// Datagrams drained from a group's socket as the device left it:
    /// (shard, datagram), delivered before anything newer.
    backlog: VecDeque<(u32, Option<SocketAddr>, Vec<u8>)>,
    /// Receive buffers (datagrams up to a jumbo frame), kept between calls.
    buf: Vec<u8>,
    gbuf: Vec<u8>,
}

impl Device {
    /// Connects (clean session) and says `hello`; the assignment follows
    /// as [`next`](Self::next) runs.
    pub async fn connect(cfg: DeviceConfig) -> Result<Device, DeviceError> {
        let bind: SocketAddr = if cfg.gateway.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let io_err = |what: &str| {
            let client = cfg.client_id.clone();
            let what = what.to_string();
            move |source| DeviceError::Io {
                client,
                what,
                source,
            }
        };
        let sock = UdpSocket::bind(bind).await.map_err(io_err("binding"))?;
        sock.connect(cfg.gateway)
            .await
            .map_err(io_err("connecting to the gateway"))?;
        let mut d = Device {
            proto: Protocol::new(&cfg.client_id),
            dedup: Dedup::new(cfg.dedup_window),
            cfg,
            sock,
            groups: Vec::new(),
            outbox: VecDeque::new(),
            inflight: None,
            next_msg_id: 1,
            last_sent: Instant::now(),
            hello_sent: Instant::now(),
            leaving: Vec::new(),
            backlog: VecDeque::new(),
            buf: vec![0; 9216],
            gbuf: vec![0; 9216],
        };
        if d.cfg.transport == Transport::Coap {
            d.observe_control().await?;
        } else {
            d.mqtt_connect().await?;
            // Subscriptions first: when the gateway learns of the member,
            // it knows what the member follows, and the first plan placing
            // it routes those topics to its shard.
            d.subscribe_all();
        }
        d.outbox
            .push_back(Request::Control(Protocol::hello(d.cfg.attributes.clone())));
        Ok(d)
    }

    /// Queues a SUBSCRIBE for every topic the device follows (after a
    /// clean-session CONNECT the gateway knows none).
    fn subscribe_all(&mut self) {
        for t in &self.cfg.subscriptions {
            self.outbox.push_back(Request::Subscribe(t.clone()));
        }
    }

    /// The next message id (MQTT-SN msg id or CoAP message id).
    fn next_id(&mut self) -> u16 {
        let id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1).max(1);
        id
    }

    /// A CoAP request on the device's control resource.
    fn coap_request(
        &self,
        mid: u16,
        method: coap_lite::RequestType,
        observe: Option<u32>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut p = coap_lite::Packet::new();
        p.header.set_type(coap_lite::MessageType::Confirmable);
        p.header.code = coap_lite::MessageClass::Request(method);
        p.header.message_id = mid;
        // One token for the observation and every POST: the gateway's
        // notifications carry it.
        p.set_token(b"sc".to_vec());
        let path = format!(
            "{}{}",
            shardcast_gateway::coap::CONTROL_PATH,
            self.cfg.client_id
        );
        for seg in path.split('/') {
            p.add_option(coap_lite::CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        if let Some(o) = observe {
            p.set_observe_value(o);
        }
        p.payload = payload.to_vec();
        p.to_bytes().expect("a control request encodes")
    }

    /// (Re-)registers the observation of the control resource: the
    /// gateway's messages come as its notifications, and each
    /// registration tells the gateway the device is alive.
    async fn observe_control(&mut self) -> Result<(), DeviceError> {
        let mid = self.next_id();
        let d = self.coap_request(mid, coap_lite::RequestType::Get, Some(0), b"");
        self.send_raw(&d).await
    }

    async fn mqtt_connect(&mut self) -> Result<(), DeviceError> {
        let connect = encode(&Message::Connect {
            flags: Flags {
                clean_session: true,
                ..Flags::NONE
            },
            duration: self.cfg.keep_alive.as_secs().clamp(1, u16::MAX as u64) as u16,
            client_id: self.cfg.client_id.clone(),
        })
        .expect("a CONNECT encodes");
        let mut buf = [0u8; 2048];
        for _ in 0..5 {
            self.send_raw(&connect).await?;
            let deadline = Instant::now() + self.cfg.retry * 2;
            while let Ok(r) = tokio::time::timeout_at(deadline, self.sock.recv(&mut buf)).await {
                let n = match r {
                    Ok(n) => n,
                    // The gateway not listening yet (ICMP port
                    // unreachable): the device boots first, and asks again.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                    Err(source) => return Err(self.io("receiving", source)),
                };
                if let Ok(Message::ConnAck { rc }) = decode(&buf[..n]) {
                    return match rc {
                        ReturnCode::Accepted => Ok(()),
                        rc => Err(DeviceError::Refused {
                            client: self.cfg.client_id.clone(),
                            rc,
                        }),
                    };
                }
            }
        }
        Err(DeviceError::NoAnswer {
            client: self.cfg.client_id.clone(),
            gateway: self.cfg.gateway,
            what: "CONNECT",
        })
    }

    fn io(&self, what: &str, source: io::Error) -> DeviceError {
        DeviceError::Io {
            client: self.cfg.client_id.clone(),
            what: what.to_string(),
            source,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.cfg.client_id
    }

    /// Where the device listens now.
    pub fn assignment(&self) -> Option<Assignment> {
        self.proto.assignment()
    }

    /// Groups joined now (two during a migration).
    pub fn joined(&self) -> usize {
        self.groups.len()
    }

    pub fn stats(&self) -> DeviceStats {
        self.proto.stats
    }

    async fn send_raw(&mut self, datagram: &[u8]) -> Result<(), DeviceError> {
        self.last_sent = Instant::now();
        match self.sock.send(datagram).await {
            Ok(_) => Ok(()),
            // The gateway not there yet (ICMP unreachable): retried.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(self.io("sending", e)),
        }
    }

    /// Sends the next control message if none is in flight, re-sends the
    /// one in flight past the retry period, pings the gateway every half
    /// keep-alive.
    async fn pump(&mut self) -> Result<(), DeviceError> {
        self.leave_due();
        // The token: heard from past half its life, or it is not renewed;
        // past its expiry it is dropped (and `hello` follows below).
        let renew = self.proto.token_due(control::unix_ms()) == TokenDue::Renew;
        // The `assign` answering a `hello` is a datagram like any: lost,
        // the device asks again (the same host gets the same token).
        if self.proto.token_expires().is_none()
            && self.inflight.is_none()
            && self.outbox.is_empty()
            && self.hello_sent.elapsed() >= self.cfg.retry * 2
        {
            self.outbox.push_back(Request::Control(Protocol::hello(
                self.cfg.attributes.clone(),
            )));
            if self.cfg.transport == Transport::Coap {
                // The observation may be what was lost.
                self.observe_control().await?;
            }
        }
        if let Some((_, datagram, sent, tries)) = &mut self.inflight
            && sent.elapsed() >= self.cfg.retry
        {
            if *tries >= 20 {
                tracing::warn!(
                    client = self.cfg.client_id,
                    "control message never acknowledged: dropped"
                );
                self.inflight = None;
            } else {
                *tries += 1;
                *sent = Instant::now();
                let d = datagram.clone();
                self.send_raw(&d).await?;
            }
        }
        if self.cfg.transport == Transport::Coap
            && self.inflight.is_none()
            && let Some(r) = self.outbox.pop_front()
            // Only control messages are queued over CoAP.
            && let Request::Control(c) = r
        {
            if matches!(c, Control::Hello(_)) {
                self.hello_sent = Instant::now();
                self.proto.stats.hellos += 1;
            }
            let mid = self.next_id();
            let datagram = self.coap_request(
                mid,
                coap_lite::RequestType::Post,
                None,
                c.encode().as_bytes(),
            );
            self.send_raw(&datagram).await?;
            self.inflight = Some((mid, datagram, Instant::now(), 0));
        }
        if self.inflight.is_none()
            && let Some(r) = self.outbox.pop_front()
        {
            let msg_id = self.next_id();
            let msg = match r {
                Request::Control(c) => {
                    if matches!(c, Control::Hello(_)) {
                        self.hello_sent = Instant::now();
                        self.proto.stats.hellos += 1;
                    }
                    Message::Publish {
                        flags: Flags {
                            qos: Qos::One,
                            topic_id_type: TOPIC_PREDEFINED,
                            ..Flags::NONE
                        },
                        topic_id: CONTROL_ID,
                        msg_id,
                        data: c.encode().into_bytes(),
                    }
                }
                Request::Subscribe(name) => Message::Subscribe {
                    flags: Flags::NONE,
                    msg_id,
                    topic: TopicRef::Name(name),
                },
            };
            let datagram = encode(&msg).expect("a control publish or SUBSCRIBE encodes");
            self.send_raw(&datagram).await?;
            self.inflight = Some((msg_id, datagram, Instant::now(), 0));
        }
        if self.last_sent.elapsed() >= self.cfg.keep_alive / 2
            || (renew && self.last_sent.elapsed() >= self.cfg.retry)
        {
            if self.cfg.transport == Transport::Coap {
                self.observe_control().await?;
            } else {
                let ping = encode(&Message::PingReq { client_id: None }).expect("PINGREQ encodes");
                self.send_raw(&ping).await?;
            }
        }
        Ok(())
    }

    /// Leaves the groups whose linger is over; what their sockets hold is
    /// delivered, not dropped with them.
    fn leave_due(&mut self) {
        let now = Instant::now();
        let (due, wait): (Vec<_>, Vec<_>) = self.leaving.drain(..).partition(|(at, _)| *at <= now);
        self.leaving = wait;
        for (_, old) in due {
            // Joined again meanwhile: stays.
            if self.proto.assignment() == Some(old) {
                continue;
            }
            if let Some(i) = self.groups.iter().position(|(g, _)| *g == old) {
                let (a, s) = self.groups.remove(i);
                let mut buf = [0u8; 9216];
                while let Ok((n, from)) = s.try_recv_from(&mut buf) {
                    self.backlog
                        .push_back((a.shard, Some(from), buf[..n].to_vec()));
                }
            }
        }
    }

    fn act(&mut self, actions: Vec<Action>) -> Result<(), DeviceError> {
        for a in actions {
            match a {
                Action::Join(to) => {
                    if !self.groups.iter().any(|(g, _)| *g == to) {
                        let s =
                            group_socket(to.group, to.port, self.cfg.interface).map_err(|e| {
                                self.io(&format!("joining {}:{}", to.group, to.port), e)
                            })?;
                        self.groups.push((to, s));
                    }
                }
                // Not at once: a publish sent before the device joined the
                // new group may still be on its way to the old one (it
                // can be overtaken by the gateway's ack on another CPU's
                // queue); the old group is kept `linger` longer.
                Action::Leave(old) => self.leaving.push((Instant::now() + self.cfg.linger, old)),
                Action::Send(c) => self.outbox.push_back(Request::Control(c)),
            }
        }
        Ok(())
    }

    /// A CoAP datagram from the gateway: the ACK of the control message
    /// in flight, or a notification of the control resource carrying a
    /// control message.
    async fn handle_coap(&mut self, datagram: &[u8]) -> Result<(), DeviceError> {
        use coap_lite::{MessageClass, MessageType, Packet};
        let Ok(p) = Packet::from_bytes(datagram) else {
            return Ok(());
        };
        let ty = p.header.get_type();
        if ty == MessageType::Acknowledgement
            && self
                .inflight
                .as_ref()
                .is_some_and(|(id, ..)| *id == p.header.message_id)
        {
            self.inflight = None;
        }
        if ty == MessageType::Confirmable {
            let mut ack = Packet::new();
            ack.header.set_type(MessageType::Acknowledgement);
            ack.header.message_id = p.header.message_id;
            if let Ok(b) = ack.to_bytes() {
                self.send_raw(&b).await?;
            }
        }
        if matches!(p.header.code, MessageClass::Response(_))
            && p.get_observe_value().is_some()
            && !p.payload.is_empty()
        {
            match Control::decode(&p.payload) {
                Ok(c) => {
                    let actions = self.proto.on_control(c, &self.cfg.attributes);
                    self.act(actions)?;
                }
                Err(e) => tracing::debug!(client = self.cfg.client_id, "control message: {e}"),
            }
        }
        Ok(())
    }

    async fn handle_gateway(&mut self, datagram: &[u8]) -> Result<(), DeviceError> {
        if self.cfg.transport == Transport::Coap {
            return self.handle_coap(datagram).await;
        }
        match decode(datagram) {
            Ok(Message::Publish {
                flags,
                topic_id: CONTROL_ID,
                data,
                ..
            }) if flags.topic_id_type == TOPIC_PREDEFINED => match Control::decode(&data) {
                Ok(c) => {
                    let actions = self.proto.on_control(c, &self.cfg.attributes);
                    self.act(actions)?;
                }
                Err(e) => tracing::debug!(client = self.cfg.client_id, "control message: {e}"),
            },
            Ok(Message::PubAck { msg_id, .. } | Message::SubAck { msg_id, .. })
                if self.inflight.as_ref().is_some_and(|(id, ..)| *id == msg_id) =>
            {
                self.inflight = None;
            }
            Ok(Message::Register {
                topic_id, msg_id, ..
            }) => {
                let ack = encode(&Message::RegAck {
                    topic_id,
                    msg_id,
                    rc: ReturnCode::Accepted,
                })
                .expect("REGACK encodes");
                self.send_raw(&ack).await?;
            }
            // The gateway forgot us (restart, keep-alive): connect again,
            // and say hello (the token comes back to the same host).
            Ok(Message::Disconnect { .. }) => {
                self.mqtt_connect().await?;
                self.inflight = None;
                // The new session knows no subscription: they go first,
                // then `hello` (a repeat of one still queued is harmless).
                self.outbox.push_front(Request::Control(Protocol::hello(
                    self.cfg.attributes.clone(),
                )));
                for t in self.cfg.subscriptions.iter().rev() {
                    self.outbox.push_front(Request::Subscribe(t.clone()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs the protocol until the next publish arrives from a shard
    /// group (duplicates dropped), or `until`.
    pub async fn next(&mut self, until: Instant) -> Result<Option<Delivery>, DeviceError> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut gbuf = std::mem::take(&mut self.gbuf);
        let r = self.next_in(until, &mut buf, &mut gbuf).await;
        self.buf = buf;
        self.gbuf = gbuf;
        r
    }

    async fn next_in(
        &mut self,
        until: Instant,
        buf: &mut [u8],
        gbuf: &mut [u8],
    ) -> Result<Option<Delivery>, DeviceError> {
        loop {
            while let Some((shard, from, datagram)) = self.backlog.pop_front() {
                if let Some(d) = self.accept(shard, from, &datagram) {
                    return Ok(Some(d));
                }
            }
            self.pump().await?;
            let mut tick = Instant::now() + self.cfg.retry.min(self.cfg.keep_alive / 2);
            if let Some((at, _)) = self.leaving.iter().min_by_key(|(at, _)| *at) {
                tick = tick.min(*at);
            }
            let wake = tick.min(until);
            let got = tokio::select! {
                r = self.sock.recv(buf) => Some((None, r.map(|n| (n, None)))),
                r = recv_any(&self.groups, gbuf) => Some((Some(r.0), r.1.map(|(n, from)| (n, Some(from))))),
                _ = tokio::time::sleep_until(wake) => None,
            };
            match got {
                None if Instant::now() >= until => return Ok(None),
                None => {}
                Some((None, Err(e))) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Some((_, Err(e))) => return Err(self.io("receiving", e)),
                Some((None, Ok((n, _)))) => {
                    let d = buf[..n].to_vec();
                    self.handle_gateway(&d).await?;
                }
                Some((Some(i), Ok((n, from)))) => {
                    let shard = self.groups[i].0.shard;
                    if let Some(d) = self.accept(shard, from, &gbuf[..n]) {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }

    /// A publish from `shard`'s group, unless it is not one or a
    /// duplicate.
    fn accept(
        &mut self,
        shard: u32,
        from: Option<SocketAddr>,
        datagram: &[u8],
    ) -> Option<Delivery> {
        let Ok(Message::Publish {
            flags,
            topic_id,
            msg_id,
            data,
        }) = decode(datagram)
        else {
            return None;
        };
        // The router's latency probes reach the shard's group too: not
        // the application's.
        if shardcast_gateway::probe::shard_of(flags.topic_id_type, topic_id).is_some() {
            return None;
        }
        if !self
            .dedup
            .first(from, flags.topic_id_type, topic_id, msg_id, &data)
        {
            self.proto.stats.duplicates += 1;
            return None;
        }
        self.proto.stats.delivered += 1;
        Some(Delivery {
            topic_id_type: flags.topic_id_type,
            topic_id,
            msg_id,
            data,
            shard,
        })
    }
}

/// The first datagram on any of `groups`' sockets: (index, (length,
/// source)).
async fn recv_any(
    groups: &[(Assignment, UdpSocket)],
    buf: &mut [u8],
) -> (usize, io::Result<(usize, SocketAddr)>) {
    poll_fn(|cx| {
        for (i, (_, s)) in groups.iter().enumerate() {
            let mut rb = ReadBuf::new(buf);
            if let Poll::Ready(r) = s.poll_recv_from(cx, &mut rb) {
                return Poll::Ready((i, r.map(|from| (rb.filled().len(), from))));
            }
        }
        Poll::Pending
    })
    .await
}

/// A socket receiving `group` on `port` (bound to the group's address: no
/// other group's traffic reaches it), joined on interface index
/// `interface` (0: by route). Several may be bound to the same group.
pub fn group_socket(group: IpAddr, port: u16, interface: u32) -> io::Result<UdpSocket> {
    let domain = if group.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::DGRAM, Some(SockProtocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    match group {
        IpAddr::V4(g) => {
            let ifc = if interface == 0 {
                InterfaceIndexOrAddress::Address(Ipv4Addr::UNSPECIFIED)
            } else {
                InterfaceIndexOrAddress::Index(interface)
            };
            s.join_multicast_v4_n(&g, &ifc)?;
        }
        IpAddr::V6(g) => {
            s.set_only_v6(true)?;
            s.join_multicast_v6(&g, interface)?;
        }
    }
    s.bind(&SocketAddr::new(group, port).into())?;
    s.set_recv_buffer_size(1 << 20)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

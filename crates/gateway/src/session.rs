//! The MQTT-SN gateway's protocol state (MQTT-SN v1.2, section 6): clients
//! and their sessions, topic ids, subscriptions, keep-alive, sleep and
//! buffered delivery, QoS 1 and 2 handshakes, wills.
//!
//! A pure state machine: [`Gateway::handle`] takes one decoded message
//! from a client address at a time (milliseconds on any monotonic clock)
//! and returns what to do: messages to send and publishes to route.
//! [`Gateway::tick`] expires keep-alives and sleeps. Sockets, the data
//! plane and persistence live around it, so every rule of the
//! specification is tested here without a network.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
};

use router_common::mqttsn::{TOPIC_NORMAL, TOPIC_PREDEFINED, TOPIC_SHORT};

use crate::control;
use crate::mqttsn::{Flags, Message, Qos, ReturnCode, TopicRef};

/// Messages buffered for a sleeping client, at most.
pub const SLEEP_BUFFER: usize = 1024;
/// Topic ids the gateway assigns (normal ids, 1..=0xFFFE).
const ID_MAX: u16 = 0xFFFE;

/// What the gateway wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this message to this client.
    Send(SocketAddr, Message),
    /// A publish the gateway accepted (QoS 0/1/2 after its handshake, or a
    /// will): route it to the topic's shard groups and to the gateway's
    /// own subscribers ([`Gateway::deliver`]).
    Publish {
        topic: String,
        data: Vec<u8>,
        retain: bool,
    },
    /// A normal topic id was assigned (for the data plane's
    /// `mqttsn_registered_ids` and the registry).
    Registered { topic: String, id: u16 },
    /// A client's session changed (connected, subscribed, asleep, gone):
    /// what the device registry keeps.
    Session(SessionRecord),
    /// A client published on its own control topic
    /// ([`crate::control`]): for the membership, never routed.
    Control {
        client: String,
        from: SocketAddr,
        data: Vec<u8>,
    },
}

/// A client's session as the registry keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub client_id: String,
    /// Where it was last seen.
    pub address: Option<SocketAddr>,
    pub status: Status,
    /// Topic filters (names, wildcards, short names, predefined topics'
    /// names).
    pub subscriptions: Vec<String>,
    /// Not a clean session: its subscriptions outlive the connection.
    pub persistent: bool,
}

/// Connectivity, for the registry and the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Active,
    Asleep,
    /// Disconnected cleanly.
    Disconnected,
    /// Silent past its keep-alive.
    Lost,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Asleep => "asleep",
            Status::Disconnected => "disconnected",
            Status::Lost => "lost",
        }
    }

    pub fn from_label(s: &str) -> Option<Status> {
        Some(match s {
            "active" => Status::Active,
            "asleep" => Status::Asleep,
            "disconnected" => Status::Disconnected,
            "lost" => Status::Lost,
            _ => return None,
        })
    }
}

/// Where a client is in its life (section 6.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Connecting with a will: waiting for WILLTOPIC, then WILLMSG.
    AwaitingWillTopic,
    AwaitingWillMsg,
    Active,
    /// Asleep until this time (ms); publishes for it are buffered.
    Asleep {
        until: u64,
    },
}

#[derive(Clone, Debug)]
struct Client {
    id: String,
    state: State,
    keep_alive_ms: u64,
    last_seen: u64,
    clean: bool,
    will: Option<(String, Vec<u8>, bool)>,
    will_topic: Option<(String, bool)>,
    /// Topic filters with how they were named (deliveries use the same
    /// topic id type: a short-name or predefined subscriber gets no
    /// REGISTER).
    subscriptions: Vec<(String, Named)>,
    /// QoS 2 publishes received, waiting for PUBREL (msg id → publish).
    inbound_qos2: BTreeMap<u16, (String, Vec<u8>, bool)>,
    /// Topic ids this client knows (it registered them, or we did).
    known: Vec<u16>,
    buffered: VecDeque<Message>,
    next_msg_id: u16,
}

/// How a client named a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Named {
    Name,
    Predefined(u16),
    Short,
}

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub gw_id: u8,
    /// Predefined topic ids (known to clients out of band).
    pub predefined: BTreeMap<u16, String>,
}

/// The gateway's protocol state.
#[derive(Clone, Debug)]
pub struct Gateway {
    cfg: Config,
    clients: HashMap<SocketAddr, Client>,
    /// Normal topic ids: stable for the gateway's life (and across
    /// restarts once persisted: [`Gateway::restore_topic`]).
    ids: BTreeMap<String, u16>,
    names: BTreeMap<u16, String>,
    next_id: u16,
    /// Persistent sessions of clients not connected: their subscriptions
    /// come back when they connect without the clean flag.
    offline: HashMap<String, Vec<(String, Named)>>,
    /// Shard-aware devices (members of the device protocol): they receive
    /// their topics from their shard's group, straight from the kernel, so
    /// their subscriptions say what they follow (for the planner) and
    /// never bring unicast copies.
    kernel_served: HashSet<String>,
}

/// Whether topic `name` matches filter `filter` (`+` one level, `#` the
/// rest, MQTT 3.1.1 section 4.7).
pub fn matches(filter: &str, name: &str) -> bool {
    // Section 4.7.2: a filter starting with a wildcard matches no `$`
    // topic (the control topics are such).
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether a filter is well formed: `#` only last and alone in its level,
/// `+` alone in its level.
pub fn valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && levels.iter().enumerate().all(|(i, l)| {
            (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
                && (!l.contains('+') || *l == "+")
        })
}

impl Gateway {
    pub fn new(mut cfg: Config) -> Gateway {
        if cfg.predefined.remove(&control::CONTROL_ID).is_some() {
            tracing::warn!(
                id = control::CONTROL_ID,
                "predefined topic id reserved for control topics: ignored"
            );
        }
        Gateway {
            cfg,
            clients: HashMap::new(),
            ids: BTreeMap::new(),
            names: BTreeMap::new(),
            next_id: 1,
            offline: HashMap::new(),
            kernel_served: HashSet::new(),
        }
    }

    /// Restores a persistent session saved before a restart: its
    /// subscriptions return when the client connects without the clean
    /// flag. Filters that are not valid are skipped.
    pub fn restore_session(&mut self, record: &SessionRecord) {
        if !record.persistent {
            return;
        }
        let subs = record
            .subscriptions
            .iter()
            .filter(|f| valid_filter(f))
            .map(|f| {
                let named = match self.cfg.predefined.iter().find(|(_, n)| *n == f) {
                    Some((&id, _)) => Named::Predefined(id),
                    None if f.len() == 2 && !f.contains(['+', '#']) => Named::Short,
                    None => Named::Name,
                };
                (f.clone(), named)
            })
            .collect();
        self.offline.insert(record.client_id.clone(), subs);
    }

    fn record(addr: SocketAddr, c: &Client, status: Status) -> SessionRecord {
        SessionRecord {
            client_id: c.id.clone(),
            address: Some(addr),
            status,
            subscriptions: c.subscriptions.iter().map(|(f, _)| f.clone()).collect(),
            persistent: !c.clean,
        }
    }

    /// Restores a topic id assigned before a restart.
    pub fn restore_topic(&mut self, name: &str, id: u16) {
        self.ids.insert(name.to_string(), id);
        self.names.insert(id, name.to_string());
        self.next_id = self.next_id.max(id.saturating_add(1));
    }

    /// The normal topic id of `name`, assigned if new (`None` when every
    /// id is taken).
    fn topic_id(&mut self, name: &str, effects: &mut Vec<Effect>) -> Option<u16> {
        if let Some(&id) = self.ids.get(name) {
            return Some(id);
        }
        let id = (self.next_id..=ID_MAX).find(|i| !self.names.contains_key(i))?;
        self.next_id = id.saturating_add(1);
        self.ids.insert(name.to_string(), id);
        self.names.insert(id, name.to_string());
        effects.push(Effect::Registered {
            topic: name.to_string(),
            id,
        });
        Some(id)
    }

    /// The topic a PUBLISH names.
    fn topic_of(&self, topic_id_type: u8, id: u16) -> Option<String> {
        match topic_id_type {
            TOPIC_NORMAL => self.names.get(&id).cloned(),
            TOPIC_PREDEFINED => self.cfg.predefined.get(&id).cloned(),
            TOPIC_SHORT => String::from_utf8(id.to_be_bytes().to_vec()).ok(),
            _ => None,
        }
    }

    /// The topic a publish names by id type and id (normal ids this
    /// gateway assigned, predefined ids, short names).
    pub fn topic_name(&self, topic_id_type: u8, id: u16) -> Option<String> {
        self.topic_of(topic_id_type, id)
    }

    pub fn client_id(&self, addr: &SocketAddr) -> Option<&str> {
        self.clients.get(addr).map(|c| c.id.as_str())
    }

    pub fn state(&self, addr: &SocketAddr) -> Option<&State> {
        self.clients.get(addr).map(|c| &c.state)
    }

    /// Handles one message from `from` at `now` (ms).
    pub fn handle(&mut self, from: SocketAddr, now: u64, msg: Message) -> Vec<Effect> {
        let fx = self.handle_message(from, now, msg);
        if !fx
            .iter()
            .any(|e| matches!(e, Effect::Publish { topic, .. } if control::is_control(topic)))
        {
            return fx;
        }
        // A control topic is the device's own channel to the membership:
        // its publishes there become [`Effect::Control`]; anybody else's
        // are dropped (never routed, never delivered).
        let own = self.clients.get(&from).map(|c| control::topic(&c.id));
        fx.into_iter()
            .filter_map(|e| match e {
                Effect::Publish { topic, data, .. } if control::is_control(&topic) => {
                    if own.as_deref() == Some(topic.as_str()) {
                        Some(Effect::Control {
                            client: topic[control::TOPIC_PREFIX.len()..].to_string(),
                            from,
                            data,
                        })
                    } else {
                        tracing::debug!(%from, topic, "publish to another's control topic dropped");
                        None
                    }
                }
                e => Some(e),
            })
            .collect()
    }

    /// Sends `data` to the client at `to` on its control topic (the
    /// predefined id [`control::CONTROL_ID`]; buffered while it sleeps). Nothing when no client is connected there.
    pub fn send_control(&mut self, to: SocketAddr, data: &[u8]) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(c) = self.clients.get_mut(&to) {
            let topic = control::topic(&c.id);
            let id = control::CONTROL_ID;
            Self::deliver_to(&mut fx, to, c, Named::Predefined(id), id, &topic, data);
        } else {
            // No session at that address (this gateway restarted and the
            // device has not spoken since): the control topic is a
            // predefined id, so a QoS 0 publish needs none, and a migrate
            // command reaches a device that only pings.
            fx.push(Effect::Send(
                to,
                Message::Publish {
                    flags: Flags {
                        topic_id_type: TOPIC_PREDEFINED,
                        ..Flags::NONE
                    },
                    topic_id: control::CONTROL_ID,
                    msg_id: 0,
                    data: data.to_vec(),
                },
            ));
        }
        fx
    }

    fn handle_message(&mut self, from: SocketAddr, now: u64, msg: Message) -> Vec<Effect> {
        let mut fx = Vec::new();
        let send = |fx: &mut Vec<Effect>, m: Message| fx.push(Effect::Send(from, m));
        if let Some(c) = self.clients.get_mut(&from) {
            c.last_seen = now;
        }
        match msg {
            Message::SearchGw { .. } => send(
                &mut fx,
                Message::GwInfo {
                    gw_id: self.cfg.gw_id,
                    gw_add: Vec::new(),
                },
            ),
            Message::Connect {
                flags,
                duration,
                client_id,
            } => {
                if client_id.is_empty() || client_id.len() > 23 {
                    // Section 5.4.4: 1-23 characters.
                    send(
                        &mut fx,
                        Message::ConnAck {
                            rc: ReturnCode::NotSupported,
                        },
                    );
                    return fx;
                }
                // The same client id from another address takes over.
                self.clients.retain(|a, c| *a == from || c.id != client_id);
                let old = self.clients.remove(&from).filter(|c| c.id == client_id);
                let mut c = Client {
                    id: client_id,
                    state: State::Active,
                    keep_alive_ms: duration as u64 * 1000,
                    last_seen: now,
                    clean: flags.clean_session,
                    will: None,
                    will_topic: None,
                    subscriptions: Vec::new(),
                    inbound_qos2: BTreeMap::new(),
                    known: Vec::new(),
                    buffered: VecDeque::new(),
                    next_msg_id: 1,
                };
                let saved = self.offline.remove(&c.id);
                if !flags.clean_session {
                    if let Some(old) = old {
                        c.subscriptions = old.subscriptions;
                        c.known = old.known;
                        c.buffered = old.buffered;
                    } else if let Some(subs) = saved {
                        c.subscriptions = subs;
                    }
                }
                fx.push(Effect::Session(Self::record(from, &c, Status::Active)));
                let woke = !c.buffered.is_empty();
                if flags.will {
                    c.state = State::AwaitingWillTopic;
                    self.clients.insert(from, c);
                    send(&mut fx, Message::WillTopicReq);
                } else {
                    let buffered: Vec<Message> = c.buffered.drain(..).collect();
                    self.clients.insert(from, c);
                    send(
                        &mut fx,
                        Message::ConnAck {
                            rc: ReturnCode::Accepted,
                        },
                    );
                    if woke {
                        fx.extend(buffered.into_iter().map(|m| Effect::Send(from, m)));
                    }
                }
            }
            Message::WillTopic { flags, topic } => {
                if let Some(c) = self.clients.get_mut(&from)
                    && c.state == State::AwaitingWillTopic
                {
                    if topic.is_empty() {
                        c.state = State::Active;
                        send(
                            &mut fx,
                            Message::ConnAck {
                                rc: ReturnCode::Accepted,
                            },
                        );
                    } else {
                        c.will_topic = Some((topic, flags.retain));
                        c.state = State::AwaitingWillMsg;
                        send(&mut fx, Message::WillMsgReq);
                    }
                }
            }
            Message::WillMsg { msg } => {
                if let Some(c) = self.clients.get_mut(&from)
                    && c.state == State::AwaitingWillMsg
                {
                    if let Some((topic, retain)) = c.will_topic.take() {
                        c.will = Some((topic, msg, retain));
                    }
                    c.state = State::Active;
                    send(
                        &mut fx,
                        Message::ConnAck {
                            rc: ReturnCode::Accepted,
                        },
                    );
                }
            }
            Message::Register {
                msg_id, topic_name, ..
            } => {
                if !self.clients.contains_key(&from) {
                    return fx;
                }
                let (topic_id, rc) = if topic_name.is_empty() || topic_name.contains(['+', '#']) {
                    (0, ReturnCode::NotSupported)
                } else {
                    match self.topic_id(&topic_name, &mut fx) {
                        Some(id) => (id, ReturnCode::Accepted),
                        None => (0, ReturnCode::Congestion),
                    }
                };
                if rc == ReturnCode::Accepted
                    && let Some(c) = self.clients.get_mut(&from)
                {
                    c.known.push(topic_id);
                }
                send(
                    &mut fx,
                    Message::RegAck {
                        topic_id,
                        msg_id,
                        rc,
                    },
                );
            }
            Message::RegAck { .. }
            | Message::PubAck { .. }
            | Message::PubRec { .. }
            | Message::PubComp { .. } => {
                // Acknowledgements of what we sent: QoS 0 delivery to
                // clients needs none, and outbound QoS 1/2 is granted as 0.
            }
            Message::Publish {
                flags,
                topic_id,
                msg_id,
                data,
            } => {
                let topic =
                    if flags.topic_id_type == TOPIC_PREDEFINED && topic_id == control::CONTROL_ID {
                        // Each client's own control topic.
                        self.clients.get(&from).map(|c| control::topic(&c.id))
                    } else {
                        self.topic_of(flags.topic_id_type, topic_id)
                    };
                let connected = self.clients.contains_key(&from);
                match flags.qos {
                    Qos::MinusOne => {
                        // Section 6.8: predefined or short ids only, no
                        // connection needed, never acknowledged.
                        if flags.topic_id_type != TOPIC_NORMAL
                            && let Some(topic) = topic
                        {
                            fx.push(Effect::Publish {
                                topic,
                                data,
                                retain: flags.retain,
                            });
                        }
                    }
                    _ if !connected => {
                        // Not connected: DISCONNECT tells it to connect
                        // (section 6.13: the gateway's answer to an
                        // unknown client).
                        send(&mut fx, Message::Disconnect { duration: None });
                    }
                    qos => match topic {
                        None => {
                            if qos != Qos::Zero {
                                send(
                                    &mut fx,
                                    Message::PubAck {
                                        topic_id,
                                        msg_id,
                                        rc: ReturnCode::InvalidTopicId,
                                    },
                                );
                            }
                        }
                        Some(topic) => match qos {
                            Qos::Two => {
                                if let Some(c) = self.clients.get_mut(&from) {
                                    c.inbound_qos2.insert(msg_id, (topic, data, flags.retain));
                                }
                                send(&mut fx, Message::PubRec { msg_id });
                            }
                            _ => {
                                fx.push(Effect::Publish {
                                    topic,
                                    data,
                                    retain: flags.retain,
                                });
                                if qos == Qos::One {
                                    send(
                                        &mut fx,
                                        Message::PubAck {
                                            topic_id,
                                            msg_id,
                                            rc: ReturnCode::Accepted,
                                        },
                                    );
                                }
                            }
                        },
                    },
                }
            }
            Message::PubRel { msg_id } => {
                if let Some(c) = self.clients.get_mut(&from) {
                    // Exactly once: a repeated PUBREL publishes nothing.
                    if let Some((topic, data, retain)) = c.inbound_qos2.remove(&msg_id) {
                        fx.push(Effect::Publish {
                            topic,
                            data,
                            retain,
                        });
                    }
                    send(&mut fx, Message::PubComp { msg_id });
                }
            }
            Message::Subscribe {
                flags,
                msg_id,
                topic,
            } => {
                if !self.clients.contains_key(&from) {
                    send(&mut fx, Message::Disconnect { duration: None });
                    return fx;
                }
                // QoS 1 and 2 subscriptions are granted as QoS 0: the data
                // plane's deliveries are datagrams without acknowledgement.
                let granted = Flags {
                    qos: Qos::Zero,
                    ..Flags::NONE
                };
                let (filter, topic_id, rc) = match topic {
                    TopicRef::Name(name) if !valid_filter(&name) || control::is_control(&name) => {
                        (None, 0, ReturnCode::NotSupported)
                    }
                    TopicRef::Name(name) if name.contains(['+', '#']) => {
                        (Some((name, Named::Name)), 0, ReturnCode::Accepted)
                    }
                    TopicRef::Name(name) => match self.topic_id(&name, &mut fx) {
                        Some(id) => (Some((name, Named::Name)), id, ReturnCode::Accepted),
                        None => (None, 0, ReturnCode::Congestion),
                    },
                    TopicRef::Predefined(id) => match self.cfg.predefined.get(&id) {
                        Some(name) => (
                            Some((name.clone(), Named::Predefined(id))),
                            id,
                            ReturnCode::Accepted,
                        ),
                        None => (None, id, ReturnCode::InvalidTopicId),
                    },
                    TopicRef::Short(s) => match String::from_utf8(s.to_vec()) {
                        Ok(name) => (Some((name, Named::Short)), 0, ReturnCode::Accepted),
                        Err(_) => (None, 0, ReturnCode::InvalidTopicId),
                    },
                };
                let _ = flags;
                if let (Some((filter, named)), Some(c)) = (filter, self.clients.get_mut(&from)) {
                    if !c.subscriptions.iter().any(|(f, _)| *f == filter) {
                        c.subscriptions.push((filter, named));
                    }
                    if topic_id != 0 {
                        c.known.push(topic_id);
                    }
                    fx.push(Effect::Session(Self::record(from, c, Status::Active)));
                }
                send(
                    &mut fx,
                    Message::SubAck {
                        flags: granted,
                        topic_id,
                        msg_id,
                        rc,
                    },
                );
            }
            Message::Unsubscribe { msg_id, topic, .. } => {
                let name = match topic {
                    TopicRef::Name(n) => Some(n),
                    TopicRef::Predefined(id) => self.cfg.predefined.get(&id).cloned(),
                    TopicRef::Short(s) => String::from_utf8(s.to_vec()).ok(),
                };
                if let (Some(name), Some(c)) = (name, self.clients.get_mut(&from)) {
                    c.subscriptions.retain(|(f, _)| *f != name);
                    fx.push(Effect::Session(Self::record(from, c, Status::Active)));
                }
                send(&mut fx, Message::UnsubAck { msg_id });
            }
            Message::PingReq { client_id } => {
                // A sleeping client wakes to collect what was buffered
                // (section 6.14), then goes back to sleep.
                if let Some(c) = self.clients.get_mut(&from) {
                    if client_id.as_deref().is_some_and(|id| id == c.id) {
                        let buffered: Vec<Message> = c.buffered.drain(..).collect();
                        fx.extend(buffered.into_iter().map(|m| Effect::Send(from, m)));
                    }
                    send(&mut fx, Message::PingResp);
                } else {
                    // Not connected (this gateway restarted, or the client
                    // was expired): DISCONNECT tells it to connect again,
                    // where a PINGRESP would keep it believing it is.
                    send(&mut fx, Message::Disconnect { duration: None });
                }
            }
            Message::Disconnect { duration } => {
                match duration {
                    Some(d) if self.clients.contains_key(&from) => {
                        let c = self.clients.get_mut(&from).expect("checked");
                        c.state = State::Asleep {
                            until: now + d as u64 * 1000,
                        };
                        fx.push(Effect::Session(Self::record(from, c, Status::Asleep)));
                    }
                    _ => {
                        // A clean disconnect: no will (section 6.3).
                        if let Some(c) = self.clients.remove(&from) {
                            fx.push(Effect::Session(Self::record(
                                from,
                                &c,
                                Status::Disconnected,
                            )));
                            if !c.clean {
                                self.offline.insert(c.id, c.subscriptions);
                            }
                        }
                    }
                }
                send(&mut fx, Message::Disconnect { duration: None });
            }
            Message::WillTopicUpd { flags, topic } => {
                if let Some(c) = self.clients.get_mut(&from) {
                    if topic.is_empty() {
                        c.will = None;
                    } else {
                        let msg = c.will.take().map(|w| w.1).unwrap_or_default();
                        c.will = Some((topic, msg, flags.retain));
                    }
                    send(
                        &mut fx,
                        Message::WillTopicResp {
                            rc: ReturnCode::Accepted,
                        },
                    );
                }
            }
            Message::WillMsgUpd { msg } => {
                if let Some(c) = self.clients.get_mut(&from) {
                    if let Some(w) = c.will.as_mut() {
                        w.1 = msg;
                    }
                    send(
                        &mut fx,
                        Message::WillMsgResp {
                            rc: ReturnCode::Accepted,
                        },
                    );
                }
            }
            // Gateway-to-client messages arriving at the gateway, and
            // ADVERTISE/GWINFO from other gateways: nothing to do.
            _ => {}
        }
        fx
    }

    /// Expires clients silent for 1.5 keep-alive periods (section 6.6) and
    /// sleepers past their sleep (their will is published: they are lost).
    pub fn tick(&mut self, now: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        let lost: Vec<SocketAddr> = self
            .clients
            .iter()
            .filter(|(_, c)| match c.state {
                State::Asleep { until } => now > until + c.keep_alive_ms / 2,
                _ => c.keep_alive_ms > 0 && now > c.last_seen + c.keep_alive_ms * 3 / 2,
            })
            .map(|(a, _)| *a)
            .collect();
        for a in lost {
            if let Some(c) = self.clients.remove(&a)
                && let Some((topic, data, retain)) = c.will
            {
                fx.push(Effect::Publish {
                    topic,
                    data,
                    retain,
                });
            }
        }
        fx
    }

    /// Marks `client` as served by its shard's group (a member of the
    /// device protocol) or not (no longer a member): see
    /// `kernel_served`.
    pub fn set_kernel_served(&mut self, client: &str, served: bool) {
        if served {
            if !self.kernel_served.contains(client) {
                self.kernel_served.insert(client.to_string());
            }
        } else {
            self.kernel_served.remove(client);
        }
    }

    /// Whether `client` is served by its shard's group.
    pub fn kernel_served(&self, client: &str) -> bool {
        self.kernel_served.contains(client)
    }

    /// Delivers a publish of `topic` to every client subscribed to it
    /// (shard-aware devices excepted: their group carries it):
    /// awake clients at once (a REGISTER first when the client does not
    /// know the topic's id), sleeping ones into their buffer (the oldest
    /// dropped past [`SLEEP_BUFFER`]).
    pub fn deliver(&mut self, topic: &str, data: &[u8]) -> Vec<Effect> {
        let mut fx = Vec::new();
        let id = if let Some(&id) = self.ids.get(topic) {
            Some(id)
        } else if self
            .clients
            .values()
            .any(|c| c.subscriptions.iter().any(|(f, _)| matches(f, topic)))
        {
            self.topic_id(topic, &mut fx)
        } else {
            None
        };
        let Some(id) = id else {
            return fx;
        };
        for (addr, c) in &mut self.clients {
            if self.kernel_served.contains(&c.id) {
                continue;
            }
            let Some(&(_, named)) = c.subscriptions.iter().find(|(f, _)| matches(f, topic)) else {
                continue;
            };
            Self::deliver_to(&mut fx, *addr, c, named, id, topic, data);
        }
        fx
    }

    /// One client's delivery (see [`deliver`](Self::deliver)).
    fn deliver_to(
        fx: &mut Vec<Effect>,
        addr: SocketAddr,
        c: &mut Client,
        named: Named,
        id: u16,
        topic: &str,
        data: &[u8],
    ) {
        let mut msgs = Vec::new();
        // In the id type the client subscribed with.
        let (topic_id_type, topic_id) = match named {
            Named::Short => (
                TOPIC_SHORT,
                u16::from_be_bytes(
                    topic.as_bytes()[..2]
                        .try_into()
                        .expect("a short name is 2 bytes"),
                ),
            ),
            Named::Predefined(p) => (TOPIC_PREDEFINED, p),
            Named::Name => (TOPIC_NORMAL, id),
        };
        if named == Named::Name && !c.known.contains(&id) {
            let msg_id = c.next_msg_id;
            c.next_msg_id = c.next_msg_id.wrapping_add(1).max(1);
            msgs.push(Message::Register {
                topic_id: id,
                msg_id,
                topic_name: topic.to_string(),
            });
            c.known.push(id);
        }
        msgs.push(Message::Publish {
            flags: Flags {
                topic_id_type,
                ..Flags::NONE
            },
            topic_id,
            msg_id: 0,
            data: data.to_vec(),
        });
        match c.state {
            State::Asleep { .. } => {
                for m in msgs {
                    if c.buffered.len() >= SLEEP_BUFFER {
                        c.buffered.pop_front();
                    }
                    c.buffered.push_back(m);
                }
            }
            State::Active => fx.extend(msgs.into_iter().map(|m| Effect::Send(addr, m))),
            _ => {}
        }
    }

    /// How a publish of `topic` is named on the wire to shard groups: its
    /// short name (two bytes), its predefined id, or its normal id
    /// (assigned if new: the effects say so). `None` when every normal id
    /// is taken.
    pub fn wire_id(&mut self, topic: &str) -> (Option<(u8, u16)>, Vec<Effect>) {
        let mut fx = Vec::new();
        if topic.len() == 2 {
            let b = topic.as_bytes();
            return (Some((TOPIC_SHORT, u16::from_be_bytes([b[0], b[1]]))), fx);
        }
        if let Some((&id, _)) = self.cfg.predefined.iter().find(|(_, n)| *n == topic) {
            return (Some((TOPIC_PREDEFINED, id)), fx);
        }
        let id = self.topic_id(topic, &mut fx).map(|id| (TOPIC_NORMAL, id));
        (id, fx)
    }

    /// Every normal topic id assigned (for persistence and the plan).
    pub fn topic_ids(&self) -> impl Iterator<Item = (&str, u16)> {
        self.ids.iter().map(|(n, &i)| (n.as_str(), i))
    }

    /// Connected (or sleeping) clients.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Whether the session of `addr` asked for a clean session.
    pub fn clean_session(&self, addr: &SocketAddr) -> Option<bool> {
        self.clients.get(addr).map(|c| c.clean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> Gateway {
        Gateway::new(Config {
            gw_id: 7,
            predefined: [(5u16, "temp/room1".to_string())].into_iter().collect(),
        })
    }

    fn addr(n: u8) -> SocketAddr {
        format!("198.18.0.{n}:5000").parse().unwrap()
    }

    fn connect(g: &mut Gateway, a: SocketAddr, id: &str, keep_alive: u16, now: u64) {
        let fx = g.handle(
            a,
            now,
            Message::Connect {
                flags: Flags {
                    clean_session: true,
                    ..Flags::NONE
                },
                duration: keep_alive,
                client_id: id.into(),
            },
        );
        assert_eq!(
            sends(&fx),
            [&Message::ConnAck {
                rc: ReturnCode::Accepted
            }]
        );
        assert!(
            matches!(&fx[0], Effect::Session(r) if r.client_id == id && r.status == Status::Active)
        );
    }

    fn sends(fx: &[Effect]) -> Vec<&Message> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send(_, m) => Some(m),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn wildcards() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a/c"));
        assert!(valid_filter("a/+/#"));
        for bad in ["", "a/#/b", "a/b#", "a+/b"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn connect_register_publish_qos1_and_subscribe() {
        let mut g = gw();
        let (p, s) = (addr(1), addr(2));
        connect(&mut g, p, "pub", 60, 0);
        connect(&mut g, s, "sub", 60, 0);
        // Register: the same name gets the same id, stable.
        let fx = g.handle(
            p,
            1,
            Message::Register {
                topic_id: 0,
                msg_id: 3,
                topic_name: "a/b".into(),
            },
        );
        let Some(Effect::Registered { id, .. }) = fx.first().cloned() else {
            panic!("{fx:?}")
        };
        assert!(fx.contains(&Effect::Send(
            p,
            Message::RegAck {
                topic_id: id,
                msg_id: 3,
                rc: ReturnCode::Accepted
            }
        )));
        // The subscriber by wildcard: granted QoS 0, no topic id.
        let fx = g.handle(
            s,
            2,
            Message::Subscribe {
                flags: Flags {
                    qos: Qos::One,
                    ..Flags::NONE
                },
                msg_id: 9,
                topic: TopicRef::Name("a/+".into()),
            },
        );
        assert!(matches!(
            sends(&fx)[..],
            [Message::SubAck { topic_id: 0, msg_id: 9, rc: ReturnCode::Accepted, flags }] if flags.qos == Qos::Zero
        ));
        // QoS 1 publish: routed and acknowledged.
        let fx = g.handle(
            p,
            3,
            Message::Publish {
                flags: Flags {
                    qos: Qos::One,
                    ..Flags::NONE
                },
                topic_id: id,
                msg_id: 11,
                data: b"x".to_vec(),
            },
        );
        assert_eq!(
            fx,
            [
                Effect::Publish {
                    topic: "a/b".into(),
                    data: b"x".to_vec(),
                    retain: false
                },
                Effect::Send(
                    p,
                    Message::PubAck {
                        topic_id: id,
                        msg_id: 11,
                        rc: ReturnCode::Accepted
                    }
                )
            ]
        );
        // Delivered to the subscriber: REGISTER first (it never saw the
        // id), then the publish; the second time only the publish.
        let fx = g.deliver("a/b", b"x");
        assert!(
            matches!(sends(&fx)[..], [Message::Register { topic_id, .. }, Message::Publish { .. }] if *topic_id == id)
        );
        let fx = g.deliver("a/b", b"y");
        assert!(matches!(sends(&fx)[..], [Message::Publish { .. }]));
        assert!(g.deliver("other", b"z").is_empty());
        // An unknown id: PUBACK with "invalid topic id".
        let fx = g.handle(
            p,
            4,
            Message::Publish {
                flags: Flags {
                    qos: Qos::One,
                    ..Flags::NONE
                },
                topic_id: 999,
                msg_id: 12,
                data: vec![],
            },
        );
        assert!(matches!(
            sends(&fx)[..],
            [Message::PubAck {
                rc: ReturnCode::InvalidTopicId,
                ..
            }]
        ));
    }

    /// A client subscribed by short name or predefined id gets publishes
    /// in that id type, with no REGISTER (mqtt-sn-12's client matches them
    /// so).
    #[test]
    fn deliveries_keep_the_subscribers_id_type() {
        let mut g = gw();
        let (s, p) = (addr(2), addr(3));
        connect(&mut g, s, "s", 60, 0);
        connect(&mut g, p, "p", 60, 0);
        for topic in [TopicRef::Short(*b"ab"), TopicRef::Predefined(5)] {
            g.handle(
                s,
                1,
                Message::Subscribe {
                    flags: Flags::NONE,
                    msg_id: 1,
                    topic,
                },
            );
        }
        let fx = g.deliver("ab", b"z");
        assert!(
            matches!(
                sends(&fx)[..],
                [Message::Publish { flags, topic_id, .. }]
                    if flags.topic_id_type == TOPIC_SHORT && *topic_id == u16::from_be_bytes(*b"ab")
            ),
            "{fx:?}"
        );
        let fx = g.deliver("temp/room1", b"21");
        assert!(
            matches!(
                sends(&fx)[..],
                [Message::Publish { flags, topic_id: 5, .. }] if flags.topic_id_type == TOPIC_PREDEFINED
            ),
            "{fx:?}"
        );
    }

    #[test]
    fn qos2_is_delivered_exactly_once() {
        let mut g = gw();
        let p = addr(1);
        connect(&mut g, p, "pub", 60, 0);
        let publish = Message::Publish {
            flags: Flags {
                qos: Qos::Two,
                topic_id_type: TOPIC_SHORT,
                ..Flags::NONE
            },
            topic_id: u16::from_be_bytes(*b"ab"),
            msg_id: 5,
            data: b"v".to_vec(),
        };
        let fx = g.handle(p, 1, publish.clone());
        assert_eq!(sends(&fx), [&Message::PubRec { msg_id: 5 }]);
        // A duplicate PUBLISH before PUBREL changes nothing.
        g.handle(p, 2, publish);
        let fx = g.handle(p, 3, Message::PubRel { msg_id: 5 });
        assert_eq!(fx.len(), 2);
        assert!(matches!(&fx[0], Effect::Publish { topic, .. } if topic == "ab"));
        let fx = g.handle(p, 4, Message::PubRel { msg_id: 5 });
        assert_eq!(sends(&fx), [&Message::PubComp { msg_id: 5 }]);
        assert_eq!(fx.len(), 1, "published once");
    }

    #[test]
    fn qos_minus_one_needs_no_connection_and_unknown_clients_are_told() {
        let mut g = gw();
        let fx = g.handle(
            addr(9),
            0,
            Message::Publish {
                flags: Flags {
                    qos: Qos::MinusOne,
                    topic_id_type: TOPIC_PREDEFINED,
                    ..Flags::NONE
                },
                topic_id: 5,
                msg_id: 0,
                data: b"21C".to_vec(),
            },
        );
        assert_eq!(
            fx,
            [Effect::Publish {
                topic: "temp/room1".into(),
                data: b"21C".to_vec(),
                retain: false
            }]
        );
        let fx = g.handle(
            addr(9),
            0,
            Message::Publish {
                flags: Flags {
                    qos: Qos::One,
                    ..Flags::NONE
                },
                topic_id: 1,
                msg_id: 1,
                data: vec![],
            },
        );
        assert_eq!(sends(&fx), [&Message::Disconnect { duration: None }]);
    }

    #[test]
    fn sleep_buffers_and_ping_wakes() {
        let mut g = gw();
        let s = addr(2);
        connect(&mut g, s, "sleepy", 60, 0);
        g.handle(
            s,
            1,
            Message::Subscribe {
                flags: Flags::NONE,
                msg_id: 1,
                topic: TopicRef::Name("t".into()),
            },
        );
        let fx = g.handle(
            s,
            2,
            Message::Disconnect {
                duration: Some(600),
            },
        );
        assert_eq!(sends(&fx), [&Message::Disconnect { duration: None }]);
        assert!(matches!(g.state(&s), Some(State::Asleep { .. })));
        assert!(g.deliver("t", b"1").is_empty(), "buffered, not sent");
        g.deliver("t", b"2");
        let fx = g.handle(
            s,
            3,
            Message::PingReq {
                client_id: Some("sleepy".into()),
            },
        );
        let got = sends(&fx);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(got[0], Message::Publish { data, .. } if data == b"1"));
        assert_eq!(got[2], &Message::PingResp);
        // Past its sleep and the grace: lost.
        assert!(g.tick(600_000).is_empty());
        assert_eq!(g.clients(), 1);
        g.tick(700_000);
        assert_eq!(g.clients(), 0);
    }

    #[test]
    fn will_flow_and_keep_alive_expiry_publish_the_will() {
        let mut g = gw();
        let a = addr(3);
        let fx = g.handle(
            a,
            0,
            Message::Connect {
                flags: Flags {
                    will: true,
                    ..Flags::NONE
                },
                duration: 10,
                client_id: "w".into(),
            },
        );
        assert_eq!(sends(&fx), [&Message::WillTopicReq]);
        let fx = g.handle(
            a,
            1,
            Message::WillTopic {
                flags: Flags::NONE,
                topic: "dead".into(),
            },
        );
        assert_eq!(sends(&fx), [&Message::WillMsgReq]);
        let fx = g.handle(
            a,
            2,
            Message::WillMsg {
                msg: b"bye".to_vec(),
            },
        );
        assert_eq!(
            sends(&fx),
            [&Message::ConnAck {
                rc: ReturnCode::Accepted
            }]
        );
        // Alive within 1.5 keep-alive, lost after.
        assert!(g.tick(14_000).is_empty());
        let fx = g.tick(16_000);
        assert_eq!(
            fx,
            [Effect::Publish {
                topic: "dead".into(),
                data: b"bye".to_vec(),
                retain: false
            }]
        );
        // A clean DISCONNECT publishes no will.
        let b = addr(4);
        connect(&mut g, b, "clean", 10, 20_000);
        g.handle(b, 20_001, Message::Disconnect { duration: None });
        assert!(g.tick(100_000).is_empty());
    }

    /// A persistent session outlives the gateway: its record restores the
    /// subscriptions when the client connects again without the clean flag
    /// (and a clean connect starts empty).
    #[test]
    fn persistent_sessions_are_restored() {
        let mut g = gw();
        let a = addr(1);
        g.handle(
            a,
            0,
            Message::Connect {
                flags: Flags::NONE,
                duration: 60,
                client_id: "keep".into(),
            },
        );
        let fx = g.handle(
            a,
            1,
            Message::Subscribe {
                flags: Flags::NONE,
                msg_id: 1,
                topic: TopicRef::Name("a/#".into()),
            },
        );
        let record = fx
            .iter()
            .find_map(|e| match e {
                Effect::Session(r) => Some(r.clone()),
                _ => None,
            })
            .unwrap();
        assert!(record.persistent);
        assert_eq!(record.subscriptions, ["a/#"]);
        // A new gateway (after a restart) with the record.
        let mut g = gw();
        g.restore_session(&record);
        let b = addr(2);
        g.handle(
            b,
            5,
            Message::Connect {
                flags: Flags::NONE,
                duration: 60,
                client_id: "keep".into(),
            },
        );
        assert!(matches!(
            sends(&g.deliver("a/x", b"1"))[..],
            [Message::Register { .. }, Message::Publish { .. }]
        ));
        // Clean: the subscriptions are gone.
        let mut g = gw();
        g.restore_session(&record);
        connect(&mut g, b, "keep", 60, 5);
        assert!(
            g.deliver("a/x", b"1")
                .iter()
                .all(|e| !matches!(e, Effect::Send(..)))
        );
    }

    #[test]
    fn ids_survive_a_restart_and_client_ids_are_checked() {
        let mut g = gw();
        g.restore_topic("x/y", 42);
        let a = addr(1);
        connect(&mut g, a, "c", 0, 0);
        let fx = g.handle(
            a,
            1,
            Message::Register {
                topic_id: 0,
                msg_id: 1,
                topic_name: "x/y".into(),
            },
        );
        assert_eq!(
            sends(&fx),
            [&Message::RegAck {
                topic_id: 42,
                msg_id: 1,
                rc: ReturnCode::Accepted
            }]
        );
        let fx = g.handle(
            a,
            2,
            Message::Register {
                topic_id: 0,
                msg_id: 2,
                topic_name: "new".into(),
            },
        );
        assert!(matches!(&fx[0], Effect::Registered { id: 43, .. }));
        let fx = g.handle(
            addr(5),
            3,
            Message::Connect {
                flags: Flags::NONE,
                duration: 0,
                client_id: "x".repeat(24),
            },
        );
        assert_eq!(
            sends(&fx),
            [&Message::ConnAck {
                rc: ReturnCode::NotSupported
            }]
        );
    }
}

//! The gateway's CoAP side (RFC 7252, Observe RFC 7641, CoRE Link Format
//! RFC 6690), a pure state machine like the MQTT-SN [`session`]:
//!
//! - `GET /.well-known/core`: the topics, as `</ps/data/<topic>>;obs`;
//! - `GET <prefix><topic>` with Observe 0 registers an observer (the
//!   answer carries the last value and an Observe number; every publish of
//!   the topic then reaches it as a NON notification with increasing
//!   Observe numbers); Observe 1, or a RST to a notification, deregisters;
//! - `PUT`/`POST <prefix><topic>` publishes (a CON gets its ACK 2.04);
//! - an unknown topic is 4.04, another method 4.05, an unreadable request
//!   4.00 (CON) or nothing (NON);
//! - a repeated CON (same endpoint and message id, RFC 7252 section 4.5)
//!   gets the same answer again and is not acted on twice.
//!
//! [`session`]: crate::session

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
};

use coap_lite::{
    CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType,
};

/// Answers remembered for de-duplication, per gateway.
const DEDUP: usize = 4096;
/// Observers at most (each costs a notification per publish).
pub const MAX_OBSERVERS: usize = 100_000;

/// What the CoAP side wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoapEffect {
    /// Send this datagram to this endpoint.
    Send(SocketAddr, Vec<u8>),
    /// A publish it accepted: route it and deliver it to every subscriber.
    Publish { topic: String, data: Vec<u8> },
    /// A shard-aware device's control message (POST to its control
    /// resource, docs/device-protocol.md): for the membership.
    Control {
        client: String,
        from: SocketAddr,
        data: Vec<u8>,
    },
    /// A device (re-)registered on its control resource: it is alive.
    Seen { client: String, from: SocketAddr },
}

/// A NON 2.05 notification of an observation (`token`, Observe `seq`)
/// carrying `payload` as text/plain: publishes are opaque bytes, which
/// clients print as is.
fn notification(mid: u16, token: Vec<u8>, seq: u32, payload: &[u8]) -> Packet {
    let mut n = Packet::new();
    n.header.set_type(MessageType::NonConfirmable);
    n.header.message_id = mid;
    n.header.code = MessageClass::Response(ResponseType::Content);
    n.set_token(token);
    n.set_observe_value(seq);
    n.set_content_format(ContentFormat::TextPlain);
    n.payload = payload.to_vec();
    n
}

/// Shard-aware devices' control resources: `sc/<client id>`.
pub const CONTROL_PATH: &str = "sc/";

/// A client id as the device protocol takes it (as MQTT-SN's, at most 23
/// bytes, here also without a path separator).
fn control_client(path: &str) -> Option<&str> {
    let c = path.strip_prefix(CONTROL_PATH)?;
    (!c.is_empty() && c.len() <= 23 && !c.contains('/')).then_some(c)
}

#[derive(Clone, Debug)]
struct Observer {
    token: Vec<u8>,
    /// The last Observe number sent (24 bits used).
    seq: u32,
}

/// The CoAP gateway's state.
#[derive(Debug)]
pub struct CoapGateway {
    prefix: String,
    topics: BTreeSet<String>,
    /// (endpoint, topic) → observer.
    observers: HashMap<(SocketAddr, String), Observer>,
    last: HashMap<String, Vec<u8>>,
    /// (endpoint, message id) → the answer sent.
    answered: HashMap<(SocketAddr, u16), Vec<u8>>,
    answered_order: VecDeque<(SocketAddr, u16)>,
    /// Notifications sent: (endpoint, message id) → topic (a RST to one
    /// deregisters its observer).
    notified: HashMap<(SocketAddr, u16), String>,
    notified_order: VecDeque<(SocketAddr, u16)>,
    next_mid: u16,
    /// Devices observing their control resource: client → (endpoint,
    /// observer).
    controls: HashMap<String, (SocketAddr, Observer)>,
}

fn uri_path(p: &Packet) -> String {
    p.get_option(CoapOption::UriPath)
        .map(|segs| {
            segs.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

impl CoapGateway {
    /// `prefix` is the data plane's (`ps/data/`); `topics` are those a
    /// request may name.
    pub fn new(prefix: &str, topics: impl IntoIterator<Item = String>) -> CoapGateway {
        CoapGateway {
            prefix: prefix.trim_start_matches('/').to_string(),
            topics: topics.into_iter().collect(),
            observers: HashMap::new(),
            last: HashMap::new(),
            answered: HashMap::new(),
            answered_order: VecDeque::new(),
            notified: HashMap::new(),
            notified_order: VecDeque::new(),
            next_mid: 1,
            controls: HashMap::new(),
        }
    }

    /// Replaces the known topics (a new plan); observers of topics gone
    /// stay registered (the topic may come back) but get nothing.
    pub fn set_topics(&mut self, topics: impl IntoIterator<Item = String>) {
        self.topics = topics.into_iter().collect();
    }

    /// The topics observed now.
    pub fn observed(&self) -> BTreeSet<String> {
        self.observers.keys().map(|(_, t)| t.clone()).collect()
    }

    pub fn observers(&self) -> usize {
        self.observers.len()
    }

    fn mid(&mut self) -> u16 {
        let m = self.next_mid;
        self.next_mid = self.next_mid.wrapping_add(1);
        m
    }

    fn remember(&mut self, key: (SocketAddr, u16), answer: Vec<u8>) {
        if self.answered_order.len() >= DEDUP
            && let Some(old) = self.answered_order.pop_front()
        {
            self.answered.remove(&old);
        }
        self.answered_order.push_back(key);
        self.answered.insert(key, answer);
    }

    /// Handles one datagram from `from`.
    pub fn handle(&mut self, from: SocketAddr, datagram: &[u8]) -> Vec<CoapEffect> {
        let mut fx = Vec::new();
        let Ok(req) = Packet::from_bytes(datagram) else {
            // Unreadable: answered only when its header says CON (a
            // 4.00 needs the message id, RFC 7252 section 4.2).
            if datagram.len() >= 4 && datagram[0] >> 6 == 1 && (datagram[0] >> 4) & 3 == 0 {
                let mut r = Packet::new();
                r.header.set_type(MessageType::Acknowledgement);
                r.header.message_id = u16::from_be_bytes([datagram[2], datagram[3]]);
                r.header.code = MessageClass::Response(ResponseType::BadRequest);
                if let Ok(b) = r.to_bytes() {
                    fx.push(CoapEffect::Send(from, b));
                }
            }
            return fx;
        };
        let ty = req.header.get_type();
        let mid = req.header.message_id;
        match (ty, req.header.code) {
            // A RST (to a notification) or an empty ACK: an observer
            // that no longer wants notifications says so with a RST.
            // RFC 7641 section 3.6: the RST names the notification by its
            // message id.
            (MessageType::Reset, _) => {
                if let Some(topic) = self.notified.remove(&(from, mid)) {
                    self.observers.remove(&(from, topic));
                }
                return fx;
            }
            (MessageType::Acknowledgement, _) => return fx,
            (_, MessageClass::Request(_)) => {}
            _ => return fx,
        }
        if ty == MessageType::Confirmable
            && let Some(a) = self.answered.get(&(from, mid))
        {
            fx.push(CoapEffect::Send(from, a.clone()));
            return fx;
        }
        let mut resp = Packet::new();
        resp.header.set_type(if ty == MessageType::Confirmable {
            MessageType::Acknowledgement
        } else {
            MessageType::NonConfirmable
        });
        resp.header.message_id = if ty == MessageType::Confirmable {
            mid
        } else {
            self.mid()
        };
        resp.set_token(req.get_token().to_vec());
        let path = uri_path(&req);
        if let Some(client) = control_client(&path) {
            let code = self.control_request(&req, client, from, &mut resp, &mut fx);
            resp.header.code = MessageClass::Response(code);
            if let Ok(b) = resp.to_bytes() {
                if ty == MessageType::Confirmable {
                    self.remember((from, mid), b.clone());
                }
                fx.push(CoapEffect::Send(from, b));
            }
            return fx;
        }
        let topic = path
            .strip_prefix(&self.prefix)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        let code = match (&req.header.code, path.as_str(), topic) {
            (MessageClass::Request(RequestType::Get), ".well-known/core", _) => {
                let links: Vec<String> = self
                    .topics
                    .iter()
                    .map(|t| format!("</{}{t}>;obs", self.prefix))
                    .collect();
                resp.set_content_format(ContentFormat::ApplicationLinkFormat);
                resp.payload = links.join(",").into_bytes();
                ResponseType::Content
            }
            (_, _, Some(t)) if !self.topics.contains(&t) => ResponseType::NotFound,
            (MessageClass::Request(RequestType::Get), _, Some(t)) => {
                match req.get_observe_value() {
                    Some(Ok(0)) => {
                        let key = (from, t.clone());
                        if self.observers.len() < MAX_OBSERVERS || self.observers.contains_key(&key)
                        {
                            self.observers.insert(
                                key,
                                Observer {
                                    token: req.get_token().to_vec(),
                                    seq: 1,
                                },
                            );
                            resp.set_observe_value(1);
                        }
                    }
                    Some(Ok(1)) => {
                        self.observers.remove(&(from, t.clone()));
                    }
                    _ => {}
                }
                resp.payload = self.last.get(&t).cloned().unwrap_or_default();
                ResponseType::Content
            }
            (MessageClass::Request(RequestType::Put | RequestType::Post), _, Some(t)) => {
                fx.push(CoapEffect::Publish {
                    topic: t,
                    data: req.payload.clone(),
                });
                ResponseType::Changed
            }
            (
                MessageClass::Request(RequestType::Get | RequestType::Put | RequestType::Post),
                _,
                None,
            ) => ResponseType::NotFound,
            _ => ResponseType::MethodNotAllowed,
        };
        resp.header.code = MessageClass::Response(code);
        if let Ok(b) = resp.to_bytes() {
            if ty == MessageType::Confirmable {
                self.remember((from, mid), b.clone());
            }
            // A NON request's publish needs no answer (the data plane's
            // own path answers none either); its errors are answered.
            let publish_non = ty == MessageType::NonConfirmable && code == ResponseType::Changed;
            if !publish_non {
                fx.push(CoapEffect::Send(from, b));
            }
        }
        fx
    }

    /// A request on a device's control resource: GET with Observe 0
    /// registers the endpoint for the device's control messages (again:
    /// a keep-alive), Observe 1 deregisters; POST (or PUT) carries a
    /// control message from the device.
    fn control_request(
        &mut self,
        req: &Packet,
        client: &str,
        from: SocketAddr,
        resp: &mut Packet,
        fx: &mut Vec<CoapEffect>,
    ) -> ResponseType {
        match req.header.code {
            MessageClass::Request(RequestType::Get) => {
                match req.get_observe_value() {
                    Some(Ok(0)) => {
                        let known = self.controls.contains_key(client);
                        if known || self.controls.len() < MAX_OBSERVERS {
                            let seq = self.controls.get(client).map_or(1, |(_, o)| o.seq);
                            self.controls.insert(
                                client.to_string(),
                                (
                                    from,
                                    Observer {
                                        token: req.get_token().to_vec(),
                                        seq,
                                    },
                                ),
                            );
                            resp.set_observe_value(seq);
                        }
                        fx.push(CoapEffect::Seen {
                            client: client.to_string(),
                            from,
                        });
                    }
                    Some(Ok(1)) if self.controls.get(client).is_some_and(|(a, _)| *a == from) => {
                        self.controls.remove(client);
                    }
                    _ => {}
                }
                ResponseType::Content
            }
            MessageClass::Request(RequestType::Post | RequestType::Put) => {
                fx.push(CoapEffect::Control {
                    client: client.to_string(),
                    from,
                    data: req.payload.clone(),
                });
                ResponseType::Changed
            }
            _ => ResponseType::MethodNotAllowed,
        }
    }

    /// A control message for `client` at `to`, as a notification of its
    /// control resource, if the device observes it from there (else the
    /// message goes by MQTT-SN).
    pub fn control_notification(
        &mut self,
        client: &str,
        to: SocketAddr,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let mid = self.mid();
        let (addr, o) = self.controls.get_mut(client)?;
        if *addr != to {
            return None;
        }
        o.seq = (o.seq + 1) & 0xFF_FFFF;
        notification(mid, o.token.clone(), o.seq, payload)
            .to_bytes()
            .ok()
    }

    /// Whether `client` observes its control resource (a CoAP device).
    pub fn is_control_observer(&self, client: &str) -> bool {
        self.controls.contains_key(client)
    }

    /// The topic and payload of a CoAP publish as the data plane forwards
    /// it (PUT/POST under the prefix), if it is one.
    pub fn publish_of(&self, datagram: &[u8]) -> Option<(String, Vec<u8>)> {
        let p = Packet::from_bytes(datagram).ok()?;
        if !matches!(
            p.header.code,
            MessageClass::Request(RequestType::Put | RequestType::Post)
        ) {
            return None;
        }
        let topic = uri_path(&p).strip_prefix(&self.prefix)?.to_string();
        (!topic.is_empty()).then_some((topic, p.payload))
    }

    /// A publish of `topic`: kept as its last value and sent to every
    /// observer as a NON notification with its next Observe number.
    pub fn deliver(&mut self, topic: &str, data: &[u8]) -> Vec<CoapEffect> {
        let mut fx = Vec::new();
        if !self.topics.contains(topic) {
            return fx;
        }
        self.last.insert(topic.to_string(), data.to_vec());
        let mut mids = Vec::new();
        for ((addr, t), o) in &mut self.observers {
            if t != topic {
                continue;
            }
            o.seq = (o.seq + 1) & 0xFF_FFFF;
            mids.push((*addr, o.token.clone(), o.seq));
        }
        for (addr, token, seq) in mids {
            let mid = self.mid();
            if self.notified_order.len() >= DEDUP
                && let Some(old) = self.notified_order.pop_front()
            {
                self.notified.remove(&old);
            }
            let key = (addr, mid);
            self.notified_order.push_back(key);
            self.notified.insert(key, topic.to_string());
            if let Ok(b) = notification(mid, token, seq, data).to_bytes() {
                fx.push(CoapEffect::Send(addr, b));
            }
        }
        fx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        ty: MessageType,
        code: RequestType,
        mid: u16,
        path: &str,
        observe: Option<u32>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(ty);
        p.header.code = MessageClass::Request(code);
        p.header.message_id = mid;
        p.set_token(vec![0xAB, mid as u8]);
        for seg in path.split('/') {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        if let Some(o) = observe {
            p.set_observe_value(o);
        }
        p.payload = payload.to_vec();
        p.to_bytes().unwrap()
    }

    fn sent(fx: &[CoapEffect]) -> Vec<Packet> {
        fx.iter()
            .filter_map(|e| match e {
                CoapEffect::Send(_, b) => Some(Packet::from_bytes(b).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn code(p: &Packet) -> ResponseType {
        match p.header.code {
            MessageClass::Response(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_device_observes_its_control_resource_and_posts_control_messages() {
        let a: SocketAddr = "198.18.0.5:40000".parse().unwrap();
        let b: SocketAddr = "198.18.0.6:40000".parse().unwrap();
        let mut g = CoapGateway::new("ps/data/", ["t1".to_string()]);
        // Nobody observes: control messages go by MQTT-SN.
        assert!(g.control_notification("dev-1", a, b"assign").is_none());
        let fx = g.handle(
            a,
            &req(
                MessageType::Confirmable,
                RequestType::Get,
                7,
                "sc/dev-1",
                Some(0),
                b"",
            ),
        );
        assert!(fx.contains(&CoapEffect::Seen {
            client: "dev-1".into(),
            from: a
        }));
        let r = &sent(&fx)[0];
        assert_eq!(code(r), ResponseType::Content);
        assert_eq!(r.header.message_id, 7);
        assert_eq!(r.get_observe_value(), Some(Ok(1)));
        assert!(g.is_control_observer("dev-1"));
        // Control messages to it: notifications with its token and
        // increasing Observe numbers; only to the address it observes from.
        let n1 =
            Packet::from_bytes(&g.control_notification("dev-1", a, b"assign x").unwrap()).unwrap();
        let n2 =
            Packet::from_bytes(&g.control_notification("dev-1", a, b"ack 2 1").unwrap()).unwrap();
        assert_eq!(n1.get_token(), [0xAB, 7]);
        assert_eq!(n1.payload, b"assign x");
        assert!(
            n2.get_observe_value().unwrap().unwrap() > n1.get_observe_value().unwrap().unwrap()
        );
        assert!(g.control_notification("dev-1", b, b"x").is_none());
        // A POST carries a control message, acknowledged 2.04; a repeat
        // (same message id) is answered again, not handed over twice.
        let post = req(
            MessageType::Confirmable,
            RequestType::Post,
            8,
            "sc/dev-1",
            None,
            b"hello",
        );
        let fx = g.handle(a, &post);
        assert!(fx.contains(&CoapEffect::Control {
            client: "dev-1".into(),
            from: a,
            data: b"hello".to_vec()
        }));
        assert_eq!(code(&sent(&fx)[0]), ResponseType::Changed);
        let again = g.handle(a, &post);
        assert!(
            !again
                .iter()
                .any(|e| matches!(e, CoapEffect::Control { .. }))
        );
        assert_eq!(code(&sent(&again)[0]), ResponseType::Changed);
        // Another endpoint cannot deregister it; the device itself can.
        g.handle(
            b,
            &req(
                MessageType::Confirmable,
                RequestType::Get,
                9,
                "sc/dev-1",
                Some(1),
                b"",
            ),
        );
        assert!(g.is_control_observer("dev-1"));
        g.handle(
            a,
            &req(
                MessageType::Confirmable,
                RequestType::Get,
                10,
                "sc/dev-1",
                Some(1),
                b"",
            ),
        );
        assert!(!g.is_control_observer("dev-1"));
        // Bad control paths are not control resources.
        for path in ["sc/", "sc/a/b", "sc/aaaaaaaaaaaaaaaaaaaaaaaa"] {
            let fx = g.handle(
                a,
                &req(
                    MessageType::Confirmable,
                    RequestType::Post,
                    11,
                    path,
                    None,
                    b"hello",
                ),
            );
            assert!(
                !fx.iter().any(|e| matches!(e, CoapEffect::Control { .. })),
                "{path}"
            );
            assert_eq!(code(&sent(&fx)[0]), ResponseType::NotFound, "{path}");
        }
    }

    #[test]
    fn observe_publish_notify_and_deregister() {
        let a: SocketAddr = "198.18.0.5:5683".parse().unwrap();
        let mut g = CoapGateway::new("ps/data/", ["t1".to_string(), "t2".to_string()]);
        // Discovery.
        let fx = g.handle(
            a,
            &req(
                MessageType::Confirmable,
                RequestType::Get,
                1,
                ".well-known/core",
                None,
                b"",
            ),
        );
        let r = &sent(&fx)[0];
        assert_eq!(code(r), ResponseType::Content);
        assert_eq!(r.payload, b"</ps/data/t1>;obs,</ps/data/t2>;obs");
        assert_eq!(
            r.get_content_format(),
            Some(ContentFormat::ApplicationLinkFormat)
        );
        // Observe t1.
        let fx = g.handle(
            a,
            &req(
                MessageType::Confirmable,
                RequestType::Get,
                2,
                "ps/data/t1",
                Some(0),
                b"",
            ),
        );
        let r = &sent(&fx)[0];
        assert_eq!(
            (code(r), r.header.get_type(), r.header.message_id),
            (ResponseType::Content, MessageType::Acknowledgement, 2)
        );
        assert_eq!(r.get_observe_value().unwrap().unwrap(), 1);
        // A CON PUT publishes and is acknowledged 2.04; repeated, it is
        // answered again and not published twice.
        let put = req(
            MessageType::Confirmable,
            RequestType::Put,
            3,
            "ps/data/t1",
            None,
            b"21.5",
        );
        let fx = g.handle(a, &put);
        assert!(fx.contains(&CoapEffect::Publish {
            topic: "t1".into(),
            data: b"21.5".to_vec()
        }));
        assert_eq!(code(&sent(&fx)[0]), ResponseType::Changed);
        let again = g.handle(a, &put);
        assert_eq!(again.len(), 1);
        assert_eq!(code(&sent(&again)[0]), ResponseType::Changed);
        // Notifications: increasing Observe numbers, the observer's token.
        let n1 = sent(&g.deliver("t1", b"1"));
        let n2 = sent(&g.deliver("t1", b"2"));
        assert!(sent(&g.deliver("t2", b"x")).is_empty(), "not observed");
        let o = |p: &Packet| p.get_observe_value().unwrap().unwrap();
        assert!(o(&n2[0]) > o(&n1[0]));
        assert_eq!(n1[0].get_token(), [0xAB, 2]);
        assert_eq!(n2[0].payload, b"2");
        // A GET now returns the last value.
        let fx = g.handle(
            a,
            &req(
                MessageType::Confirmable,
                RequestType::Get,
                4,
                "ps/data/t1",
                None,
                b"",
            ),
        );
        assert_eq!(sent(&fx)[0].payload, b"2");
        // RST to a notification deregisters.
        let mut rst = Packet::new();
        rst.header.set_type(MessageType::Reset);
        rst.header.code = MessageClass::Empty;
        rst.header.message_id = n2[0].header.message_id;
        g.handle(a, &rst.to_bytes().unwrap());
        assert_eq!(g.observers(), 0);
        assert!(sent(&g.deliver("t1", b"3")).is_empty());
        // Observe 1 deregisters too.
        g.handle(
            a,
            &req(
                MessageType::Confirmable,
                RequestType::Get,
                5,
                "ps/data/t2",
                Some(0),
                b"",
            ),
        );
        assert_eq!(g.observed(), ["t2".to_string()].into());
        g.handle(
            a,
            &req(
                MessageType::Confirmable,
                RequestType::Get,
                6,
                "ps/data/t2",
                Some(1),
                b"",
            ),
        );
        assert_eq!(g.observers(), 0);
    }

    #[test]
    fn errors_are_answered_by_code() {
        let a: SocketAddr = "198.18.0.5:5683".parse().unwrap();
        let mut g = CoapGateway::new("ps/data/", ["t1".to_string()]);
        let c = |g: &mut CoapGateway, b: Vec<u8>| code(&sent(&g.handle(a, &b))[0]);
        assert_eq!(
            c(
                &mut g,
                req(
                    MessageType::Confirmable,
                    RequestType::Put,
                    1,
                    "ps/data/nope",
                    None,
                    b"x"
                )
            ),
            ResponseType::NotFound
        );
        assert_eq!(
            c(
                &mut g,
                req(
                    MessageType::Confirmable,
                    RequestType::Get,
                    2,
                    "elsewhere",
                    None,
                    b""
                )
            ),
            ResponseType::NotFound
        );
        assert_eq!(
            c(
                &mut g,
                req(
                    MessageType::Confirmable,
                    RequestType::Delete,
                    3,
                    "ps/data/t1",
                    None,
                    b""
                )
            ),
            ResponseType::MethodNotAllowed
        );
        // Unreadable CON (a reserved option delta nibble): 4.00 with its id.
        let bad = [0x40, 0x01, 0x12, 0x34, 0xF0];
        let r = &sent(&g.handle(a, &bad))[0];
        assert_eq!(
            (code(r), r.header.message_id),
            (ResponseType::BadRequest, 0x1234)
        );
        // Unreadable NON: nothing.
        assert!(g.handle(a, &[0x50, 0x01, 0, 1, 0xF0]).is_empty());
        // A NON publish: published, no answer.
        let fx = g.handle(
            a,
            &req(
                MessageType::NonConfirmable,
                RequestType::Post,
                4,
                "ps/data/t1",
                None,
                b"v",
            ),
        );
        assert_eq!(
            fx,
            [CoapEffect::Publish {
                topic: "t1".into(),
                data: b"v".to_vec()
            }]
        );
    }
}

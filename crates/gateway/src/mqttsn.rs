//! MQTT-SN v1.2 messages (OASIS MQTT-SN Protocol Specification v1.2,
//! section 5): every message a client and a gateway exchange, decoded from
//! and encoded to datagrams.
//!
//! The data plane recognises only the PUBLISH it can forward without
//! session state (`router_common::mqttsn`); everything here is the
//! gateway's. Decoding checks every field the specification fixes (the
//! length octets against the datagram, the protocol id, reserved topic id
//! types, string lengths) and names what is wrong; it never reads past the
//! datagram and never allocates more than the datagram holds.

/// The QoS of the Flags octet: the data plane's own reading of it.
pub use router_common::mqttsn::Qos;
use router_common::mqttsn::{
    LONG_LENGTH_MARK, MSG_PUBLISH, TOPIC_NORMAL, TOPIC_PREDEFINED, TOPIC_SHORT,
};

/// Message types (section 5.2.2).
pub mod msg_type {
    pub const ADVERTISE: u8 = 0x00;
    pub const SEARCHGW: u8 = 0x01;
    pub const GWINFO: u8 = 0x02;
    pub const CONNECT: u8 = 0x04;
    pub const CONNACK: u8 = 0x05;
    pub const WILLTOPICREQ: u8 = 0x06;
    pub const WILLTOPIC: u8 = 0x07;
    pub const WILLMSGREQ: u8 = 0x08;
    pub const WILLMSG: u8 = 0x09;
    pub const REGISTER: u8 = 0x0A;
    pub const REGACK: u8 = 0x0B;
    pub const PUBLISH: u8 = super::MSG_PUBLISH;
    pub const PUBACK: u8 = 0x0D;
    pub const PUBCOMP: u8 = 0x0E;
    pub const PUBREC: u8 = 0x0F;
    pub const PUBREL: u8 = 0x10;
    pub const SUBSCRIBE: u8 = 0x12;
    pub const SUBACK: u8 = 0x13;
    pub const UNSUBSCRIBE: u8 = 0x14;
    pub const UNSUBACK: u8 = 0x15;
    pub const PINGREQ: u8 = 0x16;
    pub const PINGRESP: u8 = 0x17;
    pub const DISCONNECT: u8 = 0x18;
    pub const WILLTOPICUPD: u8 = 0x1A;
    pub const WILLTOPICRESP: u8 = 0x1B;
    pub const WILLMSGUPD: u8 = 0x1C;
    pub const WILLMSGRESP: u8 = 0x1D;
}

/// Return codes (section 5.3.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnCode {
    Accepted,
    Congestion,
    InvalidTopicId,
    NotSupported,
}

impl ReturnCode {
    fn from_u8(b: u8) -> Result<ReturnCode, CodecError> {
        Ok(match b {
            0 => ReturnCode::Accepted,
            1 => ReturnCode::Congestion,
            2 => ReturnCode::InvalidTopicId,
            3 => ReturnCode::NotSupported,
            other => return Err(CodecError::ReturnCode(other)),
        })
    }

    fn to_u8(self) -> u8 {
        match self {
            ReturnCode::Accepted => 0,
            ReturnCode::Congestion => 1,
            ReturnCode::InvalidTopicId => 2,
            ReturnCode::NotSupported => 3,
        }
    }
}

/// The Flags octet (section 5.3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags {
    pub dup: bool,
    pub qos: Qos,
    pub retain: bool,
    pub will: bool,
    pub clean_session: bool,
    /// TopicIdType: `TOPIC_NORMAL`, `TOPIC_PREDEFINED` or `TOPIC_SHORT`
    /// (0b11 is reserved and refused).
    pub topic_id_type: u8,
}

impl Flags {
    pub const NONE: Flags = Flags {
        dup: false,
        qos: Qos::Zero,
        retain: false,
        will: false,
        clean_session: false,
        topic_id_type: TOPIC_NORMAL,
    };

    fn from_u8(b: u8) -> Result<Flags, CodecError> {
        let topic_id_type = b & 0b11;
        if topic_id_type == 0b11 {
            return Err(CodecError::ReservedTopicIdType);
        }
        Ok(Flags {
            dup: b & 0x80 != 0,
            qos: Qos::from_flags(b),
            retain: b & 0x10 != 0,
            will: b & 0x08 != 0,
            clean_session: b & 0x04 != 0,
            topic_id_type,
        })
    }

    fn to_u8(self) -> u8 {
        let qos = match self.qos {
            Qos::Zero => 0,
            Qos::One => 1,
            Qos::Two => 2,
            Qos::MinusOne => 3,
        };
        (self.dup as u8) << 7
            | qos << 5
            | (self.retain as u8) << 4
            | (self.will as u8) << 3
            | (self.clean_session as u8) << 2
            | self.topic_id_type & 0b11
    }
}

/// How a SUBSCRIBE or UNSUBSCRIBE names its topic (by the TopicIdType).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicRef {
    /// A topic name, possibly with `+`/`#` wildcards (TopicIdType 0b00).
    Name(String),
    /// A predefined topic id (0b01).
    Predefined(u16),
    /// A two-character short name (0b10).
    Short([u8; 2]),
}

/// Every MQTT-SN v1.2 message (the Encapsulated message of section 5.5 is
/// for forwarders and not supported).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Advertise {
        gw_id: u8,
        duration: u16,
    },
    SearchGw {
        radius: u8,
    },
    GwInfo {
        gw_id: u8,
        gw_add: Vec<u8>,
    },
    Connect {
        flags: Flags,
        duration: u16,
        client_id: String,
    },
    ConnAck {
        rc: ReturnCode,
    },
    WillTopicReq,
    /// An empty WILLTOPIC (no flags, no topic) deletes the will.
    WillTopic {
        flags: Flags,
        topic: String,
    },
    WillMsgReq,
    WillMsg {
        msg: Vec<u8>,
    },
    Register {
        topic_id: u16,
        msg_id: u16,
        topic_name: String,
    },
    RegAck {
        topic_id: u16,
        msg_id: u16,
        rc: ReturnCode,
    },
    Publish {
        flags: Flags,
        topic_id: u16,
        msg_id: u16,
        data: Vec<u8>,
    },
    PubAck {
        topic_id: u16,
        msg_id: u16,
        rc: ReturnCode,
    },
    PubRec {
        msg_id: u16,
    },
    PubRel {
        msg_id: u16,
    },
    PubComp {
        msg_id: u16,
    },
    Subscribe {
        flags: Flags,
        msg_id: u16,
        topic: TopicRef,
    },
    SubAck {
        flags: Flags,
        topic_id: u16,
        msg_id: u16,
        rc: ReturnCode,
    },
    Unsubscribe {
        flags: Flags,
        msg_id: u16,
        topic: TopicRef,
    },
    UnsubAck {
        msg_id: u16,
    },
    PingReq {
        client_id: Option<String>,
    },
    PingResp,
    /// With a duration: the client goes to sleep for that many seconds.
    Disconnect {
        duration: Option<u16>,
    },
    WillTopicUpd {
        flags: Flags,
        topic: String,
    },
    WillTopicResp {
        rc: ReturnCode,
    },
    WillMsgUpd {
        msg: Vec<u8>,
    },
    WillMsgResp {
        rc: ReturnCode,
    },
}

/// What is wrong with a datagram.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty datagram")]
    Empty,
    #[error("length field says {said} bytes, the datagram has {have}")]
    Length { said: usize, have: usize },
    #[error("message type {0:#04x} is unknown or not supported")]
    Type(u8),
    #[error("{what}: {have} bytes where the message needs {need}")]
    Short {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("CONNECT with protocol id {0:#04x} (MQTT-SN v1.2 is 0x01)")]
    ProtocolId(u8),
    #[error("reserved TopicIdType 0b11")]
    ReservedTopicIdType,
    #[error("return code {0} is reserved")]
    ReturnCode(u8),
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("{0} must not be empty")]
    EmptyString(&'static str),
    #[error("message of {0} bytes is longer than the 65535 the length field holds")]
    TooLong(usize),
}

/// Decodes one datagram.
pub fn decode(dgram: &[u8]) -> Result<Message, CodecError> {
    let (&first, _) = dgram.split_first().ok_or(CodecError::Empty)?;
    let (len, hdr) = if first == LONG_LENGTH_MARK {
        if dgram.len() < 3 {
            return Err(CodecError::Short {
                what: "3-octet length",
                need: 3,
                have: dgram.len(),
            });
        }
        (u16::from_be_bytes([dgram[1], dgram[2]]) as usize, 3)
    } else {
        (first as usize, 1)
    };
    if len != dgram.len() || len < hdr + 1 {
        return Err(CodecError::Length {
            said: len,
            have: dgram.len(),
        });
    }
    let t = dgram[hdr];
    let b = &dgram[hdr + 1..];
    use msg_type::*;
    let need = |what: &'static str, n: usize| -> Result<(), CodecError> {
        if b.len() < n {
            Err(CodecError::Short {
                what,
                need: n,
                have: b.len(),
            })
        } else {
            Ok(())
        }
    };
    let exact = |what: &'static str, n: usize| -> Result<(), CodecError> {
        if b.len() != n {
            Err(CodecError::Short {
                what,
                need: n,
                have: b.len(),
            })
        } else {
            Ok(())
        }
    };
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let text = |what: &'static str, bytes: &[u8]| -> Result<String, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::Utf8(what))
    };
    Ok(match t {
        ADVERTISE => {
            exact("ADVERTISE", 3)?;
            Message::Advertise {
                gw_id: b[0],
                duration: u16_at(1),
            }
        }
        SEARCHGW => {
            exact("SEARCHGW", 1)?;
            Message::SearchGw { radius: b[0] }
        }
        GWINFO => {
            need("GWINFO", 1)?;
            Message::GwInfo {
                gw_id: b[0],
                gw_add: b[1..].to_vec(),
            }
        }
        CONNECT => {
            need("CONNECT", 4)?;
            if b[1] != 0x01 {
                return Err(CodecError::ProtocolId(b[1]));
            }
            let client_id = text("client id", &b[4..])?;
            Message::Connect {
                flags: Flags::from_u8(b[0])?,
                duration: u16_at(2),
                client_id,
            }
        }
        CONNACK => {
            exact("CONNACK", 1)?;
            Message::ConnAck {
                rc: ReturnCode::from_u8(b[0])?,
            }
        }
        WILLTOPICREQ => {
            exact("WILLTOPICREQ", 0)?;
            Message::WillTopicReq
        }
        WILLTOPIC | WILLTOPICUPD => {
            let (flags, topic) = if b.is_empty() {
                (Flags::NONE, String::new())
            } else {
                (Flags::from_u8(b[0])?, text("will topic", &b[1..])?)
            };
            if t == WILLTOPIC {
                Message::WillTopic { flags, topic }
            } else {
                Message::WillTopicUpd { flags, topic }
            }
        }
        WILLMSGREQ => {
            exact("WILLMSGREQ", 0)?;
            Message::WillMsgReq
        }
        WILLMSG => Message::WillMsg { msg: b.to_vec() },
        WILLMSGUPD => Message::WillMsgUpd { msg: b.to_vec() },
        REGISTER => {
            need("REGISTER", 5)?;
            Message::Register {
                topic_id: u16_at(0),
                msg_id: u16_at(2),
                topic_name: text("topic name", &b[4..])?,
            }
        }
        REGACK => {
            exact("REGACK", 5)?;
            Message::RegAck {
                topic_id: u16_at(0),
                msg_id: u16_at(2),
                rc: ReturnCode::from_u8(b[4])?,
            }
        }
        PUBLISH => {
            need("PUBLISH", 5)?;
            Message::Publish {
                flags: Flags::from_u8(b[0])?,
                topic_id: u16_at(1),
                msg_id: u16_at(3),
                data: b[5..].to_vec(),
            }
        }
        PUBACK => {
            exact("PUBACK", 5)?;
            Message::PubAck {
                topic_id: u16_at(0),
                msg_id: u16_at(2),
                rc: ReturnCode::from_u8(b[4])?,
            }
        }
        PUBREC | PUBREL | PUBCOMP => {
            exact("PUBREC/PUBREL/PUBCOMP", 2)?;
            let msg_id = u16_at(0);
            match t {
                PUBREC => Message::PubRec { msg_id },
                PUBREL => Message::PubRel { msg_id },
                _ => Message::PubComp { msg_id },
            }
        }
        SUBSCRIBE | UNSUBSCRIBE => {
            need("SUBSCRIBE/UNSUBSCRIBE", 4)?;
            let flags = Flags::from_u8(b[0])?;
            let msg_id = u16_at(1);
            let rest = &b[3..];
            let topic = match flags.topic_id_type {
                TOPIC_NORMAL => {
                    if rest.is_empty() {
                        return Err(CodecError::EmptyString("topic name"));
                    }
                    TopicRef::Name(text("topic name", rest)?)
                }
                TOPIC_PREDEFINED | TOPIC_SHORT if rest.len() != 2 => {
                    return Err(CodecError::Short {
                        what: "topic id",
                        need: 2,
                        have: rest.len(),
                    });
                }
                TOPIC_PREDEFINED => TopicRef::Predefined(u16::from_be_bytes([rest[0], rest[1]])),
                _ => TopicRef::Short([rest[0], rest[1]]),
            };
            if t == SUBSCRIBE {
                Message::Subscribe {
                    flags,
                    msg_id,
                    topic,
                }
            } else {
                Message::Unsubscribe {
                    flags,
                    msg_id,
                    topic,
                }
            }
        }
        SUBACK => {
            exact("SUBACK", 6)?;
            Message::SubAck {
                flags: Flags::from_u8(b[0])?,
                topic_id: u16_at(1),
                msg_id: u16_at(3),
                rc: ReturnCode::from_u8(b[5])?,
            }
        }
        UNSUBACK => {
            exact("UNSUBACK", 2)?;
            Message::UnsubAck { msg_id: u16_at(0) }
        }
        PINGREQ => Message::PingReq {
            client_id: if b.is_empty() {
                None
            } else {
                Some(text("client id", b)?)
            },
        },
        PINGRESP => {
            exact("PINGRESP", 0)?;
            Message::PingResp
        }
        DISCONNECT => match b.len() {
            0 => Message::Disconnect { duration: None },
            2 => Message::Disconnect {
                duration: Some(u16_at(0)),
            },
            n => {
                return Err(CodecError::Short {
                    what: "DISCONNECT duration",
                    need: 2,
                    have: n,
                });
            }
        },
        WILLTOPICRESP | WILLMSGRESP => {
            exact("WILLTOPICRESP/WILLMSGRESP", 1)?;
            let rc = ReturnCode::from_u8(b[0])?;
            if t == WILLTOPICRESP {
                Message::WillTopicResp { rc }
            } else {
                Message::WillMsgResp { rc }
            }
        }
        other => return Err(CodecError::Type(other)),
    })
}

/// Encodes a message as one datagram (the 3-octet length form from 256
/// bytes on).
pub fn encode(m: &Message) -> Result<Vec<u8>, CodecError> {
    use msg_type::*;
    let mut b: Vec<u8> = Vec::new();
    let t = match m {
        Message::Advertise { gw_id, duration } => {
            b.push(*gw_id);
            b.extend_from_slice(&duration.to_be_bytes());
            ADVERTISE
        }
        Message::SearchGw { radius } => {
            b.push(*radius);
            SEARCHGW
        }
        Message::GwInfo { gw_id, gw_add } => {
            b.push(*gw_id);
            b.extend_from_slice(gw_add);
            GWINFO
        }
        Message::Connect {
            flags,
            duration,
            client_id,
        } => {
            b.extend_from_slice(&[flags.to_u8(), 0x01]);
            b.extend_from_slice(&duration.to_be_bytes());
            b.extend_from_slice(client_id.as_bytes());
            CONNECT
        }
        Message::ConnAck { rc } => {
            b.push(rc.to_u8());
            CONNACK
        }
        Message::WillTopicReq => WILLTOPICREQ,
        Message::WillTopic { flags, topic } | Message::WillTopicUpd { flags, topic } => {
            if !(topic.is_empty() && *flags == Flags::NONE) {
                b.push(flags.to_u8());
                b.extend_from_slice(topic.as_bytes());
            }
            if matches!(m, Message::WillTopic { .. }) {
                WILLTOPIC
            } else {
                WILLTOPICUPD
            }
        }
        Message::WillMsgReq => WILLMSGREQ,
        Message::WillMsg { msg } => {
            b.extend_from_slice(msg);
            WILLMSG
        }
        Message::WillMsgUpd { msg } => {
            b.extend_from_slice(msg);
            WILLMSGUPD
        }
        Message::Register {
            topic_id,
            msg_id,
            topic_name,
        } => {
            b.extend_from_slice(&topic_id.to_be_bytes());
            b.extend_from_slice(&msg_id.to_be_bytes());
            b.extend_from_slice(topic_name.as_bytes());
            REGISTER
        }
        Message::RegAck {
            topic_id,
            msg_id,
            rc,
        } => {
            b.extend_from_slice(&topic_id.to_be_bytes());
            b.extend_from_slice(&msg_id.to_be_bytes());
            b.push(rc.to_u8());
            REGACK
        }
        Message::Publish {
            flags,
            topic_id,
            msg_id,
            data,
        } => {
            b.push(flags.to_u8());
            b.extend_from_slice(&topic_id.to_be_bytes());
            b.extend_from_slice(&msg_id.to_be_bytes());
            b.extend_from_slice(data);
            PUBLISH
        }
        Message::PubAck {
            topic_id,
            msg_id,
            rc,
        } => {
            b.extend_from_slice(&topic_id.to_be_bytes());
            b.extend_from_slice(&msg_id.to_be_bytes());
            b.push(rc.to_u8());
            PUBACK
        }
        Message::PubRec { msg_id } => {
            b.extend_from_slice(&msg_id.to_be_bytes());
            PUBREC
        }
        Message::PubRel { msg_id } => {
            b.extend_from_slice(&msg_id.to_be_bytes());
            PUBREL
        }
        Message::PubComp { msg_id } => {
            b.extend_from_slice(&msg_id.to_be_bytes());
            PUBCOMP
        }
        Message::Subscribe {
            flags,
            msg_id,
            topic,
        }
        | Message::Unsubscribe {
            flags,
            msg_id,
            topic,
        } => {
            let mut flags = *flags;
            flags.topic_id_type = match topic {
                TopicRef::Name(_) => TOPIC_NORMAL,
                TopicRef::Predefined(_) => TOPIC_PREDEFINED,
                TopicRef::Short(_) => TOPIC_SHORT,
            };
            b.push(flags.to_u8());
            b.extend_from_slice(&msg_id.to_be_bytes());
            match topic {
                TopicRef::Name(n) => {
                    if n.is_empty() {
                        return Err(CodecError::EmptyString("topic name"));
                    }
                    b.extend_from_slice(n.as_bytes())
                }
                TopicRef::Predefined(id) => b.extend_from_slice(&id.to_be_bytes()),
                TopicRef::Short(s) => b.extend_from_slice(s),
            }
            if matches!(m, Message::Subscribe { .. }) {
                SUBSCRIBE
            } else {
                UNSUBSCRIBE
            }
        }
        Message::SubAck {
            flags,
            topic_id,
            msg_id,
            rc,
        } => {
            b.push(flags.to_u8());
            b.extend_from_slice(&topic_id.to_be_bytes());
            b.extend_from_slice(&msg_id.to_be_bytes());
            b.push(rc.to_u8());
            SUBACK
        }
        Message::UnsubAck { msg_id } => {
            b.extend_from_slice(&msg_id.to_be_bytes());
            UNSUBACK
        }
        Message::PingReq { client_id } => {
            if let Some(c) = client_id {
                b.extend_from_slice(c.as_bytes());
            }
            PINGREQ
        }
        Message::PingResp => PINGRESP,
        Message::Disconnect { duration } => {
            if let Some(d) = duration {
                b.extend_from_slice(&d.to_be_bytes());
            }
            DISCONNECT
        }
        Message::WillTopicResp { rc } => {
            b.push(rc.to_u8());
            WILLTOPICRESP
        }
        Message::WillMsgResp { rc } => {
            b.push(rc.to_u8());
            WILLMSGRESP
        }
    };
    let short = b.len() + 2;
    let mut out = Vec::with_capacity(b.len() + 4);
    if short < 256 {
        out.push(short as u8);
    } else {
        let long = b.len() + 4;
        if long > u16::MAX as usize {
            return Err(CodecError::TooLong(long));
        }
        out.push(LONG_LENGTH_MARK);
        out.extend_from_slice(&(long as u16).to_be_bytes());
    }
    out.push(t);
    out.extend_from_slice(&b);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flags() -> impl Strategy<Value = Flags> {
        (any::<u8>()).prop_filter_map("reserved id type", |b| Flags::from_u8(b).ok())
    }

    fn rc() -> impl Strategy<Value = ReturnCode> {
        (0u8..4).prop_map(|b| ReturnCode::from_u8(b).unwrap())
    }

    fn topic_ref() -> impl Strategy<Value = TopicRef> {
        prop_oneof![
            "[a-z/+#]{1,40}".prop_map(TopicRef::Name),
            any::<u16>().prop_map(TopicRef::Predefined),
            any::<[u8; 2]>().prop_map(TopicRef::Short),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..600);
        prop_oneof![
            (any::<u8>(), any::<u16>())
                .prop_map(|(gw_id, duration)| Message::Advertise { gw_id, duration }),
            any::<u8>().prop_map(|radius| Message::SearchGw { radius }),
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..16))
                .prop_map(|(gw_id, gw_add)| Message::GwInfo { gw_id, gw_add }),
            (flags(), any::<u16>(), "[a-zA-Z0-9-]{0,23}").prop_map(
                |(flags, duration, client_id)| {
                    Message::Connect {
                        flags,
                        duration,
                        client_id,
                    }
                }
            ),
            rc().prop_map(|rc| Message::ConnAck { rc }),
            Just(Message::WillTopicReq),
            (flags(), "[a-z/]{1,40}")
                .prop_map(|(flags, topic)| Message::WillTopic { flags, topic }),
            Just(Message::WillMsgReq),
            bytes.clone().prop_map(|msg| Message::WillMsg { msg }),
            (any::<u16>(), any::<u16>(), "[a-z/]{1,300}").prop_map(
                |(topic_id, msg_id, topic_name)| {
                    Message::Register {
                        topic_id,
                        msg_id,
                        topic_name,
                    }
                }
            ),
            (any::<u16>(), any::<u16>(), rc()).prop_map(|(topic_id, msg_id, rc)| Message::RegAck {
                topic_id,
                msg_id,
                rc
            }),
            (flags(), any::<u16>(), any::<u16>(), bytes).prop_map(
                |(flags, topic_id, msg_id, data)| {
                    Message::Publish {
                        flags,
                        topic_id,
                        msg_id,
                        data,
                    }
                }
            ),
            (any::<u16>(), any::<u16>(), rc()).prop_map(|(topic_id, msg_id, rc)| Message::PubAck {
                topic_id,
                msg_id,
                rc
            }),
            any::<u16>().prop_map(|msg_id| Message::PubRec { msg_id }),
            any::<u16>().prop_map(|msg_id| Message::PubRel { msg_id }),
            any::<u16>().prop_map(|msg_id| Message::PubComp { msg_id }),
            (flags(), any::<u16>(), topic_ref()).prop_map(|(mut flags, msg_id, topic)| {
                flags.topic_id_type = match topic {
                    TopicRef::Name(_) => TOPIC_NORMAL,
                    TopicRef::Predefined(_) => TOPIC_PREDEFINED,
                    TopicRef::Short(_) => TOPIC_SHORT,
                };
                Message::Subscribe {
                    flags,
                    msg_id,
                    topic,
                }
            }),
            (flags(), any::<u16>(), any::<u16>(), rc()).prop_map(
                |(flags, topic_id, msg_id, rc)| {
                    Message::SubAck {
                        flags,
                        topic_id,
                        msg_id,
                        rc,
                    }
                }
            ),
            any::<u16>().prop_map(|msg_id| Message::UnsubAck { msg_id }),
            proptest::option::of("[a-z0-9]{1,23}")
                .prop_map(|client_id| Message::PingReq { client_id }),
            Just(Message::PingResp),
            proptest::option::of(any::<u16>())
                .prop_map(|duration| Message::Disconnect { duration }),
            rc().prop_map(|rc| Message::WillTopicResp { rc }),
            rc().prop_map(|rc| Message::WillMsgResp { rc }),
        ]
    }

    proptest! {
        /// Every message survives an encode/decode round trip, in both
        /// length forms.
        #[test]
        fn round_trip(m in message()) {
            let d = encode(&m).unwrap();
            if d.len() >= 256 {
                prop_assert_eq!(d[0], LONG_LENGTH_MARK);
            }
            prop_assert_eq!(decode(&d).unwrap(), m);
        }

        /// Any datagram either decodes to a message that encodes back to
        /// the same message, or is refused with a reason; never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(d in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(m) = decode(&d) {
                let again = encode(&m).unwrap();
                prop_assert_eq!(decode(&again).unwrap(), m);
            }
        }
    }

    #[test]
    fn spec_examples_and_refusals() {
        // CONNECT, clean session, keep-alive 60, client "dev1".
        let connect = [0x0a, 0x04, 0x04, 0x01, 0x00, 0x3c, b'd', b'e', b'v', b'1'];
        assert_eq!(
            decode(&connect).unwrap(),
            Message::Connect {
                flags: Flags {
                    clean_session: true,
                    ..Flags::NONE
                },
                duration: 60,
                client_id: "dev1".into()
            }
        );
        assert_eq!(encode(&decode(&connect).unwrap()).unwrap(), connect);
        // The data plane's own publish builder agrees with the codec.
        let p = router_common::build::mqttsn_publish(
            false,
            router_common::build::qos0(TOPIC_SHORT),
            *b"ab",
            7,
            b"x",
        );
        assert!(matches!(
            decode(&p).unwrap(),
            Message::Publish { topic_id, msg_id: 7, .. } if topic_id == u16::from_be_bytes(*b"ab")
        ));
        for (bad, want) in [
            (vec![], "empty"),
            (vec![0x03, 0x16], "length field says 3"),
            (vec![0x02, 0x03], "0x03 is unknown"),
            (vec![0x06, 0x04, 0x04, 0x02, 0x00, 0x3c], "protocol id 0x02"),
            (vec![0x03, 0x05, 0x09], "return code 9"),
            (
                vec![0x07, 0x12, 0x03, 0x00, 0x01, b'a', b'b'],
                "reserved TopicIdType",
            ),
            (vec![0x05, 0x12, 0x00, 0x00, 0x01], "needs 4"),
            (vec![0x01, 0x00], "3-octet length"),
            (vec![0x03, 0x18, 0x00], "DISCONNECT duration"),
            (vec![0x06, 0x0a, 0x00, 0x01, 0x00, 0x02], "REGISTER"),
        ] {
            let e = decode(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:02x?}: {e}");
        }
        let too_long = Message::WillMsg {
            msg: vec![0; 70_000],
        };
        assert!(matches!(encode(&too_long), Err(CodecError::TooLong(_))));
    }
}

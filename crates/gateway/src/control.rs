//! The device protocol's control messages (docs/device-protocol.md): how
//! a shard-aware device learns its shard's group, its migration token and
//! the migrate commands, over plain MQTT-SN.
//!
//! Each device has one control topic, `$sc/<client id>`, named on the
//! wire by the predefined id [`CONTROL_ID`], used both ways:
//! the device publishes `hello` and `confirm` to it (QoS 1), the gateway
//! publishes `assign`, `renew`, `migrate`, `ack` and `refused` to the
//! device's address only (never through subscriptions: a `$sc/#`
//! subscriber sees nothing, and `$` topics match no wildcard).
//!
//! Payloads are one line of ASCII words, so that `mqtt_sn_sub` and tshark
//! show them as they are. Every command that changes where a device
//! listens is authenticated with HMAC-SHA256 keyed by the device's 128-bit
//! token, over the command's fields and the client id (a MAC for one
//! device is worthless for another); verification is constant-time.

use std::{fmt, net::IpAddr};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The predefined topic id that names, for each client, its own control
/// topic (predefined ids are agreed out of band; this one by this
/// protocol, so no device spends a normal id on it).
pub use router_common::mqttsn::CONTROL_ID;

/// Control topics begin with this.
pub const TOPIC_PREFIX: &str = "$sc/";

/// Now, in the unit the protocol's expiries and deadlines are written
/// in: unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The control topic of `client`.
pub fn topic(client: &str) -> String {
    format!("{TOPIC_PREFIX}{client}")
}

/// Whether `topic` is a control topic (reserved: no ordinary publish or
/// subscription reaches it).
pub fn is_control(topic: &str) -> bool {
    topic.starts_with(TOPIC_PREFIX)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("control message is not ASCII text")]
    NotText,
    #[error("control message is empty")]
    Empty,
    #[error("unknown control message {0:?}")]
    Unknown(String),
    #[error("control message {verb}: {what}")]
    Field { verb: String, what: String },
    #[error("the OS random generator failed: {0}")]
    Random(String),
}

fn field(verb: &str, what: impl Into<String>) -> ControlError {
    ControlError::Field {
        verb: verb.to_string(),
        what: what.into(),
    }
}

/// A device's migration secret: 128 random bits, shown only to the
/// device it was issued to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub [u8; 16]);

impl Token {
    /// A fresh token from the OS's generator.
    pub fn random() -> Result<Token, ControlError> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| ControlError::Random(e.to_string()))?;
        Ok(Token(b))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Token> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(Token(b))
    }
}

impl fmt::Debug for Token {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// An HMAC-SHA256 tag.
pub type Tag = [u8; 32];

/// The HMAC of `parts` (joined by NUL, so no two field lists collide)
/// keyed by `token`, not yet finalised.
fn mac(token: &Token, parts: &[&str]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(&token.0).expect("HMAC takes any key length");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            m.update(&[0]);
        }
        m.update(p.as_bytes());
    }
    m
}

fn tag(token: &Token, parts: &[&str]) -> Tag {
    mac(token, parts).finalize().into_bytes().into()
}

/// Constant-time check of `got` against the MAC of `parts`.
fn check(token: &Token, parts: &[&str], got: &Tag) -> bool {
    mac(token, parts).verify_slice(got).is_ok()
}

/// Where a device listens: its shard's group and port, in a plan
/// generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub generation: u64,
    pub shard: u32,
    pub group: IpAddr,
    pub port: u16,
}

impl Assignment {
    fn fields(&self) -> [String; 4] {
        [
            self.generation.to_string(),
            self.shard.to_string(),
            self.group.to_string(),
            self.port.to_string(),
        ]
    }
}

/// The migrate command's MAC: the device checks it before it moves.
pub fn migrate_tag(token: &Token, client: &str, to: &Assignment, deadline_ms: u64) -> Tag {
    let [g, s, a, p] = to.fields();
    tag(
        token,
        &["migrate", client, &g, &s, &a, &p, &deadline_ms.to_string()],
    )
}

pub fn check_migrate(
    token: &Token,
    client: &str,
    to: &Assignment,
    deadline_ms: u64,
    got: &Tag,
) -> bool {
    let [g, s, a, p] = to.fields();
    check(
        token,
        &["migrate", client, &g, &s, &a, &p, &deadline_ms.to_string()],
        got,
    )
}

/// The device's confirm MAC: proves the device holding the token moved.
pub fn confirm_tag(token: &Token, client: &str, generation: u64, shard: u32) -> Tag {
    tag(
        token,
        &[
            "confirm",
            client,
            &generation.to_string(),
            &shard.to_string(),
        ],
    )
}

pub fn check_confirm(token: &Token, client: &str, generation: u64, shard: u32, got: &Tag) -> bool {
    check(
        token,
        &[
            "confirm",
            client,
            &generation.to_string(),
            &shard.to_string(),
        ],
        got,
    )
}

/// A renewal's MAC, keyed by the token it replaces: only the gateway
/// that issued the old token can hand out the next.
pub fn renew_tag(old: &Token, client: &str, new: &Token, expires_ms: u64) -> Tag {
    tag(
        old,
        &["renew", client, &new.to_hex(), &expires_ms.to_string()],
    )
}

pub fn check_renew(old: &Token, client: &str, new: &Token, expires_ms: u64, got: &Tag) -> bool {
    check(
        old,
        &["renew", client, &new.to_hex(), &expires_ms.to_string()],
        got,
    )
}

/// The device's answer to a renewal, under the new token: proves it
/// holds it (the gateway switches only then).
pub fn renewed_tag(new: &Token, client: &str, expires_ms: u64) -> Tag {
    tag(new, &["renewed", client, &expires_ms.to_string()])
}

pub fn check_renewed(new: &Token, client: &str, expires_ms: u64, got: &Tag) -> bool {
    check(new, &["renewed", client, &expires_ms.to_string()], got)
}

/// Attributes a device reports in its `hello` (the planner's boundary
/// keys and its battery).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Percent, 0..=100.
    pub battery: Option<u8>,
    /// A path such as `site/building/floor`.
    pub location: Option<String>,
    pub kind: Option<String>,
    pub sla: Option<String>,
}

/// Why the gateway refused a control message (counted per reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// `hello` from another address while the device's token is valid.
    TokenHeld,
    /// The MAC does not verify.
    BadMac,
    /// A confirm of a generation older than the pending migration.
    Replayed,
    /// The device's token expired: it must say `hello` again.
    Expired,
    /// A confirm from another address than the device's session.
    WrongSource,
    /// A confirm with no migration pending for it.
    NotMigrating,
    /// Unreadable.
    Malformed,
}

impl Refusal {
    /// In declaration order: counters index by `reason as usize`.
    pub const ALL: [Refusal; 7] = [
        Refusal::TokenHeld,
        Refusal::BadMac,
        Refusal::Replayed,
        Refusal::Expired,
        Refusal::WrongSource,
        Refusal::NotMigrating,
        Refusal::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::TokenHeld => "token-held",
            Refusal::BadMac => "bad-mac",
            Refusal::Replayed => "replayed",
            Refusal::Expired => "expired",
            Refusal::WrongSource => "wrong-source",
            Refusal::NotMigrating => "not-migrating",
            Refusal::Malformed => "malformed",
        }
    }

    fn from_label(s: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.label() == s)
    }
}

/// One control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Device → gateway: "I am here; issue my token; where do I listen?"
    Hello(Attributes),
    /// Device → gateway: joined `shard`'s group of `generation`.
    Confirm {
        generation: u64,
        shard: u32,
        tag: Tag,
    },
    /// Device → gateway: switched to the renewed token (MAC'd with it).
    Renewed { expires_ms: u64, tag: Tag },
    /// Gateway → device: its token, its expiry (unix ms), and its shard if
    /// the installed plan places it.
    Assign {
        token: Token,
        expires_ms: u64,
        to: Option<Assignment>,
    },
    /// Gateway → device: the next token, authenticated by the current.
    Renew {
        token: Token,
        expires_ms: u64,
        tag: Tag,
    },
    /// Gateway → device: join `to`, confirm before `deadline_ms` (unix ms).
    Migrate {
        to: Assignment,
        deadline_ms: u64,
        tag: Tag,
    },
    /// Gateway → device: the confirm was accepted.
    Ack { generation: u64, shard: u32 },
    /// Gateway → device: the last message was refused.
    Refused(Refusal),
}

fn num<T: std::str::FromStr>(
    verb: &'static str,
    name: &str,
    w: Option<&str>,
) -> Result<T, ControlError> {
    let w = w.ok_or_else(|| field(verb, format!("{name} is missing")))?;
    w.parse()
        .map_err(|_| field(verb, format!("{name} {w:?} is not a number in range")))
}

fn tag_of(verb: &'static str, w: Option<&str>) -> Result<Tag, ControlError> {
    let w = w.ok_or_else(|| field(verb, "MAC is missing"))?;
    let mut t = [0u8; 32];
    hex::decode_to_slice(w, &mut t).map_err(|_| field(verb, "MAC is not 64 hex digits"))?;
    Ok(t)
}

fn token_of(verb: &'static str, w: Option<&str>) -> Result<Token, ControlError> {
    let w = w.ok_or_else(|| field(verb, "token is missing"))?;
    Token::from_hex(w).ok_or_else(|| field(verb, "token is not 32 hex digits"))
}

fn assignment(
    verb: &'static str,
    w: &mut std::str::SplitAsciiWhitespace<'_>,
) -> Result<Assignment, ControlError> {
    let generation = num(verb, "generation", w.next())?;
    let shard = num(verb, "shard", w.next())?;
    let g = w.next().ok_or_else(|| field(verb, "group is missing"))?;
    let group: IpAddr = g
        .parse()
        .map_err(|_| field(verb, format!("group {g:?} is not an address")))?;
    if !group.is_multicast() {
        return Err(field(verb, format!("group {group} is not multicast")));
    }
    let port = num(verb, "port", w.next())?;
    Ok(Assignment {
        generation,
        shard,
        group,
        port,
    })
}

/// A location path or a word: printable ASCII without spaces or `=`.
fn word_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
}

impl Control {
    /// The payload.
    pub fn encode(&self) -> String {
        match self {
            Control::Hello(a) => {
                let mut s = String::from("hello");
                if let Some(b) = a.battery {
                    s.push_str(&format!(" battery={b}"));
                }
                for (k, v) in [
                    ("location", &a.location),
                    ("type", &a.kind),
                    ("sla", &a.sla),
                ] {
                    if let Some(v) = v {
                        s.push_str(&format!(" {k}={v}"));
                    }
                }
                s
            }
            Control::Confirm {
                generation,
                shard,
                tag,
            } => format!("confirm {generation} {shard} {}", hex::encode(tag)),
            Control::Renewed { expires_ms, tag } => {
                format!("renewed {expires_ms} {}", hex::encode(tag))
            }
            Control::Assign {
                token,
                expires_ms,
                to,
            } => {
                let mut s = format!("assign {} {expires_ms}", token.to_hex());
                if let Some(a) = to {
                    s.push_str(&format!(
                        " {} {} {} {}",
                        a.generation, a.shard, a.group, a.port
                    ));
                }
                s
            }
            Control::Renew {
                token,
                expires_ms,
                tag,
            } => format!("renew {} {expires_ms} {}", token.to_hex(), hex::encode(tag)),
            Control::Migrate {
                to,
                deadline_ms,
                tag,
            } => format!(
                "migrate {} {} {} {} {deadline_ms} {}",
                to.generation,
                to.shard,
                to.group,
                to.port,
                hex::encode(tag)
            ),
            Control::Ack { generation, shard } => format!("ack {generation} {shard}"),
            Control::Refused(r) => format!("refused {}", r.label()),
        }
    }

    pub fn decode(payload: &[u8]) -> Result<Control, ControlError> {
        let text = std::str::from_utf8(payload)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or(ControlError::NotText)?;
        let mut w = text.split_ascii_whitespace();
        let verb = w.next().ok_or(ControlError::Empty)?;
        let msg = match verb {
            "hello" => {
                let mut a = Attributes::default();
                for kv in w.by_ref() {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| field("hello", format!("{kv:?} is not key=value")))?;
                    if !word_ok(v) {
                        return Err(field("hello", format!("{k} value {v:?} is not a word")));
                    }
                    let slot = match k {
                        "battery" => {
                            let b: u8 = num("hello", "battery", Some(v))?;
                            if b > 100 {
                                return Err(field("hello", format!("battery {b} is over 100")));
                            }
                            if a.battery.replace(b).is_some() {
                                return Err(field("hello", "battery is given twice"));
                            }
                            continue;
                        }
                        "location" => &mut a.location,
                        "type" => &mut a.kind,
                        "sla" => &mut a.sla,
                        _ => return Err(field("hello", format!("unknown attribute {k:?}"))),
                    };
                    if slot.replace(v.to_string()).is_some() {
                        return Err(field("hello", format!("{k} is given twice")));
                    }
                }
                Control::Hello(a)
            }
            "confirm" => Control::Confirm {
                generation: num("confirm", "generation", w.next())?,
                shard: num("confirm", "shard", w.next())?,
                tag: tag_of("confirm", w.next())?,
            },
            "renewed" => Control::Renewed {
                expires_ms: num("renewed", "expiry", w.next())?,
                tag: tag_of("renewed", w.next())?,
            },
            "assign" => {
                let token = token_of("assign", w.next())?;
                let expires_ms = num("assign", "expiry", w.next())?;
                let mut rest = w.clone().peekable();
                let to = if rest.peek().is_some() {
                    Some(assignment("assign", &mut w)?)
                } else {
                    None
                };
                Control::Assign {
                    token,
                    expires_ms,
                    to,
                }
            }
            "renew" => Control::Renew {
                token: token_of("renew", w.next())?,
                expires_ms: num("renew", "expiry", w.next())?,
                tag: tag_of("renew", w.next())?,
            },
            "migrate" => Control::Migrate {
                to: assignment("migrate", &mut w)?,
                deadline_ms: num("migrate", "deadline", w.next())?,
                tag: tag_of("migrate", w.next())?,
            },
            "ack" => Control::Ack {
                generation: num("ack", "generation", w.next())?,
                shard: num("ack", "shard", w.next())?,
            },
            "refused" => {
                let r = w
                    .next()
                    .ok_or_else(|| field("refused", "reason is missing"))?;
                Control::Refused(
                    Refusal::from_label(r)
                        .ok_or_else(|| field("refused", format!("unknown reason {r:?}")))?,
                )
            }
            other => return Err(ControlError::Unknown(other.chars().take(32).collect())),
        };
        if let Some(extra) = w.next() {
            return Err(field(verb, format!("unexpected {extra:?} at the end")));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> Assignment {
        Assignment {
            generation: 7,
            shard: 3,
            group: "239.1.0.3".parse().unwrap(),
            port: 1883,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let t = Token::random().unwrap();
        let msgs = [
            Control::Hello(Attributes::default()),
            Control::Hello(Attributes {
                battery: Some(87),
                location: Some("s1/b2/f3".into()),
                kind: Some("sensor".into()),
                sla: Some("premium".into()),
            }),
            Control::Confirm {
                generation: 9,
                shard: 4,
                tag: confirm_tag(&t, "d", 9, 4),
            },
            Control::Renewed {
                expires_ms: 3,
                tag: renewed_tag(&t, "d", 3),
            },
            Control::Assign {
                token: t,
                expires_ms: 1_700_000_000_000,
                to: Some(a()),
            },
            Control::Assign {
                token: t,
                expires_ms: 5,
                to: None,
            },
            Control::Renew {
                token: t,
                expires_ms: 5,
                tag: [9; 32],
            },
            Control::Migrate {
                to: Assignment {
                    group: "ff15::3".parse().unwrap(),
                    ..a()
                },
                deadline_ms: 77,
                tag: [1; 32],
            },
            Control::Ack {
                generation: 1,
                shard: 2,
            },
            Control::Refused(Refusal::WrongSource),
        ];
        for m in msgs {
            let wire = m.encode();
            assert_eq!(Control::decode(wire.as_bytes()), Ok(m), "{wire}");
        }
    }

    #[test]
    fn macs_bind_every_field_and_the_device() {
        let t = Token::random().unwrap();
        let other = Token::random().unwrap();
        let m = migrate_tag(&t, "dev-1", &a(), 100);
        assert!(check_migrate(&t, "dev-1", &a(), 100, &m));
        assert!(!check_migrate(&other, "dev-1", &a(), 100, &m));
        assert!(!check_migrate(&t, "dev-2", &a(), 100, &m));
        assert!(!check_migrate(&t, "dev-1", &a(), 101, &m));
        for changed in [
            Assignment {
                generation: 8,
                ..a()
            },
            Assignment { shard: 4, ..a() },
            Assignment { port: 1884, ..a() },
            Assignment {
                group: "239.1.0.4".parse().unwrap(),
                ..a()
            },
        ] {
            assert!(!check_migrate(&t, "dev-1", &changed, 100, &m));
        }
        let c = confirm_tag(&t, "dev-1", 7, 3);
        assert!(check_confirm(&t, "dev-1", 7, 3, &c));
        assert!(!check_confirm(&t, "dev-1", 6, 3, &c));
        // A confirm's MAC is not a migrate's (domain separation).
        assert_ne!(c, m);
        let n = Token::random().unwrap();
        let r = renew_tag(&t, "dev-1", &n, 5);
        assert!(check_renew(&t, "dev-1", &n, 5, &r));
        assert!(!check_renew(&n, "dev-1", &n, 5, &r));
        // Secrets are not printed.
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn refusals_are_listed_in_declaration_order() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn bad_messages_are_named() {
        for (bad, says) in [
            (&b"\xff\xfe"[..], "ASCII"),
            (b"   ", "empty"),
            (b"jump 1", "unknown control message"),
            (b"hello battery=101", "over 100"),
            (b"hello battery=5 battery=6", "twice"),
            (b"hello colour=red", "unknown attribute"),
            (b"hello location", "key=value"),
            (b"confirm 1 2", "MAC is missing"),
            (b"confirm 1 2 abcd", "64 hex"),
            (b"confirm x 2 00", "generation"),
            (b"assign 00 5", "32 hex"),
            (b"migrate 1 2 10.0.0.1 1883 5 00", "not multicast"),
            (b"migrate 1 2 239.1.1.1 70000 5 00", "port"),
            (b"ack 1 2 3", "unexpected"),
            (b"refused because", "unknown reason"),
        ] {
            let e = Control::decode(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{:?}: {e}", String::from_utf8_lossy(bad));
        }
    }
}

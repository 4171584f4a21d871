//! Shard membership of shard-aware devices: migration tokens (issued,
//! renewed, expired), the attributes devices report, and migrations from
//! the command to the device's authenticated confirm. A pure state
//! machine: messages and time in, [`Out`]s out; [`Out::Persist`] records
//! must be committed before the [`Out::Send`]s that follow them leave, so
//! that a token a device holds is never one a crash forgot.
//!
//! Rules (docs/device-protocol.md):
//! - `hello` issues a token (or re-sends the valid one to the host it was
//!   issued to; any other host is refused while it is valid) with the
//!   device's shard in the installed plan;
//! - a device seen (any message: keep-alive included) past half its
//!   token's life gets `renew`: the next token, MAC'd with the current one,
//!   re-sent until the device answers `renewed` under the new one; the
//!   current token stays in use until then;
//! - a token not renewed by its expiry takes the device out of the
//!   membership ([`Event::Expired`]) until it says `hello` again;
//! - `migrate` commands are MAC'd with the token and re-sent until
//!   confirmed or past their deadline; a confirm counts only with a valid
//!   MAC, from the device's address, for the pending generation and shard.
//!   Everything else is refused, counted, and changes nothing.

use std::{collections::HashMap, net::SocketAddr};

use crate::control::{
    self, Assignment, Attributes, Control, Refusal, Token, check_confirm, check_renewed,
    migrate_tag, renew_tag,
};

/// Settings.
#[derive(Clone, Copy, Debug)]
pub struct MembershipConfig {
    /// How long a token is valid, ms.
    pub token_lifetime_ms: u64,
    /// A migrate command not confirmed is re-sent after this long, ms.
    pub retry_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            token_lifetime_ms: 3_600_000,
            retry_ms: 1_000,
        }
    }
}

/// What the registry keeps of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub client: String,
    pub address: SocketAddr,
    pub token: Token,
    pub expires_ms: u64,
    /// A renewal sent and not yet acknowledged.
    pub next: Option<(Token, u64)>,
    pub attributes: Attributes,
    /// The newest generation the device confirmed (older confirms are
    /// replays).
    pub confirmed_generation: u64,
}

/// A record to commit (`None`: delete), by client id.
pub type MemberUpdate = (String, Option<MemberRecord>);

/// Something the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Commit (or with `None`, delete) a member's record.
    Persist(String, Option<MemberRecord>),
    /// Publish `msg` on `client`'s control topic to `to`.
    Send {
        client: String,
        to: SocketAddr,
        msg: Control,
    },
    Event(Event),
}

/// What happened, for the migration's owner and the counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A device joined (or re-joined) the membership.
    Joined {
        client: String,
    },
    /// The device confirmed it listens on `shard`'s group of `generation`.
    Confirmed {
        client: String,
        generation: u64,
        shard: u32,
    },
    /// A migration's deadline passed unconfirmed.
    TimedOut {
        client: String,
        generation: u64,
    },
    /// The device's token expired: it is out of the membership.
    Expired {
        client: String,
    },
    Refused {
        client: String,
        reason: Refusal,
    },
    /// A migrate command could not be sent: the device is not a member,
    /// or its shard has no group of the device's address family.
    Unreachable {
        client: String,
        generation: u64,
    },
}

/// Why a migrate command could not be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    #[error("device {0:?} has no valid token (not a member)")]
    NotMember(String),
}

#[derive(Clone, Debug)]
struct Pending {
    to: Assignment,
    deadline_ms: u64,
    sent_ms: u64,
}

#[derive(Clone, Debug)]
struct Member {
    rec: MemberRecord,
    pending: Option<Pending>,
}

/// Counters of refusals, by reason.
pub type Refusals = [u64; Refusal::ALL.len()];

/// The membership.
#[derive(Debug, Default)]
pub struct Membership {
    cfg: MembershipConfig,
    members: HashMap<String, Member>,
    refused: Refusals,
}

impl Membership {
    pub fn new(cfg: MembershipConfig) -> Membership {
        Membership {
            cfg,
            ..Default::default()
        }
    }

    /// Restores a record kept in the registry.
    pub fn restore(&mut self, rec: MemberRecord) {
        self.members
            .insert(rec.client.clone(), Member { rec, pending: None });
    }

    /// Members (with a valid token, as of the last [`tick`](Self::tick)).
    pub fn members(&self) -> impl Iterator<Item = &MemberRecord> {
        self.members.values().map(|m| &m.rec)
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member(&self, client: &str) -> Option<&MemberRecord> {
        self.members.get(client).map(|m| &m.rec)
    }

    /// Migrations sent and not yet confirmed or timed out.
    pub fn pending(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.pending.is_some())
            .count()
    }

    pub fn refusals(&self) -> Refusals {
        self.refused
    }

    fn refuse(&mut self, out: &mut Vec<Out>, client: &str, to: SocketAddr, reason: Refusal) {
        self.refused[reason as usize] += 1;
        tracing::debug!(client, %to, reason = reason.label(), "control message refused");
        out.push(Out::Send {
            client: client.to_string(),
            to,
            msg: Control::Refused(reason),
        });
        out.push(Out::Event(Event::Refused {
            client: client.to_string(),
            reason,
        }));
    }

    /// A control message `payload` from `client` (its MQTT-SN session) at
    /// `from`; `assignment` is where the installed plan places it.
    pub fn control(
        &mut self,
        client: &str,
        from: SocketAddr,
        payload: &[u8],
        now_ms: u64,
        assignment: Option<Assignment>,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        match Control::decode(payload) {
            Ok(Control::Hello(attrs)) => {
                self.hello(client, from, attrs, now_ms, assignment, &mut out)
            }
            Ok(Control::Confirm {
                generation,
                shard,
                tag,
            }) => self.confirm(client, from, generation, shard, &tag, now_ms, &mut out),
            Ok(Control::Renewed { expires_ms, tag }) => {
                self.renewed(client, from, expires_ms, &tag, now_ms, &mut out)
            }
            // Gateway-to-device verbs, or unreadable.
            Ok(_) | Err(_) => self.refuse(&mut out, client, from, Refusal::Malformed),
        }
        out
    }

    fn hello(
        &mut self,
        client: &str,
        from: SocketAddr,
        attributes: Attributes,
        now_ms: u64,
        to: Option<Assignment>,
        out: &mut Vec<Out>,
    ) {
        let lifetime = self.cfg.token_lifetime_ms;
        let rec = match self.members.get_mut(client) {
            Some(m) if m.rec.expires_ms > now_ms => {
                if m.rec.address.ip() != from.ip() {
                    self.refuse(out, client, from, Refusal::TokenHeld);
                    return;
                }
                // The same host (maybe a new port): same token.
                m.rec.address = from;
                m.rec.attributes = attributes;
                m.rec.clone()
            }
            _ => {
                let token = match Token::random() {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!("no token for {client}: {e}");
                        return;
                    }
                };
                let rec = MemberRecord {
                    client: client.to_string(),
                    address: from,
                    token,
                    expires_ms: now_ms + lifetime,
                    next: None,
                    attributes,
                    confirmed_generation: 0,
                };
                self.members.insert(
                    client.to_string(),
                    Member {
                        rec: rec.clone(),
                        pending: None,
                    },
                );
                rec
            }
        };
        out.push(Out::Persist(client.to_string(), Some(rec.clone())));
        out.push(Out::Send {
            client: client.to_string(),
            to: from,
            msg: Control::Assign {
                token: rec.token,
                expires_ms: rec.expires_ms,
                to,
            },
        });
        out.push(Out::Event(Event::Joined {
            client: client.to_string(),
        }));
    }

    /// The member a device-to-gateway message comes from: it must hold a
    /// valid token and speak from its session's address.
    fn sender(&self, client: &str, from: SocketAddr, now_ms: u64) -> Result<&Member, Refusal> {
        match self.members.get(client) {
            Some(m) if m.rec.expires_ms > now_ms && m.rec.address == from => Ok(m),
            Some(m) if m.rec.expires_ms > now_ms => Err(Refusal::WrongSource),
            _ => Err(Refusal::Expired),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn confirm(
        &mut self,
        client: &str,
        from: SocketAddr,
        generation: u64,
        shard: u32,
        tag: &control::Tag,
        now_ms: u64,
        out: &mut Vec<Out>,
    ) {
        let reason = match self.sender(client, from, now_ms) {
            Err(r) => Some(r),
            Ok(m) if !check_confirm(&m.rec.token, client, generation, shard, tag) => {
                Some(Refusal::BadMac)
            }
            Ok(m) => match &m.pending {
                Some(p) if p.to.generation == generation && p.to.shard == shard => None,
                Some(p) if generation < p.to.generation => Some(Refusal::Replayed),
                // A repeated confirm (our ack was lost): ack again.
                None if generation == m.rec.confirmed_generation => {
                    out.push(Out::Send {
                        client: client.to_string(),
                        to: from,
                        msg: Control::Ack { generation, shard },
                    });
                    return;
                }
                None if generation < m.rec.confirmed_generation => Some(Refusal::Replayed),
                _ => Some(Refusal::NotMigrating),
            },
        };
        if let Some(r) = reason {
            self.refuse(out, client, from, r);
            return;
        }
        let m = self.members.get_mut(client).expect("checked above");
        m.pending = None;
        // Kept with the member's next commit (a hello, a renewal): a
        // restarted gateway has no migration pending, so a confirm
        // replayed to it is refused whatever it remembers.
        m.rec.confirmed_generation = generation;
        out.push(Out::Send {
            client: client.to_string(),
            to: from,
            msg: Control::Ack { generation, shard },
        });
        out.push(Out::Event(Event::Confirmed {
            client: client.to_string(),
            generation,
            shard,
        }));
    }

    fn renewed(
        &mut self,
        client: &str,
        from: SocketAddr,
        expires_ms: u64,
        tag: &control::Tag,
        now_ms: u64,
        out: &mut Vec<Out>,
    ) {
        let reason = match self.sender(client, from, now_ms) {
            Err(r) => Some(r),
            Ok(m) => match m.rec.next {
                Some((next, exp))
                    if exp == expires_ms && check_renewed(&next, client, expires_ms, tag) =>
                {
                    None
                }
                // Already switched (a repeat), or a forgery.
                _ if m.rec.next.is_none()
                    && m.rec.expires_ms == expires_ms
                    && check_renewed(&m.rec.token, client, expires_ms, tag) =>
                {
                    return;
                }
                _ => Some(Refusal::BadMac),
            },
        };
        if let Some(r) = reason {
            self.refuse(out, client, from, r);
            return;
        }
        let m = self.members.get_mut(client).expect("checked above");
        let (token, exp) = m.rec.next.take().expect("checked above");
        m.rec.token = token;
        m.rec.expires_ms = exp;
        out.push(Out::Persist(client.to_string(), Some(m.rec.clone())));
    }

    /// `client` was heard from (`from`, any message): renews its token
    /// past half its life.
    pub fn seen(&mut self, client: &str, from: SocketAddr, now_ms: u64) -> Vec<Out> {
        let mut out = Vec::new();
        let lifetime = self.cfg.token_lifetime_ms;
        let Some(m) = self.members.get_mut(client) else {
            return out;
        };
        if m.rec.address != from
            || m.rec.expires_ms <= now_ms
            || m.rec.expires_ms - now_ms > lifetime / 2
        {
            return out;
        }
        let (next, exp) = match m.rec.next {
            Some(n) => n,
            None => match Token::random() {
                Ok(t) => {
                    let n = (t, now_ms + lifetime);
                    m.rec.next = Some(n);
                    out.push(Out::Persist(client.to_string(), Some(m.rec.clone())));
                    n
                }
                Err(e) => {
                    tracing::error!("no token for {client}: {e}");
                    return out;
                }
            },
        };
        out.push(Out::Send {
            client: client.to_string(),
            to: from,
            msg: Control::Renew {
                token: next,
                expires_ms: exp,
                tag: renew_tag(&m.rec.token, client, &next, exp),
            },
        });
        out
    }

    /// Sends `client` a migrate command to `to`, due by `deadline_ms`.
    pub fn migrate(
        &mut self,
        client: &str,
        to: Assignment,
        deadline_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<Out>, MigrateError> {
        let m = self
            .members
            .get_mut(client)
            .filter(|m| m.rec.expires_ms > now_ms)
            .ok_or_else(|| MigrateError::NotMember(client.to_string()))?;
        m.pending = Some(Pending {
            to,
            deadline_ms,
            sent_ms: now_ms,
        });
        Ok(vec![migrate_send(client, &m.rec, &to, deadline_ms)])
    }

    /// Expires tokens, times out migrations, re-sends unconfirmed ones.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Out> {
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for (client, m) in &mut self.members {
            if m.rec.expires_ms <= now_ms {
                expired.push(client.clone());
                continue;
            }
            let Some(p) = &mut m.pending else { continue };
            if p.deadline_ms <= now_ms {
                out.push(Out::Event(Event::TimedOut {
                    client: client.clone(),
                    generation: p.to.generation,
                }));
                m.pending = None;
            } else if now_ms >= p.sent_ms + self.cfg.retry_ms {
                p.sent_ms = now_ms;
                let (to, deadline) = (p.to, p.deadline_ms);
                out.push(migrate_send(client, &m.rec, &to, deadline));
            }
        }
        for client in expired {
            if let Some(m) = self.members.remove(&client) {
                if let Some(p) = m.pending {
                    out.push(Out::Event(Event::TimedOut {
                        client: client.clone(),
                        generation: p.to.generation,
                    }));
                }
                out.push(Out::Persist(client.clone(), None));
                out.push(Out::Event(Event::Expired { client }));
            }
        }
        out
    }
}

fn migrate_send(client: &str, rec: &MemberRecord, to: &Assignment, deadline_ms: u64) -> Out {
    Out::Send {
        client: client.to_string(),
        to: rec.address,
        msg: Control::Migrate {
            to: *to,
            deadline_ms,
            tag: migrate_tag(&rec.token, client, to, deadline_ms),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{confirm_tag, renewed_tag};

    const DEV: &str = "dev-1";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn to(generation: u64, shard: u32) -> Assignment {
        Assignment {
            generation,
            shard,
            group: format!("239.1.0.{shard}").parse().unwrap(),
            port: 1883,
        }
    }

    fn sends(out: &[Out]) -> Vec<&Control> {
        out.iter()
            .filter_map(|o| match o {
                Out::Send { msg, .. } => Some(msg),
                _ => None,
            })
            .collect()
    }

    fn events(out: &[Out]) -> Vec<&Event> {
        out.iter()
            .filter_map(|o| match o {
                Out::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn joined(m: &mut Membership, at: SocketAddr) -> Token {
        let out = m.control(DEV, at, b"hello battery=50 sla=premium", 0, Some(to(1, 1)));
        assert!(
            matches!(out[0], Out::Persist(_, Some(_))),
            "persisted before sent"
        );
        match sends(&out)[..] {
            [
                Control::Assign {
                    token,
                    to: Some(a),
                    expires_ms,
                },
            ] => {
                assert_eq!((*a, *expires_ms), (to(1, 1), 10_000));
                *token
            }
            ref other => panic!("{other:?}"),
        }
    }

    fn cfg() -> MembershipConfig {
        MembershipConfig {
            token_lifetime_ms: 10_000,
            retry_ms: 100,
        }
    }

    #[test]
    fn a_migration_is_confirmed_once_with_a_valid_mac() {
        let mut m = Membership::new(cfg());
        let a = addr("198.18.0.5:4000");
        let t = joined(&mut m, a);
        assert_eq!(
            m.member(DEV).unwrap().attributes.sla.as_deref(),
            Some("premium")
        );
        let out = m.migrate(DEV, to(2, 3), 5_000, 10).unwrap();
        let Control::Migrate { tag, .. } = sends(&out)[0] else {
            panic!()
        };
        assert!(control::check_migrate(&t, DEV, &to(2, 3), 5_000, tag));
        // Not confirmed yet: re-sent after the retry period only.
        assert!(m.tick(50).is_empty());
        assert_eq!(sends(&m.tick(110)).len(), 1);
        let confirm = Control::Confirm {
            generation: 2,
            shard: 3,
            tag: confirm_tag(&t, DEV, 2, 3),
        }
        .encode();
        let out = m.control(DEV, a, confirm.as_bytes(), 200, None);
        assert_eq!(
            events(&out),
            [&Event::Confirmed {
                client: DEV.into(),
                generation: 2,
                shard: 3
            }]
        );
        assert_eq!(m.pending(), 0);
        // The same confirm again (our ack lost): acked, no second event.
        let out = m.control(DEV, a, confirm.as_bytes(), 210, None);
        assert_eq!(
            sends(&out),
            [&Control::Ack {
                generation: 2,
                shard: 3
            }]
        );
        assert!(events(&out).is_empty());
    }

    #[test]
    fn every_bad_confirm_is_refused_counted_and_changes_nothing() {
        let mut m = Membership::new(cfg());
        let a = addr("198.18.0.5:4000");
        let t = joined(&mut m, a);
        // An older generation confirmed before.
        m.migrate(DEV, to(2, 2), 9_000, 0).unwrap();
        let c2 = Control::Confirm {
            generation: 2,
            shard: 2,
            tag: confirm_tag(&t, DEV, 2, 2),
        }
        .encode();
        m.control(DEV, a, c2.as_bytes(), 10, None);
        m.migrate(DEV, to(3, 4), 9_000, 20).unwrap();
        let forged = Token::random().unwrap();
        let cases: [(SocketAddr, Vec<u8>, Refusal); 5] = [
            (
                a,
                Control::Confirm {
                    generation: 3,
                    shard: 4,
                    tag: confirm_tag(&forged, DEV, 3, 4),
                }
                .encode()
                .into_bytes(),
                Refusal::BadMac,
            ),
            (a, c2.clone().into_bytes(), Refusal::Replayed),
            (
                addr("198.18.0.9:4000"),
                Control::Confirm {
                    generation: 3,
                    shard: 4,
                    tag: confirm_tag(&t, DEV, 3, 4),
                }
                .encode()
                .into_bytes(),
                Refusal::WrongSource,
            ),
            (a, b"confirm 3 4".to_vec(), Refusal::Malformed),
            (
                a,
                Control::Confirm {
                    generation: 3,
                    shard: 5,
                    tag: confirm_tag(&t, DEV, 3, 5),
                }
                .encode()
                .into_bytes(),
                Refusal::NotMigrating,
            ),
        ];
        for (i, (from, payload, reason)) in cases.iter().enumerate() {
            let out = m.control(DEV, *from, payload, 30, None);
            assert_eq!(sends(&out), [&Control::Refused(*reason)], "case {i}");
            assert_eq!(m.pending(), 1, "case {i} changed the migration");
            assert_eq!(m.member(DEV).unwrap().confirmed_generation, 2);
            assert!(!out.iter().any(|o| matches!(o, Out::Persist(..))));
        }
        let counts = m.refusals();
        assert_eq!(counts.iter().sum::<u64>(), 5);
        // Another host cannot take the device's token while it is valid.
        let out = m.control(DEV, addr("198.18.0.9:4000"), b"hello", 40, None);
        assert_eq!(sends(&out), [&Control::Refused(Refusal::TokenHeld)]);
        assert_eq!(m.member(DEV).unwrap().token, t);
        // The deadline passes: timed out, and the device stays a member.
        let out = m.tick(9_000);
        assert_eq!(
            events(&out),
            [&Event::TimedOut {
                client: DEV.into(),
                generation: 3
            }]
        );
        // The token expires: out of the membership; a confirm now is refused.
        let out = m.tick(10_000);
        assert!(events(&out).contains(&&Event::Expired { client: DEV.into() }));
        assert!(out.contains(&Out::Persist(DEV.into(), None)));
        assert!(m.migrate(DEV, to(4, 1), 20_000, 10_001).is_err());
        let out = m.control(DEV, a, c2.as_bytes(), 10_002, None);
        assert_eq!(sends(&out), [&Control::Refused(Refusal::Expired)]);
        // Registering again issues a new token.
        let out = m.control(DEV, a, b"hello", 10_003, None);
        let [Control::Assign { token, .. }] = sends(&out)[..] else {
            panic!()
        };
        assert_ne!(*token, t);
    }

    #[test]
    fn tokens_renew_on_keep_alive_until_the_device_switches() {
        let mut m = Membership::new(cfg());
        let a = addr("[2001:db8::5]:4000");
        let t = joined(&mut m, a);
        // Early in its life: nothing.
        assert!(m.seen(DEV, a, 4_000).is_empty());
        // Past half: a renewal, persisted first, MAC'd by the current token.
        let out = m.seen(DEV, a, 6_000);
        assert!(matches!(out[0], Out::Persist(..)));
        let [
            Control::Renew {
                token: n,
                expires_ms,
                tag,
            },
        ] = sends(&out)[..]
        else {
            panic!("{out:?}")
        };
        assert!(control::check_renew(&t, DEV, n, *expires_ms, tag));
        assert_eq!(*expires_ms, 16_000);
        // Lost: re-sent with the same next token.
        let again = m.seen(DEV, a, 6_500);
        assert_eq!(sends(&again)[0], sends(&out)[0]);
        // Migrations still use the current token until the device answers.
        assert_eq!(m.member(DEV).unwrap().token, t);
        let renewed = Control::Renewed {
            expires_ms: 16_000,
            tag: renewed_tag(n, DEV, 16_000),
        }
        .encode();
        // A forged answer changes nothing.
        let bad = Control::Renewed {
            expires_ms: 16_000,
            tag: renewed_tag(&t, DEV, 16_000),
        }
        .encode();
        let out = m.control(DEV, a, bad.as_bytes(), 6_600, None);
        assert_eq!(sends(&out), [&Control::Refused(Refusal::BadMac)]);
        m.control(DEV, a, renewed.as_bytes(), 6_700, None);
        let rec = m.member(DEV).unwrap();
        assert_eq!((rec.token, rec.expires_ms, rec.next), (*n, 16_000, None));
        // Alive past the old expiry.
        assert!(m.tick(12_000).is_empty());
        assert!(m.member(DEV).is_some());
    }
}

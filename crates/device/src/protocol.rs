//! The device's side of the control protocol, without sockets: control
//! messages from the gateway in, [`Action`]s out.

use shardcast_gateway::control::{
    Assignment, Attributes, Control, Refusal, Token, check_migrate, check_renew, confirm_tag,
    renewed_tag,
};

/// What the device must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Join this shard's group (before anything is confirmed).
    Join(Assignment),
    /// Leave this shard's group.
    Leave(Assignment),
    /// Publish this on the control topic (QoS 1).
    Send(Control),
}

/// Counts, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub migrations: u64,
    pub renewals: u64,
    /// Commands whose MAC did not verify (ignored).
    pub forged: u64,
    pub refusals: u64,
    /// Publishes dropped as duplicates.
    pub duplicates: u64,
    pub delivered: u64,
    /// `hello`s sent and `assign`s received.
    pub hellos: u64,
    pub assigns: u64,
}

/// Where the device's token stands ([`Protocol::token_due`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDue {
    /// None held, or valid and not yet half way through its life.
    Fine,
    /// Past half its life with no `renew` come: the gateway renews a
    /// token when it hears from the device past that point, so the
    /// device must be heard (a keep-alive will do).
    Renew,
    /// Past its expiry: out of the membership; the token is dropped and
    /// the device must say `hello` again.
    Expired,
}

/// The protocol state of one device.
#[derive(Clone, Debug)]
pub struct Protocol {
    client: String,
    token: Option<(Token, u64)>,
    /// When the device first held its current token (unix ms, its own
    /// clock): the start of the life whose half [`TokenDue::Renew`] marks.
    token_since: Option<(Token, u64)>,
    current: Option<Assignment>,
    /// The group left once the gateway acknowledges the move.
    leaving: Option<Assignment>,
    pub stats: DeviceStats,
}

impl Protocol {
    pub fn new(client: &str) -> Protocol {
        Protocol {
            client: client.to_string(),
            token: None,
            token_since: None,
            current: None,
            leaving: None,
            stats: DeviceStats::default(),
        }
    }

    pub fn hello(attributes: Attributes) -> Control {
        Control::Hello(attributes)
    }

    /// Where the device listens now.
    pub fn assignment(&self) -> Option<Assignment> {
        self.current
    }

    /// The token's expiry (unix ms), once issued.
    pub fn token_expires(&self) -> Option<u64> {
        self.token.map(|t| t.1)
    }

    /// Where the token stands at `now_ms` (unix ms). Called on the
    /// device's every tick: a device that only sends keep-alives at half
    /// its keep-alive could otherwise let a token whose lifetime is near
    /// the keep-alive expire unrenewed, and the gateway then drops it
    /// from the membership while it still listens (a device in the lab
    /// missed the rest of a day so).
    pub fn token_due(&mut self, now_ms: u64) -> TokenDue {
        let Some((token, expires)) = self.token else {
            return TokenDue::Fine;
        };
        let since = match self.token_since {
            Some((t, at)) if t == token => at,
            _ => {
                self.token_since = Some((token, now_ms));
                now_ms
            }
        };
        if expires <= since {
            // Past its expiry when it came: this clock runs ahead of the
            // gateway's, and the expiry says nothing here (dropping the
            // token would only bring the same one back, again and
            // again). The gateway's refusals decide, as they do anyway.
            return TokenDue::Fine;
        }
        if now_ms >= expires {
            // Forgotten with its start: the same token handed back to the
            // `hello` that follows is held from then.
            self.token = None;
            self.token_since = None;
            return TokenDue::Expired;
        }
        if now_ms >= since + expires.saturating_sub(since) / 2 {
            TokenDue::Renew
        } else {
            TokenDue::Fine
        }
    }

    /// Handles a control message from the gateway.
    pub fn on_control(&mut self, c: Control, attributes: &Attributes) -> Vec<Action> {
        let mut out = Vec::new();
        match c {
            Control::Assign {
                token,
                expires_ms,
                to,
            } => {
                self.stats.assigns += 1;
                self.token = Some((token, expires_ms));
                if let Some(to) = to
                    && self.current != Some(to)
                {
                    out.push(Action::Join(to));
                    out.extend(self.current.replace(to).map(Action::Leave));
                    out.extend(self.leaving.take().map(Action::Leave));
                }
            }
            Control::Renew {
                token,
                expires_ms,
                tag,
            } => match self.token {
                Some((cur, _)) if cur == token => {
                    // Our answer was lost: again.
                    out.push(self.renewed(&token, expires_ms));
                }
                Some((cur, _)) if check_renew(&cur, &self.client, &token, expires_ms, &tag) => {
                    self.token = Some((token, expires_ms));
                    self.stats.renewals += 1;
                    out.push(self.renewed(&token, expires_ms));
                }
                _ => self.stats.forged += 1,
            },
            Control::Migrate {
                to,
                deadline_ms,
                tag,
            } => {
                let Some((token, _)) = self.token else {
                    self.stats.forged += 1;
                    return out;
                };
                if !check_migrate(&token, &self.client, &to, deadline_ms, &tag) {
                    self.stats.forged += 1;
                    return out;
                }
                if self.current != Some(to) {
                    // Make before break: join first, keep the old group
                    // until the gateway acknowledges the confirm.
                    out.push(Action::Join(to));
                    if let Some(stale) = self.leaving.take() {
                        out.push(Action::Leave(stale));
                    }
                    self.leaving = self.current.replace(to);
                    self.stats.migrations += 1;
                }
                out.push(Action::Send(Control::Confirm {
                    generation: to.generation,
                    shard: to.shard,
                    tag: confirm_tag(&token, &self.client, to.generation, to.shard),
                }));
            }
            Control::Ack { generation, shard } => {
                if self
                    .current
                    .is_some_and(|c| c.generation == generation && c.shard == shard)
                    && let Some(old) = self.leaving.take()
                    && Some(old) != self.current
                {
                    out.push(Action::Leave(old));
                }
            }
            Control::Refused(r) => {
                self.stats.refusals += 1;
                if r == Refusal::Expired {
                    // Out of the membership: register again.
                    self.token = None;
                    out.push(Action::Send(Protocol::hello(attributes.clone())));
                }
            }
            // Device-to-gateway messages: not for us.
            Control::Hello(_) | Control::Confirm { .. } | Control::Renewed { .. } => {}
        }
        out
    }

    fn renewed(&self, token: &Token, expires_ms: u64) -> Action {
        Action::Send(Control::Renewed {
            expires_ms,
            tag: renewed_tag(token, &self.client, expires_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcast_gateway::control::{migrate_tag, renew_tag};

    #[test]
    fn a_token_asks_to_be_renewed_past_half_its_life_and_is_dropped_at_expiry() {
        let a = Attributes::default();
        let mut p = Protocol::new("d");
        assert_eq!(p.token_due(0), TokenDue::Fine);
        let t = Token([1; 16]);
        p.on_control(
            Control::Assign {
                token: t,
                expires_ms: 21_000,
                to: None,
            },
            &a,
        );
        // Held from 1,000 ms: half its life at 11,000.
        assert_eq!(p.token_due(1_000), TokenDue::Fine);
        assert_eq!(p.token_due(10_999), TokenDue::Fine);
        assert_eq!(p.token_due(11_000), TokenDue::Renew);
        // Renewed at 12,000 until 32,000: half way at 22,000.
        let n = Token([2; 16]);
        p.on_control(
            Control::Renew {
                token: n,
                expires_ms: 32_000,
                tag: renew_tag(&t, "d", &n, 32_000),
            },
            &a,
        );
        assert_eq!(p.token_due(12_000), TokenDue::Fine);
        assert_eq!(p.token_due(21_999), TokenDue::Fine);
        assert_eq!(p.token_due(22_000), TokenDue::Renew);
        assert_eq!(p.token_due(32_000), TokenDue::Expired);
        assert_eq!(p.token_expires(), None, "dropped: the device says hello");
        assert_eq!(p.token_due(32_001), TokenDue::Fine);
        // A clock ahead of the gateway's: the token handed back to that
        // hello (still valid there) looks expired here. Kept, not
        // dropped again and again: no hello loop.
        p.on_control(
            Control::Assign {
                token: n,
                expires_ms: 32_000,
                to: None,
            },
            &a,
        );
        for now in [33_000, 40_000, 90_000] {
            assert_eq!(p.token_due(now), TokenDue::Fine);
            assert_eq!(p.token_expires(), Some(32_000));
        }
    }

    fn to(generation: u64, shard: u32) -> Assignment {
        Assignment {
            generation,
            shard,
            group: format!("239.1.0.{shard}").parse().unwrap(),
            port: 1883,
        }
    }

    #[test]
    fn joins_before_confirming_and_leaves_after_the_ack() {
        let t = Token([3; 16]);
        let a = Attributes::default();
        let mut p = Protocol::new("d");
        let out = p.on_control(
            Control::Assign {
                token: t,
                expires_ms: 100,
                to: Some(to(1, 1)),
            },
            &a,
        );
        assert_eq!(out, [Action::Join(to(1, 1))]);
        let cmd = Control::Migrate {
            to: to(2, 5),
            deadline_ms: 9,
            tag: migrate_tag(&t, "d", &to(2, 5), 9),
        };
        let out = p.on_control(cmd.clone(), &a);
        assert_eq!(out[0], Action::Join(to(2, 5)));
        assert!(matches!(
            &out[1],
            Action::Send(Control::Confirm {
                generation: 2,
                shard: 5,
                ..
            })
        ));
        // The command again (our confirm lost): confirm again, no new join.
        let out = p.on_control(cmd, &a);
        assert!(matches!(&out[..], [Action::Send(Control::Confirm { .. })]));
        let out = p.on_control(
            Control::Ack {
                generation: 2,
                shard: 5,
            },
            &a,
        );
        assert_eq!(out, [Action::Leave(to(1, 1))]);
        assert_eq!(p.stats.migrations, 1);
        // A forged command (another key) moves nothing.
        let forged = Control::Migrate {
            to: to(3, 6),
            deadline_ms: 9,
            tag: migrate_tag(&Token([4; 16]), "d", &to(3, 6), 9),
        };
        assert!(p.on_control(forged, &a).is_empty());
        assert_eq!((p.stats.forged, p.assignment()), (1, Some(to(2, 5))));
        // Renewal: verified with the current token, answered with the new.
        let n = Token([5; 16]);
        let out = p.on_control(
            Control::Renew {
                token: n,
                expires_ms: 200,
                tag: renew_tag(&t, "d", &n, 200),
            },
            &a,
        );
        assert!(matches!(
            &out[..],
            [Action::Send(Control::Renewed {
                expires_ms: 200,
                ..
            })]
        ));
        assert_eq!(p.token_expires(), Some(200));
        // Expired: hello again.
        let out = p.on_control(Control::Refused(Refusal::Expired), &a);
        assert!(matches!(&out[..], [Action::Send(Control::Hello(_))]));
    }
}

//! A migration in the daemon: a new plan that moves devices is installed
//! make-before-break. First the transition (the new plan, with every
//! topic also routed to the shards moving devices leave: see
//! `shardcast_plan::transition`), then migrate commands to a batch of
//! devices through the gateway; as the batch resolves (each device
//! confirmed, timed out, or unreachable) the transition is installed again
//! without the shards nobody is leaving any more, and the next batch
//! starts; with every move resolved the new plan itself is installed. All
//! installs are of the new plan's generation: the data plane's generation
//! is the plan's, and the transition is its first form.

use std::{
    collections::{HashMap, VecDeque},
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use shardcast_gateway::{membership::Event, service::MigrateCommand};
use shardcast_plan::{
    Plan,
    transition::{Move, TransitionError, joins, moves, transition},
};

/// Counts, for the log and `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationStats {
    pub moves: usize,
    pub commanded: usize,
    pub confirmed: usize,
    pub timed_out: usize,
    pub unreachable: usize,
}

/// One plan's migration in progress.
pub struct Migration {
    old: Plan,
    new: Plan,
    waiting: VecDeque<Move>,
    inflight: HashMap<String, Move>,
    pub stats: MigrationStats,
    pub started: Instant,
}

impl Migration {
    /// The migration from `old` to `new`, if `new` moves any device.
    pub fn new(old: &Plan, new: &Plan) -> Result<Option<Migration>, TransitionError> {
        // Devices placed for the first time are told their shard the same
        // way (a migrate command to it, confirmed).
        let mut m = moves(old, new);
        m.extend(joins(old, new));
        if m.is_empty() {
            return Ok(None);
        }
        // Fails here, before anything is installed, if no transition can
        // carry every move at once.
        transition(old, new, &m)?;
        Ok(Some(Migration {
            old: old.clone(),
            new: new.clone(),
            stats: MigrationStats {
                moves: m.len(),
                ..Default::default()
            },
            waiting: m.into(),
            inflight: HashMap::new(),
            started: Instant::now(),
        }))
    }

    pub fn generation(&self) -> u64 {
        self.new.generation
    }

    /// What to install now: the transition for every move not yet
    /// resolved (the new plan once none is left).
    pub fn installable(&self) -> Plan {
        let unresolved: Vec<Move> = self
            .waiting
            .iter()
            .chain(self.inflight.values())
            .cloned()
            .collect();
        transition(&self.old, &self.new, &unresolved)
            .expect("a subset of moves whose transition was checked")
    }

    /// Commands for the next `batch` moves, due by `deadline_ms`; shards
    /// without a port of their own keep `default_port` (the data plane's
    /// MQTT-SN port: publishes keep theirs).
    pub fn next_batch(
        &mut self,
        batch: usize,
        deadline_ms: u64,
        default_port: u16,
    ) -> Vec<MigrateCommand> {
        let shards: HashMap<u32, &shardcast_plan::ShardSpec> =
            self.new.shards.iter().map(|s| (s.id, s)).collect();
        let mut out = Vec::new();
        while out.len() < batch.max(1) {
            let Some(m) = self.waiting.pop_front() else {
                break;
            };
            let s = shards[&m.to];
            out.push(MigrateCommand {
                client: m.device.clone(),
                generation: self.new.generation,
                shard: m.to,
                group_v4: s
                    .group_v4
                    .as_deref()
                    .and_then(|g| g.parse::<Ipv4Addr>().ok()),
                group_v6: s
                    .group_v6
                    .as_deref()
                    .and_then(|g| g.parse::<Ipv6Addr>().ok()),
                port: s.port.filter(|&p| p != 0).unwrap_or(default_port),
                deadline_ms,
            });
            self.inflight.insert(m.device.clone(), m);
        }
        self.stats.commanded += out.len();
        out
    }

    /// Accounts for a membership event; true if it resolved a move.
    pub fn event(&mut self, e: &Event) -> bool {
        let (client, resolved) = match e {
            Event::Confirmed {
                client,
                generation,
                shard,
            } if *generation == self.new.generation
                && self.inflight.get(client).is_some_and(|m| m.to == *shard) =>
            {
                (client, &mut self.stats.confirmed)
            }
            Event::TimedOut { client, generation } if *generation == self.new.generation => {
                (client, &mut self.stats.timed_out)
            }
            Event::Unreachable { client, generation } if *generation == self.new.generation => {
                (client, &mut self.stats.unreachable)
            }
            // A device that lost its token is out of the membership: its
            // move is over.
            Event::Expired { client } => (client, &mut self.stats.unreachable),
            _ => return false,
        };
        if self.inflight.remove(client).is_some() {
            *resolved += 1;
            true
        } else {
            false
        }
    }

    /// Counts every commanded move not yet resolved as timed out (the
    /// gateway never answered).
    pub fn give_up_batch(&mut self) {
        self.stats.timed_out += self.inflight.len();
        self.inflight.clear();
    }

    /// Every commanded move resolved.
    pub fn batch_done(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Every move resolved.
    pub fn done(&self) -> bool {
        self.inflight.is_empty() && self.waiting.is_empty()
    }
}

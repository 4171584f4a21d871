//! The MQTT-SN gateway as the daemon and `router-ctl gateway` run it: the
//! state machine of `shardcast-gateway` on a socket, its device registry
//! restored and kept, the installed plan's predefined and registered ids,
//! and accepted publishes sent to the plan's shard groups.

use std::{
    cell::RefCell, collections::BTreeMap, future::Future, net::SocketAddr, path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};
use shardcast_gateway::{
    coap::CoapGateway,
    control::{Assignment, Refusal},
    membership::{Event, MemberUpdate, Membership, MembershipConfig},
    registry::Registry,
    service::{self, Accepted, Hooks, MigrateCommand},
    session::{Config, Gateway, SessionRecord},
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::state;

/// Where and how to run the gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayOptions {
    pub listen: SocketAddr,
    pub gw_id: u8,
    /// The device registry file.
    pub registry: PathBuf,
    /// Where the installed plan's copy is (`router-ctl --state-dir`).
    pub state_dir: PathBuf,
    /// How long a migration token is valid (renewed past half).
    pub token_lifetime: Duration,
    /// How long an unconfirmed migrate command waits before it is re-sent.
    pub migrate_retry: Duration,
    /// What the gateway's egress takes, datagrams/s: its sends (relayed
    /// copies, commands) are paced to it, in chunks no larger than it
    /// drains within the batch latency target.
    pub send_rate: f64,
    /// Where the gateway receives the publishes it relays to its own
    /// subscribers (standard clients), if anywhere.
    pub relay: Option<RelayOptions>,
    /// Serve CoAP here too (Observe, CON PUT/POST, discovery).
    pub coap_listen: Option<SocketAddr>,
    /// The data plane's CoAP topic prefix and port.
    pub coap_prefix: String,
    pub coap_port: u16,
}

/// The relay: the data plane copies every topic a gateway subscriber
/// follows to one more shard, `shard`, whose groups are `group` (IPv4)
/// and `group_v6` out of `egress`, a veth whose peer `iface` the gateway
/// listens on (in the router's namespace): the gateway receives the
/// topics' traffic as any shard member does, whichever family a publish
/// came in by (the data plane keeps it), and sends each subscriber its
/// copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayOptions {
    pub egress: String,
    pub iface: String,
    pub group: std::net::Ipv4Addr,
    pub group_v6: std::net::Ipv6Addr,
    pub shard: u32,
}

impl RelayOptions {
    pub const DEFAULT_GROUP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(239, 255, 77, 1);
    /// Transient, site-local scope ("sc" in the low bits).
    pub const DEFAULT_GROUP_V6: std::net::Ipv6Addr =
        std::net::Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0x7363, 1);
    pub const DEFAULT_SHARD: u32 = 4095;

    /// The relay's shard in a plan.
    pub fn shard_spec(&self) -> shardcast_plan::ShardSpec {
        shardcast_plan::ShardSpec {
            id: self.shard,
            group_v4: Some(self.group.to_string()),
            group_v6: Some(self.group_v6.to_string()),
            egress: self.egress.clone(),
            port: None,
            capacity: None,
            class: None,
        }
    }
}

impl GatewayOptions {
    pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
    pub const DEFAULT_MIGRATE_RETRY: Duration = Duration::from_secs(1);
}

/// The daemon's lines to a running gateway: migrate commands in, the
/// membership's events (confirms, time-outs) out.
#[derive(Default)]
pub struct Links {
    pub commands: Option<UnboundedReceiver<MigrateCommand>>,
    pub events: Option<UnboundedSender<Event>>,
    /// Topic ids the gateway assigned (those restored at start first), for
    /// the data plane's `mqttsn_registered_ids`.
    pub registered: Option<UnboundedSender<(String, u16)>>,
    /// The topic filters the gateway's subscribers hold (all of them, on
    /// every change), for the relay's routes.
    pub filters: Option<UnboundedSender<std::collections::BTreeSet<String>>>,
    /// The shard-aware devices as the planner sees them (every member at
    /// start, then each change), for the control cycle's workload.
    pub devices: Option<UnboundedSender<crate::devices::DeviceUpdate>>,
    /// Latency probes arriving through the relay, with their arrival time
    /// (unix ns), for the daemon's metrics.
    pub probes: Option<UnboundedSender<(shardcast_gateway::probe::Probe, u64)>>,
}

/// How stale the gateway's view of the installed plan may be.
const PLAN_CHECK: Duration = Duration::from_millis(100);

/// The gateway's sockets' receive buffers: 8 MiB, ~10,000 small
/// datagrams of burst.
const RECV_BUFFER: usize = 8 << 20;

/// Serves until `shutdown` completes.
pub async fn serve(
    opts: GatewayOptions,
    links: Links,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // Predefined ids and the ids registered before come from the installed
    // plan's copy, when there is one.
    let plan = state::load_installed_plan(&opts.state_dir);
    let mut predefined = BTreeMap::new();
    let mut registered = Vec::new();
    for t in plan.iter().flat_map(|p| &p.topics) {
        if let Some(id) = t.mqttsn_predefined_id {
            predefined.insert(id, t.name.clone());
        }
        for &id in &t.mqttsn_registered_ids {
            registered.push((t.name.clone(), id));
        }
    }
    let mut gw = Gateway::new(Config {
        gw_id: opts.gw_id,
        predefined,
    });
    for (name, id) in registered {
        gw.restore_topic(&name, id);
    }
    if let Some(dir) = opts.registry.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let registry = Registry::open(&opts.registry)?;
    let restored = registry.restore()?;
    for (name, id) in &restored.topic_ids {
        gw.restore_topic(name, *id);
        if let Some(tx) = &links.registered {
            let _ = tx.send((name.clone(), *id));
        }
    }
    for (session, _) in &restored.sessions {
        gw.restore_session(session);
    }
    let mut members = Membership::new(MembershipConfig {
        token_lifetime_ms: opts.token_lifetime.as_millis() as u64,
        retry_ms: opts.migrate_retry.as_millis() as u64,
    });
    let restored_members = restored.members.len();
    let book = RefCell::new(crate::devices::DeviceBook::default());
    for (session, _) in &restored.sessions {
        book.borrow_mut().session(session);
    }
    for m in restored.members {
        book.borrow_mut().member(&m.client.clone(), Some(&m));
        members.restore(m);
    }
    let devices_tx = links.devices;
    if let Some(tx) = &devices_tx {
        for u in book.borrow().all() {
            let _ = tx.send(u);
        }
    }
    tracing::info!(
        registry = %opts.registry.display(),
        topic_ids = restored.topic_ids.len(),
        sessions = restored.sessions.len(),
        members = restored_members,
        "device registry restored"
    );
    let sock = tokio::net::UdpSocket::bind(opts.listen)
        .await
        .with_context(|| format!("gateway: binding {}", opts.listen))?;
    shardcast_gateway::batch::deepen(&sock, RECV_BUFFER);
    tracing::info!(listen = %opts.listen, "MQTT-SN gateway");
    let relay = match &opts.relay {
        None => None,
        Some(r) => {
            let idx = shardcast_dataplane::ifindex(&r.iface)
                .with_context(|| format!("gateway.relay_iface {}", r.iface))?;
            let s = shardcast_device::client::group_socket(
                std::net::IpAddr::V4(r.group),
                opts.listen.port(),
                idx,
            )
            .with_context(|| format!("joining the relay group {} on {}", r.group, r.iface))?;
            shardcast_gateway::batch::deepen(&s, RECV_BUFFER);
            tracing::info!(group = %r.group, iface = r.iface, shard = r.shard, "relay");
            Some(s)
        }
    };
    // The IPv6 group: publishes that came in over IPv6 are copied to it.
    let relay_v6 = match &opts.relay {
        None => None,
        Some(r) => {
            let s = shardcast_device::client::group_socket(
                std::net::IpAddr::V6(r.group_v6),
                opts.listen.port(),
                shardcast_dataplane::ifindex(&r.iface)?,
            )
            .with_context(|| {
                format!(
                    "joining the relay group {} on {} (IPv6 on the interface?)",
                    r.group_v6, r.iface
                )
            })?;
            shardcast_gateway::batch::deepen(&s, RECV_BUFFER);
            Some(s)
        }
    };
    let (relay_coap, relay_coap_v6) = match (&opts.relay, opts.coap_listen) {
        (Some(r), Some(_)) if opts.coap_port != 0 => {
            let idx = shardcast_dataplane::ifindex(&r.iface)?;
            let join = |g: std::net::IpAddr| {
                shardcast_device::client::group_socket(g, opts.coap_port, idx)
                    .with_context(|| format!("joining the relay group {g} (CoAP) on {}", r.iface))
            };
            (
                Some(join(std::net::IpAddr::V4(r.group))?),
                Some(join(std::net::IpAddr::V6(r.group_v6))?),
            )
        }
        _ => (None, None),
    };
    let coap = match opts.coap_listen {
        None => None,
        Some(addr) => {
            let s = tokio::net::UdpSocket::bind(addr)
                .await
                .with_context(|| format!("gateway: binding CoAP {addr}"))?;
            let topics = plan.iter().flat_map(|p| {
                p.topics
                    .iter()
                    .filter(|t| !t.name.starts_with('$'))
                    .map(|t| t.name.clone())
            });
            tracing::info!(listen = %addr, "CoAP gateway");
            Some((s, CoapGateway::new(&opts.coap_prefix, topics)))
        }
    };
    let groups = RefCell::new(ShardSender::new(
        opts.state_dir.clone(),
        opts.listen.port(),
        opts.relay.as_ref().map(|r| r.shard),
    ));
    let mut on_publish = |p: &Accepted| {
        let sent = groups.borrow_mut().send(p);
        tracing::debug!(topic = p.topic, bytes = p.data.len(), sent, "publish");
    };
    let mut placement = |client: &str, v6: bool| groups.borrow_mut().placement(client, v6);
    let mut coap_topics = || groups.borrow_mut().topics_if_changed();
    let registered = links.registered;
    let mut on_register = |topic: &str, id: u16| {
        tracing::info!(topic, id, "topic id assigned");
        if let Err(e) = registry.put_topic_id(topic, id) {
            tracing::error!("{e}");
        }
        if let Some(tx) = &registered {
            let _ = tx.send((topic.to_string(), id));
        }
    };
    // Each session's filters, while it is connected or asleep (its
    // subscriptions then need the relay's copies).
    let filters: RefCell<std::collections::HashMap<String, Vec<String>>> = Default::default();
    let observed: RefCell<std::collections::BTreeSet<String>> = Default::default();
    let filters_tx = links.filters;
    // Shard-aware devices' filters say what they follow; their group
    // carries it, not the relay.
    let send_filters = || {
        if let Some(tx) = &filters_tx {
            let book = book.borrow();
            let mut all: std::collections::BTreeSet<String> = filters
                .borrow()
                .iter()
                .filter(|(c, _)| !book.is_member(c))
                .flat_map(|(_, f)| f.iter().cloned())
                .collect();
            all.extend(observed.borrow().iter().cloned());
            let _ = tx.send(all);
        }
    };
    // What the restored persistent sessions follow, reported at once: the
    // relay's routes for them stay while they are away.
    for (session, _) in &restored.sessions {
        if session.persistent {
            filters
                .borrow_mut()
                .insert(session.client_id.clone(), session.subscriptions.clone());
        }
    }
    send_filters();
    let mut on_observed = |topics: &std::collections::BTreeSet<String>| {
        *observed.borrow_mut() = topics.clone();
        send_filters();
    };
    let mut on_sessions = |records: &[SessionRecord]| {
        let mut changed = false;
        for r in records {
            use shardcast_gateway::session::Status;
            // A persistent session's subscriptions outlive its connection
            // (its messages wait for it): its topics keep the relay.
            let now = match r.status {
                Status::Active | Status::Asleep => Some(&r.subscriptions),
                Status::Disconnected | Status::Lost if r.persistent => Some(&r.subscriptions),
                Status::Disconnected | Status::Lost => None,
            };
            let mut filters = filters.borrow_mut();
            let was = filters.get(&r.client_id);
            if was != now {
                changed = true;
                match now {
                    Some(f) => filters.insert(r.client_id.clone(), f.clone()),
                    None => filters.remove(&r.client_id),
                };
            }
        }
        for r in records {
            if let Some(u) = book.borrow_mut().session(r)
                && let Some(tx) = &devices_tx
            {
                let _ = tx.send(u);
            }
        }
        if changed {
            send_filters();
        }
        let now = shardcast_gateway::control::unix_ms();
        let rows: Vec<(SessionRecord, u64)> = records.iter().map(|r| (r.clone(), now)).collect();
        match registry.put_sessions(&rows) {
            // Logged once committed: what a crash can no longer lose.
            Ok(()) => {
                for r in records {
                    tracing::info!(
                        client = r.client_id,
                        status = r.status.label(),
                        subscriptions = r.subscriptions.len(),
                        "session"
                    );
                }
            }
            Err(e) => tracing::error!("{e}"),
        }
    };
    let mut on_members = |records: &[MemberUpdate]| {
        if let Err(e) = registry.put_members(records) {
            // Not committed: the tokens must not leave. The membership
            // still holds them; the devices ask again.
            tracing::error!("{e}");
        }
        let mut joined_or_left = false;
        for (client, r) in records {
            joined_or_left |= book.borrow().is_member(client) != r.is_some();
            if let Some(u) = book.borrow_mut().member(client, r.as_ref())
                && let Some(tx) = &devices_tx
            {
                let _ = tx.send(u);
            }
        }
        if joined_or_left {
            send_filters();
        }
    };
    let events = links.events;
    let mut on_event = |e: &Event| {
        match e {
            Event::Refused { client, reason } => {
                tracing::info!(client, reason = reason.label(), "control message refused")
            }
            Event::TimedOut { client, generation } => {
                tracing::warn!(
                    client,
                    generation,
                    "migration not confirmed by its deadline"
                )
            }
            Event::Expired { client } => tracing::info!(client, "token expired: out of its shard"),
            Event::Unreachable { client, generation } => {
                tracing::warn!(client, generation, "migrate command not sent: not a member")
            }
            Event::Joined { client } => tracing::debug!(client, "member"),
            Event::Confirmed {
                client,
                generation,
                shard,
            } => tracing::debug!(client, generation, shard, "migration confirmed"),
        }
        if let Some(tx) = &events {
            let _ = tx.send(e.clone());
        }
    };
    let (_, members, stats) = service::serve(
        sock,
        gw,
        members,
        Hooks {
            on_publish: &mut on_publish,
            on_register: &mut on_register,
            on_sessions: &mut on_sessions,
            on_members: &mut on_members,
            on_event: &mut on_event,
            placement: &mut placement,
            on_observed: &mut on_observed,
            coap_topics: &mut coap_topics,
        },
        links.commands,
        service::Extra {
            relay,
            relay_v6,
            relay_coap,
            relay_coap_v6,
            coap,
            probes: links.probes,
            send_rate: Some(opts.send_rate),
        },
        shutdown,
    )
    .await?;
    let refused: Vec<String> = Refusal::ALL
        .iter()
        .zip(members.refusals())
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{}={n}", r.label()))
        .collect();
    tracing::info!(?stats, refused = refused.join(" "), "gateway stopped");
    Ok(())
}

/// Sends the publishes the gateway accepts to the shard groups the
/// installed plan routes their topic to (as the data plane sends QoS 0
/// publishes): a QoS 0 PUBLISH named as the topic is on the wire (short
/// name, predefined or registered id), out of each shard's egress, to its
/// group and port (or the gateway's port, as the data plane keeps the
/// publish's). The plan's copy is re-read when it changes.
struct ShardSender {
    state_dir: std::path::PathBuf,
    port: u16,
    /// The relay's shard: the gateway's own subscribers get its accepted
    /// publishes directly, not through the relay.
    relay: Option<u32>,
    plan: Option<(std::time::SystemTime, shardcast_plan::Plan)>,
    /// Device id → index of its shard in the plan.
    devices: std::collections::HashMap<String, usize>,
    /// Topic name → index in the plan.
    topics: std::collections::HashMap<String, usize>,
    /// When the plan's copy was last looked at.
    checked: Option<std::time::Instant>,
    /// The plan's mtime when its topics were last handed out.
    topics_seen: Option<std::time::SystemTime>,
    /// (egress, v6) → socket.
    sockets: std::collections::HashMap<(String, bool), std::net::UdpSocket>,
}

impl ShardSender {
    fn new(state_dir: std::path::PathBuf, port: u16, relay: Option<u32>) -> Self {
        ShardSender {
            state_dir,
            port,
            relay,
            plan: None,
            devices: Default::default(),
            topics: Default::default(),
            checked: None,
            topics_seen: None,
            sockets: Default::default(),
        }
    }

    /// The installed plan's topics, if the plan changed since the last
    /// call.
    fn topics_if_changed(&mut self) -> Option<Vec<String>> {
        self.refresh();
        let (mtime, plan) = self.plan.as_ref()?;
        if self.topics_seen == Some(*mtime) {
            return None;
        }
        self.topics_seen = Some(*mtime);
        // `$`-names are the router's own (the latency probes' topics).
        Some(
            plan.topics
                .iter()
                .filter(|t| !t.name.starts_with('$'))
                .map(|t| t.name.clone())
                .collect(),
        )
    }

    /// Where the installed plan places `client`: its shard's group of the
    /// family given.
    fn placement(&mut self, client: &str, v6: bool) -> Option<Assignment> {
        self.refresh();
        let (_, plan) = self.plan.as_ref()?;
        let &shard = self.devices.get(client)?;
        let s = &plan.shards[shard];
        let group = if v6 { &s.group_v6 } else { &s.group_v4 };
        Some(Assignment {
            generation: plan.generation,
            shard: s.id,
            group: group.as_deref()?.parse().ok()?,
            port: s.port.filter(|&p| p != 0).unwrap_or(self.port),
        })
    }

    fn refresh(&mut self) {
        // At most one stat per 100 ms while a plan is loaded: this runs for
        // every publish the gateway routes and every hello it answers.
        let now = std::time::Instant::now();
        if self.plan.is_some()
            && self
                .checked
                .is_some_and(|t| now.duration_since(t) < PLAN_CHECK)
        {
            return;
        }
        self.checked = Some(now);
        let file = state::plan_file(&self.state_dir);
        let Ok(mtime) = std::fs::metadata(&file).and_then(|m| m.modified()) else {
            self.plan = None;
            return;
        };
        if self.plan.as_ref().is_some_and(|(t, _)| *t == mtime) {
            return;
        }
        self.plan = state::load_installed_plan(&self.state_dir).map(|p| (mtime, p));
        self.devices.clear();
        self.topics = self.plan.as_ref().map_or_else(Default::default, |(_, p)| {
            p.topics
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect()
        });
        if let Some((_, p)) = &self.plan {
            let index: std::collections::HashMap<u32, usize> = p
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| (s.id, i))
                .collect();
            for d in &p.devices {
                if let Some(&i) = index.get(&d.shard) {
                    self.devices.insert(d.id.clone(), i);
                }
            }
        }
    }

    /// Returns the copies sent: one per shard, to its group of the family
    /// the publish came in by (as the data plane does); a will (no
    /// origin) to the IPv4 group, else the IPv6 one.
    fn send(&mut self, p: &Accepted) -> usize {
        let Accepted {
            topic,
            data,
            id_type,
            id,
            origin_v6: v6,
        } = *p;
        use shardcast_gateway::mqttsn::{Flags, Message, encode};
        self.refresh();
        let Some((_, plan)) = &self.plan else {
            return 0;
        };
        let Some(route) = self.topics.get(topic).map(|&i| &plan.topics[i]) else {
            return 0;
        };
        let Ok(datagram) = encode(&Message::Publish {
            flags: Flags {
                topic_id_type: id_type,
                ..Flags::NONE
            },
            topic_id: id,
            msg_id: 0,
            data: data.to_vec(),
        }) else {
            return 0;
        };
        let mut sent = 0;
        for shard in plan
            .shards
            .iter()
            .filter(|s| route.shards.contains(&s.id) && Some(s.id) != self.relay)
        {
            let port = shard.port.filter(|&p| p != 0).unwrap_or(self.port);
            let family_v6 = match v6 {
                Some(v6) => v6,
                None => shard.group_v4.is_none(),
            };
            let group = if family_v6 {
                &shard.group_v6
            } else {
                &shard.group_v4
            };
            // One pass: the shard's group of that family, if it has one.
            for (group, v6) in [(group, family_v6)] {
                let Some(group) = group
                    .as_deref()
                    .and_then(|g| g.parse::<std::net::IpAddr>().ok())
                else {
                    continue;
                };
                let key = (shard.egress.clone(), v6);
                if !self.sockets.contains_key(&key) {
                    match shardcast_dataplane::multicast_socket(&shard.egress, v6, 1) {
                        Ok(s) => {
                            self.sockets.insert(key.clone(), s);
                        }
                        Err(e) => {
                            tracing::warn!(egress = %shard.egress, "cannot send to shard {}: {e}", shard.id);
                            continue;
                        }
                    }
                }
                match self.sockets[&key].send_to(&datagram, (group, port)) {
                    Ok(_) => sent += 1,
                    Err(e) => tracing::warn!(%group, "send to shard {}: {e}", shard.id),
                }
            }
        }
        sent
    }
}

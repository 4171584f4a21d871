//! The MQTT-SN gateway as the daemon and `router-ctl gateway` run it: the
//! state machine of `shardcast-gateway` on a socket, its device registry
//! restored and kept, the installed plan's predefined and registered ids,
//! and accepted publishes sent to the plan's shard groups.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result};
use shardcast_gateway::{
    registry::Registry,
    service::{self, Accepted, Hooks},
    session::{Config, Gateway, SessionRecord},
};

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
}

/// Serves until `shutdown` completes.
pub async fn serve(opts: GatewayOptions, shutdown: impl Future<Output = ()>) -> Result<()> {
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
    }
    for (session, _) in &restored.sessions {
        gw.restore_session(session);
    }
    tracing::info!(
        registry = %opts.registry.display(),
        topic_ids = restored.topic_ids.len(),
        sessions = restored.sessions.len(),
        "device registry restored"
    );
    let sock = tokio::net::UdpSocket::bind(opts.listen)
        .await
        .with_context(|| format!("gateway: binding {}", opts.listen))?;
    tracing::info!(listen = %opts.listen, "MQTT-SN gateway");
    let mut groups = ShardSender::new(opts.state_dir.clone(), opts.listen.port());
    let mut on_publish = |p: &Accepted| {
        let sent = groups.send(p);
        tracing::debug!(topic = p.topic, bytes = p.data.len(), sent, "publish");
    };
    let mut on_register = |topic: &str, id: u16| {
        tracing::info!(topic, id, "topic id assigned");
        if let Err(e) = registry.put_topic_id(topic, id) {
            tracing::error!("{e}");
        }
    };
    let mut on_sessions = |records: &[SessionRecord]| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
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
    let (_, stats) = service::serve(
        sock,
        gw,
        Hooks {
            on_publish: &mut on_publish,
            on_register: &mut on_register,
            on_sessions: &mut on_sessions,
        },
        shutdown,
    )
    .await?;
    tracing::info!(?stats, "gateway stopped");
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
    plan: Option<(std::time::SystemTime, shardcast_plan::Plan)>,
    /// (egress, v6) → socket.
    sockets: std::collections::HashMap<(String, bool), std::net::UdpSocket>,
}

impl ShardSender {
    fn new(state_dir: std::path::PathBuf, port: u16) -> Self {
        ShardSender {
            state_dir,
            port,
            plan: None,
            sockets: Default::default(),
        }
    }

    fn refresh(&mut self) {
        let file = state::plan_file(&self.state_dir);
        let Ok(mtime) = std::fs::metadata(&file).and_then(|m| m.modified()) else {
            self.plan = None;
            return;
        };
        if self.plan.as_ref().is_some_and(|(t, _)| *t == mtime) {
            return;
        }
        self.plan = state::load_installed_plan(&self.state_dir).map(|p| (mtime, p));
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
        let Some(route) = plan.topics.iter().find(|t| t.name == topic) else {
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
        for shard in plan.shards.iter().filter(|s| route.shards.contains(&s.id)) {
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

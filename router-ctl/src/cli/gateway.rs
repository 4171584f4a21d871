//! `router-ctl gateway`: the MQTT-SN gateway on a UDP socket (the
//! messages the data plane passes up: CONNECT, REGISTER, SUBSCRIBE,
//! PINGREQ, QoS 1 and 2 publishes, ...). Runs until SIGINT or SIGTERM.

use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::{Context, Result};
use clap::Args;
use shardcast_gateway::{
    registry::Registry,
    service::{self, Hooks},
    session::{Config, Gateway, SessionRecord},
};

use super::Globals;
use crate::state;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Address and port to serve MQTT-SN on (the router's address and the
    /// data plane's MQTT-SN port, so clients need one address).
    #[arg(long, default_value = "0.0.0.0:1884")]
    pub listen: SocketAddr,
    /// The gateway id announced in GWINFO.
    #[arg(long, default_value_t = 1)]
    pub gw_id: u8,
    /// The device registry (default: `registry.redb` in the state dir):
    /// topic ids and sessions, restored at start.
    #[arg(long)]
    pub registry: Option<std::path::PathBuf>,
}

pub fn run(g: &Globals, a: GatewayArgs) -> Result<()> {
    // Predefined ids and the ids registered before come from the installed
    // plan's copy, when there is one.
    let plan = state::load_installed_plan(&g.state_dir);
    let mut predefined = BTreeMap::new();
    let mut gw_state = Vec::new();
    for t in plan.iter().flat_map(|p| &p.topics) {
        if let Some(id) = t.mqttsn_predefined_id {
            predefined.insert(id, t.name.clone());
        }
        for &id in &t.mqttsn_registered_ids {
            gw_state.push((t.name.clone(), id));
        }
    }
    let mut gw = Gateway::new(Config {
        gw_id: a.gw_id,
        predefined,
    });
    for (name, id) in gw_state {
        gw.restore_topic(&name, id);
    }
    let path = a
        .registry
        .clone()
        .unwrap_or_else(|| g.state_dir.join("registry.redb"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let registry = Registry::open(&path)?;
    let restored = registry.restore()?;
    for (name, id) in &restored.topic_ids {
        gw.restore_topic(name, *id);
    }
    for (session, _) in &restored.sessions {
        gw.restore_session(session);
    }
    tracing::info!(
        registry = %path.display(),
        topic_ids = restored.topic_ids.len(),
        sessions = restored.sessions.len(),
        "device registry restored"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sock = tokio::net::UdpSocket::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        tracing::info!(listen = %a.listen, "MQTT-SN gateway");
        let mut on_publish = |topic: &str, data: &[u8]| {
            tracing::debug!(topic, bytes = data.len(), "publish");
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
            let rows: Vec<(SessionRecord, u64)> =
                records.iter().map(|r| (r.clone(), now)).collect();
            if let Err(e) = registry.put_sessions(&rows) {
                tracing::error!("{e}");
            }
        };
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
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
    })
}

//! `router-ctl gateway`: the MQTT-SN gateway on a UDP socket (the
//! messages the data plane passes up: CONNECT, REGISTER, SUBSCRIBE,
//! PINGREQ, QoS 1 and 2 publishes, ...). Publishes it accepts go to its
//! own subscribers and to the shard groups of the installed plan. Runs
//! until SIGINT or SIGTERM. The daemon runs the same gateway with a
//! `[gateway]` section (docs/config.md).

use std::net::SocketAddr;

use anyhow::Result;
use clap::Args;

use super::Globals;
use crate::gateway::{GatewayOptions, serve};

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
    /// How long a device's migration token is valid (renewed on keep-alive
    /// past half its life).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub token_lifetime: std::time::Duration,
    /// Serve CoAP on this address and port too (Observe, CON PUT/POST,
    /// `/.well-known/core`).
    #[arg(long)]
    pub coap_listen: Option<SocketAddr>,
    /// The CoAP topic prefix (the data plane's).
    #[arg(long, default_value = "ps/data/")]
    pub coap_prefix: String,
}

pub fn run(g: &Globals, a: GatewayArgs) -> Result<()> {
    let opts = GatewayOptions {
        listen: a.listen,
        gw_id: a.gw_id,
        registry: a
            .registry
            .unwrap_or_else(|| g.state_dir.join("registry.redb")),
        state_dir: g.state_dir.clone(),
        token_lifetime: a.token_lifetime,
        migrate_retry: GatewayOptions::DEFAULT_MIGRATE_RETRY,
        send_rate: shardcast_gateway::batch::SEND_RATE,
        // The relay's routes are the daemon's to install.
        relay: None,
        coap_listen: a.coap_listen,
        coap_prefix: a.coap_prefix,
        coap_port: 0,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        serve(opts, Default::default(), shutdown).await
    })
}

//! A small routed network of namespaces with the real router in the middle,
//! shared by the netns integration tests and `cargo xtask demo`:
//!
//! ```text
//!  publisher ns            router ns                    lan ns              subscriber ns (×N)
//!  p0 198.18.1.2 ── veth ── r-in 198.18.1.1 [XDP router]
//!                           r-out 198.18.2.1 ── veth ── up0 [XDP pass] ┐
//!                                                       br0 (floods multicast) ── veth ── eth0 198.18.2.(10+k)
//! ```
//!
//! Devices publish to the router's address; the XDP program on `r-in`
//! rewrites each publish to its shard's group and redirects it out of
//! `r-out`; the bridge floods it to every subscriber, whose kernel delivers
//! it only to sockets that joined that group. The router namespace forwards
//! ordinary IP, so ping and unrelated UDP cross it through the stack.
//!
//! The router is driven through `router-ctl`'s own command-line entry
//! (`router_ctl::cli::run`), with its pins in a directory of this lab's own:
//! labs in parallel do not meet. Everything is removed on drop.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use router_ctl::cli::Cli;

use crate::{NetNs, unique};

pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const PUBLISHER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const PUBLISHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const MQTTSN_PORT: u16 = 1884;
pub const COAP_PORT: u16 = 5683;

/// Whether daemons' log lines are echoed to stderr (tests: yes; the demo
/// turns it off and reports from the daemon's files instead).
pub static ECHO_DAEMON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// A shard of the lab: its id and groups (both families).
#[derive(Clone, Debug)]
pub struct LabShard {
    pub id: u32,
    pub group_v4: Ipv4Addr,
    pub group_v6: Ipv6Addr,
}

impl LabShard {
    /// Shard `id` on 239.1.1.`id` and ff15::1:`id`.
    pub fn numbered(id: u32) -> LabShard {
        LabShard {
            id,
            group_v4: Ipv4Addr::new(239, 1, 1, id as u8),
            group_v6: Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 1, id as u16),
        }
    }
}

/// A subscriber namespace on the LAN.
pub struct Subscriber {
    pub ns: NetNs,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// The lab; see the module documentation.
pub struct Lab {
    pub publisher: NetNs,
    pub router: NetNs,
    pub lan: NetNs,
    pub subscribers: Vec<Subscriber>,
    pin_root: PathBuf,
    state_dir: PathBuf,
}

impl Lab {
    /// Builds the namespaces and links for `subscribers` subscribers. The
    /// router is not attached yet (see [`Lab::attach`]).
    pub fn new(subscribers: usize) -> Result<Lab> {
        let tag = unique("");
        let mut lab = Lab {
            publisher: NetNs::new("scpub")?,
            router: NetNs::new("scrtr")?,
            lan: NetNs::new("sclan")?,
            subscribers: Vec::new(),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/shardcast-lab{tag}")),
            state_dir: std::env::temp_dir().join(format!("shardcast-lab{tag}")),
        };
        let (p, r, l) = (&lab.publisher, &lab.router, &lab.lan);
        // publisher <-> router
        p.ip(&[
            "link", "add", "p0", "type", "veth", "peer", "name", "r-in", "netns", &r.name,
        ])?;
        p.ip(&["addr", "add", "198.18.1.2/24", "dev", "p0"])?;
        p.ip(&["addr", "add", "2001:db8:1::2/64", "dev", "p0", "nodad"])?;
        p.ip(&["link", "set", "p0", "up"])?;
        // Datagrams from a local socket leave with the UDP checksum only
        // started (CHECKSUM_PARTIAL), to be finished by the NIC; over a
        // veth with XDP that metadata is lost at the redirect. A device's
        // datagram arrives from the wire with its checksum complete: have
        // the publisher's kernel finish it, as a real device's NIC would.
        p.exec("ethtool", &["-K", "p0", "tx", "off"])?;
        p.ip(&["route", "add", "default", "via", "198.18.1.1"])?;
        p.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"])?;
        r.ip(&["addr", "add", "198.18.1.1/24", "dev", "r-in"])?;
        r.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "r-in", "nodad"])?;
        r.ip(&["link", "set", "r-in", "up"])?;
        // router <-> lan
        r.ip(&[
            "link", "add", "r-out", "type", "veth", "peer", "name", "up0", "netns", &l.name,
        ])?;
        r.ip(&["addr", "add", "198.18.2.1/24", "dev", "r-out"])?;
        r.ip(&["addr", "add", "2001:db8:2::1/64", "dev", "r-out", "nodad"])?;
        r.ip(&["link", "set", "r-out", "up"])?;
        r.sysctl("net.ipv4.ip_forward=1")?;
        r.sysctl("net.ipv6.conf.all.forwarding=1")?;
        // The bridge floods multicast to every port, as a switch without
        // snooping does: delivery is decided by the subscribers' joins.
        l.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        l.ip(&["link", "set", "br0", "up"])?;
        l.ip(&["link", "set", "up0", "master", "br0", "up"])?;
        for k in 0..subscribers {
            let ns = NetNs::new("scsub")?;
            let port = format!("s{k}");
            l.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ])?;
            l.ip(&["link", "set", &port, "master", "br0", "up"])?;
            let v4 = Ipv4Addr::new(198, 18, 2, 10 + k as u8);
            let v6 = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10 + k as u16);
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", "198.18.2.1"])?;
            ns.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])?;
            lab.subscribers.push(Subscriber { ns, v4, v6 });
        }
        // Resolve the publisher's next hop in both families before anyone
        // publishes: while a neighbour is unresolved the kernel queues only
        // a few datagrams and drops the rest, as it would on any network
        // coming up.
        for dst in ["198.18.1.1", "2001:db8:1::1"] {
            lab.publisher
                .exec("ping", &["-c", "1", "-w", "10", dst])
                .with_context(|| format!("publisher cannot reach the router at {dst}"))?;
        }
        Ok(lab)
    }

    /// Runs `router-ctl <args>` in-process (the binary's own entry point),
    /// with this lab's pin root and state directory.
    pub fn ctl(&self, args: &[&str]) -> Result<()> {
        let mut argv = vec![
            "router-ctl".to_string(),
            "--pin-root".into(),
            self.pin_root.display().to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let cli = Cli::try_parse_from(&argv).map_err(|e| anyhow!("{e}"))?;
        // `--netns` moves the calling thread: give it a thread of its own.
        std::thread::spawn(move || router_ctl::cli::run(cli))
            .join()
            .map_err(|_| anyhow!("router-ctl {} panicked", args.join(" ")))?
            .with_context(|| format!("router-ctl {}", args.join(" ")))
    }

    /// Attaches the router to `r-in` (egress `r-out`) and the pass program
    /// to `up0`, both in native (driver) mode.
    pub fn attach(&mut self) -> Result<()> {
        self.attach_egress(&["r-in"], &["r-out"])
    }

    /// Attaches the router on these ingress and egress interfaces, and the
    /// pass program on the LAN side of `r-out`.
    fn attach_egress(&mut self, ingress: &[&str], egress: &[&str]) -> Result<()> {
        let object = crate::object().display().to_string();
        let mut args = vec!["--netns", &self.router.name, "attach"];
        for i in ingress {
            args.extend(["--ingress", i]);
        }
        for e in egress {
            args.extend(["--egress", e]);
        }
        args.extend(["--mode", "driver", "--object", &object]);
        self.ctl(&args)?;
        self.ctl(&["--netns", &self.lan.name, "attach-pass", "--iface", "up0"])
    }

    /// Attaches like [`Lab::attach`], with one more egress for the
    /// gateway's relay: a veth pair `scgw0` (egress) / `scgw1` (where the
    /// gateway listens, with the pass program) inside the router
    /// namespace; and one more ingress for the daemon's latency probes: a
    /// veth pair `scpr0` (`probe.iface`) / `scpr1` (served by the router).
    pub fn attach_with_relay(&mut self) -> Result<()> {
        let r = &self.router;
        r.ip(&[
            "link", "add", "scgw0", "type", "veth", "peer", "name", "scgw1",
        ])?;
        r.ip(&["addr", "add", "198.18.3.1/24", "dev", "scgw0"])?;
        r.ip(&["addr", "add", "198.18.3.2/24", "dev", "scgw1"])?;
        r.ip(&["link", "set", "scgw0", "up"])?;
        r.ip(&["link", "set", "scgw1", "up"])?;
        // Copies arrive from the publisher's address on an interface that
        // is not its route: no reverse-path filter on the relay's side.
        r.sysctl("net.ipv4.conf.scgw1.rp_filter=0")?;
        r.sysctl("net.ipv4.conf.all.rp_filter=0")?;
        // The daemon's probes come back from the router's own address.
        r.sysctl("net.ipv4.conf.scgw1.accept_local=1")?;
        r.ip(&[
            "link", "add", "scpr0", "type", "veth", "peer", "name", "scpr1",
        ])?;
        r.ip(&["addr", "add", "198.18.4.1/24", "dev", "scpr0"])?;
        r.ip(&["link", "set", "scpr0", "up"])?;
        r.ip(&["link", "set", "scpr1", "up"])?;
        self.attach_egress(&["r-in", "scpr1"], &["r-out", "scgw0"])?;
        self.ctl(&[
            "--netns",
            &self.router.name,
            "attach-pass",
            "--iface",
            "scgw1",
        ])
    }

    /// A plan for `shards` (egress `r-out`) and `topics` (name → shard ids).
    pub fn plan_json(generation: u64, shards: &[LabShard], topics: &[(&str, &[u32])]) -> String {
        Self::plan_json_with_devices(generation, shards, topics, &[])
    }

    /// [`Lab::plan_json`] placing devices (id → shard id).
    pub fn plan_json_with_devices(
        generation: u64,
        shards: &[LabShard],
        topics: &[(&str, &[u32])],
        devices: &[(String, u32)],
    ) -> String {
        let shards: Vec<_> = shards
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id,
                    "group_v4": s.group_v4.to_string(),
                    "group_v6": s.group_v6.to_string(),
                    "egress": "r-out",
                })
            })
            .collect();
        let topics: Vec<_> = topics
            .iter()
            .map(|(name, shards)| serde_json::json!({"name": name, "shards": shards}))
            .collect();
        let devices: Vec<_> = devices
            .iter()
            .map(|(id, shard)| serde_json::json!({"id": id, "shard": shard}))
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "generation": generation,
            "shards": shards,
            "topics": topics,
            "devices": devices,
        }))
        .expect("serialising a plan")
    }

    /// Writes `plan` to this lab's state directory and applies it.
    pub fn apply(&self, plan: &str) -> Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        let path = self.state_dir.join("next-plan.json");
        std::fs::write(&path, plan)?;
        self.ctl(&[
            "--netns",
            &self.router.name,
            "apply",
            &path.display().to_string(),
        ])
    }

    /// The router's counters, as `router-ctl stats --json` prints them.
    pub fn counters(&self) -> Result<shardcast_dataplane::Counters> {
        let dp = shardcast_dataplane::Dataplane::open(&self.pin_root)?;
        Ok(dp.counters()?)
    }

    /// Gives the publisher namespace another address, `198.18.1.(10+n)` /
    /// `2001:db8:1::(10+n)`: one simulated device each.
    pub fn add_device(&self, n: u8) -> Result<(IpAddr, IpAddr)> {
        let v4 = Ipv4Addr::new(198, 18, 1, 10 + n);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + n as u16);
        self.publisher
            .ip(&["addr", "add", &format!("{v4}/24"), "dev", "p0"])?;
        self.publisher
            .ip(&["addr", "add", &format!("{v6}/64"), "dev", "p0", "nodad"])?;
        Ok((IpAddr::V4(v4), IpAddr::V6(v6)))
    }

    /// Sends `payloads` from the publisher's main address to the router's
    /// `port`.
    pub fn publish(&self, v6: bool, port: u16, payloads: Vec<Vec<u8>>) -> Result<()> {
        let from = if v6 {
            IpAddr::V6(PUBLISHER_V6)
        } else {
            IpAddr::V4(PUBLISHER_V4)
        };
        self.publish_from(from, port, payloads)
    }

    /// Sends `payloads` from publisher address `from` to the router's
    /// `port` in the same family.
    pub fn publish_from(&self, from: IpAddr, port: u16, payloads: Vec<Vec<u8>>) -> Result<()> {
        self.publisher.run(move || -> Result<()> {
            let to: SocketAddr = match from {
                IpAddr::V4(_) => (IpAddr::V4(ROUTER_V4), port).into(),
                IpAddr::V6(_) => (IpAddr::V6(ROUTER_V6), port).into(),
            };
            let s = UdpSocket::bind((from, 0)).with_context(|| format!("binding {from}"))?;
            for p in &payloads {
                s.send_to(p, to)?;
                // Pace the burst: veth queues are short and the lab is
                // about delivery, not throughput.
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(())
        })?
    }

    /// Starts a listener in subscriber `k` on `groups` (group, port); it
    /// is ready when this returns.
    pub fn listen(&self, k: usize, groups: Vec<(IpAddr, u16)>) -> Result<Listener> {
        let sub = self.subscribers.get(k).context("no such subscriber")?;
        let (v4, ns) = (sub.v4, sub.ns.name.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || -> Result<Vec<Received>> {
            let setup = || -> Result<Vec<(UdpSocket, IpAddr, u16)>> {
                shardcast_dataplane::netns::enter(&ns)?;
                let ifindex = shardcast_dataplane::ifindex("eth0")?;
                let mut socks = Vec::new();
                for (group, port) in groups {
                    let s = UdpSocket::bind((group, port))
                        .with_context(|| format!("binding {group}:{port}"))?;
                    match group {
                        IpAddr::V4(g) => s.join_multicast_v4(&g, &v4)?,
                        IpAddr::V6(g) => s.join_multicast_v6(&g, ifindex)?,
                    }
                    s.set_nonblocking(true)?;
                    socks.push((s, group, port));
                }
                Ok(socks)
            };
            let socks = match setup() {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            loop {
                let mut any = false;
                for (s, group, port) in &socks {
                    while let Ok((n, from)) = s.recv_from(&mut buf) {
                        any = true;
                        got.push(Received {
                            group: *group,
                            port: *port,
                            from: from.ip(),
                            payload: buf[..n].to_vec(),
                        });
                    }
                }
                if !any {
                    if stop2.load(Ordering::Relaxed) {
                        return Ok(got);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("subscriber {k}: {e}"),
            Err(_) => bail!("subscriber {k}: listener did not start"),
        }
        // MLD/IGMP joins are local; nothing to wait for on a flooding bridge.
        Ok(Listener {
            stop,
            handle: Some(handle),
        })
    }

    /// This lab's pin root (pass to `router-ctl --pin-root`).
    pub fn pin_root(&self) -> &std::path::Path {
        &self.pin_root
    }

    /// Whether the attached data plane fans multi-shard publishes out by
    /// broadcast. A kernel that refuses the copy program fans out by TC,
    /// which the tests then expect.
    pub fn broadcasts(&self) -> bool {
        shardcast_dataplane::Dataplane::open(&self.pin_root).is_ok_and(|dp| dp.broadcasts())
    }

    /// This lab's state directory (plans, daemon config, history).
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// The installed plan generation, read from the pinned maps.
    pub fn generation(&self) -> Result<u64> {
        let dp = shardcast_dataplane::Dataplane::open(&self.pin_root)?;
        Ok(dp.meta()?.generation)
    }

    /// Detaches the router and removes its pins, whoever attached it (also
    /// done on drop).
    pub fn detach(&mut self) -> Result<()> {
        if shardcast_dataplane::PinPaths::new(&self.pin_root)
            .dir()
            .exists()
        {
            self.ctl(&["detach"])?;
        }
        Ok(())
    }

    /// Starts `router-ctl daemon` (the real binary) in the router namespace
    /// on this lab's pins, watching `plan.in.json` in the state directory,
    /// with one-second history buckets.
    pub fn start_daemon(&self, tick: &str) -> Result<LabDaemon> {
        self.start_daemon_with(tick, "")
    }

    /// [`Lab::start_daemon`] with more `[daemon]` settings (TOML lines).
    pub fn start_daemon_with(&self, tick: &str, daemon_extra: &str) -> Result<LabDaemon> {
        std::fs::create_dir_all(&self.state_dir)?;
        let config = self.state_dir.join("shardcast.toml");
        std::fs::write(
            &config,
            format!(
                "[dataplane]\npin_root = {:?}\n[daemon]\ntick = {tick:?}\nplan = {:?}\nstate_dir = {:?}\n{daemon_extra}\n[history]\nbucket = \"1s\"\n",
                self.pin_root,
                self.state_dir.join("plan.in.json"),
                self.daemon_state_dir(),
            ),
        )?;
        let mut child = std::process::Command::new(crate::ctl_binary())
            .args(["--netns", &self.router.name, "daemon", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting router-ctl daemon")?;
        let err = child.stderr.take().context("daemon stderr")?;
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if ECHO_DAEMON.load(std::sync::atomic::Ordering::Relaxed) {
                    eprintln!("daemon: {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(LabDaemon {
            child: crate::Child { child },
            log,
            config,
        })
    }

    /// Switches the lab daemon's control cycle to `mode` at run time
    /// (`router-ctl cycle --mode`); the daemon reads it at its next tick.
    pub fn set_cycle_mode(&self, mode: &str) -> Result<()> {
        let out = std::process::Command::new(crate::ctl_binary())
            .arg("--state-dir")
            .arg(self.daemon_state_dir())
            .args(["cycle", "--mode", mode])
            .output()?;
        if !out.status.success() {
            bail!(
                "router-ctl cycle --mode {mode}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The `daemon.state_dir` of the daemons this lab starts.
    pub fn daemon_state_dir(&self) -> PathBuf {
        self.state_dir.join("daemon")
    }

    /// The `router-ctl` binary's output for `args`, on this lab's pins and
    /// the daemon's state dir (as an operator runs it beside the daemon).
    pub fn ctl_output(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new(crate::ctl_binary())
            .arg("--pin-root")
            .arg(&self.pin_root)
            .arg("--state-dir")
            .arg(self.daemon_state_dir())
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "router-ctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes the daemon's plan file atomically (rename).
    pub fn offer_plan(&self, plan: &str) -> Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        let p = self.state_dir.join("plan.in.json");
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, plan)?;
        std::fs::rename(&tmp, &p)?;
        Ok(())
    }

    /// Waits (up to 10 s) until generation `g` or a later one is installed.
    pub fn wait_generation(&self, g: u64) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.generation().unwrap_or(0) < g {
            if std::time::Instant::now() > deadline {
                bail!("generation {g} was not installed within 10 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }
}

/// The `[cycle.resources]` the control cycle's lab tests plan with:
/// shards of 100 msg/s (80 usable), at most 8, leaving by the lab's
/// egress, groups from 239.1.2.0.
pub const CYCLE_RESOURCES: &str = r#"[cycle.resources]
shard_capacity = 100.0
max_shards = 8
headroom = 0.2
egress = "r-out"
group_v4_base = "239.1.2.0"
"#;

/// A `router-ctl devsim` fleet for the control cycle's lab tests, in the
/// lab's first subscriber namespace, registering through the gateway at
/// 198.18.1.1:1884: devices following aa, ab, ac, ad in turn, and the
/// numbered publisher sending on aa from the publisher's namespace (the
/// devices following aa count what they miss). Its report and output go
/// to the daemon's state dir.
pub struct Fleet {
    child: crate::Child,
    report: PathBuf,
    stdout: PathBuf,
}

impl Fleet {
    /// Starts `devices` devices for `duration`, the numbered publisher at
    /// `rate` messages/s.
    pub fn start(lab: &Lab, devices: usize, rate: u32, duration: &str) -> Result<Fleet> {
        let state = lab.daemon_state_dir();
        std::fs::create_dir_all(&state)?;
        let (report, stdout) = (state.join("devsim.json"), state.join("devsim.out"));
        let child = std::process::Command::new(crate::ctl_binary())
            .args(["--netns", &lab.subscribers[0].ns.name, "devsim"])
            .args(["--gateway", "198.18.1.1:1884"])
            .args(["--devices", &devices.to_string()])
            .args(["--subscribe", "aa,ab,ac,ad", "--topic", "aa"])
            .args(["--duration", duration, "--keep-alive", "10s"])
            .args(["--publish-to", "198.18.1.1:1884"])
            .args(["--publish-netns", &lab.publisher.name])
            .args(["--rate", &rate.to_string(), "--grace", "1s"])
            .arg("--report")
            .arg(&report)
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("starting devsim")?;
        Ok(Fleet {
            child: crate::Child { child },
            report,
            stdout,
        })
    }

    /// Waits until the daemon's installed plan (`plan.json` in its state
    /// dir) places `devices` devices; the error names the last decision.
    pub fn wait_placed(lab: &Lab, devices: usize, within: Duration) -> Result<()> {
        let plan = lab.daemon_state_dir().join("plan.json");
        let log = lab.daemon_state_dir().join("decisions.jsonl");
        let deadline = std::time::Instant::now() + within;
        loop {
            let placed = shardcast_plan::Plan::from_file(&plan).map_or(0, |p| p.devices.len());
            if placed == devices {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{placed} of {devices} devices placed after {within:?}; last decision: {:?}",
                    crate::decisions(&log).last()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Ends the fleet (SIGTERM: it writes its report): its report, and
    /// its summary (printed); an error if it failed.
    pub fn finish(mut self) -> Result<serde_json::Value> {
        let status = self.child.terminate()?;
        let summary = std::fs::read_to_string(&self.stdout)?;
        eprintln!("{summary}");
        if !status.success() {
            bail!("devsim: {status}: {summary}");
        }
        Ok(serde_json::from_slice(&std::fs::read(&self.report)?)?)
    }
}

impl LabDaemon {
    /// Waits (up to `timeout`) for a log line that `want` accepts; returns
    /// it.
    pub fn wait_log(&self, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if want(&line) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("no such daemon log line within {timeout:?}"),
            }
        }
    }
}

/// A `router-ctl daemon` process of a lab; killed on drop.
pub struct LabDaemon {
    pub child: crate::Child,
    /// Its stderr, line by line (also echoed to the test's stderr). Ends
    /// when the process does.
    pub log: mpsc::Receiver<String>,
    /// Its config file (for `router-ctl history --config`).
    pub config: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.detach();
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        // The namespaces go with their fields.
    }
}

/// A datagram a subscriber received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub group: IpAddr,
    pub port: u16,
    pub from: IpAddr,
    pub payload: Vec<u8>,
}

/// A running subscriber socket set; [`Listener::finish`] collects.
pub struct Listener {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Vec<Received>>>>,
}

impl Listener {
    /// Gives datagrams in flight `grace` to arrive, then returns all that
    /// arrived (the socket buffers are drained before the thread stops).
    pub fn finish(mut self, grace: Duration) -> Result<Vec<Received>> {
        std::thread::sleep(grace);
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("finish once")
            .join()
            .map_err(|_| anyhow!("listener panicked"))?
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

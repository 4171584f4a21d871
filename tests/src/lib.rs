//! Test support for shardcast's kernel tests: network namespaces with Drop
//! guards (nothing outlives a test, even a failing one), running code inside
//! a namespace, and Ethernet frames around MQTT-SN / CoAP payloads.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};
use etherparse::PacketBuilder;

pub use router_common::build;

pub mod closed_loop;
pub mod cycle_bench;
pub mod differential;
pub mod e2e_bench;
pub mod fanout_bench;
pub mod fixtures;
pub mod forecast_bench;
pub mod lab;
pub mod load_gen;
pub mod measure;
pub mod migrate_bench;
pub mod model;
pub mod planner_bench;
pub mod rawsock;
pub mod shape_plan;
pub mod xdp;

/// `n` topic names `<prefix><i>` (i = 0, 1, ...) whose key takes the same
/// entry of the direct-mapped name array as `name`'s (`name` itself is
/// not among them, unless it has that form): names the array cannot all
/// hold, so that some are found through the route hash map.
pub fn names_sharing_entry_of(name: &str, prefix: &str, n: usize) -> Vec<String> {
    use router_common::{maps::name_index, topic::topic_key};
    let index = name_index(topic_key(name.as_bytes()));
    (0u32..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|c| c != name && name_index(topic_key(c.as_bytes())) == index)
        .take(n)
        .collect()
}

/// Whether the running kernel's release is at least `major.minor`: for
/// tests of kernel features newer than the oldest kernel the router runs
/// on, which such a kernel refuses (the test then says so and stops).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    release_at_least(&release, major, minor)
}

/// Whether a kernel release string (`6.18.44-fc-v1147`) is at least
/// `major.minor`; an unreadable one is not.
fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[cfg(test)]
mod release_tests {
    use super::release_at_least;

    #[test]
    fn kernel_releases_compare_by_major_then_minor() {
        assert!(release_at_least("6.18.44-fc-v1147\n", 5, 18));
        assert!(release_at_least("5.18.0", 5, 18));
        assert!(!release_at_least("5.17.15-generic", 5, 18));
        assert!(!release_at_least("4.19.0", 5, 18));
        assert!(release_at_least("10.0", 5, 18));
        assert!(!release_at_least("", 5, 18));
    }
}

/// The router's eBPF object, as built by `cargo xtask build-ebpf`.
pub fn object() -> PathBuf {
    std::env::var_os("SHARDCAST_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/router-ebpf.o")
        })
}

/// Starts `tshark` capturing `filter` on `iface` of namespace `ns` into
/// `pcap`, and returns once the capture is live (dumpcap has opened the
/// interface). Stop it with SIGINT.
pub fn tshark_capture(
    ns: &str,
    iface: &str,
    filter: &str,
    pcap: &std::path::Path,
) -> Result<std::process::Child> {
    use std::io::BufRead;
    let mut child = Command::new("ip")
        .args([
            "netns", "exec", ns, "tshark", "-i", iface, "-f", filter, "-w",
        ])
        .arg(pcap)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting tshark")?;
    let mut err = std::io::BufReader::new(child.stderr.take().context("tshark stderr")?);
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            bail!("tshark exited before the capture started");
        }
        if line.contains("Capture started") {
            // Keep reading: tshark writes its summary there when stopped.
            std::thread::spawn(move || {
                let mut rest = String::new();
                while err.read_line(&mut rest).is_ok_and(|n| n > 0) {
                    rest.clear();
                }
            });
            return Ok(child);
        }
    }
}

/// A command-line tool from PyPI (`spec`, e.g. `mqtt-sn-12`), installed
/// on first use into `target/test-venv` (Debian's python3-venv and PyPI):
/// the third-party clients the tests speak to the router with.
pub fn python_tool(spec: &str, exe: &str) -> Result<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv");
    let tool = venv.join("bin").join(exe);
    if tool.is_file() {
        return Ok(tool);
    }
    // Tests run in parallel: one installs, the others wait for it.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::env::temp_dir().join("shardcast-test-venv.lock"))?;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if tool.is_file() {
        return Ok(tool);
    }
    if !venv.join("bin/pip").is_file() {
        sh("python3", &["-m", "venv", &venv.display().to_string()])
            .context("python3 -m venv (Debian: apt install python3-venv)")?;
    }
    sh(
        &venv.join("bin/pip").display().to_string(),
        &["install", "--quiet", spec],
    )
    .with_context(|| format!("pip install {spec}"))?;
    anyhow::ensure!(tool.is_file(), "{spec} installed no {exe}");
    Ok(tool)
}

/// The `router-ctl` binary: `SHARDCAST_CTL`, else the one cargo built
/// beside this test binary (`cargo build -p router-ctl`; `cargo xtask test`
/// does it).
/// The daemon's decision log (`decisions.jsonl` in its state dir), one
/// JSON value per cycle; empty while it does not exist.
pub fn decisions(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a decision log line is JSON"))
        .collect()
}

pub fn ctl_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SHARDCAST_CTL") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join("router-ctl");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "router-ctl binary not found next to {}; run `cargo build -p router-ctl` (or set SHARDCAST_CTL)",
        exe.display()
    );
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Child {
    pub child: std::process::Child,
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks it to end (SIGTERM: `devsim` then writes its report) and
    /// waits for it.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own, not yet reaped child's pid.
        if unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) } != 0 {
            bail!(
                "SIGTERM to {}: {}",
                self.pid(),
                std::io::Error::last_os_error()
            );
        }
        Ok(self.child.wait()?)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A short name unique to this process and call: `<prefix><pid><n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command; fails with its stderr.
pub fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted (with its interfaces and processes) on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> Result<NetNs> {
        let name = unique(prefix);
        sh("ip", &["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// Runs `cmd args…` inside this namespace (`ip netns exec`: fine for
    /// tools, but it hides /sys/fs/bpf, so not for router-ctl).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let mut a = vec!["netns", "exec", self.name.as_str(), cmd];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// `sysctl -w <setting>` inside this namespace.
    pub fn sysctl(&self, setting: &str) -> Result<String> {
        self.exec("sysctl", &["-q", "-w", setting])
    }

    /// Runs `f` on a thread that has joined this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let name = self.name.clone();
        std::thread::spawn(move || -> Result<T> {
            shardcast_dataplane::netns::enter(&name)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(pids) = sh("ip", &["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                let _ = sh("kill", &["-9", pid]);
            }
        }
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
pub const SRC_V4: [u8; 4] = [198, 18, 0, 1];
pub const DST_V4: [u8; 4] = [198, 18, 0, 254];
pub const SRC_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const DST_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
];

/// IP family and encapsulation of a test frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    V4,
    V6,
}

/// The benchmark reference programs' object.
pub fn reference_object() -> PathBuf {
    std::env::var_os("SHARDCAST_REFERENCE_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/bench-reference.o")
        })
}

/// Untagged Ethernet/IP/UDP from `src` (its family) to the test
/// destination around `payload`, checksums correct: a publish from a
/// device other than the fixtures' source.
pub fn frame_from(src: std::net::IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
    let mut out = Vec::new();
    match src {
        std::net::IpAddr::V4(a) => eth
            .ipv4(a.octets(), DST_V4, 64)
            .udp(sport, dport)
            .write(&mut out, payload),
        std::net::IpAddr::V6(a) => eth
            .ipv6(a.octets(), DST_V6, 64)
            .udp(sport, dport)
            .write(&mut out, payload),
    }
    .expect("writing to a Vec");
    out
}

/// Ethernet(+VLAN)/IP/UDP around `payload`, checksums correct.
pub fn frame(l3: L3, vlan: Option<u16>, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let Some(id) = vlan else {
        let src = match l3 {
            L3::V4 => SRC_V4.into(),
            L3::V6 => SRC_V6.into(),
        };
        return frame_from(src, sport, dport, payload);
    };
    let tagged =
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC).single_vlan(id.try_into().expect("vlan id"));
    let mut out = Vec::new();
    match l3 {
        L3::V4 => tagged
            .ipv4(SRC_V4, DST_V4, 64)
            .udp(sport, dport)
            .write(&mut out, payload),
        L3::V6 => tagged
            .ipv6(SRC_V6, DST_V6, 64)
            .udp(sport, dport)
            .write(&mut out, payload),
    }
    .expect("writing to a Vec");
    out
}

/// The frame with TTL / hop limit 255 (IPv4 header checksum recomputed):
/// `BPF_PROG_TEST_RUN` repeats a program on one buffer, and the router
/// decrements the TTL of what it routes, so 254 repeats stay on the
/// redirect path.
pub fn max_ttl(mut f: Vec<u8>) -> Vec<u8> {
    match (f[12], f[13]) {
        (0x08, 0x00) => {
            f[22] = 255;
            let ihl = (f[14] & 0x0f) as usize * 4;
            let c = model::ipv4_checksum(&f, 14, ihl);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        (0x86, 0xdd) => f[21] = 255,
        _ => {}
    }
    f
}

/// IPv4/UDP frame whose IP header carries `options` (a multiple of 4 bytes).
pub fn frame_v4_options(options: &[u8], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(
        (8 + payload.len()) as u16,
        64,
        etherparse::IpNumber::UDP,
        SRC_V4,
        DST_V4,
    )
    .expect("valid header");
    ip.options = options.try_into().expect("valid options");
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .udp(40000, dport)
        .write(&mut out, payload)
        .expect("writing to a Vec");
    out
}

/// A stopped capture, decoded: per frame the fields asked for, and the
/// frames Wireshark flags (the first field missing, malformed, or an
/// expert finding at warning level or above: chat and notes are
/// information).
pub struct Decoded {
    pub text: String,
    pub rows: Vec<Vec<String>>,
    pub flagged: Vec<Vec<String>>,
}

/// Stops `tshark` (SIGINT) and decodes `pcap` (removed after), reading
/// `decode_as` (e.g. `udp.port==1884,mqttsn`) if given.
pub fn decode_capture(
    mut tshark: std::process::Child,
    pcap: &std::path::Path,
    decode_as: Option<&str>,
    fields: &[&str],
) -> Decoded {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &tshark.id().to_string()])
        .status();
    let _ = tshark.wait();
    let file = pcap.display().to_string();
    let mut args = vec!["-r", file.as_str()];
    if let Some(d) = decode_as {
        args.extend(["-d", d]);
    }
    args.extend(["-T", "fields", "-E", "separator=|"]);
    for f in ["_ws.malformed", "_ws.expert.severity"]
        .iter()
        .chain(fields)
    {
        args.extend(["-e", f]);
    }
    let text = sh("tshark", &args).unwrap();
    let _ = std::fs::remove_file(pcap);
    let (mut rows, mut flagged) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let cols: Vec<String> = line.split('|').map(str::to_string).collect();
        let worst = cols[1]
            .split(',')
            .filter_map(|s| s.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        let row = cols[2..].to_vec();
        if !cols[0].is_empty() || worst >= 0x60_0000 || row[0].is_empty() {
            flagged.push(row.clone());
        }
        rows.push(row);
    }
    Decoded {
        text,
        rows,
        flagged,
    }
}

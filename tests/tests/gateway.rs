//! The MQTT-SN gateway (`router-ctl gateway`) with a third-party client,
//! the Python `mqtt-sn-12` package's `mqtt_sn_pub` and `mqtt_sn_sub`, in a
//! namespace of the test's own: connect, register, subscribe (a wildcard
//! and a plain name, a short name), publish with QoS 0, 1 and 2 and a QoS
//! -1 publish to a short topic, disconnect; and a malformed datagram does
//! not stop it.

use std::{
    net::UdpSocket,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{NetNs, ctl_binary, python_tool};

fn in_ns(ns: &NetNs, cmd: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name]).arg(cmd).args(args);
    c
}

#[test]
fn mqtt_sn_clients_subscribe_and_publish_through_the_gateway() {
    let pub_tool = python_tool("mqtt-sn-12", "mqtt_sn_pub").unwrap();
    let sub_tool = python_tool("mqtt-sn-12", "mqtt_sn_sub").unwrap();
    let ns = NetNs::new("scgw").unwrap();
    let state = std::env::temp_dir().join(integration_tests::unique("scgw"));
    let mut gw = in_ns(
        &ns,
        &ctl_binary(),
        &[
            "--state-dir",
            &state.display().to_string(),
            "gateway",
            "--listen",
            "127.0.0.1:1884",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Bounded: a subscriber missing a message exits, failing the test.
    let sub = |topic: &str, count: u32| {
        in_ns(
            &ns,
            std::path::Path::new("timeout"),
            &[
                "20",
                &sub_tool.display().to_string(),
                "-h",
                "127.0.0.1",
                "-p",
                "1884",
                "-t",
                topic,
                "-C",
                &count.to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let wild = sub("sensors/+", 5);
    let plain = sub("sensors/t1", 2);
    let short = sub("ab", 1);
    std::thread::sleep(Duration::from_millis(800));
    // A malformed datagram first: counted and ignored.
    ns.run(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&[0x05, 0x0c, 0x00], "127.0.0.1:1884").unwrap();
    })
    .unwrap();
    for (topic, qos, msg) in [
        ("sensors/t1", "0", "a"),
        ("sensors/t1", "1", "b"),
        ("sensors/t2", "1", "c"),
        ("sensors/t2", "0", "d"),
        ("sensors/t2", "2", "e"),
        ("ab", "-1", "z"),
    ] {
        let out = in_ns(
            &ns,
            &pub_tool,
            &[
                "-h",
                "127.0.0.1",
                "-p",
                "1884",
                "-q",
                qos,
                "-t",
                topic,
                "-m",
                msg,
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "mqtt_sn_pub {topic} QoS {qos}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wait = |c: std::process::Child| {
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let got_wild = wait(wild);
    let got_plain = wait(plain);
    let got_short = wait(short);
    let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(lines(&got_wild), ["a", "b", "c", "d", "e"], "{got_wild}");
    assert_eq!(lines(&got_plain), ["a", "b"], "{got_plain}");
    assert_eq!(lines(&got_short), ["z"], "{got_short}");
    let _ = Command::new("kill").arg(gw.id().to_string()).status();
    let _ = gw.wait();
    let _ = std::fs::remove_dir_all(&state);
}

//! Migration tokens on the live gateway: a device whose keep-alive is
//! longer than its token's life makes itself heard past half that life,
//! so the gateway renews the token; it stays in the membership (and in
//! the plan) and misses nothing. Before the device did so, a token 20 s
//! long against a 20 s keep-alive (pings every 10 s) could expire
//! unrenewed, and the gateway dropped the device while it still listened
//! (the demo's lab lost the rest of a day for one device so).

use std::time::Duration;

use integration_tests::lab::{CYCLE_RESOURCES, Fleet, Lab};

const DEVICES: usize = 20;

#[test]
fn devices_keep_their_tokens_between_keep_alives() {
    let mut lab = Lab::new(1).unwrap();
    lab.attach().unwrap();
    // Tokens of 4 s; the fleet's keep-alive is 10 s (a ping every 5 s),
    // so without the device's own renewal pings every token would expire
    // before its first ping. The renewal window (2 s) holds several of
    // the device's retry periods: a loaded machine still renews in time.
    let _daemon = lab
        .start_daemon_with(
            "100ms",
            &[
                r#"migration_deadline = "2s"
[gateway]
listen = "198.18.1.1:1884"
token_lifetime = "4s"
migrate_retry = "300ms"
[cycle]
mode = "reactive"
period = "1s"
season = "60s"
window = "240s"
horizons = ["5s"]
"#,
                CYCLE_RESOURCES,
            ]
            .concat(),
        )
        .unwrap();
    let fleet = Fleet::start(&lab, DEVICES, 10, "60s").unwrap();
    Fleet::wait_placed(&lab, DEVICES, Duration::from_secs(30)).unwrap();
    // Three token lifetimes: every token renewed at least twice.
    std::thread::sleep(Duration::from_secs(12));
    let placed = shardcast_plan::Plan::from_file(&lab.daemon_state_dir().join("plan.json"))
        .unwrap()
        .devices
        .len();
    let r = fleet.finish().unwrap();
    assert_eq!(placed, DEVICES, "devices dropped from the plan: {r}");
    assert_eq!(r["missing"], 0, "{r}");
    for d in r["per_device"].as_array().unwrap() {
        // One hello: never dropped, never had to join again.
        assert_eq!(d["hellos"], 1, "{d}");
        assert_eq!(d["missing"], 0, "{d}");
    }
}

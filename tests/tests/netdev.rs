//! Interfaces as the data plane reads them (MAC addresses by name).

use integration_tests::xdp::lab;
use shardcast_dataplane::mac_address;

#[test]
fn mac_address_reads_the_namespace_interface_and_names_what_is_wrong() {
    let ns = lab();
    let shown = ns.ip(&["-o", "link", "show", "sc0"]).unwrap();
    let want = shown
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("ip shows the MAC")
        .to_string();
    ns.run(move || {
        let mac = mac_address("sc0").unwrap();
        let text: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(text.join(":"), want);
        let e = mac_address("nosuchif0").unwrap_err().to_string();
        assert!(e.contains("nosuchif0"), "{e}");
        let e = mac_address("lo").unwrap_err().to_string();
        assert!(e.contains("lo") && e.contains("not an Ethernet"), "{e}");
    })
    .unwrap();
}

//! Pins of another map layout are never silently misread.

use clap::Parser;
use integration_tests::NetNs;
use router_ctl::cli::Cli;

fn ctl(ns: &NetNs, root: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec!["router-ctl", "--pin-root", root, "--netns", &ns.name];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).unwrap();
    std::thread::spawn(move || router_ctl::cli::run(cli))
        .join()
        .unwrap()
}

#[test]
fn a_pin_of_an_older_layout_is_refused_with_a_clear_error() {
    let ns = NetNs::new("scpin").unwrap();
    ns.ip(&["link", "add", "a0", "type", "veth", "peer", "name", "a1"])
        .unwrap();
    let root = format!(
        "/sys/fs/bpf/{}",
        integration_tests::unique("shardcast-pins")
    );
    // An older build's pins: a map pinned under v1/.
    std::fs::create_dir_all(format!("{root}/v1")).unwrap();
    let old: aya::maps::Array<aya::maps::MapData, u32> = aya::maps::Array::create(1, 0).unwrap();
    old.pin(format!("{root}/v1/SC_CONFIG")).unwrap();

    let object = integration_tests::object().display().to_string();
    let e = ctl(
        &ns,
        &root,
        &[
            "attach",
            "--ingress",
            "a0",
            "--egress",
            "a1",
            "--object",
            &object,
        ],
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("layout v1") || msg.contains("map layout v1"),
        "{msg}"
    );
    assert!(msg.contains(&root), "names where: {msg}");
    // Nothing of ours was created, the old pin is untouched.
    let ours = format!("{root}/v{}", router_common::maps::LAYOUT_VERSION);
    assert!(!std::path::Path::new(&ours).exists(), "{ours} was created");
    assert!(std::path::Path::new(&format!("{root}/v1/SC_CONFIG")).exists());
    // Reading commands refuse too.
    let e = ctl(&ns, &root, &["status"]).unwrap_err();
    assert!(format!("{e:#}").contains("layout v1"), "{e:#}");

    std::fs::remove_file(format!("{root}/v1/SC_CONFIG")).unwrap();
    std::fs::remove_dir(format!("{root}/v1")).unwrap();
    std::fs::remove_dir(&root).unwrap();
}

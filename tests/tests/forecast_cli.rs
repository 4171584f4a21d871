//! `router-ctl forecast` as an operator runs it: output shape, and bad input
//! refused with a non-zero exit and a message naming what is wrong.

use std::process::Command;

use integration_tests::ctl_binary;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ctl_binary())
        .arg("forecast")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn forecasts_every_series_at_every_horizon_and_refuses_bad_input() {
    let dir = std::env::temp_dir().join(integration_tests::unique("scfc"));
    std::fs::create_dir_all(&dir).unwrap();
    // Three days of hourly buckets, a daily cycle.
    let mut csv = String::from("timestamp,topic,group,count\n");
    for h in 0..72u64 {
        let c = 20 + (h % 24) * 3;
        csv.push_str(&format!("{},t/a,g1,{c}\n", 1_790_035_200 + h * 3600));
        csv.push_str(&format!("{},t/b,g2,{}\n", 1_790_035_200 + h * 3600, c / 2));
    }
    let good = dir.join("h.csv");
    std::fs::write(&good, &csv).unwrap();
    let g = good.to_str().unwrap();
    let (ok, out, err) = run(&[
        "--history",
        g,
        "--bucket",
        "1h",
        "--horizons",
        "1h,24h",
        "--backtest",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "topic,group,horizon,timestamp,predicted,lower,upper"
    );
    assert_eq!(lines.len(), 1 + 2 * 2);
    // The cycle repeats: an hour after the last bucket (hour 72 = hour 0
    // of the day) the count is ~20 for t/a.
    let a1h: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(&a1h[..3], ["t/a", "g1", "1h"]);
    let p: f64 = a1h[4].parse().unwrap();
    assert!((p - 20.0).abs() < 3.0, "{}", lines[1]);
    assert!(err.contains("MASE"), "{err}");
    // Without --bucket the hourly spacing is read off the timestamps (not
    // taken as minutes with 59 of 60 empty), and the default horizons are
    // those an hourly bucket allows (1h and 24h, not 5m).
    let (ok, inferred, err) = run(&["--history", g]);
    assert!(ok, "{err}");
    let horizons: std::collections::BTreeSet<&str> = inferred
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap())
        .collect();
    assert_eq!(horizons, ["1h", "24h"].into(), "{inferred}");
    assert_eq!(inferred.lines().nth(1), lines.get(1).copied());
    // A line error is said once.
    let twice = dir.join("twice.csv");
    std::fs::write(&twice, "1,a,g,x\n").unwrap();
    let (ok, _, err) = run(&["--history", twice.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(err.matches("line 1").count(), 1, "{err}");

    for (args, what) in [
        (
            vec![
                "--history",
                g,
                "--bucket",
                "1h",
                "--horizons",
                "1 fortnight",
            ],
            "fortnight",
        ),
        (
            vec!["--history", g, "--bucket", "1h", "--horizons", "90m"],
            "multiple",
        ),
        (vec!["--history", "/nonexistent.csv"], "nonexistent"),
    ] {
        let (ok, _, err) = run(&args);
        assert!(!ok, "{args:?} accepted");
        assert!(err.contains(what), "{args:?}: {err}");
    }
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "1790035200,t,g,1\n1790035230,t,g,1\n").unwrap();
    let (ok, _, err) = run(&["--history", bad.to_str().unwrap(), "--bucket", "1m"]);
    assert!(!ok);
    assert!(err.contains("line 2") && err.contains("grid"), "{err}");

    // Device status: g1 has half its devices online, so t/a's forecast
    // halves; g2 has no status line and is unchanged.
    let status = dir.join("status.csv");
    std::fs::write(&status, "group,connected,devices,low_battery\ng1,10,20,0\n").unwrap();
    let svg = dir.join("p.svg");
    let (ok, out2, err) = run(&[
        "--history",
        g,
        "--bucket",
        "1h",
        "--horizons",
        "1h,24h",
        "--status",
        status.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        "--plot-series",
        "t/a/g1",
    ]);
    assert!(ok, "{err}");
    let row = |text: &str, i: usize| -> f64 {
        text.lines()
            .nth(i)
            .unwrap()
            .split(',')
            .nth(4)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!((row(&out2, 1) - row(&out, 1) / 2.0).abs() < 1e-2, "{out2}");
    assert!((row(&out2, 3) - row(&out, 3)).abs() < 1e-9, "{out2}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawn.starts_with("<svg") && drawn.contains("t/a / g1"),
        "plot drawn"
    );
    // The good history at 1h buckets and horizon, plus `extra`.
    let hourly = |extra: &[&str]| {
        let mut args = vec!["--history", g, "--bucket", "1h", "--horizons", "1h"];
        args.extend_from_slice(extra);
        run(&args)
    };
    for (content, what) in [
        ("g1,30,20\n", "connected 30 exceeds devices 20"),
        ("g1,10,20,11\n", "low_battery 11 exceeds connected 10"),
        ("g1,ten,20\n", "connected \"ten\" is not a count"),
        ("g1,1,0\n", "devices must be > 0"),
        ("g1,1,2\ng1,1,2\n", "appears twice"),
    ] {
        std::fs::write(&status, content).unwrap();
        let (ok, _, err) = hourly(&["--status", status.to_str().unwrap()]);
        assert!(!ok, "{content:?} accepted");
        assert!(
            err.contains(what) && err.contains("line"),
            "{content:?}: {err}"
        );
    }
    let (ok, _, err) = hourly(&["--plot", svg.to_str().unwrap(), "--plot-series", "nope/x"]);
    assert!(!ok && err.contains("no such topic/group"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

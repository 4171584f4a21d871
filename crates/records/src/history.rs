//! The history CSV: `timestamp,topic,group,count`, what `router-ctl
//! history export` writes and `history import` and the forecaster read.
//! Timestamps are unix seconds or RFC 3339.

use std::{io::Write, time::Duration};

use crate::record::{Columns, RecordError, records};

type Result<T, E = RecordError> = std::result::Result<T, E>;

/// One exported row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub ts: u64,
    pub topic: String,
    pub group: String,
    pub count: u64,
}

/// Parses `timestamp,topic,group,count` CSV (a header line is allowed).
/// Timestamps are unix seconds or RFC 3339. All of it or nothing: the first
/// bad line is reported with its number.
pub fn parse_csv(text: &str) -> Result<Vec<Row>> {
    Ok(parse_csv_lines(text)?.into_iter().map(|(_, r)| r).collect())
}

/// [`parse_csv`], each row with its line number (for later checks that
/// must name the line, such as ordering).
pub fn parse_csv_lines(text: &str) -> Result<Vec<(usize, Row)>> {
    const COLUMNS: Columns = Columns {
        names: &["timestamp", "topic", "group", "count"],
        optional: 0,
    };
    let mut rows = Vec::new();
    for record in records(text, &COLUMNS) {
        let (n, f) = record?;
        let bad = |reason: String| RecordError { line: n, reason };
        let ts = match f[0].parse::<u64>() {
            Ok(t) => t,
            Err(_) => humantime::parse_rfc3339_weak(f[0])
                .map_err(|e| {
                    bad(format!(
                        "timestamp {:?} is neither unix seconds nor RFC 3339 ({e})",
                        f[0]
                    ))
                })?
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| bad(format!("timestamp {:?} is before 1970", f[0])))?
                .as_secs(),
        };
        let topic = f[1];
        if topic.is_empty() || topic.len() > router_common::topic::TOPIC_MAX {
            return Err(bad(format!(
                "topic {topic:?} must be 1..={} bytes",
                router_common::topic::TOPIC_MAX
            )));
        }
        let group = f[2];
        if group.is_empty() {
            return Err(bad("group is empty".into()));
        }
        let count = f[3]
            .parse::<u64>()
            .map_err(|_| bad(format!("count {:?} is not a non-negative integer", f[3])))?;
        rows.push((
            n,
            Row {
                ts,
                topic: topic.to_string(),
                group: group.to_string(),
                count,
            },
        ));
    }
    Ok(rows)
}

/// Writes rows as CSV with a header; timestamps as unix seconds or RFC 3339.
pub fn write_csv(rows: &[Row], rfc3339: bool, mut out: impl Write) -> std::io::Result<()> {
    writeln!(out, "timestamp,topic,group,count")?;
    for r in rows {
        if rfc3339 {
            let t = std::time::UNIX_EPOCH + Duration::from_secs(r.ts);
            writeln!(
                out,
                "{},{},{},{}",
                humantime::format_rfc3339_seconds(t),
                r.topic,
                r.group,
                r.count
            )?;
        } else {
            writeln!(out, "{},{},{},{}", r.ts, r.topic, r.group, r.count)?;
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip_and_line_numbered_errors() {
        let rows = vec![
            Row {
                ts: 1_700_000_040,
                topic: "temp/a".into(),
                group: "hall".into(),
                count: 4,
            },
            Row {
                ts: 1_700_000_100,
                topic: "b".into(),
                group: "unknown".into(),
                count: 0,
            },
        ];
        for rfc in [false, true] {
            let mut out = Vec::new();
            write_csv(&rows, rfc, &mut out).unwrap();
            assert_eq!(parse_csv(std::str::from_utf8(&out).unwrap()).unwrap(), rows);
        }
        for (text, line, what) in [
            (
                "timestamp,topic,group,count\n1,a,g,1\n2,a,g\n",
                3,
                "4 fields",
            ),
            ("1,a,g,1\nyesterday,a,g,1\n", 2, "timestamp"),
            ("1,a,g,-4\n", 1, "count"),
            ("1,,g,4\n", 1, "topic"),
            ("1,a,,4\n", 1, "group"),
        ] {
            match parse_csv(text) {
                Err(RecordError { line: l, reason }) => {
                    assert_eq!(l, line, "{text:?}: {reason}");
                    assert!(reason.contains(what), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}

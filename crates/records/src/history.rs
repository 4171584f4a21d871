//! The history CSV: `timestamp,topic,group,count`, what `router-ctl
//! history export` writes and `history import` and the forecaster read.
//! Timestamps are unix seconds or RFC 3339.

use std::{io::Write, time::Duration};

use router_common::topic::TOPIC_MAX;

use crate::record::{Columns, RecordError, echo, io_error, records, writer};

type Result<T, E = RecordError> = std::result::Result<T, E>;

/// One exported row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub ts: u64,
    pub topic: String,
    pub group: String,
    pub count: u64,
}

/// The latest timestamp a history row may carry: 9999-12-31T23:59:59Z,
/// the last second RFC 3339 can write (history is exported in it).
pub const MAX_TIMESTAMP: u64 = 253_402_300_799;

/// Parses `timestamp,topic,group,count` CSV (RFC 4180; a header line is
/// allowed). Timestamps are unix seconds or RFC 3339, 1970 to
/// [`MAX_TIMESTAMP`]. All of it or nothing: the first bad line is reported
/// with its number.
pub fn parse_csv(text: &str) -> Result<Vec<Row>> {
    Ok(parse_csv_lines(text)?.into_iter().map(|(_, r)| r).collect())
}

/// A timestamp field: unix seconds or RFC 3339.
fn timestamp(field: &str) -> Result<u64, String> {
    let t = field.trim();
    let ts = match t.parse::<u64>() {
        Ok(ts) => ts,
        Err(_) => {
            let year: Option<u32> = t.get(..4).and_then(|y| y.parse().ok());
            if t.get(4..5) == Some("-") && year.is_some_and(|y| y < 1970) {
                return Err(format!(
                    "timestamp {} is before 1970 (unix time starts there)",
                    echo(t)
                ));
            }
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| {
                    format!(
                        "timestamp {} is neither unix seconds nor RFC 3339 ({e})",
                        echo(t)
                    )
                })?
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("timestamp {} is before 1970", echo(t)))?
                .as_secs()
        }
    };
    if ts > MAX_TIMESTAMP {
        return Err(format!(
            "timestamp {} is after 9999-12-31T23:59:59Z ({MAX_TIMESTAMP})",
            echo(t)
        ));
    }
    Ok(ts)
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
        let (n, mut f) = record?;
        let bad = |reason: String| RecordError { line: n, reason };
        let ts = timestamp(&f[0]).map_err(bad)?;
        let count = f[3].trim().parse::<u64>().map_err(|_| {
            bad(format!(
                "count {} is not a non-negative integer",
                echo(&f[3])
            ))
        })?;
        let group = f.swap_remove(2);
        let topic = f.swap_remove(1);
        if topic.is_empty() || topic.len() > TOPIC_MAX {
            return Err(bad(format!(
                "topic {} must be 1..={TOPIC_MAX} bytes",
                echo(&topic)
            )));
        }
        if group.is_empty() {
            return Err(bad("group is empty".into()));
        }
        rows.push((
            n,
            Row {
                ts,
                topic,
                group,
                count,
            },
        ));
    }
    Ok(rows)
}

/// Writes rows as RFC 4180 CSV with a header (names quoted when they must
/// be, so the file reads back exactly); timestamps as unix seconds or RFC
/// 3339 (a timestamp past [`MAX_TIMESTAMP`] is an error, not a panic).
pub fn write_csv(rows: &[Row], rfc3339: bool, out: impl Write) -> std::io::Result<()> {
    let mut w = writer(out);
    w.write_record(["timestamp", "topic", "group", "count"])
        .map_err(io_error)?;
    for r in rows {
        let ts = if rfc3339 {
            if r.ts > MAX_TIMESTAMP {
                return Err(std::io::Error::other(format!(
                    "timestamp {} is past what RFC 3339 can write",
                    r.ts
                )));
            }
            let t = std::time::UNIX_EPOCH + Duration::from_secs(r.ts);
            humantime::format_rfc3339_seconds(t).to_string()
        } else {
            r.ts.to_string()
        };
        w.write_record([ts.as_str(), &r.topic, &r.group, &r.count.to_string()])
            .map_err(io_error)?;
    }
    w.flush()
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

    #[test]
    fn timestamps_outside_1970_to_9999_are_named() {
        for (text, what) in [
            ("1969-12-31T23:59:59Z,a,g,1\n", "before 1970"),
            ("253402300800,a,g,1\n", "after 9999"),
            ("10000-01-01T00:00:00Z,a,g,1\n", "neither"),
        ] {
            let e = parse_csv(text).unwrap_err();
            assert!(e.reason.contains(what), "{text:?}: {e}");
        }
        let last = parse_csv("9999-12-31T23:59:59Z,a,g,1\n").unwrap();
        assert_eq!(last[0].ts, MAX_TIMESTAMP);
        let mut out = Vec::new();
        write_csv(&last, true, &mut out).unwrap();
        let big = [Row {
            ts: u64::MAX,
            ..last[0].clone()
        }];
        assert!(write_csv(&big, true, &mut Vec::new()).is_err());
    }

    proptest::proptest! {
        /// Export -> import -> export is lossless for any name a plan
        /// accepts: commas, quotes, line breaks, spaces at either end.
        #[test]
        fn export_import_export_is_lossless(
            rows in proptest::collection::vec(
                (0..=MAX_TIMESTAMP, "[a-z ,\"\n\r/+#é]{1,20}", "[A-Za-z ,\"\n]{1,12}", proptest::num::u64::ANY),
                0..20,
            ),
            rfc in proptest::bool::ANY,
        ) {
            let rows: Vec<Row> = rows
                .into_iter()
                .filter(|(_, t, _, _)| t.len() <= TOPIC_MAX)
                .map(|(ts, topic, group, count)| Row { ts, topic, group, count })
                .collect();
            let mut first = Vec::new();
            write_csv(&rows, rfc, &mut first).unwrap();
            let back = parse_csv(std::str::from_utf8(&first).unwrap()).unwrap();
            proptest::prop_assert_eq!(&back, &rows);
            let mut second = Vec::new();
            write_csv(&back, rfc, &mut second).unwrap();
            proptest::prop_assert_eq!(first, second);
        }
    }
}

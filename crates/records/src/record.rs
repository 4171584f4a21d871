//! Records of the small comma-separated files the control plane reads
//! (history, forecasts, device status): one place that parses RFC 4180
//! (quoted fields may hold commas, quotes and line breaks; nothing is
//! trimmed), numbers lines, skips blank lines and the header, and checks
//! the field count, so every reader reports a bad line the same way.

/// `text` as a quoted string for an error message, a long one cut
/// ([`shardcast_plan::text::cut`]: a 100 MB name is named, not printed).
pub fn echo(text: &str) -> String {
    format!("{:?}", shardcast_plan::text::cut(text))
}

/// A line that is not a record of the expected shape.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct RecordError {
    pub line: usize,
    pub reason: String,
}

/// The columns of a file, in order; the last `optional` may be left out.
pub struct Columns {
    pub names: &'static [&'static str],
    pub optional: usize,
}

impl Columns {
    fn required(&self) -> usize {
        self.names.len() - self.optional
    }

    fn describe(&self) -> String {
        let (req, opt) = self.names.split_at(self.required());
        let mut s = req.join(",");
        for o in opt {
            s.push_str(&format!("[,{o}]"));
        }
        s
    }
}

/// The records of `text`: (line number where the record starts, from 1;
/// its fields). Blank lines are skipped, and so is a header as the first
/// record (the column names, with or without the optional ones). A UTF-8
/// byte-order mark is ignored.
pub fn records<'a>(
    text: &'a str,
    cols: &'a Columns,
) -> impl Iterator<Item = Result<(usize, Vec<String>), RecordError>> + 'a {
    let text = shardcast_plan::text::strip_bom(text);
    let reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut first = true;
    // Line numbers from byte offsets (the reader's own line count skips
    // blank lines, and a record's position is where the reader started
    // looking for it, before the blank lines it skipped). Records come in
    // order, so the count goes on from the last one: one pass over the
    // text in all, not one per record.
    let bytes = text.as_bytes();
    let (mut counted_to, mut lines) = (0usize, 1usize);
    let mut line_of = move |byte: u64| {
        let mut end = (byte as usize).min(bytes.len());
        while end < bytes.len() && matches!(bytes[end], b'\n' | b'\r') {
            end += 1;
        }
        if end > counted_to {
            lines += bytes[counted_to..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            counted_to = end;
        }
        lines
    };
    reader.into_records().filter_map(move |r| {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| line_of(p.byte()));
                return Some(Err(RecordError {
                    line,
                    reason: format!("not CSV: {e}"),
                }));
            }
        };
        let line = r.position().map_or(0, |p| line_of(p.byte()));
        let is_first = std::mem::replace(&mut first, false);
        let f: Vec<String> = r.iter().map(str::to_string).collect();
        // The csv reader yields a blank line as no record at all; a line
        // holding only spaces is one empty-ish field.
        if f.len() == 1 && f[0].trim().is_empty() {
            first = is_first;
            return None;
        }
        let header = (cols.required()..=cols.names.len())
            .any(|k| f.len() == k && f.iter().zip(cols.names).all(|(a, b)| a.trim() == *b));
        if is_first && header {
            return None;
        }
        if !(cols.required()..=cols.names.len()).contains(&f.len()) {
            return Some(Err(RecordError {
                line,
                reason: format!(
                    "expected {} fields ({}), found {}",
                    if cols.optional == 0 {
                        cols.names.len().to_string()
                    } else {
                        format!("{} to {}", cols.required(), cols.names.len())
                    },
                    cols.describe(),
                    f.len()
                ),
            }));
        }
        Some(Ok((line, f)))
    })
}

/// A CSV writer that quotes a field only when it must (a comma, a quote, a
/// line break, or leading/trailing space), so what it writes reads back
/// exactly.
pub fn writer<W: std::io::Write>(out: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(out)
}

/// A `csv` error as the I/O error writers report.
pub fn io_error(e: csv::Error) -> std::io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLS: Columns = Columns {
        names: &["a", "b", "c"],
        optional: 1,
    };

    fn ok(text: &str) -> Vec<(usize, Vec<String>)> {
        records(text, &COLS).map(Result::unwrap).collect()
    }

    #[test]
    fn numbers_lines_skips_header_and_blanks_checks_shape() {
        assert_eq!(
            ok("a,b\n\n1, 2\n3,4,5\r\n"),
            vec![
                (3, vec!["1".into(), " 2".into()]),
                (4, vec!["3".into(), "4".into(), "5".into()])
            ]
        );
        let err = records("1,2\n1\n", &COLS).nth(1).unwrap().unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.reason, "expected 2 to 3 fields (a,b[,c]), found 1");
        // A header anywhere but first is a record.
        assert_eq!(records("1,2\na,b\n", &COLS).count(), 2);
        // A byte-order mark does not hide the header.
        assert_eq!(ok("\u{feff}a,b,c\n1,2\n").len(), 1);
    }

    #[test]
    fn quoted_fields_hold_commas_quotes_and_line_breaks() {
        let got = ok("\"x,y\",\"say \"\"hi\"\"\"\n\"two\nlines\", b \n7,8\n");
        assert_eq!(got[0], (1, vec!["x,y".into(), "say \"hi\"".into()]));
        assert_eq!(got[1], (2, vec!["two\nlines".into(), " b ".into()]));
        // The record after a two-line field starts on line 4.
        assert_eq!(got[2].0, 4);
    }

    #[test]
    fn long_fields_are_cut_in_messages() {
        let long = "n".repeat(1000);
        let e = echo(&long);
        assert!(e.len() < 140 && e.contains("1000 bytes"), "{e}");
        assert_eq!(echo("ab"), "\"ab\"");
    }
}

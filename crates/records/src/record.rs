//! Records of the small comma-separated files the control plane reads
//! (history, forecasts, device status): one place that numbers lines,
//! skips blanks and the header, and checks the field count, so every
//! reader reports a bad line the same way.

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

/// The records of `text`: (line number from 1, fields trimmed). Blank lines
/// are skipped, and so is a header on line 1 (the column names, with or
/// without the optional ones).
pub fn records<'a>(
    text: &'a str,
    cols: &'a Columns,
) -> impl Iterator<Item = Result<(usize, Vec<&'a str>), RecordError>> + 'a {
    text.lines().enumerate().filter_map(move |(i, line)| {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let header =
            (cols.required()..=cols.names.len()).any(|k| f.len() == k && f[..] == cols.names[..k]);
        if i == 0 && header {
            return None;
        }
        if !(cols.required()..=cols.names.len()).contains(&f.len()) {
            return Some(Err(RecordError {
                line: i + 1,
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
        Some(Ok((i + 1, f)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLS: Columns = Columns {
        names: &["a", "b", "c"],
        optional: 1,
    };

    #[test]
    fn numbers_lines_skips_header_and_blanks_checks_shape() {
        let got: Vec<_> = records("a,b\n\n1, 2\n3,4,5\r\n", &COLS).collect();
        assert_eq!(
            got,
            vec![Ok((3, vec!["1", "2"])), Ok((4, vec!["3", "4", "5"]))]
        );
        let err = records("1,2\n1\n", &COLS).nth(1).unwrap().unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.reason, "expected 2 to 3 fields (a,b[,c]), found 1");
        // A header anywhere but line 1 is a record.
        assert_eq!(records("1,2\na,b\n", &COLS).count(), 2);
    }
}

//! Typed command-line values, parsed by clap when the arguments are read,
//! so a bad value is refused with the flag's name before anything runs.

/// A duration given as text (`1m`, `1h`, `90s`), kept with that text (it
/// names forecast horizons in the output). Whole seconds, above zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub label: String,
    pub secs: u64,
}

/// clap value parser for [`Span`].
pub fn span(text: &str) -> Result<Span, String> {
    let label = text.trim();
    let d = humantime::parse_duration(label)
        .map_err(|e| format!("{label:?} is not a duration such as 90s, 5m or 1h ({e})"))?;
    if d.as_secs() == 0 || d.subsec_nanos() != 0 {
        return Err(format!(
            "{label:?} is not a whole, positive number of seconds"
        ));
    }
    Ok(Span {
        label: label.to_string(),
        secs: d.as_secs(),
    })
}

/// clap value parser for a positive duration (`500ms`, `2s`).
pub fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as 500ms or 2s ({e})"))?;
    if d.is_zero() {
        return Err(format!("{text:?} is not positive"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_whole_positive_seconds() {
        assert_eq!(span("5m").unwrap().secs, 300);
        assert_eq!(span(" 1h ").unwrap().label, "1h");
        assert!(span("1500ms").unwrap_err().contains("whole"));
        assert!(span("0s").unwrap_err().contains("positive"));
        assert!(span("soon").unwrap_err().contains("not a duration"));
    }
}

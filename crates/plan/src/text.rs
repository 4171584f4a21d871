//! Text helpers for the documents users write by hand (plans, workloads,
//! scenarios): a byte-order mark is not an error, and a name echoed in an
//! error is cut to a readable length.

/// Longest part of a name an error message repeats.
const ECHO_MAX: usize = 80;

/// `text` without a leading UTF-8 byte-order mark (editors on some systems
/// write one; JSON parsers refuse it).
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// `name`, or its first [`ECHO_MAX`] characters and its length when it is
/// longer: a 100 MB name in a file is named, not printed whole.
pub fn cut(name: &str) -> String {
    if name.chars().count() <= ECHO_MAX {
        return name.to_string();
    }
    let head: String = name.chars().take(ECHO_MAX).collect();
    format!("{head}... ({} bytes)", name.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boms_go_and_long_names_are_cut() {
        assert_eq!(strip_bom("\u{feff}{}"), "{}");
        assert_eq!(strip_bom("{}"), "{}");
        assert_eq!(cut("short"), "short");
        let c = cut(&"é".repeat(1000));
        assert!(
            c.ends_with("(2000 bytes)") && c.chars().count() < 100,
            "{c}"
        );
    }
}

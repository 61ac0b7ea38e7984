//! Positions in configuration text, for error messages that name a line.
//!
//! A leaf module: templates, the policy and the alert settings all report
//! `FILE:LINE: message`, and all take the line from here.

/// The 1-based line number of a byte offset in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let before = &text[..offset.min(text.len())];
    before.lines().count().max(1) + usize::from(before.ends_with('\n'))
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn lines_count_from_one_and_a_newline_starts_the_next() {
        let text = "a = 1\nb = 2\n\nc";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 4), 1);
        assert_eq!(line_of(text, 6), 2);
        assert_eq!(line_of(text, 12), 3);
        assert_eq!(line_of(text, 13), 4);
        assert_eq!(line_of(text, 999), 4);
        assert_eq!(line_of("", 0), 1);
    }
}

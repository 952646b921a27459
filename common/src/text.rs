//! Text from devices and users made safe to show: control characters escaped for logs and
//! CSV cells, long values cut with a visible marker.

use std::borrow::Cow;

/// Ends a value that was cut short.
pub const CUT_MARKER: char = '…';

/// `s` with every control character (newline, ESC, DEL, C1 …) written as an escape (`\n`,
/// `\t`, `\r`, `\\`, else `\u{1b}`), so that a value can neither forge a log line nor send a
/// terminal escape. A backslash is doubled only when something was escaped, so that ordinary
/// paths read unchanged; borrowed when there is nothing to escape.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Cuts `s` to at most `max` characters, the last of them [`CUT_MARKER`]; true if it was cut.
pub fn truncate(s: &mut String, max: usize) -> bool {
    let Some((at, _)) = s.char_indices().nth(max) else {
        return false;
    };
    // `at` is the start of character `max`: keep `max - 1` characters and the marker.
    let keep = s[..at]
        .char_indices()
        .nth(max.saturating_sub(1))
        .map_or(at, |(i, _)| i);
    s.truncate(keep);
    if max > 0 {
        s.push(CUT_MARKER);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape_control("/tmp/a b"), Cow::Borrowed(_)));
        assert_eq!(escape_control("/tmp/a\\b"), "/tmp/a\\b");
        assert_eq!(
            escape_control("evil\u{1b}[2J\nINFO forged"),
            "evil\\u{1b}[2J\\nINFO forged"
        );
        assert_eq!(
            escape_control("a\\b\r\t\u{7f}\u{85}"),
            "a\\\\b\\r\\t\\u{7f}\\u{85}"
        );
        assert!(!escape_control("x\ny\u{1b}").chars().any(char::is_control));
    }

    #[test]
    fn truncation_keeps_max_characters_with_the_marker() {
        let mut s = "é".repeat(10);
        assert!(!truncate(&mut s, 10));
        assert_eq!(s, "é".repeat(10));
        assert!(truncate(&mut s, 4));
        assert_eq!(s, "ééé…");
        assert_eq!(s.chars().count(), 4);
        let mut long = "x".repeat(100_001);
        assert!(truncate(&mut long, 1000));
        assert_eq!(long.chars().count(), 1000);
        assert!(long.ends_with(CUT_MARKER));
    }
}

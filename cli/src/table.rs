//! Aligned plain-text tables and human timestamps.

use serde_json::Value;

/// The most characters a cell shows; a longer value is cut and ends in [`CUT_MARKER`]. The
/// whole value is one `--json` away. (Padding through `format!`'s width also panicked beyond
/// 65,535 characters.)
pub const MAX_CELL_CHARS: usize = 200;

/// Ends a cell that was cut to [`MAX_CELL_CHARS`].
pub const CUT_MARKER: char = '…';

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        // One line per row: control characters from agents must not break the layout.
        self.rows.push(
            cells
                .into_iter()
                .map(|c| {
                    let cut = c.chars().count() > MAX_CELL_CHARS;
                    let mut cell: String = c
                        .chars()
                        .take(if cut {
                            MAX_CELL_CHARS - 1
                        } else {
                            MAX_CELL_CHARS
                        })
                        .map(|ch| if ch.is_control() { ' ' } else { ch })
                        .collect();
                    if cut {
                        cell.push(CUT_MARKER);
                    }
                    cell
                })
                .collect(),
        );
    }

    pub fn print(&self) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(self.render().as_bytes());
        let _ = out.flush();
    }

    pub fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([self.header[i].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(c);
                let pad = widths[i].saturating_sub(c.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Formats unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS`; empty for null.
pub fn ts(v: &Value) -> String {
    let Some(ms) = v.as_i64() else {
        return String::new();
    };
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&fmt).unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_control_characters_are_flattened() {
        let mut t = Table::new(&["id", "name"]);
        t.row(vec!["1".into(), "a\nb".into()]);
        t.row(vec!["100".into(), "c".into()]);
        assert_eq!(t.render(), "ID   NAME\n1    a b\n100  c\n");
    }

    #[test]
    fn a_long_cell_is_cut_with_a_marker_and_never_panics() {
        let mut t = Table::new(&["id", "summary"]);
        t.row(vec!["1".into(), "x".repeat(100_001)]);
        t.row(vec!["2".into(), "y".repeat(MAX_CELL_CHARS)]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        let cut = format!("1   {}{CUT_MARKER}", "x".repeat(MAX_CELL_CHARS - 1));
        assert_eq!(lines[1], cut);
        // A cell of exactly the limit is shown whole.
        assert_eq!(lines[2], format!("2   {}", "y".repeat(MAX_CELL_CHARS)));
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() <= 4 + MAX_CELL_CHARS)
        );
    }

    #[test]
    fn cells_are_padded_by_characters_not_bytes() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["éé".into(), "1".into()]);
        t.row(vec!["e".into(), "2".into()]);
        assert_eq!(t.render(), "A   B\néé  1\ne   2\n");
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(ts(&serde_json::json!(0)), "1970-01-01 00:00:00");
        assert_eq!(ts(&Value::Null), "");
    }
}

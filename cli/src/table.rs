//! Aligned plain-text tables and human timestamps.

use serde_json::Value;

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
                    c.chars()
                        .map(|ch| if ch.is_control() { ' ' } else { ch })
                        .collect()
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
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect();
            out.push_str(line.join("  ").trim_end());
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
    fn timestamps_are_utc() {
        assert_eq!(ts(&serde_json::json!(0)), "1970-01-01 00:00:00");
        assert_eq!(ts(&Value::Null), "");
    }
}

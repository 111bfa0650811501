//! Plain-text tables for terminal output: columns padded to their widest cell.

use std::fmt::Write as _;

/// A table with a header row.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new<const N: usize>(header: [&str; N]) -> Self {
        Self { rows: vec![header.iter().map(|h| h.to_string()).collect()] }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row; the last column is not padded.
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| visible_width(s)).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c] - visible_width(cell);
                    let _ = write!(line, "{cell}{:pad$}  ", "");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The characters a terminal shows of `text`: colour escapes (`ESC [ … m`) take no room.
fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            width += 1;
        }
    }
    width
}

/// Colours for words a person should see at a glance, when the output is a terminal that
/// wants them (no `NO_COLOR`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paint {
    on: bool,
}

impl Paint {
    pub(crate) fn for_stdout() -> Self {
        use std::io::IsTerminal as _;
        Self { on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) }
    }

    pub(crate) fn is_on(self) -> bool {
        self.on
    }

    pub(crate) fn good(self, text: &str) -> String {
        self.paint("32", text)
    }

    pub(crate) fn warn(self, text: &str) -> String {
        self.paint("33", text)
    }

    pub(crate) fn bad(self, text: &str) -> String {
        self.paint("31", text)
    }

    pub(crate) fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.on { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }
}

/// `1 broker`, `2 brokers`.
pub(crate) fn plural(n: impl Into<u64>, what: &str) -> String {
    match n.into() {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut table = Table::new(["CHECK", "STATUS", "DETAIL"]);
        table.row(vec!["redis".into(), "ok".into(), "7.0.15".into()]);
        table.row(vec!["onnxruntime".into(), "FAIL".into(), "not found".into()]);
        assert_eq!(
            table.render(),
            "CHECK        STATUS  DETAIL\nredis        ok      7.0.15\nonnxruntime  FAIL    not found\n"
        );
    }

    #[test]
    fn colours_take_no_room() {
        let paint = Paint { on: true };
        let mut table = Table::new(["A", "B"]);
        table.row(vec![paint.good("ok"), "x".into()]);
        table.row(vec!["fail".into(), "y".into()]);
        assert_eq!(table.render(), "A     B\n\x1b[32mok\x1b[0m    x\nfail  y\n");
    }
}

//! The one renderer every benchmark table goes through: a heading, columns (text left,
//! numbers right), rows of cells, and notes under the table, as Markdown.

use std::fmt::Write as _;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table under construction.
#[derive(Debug, Clone)]
pub struct Table {
    heading: String,
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    /// A table with these columns; a column named with a trailing `>` is right-aligned
    /// (the marker is not shown).
    pub fn new(heading: impl Into<String>, columns: &[&str]) -> Table {
        let columns = columns
            .iter()
            .map(|c| match c.strip_suffix('>') {
                Some(name) => (name.to_owned(), Align::Right),
                None => ((*c).to_owned(), Align::Left),
            })
            .collect();
        Table {
            heading: heading.into(),
            columns,
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// One row; cells beyond the columns are dropped, missing ones shown as `-`. A `|` in
    /// a cell would end it early, so it is shown as `/`.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells
            .into_iter()
            .take(self.columns.len())
            .map(|c| c.replace('|', "/"))
            .collect();
        cells.resize(self.columns.len(), "-".into());
        self.rows.push(cells);
    }

    /// A line under the table.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### {}\n", self.heading);
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| n.as_str()).collect();
        let _ = writeln!(s, "| {} |", names.join(" | "));
        let rules: Vec<&str> = self
            .columns
            .iter()
            .map(|(_, a)| if *a == Align::Right { "---:" } else { "---" })
            .collect();
        let _ = writeln!(s, "|{}|", rules.join("|"));
        for row in &self.rows {
            let _ = writeln!(s, "| {} |", row.join(" | "));
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for note in &self.notes {
                let _ = writeln!(s, "- {note}");
            }
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_numbers_right_and_keep_cells_whole() {
        let mut t = Table::new("Example", &["name", "value>"]);
        t.row(vec!["a|b".into(), "1".into()]);
        t.row(vec!["short".into()]);
        t.note("measured here");
        assert_eq!(
            t.markdown(),
            "### Example\n\n| name | value |\n|---|---:|\n| a/b | 1 |\n| short | - |\n\n- measured here\n\n"
        );
    }
}

//! How the client commands print: tables for people (`-o table`, `-o wide` with more
//! columns), the API's own values for scripts (`-o json`, `-o yaml`), all through one checked
//! writer, so that a reader that goes away (`berth vm list | head -2`) ends the command
//! quietly with [`crate::exit::CLOSED_PIPE`] instead of a panic.

use std::io::Write;

use anyhow::Context;
use serde::Serialize;

/// `-o`: how to print an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people.
    #[default]
    Table,
    /// More columns.
    Wide,
    /// The API's JSON, exact values (ms since the epoch, MiB).
    Json,
    /// The same values as YAML.
    Yaml,
}

impl Format {
    pub fn is_data(self) -> bool {
        matches!(self, Format::Json | Format::Yaml)
    }
}

/// Writes text to standard output; a closed pipe comes back as the `BrokenPipe` error that
/// [`crate::exit::code_of`] maps to its code.
pub fn print(text: &str) -> anyhow::Result<()> {
    print_bytes(text.as_bytes())
}

pub fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("writing to standard output")
}

/// A value as JSON (pretty) or YAML, ending in a newline.
pub fn data<T: Serialize>(format: Format, v: &T) -> anyhow::Result<String> {
    let mut text = match format {
        Format::Yaml => serde_norway::to_string(v).context("writing YAML")?,
        _ => serde_json::to_string_pretty(v).context("writing JSON")?,
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// The widest a table cell prints, in characters; longer text ends in `…` (`-o json` has all).
const CELL_CHARS_MAX: usize = 64;

/// Rows under headers, left-aligned; columns marked wide show with `-o wide` only.
pub struct Table {
    columns: Vec<(&'static str, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `columns`: `(HEADER, wide_only)`.
    pub fn new(columns: &[(&'static str, bool)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// A row with one cell per column (wide ones included).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self, wide: bool) -> String {
        let keep: Vec<usize> = (0..self.columns.len())
            .filter(|&i| wide || !self.columns[i].1)
            .collect();
        let cut = |c: &str| -> String {
            if c.chars().count() > CELL_CHARS_MAX {
                let mut t: String = c.chars().take(CELL_CHARS_MAX - 1).collect();
                t.push('…');
                t
            } else {
                c.to_owned()
            }
        };
        let header: Vec<String> = keep.iter().map(|&i| self.columns[i].0.to_owned()).collect();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                keep.iter()
                    .map(|&i| cut(r.get(i).map_or("", String::as_str)))
                    .collect()
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for cells in std::iter::once(&header).chain(&rows) {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(parts.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_columns_show_only_when_wide() {
        let mut t = Table::new(&[("NAME", false), ("CAUSE", true), ("AGE", false)]);
        t.row(vec!["vm1".into(), "placed".into(), "3s".into()]);
        assert_eq!(t.render(false), "NAME  AGE\nvm1   3s\n");
        assert_eq!(t.render(true), "NAME  CAUSE   AGE\nvm1   placed  3s\n");
    }

    #[test]
    fn yaml_and_json_carry_the_same_values() {
        let v = serde_json::json!({"id": 7, "state": "waiting"});
        assert_eq!(data(Format::Yaml, &v).unwrap(), "id: 7\nstate: waiting\n");
        assert!(data(Format::Json, &v).unwrap().contains("\"id\": 7"));
    }
}

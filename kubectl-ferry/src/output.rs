//! Output the way kubectl prints it: a table with an upper-case header by
//! default (`--no-headers` drops it), or the report as JSON or YAML for
//! scripts (`-o json|yaml`). Colour only when standard output is a
//! terminal and `NO_COLOR` is unset.

use std::io::IsTerminal;

use serde::Serialize;

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A table (the default).
    #[default]
    Table,
    /// The report as one JSON document.
    Json,
    /// The report as one YAML document.
    Yaml,
}

/// Where and how a command prints.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// The format.
    pub format: Format,
    /// Tables without their header line.
    pub no_headers: bool,
    /// Whether colour may be used.
    pub colour: bool,
}

impl Output {
    /// The output for `format` and `no_headers`, with colour only on a
    /// terminal without `NO_COLOR`.
    pub fn new(format: Format, no_headers: bool) -> Self {
        let colour = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self {
            format,
            no_headers,
            colour,
        }
    }

    /// Prints `report`: its table, or the report itself as JSON or YAML.
    pub fn print<R: Serialize>(
        &self,
        report: &R,
        table: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let text = self.render(report, table)?;
        print!("{text}");
        Ok(())
    }

    /// What [`Output::print`] prints.
    pub fn render<R: Serialize>(
        &self,
        report: &R,
        table: impl FnOnce() -> String,
    ) -> anyhow::Result<String> {
        Ok(match self.format {
            Format::Table => table(),
            Format::Json => {
                let mut text = serde_json::to_string_pretty(report)?;
                text.push('\n');
                text
            }
            Format::Yaml => serde_yaml::to_string(report)?,
        })
    }

    /// `text` in red when colour is on.
    pub fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }

    /// `text` in green when colour is on.
    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    /// `text` in yellow when colour is on.
    pub fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// A kubectl-style table: upper-case headers, columns padded with three
/// spaces, empty cells shown as `<none>`.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra cells are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, with or without its header line.
    pub fn render(&self, no_headers: bool) -> String {
        let columns = self.headers.len();
        let cell = |row: &Vec<String>, i: usize| -> String {
            match row.get(i).map(String::as_str) {
                None | Some("") => "<none>".to_owned(),
                Some(text) => text.to_owned(),
            }
        };
        let mut widths: Vec<usize> = self.headers.iter().map(|h| visible_len(h)).collect();
        for row in &self.rows {
            for (i, width) in widths.iter_mut().enumerate() {
                *width = (*width).max(visible_len(&cell(row, i)));
            }
        }
        let mut out = String::new();
        let mut line = |cells: Vec<String>| {
            let mut text = String::new();
            for (i, c) in cells.iter().enumerate() {
                text.push_str(c);
                if i + 1 < columns {
                    let pad = widths[i] - visible_len(c) + 3;
                    text.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        if !no_headers {
            line(self.headers.clone());
        }
        for row in &self.rows {
            line((0..columns).map(|i| cell(row, i)).collect());
        }
        out
    }
}

/// The length of `text` as shown, without colour escapes.
fn visible_len(text: &str) -> usize {
    let mut len = 0;
    let mut escape = false;
    for c in text.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => len += 1,
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_columns_like_kubectl_and_shows_empty_cells_as_none() {
        let mut table = Table::new(&["name", "maxTtl"]);
        table.row(vec!["orders-db".into(), "10m".into()]);
        table.row(vec!["x".into(), String::new()]);
        assert_eq!(
            table.render(false),
            "NAME        MAXTTL\norders-db   10m\nx           <none>\n"
        );
        assert_eq!(table.render(true), "orders-db   10m\nx           <none>\n");
    }

    #[test]
    fn colour_escapes_do_not_count_towards_the_width() {
        let output = Output {
            format: Format::Table,
            no_headers: false,
            colour: true,
        };
        let mut table = Table::new(&["a", "b"]);
        table.row(vec![output.green("yes"), "1".into()]);
        let text = table.render(true);
        assert_eq!(text, "\x1b[32myes\x1b[0m   1\n");
    }
}

//! A minimal column formatter for the listings: left-aligned columns, two
//! spaces apart, no trailing blanks. Hand-written because it is twenty lines
//! and the listings need nothing more (no wrapping, no colours).

use std::fmt;

pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Add a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Print the table, or `empty` when it has no rows (a lone header reads
    /// like a failure).
    pub fn print_or(&self, empty: &str) {
        if self.rows.is_empty() {
            println!("{empty}");
        } else {
            print!("{self}");
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.headers.len();
        let cell = |row: &[String], i: usize| row.get(i).map_or("", |s| s.as_str()).to_owned();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(row, i).chars().count());
            }
        }
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cell(row, i);
                if i + 1 < n {
                    line.push_str(&format!("{c:<w$}  "));
                } else {
                    line.push_str(&c);
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&["ID", "NAME", "STATE"]);
        t.row(vec!["1".into(), "demo".into(), "running".into()]);
        t.row(vec!["12".into(), "x".into()]);
        assert_eq!(t.to_string(), "ID  NAME  STATE\n1   demo  running\n12  x\n");
    }
}

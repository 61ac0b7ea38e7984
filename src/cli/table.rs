//! Plain-text tables for `ps` and `audit`: each column as wide as its widest
//! cell (at least its minimum), so a long value moves the columns after it in
//! every row alike; the last column is not padded. Cells are one line each:
//! every cell is escaped where the table is laid out ([`crate::output::escape`]),
//! so a user's text can neither send a terminal escapes nor cut its row.

use crate::output::escape;

/// How a column's cells sit in its width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A column: its header, alignment and least width.
pub struct Column {
    pub header: &'static str,
    pub align: Align,
    pub min: usize,
}

pub const fn left(header: &'static str, min: usize) -> Column {
    Column {
        header,
        align: Align::Left,
        min,
    }
}

pub const fn right(header: &'static str, min: usize) -> Column {
    Column {
        header,
        align: Align::Right,
        min,
    }
}

/// The widths of `columns` over `rows` (cells counted in characters).
pub fn widths(columns: &[Column], rows: &[Vec<String>]) -> Vec<usize> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|cell| escape(cell).chars().count())
                .chain([c.header.chars().count(), c.min])
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// One row laid out in `widths`, cells one space apart (two before the last).
pub fn line(columns: &[Column], widths: &[usize], cells: &[String]) -> String {
    let mut out = String::new();
    let last = cells.len().saturating_sub(1);
    for (i, cell) in cells.iter().enumerate() {
        let cell = &*escape(cell);
        if i > 0 {
            out.push_str(if i == last { "  " } else { " " });
        }
        let pad = widths[i].saturating_sub(cell.chars().count());
        match columns[i].align {
            _ if i == last => out.push_str(cell),
            Align::Left => {
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', pad));
            }
            Align::Right => {
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(cell);
            }
        }
    }
    out
}

/// The header row.
pub fn header(columns: &[Column], widths: &[usize]) -> String {
    let cells: Vec<String> = columns.iter().map(|c| c.header.to_string()).collect();
    line(columns, widths, &cells)
}

/// `text` on one line, escaped ([`crate::output::escape`]); a cell needs no
/// call (the table escapes every cell), a line outside the table does.
pub fn one_line(text: &str) -> String {
    escape(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLS: [Column; 3] = [left("NAME", 4), right("N", 3), left("WHAT", 0)];

    fn cells(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_long_cell_widens_its_column_in_every_row() {
        let rows = vec![
            cells(&["a", "1", "x"]),
            cells(&["a-very-long-name", "22", "y"]),
        ];
        let w = widths(&COLS, &rows);
        let lines: Vec<String> = std::iter::once(header(&COLS, &w))
            .chain(rows.iter().map(|r| line(&COLS, &w, r)))
            .collect();
        assert_eq!(lines[0], "NAME               N  WHAT");
        assert_eq!(lines[1], "a                  1  x");
        assert_eq!(lines[2], "a-very-long-name  22  y");
    }

    #[test]
    fn one_line_escapes_newlines_and_control_characters() {
        assert_eq!(one_line("python3 -c 'a\nb'\t"), "python3 -c 'a\\nb'\\t");
        assert_eq!(one_line("plain ü"), "plain ü");
    }

    #[test]
    fn cells_are_escaped_where_the_table_is_laid_out() {
        let rows = vec![cells(&["r\u{1b}[2J", "1", "\u{202e}x\ny"])];
        let w = widths(&COLS, &rows);
        let l = line(&COLS, &w, &rows[0]);
        assert_eq!(l, "r\\u001b[2J   1  \\u202ex\\ny");
    }
}

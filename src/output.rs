//! Standard output of every command, what happens when it cannot be written,
//! and what of a user's text may reach a terminal.
//!
//! `print!` panics on a write error. Here a write error is a [`Failure`] the
//! command returns: a closed pipe (`wfcg ps --all | head -1`) ends it quietly
//! with exit 0, as for other Unix tools; any other error (a full disk) is one
//! line on stderr and exit 1. Lines for stderr go through [`errln!`], which
//! never panics either.
//!
//! Nothing a user wrote reaches a terminal raw (SECURITY.md, class "Output").
//! One function, [`escape_into`], writes control characters (C0, DEL, C1),
//! hence every escape sequence (ESC, CSI, OSC: their introducer), and the
//! characters that reorder or hide text (bidi overrides, embeddings, isolates
//! and marks; line and paragraph separators; invisible format characters) as
//! visible `\n`, `\t`, `\r` or `\uXXXX` text. It is used twice:
//!
//! - at the sink: every line written by [`line`], [`outln!`], [`errln!`],
//!   [`err_line`] and [`json`] goes through it, keeping only its newlines, so
//!   no escape sequence reaches the terminal however the line was made;
//! - per field: [`Shown`] (and [`escape`]) for a value a user can influence
//!   inside a line (a workflow name, an argv, a status text), so that its own
//!   newlines and tabs cannot forge lines or columns either.
//!
//! The escapes are those of JSON (and TOML), so JSON written through the sink
//! stays valid and means exactly the same: serde already escapes C0 inside
//! strings, and the other characters appear only inside strings, where
//! `\uXXXX` is the same character. `--json` output round-trips exactly.

use std::borrow::Cow;
use std::fmt::{self, Display, Write as _};
use std::io::{self, Write};

use crate::exit::{self, Failure};

/// Whether `c` may not reach a terminal as it is.
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        // C0 (with tab and newline), DEL, C1 (0x9b is CSI, 0x9d OSC).
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // Arabic letter mark; zero width space; left-to-right and right-to-left marks.
        | '\u{61c}' | '\u{200b}' | '\u{200e}' | '\u{200f}'
        // Line and paragraph separators; bidi embeddings and overrides (202A–202E).
        | '\u{2028}'..='\u{202e}'
        // Word joiner and invisible operators; bidi isolates (2066–2069); deprecated format.
        | '\u{2060}'..='\u{206f}'
        // Zero width no-break space (byte order mark).
        | '\u{feff}')
}

/// Which characters a text keeps as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// None: a field inside a line (its newline would forge a line).
    Nothing,
    /// Newlines: a whole line, or lines, as the sink writes them.
    Newlines,
    /// Newlines and tabs: a program's output shown whole (`wfcg logs`), its
    /// lines and indentation as they were; a carriage return is still shown as
    /// `\r` (it could hide what came before it on the line).
    Output,
}

impl Keep {
    fn keeps(self, c: char) -> bool {
        match self {
            Keep::Nothing => false,
            Keep::Newlines => c == '\n',
            Keep::Output => c == '\n' || c == '\t',
        }
    }
}

/// Writes `text` to `out` with every unsafe character ([`is_unsafe`]) written as
/// `\n`, `\t`, `\r` or `\uXXXX` (all of them are in the Basic Multilingual
/// Plane). Everything else, printable ASCII (the backslash too) and ordinary
/// UTF-8, is written unchanged. The one function that makes text safe to show.
pub fn escape_into(out: &mut impl fmt::Write, text: &str, keep: Keep) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| is_unsafe(c) && !keep.keeps(c)) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '\n' => out.write_str("\\n")?,
            '\t' => out.write_str("\\t")?,
            '\r' => out.write_str("\\r")?,
            c => write!(out, "\\u{:04x}", u32::from(c))?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// `text` with every unsafe character escaped (newlines too): borrowed when
/// there was nothing to escape.
pub fn escape(text: &str) -> Cow<'_, str> {
    if text.contains(is_unsafe) {
        let mut out = String::with_capacity(text.len() + 8);
        let _ = escape_into(&mut out, text, Keep::Nothing);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// `text` with every unsafe character escaped but newlines (a whole message).
pub fn escape_lines(text: &str) -> Cow<'_, str> {
    if text.contains(|c| is_unsafe(c) && c != '\n') {
        let mut out = String::with_capacity(text.len() + 8);
        let _ = escape_into(&mut out, text, Keep::Newlines);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// A value a user can influence, shown escaped (newlines too) when formatted:
/// `outln!("workflow: {}", Shown(&name))`.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_none() {
            return escape_into(f, self.0, Keep::Nothing);
        }
        // Padding counts the escaped text, as it is shown.
        f.pad(&escape(self.0))
    }
}

/// [`Shown`] of an optional value, `-` when absent.
pub fn shown_or_dash(value: &Option<String>) -> Shown<'_> {
    Shown(value.as_deref().unwrap_or("-"))
}

/// An [`io::Write`] seen as a [`fmt::Write`] that escapes what it is given
/// (keeping newlines): the sink every line passes. The first I/O error is kept.
struct Sink<W: Write> {
    inner: W,
    error: Option<io::Error>,
}

impl<W: Write> Sink<W> {
    /// Writes `text` and a newline, escaped, then flushes.
    fn line(inner: W, text: impl Display) -> io::Result<()> {
        let mut sink = Sink { inner, error: None };
        let written = writeln!(sink, "{text}");
        match (written, sink.error) {
            (_, Some(e)) => Err(e),
            (Err(_), None) => Err(io::Error::other("a value could not be formatted")),
            (Ok(()), None) => sink.inner.flush(),
        }
    }
}

impl<W: Write> fmt::Write for Sink<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        struct Raw<'a, W: Write>(&'a mut W, &'a mut Option<io::Error>);
        impl<W: Write> fmt::Write for Raw<'_, W> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                self.0.write_all(s.as_bytes()).map_err(|e| {
                    *self.1 = Some(e);
                    fmt::Error
                })
            }
        }
        escape_into(
            &mut Raw(&mut self.inner, &mut self.error),
            s,
            Keep::Newlines,
        )
    }
}

/// A program's output (bytes, as it wrote them) on its way to a writer: as it
/// is when `raw`, else decoded as UTF-8 (an invalid byte shown as U+FFFD) and
/// escaped keeping newlines and tabs ([`Keep::Output`]). A character split
/// between two chunks is held until the next one ([`OutputStream::finish`]
/// shows what is left).
#[derive(Debug, Default)]
pub struct OutputStream {
    raw: bool,
    held: Vec<u8>,
}

impl OutputStream {
    pub fn new(raw: bool) -> OutputStream {
        OutputStream {
            raw,
            held: Vec::new(),
        }
    }

    /// Writes the next chunk.
    pub fn write(&mut self, out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
        if self.raw {
            return out.write_all(bytes);
        }
        self.held.extend_from_slice(bytes);
        let mut text = String::with_capacity(self.held.len());
        let mut rest = &self.held[..];
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    rest = &[];
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        // A character not complete yet: kept for the next chunk.
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.held = rest.to_vec();
        let mut shown = String::with_capacity(text.len());
        let _ = escape_into(&mut shown, &text, Keep::Output);
        out.write_all(shown.as_bytes())
    }

    /// Writes what is held (an incomplete character at the end: U+FFFD).
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.held.is_empty() {
            self.held.clear();
            out.write_all(char::REPLACEMENT_CHARACTER.to_string().as_bytes())?;
        }
        out.flush()
    }
}

/// Writes `text` and a newline to stdout, escaped ([`Keep::Newlines`]).
pub fn line(text: impl Display) -> Result<(), Failure> {
    Sink::line(io::stdout().lock(), text).map_err(failure)
}

/// Writes `text` and a newline to stderr, escaped ([`Keep::Newlines`]); a write
/// error there is ignored (stderr is where errors are said: nothing is left to
/// tell), never a panic as with `eprintln!`.
pub fn err_line(text: impl Display) {
    let _ = Sink::line(io::stderr().lock(), text);
}

/// Writes `value` as pretty JSON and a newline to stdout (through the sink:
/// the same JSON value, with no raw C1 or bidi characters in its strings).
pub fn json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot encode the answer: {e}")))?;
    line(text)
}

/// Lets `write` write bytes to stdout as they are (locked), then flushes it:
/// only for what wfcg generates itself (a man page, completions), never a
/// user's text.
pub fn with(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    write(&mut out).and_then(|()| out.flush()).map_err(failure)
}

/// Flushes what is left of stdout (in `main`, after the command).
pub fn flush() -> Result<(), Failure> {
    io::stdout().flush().map_err(failure)
}

/// The failure of a write to stdout: a closed pipe is a quiet exit 0.
pub fn failure(e: io::Error) -> Failure {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Failure::quiet(exit::OK)
    } else {
        Failure::new(exit::FAILED, format!("cannot write the output: {e}"))
    }
}

/// `outln!(...)`: [`line`] with `format!` arguments; returns its `Result`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// `errln!(...)`: [`err_line`] with `format!` arguments.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::err_line(format_args!($($arg)*))
    };
}
pub(crate) use errln;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What must never reach a terminal from a user's text.
    fn forbidden(c: char) -> bool {
        matches!(c, '\u{1b}' | '\u{9b}' | '\u{9d}' | '\u{7f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            || c.is_control()
    }

    #[test]
    fn escape_sequences_and_bidi_overrides_are_shown_as_text() {
        assert_eq!(
            escape("a\u{1b}]0;owned\u{7}b\u{1b}[2J\u{9b}31m\u{202e}cba\u{2066}x\u{2069}"),
            "a\\u001b]0;owned\\u0007b\\u001b[2J\\u009b31m\\u202ecba\\u2066x\\u2069"
        );
        assert_eq!(escape("python3 -c 'a\nb'\t\r"), "python3 -c 'a\\nb'\\t\\r");
        assert_eq!(escape_lines("one\ntwo\u{1b}"), "one\ntwo\\u001b");
        assert_eq!(
            escape("\u{61c}\u{200e}\u{200f}\u{2028}\u{feff}\u{7f}\u{85}"),
            "\\u061c\\u200e\\u200f\\u2028\\ufeff\\u007f\\u0085"
        );
    }

    #[test]
    fn ordinary_text_is_unchanged_and_borrowed() {
        for s in [
            "plain ü",
            "ansible-playbook site.yml",
            "日本語 👨‍👩‍👧 ‍ zwj",
            "a\\u001b",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(t) if t == s), "{s}");
        }
    }

    #[test]
    fn shown_pads_the_escaped_text() {
        assert_eq!(format!("[{:<6}]", Shown("a\u{1b}")), "[a\\u001b]");
        assert_eq!(format!("[{:<4}]", Shown("ab")), "[ab  ]");
        assert_eq!(format!("[{:>4}]", Shown("ab")), "[  ab]");
    }

    #[test]
    fn json_through_the_sink_is_the_same_value() {
        let v = serde_json::json!({"w": "x\u{1b}]0;t\u{7}\u{9b}\u{202e}\\\u{2066}\n\t\u{7f}"});
        let text = serde_json::to_string_pretty(&v).unwrap();
        let shown = escape_lines(&text);
        assert!(!shown.contains(|c| forbidden(c) && c != '\n'), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn output_keeps_lines_and_tabs_and_escapes_the_rest_across_chunks() {
        let mut out = Vec::new();
        let mut stream = OutputStream::new(false);
        // "ü" (c3 bc) split between two chunks; an invalid byte; colours.
        for chunk in [
            &b"a\tb\n\x1b[31mred\x1b[0m \xc3"[..],
            &b"\xbc \xff\rx\n\xe2\x80"[..],
        ] {
            stream.write(&mut out, chunk).unwrap();
        }
        stream.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\tb\n\\u001b[31mred\\u001b[0m \u{fc} \u{fffd}\\rx\n\u{fffd}"
        );
        let mut raw = Vec::new();
        let mut stream = OutputStream::new(true);
        stream.write(&mut raw, b"\x1b[31mred\xff").unwrap();
        stream.finish(&mut raw).unwrap();
        assert_eq!(raw, b"\x1b[31mred\xff");
    }

    proptest! {
        #[test]
        fn nothing_forbidden_survives(s in any::<String>(), t in "[\\x00-\\x{a0}\\x{2000}-\\x{2070}\\x{feff}]{0,40}") {
            for s in [&s, &t] {
                let e = escape(s);
                prop_assert!(!e.contains(forbidden) && !e.contains(is_unsafe), "{e:?}");
                let f = Shown(s).to_string();
                prop_assert!(!f.contains(is_unsafe), "{f:?}");
                let l = escape_lines(s);
                prop_assert!(!l.contains(|c| forbidden(c) && c != '\n'), "{l:?}");
            }
        }

        #[test]
        fn printable_ascii_and_ordinary_utf8_are_unchanged(s in "[ -~]{0,60}", u in "\\PC{0,40}") {
            prop_assert_eq!(escape(&s), s.as_str());
            if !u.contains(is_unsafe) {
                prop_assert_eq!(escape(&u), u.as_str());
            }
        }

        #[test]
        fn json_strings_keep_their_value(s in any::<String>()) {
            let text = serde_json::to_string(&s).unwrap();
            let back: String = serde_json::from_str(&escape_lines(&text)).unwrap();
            prop_assert_eq!(back, s);
        }
    }
}

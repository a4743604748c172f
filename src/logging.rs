//! Log output in the contract format of the SPEC:
//! `YYYY-MM-DD HH:MM:SS LEVEL    action: <action> | result: <result> | <key>: <value> | …`
//! written to stdout.

use std::io::Write;

use log::LevelFilter;

/// Formats one log line (without the trailing newline).
pub fn format_line(
    timestamp: &str,
    level: log::Level,
    message: &std::fmt::Arguments<'_>,
) -> String {
    let mut line = Vec::new();
    // Writing into a Vec cannot fail; the pieces are UTF-8 text.
    let _ = write_line(&mut line, timestamp, level, message);
    String::from_utf8_lossy(&line).into_owned()
}

/// Writes one log line (without the trailing newline) to `out`: what the logger
/// writes and [`format_line`] returns.
fn write_line(
    out: &mut impl Write,
    timestamp: &str,
    level: log::Level,
    message: &std::fmt::Arguments<'_>,
) -> std::io::Result<()> {
    write!(out, "{timestamp} {level:<8} {message}")
}

/// Makes untrusted text (a peer's reason, a line of a file) safe inside a log line:
/// `|` would fake a field separator and a line break a whole new line, so `|`
/// becomes `¦`; control characters (`\n`, `\u{1b}`), the Unicode line and paragraph
/// separators (U+2028, U+2029) and the bidirectional controls (U+202A–U+202E,
/// U+2066–U+2069, which could make a line read differently from what it holds) are
/// escaped; and a backslash is doubled, so an escaped newline (`\n`) cannot be told
/// apart from the two characters `\` `n` sent as text (which become `\\n`).
pub fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c == '|' || c == '\\' || needs_escape(c))
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut clean = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => clean.push('¦'),
            '\\' => clean.push_str("\\\\"),
            c if c.is_control() => clean.extend(c.escape_default()),
            c if needs_escape(c) => clean.extend(c.escape_unicode()),
            c => clean.push(c),
        }
    }
    std::borrow::Cow::Owned(clean)
}

/// Whether `c` is escaped by [`sanitize`] (besides `|` and `\\`).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The most characters of a peer's message a log line shows (see [`excerpt`]).
pub const MAX_LOGGED_CHARS: usize = 200;

/// A peer's message (any bytes) made fit for a log line: decoded as UTF-8 (invalid
/// sequences become `�`), cut to [`MAX_LOGGED_CHARS`] characters (an ellipsis and the
/// full size mark the cut), then [`sanitize`]d.
pub fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut cut: String = text.chars().take(MAX_LOGGED_CHARS).collect();
    if cut.len() < text.len() {
        cut.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    sanitize(&cut).into_owned()
}

/// The timestamp of log lines, formatted once per second (a busy server logs tens of
/// thousands of lines a second; the local time and its formatting are not cheap).
#[derive(Default)]
struct Stamp {
    /// The second (since the Unix epoch) `text` is for.
    second: Option<u64>,
    text: String,
}

impl Stamp {
    /// The local time now, `YYYY-MM-DD HH:MM:SS`.
    fn now(&mut self) -> &str {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second != Some(second) {
            self.second = Some(second);
            self.text = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
        }
        &self.text
    }
}

thread_local! {
    static STAMP: std::cell::RefCell<Stamp> = std::cell::RefCell::new(Stamp::default());
}

/// Installs the logger at `level`. Calling it again is harmless (the first call wins).
pub fn init(level: LevelFilter) {
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .target(env_logger::Target::Stdout)
        .format(|buf, record| {
            STAMP.with(|stamp| {
                let mut stamp = stamp.borrow_mut();
                write_line(buf, stamp.now(), record.level(), record.args())?;
                writeln!(buf)
            })
        })
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timestamp_is_the_local_time_to_the_second() {
        let mut stamp = Stamp::default();
        let before = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
        let got = stamp.now().to_string();
        let after = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
        assert!(
            got == before || got == after,
            "{got} not {before} or {after}"
        );
        assert_eq!(got.len(), "2026-11-27 10:00:00".len());
    }

    #[test]
    fn lines_follow_the_contract() {
        let line = format_line(
            "2026-11-27 10:00:00",
            log::Level::Info,
            &format_args!("action: sorteo | result: success"),
        );
        assert_eq!(
            line,
            "2026-11-27 10:00:00 INFO     action: sorteo | result: success"
        );
        let line = format_line("t", log::Level::Error, &format_args!("x"));
        assert_eq!(line, "t ERROR    x");
    }

    #[test]
    fn untrusted_text_cannot_forge_fields_or_lines() {
        assert_eq!(sanitize("plain text, ñandú"), "plain text, ñandú");
        assert_eq!(
            sanitize("x | action: sorteo | result: success\nfake"),
            "x ¦ action: sorteo ¦ result: success\\nfake"
        );
    }

    #[test]
    fn line_separators_bidi_controls_and_backslashes_are_escaped() {
        assert_eq!(sanitize("a\u{2028}b\u{2029}c"), "a\\u{2028}b\\u{2029}c");
        assert_eq!(
            sanitize("x\u{202e}yz\u{202a}\u{202b}\u{202c}\u{202d}"),
            "x\\u{202e}yz\\u{202a}\\u{202b}\\u{202c}\\u{202d}"
        );
        assert_eq!(
            sanitize("\u{2066}\u{2067}\u{2068}\u{2069}"),
            "\\u{2066}\\u{2067}\\u{2068}\\u{2069}"
        );
        // The text `\n` and an escaped newline differ.
        assert_eq!(sanitize("a\\nb"), "a\\\\nb");
        assert_eq!(sanitize("a\nb"), "a\\nb");
        assert_ne!(sanitize("a\\nb"), sanitize("a\nb"));
        // Characters next to those ranges are left alone.
        assert_eq!(
            sanitize("\u{2027}\u{202f}\u{2065}\u{206a}"),
            "\u{2027}\u{202f}\u{2065}\u{206a}"
        );
        assert!(matches!(
            sanitize("ñandú – ok"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn excerpts_are_bounded_and_safe() {
        assert_eq!(
            excerpt("[CLIENT 1] Message N°1".as_bytes()),
            "[CLIENT 1] Message N°1"
        );
        assert_eq!(excerpt(b"a|b\r\n\xff"), "a¦b\\r\\n\u{fffd}");
        let long = vec![b'y'; 5000];
        assert_eq!(
            excerpt(&long),
            format!("{}… (5000 bytes)", "y".repeat(MAX_LOGGED_CHARS))
        );
        let exact = vec![b'z'; MAX_LOGGED_CHARS];
        assert_eq!(excerpt(&exact), "z".repeat(MAX_LOGGED_CHARS));
    }
}

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
    format!("{timestamp} {level:<8} {message}")
}

/// Makes untrusted text (a peer's reason, a line of a file) safe inside a log line:
/// `|` would fake a field separator and a line break a whole new line, so `|`
/// becomes `¦` and control characters are escaped.
pub fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c == '|' || c.is_control()) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut clean = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => clean.push('¦'),
            c if c.is_control() => clean.extend(c.escape_default()),
            c => clean.push(c),
        }
    }
    std::borrow::Cow::Owned(clean)
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

/// Installs the logger at `level`. Calling it again is harmless (the first call wins).
pub fn init(level: LevelFilter) {
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .target(env_logger::Target::Stdout)
        .format(|buf, record| {
            let timestamp = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
            writeln!(
                buf,
                "{}",
                format_line(&timestamp, record.level(), record.args())
            )
        })
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

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

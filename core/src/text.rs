//! Text from peers and users, made safe to print, and warnings a peer can trigger, rate
//! limited on the caller's clock.

use std::time::{Duration, Instant};

/// Target of per-task events, shown from `-vvv`.
pub const TASK_TARGET: &str = "conquer::task";

/// Characters that change how the text around them reads without being seen: the
/// bidirectional embeddings, overrides and isolates (U+202A..U+202E, U+2066..U+2069) and
/// the zero-width ones (U+200B..U+200F, U+2060, U+FEFF). A name holding U+202E prints
/// the rest of a log line backwards.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
    )
}

/// Whether `c` must not reach a terminal as it is: a control character (line breaks,
/// terminal escapes) or an invisible one ([`is_invisible`]).
pub fn unsafe_to_print(c: char) -> bool {
    c.is_control() || is_invisible(c)
}

/// Text from a peer or a user (a worker's name), made safe to print: control characters
/// (line breaks, terminal escapes) and invisible ones (bidirectional overrides,
/// zero-width characters) are escaped.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(unsafe_to_print) {
        std::borrow::Cow::Owned(text.escape_debug().to_string())
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// JSON text made safe to print: every invisible character ([`is_invisible`], which JSON
/// writers leave as they are) written as a `\uXXXX` escape, so the text parses to the same
/// values and shows no override on a terminal.
pub fn json_printable(json: String) -> String {
    if !json.chars().any(is_invisible) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_invisible(c) {
            out += &format!("\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Rate limit for warnings a peer can trigger at will (malformed messages): the first few
/// are logged, then at most one summary per interval, so a flood cannot flood the log.
pub struct RateLimited {
    burst: u32,
    interval: Duration,
    logged: u32,
    suppressed: u64,
    window_start: Option<Instant>,
}

impl RateLimited {
    pub fn new(burst: u32, interval: Duration) -> Self {
        RateLimited {
            burst,
            interval,
            logged: 0,
            suppressed: 0,
            window_start: None,
        }
    }

    /// Logs `message()` at warn unless the limit is reached; then counts it silently and
    /// reports the count when the interval has passed, by the caller's clock `now`.
    pub fn warn_at(&mut self, now: Instant, message: impl FnOnce() -> String) {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= self.interval {
            if self.suppressed > 0 {
                log::warn!("{} more like it suppressed", self.suppressed);
            }
            self.window_start = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < self.burst {
            self.logged += 1;
            log::warn!("{}", message());
        } else {
            self.suppressed += 1;
        }
    }
}

/// A peer's routing id as text for logs: itself if it is printable UTF-8, else hex.
pub fn peer_name(routing_id: &[u8]) -> String {
    match std::str::from_utf8(routing_id) {
        Ok(s) if !s.is_empty() && !s.chars().any(unsafe_to_print) => s.to_owned(),
        _ => routing_id.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// A byte count in binary units with three significant digits: `512 B`, `4.00 KiB`,
/// `33.6 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_control_characters_print_escaped() {
        assert_eq!(printable("w1"), "w1");
        assert_eq!(printable("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
    }

    #[test]
    fn names_with_invisible_characters_print_escaped() {
        assert_eq!(printable("w\u{202e}1"), "w\\u{202e}1");
        for c in [
            '\u{202a}', '\u{2066}', '\u{2069}', '\u{200b}', '\u{200f}', '\u{2060}', '\u{feff}',
        ] {
            let name = format!("a{c}b");
            assert!(!printable(&name).contains(c), "{:?}", c);
        }
        assert_eq!(printable("wörker ①"), "wörker ①");
        let json =
            serde_json::to_string(&serde_json::json!({"id": "evil\u{202e}gnp.exe"})).unwrap();
        let shown = json_printable(json);
        assert_eq!(shown, r#"{"id":"evil\u202egnp.exe"}"#);
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back["id"], "evil\u{202e}gnp.exe");
    }

    #[test]
    fn byte_counts_print_in_binary_units_with_three_digits() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(4096), "4.00 KiB");
        assert_eq!(bytes(35_232_000), "33.6 MiB");
        assert_eq!(bytes(400 << 20), "400 MiB");
        assert_eq!(bytes(u64::MAX), "16384 PiB");
    }
}

//! Logging to stderr, one line per event that several boxes' logs can be merged on:
//! `2026-11-28T10:00:00.123Z INFO  sink: message` — a UTC RFC 3339 timestamp with
//! milliseconds, the level, and the role with its name (a thread's name inside `conquer
//! run`, else the process's role). Results never go through here; they belong to `report`,
//! on stdout. Levels: the default shows what an operator needs (the backend chosen, what a
//! role waits for, warnings); `-q` only warnings and errors, `-v` adds connections and
//! batch events, `-vv` per-worker flow, `-vvv` per-task events. A bare level in `--log` or
//! `RUST_LOG` (`warn`) sets this program's level, lower or higher; other crates (wgpu,
//! naga) log only when a filter names them, in the usual `target=level` syntax.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Target of per-task events, shown from `-vvv`.
pub const TASK_TARGET: &str = "conquer::task";

static ROLE: OnceLock<String> = OnceLock::new();

/// The progress bar on stderr, if one is drawn: log lines are written with it cleared
/// and drawn again after, never onto its last frame.
static BAR: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Tells the logger about the progress bar on stderr (None once it is gone).
pub fn set_progress_bar(bar: Option<indicatif::ProgressBar>) {
    if let Ok(mut slot) = BAR.lock() {
        *slot = bar;
    }
}

/// stderr, with the progress bar (if any) cleared around each write.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Names the process in its log lines (`ventilator`, `worker gpu-box-1`), for threads that
/// carry no role name of their own. Call once, before logging starts.
/// Who is speaking: the thread's name where it has one of its own (a role of `conquer
/// run`: `sink`, `ventilator`, `worker-1`), else the process's role.
pub fn current_role() -> String {
    let thread = std::thread::current();
    match thread.name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => ROLE.get().cloned().unwrap_or_else(|| "conquer".to_owned()),
    }
}

pub fn set_role(role: String) {
    let _ = ROLE.set(role);
}

/// The filter for a verbosity count (-1: `-q`), before any `--log` or `RUST_LOG`
/// directives.
fn filter_for(verbosity: i8) -> &'static str {
    match verbosity {
        ..=-1 => "off,conquer=warn",
        0 => "off,conquer=info",
        1 => "off,conquer=debug",
        2 => "off,conquer=trace,conquer::task=off",
        _ => "off,conquer=trace",
    }
}

/// Installs the logger. `filter` (from `--log`, else `RUST_LOG`) adds directives in
/// env_logger's `target=level` syntax after those `verbosity` (-1 for `-q`) sets, so it
/// can widen or narrow them; a bare level is this program's. Idempotent: a second call
/// keeps the first logger.
pub fn init(verbosity: i8, filter: Option<&str>) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(filter_for(verbosity));
    let env = std::env::var("RUST_LOG").ok();
    if let Some(extra) = filter.or(env.as_deref()) {
        builder.parse_filters(&ours(extra));
    }
    builder
        .target(env_logger::Target::Pipe(Box::new(Stderr)))
        .format(|buf, record| {
            let role = current_role();
            let ours = record.target().starts_with("conquer");
            let level = record.level().as_str();
            if ours {
                writeln!(
                    buf,
                    "{} {level:<5} {role}: {}",
                    buf.timestamp_millis(),
                    record.args()
                )
            } else {
                writeln!(
                    buf,
                    "{} {level:<5} {role}: [{}] {}",
                    buf.timestamp_millis(),
                    record.target(),
                    record.args()
                )
            }
        });
    let _ = builder.try_init();
}

/// `extra` with each bare level (`warn`) made this program's (`conquer=warn`): a bare
/// level would otherwise only set other crates' default, under the more specific one
/// `-v` gives ours, so `--log warn` could never lower the default.
fn ours(extra: &str) -> String {
    extra
        .split(',')
        .map(|d| {
            let d = d.trim();
            if d.parse::<log::LevelFilter>().is_ok() {
                format!("conquer={d}")
            } else {
                d.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

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
    /// reports the count when the interval has passed.
    pub fn warn(&mut self, message: impl FnOnce() -> String) {
        self.warn_at(Instant::now(), message)
    }

    /// [`RateLimited::warn`] on the caller's clock (state machines have none of their own).
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
    fn each_verbosity_adds_a_layer() {
        assert!(filter_for(0).contains("conquer=info"));
        assert!(filter_for(1).contains("conquer=debug"));
        assert!(filter_for(2).contains("conquer::task=off"));
        assert!(!filter_for(3).contains("task"));
    }
}

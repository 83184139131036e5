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

pub use conquer_core::text::{
    is_invisible, json_printable, printable, unsafe_to_print, RateLimited, TASK_TARGET,
};

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

thread_local! {
    /// A role this thread speaks for a while ([`speaking_as`]).
    static SPEAKING_AS: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Who is speaking: the role this thread speaks as for a while ([`speaking_as`]), else the
/// thread's name where it has one of its own (a role of `conquer run`: `sink`,
/// `ventilator`, `worker-1`), else the process's role.
pub fn current_role() -> String {
    if let Some(role) = SPEAKING_AS.with(|r| r.borrow().clone()) {
        return role;
    }
    let thread = std::thread::current();
    match thread.name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => ROLE.get().cloned().unwrap_or_else(|| "conquer".to_owned()),
    }
}

/// Runs `f` with this thread's log lines and events said as `role`: `conquer run` binds
/// and connects each role on its main thread before the role's own thread starts.
pub fn speaking_as<T>(role: &str, f: impl FnOnce() -> T) -> T {
    let before = SPEAKING_AS.with(|r| r.replace(Some(role.to_owned())));
    let result = f();
    SPEAKING_AS.with(|r| *r.borrow_mut() = before);
    result
}

/// Names the process in its log lines (`ventilator`, `worker gpu-box-1`), for threads that
/// carry no role name of their own. Call once, before logging starts.
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

/// `--log`'s value checked: comma-separated directives (empty ones skipped), each a level
/// (off, error, warn, info, debug, trace) or `target=level` with a target of letters,
/// digits, `_`, `-` and `::`, and the whole optionally followed by env_logger's `/REGEX`. A
/// typo (`debgu`, `conquer=loud`) is an error, not a filter that logs nothing; a target
/// alone, which env_logger would read as all its levels, needs its level written.
pub fn parse_filter(text: &str) -> Result<String, String> {
    let levels = "off, error, warn, info, debug, trace";
    let directives = text.split_once('/').map_or(text, |(d, _regex)| d);
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let (target, level) = match d.split_once('=') {
            Some((t, l)) => (Some(t.trim()), l.trim()),
            None => (None, d),
        };
        if level.parse::<log::LevelFilter>().is_err() {
            return Err(format!(
                "`{d}`: `{level}` is not a level; give one of {levels}, alone or as target=level"
            ));
        }
        let fits = |c: char| c.is_ascii_alphanumeric() || "_-:".contains(c);
        if let Some(t) = target.filter(|t| t.is_empty() || !t.chars().all(fits)) {
            return Err(format!(
                "`{d}`: `{t}` is not a target (a crate or module path such as wgpu_hal or \
                 conquer::ventilator)"
            ));
        }
    }
    Ok(text.to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_verbosity_adds_a_layer() {
        assert!(filter_for(0).contains("conquer=info"));
        assert!(filter_for(1).contains("conquer=debug"));
        assert!(filter_for(2).contains("conquer::task=off"));
        assert!(!filter_for(3).contains("task"));
    }

    #[test]
    fn a_log_filter_with_a_typo_is_refused() {
        for good in [
            "warn",
            "wgpu_hal=info",
            "conquer::ventilator=trace,warn",
            "OFF",
            "a-b=Debug",
        ] {
            assert_eq!(parse_filter(good).as_deref(), Ok(good), "{good}");
        }
        for good in ["debug,", "info/worker", "conquer=debug,wgpu=warn"] {
            assert!(parse_filter(good).is_ok(), "{good}");
        }
        for bad in [
            "debgu",
            "conquer=loud",
            "===",
            "=info",
            "wgpu hal=info",
            "wgpu_hal",
        ] {
            let e = parse_filter(bad).expect_err(bad);
            assert!(e.contains("not a"), "{bad}: {e}");
        }
    }
}

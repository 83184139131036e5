//! `--events FILE` (or `-` for stdout): what each role observes, one JSON object a line,
//! for scripts and tests to follow a run without reading its log (as `cargo
//! --message-format json` and ripgrep's `--json` do).
//!
//! The state machines say what they observe as [`Note`]s among their commands; the shells
//! that bind, and the pumps that carry commands out, hand them to [`emit`]. Each line
//! names the event, the role that saw it (a thread's role in `conquer run`: `sink`,
//! `ventilator`, `worker-1`), and the Unix time in ms:
//!
//! ```json
//! {"event":"listening","role":"sink","unix_ms":1764892800000,"endpoint":"tcp://127.0.0.1:40123","socket":"results"}
//! ```

pub use conquer_core::events::{batch_name, line, Note};

use std::io::Write;
use std::sync::{Mutex, OnceLock};

type Out = Mutex<Box<dyn Write + Send>>;

/// Where events go, once `--events` opened it.
static OUT: OnceLock<Out> = OnceLock::new();
/// Whether events go to stdout (the report then travels in the `complete` event only).
static TO_STDOUT: OnceLock<bool> = OnceLock::new();

/// Opens `--events`: a file (created, or appended to) or `-` for stdout. Once per
/// process, before any role starts.
pub fn open(path: &std::path::Path) -> anyhow::Result<()> {
    let (out, stdout): (Box<dyn Write + Send>, bool) = if path.as_os_str() == "-" {
        (Box::new(std::io::stdout()), true)
    } else {
        // Appended to, never truncated: two processes given one file (a shared
        // CONQUER_EVENTS) each add their lines, whole (one write each).
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot write events to {} (--events): {e}; give a file in a folder you can \
                 write to, or - for stdout",
                    path.display()
                )
            })?;
        (Box::new(file), false)
    };
    let _ = TO_STDOUT.set(stdout);
    OUT.set(Mutex::new(out))
        .map_err(|_| anyhow::anyhow!("--events was opened twice"))
}

/// Whether events go to stdout: the report is then the `complete` event's, not printed
/// apart, so stdout stays JSON lines.
pub fn on_stdout() -> bool {
    TO_STDOUT.get().copied().unwrap_or(false)
}

/// Whether anyone listens (so callers skip building costly notes).
pub fn enabled() -> bool {
    OUT.get().is_some()
}

/// Writes one event line, flushed, as the current role (nothing without `--events`). A
/// failed write is logged once and never stops the role.
pub fn emit(note: &Note) {
    let Some(out) = OUT.get() else {
        return;
    };
    let role = crate::logging::current_role();
    let mut out = match out.lock() {
        Ok(out) => out,
        Err(poisoned) => poisoned.into_inner(),
    };
    // Stamped under the lock: the lines are in time order, whichever thread writes.
    let line = line(&role, crate::worker::unix_ms(), note);
    if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| log::warn!("cannot write an event (--events): {e}"));
    }
}

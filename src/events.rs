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

use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// What a role observed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Note {
    /// A socket is bound: `socket` is `tasks` (the ventilator's), `results` (the sink's),
    /// `control` (classic mode) or `http` (the live view, whose `endpoint` is its URL).
    Listening { socket: String, endpoint: String },
    /// The role is ready for its work: a sink waiting for a batch; a worker welcomed by
    /// the sink and heard by the ventilator (`backend` it runs).
    Ready {
        #[serde(skip_serializing_if = "Option::is_none")]
        backend: Option<String>,
    },
    /// A ventilator waiting for workers: how many are ready of how many it waits for
    /// (said when the count changes).
    Workers { ready: usize, wanted: usize },
    /// The ventilator's phase changed: `waiting`, `announcing`, `dispatching`,
    /// `draining`, `over`.
    Phase { phase: String },
    /// The ventilator's view of a worker changed: `joined`, `silent` (declared gone after
    /// `silent_ms` without a word), `left` (said goodbye), `declined` (cannot run the
    /// batch's kernel), `quarantined` (its results disagreed with others'),
    /// `unreachable` (its connection is gone), `refused` (its results never reached the
    /// sink).
    Worker {
        name: String,
        state: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        silent_ms: Option<u64>,
    },
    /// A batch starts here: the sink's clock started (`held` results already in hand from
    /// a results file), or a ventilator resumes one the sink holds `held` of.
    Batch {
        batch: String,
        tasks: u64,
        held: u64,
    },
    /// A worker is waiting for a peer that does not answer: `peer` is `sink` or
    /// `ventilator`, at `endpoint`.
    Waiting { peer: String, endpoint: String },
    /// A worker starts connecting: to the sink first, then the ventilator.
    Connecting { sink: String, ventilator: String },
    /// A worker heard that the batch is complete and waits for the next.
    BatchEnd { batch: String },
    /// The batch is complete: the report, as `--json` prints it.
    Complete { report: serde_json::Value },
}

/// The batch id as the log and the report write it.
pub fn batch_name(batch: u64) -> String {
    format!("{batch:016x}")
}

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

/// One event as its line: `event`, `role` and `unix_ms`, then the note's fields by name.
fn line(role: &str, unix_ms: u64, note: &Note) -> String {
    let mut fields = match serde_json::to_value(note) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    let event = fields.remove("event").unwrap_or_default();
    let role = serde_json::Value::from(role);
    let mut text = format!("{{\"event\":{event},\"role\":{role},\"unix_ms\":{unix_ms}");
    for (key, value) in fields {
        let key = serde_json::Value::from(key);
        text += &format!(",{key}:{value}");
    }
    text += "}\n";
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_json_line_naming_the_event_and_role_first() {
        let note = Note::Listening {
            socket: "results".into(),
            endpoint: "tcp://127.0.0.1:4000".into(),
        };
        assert_eq!(
            line("sink", 7, &note),
            "{\"event\":\"listening\",\"role\":\"sink\",\"unix_ms\":7,\
             \"endpoint\":\"tcp://127.0.0.1:4000\",\"socket\":\"results\"}\n"
        );
        let end = Note::BatchEnd {
            batch: batch_name(0xab),
        };
        assert_eq!(
            line("worker-1", 1, &end),
            "{\"event\":\"batch-end\",\"role\":\"worker-1\",\"unix_ms\":1,\"batch\":\"00000000000000ab\"}\n"
        );
        let ready = Note::Ready { backend: None };
        assert_eq!(
            line("sink", 1, &ready),
            "{\"event\":\"ready\",\"role\":\"sink\",\"unix_ms\":1}\n"
        );
    }
}

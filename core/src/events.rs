//! What each role observes, as data: the [`Note`]s the state machines put among their
//! commands, and each as one JSON line (`--events`). Writing them is the root package's.

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
    /// The batch is complete: the report, as `--json` prints it. In `conquer run` the
    /// workers' `batch-end` and the ventilator's last `phase` may follow it: the stream
    /// ends when the process exits.
    Complete { report: serde_json::Value },
    /// A coordinator's job changed state: `queued` (accepted), `running` (its batch starts,
    /// or resumes after a restart), `done`, `failed` (with its `reason`), `cancelled`.
    Job {
        job: u64,
        state: String,
        #[serde(skip_serializing_if = "String::is_empty")]
        reason: String,
    },
}

/// The batch id as the log and the report write it.
pub fn batch_name(batch: u64) -> String {
    format!("{batch:016x}")
}

/// One event as its line: `event`, `role` and `unix_ms`, then the note's fields by name.
pub fn line(role: &str, unix_ms: u64, note: &Note) -> String {
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

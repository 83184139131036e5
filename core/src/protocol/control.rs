//! The coordinator's control messages: what `conquer submit`, `jobs`, `cancel` and
//! `results` ask of `conquer serve`, and its answers. JSON, one request and one reply a
//! ZeroMQ message (REQ to the coordinator's REP), so a script can speak it too; a
//! submission's input files follow its JSON as frames of the same message. A request
//! may carry a `token` beside its `op` (the farm's submit or status token, for a
//! coordinator with a secret). Decoding is total: a request over its size, not JSON, or
//! not one of these is an error naming what was wrong, never a panic.

use crate::jobs::{Job, JobId, JobState};
use serde::{Deserialize, Serialize};

/// A request to the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// A job: a task list, each task's workload in milliseconds, as a tasks file has them;
    /// or, with `flags`, the job `conquer ventilator` would run with those flags (a data
    /// kernel, a divisible job), its user kernel's source and its input files travelling
    /// with it.
    Submit {
        name: String,
        priority: u32,
        workloads_ms: Vec<u32>,
        /// The batch's flags as the submitter gave them (`BatchArgs` in JSON, without its
        /// paths); absent for a plain task list.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flags: Option<serde_json::Value>,
        /// `--verify` (100), `--verify-sample PCT`, or 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        verify_percent: u8,
        /// `--replicate PCT`.
        #[serde(default, skip_serializing_if = "is_zero")]
        replicate_percent: u8,
        /// A user kernel's WGSL (`--kernel-file`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kernel_source: Option<String>,
        /// The input files' names, in task order; their bytes follow the request as frames
        /// of the same message, one a file.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        inputs: Vec<String>,
        /// Instead of inputs that travel: a glob naming files on the coordinator, relative
        /// to its `--inputs-dir`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote_inputs: Option<String>,
    },
    /// Every job kept, oldest first.
    Jobs,
    Cancel {
        id: JobId,
    },
    /// A job's report, once it has one, and where its files are.
    Results {
        id: JobId,
    },
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// A job as `conquer jobs` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: JobId,
    pub name: String,
    pub state: JobState,
    pub priority: u32,
    pub tasks: u64,
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Tasks (a divisible job's items) held so far, when the coordinator knows: a running
    /// job's count as its ventilator last saw it, a finished job's last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<u64>,
    /// Workers serving a running job now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> JobView {
        JobView {
            id: job.id,
            name: job.spec.name.clone(),
            state: job.state,
            priority: job.spec.priority,
            tasks: job.spec.tasks,
            submitted_ms: job.submitted_ms,
            started_ms: job.started_ms,
            ended_ms: job.ended_ms,
            reason: job.reason.clone(),
            held: job.held,
            workers: None,
        }
    }
}

/// The coordinator's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Submitted {
        id: JobId,
    },
    Jobs {
        jobs: Vec<JobView>,
        /// Requests refused since the coordinator started for a missing or wrong token.
        #[serde(default)]
        refused: u64,
    },
    Cancelled {
        id: JobId,
        /// Where it stood before: queued, or running (its workers abandon its tasks).
        was: JobState,
    },
    Results {
        job: JobView,
        /// The sink's report of a finished job (the JSON `conquer run --json` prints).
        report: Option<serde_json::Value>,
        /// The job's folder on the coordinator: its tasks, results file and report.
        folder: String,
    },
    /// Not done, and why (a limit, an unknown job, a malformed request).
    Refused {
        reason: String,
    },
}

/// Largest request a coordinator reads (`--max-input` may lower it): a task list of a
/// million tasks is about 8 MB of JSON.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// A request with the token that admits it (empty: none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Signed {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    token: String,
    #[serde(flatten)]
    request: Request,
}

impl Request {
    /// Whether it changes the queue (submit, cancel): the submit token's right. The others
    /// only read, which the status token also allows.
    pub fn writes(&self) -> bool {
        matches!(self, Request::Submit { .. } | Request::Cancel { .. })
    }

    pub fn encode(&self, token: &str) -> Vec<u8> {
        let signed = Signed {
            token: token.to_owned(),
            request: self.clone(),
        };
        // A request is plain data: serialising it cannot fail.
        serde_json::to_vec(&signed).unwrap_or_default()
    }

    /// The request and the token it carries.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<(Request, String), String> {
        if bytes.len() > max_bytes {
            return Err(format!(
                "a request of {} bytes, over the coordinator's limit of {max_bytes}",
                bytes.len()
            ));
        }
        let signed: Signed =
            serde_json::from_slice(bytes).map_err(|e| format!("not a control request: {e}"))?;
        Ok((signed.request, signed.token))
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a coordinator's reply: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_and_read_as_json() {
        let submit = Request::Submit {
            name: "nightly".into(),
            priority: 3,
            workloads_ms: vec![5, 10],
            flags: None,
            verify_percent: 0,
            replicate_percent: 0,
            kernel_source: None,
            inputs: Vec::new(),
            remote_inputs: None,
        };
        let bytes = submit.encode("");
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"op":"submit","name":"nightly","priority":3,"workloads_ms":[5,10]}"#
        );
        assert_eq!(
            Request::decode(&bytes, MAX_REQUEST_BYTES),
            Ok((submit.clone(), String::new()))
        );
        let signed = submit.encode("abc");
        assert_eq!(
            Request::decode(&signed, MAX_REQUEST_BYTES),
            Ok((submit, "abc".to_owned()))
        );
        assert_eq!(
            Request::decode(br#"{"op":"cancel","id":7,"token":"t"}"#, MAX_REQUEST_BYTES),
            Ok((Request::Cancel { id: 7 }, "t".to_owned()))
        );
        let reply = Reply::Cancelled {
            id: 7,
            was: JobState::Queued,
        };
        assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        assert!(Request::decode(b"\xff\x00", MAX_REQUEST_BYTES)
            .unwrap_err()
            .contains("not a control request"));
        assert!(Request::decode(br#"{"op":"launch"}"#, MAX_REQUEST_BYTES).is_err());
        assert!(Request::decode(&[b' '; 100], 10)
            .unwrap_err()
            .contains("over the coordinator's limit of 10"));
    }
}

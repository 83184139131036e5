//! The wire format: the only module that knows how messages are laid out in bytes.
//!
//! Every message is one ZeroMQ frame: a four-byte header (`b"CQ"`, a version byte, a kind
//! byte) followed by a body of little-endian fixed-width integers and length-prefixed UTF-8
//! strings and bytes. One exception: a results message may carry its outputs as frames of
//! their own after it (so megabytes of output go to libzmq without a copy), named by index
//! in its last field. Decoding is total: any byte string yields either a typed [`Message`] or a
//! [`DecodeError`] naming what was wrong, never a panic, and the decoder never allocates more
//! than the input can justify (counts are checked against the bytes actually present).
//! The Guide's classic text format lives in [`classic`], beside ours, so that this file stays
//! the one place that knows bytes; the coordinator's control messages (JSON) in
//! [`control`].

pub mod control;

use crate::batch::{Job, Task};
use thiserror::Error;

/// First two bytes of every message: tells our traffic from a stranger's.
pub const MAGIC: [u8; 2] = *b"CQ";
/// Bumped whenever any body layout changes; peers of another version are rejected.
pub const VERSION: u8 = 11;
/// Header: magic, version, kind.
const HEADER_LEN: usize = 4;
/// Largest task input or output by default (`--max-payload`).
pub const DEFAULT_MAX_PAYLOAD: u64 = 64 * 1024 * 1024;
/// Largest `--max-payload` accepted: lengths travel as u32, and a gigabyte per task is
/// already far past what one message should carry.
pub const MAX_MAX_PAYLOAD: u64 = 1024 * 1024 * 1024;
/// What a message may carry besides one payload (header, job, names, a result's fields).
const ENVELOPE_BYTES: u64 = 1024 * 1024;
/// Checks a `--max-payload`: the largest task input or output a role sends or accepts.
/// Every role is given its limit (its config's `max_payload`) and hands it to the sockets
/// it opens and the messages it decodes; nothing holds it globally.
pub fn check_max_payload(bytes: u64) -> anyhow::Result<u64> {
    if bytes == 0 || bytes > MAX_MAX_PAYLOAD {
        anyhow::bail!(
            "--max-payload {bytes}: give 1 to {MAX_MAX_PAYLOAD} bytes (the default is {DEFAULT_MAX_PAYLOAD}, 64 MiB)"
        );
    }
    Ok(bytes)
}

/// The codecs a role speaks: LZ4, unless it was given `--no-compress` (`compress` false).
/// What a worker announces in [`WorkerInfo::codecs`], and a sink in its welcome.
pub fn codecs(compress: bool) -> u8 {
    if compress {
        CODEC_LZ4
    } else {
        0
    }
}

/// Largest message a socket of a role whose limit is `max_payload` accepts
/// (ZMQ_MAXMSGSIZE): one payload and its envelope. Larger ones are refused by libzmq
/// before they are read into memory.
pub fn max_message_bytes(max_payload: u64) -> i64 {
    i64::try_from(max_payload + ENVELOPE_BYTES).unwrap_or(i64::MAX)
}

/// Largest message a socket that carries no payload accepts (the ventilator's tasks
/// socket, which hears greetings and credit).
pub const CONTROL_MESSAGE_BYTES: i64 = 4 * 1024 * 1024;

/// Output bytes a worker gathers into one results message before starting another (a
/// single larger output travels alone).
pub const RESULTS_BYTES_PER_MESSAGE: usize = 4 * 1024 * 1024;
/// Longest text a refusal's reason may carry.
const MAX_LONG_STR: usize = 4096;

/// The LZ4 block codec, as a bit of [`WorkerInfo::codecs`] and as the codec byte before a
/// compressed input or output (0: raw).
pub const CODEC_LZ4: u8 = 1;
/// Payloads shorter than this travel raw: compressing them saves less than it costs.
const MIN_PACKED_BYTES: usize = 4096;
/// The probe compresses this many bytes from each of [`PROBE_SAMPLES`] places in a payload.
const PROBE_SAMPLE_BYTES: usize = 8 * 1024;
const PROBE_SAMPLES: usize = 8;

/// Bytes of task inputs and outputs, as they crossed the wire and as they are
/// uncompressed (cumulative counters: a report takes the difference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct WireBytes {
    pub inputs_wire: u64,
    pub inputs: u64,
    pub outputs_wire: u64,
    pub outputs: u64,
}

impl WireBytes {
    /// What was counted since `earlier`.
    pub fn since(self, earlier: WireBytes) -> WireBytes {
        WireBytes {
            inputs_wire: self.inputs_wire.saturating_sub(earlier.inputs_wire),
            inputs: self.inputs.saturating_sub(earlier.inputs),
            outputs_wire: self.outputs_wire.saturating_sub(earlier.outputs_wire),
            outputs: self.outputs.saturating_sub(earlier.outputs),
        }
    }
}

/// Counters by direction (inputs, outputs) and form (on the wire, uncompressed).
type Counters = [std::sync::atomic::AtomicU64; 4];
static RECEIVED: Counters = [const { std::sync::atomic::AtomicU64::new(0) }; 4];
static SENT: Counters = [const { std::sync::atomic::AtomicU64::new(0) }; 4];

fn load(counters: &Counters) -> WireBytes {
    use std::sync::atomic::Ordering::Relaxed;
    WireBytes {
        inputs_wire: counters[0].load(Relaxed),
        inputs: counters[1].load(Relaxed),
        outputs_wire: counters[2].load(Relaxed),
        outputs: counters[3].load(Relaxed),
    }
}

fn add(counters: &Counters, input: bool, wire: usize, bytes: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let at = if input { 0 } else { 2 };
    counters[at].fetch_add(wire as u64, Relaxed);
    counters[at + 1].fetch_add(bytes as u64, Relaxed);
}

/// Task input and output bytes this process has decoded so far (a worker counts inputs,
/// a sink outputs).
pub fn received_bytes() -> WireBytes {
    load(&RECEIVED)
}

/// Task input and output bytes this process has sent so far (a ventilator counts inputs,
/// a worker outputs), as its senders report them with [`count_sent`].
pub fn sent_bytes() -> WireBytes {
    load(&SENT)
}

/// Counts a task input (`input`) or output sent: `wire` bytes for `bytes` uncompressed.
pub fn count_sent(input: bool, wire: usize, bytes: usize) {
    add(&SENT, input, wire, bytes);
}

fn count_received(input: bool, wire: usize, bytes: usize) {
    add(&RECEIVED, input, wire, bytes);
}

/// `bytes` compressed with LZ4 when that pays: a probe first compresses a few samples
/// spread over the payload, so random or already-compressed data costs one small
/// compression and travels raw; `None` when it should travel raw.
pub fn pack(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < MIN_PACKED_BYTES {
        return None;
    }
    if bytes.len() > PROBE_SAMPLE_BYTES * PROBE_SAMPLES * 4 {
        let stride = bytes.len() / PROBE_SAMPLES;
        let mut sample = Vec::with_capacity(PROBE_SAMPLE_BYTES * PROBE_SAMPLES);
        for k in 0..PROBE_SAMPLES {
            sample.extend_from_slice(&bytes[k * stride..k * stride + PROBE_SAMPLE_BYTES]);
        }
        // Under 10 % saved on the samples: not worth the work on the whole.
        if lz4_flex::block::compress(&sample).len() * 10 > sample.len() * 9 {
            return None;
        }
    }
    let packed = lz4_flex::block::compress(bytes);
    (packed.len() * 10 <= bytes.len() * 9).then_some(packed)
}

/// Inflates an LZ4 block that says it holds `raw_len` bytes, refusing one over
/// `--max-payload` before any memory is taken for it, and one that inflates to more or
/// fewer bytes than it said.
fn unpack(packed: &[u8], raw_len: u64, max_payload: u64) -> Result<Vec<u8>, DecodeError> {
    if raw_len > max_payload {
        return Err(DecodeError::TooLarge {
            bytes: raw_len,
            limit: max_payload,
        });
    }
    // An LZ4 block inflates at most 255 times (plus a little): a claim beyond that is a
    // lie, refused before the buffer is taken.
    if raw_len > (packed.len() as u64).saturating_mul(255).saturating_add(16) {
        return Err(DecodeError::BadField {
            field: "compressed length",
            value: raw_len,
        });
    }
    let mut out = vec![0u8; raw_len as usize];
    match lz4_flex::block::decompress_into(packed, &mut out) {
        Ok(n) if n == out.len() => Ok(out),
        _ => Err(DecodeError::BadField {
            field: "compressed payload",
            value: packed.len() as u64,
        }),
    }
}
/// Most tasks or results one message carries, so a message stays far below the size limit.
pub const MAX_ITEMS_PER_MESSAGE: usize = 8192;

/// How many frames, and how many bytes in all, a message may have, by its first frame
/// (after any routing id). A results message carries its outputs as frames of their own,
/// one per result at most, within one payload plus a message's worth of gathered outputs;
/// every other message is one frame. libzmq caps each frame (ZMQ_MAXMSGSIZE) but not their
/// number: the receive loop drops whatever goes past these bounds as it arrives.
pub fn message_bounds(head: &[u8], max_payload: u64) -> (usize, u64) {
    let envelope = max_message_bytes(max_payload).unsigned_abs();
    match head.get(3) {
        Some(&19) if head.starts_with(&MAGIC) => (
            1 + MAX_ITEMS_PER_MESSAGE,
            envelope + RESULTS_BYTES_PER_MESSAGE as u64,
        ),
        _ => (1, envelope),
    }
}

/// The status of one task's execution, as a worker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The backend computed the task.
    #[default]
    Ok,
    /// The backend could not compute it (shader error, lost device); the ventilator hands it
    /// to another worker and the sink does not count it.
    Failed,
    /// The result disagreed with the CPU reference (`--verify`): counted, reported, final.
    Mismatch,
    /// The result was checked against the CPU reference and matched (`--verify`).
    Verified,
}

impl Status {
    fn to_byte(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Failed => 1,
            Status::Mismatch => 2,
            Status::Verified => 3,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        match byte {
            0 => Ok(Status::Ok),
            1 => Ok(Status::Failed),
            2 => Ok(Status::Mismatch),
            3 => Ok(Status::Verified),
            other => Err(DecodeError::BadField {
                field: "status",
                value: u64::from(other),
            }),
        }
    }

    /// Lowercase name for reports and results files.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Mismatch => "mismatch",
            Status::Verified => "verified",
        }
    }

    /// The status a results file names, for resuming.
    pub fn parse(name: &str) -> Option<Status> {
        [
            Status::Ok,
            Status::Failed,
            Status::Mismatch,
            Status::Verified,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Whether the result was compared with the CPU reference.
    pub fn checked(self) -> bool {
        matches!(self, Status::Mismatch | Status::Verified)
    }
}

/// A worker's description of itself, sent as its greeting and heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Human-readable worker name (host-pid-index by default); unique per worker.
    pub name: String,
    /// Random per worker run: a reconnect of the same worker keeps it, so a second worker
    /// that took the same name can be told apart and refused.
    pub session: u64,
    /// The backend it runs tasks on (`sleep`, `cpu`, `software`, `gpu`).
    pub backend: String,
    /// The adapter's name for GPU backends, empty otherwise.
    pub adapter: String,
    /// How many tasks the worker wants in flight at least (its pipeline depth).
    pub window_hint: u16,
    /// The codecs the worker speaks ([`CODEC_LZ4`]), 0 for none: the ventilator compresses
    /// its inputs only in a codec it names, and it compresses its outputs only then.
    pub codecs: u8,
    /// Invocations its device needs in one dispatch to run near its full rate, as it
    /// measured them (0 for `sleep` and `cpu`): a divisible job's chunks for it are at
    /// least that large.
    pub fill: u32,
}

/// What a worker tells the ventilator for each finished task: enough to return credit and
/// learn the worker's speed, nothing the sink needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Done {
    pub id: u32,
    pub status: Status,
    /// Wall time the task took on the worker, in microseconds.
    pub wall_us: u32,
    /// Of which on the device (compute backends), in microseconds; 0 for sleep.
    pub kernel_us: u32,
    /// A chunk: the items done from its first, fewer than it was given when the worker
    /// gave up its tail ([`Message::Yield`]); 0 for a task of a task list.
    pub items: u32,
    /// Kernel dispatches the task took on the device (0 on `cpu` and `sleep`).
    pub dispatches: u32,
    /// Its output's bytes, uncompressed (0 for a task without output).
    pub output_bytes: u32,
}

/// One task's result as the sink receives it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskResult {
    pub id: u32,
    pub workload_ms: u32,
    pub status: Status,
    /// Wall time on the worker from start of execution to result, in microseconds.
    pub wall_us: u32,
    /// Kernel time measured on the device (timestamp queries), 0 when not measured.
    pub kernel_us: u32,
    /// The kernel's checksum over all invocations; 0 for the sleep backend.
    pub checksum: u64,
    /// Wall-clock start and end of the task on the worker, ms since the Unix epoch.
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    /// The task's input name (a user kernel's input file), echoed so the sink can name the
    /// output after it; empty for tasks without one.
    pub name: String,
    /// The kernel's output bytes (data kernels); empty for `spin`, whose result is its
    /// checksum.
    pub output: Vec<u8>,
    /// Items that differed from the CPU reference when it was checked item by item
    /// (`mandelbrot`'s pixels, `--verify`); 0 otherwise.
    pub differing: u32,
    /// A chunk of a divisible job: the items it covered (`first..first + items`); 0 items
    /// for a task of a task list.
    pub first: u64,
    pub items: u32,
    /// Why the task failed (status `failed`), as the worker's backend said; empty
    /// otherwise. The sink keeps the last one per task for a task it gives up on.
    pub error: String,
    /// Kernel dispatches the task took on the device (0 on `cpu` and `sleep`).
    pub dispatches: u32,
    /// Its input's bytes as the worker received them, uncompressed (a data task's; 0
    /// otherwise).
    pub input_bytes: u32,
}

impl TaskResult {
    /// This result without its output bytes: what a record of it keeps.
    pub fn summary(&self) -> TaskResult {
        TaskResult {
            name: self.name.clone(),
            output: Vec::new(),
            error: self.error.clone(),
            ..*self
        }
    }
}

/// Why a ventilator or sink turned a peer away. The peer prints the reason and stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Another live worker already uses this name.
    NameTaken,
    /// The peer reached the wrong role (a worker's endpoints swapped, say).
    WrongPeer,
    /// The sink is collecting another batch.
    Busy,
    /// The worker's results do not reach the sink.
    ResultsLost,
    /// The worker's name is not printable text of 1 to 255 bytes.
    BadName,
}

impl RefusalKind {
    fn to_byte(self) -> u8 {
        match self {
            RefusalKind::NameTaken => 1,
            RefusalKind::WrongPeer => 2,
            RefusalKind::Busy => 3,
            RefusalKind::ResultsLost => 4,
            RefusalKind::BadName => 5,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        match byte {
            1 => Ok(RefusalKind::NameTaken),
            2 => Ok(RefusalKind::WrongPeer),
            3 => Ok(RefusalKind::Busy),
            4 => Ok(RefusalKind::ResultsLost),
            5 => Ok(RefusalKind::BadName),
            other => Err(DecodeError::BadField {
                field: "refusal",
                value: u64::from(other),
            }),
        }
    }
}

/// Every message of the protocol, typed. Direction is noted on each variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// worker → ventilator: greeting and heartbeat; registers a worker the ventilator does not know.
    Hello(WorkerInfo),
    /// ventilator → worker: tasks to run, on the worker's credit. `in_pieces`: run these
    /// chunks in pieces (`crate::pieces`), so the ventilator may ask for their tails
    /// ([`Message::Yield`]); set for a worker that a faster one could relieve.
    Tasks {
        batch: u64,
        job: Job,
        tasks: Vec<Task>,
        in_pieces: bool,
    },
    /// worker → ventilator: tasks finished (results sent to the sink); returns credit.
    Done { batch: u64, done: Vec<Done> },
    /// ventilator → worker: liveness, naming the batch in progress (0 when idle).
    Heartbeat { batch: u64 },
    /// ventilator → worker: the batch is complete; `shutdown` asks the worker to exit.
    End { batch: u64, shutdown: bool },
    /// worker → ventilator: the worker is leaving; hand its tasks to others now.
    Bye,
    /// worker → sink: results of finished tasks, with who computed them.
    Results {
        batch: u64,
        worker: WorkerInfo,
        results: Vec<TaskResult>,
    },
    /// ventilator → sink: a batch starts; the sink's clock starts on its first receipt.
    /// Repeated every heartbeat interval, so a restarted sink learns the batch again.
    Batch {
        batch: u64,
        /// Random per ventilator process: a new one means the ventilator restarted.
        session: u64,
        /// When the batch started (the ventilator's first announcement), ms since the Unix
        /// epoch: a sink that learns the batch late still reports the true elapsed time.
        started_unix_ms: u64,
        task_count: u32,
        expected_ms: u64,
        longest_ms: u32,
        job: Job,
        /// The digest ([`name_digest`]) of each task's input name, by task id (a divisible
        /// job's one input: one entry), or empty for a batch without named inputs: the sink
        /// checks every result's name against it, so no worker can have a task's output
        /// written under another task's name.
        names: Vec<u64>,
    },
    /// sink → ventilator: the sink knows the batch; dispatch may begin. `held` results are
    /// already in hand (a resumed or continuing sink) and follow as `Held` messages.
    BatchAck { batch: u64, held: u32 },
    /// sink → ventilator: task ids whose results the sink now holds.
    Held { batch: u64, ids: Vec<u32> },
    /// sink → ventilator, for a divisible job: item ranges (`start..end`) the sink now
    /// holds. Chunks are named by their items, not their ids, so a chunk carved by an
    /// earlier ventilator (whose ids meant other items) is counted right.
    HeldItems { batch: u64, ranges: Vec<(u64, u64)> },
    /// ventilator → sink: counters only the ventilator knows, for the report.
    Stats {
        batch: u64,
        redispatched: u64,
        rejected: u64,
        /// Handshakes the ventilator's authentication refused.
        refused: u64,
        /// A divisible job: chunks handed out, and items handed out again after their
        /// worker was lost or failed them (0 for a task list).
        chunks: u64,
        items_redone: u64,
        /// A divisible job: chunks whose workers yielded their tails in the end game, and
        /// the items those tails held (handed to other workers, done once).
        chunks_cut: u64,
        items_handed_on: u64,
        /// A divisible job that ended with chunks out (a search at its hits): µs from the
        /// end to every worker idle; 0 otherwise.
        cancel_us: u64,
        /// Task input bytes sent to workers, on the wire and uncompressed.
        inputs_wire: u64,
        inputs: u64,
        /// Set on the answer to [`Message::Complete`]: the last word for this batch.
        last: bool,
    },
    /// sink → ventilator: every task is held; the batch is done.
    Complete { batch: u64 },
    /// worker → sink: greeting and heartbeat; a worker takes no tasks until the sink
    /// answers with [`Message::Welcome`].
    Join(WorkerInfo),
    /// sink → worker: the sink knows the worker and takes its results; `codecs` are those
    /// it takes outputs in (a bit per codec, as [`WorkerInfo::codecs`]): the worker
    /// compresses only with a codec both speak.
    Welcome { codecs: u8 },
    /// ventilator or sink → peer: turned away, with the reason to print; the peer stops.
    Refused { kind: RefusalKind, reason: String },
    /// ventilator → worker: one task of a data batch with its input (a user kernel's
    /// file), on the worker's credit like [`Message::Tasks`].
    Data {
        batch: u64,
        job: Job,
        task: Task,
        name: String,
        input: Vec<u8>,
    },
    /// ventilator → worker: a user kernel's WGSL source, sent once per batch to each worker
    /// before its first task; its FNV-1a hash is `job.source`.
    Kernel { batch: u64, source: String },
    /// worker → ventilator: this worker cannot run the batch's kernel (no adapter, a limit,
    /// a compile error); it gets none of the batch's tasks and those it holds go to others.
    Decline { batch: u64, reason: String },
    /// ventilator → sink: a task (or a job's chunk, `first..first + items`) failed on
    /// `attempts` tries (`--max-attempts`) and is handed out no more: the sink counts it
    /// finished, failed, and the batch fails. Sent every heartbeat until the batch ends.
    GaveUp {
        batch: u64,
        id: u32,
        first: u64,
        items: u32,
        attempts: u32,
    },
    /// sink → ventilator: run this task (or chunk) once more, on a worker not named in
    /// `exclude` when one is live (`--replicate`: a second copy to compare, or a third to
    /// break a tie). Repeated every heartbeat until the sink holds the task.
    Again {
        batch: u64,
        id: u32,
        first: u64,
        items: u32,
        exclude: Vec<String>,
    },
    /// ventilator → worker: stop chunk `id` (its items from `first`) at the end of the
    /// piece in hand and report what is done: the ventilator hands the rest to an idle
    /// worker that would finish it sooner. A chunk that is finished, or that this worker
    /// cannot cut, is reported whole.
    Yield { batch: u64, id: u32, first: u64 },
    /// sink → ventilator: this worker's results disagreed with others' twice: it gets no
    /// more of the batch (as if it declined), and what it holds goes to others.
    Quarantine {
        batch: u64,
        worker: String,
        reason: String,
    },
    /// sink → ventilator: the sink's side of the batch for the live view (results file,
    /// outputs, hits, verification, the picture), about twice a second and once more when
    /// the picture is on disk. It changes nothing the dispatcher does.
    SinkSide { batch: u64, side: SinkSide },
}

/// Most hits a [`SinkSide`] names (the count says how many there are).
pub const SIDE_HITS: usize = 8;

/// What the sink alone knows of a batch, as the live view shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkSide {
    /// The results file (empty: none), the bytes in it, and its syncs: how many, their
    /// total and longest time in µs.
    pub results: String,
    pub results_bytes: u64,
    pub syncs: u64,
    pub sync_us: u64,
    pub sync_max_us: u64,
    /// The outputs directory (empty: none) and the files written into it in this run.
    pub outputs: String,
    pub outputs_written: u64,
    /// A search's hits held: how many, and the first [`SIDE_HITS`] of them.
    pub hits: u64,
    pub first_hits: Vec<u32>,
    /// Results checked against the CPU reference, those that matched, those that did not.
    pub checked: u64,
    pub verified: u64,
    pub mismatches: u64,
    /// The picture (`--image`; empty: none) and where it stands.
    pub picture: String,
    pub picture_state: PictureState,
}

/// Where a batch's picture stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PictureState {
    /// No picture was asked for.
    #[default]
    None,
    /// Waiting for the batch's last band.
    Waiting,
    /// Every band is in; the file is being encoded and written.
    Writing,
    /// On disk.
    Written,
    /// Writing it failed (the sink's log and exit status say why).
    Failed,
}

impl PictureState {
    fn to_byte(self) -> u8 {
        match self {
            PictureState::None => 0,
            PictureState::Waiting => 1,
            PictureState::Writing => 2,
            PictureState::Written => 3,
            PictureState::Failed => 4,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        Ok(match byte {
            0 => PictureState::None,
            1 => PictureState::Waiting,
            2 => PictureState::Writing,
            3 => PictureState::Written,
            4 => PictureState::Failed,
            other => {
                return Err(DecodeError::BadField {
                    field: "picture state",
                    value: u64::from(other),
                })
            }
        })
    }

    /// Lowercase name, as the JSON says it.
    pub fn as_str(self) -> &'static str {
        match self {
            PictureState::None => "none",
            PictureState::Waiting => "waiting",
            PictureState::Writing => "writing",
            PictureState::Written => "written",
            PictureState::Failed => "failed",
        }
    }
}

/// Outputs taken out of a results message to travel as frames of their own.
pub type OutputParts = Vec<OutputPart>;

/// One output taken out of a results message: the index of its result, the output, and
/// the output compressed when that paid (what travels then).
#[derive(Debug)]
pub struct OutputPart {
    pub index: usize,
    pub output: Vec<u8>,
    pub packed: Option<Vec<u8>>,
}

impl OutputPart {
    /// The bytes that travel as this output's frame.
    pub fn into_frame(self) -> Vec<u8> {
        self.packed.unwrap_or(self.output)
    }
}

/// Longest user kernel source a [`Message::Kernel`] carries.
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// What a batch announcement says of an input's name: the first eight bytes of its
/// SHA-256, little-endian. A worker cannot find another name with the same digest, so a
/// result whose name matches its task's digest names that task's input.
pub fn name_digest(name: &str) -> u64 {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first)
}

/// Longest input name a [`Message::Data`] or result carries.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a frame was not a message of ours. Callers count these in `rejected` and log them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is shorter than the 4-byte header")]
    TooShort(usize),
    #[error("bad magic {0:02x?}: not a conquer message")]
    BadMagic([u8; 2]),
    #[error("protocol version {0} (this build speaks version {VERSION})")]
    Version(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("truncated {kind} message: needed {needed} more bytes at offset {offset}")]
    Truncated {
        kind: &'static str,
        offset: usize,
        needed: usize,
    },
    #[error("{0} trailing bytes after a complete {1} message")]
    Trailing(usize, &'static str),
    #[error("string field is not UTF-8")]
    BadUtf8,
    #[error("field {field} has invalid value {value}")]
    BadField { field: &'static str, value: u64 },
    #[error("compressed payload says it inflates to {bytes} bytes, over the {limit} allowed (raise --max-payload on the receiver if the payload is genuine)")]
    TooLarge { bytes: u64, limit: u64 },
}

impl Message {
    /// The kind named by a frame's header, for logs about a message that is not decoded.
    pub fn decode_kind_name(frame: &[u8]) -> Option<&'static str> {
        if frame.len() < HEADER_LEN || frame[..2] != MAGIC {
            return None;
        }
        KINDS.get(usize::from(frame[3]).wrapping_sub(1)).copied()
    }

    /// A frame's kind byte, once its header (length, magic, version) checks out.
    fn check_header(frame: &[u8]) -> Result<u8, DecodeError> {
        if frame.len() < HEADER_LEN {
            return Err(DecodeError::TooShort(frame.len()));
        }
        if frame[..2] != MAGIC {
            return Err(DecodeError::BadMagic([frame[0], frame[1]]));
        }
        if frame[2] != VERSION {
            return Err(DecodeError::Version(frame[2]));
        }
        Ok(frame[3])
    }

    /// The batch and the worker a results message names, read from its first frame alone:
    /// what a relay needs to route it and check who sent it, without decoding (or
    /// decompressing) its results. The receiving role decodes the whole message.
    pub fn results_head(frame: &[u8]) -> Result<(u64, WorkerInfo), DecodeError> {
        let kind = Message::check_header(frame)?;
        let name = match kind {
            7 | 19 => KINDS[usize::from(kind) - 1],
            other => return Err(DecodeError::UnknownKind(other)),
        };
        let mut r = Reader {
            buf: frame,
            pos: HEADER_LEN,
            kind: name,
            max_payload: 0,
        };
        Ok((r.u64()?, r.worker_info()?))
    }

    /// The kind's name, for logs.
    pub fn kind_name(&self) -> &'static str {
        KINDS[usize::from(self.kind()) - 1]
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::Tasks { .. } => 2,
            Message::Done { .. } => 3,
            Message::Heartbeat { .. } => 4,
            Message::End { .. } => 5,
            Message::Bye => 6,
            Message::Results { .. } => 7,
            Message::Batch { .. } => 8,
            Message::BatchAck { .. } => 9,
            Message::Held { .. } => 10,
            Message::Stats { .. } => 11,
            Message::Complete { .. } => 12,
            Message::Join(_) => 13,
            Message::Welcome { .. } => 14,
            Message::Refused { .. } => 15,
            Message::Data { .. } => 16,
            Message::Kernel { .. } => 17,
            Message::Decline { .. } => 18,
            Message::HeldItems { .. } => 20,
            Message::GaveUp { .. } => 21,
            Message::Again { .. } => 22,
            Message::Quarantine { .. } => 23,
            Message::SinkSide { .. } => 24,
            Message::Yield { .. } => 25,
        }
    }

    /// Encodes the message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(self.kind());
        match self {
            Message::Hello(info) => w.worker_info(info),
            Message::Tasks {
                batch,
                job,
                tasks,
                in_pieces,
            } => return Self::encode_tasks(*batch, job, tasks, *in_pieces),
            Message::Done { batch, done } => {
                w.u64(*batch);
                w.count(done.len());
                for d in done {
                    w.u32(d.id);
                    w.u8(d.status.to_byte());
                    w.u32(d.wall_us);
                    w.u32(d.kernel_us);
                    w.u32(d.items);
                    w.u32(d.dispatches);
                    w.u32(d.output_bytes);
                }
            }
            Message::Heartbeat { batch } => w.u64(*batch),
            Message::BatchAck { batch, held } => {
                w.u64(*batch);
                w.u32(*held);
            }
            Message::Complete { batch } => w.u64(*batch),
            Message::Join(info) => w.worker_info(info),
            Message::Welcome { codecs } => w.u8(*codecs),
            Message::Refused { kind, reason } => {
                w.u8(kind.to_byte());
                w.long_str(reason);
            }
            Message::Data {
                batch,
                job,
                task,
                name,
                input,
            } => return Self::encode_data(*batch, job, *task, name, input),
            Message::Kernel { batch, source } => {
                w.u64(*batch);
                w.bytes(source.as_bytes());
            }
            Message::Decline { batch, reason } => {
                w.u64(*batch);
                w.long_str(reason);
            }
            Message::End { batch, shutdown } => {
                w.u64(*batch);
                w.u8(u8::from(*shutdown));
            }
            Message::Bye => {}
            Message::Results {
                batch,
                worker,
                results,
            } => {
                w.u64(*batch);
                w.worker_info(worker);
                w.count(results.len());
                for r in results {
                    w.result(r);
                }
            }
            Message::Batch {
                batch,
                session,
                started_unix_ms,
                task_count,
                expected_ms,
                longest_ms,
                job,
                names,
            } => {
                w.u64(*batch);
                w.u64(*session);
                w.u64(*started_unix_ms);
                w.u32(*task_count);
                w.u64(*expected_ms);
                w.u32(*longest_ms);
                w.job(job);
                w.u32(u32::try_from(names.len()).unwrap_or(u32::MAX));
                for name in names {
                    w.u64(*name);
                }
            }
            Message::Held { batch, ids } => {
                w.u64(*batch);
                w.count(ids.len());
                for id in ids {
                    w.u32(*id);
                }
            }
            Message::HeldItems { batch, ranges } => {
                w.u64(*batch);
                w.count(ranges.len());
                for &(start, end) in ranges {
                    w.u64(start);
                    w.u64(end);
                }
            }
            Message::GaveUp {
                batch,
                id,
                first,
                items,
                attempts,
            } => {
                w.task_ref(*batch, *id, *first, *items);
                w.u32(*attempts);
            }
            Message::Again {
                batch,
                id,
                first,
                items,
                exclude,
            } => {
                w.task_ref(*batch, *id, *first, *items);
                w.count(exclude.len());
                for name in exclude {
                    w.str(name);
                }
            }
            Message::Quarantine {
                batch,
                worker,
                reason,
            } => {
                w.u64(*batch);
                w.str(worker);
                w.long_str(reason);
            }
            Message::Yield { batch, id, first } => {
                w.u64(*batch);
                w.u32(*id);
                w.u64(*first);
            }
            Message::SinkSide { batch, side } => {
                w.u64(*batch);
                w.long_str(&side.results);
                for v in [
                    side.results_bytes,
                    side.syncs,
                    side.sync_us,
                    side.sync_max_us,
                ] {
                    w.u64(v);
                }
                w.long_str(&side.outputs);
                w.u64(side.outputs_written);
                w.u64(side.hits);
                let shown = &side.first_hits[..side.first_hits.len().min(SIDE_HITS)];
                w.count(shown.len());
                for &hit in shown {
                    w.u32(hit);
                }
                for v in [side.checked, side.verified, side.mismatches] {
                    w.u64(v);
                }
                w.long_str(&side.picture);
                w.u8(side.picture_state.to_byte());
            }
            Message::Stats {
                batch,
                redispatched,
                rejected,
                refused,
                chunks,
                items_redone,
                chunks_cut,
                items_handed_on,
                cancel_us,
                inputs_wire,
                inputs,
                last,
            } => {
                w.u64(*batch);
                w.u64(*redispatched);
                w.u64(*rejected);
                w.u64(*refused);
                w.u64(*chunks);
                w.u64(*items_redone);
                w.u64(*chunks_cut);
                w.u64(*items_handed_on);
                w.u64(*cancel_us);
                w.u64(*inputs_wire);
                w.u64(*inputs);
                w.u8(u8::from(*last));
            }
        }
        w.buf
    }

    /// Encodes a [`Message::Tasks`] from borrowed tasks, so the sender keeps them.
    pub fn encode_tasks(batch: u64, job: &Job, tasks: &[Task], in_pieces: bool) -> Vec<u8> {
        let mut w = Writer::with_header(2);
        w.buf.reserve(18 + 8 * tasks.len());
        w.u64(batch);
        w.job(job);
        w.u8(u8::from(in_pieces));
        w.count(tasks.len());
        for task in tasks {
            w.task(job, task);
        }
        w.buf
    }

    /// Encodes a [`Message::Data`] from borrowed parts, so the sender keeps its input.
    pub fn encode_data(batch: u64, job: &Job, task: Task, name: &str, input: &[u8]) -> Vec<u8> {
        let mut buf = Self::encode_data_head(batch, job, task, name, input.len(), 0);
        buf.extend_from_slice(input);
        buf
    }

    /// A [`Message::Data`] up to its input: append exactly `input_len` bytes of input to
    /// complete it. `room` more bytes are reserved, so a sender can read the input straight
    /// into the message (no copy between a file and the frame).
    pub fn encode_data_head(
        batch: u64,
        job: &Job,
        task: Task,
        name: &str,
        input_len: usize,
        room: usize,
    ) -> Vec<u8> {
        let mut w = Writer::with_header(16);
        w.buf.reserve_exact(128 + name.len() + room);
        w.u64(batch);
        w.job(job);
        w.task(job, &task);
        w.str(name);
        w.u8(0);
        w.u32(u32::try_from(input_len).unwrap_or(u32::MAX));
        w.buf
    }

    /// A complete [`Message::Data`] frame whose `input_len` bytes of input travel raw,
    /// with its input compressed instead when that pays ([`pack`]): for a worker that
    /// speaks [`CODEC_LZ4`]. The frame comes back unchanged otherwise. With the frame, the
    /// bytes its input takes on the wire.
    pub fn pack_data(frame: Vec<u8>, input_len: usize) -> (Vec<u8>, usize) {
        // The input is the frame's tail, after its codec byte (0) and its length.
        let Some(at) = frame.len().checked_sub(input_len + 5) else {
            return (frame, input_len);
        };
        if frame[at] != 0 {
            return (frame, input_len);
        }
        let Some(packed) = pack(&frame[at + 5..]) else {
            return (frame, input_len);
        };
        let mut w = Writer {
            buf: Vec::with_capacity(at + 9 + packed.len()),
        };
        w.buf.extend_from_slice(&frame[..at]);
        w.u8(CODEC_LZ4);
        w.u32(u32::try_from(input_len).unwrap_or(u32::MAX));
        w.bytes(&packed);
        (w.buf, packed.len())
    }

    /// Decodes one frame, any payload up to the largest `--max-payload` there is (tests and
    /// tools; a role decodes with its own limit through [`Message::decode_parts`]). Every
    /// byte must be accounted for.
    pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
        Self::decode_parts(frame, &[], MAX_MAX_PAYLOAD)
    }

    /// Encodes a [`Message::Results`] whose results carry outputs as a head frame and one
    /// frame per output, moved out of `results` (no copy of an output), or compressed
    /// when `compress` and it pays ([`pack`]). `None` (and nothing taken) when no result
    /// has an output: send [`Message::encode`]'s one frame then.
    /// [`Message::restore_outputs`] puts the outputs back if the frames were not sent.
    pub fn encode_results_split(
        batch: u64,
        worker: &WorkerInfo,
        results: &mut [TaskResult],
        compress: bool,
    ) -> Option<(Vec<u8>, OutputParts)> {
        if results.iter().all(|r| r.output.is_empty()) {
            return None;
        }
        let parts: OutputParts = results
            .iter_mut()
            .enumerate()
            .filter(|(_, r)| !r.output.is_empty())
            .map(|(index, r)| {
                let output = std::mem::take(&mut r.output);
                let packed = if compress { pack(&output) } else { None };
                OutputPart {
                    index,
                    output,
                    packed,
                }
            })
            .collect();
        let mut w = Writer::with_header(19);
        w.u64(batch);
        w.worker_info(worker);
        w.count(results.len());
        for r in results.iter() {
            w.result(r);
        }
        w.count(parts.len());
        for part in &parts {
            // Each output frame: its result's index, its codec, its uncompressed length.
            w.u32(part.index as u32);
            w.u8(if part.packed.is_some() { CODEC_LZ4 } else { 0 });
            w.u32(u32::try_from(part.output.len()).unwrap_or(u32::MAX));
        }
        Some((w.buf, parts))
    }

    /// Puts back outputs taken by [`Message::encode_results_split`].
    pub fn restore_outputs(results: &mut [TaskResult], parts: OutputParts) {
        for part in parts {
            if let Some(r) = results.get_mut(part.index) {
                r.output = part.output;
            }
        }
    }

    /// Decodes a message of one frame or more: the frames after the first carry a results
    /// message's outputs (see [`Message::encode_results_split`]); any other message is one
    /// frame. Every byte must be accounted for, and no compressed payload may inflate past
    /// `max_payload` (the decoding role's `--max-payload`).
    pub fn decode_parts(
        frame: &[u8],
        parts: &[&[u8]],
        max_payload: u64,
    ) -> Result<Message, DecodeError> {
        let kind = Message::check_header(frame)?;
        let name = KINDS
            .get(usize::from(kind).wrapping_sub(1))
            .copied()
            .ok_or(DecodeError::UnknownKind(kind))?;
        let mut r = Reader {
            buf: frame,
            pos: HEADER_LEN,
            kind: name,
            max_payload,
        };
        let message = match kind {
            1 => Message::Hello(r.worker_info()?),
            2 => {
                let batch = r.u64()?;
                let job = r.job()?;
                let in_pieces = r.flag("in_pieces")?;
                let n = r.count(8)?;
                let mut tasks = Vec::with_capacity(n);
                for _ in 0..n {
                    tasks.push(r.task(&job)?);
                }
                Message::Tasks {
                    batch,
                    job,
                    tasks,
                    in_pieces,
                }
            }
            3 => {
                let batch = r.u64()?;
                let n = r.count(25)?;
                let mut done = Vec::with_capacity(n);
                for _ in 0..n {
                    done.push(Done {
                        id: r.u32()?,
                        status: Status::from_byte(r.u8()?)?,
                        wall_us: r.u32()?,
                        kernel_us: r.u32()?,
                        items: r.u32()?,
                        dispatches: r.u32()?,
                        output_bytes: r.u32()?,
                    });
                }
                Message::Done { batch, done }
            }
            4 => Message::Heartbeat { batch: r.u64()? },
            5 => Message::End {
                batch: r.u64()?,
                shutdown: r.flag("shutdown")?,
            },
            6 => Message::Bye,
            7 | 19 => {
                let batch = r.u64()?;
                let worker = r.worker_info()?;
                let n = r.count(71)?;
                let mut results = Vec::with_capacity(n);
                for _ in 0..n {
                    results.push(TaskResult {
                        id: r.u32()?,
                        workload_ms: r.u32()?,
                        status: Status::from_byte(r.u8()?)?,
                        wall_us: r.u32()?,
                        kernel_us: r.u32()?,
                        checksum: r.u64()?,
                        started_unix_ms: r.u64()?,
                        finished_unix_ms: r.u64()?,
                        name: r.str()?,
                        output: r.bytes(usize::MAX)?.to_vec(),
                        differing: r.u32()?,
                        first: r.u64()?,
                        items: r.u32()?,
                        error: r.str()?,
                        dispatches: r.u32()?,
                        input_bytes: r.u32()?,
                    });
                }
                if kind == 7 {
                    for result in &results {
                        count_received(false, result.output.len(), result.output.len());
                    }
                }
                if kind == 19 {
                    // The outputs travel as the frames after this one, in the order of the
                    // results named here (ascending, each once).
                    let k = r.count(9)?;
                    // At least one: without outputs the one-frame form is the only form.
                    if k == 0 || k != parts.len() {
                        return Err(DecodeError::BadField {
                            field: "output frames",
                            value: parts.len() as u64,
                        });
                    }
                    let mut last = None;
                    let mut frames = Vec::with_capacity(parts.len());
                    for part in parts {
                        let index = r.u32()? as usize;
                        if index >= results.len() || last.is_some_and(|l| index <= l) {
                            return Err(DecodeError::BadField {
                                field: "output index",
                                value: index as u64,
                            });
                        }
                        last = Some(index);
                        let (codec, raw_len) = (r.u8()?, u64::from(r.u32()?));
                        match codec {
                            0 if raw_len == part.len() as u64 => {}
                            CODEC_LZ4 => {}
                            _ => {
                                return Err(DecodeError::BadField {
                                    field: "output codec",
                                    value: u64::from(codec),
                                })
                            }
                        }
                        frames.push((index, codec, raw_len, *part));
                    }
                    // Uncompressed, the outputs together stay within what the message
                    // could have carried raw: checked before anything is inflated.
                    let raw_total: u64 = frames.iter().map(|f| f.2).sum();
                    let limit = message_bounds(frame, max_payload).1;
                    if raw_total > limit {
                        return Err(DecodeError::TooLarge {
                            bytes: raw_total,
                            limit,
                        });
                    }
                    for (index, codec, raw_len, part) in frames {
                        results[index].output = match codec {
                            CODEC_LZ4 => unpack(part, raw_len, max_payload)?,
                            _ => part.to_vec(),
                        };
                        count_received(false, part.len(), results[index].output.len());
                    }
                }
                Message::Results {
                    batch,
                    worker,
                    results,
                }
            }
            8 => Message::Batch {
                batch: r.u64()?,
                session: r.u64()?,
                started_unix_ms: r.u64()?,
                task_count: r.u32()?,
                expected_ms: r.u64()?,
                longest_ms: r.u32()?,
                job: r.job()?,
                names: {
                    // One per task, so not bounded by a message's item count: by the bytes
                    // present (and the largest batch).
                    let n = r.u32()? as usize;
                    if n > crate::batch::MAX_TASKS as usize || n * 8 > frame.len() - r.pos {
                        return Err(DecodeError::BadField {
                            field: "names",
                            value: n as u64,
                        });
                    }
                    let mut names = Vec::with_capacity(n);
                    for _ in 0..n {
                        names.push(r.u64()?);
                    }
                    names
                },
            },
            9 => Message::BatchAck {
                batch: r.u64()?,
                held: r.u32()?,
            },
            10 => {
                let batch = r.u64()?;
                let n = r.count(4)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(r.u32()?);
                }
                Message::Held { batch, ids }
            }
            20 => {
                let batch = r.u64()?;
                let n = r.count(16)?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    let (start, end) = (r.u64()?, r.u64()?);
                    if start >= end {
                        return Err(DecodeError::BadField {
                            field: "item range",
                            value: start,
                        });
                    }
                    ranges.push((start, end));
                }
                Message::HeldItems { batch, ranges }
            }
            21 => {
                let (batch, id, first, items) = r.task_ref()?;
                Message::GaveUp {
                    batch,
                    id,
                    first,
                    items,
                    attempts: r.u32()?,
                }
            }
            22 => {
                let (batch, id, first, items) = r.task_ref()?;
                let n = r.count(1)?;
                let mut exclude = Vec::with_capacity(n);
                for _ in 0..n {
                    exclude.push(r.str()?);
                }
                Message::Again {
                    batch,
                    id,
                    first,
                    items,
                    exclude,
                }
            }
            23 => Message::Quarantine {
                batch: r.u64()?,
                worker: r.str()?,
                reason: r.long_str()?,
            },
            25 => Message::Yield {
                batch: r.u64()?,
                id: r.u32()?,
                first: r.u64()?,
            },
            24 => {
                let batch = r.u64()?;
                let results = r.long_str()?;
                let [results_bytes, syncs, sync_us, sync_max_us] =
                    [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
                let outputs = r.long_str()?;
                let (outputs_written, hits) = (r.u64()?, r.u64()?);
                let n = r.count(4)?;
                if n > SIDE_HITS {
                    return Err(DecodeError::BadField {
                        field: "hits shown",
                        value: n as u64,
                    });
                }
                let first_hits = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
                let [checked, verified, mismatches] = [r.u64()?, r.u64()?, r.u64()?];
                let side = SinkSide {
                    results,
                    results_bytes,
                    syncs,
                    sync_us,
                    sync_max_us,
                    outputs,
                    outputs_written,
                    hits,
                    first_hits,
                    checked,
                    verified,
                    mismatches,
                    picture: r.long_str()?,
                    picture_state: PictureState::from_byte(r.u8()?)?,
                };
                Message::SinkSide { batch, side }
            }
            11 => Message::Stats {
                batch: r.u64()?,
                redispatched: r.u64()?,
                rejected: r.u64()?,
                refused: r.u64()?,
                chunks: r.u64()?,
                items_redone: r.u64()?,
                chunks_cut: r.u64()?,
                items_handed_on: r.u64()?,
                cancel_us: r.u64()?,
                inputs_wire: r.u64()?,
                inputs: r.u64()?,
                last: r.flag("last")?,
            },
            12 => Message::Complete { batch: r.u64()? },
            13 => Message::Join(r.worker_info()?),
            14 => Message::Welcome { codecs: r.u8()? },
            15 => Message::Refused {
                kind: RefusalKind::from_byte(r.u8()?)?,
                reason: r.long_str()?,
            },
            16 => {
                let batch = r.u64()?;
                let job = r.job()?;
                Message::Data {
                    batch,
                    job,
                    task: r.task(&job)?,
                    name: r.str()?,
                    input: r.packed(true)?,
                }
            }
            17 => Message::Kernel {
                batch: r.u64()?,
                source: std::str::from_utf8(r.bytes(MAX_SOURCE_BYTES)?)
                    .map_err(|_| DecodeError::BadUtf8)?
                    .to_owned(),
            },
            18 => Message::Decline {
                batch: r.u64()?,
                reason: r.long_str()?,
            },
            _ => return Err(DecodeError::UnknownKind(kind)),
        };
        if kind != 19 && !parts.is_empty() {
            return Err(DecodeError::BadField {
                field: "frames",
                value: parts.len() as u64 + 1,
            });
        }
        if r.pos != frame.len() {
            return Err(DecodeError::Trailing(frame.len() - r.pos, name));
        }
        Ok(message)
    }
}

const KINDS: [&str; 25] = [
    "hello",
    "tasks",
    "done",
    "heartbeat",
    "end",
    "bye",
    "results",
    "batch",
    "batch-ack",
    "held",
    "stats",
    "complete",
    "join",
    "welcome",
    "refused",
    "data",
    "kernel",
    "decline",
    "results",
    "held-items",
    "gave-up",
    "again",
    "quarantine",
    "sink-side",
    "yield",
];

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn with_header(kind: u8) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&MAGIC);
        buf.push(VERSION);
        buf.push(kind);
        Writer { buf }
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn count(&mut self, n: usize) {
        // Callers cap their vectors at MAX_ITEMS_PER_MESSAGE, far below u32::MAX.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn str(&mut self, s: &str) {
        // Strings are names; anything longer than 255 bytes is cut at a char boundary.
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u8(end as u8);
        self.buf.extend_from_slice(&s.as_bytes()[..end]);
    }
    /// A longer text (a refusal's reason), cut at 4096 bytes on a char boundary.
    fn long_str(&mut self, s: &str) {
        let mut end = s.len().min(MAX_LONG_STR);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.buf.extend_from_slice(&s.as_bytes()[..end]);
    }
    fn result(&mut self, r: &TaskResult) {
        self.u32(r.id);
        self.u32(r.workload_ms);
        self.u8(r.status.to_byte());
        self.u32(r.wall_us);
        self.u32(r.kernel_us);
        self.u64(r.checksum);
        self.u64(r.started_unix_ms);
        self.u64(r.finished_unix_ms);
        self.str(&r.name);
        self.bytes(&r.output);
        self.u32(r.differing);
        self.u64(r.first);
        self.u32(r.items);
        self.str(&r.error);
        self.u32(r.dispatches);
        self.u32(r.input_bytes);
    }
    /// A task: its id and workload, and a divisible job's chunk its item range.
    fn task(&mut self, job: &Job, task: &Task) {
        self.u32(task.id);
        self.u32(task.workload_ms);
        if job.items > 0 {
            self.u64(task.first);
            self.u32(task.items);
        }
    }
    /// A length-prefixed (u32) byte string.
    fn bytes(&mut self, bytes: &[u8]) {
        self.u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(bytes);
    }
    fn worker_info(&mut self, info: &WorkerInfo) {
        self.str(&info.name);
        self.u64(info.session);
        self.str(&info.backend);
        self.str(&info.adapter);
        self.u16(info.window_hint);
        self.u8(info.codecs);
        self.u32(info.fill);
    }
    /// A task or a job's chunk of a batch, named by the sink to the ventilator: its id
    /// and its items (`first..first + items`; 0 items for a task).
    fn task_ref(&mut self, batch: u64, id: u32, first: u64, items: u32) {
        self.u64(batch);
        self.u32(id);
        self.u64(first);
        self.u32(items);
    }
    fn job(&mut self, job: &Job) {
        self.u8(job.kernel);
        self.u32(job.units_per_ms);
        self.u8(job.verify_percent);
        self.u8(job.replicate_percent);
        for c in job.constants {
            self.u32(c);
        }
        self.u64(job.source);
        self.u32(job.item_bytes);
        self.u32(job.output_bytes);
        self.u64(job.items);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: &'static str,
    /// The decoding role's `--max-payload`: no compressed payload inflates past it.
    max_payload: u64,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let rest = self.buf.len() - self.pos;
        if rest < n {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                offset: self.pos,
                needed: n - rest,
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::BadField {
                field,
                value: u64::from(other),
            }),
        }
    }
    /// A count of items of `item_len` bytes each, checked against the bytes present so a
    /// forged count cannot make the decoder reserve memory.
    fn count(&mut self, item_len: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > MAX_ITEMS_PER_MESSAGE {
            return Err(DecodeError::BadField {
                field: "count",
                value: n as u64,
            });
        }
        let rest = self.buf.len() - self.pos;
        if n * item_len > rest {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                offset: self.pos,
                needed: n * item_len - rest,
            });
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = usize::from(self.u8()?);
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8)
    }
    /// A length-prefixed (u32) byte string of at most `limit` bytes, borrowed from the
    /// frame (its length is checked against the bytes present before anything is copied).
    fn bytes(&mut self, limit: usize) -> Result<&[u8], DecodeError> {
        let n = self.u32()? as usize;
        if n > limit {
            return Err(DecodeError::BadField {
                field: "byte string length",
                value: n as u64,
            });
        }
        self.take(n)
    }
    /// A task's input (`input`) or output: a codec byte, the uncompressed length when
    /// compressed, and the bytes as they travelled; counted in [`received_bytes`].
    fn packed(&mut self, input: bool) -> Result<Vec<u8>, DecodeError> {
        let codec = self.u8()?;
        let raw_len = match codec {
            0 => None,
            CODEC_LZ4 => Some(u64::from(self.u32()?)),
            other => {
                return Err(DecodeError::BadField {
                    field: "codec",
                    value: u64::from(other),
                })
            }
        };
        let max_payload = self.max_payload;
        let wire = self.bytes(usize::MAX)?;
        let bytes = match raw_len {
            None => wire.to_vec(),
            Some(raw_len) => unpack(wire, raw_len, max_payload)?,
        };
        count_received(input, wire.len(), bytes.len());
        Ok(bytes)
    }
    fn long_str(&mut self) -> Result<String, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > MAX_LONG_STR {
            return Err(DecodeError::BadField {
                field: "text length",
                value: n as u64,
            });
        }
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8)
    }
    fn worker_info(&mut self) -> Result<WorkerInfo, DecodeError> {
        Ok(WorkerInfo {
            name: self.str()?,
            session: self.u64()?,
            backend: self.str()?,
            adapter: self.str()?,
            window_hint: self.u16()?,
            codecs: self.u8()?,
            fill: self.u32()?,
        })
    }
    /// See [`Writer::task_ref`]: (batch, id, first, items).
    fn task_ref(&mut self) -> Result<(u64, u32, u64, u32), DecodeError> {
        Ok((self.u64()?, self.u32()?, self.u64()?, self.u32()?))
    }
    fn job(&mut self) -> Result<Job, DecodeError> {
        Ok(Job {
            kernel: self.u8()?,
            units_per_ms: self.u32()?,
            verify_percent: match self.u8()? {
                p @ 0..=100 => p,
                other => {
                    return Err(DecodeError::BadField {
                        field: "verify_percent",
                        value: u64::from(other),
                    })
                }
            },
            replicate_percent: match self.u8()? {
                p @ 0..=100 => p,
                other => {
                    return Err(DecodeError::BadField {
                        field: "replicate_percent",
                        value: u64::from(other),
                    })
                }
            },
            constants: {
                let mut c = [0u32; crate::kernels::CONSTANTS];
                for slot in &mut c {
                    *slot = self.u32()?;
                }
                c
            },
            source: self.u64()?,
            item_bytes: match self.u32()? {
                0 => {
                    return Err(DecodeError::BadField {
                        field: "item_bytes",
                        value: 0,
                    })
                }
                n => n,
            },
            output_bytes: self.u32()?,
            items: self.u64()?,
        })
    }
    /// A task under `job`: a divisible job's tasks are chunks, each a non-empty item range
    /// within the job.
    fn task(&mut self, job: &Job) -> Result<Task, DecodeError> {
        let mut task = Task {
            id: self.u32()?,
            workload_ms: self.u32()?,
            ..Task::default()
        };
        if job.items > 0 {
            task.first = self.u64()?;
            task.items = self.u32()?;
            if task.items == 0 || task.first.saturating_add(u64::from(task.items)) > job.items {
                return Err(DecodeError::BadField {
                    field: "chunk",
                    value: task.first,
                });
            }
        }
        Ok(task)
    }
}

/// The Guide's classic wire format (taskvent/taskwork/tasksink): tasks are the workload in
/// milliseconds as ASCII decimal, results are empty or echo the workload, the sink's start
/// signal is `"0"`, and the kill broadcast is `"KILL"`.
pub mod classic {
    /// Largest workload a classic task may name: one hour.
    pub const MAX_WORKLOAD_MS: u32 = 3_600_000;

    /// Encodes a task the way taskvent does.
    pub fn encode_task(workload_ms: u32) -> Vec<u8> {
        workload_ms.to_string().into_bytes()
    }

    /// Parses a classic task: ASCII decimal milliseconds, surrounding whitespace and one
    /// trailing NUL (as C senders sometimes include) tolerated.
    pub fn decode_task(frame: &[u8]) -> Option<u32> {
        let frame = frame.strip_suffix(&[0]).unwrap_or(frame);
        let text = std::str::from_utf8(frame).ok()?.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse::<u32>().ok().filter(|&ms| ms <= MAX_WORKLOAD_MS)
    }

    /// A classic result is either empty or the workload echoed back; anything else is foreign.
    pub fn is_result(frame: &[u8]) -> bool {
        frame.is_empty() || decode_task(frame).is_some()
    }

    /// The signal the classic ventilator sends the sink to start the batch.
    pub const START: &[u8] = b"0";
    /// The classic sink's broadcast that ends the workers.
    pub const KILL: &[u8] = b"KILL";
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info() -> WorkerInfo {
        WorkerInfo {
            name: "box-42-0".into(),
            session: 0x1234_5678_9abc,
            backend: "sleep".into(),
            adapter: String::new(),
            window_hint: 2,
            codecs: 0,
            fill: 270_336,
        }
    }

    fn samples() -> Vec<Message> {
        let job = Job {
            kernel: 1,
            units_per_ms: 1000,
            verify_percent: 100,
            ..Job::default()
        };
        vec![
            Message::Hello(info()),
            Message::Tasks {
                batch: 7,
                job,
                tasks: vec![
                    Task {
                        id: 0,
                        workload_ms: 5,
                        ..Default::default()
                    },
                    Task {
                        id: 9,
                        workload_ms: 0,
                        ..Default::default()
                    },
                ],
                in_pieces: false,
            },
            Message::Done {
                batch: 7,
                done: vec![Done {
                    id: 3,
                    status: Status::Failed,
                    wall_us: 12,
                    kernel_us: 5,
                    items: 40,
                    dispatches: 6,
                    output_bytes: 1 << 31,
                }],
            },
            Message::Heartbeat { batch: 0 },
            Message::End {
                batch: 7,
                shutdown: true,
            },
            Message::Bye,
            Message::Results {
                batch: u64::MAX,
                worker: info(),
                results: vec![TaskResult {
                    id: 1,
                    workload_ms: 2,
                    status: Status::Mismatch,
                    wall_us: 3,
                    kernel_us: 4,
                    checksum: 0xdead_beef_0bad_f00d,
                    started_unix_ms: 1_800_000_000_000,
                    finished_unix_ms: 1_800_000_000_003,
                    first: 1 << 33,
                    items: 77,
                    error: "a lost device".into(),
                    dispatches: 4096,
                    input_bytes: 3 << 30,
                    ..TaskResult::default()
                }],
            },
            Message::Batch {
                batch: 7,
                session: 99,
                started_unix_ms: 1_800_000_000_000,
                task_count: 100,
                expected_ms: 5050,
                longest_ms: 100,
                job,
                names: vec![name_digest("a.bin"), name_digest("b.bin")],
            },
            Message::BatchAck { batch: 7, held: 3 },
            Message::Held {
                batch: 7,
                ids: vec![1, 2, 3],
            },
            Message::HeldItems {
                batch: 7,
                ranges: vec![(0, 10), (12, 1 << 40)],
            },
            Message::GaveUp {
                batch: 7,
                id: 12,
                first: 1 << 35,
                items: 9,
                attempts: 3,
            },
            Message::Again {
                batch: 7,
                id: 12,
                first: 0,
                items: 0,
                exclude: vec!["a".into(), "b-2".into()],
            },
            Message::Quarantine {
                batch: 7,
                worker: "c".into(),
                reason: "twice alone against the others".into(),
            },
            Message::Yield {
                batch: 7,
                id: 12,
                first: 1 << 34,
            },
            Message::SinkSide {
                batch: 7,
                side: SinkSide {
                    results: "/var/lib/conquer/r.csv".into(),
                    results_bytes: 1 << 33,
                    syncs: 12,
                    sync_us: 40_000,
                    sync_max_us: 9_000,
                    outputs: "out".into(),
                    outputs_written: 40,
                    hits: 9,
                    first_hits: vec![1, 7, u32::MAX],
                    checked: 3,
                    verified: 2,
                    mismatches: 1,
                    picture: "m.png".into(),
                    picture_state: PictureState::Writing,
                },
            },
            Message::Tasks {
                batch: 8,
                job: Job {
                    items: 1 << 40,
                    ..job
                },
                tasks: vec![Task {
                    id: 4,
                    workload_ms: 3,
                    first: (1 << 40) - 5,
                    items: 5,
                }],
                in_pieces: true,
            },
            Message::Stats {
                batch: 7,
                redispatched: 2,
                rejected: 10_000,
                refused: 3,
                chunks: 12,
                items_redone: 1 << 35,
                chunks_cut: 3,
                items_handed_on: 1 << 33,
                cancel_us: 1234,
                inputs_wire: 1 << 20,
                inputs: 50 << 20,
                last: false,
            },
            Message::Complete { batch: 7 },
            Message::Join(info()),
            Message::Welcome { codecs: CODEC_LZ4 },
            Message::Refused {
                kind: RefusalKind::NameTaken,
                reason: "another worker is called box-42-0".into(),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for message in samples() {
            let bytes = message.encode();
            assert_eq!(Message::decode(&bytes), Ok(message.clone()), "{message:?}");
        }
    }

    #[test]
    fn every_strict_prefix_is_rejected() {
        for message in samples() {
            let bytes = message.encode();
            for len in 0..bytes.len() {
                assert!(
                    Message::decode(&bytes[..len]).is_err(),
                    "{} accepted at {len} of {} bytes",
                    message.kind_name(),
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_wrong_version_and_magic_are_rejected() {
        let mut bytes = Message::Bye.encode();
        bytes.push(0);
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::Trailing(1, "bye"))
        );
        let mut bytes = Message::Bye.encode();
        bytes[2] = VERSION + 1;
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::Version(VERSION + 1))
        );
        assert_eq!(
            Message::decode(b"XX\x01\x06"),
            Err(DecodeError::BadMagic(*b"XX"))
        );
        assert_eq!(
            Message::decode(&[b'C', b'Q', VERSION, 0x00]),
            Err(DecodeError::UnknownKind(0))
        );
        assert_eq!(
            Message::decode(&[b'C', b'Q', VERSION, 0xff]),
            Err(DecodeError::UnknownKind(255))
        );
    }

    #[test]
    fn forged_counts_are_refused_without_allocating() {
        // A held message claiming u32::MAX ids in a 16-byte frame.
        let mut bytes = Message::Held {
            batch: 1,
            ids: vec![],
        }
        .encode();
        let count_at = bytes.len() - 4;
        bytes[count_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Message::decode(&bytes),
            Err(DecodeError::BadField { field: "count", .. })
        ));
        bytes[count_at..].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            Message::decode(&bytes),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn outputs_travel_as_frames_after_their_results_and_come_back_whole() {
        let result = |id: u32, output: Vec<u8>| TaskResult {
            id,
            name: format!("in{id}"),
            output,
            ..TaskResult::default()
        };
        let original = vec![
            result(0, vec![1, 2, 3]),
            result(1, Vec::new()),
            result(2, vec![9; 1000]),
        ];
        let mut results = original.clone();
        let (head, parts) = Message::encode_results_split(5, &info(), &mut results, false).unwrap();
        assert!(results.iter().all(|r| r.output.is_empty()), "moved out");
        let frames: Vec<&[u8]> = parts.iter().map(|p| &p.output[..]).collect();
        let decoded = Message::decode_parts(&head, &frames, DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!(
            decoded,
            Message::Results {
                batch: 5,
                worker: info(),
                results: original.clone(),
            }
        );
        // A frame missing, one too many, or frames after a message that takes none: refused.
        assert!(Message::decode_parts(&head, &frames[..1], DEFAULT_MAX_PAYLOAD).is_err());
        let mut more = frames.clone();
        more.push(&[0]);
        assert!(Message::decode_parts(&head, &more, DEFAULT_MAX_PAYLOAD).is_err());
        assert!(
            Message::decode_parts(&Message::Bye.encode(), &frames, DEFAULT_MAX_PAYLOAD).is_err()
        );
        // Put back when the frames could not be sent.
        Message::restore_outputs(&mut results, parts);
        assert_eq!(results, original);
        // Nothing to split: one frame, nothing taken.
        let mut plain = vec![result(3, Vec::new())];
        assert!(Message::encode_results_split(5, &info(), &mut plain, false).is_none());
    }

    /// Bytes that compress (runs, as iteration counts have) and bytes that do not.
    fn compressible(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i / 4096 % 7) as u8).collect()
    }
    fn random(n: usize) -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut bytes = vec![0u8; n];
        rand_chacha::ChaCha8Rng::seed_from_u64(26).fill_bytes(&mut bytes);
        bytes
    }

    #[test]
    fn outputs_compressed_when_it_pays_and_decoded_to_the_same_bytes() {
        let result = |id: u32, output: Vec<u8>| TaskResult {
            id,
            output,
            ..TaskResult::default()
        };
        let original = vec![
            result(0, compressible(1 << 20)),
            result(1, random(1 << 20)),
            result(2, vec![5; 100]),
        ];
        let mut results = original.clone();
        let (head, parts) = Message::encode_results_split(5, &info(), &mut results, true).unwrap();
        let packed: Vec<bool> = parts.iter().map(|p| p.packed.is_some()).collect();
        assert_eq!(
            packed,
            [true, false, false],
            "only the compressible output packed"
        );
        let frames: Vec<Vec<u8>> = parts.into_iter().map(OutputPart::into_frame).collect();
        assert!(
            frames[0].len() < (1 << 20) / 10,
            "{} bytes",
            frames[0].len()
        );
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let before = received_bytes();
        let decoded = Message::decode_parts(&head, &refs, DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!(
            decoded,
            Message::Results {
                batch: 5,
                worker: info(),
                results: original,
            }
        );
        let counted = received_bytes().since(before);
        // Other tests decode in parallel: at least this message's bytes are counted.
        assert!(counted.outputs >= (2 << 20) + 100);
        assert!(counted.outputs_wire >= refs.iter().map(|f| f.len() as u64).sum::<u64>());
    }

    #[test]
    fn a_results_head_names_the_batch_and_worker_of_either_layout() {
        let results = vec![TaskResult {
            id: 3,
            output: vec![7; 5000],
            ..TaskResult::default()
        }];
        let whole = Message::Results {
            batch: 42,
            worker: info(),
            results: results.clone(),
        }
        .encode();
        assert_eq!(Message::results_head(&whole), Ok((42, info())));
        let mut split = results;
        let (head, _) = Message::encode_results_split(43, &info(), &mut split, true).unwrap();
        assert_eq!(Message::results_head(&head), Ok((43, info())));
        assert!(Message::results_head(&Message::Bye.encode()).is_err());
        assert!(Message::results_head(&whole[..10]).is_err());
    }

    #[test]
    fn inputs_packed_for_the_wire_decode_to_the_same_message() {
        let job = Job::default();
        let task = Task {
            id: 3,
            workload_ms: 1,
            ..Task::default()
        };
        for (input, packs) in [(compressible(1 << 20), true), (random(1 << 20), false)] {
            let raw = Message::encode_data(9, &job, task, "in3", &input);
            let (frame, wire) = Message::pack_data(raw.clone(), input.len());
            assert_eq!(wire == input.len(), !packs);
            assert_eq!(frame.len() < raw.len() / 10, packs);
            assert_eq!(frame == raw, !packs);
            assert_eq!(
                Message::decode(&frame).unwrap(),
                Message::Data {
                    batch: 9,
                    job,
                    task,
                    name: "in3".into(),
                    input,
                }
            );
        }
    }

    #[test]
    fn a_compressed_payload_over_max_payload_or_lying_is_refused_before_inflating() {
        let input = compressible(1 << 20);
        let task = Task {
            id: 0,
            workload_ms: 1,
            ..Task::default()
        };
        let (frame, _) = Message::pack_data(
            Message::encode_data(1, &Job::default(), task, "x", &input),
            input.len(),
        );
        // The uncompressed length sits before the compressed bytes' own length.
        let at = frame.len() - lz4_flex::block::compress(&input).len() - 8;
        assert_eq!(frame[at - 1], CODEC_LZ4);
        let forge = |raw_len: u32| {
            let mut forged = frame.clone();
            forged[at..at + 4].copy_from_slice(&raw_len.to_le_bytes());
            Message::decode_parts(&forged, &[], DEFAULT_MAX_PAYLOAD)
        };
        // A bomb: says 4 GiB, over --max-payload; refused without allocating it.
        assert_eq!(
            forge(u32::MAX),
            Err(DecodeError::TooLarge {
                bytes: u64::from(u32::MAX),
                limit: DEFAULT_MAX_PAYLOAD,
            })
        );
        // Inflates to more, or fewer, bytes than it says: refused.
        assert!(forge(input.len() as u32 - 1).is_err());
        assert!(forge(input.len() as u32 + 1).is_err());
        assert!(forge(input.len() as u32).is_ok());

        // Outputs each within --max-payload that together inflate past what a results
        // message may carry: refused before any is inflated.
        let mut results: Vec<TaskResult> = (0..2)
            .map(|id| TaskResult {
                id,
                output: compressible(1 << 20),
                ..TaskResult::default()
            })
            .collect();
        let (mut head, parts) =
            Message::encode_results_split(5, &info(), &mut results, true).unwrap();
        let frames: Vec<Vec<u8>> = parts.into_iter().map(OutputPart::into_frame).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let each = (DEFAULT_MAX_PAYLOAD * 2 / 3) as u32;
        for k in 0..2 {
            // Each output's entry ends the head: index, codec, uncompressed length.
            let at = head.len() - 9 * (2 - k) + 5;
            head[at..at + 4].copy_from_slice(&each.to_le_bytes());
        }
        assert!(matches!(
            Message::decode_parts(&head, &refs, DEFAULT_MAX_PAYLOAD),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn classic_tasks_parse_like_the_guides_senders() {
        assert_eq!(classic::decode_task(b"42"), Some(42));
        assert_eq!(classic::decode_task(b"42\0"), Some(42));
        assert_eq!(classic::decode_task(b" 7 "), Some(7));
        assert_eq!(classic::decode_task(b""), None);
        assert_eq!(classic::decode_task(b"-1"), None);
        assert_eq!(classic::decode_task(b"KILL"), None);
        assert_eq!(classic::decode_task(b"99999999999"), None);
        assert!(classic::is_result(b""));
        assert!(classic::is_result(b"17"));
        assert!(!classic::is_result(b"\xff\x00junk"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// The decoder is total: arbitrary bytes never panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::decode(&bytes);
        }

        /// Arbitrary bytes after a valid header exercise every body decoder.
        #[test]
        fn decoding_arbitrary_bodies_never_panics(kind in 0u8..26, body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut bytes = vec![b'C', b'Q', VERSION, kind];
            bytes.extend_from_slice(&body);
            if let Ok(message) = Message::decode(&bytes) {
                // Whatever decodes re-encodes to the same bytes: no field is silently altered.
                prop_assert_eq!(message.encode(), bytes);
            }
        }

        /// Every message a role sends fits the bounds its first frame sets for its kind
        /// (frames and bytes in all), a results message with its outputs as frames too; a
        /// frame more than a kind allows, or a byte past its total, is beyond them.
        #[test]
        fn messages_fit_the_bounds_of_their_kind(
            which in 0usize..64,
            outputs in proptest::collection::vec(0usize..65_536, 1..48),
        ) {
            let all = samples();
            let sample = all[which % all.len()].encode();
            let (frames, bytes) = message_bounds(&sample, DEFAULT_MAX_PAYLOAD);
            prop_assert_eq!(frames, 1);
            prop_assert!(sample.len() as u64 <= bytes);
            let mut results: Vec<TaskResult> = outputs
                .iter()
                .enumerate()
                .map(|(i, &n)| TaskResult { id: i as u32, output: vec![7; n], ..TaskResult::default() })
                .collect();
            results[0].output = vec![1; 1];
            let worker = WorkerInfo {
                name: "w".into(),
                session: 1,
                backend: "cpu".into(),
                adapter: String::new(),
                window_hint: 1,
                codecs: 0,
                fill: 0,
            };
            let (head, parts) =
                Message::encode_results_split(9, &worker, &mut results, false).unwrap();
            let (frames, bytes) = message_bounds(&head, DEFAULT_MAX_PAYLOAD);
            prop_assert!(parts.len() < frames);
            let total = head.len() + parts.iter().map(|p| p.output.len()).sum::<usize>();
            prop_assert!(total as u64 <= bytes);
            prop_assert_eq!(frames, 1 + MAX_ITEMS_PER_MESSAGE);
            prop_assert!(bytes >= DEFAULT_MAX_PAYLOAD + RESULTS_BYTES_PER_MESSAGE as u64);
        }

        /// Flipping any one byte of a valid message either is rejected or decodes to a
        /// message that re-encodes to exactly the flipped bytes.
        #[test]
        fn single_byte_corruption_is_caught_or_faithful(which in 0usize..64, at in any::<usize>(), byte in any::<u8>()) {
            let all = samples();
            let mut bytes = all[which % all.len()].encode();
            let at = at % bytes.len();
            bytes[at] = byte;
            if let Ok(message) = Message::decode(&bytes) {
                prop_assert_eq!(message.encode(), bytes);
            }
        }
    }
}

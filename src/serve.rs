//! `conquer serve`: a coordinator that stays up and runs the jobs submitted to it, several
//! at once (`--max-running`), each as a batch of its own, sharing the workers that stay
//! connected by the jobs' weights.
//!
//! The front (`front.rs`) binds the farm's tasks ROUTER (`--bind`, as a ventilator does)
//! and results ROUTER (`--results-bind`, as a sink does) once; each running job is a
//! ventilator and a sink of its own on `inproc://` endpoints, on a thread of its own, and
//! the front places the workers among them. A control REP socket (`--control`) takes what
//! `conquer submit`, `jobs`, `cancel` and `results` ask (`protocol::control`). The state
//! directory holds the journal (`journal.jsonl`, the job queue's records, synced before
//! they count) and a folder per job: its tasks, its results file and its report. A
//! coordinator killed mid-job and started again on the same directory resumes every
//! running job from its results file, redoing nothing the file holds. The queue's rules
//! and the fair share live in `conquer_core::jobs`; this module does the files, the
//! sockets and the threads.

use crate::batch::Batch;
use crate::cli::BatchArgs;
use crate::front::{Change, Front, FrontConfig};
use crate::heartbeat::Heartbeat;
use crate::kernels::Kernel;
use crate::observe::{Board, FarmStatus, JobStatus};
use crate::protocol::control::{JobView, Reply, Request, MAX_REQUEST_BYTES};
use crate::report::ResultsFormat;
use crate::shutdown::{Interrupted, Shutdown};
use crate::sink::{Sink, SinkConfig};
use crate::ventilator::{Ventilator, VentilatorConfig};
use anyhow::{bail, Context};
use conquer_core::jobs::{Claim, JobId, JobQueue, JobSpec, JobState, Limits, Record};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What `conquer serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The state directory: the journal and a folder per job.
    pub state: PathBuf,
    /// Where workers connect for tasks (each job's ventilator binds it).
    pub bind: String,
    /// Where workers connect with results (each job's sink binds it).
    pub results_bind: String,
    /// Where `submit`, `jobs`, `cancel` and `results` connect.
    pub control: String,
    pub limits: Limits,
    pub heartbeat: Heartbeat,
    /// The farm's secret or allowlist, as the ventilator's and the sink's are: the farm's
    /// sockets are guarded by it.
    pub access: crate::auth::Access,
    /// The live view's address (`--http`), if any.
    pub http: Option<String>,
    /// Where submissions may name input files (`--inputs-dir`), if anywhere.
    pub inputs_dir: Option<PathBuf>,
}

/// The journal file's name in the state directory.
const JOURNAL: &str = "journal.jsonl";
/// How long the control socket waits for a request before looking at the stop flag.
const CONTROL_POLL: Duration = Duration::from_millis(100);

/// The queue and its journal, kept together: a record counts once it is on disk.
struct Store {
    dir: PathBuf,
    journal: std::fs::File,
    queue: JobQueue,
    /// The running jobs' stop tokens, to cancel them.
    running: BTreeMap<JobId, Shutdown>,
    /// Records in the journal file: once they are many times the queue's snapshot, the
    /// file is rewritten to the snapshot, so it grows with the jobs kept, not with every
    /// job ever run.
    lines: usize,
    /// An exclusive lock on the state directory, held while this coordinator runs.
    _lock: std::fs::File,
}

/// Writes the queue's snapshot to a new journal, synced, renamed over the old one; the
/// file opened to append, and its records.
fn rewrite(dir: &Path, queue: &JobQueue) -> anyhow::Result<(std::fs::File, usize)> {
    let path = dir.join(JOURNAL);
    let temporary = dir.join(format!(".{JOURNAL}.tmp"));
    let mut file = std::fs::File::create(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    let records = queue.snapshot();
    for record in &records {
        writeln!(file, "{}", serde_json::to_string(record)?)?;
    }
    file.sync_all()?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    sync_dir(dir)?;
    let journal = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((journal, records.len()))
}

impl Store {
    /// Opens (or makes) the state directory, replays the journal and rewrites it to the
    /// jobs kept. A last line cut short by a crash is dropped; any other bad line is an
    /// error naming it.
    fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir.join("jobs"))
            .with_context(|| format!("cannot make the state directory {}", dir.display()))?;
        let lock = lock(dir)?;
        let path = dir.join(JOURNAL);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut records = Vec::with_capacity(lines.len());
        for (n, line) in lines.iter().enumerate() {
            match serde_json::from_str::<Record>(line) {
                Ok(record) => records.push(record),
                Err(_) if n + 1 == lines.len() && !text.ends_with('\n') => {
                    log::warn!(
                        "{}: the last line was cut short (a crash while writing it); dropped",
                        path.display()
                    );
                }
                Err(e) => bail!(
                    "{}:{}: not a journal record ({e}); move the whole state directory aside to \
                     start an empty queue",
                    path.display(),
                    n + 1
                ),
            }
        }
        let mut queue = JobQueue::replay(&records);
        // Job folders the journal does not know (a journal lost or moved aside) keep their
        // numbers: new jobs are numbered past them, never into an old job's files.
        let past = std::fs::read_dir(dir.join("jobs"))
            .with_context(|| format!("cannot list {}", dir.join("jobs").display()))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<JobId>().ok())
            .max()
            .map_or(0, |id| id + 1);
        queue.apply(&Record::Numbered { next_id: past });
        let (journal, lines) = rewrite(dir, &queue)?;
        Ok(Store {
            dir: dir.to_owned(),
            journal,
            queue,
            running: BTreeMap::new(),
            lines,
            _lock: lock,
        })
    }

    /// Makes a change to the queue count: `change` works on a copy, its records are
    /// appended and synced, and only then is the copy the queue. A journal that cannot be
    /// written leaves the queue as it was (and the file cut back to its last whole record).
    fn commit<T>(
        &mut self,
        change: impl FnOnce(&mut JobQueue, &mut Vec<Record>) -> T,
    ) -> anyhow::Result<T> {
        let mut queue = self.queue.clone();
        let mut records = Vec::new();
        let outcome = change(&mut queue, &mut records);
        self.append(&records)?;
        self.queue = queue;
        self.lines += records.len();
        let kept = self.queue.jobs().count();
        if self.lines > 1000 + 8 * kept {
            // The rewrite holds what the appended records did: failing it loses nothing.
            match rewrite(&self.dir, &self.queue) {
                Ok((journal, lines)) => (self.journal, self.lines) = (journal, lines),
                Err(e) => log::warn!("cannot rewrite the journal shorter: {e:#}"),
            }
        }
        for record in &records {
            if let Record::Expired { id } = record {
                // A job forgotten takes its folder with it, once the journal says so.
                if let Err(e) = std::fs::remove_dir_all(self.folder(*id)) {
                    log::warn!("job {id} expired, but its folder stays: {e}");
                }
            }
        }
        Ok(outcome)
    }

    /// Appends records and syncs them: they count from here.
    fn append(&mut self, records: &[Record]) -> anyhow::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for record in records {
            text.push_str(&serde_json::to_string(record)?);
            text.push('\n');
        }
        let length = self.journal.metadata().map(|m| m.len());
        let written = self
            .journal
            .write_all(text.as_bytes())
            .and_then(|()| self.journal.sync_data());
        if let Err(e) = written {
            if let Ok(length) = length {
                let _ = self.journal.set_len(length);
            }
            return Err(e).context("cannot write the coordinator's journal");
        }
        Ok(())
    }

    fn folder(&self, id: JobId) -> PathBuf {
        self.dir.join("jobs").join(id.to_string())
    }
}

/// Takes the state directory's lock, so a second coordinator on it stops at once rather
/// than rewrite the journal under the first.
fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another coordinator runs on {} (it holds {}); stop it first, or give this one \
             another --state",
            dir.display(),
            path.display()
        );
    }
    Ok(file)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    crate::worker::unix_ms()
}

/// The store, shared by the control thread and the job runner, and a bell the control
/// thread rings when there is work.
struct Shared {
    store: Mutex<Store>,
    bell: Condvar,
    limits: Limits,
    /// With a secret: the submit token and the live view's status token.
    tokens: Option<(String, String)>,
    /// Requests refused for their token.
    refused: std::sync::atomic::AtomicU64,
    /// Where submissions may name input files (`--inputs-dir`).
    inputs_dir: Option<PathBuf>,
    /// With a live view: what each running job's ventilator last observed, and the
    /// tasks held by jobs that ended (their last count).
    boards: Mutex<Boards>,
}

#[derive(Default)]
struct Boards {
    running: BTreeMap<JobId, Arc<Board>>,
    held: BTreeMap<JobId, u64>,
}

impl Shared {
    fn store(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Store>> {
        self.store
            .lock()
            .map_err(|_| anyhow::anyhow!("a coordinator thread panicked holding the queue"))
    }
}

/// Runs the coordinator until `shutdown`: the front and the control socket on threads of
/// their own, each running job on one of its own, the queue on this one. Jobs running
/// when it stops stay running in the journal, and resume when the coordinator starts
/// again.
pub fn serve(config: ServeConfig, shutdown: &Shutdown) -> anyhow::Result<()> {
    check_control(&config.control, config.access.secret.is_some())?;
    let limits = config.limits;
    if limits.max_running == 0 {
        bail!("--max-running must be at least 1");
    }
    if limits.max_input_bytes == 0 {
        bail!("--max-input 0 would refuse every submission: give a size, such as 64M");
    }
    if let Some(dir) = config.inputs_dir.as_ref().filter(|d| !d.is_dir()) {
        bail!(
            "--inputs-dir {}: no such directory; create it, or drop --inputs-dir",
            dir.display()
        );
    }
    let endpoints = [
        ("--bind", &config.bind),
        ("--results-bind", &config.results_bind),
        ("--control", &config.control),
    ];
    for (i, (a, first)) in endpoints.iter().enumerate() {
        let ephemeral = first.ends_with(":0") || first.ends_with(":*");
        if let Some((b, _)) = endpoints[i + 1..].iter().find(|(_, e)| e == first) {
            if !ephemeral {
                bail!("{a} and {b} are both {first}: give each its own port");
            }
        }
    }
    let store = Store::open(&config.state)?;
    raise_open_files();
    let ctx = zmq::Context::new();
    // The farm's sockets, bound once: a port in use stops the coordinator here.
    let front = Front::bind(
        &ctx,
        FrontConfig {
            bind: config.bind.clone(),
            results_bind: config.results_bind.clone(),
            access: config.access.clone(),
            heartbeat: config.heartbeat,
            max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
            codecs: crate::protocol::codecs(true),
        },
    )?;
    let (tasks_endpoint, results_endpoint) = {
        let (t, r) = front.endpoints();
        (t.to_owned(), r.to_owned())
    };
    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        bell: Condvar::new(),
        limits,
        tokens: config
            .access
            .secret
            .as_ref()
            .map(|s| (s.submit_token(), s.token())),
        refused: Default::default(),
        inputs_dir: config.inputs_dir.clone(),
        boards: Mutex::new(Boards::default()),
    });
    {
        // Jobs the journal says were running resume; queued ones start while there is
        // room.
        let mut store = shared.store()?;
        store.commit(|queue, records| queue.start_queued(&limits, unix_ms(), records))?;
        let (running, queued) = store.queue.jobs().fold((0, 0), |(r, q), j| match j.state {
            JobState::Running => (r + 1, q),
            JobState::Queued => (r, q + 1),
            _ => (r, q),
        });
        log::info!(
            "coordinator on {}: {running} jobs running, {queued} queued (at most {} at \
             once); workers connect to {tasks_endpoint} and {results_endpoint}",
            config.state.display(),
            limits.max_running,
        );
    }
    let control = ctx.socket(zmq::REP)?;
    control.set_linger(0)?;
    // No frame larger than the largest request any coordinator takes is read into
    // memory; one under that but over --max-input is read and refused, saying why.
    control.set_maxmsgsize(MAX_REQUEST_BYTES as i64)?;
    control.set_rcvtimeo(CONTROL_POLL.as_millis() as i32)?;
    control.set_ipv6(config.control.contains('['))?;
    control
        .bind(&config.control)
        .with_context(|| format!("cannot bind the control socket {}", config.control))?;
    let endpoint = control
        .get_last_endpoint()?
        .unwrap_or_else(|_| config.control.clone());
    crate::events::emit(&crate::events::Note::Listening {
        socket: "control".into(),
        endpoint: endpoint.clone(),
    });
    log::info!("control socket listening on {endpoint}");
    let view = match &config.http {
        Some(addr) => Some(start_view(addr, &config.access, &shared, shutdown)?),
        None => None,
    };
    let (changes, fronting) = crate::front::start(front, shutdown)?;
    notify_ready();
    let answering = {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let answered = answer(&control, &shared, &shutdown);
                if answered.is_err() {
                    // No control socket, no coordinator: the jobs stop too.
                    shutdown.request();
                }
                answered
            })
            .context("cannot start the control thread")?
    };
    let farm = Farm {
        tasks_endpoint: tasks_endpoint.clone(),
        config: Arc::new(config),
        shared: shared.clone(),
        changes,
    };
    let ran = run_jobs(&farm, shutdown);
    shutdown.request();
    let answered = answering
        .join()
        .map_err(|_| anyhow::anyhow!("the control thread panicked"))?;
    let fronted = fronting
        .join()
        .map_err(|_| anyhow::anyhow!("the front's thread panicked"))?;
    if let Some(view) = view {
        let _ = view.join();
    }
    ran.and(answered).and(fronted)
}

/// Raises this process's open-file limit to its hard limit: each worker on a job costs
/// the coordinator two in-process sockets, each with a file descriptor of its own, beside
/// its TCP connections. Best effort: the sockets say so if they run out.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur >= limit.rlim_max
    {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        log::debug!("cannot raise the open-file limit to {}", limit.rlim_max);
    }
}

/// Tells systemd the coordinator is up (`Type=notify`): `READY=1` to `$NOTIFY_SOCKET`,
/// when it is set (a path, or `@name` in the abstract namespace). Best effort: a
/// coordinator started by hand has no such socket.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.as_encoded_bytes().to_vec();
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let address = match target.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(std::path::Path::new(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&target),
            ))?,
        };
        socket.send_to_addr(b"READY=1\nSTATUS=taking jobs", &address)
    });
    if let Err(e) = sent {
        log::warn!("cannot tell systemd the coordinator is ready ($NOTIFY_SOCKET): {e}");
    }
}

/// Without a secret the control socket admits anyone who reaches it: it listens on
/// loopback only. With one, anywhere: every request carries a token derived from it.
fn check_control(endpoint: &str, secured: bool) -> anyhow::Result<()> {
    let host = endpoint
        .strip_prefix("tcp://")
        .and_then(|rest| rest.rsplit_once(':'))
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'));
    match host {
        Some("127.0.0.1" | "localhost" | "::1") => Ok(()),
        Some(_) if secured => Ok(()),
        Some(_) => bail!(
            "--control {endpoint}: without --secret-file the control socket listens on loopback \
             only (anyone who reaches it could submit jobs); give the farm's --secret-file (then \
             `submit`, `jobs`, `cancel` and `results` need it too), or bind tcp://127.0.0.1:PORT"
        ),
        None => bail!("--control {endpoint}: give tcp://HOST:PORT"),
    }
}

/// Whether `token` admits `request`: the submit token admits everything, the live view's
/// status token only what reads.
fn admits(shared: &Shared, request: &Request, token: &str) -> Result<(), String> {
    let Some((submit, status)) = &shared.tokens else {
        return Ok(());
    };
    if crate::auth::same_text(token, submit) {
        return Ok(());
    }
    if !request.writes() && crate::auth::same_text(token, status) {
        return Ok(());
    }
    Err(if token.is_empty() {
        "this coordinator takes requests with the farm's token only: pass --secret-file FILE \
         (the farm's secret)"
            .to_owned()
    } else if crate::auth::same_text(token, status) {
        "the status token reads the queue; submitting and cancelling need the farm's secret \
         (--secret-file)"
            .to_owned()
    } else {
        "a wrong token: pass the farm's --secret-file".to_owned()
    })
}

/// Answers control requests until `shutdown`.
fn answer(control: &zmq::Socket, shared: &Shared, shutdown: &Shutdown) -> anyhow::Result<()> {
    let max = (shared.limits.max_input_bytes as usize).clamp(1 << 10, MAX_REQUEST_BYTES);
    while !shutdown.is_requested() {
        let parts = match receive_request(control, max) {
            Ok(Some(parts)) => parts,
            Ok(None) => continue,
            Err(e) => bail!("the control socket failed: {e}"),
        };
        let reply = match parts {
            Err(reason) => Reply::Refused { reason },
            Ok((head, files, bytes)) => match Request::decode(&head, max) {
                Ok((request, token)) => match admits(shared, &request, &token) {
                    Ok(()) => {
                        handle(request, files, bytes, shared).unwrap_or_else(|e| Reply::Refused {
                            reason: format!("{e:#}"),
                        })
                    }
                    Err(reason) => {
                        shared
                            .refused
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Reply::Refused { reason }
                    }
                },
                Err(reason) => Reply::Refused { reason },
            },
        };
        if let Reply::Refused { reason } = &reply {
            log::warn!("control request refused: {reason}");
        }
        control
            .send(reply.encode(), 0)
            .map_err(|e| anyhow::anyhow!("the control socket failed: {e}"))?;
    }
    Ok(())
}

/// Most frames a request may carry after its JSON (a submission's input files).
const MAX_REQUEST_FILES: usize = 100_000;

/// One request off the control socket: its JSON, the frames after it and its size; or
/// why it is refused (over `max` bytes in all, or too many frames: the rest is read and
/// dropped as it comes). `None` when none came in time.
#[allow(clippy::type_complexity)]
fn receive_request(
    control: &zmq::Socket,
    max: usize,
) -> Result<Option<Result<(Vec<u8>, Vec<Vec<u8>>, u64), String>>, zmq::Error> {
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let (mut bytes, mut count) = (0usize, 0usize);
    loop {
        let mut frame = zmq::Message::new();
        match control.recv(&mut frame, 0) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) if count == 0 => return Ok(None),
            // The rest of a message begun is there already.
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
        count += 1;
        bytes += frame.len();
        let more = frame.get_more();
        if bytes <= max && count <= MAX_REQUEST_FILES + 1 {
            frames.push(frame.to_vec());
        } else {
            frames.clear();
        }
        if !more {
            break;
        }
    }
    if bytes > max {
        return Ok(Some(Err(format!(
            "a request of {bytes} bytes, over the coordinator's limit of {max} (its --max-input)"
        ))));
    }
    if count > MAX_REQUEST_FILES + 1 {
        return Ok(Some(Err(format!(
            "a request of {count} frames, over the {MAX_REQUEST_FILES} input files a submission \
             may carry"
        ))));
    }
    let head = frames.remove(0);
    Ok(Some(Ok((head, frames, bytes as u64))))
}

fn handle(
    request: Request,
    files: Vec<Vec<u8>>,
    bytes: u64,
    shared: &Shared,
) -> anyhow::Result<Reply> {
    let limits = &shared.limits;
    if !matches!(request, Request::Submit { .. }) && !files.is_empty() {
        bail!("only a submission carries files after its request");
    }
    let now = unix_ms();
    Ok(match request {
        Request::Submit {
            name,
            priority,
            workloads_ms,
            flags,
            verify_percent,
            replicate_percent,
            kernel_source,
            inputs,
            remote_inputs,
        } => {
            if let Some(pattern) = &remote_inputs {
                check_remote_inputs(pattern)?;
                if shared.inputs_dir.is_none() {
                    bail!(
                        "this coordinator takes no inputs named on its disk: start it with \
                         --inputs-dir DIR, or send the inputs with the submission"
                    );
                }
                if !inputs.is_empty() {
                    bail!("a submission either carries its inputs or names them, not both");
                }
            }
            let stored = Stored {
                flags,
                verify_percent,
                replicate_percent,
                remote_inputs,
            };
            let shown: String = crate::logging::printable(&name).chars().take(200).collect();
            // The job's files are on disk, their folder's entries too, before the journal
            // says it exists; a job that does not check out leaves nothing behind. They
            // are written and checked without holding the queue (only this thread submits,
            // so the id stays free meanwhile).
            let (folder, jobs_dir) = {
                let store = shared.store()?;
                (store.folder(store.queue.next_id()), store.dir.join("jobs"))
            };
            let written = write_job(
                &folder,
                &workloads_ms,
                &stored,
                kernel_source.as_deref(),
                &inputs,
                &files,
            )
            .and_then(|()| sync_dir(&jobs_dir))
            .and_then(|()| {
                let (args, verify, _) = job_args(&folder, shared.inputs_dir.as_deref())?;
                let prepared = prepare(&args, verify, shared.inputs_dir.as_deref())
                    .context("the submitted job")?;
                let tasks = match &prepared.chunking {
                    Some(plan) => plan.items,
                    None => prepared.batch.tasks.len() as u64,
                };
                Ok(JobSpec {
                    name: shown.clone(),
                    priority,
                    // A data kernel, or spin checked against the CPU: not for sleep workers.
                    needs_compute: args.kernel != Kernel::Spin || verify > 0,
                    input_bytes: bytes,
                    tasks,
                })
            });
            let submitted = written.and_then(|spec| {
                let tasks = spec.tasks;
                shared
                    .store()?
                    .commit(|queue, records| queue.submit(spec, limits, now, records))
                    .map(|outcome| outcome.map(|id| (id, tasks)))
            });
            match submitted {
                Ok(Ok((id, tasks))) => {
                    log::info!("job {id} ({shown}) accepted: {tasks} tasks or items");
                    job_event(id, JobState::Queued, "");
                    shared.bell.notify_all();
                    Reply::Submitted { id }
                }
                Ok(Err(refused)) => {
                    let _ = std::fs::remove_dir_all(&folder);
                    Reply::Refused {
                        reason: refused.to_string(),
                    }
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&folder);
                    return Err(e);
                }
            }
        }
        Request::Jobs => {
            let store = shared.store()?;
            let mut jobs: Vec<JobView> = store.queue.jobs().map(JobView::from).collect();
            let progress = Progress::read(shared, Some(&jobs))?;
            for job in &mut jobs {
                let (_, held, workers, _) = progress.of(job);
                job.held = Some(held);
                job.workers = (job.state == JobState::Running).then_some(workers);
            }
            Reply::Jobs {
                jobs,
                refused: shared.refused.load(std::sync::atomic::Ordering::Relaxed),
            }
        }
        Request::Cancel { id } => {
            let mut store = shared.store()?;
            match store
                .commit(|queue, records| queue.cancel(id, "the operator", limits, now, records))?
            {
                Ok(was) => {
                    if let Some(stop) = store.running.get(&id) {
                        stop.request();
                    }
                    log::info!("job {id} cancelled");
                    job_event(id, JobState::Cancelled, "");
                    shared.bell.notify_all();
                    Reply::Cancelled { id, was }
                }
                Err(refused) => Reply::Refused {
                    reason: refused.to_string(),
                },
            }
        }
        Request::Results { id } => {
            let store = shared.store()?;
            match store.queue.get(id) {
                None => Reply::Refused {
                    reason: store.queue.missing(id).to_string(),
                },
                Some(job) => {
                    let folder = store.folder(id);
                    let report = std::fs::read(folder.join("report.json"))
                        .ok()
                        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
                    // Where it stands, as `jobs` says it (what `submit --wait` follows).
                    let mut view = JobView::from(job);
                    let (_, held, workers, _) = Progress::read(shared, None)?.of(&view);
                    view.held = Some(held);
                    view.workers = (view.state == JobState::Running).then_some(workers);
                    Reply::Results {
                        job: view,
                        report,
                        folder: folder.display().to_string(),
                    }
                }
            }
        }
    })
}

/// How a job was submitted, as its folder keeps it (`job.json`): the batch's flags and the
/// checks asked for. Its files sit beside it: `tasks.txt`, `kernel.wgsl`, `inputs/`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Stored {
    /// `BatchArgs` in JSON; absent for a plain task list.
    #[serde(default)]
    flags: Option<serde_json::Value>,
    #[serde(default)]
    verify_percent: u8,
    #[serde(default)]
    replicate_percent: u8,
    /// Inputs named on the coordinator: a glob relative to its `--inputs-dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remote_inputs: Option<String>,
}

/// A submitted input's name: a plain file name, so it stays inside the job's folder.
fn check_input_name(name: &str) -> anyhow::Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.chars().all(|c| !c.is_control());
    if !plain {
        bail!(
            "input name {:?} is not a plain file name",
            crate::logging::printable(name)
        );
    }
    Ok(())
}

/// Writes a submitted job's files into `folder`, each synced, and the folder itself.
fn write_job(
    folder: &Path,
    workloads_ms: &[u32],
    stored: &Stored,
    kernel_source: Option<&str>,
    inputs: &[String],
    files: &[Vec<u8>],
) -> anyhow::Result<()> {
    if inputs.len() != files.len() {
        bail!(
            "the submission names {} inputs and carries {} files",
            inputs.len(),
            files.len()
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in inputs {
        check_input_name(name)?;
        if !seen.insert(name.as_str()) {
            bail!("two inputs are named {:?}", crate::logging::printable(name));
        }
    }
    if std::fs::symlink_metadata(folder).is_ok() {
        bail!(
            "{} exists already: the state directory holds files the journal does not know",
            folder.display()
        );
    }
    let write = |path: &Path, bytes: &[u8]| -> anyhow::Result<()> {
        let mut file = std::fs::File::create(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot make the job's folder {}", folder.display()))?;
    if !workloads_ms.is_empty() {
        let mut text = String::with_capacity(workloads_ms.len() * 4);
        for ms in workloads_ms {
            text.push_str(&ms.to_string());
            text.push('\n');
        }
        Batch::parse(&text).context("the submitted tasks")?;
        write(&folder.join("tasks.txt"), text.as_bytes())?;
    }
    if let Some(source) = kernel_source {
        write(&folder.join("kernel.wgsl"), source.as_bytes())?;
    }
    if !inputs.is_empty() {
        let dir = folder.join("inputs");
        std::fs::create_dir(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
        for (name, bytes) in inputs.iter().zip(files) {
            write(&dir.join(name), bytes)?;
        }
        sync_dir(&dir)?;
    }
    write(
        &folder.join("job.json"),
        &serde_json::to_vec_pretty(stored)?,
    )?;
    sync_dir(folder)
}

/// Flags for a job without any: a plain task list with the defaults.
#[derive(clap::Parser)]
struct Defaults {
    #[command(flatten)]
    batch: BatchArgs,
}

/// A job's batch prepared as the ventilator prepares one, from flags that came over the
/// wire: their ranges checked as the command line checks them (`BatchArgs::check`), a
/// panic in preparing turned into an error (one bad submission must not stop the
/// coordinator), and inputs named on the coordinator found inside `inputs_dir` only,
/// links and all.
fn prepare(
    args: &BatchArgs,
    verify: u8,
    inputs_dir: Option<&Path>,
) -> anyhow::Result<crate::cli::Prepared> {
    args.check()?;
    let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        args.prepare(verify, crate::protocol::DEFAULT_MAX_PAYLOAD)
    }))
    .map_err(|_| anyhow::anyhow!("the job's flags make no batch (preparing it failed)"))??;
    if let (Some(dir), Some(inputs)) = (inputs_dir, &prepared.inputs) {
        let root = dir
            .canonicalize()
            .with_context(|| format!("cannot read --inputs-dir {}", dir.display()))?;
        for path in &inputs.paths {
            let ours = path.starts_with(&root) || path.starts_with(dir);
            let inside = path.canonicalize().is_ok_and(|p| p.starts_with(&root));
            if ours && !inside {
                bail!(
                    "input {} leads outside the coordinator's --inputs-dir",
                    path.display()
                );
            }
        }
    }
    Ok(prepared)
}

/// A glob naming inputs under a coordinator's `--inputs-dir`: relative, and never
/// climbing out of it (no `..`, and no part that starts with a dot, which a glob may
/// match to `..`). Returns it as given.
pub fn check_remote_inputs(pattern: &str) -> anyhow::Result<String> {
    let path = Path::new(pattern);
    let climbs = path.components().any(|c| match c {
        std::path::Component::Normal(part) => part.to_string_lossy().starts_with('.'),
        _ => true,
    });
    if pattern.is_empty() || climbs {
        bail!(
            "--inputs {:?} with --inputs-on-coordinator: give a glob relative to the \
             coordinator's --inputs-dir, without `..`, a leading `/` or parts starting \
             with `.`",
            crate::logging::printable(pattern)
        );
    }
    Ok(pattern.to_owned())
}

/// The batch flags of the job in `folder`, its files named where the folder holds them
/// (or, for inputs named on the coordinator, under `inputs_dir`), and its `--verify` and
/// `--replicate` percentages.
fn job_args(folder: &Path, inputs_dir: Option<&Path>) -> anyhow::Result<(BatchArgs, u8, u8)> {
    use clap::Parser;
    let stored: Stored = match std::fs::read(folder.join("job.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a job's description", folder.display()))?,
        // A job from before kernels could be submitted: a task list.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored {
            flags: None,
            verify_percent: 0,
            replicate_percent: 0,
            remote_inputs: None,
        },
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", folder.display())),
    };
    let mut args = match stored.flags {
        Some(flags) => serde_json::from_value::<BatchArgs>(flags)
            .context("the submitted job's flags are not those of this conquer")?,
        None => {
            Defaults::try_parse_from(["serve"])
                .context("cannot make a job's default flags")?
                .batch
        }
    };
    let kernel = folder.join("kernel.wgsl");
    args.data.kernel_file = kernel.exists().then_some(kernel);
    // A user kernel's tasks are its inputs: a tasks.txt beside it (which coordinators
    // once stored for them too) is not its batch.
    let tasks = folder.join("tasks.txt");
    args.tasks.tasks_file = (tasks.exists() && args.data.kernel_file.is_none()).then_some(tasks);
    let inputs = folder.join("inputs");
    args.data.inputs = if let Some(pattern) = &stored.remote_inputs {
        check_remote_inputs(pattern)?;
        let dir = inputs_dir.context(
            "the job names inputs on the coordinator's disk, and this coordinator has no \
             --inputs-dir",
        )?;
        let dir = dir
            .to_str()
            .with_context(|| format!("{} is not UTF-8", dir.display()))?;
        Some(format!("{}/{pattern}", glob::Pattern::escape(dir)))
    } else if inputs.is_dir() {
        let dir = inputs
            .to_str()
            .with_context(|| format!("{} is not UTF-8", inputs.display()))?;
        Some(format!("{}/*", glob::Pattern::escape(dir)))
    } else {
        None
    };
    Ok((args, stored.verify_percent, stored.replicate_percent))
}

/// What every job's thread needs: the coordinator's settings, its queue, and the way to
/// the front.
#[derive(Clone)]
struct Farm {
    config: Arc<ServeConfig>,
    /// The farm's tasks endpoint, as workers reach it (the port filled in).
    tasks_endpoint: String,
    shared: Arc<Shared>,
    changes: Sender<Change>,
}

/// Starts a thread for every running job that has none, until `shutdown`; then waits for
/// the jobs' threads to stop.
fn run_jobs(farm: &Farm, shutdown: &Shutdown) -> anyhow::Result<()> {
    let mut threads: BTreeMap<JobId, std::thread::JoinHandle<anyhow::Result<()>>> = BTreeMap::new();
    let mut failed = Ok(());
    while !shutdown.is_requested() {
        // Jobs whose thread ended: a thread's error is the journal failing, which stops
        // the coordinator.
        let ended: Vec<JobId> = threads
            .iter()
            .filter(|(_, t)| t.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            if let Some(thread) = threads.remove(&id) {
                if let Err(e) = join(thread) {
                    failed = Err(e);
                    shutdown.request();
                }
            }
        }
        if shutdown.is_requested() {
            break;
        }
        if let Err(e) = start_jobs(farm, &mut threads, shutdown) {
            failed = Err(e);
            shutdown.request();
        }
    }
    for (_, thread) in threads {
        if let Err(e) = join(thread) {
            failed = Err(e);
        }
    }
    failed
}

/// Starts the queued jobs there is room for, and a thread for every running job without
/// one; then waits for a change (a submission, a cancel, a job's end) or a while.
fn start_jobs(
    farm: &Farm,
    threads: &mut BTreeMap<JobId, std::thread::JoinHandle<anyhow::Result<()>>>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    {
        let mut store = farm.shared.store()?;
        let limits = farm.shared.limits;
        store.commit(|queue, records| {
            let now = unix_ms();
            queue.expire(&limits, now, records);
            queue.start_queued(&limits, now, records);
        })?;
        let starting: Vec<Claim> = store
            .queue
            .running()
            .filter(|j| !threads.contains_key(&j.id))
            .map(Claim::from)
            .collect();
        for claim in starting {
            job_event(claim.id, JobState::Running, "");
            let folder = store.folder(claim.id);
            let (job, outer, stop) = (farm.clone(), shutdown.clone(), Shutdown::new());
            let token = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("job {}", claim.id))
                .spawn(move || {
                    crate::logging::speaking_as(&format!("job {}", claim.id), || {
                        run_job(&job, claim, &stop, &folder, &outer)
                    })
                })
                .context("cannot start a job's thread")?;
            // Its stop token is set while the queue is held: a cancel from now on finds it.
            store.running.insert(claim.id, token);
            threads.insert(claim.id, thread);
        }
        // Wait for a submission, a cancel, a job's end (or the stop flag).
        let _ = farm
            .shared
            .bell
            .wait_timeout(store, CONTROL_POLL)
            .map_err(|_| anyhow::anyhow!("a coordinator thread panicked"))?;
    }
    Ok(())
}

/// Why a job's batch did not finish.
enum Unfinished {
    /// Its sockets could not be made: the job waits, and is tried again.
    Sockets(anyhow::Error),
    /// The job failed (or was stopped).
    Job(anyhow::Error),
}

/// How long a job whose sockets could not be made waits before it is tried again.
const RETRY_SOCKETS: Duration = Duration::from_secs(5);

/// Runs one job to its end: done, failed, cancelled, or left running by a shutdown.
fn run_job(
    farm: &Farm,
    claim: Claim,
    stop: &Shutdown,
    folder: &Path,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let id = claim.id;
    let outcome = loop {
        let outcome = run_batch(farm, claim, folder, stop, shutdown);
        // The job leaves the share whatever happened: its workers go to others.
        let _ = farm.changes.send(Change::End { id });
        match outcome {
            Err(Unfinished::Sockets(e)) => {
                log::error!(
                    "job {id} cannot start: {e:#}; trying again in {} s",
                    RETRY_SOCKETS.as_secs()
                );
                let until = Instant::now() + RETRY_SOCKETS;
                while Instant::now() < until && !shutdown.is_requested() && !stop.is_requested() {
                    std::thread::sleep(CONTROL_POLL);
                }
                if shutdown.is_requested() || stop.is_requested() {
                    break Err(Unfinished::Sockets(e));
                }
            }
            other => break other,
        }
    };
    let shared = &farm.shared;
    let mut held = None;
    if let Ok(mut boards) = shared.boards.lock() {
        if let Some(board) = boards.running.remove(&id) {
            let count = board.get().map_or(0, |s| {
                if s.items > 0 {
                    s.items_held
                } else {
                    s.held as u64
                }
            });
            boards.held.insert(id, count);
            held = Some(count);
        }
    }
    let mut store = shared.store()?;
    store.running.remove(&id);
    // Room for a queued job: the queue's thread looks.
    shared.bell.notify_all();
    // What it held, in the journal too: a restarted coordinator still says it.
    let count_held = |store: &mut Store| -> anyhow::Result<()> {
        match held {
            Some(held) => store.commit(|queue, records| queue.count_held(id, held, records)),
            None => Ok(()),
        }
    };
    if store.queue.get(id).is_none_or(|j| j.state.is_over()) {
        // Cancelled meanwhile: the journal says so already.
        return count_held(&mut store);
    }
    if shutdown.is_requested() {
        // Left running in the journal: it resumes when the coordinator starts again.
        log::info!("stopping with job {id} running; it resumes on the next start");
        return Ok(());
    }
    let (state, reason) = match outcome {
        Ok(()) => (JobState::Done, String::new()),
        Err(Unfinished::Sockets(_)) => return Ok(()),
        Err(Unfinished::Job(e)) => (JobState::Failed, format!("{e:#}")),
    };
    match state {
        JobState::Done => log::info!("job {id} done"),
        _ => log::error!("job {id} failed: {reason}"),
    }
    job_event(id, state, &reason);
    let limits = shared.limits;
    store.commit(|queue, records| queue.end(id, state, &reason, &limits, unix_ms(), records))?;
    count_held(&mut store)
}

/// A job's change of state as an event (`--events`).
fn job_event(job: JobId, state: JobState, reason: &str) {
    crate::events::emit(&crate::events::Note::Job {
        job,
        state: state.name().to_owned(),
        reason: reason.to_owned(),
    });
}

/// Numbers the in-process endpoints of a job's sockets, so a job tried again never meets
/// its earlier sockets' names.
static ENDPOINTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The job's batch through a sink and a ventilator of its own, on in-process endpoints
/// the front relays to; the report goes into the job's folder. A batch whose report's
/// verdict fails (a task given up on, a mismatch) is a failed job, its report kept.
fn run_batch(
    farm: &Farm,
    claim: Claim,
    folder: &Path,
    stop: &Shutdown,
    shutdown: &Shutdown,
) -> Result<(), Unfinished> {
    let id = claim.id;
    let config = &farm.config;
    let job_failed = Unfinished::Job;
    let (args, verify, replicate) = job_args(folder, farm.shared.inputs_dir.as_deref())
        .with_context(|| format!("job {id}"))
        .map_err(job_failed)?;
    let mut prepared = prepare(&args, verify, farm.shared.inputs_dir.as_deref())
        .with_context(|| format!("job {id}"))
        .map_err(job_failed)?;
    prepared.job.replicate_percent = replicate;
    // The report names the chunking policy, as `run`'s does.
    let policy = prepared.chunking.map(|plan| plan.policy.name());
    let results = folder.join("results.jsonl");
    // A results file from before a restart: the job resumes where the sink stands.
    let resume = results.exists();
    // Each job its own batch id, the same on every start (a resumed job keeps its own).
    let batch_id = prepared.batch_id ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // What the job makes is kept in its folder: a user kernel's outputs, the picture.
    let outputs = crate::outputs::OutputsConfig {
        dir: (args.data.kernel_file.is_some() || args.kernel == Kernel::Copy)
            .then(|| folder.join("outputs")),
        image: (args.kernel == Kernel::Mandelbrot).then(|| folder.join("picture.png")),
    };
    let n = ENDPOINTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Its progress, for `conquer jobs` and the live view.
    let board = Arc::new(Board::default());
    if let Ok(mut boards) = farm.shared.boards.lock() {
        boards.running.insert(id, board.clone());
    }
    // The job's own context: its sockets, and the front's to it for each of its workers.
    let ctx = zmq::Context::new();
    let sink = Sink::bind(
        &ctx,
        SinkConfig {
            bind: format!("inproc://conquer-job-{id}-{n}-results"),
            results: Some((results, ResultsFormat::Jsonl)),
            resume,
            heartbeat: config.heartbeat,
            outputs,
            resume_advice: Some(format!(
                "start `conquer serve` again on the same --state: it resumes job {id}"
            )),
            ..SinkConfig::default()
        },
    )
    .map_err(Unfinished::Sockets)?;
    let mut report = if sink.holds_whole_batch().is_some() {
        sink.run(stop).map_err(job_failed)?
    } else {
        let ventilator = Ventilator::bind(
            &ctx,
            VentilatorConfig {
                bind: format!("inproc://conquer-job-{id}-{n}-tasks"),
                sink: sink.endpoint().to_owned(),
                batch_id: Some(batch_id),
                resume,
                // Workers stay for the next job.
                shutdown_workers: false,
                heartbeat: config.heartbeat,
                resume_advice: Some(format!(
                    "unless job {id} was cancelled, `conquer serve` started again on the same \
                     --state resumes it"
                )),
                // Workers come and go between jobs: the batch waits for them.
                wait_timeout: Duration::from_secs(24 * 3600),
                sink_timeout: Duration::from_secs(24 * 3600),
                order: args.order,
                seed: args.tasks.seed,
                chunking: prepared.chunking,
                inputs: prepared.inputs,
                kernel_source: prepared.source,
                board: Some(board),
                shown_endpoint: Some(farm.tasks_endpoint.clone()),
                ..VentilatorConfig::local(prepared.batch, prepared.job)
            },
        )
        .map_err(Unfinished::Sockets)?;
        // Workers may be placed on it from now on.
        let _ = farm.changes.send(Change::Start {
            claim,
            batch: batch_id,
            tasks: ventilator.endpoint().to_owned(),
            results: sink.endpoint().to_owned(),
            ctx: ctx.clone(),
        });
        let spawned =
            spawn(&format!("job {id} sink"), stop, move |s| sink.run(s)).and_then(|sink_thread| {
                Ok((
                    sink_thread,
                    spawn(&format!("job {id} ventilator"), stop, move |s| {
                        ventilator.run(s).map(|_| ())
                    })?,
                ))
            });
        let (sink_thread, vent_thread) = spawned.map_err(job_failed)?;
        // Each waits for the other a little once it ends (the ventilator hears the sink's
        // last word; a sink whose ventilator failed would wait for ever), then both stop.
        let mut one_ended: Option<Instant> = None;
        while !(sink_thread.is_finished() && vent_thread.is_finished()) {
            if shutdown.is_requested() {
                stop.request();
            }
            if sink_thread.is_finished() || vent_thread.is_finished() {
                let since = *one_ended.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(5) {
                    stop.request();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match (join(sink_thread), join(vent_thread)) {
            (Ok(report), _) => report,
            // A sink stopped because its ventilator failed: the ventilator's error says why.
            (Err(_), Err(e)) if !Interrupted::is(&e) => return Err(job_failed(e)),
            (Err(e), _) => return Err(job_failed(e)),
        }
    };
    if let (Some(job), Some(policy)) = (report.job.as_mut(), policy) {
        job.chunking = policy.to_owned();
    }
    let json = serde_json::to_vec_pretty(&report)
        .context("writing the report")
        .map_err(job_failed)?;
    let written = crate::files::Dir::open(folder).and_then(|dir| {
        crate::files::write_whole(&dir, "report.json", |file| {
            file.write_all(&json).context("cannot write the report")
        })?;
        dir.sync()
    });
    written.map_err(job_failed)?;
    report
        .verdict()
        .map_err(|why| job_failed(anyhow::anyhow!(why)))
}

/// How often the coordinator's live view is composed anew.
const VIEW_EVERY: Duration = Duration::from_millis(500);

/// Serves the coordinator's live view on `addr` and keeps it current on a thread of its
/// own until `shutdown`: the jobs listed, and the oldest running job's farm in full.
fn start_view(
    addr: &str,
    access: &crate::auth::Access,
    shared: &Arc<Shared>,
    shutdown: &Shutdown,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    crate::http::check_address(addr)?;
    let guard = crate::http::Guard {
        token: access.http_token(addr)?,
        allow: access.allow.clone(),
    };
    let server = crate::http::Server::start(addr, guard)?;
    log::info!("live view on http://{}/", server.address());
    crate::events::emit(&crate::events::Note::Listening {
        socket: "http".into(),
        endpoint: format!("http://{}", server.address()),
    });
    let (shared, shutdown) = (shared.clone(), shutdown.clone());
    std::thread::Builder::new()
        .name("view".into())
        .spawn(move || {
            while !shutdown.is_requested() {
                match compose(&shared) {
                    Ok((status, metrics)) => server.publish(status, metrics),
                    Err(e) => log::warn!("the live view: {e:#}"),
                }
                std::thread::sleep(VIEW_EVERY);
            }
        })
        .context("cannot start the live view's thread")
}

/// What the jobs' ventilators last observed: each running job's farm, and the count a
/// job that ended had held.
struct Progress {
    running: BTreeMap<JobId, Arc<FarmStatus>>,
    held: BTreeMap<JobId, u64>,
}

impl Progress {
    /// Read for `jobs`, the queue's jobs now (all of them: the counts of jobs not among
    /// them, expired since, are forgotten), or for one job (`None`: nothing forgotten).
    fn read(shared: &Shared, jobs: Option<&[JobView]>) -> anyhow::Result<Progress> {
        let mut boards = shared
            .boards
            .lock()
            .map_err(|_| anyhow::anyhow!("a job's thread panicked holding its progress"))?;
        if let Some(jobs) = jobs {
            boards.held.retain(|id, _| jobs.iter().any(|j| j.id == *id));
        }
        Ok(Progress {
            running: boards
                .running
                .iter()
                .filter_map(|(id, b)| Some((*id, b.get()?)))
                .collect(),
            held: boards.held.clone(),
        })
    }

    /// A job's tasks (items), those held, its workers and its ETA.
    fn of(&self, job: &JobView) -> (u64, u64, usize, Option<f64>) {
        match self.running.get(&job.id) {
            Some(s) if s.items > 0 => (s.items, s.items_held, s.alive, s.eta_s),
            Some(s) => (
                (s.tasks as u64).max(job.tasks),
                s.held as u64,
                s.alive,
                s.eta_s,
            ),
            None if job.state == JobState::Done => (job.tasks, job.tasks, 0, None),
            // Counted at its end, in this run or (from the journal) an earlier one.
            None => (
                job.tasks,
                self.held.get(&job.id).copied().or(job.held).unwrap_or(0),
                0,
                None,
            ),
        }
    }
}

/// The coordinator's status (its jobs, and the oldest running job's farm) and metrics.
fn compose(shared: &Shared) -> anyhow::Result<(FarmStatus, String)> {
    let views: Vec<JobView> = shared.store()?.queue.jobs().map(JobView::from).collect();
    let progress = Progress::read(shared, Some(&views))?;
    let running = &progress.running;
    let now = unix_ms();
    let mut jobs = Vec::with_capacity(views.len());
    for job in &views {
        let (tasks, held, workers, eta_s) = progress.of(job);
        jobs.push(JobStatus {
            id: job.id,
            name: job.name.clone(),
            state: crate::cli::state_name(job.state).to_owned(),
            priority: job.priority,
            tasks,
            held,
            workers,
            elapsed_s: job
                .started_ms
                .map(|start| job.ended_ms.unwrap_or(now).saturating_sub(start) as f64 / 1e3),
            eta_s,
            reason: job.reason.clone(),
        });
    }
    let queued = jobs.iter().filter(|j| j.state == "queued").count();
    let mut status = match running.values().next() {
        Some(first) => FarmStatus::clone(first),
        None => FarmStatus {
            batch: "-".into(),
            phase: "idle".into(),
            window_s: 30.0,
            ..FarmStatus::default()
        },
    };
    // A worker that left the job shown for another job is not gone: it says where it is.
    for worker in &mut status.workers {
        let elsewhere = running.iter().skip(1).find(|(_, farm)| {
            farm.workers
                .iter()
                .any(|w| w.name == worker.name && w.state != "gone")
        });
        if let (true, Some((id, _))) = (worker.state == "gone", elsewhere) {
            worker.state = format!("job {id}");
        }
    }
    status.phase = format!(
        "{} running, {queued} queued{}",
        running.len(),
        match running.keys().next() {
            Some(id) => format!(" (showing job {id}: {})", status.phase),
            None => String::new(),
        }
    );
    // A coordinator is never finished; its jobs are.
    status.finished = false;
    let metrics = job_metrics(&jobs);
    status.jobs = jobs;
    Ok((status, metrics))
}

/// The coordinator's `/metrics`: jobs by state, and per job (labelled by its id) its
/// tasks, those held and its workers.
fn job_metrics(jobs: &[JobStatus]) -> String {
    use std::fmt::Write as _;
    let mut m = String::with_capacity(256 + jobs.len() * 256);
    let _ = writeln!(
        m,
        "# HELP conquer_jobs Jobs kept by the coordinator, by state."
    );
    let _ = writeln!(m, "# TYPE conquer_jobs gauge");
    for state in ["queued", "running", "done", "failed", "cancelled"] {
        let n = jobs.iter().filter(|j| j.state == state).count();
        let _ = writeln!(m, "conquer_jobs{{state=\"{state}\"}} {n}");
    }
    type Series = (&'static str, &'static str, fn(&JobStatus) -> u64);
    let series: [Series; 4] = [
        (
            "conquer_job_tasks",
            "A job's tasks (a divisible job's items).",
            |j| j.tasks,
        ),
        (
            "conquer_job_held",
            "Tasks (items) of a job the sink holds.",
            |j| j.held,
        ),
        ("conquer_job_workers", "Workers serving a job now.", |j| {
            j.workers as u64
        }),
        (
            "conquer_job_priority",
            "A job's weight in the fair share.",
            |j| u64::from(j.priority),
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(m, "# HELP {name} {help}");
        let _ = writeln!(m, "# TYPE {name} gauge");
        for job in jobs {
            let _ = writeln!(m, "{name}{{job=\"{}\"}} {}", job.id, value(job));
        }
    }
    let _ = writeln!(
        m,
        "# HELP conquer_job_info A job's name and state (the value is always 1)."
    );
    let _ = writeln!(m, "# TYPE conquer_job_info gauge");
    for job in jobs {
        let _ = writeln!(
            m,
            "conquer_job_info{{job=\"{}\",name=\"{}\",state=\"{}\"}} 1",
            job.id,
            crate::observe::label(&job.name),
            job.state
        );
    }
    m
}

fn spawn<T: Send + 'static>(
    name: &str,
    stop: &Shutdown,
    body: impl FnOnce(&Shutdown) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
    let stop = stop.clone();
    let role = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || crate::logging::speaking_as(&role, || body(&stop)))
        .with_context(|| format!("cannot start the {name} thread"))
}

fn join<T>(handle: std::thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("a job's thread panicked"))?
}

/// Asks the coordinator at `endpoint` and returns its reply, waiting at most `timeout`.
/// No coordinator answered a request in time: gone, restarting, or never there.
#[derive(Debug, thiserror::Error)]
#[error(
    "no coordinator answered at {endpoint} within {secs} s: is `conquer serve` running there \
     (its --control)?"
)]
pub struct NoAnswer {
    pub endpoint: String,
    pub secs: u64,
}

pub fn ask(
    endpoint: &str,
    request: &Request,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    ask_with(endpoint, request, &[], token, timeout)
}

/// [`ask`], with `frames` after the request in the same message (a submission's inputs).
pub fn ask_with(
    endpoint: &str,
    request: &Request,
    frames: &[Vec<u8>],
    token: &str,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::REQ)?;
    socket.set_linger(0)?;
    socket.set_rcvtimeo(timeout.as_millis() as i32)?;
    socket.set_sndtimeo(timeout.as_millis() as i32)?;
    crate::sockets::check_endpoint(endpoint, "--coordinator", false)?;
    socket
        .connect(endpoint)
        .with_context(|| format!("cannot connect to the coordinator at {endpoint}"))?;
    let no_answer = || {
        anyhow::Error::new(NoAnswer {
            endpoint: endpoint.to_owned(),
            secs: timeout.as_secs(),
        })
    };
    let mut parts = vec![request.encode(token)];
    parts.extend(frames.iter().cloned());
    socket.send_multipart(parts, 0).map_err(|_| no_answer())?;
    let bytes = socket.recv_bytes(0).map_err(|_| no_answer())?;
    Reply::decode(&bytes).map_err(|e| anyhow::anyhow!("{endpoint}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_socket_listens_on_loopback_only() {
        for good in [
            "tcp://127.0.0.1:5559",
            "tcp://[::1]:5559",
            "tcp://localhost:1",
        ] {
            assert!(check_control(good, false).is_ok(), "{good}");
        }
        for bad in [
            "tcp://*:5559",
            "tcp://0.0.0.0:5559",
            "tcp://10.0.0.1:5559",
            "ipc://x",
        ] {
            assert!(check_control(bad, false).is_err(), "{bad}");
        }
        // With a secret every request carries a token: any address.
        assert!(check_control("tcp://*:5559", true).is_ok());
        assert!(check_control("ipc://x", true).is_err());
    }

    #[test]
    fn a_second_coordinator_on_one_state_directory_stops_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("another coordinator runs on"), "{e}");
        drop(first);
        assert!(
            Store::open(dir.path()).is_ok(),
            "free again once the first stops"
        );
    }

    #[test]
    fn the_journal_grows_with_the_jobs_kept_not_with_every_job_run() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_jobs: 10,
            max_running: 1,
            max_input_bytes: 1 << 20,
            keep: 5,
            keep_ms: 0,
        };
        let mut store = Store::open(dir.path()).unwrap();
        for _ in 0..2000 {
            let spec = JobSpec {
                name: "j".into(),
                priority: 1,
                needs_compute: false,
                input_bytes: 0,
                tasks: 1,
            };
            let id = store
                .commit(|queue, records| queue.submit(spec, &limits, 1, records))
                .unwrap()
                .unwrap();
            store
                .commit(|queue, records| queue.end(id, JobState::Done, "", &limits, 2, records))
                .unwrap();
        }
        let lines = std::fs::read_to_string(dir.path().join(JOURNAL))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 1000 + 8 * 5 + 10, "{lines} lines for 5 jobs kept");
        drop(store);
        // And it still replays to the same queue.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.queue.jobs().count(), 5);
        assert_eq!(store.queue.next_id(), 2001);
    }

    #[test]
    fn new_jobs_are_numbered_past_folders_the_journal_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs").join("7")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.queue.next_id(), 8);
    }

    #[test]
    fn a_journal_cut_short_by_a_crash_loses_only_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_jobs: 10,
            max_running: 1,
            max_input_bytes: 1 << 20,
            keep: 10,
            keep_ms: 0,
        };
        {
            let mut store = Store::open(dir.path()).unwrap();
            for name in ["a", "b"] {
                let spec = JobSpec {
                    name: name.into(),
                    priority: 1,
                    needs_compute: false,
                    input_bytes: 0,
                    tasks: 1,
                };
                store
                    .commit(|queue, records| queue.submit(spec, &limits, 1, records))
                    .unwrap()
                    .unwrap();
            }
        }
        let path = dir.path().join(JOURNAL);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(r#"{"record":"ended","id":1,"sta"#);
        std::fs::write(&path, &text).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let states: Vec<JobState> = store.queue.jobs().map(|j| j.state).collect();
        assert_eq!(states, [JobState::Running, JobState::Queued]);
        drop(store);
        // A bad line that is not the last is an error naming it.
        std::fs::write(&path, "garbage\n{}\n").unwrap();
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("journal.jsonl:1"), "{e}");
    }
}

//! `conquer serve`: a coordinator that stays up and runs the jobs submitted to it, one
//! after another, each as a batch of its own to the workers that stay connected.
//!
//! It binds the tasks ROUTER (`--bind`, as a ventilator does) and the results ROUTER
//! (`--results-bind`, as a sink does) afresh for each job, and a control REP socket
//! (`--control`, loopback only for now) that `conquer submit`, `jobs`, `cancel` and
//! `results` speak to (`protocol::control`). Its state directory holds the journal
//! (`journal.jsonl`, the job queue's records, synced before they count) and a folder per
//! job: its tasks, its results file and its report. A coordinator killed mid-job and
//! started again on the same directory resumes the job from its results file, redoing
//! nothing the file holds. The queue's rules live in `conquer_core::jobs`; this module
//! does the files, the sockets and the threads. Jobs run one at a time for now: sharing
//! the workers among several at once is the queue's fair share, not yet wired here.

use crate::batch::{Batch, Job};
use crate::heartbeat::Heartbeat;
use crate::protocol::control::{JobView, Reply, Request, MAX_REQUEST_BYTES};
use crate::report::ResultsFormat;
use crate::shutdown::{Interrupted, Shutdown};
use crate::sink::{Sink, SinkConfig};
use crate::ventilator::{Ventilator, VentilatorConfig};
use anyhow::{bail, Context};
use conquer_core::jobs::{JobId, JobQueue, JobSpec, JobState, Limits, Record};
use std::io::Write;
use std::path::{Path, PathBuf};
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
    /// The farm's secret or allowlist, as the ventilator's and the sink's are: every job's
    /// sockets are guarded by it.
    pub access: crate::auth::Access,
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
    /// The running job's stop token, to cancel it.
    running: Option<(JobId, Shutdown)>,
}

impl Store {
    /// Opens (or makes) the state directory, replays the journal and rewrites it to the
    /// jobs kept. A last line cut short by a crash is dropped; any other bad line is an
    /// error naming it.
    fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir.join("jobs"))
            .with_context(|| format!("cannot make the state directory {}", dir.display()))?;
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
                    "{}:{}: not a journal record ({e}); move the file aside to start an empty \
                     queue",
                    path.display(),
                    n + 1
                ),
            }
        }
        let queue = JobQueue::replay(&records);
        // Rewritten to the jobs kept, whole, then renamed over the old one.
        let temporary = dir.join(format!(".{JOURNAL}.tmp"));
        let mut file = std::fs::File::create(&temporary)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        for record in queue.snapshot() {
            writeln!(file, "{}", serde_json::to_string(&record)?)?;
        }
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        sync_dir(dir)?;
        let journal = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Store {
            dir: dir.to_owned(),
            journal,
            queue,
            running: None,
        })
    }

    /// Appends records and syncs them: they count from here.
    fn append(&mut self, records: &[Record]) -> anyhow::Result<()> {
        let mut text = String::new();
        for record in records {
            text.push_str(&serde_json::to_string(record)?);
            text.push('\n');
            if let Record::Expired { id } = record {
                // A job forgotten takes its folder with it.
                let _ = std::fs::remove_dir_all(self.folder(*id));
            }
        }
        self.journal
            .write_all(text.as_bytes())
            .and_then(|()| self.journal.sync_data())
            .context("cannot write the coordinator's journal")
    }

    fn folder(&self, id: JobId) -> PathBuf {
        self.dir.join("jobs").join(id.to_string())
    }
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
}

impl Shared {
    fn store(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Store>> {
        self.store
            .lock()
            .map_err(|_| anyhow::anyhow!("a coordinator thread panicked holding the queue"))
    }
}

/// Runs the coordinator until `shutdown`: the control socket on a thread of its own, the
/// jobs on this one. A job running when it stops stays running in the journal, and
/// resumes when the coordinator starts again.
pub fn serve(config: ServeConfig, shutdown: &Shutdown) -> anyhow::Result<()> {
    check_control(&config.control)?;
    config.access.check_exposure(&config.bind, "--bind")?;
    config
        .access
        .check_exposure(&config.results_bind, "--results-bind")?;
    let mut limits = config.limits;
    limits.max_running = 1;
    let store = Store::open(&config.state)?;
    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        bell: Condvar::new(),
        limits,
    });
    {
        // A job the journal says was running resumes; failing that, the oldest queued
        // starts.
        let mut store = shared.store()?;
        let mut records = Vec::new();
        store.queue.start_queued(&limits, unix_ms(), &mut records);
        store.append(&records)?;
        let (running, queued) = store.queue.jobs().fold((0, 0), |(r, q), j| match j.state {
            JobState::Running => (r + 1, q),
            JobState::Queued => (r, q + 1),
            _ => (r, q),
        });
        log::info!(
            "coordinator on {}: {running} job running, {queued} queued; workers connect to {} \
             and {}",
            config.state.display(),
            config.bind,
            config.results_bind
        );
    }
    let ctx = zmq::Context::new();
    let control = ctx.socket(zmq::REP)?;
    control.set_linger(0)?;
    control.set_rcvtimeo(CONTROL_POLL.as_millis() as i32)?;
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
    let answering = {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || answer(&control, &shared, &shutdown))
            .context("cannot start the control thread")?
    };
    let ran = run_jobs(&config, &shared, shutdown);
    shutdown.request();
    let answered = answering
        .join()
        .map_err(|_| anyhow::anyhow!("the control thread panicked"))?;
    ran.and(answered)
}

/// The control socket takes no secret yet: it listens on loopback only.
fn check_control(endpoint: &str) -> anyhow::Result<()> {
    let host = endpoint
        .strip_prefix("tcp://")
        .and_then(|rest| rest.rsplit_once(':'))
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'));
    match host {
        Some("127.0.0.1" | "localhost" | "::1") => Ok(()),
        Some(_) => bail!(
            "--control {endpoint}: the control socket takes no secret yet, so it listens on \
             loopback only; bind it to tcp://127.0.0.1:PORT and submit from this machine (or \
             through an SSH tunnel)"
        ),
        None => bail!("--control {endpoint}: give tcp://127.0.0.1:PORT"),
    }
}

/// Answers control requests until `shutdown`.
fn answer(control: &zmq::Socket, shared: &Shared, shutdown: &Shutdown) -> anyhow::Result<()> {
    let max = (shared.limits.max_input_bytes as usize).clamp(1 << 10, MAX_REQUEST_BYTES);
    while !shutdown.is_requested() {
        let bytes = match control.recv_bytes(0) {
            Ok(bytes) => bytes,
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => continue,
            Err(e) => bail!("the control socket failed: {e}"),
        };
        let reply = match Request::decode(&bytes, max) {
            Ok(request) => {
                handle(request, bytes.len() as u64, shared).unwrap_or_else(|e| Reply::Refused {
                    reason: format!("{e:#}"),
                })
            }
            Err(reason) => Reply::Refused { reason },
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

fn handle(request: Request, bytes: u64, shared: &Shared) -> anyhow::Result<Reply> {
    let limits = &shared.limits;
    let mut store = shared.store()?;
    let now = unix_ms();
    Ok(match request {
        Request::Submit {
            name,
            priority,
            workloads_ms,
        } => {
            let text = tasks_text(&workloads_ms)?;
            let spec = JobSpec {
                name: crate::logging::printable(&name).chars().take(200).collect(),
                priority,
                needs_compute: false,
                input_bytes: bytes,
                tasks: workloads_ms.len() as u64,
            };
            // The job's tasks are on disk before the journal says it exists.
            let id = store.queue.next_id();
            let folder = store.folder(id);
            std::fs::create_dir_all(&folder)
                .and_then(|()| std::fs::write(folder.join("tasks.txt"), text))
                .and_then(|()| std::fs::File::open(folder.join("tasks.txt"))?.sync_all())
                .with_context(|| format!("cannot write the job's tasks in {}", folder.display()))?;
            let mut records = Vec::new();
            match store.queue.submit(spec, limits, now, &mut records) {
                Ok(id) => {
                    store.append(&records)?;
                    log::info!("job {id} ({name}) accepted: {} tasks", workloads_ms.len());
                    shared.bell.notify_all();
                    Reply::Submitted { id }
                }
                Err(refused) => {
                    let _ = std::fs::remove_dir_all(&folder);
                    Reply::Refused {
                        reason: refused.to_string(),
                    }
                }
            }
        }
        Request::Jobs => Reply::Jobs {
            jobs: store.queue.jobs().map(JobView::from).collect(),
        },
        Request::Cancel { id } => {
            let mut records = Vec::new();
            match store
                .queue
                .cancel(id, "the operator", limits, now, &mut records)
            {
                Ok(was) => {
                    store.append(&records)?;
                    if let Some((running, stop)) = &store.running {
                        if *running == id {
                            stop.request();
                        }
                    }
                    log::info!("job {id} cancelled");
                    shared.bell.notify_all();
                    Reply::Cancelled { id, was }
                }
                Err(refused) => Reply::Refused {
                    reason: refused.to_string(),
                },
            }
        }
        Request::Results { id } => match store.queue.get(id) {
            None => Reply::Refused {
                reason: format!("no job {id} on this coordinator (`conquer jobs` lists them)"),
            },
            Some(job) => {
                let folder = store.folder(id);
                let report = std::fs::read(folder.join("report.json"))
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok());
                Reply::Results {
                    job: JobView::from(job),
                    report,
                    folder: folder.display().to_string(),
                }
            }
        },
    })
}

/// A submitted task list as a tasks file: checked as `--tasks-file` checks one.
fn tasks_text(workloads_ms: &[u32]) -> anyhow::Result<String> {
    let mut text = String::with_capacity(workloads_ms.len() * 4);
    for ms in workloads_ms {
        text.push_str(&ms.to_string());
        text.push('\n');
    }
    Batch::parse(&text).context("the submitted tasks")?;
    Ok(text)
}

/// Runs the running job, then the next, until `shutdown`.
fn run_jobs(config: &ServeConfig, shared: &Shared, shutdown: &Shutdown) -> anyhow::Result<()> {
    loop {
        if shutdown.is_requested() {
            return Ok(());
        }
        let next = {
            let store = shared.store()?;
            let running = store.queue.running().next().map(|j| j.id);
            if running.is_none() {
                // Nothing to run: wait for a submission (or the stop flag).
                let _ = shared
                    .bell
                    .wait_timeout(store, CONTROL_POLL)
                    .map_err(|_| anyhow::anyhow!("a coordinator thread panicked"))?;
            }
            running
        };
        if let Some(id) = next {
            run_job(config, shared, id, shutdown)?;
        }
    }
}

/// Runs one job to its end: done, failed, cancelled, or left running by a shutdown.
fn run_job(
    config: &ServeConfig,
    shared: &Shared,
    id: JobId,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let stop = Shutdown::new();
    let folder = {
        let mut store = shared.store()?;
        store.running = Some((id, stop.clone()));
        store.folder(id)
    };
    let outcome = run_batch(config, id, &folder, &stop, shutdown);
    let mut store = shared.store()?;
    store.running = None;
    if shutdown.is_requested() {
        // Left running in the journal: it resumes when the coordinator starts again.
        log::info!("stopping with job {id} running; it resumes on the next start");
        return Ok(());
    }
    let (state, reason) = match outcome {
        Ok(()) => (JobState::Done, String::new()),
        // Cancelled: the journal says so already.
        Err(_) if store.queue.get(id).is_some_and(|j| j.state.is_over()) => return Ok(()),
        Err(e) => (JobState::Failed, format!("{e:#}")),
    };
    match state {
        JobState::Done => log::info!("job {id} done"),
        _ => log::error!("job {id} failed: {reason}"),
    }
    let mut records = Vec::new();
    store
        .queue
        .end(id, state, &reason, &shared.limits, unix_ms(), &mut records);
    store.append(&records)?;
    Ok(())
}

/// The job's batch through a sink and a ventilator of its own, on the farm's endpoints;
/// the report goes into the job's folder.
fn run_batch(
    config: &ServeConfig,
    id: JobId,
    folder: &Path,
    stop: &Shutdown,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(folder.join("tasks.txt"))
        .with_context(|| format!("cannot read job {id}'s tasks in {}", folder.display()))?;
    let batch = Batch::parse(&text).with_context(|| format!("job {id}'s tasks"))?;
    let results = folder.join("results.jsonl");
    // A results file from before a restart: the job resumes where the sink stands.
    let resume = results.exists();
    let job = Job::default();
    // Each job its own batch id, the same on every start (a resumed job keeps its own).
    let batch_id = batch.id(&job) ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let sink_ctx = zmq::Context::new();
    let vent_ctx = zmq::Context::new();
    let sink = Sink::bind(
        &sink_ctx,
        SinkConfig {
            bind: config.results_bind.clone(),
            results: Some((results, ResultsFormat::Jsonl)),
            resume,
            heartbeat: config.heartbeat,
            access: config.access.clone(),
            ..SinkConfig::default()
        },
    )?;
    let report = if sink.holds_whole_batch().is_some() {
        sink.run(stop)?
    } else {
        let ventilator = Ventilator::bind(
            &vent_ctx,
            VentilatorConfig {
                bind: config.bind.clone(),
                sink: sink.endpoint().replace("0.0.0.0", "127.0.0.1"),
                batch_id: Some(batch_id),
                resume,
                // Workers stay for the next job.
                shutdown_workers: false,
                heartbeat: config.heartbeat,
                access: config.access.clone(),
                // Workers come and go between jobs: the batch waits for them.
                wait_timeout: Duration::from_secs(24 * 3600),
                sink_timeout: Duration::from_secs(24 * 3600),
                ..VentilatorConfig::local(batch, job)
            },
        )?;
        let sink_thread = spawn("sink", stop, move |s| sink.run(s))?;
        let vent_thread = spawn("ventilator", stop, move |s| ventilator.run(s).map(|_| ()))?;
        while !(sink_thread.is_finished() && vent_thread.is_finished()) {
            if shutdown.is_requested() {
                stop.request();
            }
            if sink_thread.is_finished() && !vent_thread.is_finished() {
                // The sink is done or failed: the ventilator has nothing left to wait for
                // once it hears (it says complete); a failed sink stops it.
                let started = Instant::now();
                while !vent_thread.is_finished() && started.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                stop.request();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let report = join(sink_thread);
        let vent = join(vent_thread);
        match (report, vent) {
            (Ok(report), _) => report,
            (Err(e), _) if Interrupted::is(&e) => return Err(e),
            (Err(e), Ok(())) | (Err(e), Err(_)) => return Err(e),
        }
    };
    let json = serde_json::to_vec_pretty(&report)?;
    let dir = crate::files::Dir::open(folder)?;
    crate::files::write_whole(&dir, "report.json", |file| {
        file.write_all(&json).context("cannot write the report")
    })?;
    dir.sync()
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
pub fn ask(endpoint: &str, request: &Request, timeout: Duration) -> anyhow::Result<Reply> {
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::REQ)?;
    socket.set_linger(0)?;
    socket.set_rcvtimeo(timeout.as_millis() as i32)?;
    socket.set_sndtimeo(timeout.as_millis() as i32)?;
    socket
        .connect(endpoint)
        .with_context(|| format!("cannot connect to the coordinator at {endpoint}"))?;
    let no_answer = || {
        anyhow::anyhow!(
            "no coordinator answered at {endpoint} within {} s: is `conquer serve` running there \
             (its --control)?",
            timeout.as_secs()
        )
    };
    socket.send(request.encode(), 0).map_err(|_| no_answer())?;
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
            assert!(check_control(good).is_ok(), "{good}");
        }
        for bad in [
            "tcp://*:5559",
            "tcp://0.0.0.0:5559",
            "tcp://10.0.0.1:5559",
            "ipc://x",
        ] {
            assert!(check_control(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_journal_cut_short_by_a_crash_loses_only_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_jobs: 10,
            max_running: 1,
            max_input_bytes: 1 << 20,
            keep: 10,
        };
        {
            let mut store = Store::open(dir.path()).unwrap();
            let mut records = Vec::new();
            for name in ["a", "b"] {
                let spec = JobSpec {
                    name: name.into(),
                    priority: 1,
                    needs_compute: false,
                    input_bytes: 0,
                    tasks: 1,
                };
                store.queue.submit(spec, &limits, 1, &mut records).unwrap();
            }
            store.append(&records).unwrap();
        }
        let path = dir.path().join(JOURNAL);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(r#"{"record":"ended","id":1,"sta"#);
        std::fs::write(&path, &text).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let states: Vec<JobState> = store.queue.jobs().map(|j| j.state).collect();
        assert_eq!(states, [JobState::Running, JobState::Queued]);
        // A bad line that is not the last is an error naming it.
        std::fs::write(&path, "garbage\n{}\n").unwrap();
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("journal.jsonl:1"), "{e}");
    }
}

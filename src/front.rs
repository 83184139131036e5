//! The coordinator's front: the farm's two sockets, shared by every running job.
//!
//! Workers connect to `conquer serve` as they connect to a ventilator and a sink: one
//! tasks socket, one results socket, both bound once for the coordinator's life. Each
//! running job is a ventilator and a sink of its own, bound on `inproc://` endpoints
//! (`serve` starts them). The front places every worker on one running job by the fair
//! share (`jobs::place`) and relays: the worker's greetings, credit and declines to its
//! job's ventilator, its results to the sink of the batch they name, and what the job
//! sends back to the worker. Each worker reaches each job through a socket of its own
//! with the worker's routing id, so a job's ventilator and sink see the worker as they
//! would without the front, and keep every guarantee they give (exactly once, backups, the
//! end game).
//!
//! When the share changes (a job starts or ends, a worker comes or goes) the workers it
//! moves are told their old job's batch is over (they drop its tasks, as after an early
//! cancel) and leave that job's ventilator as a worker that says goodbye, so it hands
//! what they held to others at once; then they greet the new job's ventilator. A worker
//! on no job is answered by the front itself (an idle heartbeat, a welcome), so it stays
//! connected between jobs. Authentication (the secret, the allowlist) is done here, on
//! the farm's sockets; the jobs' own sockets are in-process only.

use crate::auth::{Access, Gate};
use crate::heartbeat::Heartbeat;
use crate::protocol::{Message, WorkerInfo};
use crate::shutdown::Shutdown;
use crate::sockets;
use anyhow::Context;
use conquer_core::jobs::{self, Claim, JobId, WorkerKind};
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

/// What the front is told.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// Where workers connect for tasks.
    pub bind: String,
    /// Where workers connect with results.
    pub results_bind: String,
    pub access: Access,
    pub heartbeat: Heartbeat,
    pub max_payload: u64,
    /// The codecs the jobs' sinks take outputs in (the front's own welcome says the same).
    pub codecs: u8,
}

/// A change in the running jobs, from the coordinator to its front.
#[derive(Debug, Clone)]
pub enum Change {
    /// A job's ventilator and sink are bound: workers may be placed on it.
    Start {
        claim: Claim,
        batch: u64,
        /// Its ventilator's and its sink's in-process endpoints.
        tasks: String,
        results: String,
    },
    /// The job is over (done, failed, cancelled or stopped): its workers go to others.
    End { id: JobId },
}

/// A running job as the front knows it.
struct Running {
    claim: Claim,
    batch: u64,
    tasks: String,
    results: String,
}

/// A worker connected to the front.
struct Slot {
    info: WorkerInfo,
    last_seen: Instant,
    /// The job it serves, and its socket to that job's ventilator.
    job: Option<(JobId, zmq::Socket)>,
    /// The job's batch was said to be over to this worker (its ventilator's end, or the
    /// front's on a move): not said twice.
    ended: bool,
    /// Its sockets to the sinks of the jobs it sent results or greetings to.
    sinks: BTreeMap<JobId, zmq::Socket>,
}

impl Slot {
    fn new(info: WorkerInfo, now: Instant) -> Slot {
        Slot {
            info,
            last_seen: now,
            job: None,
            ended: false,
            sinks: BTreeMap::new(),
        }
    }
}

/// The front's sockets, bound.
pub struct Front {
    ctx: zmq::Context,
    config: FrontConfig,
    tasks: zmq::Socket,
    results: zmq::Socket,
    /// Kept alive while the sockets it guards are.
    _gate: Option<Gate>,
    tasks_endpoint: String,
    results_endpoint: String,
}

/// How long the front's poll waits before it looks at its changes and its clock.
const POLL: Duration = Duration::from_millis(20);

impl Front {
    /// Binds the farm's two sockets; errors (a port in use, an exposed endpoint without a
    /// secret) come before the coordinator takes any job.
    pub fn bind(ctx: &zmq::Context, config: FrontConfig) -> anyhow::Result<Front> {
        config.access.check_exposure(&config.bind, "--bind")?;
        config
            .access
            .check_exposure(&config.results_bind, "--results-bind")?;
        sockets::check_endpoint(&config.bind, "--bind", true)?;
        sockets::check_endpoint(&config.results_bind, "--results-bind", true)?;
        let gate = Gate::start(ctx, &config.access, "coordinator")?;
        let guard = |socket: &zmq::Socket, what: &str| match gate.as_ref() {
            Some(gate) => gate.guard(socket, what),
            None => Ok(()),
        };
        let (tasks, tasks_endpoint) = sockets::bind_prepared(
            ctx,
            zmq::ROUTER,
            "tasks",
            &config.bind,
            "--bind",
            config.max_payload,
            |socket| {
                socket.set_maxmsgsize(crate::protocol::CONTROL_MESSAGE_BYTES)?;
                guard(socket, "tasks")
            },
        )?;
        let (results, results_endpoint) = sockets::bind_prepared(
            ctx,
            zmq::ROUTER,
            "results",
            &config.results_bind,
            "--results-bind",
            config.max_payload,
            |socket| guard(socket, "results"),
        )?;
        for socket in [&tasks, &results] {
            socket.set_router_mandatory(true)?;
            socket.set_router_handover(true)?;
            sockets::never_stop_input(socket)?;
            // What a job sends a worker is bounded by the worker's credit.
            socket.set_sndhwm(0)?;
        }
        Ok(Front {
            ctx: ctx.clone(),
            config,
            tasks,
            results,
            _gate: gate,
            tasks_endpoint,
            results_endpoint,
        })
    }

    /// The endpoints workers connect to (ports filled in).
    pub fn endpoints(&self) -> (&str, &str) {
        (&self.tasks_endpoint, &self.results_endpoint)
    }

    /// Relays until `shutdown`, taking the coordinator's changes from `changes`.
    pub fn run(self, changes: Receiver<Change>, shutdown: &Shutdown) -> anyhow::Result<()> {
        let mut relay = Relay {
            front: self,
            jobs: BTreeMap::new(),
            slots: BTreeMap::new(),
            rejected: 0,
        };
        while !shutdown.is_requested() {
            let mut changed = false;
            while let Ok(change) = changes.try_recv() {
                relay.change(change);
                changed = true;
            }
            changed |= relay.forget_silent(Instant::now());
            if changed {
                relay.place();
            }
            relay.round()?;
        }
        Ok(())
    }
}

/// A message as it came off a socket: its frames, and who sent it.
struct Raw {
    peer: Vec<u8>,
    user: String,
    frames: Vec<zmq::Message>,
}

/// One message off `socket` without waiting, or `None`.
fn receive(socket: &zmq::Socket, router: bool, what: &str) -> anyhow::Result<Option<Raw>> {
    let mut frames = Vec::with_capacity(2);
    loop {
        let mut frame = zmq::Message::new();
        match socket.recv(&mut frame, zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) if frames.is_empty() => return Ok(None),
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => continue,
            Err(e) => anyhow::bail!("receiving on the {what} socket: {e}"),
        }
        let more = frame.get_more();
        frames.push(frame);
        if !more {
            break;
        }
    }
    let user = frames
        .last_mut()
        .and_then(|f| f.gets("User-Id").map(str::to_owned))
        .unwrap_or_default();
    let peer = if router && !frames.is_empty() {
        frames.remove(0).to_vec()
    } else {
        Vec::new()
    };
    Ok(Some(Raw { peer, user, frames }))
}

/// Sends `frames` (to `peer` first, on a ROUTER), never waiting; false when it did not go.
fn send(socket: &zmq::Socket, peer: Option<&[u8]>, frames: Vec<zmq::Message>) -> bool {
    let last = frames.len().saturating_sub(1);
    if let Some(peer) = peer {
        if socket.send(peer, zmq::SNDMORE | zmq::DONTWAIT).is_err() {
            return false;
        }
    }
    for (i, frame) in frames.into_iter().enumerate() {
        let flags = if i < last {
            zmq::SNDMORE | zmq::DONTWAIT
        } else {
            zmq::DONTWAIT
        };
        if socket.send(frame, flags).is_err() {
            return false;
        }
    }
    true
}

fn one(message: &Message) -> Vec<zmq::Message> {
    vec![zmq::Message::from(message.encode())]
}

/// Where a polled socket leads.
#[derive(Clone)]
enum Source {
    Tasks,
    Results,
    /// A worker's socket to its job's ventilator.
    Job(Vec<u8>),
    /// A worker's socket to a job's sink.
    Sink(Vec<u8>, JobId),
}

struct Relay {
    front: Front,
    jobs: BTreeMap<JobId, Running>,
    slots: BTreeMap<Vec<u8>, Slot>,
    /// Messages dropped: not ours, speaking for another worker, or of a kind workers do
    /// not send.
    rejected: u64,
}

impl Relay {
    fn change(&mut self, change: Change) {
        match change {
            Change::Start {
                claim,
                batch,
                tasks,
                results,
            } => {
                log::debug!(
                    "job {} joins the share (weight {})",
                    claim.id,
                    claim.priority
                );
                self.jobs.insert(
                    claim.id,
                    Running {
                        claim,
                        batch,
                        tasks,
                        results,
                    },
                );
            }
            Change::End { id } => {
                let Some(job) = self.jobs.remove(&id) else {
                    return;
                };
                for (peer, slot) in &mut self.slots {
                    slot.sinks.remove(&id);
                    if slot.job.as_ref().is_some_and(|(j, _)| *j == id) {
                        slot.job = None;
                        if !slot.ended {
                            let end = Message::End {
                                batch: job.batch,
                                shutdown: false,
                            };
                            send(&self.front.tasks, Some(peer), one(&end));
                        }
                    }
                }
            }
        }
    }

    /// Forgets workers silent for longer than the heartbeat's timeout; true if any.
    fn forget_silent(&mut self, now: Instant) -> bool {
        let timeout = self.front.config.heartbeat.timeout();
        let before = self.slots.len();
        self.slots.retain(|_, slot| {
            let live = now.saturating_duration_since(slot.last_seen) < timeout;
            if !live {
                log::info!(
                    "worker {} silent for {timeout:?}: gone",
                    crate::logging::printable(&slot.info.name)
                );
            }
            live
        });
        self.slots.len() != before
    }

    /// Places every worker by the fair share, moving as few as it can.
    fn place(&mut self) {
        let claims: Vec<Claim> = self.jobs.values().map(|j| j.claim).collect();
        let peers: Vec<Vec<u8>> = self.slots.keys().cloned().collect();
        let kinds: Vec<WorkerKind> = self
            .slots
            .values()
            .map(|s| WorkerKind {
                computes: s.info.backend != "sleep",
            })
            .collect();
        let now: Vec<Option<JobId>> = self
            .slots
            .values()
            .map(|s| s.job.as_ref().map(|(j, _)| *j))
            .collect();
        let placed = jobs::place(&claims, &kinds, &now);
        for ((peer, was), next) in peers.iter().zip(now).zip(placed) {
            if was == next {
                continue;
            }
            if let Err(e) = self.move_worker(peer, next) {
                log::warn!("cannot move a worker to job {next:?}: {e:#}");
            }
        }
    }

    /// Takes the worker off its job (the job hands what it held to others) and puts it on
    /// `next`.
    fn move_worker(&mut self, peer: &[u8], next: Option<JobId>) -> anyhow::Result<()> {
        let Some(slot) = self.slots.get_mut(peer) else {
            return Ok(());
        };
        if let Some((old, socket)) = slot.job.take() {
            if let Some(job) = self.jobs.get(&old) {
                if !slot.ended {
                    let end = Message::End {
                        batch: job.batch,
                        shutdown: false,
                    };
                    send(&self.front.tasks, Some(peer), one(&end));
                }
                send(&socket, None, one(&Message::Bye));
                log::info!(
                    "worker {} leaves job {old}",
                    crate::logging::printable(&slot.info.name)
                );
            }
        }
        slot.ended = false;
        let Some(id) = next else {
            return Ok(());
        };
        let Some(job) = self.jobs.get(&id) else {
            return Ok(());
        };
        let socket = self.front.ctx.socket(zmq::DEALER)?;
        socket.set_identity(peer)?;
        socket.set_linger(sockets::LINGER_MS)?;
        socket.set_sndhwm(0)?;
        socket.set_rcvhwm(0)?;
        socket
            .connect(&job.tasks)
            .with_context(|| format!("cannot reach job {id}'s ventilator"))?;
        // Greeted as the worker greets: the job's ventilator sends it tasks on its credit.
        send(&socket, None, one(&Message::Hello(slot.info.clone())));
        log::info!(
            "worker {} serves job {id}",
            crate::logging::printable(&slot.info.name)
        );
        slot.job = Some((id, socket));
        Ok(())
    }

    /// The worker's socket to job `id`'s sink, made (and greeted) on first use.
    fn sink_socket(&mut self, peer: &[u8], id: JobId) -> anyhow::Result<Option<&zmq::Socket>> {
        let Some(job) = self.jobs.get(&id) else {
            return Ok(None);
        };
        let Some(slot) = self.slots.get_mut(peer) else {
            return Ok(None);
        };
        if !slot.sinks.contains_key(&id) {
            let socket = self.front.ctx.socket(zmq::DEALER)?;
            socket.set_identity(peer)?;
            socket.set_linger(sockets::LINGER_MS)?;
            socket.set_sndhwm(0)?;
            socket.set_rcvhwm(0)?;
            socket
                .connect(&job.results)
                .with_context(|| format!("cannot reach job {id}'s sink"))?;
            send(&socket, None, one(&Message::Join(slot.info.clone())));
            slot.sinks.insert(id, socket);
        }
        Ok(slot.sinks.get(&id))
    }

    /// One poll and what it found.
    fn round(&mut self) -> anyhow::Result<()> {
        let mut sources = vec![Source::Tasks, Source::Results];
        for (peer, slot) in &self.slots {
            if slot.job.is_some() {
                sources.push(Source::Job(peer.clone()));
            }
            for id in slot.sinks.keys() {
                sources.push(Source::Sink(peer.clone(), *id));
            }
        }
        let readable: Vec<bool> = {
            let mut items: Vec<zmq::PollItem> = Vec::with_capacity(sources.len());
            items.push(self.front.tasks.as_poll_item(zmq::POLLIN));
            items.push(self.front.results.as_poll_item(zmq::POLLIN));
            for source in &sources[2..] {
                let socket = match source {
                    Source::Job(peer) => self.slots[peer].job.as_ref().map(|(_, s)| s),
                    Source::Sink(peer, id) => self.slots[peer].sinks.get(id),
                    _ => None,
                };
                if let Some(socket) = socket {
                    items.push(socket.as_poll_item(zmq::POLLIN));
                }
            }
            sockets::poll(
                &mut items,
                POLL.as_millis() as i64,
                "the coordinator's sockets",
            )?;
            items.iter().map(|i| i.is_readable()).collect()
        };
        let mut placing = false;
        for (source, ready) in sources.into_iter().zip(readable) {
            if !ready {
                continue;
            }
            for _ in 0..sockets::ROUND {
                let more = match &source {
                    Source::Tasks => self.relay_worker(true, &mut placing)?,
                    Source::Results => self.relay_worker(false, &mut placing)?,
                    Source::Job(peer) => self.relay_job(peer)?,
                    Source::Sink(peer, id) => self.relay_sink(peer, *id)?,
                };
                if !more {
                    break;
                }
            }
        }
        if placing {
            self.place();
        }
        Ok(())
    }

    /// A worker's message on the tasks socket (`tasks`) or the results socket; false when
    /// none was waiting. A newcomer or a leaver sets `placing`.
    fn relay_worker(&mut self, tasks: bool, placing: &mut bool) -> anyhow::Result<bool> {
        let what = if tasks { "tasks" } else { "results" };
        let socket = if tasks {
            &self.front.tasks
        } else {
            &self.front.results
        };
        let Some(raw) = receive(socket, true, what)? else {
            return Ok(false);
        };
        let max_payload = self.front.config.max_payload;
        let decoded = raw.frames.split_first().map(|(head, rest)| {
            let parts: Vec<&[u8]> = rest.iter().map(|f| &f[..]).collect();
            Message::decode_parts(head, &parts, max_payload).map_err(|e| e.to_string())
        });
        let message = match decoded {
            Some(Ok(message)) => message,
            Some(Err(why)) => return Ok(self.reject(&raw.peer, &why)),
            None => return Ok(self.reject(&raw.peer, "an empty message")),
        };
        if self.front.config.access.secret.is_some() {
            if let Err(why) = crate::auth::speaks_for_itself(&raw.user, &raw.peer, &message) {
                return Ok(self.reject(&raw.peer, &why));
            }
        }
        let now = Instant::now();
        let peer = raw.peer;
        match (tasks, message) {
            (_, Message::Hello(info)) | (_, Message::Join(info)) => {
                let slot = self.slots.entry(peer.clone()).or_insert_with(|| {
                    *placing = true;
                    Slot::new(info.clone(), now)
                });
                slot.last_seen = now;
                slot.info = info;
                if tasks {
                    match &slot.job {
                        Some((_, job)) => {
                            send(job, None, raw.frames);
                        }
                        None => {
                            // Between jobs: the front keeps the worker company.
                            let idle = Message::Heartbeat { batch: 0 };
                            send(&self.front.tasks, Some(&peer), one(&idle));
                        }
                    }
                } else {
                    let welcome = Message::Welcome {
                        codecs: self.front.config.codecs,
                    };
                    send(&self.front.results, Some(&peer), one(&welcome));
                    // Its job's sink hears the greeting too (and answers the front).
                    let job = slot.job.as_ref().map(|(j, _)| *j);
                    if let Some(id) = job {
                        let fresh = !slot.sinks.contains_key(&id);
                        if let Some(sink) = self.sink_socket(&peer, id)? {
                            if !fresh {
                                send(sink, None, raw.frames);
                            }
                        }
                    }
                }
            }
            (true, Message::Done { batch, .. }) | (true, Message::Decline { batch, .. }) => {
                let Some(slot) = self.slots.get_mut(&peer) else {
                    return Ok(true);
                };
                slot.last_seen = now;
                if let Some((id, job)) = &slot.job {
                    if self.jobs.get(id).is_some_and(|j| j.batch == batch) {
                        send(job, None, raw.frames);
                    }
                }
            }
            (true, Message::Bye) => {
                if let Some(slot) = self.slots.remove(&peer) {
                    if let Some((_, job)) = &slot.job {
                        send(job, None, raw.frames);
                    }
                    log::info!("worker {} left", crate::logging::printable(&slot.info.name));
                    *placing = true;
                }
            }
            (false, Message::Results { batch, worker, .. }) => {
                let id = self
                    .jobs
                    .iter()
                    .find(|(_, j)| j.batch == batch)
                    .map(|(id, _)| *id);
                // A worker forgotten while its results were on the way is known again.
                let slot = self.slots.entry(peer.clone()).or_insert_with(|| {
                    *placing = true;
                    Slot::new(worker, now)
                });
                slot.last_seen = now;
                // Results of a job that is over are not needed by anyone.
                if let Some(id) = id {
                    if let Some(sink) = self.sink_socket(&peer, id)? {
                        send(sink, None, raw.frames);
                    }
                }
            }
            (_, other) => {
                let why = format!("a {} message, which workers do not send", other.kind_name());
                return Ok(self.reject(&peer, &why));
            }
        }
        Ok(true)
    }

    /// What a job's ventilator sends the worker, relayed; false when none was waiting.
    fn relay_job(&mut self, peer: &[u8]) -> anyhow::Result<bool> {
        let Some(slot) = self.slots.get_mut(peer) else {
            return Ok(false);
        };
        let Some((_, socket)) = &slot.job else {
            return Ok(false);
        };
        let Some(raw) = receive(socket, false, "job")? else {
            return Ok(false);
        };
        if raw
            .frames
            .first()
            .and_then(|f| Message::decode_kind_name(f))
            .is_some_and(|kind| {
                kind == Message::End {
                    batch: 0,
                    shutdown: false,
                }
                .kind_name()
            })
        {
            slot.ended = true;
        }
        send(&self.front.tasks, Some(peer), raw.frames);
        Ok(true)
    }

    /// What a job's sink sends the worker: its welcome is the front's to give; a refusal
    /// is relayed.
    fn relay_sink(&mut self, peer: &[u8], id: JobId) -> anyhow::Result<bool> {
        let Some(socket) = self.slots.get(peer).and_then(|s| s.sinks.get(&id)) else {
            return Ok(false);
        };
        let Some(raw) = receive(socket, false, "job's sink")? else {
            return Ok(false);
        };
        let welcome = Message::Welcome { codecs: 0 }.kind_name();
        let kind = raw
            .frames
            .first()
            .and_then(|f| Message::decode_kind_name(f));
        if kind != Some(welcome) {
            send(&self.front.results, Some(peer), raw.frames);
        }
        Ok(true)
    }

    /// Drops a message that is not a worker's own; always true (one was read).
    fn reject(&mut self, peer: &[u8], why: &str) -> bool {
        self.rejected += 1;
        log::warn!(
            "dropped a message from {}: {why}",
            conquer_core::text::peer_name(peer)
        );
        true
    }
}

/// Starts the front on a thread of its own; its changes go through the returned sender.
pub fn start(
    front: Front,
    shutdown: &Shutdown,
) -> anyhow::Result<(Sender<Change>, std::thread::JoinHandle<anyhow::Result<()>>)> {
    let (changes, taken) = std::sync::mpsc::channel();
    let shutdown = shutdown.clone();
    let thread = std::thread::Builder::new()
        .name("front".into())
        .spawn(move || crate::logging::speaking_as("coordinator", || front.run(taken, &shutdown)))
        .context("cannot start the front's thread")?;
    Ok((changes, thread))
}

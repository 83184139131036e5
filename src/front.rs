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
use crate::protocol::{Message, RefusalKind, WorkerInfo};
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
#[derive(Clone)]
pub enum Change {
    /// A job's ventilator and sink are bound: workers may be placed on it.
    Start {
        claim: Claim,
        batch: u64,
        /// Its ventilator's and its sink's in-process endpoints, and the context they are
        /// bound in (a job's own: a context holds at most 1,023 sockets, and each worker
        /// on a job costs two).
        tasks: String,
        results: String,
        ctx: zmq::Context,
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
    ctx: zmq::Context,
    /// Its ventilator said the batch is over: no worker is placed on it any more.
    over: bool,
}

/// A worker connected to the front.
struct Slot {
    info: WorkerInfo,
    last_seen: Instant,
    /// It greeted on the tasks socket since it was last found unreachable there: it can
    /// be placed (tasks sent to it would not be lost).
    greeted: bool,
    /// It can run data kernels: not a sleep worker.
    computes: bool,
    /// Jobs it declined or that refused it: never placed on them again.
    barred: Vec<JobId>,
    /// A job whose batch ended while the worker served it, and the worker's socket to its
    /// ventilator, kept until the job is over so credit for chunks the worker held still
    /// reaches the ventilator (which waits for it, to know its workers are idle).
    draining: Option<(JobId, zmq::Socket)>,
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
            computes: info.backend != "sleep",
            barred: Vec::new(),
            draining: None,
            info,
            last_seen: now,
            greeted: false,
            job: None,
            ended: false,
            sinks: BTreeMap::new(),
        }
    }
}

/// The front's sockets, bound.
pub struct Front {
    config: FrontConfig,
    tasks: zmq::Socket,
    results: zmq::Socket,
    /// Kept alive while the sockets it guards are.
    _gate: Option<Gate>,
    tasks_endpoint: String,
    results_endpoint: String,
}

/// The most workers one job holds: each costs the job's zmq context two sockets, of the
/// 1,023 a context holds; more workers serve other jobs or wait.
pub const MOST_WORKERS_PER_JOB: usize = 450;

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
        let (tasks, tasks_endpoint) =
            sockets::bind_tasks(ctx, &config.bind, config.max_payload, gate.as_ref())?;
        let (results, results_endpoint) = sockets::bind_prepared(
            ctx,
            zmq::ROUTER,
            "results",
            &config.results_bind,
            "--results-bind",
            config.max_payload,
            |socket| match gate.as_ref() {
                Some(gate) => gate.guard(socket, "results"),
                None => Ok(()),
            },
        )?;
        results.set_router_mandatory(true)?;
        results.set_router_handover(true)?;
        sockets::never_stop_input(&results)?;
        for socket in [&tasks, &results] {
            // What a job sends a worker is bounded by the worker's credit.
            socket.set_sndhwm(0)?;
        }
        Ok(Front {
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
            placing: false,
        };
        while !shutdown.is_requested() {
            while let Ok(change) = changes.try_recv() {
                relay.change(change);
            }
            relay.forget_silent(Instant::now());
            if std::mem::take(&mut relay.placing) {
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
    let (peer, user) = sockets::envelope(&mut frames, router);
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
    /// A worker's socket to the ventilator of a job whose batch ended.
    Draining(Vec<u8>),
}

struct Relay {
    front: Front,
    jobs: BTreeMap<JobId, Running>,
    slots: BTreeMap<Vec<u8>, Slot>,
    /// Messages dropped: not ours, speaking for another worker, or of a kind workers do
    /// not send.
    rejected: u64,
    /// The share is to be worked out again (a worker or a job came or went).
    placing: bool,
}

impl Relay {
    fn change(&mut self, change: Change) {
        self.placing = true;
        match change {
            Change::Start {
                claim,
                batch,
                tasks,
                results,
                ctx,
            } => {
                log::debug!(
                    "job {} joins the share (weight {})",
                    claim.id,
                    claim.priority
                );
                self.jobs.insert(
                    claim.id,
                    Running {
                        claim: Claim {
                            most: MOST_WORKERS_PER_JOB,
                            ..claim
                        },
                        batch,
                        tasks,
                        results,
                        ctx,
                        over: false,
                    },
                );
            }
            Change::End { id } => {
                let Some(job) = self.jobs.remove(&id) else {
                    return;
                };
                for (peer, slot) in &mut self.slots {
                    slot.sinks.remove(&id);
                    slot.barred.retain(|j| *j != id);
                    if slot.draining.as_ref().is_some_and(|(j, _)| *j == id) {
                        slot.draining = None;
                    }
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

    /// Forgets workers silent for longer than the heartbeat's timeout.
    fn forget_silent(&mut self, now: Instant) {
        let timeout = self.front.config.heartbeat.timeout();
        let silent: Vec<Vec<u8>> = self
            .slots
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_seen) >= timeout)
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in silent {
            // Its job hears it is gone now, not at the job's own timeout.
            self.leave(&peer);
            if let Some(slot) = self.slots.remove(&peer) {
                log::info!(
                    "worker {} silent for {timeout:?}: gone",
                    crate::logging::printable(&slot.info.name)
                );
                self.placing = true;
            }
        }
    }

    /// Places every greeted worker by the fair share among the jobs not over, moving as
    /// few as it can.
    fn place(&mut self) {
        let claims: Vec<Claim> = self
            .jobs
            .values()
            .filter(|j| !j.over)
            .map(|j| j.claim)
            .collect();
        let placeable: Vec<(&Vec<u8>, &Slot)> =
            self.slots.iter().filter(|(_, s)| s.greeted).collect();
        let kinds: Vec<WorkerKind> = placeable
            .iter()
            .map(|(_, s)| WorkerKind {
                computes: s.computes,
            })
            .collect();
        let now: Vec<Option<JobId>> = placeable
            .iter()
            .map(|(_, s)| s.job.as_ref().map(|(j, _)| *j))
            .collect();
        let barred: Vec<Vec<JobId>> = placeable.iter().map(|(_, s)| s.barred.clone()).collect();
        let peers: Vec<Vec<u8>> = placeable.iter().map(|(p, _)| (*p).clone()).collect();
        let placed = jobs::place_barred(&claims, &kinds, &barred, &now);
        for ((peer, was), next) in peers.iter().zip(now).zip(placed) {
            if was != next {
                self.move_worker(peer, next);
            }
        }
    }

    /// Takes the worker off its job: told the batch is over (it drops the job's tasks),
    /// and gone from the job's ventilator with a goodbye (which hands what it held to
    /// others).
    fn leave(&mut self, peer: &[u8]) {
        let Some(slot) = self.slots.get_mut(peer) else {
            return;
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
            // What it still sends of the old job is dropped (the job hands it out again):
            // a worker costs each job's context sockets only while it serves the job.
            slot.sinks.remove(&old);
        }
        slot.ended = false;
    }

    /// Takes the worker off its job and puts it on `next`. A socket that cannot be made
    /// (the job's context full, no file descriptors left) leaves it on no job, said once.
    fn move_worker(&mut self, peer: &[u8], next: Option<JobId>) {
        self.leave(peer);
        let (Some(id), Some(slot)) = (next, self.slots.get_mut(peer)) else {
            return;
        };
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let made = dealer(&job.ctx, peer, &job.tasks);
        match made {
            Ok(socket) => {
                // Greeted as the worker greets: the job's ventilator sends it tasks on its
                // credit.
                send(&socket, None, one(&Message::Hello(slot.info.clone())));
                log::info!(
                    "worker {} serves job {id}",
                    crate::logging::printable(&slot.info.name)
                );
                slot.job = Some((id, socket));
            }
            Err(e) => log::warn!(
                "worker {} cannot be placed on job {id}: {e:#}",
                crate::logging::printable(&slot.info.name)
            ),
        }
    }

    /// The worker's socket to job `id`'s sink, made (and greeted) on first use; `None`
    /// when the job is over or the socket cannot be made.
    fn sink_socket(&mut self, peer: &[u8], id: JobId) -> Option<&zmq::Socket> {
        let job = self.jobs.get(&id)?;
        let slot = self.slots.get_mut(peer)?;
        if !slot.sinks.contains_key(&id) {
            match dealer(&job.ctx, peer, &job.results) {
                Ok(socket) => {
                    send(&socket, None, one(&Message::Join(slot.info.clone())));
                    slot.sinks.insert(id, socket);
                }
                Err(e) => {
                    log::warn!("cannot reach job {id}'s sink for a worker: {e:#}");
                    return None;
                }
            }
        }
        slot.sinks.get(&id)
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
            if slot.draining.is_some() {
                sources.push(Source::Draining(peer.clone()));
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
                    Source::Draining(peer) => self.slots[peer].draining.as_ref().map(|(_, s)| s),
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
        for (source, ready) in sources.into_iter().zip(readable) {
            if !ready {
                continue;
            }
            for _ in 0..sockets::ROUND {
                let more = match &source {
                    Source::Tasks => self.relay_worker(true)?,
                    Source::Results => self.relay_worker(false)?,
                    Source::Job(peer) => self.relay_job(peer)?,
                    Source::Sink(peer, id) => self.relay_sink(peer, *id)?,
                    Source::Draining(peer) => self.drop_drained(peer)?,
                };
                if !more {
                    break;
                }
            }
        }
        Ok(())
    }

    /// A worker's message on the tasks socket (`tasks`) or the results socket; false when
    /// none was waiting.
    fn relay_worker(&mut self, tasks: bool) -> anyhow::Result<bool> {
        let what = if tasks { "tasks" } else { "results" };
        let socket = if tasks {
            &self.front.tasks
        } else {
            &self.front.results
        };
        let Some(raw) = receive(socket, true, what)? else {
            return Ok(false);
        };
        let Some(head) = raw.frames.first() else {
            return Ok(self.reject(&raw.peer, "an empty message"));
        };
        let decoded = if !tasks && matches!(head.get(3), Some(7 | 19)) {
            // Results are routed on their head alone: the job's sink decodes the rest.
            Message::results_head(head).map(|(batch, worker)| Message::Results {
                batch,
                worker,
                results: Vec::new(),
            })
        } else {
            let parts: Vec<&[u8]> = raw.frames[1..].iter().map(|f| &f[..]).collect();
            Message::decode_parts(head, &parts, self.front.config.max_payload)
        };
        let message = match decoded {
            Ok(message) => message,
            Err(why) => return Ok(self.reject(&raw.peer, &why.to_string())),
        };
        if self.front.config.access.secret.is_some() {
            if let Err(why) = crate::auth::speaks_for_itself(&raw.user, &raw.peer, &message) {
                return Ok(self.reject(&raw.peer, &why));
            }
        }
        let now = Instant::now();
        let peer = raw.peer;
        let frames = raw.frames;
        match (tasks, message) {
            (_, Message::Hello(info)) | (_, Message::Join(info)) => {
                if !self.admit(&peer, &info, tasks, now) {
                    return Ok(true);
                }
                let slot = self
                    .slots
                    .entry(peer.clone())
                    .or_insert_with(|| Slot::new(info.clone(), now));
                slot.last_seen = now;
                // `auto` may say it runs on a compute backend now.
                slot.computes = info.backend != "sleep";
                slot.info = info;
                if tasks {
                    if !slot.greeted {
                        // Its tasks connection is up: it can be placed.
                        slot.greeted = true;
                        self.placing = true;
                    }
                    match &slot.job {
                        Some((_, job)) => {
                            send(job, None, frames);
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
                        if let Some(sink) = self.sink_socket(&peer, id) {
                            if !fresh {
                                send(sink, None, frames);
                            }
                        }
                    }
                }
            }
            (true, Message::Done { batch, .. }) => {
                let Some(slot) = self.slots.get_mut(&peer) else {
                    return Ok(true);
                };
                slot.last_seen = now;
                let jobs = &self.jobs;
                let of = |id: &JobId| jobs.get(id).is_some_and(|j| j.batch == batch);
                let socket = [&slot.job, &slot.draining]
                    .into_iter()
                    .flatten()
                    .find(|(id, _)| of(id))
                    .map(|(_, socket)| socket);
                if let Some(job) = socket {
                    send(job, None, frames);
                }
            }
            (true, Message::Decline { batch, reason }) => {
                let Some(slot) = self.slots.get_mut(&peer) else {
                    return Ok(true);
                };
                slot.last_seen = now;
                let on = slot.job.as_ref().map(|(id, _)| *id);
                if let Some(id) =
                    on.filter(|id| self.jobs.get(id).is_some_and(|j| j.batch == batch))
                {
                    // It cannot run this job: the job hands its tasks to others, and the
                    // share places the worker elsewhere, never on this job again.
                    if let Some((_, job)) = &slot.job {
                        send(job, None, frames);
                    }
                    log::info!(
                        "worker {} declined job {id}: {}",
                        crate::logging::printable(&slot.info.name),
                        crate::logging::printable(&reason)
                    );
                    slot.barred.push(id);
                    slot.job = None;
                    self.placing = true;
                }
            }
            (true, Message::Bye) => {
                if let Some(slot) = self.slots.remove(&peer) {
                    if let Some((_, job)) = &slot.job {
                        send(job, None, frames);
                    }
                    log::info!("worker {} left", crate::logging::printable(&slot.info.name));
                    self.placing = true;
                }
            }
            (false, Message::Results { batch, worker, .. }) => {
                let id = self
                    .jobs
                    .iter()
                    .find(|(_, j)| j.batch == batch)
                    .map(|(id, _)| *id);
                // A worker forgotten while its results were on the way is known again.
                let slot = self
                    .slots
                    .entry(peer.clone())
                    .or_insert_with(|| Slot::new(worker, now));
                slot.last_seen = now;
                // Results of a job that is over are not needed by anyone.
                if let Some(id) = id {
                    if let Some(sink) = self.sink_socket(&peer, id) {
                        send(sink, None, frames);
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

    /// Whether a greeting from `peer` is taken: its name printable, and not another live
    /// worker's. A namesake silent for two heartbeats, or no longer connected, is taken
    /// to be this worker started again: it is forgotten (its job hands its tasks to
    /// others). Else the newcomer is refused, as a ventilator refuses it.
    fn admit(&mut self, peer: &[u8], info: &WorkerInfo, tasks: bool, now: Instant) -> bool {
        let socket = if tasks {
            &self.front.tasks
        } else {
            &self.front.results
        };
        let refuse = |kind: RefusalKind, reason: String| {
            send(socket, Some(peer), one(&Message::Refused { kind, reason }));
        };
        if let Err(why) = conquer_core::heartbeat::check_name(&info.name) {
            refuse(RefusalKind::BadName, why);
            return false;
        }
        let namesake = self
            .slots
            .iter()
            .find(|(p, s)| p.as_slice() != peer && s.info.name == info.name)
            .map(|(p, s)| (p.clone(), s.last_seen));
        let Some((old, seen)) = namesake else {
            return true;
        };
        let quiet = now.saturating_duration_since(seen) >= 2 * self.front.config.heartbeat.interval;
        let idle = one(&Message::Heartbeat { batch: 0 });
        if quiet || !send(&self.front.tasks, Some(&old), idle) {
            self.leave(&old);
            self.slots.remove(&old);
            self.placing = true;
            log::info!(
                "worker {} greets again as a new session; its old one is forgotten",
                crate::logging::printable(&info.name)
            );
            return true;
        }
        refuse(
            RefusalKind::NameTaken,
            format!(
                "another live worker is named {:?} on this coordinator: give each worker its own \
                 --name",
                crate::logging::printable(&info.name)
            ),
        );
        false
    }

    /// What a job's ventilator sends the worker, relayed; false when none was waiting. The
    /// job's end frees the worker for others at once; a refusal takes it off the job (the
    /// worker serves others); a worker that cannot be reached is taken off its job until
    /// it greets again.
    fn relay_job(&mut self, peer: &[u8]) -> anyhow::Result<bool> {
        let Some(slot) = self.slots.get_mut(peer) else {
            return Ok(false);
        };
        let Some((id, socket)) = &slot.job else {
            return Ok(false);
        };
        let id = *id;
        let Some(raw) = receive(socket, false, "job")? else {
            return Ok(false);
        };
        let kind = raw
            .frames
            .first()
            .and_then(|f| Message::decode_kind_name(f));
        let end = Message::End {
            batch: 0,
            shutdown: false,
        }
        .kind_name();
        let refused = Message::Refused {
            kind: RefusalKind::Busy,
            reason: String::new(),
        }
        .kind_name();
        if kind == Some(refused) {
            log::warn!(
                "job {id} refused worker {}; it serves other jobs only",
                crate::logging::printable(&slot.info.name)
            );
            self.leave(peer);
            if let Some(slot) = self.slots.get_mut(peer) {
                slot.barred.push(id);
            }
            self.placing = true;
            return Ok(true);
        }
        let delivered = send(&self.front.tasks, Some(peer), raw.frames);
        if kind == Some(end) {
            // Its batch is over: the job needs no worker any more. Credit for what the
            // worker held still goes to it until the job is over.
            slot.ended = true;
            slot.draining = slot.job.take();
            if let Some(job) = self.jobs.get_mut(&id) {
                job.over = true;
            }
            self.placing = true;
        } else if !delivered {
            // Not connected on the tasks socket (yet, or any more): what the job sent is
            // lost, so the job takes back what it gave, and the worker waits for its next
            // greeting.
            self.leave(peer);
            if let Some(slot) = self.slots.get_mut(peer) {
                slot.greeted = false;
            }
            self.placing = true;
        }
        Ok(true)
    }

    /// What the ventilator of a job whose batch ended still sends (its heartbeats): the
    /// worker serves another job now, so it is read and dropped; false when none waited.
    fn drop_drained(&mut self, peer: &[u8]) -> anyhow::Result<bool> {
        let Some((_, socket)) = self.slots.get(peer).and_then(|s| s.draining.as_ref()) else {
            return Ok(false);
        };
        Ok(receive(socket, false, "job")?.is_some())
    }

    /// What a job's sink sends the worker: its welcome is the front's to give; anything
    /// else (a refusal) is logged, not relayed: it would stop the worker for every job.
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
            log::warn!(
                "job {id}'s sink sent a worker a {} message; not relayed",
                kind.unwrap_or("foreign")
            );
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

/// A socket to a job's ventilator or sink that carries a worker's routing id.
fn dealer(ctx: &zmq::Context, peer: &[u8], endpoint: &str) -> anyhow::Result<zmq::Socket> {
    let socket = ctx.socket(zmq::DEALER)?;
    socket.set_identity(peer)?;
    socket.set_linger(sockets::LINGER_MS)?;
    // What it carries is bounded by the worker's credit.
    socket.set_sndhwm(0)?;
    socket.set_rcvhwm(0)?;
    socket
        .connect(endpoint)
        .with_context(|| format!("cannot connect to {endpoint}"))?;
    Ok(socket)
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
        .spawn(move || {
            let ran = crate::logging::speaking_as("coordinator", || front.run(taken, &shutdown));
            if ran.is_err() {
                // Without its front the coordinator reaches no worker: it stops, and says
                // why.
                shutdown.request();
            }
            ran
        })
        .context("cannot start the front's thread")?;
    Ok((changes, thread))
}

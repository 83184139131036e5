//! The ventilator: makes a batch, waits for workers, and hands out tasks on credit.
//!
//! Sockets: `tasks`, a ROUTER bound on `tcp://*:5557` that workers' DEALERs connect to
//! (greetings, heartbeats, credit and tasks all travel here); `sink`, a DEALER connected to
//! the sink's ROUTER (`tcp://localhost:5558`) that announces the batch and hears which
//! tasks the sink holds. A task is finished only when the sink holds its result: tasks of a
//! worker that leaves, goes silent or fails them go back to the front of the queue.
//! The ventilator never sees results and never writes to stdout except through `report`.

use crate::batch::{Batch, Job, Order};
use crate::dispatch::{Command, Counters, DispatchConfig, Dispatcher, Event, WorkerId};
use crate::protocol::Message;
use crate::shutdown::{Interrupted, Shutdown};
use crate::sockets::{self, SendOutcome};
use anyhow::{bail, Context};
use std::time::{Duration, Instant};

pub use crate::dispatch::Backup;
pub use crate::heartbeat::Heartbeat;

/// Everything a ventilator needs to run one batch.
#[derive(Debug, Clone)]
pub struct VentilatorConfig {
    /// Where workers connect: the `tasks` ROUTER's bind endpoint.
    pub bind: String,
    /// The sink's endpoint, which this ventilator connects to.
    pub sink: String,
    pub batch: Batch,
    pub order: Order,
    /// Seed for `--order shuffle`.
    pub seed: u64,
    pub job: Job,
    /// A divisible job's plan: `batch` is empty and chunks are carved as workers ask.
    pub chunking: Option<crate::chunking::Plan>,
    /// Workers to wait for before the batch starts; 0 starts at once.
    pub wait_workers: usize,
    /// How long to wait for them (and for the sink) before giving up.
    pub wait_timeout: Duration,
    /// Tasks a worker may hold at once (more if the worker asks for a deeper pipeline).
    pub window: u32,
    /// Cap on tasks a worker may hold when tasks cost nothing (zero-millisecond workloads).
    pub max_window: u32,
    pub heartbeat: Heartbeat,
    /// Tell workers to exit when the batch is complete.
    pub shutdown_workers: bool,
    /// Batch id; by default a hash of the tasks and the job, so a restarted ventilator
    /// announces the same batch again.
    pub batch_id: Option<u64>,
    /// Continue a batch the sink already holds results of (after a ventilator restart).
    pub resume: bool,
    /// Print the seed's "Total expected cost" line on stdout (off when the report does).
    pub announce: bool,
    /// Records when each task is sent, for latency benchmarks.
    pub timeline: Option<std::sync::Arc<crate::timeline::Timeline>>,
    /// When a task held too long is given to another worker as a backup.
    pub backup: Backup,
    /// Longest silence from the sink, during a batch, before the ventilator gives up.
    pub sink_timeout: Duration,
    /// Who may connect to the tasks socket; the secret presented to the sink.
    pub access: crate::auth::Access,
    /// Serve the live view (`/`, `/api/status`, `/metrics`) on this `HOST:PORT`.
    pub http: Option<String>,
    /// Keep serving it this long after the batch ends, showing the final state.
    pub http_linger: Duration,
    /// A user kernel's inputs, one per task (`--inputs`): each task travels with its file.
    pub inputs: Option<std::sync::Arc<crate::batch::Inputs>>,
    /// A user kernel's WGSL (`--kernel-file`), sent once to each worker before its first
    /// task; `job.source` is its hash.
    pub kernel_source: Option<std::sync::Arc<str>>,
    /// The farm is exactly this many workers (`conquer run`): the batch stops once all of
    /// them declined it. 0 for a ventilator that workers may still join.
    pub fixed_workers: usize,
    /// Tries a task gets before it is given up on (`--max-attempts`).
    pub max_attempts: u32,
    /// The largest task input or output it sends or accepts (`--max-payload`).
    pub max_payload: u64,
    /// Compress task inputs or outputs it sends when that pays and the peer speaks LZ4
    /// (false with `--no-compress`, which also asks peers for raw).
    pub compress: bool,
}

/// Tries a task gets by default: a task that fails this often on the farm's workers is
/// broken, not unlucky.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// How long a ventilator waits for a sink that does not answer during a batch.
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(60);

impl VentilatorConfig {
    /// Settings for running `batch` inside one process (`conquer run`, benchmarks, tests):
    /// endpoints and worker count are filled in by `local::run`; the rest are the defaults.
    pub fn local(batch: Batch, job: Job) -> VentilatorConfig {
        VentilatorConfig {
            bind: String::new(),
            sink: String::new(),
            batch,
            order: Order::LongestFirst,
            seed: 0,
            job,
            chunking: None,
            wait_workers: 0,
            wait_timeout: Duration::from_secs(60),
            window: 2,
            max_window: 2048,
            heartbeat: Heartbeat::default(),
            shutdown_workers: true,
            batch_id: None,
            resume: false,
            announce: false,
            timeline: None,
            backup: Backup::default(),
            sink_timeout: DEFAULT_SINK_TIMEOUT,
            access: crate::auth::Access::default(),
            http: None,
            http_linger: Duration::ZERO,
            inputs: None,
            kernel_source: None,
            fixed_workers: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
            compress: true,
        }
    }
}

/// A ventilator with its socket bound, ready to run.
pub struct Ventilator {
    config: VentilatorConfig,
    tasks_socket: zmq::Socket,
    sink_socket: zmq::Socket,
    /// Failed handshakes with the sink: a refusal ends the ventilator with the reason.
    sink_monitor: zmq::Socket,
    /// The live view, with `--http`.
    http: Option<crate::http::Server>,
    endpoint: String,
    /// Bytes this process had sent before this ventilator: its batch's are the rest.
    sent_at_start: crate::protocol::WireBytes,
    /// The authentication handler guarding the tasks socket, when there is one. Last:
    /// fields drop in order, and the socket must close before its handler stops.
    gate: Option<crate::auth::Gate>,
}

impl Ventilator {
    /// Binds the tasks socket and connects to the sink; nothing is sent yet.
    pub fn bind(ctx: &zmq::Context, config: VentilatorConfig) -> anyhow::Result<Ventilator> {
        if config.window == 0 {
            bail!("--window must be at least 1");
        }
        // Both endpoints are checked before either socket exists.
        sockets::check_endpoint(&config.bind, "--bind", true)?;
        sockets::check_endpoint(&config.sink, "--sink", false)?;
        let longest = config.batch.longest_ms();
        if config.job.kernel == crate::kernels::Kernel::Spin.id()
            && crate::kernels::spin::invocations(longest, config.job.units_per_ms).is_none()
        {
            bail!(
                "the longest task ({longest} ms) at --units-per-ms {} needs more than 2^32 shader \
                 invocations on compute backends; lower --units-per-ms, or shorten the longest task \
                 (--max-ms, or the tasks file)",
                config.job.units_per_ms
            );
        }
        config.access.check_exposure(&config.bind, "--bind")?;
        // The live view's address and access too, before anything binds.
        let http_token = match &config.http {
            Some(addr) => {
                crate::http::check_address(addr)?;
                config.access.http_token(addr)?
            }
            None => None,
        };
        let gate = crate::auth::Gate::start(ctx, &config.access, "ventilator")?;
        // Workers send this socket greetings and credit only, never a payload: it keeps the
        // small limit whatever --max-payload is.
        let (tasks_socket, endpoint) = sockets::bind_prepared(
            ctx,
            zmq::ROUTER,
            "tasks",
            &config.bind,
            "--bind",
            config.max_payload,
            |socket| {
                socket.set_maxmsgsize(crate::protocol::CONTROL_MESSAGE_BYTES)?;
                match gate.as_ref() {
                    Some(gate) => gate.guard(socket, "tasks"),
                    None => Ok(()),
                }
            },
        )?;
        // Sending to a worker that has gone fails at once instead of vanishing silently.
        tasks_socket.set_router_mandatory(true)?;
        sockets::never_stop_input(&tasks_socket)?;
        // A worker that reconnects (after a network cut the old connection may linger until
        // ZMTP heartbeats close it) takes its name over at once rather than being ignored.
        tasks_socket.set_router_handover(true)?;
        let caller = sockets::Caller {
            identity: None,
            access: &config.access,
            user: crate::auth::VENTILATOR_USER,
            max_payload: config.max_payload,
        };
        let sink_socket =
            sockets::connect(ctx, zmq::DEALER, "sink", &config.sink, "--sink", &caller)?;
        let sink_monitor = crate::auth::watch(ctx, &sink_socket)?;
        let http = match &config.http {
            Some(addr) => {
                let guard = crate::http::Guard {
                    token: http_token.clone(),
                    allow: config.access.allow.clone(),
                };
                let server = crate::http::Server::start(addr, guard)?;
                log::info!("live view on http://{}/", server.address());
                crate::events::emit(&crate::events::Note::Listening {
                    socket: "http".into(),
                    endpoint: format!("http://{}", server.address()),
                });
                Some(server)
            }
            None => None,
        };
        Ok(Ventilator {
            config,
            tasks_socket,
            sink_socket,
            sink_monitor,
            http,
            gate,
            endpoint,
            sent_at_start: crate::protocol::sent_bytes(),
        })
    }

    /// The endpoint workers can connect to (port filled in).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Where the live view listens (`--http`, port filled in).
    pub fn http_address(&self) -> Option<&str> {
        self.http.as_ref().map(crate::http::Server::address)
    }

    /// Runs the batch until the sink says it holds every result.
    pub fn run(self, shutdown: &Shutdown) -> anyhow::Result<Counters> {
        let config = &self.config;
        let batch_id = config
            .batch_id
            .unwrap_or_else(|| config.batch.id(&config.job));
        let n = config.batch.len();
        // A job of sleep-able items has a nominal cost; a computed job's is unknown (0).
        let expected_ms = match config.chunking {
            Some(plan) => (plan.items as f64 * plan.nominal_us / 1000.0).round() as u64,
            None => config.batch.expected_ms(),
        };
        u32::try_from(n).context("batch too large")?;
        if config.announce && (config.chunking.is_none() || expected_ms > 0) {
            crate::report::print_expected_cost(expected_ms);
        }
        log::debug!(
            "batch {batch_id:016x}: {n} tasks, {expected_ms} ms expected, workers connect to {}",
            self.endpoint
        );
        let dispatch = DispatchConfig {
            batch_id,
            session: rand::random(),
            tasks: config.batch.tasks.clone(),
            order: config.batch.dispatch_order(config.order, config.seed),
            job: config.job,
            expected_ms,
            longest_ms: config.batch.longest_ms(),
            wait_workers: config.wait_workers,
            wait_timeout: config.wait_timeout,
            window: config.window,
            max_window: config.max_window.max(config.window),
            heartbeat: config.heartbeat,
            backup: config.backup,
            sink_timeout: config.sink_timeout,
            resume: config.resume,
            shutdown_workers: config.shutdown_workers,
            endpoint: self.endpoint.clone(),
            sink: config.sink.clone(),
            fixed_workers: config.fixed_workers,
            chunking: config.chunking,
            max_attempts: config.max_attempts,
            names: config.inputs.as_ref().map_or_else(Vec::new, |inputs| {
                inputs
                    .names
                    .iter()
                    .map(|name| crate::protocol::name_digest(name))
                    .collect()
            }),
            observe: self.http.is_some(),
            framing: crate::dispatch::Framing {
                kernel: config.kernel_source.is_some(),
                inputs: config.inputs.is_some(),
                compress: config.compress,
            },
        };
        let mut dispatcher = Dispatcher::new(dispatch, Instant::now(), crate::worker::unix_ms());
        let mut observer = self.http.as_ref().map(|_| match config.chunking {
            Some(_) => crate::observe::Observer::for_job(Instant::now()),
            None => crate::observe::Observer::new(n, Instant::now()),
        });
        let outcome = self.pump(&mut dispatcher, &mut observer, shutdown);
        if let Some(o) = observer.as_mut() {
            self.publish(o, &dispatcher);
            if outcome.is_ok() && !self.config.http_linger.is_zero() {
                self.linger(o, &mut dispatcher, shutdown)?;
            }
        }
        if let Err(e) = outcome {
            // In `conquer run` (a fixed farm) the sink says how to finish, once, with the
            // count it holds: the ventilator's own count may lag behind it.
            if dispatcher.has_dispatched() && self.config.fixed_workers == 0 {
                let why = if Interrupted::is(&e) {
                    "interrupted"
                } else {
                    "stopped by an error"
                };
                log::warn!(
                    "{why} mid-batch {batch_id:016x} with {} of {n} tasks held at the sink; to \
                     continue where the sink stands, restart this ventilator with the same batch \
                     flags and --resume",
                    dispatcher.counters().held
                );
            }
            return Err(e);
        }
        Ok(dispatcher.counters())
    }

    /// The ventilator's run loop: receive, decode, hand to the dispatcher, carry out what
    /// it says; a tick after each round of reads, and at its deadlines.
    fn pump(
        &self,
        dispatcher: &mut Dispatcher,
        observer: &mut Option<crate::observe::Observer>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        let mut out = Vec::new();
        let mut next_publish = Instant::now();
        loop {
            dispatcher.handle(Instant::now(), Event::Tick, &mut out);
            if let Some(end) = self.carry_out(dispatcher, observer, &mut out) {
                return end;
            }
            if let Some(o) = observer.as_mut() {
                let now = Instant::now();
                if now >= next_publish {
                    self.publish(o, dispatcher);
                    next_publish = now + PUBLISH_EVERY;
                }
            }
            shutdown.check()?;
            let timeout = dispatcher
                .next_deadline()
                .saturating_duration_since(Instant::now())
                .min(MAX_POLL);
            let mut items = [
                self.tasks_socket.as_poll_item(zmq::POLLIN),
                self.sink_socket.as_poll_item(zmq::POLLIN),
                self.sink_monitor.as_poll_item(zmq::POLLIN),
            ];
            sockets::poll(
                &mut items,
                timeout.as_millis() as i64,
                "the ventilator's sockets",
            )?;
            if items[2].is_readable() {
                let refused =
                    crate::auth::refusal(crate::auth::failures(&self.sink_monitor), "sink");
                if let Some(failure) = refused {
                    bail!(crate::auth::refusal_message(
                        failure,
                        "sink",
                        &self.config.sink,
                        &self.config.access
                    ));
                }
            }
            if let Some(gate) = &self.gate {
                dispatcher.handle(Instant::now(), Event::Refused(gate.refused()), &mut out);
            }
            let secret = self.config.access.secret.is_some();
            let mut end = None;
            if items[0].is_readable() {
                sockets::drain(
                    &self.tasks_socket,
                    true,
                    "the tasks socket",
                    self.config.max_payload,
                    |inbound| {
                        let message = inbound.message.and_then(|message| {
                            if secret {
                                crate::auth::speaks_for_itself(
                                    &inbound.user,
                                    &inbound.peer,
                                    &message,
                                )?;
                            }
                            Ok(message)
                        });
                        let now = Instant::now();
                        let greeted = match (&inbound.address, observer.is_some()) {
                            (Some(address), true) => Some((inbound.peer.clone(), address.clone())),
                            _ => None,
                        };
                        let event = match message {
                            Ok(message) => Event::FromWorker {
                                routing_id: inbound.peer,
                                message,
                            },
                            Err(why) => Event::Rejected {
                                peer: sockets::peer_name(&inbound.peer),
                                why,
                            },
                        };
                        dispatcher.handle(now, event, &mut out);
                        if let (Some(o), Some((peer, address))) = (observer.as_mut(), greeted) {
                            if let Some(w) = dispatcher.worker_id(&peer) {
                                o.address(w, &address);
                            }
                        }
                        end = end
                            .take()
                            .or_else(|| self.carry_out(dispatcher, observer, &mut out));
                        Ok(())
                    },
                )?;
            }
            if items[1].is_readable() {
                sockets::drain(
                    &self.sink_socket,
                    false,
                    "the sink socket",
                    self.config.max_payload,
                    |inbound| {
                        let event = match inbound.message {
                            Ok(message) => Event::FromSink(message),
                            Err(why) => Event::Rejected {
                                peer: "sink".into(),
                                why,
                            },
                        };
                        dispatcher.handle(Instant::now(), event, &mut out);
                        end = end
                            .take()
                            .or_else(|| self.carry_out(dispatcher, observer, &mut out));
                        Ok(())
                    },
                )?;
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// Carries out the dispatcher's commands in order; a send that fails goes back to it
    /// at once. `Some` when the batch is over, complete or stopped.
    fn carry_out(
        &self,
        dispatcher: &mut Dispatcher,
        observer: &mut Option<crate::observe::Observer>,
        out: &mut Vec<Command>,
    ) -> Option<anyhow::Result<()>> {
        let mut end = None;
        while !out.is_empty() {
            let mut failed = Vec::new();
            // Workers whose kernel source found their queue full: their tasks that follow
            // bounce too, rather than arrive without it.
            let mut no_kernel: Vec<WorkerId> = Vec::new();
            for command in out.drain(..) {
                match command {
                    Command::ToWorker { worker, message } => {
                        let to = &dispatcher.worker(worker).routing_id;
                        if sockets::send_to(&self.tasks_socket, to, &message.encode())
                            == SendOutcome::Gone
                        {
                            failed.push(Event::Unreachable(worker));
                        }
                    }
                    Command::Tasks {
                        worker,
                        tasks,
                        again,
                        kernel,
                        compress,
                    } => {
                        if no_kernel.contains(&worker) {
                            failed.push(Event::Bounced {
                                worker,
                                tasks,
                                again,
                            });
                            continue;
                        }
                        let to = &dispatcher.worker(worker).routing_id;
                        let job = dispatcher.job();
                        let batch = dispatcher.batch_id();
                        let mark_sent =
                            |observer: &mut Option<crate::observe::Observer>,
                             sent: &[crate::batch::Task]| {
                                if let Some(timeline) = &self.config.timeline {
                                    sent.iter().for_each(|t| timeline.sent(t.id));
                                }
                                if let Some(o) = observer.as_mut() {
                                    o.sent(Instant::now(), worker, sent.iter().map(|t| t.id));
                                }
                            };
                        // A user kernel's source goes first when the dispatcher says so:
                        // messages to one peer arrive in order.
                        if let (true, Some(source)) = (kernel, &self.config.kernel_source) {
                            let message = Message::Kernel {
                                batch,
                                source: source.to_string(),
                            };
                            match sockets::send_to(&self.tasks_socket, to, &message.encode()) {
                                SendOutcome::Sent => {}
                                SendOutcome::Gone => {
                                    failed.push(Event::Unreachable(worker));
                                    continue;
                                }
                                SendOutcome::Busy => {
                                    no_kernel.push(worker);
                                    failed.push(Event::Bounced {
                                        worker,
                                        tasks,
                                        again,
                                    });
                                    continue;
                                }
                            }
                        }
                        let Some(inputs) = &self.config.inputs else {
                            let message = Message::encode_tasks(batch, job, &tasks);
                            match sockets::send_to(&self.tasks_socket, to, &message) {
                                SendOutcome::Sent => mark_sent(observer, &tasks),
                                SendOutcome::Gone => failed.push(Event::Unreachable(worker)),
                                SendOutcome::Busy => failed.push(Event::Bounced {
                                    worker,
                                    tasks,
                                    again,
                                }),
                            }
                            continue;
                        };
                        // Data tasks travel one per message (one per command, as the
                        // dispatcher frames them), each with its input file, compressed for
                        // a worker that speaks LZ4 when it pays.
                        for (k, task) in tasks.iter().enumerate() {
                            let max = self.config.max_payload;
                            let (message, input_len, wire) = match inputs
                                .data_message(batch, job, *task, max)
                            {
                                Ok((message, input_len)) if compress => {
                                    let (message, wire) = Message::pack_data(message, input_len);
                                    (message, input_len, wire)
                                }
                                Ok((message, input_len)) => (message, input_len, input_len),
                                Err(e) => {
                                    end = Some(Err(e));
                                    break;
                                }
                            };
                            match sockets::send_owned_to(&self.tasks_socket, to, message) {
                                SendOutcome::Sent => {
                                    crate::protocol::count_sent(true, wire, input_len);
                                    mark_sent(observer, std::slice::from_ref(task))
                                }
                                SendOutcome::Gone => {
                                    // Every task of the command is the worker's: losing it
                                    // hands them all on.
                                    failed.push(Event::Unreachable(worker));
                                    break;
                                }
                                SendOutcome::Busy => {
                                    failed.push(Event::Bounced {
                                        worker,
                                        tasks: tasks[k..].to_vec(),
                                        again: again.get(k..).unwrap_or_default().to_vec(),
                                    });
                                    break;
                                }
                            }
                        }
                    }
                    Command::Reply {
                        routing_id,
                        message,
                    } => {
                        sockets::send_to(&self.tasks_socket, &routing_id, &message.encode());
                    }
                    Command::ToSink(mut message) => {
                        if let Message::Stats {
                            inputs_wire,
                            inputs,
                            ..
                        } = &mut message
                        {
                            let sent = crate::protocol::sent_bytes().since(self.sent_at_start);
                            (*inputs_wire, *inputs) = (sent.inputs_wire, sent.inputs);
                        }
                        if let Err(e) = self.sink_socket.send(message.encode(), zmq::DONTWAIT) {
                            log::debug!("sending {} to the sink: {e}", message.kind_name());
                        }
                    }
                    Command::Complete => end = Some(Ok(())),
                    Command::Stop(why) => end = Some(Err(anyhow::Error::new(why))),
                    Command::Note(note) => crate::events::emit(&note),
                    Command::Observed(observed) => {
                        if let Some(o) = observer.as_mut() {
                            o.observed(Instant::now(), observed);
                        }
                    }
                }
            }
            let now = Instant::now();
            for event in failed {
                dispatcher.handle(now, event, out);
            }
        }
        end
    }
}

/// Longest the pump sleeps in one poll, so a shutdown request is seen promptly.
const MAX_POLL: Duration = Duration::from_millis(100);
/// Longest the live view waits, after the batch, for the sink to say its picture is
/// written (a 16384 x 16384 picture takes seconds; a sink that died never says so).
const PICTURE_WAIT: Duration = Duration::from_secs(600);
/// How often the live view's data is refreshed (`--http`): the page reads it twice a
/// second (the JSON is made by the thread that answers, not here).
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

impl Ventilator {
    /// After the batch: the final state stays up for a look (or a last scrape) for
    /// `--http-linger`, and longer while the sink says it is writing the picture, until it
    /// says written (or failed), for at most [`PICTURE_WAIT`]. Still heard meanwhile: the
    /// sink's side, and workers' last reports.
    fn linger(
        &self,
        o: &mut crate::observe::Observer,
        d: &mut Dispatcher,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        let until = Instant::now() + self.config.http_linger;
        let picture_until = Instant::now() + PICTURE_WAIT;
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        loop {
            let now = Instant::now();
            let writing = o.picture_writing() && now < picture_until;
            if (now >= until && !writing) || shutdown.is_requested() {
                return Ok(());
            }
            let wait = if writing {
                MAX_POLL
            } else {
                until.saturating_duration_since(now).min(MAX_POLL)
            };
            let mut items = [
                self.tasks_socket.as_poll_item(zmq::POLLIN),
                self.sink_socket.as_poll_item(zmq::POLLIN),
            ];
            sockets::poll(
                &mut items,
                wait.as_millis() as i64,
                "the ventilator's sockets",
            )?;
            let (tasks, sink) = (items[0].is_readable(), items[1].is_readable());
            if sink {
                sockets::drain(
                    &self.sink_socket,
                    false,
                    "the sink socket",
                    self.config.max_payload,
                    |inbound| {
                        if let Ok(message) = inbound.message {
                            Self::observe_after(o, d, Event::FromSink(message));
                        }
                        Ok(())
                    },
                )?;
            }
            if tasks {
                sockets::drain(
                    &self.tasks_socket,
                    true,
                    "the tasks socket",
                    self.config.max_payload,
                    |inbound| {
                        if let Ok(message) = inbound.message {
                            let event = Event::FromWorker {
                                routing_id: inbound.peer,
                                message,
                            };
                            Self::observe_after(o, d, event);
                        }
                        Ok(())
                    },
                )?;
            }
            let now = Instant::now();
            if now >= next_publish || sink {
                self.publish(o, d);
                next_publish = now + PUBLISH_EVERY;
            }
        }
    }

    /// After the batch: what the dispatcher still observes of `event` (a worker's last
    /// report, the sink's side), to the live view.
    fn observe_after(o: &mut crate::observe::Observer, d: &mut Dispatcher, event: Event) {
        let mut out = Vec::new();
        d.handle(Instant::now(), event, &mut out);
        for command in out {
            if let Command::Observed(observed) = command {
                o.observed(Instant::now(), observed);
            }
        }
    }

    /// Hands the live view a fresh status and metrics.
    fn publish(&self, o: &mut crate::observe::Observer, d: &Dispatcher) {
        let Some(server) = &self.http else {
            return;
        };
        let now = Instant::now();
        let status = o.status(now, &d.snapshot(), self.config.heartbeat.interval);
        let metrics = o.metrics(now, &status);
        server.publish(status, metrics);
    }
}

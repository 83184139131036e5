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
use crate::driver;
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
    /// Where the live view's status also goes, for a coordinator that shows its jobs
    /// together (observed as with `--http`).
    pub board: Option<std::sync::Arc<crate::observe::Board>>,
    /// The endpoint workers are told to connect to, when it is not the one bound (a
    /// coordinator's job binds in-process; workers reach the farm's front).
    pub shown_endpoint: Option<String>,
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
    /// How the batch continues after a stop, where this ventilator is not its own process
    /// (`conquer serve`); None: restart it with `--resume`.
    pub resume_advice: Option<String>,
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
            board: None,
            shown_endpoint: None,
            inputs: None,
            kernel_source: None,
            fixed_workers: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
            compress: true,
            resume_advice: None,
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
        let (tasks_socket, endpoint) =
            sockets::bind_tasks(ctx, &config.bind, config.max_payload, gate.as_ref())?;
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
            endpoint: config
                .shown_endpoint
                .clone()
                .unwrap_or_else(|| self.endpoint.clone()),
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
            observe: self.observed(),
            framing: crate::dispatch::Framing {
                kernel: config.kernel_source.is_some(),
                inputs: config.inputs.is_some(),
                compress: config.compress,
            },
        };
        let mut dispatcher = Dispatcher::new(dispatch, Instant::now(), crate::worker::unix_ms());
        let mut observer = self.observed().then(|| match config.chunking {
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
                let advice = self.config.resume_advice.clone().unwrap_or_else(|| {
                    "to continue where the sink stands, restart this ventilator with the same \
                     batch flags and --resume"
                        .to_owned()
                });
                log::warn!(
                    "{why} mid-batch {batch_id:016x} with {} of {n} tasks held at the sink; \
                     {advice}",
                    dispatcher.counters().held
                );
            }
            return Err(e);
        }
        Ok(dispatcher.counters())
    }

    /// Runs the dispatcher over the ventilator's sockets until the batch is over.
    fn pump(
        &self,
        dispatcher: &mut Dispatcher,
        observer: &mut Option<crate::observe::Observer>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        driver::run(&mut Pump {
            v: self,
            d: dispatcher,
            observer,
            shutdown,
            greeted: Vec::new(),
            next_publish: Instant::now(),
        })
    }
}

/// The ventilator's host for the [`driver`]: its sockets carry the dispatcher's commands
/// and bring its events; the live view hears what the dispatcher observes.
struct Pump<'a> {
    v: &'a Ventilator,
    d: &'a mut Dispatcher,
    observer: &'a mut Option<crate::observe::Observer>,
    shutdown: &'a Shutdown,
    /// Workers whose greeting carried an address, for the live view once each has a place.
    greeted: Vec<(Vec<u8>, String)>,
    next_publish: Instant,
}

impl driver::Host for Pump<'_> {
    type Machine = Dispatcher;
    type Error = anyhow::Error;

    fn machine(&mut self) -> &mut Dispatcher {
        self.d
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    /// A stop, or a data task's input that cannot be framed, ends the batch once the rest
    /// of the commands are carried out (the notes that follow a stop among them).
    fn carry_out(
        &mut self,
        commands: &mut Vec<Command>,
        failed: &mut Vec<Event>,
    ) -> anyhow::Result<driver::Progress> {
        let v = self.v;
        self.place_greeted();
        let mut progress = driver::Progress::Going;
        let mut stop = None;
        // Workers whose kernel source found their queue full: their tasks that follow
        // bounce too, rather than arrive without it.
        let mut no_kernel: Vec<WorkerId> = Vec::new();
        for command in commands.drain(..) {
            match command {
                Command::ToWorker { worker, message } => {
                    let to = &self.d.worker(worker).routing_id;
                    if sockets::send_to(&v.tasks_socket, to, &message.encode()) == SendOutcome::Gone
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
                    in_pieces,
                } => {
                    if no_kernel.contains(&worker) {
                        failed.push(Event::Bounced {
                            worker,
                            tasks,
                            again,
                        });
                        continue;
                    }
                    // A user kernel's source goes first when the dispatcher says so:
                    // messages to one peer arrive in order.
                    if let (true, Some(source)) = (kernel, &v.config.kernel_source) {
                        let message = Message::Kernel {
                            batch: self.d.batch_id(),
                            source: source.to_string(),
                        };
                        let to = &self.d.worker(worker).routing_id;
                        match sockets::send_to(&v.tasks_socket, to, &message.encode()) {
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
                    let framing = (compress, in_pieces);
                    if let Err(e) = self.send_tasks(worker, tasks, again, framing, failed) {
                        stop.get_or_insert(e);
                    }
                }
                Command::Reply {
                    routing_id,
                    message,
                } => {
                    sockets::send_to(&v.tasks_socket, &routing_id, &message.encode());
                }
                Command::ToSink(mut message) => {
                    if let Message::Stats {
                        inputs_wire,
                        inputs,
                        ..
                    } = &mut message
                    {
                        let sent = crate::protocol::sent_bytes().since(v.sent_at_start);
                        (*inputs_wire, *inputs) = (sent.inputs_wire, sent.inputs);
                    }
                    if let Err(e) = v.sink_socket.send(message.encode(), zmq::DONTWAIT) {
                        log::debug!("sending {} to the sink: {e}", message.kind_name());
                    }
                }
                Command::Complete => progress = driver::Progress::Over,
                Command::Stop(why) => {
                    stop.get_or_insert(anyhow::Error::new(why));
                }
                Command::Note(note) => crate::events::emit(&note),
                Command::Observed(observed) => {
                    if let Some(o) = self.observer.as_mut() {
                        o.observed(Instant::now(), observed);
                    }
                }
            }
        }
        match stop {
            Some(e) => Err(e),
            None => Ok(progress),
        }
    }
}

impl driver::Transport for Pump<'_> {
    fn check(&mut self) -> anyhow::Result<()> {
        Ok(self.shutdown.check()?)
    }

    /// The live view learns greeted workers' addresses and gets a fresh status when due.
    fn after_round(&mut self) -> anyhow::Result<()> {
        self.place_greeted();
        let Some(o) = self.observer.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= self.next_publish {
            self.v.publish(o, self.d);
            self.next_publish = now + PUBLISH_EVERY;
        }
        Ok(())
    }

    /// Polls the tasks and sink sockets (and the sink's handshakes) until the deadline,
    /// at most [`MAX_POLL`]; a refusal by the sink ends the ventilator with the reason.
    fn receive(&mut self, deadline: Instant, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let v = self.v;
        // Greetings of the last round still without a place were refused.
        self.greeted.clear();
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(MAX_POLL);
        let mut items = [
            v.tasks_socket.as_poll_item(zmq::POLLIN),
            v.sink_socket.as_poll_item(zmq::POLLIN),
            v.sink_monitor.as_poll_item(zmq::POLLIN),
        ];
        sockets::poll(
            &mut items,
            timeout.as_millis() as i64,
            "the ventilator's sockets",
        )?;
        if items[2].is_readable() {
            let refused = crate::auth::refusal(crate::auth::failures(&v.sink_monitor), "sink");
            if let Some(failure) = refused {
                bail!(crate::auth::refusal_message(
                    failure,
                    "sink",
                    &v.config.sink,
                    &v.config.access
                ));
            }
        }
        if let Some(gate) = &v.gate {
            events.push(Event::Refused(gate.refused()));
        }
        let secret = v.config.access.secret.is_some();
        let observing = self.observer.is_some();
        if items[0].is_readable() {
            sockets::drain(
                &v.tasks_socket,
                true,
                "the tasks socket",
                v.config.max_payload,
                |inbound| {
                    let message = inbound.message.and_then(|message| {
                        if secret {
                            crate::auth::speaks_for_itself(&inbound.user, &inbound.peer, &message)?;
                        }
                        Ok(message)
                    });
                    if let (Some(address), true) = (inbound.address, observing) {
                        self.greeted.push((inbound.peer.clone(), address));
                    }
                    events.push(match message {
                        Ok(message) => Event::FromWorker {
                            routing_id: inbound.peer,
                            message,
                        },
                        Err(why) => Event::Rejected {
                            peer: sockets::peer_name(&inbound.peer),
                            why,
                        },
                    });
                    Ok(())
                },
            )?;
        }
        if items[1].is_readable() {
            sockets::drain(
                &v.sink_socket,
                false,
                "the sink socket",
                v.config.max_payload,
                |inbound| {
                    events.push(match inbound.message {
                        Ok(message) => Event::FromSink(message),
                        Err(why) => Event::Rejected {
                            peer: "sink".into(),
                            why,
                        },
                    });
                    Ok(())
                },
            )?;
        }
        Ok(())
    }
}

impl Pump<'_> {
    /// The live view learns the addresses of workers that greeted, once the dispatcher
    /// has given each a place (right after their greeting is handled); greetings of the
    /// round not handled yet wait.
    fn place_greeted(&mut self) {
        let Some(o) = self.observer.as_mut() else {
            return;
        };
        let d = &*self.d;
        self.greeted
            .retain(|(peer, address)| match d.worker_id(peer) {
                Some(w) => {
                    o.address(w, address);
                    false
                }
                None => true,
            });
    }

    /// Sends a command's tasks to `worker`: a list's in one message; data tasks one per
    /// message (one per command, as the dispatcher frames them), each with its input file,
    /// compressed for a worker that speaks LZ4 when it pays. Those that cannot go come back
    /// in `failed`.
    fn send_tasks(
        &mut self,
        worker: WorkerId,
        tasks: Vec<crate::batch::Task>,
        again: Vec<bool>,
        (compress, in_pieces): (bool, bool),
        failed: &mut Vec<Event>,
    ) -> anyhow::Result<()> {
        let v = self.v;
        let to = &self.d.worker(worker).routing_id;
        let (batch, job) = (self.d.batch_id(), *self.d.job());
        let observer = &mut *self.observer;
        // Tasks sent, with their input's bytes uncompressed and on the wire (0 for tasks
        // without one).
        let mut mark_sent = |sent: &[crate::batch::Task], bytes: usize, wire: usize| {
            if let Some(timeline) = &v.config.timeline {
                sent.iter().for_each(|t| timeline.sent(t.id));
            }
            if let Some(o) = observer.as_mut() {
                o.sent(Instant::now(), worker, sent.iter().map(|t| t.id));
                if bytes > 0 {
                    o.input_sent(worker, bytes, wire);
                }
            }
        };
        let Some(inputs) = &v.config.inputs else {
            let message = Message::encode_tasks(batch, &job, &tasks, in_pieces);
            match sockets::send_to(&v.tasks_socket, to, &message) {
                SendOutcome::Sent => mark_sent(&tasks, 0, 0),
                SendOutcome::Gone => failed.push(Event::Unreachable(worker)),
                SendOutcome::Busy => failed.push(Event::Bounced {
                    worker,
                    tasks,
                    again,
                }),
            }
            return Ok(());
        };
        for (k, task) in tasks.iter().enumerate() {
            let (message, input_len) =
                inputs.data_message(batch, &job, *task, v.config.max_payload)?;
            let (message, wire) = if compress {
                Message::pack_data(message, input_len)
            } else {
                (message, input_len)
            };
            match sockets::send_owned_to(&v.tasks_socket, to, message) {
                SendOutcome::Sent => {
                    crate::protocol::count_sent(true, wire, input_len);
                    mark_sent(std::slice::from_ref(task), input_len, wire)
                }
                SendOutcome::Gone => {
                    // Every task of the command is the worker's: losing it hands them all
                    // on.
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
        Ok(())
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
    /// Whether the farm is observed: a live view, or a coordinator's board.
    fn observed(&self) -> bool {
        self.http.is_some() || self.config.board.is_some()
    }

    fn publish(&self, o: &mut crate::observe::Observer, d: &Dispatcher) {
        if !self.observed() {
            return;
        }
        let now = Instant::now();
        let status = o.status(now, &d.snapshot(), self.config.heartbeat.interval);
        if let Some(board) = &self.config.board {
            board.put(status.clone());
        }
        if let Some(server) = &self.http {
            let metrics = o.metrics(now, &status);
            server.publish(status, metrics);
        }
    }
}

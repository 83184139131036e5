//! Classic mode: the Guide's taskvent / taskwork / tasksink wire format, spoken exactly, so
//! a `conquer worker --classic` drops into a pipeline somebody already runs (in any
//! language) and the classic PUSH/PULL design stays measurable next to credit dispatch.
//!
//! Sockets, as in the Guide: the ventilator's `tasks` PUSH binds :5557 and its `sink` PUSH
//! connects to the sink's `results` PULL on :5558 (the start signal "0"); workers PULL tasks
//! (ASCII milliseconds) and PUSH one message per result; the sink's `control` PUB binds
//! :5559 and broadcasts "KILL" when the batch is done. Classic mode cannot redispatch lost
//! tasks or tell workers apart: that is what the credit protocol is for.

use crate::backend::Backend;
use crate::batch::{Batch, Job, Order, Task};
use crate::logging::RateLimited;
use crate::protocol::{classic, Status};
use crate::report::Report;
use crate::shutdown::{Interrupted, Shutdown};
use crate::sockets;
use crate::worker::WorkerSummary;
use anyhow::{bail, Context};
use std::time::{Duration, Instant};

/// Watches a socket's connections through a ZeroMQ monitor: how many peers completed the
/// handshake and are still there, and the handshakes that failed.
struct Peers {
    monitor: zmq::Socket,
    connected: usize,
    /// Failed handshakes whose disconnection is still to come (it is no peer leaving).
    failing: usize,
    /// The first failed handshake seen, for a connecting role to report.
    failure: Option<crate::auth::Failure>,
}

impl Peers {
    /// Counts peers from events a gate passes on (see `Gate::guard_and_share`).
    fn shared(monitor: zmq::Socket) -> Peers {
        Peers {
            monitor,
            connected: 0,
            failing: 0,
            failure: None,
        }
    }

    fn watch(ctx: &zmq::Context, socket: &zmq::Socket) -> anyhow::Result<Peers> {
        let endpoint = crate::auth::monitor_endpoint();
        let events = zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw()
            | zmq::SocketEvent::DISCONNECTED.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw()
            | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw();
        socket
            .monitor(&endpoint, i32::from(events))
            .context("monitoring the socket")?;
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.set_linger(0)?;
        monitor.connect(&endpoint)?;
        Ok(Peers {
            monitor,
            connected: 0,
            failing: 0,
            failure: None,
        })
    }

    /// Applies every pending event; returns the count of connected peers.
    fn update(&mut self) -> usize {
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            let Some((event, value)) = crate::auth::event(&frames) else {
                continue;
            };
            match zmq::SocketEvent::from_raw(event) {
                zmq::SocketEvent::HANDSHAKE_SUCCEEDED => self.connected += 1,
                // A failed handshake's connection closes next (libzmq reports both from
                // the one I/O thread, in order): that is no connected peer leaving.
                zmq::SocketEvent::DISCONNECTED if self.failing > 0 => self.failing -= 1,
                zmq::SocketEvent::DISCONNECTED => self.connected = self.connected.saturating_sub(1),
                // A connection dropped mid-handshake (a port scanner, a peer gone): no peer.
                zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL => self.failing += 1,
                _ => {
                    let failure = crate::auth::Failure::of(event, value)
                        .filter(|f| *f != crate::auth::Failure::Closed);
                    if let Some(failure) = failure {
                        self.failing += 1;
                        if matches!(
                            failure,
                            crate::auth::Failure::Refused(_)
                                | crate::auth::Failure::MechanismMismatch
                        ) {
                            self.failure.get_or_insert(failure);
                        }
                    }
                }
            }
        }
        self.connected
    }
}

/// A classic ventilator's settings.
#[derive(Debug, Clone)]
pub struct ClassicVentilatorConfig {
    pub bind: String,
    pub sink: String,
    pub batch: Batch,
    pub order: Order,
    pub seed: u64,
    /// Start once this many workers are connected (0: press Enter, as the Guide asks).
    pub wait_workers: usize,
    pub wait_timeout: Duration,
    /// Print "Total expected cost" on stdout.
    pub announce: bool,
    /// Who may take tasks; the secret presented to the sink.
    pub access: crate::auth::Access,
    /// The largest task input or output it sends or accepts (`--max-payload`).
    pub max_payload: u64,
}

/// A classic ventilator with its socket bound.
pub struct ClassicVentilator {
    config: ClassicVentilatorConfig,
    tasks: zmq::Socket,
    sink: zmq::Socket,
    peers: Peers,
    endpoint: String,
    /// Guards the tasks socket, when the access rules say so. Last: dropped after it.
    _gate: Option<crate::auth::Gate>,
}

impl ClassicVentilator {
    pub fn bind(ctx: &zmq::Context, config: ClassicVentilatorConfig) -> anyhow::Result<Self> {
        config.access.check_exposure(&config.bind, "--bind")?;
        let gate = crate::auth::Gate::start(ctx, &config.access, "ventilator")?;
        let mut shared = None;
        let (tasks, endpoint) = sockets::bind_prepared(
            ctx,
            zmq::PUSH,
            "tasks",
            &config.bind,
            "--bind",
            config.max_payload,
            |socket| {
                if let Some(gate) = &gate {
                    shared = Some(gate.guard_and_share(socket, "tasks")?);
                }
                Ok(())
            },
        )?;
        // PUSH hands a burst to the first connected worker: queued tasks must survive until
        // slow workers take them, so closing waits longer than for our own sockets.
        tasks.set_linger(30_000)?;
        // One monitor per socket: a guarded one's is the gate's, which passes events on.
        let peers = match shared {
            Some(monitor) => Peers::shared(monitor),
            None => Peers::watch(ctx, &tasks)?,
        };
        let caller = sockets::Caller {
            identity: None,
            access: &config.access,
            user: crate::auth::VENTILATOR_USER,
            max_payload: config.max_payload,
        };
        let sink = sockets::connect(ctx, zmq::PUSH, "sink", &config.sink, "--sink", &caller)?;
        Ok(ClassicVentilator {
            _gate: gate,
            config,
            tasks,
            sink,
            peers,
            endpoint,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Waits for the workers, signals the sink, and pushes every task.
    pub fn run(mut self, shutdown: &Shutdown) -> anyhow::Result<()> {
        let outcome = self.push_batch(shutdown);
        if outcome.is_err() {
            // Interrupted or failed: queued tasks are not worth waiting for at exit.
            let _ = self.tasks.set_linger(0);
        }
        outcome
    }

    fn push_batch(&mut self, shutdown: &Shutdown) -> anyhow::Result<()> {
        let want = self.config.wait_workers;
        if want == 0 {
            // As taskvent does: wait for Enter on whatever stdin is (a terminal, a pipe); a
            // closed stdin starts at once. Read on a thread so Ctrl-C is still seen.
            crate::report::print_classic_line("Press Enter when the workers are ready: ");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || {
                    let mut line = String::new();
                    let _ = std::io::stdin().read_line(&mut line);
                    let _ = tx.send(());
                })
                .context("starting the stdin reader")?;
            loop {
                if shutdown.is_requested() {
                    return Err(Interrupted.into());
                }
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
            crate::report::print_classic_line("Sending tasks to workers...");
        } else {
            let start = Instant::now();
            let mut said = usize::MAX;
            loop {
                let connected = self.peers.update();
                if connected >= want {
                    break;
                }
                if connected != said {
                    log::info!(
                        "waiting for {want} workers ({connected} connected) on {}",
                        self.endpoint
                    );
                    said = connected;
                }
                if start.elapsed() >= self.config.wait_timeout {
                    bail!(
                        "timed out after {:.1} s waiting for {want} workers ({connected} connected) on {}: \
                         start more workers or lower --wait-workers",
                        self.config.wait_timeout.as_secs_f64(),
                        self.endpoint
                    );
                }
                if shutdown.is_requested() {
                    return Err(Interrupted.into());
                }
                let mut items = [self.peers.monitor.as_poll_item(zmq::POLLIN)];
                sockets::poll(&mut items, 100, "classic sockets")?;
            }
        }
        sockets::send_patiently(
            &self.sink,
            classic::START,
            shutdown,
            "sending the start signal to the sink",
        )?;
        let order = self
            .config
            .batch
            .dispatch_order(self.config.order, self.config.seed);
        for id in order {
            if shutdown.is_requested() {
                return Err(Interrupted.into());
            }
            let task = self.config.batch.tasks[id as usize];
            let frame = classic::encode_task(task.workload_ms);
            sockets::send_patiently(&self.tasks, &frame, shutdown, "sending a task")?;
        }
        if self.config.announce {
            crate::report::print_expected_cost(self.config.batch.expected_ms());
        }
        log::info!("all {} tasks sent", self.config.batch.len());
        Ok(())
    }
}

/// A classic sink's settings.
#[derive(Debug, Clone)]
pub struct ClassicSinkConfig {
    pub bind: String,
    /// Where the KILL broadcast is published.
    pub control_bind: String,
    /// Results to collect (the Guide's sink counts 100).
    pub tasks: u32,
    /// Who may send results and hear the KILL.
    pub access: crate::auth::Access,
    /// The largest task input or output it sends or accepts (`--max-payload`).
    pub max_payload: u64,
}

/// A classic sink with its sockets bound.
pub struct ClassicSink {
    config: ClassicSinkConfig,
    results: zmq::Socket,
    control: zmq::Socket,
    endpoint: String,
    control_endpoint: String,
    /// Guards both sockets, when the access rules say so. Last: dropped after them.
    gate: Option<crate::auth::Gate>,
}

impl ClassicSink {
    pub fn bind(ctx: &zmq::Context, config: ClassicSinkConfig) -> anyhow::Result<Self> {
        config.access.check_exposure(&config.bind, "--bind")?;
        config
            .access
            .check_exposure(&config.control_bind, "--control-bind")?;
        let gate = crate::auth::Gate::start(ctx, &config.access, "sink")?;
        let (results, endpoint) = sockets::bind(
            ctx,
            zmq::PULL,
            "results",
            &config.bind,
            "--bind",
            gate.as_ref(),
            config.max_payload,
        )?;
        let (control, control_endpoint) = sockets::bind(
            ctx,
            zmq::PUB,
            "control",
            &config.control_bind,
            "--control-bind",
            gate.as_ref(),
            config.max_payload,
        )?;
        Ok(ClassicSink {
            gate,
            config,
            results,
            control,
            endpoint,
            control_endpoint,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn control_endpoint(&self) -> &str {
        &self.control_endpoint
    }

    /// Waits for the start signal, counts the results, broadcasts KILL, reports.
    pub fn run(self, shutdown: &Shutdown) -> anyhow::Result<Report> {
        let mut rejected = 0u64;
        let mut reject_log = RateLimited::new(5, Duration::from_secs(1));
        let mut started: Option<Instant> = None;
        let mut received = 0u32;
        let mut expected_ms = 0u64;
        let mut longest_ms = 0u32;
        let dots = std::io::IsTerminal::is_terminal(&std::io::stdout());
        while received < self.config.tasks {
            if shutdown.is_requested() {
                return Err(Interrupted.into());
            }
            let mut items = [self.results.as_poll_item(zmq::POLLIN)];
            sockets::poll(&mut items, 100, "classic sockets")?;
            while let Ok(frames) = self.results.recv_multipart(zmq::DONTWAIT) {
                let frame = match <[Vec<u8>; 1]>::try_from(frames) {
                    Ok([frame]) => frame,
                    Err(frames) => {
                        rejected += 1;
                        reject_log.warn_at(std::time::Instant::now(), || {
                            format!("dropped a {}-frame message", frames.len())
                        });
                        continue;
                    }
                };
                if started.is_none() {
                    // As tasksink does: the first message, whatever it holds, starts the batch.
                    if frame != classic::START {
                        log::debug!("batch started by a {}-byte message", frame.len());
                    }
                    log::info!("start of batch; collecting {} results", self.config.tasks);
                    crate::events::emit(&crate::events::Note::Batch {
                        batch: crate::events::batch_name(0),
                        tasks: self.config.tasks as u64,
                        held: 0,
                    });
                    started = Some(Instant::now());
                    continue;
                }
                // As tasksink does: every single-frame message is a result. Those that carry a
                // workload add to the expected cost.
                if let Some(ms) = classic::decode_task(&frame) {
                    expected_ms += u64::from(ms);
                    longest_ms = longest_ms.max(ms);
                }
                if dots {
                    crate::report::print_classic_progress(received);
                }
                received += 1;
                if received == self.config.tasks {
                    break;
                }
            }
        }
        let elapsed_ms = started.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0);
        if dots {
            crate::report::print_classic_line("");
        }
        self.control
            .send(classic::KILL, 0)
            .context("broadcasting KILL")?;
        log::info!("batch complete; KILL sent on {}", self.control_endpoint);
        let tasks = u64::from(received);
        // Counted once the sockets are closed and the gate has stopped: then every
        // refusal on them has been read from their monitors.
        let counter = self.gate.as_ref().map(crate::auth::Gate::counter);
        drop(self);
        let refused = counter.map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed));
        Ok(Report {
            failed: Vec::new(),
            replicated: 0,
            unconfirmed: 0,
            replica_mismatches: Vec::new(),
            quarantined: Vec::new(),
            batch: "classic".into(),
            tasks,
            expected_ms,
            longest_ms,
            elapsed_ms,
            finished_ms: elapsed_ms,
            ideal_ms: 0.0,
            ideal_basis: "unknown".into(),
            efficiency: 0.0,
            tasks_per_s: if elapsed_ms > 0.0 {
                tasks as f64 * 1000.0 / elapsed_ms
            } else {
                0.0
            },
            duplicates: 0,
            redispatched: 0,
            rejected,
            refused,
            checked: 0,
            verified: 0,
            mismatches: 0,
            compared: 0,
            differing: 0,
            outputs: 0,
            outputs_dir: None,
            wire: Default::default(),
            picture: None,
            hits: Vec::new(),
            job: None,
            workers: Vec::new(),
        })
    }
}

/// A classic worker's settings.
#[derive(Debug, Clone)]
pub struct ClassicWorkerConfig {
    pub ventilator: String,
    pub sink: String,
    /// The KILL broadcast's endpoint.
    pub control: String,
    /// What compute backends run: classic tasks carry only milliseconds.
    pub job: Job,
    /// The secret presented to the ventilator and the sink.
    pub access: crate::auth::Access,
    /// The largest task input or output it sends or accepts (`--max-payload`).
    pub max_payload: u64,
}

/// Serves a classic pipeline until KILL (any message on the control socket) or Ctrl-C.
pub fn run_worker(
    ctx: &zmq::Context,
    config: ClassicWorkerConfig,
    mut backend: Box<dyn Backend>,
    shutdown: &Shutdown,
) -> anyhow::Result<WorkerSummary> {
    let caller = sockets::Caller {
        identity: None,
        access: &config.access,
        user: "worker:classic",
        max_payload: config.max_payload,
    };
    let tasks = sockets::connect(
        ctx,
        zmq::PULL,
        "tasks",
        &config.ventilator,
        "--ventilator",
        &caller,
    )?;
    let mut peers = Peers::watch(ctx, &tasks)?;
    let results = sockets::connect(ctx, zmq::PUSH, "results", &config.sink, "--sink", &caller)?;
    let control = sockets::connect(
        ctx,
        zmq::SUB,
        "control",
        &config.control,
        "--control",
        &caller,
    )?;
    let mut sink_peers = Peers::watch(ctx, &results)?;
    control.set_subscribe(b"")?;
    log::info!(
        "classic worker ({}) connecting to {}, {} and {}",
        backend.kind(),
        config.ventilator,
        config.sink,
        config.control
    );
    let mut summary = WorkerSummary::default();
    let mut reject_log = RateLimited::new(5, Duration::from_secs(1));
    let mut was_connected = false;
    let mut next_id = 0u32;
    loop {
        if shutdown.is_requested() {
            return Err(Interrupted.into());
        }
        let connected = peers.update() > 0;
        sink_peers.update();
        for (peer, endpoint, failure) in [
            ("ventilator", &config.ventilator, peers.failure),
            ("sink", &config.sink, sink_peers.failure),
        ] {
            if let Some(failure) = failure {
                bail!(crate::auth::refusal_message(
                    failure,
                    peer,
                    endpoint,
                    &config.access
                ));
            }
        }
        if connected != was_connected {
            if connected {
                log::info!("connected to the ventilator at {}", config.ventilator);
                crate::events::emit(&crate::events::Note::Ready { backend: None });
            }
            was_connected = connected;
        }
        let mut items = [
            tasks.as_poll_item(zmq::POLLIN),
            control.as_poll_item(zmq::POLLIN),
            peers.monitor.as_poll_item(zmq::POLLIN),
            sink_peers.monitor.as_poll_item(zmq::POLLIN),
        ];
        sockets::poll(&mut items, 100, "classic sockets")?;
        if items[1].is_readable() {
            let _ = control.recv_multipart(0)?;
            log::info!("KILL received; leaving after {} tasks", summary.tasks);
            return Ok(summary);
        }
        if !items[0].is_readable() {
            continue;
        }
        let frame = tasks.recv_bytes(0)?;
        let Some(workload_ms) = classic::decode_task(&frame) else {
            summary.rejected += 1;
            reject_log.warn_at(std::time::Instant::now(), || {
                format!(
                    "dropped a {}-byte task that is not ASCII milliseconds",
                    frame.len()
                )
            });
            continue;
        };
        let task = Task {
            id: next_id,
            workload_ms,
            ..Default::default()
        };
        next_id = next_id.wrapping_add(1);
        // The classic protocol cannot hand a failed task to another worker: retry here.
        let mut status = Status::Failed;
        for attempt in 1..=3 {
            let mut one = Some(task);
            backend.run(
                &config.job,
                &mut || one.take().map(crate::backend::Work::from),
                &mut |o| status = o.status,
            );
            if status != Status::Failed {
                break;
            }
            log::warn!("task of {workload_ms} ms failed (attempt {attempt} of 3)");
            backend.healthy().map_err(anyhow::Error::msg)?;
        }
        if status == Status::Failed {
            log::error!("task of {workload_ms} ms failed three times; reporting it done so the classic sink can finish");
        }
        sockets::send_patiently(&results, b"", shutdown, "sending a result")?;
        summary.tasks += 1;
    }
}

/// A classic pipeline in one process (loopback, ephemeral ports): the classic ventilator
/// and sink and one classic worker per backend, each joining after its delay. Returns the
/// sink's report and the tasks each worker did. For benchmarks against credit dispatch.
pub fn run_local(
    batch: Batch,
    order: Order,
    workers: Vec<(Box<dyn Backend>, Duration)>,
    wait_workers: usize,
    shutdown: &Shutdown,
) -> anyhow::Result<(Report, Vec<u64>)> {
    let ctx = zmq::Context::new();
    let tasks = u32::try_from(batch.len()).context("batch too large")?;
    let sink = ClassicSink::bind(
        &ctx,
        ClassicSinkConfig {
            bind: "tcp://127.0.0.1:*".into(),
            control_bind: "tcp://127.0.0.1:*".into(),
            tasks,
            access: crate::auth::Access::default(),
            max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
        },
    )?;
    let vent = ClassicVentilator::bind(
        &ctx,
        ClassicVentilatorConfig {
            bind: "tcp://127.0.0.1:*".into(),
            sink: sink.endpoint().to_owned(),
            batch,
            order,
            seed: 0,
            wait_workers: wait_workers.max(1),
            wait_timeout: Duration::from_secs(60),
            announce: false,
            access: crate::auth::Access::default(),
            max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
        },
    )?;
    let config = ClassicWorkerConfig {
        ventilator: vent.endpoint().to_owned(),
        sink: sink.endpoint().to_owned(),
        control: sink.control_endpoint().to_owned(),
        job: Job::default(),
        access: crate::auth::Access::default(),
        max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
    };
    let mut handles = Vec::new();
    for (i, (backend, delay)) in workers.into_iter().enumerate() {
        let (ctx, config, shutdown) = (ctx.clone(), config.clone(), shutdown.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("classic-worker-{}", i + 1))
                .spawn(move || {
                    std::thread::sleep(delay); // the scenario: this worker joins late
                    run_worker(&ctx, config, backend, &shutdown)
                })?,
        );
    }
    let vent_shutdown = shutdown.clone();
    let vent_thread = std::thread::Builder::new()
        .name("classic-ventilator".into())
        .spawn(move || vent.run(&vent_shutdown))?;
    let report = sink.run(shutdown);
    if report.is_err() {
        shutdown.request();
    }
    let vent = vent_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the classic ventilator panicked"))?;
    let mut per_worker = Vec::new();
    for handle in handles {
        let summary = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a classic worker panicked"))??;
        per_worker.push(summary.tasks);
    }
    vent?;
    Ok((report?, per_worker))
}

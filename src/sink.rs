//! The sink: collects results, counts each task once, and reports the batch.
//!
//! Socket: `results`, a ROUTER bound on `tcp://*:5558`. Workers' DEALERs send results here;
//! the ventilator's DEALER announces the batch here (the first announcement starts the
//! clock; repeats are its heartbeat) and hears back which task ids the sink holds, so it can
//! hand lost tasks to other workers. The sink keeps one bit per task; a second result for a
//! held task is a duplicate, dropped and counted. With `--results` every result is written
//! and synced to disk before the ventilator hears it is held, so `--resume` after a crash
//! loses nothing and counts nothing twice. Workers greet the sink (`join`) before they
//! ask the ventilator for tasks; the sink welcomes them, or refuses a second live worker
//! with the same name, a worker that mistook it for a ventilator, and a second ventilator
//! while a batch is in progress, each with the reason. It never sends a worker tasks.

use crate::collect::{CollectConfig, Collector, SinkCommand, SinkEvent};
use crate::driver;
use crate::heartbeat::Heartbeat;
use crate::protocol::Status;
use crate::report::{RecoveredResults, Report, ResultsFile, ResultsFormat};
use crate::shutdown::{Interrupted, Shutdown};
use crate::sockets::{self, SendOutcome};
use anyhow::{anyhow, bail};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Everything a sink needs.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The `results` ROUTER's bind endpoint.
    pub bind: String,
    /// Where to write one record per task, if anywhere.
    pub results: Option<(PathBuf, ResultsFormat)>,
    /// Continue the batch recorded in the results file instead of starting it afresh.
    pub resume: bool,
    /// Replace a results file that already holds records (without it, such a file is
    /// refused rather than wiped).
    pub overwrite: bool,
    /// Liveness of workers' greetings: a worker silent this long gives up its name.
    pub heartbeat: Heartbeat,
    /// How long to wait for the ventilator's last counters once every task is held.
    pub final_stats_wait: Duration,
    /// Show a progress bar (tasks held, rate, ETA) on stderr; for terminals.
    pub progress: bool,
    /// Records when each task is held, for latency benchmarks.
    pub timeline: Option<std::sync::Arc<crate::timeline::Timeline>>,
    /// Who may connect to the results socket.
    pub access: crate::auth::Access,
    /// Write every held task to this file as a Chrome trace when the batch completes.
    pub trace: Option<PathBuf>,
    /// Where data tasks' outputs go (`--outputs`, `--image`).
    pub outputs: crate::outputs::OutputsConfig,
    /// How to finish the batch after a stop, in the words of the command that was run
    /// (`conquer run` resumes with its own `--resume`); None: restart this sink.
    pub resume_advice: Option<String>,
    /// The largest task input or output it sends or accepts (`--max-payload`).
    pub max_payload: u64,
    /// Compress task inputs or outputs it sends when that pays and the peer speaks LZ4
    /// (false with `--no-compress`, which also asks peers for raw).
    pub compress: bool,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            bind: "tcp://*:5558".into(),
            results: None,
            resume: false,
            overwrite: false,
            heartbeat: Heartbeat::default(),
            final_stats_wait: Duration::from_secs(1),
            progress: false,
            timeline: None,
            resume_advice: None,
            access: crate::auth::Access::default(),
            trace: None,
            outputs: crate::outputs::OutputsConfig::default(),
            max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
            compress: true,
        }
    }
}

/// A sink with its results file open and its socket bound.
pub struct Sink {
    config: SinkConfig,
    socket: zmq::Socket,
    /// The authentication handler guarding the socket, when there is one.
    gate: Option<crate::auth::Gate>,
    endpoint: String,
    file: Option<ResultsFile>,
    recovered: Option<RecoveredResults>,
}

impl Sink {
    pub fn bind(ctx: &zmq::Context, config: SinkConfig) -> anyhow::Result<Sink> {
        if config.resume && config.results.is_none() {
            bail!("--resume needs --results FILE: the file is what the sink resumes from");
        }
        if config.resume && config.overwrite {
            bail!("--resume and --overwrite contradict each other: continue the results file, or replace it");
        }
        config.access.check_exposure(&config.bind, "--bind")?;
        config.outputs.check(config.resume, config.overwrite)?;
        if let Some(path) = &config.trace {
            crate::files::check_writable(path, "--timeline")?;
        }
        // The results file first: a path that cannot be written fails before anything binds.
        let (file, recovered) = match &config.results {
            None => (None, None),
            Some((path, format)) if config.resume => {
                let (file, recovered) = ResultsFile::resume(path, *format)?;
                match &recovered {
                    Some(r) => log::warn!(
                        "resuming batch {:016x} from {}: {} results already held",
                        r.header.batch,
                        path.display(),
                        r.records.len()
                    ),
                    None => log::warn!(
                        "--resume: {} holds no results yet; starting afresh",
                        path.display()
                    ),
                }
                (Some(file), recovered)
            }
            Some((path, format)) => (
                Some(ResultsFile::create(path, *format, config.overwrite)?),
                None,
            ),
        };
        let gate = crate::auth::Gate::start(ctx, &config.access, "sink")?;
        let (socket, endpoint) = sockets::bind(
            ctx,
            zmq::ROUTER,
            "results",
            &config.bind,
            "--bind",
            gate.as_ref(),
            config.max_payload,
        )?;
        socket.set_router_mandatory(true)?;
        sockets::never_stop_input(&socket)?;
        // A reconnecting worker takes its name over at once (see the ventilator).
        socket.set_router_handover(true)?;
        Ok(Sink {
            config,
            socket,
            gate,
            endpoint,
            file,
            recovered,
        })
    }

    /// The endpoint workers and the ventilator connect to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The batch id, when the resumed results file holds all of that batch: [`Sink::run`]
    /// then reports it without waiting for anyone.
    pub fn holds_whole_batch(&self) -> Option<u64> {
        self.recovered
            .as_ref()
            .filter(|r| r.is_complete())
            .map(|r| r.header.batch)
    }

    /// Collects one batch and returns its report. A sink stopped before the batch is
    /// complete says how to finish it.
    pub fn run(self, shutdown: &Shutdown) -> anyhow::Result<Report> {
        let Sink {
            config,
            socket,
            gate,
            endpoint,
            mut file,
            recovered,
        } = self;
        let collect = CollectConfig {
            heartbeat: config.heartbeat,
            final_stats_wait: config.final_stats_wait,
            endpoint: endpoint.clone(),
            results_path: config
                .results
                .as_ref()
                .map(|(path, _)| path.display().to_string()),
            resume_advice: config.resume_advice.clone(),
            codecs: crate::protocol::codecs(config.compress),
        };
        let mut trace = config
            .trace
            .as_ref()
            .map(|_| crate::trace::Trace::default());
        let mut outputs = crate::outputs::Outputs::new(config.outputs.clone(), config.max_payload);
        // Outputs received in this run, as they crossed the wire and uncompressed.
        let received = crate::protocol::received_bytes();
        let outcome = collect_batch(
            collect,
            &config,
            &socket,
            file.as_mut(),
            &mut outputs,
            recovered,
            trace.as_mut(),
            shutdown,
        );
        let refused = gate.as_ref().map(crate::auth::Gate::counter);
        let (mut report, job, side) = match outcome {
            Ok(collected) => collected,
            Err(e) => {
                // The socket closes before its authentication handler stops: no
                // connection is ever without one.
                drop(socket);
                drop(gate);
                return Err(e);
            }
        };
        let moved = crate::protocol::received_bytes().since(received);
        report.wire = crate::report::WireReport::new(
            (report.wire.inputs_wire_bytes, report.wire.inputs_bytes),
            (moved.outputs_wire, moved.outputs),
        );
        // The live view hears the files being finished, then finished.
        let side_to = side;
        let tell = |side: &crate::protocol::SinkSide| {
            if let Some((to, batch, _)) = &side_to {
                let message = crate::protocol::Message::SinkSide {
                    batch: *batch,
                    side: side.clone(),
                };
                sockets::send_to(&socket, to, &message.encode());
            }
        };
        let mut side = side_to
            .as_ref()
            .map(|(_, _, s)| s.clone())
            .unwrap_or_default();
        let finished = match job {
            Some(job) => {
                // The picture and an assembled output are written now: the batch is
                // finished when they are on disk.
                if !side.picture.is_empty() {
                    side.picture_state = crate::protocol::PictureState::Writing;
                    tell(&side);
                }
                let writing = std::time::Instant::now();
                let finished = outputs.finish(&job);
                report.finished_ms += writing.elapsed().as_secs_f64() * 1000.0;
                report.picture = config
                    .outputs
                    .image
                    .as_ref()
                    .map(|p| p.display().to_string());
                finished
            }
            None => Ok(()),
        };
        if !side.picture.is_empty() {
            side.picture_state = match finished {
                Ok(()) => crate::protocol::PictureState::Written,
                Err(_) => crate::protocol::PictureState::Failed,
            };
        }
        side.outputs_written = outputs.written();
        (side.hits, side.first_hits) = outputs.hits_so_far(crate::protocol::SIDE_HITS);
        tell(&side);
        drop(socket);
        drop(gate);
        finished?;
        report.refused += refused.map_or(0, |r| r.load(std::sync::atomic::Ordering::Relaxed));
        report.outputs = outputs.written();
        report.outputs_dir = config.outputs.dir.as_ref().map(|d| d.display().to_string());
        report.hits = outputs.hits();
        if let (Some(trace), Some(path)) = (&trace, &config.trace) {
            trace.write(path)?;
            log::info!("timeline written to {}", path.display());
        }
        Ok(report)
    }
}

/// Collects one batch on `socket` and returns its report, with the batch's job when it
/// was announced in this run.
#[allow(clippy::too_many_arguments)]
fn collect_batch(
    collect: CollectConfig,
    config: &SinkConfig,
    socket: &zmq::Socket,
    file: Option<&mut ResultsFile>,
    outputs: &mut crate::outputs::Outputs,
    recovered: Option<RecoveredResults>,
    trace: Option<&mut crate::trace::Trace>,
    shutdown: &Shutdown,
) -> anyhow::Result<Collected> {
    let endpoint = collect.endpoint.clone();
    let mut c = Collector::new(collect, recovered, Instant::now(), crate::worker::unix_ms());
    if c.recovered_complete() {
        return c
            .report_recovered(Instant::now())
            .map(|r| (r, None, None))
            .ok_or_else(|| anyhow!("no batch was collected"));
    }
    log::info!("waiting for a batch on {endpoint}");
    crate::events::emit(&crate::events::Note::Ready { backend: None });
    let writers = match &config.outputs.dir {
        Some(_) => Some(crate::outputs::Writers::start(
            crate::outputs::Writers::threads(),
            std::sync::Arc::new(crate::outputs::write_output),
        )?),
        None => None,
    };
    let mut pump = Pump {
        socket,
        file,
        outputs,
        config,
        trace,
        bar: None,
        writers,
        c: &mut c,
        shutdown,
        waiting: Default::default(),
        next_ticket: 0,
        unwritten_bytes: 0,
        finished: false,
        next_side: Instant::now(),
        syncs: (0, 0, 0),
    };
    let outcome = driver::run(&mut pump);
    if let Some(bar) = pump.bar.take() {
        crate::logging::set_progress_bar(None);
        bar.finish_and_clear();
    }
    let side = if outcome.is_ok() { pump.side() } else { None };
    drop(pump);
    if let Err(e) = &outcome {
        c.say_how_to_resume(Interrupted::is(e));
    }
    outcome?;
    let job = c.job();
    c.report(Instant::now())
        .map(|r| (r, job, side))
        .ok_or_else(|| anyhow!("no batch was collected"))
}

/// What [`collect_batch`] returns: the report, the batch's job when it was announced in
/// this run, and the sink's side as the live view last heard it, with where it goes.
type Collected = (
    Report,
    Option<crate::batch::Job>,
    Option<(Vec<u8>, u64, crate::protocol::SinkSide)>,
);

/// The sink's host for the [`driver`]: its socket brings the collector's events and
/// carries its messages; its files hold the results.
///
/// Output files (`--outputs`) are written on [`Writers`](crate::outputs::Writers)'
/// threads, so the socket is read while they are. What the collector asked for after a
/// result with an output file waits, in order, until that file is whole under its name:
/// its record, a sync, the ventilator's word that it is held. Only messages that claim
/// nothing is held (a welcome, a refusal, a heartbeat) go out before, and a welcome or a
/// refusal only to a peer with no message waiting.
struct Pump<'a> {
    socket: &'a zmq::Socket,
    file: Option<&'a mut ResultsFile>,
    outputs: &'a mut crate::outputs::Outputs,
    config: &'a SinkConfig,
    trace: Option<&'a mut crate::trace::Trace>,
    bar: Option<indicatif::ProgressBar>,
    writers: Option<crate::outputs::Writers>,
    c: &'a mut Collector,
    shutdown: &'a Shutdown,
    /// The collector's commands not yet carried out, in its order.
    waiting: std::collections::VecDeque<Waiting>,
    /// The ticket of the next results whose files are submitted.
    next_ticket: u64,
    /// Bytes of outputs submitted and not yet written.
    unwritten_bytes: usize,
    /// The collector said the batch is finished, and everything before is carried out.
    finished: bool,
    /// When the sink's side next goes to the live view.
    next_side: Instant,
    /// Syncs of the results file and the outputs directory: how many, their total and
    /// longest µs.
    syncs: (u64, u64, u64),
}

/// How often the sink tells the ventilator's live view its side.
const SIDE_EVERY: Duration = Duration::from_millis(500);

/// A command held back until the output files before it are written.
enum Waiting {
    /// Results whose records wait for `files` more of their output files.
    Record {
        ticket: u64,
        files: usize,
        header: crate::report::BatchHeader,
        results: Vec<crate::protocol::TaskResult>,
        worker: String,
        backend: String,
    },
    Command(SinkCommand),
}

impl Waiting {
    fn ready(&self) -> bool {
        !matches!(self, Waiting::Record { files, .. } if *files > 0)
    }
}

/// Longest the pump sleeps in one poll, so a shutdown request is seen promptly.
const MAX_POLL: Duration = Duration::from_millis(100);
/// Most bytes of outputs waiting to be written before the pump stops reading results
/// until the disk catches up.
const MAX_UNWRITTEN_BYTES: usize = 256 << 20;

impl Pump<'_> {
    /// The sink's side for the live view, and where it goes; none before the batch is
    /// known.
    fn side(&self) -> Option<(Vec<u8>, u64, crate::protocol::SinkSide)> {
        let (to, batch, mut side) = self.c.side()?;
        side.results_bytes = self.file.as_deref().map_or(0, ResultsFile::bytes);
        (side.syncs, side.sync_us, side.sync_max_us) = self.syncs;
        let config = self.outputs.config();
        side.outputs = config
            .dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        side.outputs_written = self.outputs.written();
        (side.hits, side.first_hits) = self.outputs.hits_so_far(crate::protocol::SIDE_HITS);
        if let Some(image) = &config.image {
            side.picture = image.display().to_string();
            side.picture_state = crate::protocol::PictureState::Waiting;
        }
        Some((to.to_vec(), batch, side))
    }

    /// Tells the live view the sink's side, when it is time to.
    fn tell_side(&mut self) {
        let now = Instant::now();
        if now < self.next_side {
            return;
        }
        // The first as soon as the batch is known: right behind the acknowledgement, so
        // the live view hears of a picture before the batch can be over.
        if let Some((to, batch, side)) = self.side() {
            self.next_side = now + SIDE_EVERY;
            // A ventilator gone is found out by the messages that matter.
            let message = crate::protocol::Message::SinkSide { batch, side };
            sockets::send_to(self.socket, &to, &message.encode());
        }
    }

    /// On a stop: waits for the output files submitted, then carries out what waited for
    /// them. A second Ctrl-C exits at once, as ever.
    fn settle(&mut self) -> anyhow::Result<()> {
        while let Some(writers) = &self.writers {
            if self.waiting.iter().all(Waiting::ready) {
                break;
            }
            let mut items = [zmq::PollItem::from_fd(writers.wake_fd(), zmq::POLLIN)];
            sockets::poll(
                &mut items,
                MAX_POLL.as_millis() as i64,
                "the outputs' writers",
            )?;
            self.take_written()?;
        }
        // Messages that fail now go nowhere: the sink is stopping.
        self.release(&mut Vec::new())
    }

    /// Counts the output files the writers have finished; the first that failed fails the
    /// sink.
    fn take_written(&mut self) -> anyhow::Result<()> {
        let Some(writers) = &self.writers else {
            return Ok(());
        };
        for written in writers.written() {
            written.outcome?;
            self.unwritten_bytes = self.unwritten_bytes.saturating_sub(written.bytes);
            self.outputs.renamed();
            for waiting in &mut self.waiting {
                if let Waiting::Record { ticket, files, .. } = waiting {
                    if *ticket == written.ticket {
                        *files = files.saturating_sub(1);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a message may go out before the commands waiting for output files: one
    /// that claims nothing is held, to a peer with nothing waiting.
    fn may_go_first(&self, to: &[u8], message: &crate::protocol::Message) -> bool {
        use crate::protocol::Message;
        match message {
            _ if self.waiting.is_empty() => true,
            // "Alive": it may overtake anything.
            Message::Heartbeat { .. } => true,
            Message::Welcome { .. } | Message::Refused { .. } => !self
                .waiting
                .iter()
                .any(|w| matches!(w, Waiting::Command(SinkCommand::Send { to: t, .. }) if t == to)),
            _ => false,
        }
    }

    fn send(
        &mut self,
        to: Vec<u8>,
        message: crate::protocol::Message,
        failed: &mut Vec<SinkEvent>,
    ) {
        if sockets::send_to(self.socket, &to, &message.encode()) == SendOutcome::Gone {
            log::debug!(
                "{} gone; {} not sent",
                sockets::peer_name(&to),
                message.kind_name()
            );
            failed.push(SinkEvent::Unreachable(to));
        }
    }

    /// Paints and counts held results now, and hands their output files to the writers;
    /// their records wait for the files.
    fn submit(
        &mut self,
        header: crate::report::BatchHeader,
        worker: String,
        backend: String,
        mut results: Vec<crate::protocol::TaskResult>,
    ) -> anyhow::Result<()> {
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.record(&worker, &backend, &results, crate::worker::unix_ms());
        }
        let job = self.c.job().unwrap_or_default();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let mut files = 0;
        // A task given up on has no output.
        for r in results.iter_mut().filter(|r| r.status != Status::Failed) {
            let Some(name) = self.outputs.prepare(&job, r)? else {
                continue;
            };
            let Some(handle) = self.outputs.directory()? else {
                continue;
            };
            // The record reads the search kernel's hits from the output; otherwise the
            // bytes go to the writer.
            let bytes = if header.hits_wanted > 0 {
                r.output.clone()
            } else {
                std::mem::take(&mut r.output)
            };
            match &self.writers {
                Some(writers) => {
                    self.unwritten_bytes += bytes.len();
                    writers.submit(ticket, handle, name, bytes)?;
                    files += 1;
                }
                None => {
                    crate::outputs::write_output(&handle, &name, &bytes)?;
                    self.outputs.renamed();
                }
            }
        }
        self.waiting.push_back(Waiting::Record {
            ticket,
            files,
            header,
            results,
            worker,
            backend,
        });
        Ok(())
    }

    /// Carries out the waiting commands whose output files are written, in order.
    fn release(&mut self, failed: &mut Vec<SinkEvent>) -> anyhow::Result<()> {
        let ready = self.waiting.iter().take_while(|w| w.ready()).count();
        if ready == 0 {
            return Ok(());
        }
        // The output files first, their renames durable, then the records: a record on
        // disk always has its output under its name. One sync of the directory serves
        // every file renamed so far.
        if self
            .waiting
            .iter()
            .take(ready)
            .any(|w| matches!(w, Waiting::Record { .. }))
        {
            self.outputs.sync()?;
        }
        let released: Vec<Waiting> = self.waiting.drain(..ready).collect();
        for waiting in released {
            match waiting {
                Waiting::Record {
                    header,
                    results,
                    worker,
                    backend,
                    ..
                } => {
                    for r in &results {
                        if let Some(timeline) = &self.config.timeline {
                            timeline.held(r.id);
                        }
                        if let Some(file) = self.file.as_deref_mut() {
                            file.record(&header, &worker, &backend, r)?;
                        }
                    }
                }
                Waiting::Command(SinkCommand::Send { to, message }) => {
                    self.send(to, message, failed)
                }
                Waiting::Command(SinkCommand::Sync) => {
                    let started = Instant::now();
                    self.outputs.sync()?;
                    if let Some(file) = self.file.as_deref_mut() {
                        file.sync()?;
                    }
                    let us = started.elapsed().as_micros() as u64;
                    let (n, total, max) = &mut self.syncs;
                    (*n, *total, *max) = (*n + 1, *total + us, (*max).max(us));
                }
                Waiting::Command(SinkCommand::Finished) => self.finished = true,
                Waiting::Command(SinkCommand::Note(note)) => crate::events::emit(&note),
                Waiting::Command(SinkCommand::Stop(why)) => return Err(anyhow::Error::new(why)),
                Waiting::Command(SinkCommand::Record { .. }) => {
                    // Records are submitted, never held back as commands.
                    bail!("a record was held back unsubmitted (a bug in the sink's pump)")
                }
            }
        }
        Ok(())
    }
}

impl driver::Host for Pump<'_> {
    type Machine = Collector;
    type Error = anyhow::Error;

    fn machine(&mut self) -> &mut Collector {
        self.c
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    /// Carries out the collector's commands in order, those after an output file still
    /// being written once it is; over once the batch is finished.
    fn carry_out(
        &mut self,
        commands: &mut Vec<SinkCommand>,
        failed: &mut Vec<SinkEvent>,
    ) -> anyhow::Result<driver::Progress> {
        for command in commands.drain(..) {
            match command {
                SinkCommand::Record {
                    header,
                    worker,
                    backend,
                    results,
                } => self.submit(header, worker, backend, results)?,
                SinkCommand::Send { to, message } if self.may_go_first(&to, &message) => {
                    self.send(to, message, failed)
                }
                SinkCommand::Stop(why) => return Err(anyhow::Error::new(why)),
                SinkCommand::Note(note) => crate::events::emit(&note),
                command => self.waiting.push_back(Waiting::Command(command)),
            }
        }
        self.release(failed)?;
        Ok(if self.finished {
            driver::Progress::Over
        } else {
            driver::Progress::Going
        })
    }
}

impl driver::Transport for Pump<'_> {
    /// A stop asked for: results already received are kept, as they were before writers:
    /// their files finish, then their records.
    fn check(&mut self) -> anyhow::Result<()> {
        if let Err(stop) = self.shutdown.check() {
            self.settle()?;
            return Err(stop.into());
        }
        Ok(())
    }

    /// The live view hears the sink's side when due; the progress bar moves.
    fn after_round(&mut self) -> anyhow::Result<()> {
        self.tell_side();
        if self.config.progress {
            if let Some((held, tasks)) = self.c.progress() {
                // A job's progress is in items (`progress` counts them).
                let unit = match self.c.job() {
                    Some(job) if job.items > 0 => "items",
                    _ => "tasks",
                };
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = progress_bar(tasks as u64, unit);
                    crate::logging::set_progress_bar(Some(bar.clone()));
                    bar
                });
                bar.set_position(held as u64);
            }
        }
        Ok(())
    }

    /// Polls the results socket (and the writers' wake-ups) until the deadline, at most
    /// [`MAX_POLL`]; with too much waiting to be written, results stay on the socket until
    /// the disk catches up.
    fn receive(&mut self, deadline: Instant, events: &mut Vec<SinkEvent>) -> anyhow::Result<()> {
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(MAX_POLL);
        let reading = self.unwritten_bytes <= MAX_UNWRITTEN_BYTES;
        let mut items = vec![self.socket.as_poll_item(if reading {
            zmq::POLLIN
        } else {
            zmq::PollEvents::empty()
        })];
        if let Some(writers) = &self.writers {
            items.push(zmq::PollItem::from_fd(writers.wake_fd(), zmq::POLLIN));
        }
        sockets::poll(&mut items, timeout.as_millis() as i64, "the results socket")?;
        let readable = items[0].is_readable();
        drop(items);
        self.take_written()?;
        if !readable {
            return Ok(());
        }
        let secret = self.config.access.secret.is_some();
        let max_payload = self.config.max_payload;
        sockets::drain(
            self.socket,
            true,
            "the results socket",
            max_payload,
            |inbound| {
                let message = inbound.message.and_then(|message| {
                    if secret {
                        crate::auth::speaks_for_itself(&inbound.user, &inbound.peer, &message)?;
                    }
                    Ok(message)
                });
                events.push(match message {
                    Ok(message) => SinkEvent::FromPeer {
                        routing_id: inbound.peer,
                        message,
                    },
                    Err(why) => SinkEvent::Rejected {
                        peer: sockets::peer_name(&inbound.peer),
                        why,
                    },
                });
                Ok(())
            },
        )
    }
}

/// A progress bar on stderr: tasks (a job's items) held of the batch, rate, time left.
fn progress_bar(total: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(8),
    );
    let template = format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{rate}}/s  ETA {{eta}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        // Rounded as the report rounds rates, not `98.4555/s`.
        let style = style.with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", crate::report::rate(state.per_sec()));
            },
        );
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Job;
    use crate::files::Dir;
    use crate::kernels::Kernel;
    use crate::protocol::{Message, TaskResult, WorkerInfo};
    use std::sync::{mpsc, Arc, Mutex};

    const ENDPOINT: &str = "inproc://big-output";
    const BIG: usize = 256 << 10;

    fn dealer(ctx: &zmq::Context, id: &[u8]) -> zmq::Socket {
        let socket = ctx.socket(zmq::DEALER).unwrap();
        socket.set_identity(id).unwrap();
        // A bound on a hung test, not a timing: each reply comes at once or never.
        socket.set_rcvtimeo(30_000).unwrap();
        socket.connect(ENDPOINT).unwrap();
        socket
    }

    fn receive(socket: &zmq::Socket) -> Message {
        let frame = socket.recv_bytes(0).expect("a reply from the sink");
        Message::decode(&frame).unwrap()
    }

    /// The next message to the ventilator but the sink's side for the live view.
    fn to_ventilator(socket: &zmq::Socket) -> Message {
        loop {
            match receive(socket) {
                Message::SinkSide { .. } => continue,
                message => return message,
            }
        }
    }

    /// Whether the ventilator has a message waiting but the sink's side.
    fn ventilator_has_heard(socket: &zmq::Socket) -> bool {
        while let Ok(frame) = socket.recv_bytes(zmq::DONTWAIT) {
            if !matches!(Message::decode(&frame), Ok(Message::SinkSide { .. })) {
                return true;
            }
        }
        false
    }

    fn worker(name: &str) -> WorkerInfo {
        WorkerInfo {
            name: name.into(),
            session: 1,
            backend: "cpu".into(),
            adapter: String::new(),
            window_hint: 1,
            codecs: 0,
            fill: 0,
        }
    }

    /// A sink's pump on its own thread, writing outputs in `dir` (and records in `results`)
    /// with writers whose `big.out` says it has begun, then waits to be let go.
    struct Gated {
        ctx: zmq::Context,
        shutdown: Shutdown,
        has_begun: mpsc::Receiver<()>,
        let_go: mpsc::Sender<()>,
        pump: std::thread::JoinHandle<anyhow::Result<()>>,
        ventilator: zmq::Socket,
    }

    impl Gated {
        fn start(dir: &std::path::Path, results: Option<std::path::PathBuf>) -> Gated {
            let ctx = zmq::Context::new();
            let socket = ctx.socket(zmq::ROUTER).unwrap();
            socket.set_router_mandatory(true).unwrap();
            socket.bind(ENDPOINT).unwrap();
            let (began, has_begun) = mpsc::channel::<()>();
            let (let_go, wait) = mpsc::channel::<()>();
            let (began, wait) = (Mutex::new(began), Mutex::new(wait));
            let write: Arc<crate::outputs::WriteFile> =
                Arc::new(move |handle: &Dir, name: &str, bytes: &[u8]| {
                    if name == "big.out" {
                        began.lock().unwrap().send(()).unwrap();
                        wait.lock().unwrap().recv().unwrap();
                    }
                    crate::outputs::write_output(handle, name, bytes)
                });
            let shutdown = Shutdown::new();
            let config = SinkConfig {
                outputs: crate::outputs::OutputsConfig {
                    dir: Some(dir.to_owned()),
                    image: None,
                },
                ..SinkConfig::default()
            };
            let pump = {
                let shutdown = shutdown.clone();
                std::thread::spawn(move || {
                    let mut outputs =
                        crate::outputs::Outputs::new(config.outputs.clone(), config.max_payload);
                    let mut file = results
                        .map(|path| ResultsFile::create(&path, ResultsFormat::Jsonl, false))
                        .transpose()?;
                    let writers = crate::outputs::Writers::start(2, write)?;
                    let collect = CollectConfig {
                        heartbeat: config.heartbeat,
                        final_stats_wait: config.final_stats_wait,
                        endpoint: ENDPOINT.into(),
                        results_path: None,
                        resume_advice: None,
                        codecs: crate::protocol::CODEC_LZ4,
                    };
                    let mut c =
                        Collector::new(collect, None, Instant::now(), crate::worker::unix_ms());
                    driver::run(&mut Pump {
                        socket: &socket,
                        file: file.as_mut(),
                        outputs: &mut outputs,
                        config: &config,
                        trace: None,
                        bar: None,
                        writers: Some(writers),
                        c: &mut c,
                        shutdown: &shutdown,
                        waiting: Default::default(),
                        next_ticket: 0,
                        unwritten_bytes: 0,
                        finished: false,
                        next_side: Instant::now(),
                        syncs: (0, 0, 0),
                    })
                })
            };
            let ventilator = dealer(&ctx, b"ventilator");
            let announce = Message::Batch {
                batch: 1,
                session: 1,
                started_unix_ms: crate::worker::unix_ms(),
                task_count: 2,
                expected_ms: 2,
                longest_ms: 1,
                job: Job {
                    kernel: Kernel::User.id(),
                    ..Job::default()
                },
                names: Vec::new(),
            };
            ventilator.send(announce.encode(), 0).unwrap();
            assert!(matches!(
                to_ventilator(&ventilator),
                Message::BatchAck { batch: 1, .. }
            ));
            Gated {
                ctx,
                shutdown,
                has_begun,
                let_go,
                pump,
                ventilator,
            }
        }

        /// Sends task 0's result, whose output is `big.out`, and returns once its writer
        /// has begun.
        fn send_big(&self) -> zmq::Socket {
            let a = dealer(&self.ctx, b"a");
            let big = TaskResult {
                id: 0,
                name: "big".into(),
                output: vec![7; BIG],
                ..TaskResult::default()
            };
            let results = Message::Results {
                batch: 1,
                worker: worker("a"),
                results: vec![big],
            };
            a.send(results.encode(), 0).unwrap();
            self.has_begun.recv().unwrap();
            a
        }

        fn assert_held(&self) {
            let held = to_ventilator(&self.ventilator);
            assert!(
                matches!(&held, Message::Held { batch: 1, ids } if ids == &[0]),
                "{held:?}"
            );
        }
    }

    #[test]
    fn a_big_output_being_written_holds_up_its_held_word_but_not_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Gated::start(dir.path(), None);
        let _a = sink.send_big();
        // While `big.out` is being written, a worker that joins is welcomed...
        let b = dealer(&sink.ctx, b"b");
        b.send(Message::Join(worker("b")).encode(), 0).unwrap();
        assert!(matches!(receive(&b), Message::Welcome { .. }));
        // ... but the ventilator has not heard that task 0 is held, and cannot have: its
        // file is not whole yet.
        assert!(!ventilator_has_heard(&sink.ventilator));
        assert!(!dir.path().join("big.out").exists());
        sink.let_go.send(()).unwrap();
        sink.assert_held();
        assert_eq!(
            std::fs::read(dir.path().join("big.out")).unwrap(),
            vec![7; BIG]
        );
        // The live view hears of the file from the sink's side.
        loop {
            if let Message::SinkSide { batch: 1, side } = receive(&sink.ventilator) {
                if side.outputs_written == 1 {
                    assert_eq!(side.outputs, dir.path().display().to_string());
                    break;
                }
            }
        }
        sink.shutdown.request();
        let stopped = sink.pump.join().unwrap().unwrap_err();
        assert!(Interrupted::is(&stopped), "{stopped:#}");
    }

    #[test]
    fn a_sink_stopped_while_an_output_is_written_records_it_before_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results.jsonl");
        let outputs = dir.path().join("out");
        std::fs::create_dir(&outputs).unwrap();
        let sink = Gated::start(&outputs, Some(results.clone()));
        let _a = sink.send_big();
        sink.shutdown.request();
        sink.let_go.send(()).unwrap();
        // The result received before the stop is held, on disk, file and record.
        sink.assert_held();
        let stopped = sink.pump.join().unwrap().unwrap_err();
        assert!(Interrupted::is(&stopped), "{stopped:#}");
        assert_eq!(
            std::fs::read(outputs.join("big.out")).unwrap(),
            vec![7; BIG]
        );
        let records = std::fs::read_to_string(&results).unwrap();
        assert_eq!(records.lines().count(), 1, "{records}");
        assert!(records.contains("\"task\":0"), "{records}");
    }
}

//! Properties of the dispatcher, on a fake clock, against a model of workers and a sink
//! that do everything peers can do: join, heartbeat, finish, fail, report twice, die,
//! freeze, hoard, flood, heartbeat without working, lose their results, fill their queues,
//! and a sink and a ventilator that restart. After any sequence of those, one honest
//! worker finishes the batch, and every step keeps the invariants.

use super::*;
use crate::driver::{self, Host};
use crate::protocol::{Done, Message, Status, WorkerInfo};
use proptest::prelude::*;

const INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
enum Action {
    /// Worker i greets (a new process if it has none, a heartbeat otherwise).
    Join(u8),
    /// Worker i greets asking for an enormous window.
    Hoard(u8),
    /// Worker i finishes its oldest task (or fails it).
    Finish(u8, bool),
    /// Worker i reports its last finished task again, and sends its result again.
    Repeat(u8),
    /// Worker i's process is killed: its connection is gone.
    Kill(u8),
    /// Worker i hangs: it never sends again, its connection stays.
    Freeze(u8),
    /// Worker i keeps heartbeating and never finishes a task.
    Zombie(u8),
    /// Worker i reports tasks done whose results never reach the sink.
    Lossy(u8),
    /// Worker i says goodbye and goes.
    Bye(u8),
    /// Worker i cannot run the batch's kernel: it declines, drops what it holds, and
    /// keeps heartbeating.
    Decline(u8),
    /// The next tasks sent to worker i find its queue full.
    Full(u8),
    /// Every worker still running heartbeats.
    Beat,
    /// The sink tells the ventilator what it now holds.
    SinkFlush,
    /// The sink restarts keeping this percentage of its results (a results file).
    SinkRestart(u8),
    /// The ventilator restarts with --resume.
    VentRestart,
    /// This many peers greet once, are handed tasks, and hang.
    Flood(u8),
    /// The sink quarantines worker i (`--replicate`: its copies differed twice).
    Quarantine(u8),
    /// Time passes.
    Advance(u16),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u8..6).prop_map(Action::Join),
        1 => (0u8..6).prop_map(Action::Hoard),
        8 => (0u8..6, proptest::bool::weighted(0.1)).prop_map(|(w, f)| Action::Finish(w, f)),
        1 => (0u8..6).prop_map(Action::Repeat),
        1 => (0u8..6).prop_map(Action::Kill),
        1 => (0u8..6).prop_map(Action::Freeze),
        1 => (0u8..6).prop_map(Action::Zombie),
        1 => (0u8..6).prop_map(Action::Lossy),
        1 => (0u8..6).prop_map(Action::Bye),
        1 => (0u8..6).prop_map(Action::Decline),
        1 => (0u8..6).prop_map(Action::Full),
        3 => Just(Action::Beat),
        3 => Just(Action::SinkFlush),
        1 => (0u8..=100).prop_map(Action::SinkRestart),
        1 => Just(Action::VentRestart),
        1 => (1u8..20).prop_map(Action::Flood),
        1 => (0u8..6).prop_map(Action::Quarantine),
        3 => (1u16..800).prop_map(Action::Advance),
    ]
}

#[derive(Debug)]
struct ModelWorker {
    routing_id: Vec<u8>,
    info: WorkerInfo,
    queue: VecDeque<Task>,
    last_done: Option<Task>,
    connected: bool,
    frozen: bool,
    zombie: bool,
    lossy: bool,
    full_next: bool,
    declined: bool,
}

impl ModelWorker {
    fn runs(&self) -> bool {
        self.connected && !self.frozen
    }
    fn honest(&self) -> bool {
        self.runs() && !self.zombie && !self.lossy && !self.declined
    }
}

struct Farm {
    base: Instant,
    t: Duration,
    config: DispatchConfig,
    d: Dispatcher,
    workers: Vec<ModelWorker>,
    /// Worker index for each of the 6 names the actions use.
    named: [Option<usize>; 6],
    sink_held: Vec<bool>,
    /// Held at the sink and not yet told to the ventilator.
    untold: Vec<u32>,
    /// What the ventilator has been told the sink holds (since the sink's last restart).
    told: Vec<bool>,
    /// Session of the ventilator the sink acknowledged last.
    sink_session: Option<u64>,
    duplicates: u64,
    /// `--replicate`: the sink holds an even task only once two workers' copies are in
    /// (or one worker's twice, when no other could run it).
    replicate: bool,
    /// The names whose copies of a replicated task the sink has, while it is not held.
    copies: std::collections::BTreeMap<u32, Vec<String>>,
    /// Workers the sink quarantined: their copies are not believed.
    quarantined: Vec<String>,
    complete: bool,
    stopped: Option<Stopped>,
    next_session: u64,
    /// Workers that declined the batch and were sent tasks by a restarted ventilator: they
    /// decline again.
    redeclined: std::collections::VecDeque<usize>,
    /// What the sink answers the ventilator, not yet delivered.
    from_sink: std::collections::VecDeque<Message>,
    /// Workers told the batch is over, in the order they were told.
    ended: Vec<usize>,
}

impl Farm {
    fn new(workloads: &[u32], window: u32, max_window: u32, replicate: bool) -> Farm {
        let tasks: Vec<Task> = workloads
            .iter()
            .enumerate()
            .map(|(id, &workload_ms)| Task {
                id: id as u32,
                workload_ms,
                ..Default::default()
            })
            .collect();
        let config = DispatchConfig {
            batch_id: 0xba7c,
            session: 1,
            order: (0..tasks.len() as u32).collect(),
            tasks,
            job: Job::default(),
            expected_ms: workloads.iter().map(|&w| u64::from(w)).sum(),
            longest_ms: workloads.iter().copied().max().unwrap_or(0),
            wait_workers: 0,
            wait_timeout: Duration::from_secs(3600),
            window,
            max_window,
            heartbeat: Heartbeat {
                interval: INTERVAL,
                liveness: 5,
            },
            backup: Backup {
                factor: 4.0,
                slack: Duration::from_millis(500),
            },
            sink_timeout: Duration::from_secs(3600),
            resume: false,
            shutdown_workers: true,
            endpoint: "tcp://test:1".into(),
            sink: "tcp://test:2".into(),
            fixed_workers: 0,
            chunking: None,
            max_attempts: 3,
            names: Vec::new(),
            observe: true,
            framing: Framing::default(),
        };
        let base = Instant::now();
        let n = workloads.len();
        let mut farm = Farm {
            base,
            t: Duration::ZERO,
            d: Dispatcher::new(config.clone(), base, 0),
            config,
            workers: Vec::new(),
            named: [None; 6],
            sink_held: vec![false; n],
            untold: Vec::new(),
            told: vec![false; n],
            sink_session: None,
            duplicates: 0,
            replicate,
            copies: std::collections::BTreeMap::new(),
            quarantined: Vec::new(),
            complete: false,
            stopped: None,
            next_session: 2,
            redeclined: Default::default(),
            from_sink: Default::default(),
            ended: Vec::new(),
        };
        farm.event(Event::Tick);
        farm
    }

    fn by_routing_id(&self, id: &[u8]) -> Option<usize> {
        self.workers.iter().position(|w| w.routing_id == id)
    }

    fn event(&mut self, event: Event) {
        driver::deliver(self, event).unwrap_or_else(|never| match never {});
        self.answer();
        self.check();
    }

    /// What the model's peers answered, in the order they answered: a worker that
    /// declined says so again; the sink's acknowledgements, heartbeats and requests.
    fn answer(&mut self) {
        loop {
            if let Some(w) = self.redeclined.pop_front() {
                self.decline(w);
            } else if let Some(message) = self.from_sink.pop_front() {
                if let Message::Held { ids, .. } = &message {
                    ids.iter().for_each(|&i| self.told[i as usize] = true);
                }
                driver::deliver(self, Event::FromSink(message))
                    .unwrap_or_else(|never| match never {});
            } else {
                return;
            }
        }
    }
}

/// The model pump: carries out commands in order, failures straight back.
impl driver::Host for Farm {
    type Machine = Dispatcher;
    type Error = std::convert::Infallible;

    fn machine(&mut self) -> &mut Dispatcher {
        &mut self.d
    }

    fn now(&self) -> Instant {
        self.base + self.t
    }

    fn carry_out(
        &mut self,
        commands: &mut Vec<Command>,
        failed: &mut Vec<Event>,
    ) -> Result<driver::Progress, std::convert::Infallible> {
        // What the live view is told comes before the commands that follow from it (a
        // worker lost before its tasks go to others).
        let first_tasks = commands
            .iter()
            .position(|c| matches!(c, Command::Tasks { .. }))
            .unwrap_or(commands.len());
        assert!(
            !commands[first_tasks..]
                .iter()
                .any(|c| matches!(c, Command::Observed(_))),
            "an observation after tasks: {commands:?}"
        );
        for command in commands.drain(..) {
            match command {
                Command::ToWorker { worker, message } => {
                    let rid = self.d.worker(worker).routing_id.clone();
                    let w = self.by_routing_id(&rid).expect("a worker we know");
                    if !self.workers[w].connected {
                        failed.push(Event::Unreachable(worker));
                    } else if let Message::Refused { .. } = message {
                        self.workers[w].connected = false;
                    } else if let Message::End { .. } = message {
                        self.ended.push(w);
                    }
                }
                Command::Tasks { worker, tasks, .. } if !self.d.worker(worker).alive => {
                    panic!("tasks {tasks:?} sent to worker {worker}, declared gone");
                }
                Command::Tasks { worker, .. } if self.d.worker(worker).declined => {
                    panic!("tasks sent to worker {worker}, which declined the batch");
                }
                Command::Tasks {
                    worker,
                    tasks,
                    again,
                    ..
                } => {
                    for t in &tasks {
                        assert!(
                            !self.told[t.id as usize],
                            "task {} handed out again though the sink holds it",
                            t.id
                        );
                    }
                    let rid = self.d.worker(worker).routing_id.clone();
                    let w = self.by_routing_id(&rid).expect("a worker we know");
                    let mw = &mut self.workers[w];
                    if !mw.connected {
                        failed.push(Event::Unreachable(worker));
                    } else if mw.full_next {
                        mw.full_next = false;
                        failed.push(Event::Bounced {
                            worker,
                            tasks,
                            again,
                        });
                    } else if mw.declined {
                        // A worker that declined says so again (to a restarted
                        // ventilator) and runs nothing.
                        self.redeclined.push_back(w);
                    } else {
                        mw.queue.extend(tasks);
                    }
                }
                Command::Reply {
                    routing_id,
                    message,
                } => {
                    if let (Some(w), Message::Refused { .. }) =
                        (self.by_routing_id(&routing_id), message)
                    {
                        self.workers[w].connected = false;
                    }
                }
                Command::ToSink(Message::Batch { session, .. }) => {
                    if self.sink_session != Some(session) {
                        // A ventilator the sink has not acknowledged: it answers with
                        // what it holds.
                        self.sink_session = Some(session);
                        let held: Vec<u32> = (0..self.sink_held.len() as u32)
                            .filter(|&i| self.sink_held[i as usize])
                            .collect();
                        self.untold.clear();
                        self.from_sink.push_back(Message::BatchAck {
                            batch: self.config.batch_id,
                            held: held.len() as u32,
                        });
                        self.from_sink.push_back(Message::Held {
                            batch: self.config.batch_id,
                            ids: held,
                        });
                    } else {
                        self.from_sink.push_back(Message::Heartbeat {
                            batch: self.config.batch_id,
                        });
                    }
                    // Every copy still wanted, asked for again.
                    self.copies.retain(|&id, _| !self.sink_held[id as usize]);
                    let wanted: Vec<u32> = self.copies.keys().copied().collect();
                    let again: Vec<Message> = wanted.into_iter().map(|id| self.again(id)).collect();
                    self.from_sink.extend(again);
                }
                // A task given up on (--max-attempts) counts as finished, failed, as the
                // sink counts it.
                Command::ToSink(Message::GaveUp { id, .. }) if self.sink_session.is_some() => {
                    let i = id as usize;
                    if i < self.sink_held.len() && !self.sink_held[i] {
                        self.sink_held[i] = true;
                        self.untold.push(id);
                    }
                }
                Command::ToSink(_) => {}
                Command::Complete => {
                    assert!(
                        self.sink_held.iter().all(|&h| h),
                        "complete, yet a task never reached the sink"
                    );
                    assert_eq!(self.d.counters().held, self.d.len());
                    self.complete = true;
                }
                Command::Stop(why) => self.stopped = Some(why),
                // What is noted is what the dispatcher now believes.
                Command::Note(crate::events::Note::Phase { phase }) => {
                    assert_eq!(phase, self.d.phase_name());
                }
                Command::Note(crate::events::Note::Worker { name, state, .. }) => {
                    // A name may have had several slots (a worker that reconnected):
                    // one that joined is alive, one that was lost is not.
                    let alive: Vec<bool> = (0..self.d.workers().len() as WorkerId)
                        .filter(|&w| self.d.worker(w).info.name == name)
                        .map(|w| self.d.worker(w).alive)
                        .collect();
                    assert!(!alive.is_empty(), "{name} noted, not on the roster");
                    let joined = state == "joined";
                    assert!(alive.contains(&joined), "{name}: {state}, alive {alive:?}");
                }
                Command::Note(_) => {}
                // What the live view is told agrees with what the dispatcher believes.
                Command::Observed(Observed::Lost { worker }) => {
                    assert!(!self.d.worker(worker).alive, "{worker} lost, yet alive");
                }
                Command::Observed(Observed::Held { ids }) => {
                    assert!(ids.iter().all(|&id| (id as usize) < self.d.len()));
                }
                Command::Observed(_) => {}
            }
        }
        Ok(driver::Progress::Going)
    }
}

impl Farm {
    fn decline(&mut self, w: usize) {
        let batch = self.config.batch_id;
        self.send(
            w,
            Message::Decline {
                batch,
                reason: "cannot run this kernel".into(),
            },
        );
    }

    fn send(&mut self, w: usize, message: Message) {
        let routing_id = self.workers[w].routing_id.clone();
        self.event(Event::FromWorker {
            routing_id,
            message,
        });
    }

    fn spawn(&mut self, name: &str, window_hint: u16) -> usize {
        let session = self.next_session;
        self.next_session += 1;
        let info = WorkerInfo {
            name: name.into(),
            session,
            backend: "sleep".into(),
            adapter: String::new(),
            window_hint,
            codecs: 0,
            fill: 0,
        };
        self.workers.push(ModelWorker {
            routing_id: format!("{name}/{session}").into_bytes(),
            info,
            queue: VecDeque::new(),
            last_done: None,
            connected: true,
            frozen: false,
            zombie: false,
            lossy: false,
            full_next: false,
            declined: false,
        });
        self.workers.len() - 1
    }

    fn greet(&mut self, i: u8, window_hint: u16) {
        let slot = usize::from(i);
        let w = match self.named[slot] {
            Some(w) if self.workers[w].connected => w,
            // The process is gone (or never was): a new one under the same name.
            _ => {
                let w = self.spawn(&format!("w{i}"), window_hint);
                self.named[slot] = Some(w);
                w
            }
        };
        if self.workers[w].runs() {
            self.workers[w].info.window_hint = window_hint;
            let info = self.workers[w].info.clone();
            self.send(w, Message::Hello(info));
        }
    }

    fn named(&self, i: u8) -> Option<usize> {
        self.named[usize::from(i)]
    }

    fn finish(&mut self, w: usize, fail: bool) {
        let worker = &mut self.workers[w];
        if !worker.runs() || worker.zombie {
            return;
        }
        let Some(task) = worker.queue.pop_front() else {
            return;
        };
        worker.last_done = Some(task);
        self.deliver(w, task, fail);
    }

    fn deliver(&mut self, w: usize, task: Task, fail: bool) {
        let status = if fail { Status::Failed } else { Status::Ok };
        let mut again = None;
        if !fail && !self.workers[w].lossy {
            let i = task.id as usize;
            if self.sink_held[i] {
                self.duplicates += 1;
            } else if self.replicate && i % 2 == 0 {
                let name = self.workers[w].info.name.clone();
                let copies = self.copies.entry(task.id).or_default();
                let believed = !self.quarantined.contains(&name);
                let held = believed
                    && if copies.contains(&name) {
                        copies.len() == 1
                    } else {
                        copies.push(name);
                        copies.len() >= 2
                    };
                if held {
                    self.copies.remove(&task.id);
                    self.sink_held[i] = true;
                    self.untold.push(task.id);
                } else {
                    again = Some(self.again(task.id));
                }
            } else {
                self.sink_held[i] = true;
                self.untold.push(task.id);
            }
        }
        let done = Done {
            id: task.id,
            status,
            wall_us: task.workload_ms * 1000,
            kernel_us: 0,
            items: task.items,
            ..Done::default()
        };
        self.send(
            w,
            Message::Done {
                batch: self.config.batch_id,
                done: vec![done],
            },
        );
        if let (Some(again), Some(_)) = (again, self.sink_session) {
            self.event(Event::FromSink(again));
        }
    }

    /// The sink asks for one more copy of replicated task `id`, from a worker whose copy
    /// it does not have and whom it did not quarantine.
    fn again(&self, id: u32) -> Message {
        let mut exclude: Vec<String> = self.copies.get(&id).cloned().unwrap_or_default();
        exclude.extend(self.quarantined.iter().cloned());
        exclude.sort_unstable();
        exclude.dedup();
        Message::Again {
            batch: self.config.batch_id,
            id,
            first: 0,
            items: 0,
            exclude,
        }
    }

    fn sink_flush(&mut self) {
        if self.sink_session.is_none() {
            return;
        }
        let ids = std::mem::take(&mut self.untold);
        ids.iter().for_each(|&i| self.told[i as usize] = true);
        let batch = self.config.batch_id;
        self.event(Event::FromSink(Message::Held { batch, ids }));
        if self.sink_held.iter().all(|&h| h) {
            self.event(Event::FromSink(Message::Complete { batch }));
        }
    }

    fn beat(&mut self) {
        for w in 0..self.workers.len() {
            if self.workers[w].runs() {
                let info = self.workers[w].info.clone();
                self.send(w, Message::Hello(info));
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.t += by;
        self.event(Event::Tick);
        // What a tick's consequences made due (the tail reached as the sink's word came
        // back) is fired by the tick the pump makes at once: after it, nothing is due, so
        // the pump never spins on a deadline passed.
        if !self.d.is_over() && self.d.next_deadline() <= self.now() {
            self.event(Event::Tick);
        }
        if !self.d.is_over() {
            assert!(
                self.d.next_deadline() > self.now(),
                "a timer still due after a tick, in phase {}: {:?} in tail {} held {} of {}",
                self.d.phase_name(),
                self.d.timers,
                self.d.in_tail(),
                self.d.counters().held,
                self.d.len()
            );
        }
    }

    fn apply(&mut self, action: &Action) {
        match *action {
            Action::Join(i) => self.greet(i, 1),
            Action::Hoard(i) => self.greet(i, u16::MAX),
            Action::Finish(i, fail) => {
                if let Some(w) = self.named(i) {
                    self.finish(w, fail)
                }
            }
            Action::Repeat(i) => {
                if let Some(w) = self.named(i) {
                    if let (true, Some(task)) = (self.workers[w].runs(), self.workers[w].last_done)
                    {
                        self.deliver(w, task, false);
                    }
                }
            }
            Action::Kill(i) => {
                if let Some(w) = self.named(i) {
                    self.workers[w].connected = false;
                }
            }
            Action::Freeze(i) => {
                if let Some(w) = self.named(i) {
                    self.workers[w].frozen = true;
                }
            }
            Action::Zombie(i) => {
                if let Some(w) = self.named(i) {
                    self.workers[w].zombie = true;
                }
            }
            Action::Lossy(i) => {
                if let Some(w) = self.named(i) {
                    self.workers[w].lossy = true;
                }
            }
            Action::Bye(i) => {
                if let Some(w) = self.named(i) {
                    if self.workers[w].runs() {
                        self.send(w, Message::Bye);
                        self.workers[w].connected = false;
                    }
                }
            }
            Action::Decline(i) => {
                if let Some(w) = self.named(i) {
                    if self.workers[w].runs() {
                        self.workers[w].declined = true;
                        self.workers[w].queue.clear();
                        self.decline(w);
                    }
                }
            }
            Action::Full(i) => {
                if let Some(w) = self.named(i) {
                    self.workers[w].full_next = true;
                }
            }
            Action::Beat => self.beat(),
            Action::SinkFlush => self.sink_flush(),
            Action::SinkRestart(keep) => {
                for (id, held) in self.sink_held.iter_mut().enumerate() {
                    if *held && (id as u64 * 2_654_435_761) % 100 >= u64::from(keep) {
                        *held = false;
                    }
                }
                self.untold.clear();
                self.told.iter_mut().for_each(|t| *t = false);
                self.sink_session = None;
                self.copies.clear();
                self.quarantined.clear();
                self.event(Event::Tick);
            }
            Action::VentRestart => {
                let mut config = self.config.clone();
                config.resume = true;
                config.session = self.next_session;
                self.next_session += 1;
                self.d = Dispatcher::new(config, self.now(), 0);
                self.told.iter_mut().for_each(|t| *t = false);
                self.event(Event::Tick);
            }
            Action::Flood(count) => {
                let mut flood = Vec::new();
                for _ in 0..count {
                    let w = self.spawn(&format!("flood{}", self.next_session), u16::MAX);
                    let info = self.workers[w].info.clone();
                    self.send(w, Message::Hello(info));
                    flood.push(w);
                }
                self.event(Event::Tick);
                flood.iter().for_each(|&w| self.workers[w].frozen = true);
            }
            Action::Advance(ms) => self.advance(Duration::from_millis(u64::from(ms))),
            Action::Quarantine(i) => {
                if let Some(w) = self.named(i) {
                    let name = self.workers[w].info.name.clone();
                    if self.replicate && !self.quarantined.contains(&name) {
                        self.quarantined.push(name.clone());
                        if self.sink_session.is_some() {
                            let batch = self.config.batch_id;
                            self.event(Event::FromSink(Message::Quarantine {
                                batch,
                                worker: name,
                                reason: "its copies differed twice".into(),
                            }));
                        }
                    }
                }
            }
        }
        self.event(Event::Tick);
    }

    /// The invariants, after every event.
    fn check(&self) {
        let d = &self.d;
        let n = d.len();
        let mut assigned = vec![0u32; d.workers().len()];
        let mut pending = 0;
        for id in 0..n as u32 {
            match d.task_state(id) {
                TaskState::Assigned => {
                    let owner = d.owner(id).expect("an assigned task has an owner");
                    assert!(
                        d.worker(owner).alive,
                        "task {id} assigned to worker {owner}, declared gone"
                    );
                    assigned[owner as usize] += 1;
                }
                TaskState::Pending | TaskState::Requeued => pending += 1,
                _ => {}
            }
        }
        assert_eq!(pending, d.pending_count(), "pending count drifted");
        if let Err(e) = d.audit() {
            panic!("{e}");
        }
        let cap = self
            .config
            .window
            .max(MAX_HINTED_WINDOW)
            .max(self.config.max_window);
        for (id, w) in d.workers().iter().enumerate() {
            if w.alive {
                assert_eq!(w.assigned, assigned[id], "worker {id}'s credit drifted");
            }
            assert!(
                assigned[id] <= cap,
                "worker {id} holds {} tasks, more than any credit ({cap})",
                assigned[id]
            );
        }
        // Memory grows with the batch and the workers, not with time.
        let bound = 4 * n + 4 * d.workers().len() + 64;
        assert!(
            d.queue_entries() <= bound,
            "{} queue entries for {n} tasks and {} workers",
            d.queue_entries(),
            d.workers().len()
        );
        // Only a fixed farm whose workers all declined may stop.
        assert!(
            self.stopped.is_none()
                || (self.config.fixed_workers > 0
                    && matches!(self.stopped, Some(Stopped::AllDeclined { .. }))),
            "stopped: {:?}",
            self.stopped
        );
    }

    /// One honest worker joins; everyone honest works and heartbeats; the batch must end.
    fn finish_batch(&mut self) {
        let finisher = self.spawn("finisher", 1);
        let info = self.workers[finisher].info.clone();
        self.send(finisher, Message::Hello(info));
        for _ in 0..5_000 {
            if self.complete {
                break;
            }
            for w in 0..self.workers.len() {
                while self.workers[w].honest() && !self.workers[w].queue.is_empty() {
                    self.finish(w, false);
                }
            }
            self.beat();
            self.sink_flush();
            self.advance(INTERVAL);
        }
        assert!(
            self.complete,
            "the batch did not finish with an honest worker: {} of {} held, {} pending",
            self.d.counters().held,
            self.d.len(),
            self.d.pending_count()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_interleaving_ends_with_every_task_held_once(
        workloads in proptest::collection::vec(prop_oneof![1 => Just(0u32), 4 => 1u32..50], 1..40),
        window in 1u32..4,
        max_window in 1u32..10,
        actions in proptest::collection::vec(action(), 0..120),
        replicate in proptest::bool::weighted(0.3),
    ) {
        let mut farm = Farm::new(&workloads, window, max_window, replicate);
        for a in &actions {
            farm.apply(a);
        }
        farm.finish_batch();
    }
}

/// The framing of each `Tasks` command the dispatcher issues in answer to `event`:
/// (tasks, kernel first, compressed).
fn framed(
    d: &mut Dispatcher,
    now: Instant,
    event: Event,
    out: &mut Vec<Command>,
) -> Vec<(usize, bool, bool)> {
    out.clear();
    d.handle(now, event, out);
    d.handle(now, Event::Tick, out);
    out.iter()
        .filter_map(|c| match c {
            Command::Tasks {
                tasks,
                kernel,
                compress,
                ..
            } => Some((tasks.len(), *kernel, *compress)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_user_kernel_goes_before_a_workers_first_task_and_after_each_greeting_inputs_one_a_message() {
    let mut farm = Farm::new(&[10; 40], 4, 8, false);
    farm.config.framing = Framing {
        kernel: true,
        inputs: true,
        compress: true,
    };
    let now = farm.now();
    let mut d = Dispatcher::new(farm.config.clone(), now, 0);
    let mut out = Vec::new();
    d.handle(now, Event::Tick, &mut out);
    let hello = |codecs: u8| Event::FromWorker {
        routing_id: b"w/1".to_vec(),
        message: Message::Hello(WorkerInfo {
            name: "w".into(),
            session: 1,
            backend: "software".into(),
            adapter: String::new(),
            window_hint: 4,
            codecs,
            fill: 0,
        }),
    };
    d.handle(now, hello(crate::protocol::CODEC_LZ4), &mut out);
    let ack = Message::BatchAck {
        batch: farm.config.batch_id,
        held: 0,
    };
    // Its first task, alone until it reports (a probe): the kernel with it, compressed.
    let first = framed(&mut d, now, Event::FromSink(ack), &mut out);
    assert_eq!(first, [(1, true, true)]);
    // A greeting (perhaps after a reconnect, which drops what was queued): the kernel
    // goes again with the next task; a worker that no longer speaks LZ4 gets raw inputs.
    let done = Message::Done {
        batch: farm.config.batch_id,
        done: vec![Done {
            id: 0,
            status: Status::Ok,
            wall_us: 10_000,
            kernel_us: 0,
            items: 0,
            ..Done::default()
        }],
    };
    d.handle(now, hello(0), &mut out);
    let next = framed(
        &mut d,
        now,
        Event::FromWorker {
            routing_id: b"w/1".to_vec(),
            message: done,
        },
        &mut out,
    );
    assert_eq!(next.first(), Some(&(1, true, false)), "{next:?}");
    // Measured now, it fills its window: one task a command, the kernel only before the
    // first.
    assert!(next.len() >= 2, "{next:?}");
    assert!(
        next[1..].iter().all(|&f| f == (1, false, false)),
        "{next:?}"
    );
    // A full queue bounces the tasks, and perhaps the kernel: it goes again.
    let bounced = out
        .iter()
        .rev()
        .find_map(|c| match c {
            Command::Tasks {
                worker,
                tasks,
                again,
                ..
            } => Some((*worker, tasks.clone(), again.clone())),
            _ => None,
        })
        .expect("tasks went out");
    let (worker, tasks, again) = bounced;
    let after = framed(
        &mut d,
        now,
        Event::Bounced {
            worker,
            tasks,
            again,
        },
        &mut out,
    );
    assert_eq!(after.first().map(|f| f.1), Some(true), "{after:?}");
}

#[test]
fn a_hoarder_gets_one_task_until_it_reports_then_no_more_than_its_window() {
    let mut farm = Farm::new(&[10; 200], 2, 8, false);
    farm.apply(&Action::Hoard(0));
    farm.apply(&Action::Join(1));
    let w = farm.named(0).expect("the hoarder joined");
    assert_eq!(
        farm.workers[w].queue.len(),
        1,
        "a worker not yet measured holds one task"
    );
    farm.apply(&Action::Finish(0, false));
    let held = farm.workers[w].queue.len();
    assert!(
        held <= MAX_HINTED_WINDOW as usize,
        "the hoarder holds {held} tasks"
    );
    assert!(
        held >= 2,
        "the hoarder holds {held} tasks: not even its window"
    );
    farm.finish_batch();
}

#[test]
fn a_zombie_that_heartbeats_has_its_tasks_backed_up() {
    let mut farm = Farm::new(&[10; 6], 2, 8, false);
    farm.apply(&Action::Join(0));
    farm.apply(&Action::Zombie(0));
    farm.apply(&Action::Join(1));
    // Well past the straggle bound (4 × 10 ms + 500 ms), heartbeating all along.
    for _ in 0..10 {
        farm.apply(&Action::Beat);
        farm.apply(&Action::Advance(100));
    }
    assert!(
        farm.d.counters().backups > 0,
        "no backup for the zombie's tasks"
    );
    let zombie = farm.d.workers().iter().position(|w| w.info.name == "w0");
    assert!(zombie.is_some_and(|z| farm.d.workers()[z].stalled));
    farm.finish_batch();
}

#[test]
fn a_flood_of_vanishing_peers_costs_a_few_tasks_each_and_the_batch_ends() {
    let mut farm = Farm::new(&[0; 5_000], 2, 2048, false);
    farm.apply(&Action::Join(0));
    for _ in 0..20 {
        farm.apply(&Action::Flood(19));
    }
    // A peer that never reported is on probation: at most --window tasks of a stream,
    // however deep a pipeline it claims.
    let flood: Vec<&ModelWorker> = farm
        .workers
        .iter()
        .filter(|w| w.info.name.starts_with("flood"))
        .collect();
    assert_eq!(flood.len(), 380);
    assert!(flood.iter().all(|w| w.queue.len() <= 2));
    assert!(flood.iter().any(|w| !w.queue.is_empty()));
    farm.finish_batch();
}

#[test]
fn a_name_taken_by_a_live_worker_is_refused_and_a_dead_ones_is_handed_over() {
    let mut farm = Farm::new(&[10; 4], 2, 8, false);
    farm.apply(&Action::Join(0));
    let first = farm.named(0).expect("joined");
    // A second process with the same name while the first is connected: refused.
    let second = farm.spawn("w0", 1);
    let info = farm.workers[second].info.clone();
    farm.send(second, Message::Hello(info));
    farm.event(Event::Tick);
    assert!(
        !farm.workers[second].connected,
        "the second w0 was not refused"
    );
    // The first one dies; a third takes the name at once.
    farm.workers[first].connected = false;
    let third = farm.spawn("w0", 1);
    let info = farm.workers[third].info.clone();
    farm.send(third, Message::Hello(info));
    farm.event(Event::Tick);
    assert!(
        farm.workers[third].connected,
        "the name of a dead worker was not handed over"
    );
    assert!(
        !farm.workers[third].queue.is_empty(),
        "the new w0 got no tasks"
    );
    farm.finish_batch();
}

#[test]
fn workers_that_go_quiet_and_come_back_finish_the_batch_themselves() {
    let mut farm = Farm::new(&[50; 20], 2, 8, false);
    farm.apply(&Action::Join(0));
    farm.apply(&Action::Join(1));
    // Both fall silent for 350 ms: past three heartbeat intervals of 100 ms, short of the
    // 500 ms timeout. Their tasks are backed up and they are stalled, not gone.
    farm.advance(Duration::from_millis(350));
    assert!(farm.d.workers().iter().all(|w| w.stalled && w.alive));
    // They are heard again and work on, with no fresh worker to save the batch.
    for _ in 0..200 {
        if farm.complete {
            break;
        }
        farm.apply(&Action::Beat);
        for w in 0..farm.workers.len() {
            while !farm.workers[w].queue.is_empty() {
                farm.finish(w, false);
            }
        }
        farm.apply(&Action::SinkFlush);
        farm.apply(&Action::Advance(50));
    }
    assert!(farm.complete, "the batch stalled with both workers back");
}

#[test]
fn a_worker_declared_gone_for_its_silence_is_still_told_the_batch_is_over() {
    let mut farm = Farm::new(&[10; 20], 1, 4, false);
    farm.apply(&Action::Join(0));
    farm.apply(&Action::Join(1));
    let (w0, w1) = (farm.named(0).unwrap(), farm.named(1).unwrap());
    // w1 stalls (a starved thread, a paused process): past the timeout it is gone to the
    // ventilator, though it is still there and hears what is sent to it.
    farm.apply(&Action::Freeze(1));
    for _ in 0..8 {
        farm.apply(&Action::Join(0));
        farm.apply(&Action::Advance(100));
    }
    assert!(!farm.d.workers()[1].alive, "w1 was not declared gone");
    for _ in 0..200 {
        if farm.complete {
            break;
        }
        while !farm.workers[w0].queue.is_empty() {
            farm.finish(w0, false);
        }
        farm.apply(&Action::Join(0));
        farm.apply(&Action::SinkFlush);
        farm.apply(&Action::Advance(50));
    }
    assert!(farm.complete, "w0 did not finish the batch");
    // Told, or it would wait for the batch's end forever (a worker of a one-process run, or
    // one started with --exit-when-done).
    assert!(farm.ended.contains(&w0), "w0 not told: {:?}", farm.ended);
    assert!(farm.ended.contains(&w1), "w1 not told: {:?}", farm.ended);
}

#[test]
fn a_straggler_that_reports_its_backed_up_task_takes_tasks_again() {
    let mut farm = Farm::new(&[10; 40], 1, 8, false);
    farm.apply(&Action::Join(0));
    farm.apply(&Action::Join(1));
    let slow = farm.named(0).expect("joined");
    // Worker 0 sits on its task past the bound while heartbeating; worker 1 works, and
    // the sink holds what it delivers.
    for _ in 0..12 {
        farm.apply(&Action::Beat);
        farm.apply(&Action::Finish(1, false));
        farm.apply(&Action::SinkFlush);
        farm.apply(&Action::Advance(100));
    }
    let id = farm
        .d
        .workers()
        .iter()
        .position(|w| w.info.name == "w0")
        .expect("w0");
    assert!(
        farm.d.workers()[id].stalled,
        "the straggler was not backed up"
    );
    // It finally reports the task it was given (now someone else's): no longer stalled.
    farm.finish(slow, false);
    farm.event(Event::Tick);
    assert!(
        !farm.d.workers()[id].stalled,
        "a report did not end the stall"
    );
    farm.finish_batch();
}

#[test]
fn a_worker_that_declines_gets_none_of_the_batch_and_others_finish_it() {
    let mut farm = Farm::new(&[10; 40], 2, 8, false);
    farm.apply(&Action::Join(0));
    farm.apply(&Action::Join(1));
    farm.apply(&Action::Decline(0));
    let w = farm.named(0).expect("joined");
    // Its greetings go on; it never gets a task again (the model pump panics if it does).
    for _ in 0..20 {
        farm.apply(&Action::Beat);
        farm.apply(&Action::Finish(1, false));
        farm.apply(&Action::SinkFlush);
    }
    assert!(farm.workers[w].queue.is_empty());
    farm.finish_batch();
}

#[test]
fn a_fixed_farm_that_all_declines_stops_with_the_reason() {
    let mut farm = Farm::new(&[10; 10], 2, 8, false);
    farm.config.fixed_workers = 2;
    farm.d = Dispatcher::new(farm.config.clone(), farm.now(), 0);
    farm.event(Event::Tick);
    farm.apply(&Action::Join(0));
    farm.apply(&Action::Join(1));
    farm.apply(&Action::Decline(0));
    assert!(farm.stopped.is_none());
    let w = farm.named(1).expect("joined");
    farm.workers[w].declined = true;
    farm.decline(w);
    match &farm.stopped {
        Some(Stopped::AllDeclined { workers: 2, reason }) => {
            assert!(reason.contains("cannot run"))
        }
        other => panic!("{other:?}"),
    }
}

/// A dispatcher of a divisible job of `items` items, its sink's acknowledgement given.
fn job_dispatcher(items: u64, policy: Policy, base: Instant) -> Dispatcher {
    let mut constants = [0; crate::kernels::CONSTANTS];
    constants[0] = 1000;
    let job = Job {
        items,
        constants,
        ..Job::default()
    };
    let config = DispatchConfig {
        batch_id: 0x10b,
        session: 1,
        tasks: Vec::new(),
        order: Vec::new(),
        job,
        expected_ms: items,
        longest_ms: 0,
        wait_workers: 0,
        wait_timeout: Duration::from_secs(3600),
        window: 2,
        max_window: 2048,
        heartbeat: Heartbeat {
            interval: INTERVAL,
            liveness: 5,
        },
        backup: Backup::default(),
        sink_timeout: Duration::from_secs(3600),
        resume: true,
        shutdown_workers: true,
        endpoint: "tcp://test:1".into(),
        sink: "tcp://test:2".into(),
        fixed_workers: 0,
        chunking: Some(Plan {
            policy,
            items,
            max_chunk: u32::MAX,
            nominal_us: 1000.0,
        }),
        max_attempts: 3,
        names: Vec::new(),
        observe: true,
        framing: Framing::default(),
    };
    Dispatcher::new(config, base, 0)
}

fn greet(d: &mut Dispatcher, now: Instant, name: &str, out: &mut Vec<Command>) {
    greet_as(d, now, name, "sleep", out);
}

/// A worker of `backend` (`sleep`, `cpu`, ...) greets.
fn greet_as(d: &mut Dispatcher, now: Instant, name: &str, backend: &str, out: &mut Vec<Command>) {
    greet_filled(d, now, name, backend, 0, out);
}

/// A worker of `backend` whose device fills at `fill` invocations greets.
fn greet_filled(
    d: &mut Dispatcher,
    now: Instant,
    name: &str,
    backend: &str,
    fill: u32,
    out: &mut Vec<Command>,
) {
    let info = WorkerInfo {
        name: name.into(),
        session: 1,
        backend: backend.into(),
        adapter: String::new(),
        window_hint: 4,
        codecs: 0,
        fill,
    };
    d.handle(
        now,
        Event::FromWorker {
            routing_id: name.as_bytes().to_vec(),
            message: Message::Hello(info),
        },
        out,
    );
}

/// Worker `name` reports task `id` done in `wall_us`.
fn report(
    d: &mut Dispatcher,
    now: Instant,
    name: &str,
    id: u32,
    wall_us: u32,
    out: &mut Vec<Command>,
) {
    report_as(d, now, name, id, wall_us, Status::Ok, out);
}

fn report_as(
    d: &mut Dispatcher,
    now: Instant,
    name: &str,
    id: u32,
    wall_us: u32,
    status: Status,
    out: &mut Vec<Command>,
) {
    let done = Message::Done {
        batch: 0x10b,
        done: vec![Done {
            id,
            status,
            wall_us,
            kernel_us: 0,
            items: 0,
            ..Done::default()
        }],
    };
    d.handle(
        now,
        Event::FromWorker {
            routing_id: name.as_bytes().to_vec(),
            message: done,
        },
        out,
    );
}

/// The sink acknowledges the job, `held` held-items messages to follow.
fn sink_acks(d: &mut Dispatcher, now: Instant, held: u32, out: &mut Vec<Command>) {
    let ack = Message::BatchAck { batch: 0x10b, held };
    d.handle(now, Event::FromSink(ack), out);
}

/// The sink says it holds these item ranges.
fn sink_holds(d: &mut Dispatcher, now: Instant, ranges: Vec<(u64, u64)>, out: &mut Vec<Command>) {
    let held = Message::HeldItems {
        batch: 0x10b,
        ranges,
    };
    d.handle(now, Event::FromSink(held), out);
}

/// A resumed sink acknowledges the job and lists what it holds.
fn sink_resumed_holding(
    d: &mut Dispatcher,
    now: Instant,
    ranges: Vec<(u64, u64)>,
    out: &mut Vec<Command>,
) {
    sink_acks(d, now, 1, out);
    sink_holds(d, now, ranges, out);
}

/// The chunks handed out in `out`, by worker.
fn chunks_in(out: &[Command]) -> Vec<(WorkerId, Task)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Tasks { worker, tasks, .. } => Some(tasks.iter().map(move |t| (*worker, *t))),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_job_gives_each_worker_one_chunk_at_a_time_and_a_lost_workers_chunk_to_another() {
    let base = Instant::now();
    let mut d = job_dispatcher(10_000, Policy::Fixed(100), base);
    let mut out = Vec::new();
    greet(&mut d, base, "a", &mut out);
    greet(&mut d, base, "b", &mut out);
    d.handle(base, Event::Tick, &mut out);
    sink_acks(&mut d, base, 0, &mut out);
    out.clear();
    d.handle(base, Event::Tick, &mut out);
    let first = chunks_in(&out);
    // One chunk each, whatever their window: the next is sized when they report.
    assert_eq!(first.len(), 2, "{first:?}");
    assert_ne!(first[0].0, first[1].0);
    assert_eq!((first[0].1.first, first[0].1.items), (0, 100));
    assert_eq!((first[1].1.first, first[1].1.items), (100, 100));
    out.clear();
    d.handle(base, Event::Tick, &mut out);
    assert!(chunks_in(&out).is_empty(), "nothing more until they report");
    // Worker b says goodbye holding its chunk: a reports, and gets b's chunk first.
    let (b_slot, b_chunk) = first
        .iter()
        .copied()
        .find(|(w, _)| d.worker(*w).routing_id == b"b")
        .unwrap();
    let (a_slot, a_chunk) = first.iter().copied().find(|(w, _)| *w != b_slot).unwrap();
    d.handle(
        base,
        Event::FromWorker {
            routing_id: b"b".to_vec(),
            message: Message::Bye,
        },
        &mut out,
    );
    out.clear();
    report(&mut d, base, "a", a_chunk.id, 100_000, &mut out);
    d.handle(base, Event::Tick, &mut out);
    let next = chunks_in(&out);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].0, a_slot);
    assert_eq!(next[0].1, b_chunk, "the lost worker's chunk, whole");
    assert_eq!(d.counters().items_redone, 100);
    // The carver sizes chunks for the one worker left.
    assert_eq!(d.audit(), Ok(()));
    // b comes back: counted again.
    greet(&mut d, base, "b", &mut out);
    assert_eq!(d.audit(), Ok(()));
}

#[test]
fn items_a_sink_holds_are_never_carved_and_cover_chunks_whoever_carved_them() {
    let base = Instant::now();
    let mut d = job_dispatcher(1000, Policy::Fixed(300), base);
    let mut out = Vec::new();
    greet(&mut d, base, "a", &mut out);
    d.handle(base, Event::Tick, &mut out);
    // A resumed sink holds items 0..250 and 600..700 (carved by an earlier ventilator).
    sink_resumed_holding(&mut d, base, vec![(0, 250), (600, 700)], &mut out);
    let mut carved = Vec::new();
    for n in 0..10 {
        out.clear();
        d.handle(base, Event::Tick, &mut out);
        let Some((_, chunk)) = chunks_in(&out).first().copied() else {
            break;
        };
        carved.push(chunk.range());
        // The sink holds it in two pieces, as two ventilators might have carved it.
        let (a, b) = chunk.range();
        let mid = a + (b - a) / 2;
        for range in [(mid, b), (a, mid)] {
            sink_holds(&mut d, base, vec![range], &mut out);
        }
        assert_eq!(d.task_state(chunk.id), TaskState::Held, "chunk {n}");
        report(&mut d, base, "a", chunk.id, 1000, &mut out);
    }
    assert_eq!(carved, vec![(250, 550), (550, 600), (700, 1000)]);
}

/// Carves and finishes chunks on worker "a" until `n` are held (the sink saying so by
/// items); returns their ranges.
fn hold_chunks(d: &mut Dispatcher, now: Instant, n: usize) -> Vec<(u64, u64)> {
    let mut held = Vec::new();
    let mut out = Vec::new();
    while held.len() < n {
        out.clear();
        d.handle(now, Event::Tick, &mut out);
        let (_, chunk) = chunks_in(&out)[0];
        report(d, now, "a", chunk.id, 1000, &mut out);
        sink_holds(d, now, vec![chunk.range()], &mut out);
        assert_eq!(d.task_state(chunk.id), TaskState::Held);
        held.push(chunk.range());
    }
    held
}

#[test]
fn after_a_sink_restart_the_chunks_it_lists_are_held_again_and_nothing_is_redone() {
    let base = Instant::now();
    let mut d = job_dispatcher(1000, Policy::Fixed(100), base);
    let mut out = Vec::new();
    greet(&mut d, base, "a", &mut out);
    d.handle(base, Event::Tick, &mut out);
    sink_acks(&mut d, base, 0, &mut out);
    let held = hold_chunks(&mut d, base, 3);
    // A resumed sink acknowledges again and lists what it holds, in one range.
    sink_resumed_holding(&mut d, base, vec![(0, 300)], &mut out);
    for id in 0..3 {
        assert_eq!(d.task_state(id), TaskState::Held, "chunk {id} of {held:?}");
    }
    out.clear();
    d.handle(base, Event::Tick, &mut out);
    let next = chunks_in(&out);
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].1.range(),
        (300, 400),
        "the next new chunk, nothing redone"
    );
}

#[test]
fn after_a_fresh_sink_restart_items_it_lost_are_carved_again() {
    let base = Instant::now();
    let mut d = job_dispatcher(1000, Policy::Fixed(100), base);
    let mut out = Vec::new();
    greet(&mut d, base, "a", &mut out);
    d.handle(base, Event::Tick, &mut out);
    // The first sink held items 800..1000 from an earlier ventilator (never carved here).
    sink_resumed_holding(&mut d, base, vec![(800, 1000)], &mut out);
    hold_chunks(&mut d, base, 2);
    // A fresh sink (no results file) holds nothing: everything goes out again.
    sink_acks(&mut d, base, 0, &mut out);
    let mut carved = crate::intervals::IntervalSet::new();
    for _ in 0..20 {
        out.clear();
        d.handle(base, Event::Tick, &mut out);
        let Some((_, chunk)) = chunks_in(&out).first().copied() else {
            break;
        };
        let (a, b) = chunk.range();
        carved.insert(a..b);
        report(&mut d, base, "a", chunk.id, 1000, &mut out);
        sink_holds(&mut d, base, vec![(a, b)], &mut out);
    }
    assert_eq!(
        carved.covered(),
        1000,
        "every item handed out again: {:?}",
        carved.ranges()
    );
}

/// A job of `items` carved by `policy`, with `names` greeted and the sink's
/// acknowledgement in: the dispatcher, and the commands of the tick that handed out the
/// first chunks.
fn started_job(
    items: u64,
    policy: Policy,
    base: Instant,
    names: &[&str],
) -> (Dispatcher, Vec<Command>) {
    let mut d = job_dispatcher(items, policy, base);
    let mut out = Vec::new();
    for name in names {
        greet(&mut d, base, name, &mut out);
    }
    d.handle(base, Event::Tick, &mut out);
    sink_acks(&mut d, base, 0, &mut out);
    out.clear();
    d.handle(base, Event::Tick, &mut out);
    (d, out)
}

#[test]
fn a_chunk_that_fails_max_attempts_times_is_given_up_and_the_sink_told() {
    let base = Instant::now();
    let (mut d, mut out) = started_job(1_000, Policy::Fixed(100), base, &["a", "b"]);
    let first = chunks_in(&out);
    let (_, bad) = first[0];
    // It fails on whoever gets it, three times; the other chunks go on meanwhile.
    let mut failures = 0;
    let mut gave_up = Vec::new();
    for round in 0..20 {
        let handed: Vec<(WorkerId, Task)> = chunks_in(&out);
        out.clear();
        for (worker, task) in handed {
            let name = std::str::from_utf8(&d.worker(worker).routing_id)
                .unwrap()
                .to_owned();
            if task.first == bad.first {
                failures += 1;
                report_as(&mut d, base, &name, task.id, 10, Status::Failed, &mut out);
            } else {
                report(&mut d, base, &name, task.id, 1000, &mut out);
                sink_holds(&mut d, base, vec![task.range()], &mut out);
            }
        }
        gave_up.extend(out.iter().filter_map(|c| match c {
            Command::ToSink(m @ Message::GaveUp { .. }) => Some(m.clone()),
            _ => None,
        }));
        d.handle(base, Event::Tick, &mut out);
        assert!(round < 19, "the job never ended");
        if chunks_in(&out).is_empty() {
            break;
        }
    }
    assert_eq!(failures, 3, "three attempts, then no more");
    assert_eq!(
        gave_up,
        vec![Message::GaveUp {
            batch: 0x10b,
            id: bad.id,
            first: bad.first,
            items: bad.items,
            attempts: 3,
        }]
    );
    // The sink counts it held (failed): the job is complete.
    sink_holds(&mut d, base, vec![bad.range()], &mut out);
    assert_eq!(
        d.counters().held,
        d.len(),
        "every chunk held, the failed one too"
    );
}

#[test]
fn a_copy_the_sink_asks_for_goes_to_a_worker_it_does_not_exclude() {
    let base = Instant::now();
    let (mut d, mut out) = started_job(1_000, Policy::Fixed(100), base, &["a"]);
    let (a_slot, chunk) = chunks_in(&out)[0];
    out.clear();
    report(&mut d, base, "a", chunk.id, 1000, &mut out);
    // The sink has a's copy and wants another, from anyone but a; then b arrives.
    let again = Message::Again {
        batch: 0x10b,
        id: chunk.id,
        first: chunk.first,
        items: chunk.items,
        exclude: vec!["a".into()],
    };
    d.handle(base, Event::FromSink(again.clone()), &mut out);
    greet(&mut d, base, "b", &mut out);
    out.clear();
    d.handle(base, Event::Tick, &mut out);
    let handed = chunks_in(&out);
    let copy: Vec<_> = handed
        .iter()
        .filter(|(_, t)| t.first == chunk.first)
        .collect();
    assert_eq!(copy.len(), 1, "{handed:?}");
    assert_ne!(
        copy[0].0, a_slot,
        "not to the worker whose copy the sink has"
    );
    // Asked again while b runs it: nothing changes.
    out.clear();
    d.handle(base, Event::FromSink(again), &mut out);
    d.handle(base, Event::Tick, &mut out);
    assert!(chunks_in(&out).iter().all(|(_, t)| t.first != chunk.first));
}

/// The sink asks worker `name`'s copy of `chunk` be run again by someone else.
fn again_without(
    d: &mut Dispatcher,
    now: Instant,
    chunk: Task,
    name: &str,
    out: &mut Vec<Command>,
) {
    let again = Message::Again {
        batch: 0x10b,
        id: chunk.id,
        first: chunk.first,
        items: chunk.items,
        exclude: vec![name.into()],
    };
    d.handle(now, Event::FromSink(again), out);
}

#[test]
fn a_worker_idle_while_every_copy_excludes_it_takes_the_next_copy_it_may_run() {
    let base = Instant::now();
    let (mut d, out) = started_job(200, Policy::Fixed(100), base, &["a", "b"]);
    let handed = chunks_in(&out);
    let chunk = |name: &str| {
        handed
            .iter()
            .find(|(w, _)| d.worker(*w).routing_id == name.as_bytes())
            .map(|&(_, t)| t)
            .expect("a chunk each")
    };
    let (x, y) = (chunk("a"), chunk("b"));
    let mut out = Vec::new();
    // a's copy of x is in; the sink wants another, not from a: a waits, b is busy.
    report(&mut d, base, "a", x.id, 1000, &mut out);
    again_without(&mut d, base, x, "a", &mut out);
    d.handle(base, Event::Tick, &mut out);
    assert!(chunks_in(&out).is_empty(), "{:?}", chunks_in(&out));
    // b finishes y and takes x's copy; the sink wants y's copy, not from b: it is a's.
    report(&mut d, base, "b", y.id, 1000, &mut out);
    again_without(&mut d, base, y, "b", &mut out);
    out.clear();
    d.handle(base, Event::Tick, &mut out);
    report(&mut d, base, "b", x.id, 1000, &mut out);
    d.handle(base, Event::Tick, &mut out);
    let copies: Vec<(String, u64)> = chunks_in(&out)
        .iter()
        .map(|(w, t)| {
            let name = String::from_utf8_lossy(&d.worker(*w).routing_id).into_owned();
            (name, t.first)
        })
        .collect();
    assert!(copies.contains(&("b".to_owned(), x.first)), "{copies:?}");
    assert!(
        copies.contains(&("a".to_owned(), y.first)),
        "the idle worker a takes y's copy: {copies:?}"
    );
}

#[test]
fn a_drained_job_sleeps_until_its_end_and_then_shows_no_worker_holding_a_chunk() {
    let base = Instant::now();
    let (mut d, _) = started_job(1_000, Policy::Fixed(100), base, &["a", "b"]);
    // The job ends with a chunk out at each (a search found its hits): the workers are
    // told to abandon them, and never say they did.
    let mut out = Vec::new();
    let complete = Message::Complete { batch: 0x10b };
    d.handle(base, Event::FromSink(complete), &mut out);
    assert_eq!(d.phase_name(), "draining");
    assert!(d.snapshot().workers.iter().any(|w| w.assigned > 0));
    // While it drains, the pump sleeps until the drain's end: no heartbeat's round runs
    // then, so its passed deadline must not wake the pump at once (it spun before).
    let later = base + INTERVAL * 3;
    d.handle(later, Event::Tick, &mut out);
    assert_eq!(d.phase_name(), "draining");
    assert!(
        d.next_deadline() > later,
        "a deadline passed while draining"
    );
    d.handle(base + Duration::from_secs(3600), Event::Tick, &mut out);
    let snapshot = d.snapshot();
    assert!(snapshot.over);
    assert!(
        snapshot.workers.iter().all(|w| w.assigned == 0),
        "{:?}",
        snapshot.workers
    );
}

#[test]
fn a_copy_past_a_waiting_workers_look_reaches_it_once_the_copies_before_it_go_out() {
    // More copies that exclude a than a worker looks through, then one only a may run.
    let chunks = REPLICA_SCAN as u64 + 2;
    let base = Instant::now();
    let (mut d, out) = started_job(chunks, Policy::Fixed(1), base, &["a", "b"]);
    let slot = |d: &Dispatcher, name: &str| d.worker_id(name.as_bytes()).expect("joined");
    let (a, b) = (slot(&d, "a"), slot(&d, "b"));
    let mut held_by_b = None;
    let mut handed = chunks_in(&out);
    let mut out = Vec::new();
    // b keeps its first chunk; a runs every other one, and the sink wants a copy of each
    // from someone else.
    while let Some((w, chunk)) = handed.pop() {
        if w == b {
            held_by_b = Some(chunk);
            continue;
        }
        report(&mut d, base, "a", chunk.id, 1000, &mut out);
        again_without(&mut d, base, chunk, "a", &mut out);
        out.clear();
        d.handle(base, Event::Tick, &mut out);
        handed.extend(chunks_in(&out));
    }
    let held_by_b = held_by_b.expect("b had a chunk");
    // b's report: its copy is wanted from a, behind every copy a may not run.
    report(&mut d, base, "b", held_by_b.id, 1000, &mut out);
    again_without(&mut d, base, held_by_b, "b", &mut out);
    // b runs the copies a may not, one at a time; a gets b's copy in the end.
    let mut a_got_it = false;
    for _ in 0..2 * chunks {
        out.clear();
        d.handle(base, Event::Tick, &mut out);
        for (w, chunk) in chunks_in(&out) {
            if w == a {
                assert_eq!(chunk.first, held_by_b.first, "a may run only b's copy");
                a_got_it = true;
            } else {
                report(&mut d, base, "b", chunk.id, 1000, &mut out);
            }
        }
        if a_got_it {
            break;
        }
    }
    assert!(a_got_it, "the copy only a may run never reached it");
}

/// A fast and a slow worker (of `slow_backend`) on 400 items in chunks of 100; the fast
/// one eats every chunk but the slow one's, a chunk a millisecond, until nothing is left
/// to carve. Returns the dispatcher, the time, both slots and the slow worker's chunk.
fn a_slow_chunk_left(slow_backend: &str) -> (Dispatcher, Instant, WorkerId, WorkerId, Task) {
    let base = Instant::now();
    let mut d = job_dispatcher(400, Policy::Fixed(100), base);
    let mut out = Vec::new();
    greet(&mut d, base, "fast", &mut out);
    greet_as(&mut d, base, "slow", slow_backend, &mut out);
    d.handle(base, Event::Tick, &mut out);
    sink_acks(&mut d, base, 0, &mut out);
    out.clear();
    d.handle(base, Event::Tick, &mut out);
    let first = chunks_in(&out);
    let slot_of = |d: &Dispatcher, name: &[u8]| {
        (0..d.workers().len())
            .find(|&w| d.workers()[w].routing_id == name)
            .unwrap() as WorkerId
    };
    let (fast, slow) = (slot_of(&d, b"fast"), slot_of(&d, b"slow"));
    let (_, slow_chunk) = *first.iter().find(|(w, _)| *w == slow).unwrap();
    let mut t = base;
    let mut mine: Vec<Task> = first
        .iter()
        .filter(|(w, _)| *w == fast)
        .map(|(_, c)| *c)
        .collect();
    while let Some(chunk) = mine.pop() {
        t += Duration::from_millis(1);
        out.clear();
        report(&mut d, t, "fast", chunk.id, 1000, &mut out);
        sink_holds(&mut d, t, vec![chunk.range()], &mut out);
        d.handle(t, Event::Tick, &mut out);
        mine.extend(
            chunks_in(&out)
                .iter()
                .filter(|(w, _)| *w == fast)
                .map(|(_, c)| *c),
        );
    }
    (d, t, fast, slow, slow_chunk)
}

fn yields_in(out: &[Command]) -> Vec<(WorkerId, u32, u64)> {
    out.iter()
        .filter_map(|c| match c {
            Command::ToWorker {
                worker,
                message: Message::Yield { id, first, .. },
            } => Some((*worker, *id, *first)),
            _ => None,
        })
        .collect()
}

#[test]
fn in_the_end_game_a_slow_workers_chunk_yields_its_tail_to_an_idle_fast_worker() {
    let (mut d, t, fast, slow, chunk) = a_slow_chunk_left("sleep");
    let mut out = Vec::new();
    // Nothing left to carve; the slow worker's chunk (100 ms at nominal speed) would take
    // the fast one a millisecond: the slow one is asked for the rest, nothing is copied.
    d.handle(t + TAIL_PROBE, Event::Tick, &mut out);
    assert_eq!(yields_in(&out), vec![(slow, chunk.id, chunk.first)]);
    assert!(chunks_in(&out).is_empty(), "{out:?}");
    // Asked once; the idle worker waits for the tail meanwhile.
    out.clear();
    d.handle(t + TAIL_PROBE * 2, Event::Tick, &mut out);
    assert!(
        yields_in(&out).is_empty() && chunks_in(&out).is_empty(),
        "{out:?}"
    );
    // It did 30 items; the other 70 go to the fast worker, as new items, not redone.
    out.clear();
    let at = t + TAIL_PROBE * 3;
    let done = Message::Done {
        batch: 0x10b,
        done: vec![Done {
            id: chunk.id,
            wall_us: 60_000,
            items: 30,
            ..Done::default()
        }],
    };
    let from_slow = Event::FromWorker {
        routing_id: b"slow".to_vec(),
        message: done,
    };
    d.handle(at, from_slow, &mut out);
    d.handle(at, Event::Tick, &mut out);
    let tail: Vec<Task> = chunks_in(&out)
        .into_iter()
        .filter(|(w, _)| *w == fast)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(tail.len(), 1, "{out:?}");
    assert_eq!(tail[0].range(), (chunk.first + 30, chunk.first + 100));
    let c = d.counters();
    assert_eq!((c.chunks_cut, c.items_handed_on), (1, 70));
    assert_eq!((c.redispatched, c.items_redone), (0, 0));
    assert_eq!(d.task_items(chunk.id), 30);
    // The sink holds both parts: the job is complete.
    sink_holds(&mut d, at, vec![(chunk.first, chunk.first + 30)], &mut out);
    assert_eq!(d.task_state(chunk.id), TaskState::Held);
    report(&mut d, at, "fast", tail[0].id, 1000, &mut out);
    sink_holds(&mut d, at, vec![tail[0].range()], &mut out);
    assert_eq!(d.items_progress(), Some((400, 400)));
    d.audit().unwrap();
}

#[test]
fn a_chunk_whose_worker_cannot_cut_it_is_copied_and_one_not_cut_in_time_too() {
    // `spin` on a cpu worker reduces a chunk to one checksum: it runs whole.
    let (mut d, t, fast, slow, chunk) = a_slow_chunk_left("cpu");
    let mut out = Vec::new();
    d.handle(t + TAIL_PROBE, Event::Tick, &mut out);
    let taken: Vec<_> = out
        .iter()
        .filter_map(|c| match c {
            Command::Tasks {
                worker,
                tasks,
                again,
                ..
            } => Some((*worker, tasks.clone(), again.clone())),
            _ => None,
        })
        .collect();
    assert!(yields_in(&out).is_empty());
    assert_eq!(taken, vec![(fast, vec![chunk], vec![true])]);
    assert!(
        d.workers()[slow as usize].stalled,
        "it still computes its copy"
    );
    // Once, not again.
    out.clear();
    d.handle(t + TAIL_PROBE * 2, Event::Tick, &mut out);
    assert!(chunks_in(&out).is_empty());

    // A worker that could cut it but says nothing within the grace: copied then.
    let (mut d, t, fast, slow, chunk) = a_slow_chunk_left("sleep");
    let mut out = Vec::new();
    d.handle(t + TAIL_PROBE, Event::Tick, &mut out);
    assert_eq!(yields_in(&out), vec![(slow, chunk.id, chunk.first)]);
    out.clear();
    d.handle(t + TAIL_PROBE + YIELD_GRACE / 2, Event::Tick, &mut out);
    assert!(chunks_in(&out).is_empty());
    d.handle(t + TAIL_PROBE * 2 + YIELD_GRACE, Event::Tick, &mut out);
    assert_eq!(chunks_in(&out), vec![(fast, chunk)]);
    assert!(yields_in(&out).is_empty(), "asked once only");
    // Still computing its copy, the slow worker takes nothing new until it reports.
    assert!(d.workers()[slow as usize].stalled);
}

#[test]
fn a_device_workers_chunks_hold_at_least_what_fills_its_device() {
    let base = Instant::now();
    let t = |ms: u64| base + Duration::from_millis(ms);
    // A million spin items of 1 ms (1,024 invocations each), chunks of 50 ms.
    let mut d = job_dispatcher(1_000_000, Policy::Adaptive(Duration::from_millis(50)), base);
    let mut out = Vec::new();
    // The card runs near its full rate from 4 M invocations in flight: 4,096 items.
    greet_filled(&mut d, base, "card", "gpu", 4096 * 1024, &mut out);
    greet_as(&mut d, base, "core", "cpu", &mut out);
    d.handle(base, Event::Tick, &mut out);
    sink_acks(&mut d, base, 0, &mut out);
    out.clear();
    d.handle(base, Event::Tick, &mut out);
    let (card, core) = (0, 1);
    let probes = chunks_in(&out);
    let probe = |w| probes.iter().find(|(to, _)| *to == w).map(|(_, c)| *c);
    let (card_probe, core_probe) = (probe(card).unwrap(), probe(core).unwrap());
    // Unmeasured, the cpu worker gets a sliver; the card what fills it.
    assert!(core_probe.items < 100, "{core_probe:?}");
    assert_eq!(card_probe.items, 4096, "{card_probe:?}");
    // Measured slow (launches and round trips are most of a small chunk's time), the
    // card's next chunks stay at its fill where its rate alone would shrink them.
    let mut next = card_probe;
    for round in 1..=3u64 {
        out.clear();
        report(&mut d, t(round * 10), "card", next.id, 1_000_000, &mut out);
        let items = (next.first, next.first + u64::from(next.items));
        sink_holds(&mut d, t(round * 10), vec![items], &mut out);
        d.handle(t(round * 10), Event::Tick, &mut out);
        let chunks: Vec<Task> = chunks_in(&out)
            .into_iter()
            .filter(|(to, _)| *to == card)
            .map(|(_, c)| c)
            .collect();
        assert!(!chunks.is_empty(), "round {round}: no chunk for the card");
        for c in &chunks {
            assert_eq!(c.items, 4096, "round {round}: {c:?}");
        }
        next = chunks[0];
    }
    // An `auto` worker greets again once its device is built for the job: its new fill
    // sizes its chunks from then on.
    let now = t(40);
    greet_filled(&mut d, now, "card", "gpu", 8192 * 1024, &mut out);
    out.clear();
    report(&mut d, now, "card", next.id, 1_000_000, &mut out);
    sink_holds(&mut d, now, vec![next.range()], &mut out);
    d.handle(now, Event::Tick, &mut out);
    let chunks: Vec<Task> = chunks_in(&out)
        .into_iter()
        .filter(|(to, _)| *to == card)
        .map(|(_, c)| c)
        .collect();
    assert!(
        !chunks.is_empty(),
        "no chunk for the card after its new greeting"
    );
    assert!(chunks.iter().all(|c| c.items == 8192), "{chunks:?}");
}

/// Runs equal workers (1 ms an item) through a 100,000-item adaptive job in virtual time,
/// the sink holding each chunk as it is reported. Returns the most chunks a worker held
/// once carved one far from the end, and under 8 chunk times of work from it.
fn chunks_held_far_and_near_the_end(workers: &[&str]) -> (usize, usize) {
    let base = Instant::now();
    let t = |ms: u64| base + Duration::from_millis(ms);
    // 100 s of work at nominal speed, chunks of 200 ms.
    let policy = Policy::Adaptive(Duration::from_millis(200));
    let (mut d, mut out) = started_job(100_000, policy, base, workers);
    // Not measured yet: a probe each, nothing queued behind it.
    let mut held: Vec<Vec<Task>> = vec![Vec::new(); workers.len()];
    for (w, chunk) in chunks_in(&out) {
        held[w as usize].push(chunk);
    }
    assert!(held.iter().all(|h| h.len() == 1), "{held:?}");
    // Each worker computes its first chunk from when it is free.
    let mut free_at = vec![0u64; workers.len()];
    let (mut far, mut near) = (0, 0);
    while let Some(w) = (0..workers.len())
        .filter(|&w| !held[w].is_empty())
        .min_by_key(|&w| free_at[w] + u64::from(held[w][0].items))
    {
        let chunk = held[w].remove(0);
        free_at[w] += u64::from(chunk.items);
        let now = t(free_at[w]);
        out.clear();
        report(
            &mut d,
            now,
            workers[w],
            chunk.id,
            chunk.items * 1000,
            &mut out,
        );
        let items = (chunk.first, chunk.first + u64::from(chunk.items));
        sink_holds(&mut d, now, vec![items], &mut out);
        // Work left for the farm before it is carved again.
        let left = d.carver.as_ref().map_or(0, |c| c.left());
        let farm_s = left as f64 / 1000.0 / workers.len() as f64;
        d.handle(now, Event::Tick, &mut out);
        for (to, next) in chunks_in(&out) {
            let to = to as usize;
            if held[to].is_empty() {
                free_at[to] = free_at[to].max(free_at[w]);
            }
            held[to].push(next);
            let holds = held[to].len();
            assert!(holds <= 2, "a worker holds {held:?}");
            if farm_s < 1.6 {
                near = near.max(holds);
            } else {
                far = far.max(holds);
            }
        }
    }
    assert_eq!(
        d.carver.as_ref().map_or(0, |c| c.left()),
        0,
        "the job ran to its end"
    );
    (far, near)
}

#[test]
fn on_an_even_farm_a_measured_worker_holds_its_next_chunk_until_the_job_nears_its_end() {
    // Two equal workers: each holds its next chunk far from the end, one at a time near
    // it, where a second chunk in hand would be items the other could not take.
    assert_eq!(chunks_held_far_and_near_the_end(&["a", "b"]), (2, 1));
    // A worker alone queues to the end: no other worker could take its items.
    assert_eq!(chunks_held_far_and_near_the_end(&["a"]), (2, 2));
}

#[test]
fn a_chunk_far_past_its_prediction_yields_its_rest_rather_than_being_copied_whole() {
    use super::endgame::{choose, Choice, Take};
    let device = Some(crate::pieces::PIECE);
    let free = Some(crate::pieces::FREE_PIECE);
    // A measured holder that has run the task since it was given, in ms: the taker's
    // prediction, the holder's, how long it has run, how long it is predicted to need.
    let running = |mine: f64, holder: f64, ran: f64, left: f64, pieces| -> Choice {
        choose(
            mine * 1e3,
            Some(holder * 1e3),
            ran * 1e3,
            ran * 1e3,
            left * 1e3,
            pieces,
        )
    };
    // A cpu worker's chunk grown on cheap rows runs through the set: predicted 40 ms, it
    // has run 534 ms. The idle adapter, measured on dear rows, would need 294 ms for all
    // of it. Its piece in hand was sized at the rate its last pieces ran: the rest is
    // carved again after at most a couple of pieces' time, and nothing is done twice.
    let far = running(22.0, 40.0, 534.0, 534.0, device);
    assert_eq!(far.take, Take::Yield, "{far:?}");
    assert!((far.mine_us - 293_700.0).abs() < 1.0, "{far:?}");
    // The same chunk run whole cannot yield: copied.
    assert_eq!(running(22.0, 40.0, 534.0, 534.0, None).take, Take::Copy);
    // Where a copy (53 ms) takes the idle worker less than twice the wait for a device's
    // piece in hand (up to 100 ms), waiting would cost more than it saves: copied.
    let cheap = running(4.0, 40.0, 534.0, 534.0, device);
    assert_eq!(cheap.take, Take::Copy, "{cheap:?}");
    // Unless the holder's pieces are short (a cpu worker's): a wait of 20 ms at most,
    // against a copy predicted from rates measured on other items, 53 ms or even 5.
    let short = running(4.0, 40.0, 534.0, 534.0, free);
    assert_eq!(short.take, Take::Yield, "{short:?}");
    let tiny = running(0.4, 40.0, 534.0, 534.0, free);
    assert_eq!(tiny.take, Take::Yield, "{tiny:?}");
    // No copy pays (the holder is measured twice as fast), but a chunk with more than
    // four pieces left yields its rest to be carved among the idle workers.
    let even = running(40.0, 20.0, 100.0, 240.0, device);
    assert_eq!(even.take, Take::Yield, "{even:?}");
    // A holder not measured yet: the taker's prediction stands once the holder has held
    // the task twice that long, queued behind its first (never run) or running it.
    let queued = choose(7_000.0, None, 0.0, 839_000.0, 839_000.0, None);
    assert_eq!(queued.take, Take::Copy, "{queued:?}");
    let fresh = choose(7_000.0, None, 0.0, 10_000.0, 839_000.0, None);
    assert_eq!(fresh.take, Take::Leave, "{fresh:?}");
    // Nearly done and faster: left alone.
    let near = running(40.0, 20.0, 100.0, 100.0, device);
    assert_eq!(near.take, Take::Leave, "{near:?}");
    // Far from done, but measured five times faster than the idle worker: left alone (its
    // rest would be carved for the slow worker first).
    let outpaced = running(100.0, 20.0, 100.0, 240.0, device);
    assert_eq!(outpaced.take, Take::Leave, "{outpaced:?}");
}

/// Whether each task message in `out` asks its worker for pieces, by worker.
fn pieces_asked(out: &[Command]) -> Vec<(WorkerId, bool)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Tasks {
                worker, in_pieces, ..
            } => Some((*worker, *in_pieces)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_cpu_worker_runs_chunks_in_pieces_however_fast_its_rate_says_it_is() {
    // Rows of a Mandelbrot job, on a farm of a cpu worker and the software adapter, one
    // measured ten times the other's rate (a rate measured on cheap rows may say so of
    // the slower): the cpu worker's pieces cost nothing, so its chunks can always be cut;
    // the adapter's cost a dispatch each, so measured clearly fastest it runs them whole.
    for (fast_backend, slow_backend, fast_in_pieces) in
        [("cpu", "software", true), ("software", "cpu", false)]
    {
        let base = Instant::now();
        let mut d = job_dispatcher(100_000, Policy::Fixed(100), base);
        d.config.job.kernel = crate::kernels::Kernel::Mandelbrot.id();
        let mut out = Vec::new();
        greet_as(&mut d, base, "fast", fast_backend, &mut out);
        greet_as(&mut d, base, "slow", slow_backend, &mut out);
        d.handle(base, Event::Tick, &mut out);
        sink_acks(&mut d, base, 0, &mut out);
        out.clear();
        d.handle(base, Event::Tick, &mut out);
        let (fast, slow) = (0, 1);
        assert_eq!(d.workers()[fast as usize].routing_id, b"fast");
        let first = chunks_in(&out);
        assert_eq!(first.len(), 2, "{out:?}");
        // Unmeasured, both run in pieces: either could be relieved.
        assert!(pieces_asked(&out).iter().all(|&(_, p)| p), "{out:?}");
        let t = base + Duration::from_millis(10);
        out.clear();
        for (w, chunk) in first {
            let (name, wall_us) = if w == fast {
                ("fast", 1_000)
            } else {
                ("slow", 10_000)
            };
            report(&mut d, t, name, chunk.id, wall_us, &mut out);
            sink_holds(&mut d, t, vec![chunk.range()], &mut out);
        }
        out.clear();
        d.handle(t, Event::Tick, &mut out);
        let asked = pieces_asked(&out);
        assert!(
            asked.contains(&(fast, fast_in_pieces)),
            "{fast_backend}: {out:?}"
        );
        assert!(asked.contains(&(slow, true)), "{slow_backend}: {out:?}");
    }
}

/// What the fast worker of [`fast_and_slow_on_a_list`] does.
#[derive(Clone, Copy, PartialEq)]
enum Fast {
    Works,
    /// Says goodbye at this ms.
    LeavesAt(u64),
    /// From this ms on runs nothing and reports nothing, and still heartbeats.
    SitsOnItsTasksFrom(u64),
}

/// How a run of [`fast_and_slow_on_a_list`] went.
struct ListRun {
    /// When the last task was first reported, in ms.
    end_ms: u64,
    /// Tasks each worker reported: fast, slow.
    ran: [usize; 2],
    redispatched: u64,
    /// When the slow worker started each task, in ms.
    slow_starts: Vec<u64>,
}

/// A dispatcher of a task list of `tasks` 10 ms tasks, the workers `names` greeted and the
/// sink's acknowledgement in (batch 0x10b, as `report` says), ticked once.
fn list_started(tasks: usize, names: &[&str]) -> (Dispatcher, Instant, Vec<Command>) {
    let mut config = Farm::new(&vec![10; tasks], 2, 8, false).config;
    config.batch_id = 0x10b;
    let base = Instant::now();
    let mut d = Dispatcher::new(config, base, 0);
    let mut out = Vec::new();
    d.handle(base, Event::Tick, &mut out);
    for name in names {
        greet(&mut d, base, name, &mut out);
    }
    sink_acks(&mut d, base, 0, &mut out);
    d.handle(base, Event::Tick, &mut out);
    (d, base, out)
}

/// A task list of 10 ms tasks run by a fast worker (10 ms a task) and a slow one (300 ms),
/// in virtual time, a millisecond a step: each runs its tasks in the order given, reports
/// each as it ends (the sink holding it at once) and heartbeats every 50 ms.
fn fast_and_slow_on_a_list(tasks: usize, fast: Fast) -> ListRun {
    let names = ["fast", "slow"];
    let (mut d, base, mut out) = list_started(tasks, &names);
    let task_ms = [10u64, 300];
    let mut queues: [VecDeque<u32>; 2] = Default::default();
    // The task each runs and when it ends.
    let mut running: [Option<(u32, u64)>; 2] = [None, None];
    let mut run = ListRun {
        end_ms: 0,
        ran: [0; 2],
        redispatched: 0,
        slow_starts: Vec::new(),
    };
    let (mut alive, mut works) = ([true, true], [true, true]);
    let mut reported = vec![false; tasks];
    for now_ms in 0..60_000u64 {
        let t = base + Duration::from_millis(now_ms);
        if fast == Fast::LeavesAt(now_ms) {
            alive[0] = false;
            let bye = Event::FromWorker {
                routing_id: b"fast".to_vec(),
                message: Message::Bye,
            };
            d.handle(t, bye, &mut out);
        }
        works[0] = alive[0] && !matches!(fast, Fast::SitsOnItsTasksFrom(at) if now_ms >= at);
        if now_ms % 50 == 0 {
            for w in (0..2).filter(|&w| alive[w]) {
                greet(&mut d, t, names[w], &mut out);
            }
        }
        d.handle(t, Event::Tick, &mut out);
        for c in out.drain(..) {
            if let Command::Tasks { worker, tasks, .. } = c {
                let w = usize::from(d.workers()[worker as usize].info.name == "slow");
                queues[w].extend(tasks.iter().map(|task| task.id));
            }
        }
        for w in (0..2).filter(|&w| works[w]) {
            if let Some((id, ends)) = running[w].filter(|&(_, ends)| ends <= now_ms) {
                let wall_us = u32::try_from(task_ms[w] * 1000).expect("small");
                report(&mut d, t, names[w], id, wall_us, &mut out);
                let held = Message::Held {
                    batch: 0x10b,
                    ids: vec![id],
                };
                d.handle(t, Event::FromSink(held), &mut out);
                running[w] = None;
                run.ran[w] += 1;
                if !reported[id as usize] {
                    reported[id as usize] = true;
                    run.end_ms = ends;
                }
            }
            if running[w].is_none() {
                running[w] = queues[w].pop_front().map(|id| (id, now_ms + task_ms[w]));
                if w == 1 && running[w].is_some() {
                    run.slow_starts.push(now_ms);
                }
            }
        }
        if reported.iter().all(|&r| r) {
            break;
        }
    }
    assert!(
        reported.iter().all(|&r| r),
        "never ended: ran {:?}",
        run.ran
    );
    run.redispatched = d.counters().redispatched;
    run
}

#[test]
fn a_task_the_farm_would_finish_before_a_slow_worker_could_is_left_to_the_others() {
    // Alone, the fast worker takes 400 ms. The slow one runs its probe (300 ms) and is
    // then given no task it would end after the fast one ended the rest: the batch ends
    // within a task of the fast one alone, with nothing copied at the end.
    let run = fast_and_slow_on_a_list(40, Fast::Works);
    let (end_ms, ran) = (run.end_ms, run.ran);
    assert_eq!(ran[1], 1, "the slow worker ran {ran:?}");
    assert_eq!(run.redispatched, 0, "ended at {end_ms} ms, ran {ran:?}");
    assert!(end_ms <= 400 + 10, "ended at {end_ms} ms, ran {ran:?}");
    // Left waiting after its probe, the slow worker takes the rest when the fast one
    // leaves.
    let run = fast_and_slow_on_a_list(40, Fast::LeavesAt(320));
    assert!(run.ran[1] > 2, "the slow worker ran {:?}", run.ran);
    // A fast worker that stops reporting while it holds tasks (a peer that lies about its
    // speed, say) keeps the slow one waiting a heartbeat or two, not until the backup rule
    // (4 x 10 ms + 500 ms after its last task was given).
    let run = fast_and_slow_on_a_list(40, Fast::SitsOnItsTasksFrom(330));
    let next = run.slow_starts.iter().find(|&&at| at >= 330);
    assert!(
        next.is_some_and(|&at| at <= 330 + 300),
        "the slow worker started at {:?}",
        run.slow_starts
    );
}

#[test]
fn a_failure_does_not_measure_a_workers_speed() {
    // A task that fails at once says nothing of how fast its worker runs tasks: counted,
    // the worker would look a thousand times faster than the others and be waited for.
    let (mut d, now, mut out) = list_started(4, &["w"]);
    let first = out
        .iter()
        .find_map(|c| match c {
            Command::Tasks { tasks, .. } => tasks.first().map(|t| t.id),
            _ => None,
        })
        .expect("a task went out");
    report_as(&mut d, now, "w", first, 10, Status::Failed, &mut out);
    d.handle(now, Event::Tick, &mut out);
    assert_eq!(d.workers()[0].us_per_ms, None);
    let next = out
        .iter()
        .rev()
        .find_map(|c| match c {
            Command::Tasks { tasks, .. } => tasks.first().map(|t| t.id),
            _ => None,
        })
        .expect("another task went out");
    report(&mut d, now, "w", next, 10_000, &mut out);
    assert_eq!(d.workers()[0].us_per_ms, Some(1000.0));
}

/// The ids of the tasks `out` sends to the worker named `name`.
fn tasks_to(d: &Dispatcher, out: &[Command], name: &str) -> Vec<u32> {
    out.iter()
        .filter_map(|c| match c {
            Command::Tasks { worker, tasks, .. }
                if d.workers()[*worker as usize].info.name == name =>
            {
                Some(tasks.iter().map(|t| t.id))
            }
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn a_worker_measured_on_one_cheap_task_keeps_no_one_waiting_past_its_pace() {
    // A list of tasks declared alike (bands of a picture): "a" reports its first in 0.1 ms,
    // a band of sky, and looks a hundred times faster than "b", which reports its first
    // in 10 ms: "b" is left waiting as outpaced. But "a" goes on to a band through the set
    // and reports nothing. Once it has run past what its pace predicts, the others look
    // again, and by how long it has run, "b" is not outpaced: it takes tasks within a few
    // of "a"'s predicted tasks, not at the next heartbeat (100 ms), woken by no message.
    let (mut d, base, mut out) = list_started(20, &["a", "b"]);
    let first_a = tasks_to(&d, &out, "a");
    let first_b = tasks_to(&d, &out, "b");
    assert_eq!((first_a.len(), first_b.len()), (1, 1), "{out:?}");
    let ms = |n: f64| base + Duration::from_secs_f64(n / 1e3);
    out.clear();
    report(&mut d, ms(9.9), "a", first_a[0], 100, &mut out);
    d.handle(ms(9.9), Event::Tick, &mut out);
    assert!(!tasks_to(&d, &out, "a").is_empty(), "{out:?}");
    out.clear();
    report(&mut d, ms(9.95), "b", first_b[0], 10_000, &mut out);
    d.handle(ms(9.95), Event::Tick, &mut out);
    assert!(
        tasks_to(&d, &out, "b").is_empty(),
        "b is outpaced at first: {out:?}"
    );
    // From here only the dispatcher's own deadlines wake it.
    let mut now = ms(9.95);
    let taken_at = loop {
        let next = d.next_deadline().max(now + Duration::from_micros(1));
        assert!(next < base + INTERVAL * 3, "nothing was handed out");
        now = next;
        out.clear();
        d.handle(now, Event::Tick, &mut out);
        if !tasks_to(&d, &out, "b").is_empty() {
            break now.duration_since(base);
        }
    };
    assert!(
        taken_at < Duration::from_millis(15),
        "b took a task {taken_at:?} after the start"
    );
}

#[test]
fn workers_a_report_leaves_idle_together_in_a_lists_tail_each_take_over_at_once() {
    // Six tasks on "a" and "b" (10 ms each) and two workers that never report. At 25 ms
    // "a" and "b" report their second tasks in the same instant with nothing left to hand
    // out, and the silent workers' tasks have been held over twice what a copy would take:
    // each takes over one, the second within the millisecond the end game waits between
    // runs, not at the next tail probe (every 20 ms, the last at 10 ms).
    let (mut d, base, mut out) = list_started(6, &["a", "b", "s1", "s2"]);
    let first: Vec<Vec<u32>> = ["a", "b", "s1", "s2"]
        .iter()
        .map(|name| tasks_to(&d, &out, name))
        .collect();
    assert!(first.iter().all(|t| t.len() == 1), "{out:?}");
    let ms = |n| base + Duration::from_millis(n);
    out.clear();
    report(&mut d, ms(10), "a", first[0][0], 10_000, &mut out);
    report(&mut d, ms(10), "b", first[1][0], 10_000, &mut out);
    d.handle(ms(10), Event::Tick, &mut out);
    let second = [tasks_to(&d, &out, "a"), tasks_to(&d, &out, "b")];
    assert!(second.iter().all(|t| t.len() == 1), "{out:?}");
    let at = ms(25);
    out.clear();
    report(&mut d, at, "a", second[0][0], 10_000, &mut out);
    report(&mut d, at, "b", second[1][0], 10_000, &mut out);
    d.handle(at, Event::Tick, &mut out);
    let mut now = at;
    while tasks_to(&d, &out, "a").is_empty() || tasks_to(&d, &out, "b").is_empty() {
        now = d.next_deadline().max(now + Duration::from_micros(1));
        assert!(now < at + INTERVAL, "no copies went out: {out:?}");
        d.handle(now, Event::Tick, &mut out);
    }
    let mut copied = [tasks_to(&d, &out, "a"), tasks_to(&d, &out, "b")].concat();
    copied.sort_unstable();
    let mut silent = [first[2][0], first[3][0]];
    silent.sort_unstable();
    assert_eq!(copied, silent, "{out:?}");
    assert!(
        now <= at + END_GAME_REACT,
        "the second copy went out {:?} after the reports",
        now - at
    );
}

#[test]
fn workers_not_yet_measured_do_not_cut_a_measured_workers_window() {
    // Tasks declared 10 ms that take "fast" 100 ms (a band declared alike, dearer than
    // said), beside four workers still on their first tasks. Counted at the declared speed,
    // the four would seem to finish the batch in a tenth of the time: "fast" would be held
    // to one task at a time, a round trip lost between tasks. Not yet measured, they count
    // for nothing, and "fast" holds its window (more than one task).
    let (mut d, base, mut out) = list_started(40, &["fast", "u1", "u2", "u3", "u4"]);
    let first = tasks_to(&d, &out, "fast");
    assert_eq!(first.len(), 1, "{out:?}");
    out.clear();
    let at = base + Duration::from_millis(100);
    report(&mut d, at, "fast", first[0], 100_000, &mut out);
    d.handle(at, Event::Tick, &mut out);
    assert!(tasks_to(&d, &out, "fast").len() > 1, "{out:?}");
}

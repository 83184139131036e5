//! Properties of the worker's flow on a fake clock: no tasks are asked for before the sink
//! welcomes the worker; every finished task's result reaches the sink exactly once, before
//! its credit, however often the sink's queue is full; silence and refusals are answered.

use super::*;
use crate::protocol::CODEC_LZ4;
use proptest::prelude::*;

fn config() -> FlowConfig {
    FlowConfig {
        info: WorkerInfo {
            name: "w".into(),
            session: 1,
            backend: "sleep".into(),
            adapter: String::new(),
            window_hint: 1,
            codecs: 0,
            fill: 0,
        },
        heartbeat: Heartbeat {
            interval: Duration::from_millis(100),
            liveness: 3,
        },
        ventilator: "tcp://v:5557".into(),
        sink: "tcp://s:5558".into(),
        max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
        announce: false,
        exit_when_done: false,
        batch_wait: None,
    }
}

fn finished(id: u32, status: Status) -> Finished {
    Finished {
        batch: 9,
        outcome: Outcome {
            task: Task {
                id,
                workload_ms: 1,
                ..Default::default()
            },
            status,
            wall_us: 1000,
            ..Outcome::default()
        },
        finished_unix_ms: 5,
    }
}

/// A fake pump: the sink's queue is full when `full` says so, one answer per delivery.
struct Harness {
    base: Instant,
    t: Duration,
    flow: Flow,
    full: VecDeque<bool>,
    /// What reached each peer, in order.
    to_sink: Vec<Message>,
    to_ventilator: Vec<Message>,
    ran: Vec<Chunk>,
    stopped: Option<FlowStop>,
    notes: Vec<crate::events::Note>,
}

impl Harness {
    fn new(full: Vec<bool>) -> Harness {
        let base = Instant::now();
        Harness {
            base,
            t: Duration::ZERO,
            flow: Flow::new(config(), base),
            full: full.into(),
            to_sink: Vec::new(),
            to_ventilator: Vec::new(),
            ran: Vec::new(),
            stopped: None,
            notes: Vec::new(),
        }
    }

    fn event(&mut self, event: FlowEvent) {
        let now = self.base + self.t;
        let mut out = Vec::new();
        self.flow.handle(now, event, &mut out);
        while !out.is_empty() {
            let mut failed = Vec::new();
            for command in std::mem::take(&mut out) {
                match command {
                    FlowCommand::ToVentilator(m) => self.to_ventilator.push(m),
                    FlowCommand::ToSink(m) => self.to_sink.push(m),
                    FlowCommand::Deliver(d) => {
                        if d.results.is_some() && self.full.pop_front().unwrap_or(false) {
                            failed.push(FlowEvent::Undelivered(d));
                            continue;
                        }
                        if let Some(r) = d.results {
                            self.to_sink.push(r);
                        }
                        self.to_ventilator.push(d.done);
                    }
                    FlowCommand::Run(chunk) => self.ran.push(chunk),
                    FlowCommand::Leave | FlowCommand::Abandon(_) | FlowCommand::Yield { .. } => {}
                    FlowCommand::Stop(why) => self.stopped = Some(why),
                    FlowCommand::Note(note) => self.notes.push(note),
                }
            }
            for e in failed {
                self.flow.handle(now, e, &mut out);
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        self.t += Duration::from_millis(ms);
        self.event(FlowEvent::Tick);
    }

    fn hellos(&self) -> usize {
        self.to_ventilator
            .iter()
            .filter(|m| matches!(m, Message::Hello(_)))
            .count()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn every_result_reaches_the_sink_once_and_before_its_credit(
        full in proptest::collection::vec(proptest::bool::weighted(0.4), 0..200),
        groups in proptest::collection::vec(proptest::collection::vec((0u32..1000, proptest::bool::weighted(0.1)), 1..20), 1..20),
    ) {
        let mut h = Harness::new(full);
        h.event(FlowEvent::FromSink(Ok(Message::Welcome { codecs: 1 })));
        let mut ids = std::collections::BTreeSet::new();
        let mut failed = std::collections::BTreeSet::new();
        for (g, group) in groups.iter().enumerate() {
            let batch: Vec<Finished> = group
                .iter()
                .filter(|(id, _)| ids.insert(*id))
                .map(|&(id, f)| {
                    if f {
                        failed.insert(id);
                    }
                    finished(id, if f { Status::Failed } else { Status::Ok })
                })
                .collect();
            h.event(FlowEvent::Finished(batch));
            h.advance(if g % 3 == 0 { 10 } else { 1 });
        }
        // Time enough for every retry.
        for _ in 0..400 {
            h.advance(10);
        }
        prop_assert_eq!(h.flow.waiting_deliveries(), 0);
        // Each result once; each credit once; a credit only after its result.
        let mut sent_result = std::collections::BTreeMap::new();
        for (i, m) in h.to_sink.iter().enumerate() {
            if let Message::Results { results, .. } = m {
                for r in results {
                    prop_assert!(sent_result.insert(r.id, i).is_none(), "result {} sent twice", r.id);
                }
            }
        }
        let mut credited = std::collections::BTreeSet::new();
        for m in &h.to_ventilator {
            if let Message::Done { done, .. } = m {
                for d in done {
                    prop_assert!(credited.insert(d.id), "credit for {} twice", d.id);
                    prop_assert!(failed.contains(&d.id) || sent_result.contains_key(&d.id),
                        "credit for {} before its result", d.id);
                }
            }
        }
        prop_assert_eq!(credited, ids.clone());
        // Failed ones too: the sink keeps why a task failed, for a task given up on.
        prop_assert_eq!(sent_result.keys().copied().collect::<std::collections::BTreeSet<_>>(), ids);
    }
}

#[test]
fn no_tasks_are_asked_for_before_the_sink_welcomes_the_worker() {
    let mut h = Harness::new(Vec::new());
    for _ in 0..10 {
        h.advance(100);
    }
    assert_eq!(
        h.hellos(),
        0,
        "greeted the ventilator before the sink answered"
    );
    assert!(h.to_sink.iter().all(|m| matches!(m, Message::Join(_))));
    assert!(h.to_sink.len() >= 10, "the sink is greeted every heartbeat");
    h.event(FlowEvent::FromSink(Ok(Message::Welcome { codecs: 1 })));
    assert_eq!(h.hellos(), 1);
    assert_eq!(h.flow.link(), SinkLink::Welcomed);
}

#[test]
fn a_silent_sink_makes_the_worker_say_goodbye_until_it_answers() {
    let mut h = Harness::new(Vec::new());
    h.event(FlowEvent::FromSink(Ok(Message::Welcome { codecs: 1 })));
    // Two heartbeat timeouts (2 × 300 ms) of silence, then a little more.
    for _ in 0..8 {
        h.advance(100);
    }
    assert_eq!(h.flow.link(), SinkLink::Lost);
    assert!(h.to_ventilator.contains(&Message::Bye));
    let hellos = h.hellos();
    h.event(FlowEvent::FromSink(Ok(Message::Welcome { codecs: 1 })));
    assert_eq!(h.flow.link(), SinkLink::Welcomed);
    assert_eq!(h.hellos(), hellos + 1);
}

#[test]
fn refusals_and_a_broken_executor_stop_the_worker() {
    let mut h = Harness::new(Vec::new());
    h.event(FlowEvent::FromSink(Ok(Message::Refused {
        kind: crate::protocol::RefusalKind::NameTaken,
        reason: "taken".into(),
    })));
    assert!(matches!(h.stopped, Some(FlowStop::RefusedBySink { .. })));
    let mut h = Harness::new(Vec::new());
    h.event(FlowEvent::ExecutorFailed("the task thread panicked".into()));
    let why = h.stopped.expect("stopped").to_string();
    assert!(why.contains("panicked") && why.contains("leaves"), "{why}");
}

#[test]
fn tasks_go_to_the_executor_and_end_counts_the_batch() {
    let mut h = Harness::new(Vec::new());
    h.event(FlowEvent::FromSink(Ok(Message::Welcome { codecs: 1 })));
    h.event(FlowEvent::FromVentilator(Ok(Message::Tasks {
        batch: 3,
        job: Job::default(),
        tasks: vec![Task {
            id: 1,
            workload_ms: 2,
            ..Default::default()
        }],
        in_pieces: true,
    })));
    assert_eq!(h.ran.len(), 1);
    assert!(
        h.ran[0].in_pieces,
        "the executor is told to run the chunks in pieces"
    );
    h.event(FlowEvent::FromVentilator(Ok(Message::End {
        batch: 3,
        shutdown: false,
    })));
    assert_eq!(h.flow.counters().batches, 1);
    h.event(FlowEvent::FromVentilator(Err("garbage".into())));
    assert_eq!(h.flow.counters().rejected, 1);
}

#[test]
fn a_declined_batch_is_said_again_while_it_runs_and_its_tasks_never_run() {
    let mut h = Harness::new(Vec::new());
    h.event(FlowEvent::FromSink(Ok(Message::Welcome { codecs: 1 })));
    h.event(FlowEvent::FromVentilator(Ok(Message::Heartbeat {
        batch: 7,
    })));
    h.event(FlowEvent::Declined {
        batch: 7,
        reason: "no adapter".into(),
    });
    let declines = |h: &Harness| {
        h.to_ventilator
            .iter()
            .filter(|m| matches!(m, Message::Decline { batch: 7, .. }))
            .count()
    };
    assert_eq!(declines(&h), 1);
    // Said again with the next greeting, in case the first was lost.
    h.advance(150);
    assert_eq!(declines(&h), 2);
    // Tasks of the batch (from a ventilator that restarted) are declined, not run.
    h.event(FlowEvent::FromVentilator(Ok(Message::Data {
        batch: 7,
        job: Job::default(),
        task: Task {
            id: 0,
            workload_ms: 1,
            ..Default::default()
        },
        name: "in".into(),
        input: vec![1, 2, 3],
    })));
    assert!(h.ran.is_empty());
    assert_eq!(declines(&h), 3);
    // Once the batch is over, no more.
    h.event(FlowEvent::FromVentilator(Ok(Message::End {
        batch: 7,
        shutdown: false,
    })));
    h.advance(150);
    assert_eq!(declines(&h), 3);
}

#[test]
fn a_user_kernels_source_travels_with_its_tasks_and_the_backend_name_follows_auto() {
    let mut h = Harness::new(Vec::new());
    h.event(FlowEvent::FromSink(Ok(Message::Welcome { codecs: 1 })));
    let source = "@compute @workgroup_size(1) fn main() {}".to_owned();
    let job = Job {
        kernel: crate::kernels::Kernel::User.id(),
        source: crate::kernels::fnv1a(source.as_bytes()),
        ..Job::default()
    };
    h.event(FlowEvent::FromVentilator(Ok(Message::Kernel {
        batch: 2,
        source: source.clone(),
    })));
    h.event(FlowEvent::FromVentilator(Ok(Message::Tasks {
        batch: 2,
        job,
        tasks: vec![Task::default()],
        in_pieces: false,
    })));
    assert_eq!(h.ran[0].source.as_deref(), Some(source.as_str()));
    h.event(FlowEvent::Running {
        backend: "software".into(),
        adapter: "llvmpipe".into(),
        fill: 4096,
    });
    h.advance(150);
    let last_hello = h
        .to_ventilator
        .iter()
        .rev()
        .find_map(|m| match m {
            Message::Hello(info) => Some(info.clone()),
            _ => None,
        })
        .expect("a greeting");
    assert_eq!(
        (
            last_hello.backend.as_str(),
            last_hello.adapter.as_str(),
            last_hello.fill
        ),
        ("software", "llvmpipe", 4096)
    );
}

#[test]
fn outputs_are_compressed_only_in_a_codec_the_sink_said_it_takes() {
    for (sink_codecs, expected) in [(CODEC_LZ4, CODEC_LZ4), (0, 0)] {
        let mut h = Harness::new(Vec::new());
        h.flow.config.info.codecs = CODEC_LZ4;
        h.event(FlowEvent::FromSink(Ok(Message::Welcome {
            codecs: sink_codecs,
        })));
        h.event(FlowEvent::Finished(vec![finished(0, Status::Ok)]));
        let codecs: Vec<u8> = h
            .to_sink
            .iter()
            .filter_map(|m| match m {
                Message::Results { worker, .. } => Some(worker.codecs),
                _ => None,
            })
            .collect();
        assert_eq!(codecs, [expected], "the sink takes {sink_codecs}");
    }
}

//! Properties of the collector on a fake clock: whatever workers send, in whatever order,
//! with whatever repeats, each task is recorded once, made durable before the ventilator
//! hears of it, and the batch completes exactly when every task is held.

use super::*;
use crate::batch::Job;
use proptest::prelude::*;

const VENT: &[u8] = b"ventilator";

fn config() -> CollectConfig {
    CollectConfig {
        heartbeat: Heartbeat {
            interval: Duration::from_millis(100),
            liveness: 3,
        },
        final_stats_wait: Duration::from_millis(500),
        endpoint: "tcp://test:5558".into(),
        results_path: None,
        resume_advice: None,
        codecs: crate::protocol::CODEC_LZ4,
    }
}

fn worker(name: &str, session: u64) -> WorkerInfo {
    WorkerInfo {
        name: name.into(),
        session,
        backend: "sleep".into(),
        adapter: String::new(),
        window_hint: 1,
        codecs: 0,
        fill: 0,
    }
}

fn result(id: u32, status: Status) -> TaskResult {
    TaskResult {
        id,
        workload_ms: 1,
        status,
        wall_us: 1000,
        kernel_us: 0,
        checksum: 0,
        started_unix_ms: 1,
        finished_unix_ms: 2,
        ..TaskResult::default()
    }
}

fn announce(batch: u64, session: u64, tasks: u32) -> Message {
    Message::Batch {
        batch,
        session,
        started_unix_ms: 0,
        task_count: tasks,
        expected_ms: u64::from(tasks),
        longest_ms: 1,
        job: Job::default(),
        names: Vec::new(),
    }
}

/// The collector, its clock, and everything it asked for, in order.
struct Harness {
    base: Instant,
    t: Duration,
    c: Collector,
    log: Vec<SinkCommand>,
}

impl Harness {
    fn new() -> Harness {
        let base = Instant::now();
        Harness {
            base,
            t: Duration::ZERO,
            c: Collector::new(config(), None, base, 1_000_000),
            log: Vec::new(),
        }
    }

    fn event(&mut self, event: SinkEvent) {
        let mut out = Vec::new();
        self.c.handle(self.base + self.t, event, &mut out);
        self.log.extend(out);
    }

    fn from(&mut self, peer: &[u8], message: Message) {
        self.event(SinkEvent::FromPeer {
            routing_id: peer.to_vec(),
            message,
        });
        self.event(SinkEvent::Tick);
    }

    fn sent_to(&self, peer: &[u8]) -> Vec<&Message> {
        self.log
            .iter()
            .filter_map(|c| match c {
                SinkCommand::Send { to, message } if to == peer => Some(message),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// A results message from worker w with these (id, failed) results.
    Results(u8, Vec<(u32, bool)>),
    /// The ventilator announces again (a heartbeat), or restarts (a new session).
    Announce { restart: bool },
    /// Time passes.
    Advance(u16),
}

fn step(tasks: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..4, proptest::collection::vec((0..tasks, proptest::bool::weighted(0.1)), 1..8))
            .prop_map(|(w, r)| Step::Results(w, r)),
        1 => proptest::bool::ANY.prop_map(|restart| Step::Announce { restart }),
        1 => (1u16..300).prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn each_task_is_recorded_once_and_durable_before_it_is_acknowledged(
        tasks in 1u32..60,
        early in proptest::collection::vec((0u32..60, proptest::bool::weighted(0.1)), 0..10),
        steps in (1u32..60).prop_flat_map(|n| proptest::collection::vec(step(n), 0..80)),
    ) {
        let mut h = Harness::new();
        let batch = 7;
        let mut session = 1;
        // Results may come before the batch is known (a restarted sink).
        let early: Vec<TaskResult> = early
            .iter()
            .filter(|(id, _)| *id < tasks)
            .map(|&(id, failed)| result(id, if failed { Status::Failed } else { Status::Ok }))
            .collect();
        if !early.is_empty() {
            h.from(b"w9", Message::Results { batch, worker: worker("w9", 9), results: early });
        }
        h.from(VENT, announce(batch, session, tasks));
        let mut complete_at = None;
        for s in &steps {
            match s {
                Step::Results(w, r) => {
                    let results = r
                        .iter()
                        .filter(|(id, _)| *id < tasks)
                        .map(|&(id, failed)| result(id, if failed { Status::Failed } else { Status::Ok }))
                        .collect::<Vec<_>>();
                    if results.is_empty() {
                        continue;
                    }
                    let name = format!("w{w}");
                    h.from(name.as_bytes(), Message::Results { batch, worker: worker(&name, u64::from(*w)), results });
                }
                Step::Announce { restart } => {
                    if *restart {
                        session += 1;
                    }
                    h.from(VENT, announce(batch, session, tasks));
                }
                Step::Advance(ms) => {
                    h.t += Duration::from_millis(u64::from(*ms));
                    h.event(SinkEvent::Tick);
                }
            }
            if complete_at.is_none() && h.c.progress() == Some((tasks as usize, tasks as usize)) {
                complete_at = Some(h.log.len());
            }
        }
        // Every id recorded at most once, and only ids that were sent without failure.
        let mut recorded = vec![0u32; tasks as usize];
        let mut synced = vec![false; tasks as usize];
        let mut completes = 0;
        for command in &h.log {
            match command {
                SinkCommand::Record { results, .. } => {
                    for r in results {
                        prop_assert_ne!(r.status, Status::Failed);
                        recorded[r.id as usize] += 1;
                        synced[r.id as usize] = false;
                    }
                }
                SinkCommand::Sync => synced.iter_mut().for_each(|s| *s = true),
                SinkCommand::Send { message: Message::Held { ids, .. }, .. } => {
                    for &id in ids {
                        prop_assert!(recorded[id as usize] == 1 && synced[id as usize],
                            "task {} acknowledged before it was recorded and synced", id);
                    }
                }
                SinkCommand::Send { message: Message::Complete { .. }, .. } => completes += 1,
                _ => {}
            }
        }
        prop_assert!(recorded.iter().all(|&n| n <= 1), "a task recorded twice: {:?}", recorded);
        let held = recorded.iter().filter(|&&n| n == 1).count();
        prop_assert_eq!(h.c.progress(), Some((held, tasks as usize)));
        // Complete is said once when every task is held, and again only when asked.
        if held == tasks as usize {
            prop_assert!(completes >= 1);
        } else {
            prop_assert_eq!(completes, 0);
        }
        let report = h.c.report(h.base + h.t).expect("a report");
        prop_assert_eq!(report.workers.iter().map(|w| w.tasks).sum::<u64>(), held as u64);
    }
}

#[test]
fn a_second_ventilator_is_refused_while_a_batch_runs() {
    let mut h = Harness::new();
    h.from(VENT, announce(1, 1, 10));
    h.from(b"intruder", announce(2, 5, 10));
    let refusals = h.sent_to(b"intruder");
    assert!(
        matches!(refusals.as_slice(), [Message::Refused { kind: RefusalKind::Busy, reason }] if reason.contains("0000000000000001")),
        "{refusals:?}"
    );
    // The first ventilator is still the one served.
    h.from(
        b"w",
        Message::Results {
            batch: 1,
            worker: worker("w", 1),
            results: vec![result(3, Status::Ok)],
        },
    );
    assert!(h
        .sent_to(VENT)
        .iter()
        .any(|m| matches!(m, Message::Held { ids, .. } if ids == &[3])));
}

#[test]
fn early_results_are_bounded_in_messages() {
    let mut h = Harness::new();
    for i in 0..(MAX_EARLY_MESSAGES + 100) {
        h.event(SinkEvent::FromPeer {
            routing_id: b"flood".to_vec(),
            message: Message::Results {
                batch: 1,
                worker: worker("flood", 1),
                results: vec![result(i as u32 % 10, Status::Ok)],
            },
        });
    }
    assert_eq!(h.c.early_held_back().0, MAX_EARLY_MESSAGES);
    assert_eq!(h.c.rejected, 100);
}

#[test]
fn early_results_are_bounded_in_the_bytes_they_take() {
    let mut h = Harness::new();
    let name = "n".repeat(255);
    let mut sent = 0usize;
    // Messages of 64 results with 255-byte names, until the sink stops holding them back.
    while h.c.rejected == 0 {
        let results: Vec<TaskResult> = (0..64)
            .map(|i| TaskResult {
                name: name.clone(),
                ..result(i, Status::Ok)
            })
            .collect();
        h.event(SinkEvent::FromPeer {
            routing_id: b"flood".to_vec(),
            message: Message::Results {
                batch: 1,
                worker: worker("flood", 1),
                results,
            },
        });
        sent += 64;
        assert!(sent <= MAX_EARLY_RESULTS + 64, "never bounded");
    }
    let (messages, results) = h.c.early_held_back();
    // What is held takes what the bound says, counted from the allocations themselves.
    let held = results * (std::mem::size_of::<TaskResult>() + 255)
        + messages * std::mem::size_of::<WorkerInfo>();
    assert!(held <= MAX_EARLY_BYTES, "{held} bytes held back");
    assert!(
        held > MAX_EARLY_BYTES / 2,
        "the bound is used: {held} bytes"
    );
    assert!(
        results < MAX_EARLY_RESULTS,
        "bytes bind before the count: {results}"
    );
}

#[test]
fn a_live_name_is_refused_and_a_dead_ones_is_handed_over() {
    let mut h = Harness::new();
    h.from(b"a/1", Message::Join(worker("a", 1)));
    assert!(matches!(
        h.sent_to(b"a/1").as_slice(),
        [Message::Welcome { .. }]
    ));
    // A second process named "a" while the first answers: refused.
    h.from(b"a/2", Message::Join(worker("a", 2)));
    assert!(matches!(
        h.sent_to(b"a/2").as_slice(),
        [Message::Refused {
            kind: RefusalKind::NameTaken,
            ..
        }]
    ));
    // The first one's connection is gone: a third takes the name.
    let mut out = Vec::new();
    h.c.handle(
        h.base,
        SinkEvent::FromPeer {
            routing_id: b"a/3".to_vec(),
            message: Message::Join(worker("a", 3)),
        },
        &mut out,
    );
    assert!(out.iter().any(
        |c| matches!(c, SinkCommand::Send { to, message: Message::Welcome { .. } } if to == b"a/1")
    ));
    h.log.extend(out);
    h.event(SinkEvent::Unreachable(b"a/1".to_vec()));
    h.event(SinkEvent::Tick);
    assert!(matches!(
        h.sent_to(b"a/3").as_slice(),
        [Message::Welcome { .. }]
    ));
}

#[test]
fn the_batch_finishes_after_the_final_counters_or_the_wait() {
    let mut h = Harness::new();
    h.from(VENT, announce(1, 1, 1));
    h.from(
        b"w",
        Message::Results {
            batch: 1,
            worker: worker("w", 1),
            results: vec![result(0, Status::Ok)],
        },
    );
    assert!(h
        .sent_to(VENT)
        .iter()
        .any(|m| matches!(m, Message::Complete { .. })));
    assert!(!h.c.is_finished());
    h.t += Duration::from_millis(600);
    h.event(SinkEvent::Tick);
    assert!(h.c.is_finished());
    assert!(h.log.contains(&SinkCommand::Finished));
}

/// A divisible job of `items` items announced by the ventilator.
fn announce_job(items: u64, hits: u32) -> Message {
    let mut constants = [0; crate::kernels::CONSTANTS];
    constants[crate::kernels::search::HITS_WANTED] = hits;
    Message::Batch {
        batch: 7,
        session: 1,
        started_unix_ms: 0,
        task_count: 0,
        expected_ms: 0,
        longest_ms: 0,
        job: Job {
            kernel: if hits > 0 {
                crate::kernels::Kernel::Search.id()
            } else {
                0
            },
            items,
            constants,
            ..Job::default()
        },
        names: Vec::new(),
    }
}

fn chunk(id: u32, first: u64, items: u32) -> TaskResult {
    TaskResult {
        first,
        items,
        ..result(id, Status::Ok)
    }
}

/// What the collector told the ventilator it holds, as one set of items.
fn told_items(h: &Harness) -> crate::intervals::IntervalSet {
    let mut told = crate::intervals::IntervalSet::new();
    for m in h.sent_to(VENT) {
        if let Message::HeldItems { ranges, .. } = m {
            for &(a, b) in ranges {
                told.insert(a..b);
            }
        }
    }
    told
}

proptest! {
    /// Chunks in any order, overlapping (a chunk redone after its worker was thought lost,
    /// carved otherwise by a restarted ventilator) and repeated: each item is recorded once,
    /// the ventilator hears exactly the items held, and the job completes exactly when
    /// every item is held.
    #[test]
    fn a_job_counts_items_once(
        items in 1u64..400,
        chunks in proptest::collection::vec((0u64..400, 1u32..60), 1..80),
    ) {
        let mut h = Harness::new();
        h.from(VENT, announce_job(items, 0));
        let mut model = vec![false; items as usize];
        for (n, &(first, len)) in chunks.iter().enumerate() {
            let first = first % items;
            let len = len.min((items - first) as u32);
            h.from(b"w", Message::Results {
                batch: 7,
                worker: worker("w", 1),
                results: vec![chunk(n as u32, first, len)],
            });
            for i in first..first + u64::from(len) {
                model[i as usize] = true;
            }
        }
        let recorded: u64 = h.log.iter().filter_map(|c| match c {
            SinkCommand::Record { results, .. } => Some(results.iter().map(|r| u64::from(r.items)).sum::<u64>()),
            _ => None,
        }).sum();
        let held = model.iter().filter(|&&b| b).count() as u64;
        // Records keep whole chunks: at least every held item, and a chunk adding nothing
        // new is never recorded.
        prop_assert!(recorded >= held);
        let told = told_items(&h);
        prop_assert_eq!(told.covered(), held);
        prop_assert_eq!(h.c.progress(), Some((held as usize, items as usize)));
        let complete = h.sent_to(VENT).iter().any(|m| matches!(m, Message::Complete { .. }));
        prop_assert_eq!(complete, held == items);
    }
}

#[test]
fn a_late_chunk_adds_nothing_and_is_counted_as_late() {
    let mut h = Harness::new();
    h.from(VENT, announce_job(100, 0));
    let results = |rs: Vec<TaskResult>| Message::Results {
        batch: 7,
        worker: worker("w", 1),
        results: rs,
    };
    h.from(b"w", results(vec![chunk(0, 0, 60)]));
    h.from(b"w", results(vec![chunk(0, 0, 60)]));
    h.from(b"w", results(vec![chunk(1, 50, 50)]));
    assert_eq!(h.c.duplicates(), 1);
    assert!(h
        .sent_to(VENT)
        .iter()
        .any(|m| matches!(m, Message::Complete { .. })));
    // A chunk outside the job is refused, not counted.
    h.from(b"w", results(vec![chunk(2, 90, 20)]));
    let report = h.c.report(h.base).expect("a report");
    let job = report.job.expect("a job's figures");
    assert_eq!((job.items, job.held_items, job.late_items), (100, 100, 70));
    assert_eq!(report.rejected, 1);
}

#[test]
fn a_search_job_completes_at_its_hits() {
    let mut h = Harness::new();
    h.from(VENT, announce_job(1000, 3));
    let with_hits = |id: u32, first: u64, hits: &[u32]| {
        let mut output = (hits.len() as u32).to_le_bytes().to_vec();
        for k in hits {
            output.extend_from_slice(&k.to_le_bytes());
        }
        TaskResult {
            output,
            ..chunk(id, first, 100)
        }
    };
    let send = |h: &mut Harness, r: TaskResult| {
        h.from(
            b"w",
            Message::Results {
                batch: 7,
                worker: worker("w", 1),
                results: vec![r],
            },
        )
    };
    send(&mut h, with_hits(0, 0, &[5, 17]));
    assert!(!h
        .sent_to(VENT)
        .iter()
        .any(|m| matches!(m, Message::Complete { .. })));
    send(&mut h, with_hits(1, 500, &[512]));
    assert!(h
        .sent_to(VENT)
        .iter()
        .any(|m| matches!(m, Message::Complete { .. })));
    let job = h.c.report(h.base).and_then(|r| r.job).expect("a job");
    assert_eq!((job.held_items, job.hits_wanted), (200, 3));
}

/// A batch of `tasks` tasks, every one replicated.
fn announce_replicated(tasks: u32) -> Message {
    let mut message = announce(1, 1, tasks);
    if let Message::Batch { job, .. } = &mut message {
        job.replicate_percent = 100;
    }
    message
}

fn copy_of(id: u32, output: u8) -> TaskResult {
    TaskResult {
        output: vec![output; 8],
        ..result(id, Status::Ok)
    }
}

fn results_of(name: &str, r: TaskResult) -> Message {
    Message::Results {
        batch: 1,
        worker: worker(name, 1),
        results: vec![r],
    }
}

fn agains(h: &Harness) -> Vec<(u32, Vec<String>)> {
    h.sent_to(VENT)
        .into_iter()
        .filter_map(|m| match m {
            Message::Again { id, exclude, .. } => Some((*id, exclude.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_replicated_task_is_held_once_a_second_worker_agrees() {
    let mut h = Harness::new();
    h.from(VENT, announce_replicated(2));
    h.from(b"a/1", results_of("a", copy_of(0, 7)));
    assert_eq!(h.c.progress(), Some((0, 2)), "one copy holds nothing");
    assert_eq!(agains(&h), vec![(0, vec!["a".to_owned()])]);
    h.from(b"b/1", results_of("b", copy_of(0, 7)));
    assert_eq!(h.c.progress(), Some((1, 2)));
    assert_eq!(h.c.replicated, 1);
    assert!(h.c.replica_mismatches.is_empty());
    let recorded: Vec<&str> = h
        .log
        .iter()
        .filter_map(|c| match c {
            SinkCommand::Record { worker, .. } => Some(worker.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(recorded, ["a"], "recorded once");
}

#[test]
fn copies_that_disagree_are_settled_by_a_third_and_a_worker_odd_twice_is_quarantined() {
    let mut h = Harness::new();
    h.from(VENT, announce_replicated(3));
    for id in 0..2 {
        // a and b disagree: a third copy is asked for, from neither.
        h.from(b"a/1", results_of("a", copy_of(id, 1)));
        h.from(b"bad/1", results_of("bad", copy_of(id, 9)));
        assert_eq!(
            agains(&h).last(),
            Some(&(id, vec!["a".to_owned(), "bad".to_owned()]))
        );
        h.from(b"c/1", results_of("c", copy_of(id, 1)));
    }
    assert_eq!(h.c.progress(), Some((2, 3)));
    assert_eq!(h.c.replica_mismatches.len(), 2);
    assert_eq!(h.c.replica_mismatches[0].differing, ["bad"]);
    assert_eq!(h.c.replica_mismatches[0].agreed, ["a", "c"]);
    let quarantined: Vec<&Message> = h
        .sent_to(VENT)
        .into_iter()
        .filter(|m| matches!(m, Message::Quarantine { .. }))
        .collect();
    assert!(
        matches!(quarantined.as_slice(), [Message::Quarantine { worker, .. }] if worker == "bad"),
        "{quarantined:?}"
    );
    // The copy kept is the majority's.
    let kept: Vec<Vec<u8>> = h
        .log
        .iter()
        .filter_map(|c| match c {
            SinkCommand::Record { results, .. } => Some(results[0].output.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(kept, vec![vec![1; 8], vec![1; 8]]);
}

#[test]
fn a_worker_never_agrees_with_itself() {
    let mut h = Harness::new();
    h.from(VENT, announce_replicated(3));
    // Only a could run task 0 again: held, but not counted as replicated.
    h.from(b"a/1", results_of("a", copy_of(0, 1)));
    h.from(b"a/1", results_of("a", copy_of(0, 1)));
    assert_eq!(h.c.progress(), Some((1, 3)));
    assert_eq!((h.c.replicated, h.c.unconfirmed), (0, 1));
    // a and b disagree and only a can run it again: a mismatch, nobody blamed.
    h.from(b"a/1", results_of("a", copy_of(1, 1)));
    h.from(b"b/1", results_of("b", copy_of(1, 2)));
    h.from(b"a/1", results_of("a", copy_of(1, 1)));
    assert_eq!(h.c.progress(), Some((2, 3)));
    assert_eq!(h.c.replica_mismatches.len(), 1);
    assert!(h.c.replica_mismatches[0].agreed.is_empty());
    assert!(h.c.blamed.is_empty(), "{:?}", h.c.blamed);
    // A worker whose own copies differ is to blame.
    h.from(b"c/1", results_of("c", copy_of(2, 1)));
    h.from(b"c/1", results_of("c", copy_of(2, 2)));
    assert_eq!(h.c.blamed.get("c"), Some(&1));
}

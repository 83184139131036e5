//! Workers against tasks that do not end and ventilators that ask too much: a kernel past
//! `--task-timeout` fails its task and the worker goes on; SIGTERM ends a worker at once
//! whatever it is running, handing its tasks back; a task beyond `--max-payload` is
//! declined before anything is allocated; a worker that arrives after its batch leaves.
//! The test plays the ventilator and the sink with raw sockets where it must choose what
//! a worker is sent. A ventilator that wants a chunk's tail back gets what the worker did
//! and no more.

use crate::util::{self, Proc};
use conquer::batch::{Job, Task};
use conquer::kernels::{self, search, Kernel};
use conquer::protocol::{Done, Message, Status};
use std::time::{Duration, Instant};

/// A ventilator and a sink played by the test: both ROUTERs bound on loopback. The sink
/// side welcomes every join; what the worker says to the ventilator is handed to the test.
struct Peers {
    tasks: zmq::Socket,
    results: zmq::Socket,
    tasks_ep: String,
    results_ep: String,
    /// The worker's routing id on the tasks socket, once it said hello.
    worker: Option<Vec<u8>>,
    /// What the worker sent the sink's side, in order.
    got: Vec<conquer::protocol::TaskResult>,
    _ctx: zmq::Context,
}

impl Peers {
    fn bind() -> Peers {
        let ctx = zmq::Context::new();
        let socket = || {
            let s = ctx.socket(zmq::ROUTER).unwrap();
            s.set_linger(0).unwrap();
            s.bind("tcp://127.0.0.1:0").unwrap();
            let ep = s.get_last_endpoint().unwrap().unwrap();
            (s, ep)
        };
        let (tasks, tasks_ep) = socket();
        let (results, results_ep) = socket();
        Peers {
            tasks,
            results,
            tasks_ep,
            results_ep,
            worker: None,
            got: Vec::new(),
            _ctx: ctx,
        }
    }

    /// Starts `conquer worker NAME` against these peers.
    fn worker(&self, name: &str, args: &[&str]) -> Proc {
        let mut all = vec![
            "worker",
            "--ventilator",
            &self.tasks_ep,
            "--sink",
            &self.results_ep,
            "--name",
            name,
        ];
        all.extend_from_slice(args);
        Proc::start(name, &all)
    }

    /// The next message the worker sends the ventilator (answering the sink's side
    /// meanwhile), or `None` at `deadline`.
    fn next(&mut self, deadline: Instant) -> Option<Message> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut items = [
                self.tasks.as_poll_item(zmq::POLLIN),
                self.results.as_poll_item(zmq::POLLIN),
            ];
            zmq::poll(&mut items, left.as_millis().min(100) as i64).unwrap();
            while let Ok(frames) = self.results.recv_multipart(zmq::DONTWAIT) {
                // A result's outputs follow its head, a frame each.
                let parts: Vec<&[u8]> = frames[2..].iter().map(Vec::as_slice).collect();
                let decoded =
                    Message::decode_parts(&frames[1], &parts, conquer::protocol::MAX_MAX_PAYLOAD);
                match decoded {
                    Ok(Message::Join(_)) => {
                        self.results
                            .send_multipart(
                                [frames[0].clone(), Message::Welcome { codecs: 0 }.encode()],
                                0,
                            )
                            .unwrap();
                    }
                    Ok(Message::Results { results, .. }) => self.got.extend(results),
                    _ => {}
                }
            }
            if let Ok(frames) = self.tasks.recv_multipart(zmq::DONTWAIT) {
                self.worker = Some(frames[0].clone());
                if let Ok(message) = Message::decode(&frames[1]) {
                    return Some(message);
                }
            }
        }
    }

    /// Waits for the worker's first hello.
    fn hello(&mut self) {
        let deadline = Instant::now() + util::PATIENCE;
        while !matches!(self.next(deadline), Some(Message::Hello(_))) {
            assert!(Instant::now() < deadline, "the worker never said hello");
        }
    }

    fn send(&self, message: Message) {
        let to = self.worker.clone().expect("the worker said hello");
        self.tasks
            .send_multipart([to, message.encode()], 0)
            .unwrap();
    }

    /// Waits for what the worker reports done of `batch` until `ids` are all in; the
    /// outcomes by id.
    fn done(&mut self, ids: &[u32]) -> Vec<Done> {
        let deadline = Instant::now() + util::PATIENCE;
        let mut done: Vec<Done> = Vec::new();
        while !ids.iter().all(|id| done.iter().any(|d| d.id == *id)) {
            match self.next(deadline) {
                Some(Message::Done { done: more, .. }) => done.extend(more),
                Some(_) => {}
                None => panic!("tasks {ids:?} never all done; got {done:?}"),
            }
        }
        done
    }

    /// Waits for a message `wanted` picks from the worker.
    fn until<T>(&mut self, what: &str, mut wanted: impl FnMut(Message) -> Option<T>) -> T {
        let deadline = Instant::now() + util::PATIENCE;
        loop {
            match self.next(deadline) {
                Some(message) => {
                    if let Some(found) = wanted(message) {
                        return found;
                    }
                }
                None => panic!("the worker never sent {what}"),
            }
        }
    }
}

const BATCH: u64 = 0x7e57_0000_0000_0001;

/// A user kernel whose items loop `input[i]` cubed times, sixteen steps an iteration:
/// with a large count it runs for minutes on a software adapter.
fn runaway_kernel() -> String {
    let steps: String = (0..16)
        .map(|k| format!("acc = (acc * 1664525u + 1013904223u) ^ (a + b + c + {k}u);\n"))
        .collect();
    format!(
        "struct Params {{ task_id: u32, offset: u32, count: u32, items: u32, input_bytes: u32, \
         output_bytes: u32, _pad0: u32, _pad1: u32, c: array<vec4<u32>, 2> }}\n\
         @group(0) @binding(0) var<uniform> params: Params;\n\
         @group(0) @binding(1) var<storage, read> input: array<u32>;\n\
         @group(0) @binding(2) var<storage, read_write> output: array<u32>;\n\
         @compute @workgroup_size(64)\n\
         fn main(@builtin(global_invocation_id) gid: vec3<u32>) {{\n\
           if (gid.x >= params.count) {{ return; }}\n\
           let i = params.offset + gid.x;\n\
           let n = input[i];\n\
           var acc = i;\n\
           for (var a = 0u; a < n; a++) {{ for (var b = 0u; b < n; b++) {{ \
             for (var c = 0u; c < n; c++) {{ {steps} }} }} }}\n\
           output[i] = acc;\n\
         }}\n"
    )
}

/// The runaway kernel's job, and `n` items of loop count `count` as a task's input.
fn runaway_job(source: &str) -> Job {
    Job {
        kernel: Kernel::User.id(),
        source: kernels::fnv1a(source.as_bytes()),
        item_bytes: 4,
        output_bytes: kernels::PER_ITEM | 4,
        ..Job::default()
    }
}

fn items(n: usize, count: u32) -> Vec<u8> {
    count.to_le_bytes().repeat(n)
}

fn data(job: Job, id: u32, input: Vec<u8>) -> Message {
    Message::Data {
        batch: BATCH,
        job,
        task: Task::numbered(id),
        name: format!("in{id}.u32"),
        input,
    }
}

#[test]
fn r01_a_kernel_past_task_timeout_fails_its_task_and_the_worker_goes_on() {
    if crate::gpu::adapter(conquer::backend::gpu::AdapterClass::Software).is_none() {
        return;
    }
    let mut peers = Peers::bind();
    let worker = peers.worker("runaway", &["--backend", "software", "--task-timeout", "2"]);
    peers.hello();
    let source = runaway_kernel();
    let job = runaway_job(&source);
    peers.send(Message::Kernel {
        batch: BATCH,
        source,
    });
    // A 1 MiB input of items that loop for minutes, then three that end at once.
    let sent = Instant::now();
    peers.send(data(job, 0, items(1 << 18, 60_000)));
    for id in 1..=3 {
        peers.send(data(job, id, items(16, 2)));
    }
    let done = peers.done(&[0, 1, 2, 3]);
    let status = |id: u32| done.iter().find(|d| d.id == id).map(|d| d.status);
    assert_eq!(status(0), Some(Status::Failed), "{done:?}");
    for id in 1..=3 {
        assert_eq!(status(id), Some(Status::Ok), "task {id}: {done:?}");
    }
    assert!(
        sent.elapsed() < util::PATIENCE,
        "the runaway task held the worker for {:?}",
        sent.elapsed()
    );
    // The worker still takes tasks on its rebuilt device.
    peers.send(data(job, 4, items(16, 2)));
    let done = peers.done(&[4]);
    assert_eq!(done[0].status, Status::Ok, "{done:?}");
    // The error names the task, the time and the flag.
    let log = worker.interrupt();
    let line = log
        .lines()
        .find(|l| l.contains("--task-timeout 2 s"))
        .unwrap_or_else(|| panic!("no word of the timeout:\n{log}"));
    assert!(line.contains("task 0"), "{line}");
}

/// Sends a worker a quick task then one that runs for minutes; once the quick one is done
/// (the long one is in hand), SIGTERM must end it within a few seconds, with a goodbye
/// that hands its task back, and status 143.
fn sigterm_mid_task(name: &str, args: &[&str], quick: Vec<Message>, long: Vec<Message>) {
    let mut peers = Peers::bind();
    let worker = peers.worker(name, args);
    peers.hello();
    for message in quick.into_iter().chain(long) {
        peers.send(message);
    }
    peers.done(&[0]);
    let signalled = Instant::now();
    worker.signal("TERM");
    peers.until("a goodbye", |m| (m == Message::Bye).then_some(()));
    let (status, _, log) = worker.finish();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(
        took < Duration::from_secs(5),
        "{name} took {took:?} to exit after SIGTERM; its log:\n{log}"
    );
}

#[test]
fn r02_sigterm_ends_a_worker_mid_kernel() {
    if crate::gpu::adapter(conquer::backend::gpu::AdapterClass::Software).is_none() {
        return;
    }
    let source = runaway_kernel();
    let job = runaway_job(&source);
    sigterm_mid_task(
        "mid-kernel",
        &["--backend", "software"],
        vec![
            Message::Kernel {
                batch: BATCH,
                source,
            },
            data(job, 0, items(16, 2)),
        ],
        vec![data(job, 1, items(1 << 18, 60_000))],
    );
}

fn tasks(job: Job, ids: &[u32], workload_ms: u32) -> Message {
    Message::Tasks {
        batch: BATCH,
        job,
        tasks: ids
            .iter()
            .map(|&id| Task {
                id,
                workload_ms,
                ..Task::default()
            })
            .collect(),
        in_pieces: false,
    }
}

#[test]
fn r03_sigterm_ends_a_worker_mid_cpu_task() {
    // Spin's CPU reference: 4 x 10^9 rounds, minutes on one core.
    let job = Job {
        units_per_ms: 1000,
        ..Job::default()
    };
    sigterm_mid_task(
        "mid-cpu",
        &["--backend", "cpu"],
        vec![tasks(job, &[0], 1)],
        vec![tasks(job, &[1], 4_000_000)],
    );
}

#[test]
fn r04_sigterm_ends_a_worker_mid_sleep() {
    let job = Job::default();
    sigterm_mid_task(
        "mid-sleep",
        &["--backend", "sleep"],
        vec![tasks(job, &[0], 1)],
        vec![tasks(job, &[1], 600_000)],
    );
}

#[test]
fn r05_a_task_beyond_max_payload_is_declined_without_allocating() {
    let mut peers = Peers::bind();
    let worker = peers.worker("frugal", &["--backend", "cpu"]);
    peers.hello();
    // A search task of 2^31 keys that all may hit: room for 2^31 hits is 8 GiB of output
    // (and as much again for the CPU reference's list of hits, before this was bounded).
    let space = search::Space::new(1, u32::MAX, 1 << 31, 7).expect("a keyspace");
    let job = Job {
        kernel: Kernel::Search.id(),
        constants: space.constants(),
        ..Job::default()
    };
    peers.send(tasks(job, &[0], 0));
    // The decline and the task's failure, in whichever order they come.
    let deadline = Instant::now() + util::PATIENCE;
    let (mut reason, mut done) = (None, Vec::new());
    while reason.is_none() || done.is_empty() {
        match peers.next(deadline) {
            Some(Message::Decline { batch, reason: why }) if batch == BATCH => reason = Some(why),
            Some(Message::Done { done: more, .. }) => done.extend(more),
            Some(_) => {}
            None => panic!("no decline and failure in time: {reason:?}, {done:?}"),
        }
    }
    let reason = reason.unwrap_or_default();
    assert!(reason.contains("--max-payload"), "{reason}");
    assert_eq!(
        (done[0].id, done[0].status),
        (0, Status::Failed),
        "{done:?}"
    );
    let peak = util::peak_rss_kib(worker.pid());
    assert!(peak < 256 * 1024, "the worker peaked at {peak} KiB");
    drop(worker);
}

#[test]
fn r06_a_worker_that_arrives_after_its_batch_exits_with_status_3() {
    // A whole batch, done: its sink and ventilator exit.
    let cluster = util::Cluster::start(&["--tasks", "4"], &["early"], &[]);
    let util::Cluster {
        sink,
        vent,
        workers,
        sink_ep,
        vent_ep,
        ..
    } = cluster;
    util::completed(sink, 4, None);
    let _ = vent.finish();
    drop(workers);
    // A worker asked to leave after its batch, arriving now, waits a while, then leaves.
    let late = util::worker(
        "late",
        &vent_ep,
        &sink_ep,
        &["--exit-when-done", "--wait-timeout", "2"],
    );
    let (status, _, log) = late.finish();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("no batch reached this worker"), "{log}");
}

#[test]
fn r08_a_chunk_asked_to_yield_reports_the_items_done_and_only_those() {
    let mut peers = Peers::bind();
    // Twenty times slower than the CPU reference: the chunk takes seconds, each of its
    // pieces a fraction of that.
    let worker = peers.worker("yielding", &["--backend", "cpu", "--slowdown", "20"]);
    peers.hello();
    let view = kernels::mandelbrot::View::new(256, 256, 400, 1, (-0.5, 0.0), 3.0).unwrap();
    let job = Job {
        kernel: Kernel::Mandelbrot.id(),
        constants: view.constants(),
        items: 256,
        ..Job::default()
    };
    let chunk = Task {
        id: 3,
        workload_ms: 100,
        first: 0,
        items: 256,
    };
    // Sends `task`, run in pieces or not, and asks for its tail at once when `cut`.
    let send = |peers: &Peers, task: Task, in_pieces: bool, cut: bool| {
        peers.send(Message::Tasks {
            batch: BATCH,
            job,
            tasks: vec![task],
            in_pieces,
        });
        if cut {
            peers.send(Message::Yield {
                batch: BATCH,
                id: task.id,
                first: task.first,
            });
        }
    };
    send(&peers, chunk, true, true);
    let done = peers.done(&[3]);
    let items = done[0].items;
    assert_eq!(done[0].status, Status::Ok, "{done:?}");
    assert!(
        items > 0 && items < 256,
        "the chunk was cut at the end of a piece, not run whole: {done:?}"
    );
    // Its result at the sink covers those items, with exactly their rows.
    let deadline = Instant::now() + util::PATIENCE;
    while !peers.got.iter().any(|r| r.id == 3) {
        assert!(
            Instant::now() < deadline,
            "no result for the chunk at the sink"
        );
        peers.next(Instant::now() + Duration::from_millis(50));
    }
    let result = peers.got.iter().find(|r| r.id == 3).unwrap().clone();
    assert_eq!((result.first, result.items), (0, items));
    let rows = Task { items, ..chunk };
    let want = kernels::reference(&job, rows, &[]).unwrap().unwrap();
    assert_eq!(result.output.len(), want.len());
    assert!(
        result.output == want,
        "the rows done differ from the reference"
    );
    assert_eq!(result.checksum, kernels::checksum(&job, &want));
    // A chunk not asked for its tail runs whole.
    let whole = Task {
        id: 4,
        first: u64::from(items),
        items: 2,
        ..chunk
    };
    send(&peers, whole, true, false);
    let done = peers.done(&[4]);
    assert_eq!(done[0].items, 2);
    // Nor does one the ventilator did not ask to run in pieces (the farm's fastest
    // worker runs its chunks whole), asked or not.
    let unsplit = Task {
        id: 5,
        first: 0,
        items: 256,
        ..chunk
    };
    send(&peers, unsplit, false, true);
    let done = peers.done(&[5]);
    assert_eq!((done[0].status, done[0].items), (Status::Ok, 256));
    peers.send(Message::End {
        batch: BATCH,
        shutdown: true,
    });
    let (status, _, log) = worker.finish();
    assert!(status.success(), "{log}");
}

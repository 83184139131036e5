//! A chunk run in pieces, so that its worker can give up the part it has not started.
//!
//! A chunk is sized from a rate measured on earlier chunks; where item costs vary along a
//! job (a Mandelbrot view's rows through the set cost a hundred times those outside it),
//! it can run far longer than planned. When nothing else is left, the ventilator asks the
//! chunk's worker to yield ([`crate::protocol::Message::Yield`]): the worker stops at the
//! end of the piece in hand and reports the items done, and the rest goes to an idle
//! worker that finishes it sooner.
//!
//! When the ventilator says so (`in_pieces`: a faster worker could relieve this one), the
//! worker's executor feeds a chunk to its backend as consecutive pieces (each a chunk of
//! its own: same id, its own item range), sized to take about [`piece_time`] (the first by
//! the chunk's expected duration, the rest at the rate the pieces before it ran), and merges
//! their outcomes into the chunk's one outcome: outputs in item order, exactly what the
//! whole chunk would have given (search hits merged and sorted). A chunk whose outputs do
//! not concatenate (a reduction to one value per chunk) runs whole and is never cut. A
//! device worker clearly the farm's fastest runs its chunks whole too: a device's piece has
//! fixed costs (on the software adapter, pieces of 10 ms cost a one-worker 2048 x 2048
//! Mandelbrot job 5 %); a cpu or sleep worker's costs nothing ([`free`]), and is short.
//! No clock here: the executor passes the times in.

use crate::batch::{Job, Task};
use crate::kernels::{self, Kernel};
use crate::protocol::Status;
use crate::work::{Outcome, Work};
use std::time::Duration;

/// What a piece should take: short enough that a yield is heard soon, long enough that a
/// piece's fixed costs (a submission and a read-back on a GPU) stay small.
pub const PIECE: Duration = Duration::from_millis(50);
/// What a piece should take on a backend whose pieces cost nothing ([`free`]): a yield is
/// answered within about this, so the end game waits less for a tail than a copy costs.
pub const FREE_PIECE: Duration = Duration::from_millis(10);
/// The first piece is at most this fraction of the chunk (at least one item): a chunk
/// expected to take less than a piece may still run forty times longer, on items dearer
/// than those its worker was measured on.
const FIRST_PIECE_OF: u32 = 4;
/// A piece grows at most this many times over the one before: a rate measured on cheap
/// items says little about the next ones.
const GROWTH: u32 = 4;

/// Whether a chunk of `job`, run by a `backend` (`sleep`, `cpu`, ...), can be run in pieces
/// and cut: its outputs concatenate in item order (Mandelbrot rows, search hits, `copy`),
/// or it computes nothing (the sleep backend's items). `spin` on a computing backend
/// reduces a chunk to one checksum, and a user kernel sees its chunk as one task (it may
/// rely on where chunks begin and end): those run whole, and the end game copies them.
pub fn splits(job: &Job, backend: &str) -> bool {
    if job.items == 0 {
        return false;
    }
    match Kernel::from_id(job.kernel) {
        Some(Kernel::Mandelbrot | Kernel::Search | Kernel::Copy) => true,
        // A user kernel may rely on the chunks it is given (a block transform under
        // `--chunking fixed`): it runs them whole.
        Some(Kernel::User) => false,
        Some(Kernel::Spin) => backend == "sleep",
        None => false,
    }
}

/// Whether a piece costs `backend` nothing beside its items: the `cpu` and `sleep`
/// backends run a piece on the worker's own thread, one call, with no submission or
/// read-back to pay for (a device backend's piece is a dispatch and a copy back).
pub fn free(backend: &str) -> bool {
    matches!(backend, "cpu" | "sleep")
}

/// What a piece should take on `backend`: [`FREE_PIECE`] where pieces are [`free`],
/// [`PIECE`] on a device.
pub fn piece_time(backend: &str) -> Duration {
    if free(backend) {
        FREE_PIECE
    } else {
        PIECE
    }
}

/// One chunk on its way through the backend in pieces.
#[derive(Debug)]
pub struct Pieces {
    job: Job,
    task: Task,
    name: String,
    /// The whole chunk's input (a data job's slice of its file); pieces take their part.
    input: Vec<u8>,
    /// The first item not handed out yet.
    next: u64,
    /// Items in the next piece.
    size: u32,
    handed: u32,
    back: u32,
    /// Asked to yield: no piece after the first.
    cut: bool,
    /// The batch ended: no more pieces, and the chunk fails.
    abandoned: bool,
    /// Outputs of the pieces back, by first item.
    outputs: Vec<(u64, Vec<u8>)>,
    status: Status,
    error: String,
    kernel_us: u64,
    dispatches: u64,
    differing: u32,
    /// The fewest items a piece has (`at_least`; 1 by default).
    least: u32,
    /// Items and wall time of the pieces back: the rate the next piece is sized by.
    items_back: u64,
    wall_back_us: u64,
    /// What a piece should take.
    piece: Duration,
}

/// The first piece of `task`: the part expected to take `piece`, at most a quarter of
/// the chunk, at least one item.
fn first_size(task: &Task, piece: Duration) -> u32 {
    let piece_ms = piece.as_millis().max(1) as u64;
    let quarter = u64::from(task.items / FIRST_PIECE_OF);
    let first = match u64::from(task.workload_ms) {
        0 => quarter,
        ms => (u64::from(task.items) * piece_ms).div_ceil(ms).min(quarter),
    };
    first.clamp(1, u64::from(task.items.max(1))) as u32
}

impl Pieces {
    /// `work` (a chunk) in pieces. Its `workload_ms` is what the ventilator expects it to
    /// take on this worker: the first piece is the part expected to take [`PIECE`], at
    /// most a quarter of the chunk.
    pub fn new(job: &Job, work: Work) -> Pieces {
        let task = work.task;
        Pieces {
            job: *job,
            task,
            name: work.name,
            input: work.input,
            next: task.first,
            size: first_size(&task, PIECE),
            piece: PIECE,
            handed: 0,
            back: 0,
            cut: false,
            abandoned: false,
            outputs: Vec::new(),
            status: Status::Verified,
            error: String::new(),
            kernel_us: 0,
            dispatches: 0,
            differing: 0,
            least: 1,
            items_back: 0,
            wall_back_us: 0,
        }
    }

    /// Pieces sized to take `piece` ([`piece_time`] of the worker's backend), the first too.
    pub fn taking(mut self, piece: Duration) -> Pieces {
        self.piece = piece.max(Duration::from_millis(1));
        if self.handed == 0 {
            self.size = first_size(&self.task, self.piece).max(self.least);
        }
        self
    }

    /// No piece under `items` (the last excepted): a GPU's fill, in the job's items, so a
    /// chunk sized to fill the device is not run in pieces that leave it half idle.
    pub fn at_least(mut self, items: u32) -> Pieces {
        self.least = items.max(1);
        self.size = self.size.max(self.least);
        self
    }

    /// The chunk's id.
    pub fn id(&self) -> u32 {
        self.task.id
    }

    fn end(&self) -> u64 {
        self.task.first + u64::from(self.task.items)
    }

    /// The next piece for the backend, or `None` once the chunk is all handed out, cut or
    /// abandoned.
    pub fn next_piece(&mut self) -> Option<Work> {
        if self.abandoned
            || self.status == Status::Failed
            || self.next >= self.end()
            || (self.cut && self.handed > 0)
        {
            return None;
        }
        if self.items_back > 0 {
            // Items per µs so far, over a piece's time; never past GROWTH times the last.
            let rate = self.items_back as f64 / self.wall_back_us.max(1) as f64;
            let fits =
                (rate * self.piece.as_micros() as f64).clamp(1.0, f64::from(u32::MAX)) as u32;
            self.size = fits.min(self.size.saturating_mul(GROWTH)).max(self.least);
        }
        let items = u64::from(self.size).min(self.end() - self.next) as u32;
        let first = self.next;
        self.next += u64::from(items);
        self.handed += 1;
        let input = if self.input.is_empty() {
            Vec::new()
        } else {
            let per = u64::from(self.job.item_bytes.max(1));
            let len = self.input.len() as u64;
            let from = ((first - self.task.first) * per).min(len) as usize;
            let to = ((first - self.task.first + u64::from(items)) * per).min(len) as usize;
            self.input[from..to].to_vec()
        };
        Some(Work {
            task: Task {
                first,
                items,
                ..self.task
            },
            name: self.name.clone(),
            input,
        })
    }

    /// The ventilator asked for the rest back: no piece after the one in hand (a chunk not
    /// started yet still runs its first, so its report says something).
    pub fn cut(&mut self) {
        self.cut = true;
    }

    /// The batch is over: no more pieces; the chunk is reported failed.
    pub fn abandon(&mut self) {
        self.abandoned = true;
    }

    /// A piece came back from the backend.
    pub fn piece_done(&mut self, outcome: Outcome) {
        self.back += 1;
        match outcome.status {
            Status::Failed => {
                if self.status != Status::Failed {
                    self.error = outcome.error;
                }
                self.status = Status::Failed;
            }
            Status::Mismatch if self.status != Status::Failed => self.status = Status::Mismatch,
            Status::Ok if self.status == Status::Verified => self.status = Status::Ok,
            _ => {}
        }
        self.kernel_us += u64::from(outcome.kernel_us);
        self.dispatches += u64::from(outcome.dispatches);
        self.differing = self.differing.saturating_add(outcome.differing);
        self.items_back += u64::from(outcome.task.items);
        self.wall_back_us += u64::from(outcome.wall_us);
        self.outputs.push((outcome.task.first, outcome.output));
    }

    /// Every piece handed out is back and no more will be (a failed piece fails the
    /// chunk: the rest is not run).
    pub fn is_complete(&self) -> bool {
        self.back == self.handed
            && (self.abandoned
                || self.status == Status::Failed
                || self.next >= self.end()
                || (self.cut && self.handed > 0))
    }

    /// Whether `piece` (a piece's task, as the backend hands it back) is one of this
    /// chunk's: its id, and its first item within the chunk's items handed out.
    pub fn owns(&self, piece: &Task) -> bool {
        piece.id == self.task.id && piece.first >= self.task.first && piece.first < self.next
    }

    /// The chunk's one outcome: the items its pieces covered, their outputs in item order,
    /// `wall_us` from the first piece's start to the last one's end (pieces of a pipelined
    /// backend overlap).
    pub fn outcome(mut self, wall_us: u32) -> Outcome {
        let items = (self.next - self.task.first) as u32;
        let task = Task { items, ..self.task };
        if self.abandoned || self.status == Status::Failed {
            let error = if self.status == Status::Failed {
                self.error
            } else {
                "the batch ended while the chunk ran".to_owned()
            };
            let work = Work {
                task: self.task,
                name: self.name,
                input: Vec::new(),
            };
            return Outcome::failed(work, wall_us).because(error);
        }
        self.outputs.sort_unstable_by_key(|(first, _)| *first);
        let kernel = Kernel::from_id(self.job.kernel);
        let output = if kernel == Some(Kernel::Search) {
            merge_hits(&self.job, task, &self.outputs)
        } else {
            self.outputs.into_iter().flat_map(|(_, o)| o).collect()
        };
        let checksum = if kernel.is_some_and(Kernel::carries_output) {
            kernels::checksum(&self.job, &output)
        } else {
            0
        };
        Outcome {
            task,
            status: self.status,
            wall_us,
            kernel_us: self.kernel_us.min(u64::from(u32::MAX)) as u32,
            dispatches: self.dispatches.min(u64::from(u32::MAX)) as u32,
            checksum,
            name: self.name,
            output,
            differing: self.differing,
            error: String::new(),
        }
    }
}

/// Search outputs (a hit count, then hits in order) of consecutive pieces as one: the
/// counts added, the hits sorted, as many kept as the whole chunk's output holds.
fn merge_hits(job: &Job, task: Task, outputs: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut count: u32 = 0;
    let mut hits: Vec<u32> = Vec::new();
    for (_, output) in outputs {
        if output.len() < 4 {
            continue;
        }
        count = count.wrapping_add(u32::from_le_bytes([
            output[0], output[1], output[2], output[3],
        ]));
        hits.extend(kernels::search::hits(output));
    }
    hits.sort_unstable();
    let room =
        kernels::shape(job, task, 0).map_or(hits.len(), |s| s.output_bytes.saturating_sub(4) / 4);
    hits.truncate(room);
    let mut output = count.to_le_bytes().to_vec();
    for hit in hits {
        output.extend_from_slice(&hit.to_le_bytes());
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{mandelbrot, search};
    use proptest::prelude::*;

    fn mandelbrot_job() -> Job {
        let view = mandelbrot::View::new(96, 64, 200, 1, (-0.5, 0.0), 3.0).unwrap();
        Job {
            kernel: Kernel::Mandelbrot.id(),
            constants: view.constants(),
            items: 64,
            ..Job::default()
        }
    }

    fn search_job(capacity_hits: bool) -> Job {
        // 2^12 keys, about one in sixteen a hit: a chunk of them overflows a small capacity.
        let bits = if capacity_hits { 4 } else { 9 };
        let space = search::Space::for_chunks(bits, 1 << 12, 1 << 12, 3).unwrap();
        let mut constants = space.constants();
        if capacity_hits {
            // Room for eight hits a chunk: the merge keeps the first eight, as a whole
            // chunk does, and counts them all.
            constants[3] = 8;
        }
        Job {
            kernel: Kernel::Search.id(),
            constants,
            items: 1 << 12,
            ..Job::default()
        }
    }

    fn copy_job() -> Job {
        Job {
            kernel: Kernel::Copy.id(),
            item_bytes: 4,
            output_bytes: crate::kernels::SAME_AS_INPUT,
            items: 1000,
            ..Job::default()
        }
    }

    /// Runs `work` in pieces on the CPU reference, each piece taking `piece_us` by turn,
    /// with `in_flight` pieces handed out before the first comes back; cuts after
    /// `cut_after` pieces when set.
    fn run(
        job: &Job,
        work: Work,
        piece_us: &[u32],
        in_flight: usize,
        cut_after: Option<usize>,
    ) -> Outcome {
        let mut pieces = Pieces::new(job, work);
        let mut queue: std::collections::VecDeque<Work> = Default::default();
        let mut handed = 0;
        let mut turn = 0;
        loop {
            while queue.len() < in_flight.max(1) {
                if cut_after == Some(handed) {
                    pieces.cut();
                }
                match pieces.next_piece() {
                    Some(piece) => {
                        handed += 1;
                        queue.push_back(piece);
                    }
                    None => break,
                }
            }
            let Some(piece) = queue.pop_front() else {
                break;
            };
            let output = kernels::reference(job, piece.task, &piece.input)
                .unwrap()
                .unwrap();
            let wall_us = piece_us[turn % piece_us.len()];
            turn += 1;
            pieces.piece_done(Outcome {
                task: piece.task,
                status: Status::Ok,
                wall_us,
                output,
                ..Outcome::default()
            });
        }
        assert!(pieces.is_complete());
        pieces.outcome(1)
    }

    fn whole(job: &Job, work: &Work) -> Vec<u8> {
        kernels::reference(job, work.task, &work.input)
            .unwrap()
            .unwrap()
    }

    proptest! {
        #[test]
        fn a_chunk_in_pieces_gives_what_it_gives_whole_and_a_cut_one_what_its_items_give(
            kind in 0..4usize,
            first in 0u64..200,
            items in 1u32..800,
            piece_us in proptest::collection::vec(1u32..50_000, 1..6),
            in_flight in 1usize..4,
            cut_after in proptest::option::of(0usize..6),
            expected_ms in 0u32..2000,
        ) {
            let job = match kind {
                0 => mandelbrot_job(),
                1 => search_job(false),
                2 => search_job(true),
                _ => copy_job(),
            };
            let first = first.min(job.items - 1);
            let items = items.min((job.items - first) as u32);
            let task = Task { id: 5, first, items, workload_ms: expected_ms };
            let input: Vec<u8> = if kind == 3 {
                (0..items * 4).map(|b| (b * 7 + 1) as u8).collect()
            } else {
                Vec::new()
            };
            let work = Work { task, name: "in.bin".into(), input };
            let got = run(&job, work.clone(), &piece_us, in_flight, cut_after);
            prop_assert_eq!(got.status, Status::Ok);
            prop_assert_eq!(got.task.first, first);
            prop_assert!(got.task.items >= 1 && got.task.items <= items);
            if cut_after.is_none() {
                prop_assert_eq!(got.task.items, items);
            }
            // What the items it says it did give, run as one chunk.
            let done = Work {
                task: got.task,
                input: work.input[..(got.task.items as usize * 4).min(work.input.len())].to_vec(),
                ..work.clone()
            };
            prop_assert_eq!(&got.output, &whole(&job, &done));
            prop_assert_eq!(got.checksum, kernels::checksum(&job, &got.output));
            prop_assert_eq!(got.name.as_str(), "in.bin");
        }
    }

    /// Reports `task`, a piece, done in `wall_us`.
    fn ran(pieces: &mut Pieces, task: Task, wall_us: u32) {
        pieces.piece_done(Outcome {
            task,
            wall_us,
            ..Outcome::default()
        });
    }

    /// A job of 16,000 rows and a chunk of its first `items`, expected to take 800 ms.
    fn rows_chunk(items: u32) -> (Job, Task) {
        let job = Job {
            items: 16 * 1000,
            ..mandelbrot_job()
        };
        let task = Task {
            id: 1,
            first: 0,
            items,
            workload_ms: 800,
        };
        (job, task)
    }

    #[test]
    fn pieces_grow_toward_the_piece_time_and_shrink_when_items_turn_dear() {
        let (job, task) = rows_chunk(16 * 1000);
        let mut pieces = Pieces::new(&job, Work::from(task));
        let one = pieces.next_piece().unwrap();
        assert_eq!(one.task.items, 1000, "expected to take 50 ms of 800");
        // Cheap: 1,000 items in 1 ms, so 50,000 fit a piece, but growth is fourfold at most.
        ran(&mut pieces, one.task, 1000);
        let two = pieces.next_piece().unwrap();
        assert_eq!(two.task.items, 4000);
        assert_eq!(two.task.first, 1000);
        // Dear: 4,000 items in 400 ms; 5,000 items in 401 ms over both, 623 a piece.
        ran(&mut pieces, two.task, 400_000);
        let three = pieces.next_piece().unwrap();
        assert_eq!(three.task.items, 623);
        // Expected to take 200 ms: a first piece of a quarter; 40 ms, or not said: a
        // quarter still (it may run far longer than expected).
        let expected = |ms| Task {
            workload_ms: ms,
            ..task
        };
        for ms in [200, 40, 0] {
            let mut pieces = Pieces::new(&job, Work::from(expected(ms)));
            assert_eq!(pieces.next_piece().unwrap().task.items, 4000, "{ms} ms");
        }
    }

    #[test]
    fn a_cpu_workers_pieces_take_a_fifth_of_a_devices() {
        assert_eq!(piece_time("cpu"), FREE_PIECE);
        assert_eq!(piece_time("sleep"), FREE_PIECE);
        assert_eq!(piece_time("software"), PIECE);
        assert_eq!(piece_time("gpu"), PIECE);
        let (job, task) = rows_chunk(16 * 1000);
        let mut pieces = Pieces::new(&job, Work::from(task)).taking(FREE_PIECE);
        let one = pieces.next_piece().unwrap();
        assert_eq!(one.task.items, 200, "expected to take 10 ms of 800");
        // 200 items in 4 ms: 500 fit 10 ms.
        ran(&mut pieces, one.task, 4000);
        assert_eq!(pieces.next_piece().unwrap().task.items, 500);
    }

    #[test]
    fn a_devices_pieces_are_no_smaller_than_its_fill_but_the_last() {
        let (job, task) = rows_chunk(10_000);
        // A quarter of the chunk would be 625 items (50 ms of 800); the device fills at 3,000.
        let mut pieces = Pieces::new(&job, Work::from(task)).at_least(3000);
        let mut sizes = Vec::new();
        while let Some(piece) = pieces.next_piece() {
            sizes.push(piece.task.items);
            // Dear: a piece's time would fit 10 items.
            ran(&mut pieces, piece.task, 5_000_000);
        }
        assert_eq!(sizes, [3000, 3000, 3000, 1000]);
        assert_eq!(pieces.outcome(1).task.items, 10_000);
    }

    #[test]
    fn a_cut_before_the_first_piece_still_runs_one_and_an_abandoned_chunk_fails_whole() {
        let job = mandelbrot_job();
        let task = Task {
            id: 2,
            first: 10,
            items: 50,
            workload_ms: 0,
        };
        let mut pieces = Pieces::new(&job, Work::from(task));
        pieces.cut();
        let piece = pieces.next_piece().unwrap();
        assert!(pieces.next_piece().is_none());
        assert!(!pieces.is_complete());
        pieces.piece_done(Outcome {
            task: piece.task,
            status: Status::Verified,
            ..Outcome::default()
        });
        assert!(pieces.is_complete());
        let outcome = pieces.outcome(7);
        assert_eq!((outcome.task.first, outcome.task.items), (10, 12));
        assert_eq!(outcome.status, Status::Verified);

        let mut pieces = Pieces::new(&job, Work::from(task));
        let piece = pieces.next_piece().unwrap();
        pieces.abandon();
        assert!(pieces.next_piece().is_none());
        pieces.piece_done(Outcome {
            task: piece.task,
            ..Outcome::default()
        });
        let outcome = pieces.outcome(7);
        assert_eq!(outcome.status, Status::Failed);
        assert_eq!(
            (outcome.task.first, outcome.task.items),
            (10, 50),
            "reported as given"
        );
    }

    #[test]
    fn only_outputs_that_concatenate_are_split() {
        let spin = Job {
            kernel: Kernel::Spin.id(),
            items: 100,
            ..Job::default()
        };
        assert!(splits(&spin, "sleep"));
        assert!(!splits(&spin, "cpu"));
        assert!(splits(&mandelbrot_job(), "gpu"));
        assert!(splits(&copy_job(), "cpu"));
        let user = Job {
            kernel: Kernel::User.id(),
            output_bytes: 4 | crate::kernels::PER_ITEM,
            items: 100,
            ..Job::default()
        };
        assert!(!splits(&user, "gpu"), "a user kernel's chunk is its task");
        assert!(
            !splits(
                &Job {
                    items: 0,
                    ..mandelbrot_job()
                },
                "cpu"
            ),
            "a task list's tasks are whole"
        );
    }
}

//! Batches: the tasks a ventilator hands out, made from a seed or read from a file.
//!
//! A task is an id (its index in the batch) and a workload in milliseconds, the seed's unit.
//! A seeded batch is reproducible on every machine: the generator is ChaCha8, whose output
//! is fixed by its specification, drawn through rand's uniform integer sampling as pinned in
//! Cargo.lock. This module knows nothing of sockets or backends.

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Largest workload a task may carry: one hour.
pub const MAX_WORKLOAD_MS: u32 = 3_600_000;
/// Most tasks in one batch: the ventilator keeps a few dozen bytes per task, so this is
/// about 2 GiB at most.
pub const MAX_TASKS: u32 = 50_000_000;
/// Longest line of a tasks file: a workload with comments or padding fits many times over.
pub const MAX_LINE_BYTES: usize = 4096;

/// One unit of work: run the batch's kernel for `workload_ms` nominal milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Task {
    /// Index of the task in its batch: `0..task_count`.
    pub id: u32,
    /// Nominal cost in milliseconds: what the sleep backend sleeps, what the kernels scale by.
    pub workload_ms: u32,
    /// A chunk of a divisible job: its first item (see [`Job::items`]).
    pub first: u64,
    /// A chunk of a divisible job: how many items from `first`; 0 for a task of a task
    /// list, which is whole.
    pub items: u32,
}

impl Task {
    /// Task `id` of a task list (whole, not a chunk) with no workload.
    pub fn numbered(id: u32) -> Task {
        Task {
            id,
            ..Task::default()
        }
    }

    /// Whether this is a chunk of a divisible job (an item range) rather than a task.
    pub fn is_chunk(&self) -> bool {
        self.items > 0
    }

    /// What the kernel sees as the task id (`params.task_id`): a chunk's first item (a
    /// divisible job's kernel has one item per unit, so item `first` is unit `first`),
    /// else the task's id.
    pub fn kernel_id(&self) -> u32 {
        if self.is_chunk() {
            self.first as u32
        } else {
            self.id
        }
    }

    /// The chunk's items as a half-open range.
    pub fn range(&self) -> (u64, u64) {
        (self.first, self.first + u64::from(self.items))
    }
}

/// What every task of a batch runs: the kernel and its parameters. Sent with the tasks so a
/// worker needs no configuration beyond its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Kernel id (see `kernels`); 0 is the spin kernel.
    pub kernel: u8,
    /// Kernel work units per nominal millisecond of workload.
    pub units_per_ms: u32,
    /// Percentage of results workers check against the CPU reference (0 none, 100 all).
    pub verify_percent: u8,
    /// Percentage of tasks (or a job's chunks) run on a second worker and compared bit for
    /// bit at the sink (`--replicate`): a seeded sample, see [`Job::replicates`].
    pub replicate_percent: u8,
    /// The kernel's constants (`params.c` in WGSL): image geometry for `mandelbrot`, the
    /// keyspace for `search`, `--constants` for a user kernel (see `kernels`).
    pub constants: [u32; crate::kernels::CONSTANTS],
    /// A user kernel's source hash (FNV-1a 64); 0 for the built-in kernels.
    pub source: u64,
    /// A user kernel's bytes per item of its input (items = input bytes / this).
    pub item_bytes: u32,
    /// A user kernel's output bytes per task; [`crate::kernels::SAME_AS_INPUT`] for as many
    /// as its input.
    pub output_bytes: u32,
    /// A divisible job's item count: its tasks are chunks (item ranges) carved while it
    /// runs; 0 for a task list.
    pub items: u64,
}

impl Job {
    /// Whether the result of task `id` is to be checked: all of them at 100 %, else a
    /// sample fixed by the task id, so every worker agrees on which.
    pub fn verifies(&self, id: u32) -> bool {
        match self.verify_percent {
            0 => false,
            p if p >= 100 => true,
            p => crate::kernels::spin::mix(id ^ 0x5a17_7e57) % 100 < u32::from(p),
        }
    }

    /// Whether the task (or chunk) `key` of `batch` is replicated: a sample fixed by the
    /// batch and the key (a task's id, a chunk's first item), so a restarted sink picks the
    /// same tasks.
    pub fn replicates(&self, batch: u64, key: u64) -> bool {
        match self.replicate_percent {
            0 => false,
            p if p >= 100 => true,
            p => {
                let seed = [batch.to_le_bytes(), key.to_le_bytes()].concat();
                xxhash_rust::xxh3::xxh3_64(&seed) % 100 < u64::from(p)
            }
        }
    }
}

impl Default for Job {
    fn default() -> Self {
        Job {
            kernel: 0,
            units_per_ms: crate::kernels::spin::DEFAULT_UNITS_PER_MS,
            verify_percent: 0,
            replicate_percent: 0,
            constants: [0; crate::kernels::CONSTANTS],
            source: 0,
            item_bytes: 4,
            output_bytes: 0,
            items: 0,
        }
    }
}

/// The order in which tasks are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Order {
    /// Longest workload first: list scheduling that keeps the batch's tail short.
    LongestFirst,
    /// The order the batch was made or read in.
    Given,
    /// A shuffle, reproducible from the batch seed.
    Shuffle,
}

/// A batch of tasks, in dispatch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Tasks indexed by id: `tasks[i].id == i`.
    pub tasks: Vec<Task>,
}

impl Batch {
    /// `count` tasks with workloads uniform in `min_ms..=max_ms`, reproducible from `seed`.
    pub fn generate(count: u32, min_ms: u32, max_ms: u32, seed: u64) -> anyhow::Result<Batch> {
        if min_ms > max_ms {
            bail!("--min-ms {min_ms} is larger than --max-ms {max_ms}");
        }
        if max_ms > MAX_WORKLOAD_MS {
            bail!("--max-ms {max_ms} is over the limit of {MAX_WORKLOAD_MS} ms (one hour)");
        }
        if count == 0 {
            bail!("a batch needs at least one task (--tasks 0 given)");
        }
        if count > MAX_TASKS {
            bail!("--tasks {count} is over the limit of {MAX_TASKS} tasks in one batch; split the work into several batches");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let tasks = (0..count)
            .map(|id| Task {
                id,
                workload_ms: rng.random_range(min_ms..=max_ms),
                ..Task::default()
            })
            .collect();
        Ok(Batch { tasks })
    }

    /// Parses the tasks-file format: one workload in milliseconds per line; blank lines and
    /// comments (from `#` to the end of a line) are ignored. Any other line fails the whole file, naming its
    /// number.
    pub fn parse(text: &str) -> anyhow::Result<Batch> {
        Self::parse_from(text.as_bytes())
    }

    /// Parses the tasks-file format (see [`Batch::parse`]) from a stream, a line at a time:
    /// a line longer than [`MAX_LINE_BYTES`] (such as endless `/dev/zero`) or more than
    /// [`MAX_TASKS`] tasks stop the read, so no input can take all memory.
    pub fn parse_from(mut input: impl std::io::BufRead) -> anyhow::Result<Batch> {
        use std::io::{BufRead, Read};
        let mut tasks = Vec::new();
        let mut raw = Vec::new();
        for line_no in 1usize.. {
            raw.clear();
            let read = (&mut input)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut raw)
                .with_context(|| format!("line {line_no}: cannot read"))?;
            if read == 0 {
                break;
            }
            if raw.len() > MAX_LINE_BYTES {
                bail!("line {line_no} is longer than {MAX_LINE_BYTES} bytes: not a tasks file");
            }
            let line = std::str::from_utf8(&raw)
                .map_err(|_| anyhow::anyhow!("line {line_no} is not UTF-8 text"))?
                .trim();
            // A comment runs from `#` to the end of its line, after a workload too.
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let workload_ms = line
                .parse::<u32>()
                .ok()
                .filter(|&ms| ms <= MAX_WORKLOAD_MS)
                .with_context(|| {
                    format!(
                        "line {line_no}: {line:?} is not a workload (expected whole milliseconds, 0 to {MAX_WORKLOAD_MS})"
                    )
                })?;
            let id = u32::try_from(tasks.len())
                .ok()
                .filter(|&id| id < MAX_TASKS)
                .with_context(|| {
                    format!("more than {MAX_TASKS} tasks; split the work into several batches")
                })?;
            tasks.push(Task {
                id,
                workload_ms,
                ..Default::default()
            });
        }
        if tasks.is_empty() {
            bail!("no tasks: every line is blank or a comment");
        }
        Ok(Batch { tasks })
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// A stable id for this batch run with `job`: FNV-1a over the workloads and the job,
    /// so the same batch gets the same id on every machine and after a restart.
    pub fn id(&self, job: &Job) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        feed(&(self.tasks.len() as u64).to_le_bytes());
        for task in &self.tasks {
            feed(&task.workload_ms.to_le_bytes());
        }
        feed(&[job.kernel]);
        feed(&job.units_per_ms.to_le_bytes());
        // Data kernels: their constants, source and sizes make a different batch. Spin's
        // ids stay what they were, so a spin batch resumes across this change.
        if job.kernel != 0 {
            for c in job.constants {
                feed(&c.to_le_bytes());
            }
            feed(&job.source.to_le_bytes());
            feed(&job.item_bytes.to_le_bytes());
            feed(&job.output_bytes.to_le_bytes());
        }
        // A divisible job: its size, and spin's constants (the cost of an item).
        if job.items > 0 {
            feed(&job.items.to_le_bytes());
            for c in job.constants {
                feed(&c.to_le_bytes());
            }
        }
        hash
    }

    /// [`Batch::id`] mixed with a digest of the tasks' inputs (a user kernel's files), so
    /// changed inputs make a different batch and `--resume` never mixes them.
    pub fn id_with_inputs(&self, job: &Job, inputs_digest: u64) -> u64 {
        let id = self.id(job);
        if inputs_digest == 0 {
            id
        } else {
            crate::kernels::fnv1a(&[id.to_le_bytes(), inputs_digest.to_le_bytes()].concat())
        }
    }

    /// Sum of all workloads: the seed's "total expected cost".
    pub fn expected_ms(&self) -> u64 {
        self.tasks.iter().map(|t| u64::from(t.workload_ms)).sum()
    }

    /// The longest single workload: no number of workers finishes sooner.
    pub fn longest_ms(&self) -> u32 {
        self.tasks.iter().map(|t| t.workload_ms).max().unwrap_or(0)
    }

    /// Task ids in dispatch order.
    pub fn dispatch_order(&self, order: Order, seed: u64) -> Vec<u32> {
        let mut ids: Vec<u32> = self.tasks.iter().map(|t| t.id).collect();
        match order {
            Order::Given => {}
            // Stable sort: equal workloads keep their given order, so the order is reproducible.
            Order::LongestFirst => {
                ids.sort_by_key(|&id| std::cmp::Reverse(self.tasks[id as usize].workload_ms))
            }
            Order::Shuffle => {
                use rand::seq::SliceRandom;
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5a1e);
                ids.shuffle(&mut rng);
            }
        }
        ids
    }
}

/// The ideal makespan of a batch on `workers` workers: no schedule beats the larger of the
/// perfectly shared load and the longest task.
pub fn ideal_ms(expected_ms: u64, longest_ms: u32, workers: usize) -> f64 {
    let workers = workers.max(1) as f64;
    (expected_ms as f64 / workers).max(f64::from(longest_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_batch_other_seed_other_batch() {
        let a = Batch::generate(100, 1, 100, 7).unwrap();
        let b = Batch::generate(100, 1, 100, 7).unwrap();
        let c = Batch::generate(100, 1, 100, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.tasks.iter().all(|t| (1..=100).contains(&t.workload_ms)));
        assert!(a.tasks.iter().enumerate().all(|(i, t)| t.id as usize == i));
    }

    #[test]
    fn seeded_batches_are_pinned() {
        // If this changes, batches differ across versions: say so in the changelog.
        let batch = Batch::generate(5, 1, 100, 1).unwrap();
        let workloads: Vec<u32> = batch.tasks.iter().map(|t| t.workload_ms).collect();
        assert_eq!(workloads, PINNED_SEED_1);
    }
    const PINNED_SEED_1: [u32; 5] = [55, 41, 99, 9, 22];

    #[test]
    fn batch_ids_follow_the_content() {
        let job = Job::default();
        let a = Batch::generate(10, 1, 100, 1).unwrap();
        assert_eq!(a.id(&job), Batch::generate(10, 1, 100, 1).unwrap().id(&job));
        assert_ne!(a.id(&job), Batch::generate(10, 1, 100, 2).unwrap().id(&job));
        let other_job = Job {
            units_per_ms: 7,
            ..job
        };
        assert_ne!(a.id(&job), a.id(&other_job));
    }

    #[test]
    fn verification_samples_a_stable_share_of_tasks() {
        let job = |p| Job {
            verify_percent: p,
            ..Job::default()
        };
        let count = |p| (0..10_000).filter(|&id| job(p).verifies(id)).count();
        assert_eq!(count(0), 0);
        assert_eq!(count(100), 10_000);
        let quarter = count(25);
        assert!((2_300..=2_700).contains(&quarter), "{quarter}");
        // The same ids every time, whoever asks.
        assert_eq!(job(25).verifies(1234), job(25).verifies(1234));
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(Batch::generate(10, 5, 4, 1).is_err());
        assert!(Batch::generate(0, 1, 4, 1).is_err());
        assert!(Batch::generate(1, 1, MAX_WORKLOAD_MS + 1, 1).is_err());
    }

    #[test]
    fn tasks_file_skips_comments_and_names_the_bad_line() {
        let batch = Batch::parse("# costs\n10\n\n  20 \n0\n5 # the last one\n").unwrap();
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.expected_ms(), 35);
        let err = Batch::parse("10\n5 6 # two\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2: \"5 6\""), "{err:#}");
        let err = Batch::parse("10\n20\nabc\n30\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 3"), "{err:#}");
        let err = Batch::parse("10\n-5\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        assert!(Batch::parse("# nothing\n\n").is_err());
    }

    #[test]
    fn longest_first_sorts_descending_and_shuffle_is_a_permutation() {
        let batch = Batch::parse("3\n9\n1\n9\n").unwrap();
        assert_eq!(
            batch.dispatch_order(Order::LongestFirst, 0),
            vec![1, 3, 0, 2]
        );
        assert_eq!(batch.dispatch_order(Order::Given, 0), vec![0, 1, 2, 3]);
        let mut shuffled = batch.dispatch_order(Order::Shuffle, 1);
        shuffled.sort_unstable();
        assert_eq!(shuffled, vec![0, 1, 2, 3]);
    }

    #[test]
    fn ideal_is_the_larger_of_share_and_longest() {
        assert_eq!(ideal_ms(5000, 100, 4), 1250.0);
        assert_eq!(ideal_ms(5000, 100, 100), 100.0);
    }
}

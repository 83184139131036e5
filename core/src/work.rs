//! What a backend is handed and what it hands back, as the worker's flow sees them; and
//! what the worker's I/O thread tells its executor while tasks run: a batch is over, a
//! chunk is to yield its tail.

use crate::batch::Task;
use crate::protocol::Status;

/// One task as a backend receives it: the task, and for data batches its input's name and
/// bytes (empty for built-in kernels, which compute from the task id and constants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Work {
    pub task: Task,
    pub name: String,
    pub input: Vec<u8>,
}

impl From<Task> for Work {
    fn from(task: Task) -> Work {
        Work {
            task,
            ..Work::default()
        }
    }
}

/// What one task came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub task: Task,
    pub status: Status,
    /// Wall time from the start of this task's execution to its outcome, in microseconds.
    pub wall_us: u32,
    /// Time the kernel itself took: device time from timestamp queries on GPU backends,
    /// the computation's own wall time on `cpu`, 0 where nothing is measured (`sleep`, or
    /// an adapter without timestamp queries).
    pub kernel_us: u32,
    /// Kernel dispatches it took on the device (0 on `cpu` and `sleep`).
    pub dispatches: u32,
    /// The kernel's checksum; 0 for `sleep`.
    pub checksum: u64,
    /// The input's name, passed through (the sink names the output after it).
    pub name: String,
    /// The kernel's output (data kernels); empty for `spin` and `sleep`.
    pub output: Vec<u8>,
    /// Items that differ from the CPU reference when the result was checked item by item
    /// (`mandelbrot`'s pixels, where one differing pixel is a mismatch); 0 otherwise.
    pub differing: u32,
    /// Why it failed (status `failed`), for the sink's report of a task given up on;
    /// empty otherwise.
    pub error: String,
}

impl Outcome {
    /// The same outcome, saying why it failed.
    pub fn because(self, error: impl Into<String>) -> Outcome {
        Outcome {
            error: error.into(),
            ..self
        }
    }

    /// A task that could not run: failed, nothing computed.
    pub fn failed(work: Work, wall_us: u32) -> Outcome {
        Outcome {
            task: work.task,
            status: Status::Failed,
            wall_us,
            name: work.name,
            ..Outcome::default()
        }
    }
}

/// Which batch the ventilator said is over, and which chunks it asked to yield, shared by
/// a worker's I/O thread (which hears it) and its executor (which runs the batch's
/// tasks): the executor starts no task of a batch that is over, the backend's flag
/// (`Backend::abandon_with` in the root package) is set while it runs one, and a chunk
/// asked to yield gets no piece after the one in hand.
#[derive(Debug, Default)]
pub struct Abandon {
    over: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicU64,
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Chunks (batch, id) the ventilator asked to yield their tails, not yet taken by the
    /// executor; `yields_waiting` lets it look without the lock.
    yields: std::sync::Mutex<Vec<(u64, u32)>>,
    yields_waiting: std::sync::atomic::AtomicBool,
}

impl Abandon {
    /// The backend's flag.
    pub fn flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.flag.clone()
    }

    /// The I/O thread heard that `batch` is over.
    pub fn batch_over(&self, batch: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.over.store(batch, SeqCst);
        if self.running.load(SeqCst) == batch {
            self.flag.store(true, SeqCst);
        }
    }

    /// The I/O thread got tasks of `batch` after hearing it was over: a new run of the
    /// same batch (messages from one ventilator arrive in order, so these were sent after
    /// the end).
    pub fn batch_again(&self, batch: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.over.compare_exchange(batch, 0, SeqCst, SeqCst).is_ok()
            && self.running.load(SeqCst) == batch
        {
            self.flag.store(false, SeqCst);
        }
    }

    /// The executor starts running tasks of `batch`.
    pub fn begin(&self, batch: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.running.store(batch, SeqCst);
        self.flag.store(self.over.load(SeqCst) == batch, SeqCst);
        // An end heard between the two lines above stored `true` and was overwritten.
        if self.over.load(SeqCst) == batch {
            self.flag.store(true, SeqCst);
        }
    }

    /// The I/O thread heard that chunk `id` of `batch` is to yield the rest of its items.
    pub fn ask_yield(&self, batch: u64, id: u32) {
        if let Ok(mut yields) = self.yields.lock() {
            yields.push((batch, id));
            self.yields_waiting
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The chunks asked to yield since the last call (the executor's look between pieces).
    pub fn take_yields(&self) -> Vec<(u64, u32)> {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.yields_waiting.load(SeqCst) {
            return Vec::new();
        }
        match self.yields.lock() {
            Ok(mut yields) => {
                self.yields_waiting.store(false, SeqCst);
                std::mem::take(&mut *yields)
            }
            Err(_) => Vec::new(),
        }
    }

    /// Whether `batch` is over: its tasks are not started.
    pub fn is_over(&self, batch: u64) -> bool {
        batch != 0 && self.over.load(std::sync::atomic::Ordering::SeqCst) == batch
    }
}

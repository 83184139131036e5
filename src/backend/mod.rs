//! Backends: what a worker runs a task on. A backend gets tasks and returns outcomes; it
//! never touches a socket, and the worker never knows which backend it drives.
//!
//! `sleep` is the seed's simulation, `cpu` the Rust reference of each kernel. Backends are
//! built once per worker (a GPU context is expensive) and then reused for every task.

pub mod cpu;
pub mod sleep;

use crate::batch::{Job, Task};
use crate::protocol::Status;

/// Which backend a worker runs, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// A hardware GPU adapter if one exists, else `sleep`; says which and why.
    Auto,
    /// The kernel's WGSL shader on a hardware adapter.
    Gpu,
    /// The same shader on a CPU adapter (llvmpipe, lavapipe): tests the real shaders.
    Software,
    /// The kernel in Rust: the reference GPU results are checked against.
    Cpu,
    /// Sleep for the task's workload in milliseconds: the seed's simulation.
    Sleep,
}

/// What one task came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub task: Task,
    pub status: Status,
    /// Wall time from the start of this task's execution to its outcome, in microseconds.
    pub wall_us: u32,
    /// Device time from timestamp queries; 0 where not measured.
    pub kernel_us: u32,
    /// The kernel's checksum; 0 for `sleep`.
    pub checksum: u64,
}

/// A backend as the worker sees it.
pub trait Backend: Send {
    /// Short name: `sleep`, `cpu`, `software`, `gpu`.
    fn kind(&self) -> &'static str;
    /// The device it runs on (adapter name and API for GPUs; empty for `sleep`).
    fn adapter(&self) -> String {
        String::new()
    }
    /// Tasks the backend wants in flight at once to stay busy (its pipeline depth).
    fn window_hint(&self) -> u16 {
        1
    }
    /// Runs `tasks`, calling `done` with each outcome as soon as it is known, in any order.
    /// Must call `done` exactly once per task, whatever fails.
    fn run(&mut self, job: &Job, tasks: &[Task], done: &mut dyn FnMut(Outcome));
}

/// Microseconds in a duration, saturated to u32 (71 minutes).
pub fn micros(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Builds the backend a worker asked for. `auto` never fails: without a hardware adapter it
/// falls back to `sleep` and says so.
pub fn build(kind: BackendKind, slowdown: f64) -> anyhow::Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Sleep => Ok(Box::new(sleep::Sleep::new(slowdown))),
        BackendKind::Cpu => Ok(Box::new(cpu::Cpu)),
        BackendKind::Auto => {
            log::warn!("backend auto: no GPU backend in this build; using sleep");
            Ok(Box::new(sleep::Sleep::new(slowdown)))
        }
        BackendKind::Gpu | BackendKind::Software => {
            anyhow::bail!("the {kind:?} backend is not available in this build")
        }
    }
}

/// Writes what adapters this machine offers.
pub fn describe_adapters(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(out, "adapters: none listed by this build")
}

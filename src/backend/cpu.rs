//! The `cpu` backend: each kernel's Rust reference, on the worker's thread. It is what GPU
//! results are verified against and the CPU side of the CPU-vs-GPU comparison.

use super::{micros, Backend, Outcome};
use crate::batch::{Job, Task};
use crate::kernels::{spin, Kernel};
use crate::protocol::Status;
use std::time::Instant;

#[derive(Default)]
pub struct Cpu;

/// Runs one task's kernel on the CPU: the reference checksum, or `None` for a job this
/// build cannot run (unknown kernel, or more invocations than a u32 index holds).
pub fn reference(job: &Job, task: Task) -> Option<u64> {
    match Kernel::from_id(job.kernel)? {
        Kernel::Spin => {
            let n = spin::invocations(task.workload_ms, job.units_per_ms)?;
            Some(spin::reference(task.id, n))
        }
    }
}

impl Backend for Cpu {
    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn run(
        &mut self,
        job: &Job,
        next: &mut dyn FnMut() -> Option<Task>,
        done: &mut dyn FnMut(Outcome),
    ) {
        while let Some(task) = next() {
            let start = Instant::now();
            let (status, checksum) = match reference(job, task) {
                // This backend is the reference: a result it was asked to check matches.
                Some(sum) if job.verifies(task.id) => (Status::Verified, sum),
                Some(sum) => (Status::Ok, sum),
                None => {
                    log::error!(
                        "task {}: kernel {} with {} units/ms x {} ms cannot run here",
                        task.id,
                        job.kernel,
                        job.units_per_ms,
                        task.workload_ms
                    );
                    (Status::Failed, 0)
                }
            };
            let wall_us = micros(start.elapsed());
            done(Outcome {
                task,
                status,
                wall_us,
                kernel_us: wall_us,
                checksum,
            });
        }
    }
}

//! The `cpu` backend: each built-in kernel's Rust reference, on the worker's thread. It is
//! what GPU results are verified against and the CPU side of the CPU-vs-GPU comparison.
//! User kernels have no reference: this backend declines them.

use super::{micros, Backend, Outcome, Work};
use crate::batch::Job;
use crate::kernels::{self, Kernel};
use crate::protocol::Status;
use std::time::Instant;

#[derive(Default)]
pub struct Cpu;

impl Backend for Cpu {
    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn prepare(&mut self, job: &Job, _source: Option<&str>) -> Result<(), String> {
        match Kernel::from_id(job.kernel) {
            Some(Kernel::User) => Err(
                "the cpu backend runs the built-in kernels' Rust references only; a user kernel \
                 needs --backend gpu or software"
                    .to_owned(),
            ),
            Some(_) => Ok(()),
            None => Err(format!(
                "kernel id {} is unknown to this build: upgrade the worker",
                job.kernel
            )),
        }
    }

    fn run(
        &mut self,
        job: &Job,
        next: &mut dyn FnMut() -> Option<Work>,
        done: &mut dyn FnMut(Outcome),
    ) {
        while let Some(mut work) = next() {
            let start = Instant::now();
            let computed = if job.kernel == Kernel::Copy.id() {
                // The identity: the input becomes the output, moved rather than copied.
                Some(Ok(std::mem::take(&mut work.input)))
            } else {
                kernels::reference(job, work.task, &work.input)
            };
            let wall_us = micros(start.elapsed());
            match computed {
                Some(Ok(mut output)) => {
                    let checksum = kernels::checksum(job, &output);
                    if !Kernel::from_id(job.kernel).is_some_and(Kernel::carries_output) {
                        output = Vec::new();
                    }
                    done(Outcome {
                        task: work.task,
                        // This backend is the reference: a result it was asked to check matches.
                        status: if job.verifies(work.task.id) {
                            Status::Verified
                        } else {
                            Status::Ok
                        },
                        wall_us,
                        kernel_us: wall_us,
                        dispatches: 0,
                        checksum,
                        name: work.name,
                        output,
                        differing: 0,
                        error: String::new(),
                    });
                }
                other => {
                    let why = match other {
                        Some(Err(why)) => why,
                        _ => "the kernel has no CPU reference".to_owned(),
                    };
                    log::error!("task {} cannot run here: {why}", work.task.id);
                    done(Outcome::failed(work, wall_us).because(why));
                }
            }
        }
    }
}

//! `conquer calibrate`: how many work units one CPU core does per millisecond, per kernel,
//! measured with the `cpu` backend (the kernels' Rust references). Passing that figure as
//! `--units-per-ms` makes one nominal millisecond the same amount of work on every
//! backend as one core's millisecond, so a sleep worker simulates one CPU core and a
//! "speed-up vs sleep" is the speed-up of a GPU over one core. No sockets, no devices.

use crate::backend::{cpu, Backend, Outcome};
use crate::batch::{Job, Task};
use crate::kernels::Kernel;
use std::time::{Duration, Instant};

/// One kernel's measured rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Calibration {
    pub kernel: &'static str,
    /// Work units one core did per millisecond (median of the rounds).
    pub units_per_ms: u32,
    /// Units measured in each round, and the rounds' wall time in total.
    pub units_per_round: u64,
    pub rounds: u32,
    pub measured_ms: f64,
}

/// Measures `kernel` on this thread: rounds of work sized to about `round` each, the
/// median rate taken (a warm-up round first is not counted).
pub fn measure(kernel: Kernel, round: Duration, rounds: u32) -> anyhow::Result<Calibration> {
    let mut backend = cpu::Cpu;
    let job = Job {
        kernel: kernel.id(),
        units_per_ms: 1,
        verify_percent: 0,
        ..Job::default()
    };
    // Grow a task until one round takes long enough to time well.
    let mut units: u32 = 1024;
    let time = |backend: &mut cpu::Cpu, units: u32| -> anyhow::Result<Duration> {
        let mut tasks = vec![Task {
            id: 0,
            workload_ms: units,
            ..Default::default()
        }]
        .into_iter();
        let mut outcome: Option<Outcome> = None;
        let start = Instant::now();
        backend.run(
            &job,
            &mut || tasks.next().map(crate::backend::Work::from),
            &mut |o| outcome = Some(o),
        );
        let elapsed = start.elapsed();
        match outcome {
            Some(o) if o.status == crate::protocol::Status::Ok => Ok(elapsed),
            _ => anyhow::bail!("the cpu backend could not run {units} units of {kernel:?}"),
        }
    };
    while time(&mut backend, units)? < round / 4 {
        units = units
            .checked_mul(2)
            .ok_or_else(|| anyhow::anyhow!("{kernel:?} runs too fast to calibrate"))?;
    }
    let mut rates = Vec::with_capacity(rounds as usize);
    let mut measured = Duration::ZERO;
    for _ in 0..rounds.max(1) {
        let elapsed = time(&mut backend, units)?;
        measured += elapsed;
        rates.push(f64::from(units) / (elapsed.as_secs_f64() * 1000.0));
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    Ok(Calibration {
        kernel: kernel.name(),
        units_per_ms: median.round().clamp(1.0, f64::from(u32::MAX)) as u32,
        units_per_round: u64::from(units),
        rounds: rounds.max(1),
        measured_ms: measured.as_secs_f64() * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibration_measures_a_positive_rate_from_real_work() {
        let c = measure(Kernel::Spin, Duration::from_millis(20), 3).unwrap();
        assert_eq!(c.kernel, "spin");
        assert!(c.units_per_ms > 0);
        assert!(c.measured_ms > 0.0);
        assert!(c.units_per_round >= 1024);
    }
}

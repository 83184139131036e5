//! Backends: what a worker runs a task on. A backend gets tasks and returns outcomes; it
//! never touches a socket, and the worker never knows which backend it drives.
//!
//! `sleep` is the seed's simulation, `cpu` the Rust reference of each kernel. Backends are
//! built once per worker (a GPU context is expensive) and then reused for every task.

pub mod cpu;
pub mod gpu;
pub mod sleep;
pub mod slowed;

use crate::batch::Job;
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

pub use conquer_core::work::{Abandon, Outcome, Work};

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
    /// Invocations its device needs in one dispatch to run near its full rate, as
    /// measured when it was built (0 without a device).
    fn fill(&self) -> u32 {
        0
    }
    /// Gets ready for a batch's job before its first task: compiles its kernel (`source`
    /// is a user kernel's WGSL, `None` for built-in kernels). `Err` with the reason when
    /// this backend cannot run the job at all (the worker then declines the batch).
    fn prepare(&mut self, job: &Job, source: Option<&str>) -> Result<(), String>;
    /// Runs tasks taken from `next` until it returns `None`, calling `done` with each
    /// outcome as soon as it is known. A pipelined backend takes a new task whenever it has
    /// room, so its device never waits for the worker. Must call `done` exactly once for
    /// every task it took, whatever fails. Called only after `prepare` accepted the job.
    fn run(
        &mut self,
        job: &Job,
        next: &mut dyn FnMut() -> Option<Work>,
        done: &mut dyn FnMut(Outcome),
    );
    /// `Err` with the reason once the backend can run nothing more (a lost GPU device).
    fn healthy(&self) -> Result<(), String> {
        Ok(())
    }
    /// The worker's stop flag: a backend that waits on a device checks it while waiting,
    /// so a stopping worker never waits out a task timeout.
    fn stop_with(&mut self, _stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {}
    /// Set while the task running belongs to a batch the ventilator said is over (a search
    /// job that has its hits): a backend that can stop a task part-way checks it and fails
    /// the task. Others finish the task in hand; the worker starts no other of the batch.
    fn abandon_with(&mut self, _abandon: std::sync::Arc<std::sync::atomic::AtomicBool>) {}
    /// Why the backend found, while running, that it cannot run this batch (a task beyond
    /// its adapter's limits): the worker declines the batch. Taken once.
    fn take_decline(&mut self) -> Option<String> {
        None
    }
}

/// Whether a task fits this worker's `--max-payload`: every buffer a backend allocates for
/// it (output, staging, a CPU reference) is bounded by its output and its input, and the
/// input already arrived within the bound. `Err` with why when the output would not (a
/// ventilator asking for more than this worker takes): the worker declines the batch
/// before anything is allocated. A task whose shape is invalid is left to the backend,
/// which fails it.
pub fn fits(job: &Job, work: &Work, limit: u64) -> Result<(), String> {
    match crate::kernels::shape(job, work.task, work.input.len()) {
        Ok(shape) if shape.output_bytes as u64 > limit => Err(format!(
            "task {} asks for {} bytes of output, over this worker's --max-payload {limit} \
             (raise --max-payload on every role if such tasks are meant)",
            work.task.id, shape.output_bytes
        )),
        _ => Ok(()),
    }
}

/// Microseconds in a duration, saturated to u32 (71 minutes).
pub fn micros(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Options for building a backend.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Multiplies every task's time: the sleep backend sleeps longer, a computing one
    /// waits after each task (`--slowdown`).
    pub slowdown: f64,
    /// GPU/software: which adapter, by index from `conquer info` or part of its name.
    pub adapter: Option<String>,
    pub gpu: gpu::GpuConfig,
    /// Keep the choice to debug level (the second and later workers of one run).
    pub quiet: bool,
}

/// What `auto` found when it found no hardware GPU, for the line that says what it chose.
fn found_adapters(adapters: &[wgpu::Adapter]) -> String {
    if adapters.is_empty() {
        "no adapter at all (no Vulkan or GL driver: see `conquer info`)".to_owned()
    } else {
        format!(
            "only {}",
            adapters
                .iter()
                .map(|a| gpu::describe(&a.get_info()))
                .collect::<Vec<_>>()
                .join("; ")
        )
    }
}

/// Builds the backend a worker asked for. `auto` never fails: without a usable hardware
/// adapter it falls back to `sleep` and says why. `gpu` and `software` fail with the list
/// of adapters found when none fits. `--slowdown` above 1 slows a computing backend too
/// (see [`slowed`]); the sleep backend slows its own sleeps.
pub fn build(kind: BackendKind, options: &BackendOptions) -> anyhow::Result<Box<dyn Backend>> {
    let backend = build_unslowed(kind, options)?;
    Ok(if options.slowdown > 1.0 && backend.kind() != "sleep" {
        Box::new(slowed::Slowed::new(backend, options.slowdown))
    } else {
        backend
    })
}

fn build_unslowed(kind: BackendKind, options: &BackendOptions) -> anyhow::Result<Box<dyn Backend>> {
    let sleep = || Box::new(sleep::Sleep::new(options.slowdown)) as Box<dyn Backend>;
    let say = |line: String| {
        if options.quiet {
            // Said already, for the run (`conquer run` says it for its first worker).
            log::trace!("{line}");
        } else {
            log::info!("{line}");
        }
    };
    match kind {
        BackendKind::Sleep => {
            say("backend sleep: sleeping each task's workload, as asked".into());
            Ok(sleep())
        }
        BackendKind::Cpu => {
            say("backend cpu: the kernels' Rust reference on this thread, as asked".into());
            Ok(Box::new(cpu::Cpu))
        }
        BackendKind::Auto => {
            let adapters = gpu::adapters();
            match gpu::choose(
                &adapters,
                gpu::AdapterClass::Hardware,
                options.adapter.as_deref(),
            ) {
                Ok(Some(index)) => match gpu::Gpu::new(&adapters[index], options.gpu) {
                    Ok(g) => {
                        say(format!(
                            "backend auto: using the hardware GPU {}",
                            g.adapter()
                        ));
                        Ok(Box::new(Verifier::new(Box::new(g))))
                    }
                    Err(e) => {
                        log::warn!("backend auto: the GPU is not usable ({e:#}); using sleep");
                        Ok(sleep())
                    }
                },
                Ok(None) => {
                    let found = found_adapters(&adapters);
                    say(format!(
                        "backend auto: no hardware GPU adapter, found {found}; using sleep \
                         (--backend software runs the shaders on a CPU adapter)"
                    ));
                    Ok(Box::new(AutoFallback {
                        sleep: sleep::Sleep::new(options.slowdown),
                        data: None,
                        tried: false,
                        options: options.clone(),
                        on_data: false,
                        stop: None,
                    }))
                }
                Err(e) => Err(e),
            }
        }
        BackendKind::Gpu | BackendKind::Software => {
            let class = if kind == BackendKind::Gpu {
                gpu::AdapterClass::Hardware
            } else {
                gpu::AdapterClass::Software
            };
            let adapters = gpu::adapters();
            let Some(index) = gpu::choose(&adapters, class, options.adapter.as_deref())? else {
                let found = if adapters.is_empty() {
                    "none".to_owned()
                } else {
                    adapters
                        .iter()
                        .map(|a| gpu::describe(&a.get_info()))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                anyhow::bail!(
                    "--backend {}: no {} adapter found (adapters found: {found}). {}",
                    if kind == BackendKind::Gpu {
                        "gpu"
                    } else {
                        "software"
                    },
                    if kind == BackendKind::Gpu {
                        "hardware GPU"
                    } else {
                        "CPU (software)"
                    },
                    if kind == BackendKind::Gpu {
                        gpu_diagnosis(&adapters)
                    } else {
                        "Install Mesa's software Vulkan driver (Debian: mesa-vulkan-drivers) and check WGPU_BACKEND"
                            .to_owned()
                    }
                );
            };
            let g = gpu::Gpu::new(&adapters[index], options.gpu)?;
            say(format!("backend {}: {}", g.kind(), g.adapter()));
            Ok(Box::new(Verifier::new(Box::new(g))))
        }
    }
}

/// What `--backend auto` means for a batch known before any worker starts (`conquer
/// run`), said once: None while a hardware GPU is visible (then `build` takes it, or sleep
/// if it is not usable); else sleep for a millisecond batch, and for a data batch a
/// software adapter, or the CPU references of the built-in kernels where there is none.
pub fn auto_for_batch(data: bool, options: &BackendOptions) -> anyhow::Result<Option<BackendKind>> {
    let adapters = gpu::adapters();
    if gpu::choose(
        &adapters,
        gpu::AdapterClass::Hardware,
        options.adapter.as_deref(),
    )?
    .is_some()
    {
        return Ok(None);
    }
    let software = software_adapters(&adapters);
    let found = found_adapters(&adapters);
    let (kind, choice) = match (data, software.first()) {
        (false, _) => (
            BackendKind::Sleep,
            "using sleep (--backend software runs the shaders on a CPU adapter)".to_owned(),
        ),
        (true, Some(adapter)) => (
            BackendKind::Software,
            format!("this data batch runs on the software adapter {adapter}"),
        ),
        (true, None) => (
            BackendKind::Cpu,
            "this data batch runs on the built-in kernels' CPU references".to_owned(),
        ),
    };
    log::info!("backend auto: no hardware GPU adapter, found {found}; {choice}");
    Ok(Some(kind))
}

/// `auto` without a hardware GPU: sleep stands in for millisecond batches, as the seed's
/// simulation; a data batch gets a software adapter if there is one, else the CPU
/// reference of a built-in kernel, built on first need. Nothing here invents an output.
struct AutoFallback {
    sleep: sleep::Sleep,
    data: Option<Box<dyn Backend>>,
    tried: bool,
    options: BackendOptions,
    /// The prepared job is a data job.
    on_data: bool,
    /// The worker's stop flag, for the data backend once built.
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl AutoFallback {
    fn data_backend(&mut self) -> Option<&mut Box<dyn Backend>> {
        if !self.tried {
            self.tried = true;
            let adapters = gpu::adapters();
            let software = gpu::choose(&adapters, gpu::AdapterClass::Software, None)
                .ok()
                .flatten()
                .and_then(|i| match gpu::Gpu::new(&adapters[i], self.options.gpu) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        log::warn!("backend auto: the software adapter is not usable ({e:#})");
                        None
                    }
                });
            self.data = Some(match software {
                Some(mut g) => {
                    if let Some(stop) = &self.stop {
                        g.stop_with(stop.clone());
                    }
                    log::info!(
                        "backend auto: data batch: no hardware GPU, running it on the software \
                         adapter {}",
                        g.adapter()
                    );
                    Box::new(Verifier::new(Box::new(g)))
                }
                None => {
                    log::info!(
                        "backend auto: data batch: no GPU adapter at all, running built-in \
                         kernels' CPU references"
                    );
                    Box::new(cpu::Cpu)
                }
            });
        }
        self.data.as_mut()
    }
}

impl Backend for AutoFallback {
    fn kind(&self) -> &'static str {
        match (&self.data, self.on_data) {
            (Some(data), true) => data.kind(),
            _ => "sleep",
        }
    }
    fn adapter(&self) -> String {
        match (&self.data, self.on_data) {
            (Some(data), true) => data.adapter(),
            _ => String::new(),
        }
    }
    fn fill(&self) -> u32 {
        match (&self.data, self.on_data) {
            (Some(data), true) => data.fill(),
            _ => 0,
        }
    }
    fn healthy(&self) -> Result<(), String> {
        self.data.as_ref().map_or(Ok(()), |d| d.healthy())
    }
    fn stop_with(&mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.stop = Some(stop);
    }
    fn abandon_with(&mut self, abandon: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.sleep.abandon_with(abandon);
    }
    fn take_decline(&mut self) -> Option<String> {
        self.data.as_mut().and_then(|d| d.take_decline())
    }
    fn prepare(&mut self, job: &Job, source: Option<&str>) -> Result<(), String> {
        self.on_data = crate::kernels::is_data(job);
        if !self.on_data {
            return self.sleep.prepare(job, source);
        }
        match self.data_backend() {
            Some(data) => data.prepare(job, source),
            None => Err("no backend for data batches could be built".to_owned()),
        }
    }
    fn run(
        &mut self,
        job: &Job,
        next: &mut dyn FnMut() -> Option<Work>,
        done: &mut dyn FnMut(Outcome),
    ) {
        match (self.on_data, self.data.as_mut()) {
            (true, Some(data)) => data.run(job, next, done),
            _ => self.sleep.run(job, next, done),
        }
    }
}

/// Software adapters among `adapters`, described.
pub fn software_adapters(adapters: &[wgpu::Adapter]) -> Vec<String> {
    adapters
        .iter()
        .map(|a| a.get_info())
        .filter(|i| gpu::AdapterClass::of(i.device_type) == Some(gpu::AdapterClass::Software))
        .map(|i| gpu::describe(&i))
        .collect()
}

/// Why no hardware GPU is visible, with the fixes (see `diagnose`).
fn gpu_diagnosis(adapters: &[wgpu::Adapter]) -> String {
    let why = crate::diagnose::findings().explain(&software_adapters(adapters));
    if why.is_empty() {
        "Use --backend software or sleep, or check the GPU driver (`conquer info`)".to_owned()
    } else {
        format!(
            "Why: {}. Or use --backend software or sleep",
            why.join("; ")
        )
    }
}

/// Checks outcomes against the CPU reference when the job asks for it (`--verify`, or a
/// sample with `--verify-sample`): a result that differs becomes a `mismatch`. Wraps the compute backends.
pub struct Verifier {
    inner: Box<dyn Backend>,
}

impl Verifier {
    pub fn new(inner: Box<dyn Backend>) -> Self {
        Verifier { inner }
    }
}

impl Backend for Verifier {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn adapter(&self) -> String {
        self.inner.adapter()
    }
    fn window_hint(&self) -> u16 {
        self.inner.window_hint()
    }
    fn fill(&self) -> u32 {
        self.inner.fill()
    }
    fn healthy(&self) -> Result<(), String> {
        self.inner.healthy()
    }
    fn stop_with(&mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.inner.stop_with(stop)
    }
    fn abandon_with(&mut self, abandon: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.inner.abandon_with(abandon)
    }
    fn take_decline(&mut self) -> Option<String> {
        self.inner.take_decline()
    }
    fn prepare(&mut self, job: &Job, source: Option<&str>) -> Result<(), String> {
        if job.verify_percent > 0
            && crate::kernels::Kernel::from_id(job.kernel)
                .is_some_and(crate::kernels::Kernel::takes_inputs)
        {
            log::warn!(
                "--verify: this kernel's results are not checked on a GPU worker (a user kernel \
                 has no CPU reference); they count as unchecked"
            );
        }
        self.inner.prepare(job, source)
    }
    fn run(
        &mut self,
        job: &Job,
        next: &mut dyn FnMut() -> Option<Work>,
        done: &mut dyn FnMut(Outcome),
    ) {
        self.inner.run(job, next, &mut |mut outcome| {
            if job.verifies(outcome.task.id) && outcome.status == Status::Ok {
                check(job, &mut outcome);
            }
            done(outcome)
        })
    }
}

/// Checks one outcome against the CPU reference, where the kernel has one: `verified`,
/// or `mismatch` with the reason logged. User kernels have none and stay `ok`.
pub fn check(job: &Job, outcome: &mut Outcome) {
    // A kernel of inputs is checked where its input is at hand (the cpu backend).
    if crate::kernels::Kernel::from_id(job.kernel).is_some_and(crate::kernels::Kernel::takes_inputs)
    {
        return;
    }
    let Some(expected) = crate::kernels::reference(job, outcome.task, &[]) else {
        return;
    };
    let verdict = expected.and_then(|expected| {
        if crate::kernels::Kernel::from_id(job.kernel) == Some(crate::kernels::Kernel::Spin) {
            let sum = crate::kernels::checksum(job, &expected);
            if sum == outcome.checksum {
                Ok(())
            } else {
                Err(format!(
                    "checksum {:016x} differs from the CPU reference {sum:016x}",
                    outcome.checksum
                ))
            }
        } else {
            if crate::kernels::Kernel::from_id(job.kernel)
                == Some(crate::kernels::Kernel::Mandelbrot)
            {
                outcome.differing =
                    crate::kernels::mandelbrot::differing(&outcome.output, &expected)
                        .try_into()
                        .unwrap_or(u32::MAX);
            }
            crate::kernels::agrees(job, &outcome.output, &expected)
        }
    });
    match verdict {
        Ok(()) => outcome.status = Status::Verified,
        Err(why) => {
            log::error!("task {}: {why}", outcome.task.id);
            outcome.status = Status::Mismatch;
        }
    }
}

/// Writes every adapter this machine offers, and which one `auto` would take.
pub fn describe_adapters(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let adapters = gpu::adapters();
    if adapters.is_empty() {
        writeln!(
            out,
            "adapters: none (WGPU_BACKEND={})",
            std::env::var("WGPU_BACKEND").unwrap_or_else(|_| "unset".into())
        )?;
    }
    for (i, adapter) in adapters.iter().enumerate() {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let class = match gpu::AdapterClass::of(info.device_type) {
            Some(gpu::AdapterClass::Hardware) => "gpu",
            Some(gpu::AdapterClass::Software) => "software",
            None => "-",
        };
        writeln!(out, "adapter {i}: {}", info.name)?;
        writeln!(
            out,
            "  type {:?}, backend {:?}, conquer backend {class}",
            info.device_type, info.backend
        )?;
        writeln!(out, "  driver {} {}", info.driver, info.driver_info)?;
        writeln!(
            out,
            "  limits: {} workgroups per dimension, {} invocations per workgroup, {} MiB storage binding",
            limits.max_compute_workgroups_per_dimension,
            limits.max_compute_invocations_per_workgroup,
            limits.max_storage_buffer_binding_size / (1 << 20)
        )?;
        writeln!(
            out,
            "  timestamp queries: {}",
            if adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
                "yes"
            } else {
                "no"
            }
        )?;
    }
    match gpu::choose(&adapters, gpu::AdapterClass::Hardware, None) {
        Ok(Some(i)) => writeln!(out, "auto: adapter {i} (gpu)"),
        _ => {
            writeln!(out, "auto: sleep (no hardware GPU adapter)")?;
            let findings = crate::diagnose::findings();
            for reason in findings.explain(&software_adapters(&adapters)) {
                writeln!(out, "why: {reason}")?;
            }
            Ok(())
        }
    }
}

/// What `conquer info --json` prints: the adapters, `auto`'s choice, and the diagnosis.
#[derive(Debug, serde::Serialize)]
pub struct InfoReport {
    pub libzmq: String,
    pub adapters: Vec<AdapterReport>,
    /// `gpu` (with `auto_adapter`) or `sleep`.
    pub auto: String,
    pub auto_adapter: Option<usize>,
    pub findings: crate::diagnose::Findings,
    /// Why no hardware adapter is visible (empty when one is).
    pub why: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct AdapterReport {
    pub index: usize,
    pub name: String,
    pub device_type: String,
    pub api: String,
    pub driver: String,
    /// `gpu`, `software` or `-`: which conquer backend takes it.
    pub class: String,
}

/// Everything `conquer info` says, as data.
pub fn info_report() -> InfoReport {
    let adapters = gpu::adapters();
    let (major, minor, patch) = zmq::version();
    let list = adapters
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let info = a.get_info();
            AdapterReport {
                index,
                name: info.name.clone(),
                device_type: format!("{:?}", info.device_type),
                api: format!("{:?}", info.backend),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_owned(),
                class: match gpu::AdapterClass::of(info.device_type) {
                    Some(gpu::AdapterClass::Hardware) => "gpu",
                    Some(gpu::AdapterClass::Software) => "software",
                    None => "-",
                }
                .to_owned(),
            }
        })
        .collect();
    let chosen = gpu::choose(&adapters, gpu::AdapterClass::Hardware, None)
        .ok()
        .flatten();
    let findings = crate::diagnose::findings();
    let why = if chosen.is_some() {
        Vec::new()
    } else {
        findings.explain(&software_adapters(&adapters))
    };
    InfoReport {
        libzmq: format!("{major}.{minor}.{patch}"),
        adapters: list,
        auto: if chosen.is_some() { "gpu" } else { "sleep" }.to_owned(),
        auto_adapter: chosen,
        findings,
        why,
    }
}

/// What ARCHITECTURE.md promises of the backends, read from the sources.
#[cfg(test)]
mod boundaries {
    /// The backends' sources, without their tests.
    const BACKENDS: [(&str, &str); 5] = [
        ("backend/mod.rs", include_str!("mod.rs")),
        ("backend/cpu.rs", include_str!("cpu.rs")),
        ("backend/gpu.rs", include_str!("gpu.rs")),
        ("backend/sleep.rs", include_str!("sleep.rs")),
        ("backend/slowed.rs", include_str!("slowed.rs")),
    ];

    fn code(text: &str) -> impl Iterator<Item = (usize, &str)> {
        let text = text.split("#[cfg(test)]").next().unwrap_or(text);
        text.lines()
            .enumerate()
            .map(|(n, line)| (n + 1, line.split("//").next().unwrap_or("")))
    }

    #[test]
    fn backends_never_touch_sockets() {
        for (file, text) in BACKENDS {
            for (n, line) in code(text) {
                for word in ["zmq::Socket", "zmq::Context", "sockets::", ".socket("] {
                    assert!(!line.contains(word), "src/{file}:{n}: `{word}`: {line}");
                }
            }
        }
    }

    #[test]
    fn the_worker_never_knows_which_backend_it_runs() {
        for (n, line) in code(include_str!("../worker.rs")) {
            for word in [
                "backend::gpu",
                "backend::cpu",
                "backend::sleep",
                "backend::slowed",
                "BackendKind",
                "Gpu",
            ] {
                assert!(!line.contains(word), "src/worker.rs:{n}: `{word}`: {line}");
            }
        }
    }
}

//! The `gpu` and `software` backends: each task's kernel as a WGSL compute shader through
//! wgpu. Both are this one code path; they differ only in which adapter they accept
//! (hardware GPUs for `gpu`, CPU implementations such as lavapipe or llvmpipe for
//! `software`), so the shader that runs in production is the shader CI tests.
//!
//! Every kernel goes through one path, the kernel interface (`kernels`, docs/kernels.md):
//! one bind group layout (`params` uniform with a dynamic offset, `input` read-only
//! storage, `output` read-write storage), one pipeline per kernel source (compiled once by
//! `prepare` and cached by its hash), one invocation per item (a search's invocation tries
//! 16 keys), a task's items split into dispatches of bounded size. The context (device, queue, layout, buffers, bind groups) is
//! built once per worker and reused: a slot's input and output buffers grow (to the next
//! power of two) when a task needs more, within the adapter's limits, which the device is
//! opened with. A warm-up task, checked against the CPU reference, keeps shader
//! compilation out of task timings and proves the adapter computes correctly. Several tasks
//! are in flight at once (one "slot" each) so upload, execution and read-back overlap.
//! Errors never panic: wgpu's error handler is replaced, and a failing task is reported as
//! failed for the ventilator to hand on. This module never touches a socket.

use super::{micros, Backend, Outcome, Work};
use crate::batch::{Job, Task};
use crate::kernels::{self, spin, Kernel, PARAMS_BYTES};
use crate::protocol::Status;
use anyhow::{anyhow, bail, Context};
use conquer_core::sizing::{Sizer, SizingConfig};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes reserved at the start of a slot's read-back buffer for the two timestamps.
const TIMESTAMP_BYTES: u64 = 16;
/// Smallest input or output buffer a slot has: room for spin and small tasks.
const MIN_BUFFER: u64 = 256;
/// Dispatches recorded per submission; a task needing more is submitted in several rounds.
const DISPATCHES_PER_SUBMIT: usize = 256;
/// Longest single wait on the device; the GL backend caps waits near 2 s, so we loop.
const POLL_SLICE: Duration = Duration::from_secs(1);
/// Device losses within [`LOSS_WINDOW`] after which a worker gives up on its device.
const MAX_LOSSES: usize = 3;
const LOSS_WINDOW: Duration = Duration::from_secs(60);
/// Test hook: with `CONQUER_FAULT=lose-device`, the first context of the process destroys
/// its device right after submitting its fifth task, as a driver reset would;
/// `lose-device-always` destroys it after every fifth task (rebuilt devices too).
const FAULT_VAR: &str = "CONQUER_FAULT";
static FAULT_USED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Which adapters a backend accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterClass {
    /// Discrete, integrated or virtual GPUs.
    Hardware,
    /// CPU implementations of the GPU API (llvmpipe, lavapipe, WARP, SwiftShader).
    Software,
}

impl AdapterClass {
    pub fn of(device_type: wgpu::DeviceType) -> Option<AdapterClass> {
        match device_type {
            wgpu::DeviceType::DiscreteGpu
            | wgpu::DeviceType::IntegratedGpu
            | wgpu::DeviceType::VirtualGpu => Some(AdapterClass::Hardware),
            wgpu::DeviceType::Cpu => Some(AdapterClass::Software),
            wgpu::DeviceType::Other => None,
        }
    }

    fn backend_name(self) -> &'static str {
        match self {
            AdapterClass::Hardware => "gpu",
            AdapterClass::Software => "software",
        }
    }
}

/// The built-in shaders' `@workgroup_size`, as shipped.
const SHIPPED_WORKGROUP: u32 = 64;

/// A built-in shader's source at `size` invocations a workgroup.
fn with_workgroup(source: &str, size: u32) -> String {
    source.replace(
        &format!("@workgroup_size({SHIPPED_WORKGROUP})"),
        &format!("@workgroup_size({size})"),
    )
}

/// Most fills of the device a probe may hold for a kernel's workgroup size to be tuned.
const TUNE_PROBE_FILLS: u64 = 64;

/// Longest a probe may take for a kernel's workgroup size to be tuned on it
/// (`tune_workgroup`): six runs of it must stay a small part of a job.
const TUNE_PROBE_MOST: Duration = Duration::from_millis(20);

/// Longest a dispatch may take by default, in ms: a twentieth of the 2 s desktop drivers
/// allow before they reset the device.
pub const DEFAULT_MAX_DISPATCH_MS: f64 = 100.0;

/// Tuning of the GPU context.
#[derive(Debug, Clone, Copy)]
pub struct GpuConfig {
    /// Most items in one dispatch: invocations, a search's keys (`--dispatch-invocations`;
    /// the device's own limit
    /// caps it too). Below it each kernel's dispatches are sized by how long they take
    /// ([`conquer_core::sizing`]).
    pub max_invocations_per_dispatch: u32,
    /// Longest a dispatch may take, in µs (`--max-dispatch-ms`): well under the watchdog
    /// of desktop drivers (about 2 s).
    pub max_dispatch_us: f64,
    /// Tasks in flight at once.
    pub slots: usize,
    /// Longest a task may have the device (`--task-timeout`), from its submission or the
    /// end of the task before it, whichever is later: past it the task fails and the device
    /// is abandoned and rebuilt, as after a device loss.
    pub task_timeout: Duration,
    /// Largest storage buffer to use, below the adapter's own limit (tests; `None`: the
    /// adapter's).
    pub max_buffer: Option<u64>,
    /// Choose each built-in kernel's workgroup size by measurement when it is first
    /// compiled (`--tune-workgroups`; `tune_workgroup`).
    pub tune_workgroups: bool,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            max_invocations_per_dispatch: u32::MAX,
            max_dispatch_us: DEFAULT_MAX_DISPATCH_MS * 1e3,
            slots: 4,
            task_timeout: Duration::from_secs(120),
            max_buffer: None,
            tune_workgroups: false,
        }
    }
}

/// Every adapter this machine offers, in a stable order (the indices `--adapter` takes).
/// `WGPU_BACKEND` (e.g. `vulkan`, `gl`, or `metal` on Linux to hide every adapter) chooses
/// the APIs searched; by default the primary APIs (Vulkan, Metal, DX12) are searched and
/// OpenGL only if they find nothing, since GL adapters mostly duplicate Vulkan ones.
pub fn adapters() -> Vec<wgpu::Adapter> {
    let from_env = wgpu::Backends::from_env();
    let search = |backends: wgpu::Backends| {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        pollster::block_on(instance.enumerate_adapters(backends))
    };
    match from_env {
        Some(backends) => search(backends),
        None => {
            let primary = search(wgpu::Backends::PRIMARY);
            if primary.is_empty() {
                search(wgpu::Backends::GL)
            } else {
                primary
            }
        }
    }
}

/// Preference among adapters of a class: discrete > integrated > virtual, then by API.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan => 0,
        wgpu::Backend::Metal => 1,
        wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 3,
        _ => 4,
    };
    (kind, api)
}

/// One line describing an adapter: name, type, API, driver.
pub fn describe(info: &wgpu::AdapterInfo) -> String {
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{} ({:?}, {:?}{})",
        info.name,
        info.device_type,
        info.backend,
        if driver.is_empty() {
            String::new()
        } else {
            format!(", {driver}")
        }
    )
}

/// Chooses an adapter of `class`: the one `pick` names (an index from `conquer info`, or
/// part of a name), else the best ranked. `None` when there is none of that class.
pub fn choose(
    adapters: &[wgpu::Adapter],
    class: AdapterClass,
    pick: Option<&str>,
) -> anyhow::Result<Option<usize>> {
    let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
    if let Some(pick) = pick {
        let index = match pick.parse::<usize>() {
            Ok(i) if i < infos.len() => i,
            Ok(i) => bail!(
                "--adapter {i}: there are {} adapters (see `conquer info`)",
                infos.len()
            ),
            Err(_) => {
                let needle = pick.to_lowercase();
                infos
                    .iter()
                    .enumerate()
                    .filter(|(_, info)| info.name.to_lowercase().contains(&needle))
                    .filter(|(_, info)| AdapterClass::of(info.device_type) == Some(class))
                    .min_by_key(|(_, info)| rank(info))
                    .map(|(i, _)| i)
                    .ok_or_else(|| {
                        anyhow!(
                            "--adapter {pick:?} matches no {} adapter (see `conquer info`)",
                            class.backend_name()
                        )
                    })?
            }
        };
        if AdapterClass::of(infos[index].device_type) != Some(class) {
            bail!(
                "--adapter {pick}: {} is not a {} adapter; use --backend {}",
                describe(&infos[index]),
                class.backend_name(),
                match AdapterClass::of(infos[index].device_type) {
                    Some(AdapterClass::Hardware) => "gpu",
                    _ => "software",
                }
            );
        }
        return Ok(Some(index));
    }
    Ok(infos
        .iter()
        .enumerate()
        .filter(|(_, info)| AdapterClass::of(info.device_type) == Some(class))
        .min_by_key(|(i, info)| (rank(info), *i))
        .map(|(i, _)| i))
}

/// A GPU context for one worker.
pub struct Gpu {
    class: AdapterClass,
    adapter_name: String,
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// The kernel interface's bindings, shared by every kernel.
    layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    /// Compiled kernels by [`pipeline_key`].
    pipelines: HashMap<u64, Pipeline>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Byte distance between dispatch parameters (the uniform offset alignment).
    params_stride: u64,
    /// Most items in one dispatch (rounded down to whole workgroups per kernel).
    max_invocations_per_dispatch: u32,
    max_workgroups: u32,
    max_workgroup_invocations: u32,
    /// Largest storage buffer this device binds.
    max_binding: u64,
    /// What a rebuilt device is opened on and with.
    adapter: wgpu::Adapter,
    config: GpuConfig,
    /// Every kernel compiled, to compile again on a rebuilt device.
    compiled: Vec<(Job, Option<String>)>,
    /// When the device was lost recently.
    losses: VecDeque<Instant>,
    /// Why this context can run nothing more (lost too often, or not rebuilt).
    broken: Option<String>,
    /// Tasks submitted, for the test hook.
    submitted: u64,
    /// The worker's stop flag: waits on the device end when it is set.
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Why this context cannot run the current batch (a task beyond its limits).
    decline: Option<String>,
    /// Nanoseconds per timestamp tick, when timestamps are supported.
    timestamp_period_ns: Option<f64>,
    task_timeout: Duration,
    /// Errors wgpu reports outside any scope; taken after each task.
    errors: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost, once it was.
    lost: Arc<Mutex<Option<String>>>,
    last_completion: Instant,
    /// Invocations a dispatch needs to run near the device's full rate (`measure_fill`).
    fill: u32,
    /// While `measure_fill` or `tune_workgroup` runs: its tasks are not the worker's.
    measuring: bool,
    /// Workgroup sizes measured for built-in kernels (`tune_workgroup`), by pipeline key.
    tuned: HashMap<u64, u32>,
}

impl Gpu {
    /// Builds the context on `adapter`, runs the warm-up self-test and measures the
    /// device's fill.
    pub fn new(adapter: &wgpu::Adapter, config: GpuConfig) -> anyhow::Result<Gpu> {
        Gpu::open(adapter, config, None)
    }

    /// [`Gpu::new`], with the fill already known (a device rebuilt on the same adapter).
    fn open(adapter: &wgpu::Adapter, config: GpuConfig, fill: Option<u32>) -> anyhow::Result<Gpu> {
        let info = adapter.get_info();
        let class = AdapterClass::of(info.device_type)
            .ok_or_else(|| anyhow!("{} is neither a GPU nor a CPU adapter", describe(&info)))?;
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("conquer"),
            required_features: if timestamps {
                wgpu::Features::TIMESTAMP_QUERY
            } else {
                wgpu::Features::empty()
            },
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .with_context(|| format!("cannot open a device on {}", describe(&info)))?;

        let errors = Arc::new(Mutex::new(Vec::new()));
        {
            let errors = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut errors) = errors.lock() {
                    errors.push(e.to_string());
                }
            }));
        }
        let lost = Arc::new(Mutex::new(None));
        {
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, message| {
                if let Ok(mut lost) = lost.lock() {
                    *lost = Some(format!("{reason:?}: {message}"));
                }
            });
        }

        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("kernel interface"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: wgpu::BufferSize::new(PARAMS_BYTES),
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 2,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: false },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("kernel interface"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });

        let params_stride = u64::from(limits.min_uniform_buffer_offset_alignment).max(PARAMS_BYTES);
        let max_workgroups = limits.max_compute_workgroups_per_dimension.min(65_535);
        // A software adapter (lavapipe) may block a submission until the kernel before it
        // ends, so a runaway kernel would hold the worker inside the driver where no
        // timeout is seen: it gets one task at a time, waited on with the timeout.
        let slot_count = match class {
            AdapterClass::Software => 1,
            AdapterClass::Hardware => config.slots.max(1),
        };
        let slots = (0..slot_count)
            .map(|i| Slot::new(&device, &layout, params_stride, timestamps, i))
            .collect::<Vec<_>>();
        let timestamp_period_ns = timestamps.then(|| f64::from(queue.get_timestamp_period()));
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(config.max_buffer.unwrap_or(u64::MAX));
        let mut gpu = Gpu {
            class,
            adapter_name: format!("{} ({:?})", info.name, info.backend),
            device,
            queue,
            layout,
            pipeline_layout,
            pipelines: HashMap::new(),
            free: (0..slots.len()).rev().collect(),
            slots,
            params_stride,
            max_invocations_per_dispatch: config.max_invocations_per_dispatch.max(1),
            max_workgroups,
            max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
            max_binding,
            adapter: adapter.clone(),
            config,
            compiled: Vec::new(),
            losses: VecDeque::new(),
            broken: None,
            submitted: 0,
            stop: None,
            decline: None,
            timestamp_period_ns,
            task_timeout: config.task_timeout,
            errors,
            lost,
            last_completion: Instant::now(),
            fill: 0,
            measuring: false,
            tuned: HashMap::new(),
        };
        gpu.self_test()
            .with_context(|| format!("warm-up on {} failed", describe(&info)))?;
        if let Some(fill) = fill {
            gpu.fill = fill;
            return Ok(gpu);
        }
        let measuring = Instant::now();
        gpu.measuring = true;
        gpu.fill = gpu.measure_fill();
        gpu.measuring = false;
        log::debug!(
            "{} runs near its full rate from {} invocations a dispatch (measured in {:.1} ms)",
            gpu.adapter_name,
            gpu.fill,
            measuring.elapsed().as_secs_f64() * 1000.0
        );
        Ok(gpu)
    }

    /// Invocations this device needs in one dispatch to run near its full rate: `spin`
    /// dispatches of doubling sizes, timed by the device's timestamps (the task's wall time
    /// where it has none), until their rate levels off or one runs 2 ms
    /// (`sizing::fill`). 4-21 ms at start on the software adapter; from the sizes measured
    /// before a dispatch failed, if one did (0 if none was).
    fn measure_fill(&mut self) -> u32 {
        let key = pipeline_key(&Job {
            kernel: Kernel::Spin.id(),
            ..Job::default()
        });
        let Some(granule) = self.pipelines.get(&key).map(|p| p.workgroup) else {
            return 0;
        };
        let saved_cap = self.max_invocations_per_dispatch;
        let saved = self.pipelines.get(&key).map(|p| p.sizer.clone());
        let most = saved_cap
            .min(self.max_workgroups.saturating_mul(granule))
            .min(1 << 26);
        let mut samples: Vec<(u32, f64)> = Vec::new();
        let mut n = granule.max(256);
        while n <= most && !conquer_core::sizing::fill_measured(&samples) {
            // One dispatch of `n` invocations: a task of 1 ms at `n` units a ms.
            let job = Job {
                kernel: Kernel::Spin.id(),
                units_per_ms: n,
                ..Job::default()
            };
            self.max_invocations_per_dispatch = n;
            if let Some(p) = self.pipelines.get_mut(&key) {
                p.sizer = Sizer::new(SizingConfig {
                    cap: n,
                    start: n,
                    ..SizingConfig::new(n, self.config.max_dispatch_us, granule)
                });
            }
            let task = Task {
                id: 0,
                workload_ms: 1,
                ..Default::default()
            };
            // The quicker of two runs: a slice of the CPU taken away (software adapters)
            // or a clock ramping up is noise, not the device.
            let mut best: Option<u32> = None;
            for _ in 0..2 {
                let mut outcome = None;
                let mut tasks = std::iter::once(Work::from(task));
                self.run(&job, &mut || tasks.next(), &mut |o| outcome = Some(o));
                match outcome {
                    Some(o) if o.status == Status::Ok && o.dispatches == 1 => {
                        // One clock for every size: the device's where it has one.
                        let us = if self.timestamp_period_ns.is_some() {
                            o.kernel_us
                        } else {
                            o.wall_us
                        };
                        best = Some(best.map_or(us, |b| b.min(us)));
                    }
                    _ => {
                        best = None;
                        break;
                    }
                }
            }
            let Some(us) = best else { break };
            // Under 10 µs a microsecond clock says little of a rate: only larger sizes
            // count.
            if us >= 10 {
                samples.push((n, f64::from(us)));
            }
            n = n.saturating_mul(2);
        }
        self.max_invocations_per_dispatch = saved_cap;
        if let (Some(p), Some(sizer)) = (self.pipelines.get_mut(&key), saved) {
            p.sizer = sizer;
        }
        conquer_core::sizing::fill(&samples)
    }

    /// Runs a small task that covers a partial workgroup and several dispatches, and checks
    /// it against the CPU reference. Also compiles the pipeline before any timed task.
    fn self_test(&mut self) -> anyhow::Result<()> {
        let job = Job {
            kernel: Kernel::Spin.id(),
            units_per_ms: 3 * spin::WORKGROUP_SIZE + 5,
            ..Job::default()
        };
        let task = Task {
            id: 7,
            workload_ms: 1,
            ..Default::default()
        };
        self.prepare(&job, None).map_err(|e| anyhow!(e))?;
        let saved = self.max_invocations_per_dispatch;
        self.max_invocations_per_dispatch = spin::WORKGROUP_SIZE;
        let mut outcome = None;
        let mut tasks = std::iter::once(Work::from(task));
        self.run(&job, &mut || tasks.next(), &mut |o| outcome = Some(o));
        self.max_invocations_per_dispatch = saved;
        let outcome = outcome.ok_or_else(|| anyhow!("no outcome"))?;
        if outcome.status != Status::Ok {
            bail!("the warm-up task failed");
        }
        let expected = spin::reference(task.id, job.units_per_ms);
        if outcome.checksum != expected {
            bail!(
                "the adapter computed checksum {:016x}, the CPU reference {expected:016x}",
                outcome.checksum
            );
        }
        Ok(())
    }

    /// Whether timestamp queries time the kernels.
    pub fn has_timestamps(&self) -> bool {
        self.timestamp_period_ns.is_some()
    }

    /// Kernels compiled into pipelines on this device so far (each once, then cached).
    pub fn pipelines_compiled(&self) -> usize {
        self.compiled.len()
    }

    fn take_errors(&self) -> Option<String> {
        let mut errors = self.errors.lock().ok()?;
        if errors.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut *errors).join("; "))
        }
    }

    /// Largest input or output a slot holds: what the device binds, less the read-back
    /// buffer's timestamps, in whole words.
    fn buffer_limit(&self) -> u64 {
        (self.max_binding.saturating_sub(TIMESTAMP_BYTES) / 4) * 4
    }

    /// Records that the device is lost, unless its own callback said so first.
    fn mark_lost(&self, why: &str) {
        if let Ok(mut lost) = self.lost.lock() {
            lost.get_or_insert_with(|| why.to_owned());
        }
    }

    fn lost_reason(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }
}

/// A duration in seconds as a flag takes it: `2`, `0.5`.
fn seconds(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// The adapter matching `adapter` (name, type, API) on a new instance, if one is found.
fn same_adapter(adapter: &wgpu::Adapter) -> Option<wgpu::Adapter> {
    let want = adapter.get_info();
    adapters().into_iter().find(|a| {
        let info = a.get_info();
        (&info.name, info.device_type, info.backend) == (&want.name, want.device_type, want.backend)
    })
}

/// Drops a context given up on, on a thread of its own: a device whose kernel never ends
/// may block its drop, and the worker must never wait on it. Leaked if no thread starts.
fn abandon(old: Gpu) {
    // Not dropped with the closure when the thread cannot start.
    let old = std::mem::ManuallyDrop::new(old);
    let spawned = std::thread::Builder::new()
        .name("abandoned-device".into())
        .spawn(move || drop(std::mem::ManuallyDrop::into_inner(old)));
    if let Err(e) = spawned {
        log::warn!("cannot start a thread to drop the abandoned device ({e}); it is leaked");
    }
}

/// A compiled kernel.
struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    /// Items per workgroup: its invocations (`@workgroup_size`) times the items each
    /// handles ([`Kernel::items_per_invocation`]).
    workgroup: u32,
    /// Invocations per workgroup (`@workgroup_size`).
    invocations: u32,
    /// How many invocations its dispatches get, from how long they took.
    sizer: Sizer,
    /// The least bytes its `input` and `output` are bound with (their declared types).
    min_binding_bytes: [u64; 2],
}

/// Which cached pipeline a job runs: its user kernel's source hash, or the built-in's id.
fn pipeline_key(job: &Job) -> u64 {
    if job.source != 0 {
        job.source
    } else {
        u64::from(job.kernel)
    }
}

/// The buffers and bindings of one task in flight.
struct Slot {
    params: wgpu::Buffer,
    input: wgpu::Buffer,
    output: wgpu::Buffer,
    resolve: Option<wgpu::Buffer>,
    /// Timestamps (16 bytes), then the output.
    readback: wgpu::Buffer,
    queries: Option<wgpu::QuerySet>,
    bind_group: wgpu::BindGroup,
    index: usize,
}

impl Slot {
    fn new(
        device: &wgpu::Device,
        layout: &wgpu::BindGroupLayout,
        params_stride: u64,
        timestamps: bool,
        index: usize,
    ) -> Slot {
        let label = format!("slot {index}");
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&label),
            size: params_stride * DISPATCHES_PER_SUBMIT as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let (input, output, readback) = data_buffers(device, index, MIN_BUFFER, MIN_BUFFER);
        let (queries, resolve) = if timestamps {
            (
                Some(device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some(&label),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                })),
                Some(device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&label),
                    size: TIMESTAMP_BYTES,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })),
            )
        } else {
            (None, None)
        };
        let bind_group = bind(device, layout, &params, &input, &output, index);
        Slot {
            params,
            input,
            output,
            resolve,
            readback,
            queries,
            bind_group,
            index,
        }
    }

    /// Grows the input and output buffers to hold `input` and `output` bytes (to the next
    /// power of two, so a batch of growing tasks reallocates a few times at most, but never
    /// past `limit`, what the device binds and maps with the timestamps).
    fn fit(
        &mut self,
        device: &wgpu::Device,
        layout: &wgpu::BindGroupLayout,
        input: u64,
        output: u64,
        limit: u64,
    ) {
        if input <= self.input.size() && output <= self.output.size() {
            return;
        }
        let grow = |need: u64, have: u64| need.max(have).next_power_of_two().min(limit).max(need);
        let (i, o, r) = data_buffers(
            device,
            self.index,
            grow(input, self.input.size()),
            grow(output, self.output.size()),
        );
        self.input = i;
        self.output = o;
        self.readback = r;
        self.bind_group = bind(
            device,
            layout,
            &self.params,
            &self.input,
            &self.output,
            self.index,
        );
    }
}

/// A slot's input, output and read-back buffers.
fn data_buffers(
    device: &wgpu::Device,
    index: usize,
    input: u64,
    output: u64,
) -> (wgpu::Buffer, wgpu::Buffer, wgpu::Buffer) {
    let label = format!("slot {index}");
    let input = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&label),
        size: input,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let output_buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&label),
        size: output,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&label),
        size: TIMESTAMP_BYTES + output,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    (input, output_buffer, readback)
}

fn bind(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    params: &wgpu::Buffer,
    input: &wgpu::Buffer,
    output: &wgpu::Buffer,
    index: usize,
) -> wgpu::BindGroup {
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(&format!("slot {index}")),
        layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: params,
                    offset: 0,
                    size: wgpu::BufferSize::new(PARAMS_BYTES),
                }),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: input.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: output.as_entire_binding(),
            },
        ],
    })
}

/// Rounds `n` up to a multiple of 4 (wgpu's copy alignment).
fn pad4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

/// A task submitted to a slot.
struct InFlight {
    slot: usize,
    task: Task,
    name: String,
    submitted: Instant,
    index: Option<wgpu::SubmissionIndex>,
    /// 0 waiting, 1 mapped, 2 mapping failed: set by the map callback.
    mapped: Arc<AtomicU8>,
    /// Output bytes the task produces (the mapped range holds them padded).
    output_bytes: u64,
    /// End of the read-back buffer's mapped range.
    map_end: u64,
    /// Set when the task failed before or during submission.
    failure: Option<String>,
    /// Its kernel's pipeline, its invocations and how many dispatches ran them: what the
    /// pipeline's sizer learns from when it completes.
    pipeline: u64,
    per: u32,
    invocations: u64,
    dispatches: u32,
}

impl Gpu {
    /// Compiles `source` (a user kernel's WGSL, or the job's built-in kernel) unless it is
    /// cached, capturing compile and validation errors instead of panicking.
    fn compile(&mut self, job: &Job, source: Option<&str>) -> Result<(), String> {
        let key = pipeline_key(job);
        if self.pipelines.contains_key(&key) {
            return Ok(());
        }
        let given = source.map(str::to_owned);
        let kernel = Kernel::from_id(job.kernel)
            .ok_or_else(|| format!("kernel id {} is unknown to this build", job.kernel))?;
        let (source, label) = match (kernel.builtin_source(), source) {
            (Some(builtin), _) => (builtin, kernel.name().to_owned()),
            (None, Some(user)) => (user, format!("kernel {key:016x}")),
            (None, None) => return Err("the user kernel's source never arrived".to_owned()),
        };
        // A size measured before (on the device this one replaced) is built at once.
        let tuned = self.tuned.get(&key).copied();
        let built = match tuned {
            Some(size) => self.build(kernel, &with_workgroup(source, size), &label),
            None => self.build(kernel, source, &label),
        };
        self.pipelines.insert(key, built?);
        if tuned.is_none() && self.config.tune_workgroups && kernel.builtin_source().is_some() {
            self.tune_workgroup(job, key, kernel, source, &label);
        }
        self.compiled.push((*job, given));
        Ok(())
    }

    /// `source` checked against the interface and compiled into a pipeline, with a sizer
    /// of its own.
    fn build(&mut self, kernel: Kernel, source: &str, label: &str) -> Result<Pipeline, String> {
        let checked = kernels::user::check(source, label)?;
        let invocations = checked.invocations_per_workgroup();
        if invocations == 0 || invocations > self.max_workgroup_invocations {
            return Err(format!(
                "{label}: @workgroup_size({invocations}) is over this adapter's limit of {} \
                 invocations per workgroup",
                self.max_workgroup_invocations
            ));
        }
        // Dispatches are sized in items: a workgroup's invocations times the items each
        // handles (a user kernel's one).
        let workgroup = invocations * kernel.items_per_invocation();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&self.pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(format!(
                "{label} does not compile on {}: {error}",
                self.adapter_name
            ));
        }
        Ok(Pipeline {
            pipeline,
            workgroup,
            sizer: self.fresh_sizer(workgroup),
            invocations,
            min_binding_bytes: checked.min_binding_bytes,
        })
    }

    /// A sizer for a kernel of `workgroup` items a workgroup, from its start.
    fn fresh_sizer(&self, workgroup: u32) -> Sizer {
        // The device's own limit: whole workgroups, at most the count one dimension takes.
        let cap = self
            .config
            .max_invocations_per_dispatch
            .min(self.max_workgroups.saturating_mul(workgroup))
            .max(workgroup);
        Sizer::new(SizingConfig::new(
            cap,
            self.config.max_dispatch_us,
            workgroup,
        ))
    }

    /// A built-in kernel's workgroup size, chosen by measurement: the kernel compiled at
    /// 64, 128 and 256 invocations a workgroup (within the device's limit), each timed on
    /// a task of the job that says what its tasks cost ([`kernels::probe_task`]: rows
    /// through the middle of a picture, a search's keys, a fill's worth where the job is
    /// divisible), the quicker of two runs, on the device's clock where it has one. The
    /// shipped 64 stays unless another size is a twentieth quicker, and when the probe
    /// takes the device over [`TUNE_PROBE_MOST`] or holds more than [`TUNE_PROBE_FILLS`]
    /// fills of it (six runs would cost the job too much).
    /// Kernels without a probe (`spin`, `copy`) keep 64.
    fn tune_workgroup(&mut self, job: &Job, key: u64, kernel: Kernel, source: &str, label: &str) {
        let Some(probe) = kernels::probe_task(job, self.fill.max(1 << 14)) else {
            return;
        };
        let Ok(shape) = kernels::shape(job, probe, 0) else {
            return;
        };
        // A task list's probe is a whole task: one far past the device's fill (a search's
        // task of 2^32 keys) would cost more than it can tell.
        let invocations = shape.items.div_ceil(kernel.items_per_invocation());
        if u64::from(invocations) > TUNE_PROBE_FILLS * u64::from(self.fill.max(1 << 14)) {
            return;
        }
        if !source.contains(&format!("@workgroup_size({SHIPPED_WORKGROUP})")) {
            return;
        }
        let timestamps = self.timestamp_period_ns.is_some();
        let most_us = TUNE_PROBE_MOST.as_micros() as u32;
        let saved_cap = self.max_invocations_per_dispatch;
        let mut timed: Vec<(u32, u32, Pipeline)> = Vec::new();
        // Set when the device was lost and rebuilt under the probe: what was timed was on
        // the old one.
        let mut rebuilt = false;
        self.measuring = true;
        for size in [SHIPPED_WORKGROUP, 128, 256] {
            if size > self.max_workgroup_invocations {
                continue;
            }
            let pipeline = match size {
                SHIPPED_WORKGROUP => self.pipelines.remove(&key),
                _ => self
                    .build(kernel, &with_workgroup(source, size), label)
                    .ok(),
            };
            let Some(mut pipeline) = pipeline else {
                continue;
            };
            // The probe in one dispatch at every size, as a warm sizer would run it: a
            // cold sizer's small first dispatches would time launches, not the kernel.
            let whole = shape
                .items
                .div_ceil(pipeline.workgroup)
                .clamp(1, self.max_workgroups)
                .saturating_mul(pipeline.workgroup);
            pipeline.sizer = Sizer::new(SizingConfig {
                cap: whole,
                start: whole,
                ..SizingConfig::new(whole, self.config.max_dispatch_us, pipeline.workgroup)
            });
            self.max_invocations_per_dispatch = whole;
            self.pipelines.insert(key, pipeline);
            let mut best: Option<u32> = None;
            for _ in 0..2 {
                let mut outcome = None;
                let mut tasks = std::iter::once(Work::from(probe));
                self.run(job, &mut || tasks.next(), &mut |o| outcome = Some(o));
                match outcome {
                    Some(o) if o.status == Status::Ok => {
                        let us = if timestamps { o.kernel_us } else { o.wall_us };
                        best = Some(best.map_or(us, |b| b.min(us)));
                        if us > most_us {
                            // Too dear a probe to run again: it is not timed further.
                            break;
                        }
                    }
                    _ => {
                        best = None;
                        break;
                    }
                }
            }
            self.max_invocations_per_dispatch = saved_cap;
            let Some(pipeline) = self.pipelines.remove(&key) else {
                // The device was rebuilt under the probe, without this kernel.
                rebuilt = true;
                break;
            };
            let Some(us) = best else {
                timed.push((size, u32::MAX, pipeline));
                break;
            };
            timed.push((size, us.max(1), pipeline));
            if us > most_us {
                // Too dear a probe to time the other sizes on: the shipped size stays.
                break;
            }
        }
        self.max_invocations_per_dispatch = saved_cap;
        self.measuring = false;
        if rebuilt {
            // Pipelines of the lost device are of no use on the new one.
            timed.clear();
        }
        let shipped_us = timed
            .iter()
            .find(|(size, _, _)| *size == SHIPPED_WORKGROUP)
            .map(|(_, us, _)| f64::from(*us));
        let choice = timed
            .iter()
            .enumerate()
            .filter(|(_, (size, us, _))| {
                *size == SHIPPED_WORKGROUP || shipped_us.is_none_or(|s| f64::from(*us) < 0.95 * s)
            })
            .min_by_key(|(_, (_, us, _))| *us)
            .map(|(i, _)| i);
        let said: Vec<String> = timed
            .iter()
            .map(|(size, us, _)| format!("{size}: {us} µs"))
            .collect();
        match choice {
            Some(i) => {
                let (size, _, mut pipeline) = timed.swap_remove(i);
                log::debug!(
                    "{label} on {}: workgroups of {size} invocations (measured {})",
                    self.adapter_name,
                    said.join(", ")
                );
                // Its dispatches sized afresh, from the start, as any kernel's.
                pipeline.sizer = self.fresh_sizer(pipeline.workgroup);
                self.tuned.insert(key, size);
                self.pipelines.insert(key, pipeline);
            }
            None => {
                // Nothing ran: the shipped size, built again (a failure shows in the task).
                if let Ok(pipeline) = self.build(kernel, source, label) {
                    self.pipelines.insert(key, pipeline);
                }
            }
        }
    }

    /// The workgroup size measured for `job`'s kernel (`--tune-workgroups`), if it was.
    pub fn tuned_workgroup(&self, job: &Job) -> Option<u32> {
        self.tuned.get(&pipeline_key(job)).copied()
    }

    /// Invocations a workgroup of `job`'s kernel has on this device, once prepared.
    pub fn workgroup_invocations(&self, job: &Job) -> Option<u32> {
        self.pipelines
            .get(&pipeline_key(job))
            .map(|p| p.invocations)
    }

    /// The device was lost: opens a new one on the same adapter (warm-up included) and
    /// compiles every kernel again, or gives up after [`MAX_LOSSES`] losses within
    /// [`LOSS_WINDOW`] (or when the adapter cannot open a device).
    fn recover(&mut self) {
        let reason = self.lost_reason().unwrap_or_else(|| "unknown".to_owned());
        let now = Instant::now();
        self.losses.retain(|&t| now.duration_since(t) < LOSS_WINDOW);
        self.losses.push_back(now);
        if self.losses.len() >= MAX_LOSSES {
            self.broken = Some(format!(
                "the device on {} was lost {} times within {} s (last: {reason}); this worker \
                 leaves rather than fail task after task",
                self.adapter_name,
                self.losses.len(),
                LOSS_WINDOW.as_secs()
            ));
            return;
        }
        log::warn!(
            "the device on {} was lost ({reason}); its tasks in flight go back to the \
             ventilator, and the device is being rebuilt",
            self.adapter_name
        );
        // A fresh instance's adapter where it can: a software adapter runs every device of
        // one instance on one pool of threads, which a runaway kernel may still hold.
        let adapter = same_adapter(&self.adapter).unwrap_or_else(|| self.adapter.clone());
        let tuned = self.tuned.clone();
        let rebuilt = Gpu::open(&adapter, self.config, Some(self.fill)).and_then(|mut fresh| {
            // Kernels come back at the workgroup sizes measured for them, not measured again.
            fresh.tuned = tuned;
            for (job, source) in &self.compiled {
                fresh
                    .compile(job, source.as_deref())
                    .map_err(|e| anyhow!(e))?;
            }
            Ok(fresh)
        });
        match rebuilt {
            Ok(mut fresh) => {
                fresh.losses = std::mem::take(&mut self.losses);
                fresh.submitted = self.submitted;
                fresh.stop = self.stop.take();
                log::info!("the device on {} is rebuilt", fresh.adapter_name);
                abandon(std::mem::replace(self, fresh));
            }
            Err(e) => {
                self.broken = Some(format!(
                    "the device on {} was lost ({reason}) and cannot be rebuilt: {e:#}",
                    self.adapter_name
                ))
            }
        }
    }

    /// Encodes and submits `work` on a free slot.
    fn submit(&mut self, slot: usize, job: &Job, work: Work) -> InFlight {
        let Work { task, name, input } = work;
        let mut flight = InFlight {
            slot,
            task,
            name,
            submitted: Instant::now(),
            index: None,
            mapped: Arc::new(AtomicU8::new(0)),
            output_bytes: 0,
            map_end: 0,
            failure: None,
            pipeline: pipeline_key(job),
            per: 0,
            invocations: 0,
            dispatches: 0,
        };
        let shape = match kernels::shape(job, task, input.len()) {
            Ok(shape) => shape,
            Err(why) => {
                flight.failure = Some(why);
                return flight;
            }
        };
        let Some(pipeline) = self.pipelines.get(&pipeline_key(job)) else {
            flight.failure = Some("the kernel was never compiled on this worker".to_owned());
            return flight;
        };
        if let Some(reason) = self.lost_reason() {
            flight.failure = Some(format!("device lost: {reason}"));
            return flight;
        }
        let (input_bytes, output_bytes) = (input.len() as u64, shape.output_bytes as u64);
        // What the kernel may read: whole items, the part past the input zeroed (never a
        // previous task's bytes).
        let whole_items = u64::from(shape.items) * u64::from(job.item_bytes.max(1));
        // Never less than the kernel declares (`array<atomic<u32>, 256>` is bound with
        // 1024 bytes whatever the task's sizes): the rest zeroed too, and only the task's
        // `output_bytes` read back. A built-in's shape is its own (and no clear is added to
        // the per-task path the device suite measures).
        let [least_input, least_output] = if job.source != 0 {
            pipeline.min_binding_bytes
        } else {
            [0, 0]
        };
        let extent = if Kernel::from_id(job.kernel).is_some_and(Kernel::takes_inputs) {
            pad4(input_bytes.max(whole_items))
        } else {
            pad4(input_bytes)
        }
        .max(pad4(least_input));
        let output_extent = pad4(output_bytes).max(pad4(least_output));
        let limit = self.buffer_limit();
        if extent > limit || output_extent > limit {
            let why = format!(
                "task {} needs {input_bytes} bytes of input and {output_bytes} of output; {} \
                 binds at most {limit} bytes per buffer",
                task.id, self.adapter_name
            );
            // Every worker on such an adapter would fail it again: this one declines the
            // batch (the task goes to a worker with room, if there is one).
            self.decline.get_or_insert_with(|| why.clone());
            flight.failure = Some(why);
            return flight;
        }
        flight.output_bytes = output_bytes;
        let workgroup = pipeline.workgroup;
        // The sizer's size is whole workgroups within the device's limit; a warm-up may cap
        // it lower.
        let size = pipeline.sizer.size().min(self.max_invocations_per_dispatch);
        let per = (size / workgroup).clamp(1, self.max_workgroups) * workgroup;
        let items = shape.items;
        let dispatches: Vec<(u32, u32)> = (0..items.div_ceil(per))
            .map(|d| {
                let start = d * per;
                (start, per.min(items - start))
            })
            .collect();
        flight.per = per;
        flight.invocations = u64::from(items);
        flight.dispatches = dispatches.len() as u32;
        let rounds: Vec<&[(u32, u32)]> = if dispatches.is_empty() {
            vec![&[]] // zero work still makes one (empty) pass: overhead is measured too
        } else {
            dispatches.chunks(DISPATCHES_PER_SUBMIT).collect()
        };
        // Errors of this task's commands (a buffer that cannot be allocated, a dispatch the
        // device refuses) are caught here and fail this task, not the next one completed.
        let out_of_memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.slots[slot].fit(&self.device, &self.layout, extent, output_extent, limit);
        let s = &self.slots[slot];
        if !input.is_empty() {
            if input.len() % 4 == 0 {
                self.queue.write_buffer(&s.input, 0, &input);
            } else {
                let mut padded = input;
                padded.resize(pad4(input_bytes) as usize, 0);
                self.queue.write_buffer(&s.input, 0, &padded);
            }
        }
        let fixed = [
            items,
            u32::try_from(input_bytes).unwrap_or(u32::MAX),
            u32::try_from(output_bytes).unwrap_or(u32::MAX),
            0,
            0,
        ];
        let constants = kernels::device_constants(job);
        let last_round = rounds.len() - 1;
        let mut index = None;
        for (round, chunk) in rounds.iter().enumerate() {
            if !chunk.is_empty() {
                let mut params = vec![0u8; chunk.len() * self.params_stride as usize];
                for (i, &(start, count)) in chunk.iter().enumerate() {
                    let at = i * self.params_stride as usize;
                    let mut words = [0u32; 16];
                    words[..3].copy_from_slice(&[task.kernel_id(), start, count]);
                    words[3..8].copy_from_slice(&fixed);
                    words[8..].copy_from_slice(&constants);
                    params[at..at + PARAMS_BYTES as usize]
                        .copy_from_slice(bytemuck::cast_slice(&words));
                }
                self.queue.write_buffer(&s.params, 0, &params);
            }
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("task"),
                });
            if round == 0 && output_extent > 0 {
                encoder.clear_buffer(&s.output, 0, Some(output_extent));
            }
            if round == 0 && extent > pad4(input_bytes) {
                let from = pad4(input_bytes);
                encoder.clear_buffer(&s.input, from, Some(extent - from));
            }
            {
                // The first round's pass stamps its beginning, the last one's its end; a
                // round between them stamps nothing (a pass given neither is invalid: a task
                // of more than two rounds failed).
                let timestamp_writes = s
                    .queries
                    .as_ref()
                    .filter(|_| round == 0 || round == last_round)
                    .map(|q| wgpu::ComputePassTimestampWrites {
                        query_set: q,
                        beginning_of_pass_write_index: (round == 0).then_some(0),
                        end_of_pass_write_index: (round == last_round).then_some(1),
                    });
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("kernel"),
                    timestamp_writes,
                });
                pass.set_pipeline(&pipeline.pipeline);
                for (i, &(_, count)) in chunk.iter().enumerate() {
                    let offset = (i as u64 * self.params_stride) as u32;
                    pass.set_bind_group(0, &s.bind_group, &[offset]);
                    pass.dispatch_workgroups(count.div_ceil(workgroup), 1, 1);
                }
            }
            if round == last_round {
                if output_bytes > 0 {
                    encoder.copy_buffer_to_buffer(
                        &s.output,
                        0,
                        &s.readback,
                        TIMESTAMP_BYTES,
                        pad4(output_bytes),
                    );
                }
                if let (Some(q), Some(resolve)) = (&s.queries, &s.resolve) {
                    encoder.resolve_query_set(q, 0..2, resolve, 0);
                    encoder.copy_buffer_to_buffer(resolve, 0, &s.readback, 0, TIMESTAMP_BYTES);
                }
            }
            index = Some(self.queue.submit(Some(encoder.finish())));
        }
        // The fill's measuring tasks are the device's own: the hook counts the warm-up and
        // the worker's tasks only.
        if !self.measuring {
            self.submitted += 1;
        }
        let fault = if self.measuring {
            String::new()
        } else {
            std::env::var(FAULT_VAR).unwrap_or_default()
        };
        let lose = match fault.as_str() {
            "lose-device" => self.submitted == 5 && !FAULT_USED.swap(true, Ordering::SeqCst),
            "lose-device-always" => self.submitted % 5 == 0,
            _ => false,
        };
        if lose {
            log::warn!("{FAULT_VAR}=lose-device: destroying the device");
            self.device.destroy();
        }
        let errors = [
            pollster::block_on(invalid.pop()),
            pollster::block_on(out_of_memory.pop()),
        ];
        if let Some(error) = errors.into_iter().flatten().next() {
            // The slot's buffers may be what failed: it starts afresh, small.
            self.slots[slot] = Slot::new(
                &self.device,
                &self.layout,
                self.params_stride,
                self.timestamp_period_ns.is_some(),
                slot,
            );
            flight.failure = Some(format!("the device refused the task: {error}"));
            return flight;
        }
        let s = &self.slots[slot];
        let mapped = flight.mapped.clone();
        // Map ranges are multiples of 8 bytes.
        let map_end = (TIMESTAMP_BYTES + pad4(output_bytes)).div_ceil(8) * 8;
        let map_end = map_end.min(s.readback.size());
        s.readback
            .map_async(wgpu::MapMode::Read, 0..map_end, move |r| {
                mapped.store(if r.is_ok() { 1 } else { 2 }, Ordering::SeqCst);
            });
        flight.index = index;
        flight.map_end = map_end;
        flight
    }

    /// Waits for a submitted task and reads its result.
    fn complete(&mut self, job: &Job, flight: InFlight) -> Outcome {
        let failed = |gpu: &mut Gpu, flight: InFlight, why: String| {
            log::error!(
                "task {} failed on {}: {why}",
                flight.task.id,
                gpu.adapter_name
            );
            gpu.last_completion = Instant::now();
            let wall_us = micros(flight.submitted.elapsed());
            Outcome::failed(
                Work {
                    task: flight.task,
                    name: flight.name,
                    input: Vec::new(),
                },
                wall_us,
            )
            .because(why)
        };
        if let Some(why) = flight.failure.clone() {
            self.free.push(flight.slot);
            return failed(self, flight, why);
        }
        debug_assert!(flight.map_end > 0);
        // The clock starts when the task can have the device: tasks queued behind another
        // are not charged for its time.
        let deadline = flight.submitted.max(self.last_completion) + self.task_timeout;
        let outcome = loop {
            match flight.mapped.load(Ordering::SeqCst) {
                1 => break Ok(()),
                2 => {
                    // A healthy device maps every result; one that cannot is gone (a
                    // destroyed device reports its loss only once its queue drains).
                    self.mark_lost("mapping a result failed");
                    break Err("mapping the result failed".to_owned());
                }
                _ => {}
            }
            if let Some(reason) = self.lost_reason() {
                break Err(format!("device lost: {reason}"));
            }
            if Instant::now() >= deadline {
                // The kernel may never end, and nothing cancels it: the device is given up
                // and rebuilt, everything on it failed, as after a loss.
                let why = format!(
                    "task {} ran past --task-timeout {} s",
                    flight.task.id,
                    seconds(self.task_timeout)
                );
                self.mark_lost(&why);
                break Err(format!(
                    "it ran past --task-timeout {} s (raise --task-timeout for kernels that \
                     take longer; the device is rebuilt)",
                    seconds(self.task_timeout)
                ));
            }
            if self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                break Err("the worker is stopping".to_owned());
            }
            let wait = wgpu::PollType::Wait {
                submission_index: flight.index.clone(),
                timeout: Some(POLL_SLICE),
            };
            match self.device.poll(wait) {
                Ok(_) | Err(wgpu::PollError::Timeout) => {}
                Err(e) => {
                    self.mark_lost(&format!("waiting for it failed: {e}"));
                    break Err(format!("waiting for the device: {e}"));
                }
            }
        };
        let slot = &self.slots[flight.slot];
        let read = outcome.and_then(|()| {
            let view = slot
                .readback
                .get_mapped_range(0..flight.map_end)
                .map_err(|e| format!("reading the result: {e}"))?;
            let end = (TIMESTAMP_BYTES + flight.output_bytes) as usize;
            let bytes = view
                .get(..end)
                .ok_or_else(|| "the read-back buffer is too small".to_owned())?
                .to_vec();
            Ok(bytes)
        });
        if flight.mapped.load(Ordering::SeqCst) == 1 {
            slot.readback.unmap();
        }
        // The slot is reusable only once nothing of it is pending; a timed-out task's slot
        // is retired rather than risk reading its late result into another task.
        let completed = flight.mapped.load(Ordering::SeqCst) != 0;
        if completed {
            self.free.push(flight.slot);
        }
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(why) => return failed(self, flight, why),
        };
        if let Some(errors) = self.take_errors() {
            return failed(self, flight, errors);
        }
        let kernel_us = match self.timestamp_period_ns {
            Some(period) => {
                let ticks: &[u64] = bytemuck::cast_slice(&bytes[..TIMESTAMP_BYTES as usize]);
                let ns = ticks[1].saturating_sub(ticks[0]) as f64 * period;
                (ns / 1000.0).round().min(f64::from(u32::MAX)) as u32
            }
            None => 0,
        };
        let mut output = bytes[TIMESTAMP_BYTES as usize..].to_vec();
        kernels::canonical(job, &mut output);
        let checksum = kernels::checksum(job, &output);
        if !Kernel::from_id(job.kernel).is_some_and(Kernel::carries_output) {
            output = Vec::new();
        }
        // Time this task had the device to itself: from when it was submitted or the task
        // before it finished, whichever is later, so in-flight tasks' times add up.
        let now = Instant::now();
        let start = flight.submitted.max(self.last_completion);
        self.last_completion = now;
        let wall_us = micros(now.duration_since(start));
        // The kernel's own time where the adapter has timestamps; else the task's, which
        // errs long (read-back included), so dispatches err small.
        let took = if kernel_us > 0 { kernel_us } else { wall_us };
        if let Some(pipeline) = self.pipelines.get_mut(&flight.pipeline) {
            pipeline.sizer.observe(
                flight.per,
                flight.invocations,
                flight.dispatches,
                f64::from(took),
            );
        }
        Outcome {
            task: flight.task,
            status: Status::Ok,
            wall_us,
            kernel_us,
            dispatches: flight.dispatches,
            checksum,
            name: flight.name,
            output,
            differing: 0,
            error: String::new(),
        }
    }
}

impl Backend for Gpu {
    fn kind(&self) -> &'static str {
        self.class.backend_name()
    }

    fn adapter(&self) -> String {
        self.adapter_name.clone()
    }

    fn window_hint(&self) -> u16 {
        // Twice the slots: while one set runs, the next is already at the worker.
        u16::try_from(self.slots.len() * 2).unwrap_or(u16::MAX)
    }

    fn fill(&self) -> u32 {
        self.fill
    }

    fn healthy(&self) -> Result<(), String> {
        match &self.broken {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn prepare(&mut self, job: &Job, source: Option<&str>) -> Result<(), String> {
        self.compile(job, source)
    }

    fn stop_with(&mut self, stop: Arc<std::sync::atomic::AtomicBool>) {
        self.stop = Some(stop);
    }

    fn take_decline(&mut self) -> Option<String> {
        self.decline.take()
    }

    fn run(
        &mut self,
        job: &Job,
        next: &mut dyn FnMut() -> Option<Work>,
        done: &mut dyn FnMut(Outcome),
    ) {
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut exhausted = false;
        loop {
            while !exhausted {
                let Some(slot) = self.free.pop() else { break };
                match next() {
                    Some(work) => {
                        let flight = self.submit(slot, job, work);
                        in_flight.push_back(flight);
                    }
                    None => {
                        self.free.push(slot);
                        exhausted = true;
                    }
                }
            }
            let Some(oldest) = in_flight.pop_front() else {
                if self.free.is_empty() && !exhausted {
                    // Every slot was retired by timeouts: fail what is left rather than hang.
                    while let Some(work) = next() {
                        done(Outcome::failed(work, 0));
                    }
                }
                return;
            };
            let outcome = self.complete(job, oldest);
            done(outcome);
            if self.lost_reason().is_some() {
                // Everything in flight was on the lost device: it fails at once and goes
                // back to the ventilator; then a new device, or this context gives up.
                while let Some(flight) = in_flight.pop_front() {
                    let outcome = self.complete(job, flight);
                    done(outcome);
                }
                self.recover();
                if self.broken.is_some() {
                    return;
                }
            }
        }
    }
}

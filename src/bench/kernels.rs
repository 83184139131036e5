//! `--suite kernels`: the data kernels' speed on every backend present (Mandelbrot in
//! megapixels and iterations per second, the exact fixed-point kernel next to the float32
//! one it replaced, which lives here only; the search in keys per second; each backend on
//! its own), and
//! payloads through the full pipeline (the `copy` kernel on two cpu workers: ventilator,
//! worker and sink each move every byte) next to a plain libzmq PUSH/PULL pipeline moving
//! the same messages over the same hops, in the same repetition.

use super::table::Table;
use super::*;
use crate::backend::Work;
use crate::kernels::{mandelbrot, search, Kernel};

#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub kernel: String,
    pub backend: String,
    pub adapter: String,
    /// What one run computes (pixels, keys).
    pub items: u64,
    /// Million items per second.
    pub mitems_per_s: Spread,
    /// Million Mandelbrot iterations per second (the counts' sum over the run's time);
    /// absent for other kernels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miterations_per_s: Option<Spread>,
    /// The kernel alone: million items per second of the time the backend says its kernel
    /// ran (device time from timestamp queries on a GPU, the computation's wall time on
    /// `cpu`), summed over the run's tasks; absent where the backend measures none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_mitems_per_s: Option<Spread>,
    /// The same for Mandelbrot's iterations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_miterations_per_s: Option<Spread>,
    /// Why this backend has no figures here (empty when it ran).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub unavailable: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PayloadRow {
    pub payload_bytes: u64,
    pub tasks: u32,
    /// Payload bytes per second through conquer (each byte goes in and comes back out).
    pub conquer_mib_per_s: Spread,
    pub plain_mib_per_s: Spread,
    /// conquer ÷ plain, paired by repetition.
    pub ratio: Spread,
    /// Tasks handed to another worker (a worker thought gone): 0 when no heartbeat was
    /// missed during the stream.
    pub redispatched: u64,
    /// Results the sink held more than once, and tasks it never held, over all runs.
    pub duplicates: u64,
    pub lost: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct KernelsResults {
    pub compute: Vec<KernelRow>,
    pub payload: Vec<PayloadRow>,
}

pub(super) fn kernels(
    args: &BenchArgs,
    repeat: u32,
    progress: &Progress,
    shutdown: &Shutdown,
) -> anyhow::Result<KernelsResults> {
    let mut results = KernelsResults::default();
    let (width, height, max_iter) = if args.quick {
        (320, 180, 200)
    } else {
        (args.mandelbrot.0, args.mandelbrot.1, args.max_iter)
    };
    let view = mandelbrot::View::new(width, height, max_iter, 16, (-0.5, 0.0), 3.0)
        .map_err(anyhow::Error::msg)?;
    let mandel = Job {
        kernel: Kernel::Mandelbrot.id(),
        constants: view.constants(),
        ..Job::default()
    };
    let keys = if args.quick {
        1 << 20
    } else {
        args.search_keys
    };
    let space = search::Space::new(24, keys, (keys / 16).max(1), 1).map_err(anyhow::Error::msg)?;
    let find = Job {
        kernel: Kernel::Search.id(),
        constants: space.constants(),
        ..Job::default()
    };
    let options = crate::backend::BackendOptions {
        slowdown: 1.0,
        quiet: true,
        ..Default::default()
    };
    let f32_view = F32View::new(width, height, max_iter, 16, (-0.5, 0.0), 3.0);
    let float = f32_view.job();
    let pixels = u64::from(width) * u64::from(height);
    for kind in [BackendKind::Cpu, BackendKind::Software, BackendKind::Gpu] {
        for (name, job, tasks, items) in [
            ("mandelbrot", mandel, view.bands(), pixels),
            (F32_NAME, float, view.bands(), pixels),
            ("search", find, space.tasks(), u64::from(keys)),
        ] {
            progress.step(format!("kernels: {name} on {}", backends::kind_name(kind)));
            let mut row = KernelRow {
                kernel: name.to_owned(),
                backend: backends::kind_name(kind).to_owned(),
                adapter: String::new(),
                items,
                mitems_per_s: Spread::of(&[]),
                miterations_per_s: None,
                kernel_mitems_per_s: None,
                kernel_miterations_per_s: None,
                unavailable: String::new(),
            };
            if name == F32_NAME && kind == BackendKind::Cpu {
                // The cpu backend runs built-in kernels only: the float32 twin is timed
                // directly, band by band on one thread, as the cpu backend runs the exact one.
                let (mut rates, mut iteration_rates) = (Vec::new(), Vec::new());
                row.adapter = "Rust f32 reference, one thread".to_owned();
                for _ in 0..repeat {
                    let start = Instant::now();
                    let iterations: u64 = (0..view.bands())
                        .map(|band| counted(&f32_view.band(band)))
                        .sum();
                    let elapsed = start.elapsed().as_secs_f64();
                    rates.push(items as f64 / elapsed / 1e6);
                    iteration_rates.push(iterations as f64 / elapsed / 1e6);
                    progress.done();
                }
                row.mitems_per_s = Spread::of(&rates);
                row.miterations_per_s = Some(Spread::of(&iteration_rates));
                results.compute.push(row);
                continue;
            }
            let mut backend = match crate::backend::build(kind, &options) {
                Ok(b) => b,
                Err(e) => {
                    row.unavailable = format!("{e:#}");
                    results.compute.push(row);
                    continue;
                }
            };
            row.adapter = backend.adapter();
            let source = (name == F32_NAME).then_some(F32_SOURCE);
            if let Err(e) = backend.prepare(&job, source) {
                if kind == BackendKind::Cpu {
                    bail!("{name} on {}: {e}", row.backend);
                }
                row.unavailable = e;
                results.compute.push(row);
                continue;
            }
            let mandelbrot = name != "search";
            let (mut rates, mut iteration_rates) = (Vec::new(), Vec::new());
            let (mut kernel_rates, mut kernel_iteration_rates) = (Vec::new(), Vec::new());
            for _ in 0..repeat {
                let mut queue = (0..tasks).map(|id| {
                    let mut work = Work::from(Task {
                        id,
                        workload_ms: 1,
                        ..Default::default()
                    });
                    if name == F32_NAME {
                        // One byte per pixel sets the user kernel's item count.
                        let rows = view.rows_of(id).unwrap_or(0);
                        work.input = vec![0; (width * rows) as usize];
                    }
                    work
                });
                let (mut failed, mut iterations, mut kernel_us) = (0, 0, 0u64);
                let start = Instant::now();
                backend.run(&job, &mut || queue.next(), &mut |o| {
                    if o.status == Status::Failed {
                        failed += 1;
                    }
                    kernel_us += u64::from(o.kernel_us);
                    if mandelbrot {
                        iterations += counted(&o.output);
                    }
                });
                let elapsed = start.elapsed().as_secs_f64();
                if failed > 0 {
                    bail!("{name} on {}: {failed} tasks failed", row.backend);
                }
                rates.push(items as f64 / elapsed / 1e6);
                iteration_rates.push(iterations as f64 / elapsed / 1e6);
                if kernel_us > 0 {
                    // Items per µs are millions per second.
                    kernel_rates.push(items as f64 / kernel_us as f64);
                    kernel_iteration_rates.push(iterations as f64 / kernel_us as f64);
                }
                progress.done();
            }
            row.mitems_per_s = Spread::of(&rates);
            if mandelbrot {
                row.miterations_per_s = Some(Spread::of(&iteration_rates));
            }
            // Only where every repetition measured its kernel: a mix would not be a median
            // of like with like.
            if kernel_rates.len() == rates.len() && !rates.is_empty() {
                row.kernel_mitems_per_s = Some(Spread::of(&kernel_rates));
                if mandelbrot {
                    row.kernel_miterations_per_s = Some(Spread::of(&kernel_iteration_rates));
                }
            }
            results.compute.push(row);
        }
    }

    // Payloads through the whole pipeline, against plain PUSH/PULL.
    let total: u64 = if args.quick { 8 << 20 } else { 256 << 20 };
    let workers = 2;
    let dir = tempfile_dir()?;
    for size in [64u64 << 10, 1 << 20, 16 << 20] {
        if size > args.max_payload {
            bail!("payload {size} bytes is over --max-payload");
        }
        let tasks = (total / size).max(4) as u32;
        let folder = dir.join(format!("{size}"));
        std::fs::create_dir_all(&folder)?;
        let mut seed = size as u32 | 1;
        for t in 0..tasks {
            let bytes: Vec<u8> = (0..size)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            std::fs::write(folder.join(format!("{t:05}.bin")), bytes)?;
        }
        let pattern = format!("{}/*.bin", folder.display());
        let inputs = std::sync::Arc::new(crate::batch::Inputs::find(&pattern, args.max_payload)?);
        let batch = inputs.batch()?;
        let job = Job {
            kernel: Kernel::Copy.id(),
            output_bytes: crate::kernels::SAME_AS_INPUT,
            ..Job::default()
        };
        let bytes = size as f64 * f64::from(tasks);
        let (mut ours, mut plain, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut redispatched, mut duplicates, mut lost) = (0, 0, 0);
        for r in 0..repeat {
            progress.step(format!(
                "kernels: {size}-byte payloads ({}/{repeat})",
                r + 1
            ));
            let ventilator = VentilatorConfig {
                order: Order::Given,
                inputs: Some(inputs.clone()),
                ..VentilatorConfig::local(batch.clone(), job)
            };
            let backends: Vec<Box<dyn Backend>> = (0..workers)
                .map(|_| Box::new(crate::backend::cpu::Cpu) as Box<dyn Backend>)
                .collect();
            let report = local::run(LocalRun::new(ventilator, backends), shutdown)
                .with_context(|| format!("payload run of {size}-byte tasks"))?;
            redispatched += report.redispatched;
            duplicates += report.duplicates;
            lost += u64::from(tasks).saturating_sub(delivered(&report));
            let rate = bytes / (report.elapsed_ms / 1e3) / f64::from(1 << 20);
            progress.done();
            let elapsed = super::plain::Plain {
                payload: size as usize,
                tasks,
                workers,
                unbounded: false,
            }
            .run()?;
            let base = bytes / elapsed.as_secs_f64() / f64::from(1 << 20);
            progress.done();
            ours.push(rate);
            plain.push(base);
            ratios.push(rate / base);
        }
        std::fs::remove_dir_all(&folder).ok();
        results.payload.push(PayloadRow {
            payload_bytes: size,
            tasks,
            conquer_mib_per_s: Spread::of(&ours),
            plain_mib_per_s: Spread::of(&plain),
            ratio: Spread::of(&ratios),
            redispatched,
            duplicates,
            lost,
        });
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(results)
}

/// The float32 kernel's row name.
const F32_NAME: &str = "mandelbrot f32";
/// The float32 kernel: the WGSL of the Mandelbrot kernel before it was exact, as a user
/// kernel (bench only: nothing else can run it, so nothing can verify it).
const F32_SOURCE: &str = include_str!("mandelbrot_f32.wgsl");

/// Iterations in a band of little-endian u32 counts: their sum.
fn counted(output: &[u8]) -> u64 {
    output
        .chunks_exact(4)
        .map(|w| u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
        .sum()
}

/// The float32 kernel's view (`mandelbrot_f32.wgsl`), and its Rust twin.
#[derive(Debug, Clone, Copy)]
struct F32View {
    width: u32,
    height: u32,
    max_iter: u32,
    rows: u32,
    centre: (f32, f32),
    step: f32,
}

impl F32View {
    fn new(
        width: u32,
        height: u32,
        max_iter: u32,
        rows: u32,
        centre: (f32, f32),
        view_width: f32,
    ) -> F32View {
        F32View {
            width,
            height,
            max_iter,
            rows: rows.min(height),
            centre,
            step: view_width / width as f32,
        }
    }

    /// The user-kernel job that runs `mandelbrot_f32.wgsl`: one input byte per item, four
    /// output bytes per item.
    fn job(&self) -> Job {
        Job {
            kernel: Kernel::User.id(),
            source: crate::kernels::fnv1a(F32_SOURCE.as_bytes()),
            item_bytes: 1,
            output_bytes: 4 | crate::kernels::PER_ITEM,
            constants: [
                self.width,
                self.height,
                self.max_iter,
                self.rows,
                self.centre.0.to_bits(),
                self.centre.1.to_bits(),
                self.step.to_bits(),
                0,
            ],
            ..Job::default()
        }
    }

    /// The WGSL's f32 operations in its order (a driver may still fuse them).
    fn count(&self, x: u32, y: u32) -> u32 {
        let cr = self.centre.0 + (x as f32 - self.width as f32 * 0.5) * self.step;
        let ci = self.centre.1 - (y as f32 - self.height as f32 * 0.5) * self.step;
        let (mut zr, mut zi) = (0.0f32, 0.0f32);
        let mut n = 0;
        while n < self.max_iter {
            let zr2 = zr * zr;
            let zi2 = zi * zi;
            if zr2 + zi2 > 4.0 {
                break;
            }
            zi = 2.0 * zr * zi + ci;
            zr = (zr2 + cr) - zi2;
            n += 1;
        }
        n
    }

    /// Band `band`'s counts, as the kernel's output bytes.
    fn band(&self, band: u32) -> Vec<u8> {
        let first = band * self.rows;
        let rows = self.rows.min(self.height.saturating_sub(first));
        let mut out = Vec::with_capacity((self.width * rows) as usize * 4);
        for y in first..first + rows {
            for x in 0..self.width {
                out.extend_from_slice(&self.count(x, y).to_le_bytes());
            }
        }
        out
    }
}

/// Tasks the report's workers delivered.
pub fn delivered(report: &Report) -> u64 {
    report.workers.iter().map(|w| w.tasks).sum()
}

/// A private temporary folder for the payload files.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("conquer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

pub(super) fn tables(r: &KernelsResults) -> Vec<Table> {
    let mut compute = Table::new(
        "Kernels: each backend on its own",
        &[
            "kernel",
            "backend",
            "adapter",
            "items>",
            "M items/s>",
            "M iterations/s>",
            "kernel only: M items/s>",
            "kernel only: M iterations/s>",
        ],
    );
    let cell = |rate: &Option<Spread>, digits: usize, row: &KernelRow| match rate {
        Some(rate) if row.unavailable.is_empty() => rate.cell(digits),
        _ => String::new(),
    };
    for row in &r.compute {
        compute.row(vec![
            row.kernel.clone(),
            row.backend.clone(),
            if row.unavailable.is_empty() {
                row.adapter.clone()
            } else {
                format!("not available: {}", first_sentence(&row.unavailable))
            },
            row.items.to_string(),
            if row.unavailable.is_empty() {
                row.mitems_per_s.cell(2)
            } else {
                String::new()
            },
            cell(&row.miterations_per_s, 1, row),
            cell(&row.kernel_mitems_per_s, 2, row),
            cell(&row.kernel_miterations_per_s, 1, row),
        ]);
    }
    compute.note(
        "Mandelbrot items are pixels (megapixels per second), search items are keys. \
         `mandelbrot` is the exact fixed-point kernel (--verify: every pixel equal); \
         `mandelbrot f32` is the float32 kernel it replaced, kept in the bench only (run as a \
         user kernel with one input byte per pixel; its counts vary by driver). Kernel only: \
         the items over the kernel time the backend measured, summed over the tasks (device \
         time from timestamp queries; the computation's own time on cpu), blank where it \
         measures none; the gap to the rate beside it is the pipeline around the kernel \
         (uploads, read-back, digests).",
    );
    let mut payload = Table::new(
        "Payloads through the pipeline (copy kernel, 2 cpu workers) and plain PUSH/PULL",
        &[
            "payload",
            "tasks>",
            "conquer MiB/s>",
            "plain MiB/s>",
            "conquer ÷ plain>",
            "redispatched>",
            "duplicates>",
            "lost>",
        ],
    );
    for row in &r.payload {
        payload.row(vec![
            bytes_label(row.payload_bytes),
            row.tasks.to_string(),
            row.conquer_mib_per_s.cell(0),
            row.plain_mib_per_s.cell(0),
            row.ratio.cell(2),
            row.redispatched.to_string(),
            row.duplicates.to_string(),
            row.lost.to_string(),
        ]);
    }
    payload.note(
        "Both move every payload ventilator → worker → sink over loopback; conquer also reads \
         each input file and runs the copy kernel. redispatched 0 means no worker missed its \
         heartbeats during the stream.",
    );
    vec![compute, payload]
}

fn bytes_label(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn first_sentence(text: &str) -> String {
    text.split(['.', '('])
        .next()
        .unwrap_or(text)
        .trim()
        .to_owned()
}

//! Kernels: what a task computes, each with its parameters, its geometry under the kernel
//! interface, and (for the built-in ones) its CPU reference.
//!
//! Every kernel, built in or the user's, is a WGSL compute shader with entry point `main`
//! and the same three bindings in group 0: `params` (uniform: task id, the dispatch's first
//! item and item count, the task's items and byte sizes, eight constants), `input`
//! (read-only storage: the task's payload) and `output` (read-write storage: the task's
//! result, zeroed before the first dispatch). One invocation per item; a task's items are
//! split into dispatches of bounded size. `docs/kernels.md` is the user's description of
//! the same interface; [`shape`] is where a task's items and output size come from.
//!
//! This module knows nothing of devices or sockets: the GPU backend reads the geometry
//! from here, and the `cpu` backend runs the references.

pub mod mandelbrot;
pub mod search;
pub mod spin;

use crate::batch::{Job, Task};

/// Constants a job carries to its kernel (`params.c`, two `vec4<u32>`).
pub const CONSTANTS: usize = 8;
/// `Job::output_bytes` meaning "as many bytes as the task's input".
pub const SAME_AS_INPUT: u32 = u32::MAX;
/// Flag in `Job::output_bytes`: the low bits are bytes per item, not per task.
pub const PER_ITEM: u32 = 1 << 31;

/// Parses `--output-bytes`: `same` (as the input), `N` (bytes per task) or `N/item`.
pub fn parse_output_bytes(text: &str) -> Result<u32, String> {
    let bad = || {
        format!(
            "--output-bytes {text:?}: give `same` (as many bytes as each input), a byte count \
             per task such as 1024, or bytes per item such as 4/item"
        )
    };
    let text = text.trim();
    if text == "same" {
        return Ok(SAME_AS_INPUT);
    }
    let (number, per_item) = match text.strip_suffix("/item") {
        Some(n) => (n, true),
        None => (text, false),
    };
    let n: u32 = number.trim().parse().map_err(|_| bad())?;
    if n == 0 || n >= PER_ITEM {
        return Err(bad());
    }
    Ok(if per_item { n | PER_ITEM } else { n })
}
/// Bytes of one dispatch's parameters (`Params` in every kernel).
pub const PARAMS_BYTES: u64 = 64;

/// Every kernel, by the id carried in `Job::kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Kernel {
    /// Integer hash chains: compute-bound u32 work sized by the task's milliseconds,
    /// bit-exact across backends; its result is a checksum.
    Spin,
    /// Escape-time iteration counts of the Mandelbrot set, one band of rows per task
    /// (`--width`, `--height`, `--max-iter`, `--image`).
    Mandelbrot,
    /// Keys of a keyspace whose 32-bit hash has at least `--bits` leading zero bits, one
    /// slice of keys per task: exact, checked bit for bit against the CPU.
    Search,
    /// The user's WGSL (`--kernel-file`), one task per input file.
    #[cfg_attr(feature = "clap", value(skip))]
    User,
    /// The output is the input (`--inputs`, one task per file): measures how fast the
    /// farm moves data.
    Copy,
}

impl Kernel {
    pub fn id(self) -> u8 {
        match self {
            Kernel::Spin => 0,
            Kernel::Mandelbrot => 1,
            Kernel::Search => 2,
            Kernel::User => 3,
            Kernel::Copy => 4,
        }
    }

    pub fn from_id(id: u8) -> Option<Kernel> {
        match id {
            0 => Some(Kernel::Spin),
            1 => Some(Kernel::Mandelbrot),
            2 => Some(Kernel::Search),
            3 => Some(Kernel::User),
            4 => Some(Kernel::Copy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Spin => "spin",
            Kernel::Mandelbrot => "mandelbrot",
            Kernel::Search => "search",
            Kernel::User => "user",
            Kernel::Copy => "copy",
        }
    }

    /// Items one invocation of its shader handles: a search's invocation tries
    /// [`search::KEYS_PER_INVOCATION`] keys (its uniform work, and the launch of an
    /// invocation, shared by several), every other kernel one item.
    pub fn items_per_invocation(self) -> u32 {
        match self {
            Kernel::Search => search::KEYS_PER_INVOCATION,
            _ => 1,
        }
    }

    /// The WGSL of a built-in kernel, compiled into the binary (`shaders/interface.wgsl`
    /// then the kernel's file); `None` for user kernels.
    pub fn builtin_source(self) -> Option<&'static str> {
        match self {
            Kernel::Spin => Some(concat!(
                include_str!("../../../shaders/interface.wgsl"),
                include_str!("../../../shaders/spin.wgsl")
            )),
            Kernel::Mandelbrot => Some(concat!(
                include_str!("../../../shaders/interface.wgsl"),
                include_str!("../../../shaders/mandelbrot.wgsl")
            )),
            Kernel::Search => Some(concat!(
                include_str!("../../../shaders/interface.wgsl"),
                include_str!("../../../shaders/search.wgsl")
            )),
            Kernel::Copy => Some(concat!(
                include_str!("../../../shaders/interface.wgsl"),
                include_str!("../../../shaders/copy.wgsl")
            )),
            Kernel::User => None,
        }
    }

    /// Whether a task's result is output bytes the sink keeps (every kernel but `spin`,
    /// whose result is its checksum).
    pub fn carries_output(self) -> bool {
        !matches!(self, Kernel::Spin)
    }

    /// Whether tasks carry input files (`--inputs`).
    pub fn takes_inputs(self) -> bool {
        matches!(self, Kernel::User | Kernel::Copy)
    }
}

/// Whether `job` is a data job: its tasks produce output bytes (and, for user kernels,
/// carry input bytes). The sleep backend runs none of these.
pub fn is_data(job: &Job) -> bool {
    Kernel::from_id(job.kernel).is_some_and(Kernel::carries_output)
}

/// What one task asks of a backend: how many items (invocations; a search's keys, 16 an
/// invocation) and how many output bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub items: u32,
    pub output_bytes: usize,
}

/// The constants a built-in kernel's shader reads: the job's, and what every invocation
/// would otherwise work out alike, worked out once (a search's salted mix,
/// [`search::SALTED`]).
pub fn device_constants(job: &Job) -> [u32; CONSTANTS] {
    let mut c = job.constants;
    if job.source == 0 && Kernel::from_id(job.kernel) == Some(Kernel::Search) {
        c[search::SALTED] = search::salted(c[2]);
    }
    c
}

/// A task of `job` whose run says what its tasks cost a kernel variant, of about
/// `invocations` where the job is divisible (a device's fill): rows through the middle of
/// a picture (the middle band of a task list), a search's first keys (its first task).
/// `None` where no task says it without inputs, or the variant cannot matter (`spin`,
/// `copy`, user kernels).
pub fn probe_task(job: &Job, invocations: u32) -> Option<Task> {
    let whole = |id| Task {
        id,
        workload_ms: 1,
        first: 0,
        items: 0,
    };
    match Kernel::from_id(job.kernel)? {
        Kernel::Mandelbrot => {
            let view = mandelbrot::View::of(job).ok()?;
            if job.items == 0 {
                return Some(whole(view.bands() / 2));
            }
            let rows = invocations.div_ceil(view.width).clamp(1, view.height);
            Some(Task {
                first: u64::from((view.height - rows) / 2),
                items: rows,
                ..whole(0)
            })
        }
        Kernel::Search => {
            let space = search::Space::of(job).ok()?;
            if job.items == 0 {
                return Some(whole(0));
            }
            let keys = u64::from(invocations) * u64::from(search::KEYS_PER_INVOCATION);
            Some(Task {
                items: space.keys.min(u32::try_from(keys).unwrap_or(u32::MAX)),
                ..whole(0)
            })
        }
        _ => None,
    }
}

/// A divisible job's items that keep `fill` invocations busy (a device's fill): each item
/// is its shape's work units (a Mandelbrot row's pixels, a search's key, a spin item's
/// units), and an invocation handles [`Kernel::items_per_invocation`] of them. Where a
/// job's items do not say (a task list, a copy job sized by its input), one unit each.
pub fn items_filling(job: &Job, fill: u32) -> u64 {
    let one = Task {
        id: 0,
        workload_ms: 1,
        first: 0,
        items: 1,
    };
    let units = shape(job, one, 0).map_or(1, |s| u64::from(s.items).max(1));
    let per_invocation = Kernel::from_id(job.kernel).map_or(1, Kernel::items_per_invocation);
    (u64::from(fill) * u64::from(per_invocation)).div_ceil(units)
}

/// A task's shape under its job, or why it cannot run (unknown kernel, sizes out of range).
pub fn shape(job: &Job, task: Task, input_len: usize) -> Result<Shape, String> {
    match Kernel::from_id(job.kernel) {
        Some(Kernel::Spin) if task.is_chunk() => {
            let per_item = u64::from(job.constants[0]) * u64::from(job.units_per_ms) / 1000;
            let items = u32::try_from(u64::from(task.items) * per_item.max(1)).map_err(|_| {
                format!(
                    "{} items of {} µs at {} units/ms is more than 2^32 invocations",
                    task.items, job.constants[0], job.units_per_ms
                )
            })?;
            Ok(Shape {
                items,
                output_bytes: 8,
            })
        }
        Some(Kernel::Spin) => {
            let items = spin::invocations(task.workload_ms, job.units_per_ms).ok_or_else(|| {
                format!(
                    "{} ms at {} units/ms is more than 2^32 invocations",
                    task.workload_ms, job.units_per_ms
                )
            })?;
            Ok(Shape {
                items,
                output_bytes: 8,
            })
        }
        Some(Kernel::Mandelbrot) => mandelbrot::View::of(job)?.shape(task),
        Some(Kernel::Search) => search::Space::of(job)?.shape(task),
        Some(Kernel::User) => Ok(user_shape(job, input_len)?),
        Some(Kernel::Copy) => Ok(Shape {
            items: u32::try_from(input_len.div_ceil(4))
                .map_err(|_| format!("{input_len} bytes is more than 2^32 words"))?,
            output_bytes: input_len,
        }),
        None => Err(format!("unknown kernel id {}", job.kernel)),
    }
}

/// A user kernel task's shape: items are the input's bytes over `item_bytes`; output bytes
/// as the job says: per task, per item, or as many as the input.
fn user_shape(job: &Job, input_len: usize) -> Result<Shape, String> {
    let items = input_len.div_ceil(job.item_bytes.max(1) as usize);
    let items =
        u32::try_from(items).map_err(|_| format!("{input_len} bytes is more than 2^32 items"))?;
    let output_bytes = if job.output_bytes == SAME_AS_INPUT {
        input_len
    } else if job.output_bytes & PER_ITEM != 0 {
        items as usize * (job.output_bytes & !PER_ITEM) as usize
    } else {
        job.output_bytes as usize
    };
    Ok(Shape {
        items,
        output_bytes,
    })
}

/// Puts a backend's raw output in canonical form (the search kernel's hits arrive in any
/// order; everything else is already canonical). Called by every backend, so outputs
/// compare byte for byte.
pub fn canonical(job: &Job, output: &mut Vec<u8>) {
    if Kernel::from_id(job.kernel) == Some(Kernel::Search) {
        search::canonical(output);
    }
}

/// The checksum a result carries: spin's (sum, xor) pair, or [`digest`] of the output.
pub fn checksum(job: &Job, output: &[u8]) -> u64 {
    match Kernel::from_id(job.kernel) {
        Some(Kernel::Spin) if output.len() >= 8 => {
            let sum = u32::from_le_bytes([output[0], output[1], output[2], output[3]]);
            let xor = u32::from_le_bytes([output[4], output[5], output[6], output[7]]);
            spin::checksum((sum, xor))
        }
        _ => digest(output),
    }
}

/// A fast 64-bit digest of an output: XXH3 (the `xxhash-rust` crate), tens of gigabytes a
/// second, so digesting a payload costs less than receiving it. For telling outputs apart
/// in a results file, not against an adversary.
pub fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The CPU reference of a built-in kernel's task: its canonical output. `None` for user
/// kernels (no reference exists) and `Some(Err)` for a task that cannot run.
pub fn reference(job: &Job, task: Task, input: &[u8]) -> Option<Result<Vec<u8>, String>> {
    let kernel = Kernel::from_id(job.kernel)?;
    if kernel == Kernel::User {
        return None;
    }
    Some(
        shape(job, task, input.len()).and_then(|shape| match kernel {
            Kernel::Spin => {
                let (sum, xor) = spin::reference_range(task.kernel_id(), 0, shape.items);
                Ok([sum.to_le_bytes(), xor.to_le_bytes()].concat())
            }
            Kernel::Mandelbrot => Ok(mandelbrot::View::of(job)?.reference(task)),
            Kernel::Search => Ok(search::Space::of(job)?.reference(task)),
            Kernel::Copy => Ok(input.to_vec()),
            Kernel::User => Err("user kernels have no CPU reference".to_owned()),
        }),
    )
}

/// How a backend's output compares with the reference: `Ok` when it agrees within the
/// kernel's terms (byte for byte; `mandelbrot` pixel for pixel, naming the first that
/// differs), else why not.
pub fn agrees(job: &Job, output: &[u8], reference: &[u8]) -> Result<(), String> {
    match Kernel::from_id(job.kernel) {
        Some(Kernel::Mandelbrot) => mandelbrot::agrees(output, reference),
        _ if output == reference => Ok(()),
        _ => Err(format!(
            "output {:016x} ({} bytes) differs from the CPU reference {:016x} ({} bytes)",
            digest(output),
            output.len(),
            digest(reference),
            reference.len()
        )),
    }
}

/// FNV-1a 64: source hashes, output checksums, batch ids.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_builtins_have_sources() {
        for k in [
            Kernel::Spin,
            Kernel::Mandelbrot,
            Kernel::Search,
            Kernel::User,
            Kernel::Copy,
        ] {
            assert_eq!(Kernel::from_id(k.id()), Some(k));
            assert_eq!(k.builtin_source().is_some(), k != Kernel::User);
        }
        assert_eq!(Kernel::from_id(9), None);
    }

    #[test]
    fn a_fill_in_items_is_the_invocations_over_what_an_item_takes() {
        // An H200's ~270,000 resident threads: 71 rows of a 3840-pixel-wide picture, and
        // sixteen keys an invocation for a search.
        let view = mandelbrot::View::new(3840, 2160, 1000, 1, (-0.5, 0.0), 3.0).unwrap();
        let picture = Job {
            kernel: Kernel::Mandelbrot.id(),
            constants: view.constants(),
            items: 2160,
            ..Job::default()
        };
        assert_eq!(items_filling(&picture, 270_336), 71);
        let space = search::Space::for_chunks(24, u32::MAX, 1 << 22, 7).unwrap();
        let keys = Job {
            kernel: Kernel::Search.id(),
            constants: space.constants(),
            items: u64::from(u32::MAX),
            ..Job::default()
        };
        assert_eq!(items_filling(&keys, 270_336), 16 * 270_336);
        // No device, no floor.
        assert_eq!(items_filling(&picture, 0), 0);
        // The shader's keys an invocation are the backend's.
        let wgsl = Kernel::Search.builtin_source().unwrap();
        let keys = format!("const KEYS: u32 = {}u;", search::KEYS_PER_INVOCATION);
        assert!(
            wgsl.contains(&keys),
            "search.wgsl says otherwise than {keys}"
        );
    }

    #[test]
    fn the_digest_sees_every_byte_and_the_length() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let d = digest(&data);
        for at in [0, 31, 32, 500, 999] {
            let mut changed = data.clone();
            changed[at] ^= 1;
            assert_ne!(digest(&changed), d, "byte {at}");
        }
        assert_ne!(digest(&data[..999]), d);
        assert_ne!(digest(&[]), digest(&[0]));
    }

    #[test]
    fn spin_reference_through_the_interface_matches_its_checksum() {
        let job = Job {
            units_per_ms: 100,
            ..Job::default()
        };
        let task = Task {
            id: 3,
            workload_ms: 2,
            ..Default::default()
        };
        let out = reference(&job, task, &[]).unwrap().unwrap();
        assert_eq!(checksum(&job, &out), spin::reference(3, 200));
    }
}

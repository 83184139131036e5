//! What a sink keeps of data tasks' outputs: one file per task in `--outputs DIR`, the
//! Mandelbrot picture (`--image`), and the search kernel's hits for the report.
//!
//! A task's output file is written to a hidden temporary name, synced and renamed (on
//! [`Writers`]' threads, so the sink's socket is read meanwhile) before the task counts as
//! held; the directory itself is synced with the results file, before the ventilator hears
//! the task is held. So after a crash every task the sink acknowledged has its output file
//! complete, and `--resume` needs nothing else. Output
//! files are named after the task's input (`NAME.out`), or after the kernel and task id
//! for built-in kernels (`mandelbrot-00000012.out`), or for a divisible job's chunk after
//! the kernel and its items (`mandelbrot-items-000000000064-000000000128.out`: rows 64 to
//! 127); a name a worker sends that is not a plain file name is never used as a path.
//! Every file here is made new through one handle on the directory and read back without
//! following links (`files`): a link planted in the directory is an error naming it.

use crate::batch::{Job, Task};
use crate::files::{self, Dir};
use crate::kernels::{mandelbrot, search, Kernel};
use crate::protocol::TaskResult;
use anyhow::{bail, Context};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a sink puts outputs.
#[derive(Debug, Clone, Default)]
pub struct OutputsConfig {
    /// One file per task.
    pub dir: Option<PathBuf>,
    /// The Mandelbrot picture, as PNG.
    pub image: Option<PathBuf>,
}

impl OutputsConfig {
    /// Checks the settings and prepares the directory before anything binds. An existing
    /// picture is refused like an existing results file, unless `overwrite` (or `resume`,
    /// which paints the same batch's picture again).
    pub fn check(&self, resume: bool, overwrite: bool) -> anyhow::Result<()> {
        if let Some(dir) = &self.dir {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create the outputs directory {} (--outputs)",
                    dir.display()
                )
            })?;
            if !resume {
                // A divisible job's chunk files are read back by range at the end: those
                // of an earlier run would be mixed into this one's.
                let entries = std::fs::read_dir(dir).with_context(|| {
                    format!("cannot list the outputs directory {}", dir.display())
                })?;
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    let kernel = name.split("-items-").next().unwrap_or_default();
                    if chunk_of_name(kernel, &name).is_some() {
                        bail!(
                            "the outputs directory {} holds {name}, a chunk of an earlier job: \
                             pass --resume to continue that job, or give an empty directory",
                            dir.display()
                        );
                    }
                }
            }
            let handle = Dir::open(dir).context("--outputs")?;
            handle
                .create_temporary(PROBE)
                .and_then(|_| handle.remove(PROBE))
                .with_context(|| {
                    format!("cannot write in the outputs directory {}", dir.display())
                })?;
        }
        if let Some(image) = &self.image {
            if image.extension().and_then(|e| e.to_str()) != Some("png") {
                bail!(
                    "--image {}: the picture is written as PNG; name it *.png",
                    image.display()
                );
            }
            if resume && self.dir.is_none() {
                bail!(
                    "--image with --resume needs --outputs DIR: the bands held before the restart \
                     are read back from there"
                );
            }
            if !resume && !overwrite && std::fs::symlink_metadata(image).is_ok() {
                bail!(
                    "--image {}: the file already exists: pass --overwrite to replace it, or name \
                     another file",
                    image.display()
                );
            }
            // A picture that cannot be written is an error before the batch runs, not
            // after it.
            crate::files::check_writable(image, "--image")?;
        }
        Ok(())
    }
}

use crate::files::PROBE;

/// The outputs of the batch being collected.
pub struct Outputs {
    config: OutputsConfig,
    /// The sink's `--max-payload`: the most a file read back may hold.
    max_payload: u64,
    /// The outputs directory, opened at the first output and kept: every file is made
    /// through it.
    handle: Option<Arc<Dir>>,
    /// Files renamed into the directory since it was last synced.
    unsynced: bool,
    written: u64,
    /// Iteration counts of the picture, row-major, and which bands (a divisible job's
    /// rows) arrived.
    canvas: Option<(mandelbrot::View, Vec<u32>, Vec<bool>)>,
    hits: std::collections::BTreeSet<u32>,
    warned_discarded: bool,
    /// A divisible job's input name, as its chunks' results echo it: what the assembled
    /// output is named after.
    input_name: Option<String>,
}

/// Whether `name` is safe to use as a file name in the outputs directory.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 240
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

/// The output file name of `task` (see the module documentation).
pub fn output_name(job: &Job, task: Task, name: &str) -> String {
    let kernel = Kernel::from_id(job.kernel).map_or("task", Kernel::name);
    if task.is_chunk() {
        let (first, end) = task.range();
        format!("{kernel}-items-{first:012}-{end:012}.out")
    } else if plain_file_name(name) {
        format!("{name}.out")
    } else {
        format!("{kernel}-{:08}.out", task.id)
    }
}

/// The chunk an output file of a divisible job holds, from its name.
fn chunk_of_name(kernel: &str, file_name: &str) -> Option<Task> {
    let rest = file_name
        .strip_prefix(kernel)?
        .strip_prefix("-items-")?
        .strip_suffix(".out")?;
    let (first, end) = rest.split_once('-')?;
    let (first, end): (u64, u64) = (first.parse().ok()?, end.parse().ok()?);
    let items = u32::try_from(end.checked_sub(first)?).ok()?;
    (items > 0).then_some(Task {
        first,
        items,
        ..Task::default()
    })
}

/// The task a result is of: its id and, for a chunk, its items.
fn task_of(r: &TaskResult) -> Task {
    Task {
        id: r.id,
        workload_ms: r.workload_ms,
        first: r.first,
        items: r.items,
    }
}

impl Outputs {
    /// The outputs of `config`; a file read back (a band held before a restart, a
    /// search's hits) is at most `max_payload` bytes, as an output is.
    pub fn new(config: OutputsConfig, max_payload: u64) -> Outputs {
        Outputs {
            config,
            max_payload,
            handle: None,
            unsynced: false,
            written: 0,
            canvas: None,
            hits: Default::default(),
            warned_discarded: false,
            input_name: None,
        }
    }

    /// The outputs directory's handle (`None` without `--outputs`), opened once.
    fn handle(&mut self) -> anyhow::Result<Option<Arc<Dir>>> {
        if let (None, Some(dir)) = (&self.handle, &self.config.dir) {
            self.handle = Some(Arc::new(Dir::open(dir).context("--outputs")?));
        }
        Ok(self.handle.clone())
    }

    /// Keeps one held task's output: its file, its band of the picture, its hits.
    pub fn record(&mut self, job: &Job, r: &TaskResult) -> anyhow::Result<()> {
        if let (Some(name), Some(handle)) = (self.prepare(job, r)?, self.handle()?) {
            write_output(&handle, &name, &r.output)?;
            self.renamed();
        }
        Ok(())
    }

    /// Keeps one held task's band of the picture and its hits, and returns the name its
    /// output file is to be written under (with `--outputs`): the caller writes it (see
    /// [`Writers`]), and calls [`Outputs::renamed`] once it is.
    pub fn prepare(&mut self, job: &Job, r: &TaskResult) -> anyhow::Result<Option<String>> {
        let Some(kernel) = Kernel::from_id(job.kernel).filter(|k| k.carries_output()) else {
            return Ok(None);
        };
        let mut file = None;
        if self.config.dir.is_some() {
            if !r.name.is_empty() && !plain_file_name(&r.name) {
                log::warn!(
                    "task {}: the input name {:?} is not a plain file name; writing its output by id",
                    r.id,
                    r.name.escape_debug().to_string()
                );
            }
            if r.items > 0 && plain_file_name(&r.name) && self.input_name.is_none() {
                self.input_name = Some(r.name.clone());
            }
            file = Some(output_name(job, task_of(r), &r.name));
            self.written += 1;
        } else if self.config.image.is_none() && kernel != Kernel::Search && !self.warned_discarded
        {
            log::warn!("outputs are not kept: pass --outputs DIR to keep each task's output");
            self.warned_discarded = true;
        }
        match kernel {
            Kernel::Mandelbrot if self.config.image.is_some() => {
                // A standalone sink learns the picture's size from its first band: one it
                // cannot hold fails the batch here, before the canvas is allocated.
                if let (None, Ok(view)) = (&self.canvas, mandelbrot::View::of(job)) {
                    check_picture(&view)?;
                }
                self.paint(job, task_of(r), &r.output)
            }
            Kernel::Search => self.hits.extend(search::hits(&r.output)),
            _ => {}
        }
        Ok(file)
    }

    /// An output file was renamed into the directory: the next [`Outputs::sync`] makes
    /// that durable.
    pub fn renamed(&mut self) {
        self.unsynced = true;
    }

    /// The outputs directory's handle, opened once; `None` without `--outputs`.
    pub fn directory(&mut self) -> anyhow::Result<Option<Arc<Dir>>> {
        self.handle()
    }

    fn paint(&mut self, job: &Job, task: Task, counts: &[u8]) {
        let Ok(view) = mandelbrot::View::of(job) else {
            return;
        };
        // A band of the wrong size (a faulty worker) must not paint over its neighbours.
        let (Ok((first_row, rows)), Ok(shape)) = (view.span(task), view.shape(task)) else {
            return;
        };
        if shape.output_bytes != counts.len() {
            log::warn!(
                "rows {first_row}..{}: {} bytes of counts do not fit the picture; not painted",
                first_row + rows,
                counts.len()
            );
            return;
        }
        let (_, pixels, filled) = self.canvas.get_or_insert_with(|| {
            (
                view,
                vec![0; view.width as usize * view.height as usize],
                vec![false; view.bands() as usize],
            )
        });
        let start = first_row as usize * view.width as usize;
        for (i, word) in counts.chunks_exact(4).enumerate() {
            if let Some(p) = pixels.get_mut(start + i) {
                *p = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            }
        }
        // Bands are of `view.rows` rows (one for a divisible job's view).
        let bands = if task.is_chunk() {
            first_row..first_row + rows
        } else {
            task.id..task.id + 1
        };
        for band in bands {
            if let Some(slot) = filled.get_mut(band as usize) {
                *slot = true;
            }
        }
    }

    /// A divisible job's chunks whose outputs are in the directory, from the files' names.
    fn chunks_in_dir(job: &Job, dir: &Path) -> anyhow::Result<Vec<Task>> {
        let kernel = Kernel::from_id(job.kernel).map_or("task", Kernel::name);
        let mut chunks = Vec::new();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list the outputs directory {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            if let Some(chunk) = entry
                .file_name()
                .to_str()
                .and_then(|n| chunk_of_name(kernel, n))
                .filter(|c| c.range().1 <= job.items)
            {
                chunks.push(chunk);
            }
        }
        chunks.sort_by_key(Task::range);
        Ok(chunks)
    }

    /// Makes the renames durable: called before the ventilator hears tasks are held.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        if let (true, Some(handle)) = (self.unsynced, &self.handle) {
            handle.sync()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Output files written in this run.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The search kernel's hits, ascending.
    pub fn hits(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.hits).into_iter().collect()
    }

    /// The search kernel's hits so far: how many, and the first `n`.
    pub fn hits_so_far(&self, n: usize) -> (u64, Vec<u32>) {
        (
            self.hits.len() as u64,
            self.hits.iter().take(n).copied().collect(),
        )
    }

    /// The outputs directory and the picture, as given.
    pub fn config(&self) -> &OutputsConfig {
        &self.config
    }

    /// Once the batch is complete: reads back bands held before a restart, and writes the
    /// picture.
    pub fn finish(&mut self, job: &Job) -> anyhow::Result<()> {
        let handle = self.handle()?;
        if let (Some(Kernel::Search), Some(dir), Some(handle)) =
            (Kernel::from_id(job.kernel), &self.config.dir, &handle)
        {
            // Every task's hits, those held before a restart too, from their files.
            let space = search::Space::of(job).map_err(anyhow::Error::msg)?;
            let tasks: Vec<Task> = if job.items > 0 {
                Self::chunks_in_dir(job, dir)?
            } else {
                (0..space.tasks())
                    .map(|id| Task {
                        id,
                        ..Task::default()
                    })
                    .collect()
            };
            let mut hits = std::collections::BTreeSet::new();
            for task in tasks {
                let bytes = handle
                    .read(&output_name(job, task, ""), self.max_payload)
                    .context("reading hits back")?;
                hits.extend(search::hits(&bytes));
            }
            self.hits = hits;
        }
        self.assemble(job)?;
        let Some(path) = self.config.image.clone() else {
            return Ok(());
        };
        let view = mandelbrot::View::of(job)
            .map_err(|_| anyhow::anyhow!("--image: this batch is not a Mandelbrot image"))?;
        // A resumed sink may paint every band from its files: the same bound first.
        check_picture(&view)?;
        let missing = |canvas: &Option<(mandelbrot::View, Vec<u32>, Vec<bool>)>| {
            canvas
                .as_ref()
                .is_none_or(|(_, _, f)| f.iter().any(|filled| !filled))
        };
        if job.items > 0 && missing(&self.canvas) {
            // Rows held before a restart: read back from the chunks' files.
            if let (Some(dir), Some(handle)) = (self.config.dir.clone(), &handle) {
                for chunk in Self::chunks_in_dir(job, &dir)? {
                    let counts = handle
                        .read(&output_name(job, chunk, ""), self.max_payload)
                        .context("reading rows back")?;
                    self.paint(job, chunk, &counts);
                }
            }
        }
        for band in 0..view.bands() {
            let filled = self
                .canvas
                .as_ref()
                .is_some_and(|(_, _, f)| f.get(band as usize) == Some(&true));
            if filled {
                continue;
            }
            let Some(handle) = &handle else {
                bail!("band {band} of the picture never arrived");
            };
            if job.items > 0 {
                bail!("row {band} of the picture never arrived");
            }
            let task = Task {
                id: band,
                ..Task::default()
            };
            let counts = handle
                .read(&output_name(job, task, ""), self.max_payload)
                .with_context(|| format!("reading band {band} back"))?;
            self.paint(job, task, &counts);
        }
        let Some((view, counts, _)) = &self.canvas else {
            bail!("no band of the picture arrived");
        };
        // The picture, like every output, appears whole under its name or not at all.
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("picture.png")
            .to_owned();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let folder = Dir::open(parent).context("--image")?;
        files::write_whole(&folder, &name, |file| write_png(file, view, counts))
            .with_context(|| format!("cannot write the picture {}", path.display()))?;
        // The rename durable too: the picture is on disk when the sink says written.
        folder
            .sync()
            .with_context(|| format!("cannot sync the folder of {}", path.display()))?;
        log::info!(
            "picture written to {} ({} x {})",
            path.display(),
            view.width,
            view.height
        );
        Ok(())
    }
}

impl Outputs {
    /// A divisible job over one input whose output is per item (`same`, `N/item`): its
    /// chunks' outputs, in item order, as one file named after the input (`NAME.out`),
    /// written, synced and renamed like every output. The chunks' files stay (a resumed
    /// sink reads them). Overlapping chunks (carved differently by a restarted
    /// ventilator) give each item's bytes once.
    fn assemble(&mut self, job: &Job) -> anyhow::Result<()> {
        use crate::kernels::{PER_ITEM, SAME_AS_INPUT};
        let (Some(dir), Some(kernel)) = (self.config.dir.clone(), Kernel::from_id(job.kernel))
        else {
            return Ok(());
        };
        if job.items == 0 || !kernel.takes_inputs() {
            return Ok(());
        }
        let per_item = match job.output_bytes {
            SAME_AS_INPUT => u64::from(job.item_bytes.max(1)),
            n if n & PER_ITEM != 0 => u64::from(n & !PER_ITEM),
            // A fixed output per chunk (a reduction): the chunks' files are the result.
            _ => return Ok(()),
        };
        let name = match &self.input_name {
            Some(input) => format!("{input}.out"),
            None => format!("{}-job.out", kernel.name()),
        };
        let Some(handle) = self.handle()? else {
            return Ok(());
        };
        let chunks = Self::chunks_in_dir(job, &dir)?;
        let max_payload = self.max_payload;
        files::write_whole(&handle, &name, |file| {
            Self::concatenate(job, &handle, &chunks, (per_item, max_payload), file)
        })?;
        handle.sync()?;
        log::info!(
            "the job's output assembled in {}",
            dir.join(&name).display()
        );
        Ok(())
    }

    /// Writes the chunks' outputs to `file`, each item's bytes once, in item order.
    fn concatenate(
        job: &Job,
        handle: &Dir,
        chunks: &[Task],
        (per_item, max_payload): (u64, u64),
        file: &mut std::fs::File,
    ) -> anyhow::Result<()> {
        let dir = handle.show("");
        let mut file = std::io::BufWriter::new(file);
        let mut next = 0u64;
        for &chunk in chunks {
            let (first, end) = chunk.range();
            if end <= next {
                continue;
            }
            if first > next {
                bail!("items {next}..{first} of the job have no output in {dir}");
            }
            let bytes = handle.read(&output_name(job, chunk, ""), max_payload)?;
            // The last chunk's output may be short (a partial last item of `same`).
            let skip = ((next - first) * per_item).min(bytes.len() as u64) as usize;
            file.write_all(&bytes[skip..])
                .with_context(|| format!("cannot write the job's output in {dir}"))?;
            next = end;
        }
        if next < job.items {
            bail!(
                "items {next}..{} of the job have no output in {dir}",
                job.items
            );
        }
        file.flush()
            .with_context(|| format!("cannot write the job's output in {dir}"))
    }
}

/// Most pixels a picture may have (`--image`): PNG's own limit on a side is 2^31, and
/// a picture beyond this is better kept as counts (`--outputs`) than painted.
pub const MAX_PICTURE_PIXELS: u64 = 1 << 31;
/// What the sink holds per pixel while it paints: the count (4 bytes) and, when it
/// writes the PNG, its colour (3).
const PICTURE_BYTES_PER_PIXEL: u64 = 7;

/// Refuses a picture over [`MAX_PICTURE_PIXELS`], or one that needs more memory than
/// this machine has available, before the batch starts: the error names the limit.
pub fn check_picture(view: &mandelbrot::View) -> anyhow::Result<()> {
    let pixels = u64::from(view.width) * u64::from(view.height);
    if pixels > MAX_PICTURE_PIXELS {
        bail!(
            "--image: a {} x {} picture is {pixels} pixels, over the {MAX_PICTURE_PIXELS} (2^31) \
             the sink paints; lower --width or --height, or drop --image and keep the counts \
             with --outputs DIR",
            view.width,
            view.height
        );
    }
    let needed = pixels * PICTURE_BYTES_PER_PIXEL;
    if let Some(available) = available_memory() {
        if needed > available {
            bail!(
                "--image: a {} x {} picture needs {:.1} GiB in the sink ({PICTURE_BYTES_PER_PIXEL} \
                 bytes a pixel), over the {:.1} GiB this machine has available; lower --width or \
                 --height, or drop --image and keep the counts with --outputs DIR",
                view.width,
                view.height,
                needed as f64 / (1u64 << 30) as f64,
                available as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(())
}

/// Memory available to new allocations (Linux's MemAvailable), when the system says.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Most counts whose colours [`write_png`] computes ahead (12 MiB of palette); larger
/// counts are coloured one by one.
const MAX_PALETTE: u32 = 1 << 22;

/// The picture of `counts` (iteration counts, row-major) as an RGB PNG, into `file`, with
/// the `png` crate's fast compression (its own DEFLATE tuned for images).
pub fn write_png(
    file: &mut std::fs::File,
    view: &mandelbrot::View,
    counts: &[u32],
) -> anyhow::Result<()> {
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), view.width, view.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().context("cannot write the picture")?;
    // A count's colour depends on the count alone: computed once per count (a logarithm
    // and three cosines each), not once per pixel.
    let palette: Vec<[u8; 3]> = (0..=view.max_iter.min(MAX_PALETTE))
        .map(|n| mandelbrot::colour(n, view.max_iter))
        .collect();
    let rgb: Vec<u8> = counts
        .iter()
        .flat_map(|&n| {
            palette
                .get(n as usize)
                .copied()
                .unwrap_or_else(|| mandelbrot::colour(n, view.max_iter))
        })
        .collect();
    writer
        .write_image_data(&rgb)
        .and_then(|()| writer.finish())
        .context("cannot write the picture")
}

/// Writes one output file whole under `name` (see [`files::write_whole`]).
pub fn write_output(handle: &Dir, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    files::write_whole(handle, name, |file| {
        file.write_all(bytes)
            .with_context(|| format!("cannot write {}", handle.show(name)))
    })
}

/// How a [`Writers`] thread writes one file: [`write_output`], or a test's stand-in.
pub type WriteFile = dyn Fn(&Dir, &str, &[u8]) -> anyhow::Result<()> + Send + Sync;

/// One output file for a [`Writers`] thread to write.
struct FileJob {
    ticket: u64,
    handle: Arc<Dir>,
    name: String,
    bytes: Vec<u8>,
}

/// One output file written (or not), as a [`Writers`] thread reports it.
#[derive(Debug)]
pub struct Written {
    /// The ticket the file was submitted with.
    pub ticket: u64,
    /// Its size.
    pub bytes: usize,
    /// Whether it is whole under its name, or why not.
    pub outcome: anyhow::Result<()>,
}

/// A small fixed pool of threads that write, sync and rename output files, so a large
/// output does not hold up the sink's socket. Files of the same name go to the same
/// thread, in the order submitted, so two writes of one name never race. Each file written
/// is reported on a channel ([`Writers::written`]), and a byte on a socket pair wakes the
/// sink's poll ([`Writers::wake_fd`]). Dropped, the pool skips the files not yet begun and
/// waits for those being written.
pub struct Writers {
    queues: Vec<std::sync::mpsc::Sender<FileJob>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    written: std::sync::mpsc::Receiver<Written>,
    wake: std::os::unix::net::UnixStream,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Most threads a sink writes outputs on.
pub const MAX_WRITERS: usize = 4;

impl Writers {
    /// `threads` writers (at least one), each writing a file with `write`.
    pub fn start(threads: usize, write: Arc<WriteFile>) -> anyhow::Result<Writers> {
        use std::sync::atomic::Ordering;
        let (wake, waker) = std::os::unix::net::UnixStream::pair()
            .context("cannot make the socket pair that wakes the sink when an output is written")?;
        wake.set_nonblocking(true)
            .and_then(|()| waker.set_nonblocking(true))
            .context("cannot make the sink's wake-up socket non-blocking")?;
        let (done, written) = std::sync::mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let (queue, jobs) = std::sync::mpsc::channel::<FileJob>();
            let (done, write, stop) = (done.clone(), write.clone(), stop.clone());
            let mut waker = waker
                .try_clone()
                .context("cannot share the sink's wake-up socket")?;
            let thread = std::thread::Builder::new()
                .name(format!("outputs-{i}"))
                .spawn(move || {
                    for job in jobs {
                        if stop.load(Ordering::Relaxed) {
                            continue;
                        }
                        let outcome = write(&job.handle, &job.name, &job.bytes);
                        let written = Written {
                            ticket: job.ticket,
                            bytes: job.bytes.len(),
                            outcome,
                        };
                        if done.send(written).is_err() {
                            return;
                        }
                        // The report first, then the byte: a poll woken finds it. A full
                        // socket already holds a byte that wakes the sink.
                        let _ = std::io::Write::write(&mut waker, &[1]);
                    }
                })
                .context("cannot start a thread to write outputs")?;
            queues.push(queue);
            handles.push(thread);
        }
        Ok(Writers {
            queues,
            threads: handles,
            written,
            wake,
            stop,
        })
    }

    /// Threads for this machine: one a core, at most [`MAX_WRITERS`].
    pub fn threads() -> usize {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_WRITERS)
    }

    /// Hands `bytes` to a thread to write whole as `name` in `handle`'s directory; it is
    /// reported under `ticket`.
    pub fn submit(
        &self,
        ticket: u64,
        handle: Arc<Dir>,
        name: String,
        bytes: Vec<u8>,
    ) -> anyhow::Result<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        let queue = &self.queues[(hasher.finish() % self.queues.len() as u64) as usize];
        queue
            .send(FileJob {
                ticket,
                handle,
                name,
                bytes,
            })
            .map_err(|_| anyhow::anyhow!("a thread writing outputs has stopped"))
    }

    /// The descriptor that becomes readable when a file has been written.
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.wake)
    }

    /// The files written since last asked, without waiting.
    pub fn written(&self) -> Vec<Written> {
        let mut bytes = [0u8; 256];
        while matches!(std::io::Read::read(&mut &self.wake, &mut bytes), Ok(n) if n > 0) {}
        self.written.try_iter().collect()
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.queues.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picture_too_large_to_paint_fails_at_its_first_band_before_the_canvas() {
        let view = mandelbrot::View::new(65_536, 65_536, 64, 16, (-0.5, 0.0), 3.0).unwrap();
        let job = Job {
            kernel: 1,
            constants: view.constants(),
            ..Job::default()
        };
        let mut outputs = Outputs::new(
            OutputsConfig {
                dir: None,
                image: Some(PathBuf::from("huge.png")),
            },
            crate::protocol::DEFAULT_MAX_PAYLOAD,
        );
        let band = TaskResult {
            output: vec![0; 16],
            ..TaskResult::default()
        };
        let why = outputs.record(&job, &band).unwrap_err().to_string();
        assert!(
            why.contains("4294967296 pixels") && why.contains("2^31"),
            "{why}"
        );
        assert!(outputs.canvas.is_none());
    }

    #[test]
    fn names_a_worker_sends_never_become_paths() {
        let job = Job {
            kernel: Kernel::User.id(),
            ..Job::default()
        };
        let three = Task {
            id: 3,
            ..Task::default()
        };
        assert_eq!(output_name(&job, three, "a.bin"), "a.bin.out");
        for bad in ["", "../x", "a/b", ".hidden", "a\nb"] {
            assert_eq!(
                output_name(&job, three, bad),
                "user-00000003.out",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_output_is_written_whole_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = OutputsConfig {
            dir: Some(dir.path().to_owned()),
            image: None,
        };
        config.check(false, false).unwrap();
        let mut outputs = Outputs::new(config, crate::protocol::DEFAULT_MAX_PAYLOAD);
        let job = Job {
            kernel: Kernel::User.id(),
            ..Job::default()
        };
        let r = TaskResult {
            id: 1,
            name: "in.bin".into(),
            output: vec![1, 2, 3],
            ..TaskResult::default()
        };
        outputs.record(&job, &r).unwrap();
        outputs.sync().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("in.bin.out")).unwrap(),
            vec![1, 2, 3]
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
    }

    #[test]
    fn a_link_where_the_sink_writes_is_refused_and_its_target_kept() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = OutputsConfig {
            dir: Some(dir.path().to_owned()),
            image: None,
        };
        std::os::unix::fs::symlink(&target, dir.path().join(PROBE)).unwrap();
        let e = format!("{:#}", config.check(false, false).unwrap_err());
        assert!(e.contains(PROBE) && e.contains("symbolic link"), "{e}");
        std::fs::remove_file(dir.path().join(PROBE)).unwrap();
        config.check(false, false).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".in.bin.out.tmp")).unwrap();
        let mut outputs = Outputs::new(config, crate::protocol::DEFAULT_MAX_PAYLOAD);
        let job = Job {
            kernel: Kernel::User.id(),
            ..Job::default()
        };
        let r = TaskResult {
            id: 1,
            name: "in.bin".into(),
            output: vec![1, 2, 3],
            ..TaskResult::default()
        };
        let e = format!("{:#}", outputs.record(&job, &r).unwrap_err());
        assert!(e.contains(".in.bin.out.tmp"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(!dir.path().join("in.bin.out").exists());
    }
}

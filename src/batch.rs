//! Batches as the root package reads them: the core's model (`Task`, `Job`, `Batch`),
//! a tasks file read from disk, and a user kernel's input files (`--inputs`).

pub use conquer_core::batch::*;

use anyhow::{bail, Context};
use std::path::Path;

/// Reads a tasks file: one workload in milliseconds per line; blank lines and comments
/// (from `#` to the end of a line) are ignored. Any other line fails the whole file, naming its number.
pub fn read(path: &Path) -> anyhow::Result<Batch> {
    if path.is_dir() {
        bail!(
            "tasks file {} is a directory: name the file of workloads",
            path.display()
        );
    }
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read tasks file {}", path.display()))?;
    Batch::parse_from(std::io::BufReader::new(file))
        .with_context(|| format!("bad tasks file {}", path.display()))
}

/// A user kernel's inputs: one task per file, matched by a glob pattern (`--inputs`).
/// Files are read when their task is handed out, not before: the ventilator holds names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// By task id.
    pub paths: Vec<std::path::PathBuf>,
    /// Each file's name (no directory): what its output is named after.
    pub names: Vec<String>,
    /// FNV-1a over every file's name, size and modification time: part of the batch id,
    /// so changed inputs make a new batch.
    pub digest: u64,
}

impl Inputs {
    /// The files `pattern` matches, sorted by path; each at most `max_payload` bytes, names
    /// unique. Fails naming the pattern, the file, or the flag to change.
    pub fn find(pattern: &str, max_payload: u64) -> anyhow::Result<Inputs> {
        let matches = glob::glob(pattern)
            .with_context(|| format!("--inputs {pattern:?} is not a valid glob pattern"))?;
        let mut paths = Vec::new();
        for entry in matches {
            let path =
                entry.with_context(|| format!("--inputs {pattern:?}: cannot read a match"))?;
            if path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            bail!("--inputs {pattern:?} matches no file (quote the pattern so the shell does not expand it)");
        }
        if paths.len() > MAX_TASKS as usize {
            bail!(
                "--inputs {pattern:?} matches {} files, over the limit of {MAX_TASKS} tasks",
                paths.len()
            );
        }
        let mut names = Vec::with_capacity(paths.len());
        let mut seen = std::collections::HashMap::new();
        let mut digest_input = Vec::new();
        for path in &paths {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("cannot read input {}", path.display()))?;
            if meta.len() > max_payload {
                bail!(
                    "input {} is {} bytes, over --max-payload {max_payload}: raise --max-payload (on \
                     every role) or split the file",
                    path.display(),
                    meta.len()
                );
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
                .ok_or_else(|| {
                    anyhow::anyhow!("input {} has no UTF-8 file name", path.display())
                })?;
            if !crate::outputs::plain_file_name(&name) {
                bail!(
                    "input {}: its output is named after it, and {name:?} is not a plain file name \
                     (no leading dot, no control characters, at most 240 bytes); rename it",
                    path.display()
                );
            }
            if let Some(other) = seen.insert(name.clone(), path.clone()) {
                bail!(
                    "inputs {} and {} share the name {name:?}: outputs are named after inputs, so \
                     names must be unique",
                    other.display(),
                    path.display()
                );
            }
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            digest_input.extend_from_slice(name.as_bytes());
            digest_input.extend_from_slice(&meta.len().to_le_bytes());
            digest_input.extend_from_slice(&modified.to_le_bytes());
            names.push(name);
        }
        Ok(Inputs {
            paths,
            names,
            digest: crate::kernels::fnv1a(&digest_input),
        })
    }

    /// The batch of these inputs: one task per file, each task's nominal cost its size in
    /// 64 KiB units (at least 1), so longest-first hands out the biggest files first.
    pub fn batch(&self) -> anyhow::Result<Batch> {
        let tasks = self
            .paths
            .iter()
            .enumerate()
            .map(|(id, path)| {
                let len = std::fs::metadata(path)
                    .with_context(|| format!("cannot read input {}", path.display()))?
                    .len();
                Ok(Task {
                    id: id as u32,
                    workload_ms: (len.div_ceil(64 * 1024)).clamp(1, u64::from(MAX_WORKLOAD_MS))
                        as u32,
                    ..Default::default()
                })
            })
            .collect::<anyhow::Result<Vec<Task>>>()?;
        Ok(Batch { tasks })
    }

    /// One large input of a divisible job (`--chunking` with `--inputs`): the pattern must
    /// match exactly one file, of any size; its chunks are slices of it.
    pub fn single(pattern: &str) -> anyhow::Result<Inputs> {
        let inputs = Inputs::find(pattern, u64::MAX)?;
        if inputs.paths.len() != 1 {
            bail!(
                "--inputs {pattern:?} matches {} files; a divisible job (--chunking) carves one input: name one file, or drop --chunking for one task per file",
                inputs.paths.len()
            );
        }
        Ok(inputs)
    }

    /// Task `id`'s [`crate::protocol::Message::Data`], the file read straight into the
    /// message after its head (one copy from the page cache, none after). A divisible
    /// job's chunk carries its items' slice of the one input. With the message, the
    /// input's length (its tail), for [`crate::protocol::Message::pack_data`].
    pub fn data_message(
        &self,
        batch: u64,
        job: &Job,
        task: Task,
        max_payload: u64,
    ) -> anyhow::Result<(Vec<u8>, usize)> {
        use std::io::{Read, Seek};
        let index = if task.is_chunk() { 0 } else { task.id as usize };
        let path = self
            .paths
            .get(index)
            .ok_or_else(|| anyhow::anyhow!("no input for task {}", task.id))?;
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot read input {}", path.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("cannot read input {}", path.display()))?
            .len();
        let (offset, len) = if task.is_chunk() {
            let item = u64::from(job.item_bytes.max(1));
            let start = task.first.saturating_mul(item);
            let end = task.range().1.saturating_mul(item).min(size);
            if start >= end {
                bail!(
                    "input {} is {size} bytes, too short for items {}..{} of {item} bytes: it changed since the job started",
                    path.display(),
                    task.first,
                    task.range().1
                );
            }
            (start, end - start)
        } else {
            (0, size)
        };
        if len > max_payload {
            bail!(
                "input {} grew to {len} bytes, over --max-payload {max_payload}",
                path.display()
            );
        }
        file.seek(std::io::SeekFrom::Start(offset))
            .with_context(|| format!("cannot read input {}", path.display()))?;
        let name = &self.names[index];
        let mut message = crate::protocol::Message::encode_data_head(
            batch,
            job,
            task,
            name,
            len as usize,
            len as usize,
        );
        let head = message.len();
        (&mut file)
            .take(len)
            .read_to_end(&mut message)
            .with_context(|| format!("cannot read input {}", path.display()))?;
        if (message.len() - head) as u64 != len {
            bail!("input {} changed while it was read", path.display());
        }
        Ok((message, len as usize))
    }

    /// Task `id`'s input bytes, checked against `max_payload` again (a file may have grown).
    pub fn read(&self, id: u32, max_payload: u64) -> anyhow::Result<Vec<u8>> {
        let path = self
            .paths
            .get(id as usize)
            .ok_or_else(|| anyhow::anyhow!("no input for task {id}"))?;
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read input {}", path.display()))?;
        if bytes.len() as u64 > max_payload {
            bail!(
                "input {} grew to {} bytes, over --max-payload {max_payload}",
                path.display(),
                bytes.len()
            );
        }
        Ok(bytes)
    }
}

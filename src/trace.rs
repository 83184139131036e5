//! `--timeline F.json`: every held task as a Chrome Trace Event (loadable in Perfetto or
//! chrome://tracing), one track per worker. Start and end come from the worker's clock,
//! shifted onto the sink's: per worker, by the smallest gap seen between a result's end on
//! the worker and its arrival at the sink (clock offset plus the least delivery time).

use crate::protocol::TaskResult;
use anyhow::Context;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// One held task, as recorded.
struct Entry {
    worker: u32,
    result: TaskResult,
}

/// The tasks of a batch as they are held.
#[derive(Default)]
pub struct Trace {
    workers: Vec<(String, String)>,
    by_name: HashMap<String, u32>,
    /// Per worker: the least (arrival at the sink − end on the worker), in ms (the times
    /// are the worker's word: wide arithmetic, so no value overflows).
    offset_ms: Vec<i128>,
    entries: Vec<Entry>,
}

#[derive(Serialize)]
struct Event<'a> {
    name: String,
    cat: &'a str,
    ph: &'a str,
    ts: f64,
    dur: f64,
    pid: u32,
    tid: u32,
    args: Args<'a>,
}

#[derive(Serialize)]
struct Args<'a> {
    task: u32,
    worker: &'a str,
    backend: &'a str,
    status: &'a str,
    workload_ms: u32,
    kernel_us: u32,
}

#[derive(Serialize)]
struct Meta<'a> {
    name: &'a str,
    ph: &'a str,
    pid: u32,
    tid: u32,
    args: MetaArgs<'a>,
}

#[derive(Serialize)]
struct MetaArgs<'a> {
    name: &'a str,
}

impl Trace {
    /// `results` of `worker` (on `backend`) arrived at the sink at `arrival_unix_ms`.
    pub fn record(
        &mut self,
        worker: &str,
        backend: &str,
        results: &[TaskResult],
        arrival_unix_ms: u64,
    ) {
        let id = match self.by_name.get(worker) {
            Some(&id) => id,
            None => {
                let id = self.workers.len() as u32;
                self.workers.push((worker.to_owned(), backend.to_owned()));
                self.by_name.insert(worker.to_owned(), id);
                self.offset_ms.push(i128::MAX);
                id
            }
        };
        for r in results {
            let gap = i128::from(arrival_unix_ms) - i128::from(r.finished_unix_ms);
            let offset = &mut self.offset_ms[id as usize];
            *offset = (*offset).min(gap);
            self.entries.push(Entry {
                worker: id,
                result: r.summary(),
            });
        }
    }

    /// Writes the trace to `path` (JSON Object Format: `{"traceEvents": [...]}`).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file = crate::files::create_file(path, "the timeline", false)?;
        let mut out = std::io::BufWriter::new(file);
        let write = |out: &mut std::io::BufWriter<std::fs::File>| -> anyhow::Result<()> {
            out.write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")?;
            let mut first = true;
            for (tid, (name, _)) in self.workers.iter().enumerate() {
                let meta = Meta {
                    name: "thread_name",
                    ph: "M",
                    pid: 1,
                    tid: tid as u32,
                    args: MetaArgs { name },
                };
                if !first {
                    out.write_all(b",\n")?;
                }
                first = false;
                serde_json::to_writer(&mut *out, &meta)?;
            }
            for e in &self.entries {
                let (worker, backend) = &self.workers[e.worker as usize];
                let offset = self.offset_ms[e.worker as usize];
                let end_us = (i128::from(e.result.finished_unix_ms) + offset) as f64 * 1e3;
                let dur = f64::from(e.result.wall_us);
                let event = Event {
                    name: format!("task {}", e.result.id),
                    cat: "task",
                    ph: "X",
                    ts: end_us - dur,
                    dur,
                    pid: 1,
                    tid: e.worker,
                    args: Args {
                        task: e.result.id,
                        worker,
                        backend,
                        status: e.result.status.as_str(),
                        workload_ms: e.result.workload_ms,
                        kernel_us: e.result.kernel_us,
                    },
                };
                if !first {
                    out.write_all(b",\n")?;
                }
                first = false;
                serde_json::to_writer(&mut *out, &event)?;
            }
            out.write_all(b"\n]}\n")?;
            out.flush()?;
            Ok(())
        };
        write(&mut out).with_context(|| format!("cannot write the timeline {}", path.display()))
    }
}

//! Reports: the only module that writes to stdout. The sink's batch report (the seed's
//! "Total elapsed time" and more) as text or one JSON object, the ventilator's "Total
//! expected cost" line, and the per-task results file the sink writes as results arrive.

use crate::protocol::TaskResult;
use anyhow::Context;
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One worker's share of a batch, as the sink saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerReport {
    /// The worker's name.
    pub id: String,
    /// Tasks whose results it delivered first (duplicates not counted).
    pub tasks: u64,
    /// Sum of its tasks' wall times on the worker.
    pub busy_ms: f64,
    /// Sum of device kernel times (0 where not measured).
    pub kernel_ms: f64,
    pub backend: String,
    pub adapter: String,
}

/// A batch's report: what the sink prints and `--json` emits.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub batch: String,
    pub tasks: u64,
    /// Sum of all workloads (the seed's "total expected cost").
    pub expected_ms: u64,
    pub longest_ms: u32,
    /// From batch start at the sink to the last result.
    pub elapsed_ms: f64,
    /// max(total / workers, longest): no schedule does better. Totals are the nominal
    /// workloads when every worker sleeps, else the measured task times.
    pub ideal_ms: f64,
    /// `workload` or `measured`: what `ideal_ms` was computed from.
    pub ideal_basis: String,
    /// ideal / elapsed.
    pub efficiency: f64,
    /// Tasks per second over the batch.
    pub tasks_per_s: f64,
    /// Results that arrived for tasks already held: dropped.
    pub duplicates: u64,
    /// Tasks handed to another worker after their first went away or failed.
    pub redispatched: u64,
    /// Messages dropped as malformed or foreign, at the sink and the ventilator.
    pub rejected: u64,
    /// Results that disagreed with the CPU reference.
    pub mismatches: u64,
    pub workers: Vec<WorkerReport>,
}

/// Prints the seed's ventilator line.
pub fn print_expected_cost(expected_ms: u64) {
    println!("Total expected cost: {expected_ms} msec");
}

impl Report {
    /// Prints the report on stdout: text for people, or one JSON object.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        if json {
            serde_json::to_writer(&mut out, self).context("writing the JSON report")?;
            writeln!(out)?;
        } else {
            out.write_all(self.to_text().as_bytes())?;
        }
        out.flush().context("writing the report to stdout")
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s += &format!("Total elapsed time: {:.0} msec\n", self.elapsed_ms);
        if self.workers.is_empty() {
            // A classic batch: results carry neither worker nor (always) workload.
            s += &format!(
                "{} results, {:.0} per second, rejected {}\n",
                self.tasks, self.tasks_per_s, self.rejected
            );
            return s;
        }
        let efficiency = if self.ideal_ms > 0.0 {
            format!("efficiency {:.3}", self.efficiency)
        } else {
            "efficiency n/a (no work)".to_owned()
        };
        s += &format!(
            "{} tasks, {} ms expected, ideal {:.0} ms ({}) on {} workers, {efficiency}, {:.0} tasks/s\n",
            self.tasks,
            self.expected_ms,
            self.ideal_ms,
            self.ideal_basis,
            self.workers.len(),
            self.tasks_per_s
        );
        s += &format!(
            "duplicates {}, redispatched {}, rejected {}",
            self.duplicates, self.redispatched, self.rejected
        );
        if self.mismatches > 0 {
            s += &format!(", MISMATCHES {}", self.mismatches);
        }
        s += "\n\n";
        let name_width = self
            .workers
            .iter()
            .map(|w| w.id.len())
            .max()
            .unwrap_or(0)
            .max(6);
        s += &format!(
            "{:<name_width$}  {:>6}  {:>9}  {:>9}  {:<8}  adapter\n",
            "worker", "tasks", "busy ms", "kernel ms", "backend"
        );
        for w in &self.workers {
            s += &format!(
                "{:<name_width$}  {:>6}  {:>9.1}  {:>9.1}  {:<8}  {}\n",
                w.id,
                w.tasks,
                w.busy_ms,
                w.kernel_ms,
                w.backend,
                if w.adapter.is_empty() {
                    "-"
                } else {
                    &w.adapter
                }
            );
        }
        s
    }
}

/// Format of the per-task results file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultsFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl ResultsFormat {
    /// `.csv` means CSV; anything else JSON Lines.
    pub fn from_path(path: &Path) -> ResultsFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => ResultsFormat::Csv,
            _ => ResultsFormat::Jsonl,
        }
    }
}

/// One record per task, written as results arrive and synced before they are acknowledged.
pub struct ResultsFile {
    path: PathBuf,
    format: ResultsFormat,
    out: BufWriter<File>,
}

#[derive(Serialize, serde::Deserialize)]
struct ResultRecord {
    batch: String,
    task: u32,
    worker: String,
    workload_ms: u32,
    wall_us: u32,
    kernel_us: u32,
    checksum: String,
    status: String,
    started_unix_ms: u64,
}

const CSV_HEADER: &str =
    "batch,task,workload_ms,wall_us,kernel_us,checksum,status,started_unix_ms,worker";

/// What a results file holds of a batch in progress, for `--resume`.
pub struct RecoveredResults {
    pub batch: u64,
    pub started_unix_ms: u64,
    /// (task, worker, result) per record.
    pub records: Vec<(u32, String, TaskResult)>,
}

impl ResultsFile {
    pub fn create(path: &Path, format: ResultsFormat) -> anyhow::Result<ResultsFile> {
        let file = File::create(path)
            .with_context(|| format!("cannot create results file {}", path.display()))?;
        let mut results = ResultsFile {
            path: path.to_owned(),
            format,
            out: BufWriter::new(file),
        };
        if format == ResultsFormat::Csv {
            writeln!(results.out, "{CSV_HEADER}").map_err(|e| results.error(e))?;
        }
        Ok(results)
    }

    /// Reopens a results file to append to it, after reading what it holds. A last line
    /// cut short by a crash is cut off.
    pub fn resume(
        path: &Path,
        format: ResultsFormat,
    ) -> anyhow::Result<(ResultsFile, Option<RecoveredResults>)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read results file {}", path.display()))?;
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            log::warn!(
                "{}: dropping a last line cut short ({} bytes)",
                path.display(),
                text.len() - complete
            );
        }
        let recovered = parse_records(&text[..complete], format)
            .with_context(|| format!("cannot resume from results file {}", path.display()))?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open results file {}", path.display()))?;
        file.set_len(complete as u64)
            .with_context(|| format!("cannot trim results file {}", path.display()))?;
        let mut out = BufWriter::new(file);
        std::io::Seek::seek(&mut out, std::io::SeekFrom::End(0))?;
        let mut results = ResultsFile {
            path: path.to_owned(),
            format,
            out,
        };
        if format == ResultsFormat::Csv && complete == 0 {
            writeln!(results.out, "{CSV_HEADER}").map_err(|e| results.error(e))?;
        }
        Ok((results, recovered))
    }

    fn error(&self, e: std::io::Error) -> anyhow::Error {
        anyhow::anyhow!("cannot write results file {}: {e}", self.path.display())
    }

    pub fn record(
        &mut self,
        batch: u64,
        started_unix_ms: u64,
        worker: &str,
        r: &TaskResult,
    ) -> anyhow::Result<()> {
        let status = r.status.as_str();
        let written = match self.format {
            ResultsFormat::Csv => writeln!(
                self.out,
                "{batch:016x},{},{},{},{},{:016x},{status},{started_unix_ms},{}",
                r.id,
                r.workload_ms,
                r.wall_us,
                r.kernel_us,
                r.checksum,
                csv_field(worker),
            ),
            ResultsFormat::Jsonl => {
                let record = ResultRecord {
                    batch: format!("{batch:016x}"),
                    task: r.id,
                    worker: worker.to_owned(),
                    workload_ms: r.workload_ms,
                    wall_us: r.wall_us,
                    kernel_us: r.kernel_us,
                    checksum: format!("{:016x}", r.checksum),
                    status: status.to_owned(),
                    started_unix_ms,
                };
                serde_json::to_writer(&mut self.out, &record)
                    .map_err(std::io::Error::other)
                    .and_then(|()| writeln!(self.out))
            }
        };
        written.map_err(|e| self.error(e))
    }

    /// Writes out what is buffered and waits until it is on disk.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        self.out.flush().map_err(|e| self.error(e))?;
        self.out.get_ref().sync_data().map_err(|e| self.error(e))
    }
}

fn parse_records(text: &str, format: ResultsFormat) -> anyhow::Result<Option<RecoveredResults>> {
    let mut recovered: Option<RecoveredResults> = None;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() || (format == ResultsFormat::Csv && line == CSV_HEADER) {
            continue;
        }
        let record: ResultRecord = match format {
            ResultsFormat::Jsonl => serde_json::from_str(line)
                .with_context(|| format!("line {line_no} is not a results record"))?,
            ResultsFormat::Csv => {
                let f: Vec<&str> = line.splitn(9, ',').collect();
                let [batch, task, workload_ms, wall_us, kernel_us, checksum, status, started, worker] =
                    <[&str; 9]>::try_from(f)
                        .map_err(|_| anyhow::anyhow!("line {line_no} has fewer than 9 fields"))?;
                let number = |s: &str| -> anyhow::Result<u64> {
                    s.parse()
                        .with_context(|| format!("line {line_no}: {s:?} is not a number"))
                };
                let worker = worker
                    .strip_prefix('"')
                    .and_then(|w| w.strip_suffix('"'))
                    .map_or_else(|| worker.to_owned(), |w| w.replace("\"\"", "\""));
                ResultRecord {
                    batch: batch.to_owned(),
                    task: number(task)? as u32,
                    worker,
                    workload_ms: number(workload_ms)? as u32,
                    wall_us: number(wall_us)? as u32,
                    kernel_us: number(kernel_us)? as u32,
                    checksum: checksum.to_owned(),
                    status: status.to_owned(),
                    started_unix_ms: number(started)?,
                }
            }
        };
        let hex = |s: &str, what: &str| {
            u64::from_str_radix(s, 16).with_context(|| format!("line {line_no}: bad {what} {s:?}"))
        };
        let batch = hex(&record.batch, "batch id")?;
        let status = match record.status.as_str() {
            "ok" => crate::protocol::Status::Ok,
            "mismatch" => crate::protocol::Status::Mismatch,
            other => anyhow::bail!("line {line_no}: unknown status {other:?}"),
        };
        let result = TaskResult {
            id: record.task,
            workload_ms: record.workload_ms,
            status,
            wall_us: record.wall_us,
            kernel_us: record.kernel_us,
            checksum: hex(&record.checksum, "checksum")?,
        };
        let r = recovered.get_or_insert_with(|| RecoveredResults {
            batch,
            started_unix_ms: record.started_unix_ms,
            records: Vec::new(),
        });
        if r.batch != batch {
            anyhow::bail!(
                "line {line_no} is from batch {batch:016x}, earlier lines from {:016x}",
                r.batch
            );
        }
        r.records.push((record.task, record.worker, result));
    }
    Ok(recovered)
}

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            batch: "00000000000000ab".into(),
            tasks: 100,
            expected_ms: 5050,
            longest_ms: 100,
            elapsed_ms: 1300.0,
            ideal_ms: 1262.5,
            ideal_basis: "workload".into(),
            efficiency: 0.971,
            tasks_per_s: 76.9,
            duplicates: 0,
            redispatched: 0,
            rejected: 3,
            mismatches: 0,
            workers: vec![WorkerReport {
                id: "w1".into(),
                tasks: 100,
                busy_ms: 5060.0,
                kernel_ms: 0.0,
                backend: "sleep".into(),
                adapter: String::new(),
            }],
        }
    }

    #[test]
    fn text_starts_with_the_seeds_line() {
        let text = report().to_text();
        assert!(
            text.starts_with("Total elapsed time: 1300 msec\n"),
            "{text}"
        );
        assert!(text.contains("rejected 3"));
    }

    #[test]
    fn json_has_the_promised_keys() {
        let value = serde_json::to_value(report()).unwrap();
        for key in [
            "tasks",
            "expected_ms",
            "elapsed_ms",
            "ideal_ms",
            "efficiency",
            "duplicates",
            "redispatched",
            "rejected",
            "workers",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        for key in ["id", "tasks", "busy_ms", "backend"] {
            assert!(
                value["workers"][0].get(key).is_some(),
                "missing workers[].{key}"
            );
        }
    }

    #[test]
    fn results_files_round_trip_and_resume_past_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        for format in [ResultsFormat::Csv, ResultsFormat::Jsonl] {
            let path = dir.path().join(format!("r.{format:?}"));
            let mut file = ResultsFile::create(&path, format).unwrap();
            let r = TaskResult {
                id: 3,
                workload_ms: 7,
                status: crate::protocol::Status::Ok,
                wall_us: 7100,
                kernel_us: 0,
                checksum: 0xabc,
            };
            file.record(0xfeed, 1234, "box, \"one\"", &r).unwrap();
            file.record(0xfeed, 1234, "w2", &TaskResult { id: 4, ..r })
                .unwrap();
            file.sync().unwrap();
            drop(file);
            // A crash mid-write leaves half a line.
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend_from_slice(b"feed,5,1");
            std::fs::write(&path, &bytes).unwrap();

            let (mut file, recovered) = ResultsFile::resume(&path, format).unwrap();
            let recovered = recovered.unwrap();
            assert_eq!(recovered.batch, 0xfeed);
            assert_eq!(recovered.started_unix_ms, 1234);
            assert_eq!(recovered.records.len(), 2, "{format:?}");
            assert_eq!(recovered.records[0].1, "box, \"one\"");
            assert_eq!(recovered.records[0].2, r);
            file.record(0xfeed, 1234, "w3", &TaskResult { id: 5, ..r })
                .unwrap();
            file.sync().unwrap();
            drop(file);
            let (_, again) = ResultsFile::resume(&path, format).unwrap();
            let ids: Vec<u32> = again.unwrap().records.iter().map(|r| r.0).collect();
            assert_eq!(ids, vec![3, 4, 5], "{format:?}: the torn line is gone");
        }
    }

    #[test]
    fn results_format_follows_the_extension() {
        assert_eq!(
            ResultsFormat::from_path(Path::new("r.CSV")),
            ResultsFormat::Csv
        );
        assert_eq!(
            ResultsFormat::from_path(Path::new("r.jsonl")),
            ResultsFormat::Jsonl
        );
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}

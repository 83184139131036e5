//! Reports: the only module that writes to stdout. The sink's batch report (made in the
//! core's `report`) as text or one JSON object, the ventilator's "Total expected cost"
//! line, and the per-task results file the sink writes as results arrive.

pub use conquer_core::report::*;

use crate::protocol::TaskResult;
use anyhow::Context;
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Prints what `conquer calibrate` measured for one kernel.
pub fn print_calibration(c: &crate::calibrate::Calibration, json: bool) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        serde_json::to_writer(&mut out, c).context("writing the calibration")?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{}: {} units per ms on one CPU core ({} rounds of {} units, {:.0} ms measured)",
            c.kernel, c.units_per_ms, c.rounds, c.units_per_round, c.measured_ms
        )?;
        writeln!(
            out,
            "pass --units-per-ms {} to run, ventilator and bench so that one nominal ms is one core's ms \
             (the default is {})",
            c.units_per_ms,
            crate::kernels::spin::DEFAULT_UNITS_PER_MS
        )?;
    }
    out.flush().context("writing to stdout")
}

/// A line the Guide's classic programs print on stdout (taskvent's prompt and "Sending
/// tasks to workers..."), printed the same way by the classic roles.
pub fn print_classic_line(line: &str) {
    if crate::events::on_stdout() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// tasksink's progress, for a terminal: a colon every ten results, a dot otherwise.
pub fn print_classic_progress(received: u32) {
    if crate::events::on_stdout() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", if received % 10 == 0 { ":" } else { "." });
    let _ = out.flush();
}

/// Prints the seed's ventilator line.
pub fn print_expected_cost(expected_ms: u64) {
    if !crate::events::on_stdout() {
        println!("Total expected cost: {expected_ms} msec");
    }
}

/// Prints the report on stdout: text for people, or one JSON object.
/// Prints the report on stdout (JSON with `json`), and says it as the `complete`
/// event; with `--events -` only the event is written, so stdout stays JSON lines.
pub fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if crate::events::enabled() {
        let report = serde_json::to_value(report).context("writing the report as an event")?;
        crate::events::emit(&crate::events::Note::Complete { report });
    }
    if crate::events::on_stdout() {
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        // Worker names may hold invisible characters: escaped, the values unchanged.
        let text = serde_json::to_string(report).context("writing the JSON report")?;
        writeln!(out, "{}", crate::logging::json_printable(text))?;
    } else {
        out.write_all(report.to_text().as_bytes())?;
    }
    out.flush().context("writing the report to stdout")
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
    out: ResultsWriter,
}

enum ResultsWriter {
    Csv(Box<csv::Writer<File>>),
    Jsonl(BufWriter<File>),
}

/// A results record, one per task held: the batch, who ran the task, when (the worker's
/// wall clock), and what it came to.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
struct ResultRecord {
    batch: String,
    batch_tasks: u32,
    batch_started_unix_ms: u64,
    task: u32,
    worker: String,
    backend: String,
    workload_ms: u32,
    started_unix_ms: u64,
    finished_unix_ms: u64,
    wall_us: u32,
    kernel_us: u32,
    checksum: String,
    status: String,
    /// A divisible job's items, and the chunk's: absent (0) for a task list's records.
    #[serde(default)]
    batch_items: u64,
    #[serde(default)]
    first: u64,
    #[serde(default)]
    items: u32,
    /// A search job stopped at its hits: the job's `--hits`, and this chunk's hits
    /// (keys, space-separated), so a resumed sink knows how many it holds.
    #[serde(default)]
    batch_hits_wanted: u64,
    #[serde(default)]
    hits: String,
}

/// A results path that names a directory: neither `--resume` nor `--overwrite` can help,
/// so the error says what to name instead.
fn refuse_directory(path: &Path, format: ResultsFormat) -> anyhow::Result<()> {
    if path.is_dir() {
        let name = match format {
            ResultsFormat::Csv => "results.csv",
            ResultsFormat::Jsonl => "results.jsonl",
        };
        anyhow::bail!(
            "results file {} is a directory: name a file, such as {}",
            path.display(),
            path.join(name).display()
        );
    }
    Ok(())
}

impl ResultsFile {
    /// Starts a results file. An existing file that holds anything is refused unless
    /// `overwrite`: results are not wiped by accident.
    pub fn create(
        path: &Path,
        format: ResultsFormat,
        overwrite: bool,
    ) -> anyhow::Result<ResultsFile> {
        refuse_directory(path, format)?;
        if !overwrite {
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.len() > 0 {
                    anyhow::bail!(
                        "results file {} already holds {} bytes: pass --resume to continue the batch it \
                         records, or --overwrite to start afresh and replace it",
                        path.display(),
                        meta.len()
                    );
                }
            }
        }
        // Never through a link: the sink may run as a service user in a shared directory.
        let file = crate::files::create_file(path, "results file", false)?;
        Ok(ResultsFile::over(path, format, file, true))
    }

    fn over(path: &Path, format: ResultsFormat, file: File, header: bool) -> ResultsFile {
        let out = match format {
            ResultsFormat::Csv => ResultsWriter::Csv(Box::new(
                csv::WriterBuilder::new()
                    .has_headers(header)
                    .from_writer(file),
            )),
            ResultsFormat::Jsonl => ResultsWriter::Jsonl(BufWriter::new(file)),
        };
        ResultsFile {
            path: path.to_owned(),
            format,
            out,
        }
    }

    /// Reopens a results file to append to it, after reading what it holds. A last line
    /// cut short by a crash is cut off. A missing file starts afresh.
    pub fn resume(
        path: &Path,
        format: ResultsFormat,
    ) -> anyhow::Result<(ResultsFile, Option<RecoveredResults>)> {
        refuse_directory(path, format)?;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read results file {}", path.display()))
            }
        };
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
        let file = crate::files::create_file(path, "results file", true)?;
        file.set_len(complete as u64)
            .with_context(|| format!("cannot trim results file {}", path.display()))?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
            .with_context(|| format!("cannot append to results file {}", path.display()))?;
        Ok((
            ResultsFile::over(path, format, file, complete == 0),
            recovered,
        ))
    }

    fn error(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("cannot write results file {}: {e}", self.path.display())
    }

    /// Appends one task's record (buffered; [`ResultsFile::sync`] makes it durable).
    pub fn record(
        &mut self,
        header: &BatchHeader,
        worker: &str,
        backend: &str,
        r: &TaskResult,
    ) -> anyhow::Result<()> {
        let record = ResultRecord {
            batch: format!("{:016x}", header.batch),
            batch_tasks: header.tasks,
            batch_started_unix_ms: header.started_unix_ms,
            task: r.id,
            worker: worker.to_owned(),
            backend: backend.to_owned(),
            workload_ms: r.workload_ms,
            started_unix_ms: r.started_unix_ms,
            finished_unix_ms: r.finished_unix_ms,
            wall_us: r.wall_us,
            kernel_us: r.kernel_us,
            checksum: format!("{:016x}", r.checksum),
            status: r.status.as_str().to_owned(),
            batch_items: header.items,
            first: r.first,
            items: r.items,
            batch_hits_wanted: header.hits_wanted,
            hits: if header.hits_wanted > 0 {
                crate::kernels::search::hits(&r.output)
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                String::new()
            },
        };
        let written = match &mut self.out {
            ResultsWriter::Csv(w) => w.serialize(&record).map_err(|e| e.to_string()),
            ResultsWriter::Jsonl(w) => serde_json::to_writer(&mut *w, &record)
                .map_err(|e| e.to_string())
                .and_then(|()| writeln!(w).map_err(|e| e.to_string())),
        };
        written.map_err(|e| self.error(e))
    }

    /// Writes out what is buffered and waits until it is on disk.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        let synced = match &mut self.out {
            ResultsWriter::Csv(w) => w.flush().and_then(|()| w.get_ref().sync_data()),
            ResultsWriter::Jsonl(w) => w.flush().and_then(|()| w.get_ref().sync_data()),
        };
        synced.map_err(|e| self.error(e))
    }

    pub fn format(&self) -> ResultsFormat {
        self.format
    }

    /// Bytes in the file as written so far (what is still buffered not counted).
    pub fn bytes(&self) -> u64 {
        let file = match &self.out {
            ResultsWriter::Csv(w) => w.get_ref(),
            ResultsWriter::Jsonl(w) => w.get_ref(),
        };
        file.metadata().map_or(0, |m| m.len())
    }
}

/// Reads every record; a value out of its field's range, a bad hex field or a record of
/// another batch is an error naming the line, never truncated or skipped.
fn parse_records(text: &str, format: ResultsFormat) -> anyhow::Result<Option<RecoveredResults>> {
    let mut records: Vec<(usize, ResultRecord)> = Vec::new();
    match format {
        ResultsFormat::Jsonl => {
            for (index, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let record = serde_json::from_str(line)
                    .with_context(|| format!("line {} is not a results record", index + 1))?;
                records.push((index + 1, record));
            }
        }
        ResultsFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(text.as_bytes());
            let headers = reader
                .headers()
                .map_err(|e| anyhow::anyhow!("line 1: {e}"))?
                .clone();
            for row in reader.records() {
                let row = row.map_err(|e| {
                    let line = e.position().map_or(0, |p| p.line());
                    anyhow::anyhow!("line {line}: {e}")
                })?;
                let line = row.position().map_or(0, |p| p.line()) as usize;
                let record = row
                    .deserialize(Some(&headers))
                    .map_err(|e| anyhow::anyhow!("line {line}: {e}"))?;
                records.push((line, record));
            }
        }
    }
    let mut recovered: Option<RecoveredResults> = None;
    for (line_no, record) in records {
        let hex = |s: &str, what: &str| {
            u64::from_str_radix(s, 16).with_context(|| format!("line {line_no}: bad {what} {s:?}"))
        };
        let header = BatchHeader {
            batch: hex(&record.batch, "batch id")?,
            tasks: record.batch_tasks,
            items: record.batch_items,
            hits_wanted: record.batch_hits_wanted,
            started_unix_ms: record.batch_started_unix_ms,
        };
        let hits = record
            .hits
            .split_whitespace()
            .map(|k| k.parse::<u32>())
            .collect::<Result<Vec<u32>, _>>()
            .with_context(|| format!("line {line_no}: bad hits {:?}", record.hits))?;
        let status = match crate::protocol::Status::parse(&record.status) {
            Some(s) if s != crate::protocol::Status::Failed => s,
            _ => anyhow::bail!("line {line_no}: unknown status {:?}", record.status),
        };
        if header.items > 0 {
            let end = record.first.saturating_add(u64::from(record.items));
            if record.items == 0 || end > header.items {
                anyhow::bail!(
                    "line {line_no}: items {}..{end} are outside its job of {} items",
                    record.first,
                    header.items
                );
            }
        } else if record.task >= header.tasks {
            anyhow::bail!(
                "line {line_no}: task {} is outside its batch of {} tasks",
                record.task,
                header.tasks
            );
        }
        let result = TaskResult {
            id: record.task,
            workload_ms: record.workload_ms,
            status,
            wall_us: record.wall_us,
            kernel_us: record.kernel_us,
            checksum: hex(&record.checksum, "checksum")?,
            started_unix_ms: record.started_unix_ms,
            finished_unix_ms: record.finished_unix_ms,
            first: record.first,
            items: record.items,
            ..TaskResult::default()
        };
        let r = recovered.get_or_insert_with(|| RecoveredResults {
            header,
            records: Vec::new(),
        });
        if r.header != header {
            anyhow::bail!(
                "line {line_no} is from batch {:016x} of {} tasks started at {}, earlier lines from \
                 {:016x} of {} started at {}",
                header.batch,
                header.tasks,
                header.started_unix_ms,
                r.header.batch,
                r.header.tasks,
                r.header.started_unix_ms
            );
        }
        r.records.push(RecoveredRecord {
            worker: record.worker,
            backend: record.backend,
            result,
            hits,
        });
    }
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            failed: Vec::new(),
            replicated: 0,
            unconfirmed: 0,
            replica_mismatches: Vec::new(),
            quarantined: Vec::new(),
            batch: "00000000000000ab".into(),
            tasks: 100,
            expected_ms: 5050,
            longest_ms: 100,
            elapsed_ms: 1300.0,
            finished_ms: 1300.0,
            ideal_ms: 1262.5,
            ideal_basis: "workload".into(),
            efficiency: 0.971,
            tasks_per_s: 76.9,
            duplicates: 0,
            redispatched: 0,
            rejected: 3,
            refused: 2,
            checked: 0,
            verified: 0,
            mismatches: 0,
            compared: 0,
            differing: 0,
            outputs: 0,
            outputs_dir: None,
            wire: Default::default(),
            picture: None,
            hits: Vec::new(),
            job: None,
            workers: vec![WorkerReport {
                id: "w1".into(),
                tasks: 100,
                busy_ms: 5060.0,
                kernel_ms: 0.0,
                device_share: None,
                dispatches: 0,
                input_bytes: 0,
                output_bytes: 0,
                backend: "sleep".into(),
                adapter: String::new(),
                items: 0,
                items_per_s: 0.0,
                finished_ms: 0.0,
            }],
        }
    }

    #[test]
    fn the_finished_line_is_said_only_when_something_was_written_after_the_last_result() {
        let mut r = report();
        // The ventilator's last counters arrived 3 ms after the last result.
        r.finished_ms = r.elapsed_ms + 3.0;
        assert!(!r.to_text().contains("Finished"), "{}", r.to_text());
        r.picture = Some("m.png".into());
        assert!(
            r.to_text().contains("Finished, picture on disk: 1303 msec"),
            "{}",
            r.to_text()
        );
        r.outputs_dir = Some("out".into());
        assert!(
            r.to_text()
                .contains("Finished, outputs and picture on disk: 1303 msec"),
            "{}",
            r.to_text()
        );
        r.picture = None;
        assert!(
            r.to_text().contains("Finished, outputs on disk: 1303 msec"),
            "{}",
            r.to_text()
        );
        r.finished_ms = r.elapsed_ms + 0.5;
        assert!(!r.to_text().contains("Finished"), "{}", r.to_text());
    }

    #[test]
    fn a_device_workers_line_gives_its_busy_share_dispatches_and_bytes() {
        let mut r = report();
        let text = r.to_text();
        assert!(
            !text.contains("dispatches"),
            "no device, no device columns: {text}"
        );
        assert!(!text.contains(" out "), "no data, no byte columns: {text}");
        r.workers.push(WorkerReport {
            id: "gpu-1".into(),
            kernel_ms: 900.0,
            device_share: Some(0.75),
            dispatches: 4096,
            input_bytes: 3 << 20,
            output_bytes: 35_232_000,
            backend: "gpu".into(),
            adapter: "card".into(),
            ..r.workers[0].clone()
        });
        let text = r.to_text();
        let header = text
            .lines()
            .find(|l| l.starts_with("worker "))
            .expect("a workers table");
        for column in ["device", "dispatches", "in", "out"] {
            assert!(header.split_whitespace().any(|c| c == column), "{header}");
        }
        let line = text
            .lines()
            .find(|l| l.starts_with("gpu-1"))
            .expect("its line");
        for cell in ["75%", "4096", "3.00 MiB", "33.6 MiB"] {
            assert!(line.contains(cell), "{cell} in {line}");
        }
        let sleep = text
            .lines()
            .find(|l| l.starts_with("w1 "))
            .expect("its line");
        assert!(
            sleep.contains(" - "),
            "no device share without device time: {sleep}"
        );
    }

    #[test]
    fn text_starts_with_the_seeds_line() {
        let text = report().to_text();
        assert!(
            text.starts_with("Total elapsed time: 1300 msec\n"),
            "{text}"
        );
        assert!(text.contains("rejected 3, refused 2"));
    }

    #[test]
    fn a_name_that_would_reverse_the_line_is_shown_escaped() {
        let mut r = report();
        r.workers[0].id = "w\u{202e}1".into();
        let text = r.to_text();
        assert!(!text.contains('\u{202e}'), "{text}");
        assert!(text.contains("w\\u{202e}1"), "{text}");
    }

    #[test]
    fn json_has_the_promised_keys() {
        let value = serde_json::to_value(report()).unwrap();
        for key in [
            "tasks",
            "expected_ms",
            "elapsed_ms",
            "finished_ms",
            "ideal_ms",
            "efficiency",
            "duplicates",
            "redispatched",
            "rejected",
            "refused",
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

    fn sample_result(id: u32) -> TaskResult {
        TaskResult {
            id,
            workload_ms: 7,
            status: crate::protocol::Status::Ok,
            wall_us: 7100,
            kernel_us: 0,
            checksum: 0xabc,
            started_unix_ms: 1_800_000_000_000 + u64::from(id),
            finished_unix_ms: 1_800_000_000_007 + u64::from(id),
            ..TaskResult::default()
        }
    }

    const HEADER: BatchHeader = BatchHeader {
        batch: 0xfeed,
        tasks: 6,
        items: 0,
        hits_wanted: 0,
        started_unix_ms: 1234,
    };

    #[test]
    fn a_results_path_naming_a_directory_is_refused_whatever_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let errors = [
            ResultsFile::create(dir.path(), ResultsFormat::Csv, false).err(),
            ResultsFile::create(dir.path(), ResultsFormat::Csv, true).err(),
            ResultsFile::resume(dir.path(), ResultsFormat::Jsonl).err(),
        ];
        for e in errors {
            let e = format!("{:#}", e.expect("a directory is refused"));
            assert!(e.contains("is a directory: name a file"), "{e}");
            assert!(!e.contains("--overwrite"), "advice that cannot work: {e}");
        }
    }

    #[test]
    fn results_files_round_trip_and_resume_past_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        for format in [ResultsFormat::Csv, ResultsFormat::Jsonl] {
            let path = dir.path().join(format!("r.{format:?}"));
            let mut file = ResultsFile::create(&path, format, false).unwrap();
            let r = sample_result(3);
            file.record(&HEADER, "box, \"one\"\nline", "sleep", &r)
                .unwrap();
            file.record(&HEADER, "w2", "cpu", &sample_result(4))
                .unwrap();
            file.sync().unwrap();
            drop(file);
            // A crash mid-write leaves half a line.
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend_from_slice(b"feed,5,1");
            std::fs::write(&path, &bytes).unwrap();

            let (mut file, recovered) = ResultsFile::resume(&path, format).unwrap();
            let recovered = recovered.unwrap();
            assert_eq!(recovered.header, HEADER);
            assert_eq!(recovered.records.len(), 2, "{format:?}");
            assert_eq!(recovered.records[0].worker, "box, \"one\"\nline");
            assert_eq!(recovered.records[0].result, r);
            assert_eq!(recovered.records[1].backend, "cpu");
            file.record(&HEADER, "w3", "sleep", &sample_result(5))
                .unwrap();
            file.sync().unwrap();
            drop(file);
            let (_, again) = ResultsFile::resume(&path, format).unwrap();
            let ids: Vec<u32> = again.unwrap().records.iter().map(|r| r.result.id).collect();
            assert_eq!(ids, vec![3, 4, 5], "{format:?}: the torn line is gone");
        }
    }

    #[test]
    fn an_existing_results_file_is_not_wiped_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, "something\n").unwrap();
        let e = ResultsFile::create(&path, ResultsFormat::Csv, false)
            .err()
            .expect("refused");
        let text = format!("{e:#}");
        assert!(
            text.contains("--resume") && text.contains("--overwrite"),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "something\n");
        ResultsFile::create(&path, ResultsFormat::Csv, true).unwrap();
        // An empty file is no loss.
        ResultsFile::create(&path, ResultsFormat::Csv, false).unwrap();
    }

    #[test]
    fn out_of_range_values_are_errors_naming_the_line_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        for format in [ResultsFormat::Csv, ResultsFormat::Jsonl] {
            let path = dir.path().join(format!("r.{format:?}"));
            let mut file = ResultsFile::create(&path, format, false).unwrap();
            file.record(&HEADER, "w", "sleep", &sample_result(2))
                .unwrap();
            file.sync().unwrap();
            drop(file);
            // Task 2^32 + 3 would read as task 3 through a truncating cast.
            let text = std::fs::read_to_string(&path).unwrap();
            let forged = match format {
                ResultsFormat::Csv => text.replacen(",2,w,", ",4294967299,w,", 1),
                ResultsFormat::Jsonl => text.replacen("\"task\":2,", "\"task\":4294967299,", 1),
            };
            assert_ne!(forged, text, "{format:?}: the forgery applies");
            std::fs::write(&path, forged).unwrap();
            let e = ResultsFile::resume(&path, format).err().expect("refused");
            let text = format!("{e:#}");
            let line = if format == ResultsFormat::Csv {
                "line 2"
            } else {
                "line 1"
            };
            assert!(text.contains(line), "{format:?}: {text}");
        }
    }

    #[test]
    fn a_file_holding_every_task_is_complete() {
        let mut r = RecoveredResults {
            header: BatchHeader { tasks: 2, ..HEADER },
            records: vec![RecoveredRecord {
                worker: "w".into(),
                backend: "sleep".into(),
                result: sample_result(1),
                hits: Vec::new(),
            }],
        };
        assert!(!r.is_complete());
        r.records.push(RecoveredRecord {
            worker: "w".into(),
            backend: "sleep".into(),
            result: sample_result(0),
            hits: Vec::new(),
        });
        assert!(r.is_complete());
    }

    #[test]
    fn a_search_job_that_has_its_hits_is_complete_and_its_hits_survive_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let header = BatchHeader {
            tasks: 0,
            items: 1000,
            hits_wanted: 3,
            ..HEADER
        };
        let mut file = ResultsFile::create(&path, ResultsFormat::Jsonl, false).unwrap();
        // Chunks of 100 keys with 2, 0 and 2 hits (one of them seen twice).
        for (first, hits) in [(0u64, vec![7u32, 42]), (100, vec![]), (200, vec![42, 250])] {
            let mut output = (hits.len() as u32).to_le_bytes().to_vec();
            for k in &hits {
                output.extend_from_slice(&k.to_le_bytes());
            }
            let r = TaskResult {
                first,
                items: 100,
                output,
                ..sample_result(0)
            };
            file.record(&header, "w", "cpu", &r).unwrap();
            file.sync().unwrap();
            let (_, recovered) = ResultsFile::resume(&path, ResultsFormat::Jsonl).unwrap();
            let recovered = recovered.unwrap();
            assert_eq!(recovered.header, header);
            assert_eq!(recovered.records.last().unwrap().hits, hits);
            // 7 and 42, then 7, 42 and 250: three distinct hits complete it.
            assert_eq!(recovered.is_complete(), first == 200, "after chunk {first}");
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
    }
}

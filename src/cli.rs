//! The command line: clap definitions and the glue that turns flags into role configs.
//! Errors print as `conquer: {err:#}` on stderr; exit 0 success, 1 failure, 2 usage,
//! 130 interrupted by Ctrl-C, 143 by SIGTERM.

use crate::backend::{self, Backend, BackendKind};
use crate::batch::{Batch, Job, Order};
use crate::chunking::{Plan, Policy};
use crate::heartbeat::Heartbeat;
use crate::kernels::Kernel;
use crate::protocol::control::{JobView, Reply, Request};
use crate::report::ResultsFormat;
use crate::shutdown::{self, Shutdown};
use crate::sink::{Sink, SinkConfig};
use crate::ventilator::{Ventilator, VentilatorConfig};
use crate::worker::{self, WorkerConfig};
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A flag's environment variable: `1`, `true`, `yes`, `on` set it, `0`, `false`, `no`,
/// `off` leave it unset, anything else (an empty value too) is refused naming the flag.
fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

#[derive(Parser, Debug)]
#[command(
    name = "conquer",
    version,
    about = "Divide and conquer over ZeroMQ: a ventilator hands out tasks, workers run them \
             (WGSL compute shaders on a GPU, or sleep), a sink collects and reports",
    after_help = "Without a command, `conquer` runs `conquer run`: the seed's batch (100 tasks of 1-100 ms) on 4 workers in one process."
)]
pub struct Cli {
    /// More logging on stderr: -v connections and batch events, -vv per-worker flow,
    /// -vvv per-task events.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Logging")]
    pub verbose: u8,
    /// Less logging on stderr: only warnings and errors (the report on stdout is unchanged).
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Logging"
    )]
    pub quiet: bool,
    /// Log filter in `target=level` form, applied after what -v or -q sets (e.g.
    /// `wgpu_hal=info`); a bare level (`warn`) sets conquer's own, lower or higher. Other
    /// crates log only when named here or in RUST_LOG.
    #[arg(
        long,
        env = "CONQUER_LOG",
        value_name = "FILTER",
        global = true,
        help_heading = "Logging",
        value_parser = crate::logging::parse_filter
    )]
    pub log: Option<String>,
    /// Largest task input or output this process sends or accepts, in bytes (suffixes K, M,
    /// G: powers of 1024). Every role of a batch needs it at least as large as the biggest
    /// payload; larger inputs are refused before anything binds.
    #[arg(long, env = "CONQUER_MAX_PAYLOAD", value_name = "BYTES", global = true, value_parser = parse_bytes)]
    pub max_payload: Option<u64>,
    /// Write what this process observes as JSON lines to FILE (- for stdout, where the
    /// report then travels as the `complete` event; a file is appended to): sockets
    /// listening, ready, phases, workers
    /// joining and lost, batches starting and complete with the report.
    #[arg(
        long,
        env = "CONQUER_EVENTS",
        value_name = "FILE",
        global = true,
        help_heading = "Logging"
    )]
    pub events: Option<PathBuf>,
    /// Send task inputs (ventilator) and outputs (worker) raw: no LZ4 on the wire, even
    /// where it would pay. A worker with it asks for raw inputs too, a sink for raw outputs.
    #[arg(long, env = "CONQUER_NO_COMPRESS", global = true, value_parser = boolish())]
    pub no_compress: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

const EXAMPLES_RUN: &str = "Examples:
  conquer run --tasks 200 --workers 8            # the seed's batch, larger
  conquer run --kernel mandelbrot --backend software --image m.png --verify
  conquer run --results r.csv                    # records each task; after Ctrl-C:
  conquer run --results r.csv --resume           # finishes that batch
  conquer run --http 127.0.0.1:8080              # and `conquer status` in another shell";

const EXAMPLES_VENTILATOR: &str = "Examples:
  conquer ventilator --tasks 1000 --wait-workers 4 --secret-file farm.key
  conquer ventilator --kernel search --bits 24 --chunking adaptive --http 127.0.0.1:8080";

const EXAMPLES_WORKER: &str = "Examples:
  conquer worker --ventilator tcp://vent:5557 --sink tcp://sink:5558 --secret-file farm.key
  CONQUER_VENTILATOR=tcp://vent:5557 CONQUER_SINK=tcp://sink:5558 conquer worker --backend gpu";

const EXAMPLES_SINK: &str = "Examples:
  conquer sink --results r.csv --secret-file farm.key
  conquer sink --results r.csv --resume --secret-file farm.key   # after a crash";

/// What the man page says beyond the flags: exit status, environment and files.
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
0
success: the batch completed and every check passed.
.TP
1
failure: a role could not start or stopped with an error, or the batch failed (a task given up on, a result that differs from the reference).
.TP
2
usage: a flag or value that cannot be used.
.TP
3
a worker with \-\-exit\-when\-done heard of no batch within \-\-wait\-timeout.
.TP
130, 143
interrupted by Ctrl\-C (SIGINT) or SIGTERM; a second Ctrl\-C exits at once.
.SH ENVIRONMENT
Most flags can come from a variable, CONQUER_ and the flag's name (each flag's \-\-help shows it): CONQUER_VENTILATOR, CONQUER_SINK, CONQUER_BACKEND, CONQUER_NAME, CONQUER_RESULTS, CONQUER_HTTP (the ventilator's live view, and where \fBconquer status\fR looks), CONQUER_LOG, CONQUER_EVENTS. A flag on the command line wins.
.TP
RUST_LOG
a log filter when \-\-log is not given; a bare level (warn) sets this program's.
.TP
VK_DRIVER_FILES, VK_ICD_FILENAMES, WGPU_BACKEND
which Vulkan drivers and graphics APIs wgpu may use; \fBconquer info\fR reports what it finds.
.SH FILES
.TP
\-\-results FILE
one record per task (CSV, or JSON Lines), synced before a task counts as held; \-\-resume continues from it.
.TP
\-\-events FILE
what each role observes, one JSON object a line (\- for stdout).
.TP
\-\-secret\-file FILE
the farm's shared secret, mode 0600 (\fBconquer secret new FILE\fR).
.TP
\-\-outputs DIR, \-\-image FILE.png, \-\-timeline FILE.json
task outputs, the Mandelbrot picture and the Chrome trace the sink writes.
.SH EXAMPLES
.nf
conquer run
conquer run \-\-kernel mandelbrot \-\-backend software \-\-image m.png \-\-verify
conquer sink \-\-results r.csv \-\-secret\-file farm.key
conquer ventilator \-\-tasks 1000 \-\-wait\-workers 4 \-\-secret\-file farm.key
conquer worker \-\-ventilator tcp://vent:5557 \-\-sink tcp://sink:5558 \-\-secret\-file farm.key
.fi
"#;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run sink, ventilator and workers in one process over loopback (what bare `conquer` runs).
    #[command(after_long_help = EXAMPLES_RUN)]
    Run(RunArgs),
    /// The ventilator: makes or reads a batch, waits for workers, hands out tasks on credit.
    #[command(visible_alias = "vent", after_long_help = EXAMPLES_VENTILATOR)]
    Ventilator(VentilatorArgs),
    /// A worker: connects to the ventilator and the sink and runs tasks on a backend.
    #[command(visible_alias = "work", after_long_help = EXAMPLES_WORKER)]
    Worker(WorkerArgs),
    /// The sink: collects results, counts each task once, reports the batch.
    #[command(after_long_help = EXAMPLES_SINK)]
    Sink(SinkArgs),
    /// Benchmarks: scaling, backends, classic vs credit, throughput, latency, devices.
    Bench(crate::bench::BenchArgs),
    /// What this machine offers: libzmq version, GPU adapters, and why no GPU is visible.
    Info(InfoArgs),
    /// Print a shell completion script: `conquer completions bash > /etc/bash_completion.d/conquer`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `conquer man | man -l -`; with --dir, write one page per
    /// command there (conquer.1, conquer-run.1, …).
    Man {
        /// Folder to write every command's page into.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Measure how many kernel work units one CPU core does per ms (the `cpu` backend):
    /// pass the figure as --units-per-ms so that sleep's millisecond is one core's.
    Calibrate(CalibrateArgs),
    /// Print a running ventilator's live view (`--http`) as a table.
    Status(StatusArgs),
    /// A coordinator that stays up: jobs submitted to it (`conquer submit`) run on the
    /// workers that stay connected, up to --max-running at once sharing them by priority,
    /// the rest queued; its state directory keeps the queue, each job's results and
    /// report, and a job cut off by a restart resumes.
    Serve(ServeArgs),
    /// Submit a job (a task list) to a coordinator; prints the job's id.
    Submit(SubmitArgs),
    /// List a coordinator's jobs: queued, running, done, failed, cancelled.
    Jobs(JobsArgs),
    /// Cancel a queued or running job (what was done stays kept).
    Cancel(CancelArgs),
    /// A finished job's report, or where the job stands, and where its files are.
    Results(ResultsArgs),
    /// Make or check the shared secret that admits ventilator, workers and sink to each
    /// other (`--secret-file`).
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretAction {
    /// Write a new random secret (256 bits, as hex) to FILE with mode 0600; copy it to
    /// every machine of the farm the same way (scp -p, or your secrets manager).
    New {
        /// Where to write it.
        file: PathBuf,
        /// Replace FILE if it exists (every role must then get the new one).
        #[arg(long)]
        force: bool,
    },
    /// Check that FILE is a usable secret: a file only its owner can read, 32 to 127 bytes.
    Check {
        /// The secret file.
        file: PathBuf,
    },
    /// Print the token the live view (`--http` on a non-loopback address) asks for,
    /// derived from FILE: it lets a reader see the farm, not join it.
    Token {
        /// The secret file.
        file: PathBuf,
    },
}

/// The shared secret a role presents and demands.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Security")]
pub struct SecretArgs {
    /// Shared secret, a file made by `conquer secret new` (mode 0600): bound sockets admit
    /// only peers presenting it, connecting sockets present it. Give every role the same one.
    #[arg(long, env = "CONQUER_SECRET_FILE", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

impl SecretArgs {
    pub fn access(&self) -> anyhow::Result<crate::auth::Access> {
        Ok(crate::auth::Access {
            secret: self
                .secret_file
                .as_deref()
                .map(crate::auth::Secret::load)
                .transpose()?,
            ..Default::default()
        })
    }
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The ventilator's live view, as given to its --http (HOST:PORT or http://HOST:PORT);
    /// CONQUER_HTTP, which the ventilator reads too, sets it for both.
    #[arg(
        long,
        env = "CONQUER_HTTP",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub http: String,
    /// Refresh every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Print the JSON instead of a table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    #[command(flatten)]
    pub secret: SecretArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The state directory: the job queue's journal, and each job's tasks, results file and
    /// report (made if missing).
    #[arg(
        long,
        env = "CONQUER_STATE",
        value_name = "DIR",
        default_value = "/var/lib/conquer"
    )]
    pub state: PathBuf,
    /// Endpoint of the farm's tasks socket, shared by every job; workers connect here.
    #[arg(long, env = "CONQUER_VENTILATOR_BIND", default_value = "tcp://*:5557")]
    pub bind: String,
    /// Endpoint of the farm's results socket, shared by every job; workers connect here
    /// too.
    #[arg(long, env = "CONQUER_SINK_BIND", default_value = "tcp://*:5558")]
    pub results_bind: String,
    /// Endpoint of the control socket that `submit`, `jobs`, `cancel` and `results` use:
    /// loopback only, unless --secret-file is given (then every client needs it too).
    #[arg(long, env = "CONQUER_CONTROL", default_value = "tcp://127.0.0.1:5559")]
    pub control: String,
    /// Jobs queued or running at once; more are refused until some finish.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_jobs: u64,
    /// Jobs running at once, sharing the workers by their --priority; the rest wait in
    /// the queue.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_running: u64,
    /// Largest submission, in bytes (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_bytes)]
    pub max_input: u64,
    /// Submissions may name input files under DIR on this machine (`submit
    /// --inputs-on-coordinator`) instead of sending them.
    #[arg(long, env = "CONQUER_INPUTS_DIR", value_name = "DIR")]
    pub inputs_dir: Option<PathBuf>,
    /// Serve a live page (`/`), the status as JSON (`/api/status`, the jobs listed) and
    /// Prometheus metrics (`/metrics`, per-job series labelled by job id) on HOST:PORT. A
    /// non-loopback address needs --secret-file (clients send the status token) or
    /// --allow or --insecure.
    #[arg(long, env = "CONQUER_HTTP", value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Finished jobs kept (their reports and results files); older ones are removed.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub keep: u64,
    /// And for at most this long after they end, e.g. 30d, 12h, 90m (0: kept by count
    /// alone).
    #[arg(long, value_name = "AGE", default_value = "0", value_parser = parse_age)]
    pub keep_for: u64,
    #[command(flatten)]
    pub heartbeat: HeartbeatArgs,
    #[command(flatten)]
    pub access: AccessArgs,
}

/// Where the coordinator listens.
#[derive(Args, Debug, Clone)]
pub struct CoordinatorArgs {
    /// The coordinator's control endpoint (its `serve --control`).
    #[arg(
        long,
        env = "CONQUER_COORDINATOR",
        default_value = "tcp://127.0.0.1:5559"
    )]
    pub coordinator: String,
    /// Seconds to wait for its answer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// The farm's secret, when the coordinator has one: requests carry the submit token
    /// derived from it.
    #[command(flatten)]
    pub secret: SecretArgs,
}

impl CoordinatorArgs {
    fn ask(&self, request: &crate::protocol::control::Request) -> anyhow::Result<Reply> {
        self.ask_with(request, &[])
    }

    /// [`CoordinatorArgs::ask`], with `frames` (a submission's input files) after the
    /// request.
    fn ask_with(
        &self,
        request: &crate::protocol::control::Request,
        frames: &[Vec<u8>],
    ) -> anyhow::Result<Reply> {
        let token = self
            .secret
            .access()?
            .secret
            .map(|s| s.submit_token())
            .unwrap_or_default();
        // A large submission takes its time to cross and to be written and checked.
        let bytes: usize = frames.iter().map(Vec::len).sum();
        let timeout =
            Duration::from_secs(self.timeout) + Duration::from_secs_f64(bytes as f64 / 20e6);
        match crate::serve::ask_with(&self.coordinator, request, frames, &token, timeout)? {
            Reply::Refused { reason } => bail!("the coordinator refused: {reason}"),
            reply => Ok(reply),
        }
    }
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The job, as `conquer ventilator` takes it: a task list (a tasks file travels with
    /// the submission), a data kernel, a user kernel with its inputs (they travel too), a
    /// divisible job.
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// What to call the job in `conquer jobs` (default: the tasks file's, the kernel
    /// file's or the kernel's name, or "seeded").
    #[arg(long)]
    pub name: Option<String>,
    /// The job's weight when several share the workers (at least 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub priority: u32,
    /// --inputs names files on the coordinator (a glob relative to its --inputs-dir)
    /// instead of files here: they are not sent.
    #[arg(long, requires = "inputs")]
    pub inputs_on_coordinator: bool,
    /// Follow the job to its end and print its report; exit 0 when it is done, 1 when it
    /// failed or was cancelled.
    #[arg(long)]
    pub wait: bool,
    /// With --wait, print the report as JSON.
    #[arg(long, requires = "wait")]
    pub json: bool,
    #[command(flatten)]
    pub coordinator: CoordinatorArgs,
}

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Print the jobs as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub coordinator: CoordinatorArgs,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The job's id (`conquer jobs` lists them).
    pub id: u64,
    #[command(flatten)]
    pub coordinator: CoordinatorArgs,
}

#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// The job's id.
    pub id: u64,
    /// Print the report (or the job's state) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub coordinator: CoordinatorArgs,
}

/// The live view.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Live view")]
pub struct HttpArgs {
    /// Serve a live page (`/`), Prometheus metrics (`/metrics`) and the status as JSON
    /// (`/api/status`) on HOST:PORT, e.g. 127.0.0.1:8080. A non-loopback address needs
    /// --secret-file (clients send it as a bearer token) or --insecure.
    #[arg(long, env = "CONQUER_HTTP", value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// Keep serving the final state this many seconds after the batch ends, so that
    /// `conquer status --watch`, the page and scrapers see it finished (0: stop at once).
    #[arg(long, default_value_t = 5.0, requires = "http", value_name = "SECONDS")]
    pub http_linger: f64,
}

impl HttpArgs {
    fn linger(&self) -> anyhow::Result<Duration> {
        if self.http_linger == 0.0 {
            return Ok(Duration::ZERO);
        }
        seconds(self.http_linger, "--http-linger")
    }
}

/// Who may connect to a role's bound sockets.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Security")]
pub struct AccessArgs {
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Admit connections only from this address range (repeatable or comma-separated:
    /// 10.0.0.0/8, 192.168.1.7, fd00::/8), with or without a secret.
    #[arg(
        long,
        env = "CONQUER_ALLOW",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow: Vec<crate::auth::Cidr>,
    /// Bind an address other machines can reach with neither --secret-file nor --allow:
    /// anyone who reaches it may take tasks and submit results.
    #[arg(long, env = "CONQUER_INSECURE", value_parser = boolish())]
    pub insecure: bool,
}

impl AccessArgs {
    pub fn access(&self) -> anyhow::Result<crate::auth::Access> {
        Ok(crate::auth::Access {
            allow: self.allow.clone(),
            insecure: self.insecure,
            ..self.secret.access()?
        })
    }
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Rounds to measure; the median is taken.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Milliseconds of work per round.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub round_ms: u64,
    /// Print one JSON object per kernel instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The tasks: a seeded batch of random workloads, or a tasks file (`ventilator`, `run`,
/// `submit`).
#[derive(Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TasksArgs {
    /// Number of tasks in a seeded batch (at most 50,000,000).
    #[arg(long, default_value_t = TasksArgs::TASKS, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::batch::MAX_TASKS)))]
    pub tasks: u32,
    /// Shortest workload in milliseconds.
    #[arg(long, default_value_t = TasksArgs::MIN_MS, value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::batch::MAX_WORKLOAD_MS)))]
    pub min_ms: u32,
    /// Longest workload in milliseconds (at most 3,600,000: an hour).
    #[arg(long, default_value_t = TasksArgs::MAX_MS, value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::batch::MAX_WORKLOAD_MS)))]
    pub max_ms: u32,
    /// Seed of the batch: the same seed makes the same batch on every machine.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Read the batch from a file instead: one workload in ms per line, `#` comments.
    #[arg(long, env = "CONQUER_TASKS_FILE", value_name = "FILE", conflicts_with_all = ["tasks", "min_ms", "max_ms"])]
    pub tasks_file: Option<PathBuf>,
}

impl TasksArgs {
    /// The seeded batch's defaults: the seed's 100 tasks of 1-100 ms.
    pub const TASKS: u32 = 100;
    pub const MIN_MS: u32 = 1;
    pub const MAX_MS: u32 = 100;

    /// The first flag given that shapes a task list of workloads (a tasks file, or a
    /// seeded batch's count or range away from its default), if any.
    fn list_flag(&self) -> Option<&'static str> {
        if self.tasks_file.is_some() {
            Some("--tasks-file")
        } else if self.tasks != Self::TASKS {
            Some("--tasks")
        } else if self.min_ms != Self::MIN_MS {
            Some("--min-ms")
        } else if self.max_ms != Self::MAX_MS {
            Some("--max-ms")
        } else {
            None
        }
    }

    pub fn batch(&self) -> anyhow::Result<Batch> {
        match &self.tasks_file {
            Some(path) => crate::batch::read(path),
            None => Batch::generate(self.tasks, self.min_ms, self.max_ms, self.seed),
        }
    }
}

/// The batch: seeded random workloads, or a file.
#[derive(Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(next_help_heading = "Batch")]
pub struct BatchArgs {
    #[command(flatten)]
    pub tasks: TasksArgs,
    /// Order in which tasks are handed out.
    #[arg(long, value_enum, default_value_t = Order::LongestFirst)]
    pub order: Order,
    /// Kernel every task runs on compute backends: `spin` (millisecond tasks), or a data
    /// kernel whose tasks produce outputs (`mandelbrot`, `search`; see docs/kernels.md).
    #[arg(long, value_enum, default_value_t = Kernel::Spin)]
    pub kernel: Kernel,
    /// Kernel work units (spin: shader invocations of 256 hash rounds) per ms of workload.
    #[arg(long, env = "CONQUER_UNITS_PER_MS", default_value_t = crate::kernels::spin::DEFAULT_UNITS_PER_MS, value_parser = clap::value_parser!(u32).range(1..))]
    pub units_per_ms: u32,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub chunks: ChunkArgs,
}

/// `n` tasks of one nominal ms each: a built-in data kernel's bands or key ranges.
fn unit_tasks(n: u32) -> Batch {
    Batch {
        tasks: (0..n)
            .map(|id| crate::batch::Task {
                id,
                workload_ms: 1,
                ..Default::default()
            })
            .collect(),
    }
}

/// A user kernel's WGSL (`--kernel-file`), read and checked against the interface before
/// anything binds: errors name `file:line:column`.
fn read_kernel_file(
    path: &std::path::Path,
) -> anyhow::Result<(String, crate::kernels::user::Checked)> {
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --kernel-file {}", path.display()))?;
    if source.len() > crate::protocol::MAX_SOURCE_BYTES {
        bail!(
            "--kernel-file {} is {} bytes, over the limit of {} for a kernel's source",
            path.display(),
            source.len(),
            crate::protocol::MAX_SOURCE_BYTES
        );
    }
    let checked = crate::kernels::user::check(&source, &path.display().to_string())
        .map_err(|e| anyhow::anyhow!("invalid WGSL in --kernel-file: {e}"))?;
    Ok((source, checked))
}

/// How a divisible job's chunks are sized (`--chunking`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ChunkingKind {
    /// One equal chunk per worker.
    Static,
    /// Chunks of `--chunk-items` items (default: an eighth of an equal split).
    Fixed,
    /// A probe, then chunks of `--chunk-ms` at each worker's measured rate, shrinking
    /// toward the end (weighted factoring).
    Adaptive,
}

/// One big job carved into chunks while it runs, instead of a list of tasks.
#[derive(Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChunkArgs {
    /// Run one divisible job carved into chunks while it runs, instead of a task list:
    /// the Mandelbrot image's rows, the search's keys, or `--items` spin items (which
    /// sleep workers take too). Workers get chunks sized by this policy.
    #[arg(
        long,
        value_enum,
        value_name = "POLICY",
        help_heading = "Jobs and chunking"
    )]
    pub chunking: Option<ChunkingKind>,
    /// How long an adaptive chunk should take on its worker, in ms.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=3_600_000), help_heading = "Jobs and chunking")]
    pub chunk_ms: u64,
    /// Items per chunk under `--chunking fixed` (0: an eighth of an equal split).
    #[arg(long, default_value_t = 0, help_heading = "Jobs and chunking")]
    pub chunk_items: u64,
    /// Spin job: items in the job (at most 2^48: at 1 µs an item, nine years of one
    /// worker's time, and every count and time of the job stays exact).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=ChunkArgs::MAX_ITEMS), help_heading = "Jobs and chunking")]
    pub items: u64,
    /// Spin job: what an item costs at nominal speed, in µs (what a sleep worker sleeps).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000), help_heading = "Jobs and chunking")]
    pub item_us: u32,
    /// Search job: stop once this many hits are held; the workers abandon their chunks
    /// (0 searches the whole keyspace).
    #[arg(long, default_value_t = 0, help_heading = "Jobs and chunking")]
    pub hits: u32,
}

impl ChunkArgs {
    /// The most items a spin job holds (`--items`).
    pub const MAX_ITEMS: u64 = 1 << 48;

    pub fn policy(&self) -> Option<Policy> {
        Some(match self.chunking? {
            ChunkingKind::Static => Policy::Static,
            ChunkingKind::Fixed => Policy::Fixed(self.chunk_items),
            ChunkingKind::Adaptive => Policy::Adaptive(Duration::from_millis(self.chunk_ms)),
        })
    }
}

/// Data kernels: the user's WGSL and its inputs, the Mandelbrot image, the search.
#[derive(Args, Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DataArgs {
    /// Your own WGSL kernel (docs/kernels.md), checked before anything binds; one task per
    /// --inputs file.
    #[arg(
        long,
        value_name = "FILE.wgsl",
        conflicts_with = "kernel",
        requires = "inputs",
        help_heading = "Kernels and data"
    )]
    pub kernel_file: Option<PathBuf>,
    /// The inputs of a user kernel (or of `--kernel copy`): a glob pattern (quote it), one
    /// task per matching file.
    #[arg(long, value_name = "GLOB", help_heading = "Kernels and data")]
    pub inputs: Option<String>,
    /// Bytes per item of each input: a task runs one invocation per item.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Kernels and data")]
    pub item_bytes: u32,
    /// Output bytes per task: `same` (as many as the input), N per task, or N/item.
    #[arg(long, default_value = "same", value_parser = crate::kernels::parse_output_bytes, help_heading = "Kernels and data")]
    pub output_bytes: u32,
    /// Up to 8 constants for the kernel (`params.c`), comma-separated: integers are passed
    /// as u32, numbers with a point or exponent as f32 bits (read them back with a bitcast to f32).
    #[arg(long, value_name = "LIST", value_parser = parse_constants, allow_hyphen_values = true, help_heading = "Kernels and data")]
    pub constants: Option<[u32; crate::kernels::CONSTANTS]>,
    /// Mandelbrot: image width in pixels.
    #[arg(long, default_value_t = 1920, help_heading = "Mandelbrot")]
    pub width: u32,
    /// Mandelbrot: image height in pixels.
    #[arg(long, default_value_t = 1080, help_heading = "Mandelbrot")]
    pub height: u32,
    /// Mandelbrot: iterations before a point counts as inside the set.
    #[arg(long, default_value_t = 500, help_heading = "Mandelbrot")]
    pub max_iter: u32,
    /// Mandelbrot: rows per band; each band is one task.
    #[arg(long, default_value_t = 16, help_heading = "Mandelbrot")]
    pub band_rows: u32,
    /// Mandelbrot: the point at the image's centre, `RE,IM`, each part within -8 to 8.
    #[arg(long, default_value = "-0.5,0", value_parser = parse_point, allow_hyphen_values = true, help_heading = "Mandelbrot")]
    pub centre: (f64, f64),
    /// Mandelbrot: width of the view on the complex plane, down to a pixel step of 2^-58
    /// (about 3.5e-18 per pixel: 1e-12 and below render in full detail).
    #[arg(long, default_value_t = 3.0, help_heading = "Mandelbrot")]
    pub view_width: f64,
    /// Search: leading zero bits a hit's 32-bit hash has at least.
    #[arg(long, default_value_t = 20, help_heading = "Search")]
    pub bits: u32,
    /// Search: keys in the keyspace (0..N).
    #[arg(long, default_value_t = 1 << 28, help_heading = "Search")]
    pub keys: u32,
    /// Search: keys per task.
    #[arg(long, default_value_t = 1 << 22, help_heading = "Search")]
    pub keys_per_task: u32,
    /// Search: salt mixed into the hash (a different salt, different hits).
    #[arg(long, default_value_t = 0, help_heading = "Search")]
    pub salt: u32,
}

/// A batch ready to hand out: its tasks, its job, and a user kernel's inputs and source.
pub struct Prepared {
    pub batch: Batch,
    pub job: Job,
    pub inputs: Option<std::sync::Arc<crate::batch::Inputs>>,
    pub source: Option<std::sync::Arc<str>>,
    /// The batch id (including the inputs' digest).
    pub batch_id: u64,
    /// A divisible job's plan (`--chunking`); `None` for a task list.
    pub chunking: Option<Plan>,
}

impl BatchArgs {
    /// The ranges the command line enforces, checked again: for flags that arrive another
    /// way (a submission's JSON), so that only what `ventilator` would take is prepared.
    pub fn check(&self) -> anyhow::Result<()> {
        let t = &self.tasks;
        let c = &self.chunks;
        let d = &self.data;
        let max_ms = crate::batch::MAX_WORKLOAD_MS;
        let checks: [(bool, &str); 8] = [
            (
                (1..=crate::batch::MAX_TASKS).contains(&t.tasks),
                "--tasks: 1 to 50,000,000",
            ),
            (
                t.min_ms <= max_ms && t.max_ms <= max_ms,
                "--min-ms and --max-ms: at most an hour",
            ),
            (d.item_bytes >= 1, "--item-bytes: at least 1"),
            (
                (1..=3_600_000).contains(&c.chunk_ms),
                "--chunk-ms: 1 to 3,600,000",
            ),
            (
                (1..=ChunkArgs::MAX_ITEMS).contains(&c.items),
                "--items: 1 to 2^48",
            ),
            (self.units_per_ms >= 1, "--units-per-ms: at least 1"),
            (
                (1..=1_000_000).contains(&c.item_us),
                "--item-us: 1 to 1,000,000",
            ),
            (
                d.centre.0.is_finite()
                    && d.centre.1.is_finite()
                    && d.centre.0.abs() <= 8.0
                    && d.centre.1.abs() <= 8.0,
                "--centre: each part within -8 to 8",
            ),
        ];
        for (ok, rule) in checks {
            if !ok {
                bail!("a flag out of its range: {rule}");
            }
        }
        Ok(())
    }

    pub fn batch(&self) -> anyhow::Result<Batch> {
        self.tasks.batch()
    }

    pub fn job(&self, verify_percent: u8) -> Job {
        Job {
            kernel: self.kernel.id(),
            units_per_ms: self.units_per_ms,
            verify_percent,
            ..Job::default()
        }
    }

    /// Flags this batch would ignore, refused: a task list's workloads where the kernel or
    /// a divisible job makes its own tasks, `--chunk-items` outside `--chunking fixed`,
    /// `--output-bytes` and `--constants` without a user kernel. Silently dropped, each ran a
    /// batch other than the one asked for.
    fn refuse_ignored_flags(&self) -> anyhow::Result<()> {
        let maker = if self.chunks.policy().is_some() {
            Some("a divisible job (--chunking) is carved from its items, keys or rows")
        } else if self.data.kernel_file.is_some() {
            Some("--kernel-file makes one task per --inputs file")
        } else {
            match self.kernel {
                Kernel::Spin => None,
                Kernel::Mandelbrot => Some("--kernel mandelbrot makes one task per band of rows"),
                Kernel::Search => Some("--kernel search makes one task per --keys-per-task keys"),
                Kernel::Copy => Some("--kernel copy makes one task per --inputs file"),
                Kernel::User => Some("a user kernel makes one task per --inputs file"),
            }
        };
        if let (Some(maker), Some(flag)) = (maker, self.tasks.list_flag()) {
            bail!("{flag} shapes a task list of workloads, and {maker}: drop {flag}");
        }
        if self.chunks.chunk_items != 0 && self.chunks.chunking != Some(ChunkingKind::Fixed) {
            bail!(
                "--chunk-items sizes the chunks of --chunking fixed only: pass --chunking fixed, \
                 or drop --chunk-items"
            );
        }
        // The built-in kernels size their outputs and make their constants themselves (the
        // Mandelbrot view, the search's space).
        if self.data.kernel_file.is_none() {
            if self.data.output_bytes != crate::kernels::SAME_AS_INPUT {
                bail!("--output-bytes sizes a user kernel's outputs (--kernel-file): drop --output-bytes");
            }
            if self.data.constants.is_some() {
                bail!(
                    "--constants fill a user kernel's params.c (--kernel-file); the built-in \
                     kernels take theirs from their own flags: drop --constants"
                );
            }
        }
        Ok(())
    }

    /// The batch and job these flags describe, checked before anything binds: a user
    /// kernel is validated (errors name file:line:column), every payload is within
    /// `--max-payload`.
    pub fn prepare(&self, verify_percent: u8, max_payload: u64) -> anyhow::Result<Prepared> {
        self.refuse_ignored_flags()?;
        if verify_percent > 0 && self.data.kernel_file.is_some() {
            bail!(
                "--verify (and --verify-sample) check results against the CPU reference of a \
                 built-in kernel, and a user kernel (--kernel-file) has none: pass --replicate PCT \
                 to run a sample of the tasks on a second worker and compare the outputs bit for \
                 bit, or drop the flag"
            );
        }
        if let Some(policy) = self.chunks.policy() {
            return self.prepare_job(verify_percent, policy, max_payload);
        }
        if self.chunks.hits > 0 {
            bail!("--hits stops a search job: pass --kernel search --chunking adaptive (or static, fixed)");
        }
        use crate::kernels::{mandelbrot, search, PER_ITEM, SAME_AS_INPUT};
        let d = &self.data;
        let base = self.job(verify_percent);
        let (batch, job, inputs, source) = if let Some(path) = &d.kernel_file {
            let (source, checked) = read_kernel_file(path)?;
            let pattern = d.inputs.as_deref().unwrap_or_default();
            let inputs = crate::batch::Inputs::find(pattern, max_payload)?;
            let job = Job {
                kernel: Kernel::User.id(),
                source: crate::kernels::fnv1a(source.as_bytes()),
                item_bytes: d.item_bytes,
                output_bytes: d.output_bytes,
                constants: d.constants.unwrap_or_default(),
                ..base
            };
            // The least output a task gets: a kernel that declares more (`array<u32, 256>`)
            // has the rest of what it writes dropped.
            let mut least: Option<(u64, &std::path::Path)> = None;
            for path in &inputs.paths {
                let len = std::fs::metadata(path)
                    .with_context(|| format!("cannot read input {}", path.display()))?
                    .len();
                let items = len.div_ceil(u64::from(d.item_bytes));
                let out = if d.output_bytes == SAME_AS_INPUT {
                    len
                } else if d.output_bytes & PER_ITEM != 0 {
                    items * u64::from(d.output_bytes & !PER_ITEM)
                } else {
                    u64::from(d.output_bytes)
                };
                if least.is_none_or(|(l, _)| out < l) {
                    least = Some((out, path));
                }
                if d.output_bytes != SAME_AS_INPUT && out > max_payload {
                    bail!(
                        "input {} makes {out} output bytes, over --max-payload {max_payload}: raise --max-payload (on every role) or lower --output-bytes",
                        path.display()
                    );
                }
            }
            if let (Some(declared), Some((out, input))) = (checked.fixed_output_bytes, least) {
                if out < declared {
                    log::warn!(
                        "--kernel-file {}: `output` is declared {declared} bytes, and the task of \
                         {} gets {out} (--output-bytes): only the first {out} bytes it writes are \
                         kept; pass --output-bytes {declared} to keep them all",
                        path.display(),
                        input.display()
                    );
                }
            }
            (
                inputs.batch()?,
                job,
                Some(std::sync::Arc::new(inputs)),
                Some(std::sync::Arc::<str>::from(source)),
            )
        } else if self.kernel == Kernel::Copy {
            let Some(pattern) = d.inputs.as_deref() else {
                bail!("--kernel copy copies input files: pass --inputs 'GLOB'");
            };
            let inputs = crate::batch::Inputs::find(pattern, max_payload)?;
            let job = Job {
                output_bytes: SAME_AS_INPUT,
                ..base
            };
            (
                inputs.batch()?,
                job,
                Some(std::sync::Arc::new(inputs)),
                None,
            )
        } else {
            if d.inputs.is_some() {
                bail!(
                    "--inputs feeds a user kernel (--kernel-file) or --kernel copy; the {} kernel \
                     takes none",
                    self.kernel.name()
                );
            }
            match self.kernel {
                Kernel::Spin | Kernel::User | Kernel::Copy => (self.batch()?, base, None, None),
                Kernel::Mandelbrot => {
                    let view = mandelbrot::View::new(
                        d.width,
                        d.height,
                        d.max_iter,
                        d.band_rows,
                        d.centre,
                        d.view_width,
                    )
                    .map_err(|e| anyhow::anyhow!(e))?;
                    let band_bytes = u64::from(view.width) * u64::from(view.rows) * 4;
                    if band_bytes > max_payload {
                        bail!(
                            "a band of {} rows of {} pixels is {band_bytes} bytes, over --max-payload {max_payload}: lower --band-rows",
                            view.rows,
                            view.width
                        );
                    }
                    let job = Job {
                        constants: view.constants(),
                        ..base
                    };
                    (unit_tasks(view.bands()), job, None, None)
                }
                Kernel::Search => {
                    let space = search::Space::new(d.bits, d.keys, d.keys_per_task, d.salt)
                        .map_err(|e| anyhow::anyhow!(e))?;
                    let limit = crate::batch::MAX_TASKS;
                    if space.tasks() > limit {
                        bail!(
                            "--keys {} in tasks of --keys-per-task {} makes {} tasks, over the \
                             limit of {limit} in one batch: raise --keys-per-task to {} or more, \
                             or carve the keys as a divisible job (--chunking adaptive)",
                            d.keys,
                            d.keys_per_task,
                            space.tasks(),
                            d.keys.div_ceil(limit)
                        );
                    }
                    let job = Job {
                        constants: space.constants(),
                        ..base
                    };
                    (unit_tasks(space.tasks()), job, None, None)
                }
            }
        };
        let batch_id = batch.id_with_inputs(&job, inputs.as_ref().map_or(0, |i| i.digest));
        Ok(Prepared {
            batch,
            job,
            inputs,
            source,
            batch_id,
            chunking: None,
        })
    }

    /// A divisible job over one large input (a user kernel, or `copy`): its items are the
    /// input's `--item-bytes` pieces, each chunk travels with its slice.
    fn prepare_input_job(
        &self,
        verify_percent: u8,
        policy: Policy,
        max_payload: u64,
    ) -> anyhow::Result<Prepared> {
        use crate::kernels::{PER_ITEM, SAME_AS_INPUT};
        let d = &self.data;
        let Some(pattern) = d.inputs.as_deref() else {
            bail!("--chunking over an input needs --inputs FILE: the one file the job carves");
        };
        let inputs = crate::batch::Inputs::single(pattern)?;
        let path = &inputs.paths[0];
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read input {}", path.display()))?
            .len();
        if size == 0 {
            bail!("input {} is empty: nothing to carve", path.display());
        }
        let base = self.job(verify_percent);
        let (job, source) = match &d.kernel_file {
            Some(kernel) => {
                let (source, _) = read_kernel_file(kernel)?;
                let job = Job {
                    kernel: Kernel::User.id(),
                    source: crate::kernels::fnv1a(source.as_bytes()),
                    item_bytes: d.item_bytes,
                    output_bytes: d.output_bytes,
                    constants: d.constants.unwrap_or_default(),
                    ..base
                };
                (job, Some(std::sync::Arc::<str>::from(source)))
            }
            // `copy` moves 4-byte words.
            None => (
                Job {
                    item_bytes: 4,
                    output_bytes: SAME_AS_INPUT,
                    ..base
                },
                None,
            ),
        };
        let item_bytes = u64::from(job.item_bytes.max(1));
        let items = size.div_ceil(item_bytes);
        // The kernel learns a chunk's first item as a u32 (`params.task_id`).
        if items > u64::from(u32::MAX) {
            bail!(
                "input {} is {items} items of {item_bytes} bytes, over the 2^32 a kernel can \
                 number: raise --item-bytes or split the file",
                path.display()
            );
        }
        // A chunk's input and output each fit in --max-payload.
        let out_per_item = match job.output_bytes {
            SAME_AS_INPUT => item_bytes,
            n if n & PER_ITEM != 0 => u64::from(n & !PER_ITEM),
            n => {
                if u64::from(n) > max_payload {
                    bail!("--output-bytes {n} is over --max-payload {max_payload}");
                }
                0
            }
        };
        let max_chunk = (max_payload / item_bytes)
            .min(max_payload.checked_div(out_per_item).unwrap_or(u64::MAX))
            .clamp(1, u64::from(u32::MAX));
        let job = Job { items, ..job };
        let batch = Batch { tasks: Vec::new() };
        let batch_id = batch.id_with_inputs(&job, inputs.digest);
        Ok(Prepared {
            batch,
            job,
            inputs: Some(std::sync::Arc::new(inputs)),
            source,
            batch_id,
            chunking: Some(Plan {
                policy,
                items,
                max_chunk: max_chunk as u32,
                nominal_us: 0.0,
            }),
        })
    }

    /// A divisible job: no tasks up front, a plan for the chunks.
    fn prepare_job(
        &self,
        verify_percent: u8,
        policy: Policy,
        max_payload: u64,
    ) -> anyhow::Result<Prepared> {
        use crate::kernels::{mandelbrot, search};
        let d = &self.data;
        if self.chunks.hits > 0 && (self.kernel != Kernel::Search || d.kernel_file.is_some()) {
            bail!("--hits stops a search job: pass --kernel search");
        }
        if d.kernel_file.is_some() || self.kernel == Kernel::Copy {
            return self.prepare_input_job(verify_percent, policy, max_payload);
        }
        if d.inputs.is_some() {
            bail!(
                "--inputs feeds a user kernel (--kernel-file) or --kernel copy; the {} kernel \
                 takes none",
                self.kernel.name()
            );
        }
        let base = self.job(verify_percent);
        let (job, max_chunk, nominal_us) = match self.kernel {
            Kernel::Spin => {
                let item_us = self.chunks.item_us;
                // Invocations per item, so a chunk's invocations fit in 32 bits.
                let per_item = (u64::from(item_us) * u64::from(self.units_per_ms) / 1000).max(1);
                let max_chunk = (u64::from(u32::MAX) / per_item)
                    .min(u64::from(crate::batch::MAX_WORKLOAD_MS) * 1000 / u64::from(item_us))
                    .max(1);
                let mut constants = [0; crate::kernels::CONSTANTS];
                constants[0] = item_us;
                let job = Job {
                    items: self.chunks.items,
                    constants,
                    ..base
                };
                (job, max_chunk, f64::from(item_us))
            }
            Kernel::Mandelbrot => {
                // One row per band: a chunk of rows is a band the shader computes as is.
                let view =
                    mandelbrot::View::new(d.width, d.height, d.max_iter, 1, d.centre, d.view_width)
                        .map_err(|e| anyhow::anyhow!(e))?;
                let row_bytes = u64::from(view.width) * 4;
                let job = Job {
                    items: u64::from(view.height),
                    constants: view.constants(),
                    ..base
                };
                (job, (max_payload / row_bytes).max(1), 0.0)
            }
            Kernel::Search => {
                // Chunks of at most --keys-per-task keys, with room for their hits.
                let space = search::Space::for_chunks(d.bits, d.keys, d.keys_per_task, d.salt)
                    .map_err(|e| anyhow::anyhow!(e))?;
                let mut constants = space.constants();
                constants[search::HITS_WANTED] = self.chunks.hits;
                let job = Job {
                    items: u64::from(d.keys),
                    constants,
                    ..base
                };
                (job, u64::from(d.keys_per_task.max(1)), 0.0)
            }
            Kernel::User | Kernel::Copy => unreachable!("refused above"),
        };
        let batch = Batch { tasks: Vec::new() };
        let batch_id = batch.id(&job);
        Ok(Prepared {
            batch,
            job,
            inputs: None,
            source: None,
            batch_id,
            chunking: Some(Plan {
                policy,
                items: job.items,
                max_chunk: u32::try_from(max_chunk).unwrap_or(u32::MAX),
                nominal_us,
            }),
        })
    }
}

/// Parses an age, `N` seconds or with a unit `s`, `m`, `h` or `d`, as milliseconds.
fn parse_age(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let scale: u64 = match &t[digits.len()..] {
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?}: give an age such as 3600, 90m, 12h or 30d"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?}: give an age such as 3600, 90m, 12h or 30d"))
}

/// Parses a byte count with an optional K, M or G suffix (powers of 1024; `KiB` etc. too).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = t[digits.len()..].to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{text:?}: give bytes, such as 65536, 64K or 64M")),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?}: give bytes, such as 65536, 64K or 64M"))
}

/// Parses `--constants`: up to 8 comma-separated numbers, integers as u32 (or i32 when
/// negative), others as f32 bits.
fn parse_constants(text: &str) -> Result<[u32; crate::kernels::CONSTANTS], String> {
    let mut out = [0u32; crate::kernels::CONSTANTS];
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() > out.len() {
        return Err(format!(
            "{} constants given; the interface has 8",
            parts.len()
        ));
    }
    for (slot, part) in out.iter_mut().zip(&parts) {
        *slot = if let Ok(n) = part.parse::<u32>() {
            n
        } else if let Ok(n) = part.parse::<i32>() {
            n as u32
        } else if let Ok(x) = part.parse::<f32>() {
            if !x.is_finite() {
                return Err(format!("constant {part:?} is not finite"));
            }
            x.to_bits()
        } else {
            return Err(format!(
                "constant {part:?} is neither an integer nor a number"
            ));
        };
    }
    Ok(out)
}

/// Parses `RE,IM`.
fn parse_point(text: &str) -> Result<(f64, f64), String> {
    let bad = || format!("{text:?}: give the point as RE,IM, such as -0.5,0");
    let (re, im) = text.split_once(',').ok_or_else(bad)?;
    let re: f64 = re.trim().parse().map_err(|_| bad())?;
    let im: f64 = im.trim().parse().map_err(|_| bad())?;
    Ok((re, im))
}

/// Checking compute results against the CPU reference.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Batch")]
pub struct VerifyArgs {
    /// Check every compute result against the CPU reference; a mismatch fails the run.
    #[arg(long)]
    pub verify: bool,
    /// Check a sample of PCT percent of the results instead (for big work, whose CPU
    /// reference is slow); the sample is fixed by task id.
    #[arg(long, value_name = "PCT", conflicts_with = "verify", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub verify_sample: Option<u8>,
    /// Run a seeded sample of PCT percent of the tasks (or a job's chunks) on a second
    /// worker as well, preferring another one, and compare the outputs bit for bit at the
    /// sink; copies that disagree get a third run, the odd worker is named, quarantined
    /// after twice, and the batch fails. Works for any kernel, a user's too.
    #[arg(long, value_name = "PCT", default_value_t = 0, env = "CONQUER_REPLICATE", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub replicate: u8,
}

impl VerifyArgs {
    pub fn percent(&self) -> u8 {
        if self.verify {
            100
        } else {
            self.verify_sample.unwrap_or(0)
        }
    }
}

/// Credit-based dispatch.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Dispatch")]
pub struct DispatchArgs {
    /// Tasks a worker may hold at once; it gets more as it finishes.
    #[arg(long, env = "CONQUER_WINDOW", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub window: u32,
    /// Cap on tasks a worker may hold while the tasks cost nothing (zero-ms workloads).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub max_window: u32,
    /// A task held longer than this many times what its worker's measured speed predicts
    /// (plus --backup-slack-ms) is handed to another worker too; the first result wins.
    #[arg(long, default_value_t = 4.0)]
    pub backup_factor: f64,
    /// Slack added to that bound, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub backup_slack_ms: u64,
    /// Tries a task gets: after this many failures (a shader error, a timeout, an output
    /// over a worker's --max-payload) it is handed out no more, the batch reports it
    /// failed with its last error, and exits 1.
    #[arg(long, env = "CONQUER_MAX_ATTEMPTS", default_value_t = crate::ventilator::DEFAULT_MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,
}

impl DispatchArgs {
    pub fn backup(&self) -> anyhow::Result<crate::ventilator::Backup> {
        if !(self.backup_factor.is_finite() && (1.0..=1000.0).contains(&self.backup_factor)) {
            bail!(
                "--backup-factor must be a number from 1 to 1000, got {}",
                self.backup_factor
            );
        }
        Ok(crate::ventilator::Backup {
            factor: self.backup_factor,
            slack: Duration::from_millis(self.backup_slack_ms),
        })
    }
}

/// Liveness between ventilator and workers.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Dispatch")]
pub struct HeartbeatArgs {
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "CONQUER_HEARTBEAT_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_ms: u64,
    /// Missed heartbeats after which a peer is declared gone.
    #[arg(long, env = "CONQUER_LIVENESS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub liveness: u32,
}

impl HeartbeatArgs {
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            interval: Duration::from_millis(self.heartbeat_ms),
            liveness: self.liveness,
        }
    }
}

/// What a worker runs tasks on.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Backend")]
pub struct BackendArgs {
    /// Backend: auto takes a hardware GPU if there is one, else sleep.
    #[arg(long, env = "CONQUER_BACKEND", value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// Multiply every task's time, to emulate a slower machine: the sleep backend sleeps
    /// longer; cpu, software and gpu workers wait N - 1 times what each task took after it
    /// (N above 1; below 1 only the sleep backend is faster).
    #[arg(long, env = "CONQUER_SLOWDOWN", default_value_t = 1.0)]
    pub slowdown: f64,
    /// GPU adapter to use: its index in `conquer info`, or part of its name.
    #[arg(long, env = "CONQUER_ADAPTER", value_name = "NAME|INDEX")]
    pub adapter: Option<String>,
    /// GPU: tasks in flight at once on the device.
    #[arg(long, env = "CONQUER_GPU_SLOTS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub gpu_slots: u16,
    /// GPU: most items per dispatch (default: the device's limit): invocations, but a
    /// search's keys (16 an invocation). Below it each kernel's dispatches grow from 65,536
    /// items until one takes about 1 ms, and never past --max-dispatch-ms; larger tasks are
    /// split into several.
    #[arg(long, value_parser = clap::value_parser!(u32).range(64..))]
    pub dispatch_invocations: Option<u32>,
    /// GPU: longest a dispatch may take, in ms; dispatches measured longer are made
    /// smaller at once. Keep it well under the 2 s after which desktop drivers reset a
    /// device.
    #[arg(long, value_name = "MS", default_value_t = backend::gpu::DEFAULT_MAX_DISPATCH_MS)]
    pub max_dispatch_ms: f64,
    /// GPU: choose each built-in kernel's workgroup size (64, 128 or 256 invocations) by
    /// timing a task of the first job that uses it at each size, six runs in all, skipped
    /// where one takes over 20 ms or a task holds more than 64 times the device's fill. Costs two more compilations a kernel; `--log debug`
    /// shows what it measured.
    #[arg(long, env = "CONQUER_TUNE_WORKGROUPS", value_parser = boolish())]
    pub tune_workgroups: bool,
    /// GPU: seconds a task may have the device before it fails; its kernel is then
    /// abandoned and the device rebuilt (nothing can stop a kernel that runs on).
    #[arg(
        long,
        env = "CONQUER_TASK_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 120.0
    )]
    pub task_timeout: f64,
}

impl BackendArgs {
    pub fn options(&self) -> anyhow::Result<backend::BackendOptions> {
        if !(self.max_dispatch_ms.is_finite()
            && self.max_dispatch_ms >= 1.0
            && self.max_dispatch_ms <= 60_000.0)
        {
            bail!(
                "--max-dispatch-ms must be a number of milliseconds from 1 to 60000 (a dispatch \
                 longer than about 2000 risks the driver's watchdog), got {}",
                self.max_dispatch_ms
            );
        }
        if !(self.slowdown.is_finite() && self.slowdown > 0.0 && self.slowdown <= MAX_SLOWDOWN) {
            bail!(
                "--slowdown must be a number above 0 and at most {MAX_SLOWDOWN}, got {:?}",
                self.slowdown
            );
        }
        Ok(backend::BackendOptions {
            slowdown: self.slowdown,
            adapter: self.adapter.clone(),
            gpu: backend::gpu::GpuConfig {
                max_invocations_per_dispatch: self.dispatch_invocations.unwrap_or(u32::MAX),
                max_dispatch_us: self.max_dispatch_ms * 1e3,
                slots: usize::from(self.gpu_slots),
                task_timeout: seconds(self.task_timeout, "--task-timeout")?,
                tune_workgroups: self.tune_workgroups,
                ..Default::default()
            },
            quiet: false,
        })
    }

    pub fn build(&self) -> anyhow::Result<Box<dyn Backend>> {
        backend::build(self.backend, &self.options()?)
    }
}

/// Report output of the sink.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Results and report")]
#[command(group(clap::ArgGroup::new("kept_files").args(KEPT_FILES).multiple(true)))]
pub struct ReportArgs {
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write one record per task to FILE as results arrive (.csv for CSV, else JSON Lines).
    #[arg(long, env = "CONQUER_RESULTS", value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// Format of --results, overriding the extension.
    #[arg(long, value_enum, requires = "results")]
    pub results_format: Option<ResultsFormat>,
    /// When the batch completes, write every task to FILE as a Chrome trace (one track per
    /// worker; open it in Perfetto or chrome://tracing).
    #[arg(long, env = "CONQUER_TIMELINE", value_name = "FILE.json")]
    pub timeline: Option<PathBuf>,
    /// Keep each data task's output as a file in DIR, named after its input (written,
    /// synced and renamed before the task counts as held).
    #[arg(long, env = "CONQUER_OUTPUTS", value_name = "DIR")]
    pub outputs: Option<PathBuf>,
    /// Mandelbrot: assemble the bands into this PNG when the batch completes.
    #[arg(long, value_name = "FILE.png")]
    pub image: Option<PathBuf>,
}

/// The files --overwrite may replace.
const KEPT_FILES: [&str; 2] = ["results", "image"];

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Results and report")]
pub struct OverwriteArgs {
    /// Replace a --results file that already holds records, and an existing --image
    /// picture (without it such a file is refused, never wiped).
    #[arg(long, env = "CONQUER_OVERWRITE", requires = "kept_files", value_parser = boolish())]
    pub overwrite: bool,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Results and report")]
pub struct ResumeArgs {
    /// Continue the batch recorded in --results after a crash: results the file holds are
    /// not redone and not counted twice. A file that holds the whole batch is reported.
    #[arg(
        long,
        env = "CONQUER_RESUME",
        requires = "results",
        conflicts_with = "overwrite"
    )]
    pub resume: bool,
}

impl ReportArgs {
    fn sink_config(&self, bind: String) -> SinkConfig {
        SinkConfig {
            bind,
            results: self.results.as_ref().map(|path| {
                (
                    path.clone(),
                    self.results_format
                        .unwrap_or_else(|| ResultsFormat::from_path(path)),
                )
            }),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            trace: self.timeline.clone(),
            outputs: crate::outputs::OutputsConfig {
                dir: self.outputs.clone(),
                image: self.image.clone(),
            },
            ..SinkConfig::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Number of workers (threads of this process, each with its own sockets).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub dispatch: DispatchArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub overwrite: OverwriteArgs,
    #[command(flatten)]
    pub resume: ResumeArgs,
    #[command(flatten)]
    pub heartbeat: HeartbeatArgs,
    #[command(flatten)]
    pub verify: VerifyArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Serve --http on an address other machines can reach without --secret-file.
    #[arg(long, env = "CONQUER_INSECURE", requires = "http", value_parser = boolish())]
    pub insecure: bool,
}

#[derive(Args, Debug)]
pub struct VentilatorArgs {
    /// Endpoint the tasks socket binds; workers connect here.
    #[arg(long, env = "CONQUER_VENTILATOR_BIND", default_value = "tcp://*:5557")]
    pub bind: String,
    /// The sink's endpoint.
    #[arg(long, env = "CONQUER_SINK", default_value = "tcp://localhost:5558")]
    pub sink: String,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub dispatch: DispatchArgs,
    #[command(flatten)]
    pub heartbeat: HeartbeatArgs,
    /// Wait until this many workers are connected and ready before starting (0: start at once).
    #[arg(long, env = "CONQUER_WAIT_WORKERS", default_value_t = 1)]
    pub wait_workers: usize,
    /// Seconds to wait for those workers, and for the sink, before giving up.
    #[arg(long, env = "CONQUER_WAIT_TIMEOUT", default_value_t = 60.0)]
    pub wait_timeout: f64,
    /// Seconds of silence from the sink, during a batch, after which the ventilator stops
    /// with a message instead of waiting for it forever.
    #[arg(long, env = "CONQUER_SINK_TIMEOUT", default_value_t = 60.0)]
    pub sink_timeout: f64,
    /// Tell the workers to exit when the batch is complete (the Guide's KILL).
    #[arg(long)]
    pub shutdown_workers: bool,
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// Batch id in hex (default: a hash of the tasks and the job, the same after a restart).
    #[arg(long, value_parser = parse_hex_u64)]
    pub batch_id: Option<u64>,
    /// Continue a batch the sink already holds results of (after this ventilator restarted).
    #[arg(long)]
    pub resume: bool,
    /// Speak the Guide's classic format: PUSH tasks as ASCII milliseconds, "0" to the sink.
    /// --wait-workers counts connected workers; 0 waits for Enter as taskvent does.
    #[arg(long, help_heading = "Classic")]
    pub classic: bool,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The ventilator's tasks endpoint.
    #[arg(
        long,
        env = "CONQUER_VENTILATOR",
        default_value = "tcp://localhost:5557"
    )]
    pub ventilator: String,
    /// The sink's results endpoint.
    #[arg(long, env = "CONQUER_SINK", default_value = "tcp://localhost:5558")]
    pub sink: String,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Worker name in reports (default host-pid-0); must be unique among workers.
    #[arg(long, env = "CONQUER_NAME", help_heading = "Worker")]
    pub name: Option<String>,
    /// Exit after the first batch completes (default: stay up for the next batch). A
    /// worker that hears of no batch within --wait-timeout (its batch may have ended
    /// before it arrived) exits with status 3.
    #[arg(long, env = "CONQUER_EXIT_WHEN_DONE", help_heading = "Worker", value_parser = boolish())]
    pub exit_when_done: bool,
    /// With --exit-when-done: seconds to wait for a batch before leaving with status 3.
    #[arg(
        long,
        env = "CONQUER_WAIT_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 60.0,
        requires = "exit_when_done",
        help_heading = "Worker"
    )]
    pub wait_timeout: f64,
    #[command(flatten)]
    pub heartbeat: HeartbeatArgs,
    /// Serve a classic pipeline (the Guide's taskvent and tasksink, any language): PULL
    /// ASCII-millisecond tasks, PUSH one message per result, leave on any control message.
    #[arg(long, help_heading = "Classic")]
    pub classic: bool,
    /// Classic mode: the sink's KILL broadcast endpoint.
    #[arg(
        long,
        default_value = "tcp://localhost:5559",
        requires = "classic",
        help_heading = "Classic"
    )]
    pub control: String,
    /// Classic mode: kernel work units per ms (classic tasks carry only milliseconds).
    #[arg(long, default_value_t = crate::kernels::spin::DEFAULT_UNITS_PER_MS, requires = "classic", help_heading = "Classic", value_parser = clap::value_parser!(u32).range(1..))]
    pub units_per_ms: u32,
    #[command(flatten)]
    pub secret: SecretArgs,
}

#[derive(Args, Debug)]
pub struct SinkArgs {
    /// Endpoint the results socket binds; workers and the ventilator connect here.
    #[arg(long, env = "CONQUER_SINK_BIND", default_value = "tcp://*:5558")]
    pub bind: String,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub resume: ResumeArgs,
    #[command(flatten)]
    pub overwrite: OverwriteArgs,
    #[command(flatten)]
    pub heartbeat: HeartbeatArgs,
    /// Speak the Guide's classic format: PULL results (empty or the workload echoed), wait
    /// for "0", count --tasks results, then broadcast KILL on --control-bind.
    #[arg(long, help_heading = "Classic")]
    pub classic: bool,
    /// Classic mode: results to collect (as many as the ventilator sends tasks).
    #[arg(
        long,
        default_value_t = 100,
        requires = "classic",
        help_heading = "Classic",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::batch::MAX_TASKS))
    )]
    pub tasks: u32,
    /// Classic mode: where the KILL broadcast binds.
    #[arg(
        long,
        default_value = "tcp://*:5559",
        requires = "classic",
        help_heading = "Classic"
    )]
    pub control_bind: String,
    #[command(flatten)]
    pub access: AccessArgs,
}

/// Largest `--slowdown`: an hour's task then sleeps about 114 years, which a `Duration`
/// still holds.
const MAX_SLOWDOWN: f64 = 1e6;

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("expected a hexadecimal batch id: {e}"))
}

/// Parses arguments and runs; returns the process exit status.
/// A negative number after a flag (`--tasks -1`) reads to clap as an unknown flag
/// (`unexpected argument '-1'`), which names neither the flag nor the mistake: this names
/// both.
fn negative_value(e: &clap::Error, args: impl Iterator<Item = String>) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let args: Vec<String> = args.collect();
    let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    value.parse::<f64>().ok().filter(|v| *v < 0.0)?;
    let at = args.iter().position(|a| a == value)?;
    let flag = args[..at].last().filter(|f| f.starts_with("--"))?;
    Some(format!(
        "{flag} {value}: a negative number is not a value {flag} takes; its --help gives its range"
    ))
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
            if let Some(told) = negative_value(&e, args) {
                eprintln!("error: {told}");
                return 2;
            }
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    crate::logging::set_role(role_of(cli.command.as_ref()));
    let verbosity = if cli.quiet {
        -1
    } else {
        i8::try_from(cli.verbose).unwrap_or(i8::MAX)
    };
    crate::logging::init(verbosity, cli.log.as_deref());
    quiet_display_probing();
    let stop = Shutdown::new();
    if let Err(e) = shutdown::install_ctrl_c(&stop) {
        eprintln!("conquer: error: {e:#}");
        return 1;
    }
    let outcome = dispatch(cli, &stop);
    if shutdown::interrupted() || outcome.as_ref().is_err_and(shutdown::Interrupted::is) {
        return shutdown::exit_status();
    }
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("conquer: error: {e:#}");
            1
        }
    }
}

/// The process's name in its log lines: the role, and a worker's name.
fn role_of(command: Option<&Command>) -> String {
    match command {
        None | Some(Command::Run(_)) => "run".into(),
        Some(Command::Ventilator(_)) => "ventilator".into(),
        Some(Command::Worker(args)) => format!(
            "worker {}",
            crate::logging::printable(
                &args.name.clone().unwrap_or_else(|| worker::default_name(0))
            )
        ),
        Some(Command::Sink(_)) => "sink".into(),
        Some(Command::Bench(_)) => "bench".into(),
        Some(Command::Info(_)) => "info".into(),
        Some(Command::Completions { .. }) => "completions".into(),
        Some(Command::Man { .. }) => "man".into(),
        Some(Command::Calibrate(_)) => "calibrate".into(),
        Some(Command::Secret { .. }) => "secret".into(),
        Some(Command::Status(_)) => "status".into(),
        Some(Command::Serve(_)) => "coordinator".into(),
        Some(Command::Submit(_)) => "submit".into(),
        Some(Command::Jobs(_)) => "jobs".into(),
        Some(Command::Cancel(_)) => "cancel".into(),
        Some(Command::Results(_)) => "results".into(),
    }
}

/// A duration in seconds from a flag, checked: positive, finite, at most a year.
fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    const YEAR_S: f64 = 365.0 * 24.0 * 3600.0;
    if !(value.is_finite() && value > 0.0 && value <= YEAR_S) {
        bail!("{flag} must be a number of seconds above 0 and at most {YEAR_S:.0} (a year), got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

/// Mesa's Vulkan drivers probe for a Wayland display while wgpu enumerates adapters, and
/// print `error: XDG_RUNTIME_DIR is invalid or not set` on headless machines, where no
/// display is wanted. An empty private runtime folder makes that probe fail quietly.
/// Runs before any thread starts, as changing the environment requires.
fn quiet_display_probing() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("conquer-runtime-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    // Only a folder of our own, which nobody else can write to.
    let ours = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0);
    if ours {
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

fn dispatch(cli: Cli, shutdown: &Shutdown) -> anyhow::Result<i32> {
    let max_payload = match cli.max_payload {
        Some(bytes) => crate::protocol::check_max_payload(bytes)?,
        None => crate::protocol::DEFAULT_MAX_PAYLOAD,
    };
    let wire = Wire {
        max_payload,
        compress: !cli.no_compress,
    };
    if let Some(path) = &cli.events {
        crate::events::open(path)?;
    }
    // Bare `conquer` is `conquer run` with its defaults.
    let command = match cli.command {
        Some(command) => command,
        None => match Cli::try_parse_from(["conquer", "run"]).map(|c| c.command) {
            Ok(Some(command)) => command,
            _ => bail!("cannot make the default `run` command"),
        },
    };
    match command {
        Command::Run(args) => run(args, wire, shutdown),
        Command::Ventilator(args) => ventilator(args, wire, shutdown),
        Command::Worker(args) => work(args, wire, shutdown),
        Command::Sink(args) => sink(args, wire, shutdown),
        Command::Bench(mut args) => {
            args.max_payload = max_payload;
            crate::bench::run(args, shutdown)
        }
        Command::Info(args) => {
            info(args.json)?;
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "conquer", &mut script);
            // A reader that stops early (`| head`) is no error.
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(e).context("cannot write the completion script");
                }
                _ => {}
            }
            Ok(0)
        }
        Command::Man { dir } => {
            let command = <Cli as clap::CommandFactory>::command();
            match dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    clap_mangen::generate_to(command, &dir).with_context(|| {
                        format!("cannot write man pages into {}", dir.display())
                    })?;
                    let page = dir.join("conquer.1");
                    let mut file = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&page)
                        .with_context(|| format!("cannot open {}", page.display()))?;
                    std::io::Write::write_all(&mut file, MAN_EXTRA.as_bytes())
                        .with_context(|| format!("cannot write {}", page.display()))?;
                }
                // A reader that stops early (`| head`) is no error.
                None => {
                    let mut out = std::io::stdout();
                    let written = clap_mangen::Man::new(command)
                        .render(&mut out)
                        .and_then(|()| std::io::Write::write_all(&mut out, MAN_EXTRA.as_bytes()));
                    match written {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                        other => other.context("writing the man page")?,
                    }
                }
            }
            Ok(0)
        }
        Command::Serve(args) => {
            let config = crate::serve::ServeConfig {
                state: args.state,
                bind: args.bind,
                results_bind: args.results_bind,
                control: args.control,
                limits: conquer_core::jobs::Limits {
                    max_jobs: args.max_jobs as usize,
                    max_running: args.max_running as usize,
                    max_input_bytes: args.max_input,
                    keep: args.keep as usize,
                    keep_ms: args.keep_for,
                },
                heartbeat: args.heartbeat.heartbeat(),
                access: args.access.access()?,
                http: args.http,
                inputs_dir: args.inputs_dir,
            };
            crate::serve::serve(config, shutdown)?;
            shutdown.check()?;
            Ok(0)
        }
        Command::Submit(args) => submit(args, shutdown),
        Command::Jobs(args) => {
            let Reply::Jobs { jobs, refused } = args.coordinator.ask(&Request::Jobs)? else {
                bail!("the coordinator answered something else than its jobs");
            };
            if args.json {
                let value = serde_json::json!({ "jobs": jobs, "refused": refused });
                println!("{}", serde_json::to_string(&value)?);
            } else {
                print!("{}", jobs_table(&jobs));
                if refused > 0 {
                    println!("{refused} requests refused for a missing or wrong token");
                }
            }
            Ok(0)
        }
        Command::Cancel(args) => {
            let Reply::Cancelled { id, was } =
                args.coordinator.ask(&Request::Cancel { id: args.id })?
            else {
                bail!("the coordinator answered something else than the cancel");
            };
            println!("job {id} cancelled (it was {})", state_name(was));
            Ok(0)
        }
        Command::Results(args) => {
            let reply = args.coordinator.ask(&Request::Results { id: args.id })?;
            print_results(&reply, args.json)
        }
        Command::Status(args) => {
            let access = args.secret.access()?;
            let token = access.secret.as_ref().map(|s| s.token().to_owned());
            let base = crate::status::base_url(&args.http)?;
            loop {
                let status = crate::status::fetch(&base, token.as_deref())?;
                if args.json {
                    println!("{}", serde_json::to_string(&status)?);
                    return Ok(0);
                }
                let table = crate::status::render(&status);
                if !args.watch {
                    print!("{table}");
                    return Ok(0);
                }
                // Clear the screen and draw again, as `watch` does.
                print!("\x1b[H\x1b[2J{table}");
                std::io::Write::flush(&mut std::io::stdout())?;
                if status.finished {
                    // The final state, drawn: the live view closes after its linger.
                    return Ok(0);
                }
                for _ in 0..10 {
                    shutdown.check()?;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Command::Secret { action } => {
            match action {
                SecretAction::New { file, force } => {
                    crate::auth::Secret::create(&file, force)?;
                    eprintln!(
                        "wrote a new secret to {}; give every role --secret-file with a copy of it \
                         (mode 0600 on each machine)",
                        file.display()
                    );
                }
                SecretAction::Check { file } => {
                    crate::auth::Secret::load(&file)?;
                    eprintln!("{} is a usable secret", file.display());
                }
                SecretAction::Token { file } => {
                    println!("{}", crate::auth::Secret::load(&file)?.token());
                }
            }
            Ok(0)
        }
        Command::Calibrate(args) => {
            // Every kernel the project ships (spin, for now), one figure each.
            let kernels = [Kernel::Spin];
            for kernel in kernels.iter().copied() {
                let c = crate::calibrate::measure(
                    kernel,
                    Duration::from_millis(args.round_ms),
                    args.rounds,
                )?;
                crate::report::print_calibration(&c, args.json)?;
            }
            Ok(0)
        }
    }
}

fn run(args: RunArgs, wire: Wire, shutdown: &Shutdown) -> anyhow::Result<i32> {
    let Wire {
        max_payload,
        compress,
    } = wire;
    let mut access = crate::auth::Access {
        insecure: args.insecure,
        ..args.secret.access()?
    };
    if let Some(addr) = &args.http.http {
        crate::auth::check_http_address(addr)?;
        // The live view is the one socket of a run others may reach; advice names only
        // flags `run` has (it has no --allow: its own sockets are loopback).
        if access.secret.is_none() && !args.insecure && access.http_token(addr).is_err() {
            bail!(
                "refusing to serve the live view on {addr} (--http) without authentication: give \
                 --secret-file FILE (make one with `conquer secret new FILE`; clients then send the \
                 token `conquer secret token FILE` prints), bind a loopback address such as \
                 127.0.0.1:8080, or pass --insecure"
            );
        }
    }
    // Loopback admits every local user: `run` owns every role, so without --secret-file it
    // makes a secret of its own that only its workers present.
    if access.secret.is_none() {
        access.secret = Some(crate::auth::Secret::fresh()?);
    }
    let mut prepared = args.batch.prepare(args.verify.percent(), max_payload)?;
    prepared.job.replicate_percent = args.verify.replicate;
    if let (Some(_), Ok(view)) = (
        &args.report.image,
        crate::kernels::mandelbrot::View::of(&prepared.job),
    ) {
        crate::outputs::check_picture(&view)?;
    }
    check_outputs_fit(&args.report, &prepared.job)?;
    // What the sink would refuse of its files, said before anything binds.
    args.report
        .sink_config(String::new())
        .outputs
        .check(args.resume.resume, args.overwrite.overwrite)?;
    let options = args.backend.options()?;
    // `auto` is decided once, with the batch in view, and said once.
    let mut kind = args.backend.backend;
    let mut decided = false;
    if kind == BackendKind::Auto {
        if let Some(chosen) =
            backend::auto_for_batch(crate::kernels::is_data(&prepared.job), &options)?
        {
            kind = chosen;
            decided = true;
        }
    }
    let mut backends = Vec::with_capacity(args.workers as usize);
    for index in 0..args.workers {
        // The choice is said once for the run, not once per worker.
        let options = backend::BackendOptions {
            quiet: decided || index > 0,
            ..options.clone()
        };
        backends.push(backend::build(kind, &options)?);
    }
    if args.verify.percent() > 0 && !crate::kernels::is_data(&prepared.job) {
        if let Some(sleeper) = backends.iter().find(|b| b.kind() == "sleep") {
            bail!(
                "--verify checks computed results against the CPU reference, but the {} backend computes \
                 nothing{}: pass --backend cpu or --backend software, or drop --verify",
                sleeper.kind(),
                if args.backend.backend == BackendKind::Auto {
                    " (--backend auto found no hardware GPU and chose sleep)"
                } else {
                    ""
                }
            );
        }
    }
    let heartbeat = args.heartbeat.heartbeat();
    let ventilator = VentilatorConfig {
        order: args.batch.order,
        seed: args.batch.tasks.seed,
        window: args.dispatch.window,
        max_window: args.dispatch.max_window,
        backup: args.dispatch.backup()?,
        heartbeat,
        http: args.http.http.clone(),
        http_linger: args.http.linger()?,
        board: None,
        shown_endpoint: None,
        inputs: prepared.inputs,
        kernel_source: prepared.source,
        batch_id: Some(prepared.batch_id),
        chunking: prepared.chunking,
        max_attempts: args.dispatch.max_attempts,
        resume: args.resume.resume,
        ..VentilatorConfig::local(prepared.batch, prepared.job)
    };
    let policy = prepared.chunking.map(|plan| plan.policy.name());
    let mut sink = args.report.sink_config(String::new());
    sink.max_payload = max_payload;
    sink.compress = compress;
    sink.overwrite = args.overwrite.overwrite;
    sink.resume = args.resume.resume;
    sink.resume_advice = Some(format!("run `{}`", this_command_with("--resume")));
    sink.heartbeat = heartbeat;
    let json = args.report.json;
    // Printed as soon as the batch is complete, while the live view lingers.
    let print: crate::local::OnReport = Box::new(move |report| {
        if let (Some(job), Some(policy)) = (report.job.as_mut(), policy) {
            job.chunking = policy.to_owned();
        }
        if !json && (report.job.is_none() || report.expected_ms > 0) {
            crate::report::print_expected_cost(report.expected_ms);
        }
        crate::report::print(report, json)
    });
    let report = crate::local::run(
        crate::local::LocalRun {
            sink,
            access,
            on_report: Some(print),
            ..crate::local::LocalRun::new(ventilator, backends)
        },
        shutdown,
    )?;
    Ok(match report.verdict() {
        Ok(()) => 0,
        Err(why) => {
            log::error!("the batch failed: {why}");
            1
        }
    })
}

/// Refuses, before anything binds, outputs flags that the batch cannot honour: a picture
/// of a batch that paints none, or an input kernel whose outputs would be dropped.
fn check_outputs_fit(report: &ReportArgs, job: &Job) -> anyhow::Result<()> {
    let kernel = Kernel::from_id(job.kernel);
    if report.image.is_some() && kernel != Some(Kernel::Mandelbrot) {
        bail!(
            "--image needs a Mandelbrot batch, and this one runs the {} kernel: add --kernel \
             mandelbrot, or drop --image",
            kernel.map_or("unknown", Kernel::name)
        );
    }
    let flag = match kernel {
        Some(Kernel::User) => "--kernel-file",
        Some(Kernel::Copy) => "--kernel copy",
        _ => return Ok(()),
    };
    if report.outputs.is_none() {
        bail!(
            "{flag}: the kernel's outputs are all it computes, and without --outputs DIR they \
             would be dropped: pass --outputs DIR"
        );
    }
    Ok(())
}

/// The command this process was started with, as a shell line to type again with `flag`
/// added (and `--overwrite`, which contradicts `--resume`, dropped).
fn this_command_with(flag: &str) -> String {
    let mut words = vec!["conquer".to_owned()];
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| a != "--overwrite" && a != flag)
        .collect();
    // Bare `conquer` is `conquer run`, whose flags need the command named.
    if !args.iter().any(|a| a == "run") {
        words.push("run".to_owned());
    }
    words.extend(args.iter().map(|a| shell_word(a)));
    words.push(flag.to_owned());
    words.join(" ")
}

/// `word` as a POSIX shell reads it back: bare when it is plain, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn ventilator(args: VentilatorArgs, wire: Wire, shutdown: &Shutdown) -> anyhow::Result<i32> {
    let Wire {
        max_payload,
        compress,
    } = wire;
    let wait_timeout = seconds(args.wait_timeout, "--wait-timeout")?;
    if args.classic && args.http.http.is_some() {
        bail!("--http needs the credit protocol: classic mode has no live view (drop --classic or --http)");
    }
    if args.classic {
        let config = crate::classic::ClassicVentilatorConfig {
            bind: args.bind,
            sink: args.sink,
            batch: args.batch.batch()?,
            order: args.batch.order,
            seed: args.batch.tasks.seed,
            wait_workers: args.wait_workers,
            wait_timeout,
            announce: true,
            access: args.access.access()?,
            max_payload,
        };
        let ctx = zmq::Context::new();
        crate::classic::ClassicVentilator::bind(&ctx, config)?.run(shutdown)?;
        return Ok(0);
    }
    let mut prepared = args.batch.prepare(args.verify.percent(), max_payload)?;
    prepared.job.replicate_percent = args.verify.replicate;
    let config = VentilatorConfig {
        bind: args.bind,
        sink: args.sink,
        batch: prepared.batch,
        order: args.batch.order,
        seed: args.batch.tasks.seed,
        job: prepared.job,
        chunking: prepared.chunking,
        wait_workers: args.wait_workers,
        wait_timeout: Duration::from_secs_f64(args.wait_timeout),
        window: args.dispatch.window,
        max_window: args.dispatch.max_window,
        heartbeat: args.heartbeat.heartbeat(),
        backup: args.dispatch.backup()?,
        sink_timeout: seconds(args.sink_timeout, "--sink-timeout")?,
        shutdown_workers: args.shutdown_workers,
        batch_id: args.batch_id.or(Some(prepared.batch_id)),
        resume: args.resume,
        announce: true,
        timeline: None,
        access: args.access.access()?,
        http: args.http.http.clone(),
        http_linger: args.http.linger()?,
        board: None,
        shown_endpoint: None,
        inputs: prepared.inputs,
        kernel_source: prepared.source,
        fixed_workers: 0,
        max_attempts: args.dispatch.max_attempts,
        max_payload,
        compress,
        resume_advice: None,
    };
    let ctx = zmq::Context::new();
    Ventilator::bind(&ctx, config)?.run(shutdown)?;
    Ok(0)
}

fn work(args: WorkerArgs, wire: Wire, shutdown: &Shutdown) -> anyhow::Result<i32> {
    let Wire {
        max_payload,
        compress,
    } = wire;
    // A secret that cannot be used fails before any adapter is probed.
    let access = args.secret.access()?;
    let backend = args.backend.build()?;
    if args.classic {
        let config = crate::classic::ClassicWorkerConfig {
            ventilator: args.ventilator,
            sink: args.sink,
            control: args.control,
            job: Job {
                kernel: 0,
                units_per_ms: args.units_per_ms,
                verify_percent: 0,
                ..Job::default()
            },
            access: access.clone(),
            max_payload,
        };
        let ctx = zmq::Context::new();
        let summary = crate::classic::run_worker(&ctx, config, backend, shutdown)?;
        log::info!("worker done: {} tasks", summary.tasks);
        return Ok(0);
    }
    let config = WorkerConfig {
        ventilator: args.ventilator,
        sink: args.sink,
        name: args.name.unwrap_or_else(|| worker::default_name(0)),
        exit_when_done: args.exit_when_done,
        batch_wait: Some(seconds(args.wait_timeout, "--wait-timeout")?),
        announce: true,
        heartbeat: args.heartbeat.heartbeat(),
        access,
        max_payload,
        compress,
    };
    crate::heartbeat::check_name(&config.name).map_err(|why| anyhow::anyhow!("--name: {why}"))?;
    let ctx = zmq::Context::new();
    let summary = match worker::run(&ctx, config, backend, shutdown) {
        Ok(summary) => summary,
        Err(e) => match e.downcast_ref::<crate::flow::FlowStop>() {
            Some(why @ crate::flow::FlowStop::NoBatch { .. }) => {
                eprintln!("conquer: {why}");
                return Ok(EXIT_NO_BATCH);
            }
            _ => return Err(e),
        },
    };
    log::info!(
        "worker done: {} tasks over {} batches",
        summary.tasks,
        summary.batches
    );
    Ok(0)
}

/// What every role of this process sends and accepts on the wire: `--max-payload`, and
/// whether it compresses (not with `--no-compress`).
#[derive(Debug, Clone, Copy)]
struct Wire {
    max_payload: u64,
    compress: bool,
}

/// Exit status of a worker with --exit-when-done that heard of no batch in time.
pub const EXIT_NO_BATCH: i32 = 3;

fn sink(args: SinkArgs, wire: Wire, shutdown: &Shutdown) -> anyhow::Result<i32> {
    let Wire {
        max_payload,
        compress,
    } = wire;
    let ctx = zmq::Context::new();
    if args.classic {
        let config = crate::classic::ClassicSinkConfig {
            bind: args.bind,
            control_bind: args.control_bind,
            tasks: args.tasks,
            access: args.access.access()?,
            max_payload,
        };
        let report = crate::classic::ClassicSink::bind(&ctx, config)?.run(shutdown)?;
        crate::report::print(&report, args.report.json)?;
        return Ok(0);
    }
    let mut config = args.report.sink_config(args.bind);
    config.access = args.access.access()?;
    config.resume = args.resume.resume;
    config.overwrite = args.overwrite.overwrite;
    config.heartbeat = args.heartbeat.heartbeat();
    config.max_payload = max_payload;
    config.compress = compress;
    let report = Sink::bind(&ctx, config)?.run(shutdown)?;
    crate::report::print(&report, args.report.json)?;
    Ok(match report.verdict() {
        Ok(()) => 0,
        Err(why) => {
            log::error!("the batch failed: {why}");
            1
        }
    })
}

fn info(json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    if json {
        serde_json::to_writer_pretty(&mut out, &backend::info_report())
            .context("writing the JSON")?;
        println!();
        return Ok(());
    }
    let (major, minor, patch) = zmq::version();
    println!("libzmq {major}.{minor}.{patch}");
    backend::describe_adapters(&mut out).context("listing adapters")
}

/// `conquer submit`: the task list to the coordinator, its id to stdout; with --wait, the
/// job followed to its end.
/// The submission `submit`'s flags make, and the input files' bytes that travel with it.
/// The job is prepared here first, as the ventilator would prepare it, so a bad flag, a
/// kernel that does not compile (`file:line:column`) or a missing input is an error before
/// anything is sent; the coordinator checks it again before it accepts it.
fn submission(args: &SubmitArgs) -> anyhow::Result<(Request, Vec<Vec<u8>>)> {
    let batch = &args.batch;
    let verify_percent = args.verify.percent();
    let remote_inputs = match (&batch.data.inputs, args.inputs_on_coordinator) {
        (Some(pattern), true) => Some(crate::serve::check_remote_inputs(pattern)?),
        _ => None,
    };
    // A coordinator's jobs run with the default payload limit. Inputs on the coordinator
    // are found there: here only the kernel is checked.
    let prepared = match &remote_inputs {
        None => Some(batch.prepare(verify_percent, crate::protocol::DEFAULT_MAX_PAYLOAD)?),
        Some(_) => None,
    };
    let source = match (&prepared, &batch.data.kernel_file) {
        (Some(prepared), _) => prepared.source.as_deref().map(str::to_owned),
        (None, Some(path)) => Some(read_kernel_file(path)?.0),
        (None, None) => None,
    };
    let task_list = batch.kernel == Kernel::Spin
        && batch.data.kernel_file.is_none()
        && batch.chunks.policy().is_none();
    let workloads_ms = match &prepared {
        Some(prepared) if task_list => prepared.batch.tasks.iter().map(|t| t.workload_ms).collect(),
        _ => Vec::new(),
    };
    let file_name = |path: &std::path::Path| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let name = match (&args.name, &batch.tasks.tasks_file, &batch.data.kernel_file) {
        (Some(name), _, _) => name.clone(),
        (None, Some(path), _) if task_list => file_name(path),
        (None, _, Some(path)) => file_name(path),
        (None, _, None) if task_list => "seeded".into(),
        (None, _, None) => batch.kernel.name().into(),
    };
    // The files travel; the flags that named them on this machine do not.
    let mut flags = batch.clone();
    flags.tasks.tasks_file = None;
    flags.data.kernel_file = None;
    flags.data.inputs = None;
    let (inputs, frames) = match prepared.as_ref().and_then(|p| p.inputs.as_ref()) {
        None => (Vec::new(), Vec::new()),
        Some(inputs) => {
            let mut total = 0u64;
            for path in &inputs.paths {
                total += std::fs::metadata(path)
                    .with_context(|| format!("cannot read input {}", path.display()))?
                    .len();
            }
            let most = crate::protocol::control::MAX_REQUEST_BYTES as u64;
            if total > most {
                bail!(
                    "the inputs are {total} bytes, over the {most} a submission may carry: \
                     submit fewer or smaller files"
                );
            }
            let mut frames = Vec::with_capacity(inputs.paths.len());
            for path in &inputs.paths {
                frames.push(
                    std::fs::read(path)
                        .with_context(|| format!("cannot read input {}", path.display()))?,
                );
            }
            (inputs.names.clone(), frames)
        }
    };
    let request = Request::Submit {
        name,
        priority: args.priority,
        workloads_ms,
        flags: Some(serde_json::to_value(&flags).context("describing the job")?),
        verify_percent,
        replicate_percent: args.verify.replicate,
        kernel_source: source,
        inputs,
        remote_inputs,
    };
    Ok((request, frames))
}

fn submit(args: SubmitArgs, shutdown: &Shutdown) -> anyhow::Result<i32> {
    let (request, frames) = submission(&args)?;
    let Reply::Submitted { id } = args.coordinator.ask_with(&request, &frames)? else {
        bail!("the coordinator answered something else than the submission");
    };
    if !args.wait {
        println!("{id}");
        return Ok(0);
    }
    eprintln!("job {id} submitted; following it to its end");
    // Where the job stands, said when it changes: waiting for a place, for workers, or
    // running on some (a job with no worker would otherwise wait in silence).
    // A job just started has no worker for a moment, while the coordinator hands it
    // some: "no worker" is said once that has lasted a second.
    use conquer_core::jobs::JobState;
    let mut said = None;
    let mut seen: Option<((JobState, Option<bool>), Instant)> = None;
    // A coordinator restarted resumes the job: its silence is waited out for a minute.
    let mut lost: Option<Instant> = None;
    loop {
        shutdown.check()?;
        let reply = match args.coordinator.ask(&Request::Results { id }) {
            Err(e) if e.downcast_ref::<crate::serve::NoAnswer>().is_some() => {
                let since = *lost.get_or_insert_with(|| {
                    eprintln!(
                        "{e:#}; still following job {id} for a minute (a coordinator started \
                         again on its --state resumes it)"
                    );
                    Instant::now()
                });
                if since.elapsed() >= LOST_COORDINATOR_WAIT {
                    return Err(e.context(format!(
                        "lost the coordinator while following job {id}: it may still run; \
                         `conquer results {id}` says how it ends"
                    )));
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            other => other?,
        };
        if lost.take().is_some() {
            eprintln!("the coordinator answers again; following job {id}");
        }
        if let Reply::Results { job, .. } = &reply {
            if job.state.is_over() {
                return print_job(&reply, args.json, true);
            }
            let stands = (job.state, job.workers.map(|w| w > 0));
            let since = match seen {
                Some((s, at)) if s == stands => at,
                _ => Instant::now(),
            };
            seen = Some((stands, since));
            let settled = stands.1 != Some(false) || since.elapsed() >= Duration::from_secs(1);
            if said != Some(stands) && settled {
                said = Some(stands);
                match stands {
                    (JobState::Queued, _) => eprintln!(
                        "job {id} is queued: it starts when one of the coordinator's running jobs \
                         (--max-running) ends"
                    ),
                    (JobState::Running, Some(false)) => eprintln!(
                        "job {id} is running with no worker: it waits for one to connect to the \
                         coordinator (conquer worker --ventilator … --sink …)"
                    ),
                    (JobState::Running, Some(true)) => {
                        let n = job.workers.unwrap_or_default();
                        eprintln!(
                            "job {id} is running on {n} worker{}",
                            if n == 1 { "" } else { "s" }
                        )
                    }
                    _ => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long `submit --wait` follows its job through a coordinator's silence.
const LOST_COORDINATOR_WAIT: Duration = Duration::from_secs(60);

pub fn state_name(state: conquer_core::jobs::JobState) -> &'static str {
    state.name()
}

/// The jobs as a table, oldest first.
fn jobs_table(jobs: &[JobView]) -> String {
    let now = worker::unix_ms();
    let mut out = format!(
        "{:>6}  {:<9}  {:>17}  {:>7}  {:>8}  {:>10}  NAME\n",
        "ID", "STATE", "HELD / TASKS", "WORKERS", "PRIORITY", "ELAPSED"
    );
    for job in jobs {
        let elapsed = match (job.started_ms, job.ended_ms) {
            (Some(start), Some(end)) => format!("{:.1} s", end.saturating_sub(start) as f64 / 1e3),
            (Some(start), None) => format!("{:.1} s", now.saturating_sub(start) as f64 / 1e3),
            _ => "-".into(),
        };
        let held = match job.held {
            Some(held) => format!("{held} / {}", job.tasks),
            None => format!("- / {}", job.tasks),
        };
        let workers = job
            .workers
            .map_or_else(|| "-".to_owned(), |w| w.to_string());
        out.push_str(&format!(
            "{:>6}  {:<9}  {:>17}  {:>7}  {:>8}  {:>10}  {}\n",
            job.id,
            state_name(job.state),
            held,
            workers,
            job.priority,
            elapsed,
            crate::logging::printable(&job.name)
        ));
    }
    out
}

/// A `results` reply: the report (JSON with --json), or where the job stands; exit 0 when
/// the job is done.
fn print_results(reply: &Reply, json: bool) -> anyhow::Result<i32> {
    print_job(reply, json, false)
}

/// A `results` reply: with `like_run` (`submit --wait`), the job's report exactly as `run`
/// prints it (`--json`: the report alone); else the job, its report and its folder (JSON
/// with `json`). Exit 0 when the job is done and its report's verdict holds, 1 otherwise,
/// as `run` exits.
fn print_job(reply: &Reply, json: bool, like_run: bool) -> anyhow::Result<i32> {
    let Reply::Results {
        job,
        report,
        folder,
    } = reply
    else {
        bail!("the coordinator answered something else than the job's results");
    };
    let parsed: Option<crate::report::Report> = match report {
        Some(r) => Some(serde_json::from_value(r.clone()).with_context(|| {
            format!(
                "job {}'s report in {folder} is not one this conquer reads (another version?)",
                job.id
            )
        })?),
        None => None,
    };
    let verdict = parsed.as_ref().map(|r| r.verdict());
    let done = job.state == conquer_core::jobs::JobState::Done
        && verdict.as_ref().is_none_or(|v| v.is_ok());
    if json && !like_run {
        let value = serde_json::json!({ "job": job, "report": report, "folder": folder });
        println!("{}", serde_json::to_string(&value)?);
    } else {
        if let Some(report) = &parsed {
            if !json && (report.job.is_none() || report.expected_ms > 0) {
                crate::report::print_expected_cost(report.expected_ms);
            }
            crate::report::print(report, json)?;
        }
        // Where things stand and where the files are: on stderr beside the report, as
        // the roles log, so stdout holds the report alone.
        let say = |line: String| {
            if like_run {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        };
        say(format!(
            "job {}: {} ({})",
            job.id,
            state_name(job.state),
            crate::logging::printable(&job.name)
        ));
        if !job.reason.is_empty() {
            say(format!("  {}", crate::logging::printable(&job.reason)));
        }
        if let Some(Err(why)) = &verdict {
            say(format!("  {why}"));
        }
        say(format!("  files in {folder}"));
    }
    Ok(if done { 0 } else { 1 })
}

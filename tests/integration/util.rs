//! Helpers: run the real `conquer` executable, wait for the events it writes (`--events`,
//! JSON lines: no log wording and no sleeps as synchronisation), keep its log for
//! assertions, and parse its JSON report.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `conquer` executable under test: the one cargo built, or `CONQUER_BIN` (for a test
/// binary copied to another machine, as `scripts/gpu-bench.sh` does).
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("CONQUER_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_conquer").into())
}

/// Generous bound for anything a test waits for; a healthy run takes a fraction of it.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running `conquer` process whose stderr is read line by line.
pub struct Proc {
    pub name: String,
    child: Child,
    seen: Arc<Mutex<Vec<String>>>,
    /// Reads its stderr into `seen` until the pipe closes.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    stdout: Option<std::thread::JoinHandle<String>>,
    /// Where it writes its events (`CONQUER_EVENTS`), in a folder that lives as long as
    /// this.
    events: std::path::PathBuf,
    _events_dir: tempfile::TempDir,
}

impl Proc {
    /// Starts `conquer -v ARGS...`.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Self::start_with_env(name, args, &[])
    }

    /// Starts `conquer ARGS...` at default verbosity, as a user would.
    pub fn start_quiet(name: &str, args: &[&str]) -> Proc {
        let mut command = Command::new(binary());
        command.args(args).stdin(Stdio::null());
        Self::spawn(name, command)
    }

    /// Starts `conquer -v ARGS...` with its stdin a pipe to write to.
    pub fn start_with_stdin(name: &str, args: &[&str]) -> Proc {
        let mut command = Command::new(binary());
        command.arg("-v").args(args).stdin(Stdio::piped());
        Self::spawn(name, command)
    }

    /// Starts `conquer -v ARGS...` with extra environment variables.
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut command = Command::new(binary());
        command
            .arg("-v")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        Self::spawn(name, command)
    }

    /// Starts any program (e.g. `ip netns exec … conquer …`).
    pub fn program(name: &str, program: &str, args: &[&str]) -> Proc {
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null());
        Self::spawn(name, command)
    }

    /// Starts one of the Guide's example programs, with stdin to write to.
    pub fn example(name: &str, args: &[&str]) -> Proc {
        // Test binaries live in target/<profile>/deps; examples in target/<profile>/examples.
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
        let path = profile_dir.join("examples").join(name);
        assert!(
            path.exists(),
            "example {name} is not built at {}",
            path.display()
        );
        let mut command = Command::new(path);
        command.args(args).stdin(Stdio::piped());
        Self::spawn(name, command)
    }

    /// Writes a line to the process's stdin.
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}").expect("write to stdin");
    }

    fn spawn(name: &str, mut command: Command) -> Proc {
        let events_dir = tempfile::tempdir().expect("a folder for the events");
        let events = events_dir.path().join("events.jsonl");
        command.env("CONQUER_EVENTS", &events);
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start conquer");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = seen.clone();
        let stderr_reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        }));
        let mut out = child.stdout.take().expect("stdout is piped");
        let stdout = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }));
        Proc {
            name: name.to_owned(),
            child,
            seen,
            stderr_reader,
            stdout,
            events,
            _events_dir: events_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }

    /// The events it has written so far, in order (whole lines only).
    pub fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: a bad event line {line:?}: {e}", self.name))
            })
            .collect()
    }

    /// Waits for the first event named `event` for which `matches` holds, and returns it.
    pub fn event_where(
        &self,
        event: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self
                .events()
                .into_iter()
                .find(|e| e["event"] == event && matches(e));
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{} never wrote a matching {event:?} event; its events:\n{}\nits log:\n{}",
                self.name,
                std::fs::read_to_string(&self.events).unwrap_or_default(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the first event named `event`, and returns it.
    pub fn event(&self, event: &str) -> serde_json::Value {
        self.event_where(event, |_| true)
    }

    /// Waits until it listens on its `socket` (`tasks`, `results`, `control`), and returns
    /// the endpoint as a connectable address.
    pub fn endpoint(&self, socket: &str) -> String {
        let e = self.event_where("listening", |e| e["socket"] == socket);
        e["endpoint"].as_str().expect("an endpoint").to_owned()
    }

    /// Waits for the live view's address (`--http`): `http://HOST:PORT`, no trailing slash.
    pub fn live_view(&self) -> String {
        self.endpoint("http")
    }

    /// Waits for the process to exit; returns its status, stdout and stderr.
    pub fn finish(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit; its log:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.take().unwrap().join().unwrap();
        // Every line it wrote: its stderr closes when it exits.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        (status, stdout, self.log())
    }

    /// Stops it with Ctrl-C (SIGINT) and returns everything it logged.
    pub fn interrupt(self) -> String {
        self.signal("INT");
        self.finish().2
    }

    /// Sends a signal (SIGKILL, SIGSTOP, SIGINT, ...).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "cannot send SIG{signal} to {}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback endpoint on a port that was free a moment ago, for programs (the Guide's
/// examples) that cannot bind port 0 and say which port they got.
pub fn free_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    format!("tcp://127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// Parses the sink's `--json` report.
pub fn report(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}"))
}

/// Starts a sink on an ephemeral loopback port; returns it and its endpoint.
pub fn sink(extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["sink", "--bind", "tcp://127.0.0.1:0", "--json"];
    args.extend_from_slice(extra);
    let sink = Proc::start("sink", &args);
    let endpoint = sink.endpoint("results");
    (sink, endpoint)
}

/// Starts a ventilator on an ephemeral loopback port; returns it and its endpoint.
pub fn ventilator(sink: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["ventilator", "--bind", "tcp://127.0.0.1:0", "--sink", sink];
    args.extend_from_slice(extra);
    let vent = Proc::start("ventilator", &args);
    let endpoint = vent.endpoint("tasks");
    (vent, endpoint)
}

/// Starts a sleep worker named `name`.
pub fn worker(name: &str, ventilator: &str, sink: &str, extra: &[&str]) -> Proc {
    worker_on("sleep", name, ventilator, sink, extra)
}

/// A named worker of `backend`, with `extra` flags.
pub fn worker_on(backend: &str, name: &str, ventilator: &str, sink: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "worker",
        "--ventilator",
        ventilator,
        "--sink",
        sink,
        "--name",
        name,
        "--backend",
        backend,
    ];
    args.extend_from_slice(extra);
    Proc::start(name, &args)
}

/// A sink (writing a JSON Lines results file), a ventilator waiting for all the workers, and
/// named sleep workers that leave when the batch is done, all on loopback.
pub struct Cluster {
    pub sink: Proc,
    pub vent: Proc,
    pub workers: Vec<Proc>,
    pub sink_ep: String,
    pub vent_ep: String,
    pub results: ResultsPath,
}

/// The sink's results file, in a temporary folder that lives exactly as long as this.
pub struct ResultsPath {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for ResultsPath {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

impl Cluster {
    /// `batch` are the ventilator's batch flags; `extra` go to the ventilator and workers.
    pub fn start(batch: &[&str], workers: &[&str], extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let results = dir.path().join("results.jsonl");
        let (sink, sink_ep) = sink(&["--results", results.to_str().expect("UTF-8 path")]);
        let count = workers.len().to_string();
        let mut vent_args = batch.to_vec();
        vent_args.extend(["--wait-workers", count.as_str()]);
        vent_args.extend_from_slice(extra);
        let (vent, vent_ep) = ventilator(&sink_ep, &vent_args);
        let mut worker_args = vec!["--exit-when-done"];
        worker_args.extend_from_slice(extra);
        let workers = workers
            .iter()
            .map(|name| worker(name, &vent_ep, &sink_ep, &worker_args))
            .collect();
        Cluster {
            sink,
            vent,
            workers,
            sink_ep,
            vent_ep,
            results: ResultsPath {
                path: results,
                _dir: dir,
            },
        }
    }
}

/// Waits for the sink to finish a batch of `tasks` and checks what every complete batch
/// must show: a clean exit, every task counted once by the workers' tallies, and (with a
/// results file) every task exactly once in the file. Returns the JSON report.
pub fn completed(sink: Proc, tasks: u64, results: Option<&std::path::Path>) -> serde_json::Value {
    let (status, stdout, log) = sink.finish();
    assert!(status.success(), "the sink failed: {log}");
    let r = report(&stdout);
    assert_eq!(r["tasks"], tasks, "{r}");
    assert_eq!(delivered(&r), tasks, "each task counted once: {r}");
    if let Some(path) = results {
        assert_each_once(&result_ids(path), tasks);
    }
    r
}

/// Tasks the report's workers delivered, summed.
pub fn delivered(report: &serde_json::Value) -> u64 {
    report["workers"]
        .as_array()
        .expect("workers in the report")
        .iter()
        .map(|w| w["tasks"].as_u64().expect("tasks per worker"))
        .sum()
}

/// Task ids in a JSON Lines results file, each as many times as it appears.
pub fn result_ids(path: &std::path::Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).expect("results file");
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            v["task"].as_u64().expect("task id")
        })
        .collect()
}

/// Asserts every id in `0..n` appears exactly once.
pub fn assert_each_once(ids: &[u64], n: u64) {
    let mut counts = vec![0u32; n as usize];
    for &id in ids {
        assert!(id < n, "task {id} outside the batch of {n}");
        counts[id as usize] += 1;
    }
    let wrong: Vec<_> = counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c != 1)
        .map(|(id, c)| (id, *c))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "tasks not seen exactly once (id, count): {wrong:?}"
    );
}

/// A worker played by the test with raw sockets: it joins the sink (and is welcomed), then
/// greets the ventilator. `beat` sends both greetings again (heartbeats) and drains the
/// sink's answers; `heard_from_ventilator` waits up to 100 ms for frames from the ventilator.
pub struct RawWorker {
    pub info: conquer::protocol::WorkerInfo,
    pub tasks: zmq::Socket,
    pub results: zmq::Socket,
    _ctx: zmq::Context,
}

impl RawWorker {
    pub fn join(sink_ep: &str, vent_ep: &str, info: conquer::protocol::WorkerInfo) -> RawWorker {
        use conquer::protocol::Message;
        let ctx = zmq::Context::new();
        let id = format!("{}/{}", info.name, info.session);
        let socket = |endpoint: &str| {
            let s = ctx.socket(zmq::DEALER).unwrap();
            s.set_identity(id.as_bytes()).unwrap();
            s.set_linger(0).unwrap();
            s.connect(endpoint).unwrap();
            s
        };
        let results = socket(sink_ep);
        results
            .send(Message::Join(info.clone()).encode(), 0)
            .unwrap();
        results.set_rcvtimeo(30_000).unwrap();
        let welcome = Message::decode(&results.recv_bytes(0).expect("the sink answers a join"));
        assert_eq!(welcome, Ok(Message::Welcome { codecs: 1 }));
        let tasks = socket(vent_ep);
        RawWorker {
            info,
            tasks,
            results,
            _ctx: ctx,
        }
    }

    pub fn beat(&self) {
        use conquer::protocol::Message;
        self.tasks
            .send(Message::Hello(self.info.clone()).encode(), 0)
            .unwrap();
        self.results
            .send(Message::Join(self.info.clone()).encode(), zmq::DONTWAIT)
            .ok();
        while self.results.recv_bytes(zmq::DONTWAIT).is_ok() {}
    }

    /// Frames from the ventilator that arrive within 100 ms, decoded.
    pub fn heard_from_ventilator(&self) -> Vec<conquer::protocol::Message> {
        let mut items = [self.tasks.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 100).unwrap();
        let mut messages = Vec::new();
        while let Ok(frame) = self.tasks.recv_bytes(zmq::DONTWAIT) {
            if let Ok(m) = conquer::protocol::Message::decode(&frame) {
                messages.push(m);
            }
        }
        messages
    }
}

/// A network namespace and the veth pair into it, removed on drop: a second machine for
/// tests, reaching this one at `host_ip` from `guest_ip`. Needs root and iproute2.
pub struct Netns {
    pub name: String,
    outside: String,
    /// The veth's end inside the namespace.
    inside: String,
    /// Address of this side of the link, which the namespace reaches us at.
    pub host_ip: String,
    /// The namespace's own address: where its connections come from.
    pub guest_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

static NETNS_COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Netns {
    /// A namespace, or `None` (the test skips) where none can be made, unless
    /// CONQUER_REQUIRE_NETNS=1 (as CI sets) makes that a failure.
    pub fn create_or_skip() -> Option<Netns> {
        match Netns::create() {
            Ok(ns) => Some(ns),
            Err(why) => {
                if std::env::var("CONQUER_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
                    panic!("CONQUER_REQUIRE_NETNS=1 but no network namespace: {why}");
                }
                eprintln!("skipping: cannot make a network namespace ({why}); run as root");
                None
            }
        }
    }

    fn create() -> Result<Netns, String> {
        // Distinct per process and per namespace of this process: a /30 of our own.
        let n = NETNS_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}{n}", std::process::id() % 10_000);
        let octet = std::process::id() % 250 + 1;
        let base = (n % 60) * 4;
        let ns = Netns {
            name: format!("cq-netns-{id}"),
            outside: format!("cqa{id}"),
            inside: format!("cqb{id}"),
            host_ip: format!("10.231.{octet}.{}", base + 1),
            guest_ip: format!("10.231.{octet}.{}", base + 2),
        };
        let inside = ns.inside.clone();
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.outside,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
        ])?;
        ip(&["link", "set", &inside, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.outside,
        ])?;
        ip(&["link", "set", &ns.outside, "up"])?;
        let guest = format!("{}/30", ns.guest_ip);
        ip(&["-n", &ns.name, "addr", "add", &guest, "dev", &inside])?;
        ip(&["-n", &ns.name, "link", "set", &inside, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes the link down (packets vanish, nothing closes) or up again.
    pub fn link(&self, up: bool) {
        ip(&["link", "set", &self.outside, if up { "up" } else { "down" }])
            .expect("changing the link");
    }

    /// Limits the link to `rate` (`tc` units: `100mbit`, `1gbit`) both ways, with a token
    /// bucket on each end's way out, as a slower network between two machines would.
    pub fn shape(&self, rate: &str) {
        for (netns, dev) in [(None, &self.outside), (Some(&self.name), &self.inside)] {
            let mut args = Vec::new();
            if let Some(name) = netns {
                args.extend(["-n", name.as_str()]);
            }
            args.extend(["qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate]);
            args.extend(["burst", "256kb", "latency", "50ms"]);
            let out = Command::new("tc").args(&args).output().expect("running tc");
            assert!(
                out.status.success(),
                "tc {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }

    /// A `conquer` process inside the namespace.
    pub fn conquer(&self, name: &str, args: &[&str]) -> Proc {
        let binary = binary();
        let mut full = vec!["netns", "exec", &self.name, binary.to_str().unwrap()];
        full.extend_from_slice(args);
        Proc::program(name, "ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.outside]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Waits until the results file has at least `n` lines (results the sink made durable).
pub fn wait_for_lines(path: &std::path::Path, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
        if lines >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {lines} results written");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Once the sink has made 100 results durable, SIGKILLs it and starts another on the same
/// endpoint resuming its results file (with `extra` flags).
pub fn kill_and_resume_sink(
    sink: Proc,
    endpoint: &str,
    results: &std::path::Path,
    extra: &[&str],
) -> Proc {
    wait_for_lines(results, 100);
    sink.signal("KILL");
    let (status, _, _) = sink.finish();
    assert!(!status.success(), "a SIGKILLed sink does not exit cleanly");
    let path = results.to_str().expect("UTF-8 path");
    let mut args = vec![
        "sink",
        "--bind",
        endpoint,
        "--json",
        "--results",
        path,
        "--resume",
    ];
    args.extend_from_slice(extra);
    Proc::start("resumed sink", &args)
}

/// Peak resident memory of a process so far (VmHWM), in KiB; 0 if /proc cannot say.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `GET url`'s body (a live view's page, status or metrics).
pub fn http_get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap()
}

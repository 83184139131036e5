//! The live view's HTTP endpoint (`--http ADDR`): a small HTTP/1.1 server on a std
//! `TcpListener` serving what the ventilator's pump last published, so a page load or a
//! scrape never touches the dispatch loop. `/` is the page (embedded, no CDN), `/api/status`
//! the JSON and `/metrics` the Prometheus text. A bind other machines can reach asks for
//! `Authorization: Bearer TOKEN` (or `?token=TOKEN`, for the page), the token derived from
//! the farm's secret (`conquer secret token F`), and admits only `--allow` addresses when
//! those are given.
//!
//! A hostile client gets bounded resources. One I/O thread accepts connections and reads
//! request heads without blocking (`poll`), so a slow client holds a socket and at most
//! [`MAX_HEAD`] bytes, never a thread: at most [`PER_CLIENT`] connections per client
//! address and [`MAX_READING`] in all are read at once, the excess answered 503 and closed at
//! once; a head must arrive whole within [`HEAD_TIMEOUT`] however slowly it dribbles in
//! (408, closed), with at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers (431). A
//! complete request waits (at most [`WAITING`] of them, 503 beyond) for one of a fixed pool
//! of [`POOL`] threads, which answers it within [`WRITE_TIMEOUT`] and closes: one request per
//! connection (`Connection: close`), GET and HEAD only, no request bodies.

use anyhow::anyhow;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown as Half, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The page: one file, its script and style inline.
const PAGE: &str = include_str!("../web/dashboard.html");
/// Threads that answer complete requests, one at a time each.
pub const POOL: usize = 16;
/// Connections one client address may hold open at once (being read, waiting or being
/// answered); a browser showing the page needs two. An IPv6 client is its /64, the block
/// one host is usually given.
pub const PER_CLIENT: usize = 8;
/// Connections whose request head is being read, from all clients together.
pub const MAX_READING: usize = 512;
/// Complete requests waiting for a free thread of the pool.
pub const WAITING: usize = 64;
/// Bytes of request line and headers, the blank line included.
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers in a request.
pub const MAX_HEADERS: usize = 32;
/// The whole request head must arrive within this, from the moment it is accepted.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole answer must be taken by the client within this.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused request's unread bytes are drained before closing, so that the client
/// reads the refusal rather than a reset.
const DRAIN: Duration = Duration::from_millis(250);
/// How often the I/O thread looks at the stop flag and the heads' deadlines.
const POLL_MS: i32 = 100;
/// Refusals are logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

const PLAIN: &str = "text/plain; charset=utf-8";

/// Who may read the view.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Required as a bearer token, when set.
    pub token: Option<String>,
    /// Only these addresses, when not empty.
    pub allow: Vec<crate::auth::Cidr>,
}

/// Checks `--http ADDR` before anything binds: `HOST:PORT` with a port from 0 to 65535
/// (0: any free one).
pub fn check_address(addr: &str) -> anyhow::Result<()> {
    match addr.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok() =>
        {
            Ok(())
        }
        _ => anyhow::bail!(
            "--http {addr:?}: expected HOST:PORT with a port from 0 to 65535, e.g. 127.0.0.1:8080"
        ),
    }
}

/// What the pump last published. The status stays a struct: it is turned into JSON by
/// the thread that answers, not by the dispatch loop.
#[derive(Default)]
struct Published {
    status: Option<Arc<crate::observe::FarmStatus>>,
    metrics: Arc<String>,
}

/// A running endpoint; stops accepting when dropped (a pool thread still busy finishes its
/// one answer within WRITE_TIMEOUT).
pub struct Server {
    published: Arc<Mutex<Published>>,
    stop: Arc<AtomicBool>,
    address: String,
    io: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves on `addr` (`HOST:PORT`; port 0 takes a free one) to whom `guard` admits.
    pub fn start(addr: &str, guard: Guard) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| anyhow!("cannot serve the live view on {addr} (--http): {e}"))?;
        let address = listener
            .local_addr()
            .map_or_else(|_| addr.to_owned(), |a| a.to_string());
        listener
            .set_nonblocking(true)
            .map_err(|e| anyhow!("cannot serve the live view on {addr} (--http): {e}"))?;
        let published = Arc::new(Mutex::new(Published::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (queue, waiting) = std::sync::mpsc::sync_channel::<Job>(WAITING);
        let waiting = Arc::new(Mutex::new(waiting));
        let guard = Arc::new(guard);
        for n in 0..POOL {
            let (waiting, published, guard) = (waiting.clone(), published.clone(), guard.clone());
            std::thread::Builder::new()
                .name(format!("http-{n}"))
                .spawn(move || pool_thread(&waiting, &published, &guard))
                .map_err(|e| anyhow!("cannot start the live view's threads: {e}"))?;
        }
        let io = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("http-io".into())
                .spawn(move || io_thread(&listener, &queue, &stop))
                .map_err(|e| anyhow!("cannot start the live view's thread: {e}"))?
        };
        Ok(Server {
            published,
            stop,
            address,
            io: Some(io),
        })
    }

    /// The address it listens on, port filled in.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Replaces what is served (the lock is held only to swap two pointers).
    pub fn publish(&self, status: crate::observe::FarmStatus, metrics: String) {
        let (status, metrics) = (Arc::new(status), Arc::new(metrics));
        if let Ok(mut p) = self.published.lock() {
            p.status = Some(status);
            p.metrics = metrics;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The I/O thread looks at the flag every POLL_MS; when it returns, the queue
        // closes and idle pool threads end.
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
    }
}

/// Open connections per client address.
#[derive(Default)]
struct Clients {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection's place in its client's count, given back when dropped.
struct Slot {
    clients: Arc<Clients>,
    ip: IpAddr,
}

impl Clients {
    /// A slot for a new connection from `ip`, or none when its client holds [`PER_CLIENT`]
    /// already.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = client(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(Slot {
            clients: self.clone(),
            ip,
        })
    }
}

/// The address a client is counted by: an IPv4 address (also when mapped into IPv6), or an
/// IPv6 address's /64.
fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection whose request head is still arriving.
struct Reading {
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    /// What has arrived of the head, at most MAX_HEAD bytes.
    head: Vec<u8>,
    deadline: Instant,
}

/// What one read of a connection being read came to.
enum Progress {
    /// Nothing yet, or part of a head.
    More,
    /// A complete head, or one the server will not read.
    Head(Result<Head, HeadError>),
    /// The client closed or reset the connection.
    Gone,
}

impl Reading {
    fn read(&mut self) -> Progress {
        let mut chunk = [0u8; 4096];
        // Never empty: a head of MAX_HEAD bytes is complete or too large.
        let room = (MAX_HEAD - self.head.len()).min(chunk.len());
        match (&self.stream).read(&mut chunk[..room]) {
            Ok(0) => Progress::Gone,
            Ok(n) => {
                self.head.extend_from_slice(&chunk[..n]);
                match parse_head(&self.head) {
                    Ok(None) => Progress::More,
                    Ok(Some(head)) => Progress::Head(Ok(head)),
                    Err(e) => Progress::Head(Err(e)),
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                Progress::More
            }
            Err(_) => Progress::Gone,
        }
    }
}

/// A connection for the pool: its request, or why the head was refused.
struct Job {
    stream: TcpStream,
    peer: SocketAddr,
    request: Result<Head, HeadError>,
    /// The client's place, given back when the answer is written.
    _slot: Slot,
}

/// Refusals, logged at most every REFUSAL_LOG_EVERY.
#[derive(Default)]
struct Refusals {
    count: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, from: IpAddr, why: &str) {
        self.count += 1;
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY)
        {
            log::warn!(
                "the live view refused {} connection(s) so far (last from {from}: {why}; at most \
                 {PER_CLIENT} per client address, {MAX_READING} being read and {WAITING} waiting)",
                self.count
            );
            self.logged = Some(Instant::now());
        }
    }
}

fn polled(fd: std::os::fd::RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The I/O thread: accepts connections, reads their heads as the bytes arrive, and hands
/// each complete (or refused) head to the pool.
fn io_thread(listener: &TcpListener, queue: &SyncSender<Job>, stop: &AtomicBool) {
    let clients = Arc::new(Clients::default());
    let mut reading: Vec<Reading> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut refusals = Refusals::default();
    while !stop.load(Ordering::Relaxed) {
        fds.clear();
        fds.push(polled(listener.as_raw_fd()));
        fds.extend(reading.iter().map(|r| polled(r.stream.as_raw_fd())));
        // SAFETY: `fds` is a valid array of its length, of descriptors this thread owns,
        // for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        if ready < 0 {
            continue; // a signal: look at the flag again
        }
        let now = Instant::now();
        // Last first, so that taking one out leaves the places of those still to look at.
        for i in (0..reading.len()).rev() {
            let progress = match fds[i + 1].revents {
                0 => Progress::More,
                _ => reading[i].read(),
            };
            match progress {
                Progress::More if now < reading[i].deadline => {}
                Progress::More => {
                    let late = reading.swap_remove(i);
                    log::debug!(
                        "the live view closed a connection from {}: no complete request \
                         within {} s",
                        late.peer.ip(),
                        HEAD_TIMEOUT.as_secs()
                    );
                    let body = format!(
                        "the request head must arrive within {} s\n",
                        HEAD_TIMEOUT.as_secs()
                    );
                    refuse(&late.stream, &text(408, PLAIN, body));
                }
                Progress::Gone => drop(reading.swap_remove(i)),
                Progress::Head(request) => {
                    let Reading {
                        stream, peer, slot, ..
                    } = reading.swap_remove(i);
                    let job = Job {
                        stream,
                        peer,
                        request,
                        _slot: slot,
                    };
                    match queue.try_send(job) {
                        Ok(()) => {}
                        Err(TrySendError::Full(job)) => {
                            let why = "too many requests waiting";
                            refuse(&job.stream, &busy(why));
                            refusals.note(job.peer.ip(), why);
                        }
                        Err(TrySendError::Disconnected(_)) => return,
                    }
                }
            }
        }
        if fds[0].revents != 0 {
            accept(listener, &clients, &mut reading, &mut refusals, now);
        }
    }
}

/// Takes every connection waiting on the listener: to be read when its client and the
/// server have room, answered 503 and closed otherwise.
fn accept(
    listener: &TcpListener,
    clients: &Arc<Clients>,
    reading: &mut Vec<Reading>,
    refusals: &mut Refusals,
    now: Instant,
) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was taken: wait
                // a moment rather than spin.
                log::debug!("the live view cannot accept a connection: {e}");
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        };
        let why = if reading.len() >= MAX_READING {
            "too many connections"
        } else {
            match clients.admit(peer.ip()) {
                None => "too many connections from this address",
                Some(slot) => {
                    if stream.set_nonblocking(true).is_ok() {
                        reading.push(Reading {
                            stream,
                            peer,
                            slot,
                            head: Vec::new(),
                            deadline: now + HEAD_TIMEOUT,
                        });
                    }
                    continue;
                }
            }
        };
        refuse(&stream, &busy(why));
        refusals.note(peer.ip(), why);
    }
}

fn busy(why: &str) -> Response {
    text(503, PLAIN, format!("{why}; try again later\n"))
}

/// Answers without waiting (a refusal is small enough for an empty socket buffer); the
/// caller closes.
fn refuse(stream: &TcpStream, response: &Response) {
    if stream.set_nonblocking(true).is_ok() {
        let mut stream = stream;
        let head = head_bytes(
            response.code,
            response.content_type,
            response.body.len(),
            false,
        );
        let _ = stream.write_all(&head);
        let _ = stream.write_all(response.body.as_bytes());
    }
}

/// A pool thread: answers requests from the queue one at a time until it closes.
fn pool_thread(waiting: &Mutex<Receiver<Job>>, published: &Mutex<Published>, guard: &Guard) {
    loop {
        let next = match waiting.lock() {
            Ok(waiting) => waiting.recv(),
            Err(_) => return,
        };
        match next {
            Ok(job) => serve(job, published, guard),
            Err(_) => return, // the server stopped
        }
    }
}

/// Answers one request and closes.
fn serve(job: Job, published: &Mutex<Published>, guard: &Guard) {
    let Job {
        mut stream,
        peer,
        request,
        ..
    } = job;
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let (response, head_only, refused) = match &request {
        Ok(head) => (
            answer(head, peer.ip(), published, guard),
            head.method == "HEAD",
            false,
        ),
        Err(e) => {
            log::debug!("the live view refused a request from {}: {e}", peer.ip());
            (e.response(), false, true)
        }
    };
    if let Err(e) = write_response(&mut stream, &response, head_only) {
        log::debug!("answering {}: {e}", peer.ip());
        return;
    }
    if refused {
        drain(&mut stream);
    }
}

/// What the server needs of a request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    /// The request target as sent: path and query.
    target: String,
    /// The `Authorization: Bearer` credential, when sent.
    bearer: Option<String>,
}

/// A request head the server will not read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum HeadError {
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("over {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("malformed request head ({0})")]
    Malformed(String),
}

impl HeadError {
    fn response(&self) -> Response {
        let code = match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) => 400,
        };
        text(code, PLAIN, format!("{self}\n"))
    }
}

/// Parses what has arrived of a head: `None` while incomplete, an error when it is
/// malformed or breaks a limit (an incomplete head of [`MAX_HEAD`] bytes is too large).
fn parse_head(bytes: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_HEAD => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let bearer = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    Ok(Some(Head {
        method: request.method.unwrap_or_default().to_owned(),
        target: request.path.unwrap_or_default().to_owned(),
        bearer,
    }))
}

/// An answer.
struct Response {
    code: u16,
    content_type: &'static str,
    body: Cow<'static, str>,
}

fn text(code: u16, content_type: &'static str, body: impl Into<Cow<'static, str>>) -> Response {
    Response {
        code,
        content_type,
        body: body.into(),
    }
}

/// The answer to a complete request: a refusal, or the route's.
fn answer(head: &Head, from: IpAddr, published: &Mutex<Published>, guard: &Guard) -> Response {
    if !guard.allow.is_empty() && !guard.allow.iter().any(|c| c.contains(from)) {
        return text(403, PLAIN, "this address is not in --allow\n");
    }
    if let Some(token) = &guard.token {
        let query = head
            .target
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
        if !head
            .bearer
            .as_deref()
            .or(query)
            .is_some_and(|p| crate::auth::same_text(p, token))
        {
            return text(
                401,
                PLAIN,
                "a token is needed: `conquer secret token FILE` prints it; send it as \
                 `Authorization: Bearer TOKEN`, or open /?token=TOKEN (`conquer status \
                 --secret-file FILE` sends it)\n",
            );
        }
    }
    if head.method != "GET" && head.method != "HEAD" {
        return text(405, PLAIN, "only GET\n");
    }
    route(&head.target, published)
}

fn route(target: &str, published: &Mutex<Published>) -> Response {
    let path = target.split('?').next().unwrap_or("");
    let (status, metrics) = match published.lock() {
        Ok(p) => (p.status.clone(), p.metrics.clone()),
        Err(_) => return text(500, PLAIN, "unavailable\n"),
    };
    match path {
        "/" | "/index.html" => text(200, "text/html; charset=utf-8", PAGE),
        "/api/status" => match status.map(|s| serde_json::to_string(&*s)) {
            Some(Ok(json)) => text(200, "application/json", json),
            Some(Err(e)) => text(500, PLAIN, format!("{e}\n")),
            None => text(200, "application/json", "{}"),
        },
        "/metrics" => text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            format!("{metrics}{}", process_metrics()),
        ),
        _ => text(404, PLAIN, "not found: try /, /api/status or /metrics\n"),
    }
}

/// The build and the process serving the metrics, read when a scrape asks (not by the
/// pump): `conquer_build_info` and the usual `process_*` series, those Linux's /proc and
/// getrusage tell.
fn process_metrics() -> String {
    use std::fmt::Write as _;
    let mut m = String::with_capacity(1024);
    let mut series = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}\n{value}");
    };
    series(
        "conquer_build_info",
        "gauge",
        "The conquer build serving these metrics (always 1).",
        format!(
            "conquer_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
    );
    // SAFETY: rusage is plain integers and timevals, for which all zeros is a value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        series(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of this process.",
            format!(
                "process_cpu_seconds_total {}",
                seconds(usage.ru_utime) + seconds(usage.ru_stime)
            ),
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    if let Some(kib) = rss_kib {
        series(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of this process.",
            format!("process_resident_memory_bytes {}", kib * 1024),
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        series(
            "process_open_fds",
            "gauge",
            "Open file descriptors of this process.",
            format!("process_open_fds {}", fds.count()),
        );
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    if let Some(max) = max_fds {
        series(
            "process_max_fds",
            "gauge",
            "The open-file limit of this process (soft).",
            format!("process_max_fds {max}"),
        );
    }
    m
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// The status line and headers of an answer.
fn head_bytes(code: u16, content_type: &str, length: usize, challenge: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        reason(code)
    );
    if challenge {
        head.push_str("WWW-Authenticate: Bearer\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Writes the answer (its headers only for HEAD) within [`WRITE_TIMEOUT`].
fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let head = head_bytes(
        response.code,
        response.content_type,
        response.body.len(),
        response.code == 401,
    );
    write_by(stream, &head, deadline)?;
    if !head_only {
        write_by(stream, response.body.as_bytes(), deadline)?;
    }
    stream.flush()
}

fn write_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not take the answer in time",
            ));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// After a refusal: says it is done, then reads and drops what the client still sends for
/// a moment, so that closing does not reset the connection before the refusal is read.
fn drain(stream: &mut TcpStream) {
    let _ = stream.shutdown(Half::Write);
    let deadline = Instant::now() + DRAIN;
    let mut sink = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_before_anything_binds() {
        for good in ["127.0.0.1:8080", "0.0.0.0:0", "[::1]:9000", "localhost:1"] {
            assert!(super::check_address(good).is_ok(), "{good}");
        }
        for bad in [
            "notaport",
            "127.0.0.1",
            ":80",
            "host:",
            "host:65536",
            "host:-1",
            "h:+8",
        ] {
            let e = super::check_address(bad).unwrap_err().to_string();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_head_is_read_with_its_target_and_bearer_token() {
        let head = parse_head(
            b"GET /metrics?token=t HTTP/1.1\r\nHost: x\r\nauthorization: Bearer abc\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            head,
            Head {
                method: "GET".into(),
                target: "/metrics?token=t".into(),
                bearer: Some("abc".into()),
            }
        );
        let head = parse_head(b"HEAD / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!((head.method.as_str(), head.bearer), ("HEAD", None));
    }

    #[test]
    fn an_incomplete_head_waits_until_it_reaches_the_limit() {
        let mut partial = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        assert_eq!(parse_head(&partial), Ok(None));
        // One long header that never ends: incomplete until MAX_HEAD bytes, then too large.
        partial.extend(b"X-Fill: ");
        partial.resize(MAX_HEAD - 1, b'a');
        assert_eq!(parse_head(&partial), Ok(None));
        partial.push(b'a');
        assert_eq!(parse_head(&partial), Err(HeadError::TooLarge));
        assert_eq!(HeadError::TooLarge.response().code, 431);
    }

    #[test]
    fn a_head_of_exactly_the_limit_is_read() {
        let mut head = b"GET / HTTP/1.1\r\nX-Fill: ".to_vec();
        head.resize(MAX_HEAD - 4, b'a');
        head.extend(b"\r\n\r\n");
        assert_eq!(head.len(), MAX_HEAD);
        assert!(parse_head(&head).unwrap().is_some());
    }

    #[test]
    fn more_headers_than_the_limit_are_refused_before_the_head_ends() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for n in 0..MAX_HEADERS {
            head.extend(format!("X-{n}: 1\r\n").as_bytes());
        }
        let mut complete = head.clone();
        complete.extend(b"\r\n");
        assert!(
            parse_head(&complete).unwrap().is_some(),
            "exactly the limit"
        );
        head.extend(b"X-more: 1\r\n");
        assert_eq!(parse_head(&head), Err(HeadError::TooManyHeaders));
        assert_eq!(HeadError::TooManyHeaders.response().code, 431);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        for junk in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"GET\x00 / HTTP/1.1\r\n",
        ] {
            let e = parse_head(junk).unwrap_err();
            assert!(matches!(e, HeadError::Malformed(_)), "{junk:?}: {e:?}");
            assert_eq!(e.response().code, 400);
        }
    }

    #[test]
    fn each_client_address_holds_at_most_its_share_of_connections() {
        let clients = Arc::new(Clients::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut held: Vec<Slot> = (0..PER_CLIENT).map(|_| clients.admit(a).unwrap()).collect();
        assert!(clients.admit(a).is_none(), "one over the cap");
        assert!(
            clients.admit(b).is_some(),
            "another address is not affected"
        );
        held.pop();
        assert!(
            clients.admit(a).is_some(),
            "a closed connection frees its slot"
        );
        drop(held);
        assert!(clients.open.lock().unwrap().is_empty(), "nothing left over");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_a_mapped_ipv4_one_by_its_address() {
        let clients = Arc::new(Clients::default());
        let _held: Vec<Slot> = (0..PER_CLIENT)
            .map(|n| {
                clients
                    .admit(format!("2001:db8::{n}").parse().unwrap())
                    .unwrap()
            })
            .collect();
        assert!(
            clients.admit("2001:db8::ffff:1".parse().unwrap()).is_none(),
            "the same /64"
        );
        assert!(clients.admit("2001:db8:0:1::1".parse().unwrap()).is_some());
        let _v4: Vec<Slot> = (0..PER_CLIENT)
            .map(|_| clients.admit("10.0.0.1".parse().unwrap()).unwrap())
            .collect();
        assert!(clients.admit("::ffff:10.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn answers_say_their_length_and_close() {
        let head = String::from_utf8(head_bytes(401, PLAIN, 12, true)).unwrap();
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        for line in [
            "Content-Length: 12\r\n",
            "Connection: close\r\n",
            "WWW-Authenticate: Bearer\r\n",
            "Cache-Control: no-store\r\n",
        ] {
            assert!(head.contains(line), "{line:?} missing from {head}");
        }
        assert!(head.ends_with("\r\n\r\n"));
    }
}

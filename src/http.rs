//! The live view's HTTP endpoint (`--http ADDR`): a tiny_http server on its own thread
//! serving what the ventilator's pump last published, so a page load or a scrape never
//! touches the dispatch loop. `/` is the page (embedded, no CDN), `/api/status` the JSON
//! and `/metrics` the Prometheus text. A bind other machines can reach asks for
//! `Authorization: Bearer TOKEN` (or `?token=TOKEN`, for the page), the token derived from
//! the farm's secret (`conquer secret token F`), and admits only `--allow` addresses when
//! those are given. Each answer is written by a thread of its own (at most
//! `MAX_WRITERS`), so a client that never reads stalls nobody.

use anyhow::anyhow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The page: one file, its script and style inline.
const PAGE: &str = include_str!("../web/dashboard.html");
/// Answers being written at once; requests beyond are dropped.
const MAX_WRITERS: usize = 32;

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

/// A running endpoint; stops when dropped.
pub struct Server {
    published: Arc<Mutex<Published>>,
    stop: Arc<AtomicBool>,
    address: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves on `addr` (`HOST:PORT`; port 0 takes a free one) to whom `guard` admits.
    pub fn start(addr: &str, guard: Guard) -> anyhow::Result<Server> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow!("cannot serve the live view on {addr} (--http): {e}"))?;
        let address = server
            .server_addr()
            .to_ip()
            .map_or_else(|| addr.to_owned(), |a| a.to_string());
        let published = Arc::new(Mutex::new(Published::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let published = published.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("http".into())
                .spawn(move || serve(&server, &published, &stop, &guard))
                .map_err(|e| anyhow!("cannot start the live view's thread: {e}"))?
        };
        Ok(Server {
            published,
            stop,
            address,
            thread: Some(thread),
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
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    server: &tiny_http::Server,
    published: &Mutex<Published>,
    stop: &AtomicBool,
    guard: &Guard,
) {
    let writers = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("the live view stopped: {e}");
                return;
            }
        };
        if writers.load(Ordering::Relaxed) >= MAX_WRITERS {
            continue; // dropped: its connection closes
        }
        let reply = answer(&request, published, guard);
        writers.fetch_add(1, Ordering::Relaxed);
        let writing = writers.clone();
        let spawned = std::thread::Builder::new()
            .name("http-write".into())
            .spawn(move || {
                let response = match reply {
                    Reply::Ready(response) => response,
                    Reply::Status(status) => match serde_json::to_string(&*status) {
                        Ok(json) => text(200, "application/json", &json),
                        Err(e) => text(500, "text/plain; charset=utf-8", &format!("{e}\n")),
                    },
                };
                if let Err(e) = request.respond(response) {
                    log::debug!("answering an HTTP request: {e}");
                }
                writing.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            writers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

/// An answer, or the status to answer with once turned into JSON.
enum Reply {
    Ready(Response),
    Status(Arc<crate::observe::FarmStatus>),
}

fn answer(request: &tiny_http::Request, published: &Mutex<Published>, guard: &Guard) -> Reply {
    match check(request, guard) {
        Some(refusal) => Reply::Ready(refusal),
        None => route(request, published),
    }
}

/// A refusal, when the request may not be answered.
fn check(request: &tiny_http::Request, guard: &Guard) -> Option<Response> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if !guard.allow.is_empty() {
        let from = request.remote_addr().map(|a| a.ip());
        if !from.is_some_and(|ip| guard.allow.iter().any(|c| c.contains(ip))) {
            return Some(text(403, PLAIN, "this address is not in --allow\n"));
        }
    }
    if let Some(token) = &guard.token {
        let header = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .and_then(|h| h.value.as_str().strip_prefix("Bearer "));
        let query = request
            .url()
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
        if !header
            .or(query)
            .is_some_and(|p| crate::auth::same_text(p, token))
        {
            let mut response = text(
                401,
                PLAIN,
                "a token is needed: `conquer secret token FILE` prints it; send it as \
                 `Authorization: Bearer TOKEN`, or open /?token=TOKEN (`conquer status \
                 --secret-file FILE` sends it)\n",
            );
            if let Some(h) = header_of("WWW-Authenticate", "Bearer") {
                response = response.with_header(h);
            }
            return Some(response);
        }
    }
    if *request.method() != tiny_http::Method::Get && *request.method() != tiny_http::Method::Head {
        return Some(text(405, PLAIN, "only GET\n"));
    }
    None
}

fn route(request: &tiny_http::Request, published: &Mutex<Published>) -> Reply {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let path = request.url().split('?').next().unwrap_or("");
    let (status, metrics) = match published.lock() {
        Ok(p) => (p.status.clone(), p.metrics.clone()),
        Err(_) => return Reply::Ready(text(500, PLAIN, "unavailable\n")),
    };
    Reply::Ready(match path {
        "/" | "/index.html" => text(200, "text/html; charset=utf-8", PAGE),
        "/api/status" => match status {
            Some(status) => return Reply::Status(status),
            None => text(200, "application/json", "{}"),
        },
        "/metrics" => text(200, "text/plain; version=0.0.4; charset=utf-8", &metrics),
        _ => text(404, PLAIN, "not found: try /, /api/status or /metrics\n"),
    })
}

fn header_of(field: &str, value: &str) -> Option<tiny_http::Header> {
    tiny_http::Header::from_bytes(field.as_bytes(), value.as_bytes()).ok()
}

fn text(code: u16, content_type: &str, body: &str) -> Response {
    let mut response = tiny_http::Response::from_string(body).with_status_code(code);
    for h in [
        header_of("Content-Type", content_type),
        header_of("Cache-Control", "no-store"),
    ]
    .into_iter()
    .flatten()
    {
        response = response.with_header(h);
    }
    response
}

#[cfg(test)]
mod tests {
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
}

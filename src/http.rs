//! The live view's HTTP endpoint (`--http ADDR`): a tiny_http server on its own thread
//! serving what the ventilator's pump last published, so a page load or a scrape never
//! touches the dispatch loop. `/` is the page (embedded, no CDN), `/api/status` the JSON
//! and `/metrics` the Prometheus text. A bind other machines can reach asks for
//! `Authorization: Bearer TOKEN`, the token being the farm's secret (`--secret-file`).

use anyhow::anyhow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The page: one file, its script and style inline.
const PAGE: &str = include_str!("../web/dashboard.html");

/// What the pump last published.
#[derive(Default)]
struct Published {
    status: String,
    metrics: String,
}

/// A running endpoint; stops when dropped.
pub struct Server {
    published: Arc<Mutex<Published>>,
    stop: Arc<AtomicBool>,
    address: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves on `addr` (`HOST:PORT`; port 0 takes a free one). `token`, when given, is
    /// required as a bearer token on every request.
    pub fn start(addr: &str, token: Option<String>) -> anyhow::Result<Server> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow!("cannot serve the live view on {addr} (--http): {e}"))?;
        let address = server
            .server_addr()
            .to_ip()
            .map_or_else(|| addr.to_owned(), |a| a.to_string());
        let published = Arc::new(Mutex::new(Published {
            status: "{}".into(),
            metrics: String::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let published = published.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("http".into())
                .spawn(move || serve(&server, &published, &stop, token.as_deref()))
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

    /// Replaces what is served.
    pub fn publish(&self, status: String, metrics: String) {
        if let Ok(mut p) = self.published.lock() {
            p.status = status;
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
    token: Option<&str>,
) {
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("the live view stopped: {e}");
                return;
            }
        };
        let response = answer(&request, published, token);
        if let Err(e) = request.respond(response) {
            log::debug!("answering an HTTP request: {e}");
        }
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn answer(
    request: &tiny_http::Request,
    published: &Mutex<Published>,
    token: Option<&str>,
) -> Response {
    if let Some(token) = token {
        let expected = format!("Bearer {token}");
        let presented = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str());
        if !presented.is_some_and(|p| crate::auth::same_text(p, &expected)) {
            return text(401, "text/plain; charset=utf-8", "a bearer token is needed (the farm's secret; `conquer status --secret-file F` sends it)\n".into());
        }
    }
    if *request.method() != tiny_http::Method::Get && *request.method() != tiny_http::Method::Head {
        return text(405, "text/plain; charset=utf-8", "only GET\n".into());
    }
    let path = request.url().split('?').next().unwrap_or("");
    let Ok(p) = published.lock() else {
        return text(500, "text/plain; charset=utf-8", "unavailable\n".into());
    };
    match path {
        "/" | "/index.html" => text(200, "text/html; charset=utf-8", PAGE.to_owned()),
        "/api/status" => text(200, "application/json", p.status.clone()),
        "/metrics" => text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            p.metrics.clone(),
        ),
        _ => text(
            404,
            "text/plain; charset=utf-8",
            "not found: try /, /api/status or /metrics\n".into(),
        ),
    }
}

fn text(code: u16, content_type: &str, body: String) -> Response {
    let mut response = tiny_http::Response::from_string(body).with_status_code(code);
    for (field, value) in [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
    ] {
        if let Ok(header) = tiny_http::Header::from_bytes(field.as_bytes(), value.as_bytes()) {
            response = response.with_header(header);
        }
    }
    response
}

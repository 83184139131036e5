//! Logging to stderr: `conquer <role>: <level>: message`, with time since start. Results
//! never go through here; they belong to `report`, on stdout.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct StderrLogger {
    start: Instant,
}

static LOGGER: OnceLock<StderrLogger> = OnceLock::new();

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        // Our own lines at the chosen level; libraries' (wgpu, naga) only from -vv, since
        // they report probing failures (an absent EGL, say) that are not errors for us.
        let ours = metadata.target().starts_with("conquer");
        metadata.level() <= log::max_level()
            && (ours || log::max_level() >= log::LevelFilter::Debug)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = self.start.elapsed().as_secs_f64();
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warn",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let thread = std::thread::current();
        let role = thread.name().unwrap_or("conquer");
        eprintln!("[{t:8.3}s {role}] {level}: {}", record.args());
    }

    fn flush(&self) {}
}

/// Installs the logger; `verbosity` 0 is warn, 1 info, 2 debug, 3+ trace. Idempotent.
pub fn init(verbosity: u8) {
    let logger = LOGGER.get_or_init(|| StderrLogger {
        start: Instant::now(),
    });
    let _ = log::set_logger(logger);
    log::set_max_level(match verbosity {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    });
}

/// Rate limit for warnings a peer can trigger at will (malformed messages): the first few
/// are logged, then at most one summary per interval, so a flood cannot flood the log.
pub struct RateLimited {
    burst: u32,
    interval: Duration,
    logged: u32,
    suppressed: u64,
    window_start: Option<Instant>,
}

impl RateLimited {
    pub fn new(burst: u32, interval: Duration) -> Self {
        RateLimited {
            burst,
            interval,
            logged: 0,
            suppressed: 0,
            window_start: None,
        }
    }

    /// Logs `message()` at warn unless the limit is reached; then counts it silently and
    /// reports the count when the interval has passed.
    pub fn warn(&mut self, message: impl FnOnce() -> String) {
        let now = Instant::now();
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= self.interval {
            if self.suppressed > 0 {
                log::warn!("{} more like it suppressed", self.suppressed);
            }
            self.window_start = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < self.burst {
            self.logged += 1;
            log::warn!("{}", message());
        } else {
            self.suppressed += 1;
        }
    }
}

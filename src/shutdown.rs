//! Shutdown: the one signal every long-running loop checks. A first Ctrl-C asks every role
//! to finish cleanly (workers say goodbye so their tasks are handed on); a second exits at
//! once with status 130. With the `termination` feature of ctrlc, SIGTERM and SIGHUP are
//! handled the same way. Loops poll with bounded timeouts so a request is seen promptly.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

/// Installs the handler for Ctrl-C (SIGINT), SIGTERM and SIGHUP. Call once, from `main`.
pub fn install_ctrl_c() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTS.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!("conquer: error: interrupted twice, exiting now");
            std::process::exit(130);
        }
        eprintln!("conquer: interrupted, finishing (Ctrl-C again to exit at once)");
    })
    .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 0
}

/// The error a role returns when it stopped because it was asked to (Ctrl-C, SIGTERM, or
/// another role of the run failing), not because something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

impl Interrupted {
    /// Whether `e` is, or was caused by, a requested stop.
    pub fn is(e: &anyhow::Error) -> bool {
        e.chain()
            .any(|cause| cause.downcast_ref::<Interrupted>().is_some())
    }
}

/// A stop request shared by the parts of one run: set by [`Shutdown::request`] or by Ctrl-C.
#[derive(Clone, Default)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything holding a clone of this token to stop.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// True once a stop was requested here or Ctrl-C was pressed.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst) || interrupted()
    }

    /// `Err(Interrupted)` once a stop was requested: `shutdown.check()?` in every loop.
    pub fn check(&self) -> Result<(), Interrupted> {
        if self.is_requested() {
            Err(Interrupted)
        } else {
            Ok(())
        }
    }
}

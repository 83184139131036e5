//! Shutdown: the one signal every long-running loop checks. A first Ctrl-C (SIGINT) or
//! SIGTERM (what `kill` and systemd send) asks every role to finish cleanly (workers say
//! goodbye so their tasks are handed on, a sink syncs its results); a second exits at once.
//! The exit status is 128 + the first signal's number: 130 for SIGINT, 143 for SIGTERM.
//! Loops poll with bounded timeouts so a request is seen promptly.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// The first stop signal received, 0 before any.
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Installs the handler for SIGINT and SIGTERM: a thread that hears them and requests a
/// stop of `shutdown`. Call once, from `main`; roles see only the token they are given, so
/// tests and embedders stop them with [`Shutdown::request`] alone.
pub fn install_ctrl_c(shutdown: &Shutdown) -> anyhow::Result<()> {
    let shutdown = shutdown.clone();
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| anyhow::anyhow!("cannot install the SIGINT/SIGTERM handler: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "Ctrl-C"
                };
                match FIRST_SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => {
                        shutdown.request();
                        eprintln!(
                            "conquer: interrupted ({name}), finishing ({name} again to exit at once)"
                        )
                    }
                    Err(first) => {
                        eprintln!("conquer: error: interrupted twice, exiting now");
                        exit(128 + first);
                    }
                }
            }
        })
        .map_err(|e| anyhow::anyhow!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// Ends the process with `code` once stdout and stderr are flushed, without running the C
/// library's exit handlers. A worker that leaves with a kernel in hand leaves the thread
/// running it behind, and a software Vulkan driver's handlers tear down what that thread
/// still uses (lavapipe: SIGSEGV in about one exit in eight). Everything of conquer's own
/// is closed before this: files synced and renamed, sockets and the ZeroMQ context dropped.
pub fn exit(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` only ends the process; no Rust state is observed after it.
    unsafe { libc::_exit(code) }
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> bool {
    FIRST_SIGNAL.load(Ordering::SeqCst) != 0
}

/// The exit status for an interrupted run: 128 + the first signal (130 when the stop
/// came from within, such as a failing role of a one-process run).
pub fn exit_status() -> i32 {
    match FIRST_SIGNAL.load(Ordering::SeqCst) {
        0 => 130,
        signal => 128 + signal,
    }
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

/// A stop request shared by the parts of one run: set by [`Shutdown::request`] (which the
/// signal handler calls on the token `main` gave it). A [`Shutdown::child`] also stops when
/// the token it came from does, and can be stopped alone.
#[derive(Clone, Default)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
    /// The tokens it came from: a stop of any of them is a stop of this one.
    parents: Vec<Arc<AtomicBool>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything holding a clone of this token, or a child of it, to stop.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// A token that stops when this one does, and that [`Shutdown::request`] on it (or a
    /// clone) stops without stopping this one: the part of a run that outlives the rest.
    pub fn child(&self) -> Self {
        let mut parents = self.parents.clone();
        parents.push(self.requested.clone());
        Self {
            requested: Arc::default(),
            parents,
        }
    }

    /// True once a stop was requested of this token, a clone of it, or a token it is a
    /// child of.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
            || self.parents.iter().any(|p| p.load(Ordering::SeqCst))
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

#[cfg(test)]
mod tests {
    use super::Shutdown;

    #[test]
    fn a_child_stops_with_its_parent_and_alone_without_stopping_it() {
        let run = Shutdown::new();
        let workers = run.child();
        let one_worker = workers.clone();
        assert!(!one_worker.is_requested());
        workers.request();
        assert!(
            one_worker.is_requested(),
            "a clone of the child stops with it"
        );
        assert!(!run.is_requested(), "the child stopped its parent");

        let run = Shutdown::new();
        let grandchild = run.child().child();
        run.request();
        assert!(
            grandchild.is_requested(),
            "a grandchild missed its grandparent's stop"
        );
        assert!(grandchild.check().is_err());
    }
}

//! conquer's core: the roles' state machines (the ventilator's [`dispatch`], the sink's
//! [`collect`], the worker's [`flow`]) and the one loop that runs them ([`driver`]), the
//! wire codec ([`protocol`]), item [`intervals`], chunk carving ([`chunking`]) and the
//! domain model ([`batch`], [`kernels`], [`report`]).
//!
//! Nothing here opens a socket, touches a GPU, reads a file or reads a clock: the machines
//! take each message and the time as arguments and answer with commands, which the root
//! package's pumps carry out over ZeroMQ and wgpu. Cargo checks the first two (this crate
//! depends on neither zmq nor wgpu); a test that reads its sources checks the rest.

pub mod batch;
pub mod chunking;
pub mod claims;
pub mod collect;
pub mod dispatch;
pub mod driver;
pub mod events;
pub mod flow;
pub mod heartbeat;
pub mod intervals;
pub mod jobs;
pub mod kernels;
pub mod pieces;
pub mod protocol;
pub mod report;
pub mod sizing;
pub mod text;
pub mod work;

/// The core reads no clock and touches no file, thread or network: its pumps do.
#[cfg(test)]
mod sans_io {
    const FILES: [(&str, &str); 29] = [
        ("batch.rs", include_str!("batch.rs")),
        ("chunking.rs", include_str!("chunking.rs")),
        ("claims.rs", include_str!("claims.rs")),
        ("collect.rs", include_str!("collect.rs")),
        ("dispatch/mod.rs", include_str!("dispatch/mod.rs")),
        ("dispatch/endgame.rs", include_str!("dispatch/endgame.rs")),
        ("dispatch/handout.rs", include_str!("dispatch/handout.rs")),
        ("dispatch/replicas.rs", include_str!("dispatch/replicas.rs")),
        ("dispatch/roster.rs", include_str!("dispatch/roster.rs")),
        ("dispatch/sink.rs", include_str!("dispatch/sink.rs")),
        ("dispatch/tasks.rs", include_str!("dispatch/tasks.rs")),
        ("dispatch/timers.rs", include_str!("dispatch/timers.rs")),
        ("driver.rs", include_str!("driver.rs")),
        ("events.rs", include_str!("events.rs")),
        ("flow.rs", include_str!("flow.rs")),
        ("heartbeat.rs", include_str!("heartbeat.rs")),
        ("intervals.rs", include_str!("intervals.rs")),
        ("jobs.rs", include_str!("jobs.rs")),
        ("kernels/mod.rs", include_str!("kernels/mod.rs")),
        (
            "kernels/mandelbrot.rs",
            include_str!("kernels/mandelbrot.rs"),
        ),
        ("kernels/search.rs", include_str!("kernels/search.rs")),
        ("kernels/spin.rs", include_str!("kernels/spin.rs")),
        ("pieces.rs", include_str!("pieces.rs")),
        ("protocol.rs", include_str!("protocol.rs")),
        ("protocol/control.rs", include_str!("protocol/control.rs")),
        ("report.rs", include_str!("report.rs")),
        ("sizing.rs", include_str!("sizing.rs")),
        ("text.rs", include_str!("text.rs")),
        ("work.rs", include_str!("work.rs")),
    ];
    const FORBIDDEN: [&str; 9] = [
        "Instant::now",
        "SystemTime",
        "std::fs",
        "File::",
        "std::thread",
        "thread::spawn",
        "std::net",
        "sleep(",
        "std::env",
    ];

    #[test]
    fn the_core_reads_no_clock_and_touches_no_file_thread_or_network() {
        for (file, text) in FILES {
            // Tests may read the clock (an `Instant` has no other maker); the code may not.
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            for (n, line) in code.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in FORBIDDEN {
                    assert!(
                        !code.contains(word),
                        "core/src/{file}:{}: `{word}` in the core: {line}",
                        n + 1
                    );
                }
            }
        }
    }
}

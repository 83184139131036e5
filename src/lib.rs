//! `conquer`: the ZeroMQ Guide's divide-and-conquer pipeline (ventilator, workers, sink)
//! with credit-based dispatch, no lost tasks, and workers that run each task as a WGSL
//! compute shader through wgpu, or sleep where no GPU exists.
//!
//! The binary is the CLI definition plus glue (`cli`); everything else is here. See
//! ARCHITECTURE.md for the map and the invariants.

pub mod auth;
pub mod backend;
pub mod batch;
pub mod bench;
pub mod calibrate;
pub mod chunking;
pub mod classic;
pub mod cli;
pub mod collect;
pub mod diagnose;
pub mod dispatch;
pub mod events;
pub mod files;
pub mod flow;
pub mod heartbeat;
pub mod http;
pub mod intervals;
pub mod kernels;
pub mod local;
pub mod logging;
pub mod observe;
pub mod outputs;
pub mod protocol;
pub mod report;
pub mod shutdown;
pub mod sink;
pub mod sockets;
pub mod status;
pub mod timeline;
pub mod trace;
pub mod ventilator;
pub mod worker;

/// The roles' state machines touch no socket, clock, file or thread: their pumps do.
#[cfg(test)]
mod sans_io {
    const MACHINES: [(&str, &str); 4] = [
        ("dispatch.rs", include_str!("dispatch.rs")),
        ("chunking.rs", include_str!("chunking.rs")),
        ("collect.rs", include_str!("collect.rs")),
        ("flow.rs", include_str!("flow.rs")),
    ];
    const FORBIDDEN: [&str; 10] = [
        "zmq",
        "Instant::now",
        "SystemTime",
        "std::fs",
        "File::",
        "std::thread",
        "thread::spawn",
        "std::net",
        "std::io",
        "sleep(",
    ];

    #[test]
    fn state_machines_use_no_socket_clock_file_or_thread() {
        for (file, text) in MACHINES {
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in FORBIDDEN {
                    assert!(
                        !code.contains(word),
                        "{file}:{}: `{word}` in a state machine: {line}",
                        n + 1
                    );
                }
            }
        }
    }
}

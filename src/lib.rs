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
pub mod classic;
pub mod cli;
pub mod diagnose;
pub mod events;
pub mod files;
pub mod front;
pub mod http;
pub mod kernels;
pub mod local;
pub mod logging;
pub mod observe;
pub mod outputs;
pub mod report;
pub mod serve;
pub mod shutdown;
pub mod sink;
pub mod sockets;
pub mod status;
pub mod timeline;
pub mod trace;
pub mod ventilator;
pub mod worker;

// The core's modules, under the names the root package has always used.
pub use conquer_core::{
    chunking, collect, dispatch, driver, flow, heartbeat, intervals, pieces, protocol, work,
};

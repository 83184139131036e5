//! `conquer`: the ZeroMQ Guide's divide-and-conquer pipeline (ventilator, workers, sink)
//! with credit-based dispatch, no lost tasks, and workers that run each task as a WGSL
//! compute shader through wgpu, or sleep where no GPU exists.
//!
//! The binary is the CLI definition plus glue (`cli`); everything else is here. See
//! ARCHITECTURE.md for the map and the invariants.

pub mod backend;
pub mod batch;
pub mod bench;
pub mod calibrate;
pub mod classic;
pub mod cli;
pub mod collect;
pub mod diagnose;
pub mod dispatch;
pub mod flow;
pub mod heartbeat;
pub mod kernels;
pub mod local;
pub mod logging;
pub mod protocol;
pub mod report;
pub mod shutdown;
pub mod sink;
pub mod sockets;
pub mod timeline;
pub mod ventilator;
pub mod worker;

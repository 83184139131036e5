//! Integration tests: the real `conquer` binary as separate processes, talking ZeroMQ over
//! loopback with ephemeral ports. One test binary; helpers in `util`.

mod attack;
mod auth;
mod bench;
mod chunking;
mod classic;
mod coordinator;
mod data;
mod deploy;
mod events;
mod failures;
mod faults;
mod finished;
mod gpu;
mod hostile;
mod kernels;
mod loopback;
mod mandelbrot;
mod mistakes;
mod netcut;
mod operator;
mod pipeline;
mod planted;
mod runaway;
mod slowloris;
mod util;
mod watch;
mod wire;

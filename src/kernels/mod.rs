//! Kernels: what a task computes, each with its parameters and its CPU reference.
//!
//! A kernel turns a task's nominal workload into an amount of work (`units_per_ms` work
//! units per millisecond) and a checksum the sink can compare across backends. Each kernel
//! has a module here (parameters, geometry, CPU reference) and a WGSL file in `shaders/`.
//! This module knows nothing of devices or sockets: the GPU backend reads the geometry
//! from here, and the `cpu` backend runs the reference.

pub mod spin;

/// Every kernel the project ships, by the id carried in `Job::kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// Integer hash chains: compute-bound u32 work, bit-exact across backends.
    Spin,
}

impl Kernel {
    pub fn id(self) -> u8 {
        match self {
            Kernel::Spin => 0,
        }
    }

    pub fn from_id(id: u8) -> Option<Kernel> {
        match id {
            0 => Some(Kernel::Spin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Spin => "spin",
        }
    }
}

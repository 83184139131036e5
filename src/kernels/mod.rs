//! Kernels: the core's built-in kernels and their CPU references, and [`user`], the check
//! of a user's WGSL against the kernel interface (with naga, the compiler inside wgpu).

pub use conquer_core::kernels::*;

pub mod user;

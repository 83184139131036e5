//! `conquer bench`: placeholder until the benchmark suites land.
use crate::shutdown::Shutdown;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs, _shutdown: &Shutdown) -> anyhow::Result<i32> {
    anyhow::bail!("not yet")
}

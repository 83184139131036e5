//! The `spin` kernel: compute-bound integer work whose amount is proportional to a task's
//! workload, with a checksum that every backend must reproduce bit for bit.
//!
//! A task of `w` ms runs `w * units_per_ms` invocations. Invocation `g` of task `t` starts
//! from `mix(g ^ mix(t + GOLDEN))` and applies `mix` [`ROUNDS`] times (u32 arithmetic only,
//! so GPU and CPU agree exactly). The checksum is the wrapping sum of the final values in its
//! high 32 bits and their XOR in the low 32 bits: both are order-independent, so a task split
//! into any number of dispatches, or reduced by atomics in any order, gives the same value.

/// Default work units (invocations) per nominal millisecond, the same in `run`, `ventilator`,
/// classic workers and `bench`. One unit is [`ROUNDS`] hash rounds, so a 1 ms task is 1,024
/// invocations and about 262,000 rounds: about what one server CPU core does in a
/// millisecond with the `cpu` backend (`conquer calibrate` measures the figure for a
/// machine, so that a sleep worker's millisecond and a core's agree).
pub const DEFAULT_UNITS_PER_MS: u32 = 1024;
/// Hash rounds per invocation: enough arithmetic per invocation that the kernel is bound by
/// integer throughput, not by launching invocations.
pub const ROUNDS: u32 = 256;
/// Weyl constant that separates task ids before mixing.
pub const GOLDEN: u32 = 0x9e37_79b9;
/// Threads per workgroup, matching `@workgroup_size` in `shaders/spin.wgsl`.
pub const WORKGROUP_SIZE: u32 = 64;

/// A 32-bit integer finaliser (xorshift-multiply, constants from the "lowbias32" search by
/// Chris Wellons): cheap, bijective, and all u32 ops, so WGSL computes it identically.
#[inline]
pub fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The final value of one invocation.
#[inline]
pub fn invocation(task_id: u32, global: u32) -> u32 {
    let mut h = global ^ mix(task_id.wrapping_add(GOLDEN));
    for _ in 0..ROUNDS {
        h = mix(h);
    }
    h
}

/// Invocations a task of `workload_ms` runs, or `None` if it would not fit in a u32 index.
pub fn invocations(workload_ms: u32, units_per_ms: u32) -> Option<u32> {
    workload_ms.checked_mul(units_per_ms)
}

/// Folds one invocation's value into a (sum, xor) pair.
#[inline]
pub fn fold(acc: (u32, u32), value: u32) -> (u32, u32) {
    (acc.0.wrapping_add(value), acc.1 ^ value)
}

/// Packs the reduction into the checksum carried in results.
pub fn checksum((sum, xor): (u32, u32)) -> u64 {
    (u64::from(sum) << 32) | u64::from(xor)
}

/// CPU reference over invocations `start..end` of a task: the partial (sum, xor).
pub fn reference_range(task_id: u32, start: u32, end: u32) -> (u32, u32) {
    (start..end).fold((0, 0), |acc, g| fold(acc, invocation(task_id, g)))
}

/// CPU reference for a whole task.
pub fn reference(task_id: u32, invocations: u32) -> u64 {
    checksum(reference_range(task_id, 0, invocations))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_pinned() {
        // Guards the constants: the WGSL copy must match these values.
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), PINNED_MIX_1);
        assert_eq!(invocation(7, 11), PINNED_INVOCATION_7_11);
    }

    const PINNED_MIX_1: u32 = 0x6889_90c0;
    const PINNED_INVOCATION_7_11: u32 = 0xf413_1555;

    #[test]
    fn splitting_does_not_change_the_checksum() {
        let whole = reference_range(5, 0, 1000);
        let (a, b) = (reference_range(5, 0, 333), reference_range(5, 333, 1000));
        assert_eq!(whole, (a.0.wrapping_add(b.0), a.1 ^ b.1));
    }

    #[test]
    fn tasks_differ() {
        assert_ne!(reference(0, 64), reference(1, 64));
        assert_eq!(reference(3, 0), 0);
    }
}

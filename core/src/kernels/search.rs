//! The `search` kernel: find every key of a keyspace whose 32-bit hash has at least `bits`
//! leading zero bits, one slice of keys per task. Exact: the hash is u32 arithmetic only,
//! so every backend returns the same hits, bit for bit. (The natural job for early
//! cancellation: a hit can end the search.)
//!
//! A task's output is a count followed by the hits in ascending order. The shader appends
//! hits with an atomic counter in arrival order, into room for [`Space::capacity`] of them
//! (four times the expected count plus 64, so a task overflows with negligible
//! probability); the worker sorts them ([`canonical`]).

use crate::batch::{Job, Task};
use crate::kernels::{spin, Shape};

/// A keyspace and its split into tasks, as carried in a job's constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Leading zero bits a hit's hash has at least (1 to 32).
    pub bits: u32,
    /// Keys per task (the last task may have fewer).
    pub per_task: u32,
    pub salt: u32,
    /// Hits a task's output has room for.
    pub capacity: u32,
    /// Keys in all: `0..keys`.
    pub keys: u32,
}

/// The hash whose leading zeros are counted; must match `hash` in `shaders/search.wgsl`.
pub fn hash(key: u32, salt: u32) -> u32 {
    spin::mix(spin::mix(key ^ salted(salt)).wrapping_add(key))
}

/// The part of [`hash`] every key of a search shares: the shader reads it from
/// [`SALTED`] (`c[1].z`), worked out once per task, rather than mixing it again per key.
pub fn salted(salt: u32) -> u32 {
    spin::mix(salt.wrapping_add(spin::GOLDEN))
}

/// Where a device's constants hold [`salted`] (never sent: the backend fills it in).
pub const SALTED: usize = 6;

/// Keys one invocation of the shader tries, consecutive (`KEYS` in `search.wgsl`).
/// Chosen by measurement on the software adapter (kernels suite, M keys/s end to end,
/// medians of 3 in alternating runs): 1 key 274-374, 4 keys 324-647, 8 keys 543-826,
/// 16 keys 975-1005. A GPU's figure is to be measured on one; 16 keys still leave a
/// task of the default 4 M keys 262,144 invocations, an H200's resident threads.
pub const KEYS_PER_INVOCATION: u32 = 16;

impl Space {
    /// The search `--bits`, `--keys`, `--keys-per-task` and `--salt` describe, checked.
    pub fn new(bits: u32, keys: u32, per_task: u32, salt: u32) -> Result<Space, String> {
        if !(1..=32).contains(&bits) {
            return Err(format!("--bits {bits}: give 1 to 32 leading zero bits"));
        }
        if keys == 0 || per_task == 0 {
            return Err("--keys and --keys-per-task must be at least 1".to_owned());
        }
        let per_task = per_task.min(keys);
        let expected = u64::from(per_task) >> bits;
        let capacity = (expected * 4 + 64).min(u64::from(per_task)) as u32;
        Ok(Space {
            bits,
            per_task,
            salt,
            capacity,
            keys,
        })
    }

    /// The space of a divisible search job: one key per unit (a chunk's first key is its
    /// kernel task id), room for the hits of a chunk of up to `max_chunk` keys.
    pub fn for_chunks(bits: u32, keys: u32, max_chunk: u32, salt: u32) -> Result<Space, String> {
        let most = Space::new(bits, keys, max_chunk, salt)?;
        Ok(Space {
            per_task: 1,
            ..most
        })
    }

    pub fn constants(&self) -> [u32; crate::kernels::CONSTANTS] {
        [
            self.bits,
            self.per_task,
            self.salt,
            self.capacity,
            self.keys,
            0,
            0,
            0,
        ]
    }

    pub fn of(job: &Job) -> Result<Space, String> {
        let c = job.constants;
        let space = Space {
            bits: c[0],
            per_task: c[1],
            salt: c[2],
            capacity: c[3],
            keys: c[4],
        };
        if !(1..=32).contains(&space.bits)
            || space.per_task == 0
            || space.keys == 0
            || space.capacity == 0
            || (space.capacity > space.per_task && job.items == 0)
        {
            return Err(format!("not a search space: {space:?}"));
        }
        Ok(space)
    }

    /// Tasks the keyspace takes.
    pub fn tasks(&self) -> u32 {
        self.keys.div_ceil(self.per_task)
    }

    /// Keys of task `task`: `first..first + count`.
    pub fn range(&self, task: u32) -> Result<(u32, u32), String> {
        let first = u64::from(task) * u64::from(self.per_task);
        if first >= u64::from(self.keys) {
            return Err(format!(
                "task {task} is past the keyspace's {} tasks",
                self.tasks()
            ));
        }
        let count = (u64::from(self.keys) - first).min(u64::from(self.per_task));
        Ok((first as u32, count as u32))
    }

    /// Keys of a task or of a divisible job's chunk (whose space has one key per task,
    /// so the shader's `task_id * per_task` is the chunk's first key): `(first, count)`.
    pub fn keys_of(&self, task: Task) -> Result<(u32, u32), String> {
        if !task.is_chunk() {
            return self.range(task.id);
        }
        if self.per_task != 1 {
            return Err(format!(
                "a chunk of keys needs a space of one key per task, not {}",
                self.per_task
            ));
        }
        let (first, end) = task.range();
        if end > u64::from(self.keys) {
            return Err(format!(
                "keys {first}..{end} are past the keyspace's {}",
                self.keys
            ));
        }
        Ok((first as u32, task.items))
    }

    pub fn shape(&self, task: Task) -> Result<Shape, String> {
        let (_, items) = self.keys_of(task)?;
        Ok(Shape {
            items,
            output_bytes: 4 + 4 * self.capacity as usize,
        })
    }

    /// The CPU reference of task `task`: the canonical output.
    pub fn reference(&self, task: Task) -> Vec<u8> {
        let Ok((first, count)) = self.keys_of(task) else {
            return Vec::new();
        };
        // Hits are counted, and only the first `capacity` kept: a task of 2^32 keys that all
        // hit holds no more than its output.
        let mut out = Vec::with_capacity(4 + 4 * self.capacity.min(count) as usize);
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut hits = 0u32;
        for k in (first..first + count).filter(|&k| hash(k, self.salt).leading_zeros() >= self.bits)
        {
            if hits < self.capacity {
                out.extend_from_slice(&k.to_le_bytes());
            }
            hits = hits.wrapping_add(1);
        }
        out[..4].copy_from_slice(&hits.to_le_bytes());
        out
    }
}

/// Where a search job keeps the hits it stops at (`--hits`; 0 searches everything) among
/// the constants: the first free one.
pub const HITS_WANTED: usize = 5;

/// Sorts the hits of a raw output and drops the unused room: count, then the hits held
/// (at most the capacity), ascending.
pub fn canonical(output: &mut Vec<u8>) {
    if output.len() < 4 {
        output.clear();
        return;
    }
    let count = u32::from_le_bytes([output[0], output[1], output[2], output[3]]) as usize;
    let held = count.min((output.len() - 4) / 4);
    let mut hits: Vec<u32> = output[4..4 + 4 * held]
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    hits.sort_unstable();
    output.truncate(4);
    for k in hits {
        output.extend_from_slice(&k.to_le_bytes());
    }
}

/// The hits of a canonical output.
pub fn hits(output: &[u8]) -> Vec<u32> {
    output
        .get(4..)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned() {
        // Guards the WGSL copy: these values come from the Rust definition.
        assert_eq!(hash(0, 0), PINNED_HASH_0_0);
        assert_eq!(hash(12_345, 7), PINNED_HASH_12345_7);
    }
    const PINNED_HASH_0_0: u32 = 0x944f_b554;
    const PINNED_HASH_12345_7: u32 = 0x96bc_6a7f;

    #[test]
    fn tasks_cover_the_keyspace_and_find_the_expected_share() {
        let s = Space::new(8, 100_000, 30_000, 1).unwrap();
        assert_eq!(s.tasks(), 4);
        assert_eq!(s.range(3), Ok((90_000, 10_000)));
        assert!(s.range(4).is_err());
        let total: usize = (0..s.tasks())
            .map(|t| hits(&s.reference(Task::numbered(t))).len())
            .sum();
        // 100,000 keys / 2^8 is about 390 hits.
        assert!((300..500).contains(&total), "{total}");
        for t in 0..s.tasks() {
            let out = s.reference(Task::numbered(t));
            let h = hits(&out);
            assert!(h.windows(2).all(|w| w[0] < w[1]));
            assert!(h.iter().all(|&k| hash(k, 1).leading_zeros() >= 8));
        }
    }

    #[test]
    fn canonical_sorts_and_trims() {
        let mut raw = Vec::new();
        for w in [2u32, 9, 4, 0, 0] {
            raw.extend_from_slice(&w.to_le_bytes());
        }
        canonical(&mut raw);
        assert_eq!(hits(&raw), vec![4, 9]);
        assert_eq!(raw.len(), 12);
        assert!(Space::new(0, 1, 1, 0).is_err());
        assert!(Space::new(33, 1, 1, 0).is_err());
    }
}

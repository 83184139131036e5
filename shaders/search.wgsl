// search.wgsl: finds the keys of one slice of a keyspace whose 32-bit hash has at least
// `bits` leading zero bits (see src/kernels/search.rs, whose CPU reference must agree bit
// for bit).
//
// The kernel interface (docs/kernels.md). One item per key: task t covers keys
// t * per_task .. t * per_task + items; each invocation tries KEYS consecutive keys of its
// dispatch's `count` (the backend launches count / KEYS invocations, rounded up to whole workgroups). Output: output[0] counts the hits, output[1..]
// holds up to `capacity` of them in arrival order (the worker sorts them).
// Constants: c[0] = (bits, keys per task, salt, capacity); c[1].z = mix(salt + GOLDEN),
// the salted part every key shares, filled in by the backend (`search::salted`).

// Params, `params` (binding 0), GOLDEN and mix() come from interface.wgsl, prepended.
@group(0) @binding(2) var<storage, read_write> output: array<atomic<u32>>;

// Must match `search::hash`, given `salted` = mix(salt + GOLDEN).
fn hash(key: u32, salted: u32) -> u32 {
    return mix(mix(key ^ salted) + key);
}

// Must match `search::KEYS_PER_INVOCATION`.
const KEYS: u32 = 16u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let first = gid.x * KEYS;
    if (first >= params.count) {
        return;
    }
    let bits = params.c[0].x;
    let per_task = params.c[0].y;
    let capacity = params.c[0].w;
    let salted = params.c[1].z;
    let base = params.task_id * per_task + params.offset;
    let end = min(first + KEYS, params.count);
    for (var i = first; i < end; i++) {
        let key = base + i;
        if (countLeadingZeros(hash(key, salted)) >= bits) {
            let at = atomicAdd(&output[0], 1u);
            if (at < capacity) {
                atomicStore(&output[1u + at], key);
            }
        }
    }
}

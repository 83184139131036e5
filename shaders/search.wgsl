// search.wgsl: finds the keys of one slice of a keyspace whose 32-bit hash has at least
// `bits` leading zero bits (see src/kernels/search.rs, whose CPU reference must agree bit
// for bit).
//
// The kernel interface (docs/kernels.md). One item per key: task t covers keys
// t * per_task .. t * per_task + items. Output: output[0] counts the hits, output[1..]
// holds up to `capacity` of them in arrival order (the worker sorts them).
// Constants: c[0] = (bits, keys per task, salt, capacity).

// Params, `params` (binding 0), GOLDEN and mix() come from interface.wgsl, prepended.
@group(0) @binding(2) var<storage, read_write> output: array<atomic<u32>>;

// Must match `search::hash`.
fn hash(key: u32, salt: u32) -> u32 {
    return mix(mix(key ^ mix(salt + GOLDEN)) + key);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= params.count) {
        return;
    }
    let bits = params.c[0].x;
    let per_task = params.c[0].y;
    let salt = params.c[0].z;
    let capacity = params.c[0].w;
    let key = params.task_id * per_task + params.offset + gid.x;
    if (countLeadingZeros(hash(key, salt)) >= bits) {
        let at = atomicAdd(&output[0], 1u);
        if (at < capacity) {
            atomicStore(&output[1u + at], key);
        }
    }
}

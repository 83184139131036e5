// search.wgsl: finds the keys of one slice of a keyspace whose 32-bit hash has at least
// `bits` leading zero bits (see src/kernels/search.rs, whose CPU reference must agree bit
// for bit).
//
// The kernel interface (docs/kernels.md). One item per key: task t covers keys
// t * per_task .. t * per_task + items. Output: output[0] counts the hits, output[1..]
// holds up to `capacity` of them in arrival order (the worker sorts them).
// Constants: c[0] = (bits, keys per task, salt, capacity).

struct Params {
    task_id: u32,
    offset: u32,
    count: u32,
    items: u32,
    input_bytes: u32,
    output_bytes: u32,
    _pad0: u32,
    _pad1: u32,
    c: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read_write> output: array<atomic<u32>>;

const GOLDEN: u32 = 0x9e3779b9u;

// lowbias32 finaliser; must match `spin::mix` bit for bit.
fn mix(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

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

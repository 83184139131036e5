// spin.wgsl: compute-bound integer work for one slice of one task (see src/kernels/spin.rs).
//
// Bindings (group 0):
//   binding 0: `params`, uniform, dynamic offset: which task, which slice of its invocations.
//              One 256-byte-aligned slot per dispatch, so many dispatches share one buffer.
//   binding 1: `result`, storage read_write, two atomic u32: (wrapping sum, xor) of every
//              invocation's final value, accumulated across all the task's dispatches.
// Workgroup size 64: a multiple of the SIMD width of every common GPU (32 or 64) and of CPU
// adapters' vector lanes; the per-workgroup reduction in shared memory turns 64 atomics into
// two, so atomics never bound the kernel. Invocations past `count` contribute 0, the identity
// of both sum and xor, so the last partial workgroup needs no special case.

struct Params {
    task_id: u32,
    offset: u32,
    count: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> result: array<atomic<u32>, 2>;

const ROUNDS: u32 = 256u;
const GOLDEN: u32 = 0x9e3779b9u;

var<workgroup> sums: array<u32, 64>;
var<workgroup> xors: array<u32, 64>;

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

@compute @workgroup_size(64)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    var value = 0u;
    if (gid.x < params.count) {
        var h = (params.offset + gid.x) ^ mix(params.task_id + GOLDEN);
        // Four rounds per iteration: the loop's own bookkeeping stays small next to the hashing.
        for (var r = 0u; r < ROUNDS; r += 4u) {
            h = mix(mix(mix(mix(h))));
        }
        value = h;
    }
    sums[lid] = value;
    xors[lid] = value;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            sums[lid] += sums[lid + stride];
            xors[lid] ^= xors[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        atomicAdd(&result[0], sums[0]);
        atomicXor(&result[1], xors[0]);
    }
}

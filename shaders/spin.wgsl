// spin.wgsl: compute-bound integer work for one slice of one task (see src/kernels/spin.rs).
//
// The kernel interface (docs/kernels.md): `params` at binding 0 (one 256-byte-aligned slot
// per dispatch, selected by a dynamic offset), `input` at binding 1 (unused here), `output`
// at binding 2. One invocation per item; a task of `w` ms has `w * units_per_ms` items.
// Output: two atomic u32, the (wrapping sum, xor) of every invocation's final value,
// accumulated across all the task's dispatches (the buffer starts zeroed).
// Workgroup size 64: a multiple of the SIMD width of every common GPU (32 or 64) and of CPU
// adapters' vector lanes; the per-workgroup reduction in shared memory turns 64 atomics into
// two, so atomics never bound the kernel. Invocations past `count` contribute 0, the identity
// of both sum and xor, so the last partial workgroup needs no special case.

// Params, `params` (binding 0), GOLDEN and mix() come from interface.wgsl, prepended.
@group(0) @binding(2) var<storage, read_write> output: array<atomic<u32>>;

const ROUNDS: u32 = 256u;

var<workgroup> sums: array<u32, 64>;
var<workgroup> xors: array<u32, 64>;

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
        atomicAdd(&output[0], sums[0]);
        atomicXor(&output[1], xors[0]);
    }
}

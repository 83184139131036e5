// histogram.wgsl: a 256-bin histogram of a file's bytes, with atomics.
//
// One item per 4 input bytes (--item-bytes 4); a file whose length is not a multiple of 4
// has its last bytes zero-padded by the worker, so pass files of whole words or expect
// those pad bytes in bin 0 (the input_bytes field tells the kernel the true length, and
// this kernel uses it to skip them). Output: 256 u32 counts (--output-bytes 1024).
// Each workgroup counts into shared memory first, so global atomics are 256 per workgroup
// instead of one per byte.

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
@group(0) @binding(1) var<storage, read> input: array<u32>;
@group(0) @binding(2) var<storage, read_write> output: array<atomic<u32>, 256>;

var<workgroup> bins: array<atomic<u32>, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    atomicStore(&bins[lid], 0u);
    workgroupBarrier();
    if (gid.x < params.count) {
        let i = params.offset + gid.x;
        let word = input[i];
        for (var b = 0u; b < 4u; b += 1u) {
            if (i * 4u + b < params.input_bytes) {
                atomicAdd(&bins[(word >> (8u * b)) & 0xffu], 1u);
            }
        }
    }
    workgroupBarrier();
    let n = atomicLoad(&bins[lid]);
    if (n > 0u) {
        atomicAdd(&output[lid], n);
    }
}

// copy.wgsl: the output is the input, word for word: a probe of how fast the farm moves
// data (see `conquer bench --suite kernels`). One item per 4-byte word of the input; the
// worker pads a last partial word and keeps only the input's length of the output.

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
@group(0) @binding(2) var<storage, read_write> output: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < params.count) {
        let i = params.offset + gid.x;
        output[i] = input[i];
    }
}

// saxpy.wgsl: y = a * x + y over f32 arrays, one item per element.
//
// Input: the task's file holds n f32 values of x followed by n f32 values of y
// (little-endian), so 8 bytes per item: run with --item-bytes 8 --output-bytes 4/item.
// Output: the n f32 values of a * x + y. The constant a is the first of --constants,
// given as a float (`--constants 2.5`) and read back with bitcast.

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
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= params.count) {
        return;
    }
    let i = params.offset + gid.x;
    let n = params.items;
    let a = bitcast<f32>(params.c[0].x);
    output[i] = a * input[i] + input[n + i];
}

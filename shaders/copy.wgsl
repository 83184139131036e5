// copy.wgsl: the output is the input, word for word: a probe of how fast the farm moves
// data (see `conquer bench --suite kernels`). One item per 4-byte word of the input; the
// worker pads a last partial word and keeps only the input's length of the output.

// Params, `params` (binding 0), GOLDEN and mix() come from interface.wgsl, prepended.
@group(0) @binding(1) var<storage, read> input: array<u32>;
@group(0) @binding(2) var<storage, read_write> output: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < params.count) {
        let i = params.offset + gid.x;
        output[i] = input[i];
    }
}

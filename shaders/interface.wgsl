// interface.wgsl: the kernel interface every built-in kernel is compiled with (prepended to
// its source; docs/kernels.md describes it for user kernels, which spell it out).
//
// `params` at binding 0: one 256-byte-aligned slot per dispatch, chosen by a dynamic offset.
// Each kernel declares `input` (binding 1) and `output` (binding 2) with its own types.

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


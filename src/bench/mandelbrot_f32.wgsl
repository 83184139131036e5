// mandelbrot_f32.wgsl: the float32 Mandelbrot kernel conquer shipped before its exact
// fixed-point one, kept for `bench --suite kernels` only, to show what exactness costs. It
// is run as a user kernel (it spells out the interface) and is never verified: a driver may
// fuse its multiply-adds, so its counts differ between GPUs. `src/bench/kernels.rs` holds
// its Rust twin, `f32_count`.
//
// Bindings: `params` (0), `input` (1, one byte per pixel of the band, unread: it only sets
// the item count), `output` (2, one u32 count per pixel). Workgroup size 64, as the exact
// kernel's. Constants: c[0] = (width, height, max_iter, rows per band),
//                      c[1] = (centre re, centre im, complex units per pixel, unused) as f32 bits.

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

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= params.count) {
        return;
    }
    let i = params.offset + gid.x;
    let width = params.c[0].x;
    let height = params.c[0].y;
    let max_iter = params.c[0].z;
    let rows = params.c[0].w;
    let centre_re = bitcast<f32>(params.c[1].x);
    let centre_im = bitcast<f32>(params.c[1].y);
    let step = bitcast<f32>(params.c[1].z);
    let x = i % width;
    let y = params.task_id * rows + i / width;
    let cr = centre_re + (f32(x) - f32(width) * 0.5) * step;
    let ci = centre_im - (f32(y) - f32(height) * 0.5) * step;
    var zr = 0.0;
    var zi = 0.0;
    var n = 0u;
    loop {
        if (n >= max_iter) {
            break;
        }
        let zr2 = zr * zr;
        let zi2 = zi * zi;
        if (zr2 + zi2 > 4.0) {
            break;
        }
        zi = 2.0 * zr * zi + ci;
        zr = (zr2 + cr) - zi2;
        n += 1u;
    }
    output[i] = n;
}

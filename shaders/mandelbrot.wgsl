// mandelbrot.wgsl: escape-time iteration counts for one band of rows of an image (see
// src/kernels/mandelbrot.rs, whose CPU reference performs the same f32 operations in the
// same order).
//
// The kernel interface (docs/kernels.md). One item per pixel of the band, row-major;
// output[i] is the iteration count of item i (`max_iter` for points taken to be inside).
// Constants: c[0] = (width, height, max_iter, rows per band),
//            c[1] = (centre re, centre im, complex units per pixel, unused) as f32 bits.

// Params, `params` (binding 0), GOLDEN and mix() come from interface.wgsl, prepended.
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
        // Written in the order drivers were seen to evaluate it (llvmpipe reassociates
        // `zr2 - zi2 + cr` to this), and mirrored by the CPU reference.
        zi = 2.0 * zr * zi + ci;
        zr = (zr2 + cr) - zi2;
        n += 1u;
    }
    output[i] = n;
}

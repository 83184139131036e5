// mandelbrot.wgsl: escape-time iteration counts for one band of rows of an image, in integer
// fixed point, so that every driver gives the same counts whatever it fuses or reorders
// (src/kernels/mandelbrot.rs is the CPU reference, docs/kernels.md states the arithmetic).
//
// The kernel interface (docs/kernels.md). Bindings: `params` (binding 0, interface.wgsl) and
// `output` (binding 2): one u32 per pixel of the band, row-major, the iteration count
// (`max_iter` for points taken to be inside); no input. Workgroup size 64 as shipped
// (`--tune-workgroups` may build it at 128 or 256): one pixel per invocation, and pixels
// of a row take similar times, so neighbours finish together.
// Constants: c[0] = ((width - 1) | (height - 1) << 16, max_iter, rows per band | shift << 24,
//                   mantissa m of the half pixel step),
//            c[1] = (centre re low, high, centre im low, high): i64 fixed point.
//
// Numbers: a value v is the 64-bit two's-complement integer v * 2^59, held as
// vec2<u32>(low word, high word). WGSL has no 64-bit integers and no 32 x 32 -> 64 multiply,
// so products are built from 16-bit halves. All words wrap (mod 2^32), as WGSL defines.

// Params, `params` (binding 0), GOLDEN and mix() come from interface.wgsl, prepended.
@group(0) @binding(2) var<storage, read_write> output: array<u32>;

// High words of 2 (2^60 units) and 4 (2^61 units).
const TWO_HI: u32 = 0x10000000u;
const FOUR_HI: u32 = 0x20000000u;

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn neg64(a: vec2<u32>) -> vec2<u32> {
    let lo = ~a.x + 1u;
    return vec2<u32>(lo, ~a.y + select(0u, 1u, lo == 0u));
}

fn negative(a: vec2<u32>) -> bool {
    return (a.y >> 31u) == 1u;
}

fn abs64(a: vec2<u32>) -> vec2<u32> {
    return select(a, neg64(a), negative(a));
}

// Whether the non-negative a is above the value whose high word is `hi` and low word 0.
fn above(a: vec2<u32>, hi: u32) -> bool {
    return a.y > hi || (a.y == hi && a.x > 0u);
}

// a << s for s in 0..63 (WGSL masks a shift by 32 or more, so each case is spelt out).
fn shl64(a: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return a;
    }
    if (s >= 32u) {
        return vec2<u32>(0u, a.x << (s - 32u));
    }
    return vec2<u32>(a.x << s, (a.y << s) | (a.x >> (32u - s)));
}

// The full 64-bit product of two u32, from four 16 x 16 -> 32 products.
fn mul32(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = p01 + p10;
    let mid_carry = select(0u, 1u, mid < p01);
    let lo = p00 + (mid << 16u);
    let carry = select(0u, 1u, lo < p00);
    return vec2<u32>(lo, p11 + (mid >> 16u) + (mid_carry << 16u) + carry);
}

// The unsigned 128-bit product of two u64, words low first.
fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec4<u32> {
    let t00 = mul32(a.x, b.x);
    let t01 = mul32(a.x, b.y);
    let t10 = mul32(a.y, b.x);
    let t11 = mul32(a.y, b.y);
    let s1a = t00.y + t01.x;
    let s1 = s1a + t10.x;
    let c1 = select(0u, 1u, s1a < t00.y) + select(0u, 1u, s1 < s1a);
    let s2a = t01.y + t10.y;
    let s2b = s2a + t11.x;
    let s2 = s2b + c1;
    let c2 = select(0u, 1u, s2a < t01.y) + select(0u, 1u, s2b < s2a) + select(0u, 1u, s2 < s2b);
    return vec4<u32>(t00.x, s1, s2, t11.y + c2);
}

// floor(x^2 / 2^59) for the magnitude m <= 2^60 (so m.y < 2^29 and the doubled cross
// term fits 64 bits): three 32 x 32 products instead of four.
fn square(m: vec2<u32>) -> vec2<u32> {
    let t00 = mul32(m.x, m.x);
    let t01 = mul32(m.x, m.y);
    let t11 = mul32(m.y, m.y);
    let d = vec2<u32>(t01.x << 1u, (t01.y << 1u) | (t01.x >> 31u));
    let s1 = t00.y + d.x;
    let c1 = select(0u, 1u, s1 < t00.y);
    let s2a = d.y + t11.x;
    let s2 = s2a + c1;
    let c2 = select(0u, 1u, s2a < d.y) + select(0u, 1u, s2 < s2a);
    let w3 = t11.y + c2;
    return vec2<u32>((s1 >> 27u) | (s2 << 5u), (s2 >> 27u) | (w3 << 5u));
}

// floor(a * b / 2^58) of the magnitudes ma, mb and the product's sign: the 128-bit product
// shifted right by 58; a negative product shifted with bits lost rounds down, to !q.
fn twice_product(ma: vec2<u32>, mb: vec2<u32>, negative_product: bool) -> vec2<u32> {
    let p = mul64(ma, mb);
    let q = vec2<u32>((p.y >> 26u) | (p.z << 6u), (p.z >> 26u) | (p.w << 6u));
    if (!negative_product) {
        return q;
    }
    if (p.x == 0u && (p.y & 0x03ffffffu) == 0u) {
        return neg64(q);
    }
    return ~q;
}

// k half steps of m << shift units, k of either sign (|k| < 2^17).
fn half_steps(k: i32, m: u32, shift: u32) -> vec2<u32> {
    let units = shl64(mul32(u32(abs(k)), m), shift);
    return select(units, neg64(units), k < 0);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= params.count) {
        return;
    }
    let i = params.offset + gid.x;
    let width = (params.c[0].x & 0xffffu) + 1u;
    let height = (params.c[0].x >> 16u) + 1u;
    let max_iter = params.c[0].y;
    let rows = params.c[0].z & 0xffffffu;
    let shift = params.c[0].z >> 24u;
    let m = params.c[0].w;
    let x = i % width;
    let y = params.task_id * rows + i / width;
    // The pixel's centre: (2x + 1 - width) half steps right of the centre, (height - 1 - 2y)
    // up from it; the sums wrap mod 2^64 and are exact, as the view keeps c within +-8.
    let cr = add64(params.c[1].xy, half_steps(i32(2u * x + 1u) - i32(width), m, shift));
    let ci = add64(params.c[1].zw, half_steps(i32(height) - 1 - i32(2u * y), m, shift));
    var zr = vec2<u32>(0u, 0u);
    var zi = vec2<u32>(0u, 0u);
    var n = 0u;
    loop {
        if (n >= max_iter) {
            break;
        }
        let ar = abs64(zr);
        let ai = abs64(zi);
        // |re| or |im| above 2 has a square above 4: escaped, and the squares below stay
        // within the format.
        if (above(ar, TWO_HI) || above(ai, TWO_HI)) {
            break;
        }
        let zr2 = square(ar);
        let zi2 = square(ai);
        if (above(add64(zr2, zi2), FOUR_HI)) {
            break;
        }
        zi = add64(twice_product(ar, ai, negative(zr) != negative(zi)), ci);
        zr = add64(add64(zr2, neg64(zi2)), cr);
        n += 1u;
    }
    output[i] = n;
}

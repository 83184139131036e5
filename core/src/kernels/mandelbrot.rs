//! The `mandelbrot` kernel: escape-time iteration counts of the Mandelbrot set for an image,
//! one band of rows per task. Bands through the set cost up to `max_iter` iterations a
//! pixel, bands outside it a few: uneven tasks that show the scheduler at work.
//!
//! The arithmetic is integer fixed point ([`FRACTION_BITS`] fraction bits in an i64), so
//! the WGSL kernel and this CPU reference give the same counts bit for bit on every
//! backend and driver: `--verify` means equality. Pixel (x, y)'s centre samples
//! c = centre + ((2x + 1 - width) h, (height - 1 - 2y) h) with h the half pixel step;
//! its count is the number of iterations z <- z^2 + c, from z = 0, before |z|^2 > 4,
//! capped at `max_iter`. docs/kernels.md states every rounding.

use crate::batch::{Job, Task};
use crate::kernels::Shape;

/// Largest image side.
pub const MAX_SIDE: u32 = 65_536;
/// Fraction bits of the fixed-point format: a value v is the i64 v * 2^59, so the format
/// spans [-16, 16) in steps of 2^-59.
pub const FRACTION_BITS: u32 = 59;
/// One, in fixed point.
const ONE: i64 = 1 << FRACTION_BITS;
/// The largest |re| and |im| of any pixel's c (and of the centre): 8. With |c| <= 8 every
/// iterate the kernel keeps stays inside the format (|z| components <= 4 + 8).
pub const MAX_COORDINATE: f64 = 8.0;
/// The smallest pixel step the format resolves: 2^-58 (the half step is at least one unit).
pub const MIN_PIXEL_STEP: f64 = 2.0 / ONE as f64;
/// Bits of the half step's mantissa as the job carries it.
const MANTISSA_BITS: u32 = 32;

/// An image and its view of the complex plane, as carried in a job's constants: the centre
/// in fixed point and the half pixel step as `mantissa << shift` fixed-point units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub width: u32,
    pub height: u32,
    pub max_iter: u32,
    /// Rows per band (per task).
    pub rows: u32,
    /// The centre's real and imaginary parts, in units of 2^-59.
    pub centre_re: i64,
    pub centre_im: i64,
    /// Half the pixel step is `half_step << half_step_shift` units of 2^-59.
    pub half_step: u32,
    pub half_step_shift: u32,
}

/// `value` in fixed-point units: value * 2^59 (exact in binary64) rounded to the nearest
/// integer, ties away from zero. `None` outside the i64 range.
pub fn to_fixed(value: f64) -> Option<i64> {
    let scaled = (value * ONE as f64).round();
    // 2^63 itself is out of range; every smaller binary64 integer converts exactly.
    (scaled.abs() < 2f64.powi(63)).then_some(scaled as i64)
}

/// A flag's number as an operator would type it: 1e-16 rather than 0.0000000000000001.
fn number(v: f64) -> String {
    if v != 0.0 && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// A fixed-point value as f64 (for messages).
pub fn from_fixed(units: i128) -> f64 {
    units as f64 / ONE as f64
}

/// The half step of a view `view_width` wide over `width` pixels, as (mantissa, shift):
/// u = view_width / (2 width) * 2^59 in binary64 (one rounded division, an exact
/// scaling), then the smallest shift k >= 0 with m = round(u / 2^k) (ties away from zero)
/// below 2^32.
fn half_step(view_width: f64, width: u32) -> (u32, u32) {
    let units = view_width / (2.0 * f64::from(width)) * ONE as f64;
    let mut shift = 0;
    loop {
        let mantissa = (units / f64::from(shift).exp2()).round();
        if mantissa < (1u64 << MANTISSA_BITS) as f64 || shift >= 63 {
            return (mantissa as u32, shift);
        }
        shift += 1;
    }
}

/// a * b / 2^shift, rounded toward minus infinity: the arithmetic shift of the exact
/// 128-bit product, as the WGSL computes it from 16-bit limbs.
pub fn mul(a: i64, b: i64, shift: u32) -> i64 {
    ((i128::from(a) * i128::from(b)) >> shift) as i64
}

impl View {
    /// The view `--width`, `--height`, `--max-iter`, `--band-rows`, `--centre` and
    /// `--view-width` describe, checked: every pixel's c must lie within the fixed-point
    /// range ([`MAX_COORDINATE`]) and the pixel step must be one the format resolves
    /// ([`MIN_PIXEL_STEP`]).
    pub fn new(
        width: u32,
        height: u32,
        max_iter: u32,
        rows: u32,
        centre: (f64, f64),
        view_width: f64,
    ) -> Result<View, String> {
        if !(1..=MAX_SIDE).contains(&width) || !(1..=MAX_SIDE).contains(&height) {
            return Err(format!(
                "--width {width} --height {height}: each side must be 1 to {MAX_SIDE} pixels"
            ));
        }
        if max_iter == 0 {
            return Err("--max-iter must be at least 1".to_owned());
        }
        if rows == 0 {
            return Err("--band-rows must be at least 1".to_owned());
        }
        let finite = view_width.is_finite() && centre.0.is_finite() && centre.1.is_finite();
        if !(finite && view_width > 0.0) {
            return Err(format!(
                "--view-width {view_width} and --centre {},{} must be finite, the width above 0",
                centre.0, centre.1
            ));
        }
        if centre.0.abs() > MAX_COORDINATE || centre.1.abs() > MAX_COORDINATE {
            return Err(format!(
                "--centre={},{} is outside the mandelbrot kernel's fixed-point range: each part \
                 must be within -{MAX_COORDINATE} to {MAX_COORDINATE}",
                number(centre.0),
                number(centre.1)
            ));
        }
        // Wider than the whole range: no centre fits it (and its corners, in fixed point,
        // would be past what a message can show).
        if view_width > 2.0 * MAX_COORDINATE {
            return Err(format!(
                "--view-width {} is wider than the mandelbrot kernel's fixed-point range, \
                 {} across (-{MAX_COORDINATE} to {MAX_COORDINATE}): narrow the view",
                number(view_width),
                2.0 * MAX_COORDINATE
            ));
        }
        let step = view_width / f64::from(width);
        if step < MIN_PIXEL_STEP {
            return Err(format!(
                "--view-width {} over {width} pixels is a pixel step of {step:.3e}, \
                 finer than the mandelbrot kernel's fixed point resolves (2^-58, about \
                 {MIN_PIXEL_STEP:.3e}, per pixel): give --view-width at least {:.3e} or fewer \
                 --width pixels",
                number(view_width),
                MIN_PIXEL_STEP * f64::from(width)
            ));
        }
        let (half_step, half_step_shift) = half_step(view_width, width);
        let (Some(centre_re), Some(centre_im)) = (to_fixed(centre.0), to_fixed(centre.1)) else {
            unreachable!("a centre within -8 to 8 is within the i64 range");
        };
        let view = View {
            width,
            height,
            max_iter,
            rows: rows.min(height),
            centre_re,
            centre_im,
            half_step,
            half_step_shift,
        };
        view.in_range().map_err(|corners| {
            format!(
                "--centre={},{} and --view-width {} reach {corners}, beyond the \
                 mandelbrot kernel's fixed-point range of -{MAX_COORDINATE} to \
                 {MAX_COORDINATE} on each axis: narrow the view or move the centre",
                number(centre.0),
                number(centre.1),
                number(view_width)
            )
        })?;
        Ok(view)
    }

    /// Half the pixel step, in fixed-point units.
    pub fn half_step_units(&self) -> i128 {
        i128::from(self.half_step) << self.half_step_shift
    }

    /// The exact c of pixel (x, y), in units (not yet reduced to i64).
    fn point_wide(&self, x: u32, y: u32) -> (i128, i128) {
        let h = self.half_step_units();
        let re = i128::from(self.centre_re) + (2 * i128::from(x) + 1 - i128::from(self.width)) * h;
        let im = i128::from(self.centre_im) + (i128::from(self.height) - 1 - 2 * i128::from(y)) * h;
        (re, im)
    }

    /// The c of pixel (x, y)'s centre in fixed point: the centre plus (2x + 1 - width) half
    /// steps along re, plus (height - 1 - 2y) along im (rows run downwards).
    pub fn point(&self, x: u32, y: u32) -> (i64, i64) {
        let (re, im) = self.point_wide(x, y);
        (re as i64, im as i64)
    }

    /// `Ok` when every pixel's c (and the centre) is within ±[`MAX_COORDINATE`] and the
    /// half step is at least one unit; else the corners' coordinates, for a message.
    fn in_range(&self) -> Result<(), String> {
        let limit = MAX_COORDINATE as i128 * i128::from(ONE);
        let (left, top) = self.point_wide(0, 0);
        let (right, bottom) = self.point_wide(self.width - 1, self.height - 1);
        let inside = |v: i128| v.abs() <= limit;
        let centre = [self.centre_re, self.centre_im].map(|v| inside(i128::from(v)));
        if self.half_step >= 1
            && self.half_step_shift < 64
            && centre == [true, true]
            && [left, top, right, bottom].into_iter().all(inside)
        {
            return Ok(());
        }
        Err(format!(
            "re {} to {}, im {} to {}",
            from_fixed(left),
            from_fixed(right),
            from_fixed(bottom),
            from_fixed(top)
        ))
    }

    /// The constants a job carries for this view: `c[0] = (width - 1) | (height - 1) << 16`,
    /// `c[1] = max_iter`, `c[2] = rows | shift << 24`, `c[3]` = the half step's mantissa,
    /// `c[4..6]` and `c[6..8]` = the centre's re and im as i64 (low word first).
    pub fn constants(&self) -> [u32; crate::kernels::CONSTANTS] {
        let (re, im) = (self.centre_re as u64, self.centre_im as u64);
        [
            (self.width - 1) | (self.height - 1) << 16,
            self.max_iter,
            self.rows | self.half_step_shift << 24,
            self.half_step,
            re as u32,
            (re >> 32) as u32,
            im as u32,
            (im >> 32) as u32,
        ]
    }

    /// The view a job's constants describe, checked as [`View::new`] checks flags (a peer's
    /// constants cannot make the reference leave the format).
    pub fn of(job: &Job) -> Result<View, String> {
        let c = job.constants;
        let view = View {
            width: (c[0] & 0xffff) + 1,
            height: (c[0] >> 16) + 1,
            max_iter: c[1],
            rows: c[2] & 0x00ff_ffff,
            half_step_shift: c[2] >> 24,
            half_step: c[3],
            centre_re: (u64::from(c[4]) | u64::from(c[5]) << 32) as i64,
            centre_im: (u64::from(c[6]) | u64::from(c[7]) << 32) as i64,
        };
        if view.rows == 0 || view.max_iter == 0 {
            return Err(format!("not a Mandelbrot view: {view:?}"));
        }
        view.in_range().map_err(|corners| {
            format!("a Mandelbrot view beyond the fixed-point range: {corners}")
        })?;
        Ok(view)
    }

    /// Tasks (bands) the image takes.
    pub fn bands(&self) -> u32 {
        self.height.div_ceil(self.rows)
    }

    /// Rows of band `band`: `rows`, fewer for the last one.
    pub fn rows_of(&self, band: u32) -> Result<u32, String> {
        let first = u64::from(band) * u64::from(self.rows);
        if first >= u64::from(self.height) {
            return Err(format!(
                "band {band} is past the image's {} bands",
                self.bands()
            ));
        }
        Ok((u64::from(self.height) - first).min(u64::from(self.rows)) as u32)
    }

    /// The rows a task covers, `(first row, rows)`: a band of `rows` rows, or a divisible
    /// job's chunk of rows (whose view has one row per band, so the shader's
    /// `task_id * rows` is the chunk's first row).
    pub fn span(&self, task: Task) -> Result<(u32, u32), String> {
        if !task.is_chunk() {
            return Ok((task.id.saturating_mul(self.rows), self.rows_of(task.id)?));
        }
        if self.rows != 1 {
            return Err(format!(
                "a chunk of rows needs a view of one row per band, not {}",
                self.rows
            ));
        }
        let (first, end) = task.range();
        if end > u64::from(self.height) {
            return Err(format!(
                "rows {first}..{end} are past the image's {} rows",
                self.height
            ));
        }
        Ok((first as u32, task.items))
    }

    pub fn shape(&self, task: Task) -> Result<Shape, String> {
        let (_, rows) = self.span(task)?;
        let band = task.id;
        let items = u64::from(self.width) * u64::from(rows);
        let items = u32::try_from(items)
            .map_err(|_| format!("band {band} has more than 2^32 pixels: lower --band-rows"))?;
        Ok(Shape {
            items,
            output_bytes: items as usize * 4,
        })
    }

    /// Iteration count of pixel (x, y): the shader's arithmetic, exactly. Each iteration
    /// first stops at an escaped z (|re| or |im| above 2 implies a truncated |z|^2 above
    /// 4: a shortcut that keeps the squares inside the format), then at x2 + y2 > 4, where
    /// x2 and y2 are the squares rounded toward minus infinity; then im <- 2 re im + c_im
    /// (the product shifted by 58, rounded the same way) and re <- x2 - y2 + c_re.
    pub fn count(&self, x: u32, y: u32) -> u32 {
        let (cr, ci) = self.point(x, y);
        let two = 2 * ONE as u64;
        let four = 4 * ONE;
        let (mut zr, mut zi) = (0i64, 0i64);
        let mut n = 0;
        while n < self.max_iter {
            if zr.unsigned_abs() > two || zi.unsigned_abs() > two {
                break;
            }
            let zr2 = mul(zr, zr, FRACTION_BITS);
            let zi2 = mul(zi, zi, FRACTION_BITS);
            if zr2 + zi2 > four {
                break;
            }
            zi = mul(zr, zi, FRACTION_BITS - 1).wrapping_add(ci);
            zr = zr2.wrapping_sub(zi2).wrapping_add(cr);
            n += 1;
        }
        n
    }

    /// The CPU reference of band `band`: its counts, row-major, little-endian u32.
    pub fn reference(&self, task: Task) -> Vec<u8> {
        let (first, rows) = self.span(task).unwrap_or((0, 0));
        let mut out = Vec::with_capacity((self.width * rows) as usize * 4);
        for row in 0..rows {
            let y = first + row;
            for x in 0..self.width {
                out.extend_from_slice(&self.count(x, y).to_le_bytes());
            }
        }
        out
    }
}

/// Pixels whose counts differ between two outputs of one band.
pub fn differing(output: &[u8], reference: &[u8]) -> usize {
    output
        .chunks(4)
        .zip(reference.chunks(4))
        .filter(|(a, b)| a != b)
        .count()
}

/// Whether a band equals the reference, pixel for pixel (the arithmetic is exact, so one
/// differing pixel is a mismatch); `Err` names how many differ and the first.
pub fn agrees(output: &[u8], reference: &[u8]) -> Result<(), String> {
    if output.len() != reference.len() {
        return Err(format!(
            "{} bytes of counts where the reference has {}",
            output.len(),
            reference.len()
        ));
    }
    let count = |bytes: &[u8], i: usize| {
        bytes
            .get(4 * i..4 * i + 4)
            .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let Some(first) = output
        .chunks(4)
        .zip(reference.chunks(4))
        .position(|(a, b)| a != b)
    else {
        return Ok(());
    };
    Err(format!(
        "{} of {} pixels differ from the CPU reference, the first at item {first} ({} \
         iterations where the reference has {})",
        differing(output, reference),
        reference.len() / 4,
        count(output, first),
        count(reference, first)
    ))
}

/// The verdict on an image of which `differing` of `checked` pixels differ from the CPU
/// reference: `Err` unless none does.
pub fn judge(differing: u64, checked: u64) -> Result<(), String> {
    if differing > 0 {
        return Err(format!(
            "{differing} of {checked} checked pixels differ from the CPU reference (the \
             mandelbrot kernel is exact: every pixel must be equal)"
        ));
    }
    Ok(())
}

/// The colour of a pixel with `count` iterations: black inside the set, a smooth palette
/// (cosine gradient over the count's logarithm) outside.
pub fn colour(count: u32, max_iter: u32) -> [u8; 3] {
    if count >= max_iter {
        return [0, 0, 0];
    }
    let t = (f64::from(count) + 1.0).ln() / (f64::from(max_iter) + 1.0).ln();
    let channel = |phase: f64| {
        let v = 0.5 + 0.5 * (std::f64::consts::TAU * (t * 1.6 + phase)).cos();
        (v * 255.0).round().clamp(0.0, 255.0) as u8
    };
    [channel(0.0), channel(0.15), channel(0.35)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        View::new(64, 48, 200, 5, (-0.5, 0.0), 3.0).unwrap()
    }

    #[test]
    fn constants_round_trip_and_bands_cover_the_image() {
        let v = view();
        let job = Job {
            kernel: 1,
            constants: v.constants(),
            ..Job::default()
        };
        assert_eq!(View::of(&job), Ok(v));
        assert_eq!(v.bands(), 10);
        let rows: u32 = (0..v.bands()).map(|b| v.rows_of(b).unwrap()).sum();
        assert_eq!(rows, 48);
        assert_eq!(v.rows_of(9), Ok(3));
        assert!(v.rows_of(10).is_err());
        assert_eq!(v.shape(Task::numbered(9)).unwrap().output_bytes, 64 * 3 * 4);
    }

    #[test]
    fn a_chunk_of_rows_computes_what_the_bands_compute() {
        let banded = View::new(64, 48, 100, 8, (-0.5, 0.0), 3.0).unwrap();
        let job = Job {
            kernel: 1,
            constants: View { rows: 1, ..banded }.constants(),
            items: 48,
            ..Job::default()
        };
        let rows = View::of(&job).unwrap();
        let chunk = Task {
            id: 77,
            first: 16,
            items: 16,
            ..Task::default()
        };
        assert_eq!(rows.span(chunk), Ok((16, 16)));
        let both = [
            banded.reference(Task::numbered(2)),
            banded.reference(Task::numbered(3)),
        ];
        assert_eq!(rows.reference(chunk), both.concat());
        assert!(rows.span(Task { first: 40, ..chunk }).is_err());
        assert!(banded.span(chunk).is_err(), "a banded view takes no chunks");
    }

    #[test]
    fn the_set_is_where_it_should_be() {
        let v = view();
        // The centre of the image (-0.5, 0) is inside; the top-left corner escapes at once.
        assert_eq!(v.count(32, 24), 200);
        assert!(v.count(0, 0) < 3);
        assert_eq!(colour(200, 200), [0, 0, 0]);
    }

    #[test]
    fn one_differing_pixel_is_a_mismatch() {
        let a = vec![0u8; 4000];
        let mut b = a.clone();
        b[4] = 1;
        b[8] = 1;
        assert_eq!(differing(&a, &b), 2);
        assert!(agrees(&a, &a).is_ok());
        let why = agrees(&a, &b).unwrap_err();
        assert!(
            why.contains("2 of 1000 pixels") && why.contains("item 1"),
            "{why}"
        );
        assert!(agrees(&a, &b[..8]).is_err());
        assert!(judge(0, 1000).is_ok());
        assert!(judge(1, 1_000_000).is_err());
        assert!(View::new(0, 1, 1, 1, (0.0, 0.0), 1.0).is_err());
        assert!(View::new(1, 1, 1, 1, (0.0, 0.0), f64::NAN).is_err());
    }

    /// The WGSL's multiply, step by step in u32 limbs and 16-bit halves: what the shader
    /// does, checked here against i128 so the limb algorithm itself is known right.
    fn limb_mul(a: i64, b: i64, shift: u32) -> i64 {
        fn mul32(a: u32, b: u32) -> (u32, u32) {
            let (a0, a1, b0, b1) = (a & 0xffff, a >> 16, b & 0xffff, b >> 16);
            let (p00, p01, p10, p11) = (a0 * b0, a0 * b1, a1 * b0, a1 * b1);
            let mid = p01.wrapping_add(p10);
            let mid_carry = u32::from(mid < p01);
            let lo = p00.wrapping_add(mid << 16);
            let carry = u32::from(lo < p00);
            let hi = p11
                .wrapping_add(mid >> 16)
                .wrapping_add(mid_carry << 16)
                .wrapping_add(carry);
            (lo, hi)
        }
        let negative = (a < 0) != (b < 0);
        let (ua, ub) = (a.unsigned_abs(), b.unsigned_abs());
        let (a0, a1, b0, b1) = (ua as u32, (ua >> 32) as u32, ub as u32, (ub >> 32) as u32);
        let (t00, t01, t10, t11) = (mul32(a0, b0), mul32(a0, b1), mul32(a1, b0), mul32(a1, b1));
        // Columns of 32 bits, each with its carries into the next.
        let w0 = t00.0;
        let s1 = u64::from(t00.1) + u64::from(t01.0) + u64::from(t10.0);
        let s2 = u64::from(t01.1) + u64::from(t10.1) + u64::from(t11.0) + (s1 >> 32);
        let w3 = t11.1.wrapping_add((s2 >> 32) as u32);
        let (w1, w2) = (s1 as u32, s2 as u32);
        let product =
            u128::from(w0) | u128::from(w1) << 32 | u128::from(w2) << 64 | u128::from(w3) << 96;
        let q = (product >> shift) as u64;
        let exact = product & ((1u128 << shift) - 1) == 0;
        // floor(-P / 2^s) = -q when nothing is shifted out, else -q - 1 = !q.
        let q = match (negative, exact) {
            (false, _) => q,
            (true, true) => q.wrapping_neg(),
            (true, false) => !q,
        };
        q as i64
    }

    #[test]
    fn products_round_toward_minus_infinity() {
        assert_eq!(mul(3, 1, 1), 1);
        assert_eq!(mul(-3, 1, 1), -2);
        assert_eq!(mul(-1, 1, 1), -1);
        assert_eq!(mul(-4, 1, 1), -2);
        assert_eq!(mul(ONE, ONE, FRACTION_BITS), ONE);
        assert_eq!(mul(-ONE / 2, ONE / 2, FRACTION_BITS), -ONE / 4);
        assert_eq!(mul(-ONE - 1, 1, FRACTION_BITS), -2);
        // 2 and a unit squares to 4 and four units: above 4, so the |re| > 2 shortcut
        // agrees with the squares' test.
        assert_eq!(mul(2 * ONE + 1, 2 * ONE + 1, FRACTION_BITS), 4 * ONE + 4);
        assert_eq!(mul(-2 * ONE, -2 * ONE, FRACTION_BITS), 4 * ONE);
        for (a, b) in [
            (0, 0),
            (1, -1),
            (-1, -1),
            (ONE * 2, -ONE * 2),
            (12 * ONE, -3),
        ] {
            for shift in [58, 59] {
                assert_eq!(
                    limb_mul(a, b, shift),
                    mul(a, b, shift),
                    "{a} * {b} >> {shift}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_limb_multiply_equals_the_wide_one(
            a in -(2 * ONE)..=2 * ONE,
            b in -(2 * ONE)..=2 * ONE,
            shift in 58u32..=59,
        ) {
            proptest::prop_assert_eq!(limb_mul(a, b, shift), mul(a, b, shift));
        }
    }

    #[test]
    fn coordinates_convert_with_the_stated_roundings() {
        assert_eq!(to_fixed(0.5), Some(ONE / 2));
        assert_eq!(to_fixed(-1.0), Some(-ONE));
        // Half a unit rounds away from zero, either way.
        assert_eq!(to_fixed(0.5 / ONE as f64), Some(1));
        assert_eq!(to_fixed(-0.5 / ONE as f64), Some(-1));
        assert_eq!(to_fixed(16.0), None);
        // 2 wide over 1 pixel: half step 1 = 2^59 units = 2^31 << 28.
        assert_eq!(half_step(2.0, 1), (1 << 31, 28));
        // Small steps keep every unit: 3 units exactly.
        assert_eq!(half_step(6.0 / ONE as f64, 1), (3, 0));
        // A 4-pixel view 2 wide at 0: pixel centres at -0.75, -0.25, 0.25, 0.75.
        let v = View::new(4, 2, 10, 1, (0.0, 0.0), 2.0).unwrap();
        assert_eq!(v.half_step_units(), i128::from(ONE / 4));
        assert_eq!(v.point(0, 0), (-3 * ONE / 4, ONE / 4));
        assert_eq!(v.point(3, 1), (3 * ONE / 4, -ONE / 4));
    }

    #[test]
    fn known_points_count_what_the_iteration_says() {
        let at = |re: f64, im: f64, max_iter: u32| {
            View::new(1, 1, max_iter, 1, (re, im), 1e-9)
                .unwrap()
                .count(0, 0)
        };
        // c = 1: z = 0, 1, 2, 5; 5 is escaped, after 3 iterations.
        assert_eq!(at(1.0, 0.0, 100), 3);
        // c = -2: z = 0, -2, 2, 2, ...: |z|^2 = 4 is not above 4, so it never escapes.
        assert_eq!(at(-2.0, 0.0, 100), 100);
        assert_eq!(at(0.0, 0.0, 7), 7);
        // c = 3i: escaped on the first test after one iteration.
        assert_eq!(at(0.0, 3.0, 100), 1);
        assert_eq!(at(-8.0, 8.0, 100), 1);
    }

    #[test]
    fn views_beyond_the_format_are_refused_naming_the_limit() {
        let far = View::new(64, 64, 10, 1, (9.0, 0.0), 1.0).unwrap_err();
        assert!(far.contains("--centre") && far.contains("-8 to 8"), "{far}");
        let fine = View::new(1920, 1080, 10, 1, (-0.5, 0.0), 1e-16).unwrap_err();
        assert!(
            fine.contains("--view-width") && fine.contains("2^-58"),
            "{fine}"
        );
        assert!(
            fine.contains("6.661e-15"),
            "names the smallest width: {fine}"
        );
        let wide = View::new(64, 64, 10, 1, (7.5, 0.0), 2.0).unwrap_err();
        assert!(
            wide.contains("range of -8 to 8") && wide.contains("re 6.5"),
            "{wide}"
        );
        // Wider than the range: named as such, not by corners past what fixed point holds.
        let vast = View::new(64, 64, 10, 1, (0.0, 0.0), 1e30).unwrap_err();
        assert!(
            vast.contains("1e30") && vast.contains("16 across"),
            "{vast}"
        );
        // The limits themselves are fine.
        assert!(View::new(2, 2, 10, 1, (7.0, -7.0), 2.0).is_ok());
        assert!(View::new(2, 2, 10, 1, (0.0, 0.0), 16.0).is_ok());
        assert!(View::new(1920, 1080, 10, 1, (-0.5, 0.0), 1920.0 * MIN_PIXEL_STEP).is_ok());
    }

    #[test]
    fn a_peers_view_beyond_the_format_is_refused() {
        let mut constants = view().constants();
        constants[5] = 0x7000_0000; // the centre's re near 2^62 units: 8 and more
        let job = Job {
            kernel: 1,
            constants,
            ..Job::default()
        };
        assert!(View::of(&job)
            .unwrap_err()
            .contains("beyond the fixed-point range"));
        constants = view().constants();
        constants[3] = 0; // no step
        assert!(View::of(&Job { constants, ..job }).is_err());
    }
}

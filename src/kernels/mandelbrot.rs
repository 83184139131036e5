//! The `mandelbrot` kernel: escape-time iteration counts of the Mandelbrot set for an image,
//! one band of rows per task. Bands through the set cost up to `max_iter` iterations a
//! pixel, bands outside it a few: uneven tasks that show the scheduler at work.
//!
//! Pixel (x, y) of a `width` x `height` image samples c = centre + ((x - width/2) * step,
//! -(y - height/2) * step). Its count is the number of iterations z <- z^2 + c, from z = 0,
//! before |z|^2 > 4, capped at `max_iter` (taken to be inside the set). The CPU reference
//! performs the WGSL's f32 operations in the same order; a GPU may still differ near the
//! set's boundary (fused multiply-add, rounding of its own), so results are compared with a
//! tolerance ([`TOLERANCE`]) instead of bit for bit.

use crate::batch::{Job, Task};
use crate::kernels::Shape;

/// Largest fraction of a band's pixels whose counts may differ from the CPU reference.
pub const TOLERANCE: f64 = 0.001;
/// Largest image side.
pub const MAX_SIDE: u32 = 65_536;

/// An image and its view of the complex plane, as carried in a job's constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub width: u32,
    pub height: u32,
    pub max_iter: u32,
    /// Rows per band (per task).
    pub rows: u32,
    pub centre_re: f32,
    pub centre_im: f32,
    /// Complex units per pixel.
    pub step: f32,
}

impl View {
    /// The view `--width`, `--height`, `--max-iter`, `--band-rows`, `--centre` and
    /// `--view-width` describe, checked.
    pub fn new(
        width: u32,
        height: u32,
        max_iter: u32,
        rows: u32,
        centre: (f32, f32),
        view_width: f32,
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
        Ok(View {
            width,
            height,
            max_iter,
            rows: rows.min(height),
            centre_re: centre.0,
            centre_im: centre.1,
            step: view_width / width as f32,
        })
    }

    /// The constants a job carries for this view.
    pub fn constants(&self) -> [u32; crate::kernels::CONSTANTS] {
        [
            self.width,
            self.height,
            self.max_iter,
            self.rows,
            self.centre_re.to_bits(),
            self.centre_im.to_bits(),
            self.step.to_bits(),
            0,
        ]
    }

    /// The view a job's constants describe.
    pub fn of(job: &Job) -> Result<View, String> {
        let c = job.constants;
        let view = View {
            width: c[0],
            height: c[1],
            max_iter: c[2],
            rows: c[3],
            centre_re: f32::from_bits(c[4]),
            centre_im: f32::from_bits(c[5]),
            step: f32::from_bits(c[6]),
        };
        if view.width == 0
            || view.height == 0
            || view.width > MAX_SIDE
            || view.height > MAX_SIDE
            || view.rows == 0
            || view.max_iter == 0
        {
            return Err(format!("not a Mandelbrot view: {view:?}"));
        }
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

    /// Iteration count of pixel (x, y): the shader's arithmetic, in the same order.
    pub fn count(&self, x: u32, y: u32) -> u32 {
        let cr = self.centre_re + (x as f32 - self.width as f32 * 0.5) * self.step;
        let ci = self.centre_im - (y as f32 - self.height as f32 * 0.5) * self.step;
        let (mut zr, mut zi) = (0.0f32, 0.0f32);
        let mut n = 0;
        while n < self.max_iter {
            let zr2 = zr * zr;
            let zi2 = zi * zi;
            if zr2 + zi2 > 4.0 {
                break;
            }
            zi = 2.0 * zr * zi + ci;
            zr = (zr2 + cr) - zi2;
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

/// Whether a band agrees with the reference: the same number of pixels. How many of them
/// differ is counted ([`differing`]) and judged over the whole image, against
/// [`TOLERANCE`], by the sink: a band through the set's boundary may differ more than the
/// image does.
pub fn agrees(output: &[u8], reference: &[u8]) -> Result<(), String> {
    if output.len() != reference.len() {
        return Err(format!(
            "{} bytes of counts where the reference has {}",
            output.len(),
            reference.len()
        ));
    }
    Ok(())
}

/// The verdict on an image of which `differing` of `checked` pixels differ from the CPU
/// reference: `Err` with the figures above [`TOLERANCE`].
pub fn judge(differing: u64, checked: u64) -> Result<(), String> {
    if checked > 0 && differing as f64 / checked as f64 > TOLERANCE {
        return Err(format!(
            "{differing} of {checked} checked pixels differ from the CPU reference ({:.3} %, above \
             the {:.1} % tolerance)",
            100.0 * differing as f64 / checked as f64,
            100.0 * TOLERANCE
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
    fn tolerance_counts_pixels() {
        let a = vec![0u8; 4000];
        let mut b = a.clone();
        b[0] = 1;
        b[4] = 1;
        assert_eq!(differing(&a, &b), 2);
        assert!(agrees(&a, &b).is_ok());
        assert!(agrees(&a, &b[..8]).is_err());
        assert!(judge(1, 1000).is_ok()); // 0.1 %, at the tolerance
        assert!(judge(2, 1000).is_err());
        assert!(judge(0, 0).is_ok());
        assert!(View::new(0, 1, 1, 1, (0.0, 0.0), 1.0).is_err());
        assert!(View::new(1, 1, 1, 1, (0.0, 0.0), f32::NAN).is_err());
    }
}

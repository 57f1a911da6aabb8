//! The built-in procedural dataset "shapes": one anti-aliased shape per image on a dark
//! background, needing no files.
//!
//! Each image draws from its own stream `Rng::stream(seed, i)`, so image `i` is the same whatever
//! `n` is (a larger dataset extends a smaller one). Per image: a shape class (disk, ring, square,
//! cross, bar; the label), a size of 22-38% of the resolution, a position keeping the shape
//! inside the frame, a rotation (squares, crosses, bars), a foreground level in `[0.2, 1]` (grey)
//! or a saturated colour (RGB), and a background level in `[-1, -0.85]`. Shapes are rendered
//! from signed distance functions with coverage `clamp(0.5 - d, 0, 1)` (`d` in pixels), which
//! anti-aliases edges. Values are in `[-1, 1]`. The shapes stay recognisable down to 8x8.
use crate::rng::Rng;
use tch::Tensor;

/// Label names, indexed by label.
pub const SHAPE_NAMES: [&str; 5] = ["disk", "ring", "square", "cross", "bar"];

#[derive(Clone, Copy)]
enum Shape {
    Disk { r: f64 },
    Ring { r: f64, hw: f64 },
    Square { h: f64 },
    Cross { l: f64, w: f64 },
    Bar { l: f64, w: f64 },
}

/// Signed distance to an axis-aligned box of half-sizes (bx, by) centred at the origin.
#[inline]
fn sd_box(x: f64, y: f64, bx: f64, by: f64) -> f64 {
    let (qx, qy) = (x.abs() - bx, y.abs() - by);
    let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
    outside + qx.max(qy).min(0.0)
}

impl Shape {
    /// Signed distance at local (rotated, centred) coordinates.
    #[inline]
    fn sd(self, x: f64, y: f64) -> f64 {
        match self {
            Shape::Disk { r } => (x * x + y * y).sqrt() - r,
            Shape::Ring { r, hw } => ((x * x + y * y).sqrt() - r).abs() - hw,
            Shape::Square { h } => sd_box(x, y, h, h),
            Shape::Cross { l, w } => sd_box(x, y, l, w).min(sd_box(x, y, w, l)),
            Shape::Bar { l, w } => sd_box(x, y, l, w),
        }
    }
}

struct Params {
    label: i64,
    shape: Shape,
    cx: f64,
    cy: f64,
    cos: f64,
    sin: f64,
    fg: [f32; 3],
    bg: f32,
}

/// HSV (all in [0, 1]) to RGB in [0, 1].
fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h6 = (h * 6.0) % 6.0;
    let c = v * s;
    let x = c * (1.0 - ((h6 % 2.0) - 1.0).abs());
    let (r, g, b) = match h6 as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

fn params(seed: u64, index: u64, res: f64, rgb: bool) -> Params {
    let mut rng = Rng::stream(seed, index);
    let label = rng.below(5) as i64;
    let s = rng.uniform_range(0.22, 0.38) * res;
    let min_w = 0.75; // half-widths below ~1.5 px total vanish at low resolution
    let (shape, extent) = match label {
        0 => (Shape::Disk { r: s }, s),
        1 => (Shape::Ring { r: s, hw: (rng.uniform_range(0.12, 0.22) * s).max(min_w) }, s + min_w),
        2 => {
            let h = 0.8 * s;
            (Shape::Square { h }, h * std::f64::consts::SQRT_2)
        }
        3 => {
            let w = (rng.uniform_range(0.18, 0.28) * s).max(min_w);
            (Shape::Cross { l: s, w }, (s * s + w * w).sqrt())
        }
        _ => {
            let l = 1.2 * s;
            let w = (rng.uniform_range(0.18, 0.3) * s).max(min_w);
            (Shape::Bar { l, w }, (l * l + w * w).sqrt())
        }
    };
    let theta = match label {
        0 | 1 => 0.0,
        4 => rng.uniform_range(0.0, std::f64::consts::PI),
        _ => rng.uniform_range(0.0, std::f64::consts::FRAC_PI_2),
    };
    // Keep the shape (its bounding circle, slightly relaxed) inside the frame.
    let margin = (0.9 * extent).min(res / 2.0);
    let cx = rng.uniform_range(margin, res - margin);
    let cy = rng.uniform_range(margin, res - margin);
    let fg = if rgb {
        let c = hsv(rng.uniform(), rng.uniform_range(0.6, 1.0), rng.uniform_range(0.7, 1.0));
        [(2.0 * c[0] - 1.0) as f32, (2.0 * c[1] - 1.0) as f32, (2.0 * c[2] - 1.0) as f32]
    } else {
        let g = rng.uniform_range(0.2, 1.0) as f32;
        [g, g, g]
    };
    let bg = rng.uniform_range(-1.0, -0.85) as f32;
    let (sin, cos) = theta.sin_cos();
    Params { label, shape, cx, cy, cos, sin, fg, bg }
}

/// Renders image `index` into `out` (planar, `channels` planes of res x res).
fn render(p: &Params, res: usize, channels: usize, out: &mut [f32]) {
    let plane = res * res;
    for y in 0..res {
        for x in 0..res {
            let (dx, dy) = (x as f64 + 0.5 - p.cx, y as f64 + 0.5 - p.cy);
            let (lx, ly) = (p.cos * dx + p.sin * dy, -p.sin * dx + p.cos * dy);
            let a = (0.5 - p.shape.sd(lx, ly)).clamp(0.0, 1.0) as f32;
            for c in 0..channels {
                out[c * plane + y * res + x] = p.bg + a * (p.fg[c] - p.bg);
            }
        }
    }
}

/// `n` images and their shape labels (indices into [`SHAPE_NAMES`]); `rgb` gives 3 channels.
pub fn generate_labeled(n: usize, resolution: usize, seed: u64, rgb: bool) -> (Tensor, Vec<i64>) {
    assert!(resolution >= 4, "procedural shapes need a resolution of at least 4");
    let channels = if rgb { 3 } else { 1 };
    let per = channels * resolution * resolution;
    let mut data = vec![0f32; n * per];
    let mut labels = Vec::with_capacity(n);
    for (i, chunk) in data.chunks_exact_mut(per.max(1)).enumerate().take(n) {
        let p = params(seed, i as u64, resolution as f64, rgb);
        render(&p, resolution, channels, chunk);
        labels.push(p.label);
    }
    let r = resolution as i64;
    (Tensor::from_slice(&data).reshape([n as i64, channels as i64, r, r]), labels)
}

/// `n` grey images `[n, 1, res, res]` in `[-1, 1]`, deterministic in `seed`.
pub fn generate(n: usize, resolution: usize, seed: u64) -> Tensor {
    generate_labeled(n, resolution, seed, false).0
}

/// `n` RGB images `[n, 3, res, res]` in `[-1, 1]`, deterministic in `seed`.
pub fn generate_rgb(n: usize, resolution: usize, seed: u64) -> Tensor {
    generate_labeled(n, resolution, seed, true).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_varied_in_range() {
        let t0 = std::time::Instant::now();
        let a = generate(10_000, 16, 0);
        let dt = t0.elapsed();
        assert!(dt.as_secs_f64() < 1.0, "10k images took {dt:?}");
        assert_eq!(a.size(), vec![10_000, 1, 16, 16]);
        let b = generate(10_000, 16, 0);
        assert!(a.equal(&b));
        // prefix-stable and seed-dependent
        assert!(generate(10, 16, 0).equal(&a.narrow(0, 0, 10)));
        let c = generate(10, 16, 1);
        assert!(!c.equal(&a.narrow(0, 0, 10)));
        let (lo, hi) = (a.min().double_value(&[]), a.max().double_value(&[]));
        assert!(lo >= -1.0 && hi <= 1.0, "range [{lo}, {hi}]");
        assert!(hi > 0.9 && lo < -0.99);
        // non-trivial variance overall and across images (not one repeated picture)
        let var = a.var(true).double_value(&[]);
        assert!(var > 0.1, "variance {var}");
        let per_pixel_var = a.var_dim(0, true, false).mean(tch::Kind::Float).double_value(&[]);
        assert!(per_pixel_var > 0.05, "per-pixel variance across images {per_pixel_var}");
        // every image has some foreground, and all five classes occur evenly
        let fg = a.gt(-0.5).sum_dim_intlist(&[1i64, 2, 3][..], false, tch::Kind::Int64);
        assert!(fg.min().int64_value(&[]) >= 4, "an image with almost no shape");
        let (_, labels) = generate_labeled(10_000, 16, 0, false);
        for k in 0..5 {
            let cnt = labels.iter().filter(|&&l| l == k).count();
            assert!((1800..2200).contains(&cnt), "class {k}: {cnt}");
        }
        let rgb = generate_rgb(8, 12, 3);
        assert_eq!(rgb.size(), vec![8, 3, 12, 12]);
        assert!(rgb.min().double_value(&[]) >= -1.0 && rgb.max().double_value(&[]) <= 1.0);
    }
}

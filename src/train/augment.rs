//! EDM's non-leaky augmentation pipeline (`AugmentPipe` of Karras et al. 2022, built on ADA's
//! geometric pipeline), with the transforms EDM uses for CIFAR-10 (docs/EDM.md §3).
//!
//! Each image is transformed with probability `p` x (the transform's multiplier) per transform,
//! and the network is told what was applied through the **augment labels** (EDM's
//! `augment_dim = 9` for CIFAR-10), so it learns the augmented distribution as a conditional one
//! and samples with zero labels (no augmentation): nothing leaks into the samples.
//!
//! Transforms, in EDM's order, and their labels:
//!
//! | transform | multiplier (CIFAR-10) | parameter | labels |
//! |---|---|---|---|
//! | x-flip | `xflip` (1e8: always enabled, so a fair coin) | w in {0, 1} | w |
//! | y-flip | `yflip` (1) | w in {0, 1} | w |
//! | 90-degree rotation | `rotate_int` (0) | w in {0..3} | [w in {1,2}], [w in {2,3}] |
//! | integer translation | `translate_int` (0) | w ~ U(-1,1)^2, shift round(w x 0.125 x size) | shift / (0.125 x size) |
//! | isotropic scaling | `scale` (1) | w ~ N(0,1), s = 2^(0.2 w) | w |
//! | rotation | `rotate_frac` (1) | w ~ U(-pi, pi) | cos w - 1, sin w |
//! | anisotropic scaling | `aniso` (1) | w ~ N(0,1), s = 2^(0.2 w); frame angle r ~ U(-pi, pi) with prob 0.5, else 0 | w cos r, w sin r |
//! | fractional translation | `translate_frac` (1) | w ~ N(0,1)^2, shift 0.125 x size x w | w |
//!
//! Pixel blitting (flips, 90-degree rotations, integer translation with reflection) moves pixels;
//! the geometric transforms are composed into one inverse matrix per image and executed as EDM
//! does: reflection padding by the margin the batch needs, 2x upsampling with the `sym6` wavelet
//! low-pass filter, bilinear `grid_sample`, `sym6` low-pass downsampling and a crop. Whenever a
//! geometric transform is configured the whole batch goes through that resampling, as in EDM
//! (with identity matrices it reproduces the image up to f32 rounding).
//!
//! The random draws follow EDM's order and shapes ([`AugmentPipe::draw`] takes them from any
//! [`Draw`] source), so a recorded sequence of EDM's draws replays exactly (tests/edm.rs).
//! `p = 0` is the identity with zero labels, without any draw.

use crate::rng::Rng;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;
use tch::{Kind, Tensor};

/// `[augment]`: EDM's augmentation. Defaults: off (`p = 0`) with EDM's CIFAR-10 multipliers
/// (`xflip = 1e8, yflip = 1, scale = 1, rotate_frac = 1, aniso = 1, translate_frac = 1`) and
/// standard deviations, so `p = 0.12` alone is EDM's CIFAR-10 recipe (9 labels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Overall probability multiplier, in [0, 1]. EDM's CIFAR-10 recipe: 0.12. Default 0 (off).
    pub p: f64,
    pub xflip: f64,
    pub yflip: f64,
    pub rotate_int: f64,
    pub translate_int: f64,
    /// Range of integer translation, relative to the image size.
    pub translate_int_max: f64,
    pub scale: f64,
    pub rotate_frac: f64,
    pub aniso: f64,
    pub translate_frac: f64,
    /// Log2 standard deviation of isotropic scaling.
    pub scale_std: f64,
    /// Range of rotation, 1 = the full circle.
    pub rotate_frac_max: f64,
    /// Log2 standard deviation of anisotropic scaling.
    pub aniso_std: f64,
    /// Probability of anisotropic scaling in a rotated frame.
    pub aniso_rotate_prob: f64,
    /// Standard deviation of fractional translation, relative to the image size.
    pub translate_frac_std: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            p: 0.0,
            xflip: 1e8,
            yflip: 1.0,
            rotate_int: 0.0,
            translate_int: 0.0,
            translate_int_max: 0.125,
            scale: 1.0,
            rotate_frac: 1.0,
            aniso: 1.0,
            translate_frac: 1.0,
            scale_std: 0.2,
            rotate_frac_max: 1.0,
            aniso_std: 0.2,
            aniso_rotate_prob: 0.5,
            translate_frac_std: 0.125,
        }
    }
}

impl AugmentConfig {
    pub fn enabled(&self) -> bool {
        self.p > 0.0
    }

    pub fn validate(&self) -> Result<()> {
        ensure!((0.0..=1.0).contains(&self.p), "augment.p must be in [0, 1], got {}", self.p);
        for (n, v) in [
            ("xflip", self.xflip),
            ("yflip", self.yflip),
            ("rotate_int", self.rotate_int),
            ("translate_int", self.translate_int),
            ("scale", self.scale),
            ("rotate_frac", self.rotate_frac),
            ("aniso", self.aniso),
            ("translate_frac", self.translate_frac),
            ("translate_int_max", self.translate_int_max),
            ("scale_std", self.scale_std),
            ("rotate_frac_max", self.rotate_frac_max),
            ("aniso_std", self.aniso_std),
            ("translate_frac_std", self.translate_frac_std),
        ] {
            ensure!(v >= 0.0 && v.is_finite(), "augment.{n} must be >= 0, got {v}");
        }
        ensure!((0.0..=1.0).contains(&self.aniso_rotate_prob), "augment.aniso_rotate_prob must be in [0, 1]");
        Ok(())
    }

    /// Number of augment labels this pipeline produces (EDM's `augment_dim`; 9 for CIFAR-10).
    pub fn label_dim(&self) -> usize {
        [
            (self.xflip, 1),
            (self.yflip, 1),
            (self.rotate_int, 2),
            (self.translate_int, 2),
            (self.scale, 1),
            (self.rotate_frac, 2),
            (self.aniso, 2),
            (self.translate_frac, 2),
        ]
        .iter()
        .filter(|(m, _)| *m > 0.0)
        .map(|(_, n)| n)
        .sum()
    }

    fn geometric(&self) -> bool {
        self.scale > 0.0 || self.rotate_frac > 0.0 || self.aniso > 0.0 || self.translate_frac > 0.0
    }
}

/// A source of the pipeline's random numbers, drawn as EDM draws them (one vector per call).
pub trait Draw {
    /// `n` values uniform in [0, 1).
    fn uniform(&mut self, n: usize) -> Vec<f64>;
    /// `n` standard normal values.
    fn normal(&mut self, n: usize) -> Vec<f64>;
    /// `n` integers uniform in `0..hi`.
    fn int(&mut self, n: usize, hi: u64) -> Vec<i64>;
}

impl Draw for Rng {
    fn uniform(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| Rng::uniform(self)).collect()
    }
    fn normal(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| Rng::normal(self)).collect()
    }
    fn int(&mut self, n: usize, hi: u64) -> Vec<i64> {
        (0..n).map(|_| self.below(hi) as i64).collect()
    }
}

/// The per-image parameters of one batch (`None`: the transform is not configured). A disabled
/// draw is stored as EDM stores it: 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AugmentParams {
    pub xflip: Option<Vec<i64>>,
    pub yflip: Option<Vec<i64>>,
    pub rotate_int: Option<Vec<i64>>,
    /// Integer translation (w_x, w_y) in [-1, 1]: shifts round(w x translate_int_max x size) pixels.
    pub translate_int: Option<Vec<(f64, f64)>>,
    /// Isotropic: w (s = 2^(scale_std w)).
    pub scale: Option<Vec<f64>>,
    /// Rotation angle w.
    pub rotate_frac: Option<Vec<f64>>,
    /// Anisotropic: (w, r).
    pub aniso: Option<Vec<(f64, f64)>>,
    /// Fractional translation (w_x, w_y).
    pub translate_frac: Option<Vec<(f64, f64)>>,
}

/// EDM's augmentation pipeline for images of side `h` x `w`.
#[derive(Clone, Debug)]
pub struct AugmentPipe {
    pub cfg: AugmentConfig,
}

fn gate(w: Vec<f64>, on: &[f64], prob: f64) -> Vec<f64> {
    w.into_iter().zip(on).map(|(w, u)| if *u < prob { w } else { 0.0 }).collect()
}

type M3 = [[f64; 3]; 3];

fn mul(a: &M3, b: &M3) -> M3 {
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    c
}

fn translate(tx: f64, ty: f64) -> M3 {
    [[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]
}

fn scale2(sx: f64, sy: f64) -> M3 {
    [[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]]
}

fn rotate(t: f64) -> M3 {
    [[t.cos(), -t.sin(), 0.0], [t.sin(), t.cos(), 0.0], [0.0, 0.0, 1.0]]
}

/// The `sym6` wavelet low-pass filter (Daubechies' symlet with 6 vanishing moments).
const SYM6: [f64; 12] = [
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
];

impl AugmentPipe {
    pub fn new(cfg: AugmentConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(AugmentPipe { cfg })
    }

    /// Draw a batch's parameters from `src`, in EDM's order and shapes.
    pub fn draw(&self, n: usize, src: &mut dyn Draw) -> AugmentParams {
        let c = &self.cfg;
        let p = c.p;
        let mut out = AugmentParams::default();
        let coin = |src: &mut dyn Draw, hi: u64, mult: f64| {
            let w = src.int(n, hi);
            let on = src.uniform(n);
            w.into_iter().zip(on).map(|(w, u)| if u < mult * p { w } else { 0 }).collect::<Vec<i64>>()
        };
        if c.xflip > 0.0 {
            out.xflip = Some(coin(src, 2, c.xflip));
        }
        if c.yflip > 0.0 {
            out.yflip = Some(coin(src, 2, c.yflip));
        }
        if c.rotate_int > 0.0 {
            out.rotate_int = Some(coin(src, 4, c.rotate_int));
        }
        if c.translate_int > 0.0 {
            let w: Vec<f64> = src.uniform(2 * n).into_iter().map(|u| u * 2.0 - 1.0).collect();
            let on = src.uniform(n);
            let keep = |i: usize| on[i] < c.translate_int * p;
            out.translate_int = Some((0..n).map(|i| if keep(i) { (w[i], w[n + i]) } else { (0.0, 0.0) }).collect());
        }
        if c.scale > 0.0 {
            let w = src.normal(n);
            let on = src.uniform(n);
            out.scale = Some(gate(w, &on, c.scale * p));
        }
        if c.rotate_frac > 0.0 {
            let w: Vec<f64> = src.uniform(n).into_iter().map(|u| (u * 2.0 - 1.0) * PI * c.rotate_frac_max).collect();
            let on = src.uniform(n);
            out.rotate_frac = Some(gate(w, &on, c.rotate_frac * p));
        }
        if c.aniso > 0.0 {
            let w = src.normal(n);
            let r: Vec<f64> = src.uniform(n).into_iter().map(|u| (u * 2.0 - 1.0) * PI).collect();
            let on = src.uniform(n);
            let rot = src.uniform(n);
            let w = gate(w, &on, c.aniso * p);
            let r = gate(r, &rot, c.aniso_rotate_prob);
            out.aniso = Some(w.into_iter().zip(r).collect());
        }
        if c.translate_frac > 0.0 {
            let w = src.normal(2 * n);
            let on = src.uniform(n);
            let keep = |i: usize| on[i] < c.translate_frac * p;
            out.translate_frac = Some((0..n).map(|i| if keep(i) { (w[i], w[n + i]) } else { (0.0, 0.0) }).collect());
        }
        out
    }

    /// Augment `images` (`[N, C, H, W]`, any device, f32) with freshly drawn parameters:
    /// `(images, labels [N, label_dim])`. `p = 0`: the images unchanged and zero labels.
    pub fn run(&self, images: &Tensor, src: &mut dyn Draw) -> Result<(Tensor, Tensor)> {
        let n = images.size()[0] as usize;
        if !self.cfg.enabled() {
            let labels = Tensor::zeros([n as i64, self.cfg.label_dim() as i64], (Kind::Float, images.device()));
            return Ok((images.shallow_clone(), labels));
        }
        let params = self.draw(n, src);
        self.apply(images, &params)
    }

    /// Apply given parameters: `(images, labels)`. Deterministic.
    pub fn apply(&self, images: &Tensor, prm: &AugmentParams) -> Result<(Tensor, Tensor)> {
        let s = images.size();
        ensure!(s.len() == 4, "augmentation expects [N, C, H, W] images, got {s:?}");
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        let dev = images.device();
        let kind = images.kind();
        let mut x = images.shallow_clone();
        let mut labels: Vec<Vec<f64>> = Vec::new();
        let col = |v: Vec<f64>| Tensor::from_slice(&v).to_kind(kind).to_device(dev).reshape([n, 1, 1, 1]);
        let ints = |v: &Vec<i64>, f: &dyn Fn(i64) -> bool| v.iter().map(|&k| f(k) as i64 as f64).collect::<Vec<f64>>();
        let select = |mask: Vec<f64>, a: &Tensor, b: &Tensor| {
            let m = col(mask);
            a * &m + b * (1.0 - &m)
        };

        // Pixel blitting.
        if let Some(v) = &prm.xflip {
            x = select(ints(v, &|k| k == 1), &x.flip([3]), &x);
            labels.push(ints(v, &|k| k == 1));
        }
        if let Some(v) = &prm.yflip {
            x = select(ints(v, &|k| k == 1), &x.flip([2]), &x);
            labels.push(ints(v, &|k| k == 1));
        }
        if let Some(v) = &prm.rotate_int {
            ensure!(h == w, "90-degree rotations need square images, got {h}x{w}");
            x = select(ints(v, &|k| k == 1 || k == 2), &x.flip([3]), &x);
            x = select(ints(v, &|k| k == 2 || k == 3), &x.flip([2]), &x);
            x = select(ints(v, &|k| k == 1 || k == 3), &x.transpose(2, 3), &x);
            labels.push(ints(v, &|k| k == 1 || k == 2));
            labels.push(ints(v, &|k| k == 2 || k == 3));
        }
        if let Some(v) = &prm.translate_int {
            ensure!(h > 1 && w > 1, "integer translation needs images of at least 2x2");
            // Reflection without repeating the edge: source = size-1 - |size-1 - (dest -/+ shift) mod (2 size - 2)|.
            let refl = |d: i64, size: i64| size - 1 - (size - 1 - d.rem_euclid(2 * size - 2)).abs();
            let m = self.cfg.translate_int_max;
            let shifts: Vec<(i64, i64)> = v
                .iter()
                .map(|&(wx, wy)| {
                    ((wx * w as f64 * m).round_ties_even() as i64, (wy * h as f64 * m).round_ties_even() as i64)
                })
                .collect();
            let mut idx = Vec::with_capacity((n * h * w) as usize);
            for &(tx, ty) in &shifts {
                for yy in 0..h {
                    for xx in 0..w {
                        idx.push(refl(yy + ty, h) * w + refl(xx - tx, w));
                    }
                }
            }
            let idx = Tensor::from_slice(&idx).to_device(dev).reshape([n, 1, h * w]).expand([n, c, h * w], false);
            x = x.reshape([n, c, h * w]).gather(2, &idx, false).reshape([n, c, h, w]);
            labels.push(shifts.iter().map(|&(tx, _)| tx as f64 / (w as f64 * m)).collect());
            labels.push(shifts.iter().map(|&(_, ty)| ty as f64 / (h as f64 * m)).collect());
        }

        // Geometric transformations: one inverse matrix per image.
        if self.cfg.geometric() {
            let nn = n as usize;
            let mut g: Vec<M3> = vec![scale2(1.0, 1.0); nn];
            if let Some(v) = &prm.scale {
                for i in 0..nn {
                    let s = 2f64.powf(v[i] * self.cfg.scale_std);
                    g[i] = mul(&g[i], &scale2(1.0 / s, 1.0 / s));
                }
                labels.push(v.clone());
            }
            if let Some(v) = &prm.rotate_frac {
                for i in 0..nn {
                    g[i] = mul(&g[i], &rotate(v[i]));
                }
                labels.push(v.iter().map(|a| a.cos() - 1.0).collect());
                labels.push(v.iter().map(|a| a.sin()).collect());
            }
            if let Some(v) = &prm.aniso {
                for i in 0..nn {
                    let (wi, r) = v[i];
                    let s = 2f64.powf(wi * self.cfg.aniso_std);
                    g[i] = mul(&mul(&mul(&g[i], &rotate(-r)), &scale2(1.0 / s, s)), &rotate(r));
                }
                labels.push(v.iter().map(|(wi, r)| wi * r.cos()).collect());
                labels.push(v.iter().map(|(wi, r)| wi * r.sin()).collect());
            }
            if let Some(v) = &prm.translate_frac {
                let std = self.cfg.translate_frac_std;
                for i in 0..nn {
                    g[i] = mul(&g[i], &translate(-v[i].0 * w as f64 * std, -v[i].1 * h as f64 * std));
                }
                labels.push(v.iter().map(|t| t.0).collect());
                labels.push(v.iter().map(|t| t.1).collect());
            }
            x = execute_geometric(&x, &g)?;
        }

        let labels: Vec<f32> = (0..n as usize).flat_map(|i| labels.iter().map(move |l| l[i] as f32)).collect();
        let dim = self.cfg.label_dim() as i64;
        let labels = Tensor::from_slice(&labels).reshape([n, dim]).to_device(dev);
        Ok((x, labels))
    }
}

/// EDM's execution of per-image inverse matrices `g` (output pixel -> input pixel, centred
/// coordinates): reflect-pad by the batch's margin, 2x `sym6` upsampling, bilinear sampling,
/// `sym6` downsampling, crop.
fn execute_geometric(images: &Tensor, g: &[M3]) -> Result<Tensor> {
    let s = images.size();
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let (dev, kind) = (images.device(), images.kind());
    let (cx, cy) = ((w - 1) as f64 / 2.0, (h - 1) as f64 / 2.0);
    let hz_pad = (SYM6.len() / 4) as i64;
    // Margin: how far the transformed corners reach outside the image (max over the batch).
    let corners = [[-cx, -cy], [cx, -cy], [cx, cy], [-cx, cy]];
    let mut m = [f64::NEG_INFINITY; 4]; // x0, y0, x1, y1
    for gi in g {
        for p in corners {
            let x = gi[0][0] * p[0] + gi[0][1] * p[1] + gi[0][2];
            let y = gi[1][0] * p[0] + gi[1][1] * p[1] + gi[1][2];
            m = [m[0].max(-x), m[1].max(-y), m[2].max(x), m[3].max(y)];
        }
    }
    let lim = [(w - 1) as f64, (h - 1) as f64, (w - 1) as f64, (h - 1) as f64];
    let add = [2.0 * hz_pad as f64 - cx, 2.0 * hz_pad as f64 - cy, 2.0 * hz_pad as f64 - cx, 2.0 * hz_pad as f64 - cy];
    let m: Vec<i64> = (0..4).map(|k| ((m[k] + add[k]).max(0.0).min(lim[k]) as f32).ceil() as i64).collect();
    let (mx0, my0, mx1, my1) = (m[0], m[1], m[2], m[3]);
    let x = images.pad([mx0, mx1, my0, my1], "reflect", None);
    let pre = translate((mx0 - mx1) as f64 / 2.0, (my0 - my1) as f64 / 2.0);

    // Upsample 2x: zero insertion, then the reversed filter, along x then y.
    let taps = SYM6.len() as i64;
    let filt = |rev: bool| {
        let v: Vec<f32> =
            if rev { SYM6.iter().rev().map(|&t| t as f32).collect() } else { SYM6.iter().map(|&t| t as f32).collect() };
        Tensor::from_slice(&v).to_kind(kind).to_device(dev)
    };
    let up = filt(true);
    let (hp, wp) = (h + my0 + my1, w + mx0 + mx1);
    let x = Tensor::stack(&[&x, &x.zeros_like()], 4).reshape([n, c, hp, 2 * wp]).narrow(3, 0, 2 * wp - 1);
    let x = x.conv2d(
        &up.reshape([1, 1, 1, taps]).repeat([c, 1, 1, 1]),
        None::<&Tensor>,
        [1, 1],
        [0, (taps + 1) / 2],
        [1, 1],
        c,
    );
    let w2 = x.size()[3];
    let x = Tensor::stack(&[&x, &x.zeros_like()], 3).reshape([n, c, 2 * hp, w2]).narrow(2, 0, 2 * hp - 1);
    let x = x.conv2d(
        &up.reshape([1, 1, taps, 1]).repeat([c, 1, 1, 1]),
        None::<&Tensor>,
        [1, 1],
        [(taps + 1) / 2, 0],
        [1, 1],
        c,
    );
    let (h_up, w_up) = (x.size()[2] as f64, x.size()[3] as f64);

    // Sampling grid: the matrices in the upsampled image's normalised coordinates.
    let (oh, ow) = ((h + 2 * hz_pad) * 2, (w + 2 * hz_pad) * 2);
    let mut theta = Vec::with_capacity(g.len() * 6);
    for gi in g {
        let mut t = mul(&pre, gi);
        t = mul(&mul(&scale2(2.0, 2.0), &t), &scale2(0.5, 0.5));
        t = mul(&mul(&translate(-0.5, -0.5), &t), &translate(0.5, 0.5));
        t = mul(&mul(&scale2(2.0 / w_up, 2.0 / h_up), &t), &scale2(ow as f64 / 2.0, oh as f64 / 2.0));
        theta.extend_from_slice(&[t[0][0], t[0][1], t[0][2], t[1][0], t[1][1], t[1][2]]);
    }
    let theta = Tensor::from_slice(&theta).to_kind(kind).to_device(dev).reshape([n, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, [n, c, oh, ow], false);
    let x = x.grid_sampler_2d(&grid, 0, 0, false);

    // Downsample 2x with the filter, then crop the padding.
    let down = filt(false);
    let x = x.conv2d(
        &down.reshape([1, 1, 1, taps]).repeat([c, 1, 1, 1]),
        None::<&Tensor>,
        [1, 2],
        [0, (taps - 1) / 2],
        [1, 1],
        c,
    );
    let x = x.narrow(3, hz_pad, x.size()[3] - 2 * hz_pad);
    let x = x.conv2d(
        &down.reshape([1, 1, taps, 1]).repeat([c, 1, 1, 1]),
        None::<&Tensor>,
        [2, 1],
        [(taps - 1) / 2, 0],
        [1, 1],
        c,
    );
    Ok(x.narrow(2, hz_pad, x.size()[2] - 2 * hz_pad))
}

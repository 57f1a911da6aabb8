//! The LDM / taming autoencoder blocks (`ldm/modules/diffusionmodules/model.py`): a residual
//! block without time input, single-head attention, the asymmetric-pad stride-2 down-sampling
//! conv and nearest x2 + conv up-sampling.
//!
//! Variable names follow LDM's state dict (`norm1`, `conv1`, `norm2`, `conv2`, `nin_shortcut`;
//! `norm`, `q`, `k`, `v`, `proj_out`; `conv`), so an LDM checkpoint maps one to one. Weights
//! start as PyTorch's defaults for `nn.Conv2d` (weight and bias uniform in +-1/sqrt(fan_in)),
//! GroupNorm at (1, 0), as the official code initialises them, but drawn from msdiff's own
//! [`Rng`] (not libtorch's process-wide generator), so a seed alone fixes them.
use crate::nn::layers::{Conv2d, Conv2dConfig, GroupNorm, GroupNormConfig};
use crate::rng::Rng;
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// A variable of `shape` filled with `draw(rng)` values in row-major order.
pub fn var_from(p: &Path, name: &str, shape: &[i64], rng: &mut Rng, mut draw: impl FnMut(&mut Rng) -> f64) -> Tensor {
    let t = p.var(name, shape, Init::Const(0.0));
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| draw(rng) as f32).collect();
    tch::no_grad(|| {
        t.shallow_clone().copy_(&Tensor::from_slice(&v).reshape(shape).to_kind(Kind::Float).to_device(t.device()))
    });
    t
}

/// A variable of `shape` uniform in `[-b, b)`.
pub fn uniform_var(p: &Path, name: &str, shape: &[i64], b: f64, rng: &mut Rng) -> Tensor {
    var_from(p, name, shape, rng, |r| r.uniform_range(-b, b))
}

/// A conv with PyTorch's default initialisation (`kaiming_uniform_(a = sqrt(5))` for the weight,
/// which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias), drawn from `rng`.
pub fn torch_conv(p: &Path, cfg: Conv2dConfig, rng: &mut Rng) -> Conv2d {
    let (i, o, k) = (cfg.in_channels as i64, cfg.out_channels as i64, cfg.kernel as i64);
    let b = 1.0 / ((i * k * k) as f64).sqrt();
    let weight = uniform_var(p, "weight", &[o, i, k, k], b, rng);
    let bias = uniform_var(p, "bias", &[o], b, rng);
    Conv2d { weight, bias, cfg }
}

/// [`ResnetBlock`] configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResnetBlockConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub eps: f64,
}

/// `h = conv1(SiLU(GN(x))); h = conv2(SiLU(GN(h))); out = shortcut(x) + h`, the shortcut a 1x1
/// conv (`nin_shortcut`) when the width changes. `[B, Cin, H, W] -> [B, Cout, H, W]`.
/// Variables: `norm1`, `conv1`, `norm2`, `conv2`, [`nin_shortcut`].
#[derive(Debug)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn new(p: &Path, cfg: ResnetBlockConfig, rng: &mut Rng) -> Self {
        let (i, o) = (cfg.in_channels, cfg.out_channels);
        let gn = |c| GroupNormConfig { channels: c, groups: cfg.groups, eps: cfg.eps };
        ResnetBlock {
            norm1: GroupNorm::new(&(p / "norm1"), gn(i)),
            conv1: torch_conv(&(p / "conv1"), Conv2dConfig::same(i, o, 3), rng),
            norm2: GroupNorm::new(&(p / "norm2"), gn(o)),
            conv2: torch_conv(&(p / "conv2"), Conv2dConfig::same(o, o, 3), rng),
            nin_shortcut: (i != o).then(|| torch_conv(&(p / "nin_shortcut"), Conv2dConfig::same(i, o, 1), rng)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.nin_shortcut {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// [`AttnBlock`] configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnBlockConfig {
    pub channels: usize,
    pub groups: usize,
    pub eps: f64,
}

/// Single-head self-attention over the `H W` positions: `h = GN(x)`, `q, k, v` 1x1 convs,
/// `a = softmax(q^T k / sqrt(C))`, `out = x + proj_out(v a^T)`. `[B, C, H, W] -> [B, C, H, W]`.
/// Variables: `norm`, `q`, `k`, `v`, `proj_out` (each `[C, C, 1, 1]` + bias; diffusers stores the
/// same maps as `[C, C]` linear weights `to_q`, `to_k`, `to_v`, `to_out.0`).
#[derive(Debug)]
pub struct AttnBlock {
    pub norm: GroupNorm,
    pub q: Conv2d,
    pub k: Conv2d,
    pub v: Conv2d,
    pub proj_out: Conv2d,
}

impl AttnBlock {
    pub fn new(p: &Path, cfg: AttnBlockConfig, rng: &mut Rng) -> Self {
        let c = cfg.channels;
        let one = || Conv2dConfig::same(c, c, 1);
        AttnBlock {
            norm: GroupNorm::new(&(p / "norm"), GroupNormConfig { channels: c, groups: cfg.groups, eps: cfg.eps }),
            q: torch_conv(&(p / "q"), one(), rng),
            k: torch_conv(&(p / "k"), one(), rng),
            v: torch_conv(&(p / "v"), one(), rng),
            proj_out: torch_conv(&(p / "proj_out"), one(), rng),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let (b, c, hh, ww) = (s[0], s[1], s[2], s[3]);
        let h = self.norm.forward(x);
        // [B, C, H, W] -> [B, 1, N, C]: one head over N = H W tokens of width C.
        let tokens = |t: Tensor| t.reshape([b, 1, c, hh * ww]).transpose(2, 3);
        let (q, k, v) = (tokens(self.q.forward(&h)), tokens(self.k.forward(&h)), tokens(self.v.forward(&h)));
        let a =
            Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, (c as f64).powf(-0.5), false);
        let a = a.transpose(2, 3).reshape([b, c, hh, ww]);
        x + self.proj_out.forward(&a)
    }
}

/// Halves the resolution: zero-pad one row at the bottom and one column at the right, then a 3x3
/// conv with stride 2 and no padding (LDM `Downsample(with_conv=True)`; diffusers
/// `Downsample2D(padding=0)`). `[B, C, H, W] -> [B, C, H/2, W/2]` (H, W even). Variable: `conv`.
#[derive(Debug)]
pub struct Downsample {
    pub conv: Conv2d,
}

impl Downsample {
    pub fn new(p: &Path, channels: usize, rng: &mut Rng) -> Self {
        let cfg = Conv2dConfig {
            in_channels: channels,
            out_channels: channels,
            kernel: 3,
            stride: 2,
            padding: 0,
            init_scale: 1.0,
        };
        Downsample { conv: torch_conv(&(p / "conv"), cfg, rng) }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
    }
}

/// Doubles the resolution: nearest-neighbour x2, then a 3x3 conv. `[B, C, H, W] -> [B, C, 2H, 2W]`.
/// Variable: `conv`.
#[derive(Debug)]
pub struct Upsample {
    pub conv: Conv2d,
}

impl Upsample {
    pub fn new(p: &Path, channels: usize, rng: &mut Rng) -> Self {
        Upsample { conv: torch_conv(&(p / "conv"), Conv2dConfig::same(channels, channels, 3), rng) }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        self.conv.forward(&x.upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    #[test]
    fn attention_equals_the_explicit_softmax_product() {
        // LDM's AttnBlock written out: w = softmax(q^T k / sqrt(C)) over keys, h = v w^T.
        let mut rng = Rng::new(3);
        let vs = VarStore::new(Device::Cpu);
        let blk = AttnBlock::new(&vs.root(), AttnBlockConfig { channels: 8, groups: 4, eps: 1e-6 }, &mut rng);
        let x = rng.randn(&[2, 8, 3, 5], Kind::Float);
        let h = blk.norm.forward(&x);
        let flat = |t: Tensor| t.reshape([2, 8, 15]);
        let (q, k, v) = (flat(blk.q.forward(&h)), flat(blk.k.forward(&h)), flat(blk.v.forward(&h)));
        let w = (q.transpose(1, 2).bmm(&k) * (8f64).powf(-0.5)).softmax(-1, Kind::Float);
        let want = &x + blk.proj_out.forward(&v.bmm(&w.transpose(1, 2)).reshape([2, 8, 3, 5]));
        let got = blk.forward(&x);
        assert!((got - want).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn resampling_shapes_and_the_asymmetric_pad() {
        let mut rng = Rng::new(0);
        let vs = VarStore::new(Device::Cpu);
        let d = Downsample::new(&(vs.root() / "d"), 2, &mut rng);
        let x = rng.randn(&[1, 2, 6, 4], Kind::Float);
        assert_eq!(d.forward(&x).size(), vec![1, 2, 3, 2]);
        // Output (0, 0) sees input rows/cols 0..3 (no padding on the top/left).
        let manual =
            x.narrow(2, 0, 3).narrow(3, 0, 3).conv2d(&d.conv.weight, Some(&d.conv.bias), [1, 1], [0, 0], [1, 1], 1);
        let got = d.forward(&x).narrow(2, 0, 1).narrow(3, 0, 1);
        assert!((got - manual).abs().max().double_value(&[]) < 1e-6);
        let u = Upsample::new(&(vs.root() / "u"), 2, &mut rng);
        assert_eq!(u.forward(&x).size(), vec![1, 2, 12, 8]);
    }
}

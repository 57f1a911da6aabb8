//! EDM's layers (`training/networks.py` of NVlabs/edm, as the multi-stage authors' fork uses them):
//! xavier-initialised linear and convolution layers with resampling inside the convolution,
//! `UNetBlock` with optional one-head attention, the positional noise embedding and the mapping
//! network.
//!
//! Conventions (docs/EDM.md §1):
//! - initialisation: `xavier_uniform` scaled by `init_weight` (1 for most layers, 1e-5 for `conv1`,
//!   `proj` and the output conv, sqrt(0.2) for `qkv`); biases zero;
//! - GroupNorm: `min(norm_max_groups, C / 4)` groups (the fork's 16), eps `norm_eps` (1e-6);
//! - resampling happens before the convolution (EDM's non-fused path): down = the filter as a
//!   stride-2 depthwise convolution (`[1,1]`: 2x2 average), up = the filter (x4) as a stride-2
//!   depthwise transposed convolution (`[1,1]`: nearest neighbour).

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::nn::config::Resample;
use crate::nn::layers::{downsample, upsample, GroupNorm, GroupNormConfig};

/// EDM's `weight_init(mode='xavier_uniform')` times `gain`: U(-b, b), b = gain sqrt(6 / (fan_in + fan_out)).
pub fn xavier_uniform(fan_in: usize, fan_out: usize, gain: f64) -> Init {
    let b = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// Fully connected layer (`Linear`). `[B, in] -> [B, out]`. Variables: `weight [out, in]`,
/// `bias [out]` (when present).
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(p: &Path, in_features: usize, out_features: usize, bias: bool) -> Self {
        let weight =
            p.var("weight", &[out_features as i64, in_features as i64], xavier_uniform(in_features, out_features, 1.0));
        let bias = bias.then(|| p.var("bias", &[out_features as i64], Init::Const(0.0)));
        Linear { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// Up or down sampling inside a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    None,
    Up,
    Down,
}

/// Convolution with bias, "same" padding, optional resampling before it (`Conv2d` of EDM).
/// `[B, Cin, H, W] -> [B, Cout, H', W']`. Variables: `weight [Cout, Cin, k, k]`, `bias [Cout]`.
#[derive(Debug)]
pub struct Conv {
    pub weight: Tensor,
    pub bias: Tensor,
    sampling: Sampling,
    resample: Resample,
    pad: i64,
}

impl Conv {
    pub fn new(
        p: &Path,
        cin: usize,
        cout: usize,
        kernel: usize,
        sampling: Sampling,
        resample: Resample,
        gain: f64,
    ) -> Self {
        let k2 = kernel * kernel;
        let (i, o, k) = (cin as i64, cout as i64, kernel as i64);
        let weight = p.var("weight", &[o, i, k, k], xavier_uniform(cin * k2, cout * k2, gain));
        let bias = p.var("bias", &[o], Init::Const(0.0));
        Conv { weight, bias, sampling, resample, pad: (kernel / 2) as i64 }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = match self.sampling {
            Sampling::None => x.shallow_clone(),
            Sampling::Up => upsample(x, self.resample),
            Sampling::Down => downsample(x, self.resample),
        };
        x.conv2d(&self.weight, Some(&self.bias), [1, 1], [self.pad, self.pad], [1, 1], 1)
    }
}

/// What a [`UNetBlock`] is.
#[derive(Clone, Copy, Debug)]
pub struct BlockConfig {
    pub cin: usize,
    pub cout: usize,
    /// Width of the embedding every block receives (4 x base).
    pub emb: usize,
    pub sampling: Sampling,
    pub attention: bool,
    pub dropout: f64,
    pub resample: Resample,
    pub groups_in: usize,
    pub groups_out: usize,
    pub eps: f64,
}

/// EDM's `UNetBlock` as DDPM++ configures it (`adaptive_scale = False`, `resample_proj = True`,
/// `skip_scale = sqrt(1/2)`, one attention head):
///
/// `h = conv0(SiLU(norm0(x)))` (resampling inside conv0); `h = SiLU(norm1(h + affine(emb)))`;
/// `h = conv1(dropout(h))`; `x = (h + skip(x)) / sqrt 2`, `skip` = resample + 1x1 conv when the
/// width changes or the block resamples, else identity. With attention:
/// `q, k, v = qkv(norm2(x))` with the channels interleaved per channel (`3c + 0/1/2`),
/// `a = v softmax(q^T k / sqrt C)` (in f32), `x = (proj(a) + x) / sqrt 2`.
///
/// Variables: `norm0, conv0, affine, norm1, conv1, [skip], [norm2, qkv, proj]`.
#[derive(Debug)]
pub struct UNetBlock {
    norm0: GroupNorm,
    conv0: Conv,
    affine: Linear,
    norm1: GroupNorm,
    conv1: Conv,
    skip: Option<Conv>,
    attn: Option<(GroupNorm, Conv, Conv)>,
    pub cfg: BlockConfig,
}

impl UNetBlock {
    pub fn new(p: &Path, cfg: BlockConfig) -> Self {
        let (i, o, r) = (cfg.cin, cfg.cout, cfg.resample);
        let gn = |name: &str, c: usize, g: usize| {
            GroupNorm::new(&(p / name), GroupNormConfig { channels: c, groups: g, eps: cfg.eps })
        };
        let norm0 = gn("norm0", i, cfg.groups_in);
        let conv0 = Conv::new(&(p / "conv0"), i, o, 3, cfg.sampling, r, 1.0);
        let affine = Linear::new(&(p / "affine"), cfg.emb, o, true);
        let norm1 = gn("norm1", o, cfg.groups_out);
        let conv1 = Conv::new(&(p / "conv1"), o, o, 3, Sampling::None, r, 1e-5);
        let skip =
            (i != o || cfg.sampling != Sampling::None).then(|| Conv::new(&(p / "skip"), i, o, 1, cfg.sampling, r, 1.0));
        let attn = cfg.attention.then(|| {
            (
                gn("norm2", o, cfg.groups_out),
                Conv::new(&(p / "qkv"), o, 3 * o, 1, Sampling::None, r, 0.2f64.sqrt()),
                Conv::new(&(p / "proj"), o, o, 1, Sampling::None, r, 1e-5),
            )
        });
        UNetBlock { norm0, conv0, affine, norm1, conv1, skip, attn, cfg }
    }

    /// `x: [B, cin, H, W]`, `emb: [B, emb]` -> `[B, cout, H', W']`.
    pub fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = self.conv0.forward(&self.norm0.forward(x).silu());
        let h = h + self.affine.forward(emb).unsqueeze(-1).unsqueeze(-1);
        let h = self.norm1.forward(&h).silu();
        let h = if self.cfg.dropout > 0.0 { h.dropout(self.cfg.dropout, train) } else { h };
        let h = self.conv1.forward(&h);
        let skip = match &self.skip {
            Some(s) => s.forward(x),
            None => x.shallow_clone(),
        };
        let x = (h + skip) * std::f64::consts::FRAC_1_SQRT_2;
        match &self.attn {
            None => x,
            Some((norm2, qkv, proj)) => {
                let s = x.size();
                let (b, c, n) = (s[0], s[1], s[2] * s[3]);
                // Interleaved per channel: output channel 3c + m is (q, k, v)[m] of channel c.
                let qkv = qkv.forward(&norm2.forward(&x)).reshape([b, c, 3, n]);
                let q = qkv.select(2, 0).to_kind(Kind::Float);
                let k = qkv.select(2, 1).to_kind(Kind::Float) * (c as f64).powf(-0.5);
                let v = qkv.select(2, 2);
                let w = q.transpose(1, 2).bmm(&k).softmax(-1, Kind::Float).to_kind(v.kind()); // [B, Nq, Nk]
                let a = v.bmm(&w.transpose(1, 2)).reshape([b, c, s[2], s[3]]); // [B, C, Nq]
                (proj.forward(&a) + x) * std::f64::consts::FRAC_1_SQRT_2
            }
        }
    }
}

/// EDM's `PositionalEmbedding(num_channels, endpoint=True)` followed by the sin/cos swap of
/// `SongUNet.forward`: `[sin(x f_i), cos(x f_i)]`, `f_i = (1/10000)^(i / (dim/2 - 1))`.
/// `x: [B]` -> `[B, dim]` f32.
pub fn positional(x: &Tensor, dim: usize) -> Tensor {
    let half = (dim / 2) as i64;
    let i = Tensor::arange(half, (Kind::Float, x.device())) / (half - 1) as f64;
    let freqs = Tensor::pow_scalar(1e-4, &i);
    let args = x.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.sin(), args.cos()], 1)
}

/// The mapping network: `emb = positional(noise_label) [+ map_augment(labels)]`, then
/// `SiLU(map_layer0(emb))`, `SiLU(map_layer1(emb))`. Variables: `map_augment` (no bias, only
/// when `augment_dim > 0`), `map_layer0`, `map_layer1`.
#[derive(Debug)]
pub struct Mapping {
    map_augment: Option<Linear>,
    map_layer0: Linear,
    map_layer1: Linear,
    noise_channels: usize,
}

impl Mapping {
    pub fn new(p: &Path, noise_channels: usize, emb_channels: usize, augment_dim: usize) -> Self {
        Mapping {
            map_augment: (augment_dim > 0)
                .then(|| Linear::new(&(p / "map_augment"), augment_dim, noise_channels, false)),
            map_layer0: Linear::new(&(p / "map_layer0"), noise_channels, emb_channels, true),
            map_layer1: Linear::new(&(p / "map_layer1"), emb_channels, emb_channels, true),
            noise_channels,
        }
    }

    /// The kind of the weights.
    pub fn kind(&self) -> Kind {
        self.map_layer0.weight.kind()
    }

    /// `noise_label: [B]`, `augment: [B, augment_dim]` or none (EDM at sampling) -> `[B, emb]`.
    pub fn forward(&self, noise_label: &Tensor, augment: Option<&Tensor>) -> Tensor {
        let k = self.kind();
        let mut emb = positional(noise_label, self.noise_channels).to_kind(k);
        if let (Some(m), Some(a)) = (&self.map_augment, augment) {
            emb += m.forward(&a.to_kind(k)); // emb is this function's own tensor; no autograd user yet
        }
        let emb = self.map_layer0.forward(&emb).silu();
        self.map_layer1.forward(&emb).silu()
    }
}

//! The ADM / openaimodel layers (`ldm/modules/diffusionmodules/openaimodel.py`, as the LDM and
//! the multi-stage authors' fork use them): residual block with a time-embedding input, legacy
//! multi-head attention over the pixels, stride-2 conv down-sampling, nearest x2 + conv
//! up-sampling, and the `[cos, sin]` timestep embedding.
//!
//! Variables carry the official state-dict names inside each block (`in_layers.0` GroupNorm,
//! `in_layers.2` conv, `emb_layers.1` linear, `out_layers.0` GroupNorm, `out_layers.3` conv,
//! `skip_connection`; `norm`, `qkv`, `proj_out` (1-D convs, weights `[3C, C, 1]` / `[C, C, 1]`);
//! `op`; `conv`). Initialisation is PyTorch's default for `nn.Conv*d` / `nn.Linear` (weight and
//! bias uniform in +-1/sqrt(fan_in)), GroupNorm at (1, 0), and zero for the layers the official
//! code wraps in `zero_module` (`out_layers.3`, `proj_out`, the output conv), drawn from
//! libtorch's generator (the caller seeds it, as for the other families).
//!
//! GroupNorm (the official `GroupNorm32`) has `norm_max_groups` groups (32) and eps `norm_eps`
//! (1e-5) and runs in the weights' kind (the official code computes it in float32: identical
//! for fp32 weights; a bf16 run normalises in bf16).

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::nn::layers::{Conv2d, Conv2dConfig, GroupNorm, GroupNormConfig};

/// PyTorch's default bound for a layer of fan-in `fan_in`: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn torch_default(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// `zero`: the official `zero_module` (weights and bias 0).
fn init(fan_in: usize, zero: bool) -> Init {
    if zero {
        Init::Const(0.0)
    } else {
        torch_default(fan_in)
    }
}

/// A `k x k` convolution with "same" padding and stride `stride`, PyTorch-initialised (or zero).
/// `[B, i, H, W] -> [B, o, H / stride, W / stride]`. Variables: `weight [o, i, k, k]`, `bias [o]`.
pub fn conv(p: &Path, i: usize, o: usize, k: usize, stride: usize, zero: bool) -> Conv2d {
    let cfg = Conv2dConfig { in_channels: i, out_channels: o, kernel: k, stride, padding: k / 2, init_scale: 1.0 };
    let fan_in = i * k * k;
    let weight = p.var("weight", &[o as i64, i as i64, k as i64, k as i64], init(fan_in, zero));
    let bias = p.var("bias", &[o as i64], init(fan_in, zero));
    Conv2d { weight, bias, cfg }
}

/// `nn.Linear` with PyTorch's initialisation. `[B, i] -> [B, o]`. Variables: `weight [o, i]`, `bias [o]`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(p: &Path, i: usize, o: usize) -> Self {
        Linear {
            weight: p.var("weight", &[o as i64, i as i64], torch_default(i)),
            bias: p.var("bias", &[o as i64], torch_default(i)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// The official `timestep_embedding`: `[cos(t w_i), sin(t w_i)]`, `w_i = exp(-ln(10000) i / (dim/2))`,
/// `i = 0 .. dim/2 - 1` (cos first; a zero column appended when `dim` is odd).
/// `t: [B]` (the discrete step as a float) -> `[B, dim]` f32.
pub fn timestep_embedding(t: &Tensor, dim: usize) -> Tensor {
    let half = (dim / 2) as i64;
    // As the official code, in float32: exp(-ln(10000) * arange(half) / half).
    let freqs = ((Tensor::arange(half, (Kind::Float, t.device())) * -(10000f64).ln()) / half as f64).exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let e = Tensor::cat(&[args.cos(), args.sin()], 1);
    if dim % 2 == 1 {
        Tensor::cat(&[&e, &e.narrow(1, 0, 1).zeros_like()], 1)
    } else {
        e
    }
}

/// [`ResBlock`] configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResBlockConfig {
    pub cin: usize,
    pub cout: usize,
    /// Width of the time embedding (4 x base width).
    pub emb: usize,
    pub groups: usize,
    pub eps: f64,
    pub dropout: f64,
}

/// `h = conv(SiLU(GN(x)))`, `h += Linear(SiLU(emb))`, `h = conv_zero(dropout(SiLU(GN(h))))`,
/// `out = skip(x) + h` with a 1x1 `skip_connection` when the width changes (no scale-shift norm,
/// no resampling inside: the official LDM configurations). `x: [B, cin, H, W]`, `emb: [B, emb]`
/// -> `[B, cout, H, W]`.
#[derive(Debug)]
pub struct ResBlock {
    in_norm: GroupNorm,
    in_conv: Conv2d,
    emb_linear: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip: Option<Conv2d>,
    pub cfg: ResBlockConfig,
}

impl ResBlock {
    pub fn new(p: &Path, cfg: ResBlockConfig) -> Self {
        let (i, o) = (cfg.cin, cfg.cout);
        let gn = |c| GroupNormConfig { channels: c, groups: cfg.groups, eps: cfg.eps };
        ResBlock {
            in_norm: GroupNorm::new(&(p / "in_layers" / 0), gn(i)),
            in_conv: conv(&(p / "in_layers" / 2), i, o, 3, 1, false),
            emb_linear: Linear::new(&(p / "emb_layers" / 1), cfg.emb, o),
            out_norm: GroupNorm::new(&(p / "out_layers" / 0), gn(o)),
            out_conv: conv(&(p / "out_layers" / 3), o, o, 3, 1, true),
            skip: (i != o).then(|| conv(&(p / "skip_connection"), i, o, 1, 1, false)),
            cfg,
        }
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = self.in_conv.forward(&self.in_norm.forward(x).silu());
        let e = self.emb_linear.forward(&emb.silu()).unsqueeze(-1).unsqueeze(-1);
        let h = self.out_norm.forward(&(h + e)).silu().dropout(self.cfg.dropout, train);
        let h = self.out_conv.forward(&h);
        match &self.skip {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// [`AttentionBlock`] configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionConfig {
    pub channels: usize,
    /// Channels per head (the official `num_head_channels`, 32): `channels / head_channels` heads.
    pub head_channels: usize,
    pub groups: usize,
    pub eps: f64,
}

/// The official `AttentionBlock` with `QKVAttentionLegacy`: `qkv = Conv1d(C, 3C)(GN(x))` over the
/// `N = H W` positions, channels grouped per head as `[q_h, k_h, v_h]`, `softmax(q^T k / sqrt(d))`
/// per head (`d` = head width; the official code scales q and k by `d^-1/4` each), `out = x +
/// proj_out(a)` with `proj_out` zero-initialised. `[B, C, H, W] -> [B, C, H, W]`.
/// Variables: `norm`, `qkv.weight [3C, C, 1]`, `qkv.bias`, `proj_out.weight [C, C, 1]`, `proj_out.bias`.
#[derive(Debug)]
pub struct AttentionBlock {
    norm: GroupNorm,
    qkv_weight: Tensor,
    qkv_bias: Tensor,
    proj_weight: Tensor,
    proj_bias: Tensor,
    pub cfg: AttentionConfig,
}

impl AttentionBlock {
    pub fn new(p: &Path, cfg: AttentionConfig) -> Self {
        let c = cfg.channels as i64;
        let q = p / "qkv";
        let o = p / "proj_out";
        AttentionBlock {
            norm: GroupNorm::new(
                &(p / "norm"),
                GroupNormConfig { channels: cfg.channels, groups: cfg.groups, eps: cfg.eps },
            ),
            qkv_weight: q.var("weight", &[3 * c, c, 1], torch_default(cfg.channels)),
            qkv_bias: q.var("bias", &[3 * c], torch_default(cfg.channels)),
            proj_weight: o.var("weight", &[c, c, 1], Init::Const(0.0)),
            proj_bias: o.var("bias", &[c], Init::Const(0.0)),
            cfg,
        }
    }

    pub fn heads(&self) -> usize {
        self.cfg.channels / self.cfg.head_channels
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let (b, c) = (s[0], s[1]);
        let n: i64 = s[2..].iter().product();
        let (heads, d) = (self.heads() as i64, self.cfg.head_channels as i64);
        let h = self.norm.forward(x).reshape([b, c, n]);
        let qkv = h.conv1d(&self.qkv_weight, Some(&self.qkv_bias), [1], [0], [1], 1);
        // [B, 3C, N] -> [B, heads, 3d, N]: the legacy order splits heads first, then q / k / v.
        let qkv = qkv.reshape([b, heads, 3 * d, n]);
        let part = |i: i64| qkv.narrow(2, i * d, d).transpose(2, 3); // [B, heads, N, d]
        let (q, k, v) = (part(0), part(1), part(2));
        let a =
            Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, false, (d as f64).powf(-0.5), false);
        let a = a.transpose(2, 3).reshape([b, c, n]);
        let out = a.conv1d(&self.proj_weight, Some(&self.proj_bias), [1], [0], [1], 1);
        x + out.reshape(s.as_slice())
    }
}

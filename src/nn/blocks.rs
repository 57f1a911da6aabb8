//! Residual block (BigGAN type, score_sde `ResnetBlockBigGANpp`) and single-head attention block
//! (`AttnBlockpp`).

use tch::nn::Path;
use tch::Tensor;

use super::config::Resample;
use super::layers::{
    add_skip, downsample, upsample, variance_scaling, Conv2d, Conv2dConfig, Dense, DenseConfig, GroupNorm,
    GroupNormConfig,
};

/// Optional resampling inside a residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Updown {
    None,
    Up,
    Down,
}

/// [`ResBlock`] configuration.
#[derive(Clone, Copy, Debug)]
pub struct ResBlockConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding fed to the block.
    pub temb_dim: usize,
    pub updown: Updown,
    pub resample: Resample,
    pub dropout: f64,
    pub skip_rescale: bool,
    /// GroupNorm group counts for `in_channels` and `out_channels`.
    pub groups_in: usize,
    pub groups_out: usize,
    pub norm_eps: f64,
    /// Init scale of the second conv (0 -> 1e-10).
    pub init_scale: f64,
}

/// BigGAN residual block:
/// `h = conv3x3(resample(SiLU(GN(x)))) + Dense(SiLU(temb)); h = conv3x3(dropout(SiLU(GN(h))))`;
/// skip = `conv1x1(resample(x))` when channels change or it resamples, else `x`;
/// output `(skip + h) / sqrt(2)` (or `skip + h`).
///
/// `x: [B, Cin, H, W]`, `temb: [B, temb_dim]` -> `[B, Cout, H', W']` with `H' = 2H` (up),
/// `H/2` (down) or `H`. Variables: `norm0`, `conv0`, `temb_proj`, `norm1`, `conv1`, [`skip`].
#[derive(Debug)]
pub struct ResBlock {
    norm0: GroupNorm,
    conv0: Conv2d,
    temb_proj: Dense,
    norm1: GroupNorm,
    conv1: Conv2d,
    skip: Option<Conv2d>,
    cfg: ResBlockConfig,
}

impl ResBlock {
    pub fn new(p: &Path, cfg: ResBlockConfig) -> Self {
        let (i, o) = (cfg.in_channels, cfg.out_channels);
        let norm0 =
            GroupNorm::new(&(p / "norm0"), GroupNormConfig { channels: i, groups: cfg.groups_in, eps: cfg.norm_eps });
        let conv0 = Conv2d::new(&(p / "conv0"), Conv2dConfig::same(i, o, 3));
        let temb_proj =
            Dense::new(&(p / "temb_proj"), DenseConfig { in_features: cfg.temb_dim, out_features: o, init_scale: 1.0 });
        let norm1 =
            GroupNorm::new(&(p / "norm1"), GroupNormConfig { channels: o, groups: cfg.groups_out, eps: cfg.norm_eps });
        let conv1 = Conv2d::new(&(p / "conv1"), Conv2dConfig::same(o, o, 3).init_scale(cfg.init_scale));
        let skip =
            (i != o || cfg.updown != Updown::None).then(|| Conv2d::new(&(p / "skip"), Conv2dConfig::same(i, o, 1)));
        Self { norm0, conv0, temb_proj, norm1, conv1, skip, cfg }
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, train: bool) -> Tensor {
        let mut h = self.norm0.forward(x).silu();
        let mut x = x.shallow_clone();
        match self.cfg.updown {
            Updown::Up => {
                h = upsample(&h, self.cfg.resample);
                x = upsample(&x, self.cfg.resample);
            }
            Updown::Down => {
                h = downsample(&h, self.cfg.resample);
                x = downsample(&x, self.cfg.resample);
            }
            Updown::None => {}
        }
        let h = self.conv0.forward(&h);
        let h = h + self.temb_proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
        let h = self.norm1.forward(&h).silu();
        let h = if self.cfg.dropout > 0.0 { h.dropout(self.cfg.dropout, train) } else { h };
        let h = self.conv1.forward(&h);
        let skip = match &self.skip {
            Some(c) => c.forward(&x),
            None => x,
        };
        add_skip(&skip, &h, self.cfg.skip_rescale)
    }
}

/// [`AttnBlock`] configuration.
#[derive(Clone, Copy, Debug)]
pub struct AttnBlockConfig {
    pub channels: usize,
    pub groups: usize,
    pub norm_eps: f64,
    pub skip_rescale: bool,
    /// Init scale of the output projection (0 -> 1e-10).
    pub init_scale: f64,
}

/// Single-head self-attention over the `H*W` positions:
/// `h = GN(x); q, k, v = 1x1(h); w = softmax(q^T k / sqrt(C)); out = x + 1x1(v w^T)`
/// (rescaled by 1/sqrt(2) when `skip_rescale`). `[B, C, H, W] -> [B, C, H, W]`.
/// Variables: `norm`, `qkv` (one 1x1 conv with 3C outputs = the three C x C maps), `proj_out`.
#[derive(Debug)]
pub struct AttnBlock {
    norm: GroupNorm,
    qkv: Conv2d,
    proj_out: Conv2d,
    cfg: AttnBlockConfig,
}

impl AttnBlock {
    pub fn new(p: &Path, cfg: AttnBlockConfig) -> Self {
        let c = cfg.channels;
        let norm =
            GroupNorm::new(&(p / "norm"), GroupNormConfig { channels: c, groups: cfg.groups, eps: cfg.norm_eps });
        // score_sde NIN: each of q, k, v is a C x C map initialised with scale 0.1 (fan_avg = C).
        let qkv = Conv2d::with_init(&(p / "qkv"), Conv2dConfig::same(c, 3 * c, 1), variance_scaling(c, c, 0.1));
        let proj_out = Conv2d::new(&(p / "proj_out"), Conv2dConfig::same(c, c, 1).init_scale(cfg.init_scale));
        Self { norm, qkv, proj_out, cfg }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let (b, c, hh, ww) = (s[0], s[1], s[2], s[3]);
        let qkv = self.qkv.forward(&self.norm.forward(x)).reshape([b, 3, c, hh * ww]);
        let q = qkv.select(1, 0); // [B, C, N]
        let k = qkv.select(1, 1);
        let v = qkv.select(1, 2);
        let w = q.transpose(1, 2).bmm(&k) * (c as f64).powf(-0.5); // [B, N(query), N(key)]
        let w = w.softmax(-1, None::<tch::Kind>);
        let h = v.bmm(&w.transpose(1, 2)).reshape([b, c, hh, ww]); // [B, C, N(query)]
        add_skip(x, &self.proj_out.forward(&h), self.cfg.skip_rescale)
    }
}

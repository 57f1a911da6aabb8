//! Basic layers: convolution, dense, GroupNorm, FIR / plain resampling, the input-pyramid conv.
//!
//! Initialisation follows score_sde (`default_init`): weights ~ variance scaling, fan-average,
//! uniform (`U(-b, b)`, `b = sqrt(3 * scale / ((fan_in + fan_out) / 2))`), biases zero; a
//! scale of 0 means 1e-10 ("zero" init of the last layer of a residual branch).

use tch::nn::{Init, Path};
use tch::Tensor;

use super::config::Resample;

/// score_sde `variance_scaling(scale, 'fan_avg', 'uniform')`; scale 0 is taken as 1e-10.
pub fn variance_scaling(fan_in: usize, fan_out: usize, scale: f64) -> Init {
    let scale = if scale == 0.0 { 1e-10 } else { scale };
    let var = scale / ((fan_in + fan_out) as f64 / 2.0);
    let b = (3.0 * var).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// [`Conv2d`] configuration.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Square kernel size.
    pub kernel: usize,
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Variance-scaling init scale (0 -> 1e-10).
    pub init_scale: f64,
}

impl Conv2dConfig {
    /// `k x k` conv with "same" padding, stride 1, init scale 1.
    pub fn same(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self { in_channels, out_channels, kernel, stride: 1, padding: kernel / 2, init_scale: 1.0 }
    }
    pub fn init_scale(self, init_scale: f64) -> Self {
        Self { init_scale, ..self }
    }
}

/// 2-D convolution with bias. `[B, Cin, H, W] -> [B, Cout, H', W']`.
/// Variables: `weight [Cout, Cin, k, k]`, `bias [Cout]`.
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub cfg: Conv2dConfig,
}

impl Conv2d {
    pub fn new(p: &Path, cfg: Conv2dConfig) -> Self {
        let k2 = cfg.kernel * cfg.kernel;
        let init = variance_scaling(cfg.in_channels * k2, cfg.out_channels * k2, cfg.init_scale);
        Self::with_init(p, cfg, init)
    }

    /// As [`Conv2d::new`] with an explicit weight initialisation.
    pub fn with_init(p: &Path, cfg: Conv2dConfig, init: Init) -> Self {
        let (i, o, k) = (cfg.in_channels as i64, cfg.out_channels as i64, cfg.kernel as i64);
        let weight = p.var("weight", &[o, i, k, k], init);
        let bias = p.var("bias", &[o], Init::Const(0.0));
        Self { weight, bias, cfg }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (s, pd) = (self.cfg.stride as i64, self.cfg.padding as i64);
        x.conv2d(&self.weight, Some(&self.bias), [s, s], [pd, pd], [1, 1], 1)
    }
}

/// [`Dense`] configuration.
#[derive(Clone, Copy, Debug)]
pub struct DenseConfig {
    pub in_features: usize,
    pub out_features: usize,
    pub init_scale: f64,
}

/// Fully connected layer. `[B, in] -> [B, out]`. Variables: `weight [out, in]`, `bias [out]`.
#[derive(Debug)]
pub struct Dense {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Dense {
    pub fn new(p: &Path, cfg: DenseConfig) -> Self {
        let init = variance_scaling(cfg.in_features, cfg.out_features, cfg.init_scale);
        let weight = p.var("weight", &[cfg.out_features as i64, cfg.in_features as i64], init);
        let bias = p.var("bias", &[cfg.out_features as i64], Init::Const(0.0));
        Self { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// [`GroupNorm`] configuration.
#[derive(Clone, Copy, Debug)]
pub struct GroupNormConfig {
    pub channels: usize,
    pub groups: usize,
    pub eps: f64,
}

/// Affine GroupNorm. `[B, C, H, W] -> [B, C, H, W]`. Variables: `weight [C]` (ones), `bias [C]`.
#[derive(Debug)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub cfg: GroupNormConfig,
}

impl GroupNorm {
    pub fn new(p: &Path, cfg: GroupNormConfig) -> Self {
        let c = cfg.channels as i64;
        let weight = p.var("weight", &[c], Init::Const(1.0));
        let bias = p.var("bias", &[c], Init::Const(0.0));
        Self { weight, bias, cfg }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(self.cfg.groups as i64, Some(&self.weight), Some(&self.bias), self.cfg.eps, true)
    }
}

/// The normalised 2-D FIR kernel outer([1,3,3,1]) / 64, as `[C, 1, 4, 4]` for a depthwise conv,
/// multiplied by `gain`.
fn fir_kernel(x: &Tensor, gain: f64) -> Tensor {
    let k1 = [1.0f32, 3.0, 3.0, 1.0];
    let mut k = [0f32; 16];
    for i in 0..4 {
        for j in 0..4 {
            k[4 * i + j] = k1[i] * k1[j] / 64.0 * gain as f32;
        }
    }
    let c = x.size()[1];
    Tensor::from_slice(&k).to_kind(x.kind()).to_device(x.device()).reshape([1, 1, 4, 4]).expand([c, 1, 4, 4], false)
}

/// Halves the resolution. `[B, C, H, W] -> [B, C, H/2, W/2]`.
/// FIR: `upfirdn2d(x, k, down=2, pad=(1,1))` = depthwise 4x4 conv, stride 2, padding 1.
/// Plain: 2x2 average pooling.
pub fn downsample(x: &Tensor, kind: Resample) -> Tensor {
    match kind {
        Resample::Fir => {
            let c = x.size()[1];
            x.conv2d(&fir_kernel(x, 1.0), None::<&Tensor>, [2, 2], [1, 1], [1, 1], c)
        }
        Resample::Plain => x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None),
    }
}

/// Doubles the resolution. `[B, C, H, W] -> [B, C, 2H, 2W]`.
/// FIR: `upfirdn2d(x, 4k, up=2, pad=(2,1))` = depthwise transposed 4x4 conv, stride 2, padding 1
/// (the kernel is symmetric, so no flip is needed). Plain: nearest neighbour.
pub fn upsample(x: &Tensor, kind: Resample) -> Tensor {
    match kind {
        Resample::Fir => {
            let c = x.size()[1];
            x.conv_transpose2d(&fir_kernel(x, 4.0), None::<&Tensor>, [2, 2], [1, 1], [0, 0], c, [1, 1])
        }
        Resample::Plain => {
            let s = x.size();
            x.upsample_nearest2d([s[2] * 2, s[3] * 2], 2.0, 2.0)
        }
    }
}

/// Down-sampling 3x3 conv with bias. `[B, Cin, H, W] -> [B, Cout, H/2, W/2]`.
/// FIR (score_sde `conv_downsample_2d`): FIR-pad the input by 2 (4x4 filter, stride 1, giving
/// H+1), then a 3x3 conv with stride 2 and no padding. Plain: a 3x3 conv, stride 2, padding 1.
/// Used by the input pyramid and by `resample_with = conv` down steps.
/// Variables: `weight [Cout, Cin, 3, 3]`, `bias [Cout]`.
#[derive(Debug)]
pub struct ConvDown {
    pub conv: Conv2d,
    pub kind: Resample,
}

impl ConvDown {
    pub fn new(p: &Path, in_channels: usize, out_channels: usize, kind: Resample) -> Self {
        let padding = match kind {
            Resample::Fir => 0,
            Resample::Plain => 1,
        };
        let cfg = Conv2dConfig { in_channels, out_channels, kernel: 3, stride: 2, padding, init_scale: 1.0 };
        Self { conv: Conv2d::new(p, cfg), kind }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.kind {
            Resample::Fir => {
                let c = x.size()[1];
                let xf = x.conv2d(&fir_kernel(x, 1.0), None::<&Tensor>, [1, 1], [2, 2], [1, 1], c);
                self.conv.forward(&xf)
            }
            Resample::Plain => self.conv.forward(x),
        }
    }
}

/// Up-sampling followed by a 3x3 conv (DDPM `Upsample(with_conv=True)`).
/// `[B, Cin, H, W] -> [B, Cout, 2H, 2W]`. Variables: `weight [Cout, Cin, 3, 3]`, `bias [Cout]`.
#[derive(Debug)]
pub struct ConvUp {
    pub conv: Conv2d,
    pub kind: Resample,
}

impl ConvUp {
    pub fn new(p: &Path, in_channels: usize, out_channels: usize, kind: Resample) -> Self {
        Self { conv: Conv2d::new(p, Conv2dConfig::same(in_channels, out_channels, 3)), kind }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(&upsample(x, self.kind))
    }
}

/// `(a + b) / sqrt(2)` when `rescale`, else `a + b`.
pub fn add_skip(a: &Tensor, b: &Tensor, rescale: bool) -> Tensor {
    let s = a + b;
    if rescale {
        s * std::f64::consts::FRAC_1_SQRT_2
    } else {
        s
    }
}

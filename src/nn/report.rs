//! Analytic model report: parameter counts and forward FLOPs per stage, without building tensors.
//!
//! FLOPs are `2 x multiply-adds` for one image of `resolution^2`, counting:
//! - convolutions (`2 k^2 Cin Cout Hout Wout`) and dense layers (`2 in out`, the time-embedding
//!   MLP and every block's projection);
//! - attention: the q/k/v and output 1x1 maps (`2 * 4 C^2 N`) and the two `N x N x C` matmuls
//!   (`2 * 2 N^2 C`), `N = H W`;
//! - resampling filters as a depthwise conv on what they output: FIR `2 * 16 C Hout Wout` (as
//!   `upfirdn2d` computes it, also for up-sampling), 2x2 average pooling `2 * 4 C Hout Wout`,
//!   nearest up-sampling 0.
//!
//! Not counted: biases, GroupNorm, SiLU, softmax, additions, dropout, the sinusoid, gathers.
//! With these rules the paper preset gives 62.0 / 37.2 / 14.3 GFLOP (docs/METHOD.md §4).

use std::fmt;

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use super::config::{Architecture, DecoderAttn, Family, Resample, ResampleWith, UNetConfig};

/// Parameters and FLOPs of one part.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub params: u64,
    pub flops: f64,
    /// The paper's counting (docs/METHOD.md §12, docs/EDM.md §5): what torchstat reports for the
    /// official code, i.e. multiply-adds of `nn.Conv2d` plus one add per output for the bias, and
    /// multiply-adds of `nn.Linear`; attention maps and products, resampling filters and
    /// convolutions of custom classes (score_sde's NIN and FIR `Conv2d`) count zero. For EDM's
    /// DDPM++, whose every layer is a custom class (torchstat: 0), its convolutions and linear
    /// layers are counted as if they were `nn.Conv2d` / `nn.Linear`.
    pub torchstat: f64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.params += o.params;
        self.flops += o.flops;
        self.torchstat += o.torchstat;
    }
}

fn sq(r: usize) -> f64 {
    (r * r) as f64
}

pub(crate) fn conv(i: usize, o: usize, k: usize, rout: usize) -> Cost {
    let macs = (i * o * k * k) as f64 * sq(rout);
    Cost { params: (i * o * k * k + o) as u64, flops: 2.0 * macs, torchstat: macs + o as f64 * sq(rout) }
}

pub(crate) fn dense(i: usize, o: usize) -> Cost {
    Cost { params: (i * o + o) as u64, flops: 2.0 * (i * o) as f64, torchstat: (i * o) as f64 }
}

pub(crate) fn norm(c: usize) -> Cost {
    Cost { params: 2 * c as u64, flops: 0.0, torchstat: 0.0 }
}

/// Cost of the resampling filter producing `c` channels at `rout`.
pub(crate) fn filter(kind: Resample, up: bool, c: usize, rout: usize) -> f64 {
    let taps = match (kind, up) {
        (Resample::Fir, _) => 16.0,
        (Resample::Plain, false) => 4.0,
        (Resample::Plain, true) => 0.0,
    };
    2.0 * taps * c as f64 * sq(rout)
}

#[derive(Clone, Copy, PartialEq)]
enum Rs {
    None,
    Up,
    Down,
}

/// Residual block `i -> o` whose output is at `rout`.
fn resblock(cfg: &UNetConfig, i: usize, o: usize, rout: usize, rs: Rs) -> Cost {
    let mut c = norm(i);
    c += conv(i, o, 3, rout);
    c += dense(cfg.temb_dim(), o);
    c += norm(o);
    c += conv(o, o, 3, rout);
    if i != o || rs != Rs::None {
        c += conv(i, o, 1, rout);
    }
    if rs != Rs::None {
        // applied to both the residual branch and the skip (`i` channels each)
        c.flops += 2.0 * filter(cfg.resample, rs == Rs::Up, i, rout);
    }
    c
}

fn attention(c: usize, r: usize) -> Cost {
    let n = sq(r);
    let mut k = norm(c);
    k += conv(c, 3 * c, 1, r);
    k += conv(c, c, 1, r);
    k.flops += 2.0 * 2.0 * n * n * c as f64;
    k.torchstat = 0.0; // score_sde's NIN layers are not nn.Conv2d
    k
}

/// Down-sampling 3x3 conv `i -> o`, output at `rout` (see `layers::ConvDown`). `nn_conv`: the
/// official layer is an `nn.Conv2d` (DDPM's `Downsample`), not score_sde's FIR `Conv2d` class
/// (the NCSN++ input pyramid), for the torchstat count.
fn conv_down(kind: Resample, i: usize, o: usize, rout: usize, nn_conv: bool) -> Cost {
    let mut c = conv(i, o, 3, rout);
    if kind == Resample::Fir {
        c.flops += 2.0 * 16.0 * i as f64 * sq(2 * rout + 1);
    }
    if !nn_conv {
        c.torchstat = 0.0;
    }
    c
}

/// Time embedding MLP.
pub fn embedding_cost(cfg: &UNetConfig) -> Cost {
    let mut c = dense(cfg.embed_dim(), cfg.temb_dim());
    c += dense(cfg.temb_dim(), cfg.temb_dim());
    c
}

/// Encoder (without the time embedding).
pub fn encoder_cost(cfg: &UNetConfig) -> Cost {
    let e = cfg.base_channels;
    let mut cost = conv(cfg.in_channels, e, 3, cfg.resolution);
    let mut c = e;
    let mut pyr = cfg.in_channels;
    let nl = cfg.num_levels();
    for (i, m) in cfg.channel_mult.iter().enumerate() {
        let r = cfg.level_resolution(i);
        let att = cfg.attn_resolutions.contains(&r);
        for _ in 0..cfg.num_res_blocks {
            cost += resblock(cfg, c, e * m, r, Rs::None);
            c = e * m;
            if att {
                cost += attention(c, r);
            }
        }
        if i + 1 != nl {
            let r2 = r / 2;
            cost += match cfg.resample_with {
                ResampleWith::Resblock => resblock(cfg, c, c, r2, Rs::Down),
                ResampleWith::Conv => conv_down(cfg.resample, c, c, r2, true),
            };
            if cfg.input_pyramid {
                cost += conv_down(cfg.resample, pyr, c, r2, false);
                pyr = c;
            }
        }
    }
    let r = cfg.level_resolution(nl - 1);
    cost += resblock(cfg, c, c, r, Rs::None);
    cost += attention(c, r);
    cost += resblock(cfg, c, c, r, Rs::None);
    cost
}

/// Decoder of base width `d`.
pub fn decoder_cost(cfg: &UNetConfig, d: usize) -> Cost {
    let mut skips = cfg.skip_channels();
    let nl = cfg.num_levels();
    let mut c = cfg.base_channels * cfg.channel_mult[nl - 1];
    let mut cost = Cost::default();
    for i in (0..nl).rev() {
        let r = cfg.level_resolution(i);
        let att = cfg.attn_resolutions.contains(&r);
        let o = d * cfg.channel_mult[i];
        for _ in 0..=cfg.num_res_blocks {
            cost += resblock(cfg, c + skips.pop().unwrap_or(0), o, r, Rs::None);
            c = o;
            if att && cfg.decoder_attn == DecoderAttn::Block {
                cost += attention(c, r);
            }
        }
        if att && cfg.decoder_attn == DecoderAttn::Level {
            cost += attention(c, r);
        }
        if i != 0 {
            let r2 = 2 * r;
            cost += match cfg.resample_with {
                ResampleWith::Resblock => resblock(cfg, c, c, r2, Rs::Up),
                ResampleWith::Conv => {
                    let mut k = conv(c, c, 3, r2);
                    k.flops += filter(cfg.resample, true, c, r2);
                    k
                }
            };
        }
    }
    cost += norm(c);
    cost += conv(c, cfg.in_channels, 3, cfg.resolution);
    cost
}

/// Parameter counts and GFLOPs of a configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelReport {
    pub architecture: Architecture,
    pub num_stages: usize,
    /// Time-embedding MLP parameters (one copy).
    pub embedding_params: u64,
    /// Encoder parameters including the time embedding (one copy; the "encoder" of docs/METHOD.md §4).
    pub encoder_params: u64,
    /// Parameters of each decoder.
    pub decoder_params: Vec<u64>,
    /// Parameters of the network that handles stage `j`: encoder (+ embedding) + decoder `j`.
    pub stage_params: Vec<u64>,
    /// Parameters stored: one trunk + all decoders (multistage), or all stage networks (separate).
    pub total_params: u64,
    /// Forward GFLOPs per image of the encoder + embedding.
    pub encoder_gflops: f64,
    /// Forward GFLOPs per image of each decoder.
    pub decoder_gflops: Vec<f64>,
    /// Forward GFLOPs per image of stage `j` (encoder + decoder `j`).
    pub stage_gflops: Vec<f64>,
    /// Stage boundaries in t used for the weighting (`num_stages + 1` values).
    pub boundaries_t: Vec<f64>,
    /// Fraction of the t interval each stage covers.
    pub interval_weights: Vec<f64>,
    /// `sum_j weight_j * stage_gflops_j`: the mean cost per image of a step at uniform t.
    pub weighted_gflops: f64,
    /// Stage `j`'s forward cost in the paper's counting (torchstat units, G = 1e9; see
    /// [`Cost::torchstat`]).
    #[serde(default)]
    pub torchstat_stage_gflops: Vec<f64>,
    /// The paper's Table 2 number: `torchstat_stage_gflops` weighted by the interval lengths.
    #[serde(default)]
    pub torchstat_weighted_gflops: f64,
}

/// Report for `cfg`. `boundaries_t`: either all `S + 1` boundaries (increasing, e.g.
/// `[0, 0.442, 0.6308, 1]`) or the `S - 1` interior ones (then `[0, .., 1]` is implied; empty for
/// one stage).
pub fn report(cfg: &UNetConfig, boundaries_t: &[f64]) -> Result<ModelReport> {
    cfg.validate()?;
    let s = cfg.num_stages();
    let b: Vec<f64> = if boundaries_t.len() == s + 1 {
        boundaries_t.to_vec()
    } else if boundaries_t.len() + 1 == s {
        std::iter::once(0.0).chain(boundaries_t.iter().copied()).chain(std::iter::once(1.0)).collect()
    } else {
        anyhow::bail!("{s} stages need {} boundaries (or {} interior ones), got {}", s + 1, s - 1, boundaries_t.len())
    };
    ensure!(b.windows(2).all(|w| w[1] > w[0]), "stage boundaries must be strictly increasing: {b:?}");
    let span = b[s] - b[0];
    let interval_weights: Vec<f64> = b.windows(2).map(|w| (w[1] - w[0]) / span).collect();

    let (emb, mut enc, decs): (Cost, Cost, Vec<Cost>) = match cfg.family {
        Family::Ncsnpp => (
            embedding_cost(cfg),
            encoder_cost(cfg),
            cfg.decoder_channels.iter().map(|&d| decoder_cost(cfg, d)).collect(),
        ),
        Family::Ddpmpp => {
            use super::ddpmpp::report as dr;
            (
                dr::mapping_cost(cfg),
                dr::encoder_cost(cfg),
                cfg.decoder_channels.iter().map(|&d| dr::decoder_cost(cfg, d)).collect(),
            )
        }
        Family::Adm => {
            use super::adm::report as ar;
            (
                ar::embedding_cost(cfg),
                ar::encoder_cost(cfg),
                cfg.decoder_channels.iter().enumerate().map(|(j, &d)| ar::decoder_cost(cfg, j, d)).collect(),
            )
        }
    };
    enc += emb;
    let stage_params: Vec<u64> = decs.iter().map(|d| enc.params + d.params).collect();
    let total_params = match cfg.architecture {
        Architecture::Multistage => enc.params + decs.iter().map(|d| d.params).sum::<u64>(),
        Architecture::Separate => stage_params.iter().sum(),
    };
    let stage_gflops: Vec<f64> = decs.iter().map(|d| (enc.flops + d.flops) / 1e9).collect();
    let weighted_gflops = stage_gflops.iter().zip(&interval_weights).map(|(g, w)| g * w).sum();
    let torchstat_stage_gflops: Vec<f64> = decs.iter().map(|d| (enc.torchstat + d.torchstat) / 1e9).collect();
    let torchstat_weighted_gflops = torchstat_stage_gflops.iter().zip(&interval_weights).map(|(g, w)| g * w).sum();
    Ok(ModelReport {
        architecture: cfg.architecture,
        num_stages: s,
        embedding_params: emb.params,
        encoder_params: enc.params,
        decoder_params: decs.iter().map(|d| d.params).collect(),
        stage_params,
        total_params,
        encoder_gflops: enc.flops / 1e9,
        decoder_gflops: decs.iter().map(|d| d.flops / 1e9).collect(),
        stage_gflops,
        boundaries_t: b,
        interval_weights,
        weighted_gflops,
        torchstat_stage_gflops,
        torchstat_weighted_gflops,
    })
}

impl fmt::Display for ModelReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arch = match self.architecture {
            Architecture::Multistage if self.num_stages == 1 => "unified",
            Architecture::Multistage => "multistage (shared encoder)",
            Architecture::Separate => "separate (one network per stage)",
        };
        writeln!(f, "architecture: {arch}, {} stage(s)", self.num_stages)?;
        writeln!(
            f,
            "encoder (incl. time embedding {}): {} params, {:.3} GFLOP",
            self.embedding_params, self.encoder_params, self.encoder_gflops
        )?;
        writeln!(
            f,
            "{:>5} {:>14} {:>12} {:>14} {:>12} {:>19} {:>8}",
            "stage", "decoder", "dec GFLOP", "network", "net GFLOP", "t interval", "weight"
        )?;
        for j in 0..self.num_stages {
            writeln!(
                f,
                "{:>5} {:>14} {:>12.3} {:>14} {:>12.3} {:>9.4}..{:<8.4} {:>8.4}",
                j,
                self.decoder_params[j],
                self.decoder_gflops[j],
                self.stage_params[j],
                self.stage_gflops[j],
                self.boundaries_t[j],
                self.boundaries_t[j + 1],
                self.interval_weights[j]
            )?;
        }
        writeln!(f, "total stored: {} params", self.total_params)?;
        writeln!(f, "interval-weighted forward cost: {:.3} GFLOP per image", self.weighted_gflops)?;
        let ts: Vec<String> = self.torchstat_stage_gflops.iter().map(|g| format!("{g:.2}")).collect();
        write!(
            f,
            "the paper's counting (torchstat: conv and linear multiply-adds + conv biases): {} per stage, {:.2} interval-weighted",
            ts.join(" / "),
            self.torchstat_weighted_gflops
        )
    }
}

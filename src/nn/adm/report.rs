//! Analytic parameters and FLOPs of the ADM layout, with msdiff's FLOP rules (`crate::nn::report`:
//! 2 x multiply-adds of convolutions, dense layers, attention maps and products; biases, norms,
//! activations and nearest up-sampling free). With these rules the paper's LDM model costs
//! 240.89 / 156.41 / 106.82 GFLOP per stage on a 64x64x3 latent, LDM's unified U-Net 202.40
//! (../shared numbers: docs/METHOD.md §11). The torchstat column counts `nn.Conv2d` and
//! `nn.Linear` only: the attention's `Conv1d` maps and products count zero there (105.82 /
//! 72.97 / 48.17 and 88.39, the paper's Table 2 units).

use super::{decoder_has_attention, skip_channels};
use crate::nn::config::UNetConfig;
use crate::nn::report::{conv, dense, norm, Cost};

fn resblock(cfg: &UNetConfig, i: usize, o: usize, r: usize) -> Cost {
    let mut c = norm(i);
    c += conv(i, o, 3, r);
    c += dense(cfg.temb_dim(), o);
    c += norm(o);
    c += conv(o, o, 3, r);
    if i != o {
        c += conv(i, o, 1, r);
    }
    c
}

fn attention(c: usize, r: usize) -> Cost {
    let n = (r * r) as f64;
    let mut k = norm(c);
    k += conv(c, 3 * c, 1, r);
    k += conv(c, c, 1, r);
    k.flops += 2.0 * 2.0 * n * n * c as f64;
    k.torchstat = 0.0; // Conv1d: torchstat counts nn.Conv2d and nn.Linear only
    k
}

/// The time-embedding MLP.
pub fn embedding_cost(cfg: &UNetConfig) -> Cost {
    let mut c = dense(cfg.embed_dim(), cfg.temb_dim());
    c += dense(cfg.temb_dim(), cfg.temb_dim());
    c
}

/// The input blocks and the middle block (without the time embedding).
pub fn encoder_cost(cfg: &UNetConfig) -> Cost {
    let mut cost = conv(cfg.in_channels, cfg.base_channels, 3, cfg.resolution);
    let mut c = cfg.base_channels;
    for (i, m) in cfg.channel_mult.iter().enumerate() {
        let r = cfg.level_resolution(i);
        let a = cfg.attn_resolutions.contains(&r);
        for _ in 0..cfg.num_res_blocks {
            let o = cfg.base_channels * m;
            cost += resblock(cfg, c, o, r);
            if a {
                cost += attention(o, r);
            }
            c = o;
        }
        if i + 1 != cfg.num_levels() {
            cost += conv(c, c, 3, r / 2);
        }
    }
    let r = cfg.level_resolution(cfg.num_levels() - 1);
    cost += resblock(cfg, c, c, r);
    cost += attention(c, r);
    cost += resblock(cfg, c, c, r);
    cost
}

/// Stage `j`'s decoder (output blocks and head) of base width `d`.
pub fn decoder_cost(cfg: &UNetConfig, j: usize, d: usize) -> Cost {
    let mut skips = skip_channels(cfg);
    let mut c = *skips.last().expect("skips");
    let mut cost = Cost::default();
    for i in (0..cfg.num_levels()).rev() {
        let r = cfg.level_resolution(i);
        let a = decoder_has_attention(cfg, j) && cfg.attn_resolutions.contains(&r);
        for b in 0..=cfg.num_res_blocks {
            let cin = c + skips.pop().expect("skips");
            c = d * cfg.channel_mult[i];
            cost += resblock(cfg, cin, c, r);
            if a {
                cost += attention(c, r);
            }
            if i > 0 && b == cfg.num_res_blocks {
                cost += conv(c, c, 3, 2 * r);
            }
        }
    }
    cost += norm(c);
    cost += conv(c, cfg.in_channels, 3, cfg.resolution);
    cost
}

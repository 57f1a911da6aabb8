//! Analytic parameters and FLOPs of EDM's DDPM++ layout, with msdiff's FLOP rules
//! (`crate::nn::report`: 2 x multiply-adds of convolutions, dense layers, attention maps and
//! products, and resampling filters; biases, norms and activations free). With these rules the
//! paper's EDM model costs 71.50 / 42.38 / 15.45 GFLOP per stage, the numbers of the official
//! model counted the same way (docs/EDM.md).

use crate::nn::config::UNetConfig;
use crate::nn::report::{conv, dense, filter, norm, Cost};

/// One `UNetBlock` `i -> o` whose output is at side `rout`.
fn block(cfg: &UNetConfig, i: usize, o: usize, rout: usize, up: bool, down: bool, attention: bool) -> Cost {
    let mut c = norm(i);
    c += conv(i, o, 3, rout);
    c += dense(cfg.temb_dim(), o);
    c += norm(o);
    c += conv(o, o, 3, rout);
    if i != o || up || down {
        c += conv(i, o, 1, rout);
    }
    if up || down {
        // the filter runs on the input of conv0 and of the skip (`i` channels each)
        c.flops += 2.0 * filter(cfg.resample, up, i, rout);
    }
    if attention {
        let n = (rout * rout) as f64;
        c += norm(o);
        c += conv(o, 3 * o, 1, rout);
        c += conv(o, o, 1, rout);
        c.flops += 2.0 * 2.0 * n * n * o as f64;
    }
    c
}

/// The mapping network: `map_augment` (no bias), `map_layer0`, `map_layer1`.
pub fn mapping_cost(cfg: &UNetConfig) -> Cost {
    let (n, e) = (cfg.embed_dim(), cfg.temb_dim());
    let a = (cfg.augment_dim * n) as f64;
    let mut c = Cost { params: (cfg.augment_dim * n) as u64, flops: 2.0 * a, torchstat: a };
    c += dense(n, e);
    c += dense(e, e);
    c
}

/// The encoder (without the mapping network).
pub fn encoder_cost(cfg: &UNetConfig) -> Cost {
    let mut cost = conv(cfg.in_channels, cfg.base_channels, 3, cfg.resolution);
    let mut c = cfg.base_channels;
    for (i, m) in cfg.channel_mult.iter().enumerate() {
        let r = cfg.level_resolution(i);
        if i > 0 {
            cost += block(cfg, c, c, r, false, true, false);
        }
        let attn = cfg.attn_resolutions.contains(&r);
        for _ in 0..cfg.num_res_blocks {
            let o = cfg.base_channels * m;
            cost += block(cfg, c, o, r, false, false, attn);
            c = o;
        }
    }
    cost
}

/// The decoder of base width `d`, the bottleneck blocks included.
pub fn decoder_cost(cfg: &UNetConfig, d: usize) -> Cost {
    let mut skips = super::skip_channels(cfg);
    let mut c = *skips.last().expect("skips");
    let nl = cfg.num_levels();
    let mut cost = Cost::default();
    for i in (0..nl).rev() {
        let r = cfg.level_resolution(i);
        if i == nl - 1 {
            cost += block(cfg, c, c, r, false, false, true);
            cost += block(cfg, c, c, r, false, false, false);
        } else {
            cost += block(cfg, c, c, r, true, false, false);
        }
        let attn = cfg.attn_resolutions.contains(&r);
        for b in 0..=cfg.num_res_blocks {
            let cin = c + skips.pop().expect("skips");
            c = d * cfg.channel_mult[i];
            cost += block(cfg, cin, c, r, false, false, attn && b == cfg.num_res_blocks);
        }
    }
    cost += norm(c);
    cost += conv(c, cfg.in_channels, 3, cfg.resolution);
    cost
}

//! [`AutoencoderConfig`]: the layout of an LDM / taming encoder-decoder with its bottleneck, the
//! presets, and the analytic parameter / FLOP report ([`AutoencoderConfig::report`]).
//!
//! One layout covers LDM's `AutoencoderKL` and `VQModel` and diffusers' `AutoencoderKL` /
//! `VQModel` (`DownEncoderBlock2D` / `AttnDownEncoderBlock2D` and their decoder twins):
//!
//! - encoder: `conv_in` 3x3 -> per level `num_res_blocks` ResnetBlocks (each followed by an
//!   attention block at the levels in `attn_levels`), then (all levels but the last) an
//!   asymmetric-pad stride-2 3x3 conv -> middle Res-Attn-Res -> GroupNorm, SiLU, `conv_out` 3x3 to
//!   `2 z_channels` (KL: mean and log-variance) or `z_channels` (VQ);
//! - `quant_conv` 1x1 to `2 embed_dim` (KL) / `embed_dim` (VQ); the bottleneck; `post_quant_conv`
//!   1x1 `embed_dim -> z_channels`;
//! - decoder: `conv_in` 3x3 -> middle Res-Attn-Res -> per level, from the deepest, `num_res_blocks
//!   + 1` ResnetBlocks (+ attention), then (all levels but the first) nearest x2 + 3x3 conv ->
//!   GroupNorm, SiLU, `conv_out` 3x3 (no tanh).
//!
//! LDM's `attn_resolutions` (resolutions relative to the training size) are stored as levels:
//! level `i` runs at `resolution / 2^i`, so `attn_resolutions = [32]` at `resolution = 256` is
//! `attn_levels = [3]`. That keeps the layout independent of the input size.
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What sits between encoder and decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bottleneck {
    /// A diagonal Gaussian posterior (mean, log-variance); the KL term to N(0, I) regularises it.
    Kl,
    /// Nearest-codebook-vector quantisation with a straight-through gradient.
    Vq,
}

impl fmt::Display for Bottleneck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bottleneck::Kl => "kl",
            Bottleneck::Vq => "vq",
        })
    }
}

/// Layout of an autoencoder. Every field has a default (the `kl-f4` preset), so a TOML / JSON
/// table lists only what differs; unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoencoderConfig {
    /// `kl` or `vq`.
    pub bottleneck: Bottleneck,
    /// Image channels in (encoder input). Default 3.
    pub in_channels: usize,
    /// Image channels out (decoder output). Default 3.
    pub out_channels: usize,
    /// Base width `ch` (LDM) = `block_out_channels[0]` (diffusers). Default 128.
    pub ch: usize,
    /// Width multipliers per level; `len - 1` halvings, so the downsampling factor is
    /// `2^(len - 1)`. Default [1, 2, 4].
    pub ch_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more per level). Default 2.
    pub num_res_blocks: usize,
    /// Levels (0 = full resolution) whose residual blocks are each followed by attention. Default [].
    pub attn_levels: Vec<usize>,
    /// Channels of the encoder output / decoder input (`z_channels`, diffusers' `latent_channels`).
    pub z_channels: usize,
    /// Channels of the latent the bottleneck works on (`embed_dim`, diffusers' `vq_embed_dim`; for
    /// diffusers' `AutoencoderKL` equal to `latent_channels`).
    pub embed_dim: usize,
    /// VQ: codebook size (`n_embed`, `num_vq_embeddings`). Ignored by KL (keep 0).
    pub n_embed: usize,
    /// GroupNorm groups (LDM: 32; diffusers' `norm_num_groups`).
    pub norm_groups: usize,
    /// GroupNorm epsilon (LDM and diffusers: 1e-6).
    pub norm_eps: f64,
    /// Res-Attn-Res in the middle (true) or Res-Res (diffusers' `mid_block_add_attention = false`,
    /// LDM's `attn_type: none`).
    pub mid_attention: bool,
    /// 1x1 `quant_conv` after the encoder (diffusers' `use_quant_conv`; without it
    /// `embed_dim` must equal `z_channels`).
    pub quant_conv: bool,
    /// 1x1 `post_quant_conv` before the decoder (diffusers' `use_post_quant_conv`).
    pub post_quant_conv: bool,
}

impl Default for AutoencoderConfig {
    fn default() -> Self {
        AutoencoderConfig {
            bottleneck: Bottleneck::Kl,
            in_channels: 3,
            out_channels: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4],
            num_res_blocks: 2,
            attn_levels: vec![],
            z_channels: 3,
            embed_dim: 3,
            n_embed: 0,
            norm_groups: 32,
            norm_eps: 1e-6,
            mid_attention: true,
            quant_conv: true,
            post_quant_conv: true,
        }
    }
}

/// Preset names, in the order `msdiff autoencoder info` lists them.
pub const PRESETS: &[&str] =
    &["vq-f4", "vq-f4-noattn", "kl-f4", "kl-f8", "small-kl-f4", "small-vq-f4", "tiny-kl", "tiny-vq"];

impl AutoencoderConfig {
    /// A named preset ([`PRESETS`]):
    ///
    /// - `vq-f4`: the paper's first stage (LDM `models/first_stage_models/vq-f4/config.yaml`):
    ///   ch 128, mult 1,2,4, 2 blocks, no level attention, z 3, embed 3, 8192 codes;
    ///   55,322,782 parameters (encoder 22,337,411, decoder 32,960,771, codebook 24,576,
    ///   quant / post-quant convs 12 each).
    /// - `vq-f4-noattn`: LDM's `vq-f4-noattn` (`attn_type: none`: no middle attention);
    ///   53,219,486 parameters.
    /// - `kl-f4`: LDM `kl-f4/config.yaml`: the vq-f4 network with a KL bottleneck (z 3, embed 3);
    ///   55,312,063 parameters.
    /// - `kl-f8`: LDM `kl-f8/config.yaml` (= Stable Diffusion's VAE): mult 1,2,4,4, z 4, embed 4;
    ///   83,653,863 parameters.
    /// - `small-kl-f4`, `small-vq-f4` (CPU scale, 1 channel; the channels follow the data when
    ///   training): ch 32, mult 1,2,2, 1 block, 8 groups, z 4 / embed 4 (VQ: 3 / 3 with 512 codes).
    /// - `tiny-kl`, `tiny-vq`: ch 8, mult 1,2, 1 block, 4 groups, level attention at 1 (tests).
    pub fn preset(name: &str) -> Result<Self> {
        let paper = Self::default();
        let vq_f4 = Self { bottleneck: Bottleneck::Vq, n_embed: 8192, ..paper.clone() };
        let small = Self {
            in_channels: 1,
            out_channels: 1,
            ch: 32,
            ch_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            z_channels: 4,
            embed_dim: 4,
            norm_groups: 8,
            ..paper.clone()
        };
        let tiny = Self {
            in_channels: 1,
            out_channels: 1,
            ch: 8,
            ch_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_levels: vec![1],
            z_channels: 2,
            embed_dim: 2,
            norm_groups: 4,
            ..paper.clone()
        };
        let cfg = match name {
            "vq-f4" => vq_f4,
            "vq-f4-noattn" => Self { mid_attention: false, ..vq_f4 },
            "kl-f4" => paper,
            "kl-f8" => Self { ch_mult: vec![1, 2, 4, 4], z_channels: 4, embed_dim: 4, ..paper },
            "small-kl-f4" => small,
            "small-vq-f4" => Self { bottleneck: Bottleneck::Vq, z_channels: 3, embed_dim: 3, n_embed: 512, ..small },
            "tiny-kl" => tiny,
            "tiny-vq" => Self { bottleneck: Bottleneck::Vq, n_embed: 16, ..tiny },
            _ => bail!("unknown autoencoder preset '{name}' (available: {})", PRESETS.join(", ")),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every value in range and every width divisible by the GroupNorm groups.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.in_channels > 0 && self.out_channels > 0, "autoencoder in_channels and out_channels must be > 0");
        ensure!(self.ch > 0, "autoencoder ch must be > 0");
        ensure!(
            !self.ch_mult.is_empty() && self.ch_mult.len() <= 8,
            "autoencoder ch_mult must have 1 to 8 levels, got {:?}",
            self.ch_mult
        );
        ensure!(self.ch_mult.iter().all(|&m| m > 0), "autoencoder ch_mult entries must be > 0, got {:?}", self.ch_mult);
        ensure!(self.num_res_blocks > 0, "autoencoder num_res_blocks must be > 0");
        ensure!(self.z_channels > 0 && self.embed_dim > 0, "autoencoder z_channels and embed_dim must be > 0");
        ensure!(self.norm_groups > 0, "autoencoder norm_groups must be > 0");
        ensure!(self.norm_eps > 0.0 && self.norm_eps.is_finite(), "autoencoder norm_eps must be > 0");
        for &l in &self.attn_levels {
            ensure!(
                l < self.ch_mult.len(),
                "autoencoder attn_levels has level {l} but there are {} levels (0..{})",
                self.ch_mult.len(),
                self.ch_mult.len() - 1
            );
        }
        for w in self.widths() {
            ensure!(
                w % self.norm_groups == 0,
                "autoencoder width {w} (ch {} x mult) is not divisible by norm_groups = {}",
                self.ch,
                self.norm_groups
            );
        }
        match self.bottleneck {
            Bottleneck::Vq => {
                ensure!(self.n_embed >= 2, "a VQ autoencoder needs n_embed >= 2 codebook vectors, got {}", self.n_embed)
            }
            Bottleneck::Kl => ensure!(
                self.n_embed == 0,
                "n_embed = {} is a VQ setting; a KL autoencoder takes n_embed = 0",
                self.n_embed
            ),
        }
        if !self.quant_conv {
            ensure!(
                self.embed_dim == self.z_channels,
                "without quant_conv the latent is the encoder output: embed_dim ({}) must equal z_channels ({})",
                self.embed_dim,
                self.z_channels
            );
        }
        if !self.post_quant_conv {
            ensure!(
                self.embed_dim == self.z_channels,
                "without post_quant_conv the decoder reads the latent: embed_dim ({}) must equal z_channels ({})",
                self.embed_dim,
                self.z_channels
            );
        }
        Ok(())
    }

    /// `ch * m` for every level.
    pub fn widths(&self) -> Vec<usize> {
        self.ch_mult.iter().map(|m| self.ch * m).collect()
    }

    /// Spatial downsampling factor `2^(levels - 1)`.
    pub fn factor(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    /// Channels of the encoder's `conv_out` (KL: mean and log-variance).
    pub fn encoder_out_channels(&self) -> usize {
        match self.bottleneck {
            Bottleneck::Kl => 2 * self.z_channels,
            Bottleneck::Vq => self.z_channels,
        }
    }

    /// Channels of the bottleneck's input (KL: `2 embed_dim` moments; VQ: `embed_dim`).
    pub fn moments_channels(&self) -> usize {
        match self.bottleneck {
            Bottleneck::Kl => 2 * self.embed_dim,
            Bottleneck::Vq => self.embed_dim,
        }
    }

    /// The latent shape `[embed_dim, H / f, W / f]` of `[C, H, W]` images, or a one-line error when
    /// the channels differ or a side is not divisible by the downsampling factor.
    pub fn latent_shape(&self, image: [i64; 3]) -> Result<[i64; 3]> {
        let [c, h, w] = image;
        let f = self.factor() as i64;
        ensure!(
            c == self.in_channels as i64,
            "the images have {c} channel(s) but the autoencoder takes {}",
            self.in_channels
        );
        ensure!(
            h > 0 && w > 0 && h % f == 0 && w % f == 0,
            "images of {h}x{w} (HxW) do not fit an autoencoder with downsampling factor {f}: both sides must be multiples of {f} (pad or crop them)"
        );
        Ok([self.embed_dim as i64, h / f, w / f])
    }

    /// Parameters per part and forward GFLOPs for one `in_channels x h x w` image (docs/METHOD.md
    /// §4.7's rule: 2 x multiply-adds of convolutions and of the two attention matrix products;
    /// biases, GroupNorm, activations, softmax, additions, resampling and the codebook search are
    /// not counted).
    pub fn report(&self, h: usize, w: usize) -> AeReport {
        let widths = self.widths();
        let levels = widths.len();
        let mut enc = Cost::default();
        let (mut rh, mut rw) = (h, w);
        enc += conv(self.in_channels, self.ch, 3, rh, rw);
        let mut c = self.ch;
        for (l, &o) in widths.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                enc += resblock(c, o, rh, rw);
                c = o;
                if self.attn_levels.contains(&l) {
                    enc += attn(c, rh, rw);
                }
            }
            if l + 1 < levels {
                (rh, rw) = (rh / 2, rw / 2);
                enc += conv(c, c, 3, rh, rw);
            }
        }
        enc += mid(c, rh, rw, self.mid_attention);
        enc += norm(c);
        enc += conv(c, self.encoder_out_channels(), 3, rh, rw);
        let quant = if self.quant_conv {
            conv(self.encoder_out_channels(), self.moments_channels(), 1, rh, rw)
        } else {
            Cost::default()
        };
        let post =
            if self.post_quant_conv { conv(self.embed_dim, self.z_channels, 1, rh, rw) } else { Cost::default() };
        let codebook = match self.bottleneck {
            Bottleneck::Vq => Cost { params: (self.n_embed * self.embed_dim) as u64, flops: 0.0 },
            Bottleneck::Kl => Cost::default(),
        };
        let mut dec = Cost::default();
        let mut c = *widths.last().unwrap_or(&self.ch);
        dec += conv(self.z_channels, c, 3, rh, rw);
        dec += mid(c, rh, rw, self.mid_attention);
        for l in (0..levels).rev() {
            let o = widths[l];
            for _ in 0..=self.num_res_blocks {
                dec += resblock(c, o, rh, rw);
                c = o;
                if self.attn_levels.contains(&l) {
                    dec += attn(c, rh, rw);
                }
            }
            if l > 0 {
                (rh, rw) = (rh * 2, rw * 2);
                dec += conv(c, c, 3, rh, rw);
            }
        }
        dec += norm(c);
        dec += conv(c, self.out_channels, 3, rh, rw);
        AeReport { encoder: enc, quant_conv: quant, codebook, post_quant_conv: post, decoder: dec, height: h, width: w }
    }
}

/// Parameters and forward FLOPs of one part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Cost {
    pub params: u64,
    pub flops: f64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.params += o.params;
        self.flops += o.flops;
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(mut self, o: Cost) -> Cost {
        self += o;
        self
    }
}

fn conv(i: usize, o: usize, k: usize, h: usize, w: usize) -> Cost {
    Cost { params: (i * o * k * k + o) as u64, flops: 2.0 * (i * o * k * k) as f64 * (h * w) as f64 }
}

fn norm(c: usize) -> Cost {
    Cost { params: 2 * c as u64, flops: 0.0 }
}

fn resblock(i: usize, o: usize, h: usize, w: usize) -> Cost {
    let mut c = norm(i) + conv(i, o, 3, h, w) + norm(o) + conv(o, o, 3, h, w);
    if i != o {
        c += conv(i, o, 1, h, w);
    }
    c
}

fn attn(c: usize, h: usize, w: usize) -> Cost {
    let n = (h * w) as f64;
    let mut cost = norm(c);
    for _ in 0..4 {
        cost += conv(c, c, 1, h, w);
    }
    cost.flops += 2.0 * 2.0 * n * n * c as f64;
    cost
}

fn mid(c: usize, h: usize, w: usize, attention: bool) -> Cost {
    let mut m = resblock(c, c, h, w) + resblock(c, c, h, w);
    if attention {
        m += attn(c, h, w);
    }
    m
}

/// Parameters and GFLOPs per part of an autoencoder (from [`AutoencoderConfig::report`]).
#[derive(Clone, Debug, Serialize)]
pub struct AeReport {
    /// `conv_in` .. `conv_out` (not `quant_conv`), as the official counts split it.
    pub encoder: Cost,
    pub quant_conv: Cost,
    /// VQ: `n_embed x embed_dim`; KL: none.
    pub codebook: Cost,
    pub post_quant_conv: Cost,
    /// `conv_in` .. `conv_out` (not `post_quant_conv`).
    pub decoder: Cost,
    /// The image size the FLOPs are for.
    pub height: usize,
    pub width: usize,
}

impl AeReport {
    pub fn total_params(&self) -> u64 {
        self.encoder.params
            + self.quant_conv.params
            + self.codebook.params
            + self.post_quant_conv.params
            + self.decoder.params
    }

    /// Encoding: encoder + `quant_conv`.
    pub fn encode_flops(&self) -> f64 {
        self.encoder.flops + self.quant_conv.flops
    }

    /// Decoding: `post_quant_conv` + decoder.
    pub fn decode_flops(&self) -> f64 {
        self.post_quant_conv.flops + self.decoder.flops
    }
}

impl fmt::Display for AeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| part | parameters | GFLOP per {}x{} image |", self.height, self.width)?;
        writeln!(f, "|---|---:|---:|")?;
        for (name, c) in [
            ("encoder", self.encoder),
            ("quant_conv", self.quant_conv),
            ("codebook", self.codebook),
            ("post_quant_conv", self.post_quant_conv),
            ("decoder", self.decoder),
        ] {
            writeln!(f, "| {name} | {} | {:.3} |", c.params, c.flops / 1e9)?;
        }
        writeln!(
            f,
            "| total | {} | encode {:.3}, decode {:.3} |",
            self.total_params(),
            self.encode_flops() / 1e9,
            self.decode_flops() / 1e9
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_counts_and_flops() {
        // Counts: ../shared/docs/official-architectures.md §2 (vq-f4: 55,322,782 = encoder
        // 22,337,411 + decoder 32,960,771 + codebook 8192 x 3 + 12 + 12), and diffusers 0.42.1's
        // VQModel / AutoencoderKL built with the LDM configs and counted by named_parameters()
        // (kl-f4 encoder 22,351,238 + quant_conv 42; kl-f8 83,653,863 in all).
        let r = AutoencoderConfig::preset("vq-f4").unwrap().report(256, 256);
        assert_eq!((r.encoder.params, r.decoder.params, r.codebook.params), (22_337_411, 32_960_771, 24_576));
        assert_eq!((r.quant_conv.params, r.post_quant_conv.params, r.total_params()), (12, 12, 55_322_782));
        // GFLOPs: the same document's "encode 345 GFLOP, decode 671 GFLOP" per 256x256 image; the
        // unrounded values 345.237 / 670.581 come from a Python transcription of the layout
        // (2 x MACs of every conv + the two 4096 x 4096 x 512 attention products).
        assert!((r.encode_flops() / 1e9 - 345.237430272).abs() < 1e-6, "{}", r.encode_flops());
        assert!((r.decode_flops() / 1e9 - 670.581202944).abs() < 1e-6, "{}", r.decode_flops());
        let kl4 = AutoencoderConfig::preset("kl-f4").unwrap().report(256, 256);
        assert_eq!((kl4.encoder.params, kl4.quant_conv.params, kl4.total_params()), (22_351_238, 42, 55_312_063));
        let kl8 = AutoencoderConfig::preset("kl-f8").unwrap().report(256, 256);
        assert_eq!((kl8.encoder.params, kl8.decoder.params, kl8.total_params()), (34_163_592, 49_490_179, 83_653_863));
    }

    #[test]
    fn shapes_and_validation() {
        let c = AutoencoderConfig::preset("kl-f8").unwrap();
        assert_eq!(c.latent_shape([3, 64, 48]).unwrap(), [4, 8, 6]);
        let e = c.latent_shape([3, 64, 50]).unwrap_err().to_string();
        assert!(e.contains("64x50") && e.contains("multiples of 8"), "{e}");
        assert!(c.latent_shape([1, 64, 64]).unwrap_err().to_string().contains("1 channel"));
        let bad = AutoencoderConfig { ch: 48, ..c.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("norm_groups"));
        let bad = AutoencoderConfig { attn_levels: vec![4], ..c.clone() };
        assert!(bad.validate().unwrap_err().to_string().contains("attn_levels"));
        let bad = AutoencoderConfig { quant_conv: false, embed_dim: 3, ..c };
        assert!(bad.validate().unwrap_err().to_string().contains("quant_conv"));
        assert!(AutoencoderConfig::preset("vq-f5").unwrap_err().to_string().contains("vq-f4"));
        for p in PRESETS {
            AutoencoderConfig::preset(p).unwrap();
        }
    }
}

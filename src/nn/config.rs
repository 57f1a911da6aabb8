//! [`UNetConfig`]: the layout of a (multi-decoder) U-Net, its validation and the presets.
//!
//! One config describes all three architectures the project compares:
//! - **multistage**: one shared encoder + time embedding, one decoder per stage
//!   (`decoder_channels.len()` stages);
//! - **unified**: the same with one decoder (`decoder_channels = [d]`);
//! - **separate**: one complete U-Net per stage (its own embedding, encoder and decoder), nothing
//!   shared.
//!
//! The default is the paper's CIFAR-10 multistage model (score_sde NCSN++ "deep" layout, the
//! official `cifar10_ncsnpp_multistage_deep_continuous_v2` config); see
//! `docs/METHOD.md` §4.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

/// Resampling filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resample {
    /// FIR kernel [1,3,3,1] (separable, normalised), as StyleGAN2 / score_sde `upfirdn2d`:
    /// down = depthwise 4x4 filter with stride 2; up = zero-insertion + 4x4 filter (x4 gain).
    Fir,
    /// Plain: 2x2 average pooling down, nearest-neighbour up.
    Plain,
}

/// What performs the up/down sampling between levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResampleWith {
    /// A BigGAN residual block that resamples inside (NCSN++ / DDPM++ `resblock_type = biggan`).
    Resblock,
    /// A stand-alone layer: filter + 3x3 conv (DDPM `Downsample/Upsample(with_conv=True)`).
    /// With `Plain`, down is a stride-2 3x3 conv (pad 1) and up is nearest + 3x3 conv.
    Conv,
}

/// Where the decoder applies attention at an attention resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderAttn {
    /// Once per level, after its residual blocks (NCSN++).
    Level,
    /// After every residual block (DDPM / DDPM++ `ddpm.py`).
    Block,
}

/// The network family: the layer conventions and layout a [`UNetConfig`] describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// score_sde's NCSN++ / DDPM++ (`src/nn/unet.rs`): the paper's VP / DPM-Solver system.
    /// A configuration without a `family` key is this one.
    #[default]
    Ncsnpp,
    /// EDM's DDPM++ (`SongUNet`, `src/nn/ddpmpp/`): the paper's EDM system (docs/EDM.md). Of the
    /// layout switches only `resample` applies (`plain` = EDM's [1,1] filter, `fir` = [1,3,3,1]);
    /// `resample_with`, `decoder_attn`, `input_pyramid`, `skip_rescale` and `init_scale` are
    /// NCSN++'s and are ignored.
    Ddpmpp,
    /// LDM's ADM / openaimodel U-Net (`src/nn/adm/`): the paper's latent-diffusion system
    /// (docs/LATENT.md §6). Conv resampling, attention after every block of an attention side with
    /// `head_channels`-wide heads, GroupNorm with exactly `norm_max_groups` groups; `resample`,
    /// `resample_with`, `decoder_attn`, `input_pyramid`, `skip_rescale` and `init_scale` are ignored.
    Adm,
}

/// Multi-decoder (shared encoder) or fully separate networks per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Shared time embedding + encoder, one decoder per stage.
    Multistage,
    /// One complete U-Net per stage (embedding, encoder, decoder), nothing shared.
    Separate,
}

/// Layout of the network. Every field has a default (the paper's CIFAR-10 multistage model), so a
/// TOML/JSON file only lists what differs. Unknown keys are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Image channels in and out. Default 3.
    pub in_channels: usize,
    /// Input height = width. Default 32. Must be divisible by `2^(levels-1)`.
    pub resolution: usize,
    /// Encoder base width (level `i` has `base_channels * channel_mult[i]` channels); the time
    /// embedding MLP is `4 * base_channels` wide. Default 128.
    pub base_channels: usize,
    /// Width multiplier per level, finest first. Default `[1, 2, 2, 2]`.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level in the encoder (the decoder has one more per level). Default 8.
    pub num_res_blocks: usize,
    /// Resolutions (side length) at which attention is applied. Default `[16]`.
    pub attn_resolutions: Vec<usize>,
    /// Dropout inside residual blocks (training only). Default 0.1.
    pub dropout: f64,
    /// Resampling filter. Default `fir`.
    pub resample: Resample,
    /// What resamples between levels. Default `resblock`.
    pub resample_with: ResampleWith,
    /// Decoder attention placement. Default `level`.
    pub decoder_attn: DecoderAttn,
    /// NCSN++ residual input pyramid: the image, downsampled and mapped by a 3x3 conv to the
    /// level's width, is added after each down step. Default true.
    pub input_pyramid: bool,
    /// Residual and attention outputs are `(skip + h) / sqrt(2)` instead of `skip + h`. Default true.
    pub skip_rescale: bool,
    /// Sinusoidal embedding dimension; `None` means `base_channels`. Default `None`.
    pub embedding_dim: Option<usize>,
    /// Decoder base width per stage (stage 0 is nearest the data). One entry = unified model.
    /// Default `[192, 128, 16]`.
    pub decoder_channels: Vec<usize>,
    /// Default `multistage`.
    pub architecture: Architecture,
    /// GroupNorm uses `min(C / 4, norm_max_groups)` groups. score_sde uses 32; the official
    /// multistage code (and docs/METHOD.md §4) use 16. Parameter counts do not depend on it. Default 16.
    pub norm_max_groups: usize,
    /// GroupNorm epsilon. Default 1e-6.
    pub norm_eps: f64,
    /// Scale of the variance-scaling init of the "last" layers (second conv of each residual
    /// block, attention output, output conv); 0 means 1e-10 as in score_sde. Default 0.
    pub init_scale: f64,
    /// Network family. Default `ncsnpp` (so every configuration written before families existed
    /// keeps its meaning).
    pub family: Family,
    /// Width of the augmentation-label input (EDM's `augment_dim`: 9 for EDM's CIFAR-10
    /// pipeline, 0 = none). `ddpmpp` only. Default 0.
    pub augment_dim: usize,
    /// Channels per attention head (`adm` only: the official `num_head_channels`, 32; heads =
    /// width / head_channels). Default 32.
    pub head_channels: usize,
    /// `adm` multistage only: attention blocks in decoder 0 only, reproducing the official
    /// multi-stage LDM code (its decoder loop never resets the resolution counter). Default false.
    pub attn_first_decoder_only: bool,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            resolution: 32,
            base_channels: 128,
            channel_mult: vec![1, 2, 2, 2],
            num_res_blocks: 8,
            attn_resolutions: vec![16],
            dropout: 0.1,
            resample: Resample::Fir,
            resample_with: ResampleWith::Resblock,
            decoder_attn: DecoderAttn::Level,
            input_pyramid: true,
            skip_rescale: true,
            embedding_dim: None,
            decoder_channels: vec![192, 128, 16],
            architecture: Architecture::Multistage,
            norm_max_groups: 16,
            norm_eps: 1e-6,
            init_scale: 0.0,
            family: Family::Ncsnpp,
            augment_dim: 0,
            head_channels: 32,
            attn_first_decoder_only: false,
        }
    }
}

/// Names accepted by [`UNetConfig::preset`].
pub const PRESETS: &[&str] = &[
    "cifar10-multistage",
    "cifar10-unified",
    "cifar10-separate",
    "reference-6.5m",
    "tiny",
    "small-multistage",
    "small-unified",
    "small-separate",
    "small-multistage-lite",
];

/// Every preset name: NCSN++ ([`PRESETS`]), EDM's DDPM++ ([`super::ddpmpp::PRESETS`]) and LDM's
/// ADM ([`super::adm::PRESETS`]).
pub fn all_presets() -> Vec<&'static str> {
    PRESETS.iter().chain(super::ddpmpp::PRESETS).chain(super::adm::PRESETS).copied().collect()
}

impl UNetConfig {
    /// A named preset (see [`PRESETS`]). Resolution / channels can be overridden afterwards.
    ///
    /// - `cifar10-multistage`: the paper's model (docs/METHOD.md §4): encoder 128, decoders
    ///   192/128/16, mult 1,2,2,2, 8 blocks, attention at 16, FIR, input pyramid; 237,169,337
    ///   parameters stored.
    /// - `cifar10-unified`: the same with one 128 decoder (NCSN++ deep, 107,521,411).
    /// - `cifar10-separate`: three full NCSN++ nets with decoders 192/128/16 (324,134,585).
    /// - `reference-6.5m`: score_sde DDPM++ (`ddpm.py`) layout at width 64, mult 1,2,2, 2 blocks,
    ///   attention after every block at 16, conv resampling with plain filters, no pyramid:
    ///   6,472,195 parameters (the "6.47 M" reference U-Net of the benchmarks).
    /// - `tiny`: 1x16x16, width 16, mult 1,2, 1 block, attention at 8, decoders 24/16/8 (tests).
    /// - `small-*`: 1x28x28 (MNIST-like), width 32, mult 1,2,2, 2 blocks, attention at 7, plain
    ///   filters, BigGAN resampling blocks, no pyramid, dropout 0.1; decoders 48/32/16 (multistage,
    ///   separate) or 32 (unified).
    /// - `small-multistage-lite`: the `small` layout with decoders 32/24/16: the unified model's
    ///   width near the data and narrower decoders for the noisier stages, so sampling costs less
    ///   than with the unified model.
    ///
    /// EDM's DDPM++ presets ([`super::ddpmpp::PRESETS`]) and LDM's ADM presets
    /// ([`super::adm::PRESETS`]) are accepted too: see [`super::ddpmpp::preset`] and
    /// [`super::adm::preset`].
    pub fn preset(name: &str) -> Result<Self> {
        if super::ddpmpp::PRESETS.contains(&name) {
            return super::ddpmpp::preset(name);
        }
        if super::adm::PRESETS.contains(&name) {
            return super::adm::preset(name);
        }
        let paper = Self::default();
        let small = Self {
            in_channels: 1,
            resolution: 28,
            base_channels: 32,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![7],
            dropout: 0.1,
            resample: Resample::Plain,
            resample_with: ResampleWith::Resblock,
            decoder_attn: DecoderAttn::Level,
            input_pyramid: false,
            skip_rescale: true,
            embedding_dim: None,
            decoder_channels: vec![48, 32, 16],
            architecture: Architecture::Multistage,
            norm_max_groups: 32,
            norm_eps: 1e-6,
            init_scale: 0.0,
            family: Family::Ncsnpp,
            augment_dim: 0,
            head_channels: 32,
            attn_first_decoder_only: false,
        };
        let cfg = match name {
            "cifar10-multistage" => paper,
            "cifar10-unified" => Self { decoder_channels: vec![128], ..paper },
            "cifar10-separate" => Self { architecture: Architecture::Separate, ..paper },
            "reference-6.5m" => Self {
                base_channels: 64,
                channel_mult: vec![1, 2, 2],
                num_res_blocks: 2,
                attn_resolutions: vec![16],
                resample: Resample::Plain,
                resample_with: ResampleWith::Conv,
                decoder_attn: DecoderAttn::Block,
                input_pyramid: false,
                decoder_channels: vec![64],
                norm_max_groups: 32,
                ..paper
            },
            "tiny" => Self {
                in_channels: 1,
                resolution: 16,
                base_channels: 16,
                channel_mult: vec![1, 2],
                num_res_blocks: 1,
                attn_resolutions: vec![8],
                decoder_channels: vec![24, 16, 8],
                ..small.clone()
            },
            "small-multistage-lite" => Self { decoder_channels: vec![32, 24, 16], ..small },
            "small-multistage" => small,
            "small-unified" => Self { decoder_channels: vec![32], ..small },
            "small-separate" => Self { architecture: Architecture::Separate, ..small },
            _ => bail!("unknown network preset {name:?}; known: {}", all_presets().join(", ")),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Number of stages (= decoders).
    pub fn num_stages(&self) -> usize {
        self.decoder_channels.len()
    }

    /// Number of resolution levels.
    pub fn num_levels(&self) -> usize {
        self.channel_mult.len()
    }

    /// Sinusoidal embedding dimension.
    pub fn embed_dim(&self) -> usize {
        self.embedding_dim.unwrap_or(self.base_channels)
    }

    /// Width of the time-embedding MLP (input of every block's projection).
    pub fn temb_dim(&self) -> usize {
        4 * self.base_channels
    }

    /// Side length at level `i`.
    pub fn level_resolution(&self, level: usize) -> usize {
        self.resolution >> level
    }

    /// GroupNorm group count for `c` channels: `min(c / 4, norm_max_groups)` (`adm`: always
    /// `norm_max_groups`, the official GroupNorm32).
    pub fn groups(&self, c: usize) -> usize {
        match self.family {
            Family::Adm => self.norm_max_groups,
            _ => (c / 4).min(self.norm_max_groups),
        }
    }

    /// Channel widths of the encoder skip activations, in push order (the decoder pops them).
    pub fn skip_channels(&self) -> Vec<usize> {
        let mut hs = vec![self.base_channels];
        let levels = self.num_levels();
        for (i, m) in self.channel_mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                hs.push(self.base_channels * m);
            }
            if i + 1 != levels {
                hs.push(self.base_channels * m);
            }
        }
        hs
    }

    /// Every channel count a GroupNorm is applied to, for stage decoder `d` (and the encoder).
    fn norm_widths(&self) -> Vec<usize> {
        if self.family == Family::Ddpmpp {
            return super::ddpmpp::norm_widths(self);
        }
        let mut w = Vec::new();
        let e = self.base_channels;
        let mut c = e;
        for m in &self.channel_mult {
            w.push(c);
            c = e * m;
            w.push(c);
        }
        let bottleneck = c;
        for &d in &self.decoder_channels {
            let mut hs = self.skip_channels();
            let mut c = bottleneck;
            for m in self.channel_mult.iter().rev() {
                for _ in 0..=self.num_res_blocks {
                    w.push(c + hs.pop().unwrap_or(0));
                    c = d * m;
                    w.push(c);
                }
            }
        }
        w
    }

    /// Checks the layout; errors name the offending field and value.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.in_channels > 0, "in_channels must be > 0");
        ensure!(self.base_channels > 0, "base_channels must be > 0");
        ensure!(!self.channel_mult.is_empty(), "channel_mult must not be empty");
        ensure!(
            self.channel_mult.iter().all(|&m| m > 0),
            "channel_mult entries must be > 0, got {:?}",
            self.channel_mult
        );
        ensure!(self.num_res_blocks > 0, "num_res_blocks must be > 0");
        ensure!(!self.decoder_channels.is_empty(), "decoder_channels must have one entry per stage (>= 1)");
        ensure!(
            self.decoder_channels.iter().all(|&d| d > 0),
            "decoder_channels entries must be > 0, got {:?}",
            self.decoder_channels
        );
        ensure!((0.0..1.0).contains(&self.dropout), "dropout must be in [0, 1), got {}", self.dropout);
        ensure!(self.norm_max_groups > 0, "norm_max_groups must be > 0");
        ensure!(self.norm_eps > 0.0, "norm_eps must be > 0");
        ensure!(self.init_scale >= 0.0, "init_scale must be >= 0");
        ensure!(
            self.family == Family::Ddpmpp || self.augment_dim == 0,
            "augment_dim applies to family = \"ddpmpp\" (EDM's network) only, got {} for ncsnpp",
            self.augment_dim
        );
        let e = self.embed_dim();
        ensure!(
            e >= 4 && e % 2 == 0,
            "the time embedding width must be even and >= 4, got {e} ({}); set an even embedding_dim or base_channels",
            if self.embedding_dim.is_some() { "embedding_dim" } else { "base_channels, as embedding_dim is not set" }
        );
        let down = 1usize << (self.num_levels() - 1);
        ensure!(
            self.resolution > 0 && self.resolution % down == 0,
            "resolution {} is not divisible by 2^(levels-1) = {down} (channel_mult has {} levels)",
            self.resolution,
            self.num_levels()
        );
        let reachable: Vec<usize> = (0..self.num_levels()).map(|i| self.level_resolution(i)).collect();
        for r in &self.attn_resolutions {
            ensure!(
                reachable.contains(r),
                "attention resolution {r} is not reachable; level resolutions are {reachable:?}"
            );
        }
        if self.family == Family::Adm {
            return super::adm::validate(self);
        }
        for c in self.norm_widths() {
            let g = self.groups(c);
            ensure!(
                g > 0 && c % g == 0,
                "GroupNorm width {c} is not divisible by its group count min({c}/4, {}) = {g} \
                 (check base_channels, decoder_channels, channel_mult)",
                self.norm_max_groups
            );
        }
        Ok(())
    }
}

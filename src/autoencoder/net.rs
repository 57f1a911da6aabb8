//! The encoder, the decoder and the whole autoencoder network (LDM `Encoder`, `Decoder`,
//! `AutoencoderKL` / `VQModel`), with LDM's variable names:
//!
//! ```text
//! encoder.conv_in  encoder.down.{i}.block.{j}.*  encoder.down.{i}.attn.{j}.*  encoder.down.{i}.downsample.conv
//! encoder.mid.block_1  encoder.mid.attn_1  encoder.mid.block_2  encoder.norm_out  encoder.conv_out
//! quant_conv  quantize.embedding.weight (VQ)  post_quant_conv
//! decoder.conv_in  decoder.mid.*  decoder.up.{i}.block.{j}.*  decoder.up.{i}.attn.{j}.*  decoder.up.{i}.upsample.conv
//! decoder.norm_out  decoder.conv_out
//! ```
//! (`up.{i}` is level `i`, run from the deepest: LDM's order, the reverse of diffusers' `up_blocks`.)
use super::blocks::{torch_conv, AttnBlock, AttnBlockConfig, Downsample, ResnetBlock, ResnetBlockConfig, Upsample};
use super::bottleneck::{Gaussian, Quantized, VectorQuantizer};
use super::config::{AutoencoderConfig, Bottleneck};
use crate::nn::layers::{Conv2d, Conv2dConfig, GroupNorm, GroupNormConfig};
use crate::rng::Rng;
use anyhow::{bail, ensure, Result};
use tch::nn::Path;
use tch::Tensor;

/// One resolution level: residual blocks, their attention blocks (if any), the resampler.
#[derive(Debug)]
struct Level {
    blocks: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
}

impl Level {
    fn new(
        p: &Path,
        cfg: &AutoencoderConfig,
        n: usize,
        mut c: usize,
        out: usize,
        attention: bool,
        rng: &mut Rng,
    ) -> (Level, usize) {
        let (mut blocks, mut attn) = (Vec::new(), Vec::new());
        for j in 0..n {
            let rb =
                ResnetBlockConfig { in_channels: c, out_channels: out, groups: cfg.norm_groups, eps: cfg.norm_eps };
            blocks.push(ResnetBlock::new(&(p / "block" / j), rb, rng));
            c = out;
            if attention {
                attn.push(AttnBlock::new(
                    &(p / "attn" / j),
                    AttnBlockConfig { channels: c, groups: cfg.norm_groups, eps: cfg.norm_eps },
                    rng,
                ));
            }
        }
        (Level { blocks, attn }, c)
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for (j, b) in self.blocks.iter().enumerate() {
            h = b.forward(&h);
            if let Some(a) = self.attn.get(j) {
                h = a.forward(&h);
            }
        }
        h
    }
}

/// Res-Attn-Res (or Res-Res) at the deepest level. Variables: `block_1`, [`attn_1`], `block_2`.
#[derive(Debug)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: Option<AttnBlock>,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(p: &Path, cfg: &AutoencoderConfig, c: usize, rng: &mut Rng) -> Mid {
        let rb = ResnetBlockConfig { in_channels: c, out_channels: c, groups: cfg.norm_groups, eps: cfg.norm_eps };
        let ab = AttnBlockConfig { channels: c, groups: cfg.norm_groups, eps: cfg.norm_eps };
        let block_1 = ResnetBlock::new(&(p / "block_1"), rb, rng);
        let attn_1 = cfg.mid_attention.then(|| AttnBlock::new(&(p / "attn_1"), ab, rng));
        Mid { block_1, attn_1, block_2: ResnetBlock::new(&(p / "block_2"), rb, rng) }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.block_1.forward(x);
        let h = match &self.attn_1 {
            Some(a) => a.forward(&h),
            None => h,
        };
        self.block_2.forward(&h)
    }
}

/// Images `[B, in_channels, H, W]` -> encoder output `[B, 2 z_channels (KL) | z_channels (VQ), H/f, W/f]`.
#[derive(Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    levels: Vec<(Level, Option<Downsample>)>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn new(p: &Path, cfg: &AutoencoderConfig, rng: &mut Rng) -> Encoder {
        let conv_in = torch_conv(&(p / "conv_in"), Conv2dConfig::same(cfg.in_channels, cfg.ch, 3), rng);
        let widths = cfg.widths();
        let mut c = cfg.ch;
        let mut levels = Vec::new();
        for (i, &w) in widths.iter().enumerate() {
            let lp = p / "down" / i;
            let (level, out) = Level::new(&lp, cfg, cfg.num_res_blocks, c, w, cfg.attn_levels.contains(&i), rng);
            c = out;
            let down = (i + 1 < widths.len()).then(|| Downsample::new(&(&lp / "downsample"), c, rng));
            levels.push((level, down));
        }
        let mid = Mid::new(&(p / "mid"), cfg, c, rng);
        Encoder {
            conv_in,
            levels,
            mid,
            norm_out: GroupNorm::new(
                &(p / "norm_out"),
                GroupNormConfig { channels: c, groups: cfg.norm_groups, eps: cfg.norm_eps },
            ),
            conv_out: torch_conv(&(p / "conv_out"), Conv2dConfig::same(c, cfg.encoder_out_channels(), 3), rng),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for (level, down) in &self.levels {
            h = level.forward(&h);
            if let Some(d) = down {
                h = d.forward(&h);
            }
        }
        h = self.mid.forward(&h);
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}

/// `[B, z_channels, h, w]` -> images `[B, out_channels, h f, w f]` (no output non-linearity).
#[derive(Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    /// Level `i` at index `i`; run from the last.
    levels: Vec<(Level, Option<Upsample>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub fn new(p: &Path, cfg: &AutoencoderConfig, rng: &mut Rng) -> Decoder {
        let widths = cfg.widths();
        let mut c = *widths.last().unwrap_or(&cfg.ch);
        let conv_in = torch_conv(&(p / "conv_in"), Conv2dConfig::same(cfg.z_channels, c, 3), rng);
        let mid = Mid::new(&(p / "mid"), cfg, c, rng);
        let mut levels: Vec<(Level, Option<Upsample>)> = Vec::new();
        for i in (0..widths.len()).rev() {
            let lp = p / "up" / i;
            let (level, out) =
                Level::new(&lp, cfg, cfg.num_res_blocks + 1, c, widths[i], cfg.attn_levels.contains(&i), rng);
            c = out;
            let up = (i > 0).then(|| Upsample::new(&(&lp / "upsample"), c, rng));
            levels.push((level, up));
        }
        levels.reverse();
        Decoder {
            conv_in,
            mid,
            levels,
            norm_out: GroupNorm::new(
                &(p / "norm_out"),
                GroupNormConfig { channels: c, groups: cfg.norm_groups, eps: cfg.norm_eps },
            ),
            conv_out: torch_conv(&(p / "conv_out"), Conv2dConfig::same(c, cfg.out_channels, 3), rng),
        }
    }

    pub fn forward(&self, z: &Tensor) -> Tensor {
        let mut h = self.mid.forward(&self.conv_in.forward(z));
        for (level, up) in self.levels.iter().rev() {
            h = level.forward(&h);
            if let Some(u) = up {
                h = u.forward(&h);
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }

    /// The weight of the last layer (`conv_out`): taming's adaptive GAN weight compares gradients there.
    pub fn last_layer(&self) -> &Tensor {
        &self.conv_out.weight
    }
}

const INIT_STREAM: u64 = 0xAE00_0000_0000_0001;

/// The autoencoder network. Latents are what the bottleneck works on (`embed_dim` channels): KL
/// samples or means, VQ pre-quantisation vectors (snapped by [`Autoencoder::quantize`]).
#[derive(Debug)]
pub struct Autoencoder {
    pub cfg: AutoencoderConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    quantizer: Option<VectorQuantizer>,
}

impl Autoencoder {
    /// Build under `p`, initialised from `seed` alone (msdiff's [`Rng`], in construction order:
    /// encoder, quant_conv, codebook, post_quant_conv, decoder).
    pub fn new(p: &Path, cfg: &AutoencoderConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = Rng::stream(seed ^ INIT_STREAM, 0);
        let encoder = Encoder::new(&(p / "encoder"), cfg, &mut rng);
        let quant_conv = cfg.quant_conv.then(|| {
            torch_conv(
                &(p / "quant_conv"),
                Conv2dConfig::same(cfg.encoder_out_channels(), cfg.moments_channels(), 1),
                &mut rng,
            )
        });
        let quantizer = (cfg.bottleneck == Bottleneck::Vq)
            .then(|| VectorQuantizer::new(&(p / "quantize"), cfg.n_embed, cfg.embed_dim, &mut rng));
        let post_quant_conv = cfg.post_quant_conv.then(|| {
            torch_conv(&(p / "post_quant_conv"), Conv2dConfig::same(cfg.embed_dim, cfg.z_channels, 1), &mut rng)
        });
        let decoder = Decoder::new(&(p / "decoder"), cfg, &mut rng);
        Ok(Autoencoder { cfg: cfg.clone(), encoder, decoder, quant_conv, post_quant_conv, quantizer })
    }

    /// Check that `x` is `[B, in_channels, H, W]` with H, W multiples of the downsampling factor.
    pub fn check_images(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        ensure!(s.len() == 4, "images must be [N, C, H, W], got shape {s:?}");
        self.cfg.latent_shape([s[1], s[2], s[3]]).map(|_| ())
    }

    /// Check that `z` is `[B, embed_dim, h, w]`.
    pub fn check_latents(&self, z: &Tensor) -> Result<()> {
        let s = z.size();
        ensure!(
            s.len() == 4 && s[1] == self.cfg.embed_dim as i64 && s[2] > 0 && s[3] > 0,
            "latents must be [N, {}, h, w] for this autoencoder, got shape {s:?}",
            self.cfg.embed_dim
        );
        Ok(())
    }

    /// The bottleneck's input: encoder then `quant_conv`. KL: moments `[B, 2E, h, w]`; VQ: the
    /// pre-quantisation latent `[B, E, h, w]`.
    pub fn moments(&self, x: &Tensor) -> Result<Tensor> {
        self.check_images(x)?;
        let h = self.encoder.forward(x);
        Ok(match &self.quant_conv {
            Some(c) => c.forward(&h),
            None => h,
        })
    }

    /// KL: the posterior of `x`. Error for a VQ autoencoder.
    pub fn posterior(&self, x: &Tensor) -> Result<Gaussian> {
        if self.cfg.bottleneck != Bottleneck::Kl {
            bail!("a VQ autoencoder has no Gaussian posterior");
        }
        Ok(Gaussian::new(&self.moments(x)?))
    }

    /// VQ: the codebook. `None` for KL.
    pub fn quantizer(&self) -> Option<&VectorQuantizer> {
        self.quantizer.as_ref()
    }

    /// VQ: snap latents to the codebook. Error for a KL autoencoder.
    pub fn quantize(&self, z: &Tensor) -> Result<Quantized> {
        match &self.quantizer {
            Some(q) => {
                self.check_latents(z)?;
                q.quantize(z)
            }
            None => bail!("a KL autoencoder has no codebook (quantisation is for VQ autoencoders)"),
        }
    }

    /// Latents `[B, embed_dim, h, w]` -> images: `post_quant_conv` then the decoder (no quantisation
    /// here; VQ callers snap first, see [`Autoencoder::quantize`]).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latents(z)?;
        let h = match &self.post_quant_conv {
            Some(c) => c.forward(z),
            None => z.shallow_clone(),
        };
        Ok(self.decoder.forward(&h))
    }
}

//! The ADM (openaimodel) U-Net of latent diffusion, split into a shared encoder and per-stage
//! decoders exactly as the paper's LDM system (the multi-stage authors' `UNetModel_multistage`;
//! docs/METHOD.md §11, docs/LATENT.md §6).
//!
//! Layout, for a [`UNetConfig`] with `family = "adm"` (`base_channels` = the official
//! `model_channels`, `attn_resolutions` as side lengths: the official downsample factors 8, 4, 2
//! on 64x64 latents are sides 8, 16, 32):
//! - **shared**: `time_embed.{0,2}` (the `[cos, sin]` embedding of the step, width `base`, ->
//!   Linear -> SiLU -> Linear, width `4 base`); `input_blocks.0.0` (3x3 conv C -> base); per level
//!   `num_res_blocks` blocks `input_blocks.k` = ResBlock `.0` to `base * mult` (+ attention `.1` at
//!   an attention side), then (not after the last level) `input_blocks.k.0.op`, a stride-2 3x3
//!   conv; every input block's output is a skip; `middle_block.{0,1,2}` = Res, attention, Res.
//! - **decoder j** `de_modules.{j}` of width `d_j`: per level from the coarsest, `num_res_blocks +
//!   1` output blocks, each a ResBlock `.0` on `cat[h, skip]` to `d_j * mult` (+ attention `.1` at
//!   an attention side), the last of a level (except the finest) followed by `.{1|2}.conv`
//!   (nearest x2, 3x3 conv); the head `outs.{j}.0` GroupNorm, SiLU, `outs.{j}.2` zero-initialised
//!   3x3 conv -> C.
//! - **the official quirk** (`attn_first_decoder_only = true`): the official decoder loop never
//!   resets its resolution counter between stages, so only decoder 0 has attention blocks;
//!   `celebahq-ldm-multistage` reproduces it (its counts and checkpoints need it),
//!   `celebahq-ldm-multistage-attn` gives every decoder its attention.
//! - **separate**: one complete official `UNetModel` per stage under `nets.{j}.` (`time_embed`,
//!   `input_blocks`, `middle_block`, `output_blocks`, `out`).
//!
//! The names are the official state-dict names without LDM's `model.diffusion_model.` prefix;
//! a unified official `UNetModel` (`output_blocks.*`, `out.*`) maps onto decoder 0
//! ([`msdiff_name`]). The noise label is the discrete DDPM step n as a float (the process's
//! `noise_label`, `N t - 1`). Routing is per sample as in the other families: the shared part
//! runs once, decoder j on its samples only, a decoder without samples is not run.

pub mod layers;
pub mod report;

use anyhow::{bail, ensure, Result};
use tch::nn::Path;
use tch::{Kind, Tensor};

use self::layers::{conv, timestep_embedding, AttentionBlock, AttentionConfig, Linear, ResBlock, ResBlockConfig};
use super::config::{Architecture, DecoderAttn, Family, Resample, ResampleWith, UNetConfig};
use super::layers::{upsample, Conv2d, GroupNorm, GroupNormConfig};

/// ADM presets, accepted by [`UNetConfig::preset`].
pub const PRESETS: &[&str] = &[
    "celebahq-ldm-multistage",
    "celebahq-ldm-multistage-attn",
    "celebahq-ldm-unified",
    "celebahq-ldm-separate",
    "small-ldm-multistage",
    "small-ldm-unified",
    "tiny-ldm",
];

/// An ADM preset (see [`PRESETS`]):
/// - `celebahq-ldm-multistage`: the paper's LDM model (the official
///   `celebahq-ldm-vq-4_multistage224-256-192-128.yaml`): 3x64x64 latents, encoder 224, decoders
///   256 / 192 / 128, channel_mult (1, 2, 3, 4), 2 blocks, attention at sides 32 / 16 / 8 with
///   32-channel heads, the official quirk (attention in decoder 0 only); 493,841,449 parameters
///   stored, 315,967,139 / 223,829,923 / 169,867,939 per stage, 240.9 / 156.4 / 106.8 GFLOP;
/// - `celebahq-ldm-multistage-attn`: the same with attention in every decoder (512,423,593
///   stored; 315,967,139 / 236,689,699 / 175,590,307 per stage; 240.9 / 168.3 / 113.3 GFLOP);
/// - `celebahq-ldm-unified`: LDM's own CelebA-HQ U-Net (`celebahq-ldm-vq-4.yaml`, one 224
///   decoder): 274,056,163 parameters, 202.4 GFLOP;
/// - `celebahq-ldm-separate`: three complete U-Nets with decoders 256 / 192 / 128;
/// - `small-ldm-multistage`, `small-ldm-unified`: CPU scale for 4x8x8 latents (a `small-kl-f4`
///   autoencoder on 32x32 images): base 32, channel_mult (1, 2, 2), 2 blocks, attention at side 4
///   with 8-channel heads, GroupNorm 8 groups; decoders 40 / 32 / 24 (the paper's 256 / 192 / 128
///   around an encoder of 224, scaled) with the official quirk, or one decoder of 32;
/// - `tiny-ldm`: 3x16x16, base 32, channel_mult (1, 2), 1 block, attention at side 8, decoders
///   64 / 32 / 32, the quirk (tests; the configuration of `tests/fixtures/adm-unet-reference.json`).
pub fn preset(name: &str) -> Result<UNetConfig> {
    let ldm = UNetConfig {
        in_channels: 3,
        resolution: 64,
        base_channels: 224,
        channel_mult: vec![1, 2, 3, 4],
        num_res_blocks: 2,
        attn_resolutions: vec![32, 16, 8],
        dropout: 0.0,
        resample: Resample::Plain,
        resample_with: ResampleWith::Conv,
        decoder_attn: DecoderAttn::Block,
        input_pyramid: false,
        skip_rescale: false,
        embedding_dim: None,
        decoder_channels: vec![256, 192, 128],
        architecture: Architecture::Multistage,
        norm_max_groups: 32,
        norm_eps: 1e-5,
        init_scale: 0.0,
        family: Family::Adm,
        augment_dim: 0,
        head_channels: 32,
        attn_first_decoder_only: true,
    };
    let small = UNetConfig {
        in_channels: 4,
        resolution: 8,
        base_channels: 32,
        channel_mult: vec![1, 2, 2],
        num_res_blocks: 2,
        attn_resolutions: vec![4],
        decoder_channels: vec![40, 32, 24],
        norm_max_groups: 8,
        head_channels: 8,
        ..ldm.clone()
    };
    let cfg = match name {
        "celebahq-ldm-multistage" => ldm,
        "celebahq-ldm-multistage-attn" => UNetConfig { attn_first_decoder_only: false, ..ldm },
        "celebahq-ldm-unified" => UNetConfig { decoder_channels: vec![224], ..ldm },
        "celebahq-ldm-separate" => {
            UNetConfig { architecture: Architecture::Separate, attn_first_decoder_only: false, ..ldm }
        }
        "small-ldm-multistage" => small,
        "small-ldm-unified" => UNetConfig { decoder_channels: vec![32], ..small },
        "tiny-ldm" => UNetConfig {
            resolution: 16,
            base_channels: 32,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            decoder_channels: vec![64, 32, 32],
            ..ldm
        },
        _ => bail!("unknown LDM preset {name:?}; known: {}", PRESETS.join(", ")),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// An official state-dict name as msdiff names it: LDM's `model.diffusion_model.` (or
/// `diffusion_model.`) prefix stripped, and a unified `UNetModel`'s decoder (`output_blocks.*`,
/// `out.*`) mapped onto decoder 0 (`de_modules.0.*`, `outs.0.*`). Other names are unchanged.
pub fn msdiff_name(official: &str) -> String {
    let n = official.strip_prefix("model.").unwrap_or(official);
    let n = n.strip_prefix("diffusion_model.").unwrap_or(n);
    if let Some(rest) = n.strip_prefix("output_blocks.") {
        format!("de_modules.0.{rest}")
    } else if let Some(rest) = n.strip_prefix("out.") {
        format!("outs.0.{rest}")
    } else {
        n.to_string()
    }
}

/// Widths of the input blocks' outputs (the skips), in push order (the official `input_block_chans`).
pub fn skip_channels(cfg: &UNetConfig) -> Vec<usize> {
    let mut hs = vec![cfg.base_channels];
    let mut c = cfg.base_channels;
    let nl = cfg.num_levels();
    for (i, m) in cfg.channel_mult.iter().enumerate() {
        for _ in 0..cfg.num_res_blocks {
            c = cfg.base_channels * m;
            hs.push(c);
        }
        if i + 1 != nl {
            hs.push(c);
        }
    }
    hs
}

/// Whether stage `j`'s decoder has attention blocks (the official quirk: only decoder 0 of a
/// multi-stage network).
pub fn decoder_has_attention(cfg: &UNetConfig, j: usize) -> bool {
    !(cfg.attn_first_decoder_only && cfg.architecture == Architecture::Multistage && j > 0)
}

/// Every width a GroupNorm sees (`in_norm` and `out_norm` of every block, attention, head), and
/// every width an attention block sees, for validation.
pub fn norm_and_attention_widths(cfg: &UNetConfig) -> (Vec<usize>, Vec<usize>) {
    let (mut norms, mut attn) = (Vec::new(), Vec::new());
    let mut c = cfg.base_channels;
    for (i, m) in cfg.channel_mult.iter().enumerate() {
        let a = cfg.attn_resolutions.contains(&cfg.level_resolution(i));
        for _ in 0..cfg.num_res_blocks {
            let o = cfg.base_channels * m;
            norms.extend([c, o]);
            if a {
                attn.push(o);
            }
            c = o;
        }
    }
    let bottleneck = c;
    norms.push(c);
    attn.push(c);
    for (j, &d) in cfg.decoder_channels.iter().enumerate() {
        let mut skips = skip_channels(cfg);
        let mut c = bottleneck;
        for i in (0..cfg.num_levels()).rev() {
            let a = decoder_has_attention(cfg, j) && cfg.attn_resolutions.contains(&cfg.level_resolution(i));
            for _ in 0..=cfg.num_res_blocks {
                let cin = c + skips.pop().unwrap_or(0);
                c = d * cfg.channel_mult[i];
                norms.extend([cin, c]);
                if a {
                    attn.push(c);
                }
            }
        }
    }
    (norms, attn)
}

/// Checks what the ADM layout needs beyond [`UNetConfig::validate`]'s common checks.
pub fn validate(cfg: &UNetConfig) -> Result<()> {
    ensure!(cfg.head_channels > 0, "head_channels must be > 0 for family = \"adm\" (the official LDM uses 32)");
    ensure!(cfg.augment_dim == 0, "augment_dim applies to family = \"ddpmpp\" only, got {}", cfg.augment_dim);
    let (norms, attn) = norm_and_attention_widths(cfg);
    let g = cfg.norm_max_groups;
    if let Some(c) = norms.iter().find(|&&c| c % g != 0) {
        bail!(
            "GroupNorm width {c} is not divisible by norm_max_groups = {g} (family \"adm\" uses exactly that many groups, \
             as the official GroupNorm32); check base_channels, decoder_channels, channel_mult"
        );
    }
    if let Some(c) = attn.iter().find(|&&c| c % cfg.head_channels != 0) {
        bail!(
            "attention width {c} is not divisible by head_channels = {} (heads of head_channels channels each)",
            cfg.head_channels
        );
    }
    Ok(())
}

fn res(cfg: &UNetConfig, cin: usize, cout: usize) -> ResBlockConfig {
    ResBlockConfig {
        cin,
        cout,
        emb: cfg.temb_dim(),
        groups: cfg.norm_max_groups,
        eps: cfg.norm_eps,
        dropout: cfg.dropout,
    }
}

fn attention(cfg: &UNetConfig, c: usize) -> AttentionConfig {
    AttentionConfig { channels: c, head_channels: cfg.head_channels, groups: cfg.norm_max_groups, eps: cfg.norm_eps }
}

/// One input block: the input conv, a ResBlock (+ attention), or the stride-2 down-sampling conv.
#[derive(Debug)]
enum InputBlock {
    Conv(Conv2d),
    Res(Box<(ResBlock, Option<AttentionBlock>)>),
    Down(Conv2d),
}

/// The time embedding, the input blocks and the middle block: what every stage shares
/// (multistage) or owns (separate).
#[derive(Debug)]
pub struct Trunk {
    time0: Linear,
    time2: Linear,
    input: Vec<InputBlock>,
    middle: (ResBlock, AttentionBlock, ResBlock),
    embed_dim: usize,
}

impl Trunk {
    /// `p`: the folder holding `time_embed`, `input_blocks` and `middle_block`.
    pub fn new(p: &Path, cfg: &UNetConfig) -> Self {
        let (b, e) = (cfg.base_channels, cfg.temb_dim());
        let time0 = Linear::new(&(p / "time_embed" / 0), cfg.embed_dim(), e);
        let time2 = Linear::new(&(p / "time_embed" / 2), e, e);
        let ib = p / "input_blocks";
        let mut input = vec![InputBlock::Conv(conv(&(&ib / 0 / 0), cfg.in_channels, b, 3, 1, false))];
        let mut c = b;
        for (i, m) in cfg.channel_mult.iter().enumerate() {
            let a = cfg.attn_resolutions.contains(&cfg.level_resolution(i));
            for _ in 0..cfg.num_res_blocks {
                let k = &ib / input.len();
                let o = b * m;
                let r = ResBlock::new(&(&k / 0), res(cfg, c, o));
                input
                    .push(InputBlock::Res(Box::new((r, a.then(|| AttentionBlock::new(&(&k / 1), attention(cfg, o)))))));
                c = o;
            }
            if i + 1 != cfg.num_levels() {
                let k = &ib / input.len();
                input.push(InputBlock::Down(conv(&(&k / 0 / "op"), c, c, 3, 2, false)));
            }
        }
        let mb = p / "middle_block";
        let middle = (
            ResBlock::new(&(&mb / 0), res(cfg, c, c)),
            AttentionBlock::new(&(&mb / 1), attention(cfg, c)),
            ResBlock::new(&(&mb / 2), res(cfg, c, c)),
        );
        Trunk { time0, time2, input, middle, embed_dim: cfg.embed_dim() }
    }

    /// The kind of the weights.
    pub fn kind(&self) -> Kind {
        self.time0.weight.kind()
    }

    /// `(emb [B, 4 base], skips, h)`: the input blocks' outputs in push order and the middle
    /// block's output.
    pub fn forward(&self, x: &Tensor, noise_label: &Tensor, train: bool) -> (Tensor, Vec<Tensor>, Tensor) {
        let t = timestep_embedding(noise_label, self.embed_dim).to_kind(self.kind());
        let emb = self.time2.forward(&self.time0.forward(&t).silu());
        let mut skips: Vec<Tensor> = Vec::with_capacity(self.input.len());
        for block in &self.input {
            let h = skips.last().unwrap_or(x);
            let y = match block {
                InputBlock::Conv(c) | InputBlock::Down(c) => c.forward(h),
                InputBlock::Res(ra) => {
                    let (r, a) = &**ra;
                    let y = r.forward(h, &emb, train);
                    match a {
                        Some(a) => a.forward(&y),
                        None => y,
                    }
                }
            };
            skips.push(y);
        }
        let (r0, a, r2) = &self.middle;
        let h = skips.last().expect("input blocks");
        let h = r2.forward(&a.forward(&r0.forward(h, &emb, train)), &emb, train);
        (emb, skips, h)
    }
}

/// One output block: a ResBlock on `cat[h, skip]` (+ attention) (+ nearest x2 and a conv).
#[derive(Debug)]
struct OutputBlock {
    res: ResBlock,
    attn: Option<AttentionBlock>,
    up: Option<Conv2d>,
}

/// One stage's decoder: the output blocks and the head (see the module docs).
#[derive(Debug)]
pub struct Decoder {
    blocks: Vec<OutputBlock>,
    norm: GroupNorm,
    conv: Conv2d,
}

impl Decoder {
    /// `blocks`: the output blocks' folder (`de_modules.{j}` or `nets.{j}.output_blocks`); `head`:
    /// the head's (`outs.{j}` or `nets.{j}.out`); `d`: the base width; `attention`: whether the
    /// decoder has attention blocks at the attention sides.
    pub fn new(blocks_path: &Path, head: &Path, cfg: &UNetConfig, d: usize, attention_on: bool) -> Self {
        let mut skips = skip_channels(cfg);
        let mut c = *skips.last().expect("skips");
        let mut blocks = Vec::new();
        for i in (0..cfg.num_levels()).rev() {
            let a = attention_on && cfg.attn_resolutions.contains(&cfg.level_resolution(i));
            for b in 0..=cfg.num_res_blocks {
                let k = blocks_path / blocks.len();
                let cin = c + skips.pop().expect("skip count");
                c = d * cfg.channel_mult[i];
                let res = ResBlock::new(&(&k / 0), res(cfg, cin, c));
                let attn = a.then(|| AttentionBlock::new(&(&k / 1), attention(cfg, c)));
                let up = (i > 0 && b == cfg.num_res_blocks)
                    .then(|| conv(&(&k / (1 + usize::from(a)) / "conv"), c, c, 3, 1, false));
                blocks.push(OutputBlock { res, attn, up });
            }
        }
        let norm = GroupNorm::new(
            &(head / 0),
            GroupNormConfig { channels: c, groups: cfg.norm_max_groups, eps: cfg.norm_eps },
        );
        let conv = conv(&(head / 2), c, cfg.in_channels, 3, 1, true);
        Decoder { blocks, norm, conv }
    }

    /// `h` the middle block's output, `skips` the input blocks' outputs in push order (all
    /// consumed), `emb` -> `[B, C, R, R]`.
    pub fn forward(&self, h: &Tensor, skips: &[Tensor], emb: &Tensor, train: bool) -> Tensor {
        let mut h = h.shallow_clone();
        for (b, skip) in self.blocks.iter().zip(skips.iter().rev()) {
            h = b.res.forward(&Tensor::cat(&[&h, skip], 1), emb, train);
            if let Some(a) = &b.attn {
                h = a.forward(&h);
            }
            if let Some(up) = &b.up {
                h = up.forward(&upsample(&h, Resample::Plain));
            }
        }
        self.conv.forward(&self.norm.forward(&h).silu())
    }
}

/// The multi-stage ADM U-Net (also LDM's unified model with one decoder, and the separate baseline).
#[derive(Debug)]
pub struct AdmUNet {
    cfg: UNetConfig,
    trunks: Vec<Trunk>,
    decoders: Vec<Decoder>,
}

impl AdmUNet {
    /// Builds the variables under `vs` (names in the module docs).
    pub fn new(vs: &Path, cfg: &UNetConfig) -> Result<Self> {
        ensure!(cfg.family == Family::Adm, "AdmUNet builds family = \"adm\" configurations, got {:?}", cfg.family);
        cfg.validate()?;
        let (trunks, decoders) = match cfg.architecture {
            Architecture::Multistage => (
                vec![Trunk::new(vs, cfg)],
                cfg.decoder_channels
                    .iter()
                    .enumerate()
                    .map(|(j, &d)| {
                        Decoder::new(
                            &(vs / "de_modules" / j),
                            &(vs / "outs" / j),
                            cfg,
                            d,
                            decoder_has_attention(cfg, j),
                        )
                    })
                    .collect(),
            ),
            Architecture::Separate => cfg
                .decoder_channels
                .iter()
                .enumerate()
                .map(|(j, &d)| {
                    let p = vs / "nets" / j;
                    (Trunk::new(&p, cfg), Decoder::new(&(&p / "output_blocks"), &(&p / "out"), cfg, d, true))
                })
                .unzip(),
        };
        Ok(AdmUNet { cfg: cfg.clone(), trunks, decoders })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    pub fn num_stages(&self) -> usize {
        self.decoders.len()
    }

    /// The kind of the weights.
    pub fn kind(&self) -> Kind {
        self.trunks[0].kind()
    }

    /// VarStore prefixes of stage `j`'s decoder (output blocks and head).
    pub fn decoder_prefixes(cfg: &UNetConfig, j: usize) -> [String; 2] {
        match cfg.architecture {
            Architecture::Multistage => [format!("de_modules.{j}."), format!("outs.{j}.")],
            Architecture::Separate => [format!("nets.{j}.output_blocks."), format!("nets.{j}.out.")],
        }
    }

    /// Runs every sample through stage `stage`.
    fn forward_stage(&self, x: &Tensor, noise_label: &Tensor, stage: usize, train: bool) -> Tensor {
        let trunk = match self.cfg.architecture {
            Architecture::Multistage => &self.trunks[0],
            Architecture::Separate => &self.trunks[stage],
        };
        let (emb, skips, h) = trunk.forward(x, noise_label, train);
        self.decoders[stage].forward(&h, &skips, &emb, train)
    }

    /// `x: [B, C, R, R]` in the weights' kind, `noise_label: [B]` (the DDPM step n as a float),
    /// `stage: [B]` integer stage ids -> `[B, C, R, R]` (eps).
    pub fn forward(&self, x: &Tensor, noise_label: &Tensor, stage: &Tensor, train: bool) -> Result<Tensor> {
        let c = &self.cfg;
        let b = super::check_input(c, x, noise_label)?;
        let route = super::StageRoute::new(stage, b, self.num_stages(), x.device())?;
        if let Some(j) = route.single() {
            return Ok(self.forward_stage(x, noise_label, j, train));
        }
        // One permutation by stage, views per decoder, one un-permutation (super::StageRoute).
        let (x, noise_label) = (route.sort(x), route.sort(noise_label));
        let outs: Vec<Tensor> = if c.architecture == Architecture::Multistage {
            let (emb, skips, h) = self.trunks[0].forward(&x, &noise_label, train);
            let (embs, skips, hs) = (route.split(&emb), route.split_each(&skips), route.split(&h));
            route
                .spans
                .iter()
                .zip(embs.iter().zip(&skips).zip(&hs))
                .map(|(&(j, _), ((emb, skips), h))| self.decoders[j].forward(h, skips, emb, train))
                .collect()
        } else {
            let (xs, labels) = (route.split(&x), route.split(&noise_label));
            route
                .spans
                .iter()
                .zip(xs.iter().zip(&labels))
                .map(|(&(j, _), (x, label))| self.forward_stage(x, label, j, train))
                .collect()
        };
        Ok(route.unsort(&outs))
    }
}

impl super::StagedNetwork for AdmUNet {
    /// The input goes in in the weights' kind, the output comes back in the input's.
    fn forward_staged(&self, x: &Tensor, noise_label: &Tensor, stage: &Tensor, train: bool) -> Result<Tensor> {
        super::in_weight_kind(self.kind(), x, |x| self.forward(x, noise_label, stage, train))
    }
    fn num_stages(&self) -> usize {
        AdmUNet::num_stages(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_names_map_onto_msdiff_names() {
        assert_eq!(msdiff_name("model.diffusion_model.input_blocks.0.0.weight"), "input_blocks.0.0.weight");
        assert_eq!(msdiff_name("output_blocks.3.1.conv.weight"), "de_modules.0.3.1.conv.weight");
        assert_eq!(msdiff_name("out.2.bias"), "outs.0.2.bias");
        assert_eq!(msdiff_name("outs.1.0.weight"), "outs.1.0.weight");
        assert_eq!(msdiff_name("de_modules.2.0.0.in_layers.0.weight"), "de_modules.2.0.0.in_layers.0.weight");
    }

    #[test]
    fn skip_widths_follow_the_official_input_block_chans() {
        let cfg = preset("celebahq-ldm-multistage").unwrap();
        // input_block_chans of the official code for model_channels 224, mult (1,2,3,4), 2 blocks.
        assert_eq!(skip_channels(&cfg), vec![224, 224, 224, 224, 448, 448, 448, 672, 672, 672, 896, 896]);
    }

    #[test]
    fn the_quirk_leaves_decoders_1_and_2_without_attention() {
        let q = preset("celebahq-ldm-multistage").unwrap();
        assert_eq!((0..3).map(|j| decoder_has_attention(&q, j)).collect::<Vec<_>>(), [true, false, false]);
        let a = preset("celebahq-ldm-multistage-attn").unwrap();
        assert!((0..3).all(|j| decoder_has_attention(&a, j)));
    }

    #[test]
    fn bad_widths_are_refused_with_the_field_named() {
        let mut cfg = preset("tiny-ldm").unwrap();
        cfg.decoder_channels = vec![48, 32, 32];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("norm_max_groups") && e.contains("48"), "{e}");
        let mut cfg = preset("tiny-ldm").unwrap();
        cfg.head_channels = 0;
        assert!(cfg.validate().unwrap_err().to_string().contains("head_channels"));
        let mut cfg = preset("small-ldm-multistage").unwrap();
        cfg.head_channels = 48;
        assert!(cfg.validate().unwrap_err().to_string().contains("head_channels = 48"));
    }
}

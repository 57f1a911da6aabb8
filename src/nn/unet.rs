//! The U-Net split into a shared [`Encoder`] and per-stage [`Decoder`]s, and [`MultiStageUNet`],
//! which routes every sample to its stage's decoder (or, for the separate baseline, to its stage's
//! whole network).
//!
//! Variable names (VarStore paths):
//! - multistage / unified: `embed.*`, `encoder.*`, `decoder.{j}.*`;
//! - separate: `embed.{j}.*`, `encoder.{j}.*`, `decoder.{j}.*`.
//!
//! A stage's decoder is always under `decoder.{j}.`.

use anyhow::Result;
use tch::nn::Path;
use tch::Tensor;

use super::blocks::{AttnBlock, AttnBlockConfig, ResBlock, ResBlockConfig, Updown};
use super::config::{Architecture, DecoderAttn, ResampleWith, UNetConfig};
use super::embedding::{TimeEmbedding, TimeEmbeddingConfig};
use super::layers::{add_skip, Conv2d, Conv2dConfig, ConvDown, ConvUp, GroupNorm, GroupNormConfig};

fn res_cfg(cfg: &UNetConfig, i: usize, o: usize, updown: Updown) -> ResBlockConfig {
    ResBlockConfig {
        in_channels: i,
        out_channels: o,
        temb_dim: cfg.temb_dim(),
        updown,
        resample: cfg.resample,
        dropout: cfg.dropout,
        skip_rescale: cfg.skip_rescale,
        groups_in: cfg.groups(i),
        groups_out: cfg.groups(o),
        norm_eps: cfg.norm_eps,
        init_scale: cfg.init_scale,
    }
}

fn attn(p: &Path, cfg: &UNetConfig, c: usize) -> AttnBlock {
    AttnBlock::new(
        p,
        AttnBlockConfig {
            channels: c,
            groups: cfg.groups(c),
            norm_eps: cfg.norm_eps,
            skip_rescale: cfg.skip_rescale,
            init_scale: cfg.init_scale,
        },
    )
}

/// Down step between levels.
#[derive(Debug)]
enum DownStep {
    Res(Box<ResBlock>),
    Conv(ConvDown),
}

/// Up step between levels.
#[derive(Debug)]
enum UpStep {
    Res(Box<ResBlock>),
    Conv(ConvUp),
}

#[derive(Debug)]
struct EncLevel {
    blocks: Vec<ResBlock>,
    attns: Vec<AttnBlock>,
    down: Option<DownStep>,
    pyramid: Option<ConvDown>,
}

/// Shared encoder: input conv, all down levels, the middle (res, attn, res).
///
/// `x: [B, C, R, R]`, `temb: [B, 4 base]` -> `h: [B, base*mult[-1], R/2^(L-1), ...]` and the skip
/// activations (`cfg.skip_channels()` widths, push order; `1 + L*num_res_blocks + (L-1)` of them).
/// Variables: `conv_in`, `level.{i}.block.{b}`, `level.{i}.attn.{b}`, `level.{i}.down`,
/// `level.{i}.pyramid`, `mid.block0`, `mid.attn`, `mid.block1`.
#[derive(Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    levels: Vec<EncLevel>,
    mid0: ResBlock,
    mid_attn: AttnBlock,
    mid1: ResBlock,
    cfg: UNetConfig,
}

impl Encoder {
    pub fn new(p: &Path, cfg: &UNetConfig) -> Self {
        let e = cfg.base_channels;
        let conv_in = Conv2d::new(&(p / "conv_in"), Conv2dConfig::same(cfg.in_channels, e, 3));
        let mut c = e;
        let mut pyr_c = cfg.in_channels;
        let nl = cfg.num_levels();
        let mut levels = Vec::with_capacity(nl);
        for (i, m) in cfg.channel_mult.iter().enumerate() {
            let lp = p / "level" / i;
            let has_attn = cfg.attn_resolutions.contains(&cfg.level_resolution(i));
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for b in 0..cfg.num_res_blocks {
                let o = e * m;
                blocks.push(ResBlock::new(&(&lp / "block" / b), res_cfg(cfg, c, o, Updown::None)));
                c = o;
                if has_attn {
                    attns.push(attn(&(&lp / "attn" / b), cfg, c));
                }
            }
            let (down, pyramid) = if i + 1 != nl {
                let down = match cfg.resample_with {
                    ResampleWith::Resblock => {
                        DownStep::Res(Box::new(ResBlock::new(&(&lp / "down"), res_cfg(cfg, c, c, Updown::Down))))
                    }
                    ResampleWith::Conv => DownStep::Conv(ConvDown::new(&(&lp / "down"), c, c, cfg.resample)),
                };
                let pyramid = cfg.input_pyramid.then(|| {
                    let pd = ConvDown::new(&(&lp / "pyramid"), pyr_c, c, cfg.resample);
                    pyr_c = c;
                    pd
                });
                (Some(down), pyramid)
            } else {
                (None, None)
            };
            levels.push(EncLevel { blocks, attns, down, pyramid });
        }
        let mid0 = ResBlock::new(&(p / "mid" / "block0"), res_cfg(cfg, c, c, Updown::None));
        let mid_attn = attn(&(p / "mid" / "attn"), cfg, c);
        let mid1 = ResBlock::new(&(p / "mid" / "block1"), res_cfg(cfg, c, c, Updown::None));
        Self { conv_in, levels, mid0, mid_attn, mid1, cfg: cfg.clone() }
    }

    /// Returns `(h, skips)`.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, train: bool) -> (Tensor, Vec<Tensor>) {
        let mut hs = vec![self.conv_in.forward(x)];
        let mut pyramid = x.shallow_clone();
        for lvl in &self.levels {
            for (b, block) in lvl.blocks.iter().enumerate() {
                let mut h = block.forward(hs.last().unwrap(), temb, train);
                if let Some(a) = lvl.attns.get(b) {
                    h = a.forward(&h);
                }
                hs.push(h);
            }
            if let Some(down) = &lvl.down {
                let last = hs.last().unwrap();
                let mut h = match down {
                    DownStep::Res(r) => r.forward(last, temb, train),
                    DownStep::Conv(c) => c.forward(last),
                };
                if let Some(pd) = &lvl.pyramid {
                    pyramid = add_skip(&pd.forward(&pyramid), &h, self.cfg.skip_rescale);
                    h = pyramid.shallow_clone();
                }
                hs.push(h);
            }
        }
        let h = self.mid0.forward(hs.last().unwrap(), temb, train);
        let h = self.mid_attn.forward(&h);
        let h = self.mid1.forward(&h, temb, train);
        (h, hs)
    }
}

#[derive(Debug)]
struct DecLevel {
    blocks: Vec<ResBlock>,
    attns: Vec<AttnBlock>,
    /// Attention after every block (else at most one after the level's blocks).
    attn_per_block: bool,
    up: Option<UpStep>,
}

/// One stage's decoder of base width `d`: per level from the coarsest, `num_res_blocks + 1`
/// blocks on `concat[h, skip]` -> `d * mult`, attention (once per level or after each block) at
/// attention resolutions, an up step at each non-final level; then GN, SiLU, conv3x3 -> C.
///
/// `h: [B, base*mult[-1], r, r]`, the encoder's skips, `temb` -> `[B, C, R, R]`.
/// Variables: `level.{i}.block.{b}`, `level.{i}.attn.{b}`, `level.{i}.up`, `norm_out`, `conv_out`
/// (level indices are the encoder's: `L-1` is the coarsest).
#[derive(Debug)]
pub struct Decoder {
    levels: Vec<DecLevel>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub fn new(p: &Path, cfg: &UNetConfig, d: usize) -> Self {
        let mut skips = cfg.skip_channels();
        let mut c = cfg.base_channels * cfg.channel_mult[cfg.num_levels() - 1];
        let mut levels = Vec::new();
        for i in (0..cfg.num_levels()).rev() {
            let lp = p / "level" / i;
            let has_attn = cfg.attn_resolutions.contains(&cfg.level_resolution(i));
            let o = d * cfg.channel_mult[i];
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for b in 0..=cfg.num_res_blocks {
                let sc = skips.pop().expect("skip count");
                blocks.push(ResBlock::new(&(&lp / "block" / b), res_cfg(cfg, c + sc, o, Updown::None)));
                c = o;
                if has_attn && cfg.decoder_attn == DecoderAttn::Block {
                    attns.push(attn(&(&lp / "attn" / b), cfg, c));
                }
            }
            if has_attn && cfg.decoder_attn == DecoderAttn::Level {
                attns.push(attn(&(&lp / "attn" / 0), cfg, c));
            }
            let up = (i != 0).then(|| match cfg.resample_with {
                ResampleWith::Resblock => {
                    UpStep::Res(Box::new(ResBlock::new(&(&lp / "up"), res_cfg(cfg, c, c, Updown::Up))))
                }
                ResampleWith::Conv => UpStep::Conv(ConvUp::new(&(&lp / "up"), c, c, cfg.resample)),
            });
            levels.push(DecLevel { blocks, attns, attn_per_block: cfg.decoder_attn == DecoderAttn::Block, up });
        }
        let norm_out = GroupNorm::new(
            &(p / "norm_out"),
            GroupNormConfig { channels: c, groups: cfg.groups(c), eps: cfg.norm_eps },
        );
        let conv_out =
            Conv2d::new(&(p / "conv_out"), Conv2dConfig::same(c, cfg.in_channels, 3).init_scale(cfg.init_scale));
        Self { levels, norm_out, conv_out }
    }

    /// `skips` in the encoder's push order; all are consumed.
    pub fn forward(&self, h: &Tensor, skips: &[Tensor], temb: &Tensor, train: bool) -> Tensor {
        let mut h = h.shallow_clone();
        let mut k = skips.len();
        for lvl in &self.levels {
            let per_block = lvl.attn_per_block && !lvl.attns.is_empty();
            for (b, block) in lvl.blocks.iter().enumerate() {
                k -= 1;
                h = block.forward(&Tensor::cat(&[&h, &skips[k]], 1), temb, train);
                if per_block {
                    h = lvl.attns[b].forward(&h);
                }
            }
            if !per_block {
                if let Some(a) = lvl.attns.first() {
                    h = a.forward(&h);
                }
            }
            match &lvl.up {
                Some(UpStep::Res(r)) => h = r.forward(&h, temb, train),
                Some(UpStep::Conv(c)) => h = c.forward(&h),
                None => {}
            }
        }
        debug_assert_eq!(k, 0);
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}

/// Time embedding + encoder: the part shared by all stages (multistage) or owned by one (separate).
#[derive(Debug)]
pub struct Trunk {
    pub embed: TimeEmbedding,
    pub encoder: Encoder,
}

impl Trunk {
    fn new(embed_path: &Path, enc_path: &Path, cfg: &UNetConfig) -> Self {
        let embed = TimeEmbedding::new(
            embed_path,
            TimeEmbeddingConfig { embedding_dim: cfg.embed_dim(), temb_dim: cfg.temb_dim() },
        );
        Self { embed, encoder: Encoder::new(enc_path, cfg) }
    }
}

/// Multi-decoder U-Net (also the unified model with one decoder, and the separate baseline).
#[derive(Debug)]
pub struct MultiStageUNet {
    cfg: UNetConfig,
    /// One trunk (multistage) or one per stage (separate).
    trunks: Vec<Trunk>,
    decoders: Vec<Decoder>,
}

impl MultiStageUNet {
    /// The kind of the network's weights (f32, or bf16 for mixed precision).
    pub fn kind(&self) -> tch::Kind {
        self.trunks[0].embed.kind()
    }

    /// Builds the network's variables under `vs` (see the module docs for their names).
    pub fn new(vs: &Path, cfg: &UNetConfig) -> Result<Self> {
        cfg.validate()?;
        let s = cfg.num_stages();
        let trunks = match cfg.architecture {
            Architecture::Multistage => vec![Trunk::new(&(vs / "embed"), &(vs / "encoder"), cfg)],
            Architecture::Separate => {
                (0..s).map(|j| Trunk::new(&(vs / "embed" / j), &(vs / "encoder" / j), cfg)).collect()
            }
        };
        let decoders = cfg
            .decoder_channels
            .iter()
            .enumerate()
            .map(|(j, &d)| Decoder::new(&(vs / "decoder" / j), cfg, d))
            .collect();
        Ok(Self { cfg: cfg.clone(), trunks, decoders })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    pub fn num_stages(&self) -> usize {
        self.decoders.len()
    }

    /// The shared trunk (multistage, unified) or stage `j`'s own (separate).
    pub fn trunk(&self, j: usize) -> &Trunk {
        &self.trunks[j.min(self.trunks.len() - 1)]
    }

    /// Stage `j`'s decoder. Panics if `j` is out of range.
    pub fn decoder(&self, j: usize) -> &Decoder {
        &self.decoders[j]
    }

    /// `x: [B, C, R, R]`, `noise_label: [B]` float (the embedding input, e.g. 999 t or
    /// c_noise(sigma)), `stage: [B]` int stage ids -> `[B, C, R, R]`.
    ///
    /// Per-sample routing ([`super::StageRoute`]): the batch is permuted once so that each
    /// stage's samples are contiguous, the trunk (embedding + encoder) runs once on it, decoder
    /// `j` runs on its stage's rows of the bottleneck, skips and embeddings (views), and the
    /// decoders' outputs are concatenated and put back in the batch's order. A decoder with no
    /// samples is not run, so it gets no gradient. Separate: stage `j`'s whole network runs on
    /// its samples.
    pub fn forward(&self, x: &Tensor, noise_label: &Tensor, stage: &Tensor, train: bool) -> Result<Tensor> {
        let b = super::check_input(&self.cfg, x, noise_label)?;
        let route = super::StageRoute::new(stage, b, self.num_stages(), x.device())?;
        // All samples in one stage: no routing needed.
        if let Some(j) = route.single() {
            return Ok(self.forward_stage(x, noise_label, j, train));
        }
        let (x, noise_label) = (route.sort(x), route.sort(noise_label));
        let outs: Vec<Tensor> = match self.cfg.architecture {
            Architecture::Multistage => {
                let trunk = &self.trunks[0];
                let temb = trunk.embed.forward(&noise_label);
                let (h, skips) = trunk.encoder.forward(&x, &temb, train);
                let (hs, tembs, skips) = (route.split(&h), route.split(&temb), route.split_each(&skips));
                route
                    .spans
                    .iter()
                    .zip(hs.iter().zip(&tembs).zip(&skips))
                    .map(|(&(j, _), ((h, temb), skips))| self.decoders[j].forward(h, skips, temb, train))
                    .collect()
            }
            Architecture::Separate => {
                let (xs, labels) = (route.split(&x), route.split(&noise_label));
                route
                    .spans
                    .iter()
                    .zip(xs.iter().zip(&labels))
                    .map(|(&(j, _), (x, label))| self.forward_stage(x, label, j, train))
                    .collect()
            }
        };
        Ok(route.unsort(&outs))
    }

    /// Runs every sample through stage `stage` (no routing). Panics if `stage` is out of range.
    pub fn forward_stage(&self, x: &Tensor, noise_label: &Tensor, stage: usize, train: bool) -> Tensor {
        let trunk = match self.cfg.architecture {
            Architecture::Multistage => &self.trunks[0],
            Architecture::Separate => &self.trunks[stage],
        };
        let temb = trunk.embed.forward(noise_label);
        let (h, skips) = trunk.encoder.forward(x, &temb, train);
        self.decoders[stage].forward(&h, &skips, &temb, train)
    }
}

impl super::StagedNetwork for MultiStageUNet {
    /// Mixed precision: the input is cast to the weights' kind (bf16) and the output back to the
    /// input's kind, so callers see f32 (or f64) in and out whatever the network runs in.
    fn forward_staged(&self, x: &Tensor, noise_label: &Tensor, stage: &Tensor, train: bool) -> Result<Tensor> {
        super::in_weight_kind(self.kind(), x, |x| self.forward(x, noise_label, stage, train))
    }
    fn num_stages(&self) -> usize {
        MultiStageUNet::num_stages(self)
    }
}

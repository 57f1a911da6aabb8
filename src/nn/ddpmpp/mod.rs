//! EDM's DDPM++ network family (`SongUNet` of NVlabs/edm and the multi-stage authors'
//! `MultistageUNet`), split into a shared part and per-stage decoders exactly as the paper's EDM
//! system (docs/EDM.md, docs/METHOD.md §10).
//!
//! Layout, for a [`UNetConfig`] with `family = "ddpmpp"`:
//! - **shared** (multistage / unified): the mapping network (`map_augment`, `map_layer0`,
//!   `map_layer1`) and the encoder `enc.*`: `{R}x{R}_conv` (C -> base), then per level `i` the
//!   `{r}x{r}_down` block (levels > 0) and `num_res_blocks` blocks `{r}x{r}_block{b}` to
//!   `base * channel_mult[i]` (attention at `attn_resolutions`). Every encoder output is a skip.
//!   **No middle block.**
//! - **decoder j** `decs.{j}.*` of width `d_j`: at the coarsest level `{r}x{r}_in0` (attention)
//!   and `{r}x{r}_in1` at the *encoder's* width (the bottleneck lives in every decoder), at the
//!   other levels `{r}x{r}_up`; then `num_res_blocks + 1` blocks `{r}x{r}_block{b}` on
//!   `cat[h, skip]` to `d_j * channel_mult[i]` (attention only on the last block of an
//!   attention level); at the finest level `{R}x{R}_aux_norm`, SiLU, `{R}x{R}_aux_conv` -> C.
//! - **separate**: one complete network per stage under `nets.{j}.` (`map_*`, `enc.*`, `dec.*`,
//!   EDM's own `SongUNet` names).
//!
//! The names are the official state-dict names without the `model.` prefix of `EDMPrecond`
//! (the fork's `decs.{j}`; EDM's own unified `SongUNet` calls its decoder `dec`, which is
//! `decs.0` here); the `resample_filter` buffers are constants, not variables. docs/EDM.md shows
//! the few lines of PyTorch that export an official checkpoint to safetensors.
//!
//! Routing is per sample, as for NCSN++ (docs/METHOD.md §4.4, [`super::StageRoute`]): the shared
//! part runs once on the batch, decoder j on its samples only, and a decoder without samples is
//! not run (no gradient).

pub mod layers;
pub mod report;

use anyhow::{bail, ensure, Result};
use tch::nn::Path;
use tch::{Kind, Tensor};

use self::layers::{BlockConfig, Conv, Mapping, Sampling, UNetBlock};
use super::config::{Architecture, DecoderAttn, Family, Resample, ResampleWith, UNetConfig};
use super::layers::{GroupNorm, GroupNormConfig};

/// EDM presets, accepted by [`UNetConfig::preset`].
pub const PRESETS: &[&str] = &["cifar10-edm-multistage", "cifar10-edm-unified", "cifar10-edm-separate", "tiny-edm"];

/// An EDM preset (see [`PRESETS`]):
/// - `cifar10-edm-multistage`: the paper's EDM model: 3x32x32, encoder 128, decoders 192 / 128 / 16,
///   channel_mult (2, 2, 2), 4 blocks, attention at 16, dropout 0.13, [1,1] resampling,
///   augment_dim 9; 128,793,385 parameters stored, 87,917,315 / 55,733,891 / 24,407,715 per stage;
/// - `cifar10-edm-unified`: one 128 decoder: EDM's own DDPM++ (55,733,891);
/// - `cifar10-edm-separate`: three complete DDPM++ networks with decoders 192 / 128 / 16;
/// - `tiny-edm`: 1x16x16, width 16, channel_mult (1, 2), 1 block, attention at 8, decoders
///   24 / 16 / 8, augment_dim 9 (tests and CPU runs).
pub fn preset(name: &str) -> Result<UNetConfig> {
    let edm = UNetConfig {
        in_channels: 3,
        resolution: 32,
        base_channels: 128,
        channel_mult: vec![2, 2, 2],
        num_res_blocks: 4,
        attn_resolutions: vec![16],
        dropout: 0.13,
        resample: Resample::Plain,
        resample_with: ResampleWith::Resblock,
        decoder_attn: DecoderAttn::Level,
        input_pyramid: false,
        skip_rescale: true,
        embedding_dim: None,
        decoder_channels: vec![192, 128, 16],
        architecture: Architecture::Multistage,
        norm_max_groups: 16,
        norm_eps: 1e-6,
        init_scale: 0.0,
        family: Family::Ddpmpp,
        augment_dim: 9,
        head_channels: 32,
        attn_first_decoder_only: false,
    };
    let cfg = match name {
        "cifar10-edm-multistage" => edm,
        "cifar10-edm-unified" => UNetConfig { decoder_channels: vec![128], ..edm },
        "cifar10-edm-separate" => UNetConfig { architecture: Architecture::Separate, ..edm },
        "tiny-edm" => UNetConfig {
            in_channels: 1,
            resolution: 16,
            base_channels: 16,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            decoder_channels: vec![24, 16, 8],
            ..edm
        },
        _ => bail!("unknown EDM preset {name:?}; known: {}", PRESETS.join(", ")),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Widths of the encoder outputs (the skips), in push order.
pub fn skip_channels(cfg: &UNetConfig) -> Vec<usize> {
    let mut hs = vec![cfg.base_channels];
    let mut c = cfg.base_channels;
    for (i, m) in cfg.channel_mult.iter().enumerate() {
        if i > 0 {
            hs.push(c);
        }
        for _ in 0..cfg.num_res_blocks {
            c = cfg.base_channels * m;
            hs.push(c);
        }
    }
    hs
}

/// Every width a GroupNorm sees (for validation).
pub fn norm_widths(cfg: &UNetConfig) -> Vec<usize> {
    let mut w = Vec::new();
    let mut c = cfg.base_channels;
    for (i, m) in cfg.channel_mult.iter().enumerate() {
        if i > 0 {
            w.push(c);
        }
        for _ in 0..cfg.num_res_blocks {
            w.push(c);
            c = cfg.base_channels * m;
            w.push(c);
        }
    }
    let bottleneck = c;
    for &d in &cfg.decoder_channels {
        let mut skips = skip_channels(cfg);
        let mut c = bottleneck;
        w.push(c);
        for m in cfg.channel_mult.iter().rev() {
            for _ in 0..=cfg.num_res_blocks {
                w.push(c + skips.pop().unwrap_or(0));
                c = d * m;
                w.push(c);
            }
        }
    }
    w
}

fn block(cfg: &UNetConfig, cin: usize, cout: usize, sampling: Sampling, attention: bool) -> BlockConfig {
    BlockConfig {
        cin,
        cout,
        emb: cfg.temb_dim(),
        sampling,
        attention,
        dropout: cfg.dropout,
        resample: cfg.resample,
        groups_in: cfg.groups(cin),
        groups_out: cfg.groups(cout),
        eps: cfg.norm_eps,
    }
}

/// One encoder layer: the input convolution or a block.
#[derive(Debug)]
enum EncLayer {
    Conv(Conv),
    Block(Box<UNetBlock>),
}

/// The mapping network and the encoder: what every stage shares (multistage) or owns (separate).
#[derive(Debug)]
pub struct Trunk {
    pub mapping: Mapping,
    enc: Vec<EncLayer>,
}

impl Trunk {
    /// `p`: the folder holding `map_*` and `enc`.
    pub fn new(p: &Path, cfg: &UNetConfig) -> Self {
        let mapping = Mapping::new(p, cfg.embed_dim(), cfg.temb_dim(), cfg.augment_dim);
        let e = p / "enc";
        let mut enc = Vec::new();
        let mut c = cfg.base_channels;
        for (i, m) in cfg.channel_mult.iter().enumerate() {
            let r = cfg.level_resolution(i);
            if i == 0 {
                let conv = Conv::new(
                    &(&e / format!("{r}x{r}_conv")),
                    cfg.in_channels,
                    c,
                    3,
                    Sampling::None,
                    cfg.resample,
                    1.0,
                );
                enc.push(EncLayer::Conv(conv));
            } else {
                enc.push(EncLayer::Block(Box::new(UNetBlock::new(
                    &(&e / format!("{r}x{r}_down")),
                    block(cfg, c, c, Sampling::Down, false),
                ))));
            }
            let attn = cfg.attn_resolutions.contains(&r);
            for b in 0..cfg.num_res_blocks {
                let o = cfg.base_channels * m;
                enc.push(EncLayer::Block(Box::new(UNetBlock::new(
                    &(&e / format!("{r}x{r}_block{b}")),
                    block(cfg, c, o, Sampling::None, attn),
                ))));
                c = o;
            }
        }
        Trunk { mapping, enc }
    }

    /// `(emb, skips)`; the last skip is the bottleneck input.
    pub fn forward(
        &self,
        x: &Tensor,
        noise_label: &Tensor,
        augment: Option<&Tensor>,
        train: bool,
    ) -> (Tensor, Vec<Tensor>) {
        let emb = self.mapping.forward(noise_label, augment);
        let mut skips: Vec<Tensor> = Vec::with_capacity(self.enc.len());
        for layer in &self.enc {
            let h = match (layer, skips.last()) {
                (EncLayer::Conv(c), _) => c.forward(x),
                (EncLayer::Block(b), Some(h)) => b.forward(h, &emb, train),
                (EncLayer::Block(b), None) => b.forward(x, &emb, train),
            };
            skips.push(h);
        }
        (emb, skips)
    }
}

/// One stage's decoder (see the module docs).
#[derive(Debug)]
pub struct Decoder {
    blocks: Vec<UNetBlock>,
    aux_norm: GroupNorm,
    aux_conv: Conv,
}

impl Decoder {
    /// `p`: the decoder's folder (`decs.{j}` or `nets.{j}.dec`); `d`: its base width.
    pub fn new(p: &Path, cfg: &UNetConfig, d: usize) -> Self {
        let mut skips = skip_channels(cfg);
        let mut c = *skips.last().expect("skips");
        let nl = cfg.num_levels();
        let mut blocks = Vec::new();
        for i in (0..nl).rev() {
            let r = cfg.level_resolution(i);
            let name = |s: &str| p / format!("{r}x{r}_{s}");
            if i == nl - 1 {
                blocks.push(UNetBlock::new(&name("in0"), block(cfg, c, c, Sampling::None, true)));
                blocks.push(UNetBlock::new(&name("in1"), block(cfg, c, c, Sampling::None, false)));
            } else {
                blocks.push(UNetBlock::new(&name("up"), block(cfg, c, c, Sampling::Up, false)));
            }
            let attn_level = cfg.attn_resolutions.contains(&r);
            for b in 0..=cfg.num_res_blocks {
                let cin = c + skips.pop().expect("skip count");
                c = d * cfg.channel_mult[i];
                let attn = attn_level && b == cfg.num_res_blocks;
                blocks.push(UNetBlock::new(&name(&format!("block{b}")), block(cfg, cin, c, Sampling::None, attn)));
            }
        }
        let r = cfg.resolution;
        let aux_norm = GroupNorm::new(
            &(p / format!("{r}x{r}_aux_norm")),
            GroupNormConfig { channels: c, groups: cfg.groups(c), eps: cfg.norm_eps },
        );
        let aux_conv =
            Conv::new(&(p / format!("{r}x{r}_aux_conv")), c, cfg.in_channels, 3, Sampling::None, cfg.resample, 1e-5);
        Decoder { blocks, aux_norm, aux_conv }
    }

    /// `skips` in the encoder's push order (all consumed), `emb` -> `[B, C, R, R]`.
    pub fn forward(&self, skips: &[Tensor], emb: &Tensor, train: bool) -> Tensor {
        let mut k = skips.len();
        let mut x = skips[k - 1].shallow_clone();
        for b in &self.blocks {
            if x.size()[1] != b.cfg.cin as i64 {
                k -= 1;
                x = Tensor::cat(&[&x, &skips[k]], 1);
            }
            x = b.forward(&x, emb, train);
        }
        debug_assert_eq!(k, 0);
        self.aux_conv.forward(&self.aux_norm.forward(&x).silu())
    }
}

/// EDM's multi-stage DDPM++ (also its unified model with one decoder, and the separate baseline).
#[derive(Debug)]
pub struct SongUNet {
    cfg: UNetConfig,
    trunks: Vec<Trunk>,
    decoders: Vec<Decoder>,
}

impl SongUNet {
    /// Builds the variables under `vs` (names in the module docs).
    pub fn new(vs: &Path, cfg: &UNetConfig) -> Result<Self> {
        ensure!(
            cfg.family == Family::Ddpmpp,
            "SongUNet builds family = \"ddpmpp\" configurations, got {:?}",
            cfg.family
        );
        cfg.validate()?;
        let (trunks, decoders) = match cfg.architecture {
            Architecture::Multistage => (
                vec![Trunk::new(vs, cfg)],
                cfg.decoder_channels
                    .iter()
                    .enumerate()
                    .map(|(j, &d)| Decoder::new(&(vs / "decs" / j), cfg, d))
                    .collect(),
            ),
            Architecture::Separate => cfg
                .decoder_channels
                .iter()
                .enumerate()
                .map(|(j, &d)| {
                    let p = vs / "nets" / j;
                    (Trunk::new(&p, cfg), Decoder::new(&(&p / "dec"), cfg, d))
                })
                .unzip(),
        };
        Ok(SongUNet { cfg: cfg.clone(), trunks, decoders })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    pub fn num_stages(&self) -> usize {
        self.decoders.len()
    }

    /// The kind of the weights.
    pub fn kind(&self) -> Kind {
        self.trunks[0].mapping.kind()
    }

    /// VarStore prefix of stage `j`'s decoder.
    pub fn decoder_prefix(cfg: &UNetConfig, j: usize) -> String {
        match cfg.architecture {
            Architecture::Multistage => format!("decs.{j}."),
            Architecture::Separate => format!("nets.{j}.dec."),
        }
    }

    /// Runs every sample through stage `stage`. Panics if `stage` is out of range.
    pub fn forward_stage(
        &self,
        x: &Tensor,
        noise_label: &Tensor,
        augment: Option<&Tensor>,
        stage: usize,
        train: bool,
    ) -> Tensor {
        let trunk = match self.cfg.architecture {
            Architecture::Multistage => &self.trunks[0],
            Architecture::Separate => &self.trunks[stage],
        };
        let (emb, skips) = trunk.forward(x, noise_label, augment, train);
        self.decoders[stage].forward(&skips, &emb, train)
    }

    /// `x: [B, C, R, R]`, `noise_label: [B]` (EDM's c_noise = ln(sigma)/4), `stage: [B]` ints,
    /// `augment: [B, augment_dim]` (training with augmentation) or none (sampling: EDM passes no
    /// labels, which equals zero labels as `map_augment` has no bias) -> `[B, C, R, R]`.
    pub fn forward(
        &self,
        x: &Tensor,
        noise_label: &Tensor,
        stage: &Tensor,
        augment: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let b = super::check_input(c, x, noise_label)?;
        if let Some(a) = augment {
            ensure!(c.augment_dim > 0, "this network takes no augment labels (augment_dim = 0)");
            ensure!(
                a.size() == [b, c.augment_dim as i64],
                "augment labels must have shape [{b}, {}], got {:?}",
                c.augment_dim,
                a.size()
            );
        }
        let route = super::StageRoute::new(stage, b, self.num_stages(), x.device())?;
        if let Some(j) = route.single() {
            return Ok(self.forward_stage(x, noise_label, augment, j, train));
        }
        // One permutation by stage, views per decoder, one un-permutation (super::StageRoute).
        let (x, noise_label, augment) = (route.sort(x), route.sort(noise_label), augment.map(|a| route.sort(a)));
        let outs: Vec<Tensor> = if c.architecture == Architecture::Multistage {
            let (emb, skips) = self.trunks[0].forward(&x, &noise_label, augment.as_ref(), train);
            let (embs, skips) = (route.split(&emb), route.split_each(&skips));
            route
                .spans
                .iter()
                .zip(embs.iter().zip(&skips))
                .map(|(&(j, _), (emb, skips))| self.decoders[j].forward(skips, emb, train))
                .collect()
        } else {
            let (xs, labels) = (route.split(&x), route.split(&noise_label));
            let augs: Vec<Option<Tensor>> = match &augment {
                Some(a) => route.split(a).into_iter().map(Some).collect(),
                None => route.spans.iter().map(|_| None).collect(),
            };
            route
                .spans
                .iter()
                .zip(xs.iter().zip(&labels).zip(&augs))
                .map(|(&(j, _), ((x, label), aug))| self.forward_stage(x, label, aug.as_ref(), j, train))
                .collect()
        };
        Ok(route.unsort(&outs))
    }
}

impl super::StagedNetwork for SongUNet {
    /// Mixed precision as for NCSN++: the input goes in in the weights' kind, the output comes
    /// back in the input's.
    fn forward_staged(&self, x: &Tensor, noise_label: &Tensor, stage: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_augmented(x, noise_label, stage, None, train)
    }
    fn forward_augmented(
        &self,
        x: &Tensor,
        noise_label: &Tensor,
        stage: &Tensor,
        augment: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        super::in_weight_kind(self.kind(), x, |x| self.forward(x, noise_label, stage, augment, train))
    }
    fn augment_dim(&self) -> usize {
        self.cfg.augment_dim
    }
    fn num_stages(&self) -> usize {
        SongUNet::num_stages(self)
    }
}

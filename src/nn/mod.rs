//! Layers and the multi-decoder U-Net (docs/METHOD.md §4).
//!
//! - [`config`]: [`UNetConfig`] (serde, validated) and the presets;
//! - [`layers`]: conv, dense, GroupNorm, FIR / plain resampling;
//! - [`blocks`]: BigGAN residual block, single-head attention block;
//! - [`embedding`]: sinusoidal noise-level embedding + MLP;
//! - [`unet`]: [`Encoder`], [`Decoder`], [`MultiStageUNet`] (multistage, unified, separate) with
//!   per-sample routing;
//! - [`report`]: analytic parameter counts and GFLOPs ([`report::report`]);
//! - [`ddpmpp`]: EDM's DDPM++ family ([`ddpmpp::SongUNet`], `family = "ddpmpp"`), the network of
//!   the paper's EDM system (docs/EDM.md);
//! - [`adm`]: LDM's ADM / openaimodel U-Net ([`adm::AdmUNet`], `family = "adm"`), the network
//!   of the paper's latent-diffusion system (docs/LATENT.md §6);
//! - [`Net`]: a network of any family, as [`crate::model::Network`] holds it.
//!
//! Gradient policy: a decoder whose stage has no sample in a batch is not run, so its parameters
//! get no gradient (undefined `grad()`); the trainer must not move them (e.g. skip them in the
//! optimizer step, or zero-grad-and-skip).

pub mod adm;
pub mod blocks;
pub mod config;
pub mod ddpmpp;
pub mod embedding;
pub mod layers;
pub mod report;
pub mod unet;

pub use adm::AdmUNet;
pub use config::{all_presets, Architecture, DecoderAttn, Family, Resample, ResampleWith, UNetConfig, PRESETS};
pub use ddpmpp::SongUNet;
pub use report::{report, ModelReport};
pub use unet::{Decoder, Encoder, MultiStageUNet};

/// A network that predicts from (input, noise label, stage id) per sample: what an
/// [`crate::objective::Objective`] conditions and routes.
pub trait StagedNetwork {
    /// `x` `[B, C, H, W]`, `noise_label` `[B]` f32, `stage` `[B]` i64 -> `[B, C, H, W]`.
    fn forward_staged(
        &self,
        x: &tch::Tensor,
        noise_label: &tch::Tensor,
        stage: &tch::Tensor,
        train: bool,
    ) -> anyhow::Result<tch::Tensor>;
    /// As [`StagedNetwork::forward_staged`] with EDM's augmentation labels `[B, augment_dim]`
    /// (none: no augmentation, as at sampling). A network without an augment input refuses labels.
    fn forward_augmented(
        &self,
        x: &tch::Tensor,
        noise_label: &tch::Tensor,
        stage: &tch::Tensor,
        augment: Option<&tch::Tensor>,
        train: bool,
    ) -> anyhow::Result<tch::Tensor> {
        anyhow::ensure!(augment.is_none(), "this network takes no augment labels");
        self.forward_staged(x, noise_label, stage, train)
    }
    /// Width of the augment-label input (0: none).
    fn augment_dim(&self) -> usize {
        0
    }
    fn num_stages(&self) -> usize;
}

/// A staged network that feeds fixed augment labels to every forward pass: how the trainer
/// hands EDM's augmentation labels to the network through [`crate::objective::Objective::loss`].
pub struct WithAugment<'a> {
    pub net: &'a dyn StagedNetwork,
    /// `[B, augment_dim]`, in the batch's order.
    pub labels: &'a tch::Tensor,
}

impl StagedNetwork for WithAugment<'_> {
    fn forward_staged(
        &self,
        x: &tch::Tensor,
        noise_label: &tch::Tensor,
        stage: &tch::Tensor,
        train: bool,
    ) -> anyhow::Result<tch::Tensor> {
        self.net.forward_augmented(x, noise_label, stage, Some(self.labels), train)
    }
    fn augment_dim(&self) -> usize {
        self.net.augment_dim()
    }
    fn num_stages(&self) -> usize {
        self.net.num_stages()
    }
}

/// Mixed precision for a network whose weights are of kind `k`: `f` runs on `x` cast to `k` and its
/// output comes back in `x`'s kind, so callers see f32 in and out whatever the network runs in.
pub fn in_weight_kind(
    k: tch::Kind,
    x: &tch::Tensor,
    f: impl FnOnce(&tch::Tensor) -> anyhow::Result<tch::Tensor>,
) -> anyhow::Result<tch::Tensor> {
    if x.kind() == k {
        return f(x);
    }
    Ok(f(&x.to_kind(k))?.to_kind(x.kind()))
}

/// Checks a network input against its layout: `x` `[B, in_channels, resolution, resolution]` and
/// `noise_label` `[B]`; returns B.
pub fn check_input(cfg: &UNetConfig, x: &tch::Tensor, noise_label: &tch::Tensor) -> anyhow::Result<i64> {
    let sz = x.size();
    anyhow::ensure!(
        sz.len() == 4
            && sz[1] == cfg.in_channels as i64
            && sz[2] == cfg.resolution as i64
            && sz[3] == cfg.resolution as i64,
        "input must be [B, {c}, {r}, {r}], got {sz:?}",
        c = cfg.in_channels,
        r = cfg.resolution
    );
    let b = sz[0];
    anyhow::ensure!(noise_label.size() == [b], "noise_label must have shape [{b}], got {:?}", noise_label.size());
    Ok(b)
}

/// Checks per-sample stage ids (`[batch]`, an integer kind, each in `0..num_stages`) and groups
/// the sample indices by stage: `groups[j]` = the samples routed to decoder j, in batch order.
pub fn stage_groups(stage: &tch::Tensor, batch: i64, num_stages: usize) -> anyhow::Result<Vec<Vec<i64>>> {
    use anyhow::{ensure, Context};
    use tch::Kind;
    ensure!(stage.size() == [batch], "stage ids must have shape [{batch}], got {:?}", stage.size());
    ensure!(
        matches!(stage.kind(), Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8),
        "stage ids must be an integer tensor, got {:?}",
        stage.kind()
    );
    let ids: Vec<i64> =
        Vec::<i64>::try_from(&stage.to_kind(Kind::Int64).to_device(tch::Device::Cpu)).context("reading stage ids")?;
    let s = num_stages as i64;
    if let Some(bad) = ids.iter().find(|&&j| j < 0 || j >= s) {
        anyhow::bail!("stage id {bad} out of range: the network has {s} stage(s)");
    }
    let mut groups: Vec<Vec<i64>> = vec![Vec::new(); num_stages];
    for (i, &j) in ids.iter().enumerate() {
        groups[j as usize].push(i as i64);
    }
    Ok(groups)
}

/// How a mixed batch reaches its stages' decoders, shared by the three families: the batch is
/// permuted **once**, stably, so that each stage's samples are contiguous; the shared part runs
/// on the permuted batch, each decoder gets its stage's rows as [`StageRoute::split`] views (a
/// view costs nothing, and the backward of the split is one concatenation per tensor, not one
/// scatter into a zero tensor per decoder as with `index_select`), the decoders' outputs are
/// concatenated and put back in the batch's order by one `index_select` on the output alone
/// ([`StageRoute::unsort`]). A batch that is already sorted by stage is not permuted at all.
#[derive(Debug)]
pub struct StageRoute {
    /// `sorted[k] = batch[order[k]]` (none: already sorted).
    order: Option<tch::Tensor>,
    /// `batch[i] = sorted[inverse[i]]` (none: already sorted).
    inverse: Option<tch::Tensor>,
    /// `(stage, samples)` of every stage that has samples, in stage order (the sorted batch's
    /// consecutive row ranges).
    pub spans: Vec<(usize, i64)>,
}

impl StageRoute {
    /// Checks the stage ids (as [`stage_groups`]) and builds the permutation on `device`.
    pub fn new(stage: &tch::Tensor, batch: i64, num_stages: usize, device: tch::Device) -> anyhow::Result<Self> {
        let groups = stage_groups(stage, batch, num_stages)?;
        let spans: Vec<(usize, i64)> =
            groups.iter().enumerate().filter(|(_, g)| !g.is_empty()).map(|(j, g)| (j, g.len() as i64)).collect();
        let order: Vec<i64> = groups.concat();
        let sorted = order.iter().enumerate().all(|(k, &i)| k as i64 == i);
        if sorted {
            return Ok(StageRoute { order: None, inverse: None, spans });
        }
        let mut inverse = vec![0i64; order.len()];
        for (k, &i) in order.iter().enumerate() {
            inverse[i as usize] = k as i64;
        }
        Ok(StageRoute {
            order: Some(tch::Tensor::from_slice(&order).to_device(device)),
            inverse: Some(tch::Tensor::from_slice(&inverse).to_device(device)),
            spans,
        })
    }

    /// The one stage of a batch whose samples all belong to it (no routing needed).
    pub fn single(&self) -> Option<usize> {
        match self.spans[..] {
            [(j, _)] => Some(j),
            _ => None,
        }
    }

    /// `t` (`[B, ...]`, batch order) in stage order.
    pub fn sort(&self, t: &tch::Tensor) -> tch::Tensor {
        match &self.order {
            Some(o) => t.index_select(0, o),
            None => t.shallow_clone(),
        }
    }

    /// A stage-ordered `[B, ...]` tensor as one view per span (dimension 0).
    pub fn split(&self, t: &tch::Tensor) -> Vec<tch::Tensor> {
        let sizes: Vec<i64> = self.spans.iter().map(|&(_, n)| n).collect();
        t.split_with_sizes(sizes.as_slice(), 0)
    }

    /// [`StageRoute::split`] of each of `ts`, grouped by span: `[span][tensor]`.
    pub fn split_each(&self, ts: &[tch::Tensor]) -> Vec<Vec<tch::Tensor>> {
        let mut per_span: Vec<Vec<tch::Tensor>> = self.spans.iter().map(|_| Vec::with_capacity(ts.len())).collect();
        for t in ts {
            for (k, part) in self.split(t).into_iter().enumerate() {
                per_span[k].push(part);
            }
        }
        per_span
    }

    /// The spans' outputs (in span order) concatenated and put back in the batch's order.
    pub fn unsort(&self, parts: &[tch::Tensor]) -> tch::Tensor {
        let y = tch::Tensor::cat(parts, 0);
        match &self.inverse {
            Some(inv) => y.index_select(0, inv),
            None => y,
        }
    }
}

/// A network of any family.
#[derive(Debug)]
pub enum Net {
    /// score_sde's NCSN++ layout (`family = "ncsnpp"`).
    Ncsnpp(MultiStageUNet),
    /// EDM's DDPM++ (`family = "ddpmpp"`).
    Ddpmpp(SongUNet),
    /// LDM's ADM U-Net (`family = "adm"`).
    Adm(AdmUNet),
}

impl Net {
    /// Builds the network `cfg.family` names under `vs`.
    pub fn new(vs: &tch::nn::Path, cfg: &UNetConfig) -> anyhow::Result<Self> {
        Ok(match cfg.family {
            Family::Ncsnpp => Net::Ncsnpp(MultiStageUNet::new(vs, cfg)?),
            Family::Ddpmpp => Net::Ddpmpp(SongUNet::new(vs, cfg)?),
            Family::Adm => Net::Adm(AdmUNet::new(vs, cfg)?),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        match self {
            Net::Ncsnpp(n) => n.config(),
            Net::Ddpmpp(n) => n.config(),
            Net::Adm(n) => n.config(),
        }
    }

    pub fn num_stages(&self) -> usize {
        match self {
            Net::Ncsnpp(n) => n.num_stages(),
            Net::Ddpmpp(n) => n.num_stages(),
            Net::Adm(n) => n.num_stages(),
        }
    }

    /// The network's own forward pass (inputs in the weights' kind; no augment labels): see
    /// [`MultiStageUNet::forward`] and [`SongUNet::forward`].
    pub fn forward(
        &self,
        x: &tch::Tensor,
        noise_label: &tch::Tensor,
        stage: &tch::Tensor,
        train: bool,
    ) -> anyhow::Result<tch::Tensor> {
        match self {
            Net::Ncsnpp(n) => n.forward(x, noise_label, stage, train),
            Net::Ddpmpp(n) => n.forward(x, noise_label, stage, None, train),
            Net::Adm(n) => n.forward(x, noise_label, stage, train),
        }
    }

    /// The kind of the weights.
    pub fn kind(&self) -> tch::Kind {
        match self {
            Net::Ncsnpp(n) => n.kind(),
            Net::Ddpmpp(n) => n.kind(),
            Net::Adm(n) => n.kind(),
        }
    }
}

impl StagedNetwork for Net {
    fn forward_staged(
        &self,
        x: &tch::Tensor,
        noise_label: &tch::Tensor,
        stage: &tch::Tensor,
        train: bool,
    ) -> anyhow::Result<tch::Tensor> {
        match self {
            Net::Ncsnpp(n) => n.forward_staged(x, noise_label, stage, train),
            Net::Ddpmpp(n) => n.forward_staged(x, noise_label, stage, train),
            Net::Adm(n) => n.forward_staged(x, noise_label, stage, train),
        }
    }
    fn forward_augmented(
        &self,
        x: &tch::Tensor,
        noise_label: &tch::Tensor,
        stage: &tch::Tensor,
        augment: Option<&tch::Tensor>,
        train: bool,
    ) -> anyhow::Result<tch::Tensor> {
        match self {
            Net::Ncsnpp(n) => n.forward_augmented(x, noise_label, stage, augment, train),
            Net::Ddpmpp(n) => n.forward_augmented(x, noise_label, stage, augment, train),
            Net::Adm(n) => n.forward_augmented(x, noise_label, stage, augment, train),
        }
    }
    fn augment_dim(&self) -> usize {
        match self {
            Net::Ncsnpp(_) | Net::Adm(_) => 0,
            Net::Ddpmpp(n) => StagedNetwork::augment_dim(n),
        }
    }
    fn num_stages(&self) -> usize {
        Net::num_stages(self)
    }
}

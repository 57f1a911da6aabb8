//! `msdiff autoencoder train`: the configuration, the training state and step, checkpoints and
//! the loop, following the diffusion trainer's design ([`crate::train`]).
//!
//! Reproducibility: step s (1-based) draws its batch from [`BatchOrder`]'s per-epoch
//! permutations and its flips and KL noise from `Rng::stream(seed ^ STEP_STREAM, s)`; weights
//! start from msdiff's own [`crate::rng::Rng`] (no libtorch generator is used). With the weights,
//! EMA, both Adam states and the step restored, a resumed run continues bit for bit.
//!
//! Each step: encode, bottleneck (KL sample / VQ snap), decode; the autoencoder loss
//! ([`super::loss`]) plus, once the discriminator is on, the generator's hinge loss scaled by
//! taming's adaptive weight; Adam on the autoencoder; EMA; then one Adam step of the PatchGAN
//! discriminator on the same images and (detached) reconstructions. Taming and LDM alternate two
//! optimisers through Lightning with a second forward pass for the discriminator's turn; msdiff
//! uses the one reconstruction for both.
//!
//! A run folder holds `config.toml`, `metrics.jsonl` (one JSON line per logging window and per
//! evaluation), `checkpoints/step-N/` (atomic: `state.json` + `weights.safetensors` with `model.*`,
//! `ema.*`, `adam_m.*`, `adam_v.*`, `disc.*`, `disc_adam_m.*`, `disc_adam_v.*`) and, at the end,
//! `autoencoder/` (the EMA weights as an autoencoder folder), `eval.json` and
//! `reconstructions.png`.
use super::bottleneck::Gaussian;
use super::config::{AutoencoderConfig, Bottleneck};
use super::eval::{self, ReconReport};
use super::loss::{adaptive_weight, hinge_d_loss, Discriminator, DiscriminatorConfig, LossConfig};
use super::model::{AutoencoderModel, Manifest, FORMAT};
use crate::data::order::BatchOrder;
use crate::data::Dataset;
use crate::rng::Rng;
use crate::train::checkpoint::{self as ckpt, RngState};
use crate::train::ema;
use crate::train::optim::{gradients, Adam, OptimConfig, OptimizerKind};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub const CHECKPOINT_FORMAT: &str = "msdiff-autoencoder-checkpoint/1";
const STEP_STREAM: u64 = 0xAE57_0000_0000_0002;
const DISC_INIT: u64 = 0xAED1_5C00_0000_0003;

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AeDataConfig {
    /// Training images (a dataset spec). Default `fashion-mnist`.
    pub spec: String,
    /// Pad every image by this many pixels per side with -1 (black): 2 turns 28x28 into 32x32. Default 0.
    pub pad: usize,
    /// Use at most this many training images (0 = all). Default 0.
    pub limit: usize,
    /// Random horizontal flips. Default false.
    pub flip: bool,
    /// Held-out images for PSNR / rFID (padded the same way); default: the first training images.
    pub eval_spec: Option<String>,
    /// How many evaluation images PSNR uses. Default 500.
    pub eval_images: usize,
}

impl Default for AeDataConfig {
    fn default() -> Self {
        AeDataConfig { spec: "fashion-mnist".into(), pad: 0, limit: 0, flip: false, eval_spec: None, eval_images: 500 }
    }
}

/// `[optim]`: Adam for the autoencoder and (with the same settings) the discriminator. Defaults:
/// taming's betas (0.5, 0.9), lr 1e-4, no warm-up, no clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AeOptimConfig {
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear learning-rate warm-up over this many steps (0 = none).
    pub warmup_steps: u64,
    /// Clip the global gradient norm (0 = no clipping).
    pub grad_clip: f64,
}

impl Default for AeOptimConfig {
    fn default() -> Self {
        AeOptimConfig {
            optimizer: OptimizerKind::Adam,
            lr: 1e-4,
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            grad_clip: 0.0,
        }
    }
}

impl AeOptimConfig {
    /// The diffusion trainer's optimiser settings with these values.
    pub fn optim(&self) -> OptimConfig {
        OptimConfig {
            optimizer: self.optimizer,
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            grad_clip: self.grad_clip,
            ..Default::default()
        }
    }

    /// Learning rate at (1-based) step `s`.
    pub fn lr_at(&self, s: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * (s as f64 / self.warmup_steps as f64).min(1.0)
        }
    }
}

/// `[ema]`: ema <- decay ema + (1 - decay) weights after every step. Default 0.999.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AeEmaConfig {
    pub decay: f64,
}

impl Default for AeEmaConfig {
    fn default() -> Self {
        AeEmaConfig { decay: 0.999 }
    }
}

/// `[train]`: the loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AeLoopConfig {
    /// Images per step. Default 32.
    pub batch: usize,
    /// Optimiser steps. Default 2000.
    pub steps: u64,
    /// Seed of every random choice (weights, data order, flips, KL noise). Default 0.
    pub seed: u64,
    /// Checkpoint every this many steps (and at the end). Default 500.
    pub checkpoint_every: u64,
    /// Keep this many newest checkpoints. Default 3.
    pub keep_last: usize,
    /// One metrics.jsonl line per this many steps. Default 10.
    pub log_every: u64,
    /// PSNR of the EMA weights on the evaluation images every this many steps (0 = only at the end). Default 0.
    pub eval_every: u64,
    /// rFID at the end on this many evaluation images (0 = none; needs the FID weights). Default 0.
    pub rfid_images: usize,
}

impl Default for AeLoopConfig {
    fn default() -> Self {
        AeLoopConfig {
            batch: 32,
            steps: 2000,
            seed: 0,
            checkpoint_every: 500,
            keep_last: 3,
            log_every: 10,
            eval_every: 0,
            rfid_images: 0,
        }
    }
}

/// The configuration as written (TOML; every key optional, unknown keys refused).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AeTrainConfig {
    pub data: AeDataConfig,
    /// `preset = "..."` and/or any [`AutoencoderConfig`] field.
    pub model: toml::Table,
    pub loss: LossConfig,
    pub optim: AeOptimConfig,
    pub ema: AeEmaConfig,
    pub train: AeLoopConfig,
}

/// Everything resolved (the model layout in full).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AeResolvedConfig {
    pub data: AeDataConfig,
    pub model: AutoencoderConfig,
    pub loss: LossConfig,
    pub optim: AeOptimConfig,
    pub ema: AeEmaConfig,
    pub train: AeLoopConfig,
}

impl AeTrainConfig {
    /// Parse TOML (errors name the line and the key).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        crate::train::config::parse_toml(text, "autoencoder configuration", origin)
    }

    pub fn load(path: &Path) -> Result<Self> {
        crate::train::config::read_toml(path, "autoencoder configuration")
    }

    /// Resolve the preset and overrides for images of `[C, H, W]`: the channels follow the data
    /// unless set (then they must agree), and H, W must be multiples of the downsampling factor.
    pub fn resolve(&self, image_shape: [i64; 3]) -> Result<AeResolvedConfig> {
        let mut t = self.model.clone();
        let base = match t.remove("preset") {
            Some(toml::Value::String(p)) => AutoencoderConfig::preset(&p)?,
            Some(other) => bail!("model.preset must be a string, got {other}"),
            None => AutoencoderConfig::default(),
        };
        let explicit_in = t.contains_key("in_channels");
        let explicit_out = t.contains_key("out_channels");
        let mut merged = toml::Table::try_from(&base).context("cannot serialise the preset")?;
        for (k, v) in t {
            merged.insert(k, v);
        }
        let mut model: AutoencoderConfig = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("invalid [model] section: {}", e.message().trim()))?;
        let c = image_shape[0] as usize;
        if explicit_in {
            ensure!(
                model.in_channels == c,
                "model.in_channels = {} but the images have {c} channel(s)",
                model.in_channels
            );
        }
        if explicit_out {
            ensure!(
                model.out_channels == c,
                "model.out_channels = {} but the images have {c} channel(s)",
                model.out_channels
            );
        }
        model.in_channels = c;
        model.out_channels = c;
        model.validate().context("invalid [model] section")?;
        model.latent_shape(image_shape).context("the training images do not fit the autoencoder")?;
        let r = AeResolvedConfig {
            data: self.data.clone(),
            model,
            loss: self.loss.clone(),
            optim: self.optim.clone(),
            ema: self.ema.clone(),
            train: self.train.clone(),
        };
        r.validate()?;
        Ok(r)
    }
}

impl AeResolvedConfig {
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.loss.validate()?;
        self.optim.optim().validate()?;
        ensure!((0.0..1.0).contains(&self.ema.decay), "ema.decay must be in [0, 1), got {}", self.ema.decay);
        let t = &self.train;
        ensure!(t.batch > 0 && t.steps > 0, "train.batch and train.steps must be > 0");
        ensure!(
            t.checkpoint_every > 0 && t.keep_last > 0 && t.log_every > 0,
            "train.checkpoint_every, keep_last and log_every must be > 0"
        );
        ensure!(self.data.eval_images > 0, "data.eval_images must be > 0");
        ensure!(t.rfid_images != 1, "train.rfid_images must be 0 (none) or >= 2");
        ensure!(self.data.pad <= 4096, "data.pad {} is too large", self.data.pad);
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration as TOML: {e}\n"))
    }
}

/// Load the training images of `[data]` (padded), and the evaluation images.
pub fn load_data(d: &AeDataConfig) -> Result<(Dataset, Dataset)> {
    let opts = crate::data::LoadOptions { limit: (d.limit > 0).then_some(d.limit), ..Default::default() };
    let mut train = crate::data::load(&d.spec, &opts)?;
    let mut eval = match &d.eval_spec {
        Some(s) => {
            crate::data::load(s, &crate::data::LoadOptions { limit: Some(d.eval_images), ..Default::default() })?
        }
        None => train.take(d.eval_images),
    };
    if d.pad > 0 {
        train.images = eval::pad_images(&train.images, d.pad);
        eval.images = eval::pad_images(&eval.images, d.pad);
    }
    ensure!(
        eval.image_shape() == train.image_shape(),
        "the evaluation images are {:?} but the training images {:?}",
        eval.image_shape(),
        train.image_shape()
    );
    Ok((train, eval))
}

/// The discriminator with its own store and optimiser.
struct Disc {
    #[allow(dead_code)]
    vs: VarStore,
    net: Discriminator,
    params: Vec<(String, Tensor)>,
    adam: Adam,
}

/// What training holds between steps.
pub struct AeTrainState {
    /// The trained weights.
    pub model: AutoencoderModel,
    /// Their EMA (what is evaluated and exported).
    pub ema: AutoencoderModel,
    params: Vec<(String, Tensor)>,
    ema_params: Vec<(String, Tensor)>,
    pub adam: Adam,
    disc: Option<Disc>,
    /// VQ with `loss.restart_dead_codes`: steps since each codebook entry was last chosen `[n_embed]`.
    idle: Option<Tensor>,
    /// Steps completed.
    pub step: u64,
}

/// What one step measured (means over the batch).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AeStepStats {
    /// The autoencoder's total loss (not finite: diverged, nothing updated).
    pub loss: f64,
    /// The weighted reconstruction term.
    pub rec: f64,
    /// Mean absolute error per pixel.
    pub l1: f64,
    /// KL per image (summed over the latent), or the VQ codebook loss.
    pub kl_or_codebook: f64,
    /// VQ commitment loss (0 for KL).
    pub commitment: f64,
    /// VQ: distinct codes used in the batch.
    pub codes_used: usize,
    /// VQ: codebook entries restarted after this step.
    pub codes_restarted: usize,
    /// Generator hinge loss -mean(D(x^)) (0 while the discriminator is off).
    pub g_loss: f64,
    /// The weight the generator loss got (adaptive x disc_weight).
    pub d_weight: f64,
    /// Discriminator hinge loss and mean logits.
    pub d_loss: f64,
    pub logits_real: f64,
    pub logits_fake: f64,
    /// Autoencoder gradient norm before clipping.
    pub grad_norm: f64,
}

impl AeTrainState {
    /// Fresh weights from `cfg.train.seed` (the EMA starts equal), Adam at zero.
    pub fn new(cfg: &AeResolvedConfig, device: Device) -> Result<Self> {
        let seed = cfg.train.seed;
        let model = AutoencoderModel::new(&cfg.model, seed, device, "training")?;
        let ema = AutoencoderModel::new(&cfg.model, seed, device, "training (EMA)")?;
        let params = model.params();
        let ema_params = ema.params();
        let adam = Adam::new(cfg.optim.optim(), &params);
        let disc = if cfg.loss.has_disc() {
            let vs = VarStore::new(device);
            let dc = DiscriminatorConfig {
                in_channels: cfg.model.in_channels,
                channels: cfg.loss.disc_channels,
                layers: cfg.loss.disc_layers,
            };
            let net = Discriminator::new(&vs.root(), dc, &mut Rng::stream(seed ^ DISC_INIT, 0));
            let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            params.sort_by(|a, b| a.0.cmp(&b.0));
            let adam = Adam::new(cfg.optim.optim(), &params);
            Some(Disc { vs, net, params, adam })
        } else {
            None
        };
        let idle = (cfg.model.bottleneck == Bottleneck::Vq && cfg.loss.restart_dead_codes > 0)
            .then(|| Tensor::zeros([cfg.model.n_embed as i64], (Kind::Float, device)));
        Ok(AeTrainState { model, ema, params, ema_params, adam, disc, idle, step: 0 })
    }

    /// One step on images `x` `[B, C, H, W]` (on the model's device); `noise` is the KL sample's
    /// standard normal `[B, E, h, w]` (ignored by VQ); `rng` (the step's stream) picks the encoder
    /// outputs that restarted codebook entries take.
    pub fn step(
        &mut self,
        cfg: &AeResolvedConfig,
        x: &Tensor,
        noise: &Tensor,
        lr: f64,
        rng: &mut Rng,
    ) -> Result<AeStepStats> {
        let s = self.step + 1;
        let lc = &cfg.loss;
        let net = &self.model.net;
        let m = net.moments(x)?;
        let mut st = AeStepStats::default();
        let vq_codes: Option<Tensor>;
        let (z, reg) = match cfg.model.bottleneck {
            Bottleneck::Kl => {
                vq_codes = None;
                let g = Gaussian::new(&m);
                let kl = g.kl().mean(Kind::Float);
                st.kl_or_codebook = kl.double_value(&[]);
                let pixels = (x.numel() / x.size()[0] as usize) as f64;
                (g.sample(noise), kl * (lc.kl_weight / pixels))
            }
            Bottleneck::Vq => {
                let q = net.quantize(&m)?;
                st.kl_or_codebook = q.codebook_loss.double_value(&[]);
                st.commitment = q.commitment_loss.double_value(&[]);
                st.codes_used = Vec::<i64>::try_from(q.codes.reshape([-1]).to_device(Device::Cpu))?
                    .into_iter()
                    .collect::<std::collections::BTreeSet<i64>>()
                    .len();
                let reg = if lc.legacy_vq_loss {
                    &q.commitment_loss + &q.codebook_loss * lc.beta
                } else {
                    &q.codebook_loss + &q.commitment_loss * lc.beta
                };
                vq_codes = Some(q.codes.shallow_clone());
                (q.z_q, reg * lc.codebook_weight)
            }
        };
        let y = net.decode(&z)?;
        let rec = lc.reconstruction(x, &y);
        st.rec = rec.double_value(&[]);
        st.l1 = (&y - x).abs().mean(Kind::Float).double_value(&[]);
        let mut loss = &rec + &reg;
        let disc_on = lc.disc_on(s);
        if disc_on {
            let d = self.disc.as_ref().expect("a discriminator exists when it is on");
            let g_loss = -d.net.forward(&y).mean(Kind::Float);
            let w = if lc.adaptive_weight {
                adaptive_weight(&rec, &g_loss, net.decoder.last_layer())? * lc.disc_weight
            } else {
                lc.disc_weight
            };
            st.g_loss = g_loss.double_value(&[]);
            st.d_weight = w;
            loss = &loss + g_loss * w;
        }
        st.loss = loss.double_value(&[]);
        if !st.loss.is_finite() {
            return Ok(st);
        }
        let grads = gradients(&loss, &self.params)?;
        drop(loss);
        let info = self.adam.step(&self.params, &grads, lr).with_context(|| format!("at step {s}"))?;
        drop(grads);
        st.grad_norm = info.grad_norm;
        if let (Some(idle), Some(codes)) = (&mut self.idle, &vq_codes) {
            st.codes_restarted = restart_dead_codes(&self.model, idle, codes, &m, lc.restart_dead_codes, rng)?;
        }
        ema::update(&self.ema_params, &self.params, cfg.ema.decay);
        if disc_on {
            let d = self.disc.as_mut().expect("a discriminator exists when it is on");
            let real = d.net.forward(&x.detach());
            let fake = d.net.forward(&y.detach());
            let d_loss = hinge_d_loss(&real, &fake);
            st.d_loss = d_loss.double_value(&[]);
            st.logits_real = real.mean(Kind::Float).double_value(&[]);
            st.logits_fake = fake.mean(Kind::Float).double_value(&[]);
            ensure!(st.d_loss.is_finite(), "the discriminator loss became {} at step {s}", st.d_loss);
            let g = gradients(&d_loss, &d.params)?;
            d.adam.step(&d.params, &g, lr).with_context(|| format!("discriminator, at step {s}"))?;
        }
        self.step = s;
        Ok(st)
    }

    /// Save a checkpoint of the current step under `dir` (atomic; keeps the newest `keep_last`).
    pub fn save(&self, dir: &Path, cfg: &AeResolvedConfig) -> Result<PathBuf> {
        let a = self.adam.export();
        let mut named: Vec<(String, Tensor)> = Vec::new();
        let mut push = |prefix: &str, group: &[(String, Tensor)]| {
            for (n, t) in group {
                named.push((format!("{prefix}.{n}"), t.shallow_clone()));
            }
        };
        push("model", &self.params);
        push("ema", &self.ema_params);
        push("adam_m", &a.m);
        push("adam_v", &a.v);
        let mut disc_adam_steps = BTreeMap::new();
        if let Some(d) = &self.disc {
            let da = d.adam.export();
            push("disc", &d.params);
            push("disc_adam_m", &da.m);
            push("disc_adam_v", &da.v);
            disc_adam_steps = da.steps;
        }
        if let Some(idle) = &self.idle {
            push("vq_idle", &[("steps".to_string(), idle.shallow_clone())]);
        }
        let state = AeCheckpointState {
            format: CHECKPOINT_FORMAT.into(),
            step: self.step,
            config: cfg.clone(),
            adam_steps: a.steps,
            disc_adam_steps,
            rng: RngState { seed: cfg.train.seed, next_step: self.step + 1 },
        };
        save_checkpoint(dir, &state, &named, cfg.train.keep_last)
    }

    /// Continue from a checkpoint's tensors and state.
    pub fn restore(&mut self, state: &AeCheckpointState, t: &BTreeMap<String, Vec<(String, Tensor)>>) -> Result<()> {
        let group = |g: &str| -> Vec<(String, Tensor)> {
            t.get(g).map(|v| v.iter().map(|(n, x)| (n.clone(), x.shallow_clone())).collect()).unwrap_or_default()
        };
        crate::model::copy_into(&self.params, &group("model"), "weights")?;
        crate::model::copy_into(&self.ema_params, &group("ema"), "EMA weights")?;
        self.adam.import(&group("adam_m"), &group("adam_v"), &state.adam_steps)?;
        match &mut self.disc {
            Some(d) => {
                crate::model::copy_into(&d.params, &group("disc"), "discriminator weights")?;
                d.adam.import(&group("disc_adam_m"), &group("disc_adam_v"), &state.disc_adam_steps)?;
            }
            None => {
                ensure!(!t.contains_key("disc"), "the checkpoint has a discriminator but the configuration has none")
            }
        }
        if let Some(idle) = &mut self.idle {
            let saved = group("vq_idle");
            ensure!(
                saved.len() == 1 && saved[0].1.size() == idle.size(),
                "the checkpoint lacks the codebook's idle counts (vq_idle) that loss.restart_dead_codes needs"
            );
            tch::no_grad(|| idle.copy_(&saved[0].1));
        }
        self.step = state.step;
        Ok(())
    }

    /// Every tensor of the state by group (for tests: bit-exact comparisons).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let a = self.adam.export();
        let mut v: Vec<(String, Tensor)> = Vec::new();
        for (p, g) in [("model", &self.params), ("ema", &self.ema_params), ("adam_m", &a.m), ("adam_v", &a.v)] {
            v.extend(g.iter().map(|(n, t)| (format!("{p}.{n}"), t.shallow_clone())));
        }
        if let Some(d) = &self.disc {
            let da = d.adam.export();
            for (p, g) in [("disc", &d.params), ("disc_adam_m", &da.m), ("disc_adam_v", &da.v)] {
                v.extend(g.iter().map(|(n, t)| (format!("{p}.{n}"), t.shallow_clone())));
            }
        }
        if let Some(idle) = &self.idle {
            v.push(("vq_idle.steps".into(), idle.shallow_clone()));
        }
        v
    }
}

/// Count idle steps per codebook entry (0 for the entries `codes` used) and re-initialise every
/// entry idle for `after` steps to an encoder output of this batch (`latents` `[B, E, h, w]`,
/// rows picked by `rng`), resetting its count. Returns how many were restarted.
fn restart_dead_codes(
    model: &AutoencoderModel,
    idle: &mut Tensor,
    codes: &Tensor,
    latents: &Tensor,
    after: u64,
    rng: &mut Rng,
) -> Result<usize> {
    let _g = tch::no_grad_guard();
    let n = idle.size()[0];
    let used = codes.reshape([-1]).bincount(None::<&Tensor>, n).gt(0);
    let _ = idle.g_add_scalar_(1.0);
    let _ = idle.masked_fill_(&used, 0.0);
    let dead = Vec::<i64>::try_from(idle.ge(after as f64).nonzero().reshape([-1]).to_device(Device::Cpu))?;
    if dead.is_empty() {
        return Ok(0);
    }
    let e = latents.size()[1];
    let flat = latents.detach().permute([0, 2, 3, 1]).reshape([-1, e]);
    let rows: Vec<i64> = dead.iter().map(|_| rng.below(flat.size()[0] as u64) as i64).collect();
    let device = idle.device();
    let dead_t = Tensor::from_slice(&dead).to_device(device);
    let picked = flat.index_select(0, &Tensor::from_slice(&rows).to_device(device));
    let book = model.net.quantizer().expect("restarts are for VQ").embedding.shallow_clone();
    let _ = book.shallow_clone().index_copy_(0, &dead_t, &picked);
    let _ = idle.index_fill_(0, &dead_t, 0.0);
    Ok(dead.len())
}

/// `state.json` of an autoencoder checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AeCheckpointState {
    pub format: String,
    pub step: u64,
    pub config: AeResolvedConfig,
    pub adam_steps: BTreeMap<String, u64>,
    pub disc_adam_steps: BTreeMap<String, u64>,
    pub rng: RngState,
}

fn save_checkpoint(
    dir: &Path,
    state: &AeCheckpointState,
    named: &[(String, Tensor)],
    keep_last: usize,
) -> Result<PathBuf> {
    ckpt::write_step_folder(dir, state.step, named, &serde_json::to_vec_pretty(state)?, keep_last)
}

/// The checkpoint folder a path means: a checkpoint, or a run (its newest) or its `checkpoints/`.
fn resolve_checkpoint(path: &Path) -> Option<PathBuf> {
    if path.join(ckpt::STATE).is_file() {
        return Some(path.to_path_buf());
    }
    for d in [path.join("checkpoints"), path.to_path_buf()] {
        if let Some((_, p)) = ckpt::list(&d).ok()?.pop() {
            return Some(p);
        }
    }
    None
}

/// Whether `path` is an autoencoder training run or checkpoint (by its state's format tag).
pub fn is_run_or_checkpoint(path: &Path) -> bool {
    resolve_checkpoint(path)
        .and_then(|d| std::fs::read_to_string(d.join(ckpt::STATE)).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["format"] == CHECKPOINT_FORMAT)
}

/// Read a checkpoint (a checkpoint folder, or a run's newest): its state and tensors by group.
/// A checkpoint's tensors by group (`model`, `ema`, `adam_m`, ...): named tensors each.
pub type TensorGroups = BTreeMap<String, Vec<(String, Tensor)>>;

pub fn load_checkpoint(path: &Path) -> Result<(AeCheckpointState, TensorGroups)> {
    let dir = resolve_checkpoint(path).ok_or_else(|| {
        if path.exists() {
            anyhow::anyhow!(
                "{} holds no autoencoder checkpoint (expected a step-N folder with {} and {}, or a run folder)",
                path.display(),
                ckpt::STATE,
                ckpt::WEIGHTS
            )
        } else {
            anyhow::anyhow!("checkpoint {} does not exist", path.display())
        }
    })?;
    let spath = dir.join(ckpt::STATE);
    let text = std::fs::read_to_string(&spath).with_context(|| format!("cannot read {}", spath.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", spath.display()))?;
    ensure!(
        v["format"] == CHECKPOINT_FORMAT,
        "{}: format {} is not an autoencoder checkpoint ({CHECKPOINT_FORMAT}); a diffusion run resumes with `msdiff train --resume`",
        spath.display(),
        v["format"]
    );
    let state: AeCheckpointState =
        serde_json::from_value(v).map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", spath.display()))?;
    state.config.validate().with_context(|| format!("{} holds an invalid configuration", spath.display()))?;
    let wpath = dir.join(ckpt::WEIGHTS);
    let named = Tensor::read_safetensors(&wpath)
        .map_err(|e| anyhow::anyhow!("{} is corrupt or truncated: {e}", wpath.display()))?;
    let mut groups: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
    for (name, t) in named {
        ensure!(t.kind() == Kind::Float, "{}: tensor '{name}' is {:?}, expected f32", wpath.display(), t.kind());
        let (g, rest) =
            name.split_once('.').ok_or_else(|| anyhow::anyhow!("{}: unexpected tensor '{name}'", wpath.display()))?;
        ensure!(
            ["model", "ema", "adam_m", "adam_v", "disc", "disc_adam_m", "disc_adam_v", "vq_idle"].contains(&g),
            "{}: unexpected tensor '{name}'",
            wpath.display()
        );
        groups.entry(g.to_string()).or_default().push((rest.to_string(), t));
    }
    for g in groups.values_mut() {
        g.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok((state, groups))
}

/// The EMA weights of a run or checkpoint as an autoencoder.
pub fn load_ema(path: &Path, device: Device) -> Result<AutoencoderModel> {
    let (state, groups) = load_checkpoint(path)?;
    let mut m = AutoencoderModel::new(&state.config.model, 0, device, "")?;
    m.set_weights(groups.get("ema").map(Vec::as_slice).unwrap_or(&[]), "EMA weights")?;
    m.manifest = Manifest {
        format: FORMAT.into(),
        config: state.config.model.clone(),
        scaling_factor: None,
        shift_factor: None,
        source: format!(
            "msdiff autoencoder train: {} step {} (EMA, decay {})",
            path.display(),
            state.step,
            state.config.ema.decay
        ),
    };
    Ok(m)
}

/// A resumed run must be the same experiment (all but `train.steps` and the cadences).
fn check_resumable(old: &AeResolvedConfig, new: &AeResolvedConfig) -> Result<()> {
    fn differs<T: Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    }
    let pairs = [
        ("data", differs(&old.data, &new.data)),
        ("model", differs(&old.model, &new.model)),
        ("loss", differs(&old.loss, &new.loss)),
        ("optim", differs(&old.optim, &new.optim)),
        ("ema", differs(&old.ema, &new.ema)),
        ("train.batch/seed", differs(&(old.train.batch, old.train.seed), &(new.train.batch, new.train.seed))),
    ];
    let diffs: Vec<&str> = pairs.iter().filter(|p| p.1).map(|p| p.0).collect();
    ensure!(
        diffs.is_empty(),
        "cannot resume: the checkpoint was made with a different configuration ({} differ); resume with the run's own config.toml",
        diffs.join(", ")
    );
    Ok(())
}

pub struct AeTrainOptions {
    pub run_dir: PathBuf,
    /// Resume from this checkpoint or run.
    pub resume: Option<PathBuf>,
    pub device: Device,
    pub progress: bool,
    /// Stop (as if interrupted) after this many steps of this session: for tests.
    pub stop_after: Option<u64>,
    /// FID weights for the final rFID (`None`: the default location).
    pub fid_weights: Option<PathBuf>,
}

pub struct AeTrainOutcome {
    pub step: u64,
    pub checkpoint: PathBuf,
    pub interrupted: bool,
    pub seconds: f64,
    /// The final evaluation of the EMA weights (not when interrupted).
    pub eval: Option<ReconReport>,
    /// `run/autoencoder` (not when interrupted).
    pub autoencoder: Option<PathBuf>,
    /// The final state (tests compare it bit for bit).
    pub state: AeTrainState,
}

/// Means over a logging window.
#[derive(Default)]
struct Window {
    n: usize,
    sum: AeStepStats,
    codes: usize,
    restarted: usize,
}

impl Window {
    fn add(&mut self, s: &AeStepStats) {
        self.n += 1;
        let a = &mut self.sum;
        a.loss += s.loss;
        a.rec += s.rec;
        a.l1 += s.l1;
        a.kl_or_codebook += s.kl_or_codebook;
        a.commitment += s.commitment;
        a.g_loss += s.g_loss;
        a.d_weight += s.d_weight;
        a.d_loss += s.d_loss;
        a.logits_real += s.logits_real;
        a.logits_fake += s.logits_fake;
        a.grad_norm = s.grad_norm;
        self.codes = s.codes_used;
        self.restarted += s.codes_restarted;
    }
}

/// Run (or resume) training on `data`, evaluating on `eval_data`.
pub fn train(
    cfg: &AeResolvedConfig,
    data: &Dataset,
    eval_data: &Dataset,
    opts: &AeTrainOptions,
) -> Result<AeTrainOutcome> {
    let [c, h, w] = data.image_shape();
    let [e, lh, lw] = cfg.model.latent_shape([c, h, w])?;
    let t = &cfg.train;
    let device = opts.device;
    // The FID network is needed only at the end, but a missing one should fail now.
    let fid_weights = if t.rfid_images > 0 {
        Some(match &opts.fid_weights {
            Some(p) => p.clone(),
            None => {
                crate::fid::inception::default_weights().context("train.rfid_images needs the FID Inception weights")?
            }
        })
    } else {
        None
    };
    crate::io::ensure_dir(&opts.run_dir)?;
    crate::io::write_atomic_bytes(&opts.run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    let mut state = AeTrainState::new(cfg, device)?;
    if let Some(r) = &opts.resume {
        let (saved, tensors) = load_checkpoint(r)?;
        check_resumable(&saved.config, cfg)?;
        state.restore(&saved, &tensors)?;
        ensure!(state.step <= t.steps, "the checkpoint is at step {}, beyond train.steps = {}", state.step, t.steps);
    }
    let start = state.step;
    let ckpt_dir = opts.run_dir.join("checkpoints");
    let metrics = opts.run_dir.join("metrics.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics)
        .with_context(|| format!("cannot open {}", metrics.display()))?;
    let bar = crate::runtime::progress_bar(t.steps, "autoencoder", !opts.progress);
    bar.set_position(start);
    let mut order = BatchOrder::new(data.len(), t.seed);
    let began = Instant::now();
    let mut window = Window::default();
    let mut window_start = Instant::now();
    let mut last_ckpt: Option<PathBuf> = None;
    let mut interrupted = false;
    let eval_x = eval_data.images.narrow(0, 0, (cfg.data.eval_images as i64).min(eval_data.len() as i64));
    while state.step < t.steps {
        if crate::train::trainer::INTERRUPTED.load(Ordering::SeqCst)
            || opts.stop_after.is_some_and(|n| state.step - start >= n)
        {
            interrupted = true;
            break;
        }
        let s = state.step + 1;
        let mut rng = Rng::stream(t.seed ^ STEP_STREAM, s);
        let idx = Tensor::from_slice(&order.batch(state.step, t.batch));
        let mut x = data.images.index_select(0, &idx);
        if cfg.data.flip {
            let flips: Vec<f32> = (0..t.batch).map(|_| (rng.uniform() < 0.5) as i64 as f32).collect();
            let fl = Tensor::from_slice(&flips).reshape([-1, 1, 1, 1]);
            x = &x * (1.0 - &fl) + x.flip([3]) * &fl;
        }
        let noise = crate::runtime::batch_to_device(&rng.randn(&[t.batch as i64, e, lh, lw], Kind::Float), device);
        let x = crate::runtime::batch_to_device(&x, device);
        let lr = cfg.optim.lr_at(s);
        let st = state.step(cfg, &x, &noise, lr, &mut rng)?;
        if !st.loss.is_finite() {
            bar.abandon();
            let hint = last_ckpt.as_ref().map_or("no checkpoint was written yet".into(), |p| {
                format!("the last good checkpoint is {}", p.display())
            });
            bail!("the loss became {} at step {s}; training stopped ({hint}); try a lower optim.lr or set optim.grad_clip", st.loss);
        }
        window.add(&st);
        if s % t.log_every == 0 || s == t.steps {
            let n = window.n.max(1) as f64;
            let a = &window.sum;
            let secs = window_start.elapsed().as_secs_f64().max(1e-9);
            let line = serde_json::json!({
                "step": s, "loss": a.loss / n, "rec": a.rec / n, "l1": a.l1 / n,
                match cfg.model.bottleneck { Bottleneck::Kl => "kl", Bottleneck::Vq => "codebook" }: a.kl_or_codebook / n,
                "commitment": a.commitment / n, "codes_used": window.codes, "codes_restarted": window.restarted,
                "g_loss": a.g_loss / n, "d_weight": a.d_weight / n, "d_loss": a.d_loss / n,
                "logits_real": a.logits_real / n, "logits_fake": a.logits_fake / n,
                "grad_norm": a.grad_norm, "lr": lr, "images_per_s": (window.n * t.batch) as f64 / secs,
                "elapsed_s": began.elapsed().as_secs_f64(),
            });
            writeln!(log, "{line}").context("cannot write metrics.jsonl")?;
            bar.set_message(format!("loss {:.4} | L1 {:.4}", a.loss / n, a.l1 / n));
            window = Window::default();
            window_start = Instant::now();
        }
        bar.set_position(s);
        if t.eval_every > 0 && s % t.eval_every == 0 && s != t.steps {
            let r = tch::no_grad(|| eval::evaluate(&state.ema, &eval_x, 64, None, |_| {}))?;
            writeln!(log, "{}", serde_json::json!({"step": s, "eval": r, "weights": "ema"}))
                .context("cannot write metrics.jsonl")?;
            bar.println(format!(
                "step {s}: EMA reconstructions of {} evaluation images: PSNR {:.2} dB, L1 {:.4}",
                r.images, r.psnr, r.l1
            ));
        }
        if s % t.checkpoint_every == 0 && s != t.steps {
            last_ckpt = Some(state.save(&ckpt_dir, cfg)?);
        }
    }
    let checkpoint = state.save(&ckpt_dir, cfg)?;
    bar.finish_and_clear();
    let (mut report, mut autoencoder) = (None, None);
    if !interrupted {
        let mut m = load_ema(&checkpoint, Device::Cpu)?;
        m.manifest.source = format!(
            "msdiff autoencoder train: {} step {} (EMA, decay {})",
            opts.run_dir.display(),
            state.step,
            cfg.ema.decay
        );
        let out = opts.run_dir.join("autoencoder");
        m.save(&out)?;
        let fid = match &fid_weights {
            Some(p) => Some(crate::fid::FidInception::load(p, device)?),
            None => None,
        };
        let r = tch::no_grad(|| eval::evaluate(&state.ema, &eval_x, 64, None, |_| {}))?;
        let rfid = match &fid {
            Some(net) => {
                let k = (t.rfid_images as i64).min(eval_data.len() as i64);
                ensure!(k >= 2, "rFID needs at least 2 evaluation images");
                let xs = eval_data.images.narrow(0, 0, k);
                let ys = tch::no_grad(|| eval::reconstruct(&state.ema, &xs, 64, |_| {}))?;
                Some((eval::rfid(net, &xs, &ys, 50, |_| {})?, k))
            }
            None => None,
        };
        let summary = serde_json::json!({
            "step": state.step, "weights": "ema", "eval_images": r.images, "psnr": r.psnr, "l1": r.l1,
            "rfid": rfid.map(|(f, _)| f), "rfid_images": rfid.map(|(_, k)| k),
            "rfid_network": rfid.map(|_| crate::fid::NETWORK_NAME), "rfid_resize": rfid.map(|_| crate::fid::RESIZE_NAME),
            "eval_data": cfg.data.eval_spec.clone().unwrap_or_else(|| format!("the first {} training images", cfg.data.eval_images)),
            "seconds": began.elapsed().as_secs_f64(),
        });
        writeln!(log, "{}", serde_json::json!({"step": state.step, "final": summary}))
            .context("cannot write metrics.jsonl")?;
        crate::io::write_atomic_bytes(
            &opts.run_dir.join("eval.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        eval::comparison_picture(&state.ema, &eval_x, &opts.run_dir.join("reconstructions.png"))?;
        report = Some(ReconReport { rfid: rfid.map(|(f, _)| f), ..r });
        autoencoder = Some(out);
    }
    Ok(AeTrainOutcome {
        step: state.step,
        checkpoint,
        interrupted,
        seconds: began.elapsed().as_secs_f64(),
        eval: report,
        autoencoder,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_resolve_and_refuse() {
        let c = AeTrainConfig::from_toml("[model]\npreset = \"small-kl-f4\"\nch = 64\n[data]\npad = 2", "t").unwrap();
        let r = c.resolve([1, 32, 32]).unwrap();
        assert_eq!((r.model.ch, r.model.in_channels, r.model.out_channels, r.data.pad), (64, 1, 1, 2));
        let e = c.resolve([1, 30, 30]).unwrap_err();
        assert!(format!("{e:#}").contains("multiples of 4"), "{e:#}");
        let e = AeTrainConfig::from_toml("[loss]\nkl = 1", "t").unwrap_err().to_string();
        assert!(e.contains("kl") && e.contains("line 2"), "{e}");
        let e = AeTrainConfig::from_toml("[model]\nin_channels = 3", "t")
            .unwrap()
            .resolve([1, 32, 32])
            .unwrap_err()
            .to_string();
        assert!(e.contains("in_channels = 3"), "{e}");
        let back: AeResolvedConfig = toml::from_str(&r.to_toml()).unwrap();
        assert_eq!(back, r, "the saved config.toml reads back as the same configuration");
    }
}

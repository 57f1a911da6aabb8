//! The run configuration (TOML). Every section and key is optional; unknown keys are rejected
//! with their name. `msdiff train --dry-run` prints the resolved configuration, and every run
//! saves it as `config.toml` next to its outputs.
//!
//! ```toml
//! [data]            # what to train on
//! spec = "builtin"  # builtin | mnist:DIR | fashion-mnist:DIR | cifar10:DIR | folder:DIR | FILE.npy | latents:FILE
//! [model]           # a network preset plus any UNetConfig field to override
//! preset = "small-multistage"
//! [process]         # vp (default) | ddpm | edm
//! kind = "vp"
//! [prediction]      # eps (default for vp/ddpm) | x0 | v | edm (default for edm)
//! [objective]       # stage policy and weights, t_min, EDM's P_mean/P_std
//! [stages]          # split = "split.json" | boundaries_t = [..] | boundaries_step = [..] | method = "uniform" | "snr"
//! [optim]           # Adam/AdamW, lr, warm-up, clipping
//! [ema]             # decay or half_life_images (+ EDM's rampup_ratio)
//! [augment]         # EDM's augmentation: p = 0.12 (EDM's CIFAR-10 recipe), off by default
//! [train]           # batch, steps, seed, checkpoints, logging, periodic samples
//! ```
use super::augment::AugmentConfig;
use super::ema::EmaConfig;
use super::optim::OptimConfig;
use crate::cluster::{self, Method, Split};
use crate::nn::UNetConfig;
use crate::objective::{Objective, ObjectiveConfig, Prediction};
use crate::process::ProcessConfig;
use crate::sampler::{SamplerConfig, SamplerKind};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[data]`: the training set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset spec (see `msdiff --help`). Default `builtin` (procedural shapes, no files).
    pub spec: String,
    /// Builtin only: image size. Default 16.
    pub resolution: usize,
    /// Builtin only: number of images. Default 10000.
    pub count: usize,
    /// Use at most this many images (0 = all). Default 0.
    pub limit: usize,
    /// Random horizontal flips. Default false (digits and shapes are not flip-symmetric).
    pub flip: bool,
    /// Latent data (`spec = "latents:FILE"`) only: the autoencoder folder that encoded the cache,
    /// when it is no longer where the cache recorded it (relative paths are relative to the config
    /// file). Default: the cache's record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoencoder: Option<PathBuf>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { spec: "builtin".into(), resolution: 16, count: 10_000, limit: 0, flip: false, autoencoder: None }
    }
}

/// `[stages]`: where the stage boundaries come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StagesConfig {
    /// A split file written by `msdiff cluster` (relative paths are relative to the config file).
    pub split: Option<PathBuf>,
    /// Explicit cuts in t of the VP-SDE (beta 0.1..20), increasing, in (0, 1).
    pub boundaries_t: Option<Vec<f64>>,
    /// Explicit cuts as steps n of the run's discrete DDPM process (`[process] kind = "ddpm"`),
    /// increasing, in 1..=N-2: `[442, 631]` gives stage 0 = steps 0..441, stage 1 = 442..630,
    /// stage 2 = 631..N-1 (the official LDM routing `t < 442 -> 0, < 631 -> 1, else 2`).
    pub boundaries_step: Option<Vec<u64>>,
    /// Compute the cuts at start: `uniform`, `snr` or `timestep` (use `msdiff cluster` for
    /// `optimal` and `gradient`).
    pub method: Option<Method>,
}

/// `[train]`: the loop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopConfig {
    /// Images per step. Default 64.
    pub batch: usize,
    /// Total optimiser steps. Default 2000.
    pub steps: u64,
    /// Seed of every random choice (data order, stages, noise, dropout). Default 0.
    pub seed: u64,
    /// Save a checkpoint every this many steps (and at the end). Default 500.
    pub checkpoint_every: u64,
    /// Keep this many most recent checkpoints. Default 3.
    pub keep_last: usize,
    /// Write a JSONL metrics line every this many steps. Default 10.
    pub log_every: u64,
    /// Write a PNG grid of EMA samples every this many steps (0 = only at the end). Default 0.
    pub sample_every: u64,
    /// Images in each sample grid. Default 36.
    pub sample_count: usize,
    /// Training precision: `fp32` or `bf16` (bf16 network, fp32 master weights, Adam state, EMA
    /// and loss). Default fp32.
    pub precision: crate::runtime::Precision,
    /// Sampler for the grids. Default DPM-Solver-3, 20 NFE (the paper's VP sampler); Heun 18
    /// steps for EDM.
    pub sampler: Option<SamplerConfig>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            batch: 64,
            steps: 2000,
            seed: 0,
            checkpoint_every: 500,
            keep_last: 3,
            log_every: 10,
            sample_every: 0,
            sample_count: 36,
            sampler: None,
            precision: Default::default(),
        }
    }
}

/// The configuration as written by the user.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub data: DataConfig,
    /// A preset name (`preset = ...`) and/or UNetConfig fields.
    pub model: toml::Table,
    pub process: ProcessConfig,
    pub prediction: Option<Prediction>,
    pub objective: ObjectiveConfig,
    pub stages: StagesConfig,
    pub optim: OptimConfig,
    pub ema: EmaConfig,
    pub augment: AugmentConfig,
    pub train: LoopConfig,
}

/// Everything resolved: the full network layout, the split, the prediction and the sampler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedConfig {
    pub data: DataConfig,
    /// Latent data (`latents:FILE`): the cache and the autoencoder that decodes the samples
    /// (absent for pixel data and in configurations written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent: Option<crate::latent::LatentConfig>,
    pub model: UNetConfig,
    pub process: ProcessConfig,
    pub prediction: Prediction,
    pub objective: ObjectiveConfig,
    /// Stage cuts (empty for a one-decoder model).
    pub split: Option<Split>,
    pub optim: OptimConfig,
    pub ema: EmaConfig,
    /// EDM's augmentation (absent in configurations written before it existed: off).
    #[serde(default)]
    pub augment: AugmentConfig,
    pub train: LoopConfig,
}

/// Parse a TOML configuration (`what`, e.g. "configuration") from `origin`: an error names the
/// line and the key ("invalid configuration run.toml (line 3): unknown field ...").
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, what: &str, origin: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        anyhow::anyhow!("invalid {what} {origin}{at}: {}", e.message().trim())
    })
}

/// Read and parse a TOML configuration file (see [`parse_toml`]).
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_toml(&text, what, &path.display().to_string())
}

impl TrainConfig {
    /// Parse TOML text (unknown keys are errors naming the key).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        parse_toml(text, "configuration", origin)
    }

    pub fn load(path: &Path) -> Result<Self> {
        read_toml(path, "configuration")
    }

    /// Resolve presets and the split. `base_dir` anchors relative split paths; `image_shape` is
    /// the dataset's `[C, H, W]`.
    ///
    /// Latent data (`latents:FILE`) adds the `[latent]` record from the cache's header (the
    /// autoencoder itself is loaded and checked when training starts), and the network is sized
    /// from the cache's latent shape rather than `image_shape`.
    pub fn resolve(&self, base_dir: &Path, image_shape: [i64; 3]) -> Result<ResolvedConfig> {
        let latent = crate::latent::LatentConfig::resolve(&self.data.spec, self.data.autoencoder.as_deref(), base_dir)?;
        let described = latent
            .as_ref()
            .map(|l| format!("the latents of {} (encoded by the autoencoder {})", self.data.spec, l.autoencoder));
        // The network takes the latents, whatever shape the caller declared (`msdiff info --config`
        // passes the [model] table's own).
        let image_shape = latent.as_ref().map_or(image_shape, |l| l.latent_shape);
        let model = resolve_model_of(&self.model, image_shape, described.as_deref())?;
        let process = self.process.build()?;
        let prediction = self.prediction.unwrap_or(match process {
            crate::process::Process::Edm(_) => {
                Prediction::Edm { sigma_data: crate::objective::precond::default_sigma_data() }
            }
            _ => Prediction::Eps,
        });
        let stages = model.num_stages();
        let split = resolve_split(&self.stages, base_dir, stages, &self.process)?;
        let mut train = self.train.clone();
        if train.sampler.is_none() {
            train.sampler = Some(match process {
                crate::process::Process::Edm(_) => SamplerConfig::new(SamplerKind::Heun, 18),
                _ => SamplerConfig::new(SamplerKind::DpmSolver3, 20),
            });
        }
        let r = ResolvedConfig {
            data: self.data.clone(),
            latent,
            model,
            process: self.process.clone(),
            prediction,
            objective: self.objective.clone(),
            split,
            optim: self.optim.clone(),
            ema: self.ema.clone(),
            augment: self.augment.clone(),
            train,
        };
        r.validate()?;
        Ok(r)
    }
}

impl ResolvedConfig {
    /// Every value in range: run by [`TrainConfig::resolve`] and again on a checkpoint's stored
    /// configuration when it is loaded (a hand-edited `state.json` must not train with, say, lr < 0).
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let process = self.process.build()?;
        if let Prediction::Edm { sigma_data } = self.prediction {
            ensure!(
                sigma_data.is_finite() && sigma_data > 0.0,
                "prediction.sigma_data must be > 0 (EDM: 0.5 for data in [-1, 1]), got {sigma_data}"
            );
        }
        self.optim.validate()?;
        self.ema.validate()?;
        self.augment.validate()?;
        if self.augment.enabled() {
            ensure!(
                self.model.augment_dim == self.augment.label_dim(),
                "[augment] produces {} labels but the network takes {} (model.augment_dim); EDM's network (family = \"ddpmpp\") with augment_dim = {} takes them",
                self.augment.label_dim(),
                self.model.augment_dim,
                self.augment.label_dim()
            );
        }
        let t = &self.train;
        ensure!(t.batch > 0, "train.batch must be > 0");
        ensure!(t.steps > 0, "train.steps must be > 0");
        ensure!(t.checkpoint_every > 0, "train.checkpoint_every must be > 0");
        ensure!(t.keep_last > 0, "train.keep_last must be > 0");
        ensure!(t.log_every > 0, "train.log_every must be > 0");
        ensure!(t.sample_count > 0, "train.sample_count must be > 0");
        if let Some(sampler) = &t.sampler {
            sampler.validate(&process)?;
        }
        // Stage sampler construction validates boundaries against the process's range.
        crate::objective::StageSampler::new(&process, &self.objective, &self.boundaries_sigma())?;
        Ok(())
    }

    /// What training and sampling cost per image under this run's network and stage policy.
    pub fn compute(&self) -> Result<Compute> {
        let cuts = self.split.as_ref().map(|s| s.boundaries_t.clone()).unwrap_or_default();
        let report = crate::nn::report(&self.model, &cuts)?;
        let stages =
            crate::objective::StageSampler::new(&self.process.build()?, &self.objective, &self.boundaries_sigma())?;
        Ok(Compute::new(self.objective.policy, &report, stages.weights.clone()))
    }

    pub fn boundaries_sigma(&self) -> Vec<f64> {
        self.split.as_ref().map(|s| s.boundaries_sigma.clone()).unwrap_or_default()
    }

    /// The run's objective: process, parameterisation and stage cuts.
    pub fn build_objective(&self) -> Result<Objective> {
        Ok(Objective::new(self.process.build()?, self.prediction, self.boundaries_sigma()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration as TOML: {e}\n"))
    }
}

/// Forward cost per image under a stage policy (docs/EDM.md §5), written to a run's
/// `compute.json` and printed by `msdiff info --config`. GFLOPs are msdiff's counts
/// (docs/METHOD.md §4.7); training costs about 3x the forward pass (backward ~ 2x forward).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Compute {
    pub policy: crate::objective::StagePolicy,
    /// Forward GFLOP per image of each stage's network.
    pub stage_gflops: Vec<f64>,
    /// The fraction of training images each stage receives under the policy.
    pub stage_frequencies: Vec<f64>,
    /// sum_j frequency_j x GFLOP_j: what one training image actually costs, forward.
    pub train_fwd_gflop_per_image: f64,
    /// The paper's weighting (Table 2): stage GFLOPs weighted by the length of each stage's
    /// VP-time interval, whatever the policy.
    pub interval_weighted_gflop: f64,
    pub interval_weights: Vec<f64>,
}

impl Compute {
    pub fn new(
        policy: crate::objective::StagePolicy,
        report: &crate::nn::ModelReport,
        stage_frequencies: Vec<f64>,
    ) -> Self {
        let train = report.stage_gflops.iter().zip(&stage_frequencies).map(|(g, f)| g * f).sum();
        Compute {
            policy,
            stage_gflops: report.stage_gflops.clone(),
            stage_frequencies,
            train_fwd_gflop_per_image: train,
            interval_weighted_gflop: report.weighted_gflops,
            interval_weights: report.interval_weights.clone(),
        }
    }
}

impl std::fmt::Display for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |v: &[f64]| v.iter().map(|x| format!("{:.2} %", 100.0 * x)).collect::<Vec<_>>().join(" / ");
        writeln!(
            f,
            "training ({} stage policy): stage frequencies {}; {:.2} GFLOP forward per training image (x3 with the backward pass)",
            serde_json::to_value(self.policy).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            pct(&self.stage_frequencies),
            self.train_fwd_gflop_per_image
        )?;
        write!(
            f,
            "paper's convention (stage GFLOPs weighted by t-interval length {}): {:.2} GFLOP",
            pct(&self.interval_weights),
            self.interval_weighted_gflop
        )
    }
}

/// The image shape `[C, R, R]` a `[model]` table declares without a dataset: its own
/// `in_channels` / `resolution`, else its preset's (else the default layout's).
pub fn declared_shape(table: &toml::Table) -> Result<[i64; 3]> {
    let base = match table.get("preset") {
        Some(toml::Value::String(p)) => UNetConfig::preset(p)?,
        Some(other) => bail!("model.preset must be a string, got {other}"),
        None => UNetConfig::default(),
    };
    let get = |k: &str, d: usize| table.get(k).and_then(|v| v.as_integer()).unwrap_or(d as i64);
    let (c, r) = (get("in_channels", base.in_channels), get("resolution", base.resolution));
    Ok([c, r, r])
}

/// A `[model]` table -> full layout: preset first, then overrides; `in_channels` and
/// `resolution` follow the dataset unless set explicitly (then they must agree).
pub fn resolve_model(table: &toml::Table, image_shape: [i64; 3]) -> Result<UNetConfig> {
    resolve_model_of(table, image_shape, None)
}

/// [`resolve_model`] for data that `latents` describes (e.g. "the latents of latents:z.safetensors
/// (encoded by the autoencoder AE)"), named in the errors about channels and size.
fn resolve_model_of(table: &toml::Table, image_shape: [i64; 3], latents: Option<&str>) -> Result<UNetConfig> {
    let mut t = table.clone();
    let base = match t.remove("preset") {
        Some(toml::Value::String(p)) => UNetConfig::preset(&p)?,
        Some(other) => bail!("model.preset must be a string, got {other}"),
        None => UNetConfig::default(),
    };
    let mut merged = toml::Table::try_from(&base).context("cannot serialise the preset")?;
    let explicit_c = t.contains_key("in_channels");
    let explicit_r = t.contains_key("resolution");
    for (k, v) in t {
        merged.insert(k, v);
    }
    let mut cfg: UNetConfig = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("invalid [model] section: {}", e.message().trim()))?;
    let (c, h, w) = (image_shape[0] as usize, image_shape[1] as usize, image_shape[2] as usize);
    if let Some(what) = latents {
        ensure!(h == w, "the U-Net needs square inputs, but {what} are {h}x{w}");
        ensure!(
            !explicit_c || cfg.in_channels == c,
            "model.in_channels = {} but {what} have {c} channel(s): the U-Net takes the latents, so leave model.in_channels out (it follows them) or set it to {c}",
            cfg.in_channels
        );
        ensure!(
            !explicit_r || cfg.resolution == h,
            "model.resolution = {} but {what} are {h}x{h}: the U-Net takes the latents, so leave model.resolution out (it follows them) or set it to {h}",
            cfg.resolution
        );
    }
    ensure!(h == w, "images must be square for this U-Net (got {h}x{w})");
    if explicit_c {
        ensure!(cfg.in_channels == c, "model.in_channels = {} but the dataset has {c} channel(s)", cfg.in_channels);
    }
    if explicit_r {
        ensure!(cfg.resolution == h, "model.resolution = {} but the dataset's images are {h}x{h}", cfg.resolution);
    }
    cfg.in_channels = c;
    cfg.resolution = h;
    cfg.validate().context("invalid [model] section")?;
    Ok(cfg)
}

fn resolve_split(s: &StagesConfig, base_dir: &Path, stages: usize, process: &ProcessConfig) -> Result<Option<Split>> {
    let set = [s.split.is_some(), s.boundaries_t.is_some(), s.boundaries_step.is_some(), s.method.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    ensure!(set <= 1, "set only one of stages.split, stages.boundaries_t, stages.boundaries_step and stages.method");
    if stages == 1 {
        ensure!(set == 0, "a one-decoder (unified) model takes no [stages] boundaries");
        return Ok(None);
    }
    let vp = ProcessConfig::default();
    let split = if let Some(p) = &s.split {
        let path = if p.is_absolute() { p.clone() } else { base_dir.join(p) };
        let mut sp = Split::load(&path)?;
        // Keep the run record compact: the curves stay in the split file.
        sp.details = serde_json::json!({"source": path.display().to_string()});
        sp
    } else if let Some(steps) = &s.boundaries_step {
        split_from_steps(steps, process)?
    } else if let Some(b) = &s.boundaries_t {
        Split::from_t(Method::Uniform, b.clone(), &vp).map(|mut sp| {
            sp.details = serde_json::json!({"source": "explicit boundaries_t"});
            sp
        })?
    } else {
        match s.method.unwrap_or(Method::Uniform) {
            Method::Uniform => Split::from_t(Method::Uniform, cluster::uniform_cuts(stages)?, &vp)?,
            Method::Snr => Split::from_t(Method::Snr, cluster::snr::snr_cuts(&vp.build()?, stages, 1000)?, &vp)?,
            Method::Timestep => Split::from_t(Method::Timestep, cluster::timestep::timestep_cuts(stages, 1000)?, &vp)?,
            Method::Optimal => bail!("stages.method = \"optimal\" needs the dataset's clustering: run `msdiff cluster` and set stages.split"),
            Method::Gradient => bail!(
                "stages.method = \"gradient\" needs a trained run: run `msdiff cluster --method gradient --checkpoint RUN` and set stages.split"
            ),
        }
    };
    ensure!(
        split.stages == stages,
        "the split has {} stages but the model has {stages} decoders (model.decoder_channels)",
        split.stages
    );
    Ok(Some(split))
}

/// `stages.boundaries_step`: cuts as steps n of the run's discrete DDPM process (N steps, step n at
/// t = (n+1)/N). The cut at step n is sigma of step n, so that the stage sampler's half-open
/// `[lo, hi)` in sigma gives stage j exactly the steps from cut j-1 to cut j - 1, as LDM routes.
fn split_from_steps(steps: &[u64], process: &ProcessConfig) -> Result<Split> {
    let ProcessConfig::Ddpm { steps: n, .. } = process else {
        bail!(
            "stages.boundaries_step are steps of a discrete DDPM process, but [process] kind = \"{}\"; set [process] kind = \"ddpm\" or give the cuts as stages.boundaries_t",
            process.build().map(|p| p.name()).unwrap_or("?")
        );
    };
    let n = *n as u64;
    ensure!(!steps.is_empty(), "stages.boundaries_step is empty; give the K-1 cuts, e.g. [442, 631]");
    for (i, &k) in steps.iter().enumerate() {
        ensure!(
            (1..=n.saturating_sub(2)).contains(&k),
            "stages.boundaries_step = {steps:?}: step {k} is outside 1..={} (the process has {n} steps, 0..{})",
            n.saturating_sub(2),
            n - 1
        );
        ensure!(i == 0 || steps[i - 1] < k, "stages.boundaries_step = {steps:?} must be strictly increasing");
    }
    let cuts = steps.iter().map(|&k| (k + 1) as f64 / n as f64).collect();
    let mut sp = Split::from_t(Method::Uniform, cuts, process)?;
    // Exactly the steps given (N t - 1 in floating point may be off by an ulp).
    sp.boundaries_ddpm_step = steps.iter().map(|&k| k as f64).collect();
    sp.details = serde_json::json!({"source": "explicit boundaries_step", "boundaries_step": steps});
    Ok(sp)
}

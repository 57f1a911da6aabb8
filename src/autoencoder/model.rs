//! An autoencoder with its variable store, its folder format, and encoding / decoding of whole
//! arrays in batches.
//!
//! An **autoencoder folder** holds `autoencoder.json` (the [`Manifest`]: format tag, layout,
//! scaling factor, provenance) and `weights.safetensors` (f32 tensors under the LDM names of
//! [`super::net`]). `msdiff autoencoder import` and `msdiff autoencoder train` write one;
//! [`AutoencoderModel::load`] also accepts a training run or one of its checkpoints (EMA weights).
//! Folders are written atomically (a hidden `.NAME.partial-PID` folder renamed into place).
use super::config::{AutoencoderConfig, Bottleneck};
use super::net::Autoencoder;
use crate::rng::SampleStreams;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub const FORMAT: &str = "msdiff-autoencoder/1";
pub const MANIFEST: &str = "autoencoder.json";
pub const WEIGHTS: &str = "weights.safetensors";

/// `autoencoder.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    pub config: AutoencoderConfig,
    /// Multiply latents by this before diffusion (diffusers' `scaling_factor`, LDM's
    /// `scale_factor`). `None`: not known yet; `msdiff autoencoder encode --data` measures 1/std.
    #[serde(default)]
    pub scaling_factor: Option<f64>,
    /// Subtract this before scaling (diffusers' `shift_factor`, SD3 / Flux VAEs). `None` = 0.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Where the weights came from (import folder and class, training run and step, ...).
    pub source: String,
}

/// How to turn a KL posterior into one latent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EncodeMode {
    /// The posterior mean (deterministic).
    #[default]
    Mean,
    /// `mean + std * n`, `n` from the per-image seed.
    Sample,
}

/// A loaded (or fresh) autoencoder.
pub struct AutoencoderModel {
    pub vs: VarStore,
    pub net: Autoencoder,
    pub manifest: Manifest,
}

impl AutoencoderModel {
    /// Fresh weights from `seed`.
    pub fn new(cfg: &AutoencoderConfig, seed: u64, device: Device, source: impl Into<String>) -> Result<Self> {
        let vs = VarStore::new(device);
        let net = Autoencoder::new(&vs.root(), cfg, seed)?;
        let manifest = Manifest {
            format: FORMAT.into(),
            config: cfg.clone(),
            scaling_factor: None,
            shift_factor: None,
            source: source.into(),
        };
        Ok(AutoencoderModel { vs, net, manifest })
    }

    pub fn config(&self) -> &AutoencoderConfig {
        &self.net.cfg
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// All variables, sorted by name.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Variables whose name starts with `prefix` (e.g. `encoder.`), sorted.
    pub fn params_under(&self, prefix: &str) -> Vec<(String, Tensor)> {
        crate::model::params_under(&self.vs, &[prefix])
    }

    /// Copy named tensors in: every variable must be present with its shape (errors name the
    /// tensor and both shapes).
    pub fn set_weights(&self, named: &[(String, Tensor)], what: &str) -> Result<()> {
        crate::model::copy_into(&self.params(), named, what)
    }

    /// A 64-bit FNV-1a hash (hex) of every variable's name, shape and f32 bytes in name order: a
    /// record of exactly which weights produced a latent cache (integrity, not security).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.params())
    }

    /// Load an autoencoder folder, or a training run / checkpoint (its EMA weights). Anything
    /// else is a one-line error saying what was expected.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        if path.join(MANIFEST).is_file() {
            return Self::load_folder(path, device);
        }
        if super::train::is_run_or_checkpoint(path) {
            return super::train::load_ema(path, device);
        }
        if !path.exists() {
            bail!("autoencoder {} does not exist", path.display());
        }
        if path.join("config.json").is_file() && path.join("diffusion_pytorch_model.safetensors").is_file() {
            bail!(
                "{} is a diffusers folder, not an msdiff autoencoder: convert it once with `msdiff autoencoder import --diffusers {} --out AE`",
                path.display(),
                path.display()
            );
        }
        bail!(
            "{} is not an msdiff autoencoder: expected a folder with {MANIFEST} and {WEIGHTS} (from `msdiff autoencoder import` or `train`), or an autoencoder training run",
            path.display()
        )
    }

    fn load_folder(dir: &Path, device: Device) -> Result<Self> {
        let mpath = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&mpath).with_context(|| format!("cannot read {}", mpath.display()))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{} is corrupt or not an msdiff autoencoder manifest: {e}", mpath.display())
        })?;
        ensure!(
            manifest.format == FORMAT,
            "{}: unsupported autoencoder format '{}' (expected {FORMAT})",
            mpath.display(),
            manifest.format
        );
        manifest.config.validate().with_context(|| format!("{} holds an invalid configuration", mpath.display()))?;
        let wpath = dir.join(WEIGHTS);
        ensure!(wpath.is_file(), "autoencoder {} has no {WEIGHTS}", dir.display());
        let named = Tensor::read_safetensors(&wpath)
            .map_err(|e| anyhow::anyhow!("{} is corrupt or truncated: {e}", wpath.display()))?;
        for (n, t) in &named {
            ensure!(t.kind() == Kind::Float, "{}: tensor '{n}' is {:?}, expected f32", wpath.display(), t.kind());
        }
        let mut m = Self::new(&manifest.config, 0, device, manifest.source.clone())?;
        m.set_weights(&named, "weights")
            .with_context(|| format!("{} does not match its {MANIFEST}", wpath.display()))?;
        m.manifest = manifest;
        Ok(m)
    }

    /// Write this autoencoder as a folder at `dir` (atomically; an existing folder of the same
    /// name is replaced only when the new one is complete).
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_folder(dir, &self.manifest, &self.params())
    }

    /// Encode images `[N, C, H, W]` (values in [-1, 1], any device) `batch` at a time -> latents
    /// `[N, E, H/f, W/f]` f32 on the CPU. KL: the mean or a sample (`seeds[i]` seeds image `i`'s
    /// noise, so a sample does not depend on the batch size); VQ: the pre-quantisation latent, or
    /// the snapped one with `quantize`. `progress(done)` after each batch.
    pub fn encode(
        &self,
        x: &Tensor,
        mode: EncodeMode,
        quantize: bool,
        seeds: &[u64],
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Tensor> {
        self.net.check_images(x)?;
        ensure!(batch > 0, "the batch size must be > 0");
        let n = x.size()[0];
        ensure!(n > 0, "no images to encode");
        ensure!(seeds.len() as i64 == n || mode == EncodeMode::Mean, "{} seeds for {n} images", seeds.len());
        match self.config().bottleneck {
            Bottleneck::Kl => ensure!(!quantize, "--quantize is for VQ autoencoders; this one is KL"),
            Bottleneck::Vq => {
                ensure!(mode == EncodeMode::Mean, "--mode sample is for KL autoencoders; a VQ encoder is deterministic")
            }
        }
        let _g = tch::no_grad_guard();
        let mut out = Vec::new();
        let mut start = 0;
        while start < n {
            let len = (batch as i64).min(n - start);
            let xb = crate::runtime::batch_to_device(&x.narrow(0, start, len), self.device());
            let m = self.net.moments(&xb)?;
            let z = match self.config().bottleneck {
                Bottleneck::Kl => {
                    let g = super::bottleneck::Gaussian::new(&m);
                    match mode {
                        EncodeMode::Mean => g.mean,
                        EncodeMode::Sample => {
                            let mut streams = SampleStreams::from_seeds(&seeds[start as usize..(start + len) as usize]);
                            let s = g.mean.size();
                            let noise = streams.randn(&[s[1], s[2], s[3]], Kind::Float).to_device(self.device());
                            g.sample(&noise)
                        }
                    }
                }
                Bottleneck::Vq if quantize => self.net.quantize(&m)?.z_q,
                Bottleneck::Vq => m,
            };
            out.push(z.to_device(Device::Cpu).to_kind(Kind::Float));
            start += len;
            progress(start as usize);
        }
        Ok(Tensor::cat(&out, 0))
    }

    /// VQ: codebook indices `[N, h, w]` (int64, CPU) of latents `[N, E, h, w]`.
    pub fn codes(&self, z: &Tensor, batch: usize) -> Result<Tensor> {
        let q = self.net.quantizer().ok_or_else(|| anyhow::anyhow!("codes are for VQ autoencoders; this one is KL"))?;
        self.net.check_latents(z)?;
        let _g = tch::no_grad_guard();
        let n = z.size()[0];
        ensure!(n > 0, "no latents");
        let mut out = Vec::new();
        let mut start = 0;
        while start < n {
            let len = (batch.max(1) as i64).min(n - start);
            out.push(
                q.codes(&z.narrow(0, start, len).to_device(self.device()).to_kind(Kind::Float))?.to_device(Device::Cpu),
            );
            start += len;
        }
        Ok(Tensor::cat(&out, 0))
    }

    /// Decode latents `[N, E, h, w]` `batch` at a time -> images `[N, C, h f, w f]` f32 on the CPU
    /// (not clamped). A VQ autoencoder snaps the latents to its codebook first unless
    /// `no_quantize` (as LDM decodes when sampling).
    pub fn decode(
        &self,
        z: &Tensor,
        no_quantize: bool,
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Tensor> {
        self.net.check_latents(z)?;
        ensure!(batch > 0, "the batch size must be > 0");
        ensure!(matches!(z.kind(), Kind::Float | Kind::Double), "latents must be float, got {:?}", z.kind());
        if self.config().bottleneck == Bottleneck::Kl {
            ensure!(!no_quantize, "--no-quantize is for VQ autoencoders; this one is KL");
        }
        let _g = tch::no_grad_guard();
        let n = z.size()[0];
        ensure!(n > 0, "no latents to decode");
        let mut out = Vec::new();
        let mut start = 0;
        while start < n {
            let len = (batch as i64).min(n - start);
            let zb = crate::runtime::batch_to_device(&z.narrow(0, start, len), self.device());
            let zb = if self.config().bottleneck == Bottleneck::Vq && !no_quantize {
                self.net.quantize(&zb)?.z_q
            } else {
                zb
            };
            out.push(self.net.decode(&zb)?.to_device(Device::Cpu));
            start += len;
            progress(start as usize);
        }
        Ok(Tensor::cat(&out, 0))
    }
}

/// 64-bit FNV-1a over each tensor's name, shape (little-endian i64) and f32 data, in the given order.
pub fn fingerprint(named: &[(String, Tensor)]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(PRIME);
        }
    };
    for (name, t) in named {
        eat(name.as_bytes());
        for d in t.size() {
            eat(&d.to_le_bytes());
        }
        let flat = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().reshape([-1]);
        let n = flat.numel();
        let mut v = vec![0f32; n];
        flat.copy_data(&mut v, n);
        for x in v {
            eat(&x.to_le_bytes());
        }
    }
    format!("{h:016x}")
}

/// Write an autoencoder folder (manifest + weights) atomically.
pub fn write_folder(dir: &Path, manifest: &Manifest, named: &[(String, Tensor)]) -> Result<()> {
    let name =
        dir.file_name().ok_or_else(|| anyhow::anyhow!("cannot write autoencoder {}: no folder name", dir.display()))?;
    let parent =
        dir.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    crate::io::ensure_dir(&parent)?;
    if dir.exists() && !dir.join(MANIFEST).is_file() {
        bail!("{} exists and is not an autoencoder folder: give a new --out path (nothing was written)", dir.display());
    }
    let partial = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&partial)?;
        let cpu: Vec<(String, Tensor)> = named
            .iter()
            .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous()))
            .collect();
        let wpath = partial.join(WEIGHTS);
        Tensor::write_safetensors(&cpu, &wpath).map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::File::open(&wpath)?.sync_all()?;
        crate::io::write_atomic_bytes(&partial.join(MANIFEST), &serde_json::to_vec_pretty(manifest)?)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::rename(&partial, dir)?;
        if let Ok(d) = std::fs::File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&partial);
        bail!("cannot write autoencoder {}: {e:#}", dir.display());
    }
    Ok(())
}

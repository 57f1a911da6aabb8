//! Latent diffusion: a diffusion run trained on an autoencoder's latents (`[data] spec =
//! "latents:FILE"`, a cache from `msdiff autoencoder encode`) remembers that autoencoder and
//! turns its samples into images (docs/LATENT.md §6).
//!
//! - [`LatentConfig`]: the resolved configuration's `[latent]` section (saved in `config.toml` and
//!   in every checkpoint): the cache, the autoencoder folder (absolute), its weights fingerprint,
//!   the scale and shift, the image and latent shapes, and whether decoding quantises (VQ).
//! - [`LatentDecoder`]: the autoencoder loaded and checked against that record (it exists, its
//!   latents fit the U-Net, its fingerprint is the recorded one; each failure is one line saying
//!   what to do), and the decode rule: `z = x / scale_factor + shift_factor`, decoded (a VQ
//!   autoencoder snaps `z` to its codebook first, as LDM decodes), clamped to [-1, 1].
//! - [`sample_images`]: what `msdiff sample` and `msdiff eval` run on a trained model: the solver's
//!   output (`raw`, latents for a latent run) and the images (decoded for a latent run).
//!
//! Training never runs the encoder: the latents are the cache's; the decoder runs only for the
//! sample grids.
use crate::autoencoder::{AutoencoderConfig, AutoencoderModel, Bottleneck};
use crate::data::latents::LatentCache;
use crate::model::Loaded;
use crate::nn::UNetConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The dataset spec prefix of a latent cache.
pub const SPEC_PREFIX: &str = "latents:";

/// `[latent]`: what a run trained on a latent cache decodes with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentConfig {
    /// The latent cache (absolute path).
    pub cache: String,
    /// The autoencoder folder that encoded it and decodes the samples (absolute path; `[data]
    /// autoencoder` overrides the cache's record).
    pub autoencoder: String,
    /// Its weights fingerprint (`msdiff::autoencoder::model::fingerprint`), as the cache records it.
    pub fingerprint: String,
    /// The network sees `(z - shift_factor) * scale_factor`.
    pub scale_factor: f64,
    pub shift_factor: f64,
    /// `[C, H, W]` of the images the autoencoder encodes and decodes.
    pub image_shape: [i64; 3],
    /// `[E, h, w]` of the latents (the network's input).
    pub latent_shape: [i64; 3],
    /// A VQ autoencoder: decoding snaps the latents to the codebook first.
    pub vq: bool,
}

/// Who asks for the autoencoder: the remedies differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Training (`[data] autoencoder` moves it).
    Train,
    /// Sampling or evaluating a trained model (`--autoencoder` moves it).
    Sample,
}

/// `path` made absolute against the current directory (not resolving links).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

impl LatentConfig {
    /// The record of a `[data]` section: `None` unless `spec` is `latents:FILE`. `autoencoder`
    /// (`[data] autoencoder`, relative to `base_dir`) replaces the path the cache recorded; a
    /// relative recorded path is taken from the current folder, else from the cache's folder.
    /// Reads the cache's header only.
    pub fn resolve(spec: &str, autoencoder: Option<&Path>, base_dir: &Path) -> Result<Option<LatentConfig>> {
        let Some(file) = spec.strip_prefix(SPEC_PREFIX) else {
            if let Some(a) = autoencoder {
                bail!(
                    "[data] autoencoder = \"{}\" applies to latent data (spec = \"latents:FILE\"), but spec = \"{spec}\"; remove it",
                    a.display()
                );
            }
            return Ok(None);
        };
        let cache = absolute(Path::new(file));
        let (info, shape) = LatentCache::read_info(&cache).with_context(|| format!("cannot load dataset '{spec}'"))?;
        let ae = match autoencoder {
            Some(a) if a.is_absolute() => a.to_path_buf(),
            Some(a) => absolute(&base_dir.join(a)),
            None => {
                let rec = Path::new(&info.autoencoder.path);
                let here = absolute(rec);
                match cache.parent().map(|d| d.join(rec)) {
                    Some(beside) if !rec.is_absolute() && !here.exists() && beside.exists() => absolute(&beside),
                    _ => here,
                }
            }
        };
        let ae_cfg: AutoencoderConfig = serde_json::from_value(info.autoencoder.config.clone()).map_err(|e| {
            anyhow::anyhow!(
                "{}: the record of its autoencoder holds an invalid layout ({e}); re-encode",
                cache.display()
            )
        })?;
        Ok(Some(LatentConfig {
            cache: cache.display().to_string(),
            autoencoder: ae.display().to_string(),
            fingerprint: info.autoencoder.fingerprint.clone(),
            scale_factor: info.scale_factor,
            shift_factor: info.shift_factor,
            image_shape: info.image_shape,
            latent_shape: [shape[1], shape[2], shape[3]],
            vq: ae_cfg.bottleneck == Bottleneck::Vq,
        }))
    }

    /// Whether two records describe the same latents (paths may differ: files move).
    pub fn same_latents(&self, other: &LatentConfig) -> bool {
        (self.fingerprint.as_str(), self.scale_factor, self.shift_factor, self.image_shape, self.latent_shape, self.vq)
            == (
                other.fingerprint.as_str(),
                other.scale_factor,
                other.shift_factor,
                other.image_shape,
                other.latent_shape,
                other.vq,
            )
    }

    /// Network input (scaled latents) -> the autoencoder's latents: `x / scale + shift`.
    pub fn unscale(&self, x: &Tensor) -> Tensor {
        x / self.scale_factor + self.shift_factor
    }
}

/// The autoencoder of a latent run, checked against its [`LatentConfig`].
pub struct LatentDecoder {
    pub model: AutoencoderModel,
    pub record: LatentConfig,
    /// Where it was loaded from.
    pub path: PathBuf,
}

impl LatentDecoder {
    /// Load the autoencoder `record` names (or `path_override`, e.g. `--autoencoder`) on `device`
    /// and check it: it exists, its latents fit `net` (channels = `embed_dim`, size = image size /
    /// downsampling factor), and its weights fingerprint is the recorded one. Every failure is a
    /// one-line error with the remedy for `usage`.
    pub fn load(
        record: &LatentConfig,
        path_override: Option<&Path>,
        net: &UNetConfig,
        device: Device,
        usage: Use,
    ) -> Result<LatentDecoder> {
        let path = path_override.map(absolute).unwrap_or_else(|| PathBuf::from(&record.autoencoder));
        let p = path.display();
        if !path.exists() {
            match (usage, path_override) {
                (_, Some(_)) => bail!("--autoencoder {p} does not exist"),
                (Use::Train, None) => bail!(
                    "latents {} were encoded by autoencoder {p}, which does not exist: set [data] autoencoder = \"PATH\" to its new place, or re-encode the dataset (msdiff autoencoder encode --model AE --data ... --out {})",
                    record.cache,
                    record.cache
                ),
                (Use::Sample, None) => bail!(
                    "this model was trained on latents of the autoencoder {p}, which does not exist: give its new place with --autoencoder PATH"
                ),
            }
        }
        let model = AutoencoderModel::load(&path, device)
            .map_err(|e| anyhow::anyhow!("cannot load the autoencoder of this latent run: {e:#}"))?;
        let cfg = model.config();
        let f = cfg.factor() as i64;
        let [_, h, w] = record.image_shape;
        let (e, lh, lw) = (cfg.embed_dim as i64, h / f, w / f);
        let (c, r) = (net.in_channels as i64, net.resolution as i64);
        if e != c || h % f != 0 || w % f != 0 || lh != r || lw != r {
            bail!(
                "the autoencoder at {p} makes latents whose channels do not fit the U-Net: {e}x{lh}x{lw} latents (embed_dim {e}, downsampling {f} of {}x{h}x{w} images) but the network takes {c}x{r}x{r}; {}",
                record.image_shape[0],
                match usage {
                    Use::Train => "use the autoencoder that encoded the latents ([data] autoencoder)",
                    Use::Sample => "give the autoencoder this model was trained with (--autoencoder)",
                }
            );
        }
        let fp = model.fingerprint();
        if fp != record.fingerprint {
            match usage {
                Use::Train => bail!(
                    "latents {} were encoded by the autoencoder with weights fingerprint {}, but the autoencoder at {p} has fingerprint {fp}: set [data] autoencoder to the one that encoded them, or re-encode the dataset with this one (msdiff autoencoder encode --model {p} --data ... --out FILE.safetensors)",
                    record.cache,
                    record.fingerprint
                ),
                Use::Sample => bail!(
                    "the autoencoder at {p} no longer matches the latents this model was trained on (fingerprint {fp}, run recorded {}): give the autoencoder that encoded {} with --autoencoder, or retrain on latents of this one",
                    record.fingerprint,
                    record.cache
                ),
            }
        }
        Ok(LatentDecoder { model, record: record.clone(), path })
    }

    /// Network-space latents `x` `[N, E, h, w]` (the solver's output, any device) -> images
    /// `[N, C, H, W]` on the CPU, clamped to [-1, 1]: `z = x / scale + shift`, decoded `batch` at a
    /// time (VQ: quantised first).
    pub fn decode(&self, x: &Tensor, batch: usize, progress: impl FnMut(usize)) -> Result<Tensor> {
        let z = self.record.unscale(&x.to_device(Device::Cpu).to_kind(tch::Kind::Float));
        Ok(self.model.decode(&z, false, batch.max(1), progress)?.clamp(-1.0, 1.0))
    }
}

/// What sampling a trained model gives.
pub struct Sampled {
    /// The images, `[N, C, H, W]` clamped to [-1, 1] (decoded for a latent run), on the CPU.
    pub images: Tensor,
    /// The solver's output, unclipped: latents (network space) for a latent run.
    pub raw: Tensor,
    /// Network evaluations per image.
    pub nfe: usize,
}

impl Loaded {
    /// The run's autoencoder when it was trained on latents (checked; `path_override` is
    /// `--autoencoder`), `None` for a pixel-space run (then `path_override` is an error).
    pub fn latent_decoder(&self, path_override: Option<&Path>, device: Device) -> Result<Option<LatentDecoder>> {
        match &self.config.latent {
            Some(rec) => LatentDecoder::load(rec, path_override, &self.config.model, device, Use::Sample).map(Some),
            None => match path_override {
                Some(p) => bail!(
                    "--autoencoder {} is for a model trained on latents, but this one was trained on '{}'",
                    p.display(),
                    self.config.data.spec
                ),
                None => Ok(None),
            },
        }
    }
}

/// Sample `seeds` with a trained model (`init`: optional x_T) and, for a latent run, decode:
/// `images` are what PNGs, `samples.npy` and FID use, `raw` the solver's unclipped output.
#[allow(clippy::too_many_arguments)]
pub fn sample_images(
    model: &Loaded,
    decoder: Option<&LatentDecoder>,
    sampler: &crate::sampler::SamplerConfig,
    seeds: &[u64],
    batch: usize,
    init: Option<&Tensor>,
    device: Device,
    progress: impl FnMut(usize),
) -> Result<Sampled> {
    let den = model.denoiser()?;
    let process = model.config.process.build()?;
    sampler.validate(&process)?;
    let m = &model.config.model;
    let item = [m.in_channels as i64, m.resolution as i64, m.resolution as i64];
    let s = crate::sampler::sample_seeds(sampler, &den, &process, &item, seeds, batch, init, device, progress)?;
    let raw = s.x.to_device(Device::Cpu);
    anyhow::ensure!(
        raw.isfinite().all().int64_value(&[]) == 1,
        "the samples contain NaN or infinite values; nothing was written"
    );
    let images = match decoder {
        Some(d) => d.decode(&raw, batch, |_| {})?,
        None => raw.clamp(-1.0, 1.0),
    };
    Ok(Sampled { images, raw, nfe: s.nfe })
}

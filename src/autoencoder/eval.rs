//! Reconstruction quality: PSNR and rFID (FID between images and their reconstructions), and the
//! latent cache of a dataset.
//!
//! Reconstructions are `decode(encode(x))` with the KL posterior **mean** (deterministic) or the
//! VQ latent snapped to the codebook, clamped to [-1, 1]. PSNR is per image, `10 log10(2^2 /
//! MSE)` for data in [-1, 1] (peak-to-peak 2), averaged over the images. rFID is the FID of the
//! reconstructions against the originals, both quantised to 8 bits as PNG files would be, with
//! msdiff's TF Inception ([`crate::fid`]).
use super::model::{AutoencoderModel, EncodeMode};
use super::Bottleneck;
use crate::data::latents::{AutoencoderRecord, LatentCache, LatentInfo};
use crate::data::Dataset;
use crate::fid::FidInception;
use anyhow::{ensure, Result};
use serde::Serialize;
use tch::{Kind, Tensor};

/// Pad `[N, C, H, W]` images by `pad` pixels on every side with -1 (black in [-1, 1]), e.g.
/// Fashion-MNIST's 28x28 to 32x32 with `pad = 2`.
pub fn pad_images(x: &Tensor, pad: usize) -> Tensor {
    let p = pad as i64;
    (x + 1.0).constant_pad_nd([p, p, p, p]) - 1.0
}

/// A PNG of the first (up to) 16 images of `x` above their reconstructions; images smaller than
/// 96 pixels are enlarged (nearest neighbour, an integer factor) so that they can be seen.
pub fn comparison_picture(model: &AutoencoderModel, x: &Tensor, path: &std::path::Path) -> Result<()> {
    let k = x.size()[0].min(16);
    let xs = x.narrow(0, 0, k);
    let _g = tch::no_grad_guard();
    let y = reconstruct(model, &xs, 16, |_| {})?;
    let both = Tensor::cat(&[xs.clamp(-1.0, 1.0), y], 0);
    let s = both.size();
    let f = (96 / s[2].max(s[3])).max(1);
    let both = if f > 1 { both.upsample_nearest2d([s[2] * f, s[3] * f], f as f64, f as f64) } else { both };
    crate::io::write_grid(path, &both, k as usize, 2)
}

/// `decode(encode(x))` clamped to [-1, 1], `batch` images at a time (CPU f32 out).
pub fn reconstruct(
    model: &AutoencoderModel,
    x: &Tensor,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<Tensor> {
    let n = x.size()[0];
    ensure!(n > 0, "no images to reconstruct");
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = (batch.max(1) as i64).min(n - start);
        let xb = x.narrow(0, start, len);
        let quantize = model.config().bottleneck == Bottleneck::Vq;
        let z = model.encode(&xb, EncodeMode::Mean, quantize, &[], batch, |_| {})?;
        out.push(model.decode(&z, quantize, batch, |_| {})?.clamp(-1.0, 1.0));
        start += len;
        progress(start as usize);
    }
    Ok(Tensor::cat(&out, 0))
}

/// Mean over images of `10 log10(4 / MSE_i)` (images in [-1, 1]); an exact copy counts as 100 dB.
pub fn psnr(x: &Tensor, y: &Tensor) -> Result<f64> {
    ensure!(
        x.size() == y.size() && x.dim() == 4,
        "PSNR needs two [N, C, H, W] arrays of one shape, got {:?} and {:?}",
        x.size(),
        y.size()
    );
    let mse = (x.to_kind(Kind::Double) - y.to_kind(Kind::Double)).square().mean_dim(
        [1i64, 2, 3].as_slice(),
        false,
        Kind::Double,
    );
    let per = Vec::<f64>::try_from(mse)?;
    Ok(per.iter().map(|&m| if m > 0.0 { (10.0 * (4.0 / m).log10()).min(100.0) } else { 100.0 }).sum::<f64>()
        / per.len() as f64)
}

/// FID of `y` against `x` (both `[N, C, H, W]` in [-1, 1], N >= 2).
pub fn rfid(net: &FidInception, x: &Tensor, y: &Tensor, batch: usize, mut progress: impl FnMut(usize)) -> Result<f64> {
    ensure!(x.size()[0] >= 2, "rFID needs at least 2 images");
    let a = crate::fid::compute_stats_tensor(net, &crate::fid::pm1_to_u8(x), batch, &mut progress)?;
    let b = crate::fid::compute_stats_tensor(net, &crate::fid::pm1_to_u8(y), batch, &mut progress)?;
    crate::fid::frechet_distance(&b, &a)
}

/// What [`evaluate`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct ReconReport {
    pub images: usize,
    pub psnr: f64,
    /// Mean absolute error per pixel (images in [-1, 1]).
    pub l1: f64,
    /// `None` when not asked for.
    pub rfid: Option<f64>,
}

/// PSNR and L1 of the reconstructions of `x`, and their rFID when `fid` is given.
pub fn evaluate(
    model: &AutoencoderModel,
    x: &Tensor,
    batch: usize,
    fid: Option<(&FidInception, usize)>,
    mut progress: impl FnMut(usize),
) -> Result<ReconReport> {
    let y = reconstruct(model, x, batch, &mut progress)?;
    let l1 = (&y - x).abs().mean(Kind::Double).double_value(&[]);
    let rfid = match fid {
        Some((net, fb)) => Some(rfid(net, x, &y, fb, |_| {})?),
        None => None,
    };
    Ok(ReconReport { images: x.size()[0] as usize, psnr: psnr(x, &y)?, l1, rfid })
}

/// Where the cache's scale factor comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// LDM's `scale_by_std`: 1 / (std of all the cached latent values).
    InverseStd,
    /// The autoencoder's `scaling_factor` (an imported diffusers model's) when it has one, else 1/std.
    Auto,
    /// This value.
    Given(f64),
}

/// How [`cache_latents`] encodes.
#[derive(Clone, Copy, Debug)]
pub struct CacheOptions {
    /// KL: the mean or a sample.
    pub mode: EncodeMode,
    /// Image i's sample (KL `sample` mode) uses seed + i.
    pub seed: u64,
    /// VQ: store the quantised latents.
    pub quantize: bool,
    /// The scale factor recorded with the latents.
    pub scale: Scale,
    /// Images per batch (the result does not depend on it).
    pub batch: usize,
}

/// Encode a whole dataset into a latent cache (`model_path` and `spec` are recorded as given).
pub fn cache_latents(
    model: &AutoencoderModel,
    model_path: &str,
    data: &Dataset,
    spec: &str,
    opts: CacheOptions,
    progress: impl FnMut(usize),
) -> Result<LatentCache> {
    let CacheOptions { mode, seed, quantize, scale, batch } = opts;
    let n = data.len() as u64;
    let seeds: Vec<u64> = (0..n).map(|i| seed.wrapping_add(i)).collect();
    let latents = model.encode(&data.images, mode, quantize, &seeds, batch, progress)?;
    let (mean, std, channel_mean, channel_std) = LatentInfo::stats(&latents)?;
    let shift = model.manifest.shift_factor.unwrap_or(0.0);
    let (scale_factor, scale_source) = match (scale, model.manifest.scaling_factor) {
        (Scale::Given(s), _) => (s, "given on the command line".to_string()),
        (Scale::Auto, Some(s)) => (s, "the autoencoder's scaling_factor".to_string()),
        (Scale::Auto | Scale::InverseStd, _) => {
            let centred = if shift != 0.0 {
                (latents.to_kind(Kind::Double) - shift).square().mean(Kind::Double).double_value(&[]).sqrt()
            } else {
                std
            };
            ensure!(
                centred > 0.0 && centred.is_finite(),
                "the latents have standard deviation {centred}: cannot scale them by 1/std"
            );
            (
                1.0 / centred,
                if shift != 0.0 {
                    "1/rms of (latents - shift)".to_string()
                } else {
                    "1/std of these latents (LDM's scale_by_std)".to_string()
                },
            )
        }
    };
    ensure!(scale_factor.is_finite() && scale_factor > 0.0, "the scale factor must be > 0, got {scale_factor}");
    let info = LatentInfo {
        scale_factor,
        shift_factor: shift,
        scale_source,
        mean,
        std,
        channel_mean,
        channel_std,
        image_shape: data.image_shape(),
        dataset: spec.to_string(),
        mode: match mode {
            EncodeMode::Mean => "mean".into(),
            EncodeMode::Sample => "sample".into(),
        },
        seed,
        quantized: quantize,
        autoencoder: AutoencoderRecord {
            path: model_path.to_string(),
            fingerprint: model.fingerprint(),
            source: model.manifest.source.clone(),
            config: serde_json::to_value(model.config())?,
        },
    };
    Ok(LatentCache { latents, labels: data.labels.clone(), info })
}

//! FID: Inception-v3 (TF `inception-2015-12-05`) pool_3 features, their Gaussian statistics
//! and the Frechet distance, natively on libtorch.
//!
//! ```no_run
//! # use msdiff::fid::*; use tch::{Device, Tensor};
//! # fn main() -> anyhow::Result<()> {
//! let net = FidInception::load(DEFAULT_WEIGHTS, Device::Cpu)?;
//! let images: Tensor = Tensor::zeros([16, 3, 32, 32], (tch::Kind::Uint8, Device::Cpu));
//! let stats = compute_stats(&net, std::iter::once(Ok(images)), 32, |done| eprintln!("{done}"))?;
//! stats.save("samples.fidstats.safetensors")?;
//! let reference = FidStats::load("ref.fidstats.safetensors")?;
//! let report = frechet_distance_report(&stats, &reference)?;
//! println!("FID {:.3} (n = {}, resize {RESIZE_NAME})", report.fid, stats.n);
//! # Ok(()) }
//! ```
//!
//! Every reported FID should name its sample count, reference statistics and resize
//! ([`RESIZE_NAME`]: TF1 bilinear, the TF original's and torch-fidelity's convention).
pub mod inception;
pub mod stats;

#[cfg(test)]
mod tests;

pub use inception::{
    pm1_to_u8, resize_tf1_bilinear, FidInception, DEFAULT_WEIGHTS, FEATURE_DIM, INPUT_SIZE, NETWORK_NAME,
    RESIZE_DESCRIPTION, RESIZE_NAME,
};
pub use stats::{frechet_distance, frechet_distance_report, FidStats, FrechetReport, StatsAccumulator};

use anyhow::{ensure, Result};
use tch::Tensor;

/// Run `net` over `images` in chunks of at most `batch`, calling `on_chunk(features)` for each.
fn for_each_chunk(
    net: &FidInception,
    images: &Tensor,
    batch: usize,
    mut on_chunk: impl FnMut(Tensor) -> Result<()>,
) -> Result<()> {
    ensure!(batch > 0, "FID batch size must be > 0");
    ensure!(images.dim() == 4, "FID images must be [N, C, H, W], got shape {:?}", images.size());
    let n = images.size()[0];
    let mut start = 0;
    while start < n {
        let len = (batch as i64).min(n - start);
        on_chunk(net.features_u8(&images.narrow(0, start, len))?)?;
        start += len;
    }
    Ok(())
}

/// Pool_3 features `[N, 2048]` (f32, CPU) of images `[N, C, H, W]` with values in [0, 255]
/// (u8 or float; C = 1 or 3; any size, resized by [`RESIZE_NAME`]), `batch` images at a time.
/// `progress(done)` is called after each batch with the number of images done.
pub fn features(net: &FidInception, images: &Tensor, batch: usize, mut progress: impl FnMut(usize)) -> Result<Tensor> {
    let mut out = Vec::new();
    let mut done = 0usize;
    for_each_chunk(net, images, batch, |f| {
        done += f.size()[0] as usize;
        out.push(f);
        progress(done);
        Ok(())
    })?;
    if out.is_empty() {
        return Ok(Tensor::zeros([0, FEATURE_DIM], (tch::Kind::Float, tch::Device::Cpu)));
    }
    Ok(Tensor::cat(&out, 0))
}

/// FID statistics of a stream of image batches (each `[n_i, C, H, W]`, values in [0, 255],
/// u8 or float; batches may have any size and are re-chunked to at most `batch` images).
/// Mean and covariance are accumulated in f64 ([`StatsAccumulator`]); the result records
/// [`NETWORK_NAME`] and [`RESIZE_NAME`]. `progress(done)` is called after each network batch.
pub fn compute_stats<I>(
    net: &FidInception,
    images: I,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<FidStats>
where
    I: IntoIterator<Item = Result<Tensor>>,
{
    let mut acc = StatsAccumulator::new();
    let mut done = 0usize;
    for item in images {
        let imgs = item?;
        for_each_chunk(net, &imgs, batch, |f| {
            done += f.size()[0] as usize;
            acc.update(&f)?;
            progress(done);
            Ok(())
        })?;
    }
    acc.finish(NETWORK_NAME, RESIZE_NAME)
}

/// [`compute_stats`] of one tensor of images.
pub fn compute_stats_tensor(
    net: &FidInception,
    images: &Tensor,
    batch: usize,
    progress: impl FnMut(usize),
) -> Result<FidStats> {
    compute_stats(net, std::iter::once(Ok(images.shallow_clone())), batch, progress)
}

/// Statistics of precomputed features `[N, d]`.
/// Statistics of images in [-1, 1] (quantised to 8 bits, as when saved as PNG), in batches of
/// `batch`; with `features_out`, the `[N, 2048]` features are also written there as .npy.
/// `progress` gets the number of images done.
pub fn stats_of_images(
    net: &FidInception,
    images: &Tensor,
    batch: usize,
    features_out: Option<&std::path::Path>,
    progress: impl FnMut(usize),
) -> Result<FidStats> {
    let u8s = inception::pm1_to_u8(images);
    match features_out {
        Some(p) => {
            let f = features(net, &u8s, batch, progress)?;
            crate::io::npy::write_npy(p, &f)?;
            stats_of_features(&f)
        }
        None => compute_stats_tensor(net, &u8s, batch, progress),
    }
}

pub fn stats_of_features(features: &Tensor) -> Result<FidStats> {
    let mut acc = StatsAccumulator::new();
    acc.update(features)?;
    acc.finish(NETWORK_NAME, RESIZE_NAME)
}

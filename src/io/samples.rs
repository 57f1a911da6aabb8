//! A folder of samples: the arrays and pictures `msdiff sample` (and the demo) write.
use anyhow::{Context, Result};
use std::path::Path;
use tch::Tensor;

/// Write a sampler's output `x` (`[N, C, H, W]`, images in [-1, 1] up to solver overshoot) to `dir`:
/// - `samples.npy`: the images clipped to [-1, 1], exactly what the PNGs show; this is what
///   `msdiff fid stats/calc --images` and other tools should read;
/// - `raw.npy`: the solver's unclipped output (to compare samplers or tools number for number);
/// - `grid.png` and (optionally) `images/NNNNNN.png`.
///
/// Each file is written atomically; numbered images left in `images/` by an earlier call with
/// more samples are removed.
pub fn write_samples(dir: &Path, x: &Tensor, images: bool) -> Result<()> {
    write_images_and_raw(dir, &x.clamp(-1.0, 1.0), x, images)
}

/// [`write_samples`] when the pictures are not the solver's output clipped: `clamped` (images in
/// [-1, 1], `[N, C, H, W]`) becomes `samples.npy`, `grid.png` and `images/`, `raw` (any shape with
/// N first: a latent model's unclipped latents) becomes `raw.npy`.
pub fn write_images_and_raw(dir: &Path, clamped: &Tensor, raw: &Tensor, images: bool) -> Result<()> {
    super::atomic::ensure_dir(dir)?;
    let clamped = clamped.clamp(-1.0, 1.0);
    anyhow::ensure!(
        raw.size().first() == clamped.size().first(),
        "{} images but {} raw samples",
        clamped.size()[0],
        raw.size().first().copied().unwrap_or(0)
    );
    super::npy::write_npy(&dir.join("samples.npy"), &clamped)?;
    super::npy::write_npy(&dir.join("raw.npy"), raw)?;
    let n = clamped.size()[0] as usize;
    let cols = (n as f64).sqrt().ceil() as usize;
    super::image::write_grid(&dir.join("grid.png"), &clamped, cols.max(1), 2)?;
    if images {
        let d = dir.join("images");
        super::atomic::ensure_dir(&d)?;
        // A previous, larger call into the same folder must not leave its extra images beside these.
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let stale = name
                .strip_suffix(".png")
                .filter(|s| s.len() == 6)
                .and_then(|s| s.parse::<usize>().ok())
                .is_some_and(|i| i >= n);
            if stale {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("cannot remove the stale image {}", e.path().display()))?;
            }
        }
        for i in 0..n {
            super::image::write_png(&d.join(format!("{i:06}.png")), &clamped.get(i as i64))?;
        }
    }
    Ok(())
}

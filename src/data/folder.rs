//! A folder of PNG/JPEG images as a dataset.
//!
//! Files whose names end in `.png`, `.jpg` or `.jpeg` (any case) directly inside the folder
//! (not recursive) are read in byte-wise sorted name order. All must have the same height and
//! width; otherwise the error names the first mismatching file and both sizes. Channel counts:
//! alpha is dropped by the decoder; if any image is RGB, grey images are **promoted to RGB** (the
//! grey plane repeated), since photo folders often contain a few greyscale files; a folder of only
//! grey images stays 1-channel.
use crate::io::image::{read_decoded, DecodedImage};
use crate::io::FlatContext;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Whether `p` has an image extension (.png, .jpg, .jpeg, case-insensitive).
pub fn is_image_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

/// The image files directly inside `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).flat_context(|| format!("cannot list folder {}", dir.display()))?;
    let mut files = Vec::new();
    for e in rd {
        let p = e.flat_context(|| format!("cannot list folder {}", dir.display()))?.path();
        if p.is_file() && is_image_file(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads the images of `dir` (the first `limit` in name order if given) as `[N, C, H, W]` float
/// in `[-1, 1]`, C = 1 or 3; returns the files read too.
pub fn load_folder(dir: &Path, limit: Option<usize>) -> Result<(Tensor, Vec<PathBuf>)> {
    let mut files = list_images(dir)?;
    if files.is_empty() {
        bail!("folder {} has no .png/.jpg/.jpeg files", dir.display());
    }
    if let Some(l) = limit {
        files.truncate(l.max(1));
    }
    let mut imgs: Vec<DecodedImage> = Vec::with_capacity(files.len());
    for f in &files {
        let im = read_decoded(f)?;
        if let Some(first) = imgs.first() {
            if (im.height, im.width) != (first.height, first.width) {
                bail!(
                    "{} is {}x{} (WxH) but {} is {}x{}; all images of a folder dataset must have the same size (resize them first)",
                    f.display(),
                    im.width,
                    im.height,
                    files[0].display(),
                    first.width,
                    first.height
                );
            }
        }
        imgs.push(im);
    }
    let c = imgs.iter().map(|i| i.channels).max().unwrap_or(1);
    let (h, w) = (imgs[0].height, imgs[0].width);
    let mut data = Vec::with_capacity(imgs.len() * c * h * w);
    for im in &imgs {
        if im.channels == c {
            data.extend_from_slice(&im.data);
        } else {
            data.extend_from_slice(&im.to_rgb().data);
        }
    }
    let t = Tensor::from_slice(&data).reshape([imgs.len() as i64, c as i64, h as i64, w as i64]);
    Ok((t, files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::atomic::test_dir;
    use crate::io::image::write_png;
    use tch::{Device, Kind};

    #[test]
    fn folder_sizes_channels_and_errors() {
        let d = test_dir("folder");
        let opts = (Kind::Float, Device::Cpu);
        write_png(&d.join("b.png"), &Tensor::full([3, 5, 4], 0.5, opts)).unwrap();
        write_png(&d.join("a.PNG"), &Tensor::full([1, 5, 4], -1.0, opts)).unwrap();
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        let (t, files) = load_folder(&d, None).unwrap();
        assert_eq!(t.size(), vec![2, 3, 5, 4]);
        assert!(files[0].ends_with("a.PNG"));
        // grey a.PNG promoted to RGB
        assert_eq!(t.get(0).min().double_value(&[]), -1.0);
        assert_eq!(load_folder(&d, Some(1)).unwrap().0.size(), vec![1, 1, 5, 4]);
        write_png(&d.join("c.png"), &Tensor::zeros([3, 6, 4], opts)).unwrap();
        write_png(&d.join("d.png"), &Tensor::zeros([3, 7, 4], opts)).unwrap();
        let err = format!("{:#}", load_folder(&d, None).unwrap_err());
        assert!(err.contains("c.png") && err.contains("4x6") && err.contains("4x5"), "{err}");
        assert!(!err.contains("d.png"), "{err}");
        std::fs::write(d.join("c.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
        let err = format!("{:#}", load_folder(&d, None).unwrap_err());
        assert!(err.contains("c.png"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
        assert!(load_folder(&d, None).is_err());
    }
}

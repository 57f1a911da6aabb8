//! Datasets: readers for MNIST-layout IDX files, CIFAR-10 binary batches, folders of images and
//! `.npy` arrays, and the built-in procedural "shapes" dataset.
//!
//! Every loader returns a [`Dataset`] whose images are a CPU `[N, C, H, W]` float tensor in
//! `[-1, 1]` (8-bit data map by `u / 127.5 - 1`). [`load`] takes a spec string:
//!
//! | spec | data |
//! |---|---|
//! | `builtin`, `builtin:shapes`, `builtin:shapes-rgb` | [`procedural`] shapes (`resolution`, `count`, `seed` options) |
//! | `mnist:DIR`, `fashion-mnist:DIR` (`:test` / `:train` suffix) | `DIR/{train,t10k}-images-idx3-ubyte[.gz]` + labels |
//! | `mnist`, `fashion-mnist` (`mnist:test`, `mnist:train`) | the copy `scripts/fetch-assets` fetched (see [`assets`]) |
//! | `idx:FILE` | one IDX image file (no labels) |
//! | `cifar10:DIR` (`:test` / `:train` suffix) | CIFAR-10 binary batches in `DIR` or `DIR/cifar-10-batches-bin` |
//! | `folder:DIR` | the PNG/JPEG files in `DIR` (see [`folder`]) |
//! | `npy:FILE` | an `[N, C, H, W]` or `[N, H, W]` array in `[-1, 1]` (or `uint8` in `[0, 255]`) |
//! | `latents:FILE` | a [`latents`] cache of autoencoder latents, scaled by its scale factor |
//! | a bare path | detected: a folder with IDX, CIFAR or image files, a `.npy` file or an IDX file |
//!
//! The split comes from the suffix if present, else from [`LoadOptions::split`]; `limit` keeps
//! the first images (in file order). (A folder named `test` or `train` is `mnist:./test`.)
pub mod assets;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod latents;
pub mod order;
pub mod procedural;

use crate::io::FlatContext;
use crate::rng::Rng;
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// An image dataset held in memory.
#[derive(Debug)]
pub struct Dataset {
    /// `[N, C, H, W]` float (f32) in `[-1, 1]`, on the CPU.
    pub images: Tensor,
    /// One class label per image, when the source has them.
    pub labels: Option<Vec<i64>>,
    /// A short name for logs and file names (e.g. `mnist`, `builtin:shapes`).
    pub name: String,
}

impl Clone for Dataset {
    /// A deep copy (the images do not share storage).
    fn clone(&self) -> Self {
        Dataset { images: self.images.copy(), labels: self.labels.clone(), name: self.name.clone() }
    }
}

impl Dataset {
    /// Checks the shape/kind invariants and the label count.
    pub fn new(images: Tensor, labels: Option<Vec<i64>>, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let s = images.size();
        if s.len() != 4 {
            bail!("dataset {name}: images must be [N, C, H, W], got {s:?}");
        }
        if images.kind() != Kind::Float {
            bail!("dataset {name}: images must be Float, got {:?}", images.kind());
        }
        if let Some(l) = &labels {
            if l.len() as i64 != s[0] {
                bail!("dataset {name}: {} labels for {} images", l.len(), s[0]);
            }
        }
        Ok(Dataset { images, labels, name })
    }

    pub fn len(&self) -> usize {
        self.images.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[N, C, H, W]`.
    pub fn shape(&self) -> [i64; 4] {
        let s = self.images.size();
        [s[0], s[1], s[2], s[3]]
    }

    /// `[C, H, W]` of one image.
    pub fn image_shape(&self) -> [i64; 3] {
        let s = self.shape();
        [s[1], s[2], s[3]]
    }

    /// The first `n` images (all if `n >= len`), sharing no storage with `self`.
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images.narrow(0, 0, n as i64).copy(),
            labels: self.labels.as_ref().map(|l| l[..n].to_vec()),
            name: self.name.clone(),
        }
    }

    /// A random subset of `min(n, len)` distinct images, deterministic in `seed` (partial
    /// Fisher-Yates shuffle with [`Rng::new`]`(seed)`), kept in their original order.
    pub fn subset(&self, n: usize, seed: u64) -> Dataset {
        let idx = subset_indices(self.len(), n, seed);
        let it = Tensor::from_slice(&idx);
        Dataset {
            images: self.images.index_select(0, &it),
            labels: self.labels.as_ref().map(|l| idx.iter().map(|&i| l[i as usize]).collect()),
            name: self.name.clone(),
        }
    }

    /// A copy of the images mapped to `[0, 1]` (`(x + 1) / 2`).
    pub fn to_unit_range(&self) -> Tensor {
        (&self.images + 1.0) / 2.0
    }
}

/// `min(n, len)` sorted distinct indices of `0..len`, deterministic in `seed`.
pub fn subset_indices(len: usize, n: usize, seed: u64) -> Vec<i64> {
    let n = n.min(len);
    let mut rng = Rng::new(seed);
    let mut perm: Vec<i64> = (0..len as i64).collect();
    for i in 0..n {
        let j = i + rng.below((len - i) as u64) as usize;
        perm.swap(i, j);
    }
    let mut idx = perm[..n].to_vec();
    idx.sort_unstable();
    idx
}

/// The train or test subset of a dataset (not to be confused with [`crate::cluster::Split`], a
/// stage split).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Subset {
    #[default]
    Train,
    Test,
}

/// Options of [`load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Keep at most this many images (the first ones).
    pub limit: Option<usize>,
    /// Subset for sources that have one (overridden by a `:train` / `:test` spec suffix).
    pub split: Subset,
    /// Builtin only: image size (default 16).
    pub resolution: usize,
    /// Builtin only: number of images (default 10000).
    pub count: usize,
    /// Builtin only: generator seed (default 0).
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { limit: None, split: Subset::Train, resolution: 16, count: 10_000, seed: 0 }
    }
}

const SCHEMES: [&str; 8] = ["builtin", "mnist", "fashion-mnist", "idx", "cifar10", "cifar-10", "folder", "npy"];

const SPEC_HELP: &str = "expected builtin[:shapes|:shapes-rgb], mnist[:DIR], fashion-mnist[:DIR], idx:FILE, \
                         cifar10:DIR, folder:DIR, npy:FILE or a path";

/// Splits `rest` into (path, split) honouring a `:test` / `:train` suffix.
fn split_suffix(rest: &str, default: Subset) -> (&str, Subset) {
    if let Some(p) = rest.strip_suffix(":test") {
        (p, Subset::Test)
    } else if let Some(p) = rest.strip_suffix(":train") {
        (p, Subset::Train)
    } else {
        (rest, default)
    }
}

/// Loads a dataset from a spec (see the module docs).
pub fn load(spec: &str, opts: &LoadOptions) -> Result<Dataset> {
    // Autoencoder latents (any channel count, not in [-1, 1]): see `latents`.
    if let Some(path) = spec.strip_prefix("latents:") {
        return latents::load_dataset(Path::new(path), opts.limit)
            .flat_context(|| format!("cannot load dataset '{spec}'"));
    }
    let ds = load_inner(spec, opts).flat_context(|| format!("cannot load dataset '{spec}'"))?;
    if ds.is_empty() {
        bail!(
            "cannot load dataset '{spec}': it has no images (check the path, and that --data-limit / limit is not 0)"
        );
    }
    let [c, h, w] = ds.image_shape();
    if c != 1 && c != 3 {
        bail!("cannot load dataset '{spec}': its images have {c} channels ({c}x{h}x{w}); msdiff takes grey (1) or RGB (3) images, [N, C, H, W]");
    }
    Ok(ds)
}

fn load_inner(spec: &str, opts: &LoadOptions) -> Result<Dataset> {
    let (scheme, rest) = match spec.split_once(':') {
        Some((s, r)) if SCHEMES.contains(&s) => (s, r),
        _ if spec == "builtin" || assets::Asset::dataset(spec).is_some() => (spec, ""),
        _ if SCHEMES.contains(&spec) => bail!("'{spec}' needs a path: {spec}:PATH"),
        _ => ("", spec),
    };
    match scheme {
        "builtin" => load_builtin(rest, opts),
        "mnist" | "fashion-mnist" => {
            // No folder (`mnist`, `mnist:test`): the fetched copy (or the dev machines' ../shared one).
            let (dir, split) = match rest {
                "" => (None, opts.split),
                "test" => (None, Subset::Test),
                "train" => (None, Subset::Train),
                _ => {
                    let (dir, split) = split_suffix(rest, opts.split);
                    (Some(PathBuf::from(dir)), split)
                }
            };
            let dir = match dir {
                Some(d) => d,
                None if scheme == "mnist" => assets::locate(assets::Asset::Mnist)?,
                None => assets::locate(assets::Asset::FashionMnist)?,
            };
            load_mnist_dir(&dir, split, opts.limit, scheme)
        }
        "idx" => load_idx_file(Path::new(rest), opts.limit),
        "cifar10" | "cifar-10" => {
            let (dir, split) = split_suffix(rest, opts.split);
            load_cifar(Path::new(dir), split, opts.limit)
        }
        "folder" => load_folder(Path::new(rest), opts.limit),
        "npy" => load_npy(Path::new(rest), opts.limit),
        _ => load_path(rest, opts),
    }
}

fn load_builtin(variant: &str, opts: &LoadOptions) -> Result<Dataset> {
    let rgb = match variant {
        "" | "shapes" => false,
        "shapes-rgb" => true,
        v => bail!("unknown builtin dataset '{v}' (available: shapes, shapes-rgb)"),
    };
    if opts.resolution < 4 || opts.resolution > 1024 {
        bail!("builtin shapes: resolution {} out of range (4..=1024)", opts.resolution);
    }
    let n = opts.limit.map_or(opts.count, |l| l.min(opts.count));
    let (images, labels) = procedural::generate_labeled(n, opts.resolution, opts.seed, rgb);
    let name = if rgb { "builtin:shapes-rgb" } else { "builtin:shapes" };
    Dataset::new(images, Some(labels), name)
}

/// `DIR/{prefix}-{kind}-idx{d}-ubyte[.gz]` or the `{prefix}-{kind}.idx{d}-ubyte[.gz]` spelling.
fn find_idx(dir: &Path, prefix: &str, kind: &str, d: u32) -> Option<PathBuf> {
    for base in [format!("{prefix}-{kind}-idx{d}-ubyte"), format!("{prefix}-{kind}.idx{d}-ubyte")] {
        for ext in ["", ".gz"] {
            let p = dir.join(format!("{base}{ext}"));
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn has_idx(dir: &Path) -> bool {
    ["train", "t10k"].iter().any(|p| find_idx(dir, p, "images", 3).is_some())
}

fn load_mnist_dir(dir: &Path, split: Subset, limit: Option<usize>, name: &str) -> Result<Dataset> {
    if !dir.is_dir() {
        bail!("{}: no such folder (put the four IDX files of {name} there)", dir.display());
    }
    let prefix = if split == Subset::Test { "t10k" } else { "train" };
    let images_path = find_idx(dir, prefix, "images", 3).ok_or_else(|| {
        anyhow!("{}: no {prefix}-images-idx3-ubyte[.gz] (download the {name} IDX files into it)", dir.display())
    })?;
    let images = idx::read_idx_images(&images_path, limit)?;
    let labels = match find_idx(dir, prefix, "labels", 1) {
        Some(p) => {
            let l = idx::read_idx_labels(&p, limit)?;
            if l.len() as i64 != images.size()[0] {
                bail!(
                    "{}: {} labels but {} has {} images",
                    p.display(),
                    l.len(),
                    images_path.display(),
                    images.size()[0]
                );
            }
            Some(l)
        }
        None => None,
    };
    let name = if split == Subset::Test { format!("{name}-test") } else { name.to_string() };
    Dataset::new(images, labels, name)
}

fn file_stem(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

fn load_idx_file(path: &Path, limit: Option<usize>) -> Result<Dataset> {
    Dataset::new(idx::read_idx_images(path, limit)?, None, format!("idx:{}", file_stem(path)))
}

fn load_cifar(dir: &Path, split: Subset, limit: Option<usize>) -> Result<Dataset> {
    let (x, y) = cifar::load_cifar10(dir, split == Subset::Test, limit)?;
    Dataset::new(x, Some(y), if split == Subset::Test { "cifar10-test" } else { "cifar10" })
}

fn load_folder(dir: &Path, limit: Option<usize>) -> Result<Dataset> {
    if !dir.is_dir() {
        bail!("{}: no such folder", dir.display());
    }
    let (x, _) = folder::load_folder(dir, limit)?;
    Dataset::new(x, None, format!("folder:{}", file_stem(dir)))
}

/// Tolerance of the `[-1, 1]` range check of float `.npy` data (then clamped).
const NPY_RANGE_TOL: f64 = 1e-3;

fn load_npy(path: &Path, limit: Option<usize>) -> Result<Dataset> {
    let t = crate::io::read_npy(path)?;
    let t = match t.dim() {
        3 => t.unsqueeze(1),
        4 => t,
        _ => bail!("{}: array of shape {:?}; expected [N, C, H, W] or [N, H, W]", path.display(), t.size()),
    };
    let s = t.size();
    if ![1, 3].contains(&s[1]) && [1, 3].contains(&s[3]) {
        bail!(
            "{}: shape {s:?} looks channels-last; save it as [N, C, H, W] (np.transpose(a, (0, 3, 1, 2)))",
            path.display()
        );
    }
    let t = match limit {
        Some(l) => t.narrow(0, 0, (l as i64).min(s[0])),
        None => t,
    };
    let t = match t.kind() {
        Kind::Uint8 => t.to_kind(Kind::Float) / 127.5 - 1.0,
        Kind::Float | Kind::Double => {
            let t = t.to_kind(Kind::Float);
            if t.numel() > 0 {
                if !bool::try_from(t.isfinite().all())? {
                    bail!("{}: the array has NaN or infinite values", path.display());
                }
                let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
                if lo < -1.0 - NPY_RANGE_TOL || hi > 1.0 + NPY_RANGE_TOL {
                    bail!(
                        "{}: values span [{lo}, {hi}] but must be in [-1, 1] (map [0, 1] data by 2x - 1, [0, 255] by x / 127.5 - 1)",
                        path.display()
                    );
                }
            }
            t.clamp(-1.0, 1.0)
        }
        k => bail!("{}: {k:?} array; expected float in [-1, 1] or uint8", path.display()),
    };
    Dataset::new(t.contiguous(), None, format!("npy:{}", file_stem(path)))
}

/// A bare path: detect what it holds.
fn load_path(spec: &str, opts: &LoadOptions) -> Result<Dataset> {
    let (p, split) = if Path::new(spec).exists() { (spec, opts.split) } else { split_suffix(spec, opts.split) };
    let path = Path::new(p);
    if !path.exists() {
        bail!("{}: no such file or folder ({SPEC_HELP})", path.display());
    }
    if path.is_dir() {
        if has_idx(path) {
            return load_mnist_dir(path, split, opts.limit, &file_stem(path));
        }
        if cifar::find_batch_dir(path).is_some() {
            return load_cifar(path, split, opts.limit);
        }
        if !folder::list_images(path)?.is_empty() {
            return load_folder(path, opts.limit);
        }
        bail!(
            "{}: found no IDX (train-images-idx3-ubyte), CIFAR-10 (data_batch_1.bin) or PNG/JPEG files in this folder",
            path.display()
        );
    }
    let is_npy = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"))
        || std::fs::File::open(path)
            .and_then(|mut f| {
                let mut m = [0u8; 6];
                std::io::Read::read_exact(&mut f, &mut m).map(|_| &m == b"\x93NUMPY")
            })
            .unwrap_or(false);
    if is_npy {
        return load_npy(path, opts.limit);
    }
    if idx::looks_like_idx_images(path) {
        return load_idx_file(path, opts.limit);
    }
    bail!(
        "{}: not a .npy array or IDX image file; for a folder of images, CIFAR or MNIST pass its folder ({SPEC_HELP})",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::atomic::test_dir;

    fn shared_data() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
    }

    #[test]
    fn builtin_spec_and_dataset_methods() {
        let o = LoadOptions { count: 50, resolution: 8, seed: 3, ..Default::default() };
        let ds = load("builtin", &o).unwrap();
        assert_eq!(ds.shape(), [50, 1, 8, 8]);
        assert_eq!(ds.name, "builtin:shapes");
        assert!(ds.images.equal(&load("builtin:shapes", &o).unwrap().images));
        let rgb = load("builtin:shapes-rgb", &LoadOptions { limit: Some(7), ..o.clone() }).unwrap();
        assert_eq!(rgb.shape(), [7, 3, 8, 8]);
        assert!(load("builtin:blobs", &o).is_err());

        let s1 = ds.subset(10, 1);
        let s2 = ds.subset(10, 1);
        assert_eq!(s1.len(), 10);
        assert!(s1.images.equal(&s2.images));
        assert_eq!(s1.labels, s2.labels);
        assert!(!s1.images.equal(&ds.subset(10, 2).images));
        let idx = subset_indices(50, 10, 1);
        assert!(idx.windows(2).all(|w| w[0] < w[1]));
        assert!(s1.images.get(3).equal(&ds.images.get(idx[3])));
        assert_eq!(ds.subset(99, 0).len(), 50);
        assert_eq!(ds.take(5).len(), 5);
        let u = ds.to_unit_range();
        assert!(u.min().double_value(&[]) >= 0.0 && u.max().double_value(&[]) <= 1.0);
        assert!(ds.images.min().double_value(&[]) < 0.0, "to_unit_range must copy");
    }

    #[test]
    fn npy_and_autodetect() {
        let d = test_dir("data-load");
        let x = procedural::generate(6, 8, 0);
        crate::io::write_npy(&d.join("x.npy"), &x).unwrap();
        let ds = load(d.join("x.npy").to_str().unwrap(), &LoadOptions::default()).unwrap();
        assert!(ds.images.equal(&x));
        crate::io::write_npy(&d.join("hw.npy"), &x.squeeze_dim(1)).unwrap();
        let spec = format!("npy:{}", d.join("hw.npy").display());
        let ds = load(&spec, &LoadOptions { limit: Some(2), ..Default::default() }).unwrap();
        assert_eq!(ds.shape(), [2, 1, 8, 8]);
        crate::io::write_npy(&d.join("bad.npy"), &(&x * 3.0)).unwrap();
        let err = format!("{:#}", load(d.join("bad.npy").to_str().unwrap(), &Default::default()).unwrap_err());
        assert!(err.contains("bad.npy") && err.contains("[-1, 1]"), "{err}");
        assert!(!err.contains('\n'));
        // An image folder and an IDX folder, auto-detected.
        let imgs = d.join("imgs");
        crate::io::write_png(&imgs.join("0.png"), &x.get(0)).unwrap();
        crate::io::write_png(&imgs.join("1.png"), &x.get(1)).unwrap();
        let ds = load(imgs.to_str().unwrap(), &Default::default()).unwrap();
        assert_eq!(ds.shape(), [2, 1, 8, 8]);
        assert!((ds.images - x.narrow(0, 0, 2)).abs().max().double_value(&[]) < 1.0 / 127.0);
        let m = d.join("m");
        std::fs::create_dir_all(&m).unwrap();
        let px: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8 * 10).collect();
        std::fs::write(m.join("t10k-images-idx3-ubyte"), idx::encode_idx(idx::IMAGES_MAGIC, &[2, 3, 3], &px)).unwrap();
        std::fs::write(m.join("t10k-labels-idx1-ubyte"), idx::encode_idx(idx::LABELS_MAGIC, &[2], &[7, 1])).unwrap();
        let spec = format!("{}:test", m.display());
        let ds = load(&spec, &Default::default()).unwrap();
        assert_eq!((ds.shape(), ds.labels.clone()), ([2, 1, 3, 3], Some(vec![7, 1])));
        let ds = load(&format!("mnist:{}", m.display()), &LoadOptions { split: Subset::Test, ..Default::default() })
            .unwrap();
        assert_eq!(ds.name, "mnist-test");
        let err = format!("{:#}", load(&format!("mnist:{}", m.display()), &Default::default()).unwrap_err());
        assert!(err.contains("train-images-idx3-ubyte"), "{err}");
        let idxfile = m.join("t10k-images-idx3-ubyte");
        assert_eq!(load(&format!("idx:{}", idxfile.display()), &Default::default()).unwrap().len(), 2);
        assert_eq!(load(idxfile.to_str().unwrap(), &Default::default()).unwrap().len(), 2);
        // Nonsense specs: clear one-line errors.
        for spec in ["/no/such/thing", "mnist:/no/such", "folder:/no/such", "cifar10:/no/such"] {
            let err = format!("{:#}", load(spec, &Default::default()).unwrap_err());
            assert!(
                !err.contains('\n') && err.contains(spec.trim_start_matches("folder:").trim_start_matches("cifar10:")),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn real_mnist_and_fashion_mnist() {
        let root = shared_data();
        for (name, first_label) in [("mnist", 5), ("fashion-mnist", 9)] {
            let dir = root.join(name);
            if !assets::test_asset_present(&dir.join("train-images-idx3-ubyte.gz"), name) {
                continue;
            }
            let ds = load(&format!("{name}:{}", dir.display()), &LoadOptions::default()).unwrap();
            assert_eq!(ds.shape(), [60_000, 1, 28, 28], "{name}");
            let labels = ds.labels.as_ref().unwrap();
            assert_eq!(labels[0], first_label, "{name}");
            assert!(labels.iter().all(|&l| (0..10).contains(&l)));
            let (lo, hi) = (ds.images.min().double_value(&[]), ds.images.max().double_value(&[]));
            assert_eq!((lo, hi), (-1.0, 1.0), "{name}");
            let test = load(
                &format!("{name}:{}:test", dir.display()),
                &LoadOptions { limit: Some(100), ..Default::default() },
            )
            .unwrap();
            assert_eq!(test.shape(), [100, 1, 28, 28]);
            // The spec without a folder finds a copy (fetched, or this one) with the same images.
            let default =
                load(&format!("{name}:test"), &LoadOptions { limit: Some(100), ..Default::default() }).unwrap();
            assert_eq!(default.name, format!("{name}-test"));
            assert!(default.images.equal(&test.images), "{name}");
            assert_eq!(default.labels, test.labels, "{name}");
        }
    }
}

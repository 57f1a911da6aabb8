//! CIFAR-10 binary batches (Krizhevsky 2009, "binary version" from
//! <https://www.cs.toronto.edu/~kriz/cifar.html>): each record is 1 label byte (0..=9) then
//! 3072 bytes, the 32x32 R, G and B planes in row-major order. Training data are
//! `data_batch_1.bin` .. `data_batch_5.bin`, test data `test_batch.bin`, usually inside a
//! `cifar-10-batches-bin` folder (looked for as well).
use crate::io::image::u8_lut;
use crate::io::FlatContext;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const RECORD: usize = 1 + 3 * 32 * 32;
pub const CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// The batch file names of a split.
pub fn batch_names(test: bool) -> Vec<String> {
    if test {
        vec!["test_batch.bin".into()]
    } else {
        (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
    }
}

/// The folder holding the batches: `dir` or `dir/cifar-10-batches-bin`, if either has one.
pub fn find_batch_dir(dir: &Path) -> Option<PathBuf> {
    let has = |d: &Path| d.join("data_batch_1.bin").is_file() || d.join("test_batch.bin").is_file();
    if has(dir) {
        Some(dir.to_path_buf())
    } else {
        let sub = dir.join("cifar-10-batches-bin");
        has(&sub).then_some(sub)
    }
}

/// Appends the records of one batch file (at most `limit` in total) to `pixels` and `labels`.
fn read_batch(path: &Path, limit: usize, pixels: &mut Vec<f32>, labels: &mut Vec<i64>) -> Result<()> {
    let bytes = std::fs::read(path).flat_context(|| format!("cannot read {}", path.display()))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        bail!(
            "{}: {} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated or \
             not the binary version; download cifar-10-binary.tar.gz again)",
            path.display(),
            bytes.len()
        );
    }
    let lut = u8_lut();
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if labels.len() >= limit {
            break;
        }
        if rec[0] > 9 {
            bail!("{}: record {i} has label {} (CIFAR-10 labels are 0..9; is this CIFAR-100?)", path.display(), rec[0]);
        }
        labels.push(rec[0] as i64);
        pixels.extend(rec[1..].iter().map(|&u| lut[u as usize]));
    }
    Ok(())
}

/// Loads a CIFAR-10 split from `dir` as `[N, 3, 32, 32]` float in `[-1, 1]` plus labels.
pub fn load_cifar10(dir: &Path, test: bool, limit: Option<usize>) -> Result<(Tensor, Vec<i64>)> {
    let Some(bdir) = find_batch_dir(dir) else {
        bail!(
            "cifar10: no data_batch_1.bin or test_batch.bin in {} or its cifar-10-batches-bin folder \
             (unpack the binary version, cifar-10-binary.tar.gz)",
            dir.display()
        );
    };
    let names = batch_names(test);
    let missing: Vec<&String> = names.iter().filter(|n| !bdir.join(n).is_file()).collect();
    if !missing.is_empty() {
        bail!("cifar10: {} lacks {:?}", bdir.display(), missing);
    }
    let limit = limit.unwrap_or(usize::MAX);
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for n in &names {
        if labels.len() >= limit {
            break;
        }
        read_batch(&bdir.join(n), limit, &mut pixels, &mut labels)?;
    }
    let t = Tensor::from_slice(&pixels).reshape([labels.len() as i64, 3, 32, 32]);
    Ok((t, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::atomic::test_dir;

    fn record(label: u8, seed: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend((0..3072).map(|i| (i as u8).wrapping_mul(seed)));
        r
    }

    #[test]
    fn batches_load_and_truncation_errors() {
        let d = test_dir("cifar");
        let sub = d.join("cifar-10-batches-bin");
        std::fs::create_dir_all(&sub).unwrap();
        for i in 1..=5u8 {
            let mut b = record(i, i);
            b.extend(record(9, 3));
            std::fs::write(sub.join(format!("data_batch_{i}.bin")), b).unwrap();
        }
        std::fs::write(sub.join("test_batch.bin"), record(0, 1)).unwrap();
        let (x, y) = load_cifar10(&d, false, None).unwrap();
        assert_eq!(x.size(), vec![10, 3, 32, 32]);
        assert_eq!(y, vec![1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
        // Plane layout: pixel (c=1, y=0, x=2) of record 0 is byte 1 + 1024 + 2.
        let expect = ((1024 + 2) as u8).wrapping_mul(1) as f64 / 127.5 - 1.0;
        assert!((x.double_value(&[0, 1, 0, 2]) - expect).abs() < 1e-6);
        let (xt, yt) = load_cifar10(&sub, true, None).unwrap();
        assert_eq!((xt.size()[0], yt), (1, vec![0]));
        let (xl, _) = load_cifar10(&d, false, Some(3)).unwrap();
        assert_eq!(xl.size()[0], 3);
        // Truncated batch -> error naming the file.
        std::fs::write(sub.join("data_batch_3.bin"), &record(1, 1)[..3000]).unwrap();
        let err = format!("{:#}", load_cifar10(&d, false, None).unwrap_err());
        assert!(err.contains("data_batch_3.bin") && err.contains("3073"), "{err}");
        // Bad label -> error; missing batch -> error listing it.
        std::fs::write(sub.join("data_batch_3.bin"), record(42, 1)).unwrap();
        assert!(format!("{:#}", load_cifar10(&d, false, None).unwrap_err()).contains("label 42"));
        std::fs::remove_file(sub.join("data_batch_4.bin")).unwrap();
        assert!(format!("{:#}", load_cifar10(&d, false, None).unwrap_err()).contains("data_batch_4.bin"));
        assert!(load_cifar10(&d.join("nope"), false, None).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}

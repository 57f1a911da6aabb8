//! IDX files in the MNIST layout (LeCun et al., <http://yann.lecun.com/exdb/mnist/>), plain or
//! gzip-compressed (detected by the gzip magic bytes `1f 8b`, not by the file name).
//!
//! Layout: a big-endian `u32` magic `0x00000803` (unsigned bytes, 3 dimensions) for images or
//! `0x00000801` (unsigned bytes, 1 dimension) for labels, then one big-endian `u32` per
//! dimension, then the payload, whose length must match the dimensions exactly.
use crate::io::image::u8_lut;
use crate::io::FlatContext;
use anyhow::{bail, Result};
use std::io::Read;
use std::path::Path;
use tch::Tensor;

pub const IMAGES_MAGIC: u32 = 0x0000_0803;
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads a whole file, gunzipping it if it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).flat_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 5);
        flate2::read::MultiGzDecoder::new(raw.as_slice()).read_to_end(&mut out).flat_context(|| {
            format!("cannot decompress {} (truncated or corrupt gzip file; download it again)", path.display())
        })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn magic_name(m: u32) -> &'static str {
    match m {
        IMAGES_MAGIC => "an IDX image file",
        LABELS_MAGIC => "an IDX label file",
        _ => "not an IDX file of unsigned bytes",
    }
}

/// Validates an IDX header; returns the dimensions and the payload.
fn parse<'a>(bytes: &'a [u8], magic: u32, what: &Path) -> Result<(Vec<usize>, &'a [u8])> {
    let ndim = (magic & 0xff) as usize;
    let hdr = 4 + 4 * ndim;
    if bytes.len() < 4 {
        bail!("{}: file too short for an IDX header ({} bytes); download it again", what.display(), bytes.len());
    }
    let m = be_u32(bytes, 0);
    if m != magic {
        bail!(
            "{}: bad IDX magic 0x{m:08x} ({}), expected 0x{magic:08x} ({})",
            what.display(),
            magic_name(m),
            magic_name(magic)
        );
    }
    if bytes.len() < hdr {
        bail!("{}: truncated IDX header ({} of {hdr} bytes); download it again", what.display(), bytes.len());
    }
    let dims: Vec<usize> = (0..ndim).map(|k| be_u32(bytes, 4 + 4 * k) as usize).collect();
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let payload = &bytes[hdr..];
    match expected {
        Some(e) if e == payload.len() => Ok((dims, payload)),
        Some(e) if e > payload.len() => bail!(
            "{}: truncated IDX file: dimensions {dims:?} need {e} data bytes, found {}; download it again",
            what.display(),
            payload.len()
        ),
        Some(e) => bail!(
            "{}: corrupt IDX file: dimensions {dims:?} need {e} data bytes, found {} (trailing data)",
            what.display(),
            payload.len()
        ),
        None => bail!("{}: corrupt IDX file: dimensions {dims:?} overflow", what.display()),
    }
}

/// Image IDX bytes -> `[N, 1, H, W]` float in `[-1, 1]` (first `limit` images if given).
pub fn images_from_bytes(bytes: &[u8], what: &Path, limit: Option<usize>) -> Result<Tensor> {
    let (dims, payload) = parse(bytes, IMAGES_MAGIC, what)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if h == 0 || w == 0 {
        bail!("{}: IDX images have zero size {h}x{w}", what.display());
    }
    let n = limit.map_or(n, |l| l.min(n));
    let lut = u8_lut();
    let v: Vec<f32> = payload[..n * h * w].iter().map(|&u| lut[u as usize]).collect();
    Ok(Tensor::from_slice(&v).reshape([n as i64, 1, h as i64, w as i64]))
}

/// Label IDX bytes -> labels (first `limit` if given).
pub fn labels_from_bytes(bytes: &[u8], what: &Path, limit: Option<usize>) -> Result<Vec<i64>> {
    let (dims, payload) = parse(bytes, LABELS_MAGIC, what)?;
    let n = limit.map_or(dims[0], |l| l.min(dims[0]));
    Ok(payload[..n].iter().map(|&u| u as i64).collect())
}

/// Reads an IDX image file (plain or gzip) as `[N, 1, H, W]` float in `[-1, 1]`.
pub fn read_idx_images(path: &Path, limit: Option<usize>) -> Result<Tensor> {
    images_from_bytes(&read_maybe_gz(path)?, path, limit)
}

/// Reads an IDX label file (plain or gzip).
pub fn read_idx_labels(path: &Path, limit: Option<usize>) -> Result<Vec<i64>> {
    labels_from_bytes(&read_maybe_gz(path)?, path, limit)
}

/// Whether the file looks like IDX images (magic check after optional gunzip of a prefix).
pub fn looks_like_idx_images(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 4];
    let mut r: Box<dyn Read> = Box::new(f);
    let mut magic2 = [0u8; 2];
    if r.read_exact(&mut magic2).is_err() {
        return false;
    }
    let chained = std::io::Cursor::new(magic2.to_vec()).chain(r);
    let mut r: Box<dyn Read> =
        if magic2 == [0x1f, 0x8b] { Box::new(flate2::read::MultiGzDecoder::new(chained)) } else { Box::new(chained) };
    r.read_exact(&mut head).is_ok() && u32::from_be_bytes(head) == IMAGES_MAGIC
}

/// Bytes of an IDX file (for tests and tools): `magic` then `dims` then `payload`.
pub fn encode_idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::atomic::test_dir;
    use std::io::Write;

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_and_plain_identical_and_truncation_errors() {
        let d = test_dir("idx");
        let payload: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 7 % 256) as u8).collect();
        let plain = encode_idx(IMAGES_MAGIC, &[3, 4, 5], &payload);
        let (pp, pg) = (d.join("imgs"), d.join("imgs.also-no-gz-suffix"));
        std::fs::write(&pp, &plain).unwrap();
        std::fs::write(&pg, gz(&plain)).unwrap();
        let a = read_idx_images(&pp, None).unwrap();
        let b = read_idx_images(&pg, None).unwrap();
        assert_eq!(a.size(), vec![3, 1, 4, 5]);
        assert!(a.equal(&b));
        assert_eq!(a.double_value(&[0, 0, 0, 0]), -1.0);
        assert!(looks_like_idx_images(&pp) && looks_like_idx_images(&pg));
        assert_eq!(read_idx_images(&pp, Some(2)).unwrap().size(), vec![2, 1, 4, 5]);

        let labels = encode_idx(LABELS_MAGIC, &[3], &[5, 0, 4]);
        let pl = d.join("labels.gz");
        std::fs::write(&pl, gz(&labels)).unwrap();
        assert_eq!(read_idx_labels(&pl, None).unwrap(), vec![5, 0, 4]);
        assert!(!looks_like_idx_images(&pl));
        // Labels read as images (and vice versa) name the mix-up.
        let err = format!("{:#}", read_idx_images(&pl, None).unwrap_err());
        assert!(err.contains("label file") && err.contains("labels.gz"), "{err}");

        // Truncations of the plain and gzip files, and trailing junk, give errors.
        for cut in [0, 3, 10, plain.len() - 1] {
            std::fs::write(&pp, &plain[..cut]).unwrap();
            let err = format!("{:#}", read_idx_images(&pp, None).unwrap_err());
            assert!(err.contains("imgs"), "{err}");
        }
        let g = gz(&plain);
        for cut in [1, 5, g.len() / 2, g.len() - 3] {
            std::fs::write(&pg, &g[..cut]).unwrap();
            let err = format!("{:#}", read_idx_images(&pg, None).unwrap_err());
            assert!(err.contains("no-gz-suffix"), "{err}");
        }
        let mut long = plain.clone();
        long.push(0);
        std::fs::write(&pp, &long).unwrap();
        assert!(format!("{:#}", read_idx_images(&pp, None).unwrap_err()).contains("trailing"));
        let err = format!("{:#}", read_idx_images(&d.join("missing"), None).unwrap_err());
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

//! Latent caches: a dataset's autoencoder latents, encoded once (`msdiff autoencoder encode
//! --data D --out FILE.safetensors`), read back as the dataset spec `latents:FILE`.
//!
//! The file is safetensors: `latents` `[N, E, h, w]` f32 as the encoder produced them (unscaled),
//! optional `labels` `[N]` i64, and metadata `format` = [`FORMAT`] and `info` = the JSON of
//! [`LatentInfo`]: the scale factor and shift (the dataset the spec yields is
//! `(latents - shift) * scale`, LDM's `scale_factor` convention: 1/std of the latents, or the
//! autoencoder's own `scaling_factor`), the latents' statistics, the dataset and encoding
//! settings, and a record of the autoencoder (its weights fingerprint) so that a consumer can
//! check the latents still belong to the autoencoder it decodes with ([`LatentCache::verify`]).
use super::Dataset;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};

pub const FORMAT: &str = "msdiff-latents/1";

/// Which autoencoder made the latents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderRecord {
    /// The `--model` path, made absolute by `msdiff autoencoder encode` (caches written before
    /// that hold it as given).
    pub path: String,
    /// The weights fingerprint (`msdiff::autoencoder::model::fingerprint`).
    pub fingerprint: String,
    /// The autoencoder's own provenance line.
    pub source: String,
    /// Its layout (an `AutoencoderConfig` as JSON).
    pub config: serde_json::Value,
}

/// Everything about a cache but its tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentInfo {
    /// The dataset yields `(latents - shift_factor) * scale_factor`.
    pub scale_factor: f64,
    pub shift_factor: f64,
    /// Where the scale factor came from (`1/std of these latents`, the autoencoder's
    /// `scaling_factor`, or given on the command line).
    pub scale_source: String,
    /// Mean and standard deviation of all latent values (unscaled).
    pub mean: f64,
    pub std: f64,
    /// Per channel (unscaled).
    pub channel_mean: Vec<f64>,
    pub channel_std: Vec<f64>,
    /// The images' `[C, H, W]`.
    pub image_shape: [i64; 3],
    /// The dataset spec the images came from.
    pub dataset: String,
    /// KL: `mean` or `sample` (image `i` drew its noise from the stream of seed `seed + i`, as
    /// `msdiff sample --seeds`); VQ: `mean`.
    pub mode: String,
    pub seed: u64,
    /// VQ: latents snapped to the codebook.
    pub quantized: bool,
    pub autoencoder: AutoencoderRecord,
}

impl LatentInfo {
    /// Statistics of `latents` `[N, E, h, w]` (f64 sums): overall and per-channel mean and std.
    pub fn stats(latents: &Tensor) -> Result<(f64, f64, Vec<f64>, Vec<f64>)> {
        ensure!(
            latents.dim() == 4 && latents.size()[0] > 0,
            "latents must be a non-empty [N, E, h, w] array, got {:?}",
            latents.size()
        );
        let x = latents.to_kind(Kind::Double);
        let mean = x.mean(Kind::Double).double_value(&[]);
        let std = x.std(false).double_value(&[]);
        let per = x.transpose(0, 1).reshape([latents.size()[1], -1]);
        let cm = Vec::<f64>::try_from(per.mean_dim([1i64].as_slice(), false, Kind::Double))?;
        let cs = Vec::<f64>::try_from(per.std_dim([1i64].as_slice(), false, false))?;
        Ok((mean, std, cm, cs))
    }
}

/// A latent cache in memory.
#[derive(Debug)]
pub struct LatentCache {
    /// `[N, E, h, w]` f32, unscaled.
    pub latents: Tensor,
    pub labels: Option<Vec<i64>>,
    pub info: LatentInfo,
}

impl LatentCache {
    /// Write the cache as safetensors (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let s = self.latents.size();
        ensure!(s.len() == 4, "latents must be [N, E, h, w], got {s:?}");
        let lat = self.latents.to_kind(Kind::Float).contiguous();
        let n = lat.numel();
        let mut bytes = Vec::with_capacity(n * 4 + self.labels.as_ref().map_or(0, |l| l.len() * 8));
        let mut v = vec![0f32; n];
        lat.copy_data(&mut v, n);
        for x in &v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let lat_end = bytes.len();
        let mut header = serde_json::json!({
            "__metadata__": {"format": FORMAT, "info": serde_json::to_string(&self.info)?},
            "latents": {"dtype": "F32", "shape": s, "data_offsets": [0, lat_end]},
        });
        if let Some(l) = &self.labels {
            ensure!(l.len() as i64 == s[0], "{} labels for {} latents", l.len(), s[0]);
            for x in l {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            header["labels"] =
                serde_json::json!({"dtype": "I64", "shape": [l.len()], "data_offsets": [lat_end, bytes.len()]});
        }
        let mut h = serde_json::to_vec(&header)?;
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        crate::io::write_atomic(path, |w| {
            w.write_all(&(h.len() as u64).to_le_bytes())?;
            w.write_all(&h)?;
            w.write_all(&bytes)?;
            Ok(())
        })
    }

    /// The cache's [`LatentInfo`] and the shape `[N, E, h, w]` of its latents, read from the
    /// header alone (the tensors are not read): what a latent run records about its data.
    pub fn read_info(path: &Path) -> Result<(LatentInfo, [i64; 4])> {
        use std::io::Read;
        let p = path.display();
        let mut f = std::fs::File::open(path).with_context(|| format!("cannot read latent cache {p}"))?;
        let len = f.metadata().with_context(|| format!("cannot read latent cache {p}"))?.len();
        let mut head = [0u8; 8];
        f.read_exact(&mut head).map_err(|_| not_cache(path, "too short".into()))?;
        let hlen = u64::from_le_bytes(head);
        ensure!(hlen <= len - 8 && hlen <= 100 << 20, not_cache(path, "not safetensors".into()));
        let mut bytes = vec![0u8; 8 + hlen as usize];
        bytes[..8].copy_from_slice(&head);
        f.read_exact(&mut bytes[8..]).with_context(|| format!("cannot read latent cache {p}"))?;
        let (header, info, _) = parse_header(path, &bytes)?;
        let shape: Vec<i64> = serde_json::from_value(header["latents"]["shape"].clone())
            .map_err(|_| not_cache(path, "no latents tensor".into()))?;
        let shape: [i64; 4] = shape
            .try_into()
            .ok()
            .filter(|s: &[i64; 4]| s.iter().all(|d| *d > 0))
            .ok_or_else(|| not_cache(path, "latents are not a non-empty [N, E, h, w] array".into()))?;
        ensure!(
            info.channel_mean.len() as i64 == shape[1],
            not_cache(path, "statistics do not match the latent channels".into())
        );
        Ok((info, shape))
    }

    /// Read a cache written by [`LatentCache::save`]; any other file is a one-line error.
    pub fn load(path: &Path) -> Result<LatentCache> {
        let p = path.display();
        let bytes = std::fs::read(path).with_context(|| format!("cannot read latent cache {p}"))?;
        let not_cache = |why: String| not_cache(path, why);
        let (header, info, data_start) = parse_header(path, &bytes)?;
        let data = &bytes[data_start..];
        let span = |name: &str, dtype: &str, width: usize| -> Result<Option<(Vec<i64>, &[u8])>> {
            let Some(e) = header.get(name) else { return Ok(None) };
            ensure!(e["dtype"] == dtype, not_cache(format!("tensor {name} is {}, expected {dtype}", e["dtype"])));
            let shape: Vec<i64> = serde_json::from_value(e["shape"].clone()).map_err(|x| not_cache(x.to_string()))?;
            let off: Vec<usize> =
                serde_json::from_value(e["data_offsets"].clone()).map_err(|x| not_cache(x.to_string()))?;
            let numel: i64 = shape.iter().product();
            ensure!(
                off.len() == 2
                    && off[0] <= off[1]
                    && off[1] <= data.len()
                    && (off[1] - off[0]) as i64 == numel * width as i64,
                not_cache(format!("tensor {name} has bad data offsets (truncated?)"))
            );
            Ok(Some((shape, &data[off[0]..off[1]])))
        };
        let (shape, raw) = span("latents", "F32", 4)?.ok_or_else(|| not_cache("no latents tensor".into()))?;
        ensure!(
            shape.len() == 4 && shape[0] > 0,
            not_cache(format!("latents of shape {shape:?}, expected [N, E, h, w]"))
        );
        let v: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!(not_cache(format!("latent value {i} is not finite")));
        }
        let latents = Tensor::from_slice(&v).reshape(shape.as_slice());
        let labels = match span("labels", "I64", 8)? {
            Some((ls, raw)) => {
                ensure!(ls == [shape[0]], not_cache(format!("labels of shape {ls:?} for {} latents", shape[0])));
                Some(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
            }
            None => None,
        };
        ensure!(
            info.channel_mean.len() as i64 == shape[1],
            not_cache("statistics do not match the latent channels".into())
        );
        Ok(LatentCache { latents, labels, info })
    }

    /// The dataset a diffusion model trains on: `(latents - shift) * scale`, the first `limit`.
    pub fn dataset(&self, name: &str, limit: Option<usize>) -> Result<Dataset> {
        let n = self.latents.size()[0];
        let k = limit.map_or(n, |l| (l as i64).min(n));
        let x = (self.latents.narrow(0, 0, k) - self.info.shift_factor) * self.info.scale_factor;
        Dataset::new(x.to_kind(Kind::Float).contiguous(), self.labels.as_ref().map(|l| l[..k as usize].to_vec()), name)
    }

    /// Check that the latents came from the autoencoder whose weights have `fingerprint`.
    pub fn verify(&self, fingerprint: &str) -> Result<()> {
        ensure!(
            self.info.autoencoder.fingerprint == fingerprint,
            "these latents were encoded by autoencoder {} with weights fingerprint {}, but this autoencoder's is {fingerprint}: re-encode the dataset (msdiff autoencoder encode --data ...)",
            self.info.autoencoder.path,
            self.info.autoencoder.fingerprint
        );
        Ok(())
    }
}

fn not_cache(path: &Path, why: String) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not an msdiff latent cache ({why}); make one with `msdiff autoencoder encode --data D --out FILE.safetensors`",
        path.display()
    )
}

/// The safetensors header (JSON), the cache's [`LatentInfo`] and where the tensor data starts (8 +
/// the header's length), from the first bytes of `bytes` (at least the 8-byte length and the header).
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(serde_json::Value, LatentInfo, usize)> {
    let not_cache = |why: String| not_cache(path, why);
    ensure!(bytes.len() >= 8, not_cache("too short".into()));
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    ensure!(hlen <= (bytes.len() - 8) as u64, not_cache("not safetensors".into()));
    let hlen = hlen as usize;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + hlen]).map_err(|e| not_cache(format!("not safetensors: {e}")))?;
    let meta = &header["__metadata__"];
    ensure!(
        meta["format"].as_str() == Some(FORMAT),
        not_cache(format!("metadata format {}, expected \"{FORMAT}\"", meta["format"]))
    );
    let info: LatentInfo = serde_json::from_str(meta["info"].as_str().unwrap_or(""))
        .map_err(|e| not_cache(format!("bad info metadata: {e}")))?;
    ensure!(
        info.scale_factor.is_finite() && info.scale_factor > 0.0,
        not_cache(format!("scale_factor {} is not > 0", info.scale_factor))
    );
    ensure!(info.shift_factor.is_finite(), not_cache("shift_factor is not finite".into()));
    Ok((header, info, 8 + hlen))
}

/// The dataset spec `latents:FILE`.
pub fn load_dataset(path: &Path, limit: Option<usize>) -> Result<Dataset> {
    let cache = LatentCache::load(path)?;
    let name = format!("latents:{}", path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    cache.dataset(&name, limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::atomic::test_dir;

    fn info() -> LatentInfo {
        LatentInfo {
            scale_factor: 2.0,
            shift_factor: 0.5,
            scale_source: "test".into(),
            mean: 0.0,
            std: 1.0,
            channel_mean: vec![0.0; 2],
            channel_std: vec![1.0; 2],
            image_shape: [1, 8, 8],
            dataset: "builtin".into(),
            mode: "mean".into(),
            seed: 0,
            quantized: false,
            autoencoder: AutoencoderRecord {
                path: "ae".into(),
                fingerprint: "0123".into(),
                source: "test".into(),
                config: serde_json::json!({}),
            },
        }
    }

    #[test]
    fn round_trip_scaling_and_refusals() {
        let d = test_dir("latents");
        let lat = Tensor::arange(2 * 2 * 2 * 3, (Kind::Float, tch::Device::Cpu)).reshape([2, 2, 2, 3]);
        let c = LatentCache { latents: lat.shallow_clone(), labels: Some(vec![7, 3]), info: info() };
        let p = d.join("z.safetensors");
        c.save(&p).unwrap();
        let back = LatentCache::load(&p).unwrap();
        assert!(back.latents.equal(&lat));
        assert_eq!((back.labels.clone(), back.info.clone()), (Some(vec![7, 3]), info()));
        // tch's own safetensors reader agrees on the tensors (the file is standard safetensors).
        let t = Tensor::read_safetensors(&p).unwrap();
        assert!(t.iter().any(|(n, x)| n == "latents" && x.equal(&lat)));
        let ds = crate::data::load(&format!("latents:{}", p.display()), &Default::default()).unwrap();
        assert!(ds.images.allclose(&((&lat - 0.5) * 2.0), 0.0, 0.0, false));
        assert_eq!(ds.labels, Some(vec![7, 3]));
        assert_eq!(load_dataset(&p, Some(1)).unwrap().len(), 1);
        assert!(back.verify("0123").is_ok());
        assert!(back.verify("ffff").unwrap_err().to_string().contains("re-encode"));
        // Not a cache: an FID-stats-like safetensors and a truncated file.
        Tensor::write_safetensors(&[("latents", &lat)], d.join("plain.safetensors")).unwrap();
        let e = format!(
            "{:#}",
            crate::data::load(&format!("latents:{}", d.join("plain.safetensors").display()), &Default::default())
                .unwrap_err()
        );
        assert!(e.contains("not an msdiff latent cache") && !e.contains('\n'), "{e}");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        assert!(LatentCache::load(&p).unwrap_err().to_string().contains("truncated"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

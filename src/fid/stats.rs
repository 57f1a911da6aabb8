//! Feature statistics (streaming mean / covariance in f64), their file format, and the
//! Frechet distance between two Gaussians.
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `format` value in the metadata of a statistics file.
pub const STATS_FORMAT: &str = "msdiff-fid-stats";
/// Version of the statistics file format.
pub const STATS_VERSION: &str = "1";

/// Gaussian statistics of a feature set: mean `mu` `[d]`, covariance `sigma` `[d, d]`
/// (unbiased, `1 / (n - 1)`, as numpy's `np.cov`), sample count `n`, all f64 on the CPU.
#[derive(Debug)]
pub struct FidStats {
    pub mu: Tensor,
    pub sigma: Tensor,
    pub n: u64,
    /// Feature network (e.g. [`super::NETWORK_NAME`]); free text, compared when computing FID.
    pub network: String,
    /// Resize convention (e.g. [`super::RESIZE_NAME`]); free text, compared when computing FID.
    pub resize: String,
}

impl Clone for FidStats {
    fn clone(&self) -> Self {
        Self {
            mu: self.mu.copy(),
            sigma: self.sigma.copy(),
            n: self.n,
            network: self.network.clone(),
            resize: self.resize.clone(),
        }
    }
}

impl FidStats {
    /// Build statistics from a mean and covariance (e.g. reference statistics from elsewhere).
    pub fn new(mu: &Tensor, sigma: &Tensor, n: u64, network: &str, resize: &str) -> Result<Self> {
        let d = mu.size();
        ensure!(d.len() == 1, "FID stats: mu must be 1-D, got shape {d:?}");
        ensure!(sigma.size() == [d[0], d[0]], "FID stats: sigma must be [{0}, {0}], got {1:?}", d[0], sigma.size());
        let mu = mu.to_device(Device::Cpu).to_kind(Kind::Double);
        let sigma = sigma.to_device(Device::Cpu).to_kind(Kind::Double);
        Ok(Self { mu, sigma, n, network: network.to_string(), resize: resize.to_string() })
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.mu.size()[0] as usize
    }

    /// A warning when the covariance is rank deficient (`n < dim + 1`), with how many images are needed.
    pub fn rank_warning(&self) -> Option<String> {
        let d = self.dim() as u64;
        (self.n < d + 1).then(|| {
            format!(
                "FID statistics from only {} samples: the {d}x{d} covariance has rank <= {} (needs at least {} \
                 samples for full rank; 10,000 or the standard 50,000 for a comparable FID); the FID is biased upward",
                self.n,
                self.n.saturating_sub(1),
                d + 1
            )
        })
    }

    /// Save as safetensors: f64 tensors `mu`, `sigma`; metadata `format` = [`STATS_FORMAT`],
    /// `version`, `n`, `dim`, `network`, `resize`. Written to a temporary file, then renamed.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let d = self.dim();
        let mu: Vec<f64> = Vec::<f64>::try_from(&self.mu.contiguous())?;
        let sigma: Vec<f64> = Vec::<f64>::try_from(&self.sigma.contiguous().view([-1]))?;
        let (mu_b, sig_b) = (mu.len() * 8, sigma.len() * 8);
        let header = serde_json::json!({
            "__metadata__": {
                "format": STATS_FORMAT,
                "version": STATS_VERSION,
                "n": self.n.to_string(),
                "dim": d.to_string(),
                "network": self.network,
                "resize": self.resize,
            },
            "mu": {"dtype": "F64", "shape": [d], "data_offsets": [0, mu_b]},
            "sigma": {"dtype": "F64", "shape": [d, d], "data_offsets": [mu_b, mu_b + sig_b]},
        });
        let mut h = serde_json::to_vec(&header)?;
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let mut buf = Vec::with_capacity(8 + h.len() + mu_b + sig_b);
        buf.extend_from_slice(&(h.len() as u64).to_le_bytes());
        buf.extend_from_slice(&h);
        for v in mu.iter().chain(sigma.iter()) {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        crate::io::atomic::write_atomic_bytes(path, &buf)
    }

    /// Load a file written by [`save`](Self::save); any other file is rejected with a clear error.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let p = path.display();
        let bytes = std::fs::read(path).with_context(|| format!("reading FID statistics {p}"))?;
        let not_stats = |why: String| anyhow::anyhow!("{p} is not an msdiff FID statistics file: {why}");
        ensure!(bytes.len() >= 8, not_stats("too short".into()));
        let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        ensure!(hlen <= bytes.len() - 8, not_stats("not a safetensors file (bad header length)".into()));
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hlen])
            .map_err(|e| not_stats(format!("not a safetensors file ({e})")))?;
        let meta = header.get("__metadata__").cloned().unwrap_or(serde_json::Value::Null);
        let get = |k: &str| meta.get(k).and_then(|v| v.as_str()).map(str::to_string);
        match get("format") {
            Some(f) if f == STATS_FORMAT => {}
            other => bail!(not_stats(format!("metadata format is {other:?}, expected \"{STATS_FORMAT}\""))),
        }
        let version = get("version").unwrap_or_default();
        ensure!(version == STATS_VERSION, not_stats(format!("unsupported version {version:?}")));
        let n: u64 = get("n").and_then(|s| s.parse().ok()).ok_or_else(|| not_stats("bad or missing n".into()))?;
        ensure!(n >= 2, not_stats(format!("n = {n}: statistics need at least 2 images")));
        let data = &bytes[8 + hlen..];
        let read = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let e = header.get(name).ok_or_else(|| not_stats(format!("tensor {name} missing")))?;
            ensure!(e["dtype"] == "F64", not_stats(format!("tensor {name} dtype {} (expected F64)", e["dtype"])));
            let sh: Vec<usize> = serde_json::from_value(e["shape"].clone()).map_err(|x| not_stats(x.to_string()))?;
            ensure!(sh == shape, not_stats(format!("tensor {name} shape {sh:?}, expected {shape:?}")));
            let off: Vec<usize> =
                serde_json::from_value(e["data_offsets"].clone()).map_err(|x| not_stats(x.to_string()))?;
            let numel: usize = shape.iter().product();
            ensure!(
                off.len() == 2 && off[1] <= data.len() && off[1] >= off[0] && off[1] - off[0] == numel * 8,
                not_stats(format!("tensor {name} has bad data offsets {off:?}"))
            );
            let v: Vec<f64> =
                data[off[0]..off[1]].chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                bail!(not_stats(format!("tensor {name} holds a non-finite value ({}) at element {i}", v[i])));
            }
            let shape_i: Vec<i64> = shape.iter().map(|&s| s as i64).collect();
            Ok(Tensor::from_slice(&v).view(shape_i.as_slice()))
        };
        let mu_shape: Vec<usize> = header
            .get("mu")
            .and_then(|e| serde_json::from_value(e["shape"].clone()).ok())
            .ok_or_else(|| not_stats("tensor mu missing".into()))?;
        ensure!(mu_shape.len() == 1, not_stats(format!("mu shape {mu_shape:?}")));
        let d = mu_shape[0];
        let mu = read("mu", &[d])?;
        let sigma = read("sigma", &[d, d])?;
        Ok(Self {
            mu,
            sigma,
            n,
            network: get("network").unwrap_or_default(),
            resize: get("resize").unwrap_or_default(),
        })
    }
}

/// Streaming mean / covariance accumulator in f64 over feature batches `[b, d]`.
///
/// Each batch is centred on its own mean and merged with Chan et al.'s pairwise update
/// (`M2 += M2_b + delta delta^T n_a n_b / n`), so large feature means cost no precision.
#[derive(Debug)]
pub struct StatsAccumulator {
    n: u64,
    mean: Option<Tensor>,
    m2: Option<Tensor>,
}

impl Default for StatsAccumulator {
    fn default() -> Self {
        Self::new()
    }
}

impl StatsAccumulator {
    pub fn new() -> Self {
        Self { n: 0, mean: None, m2: None }
    }

    /// Samples seen so far.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Add a batch of features `[b, d]` (any float kind, any device).
    pub fn update(&mut self, feats: &Tensor) -> Result<()> {
        let s = feats.size();
        ensure!(s.len() == 2, "FID stats: features must be [batch, dim], got {s:?}");
        let b = s[0];
        if b == 0 {
            return Ok(());
        }
        if let Some(m) = &self.mean {
            ensure!(m.size()[0] == s[1], "FID stats: feature dim {} after {} before", s[1], m.size()[0]);
        }
        let x = feats.to_device(Device::Cpu).to_kind(Kind::Double);
        let mb = x.mean_dim([0i64].as_slice(), false, Kind::Double);
        let xc = &x - &mb;
        let m2b = xc.tr().matmul(&xc);
        match (self.mean.take(), self.m2.take()) {
            (Some(mean), Some(m2)) => {
                let (na, nb) = (self.n as f64, b as f64);
                let nn = na + nb;
                let delta = &mb - &mean;
                let mean = mean + &delta * (nb / nn);
                let m2 = m2 + m2b + delta.outer(&delta) * (na * nb / nn);
                self.mean = Some(mean);
                self.m2 = Some(m2);
            }
            _ => {
                self.mean = Some(mb);
                self.m2 = Some(m2b);
            }
        }
        self.n += b as u64;
        Ok(())
    }

    /// Finish: mean and unbiased covariance. Needs at least 2 samples.
    pub fn finish(self, network: &str, resize: &str) -> Result<FidStats> {
        ensure!(self.n >= 2, "FID stats need at least 2 samples, got {}", self.n);
        let (mean, m2) = (self.mean.unwrap(), self.m2.unwrap());
        let sigma = m2 / (self.n as f64 - 1.0);
        let sigma = (&sigma + sigma.tr()) * 0.5;
        FidStats::new(&mean, &sigma, self.n, network, resize)
    }
}

/// Frechet distance with its parts and any warnings.
#[derive(Debug, Clone)]
pub struct FrechetReport {
    /// `||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(sqrt(S_a) S_b sqrt(S_a))`.
    pub fid: f64,
    /// `||mu_a - mu_b||^2`.
    pub mean_term: f64,
    /// `tr(S_a) + tr(S_b) - 2 tr sqrt(...)`.
    pub cov_term: f64,
    /// Most negative eigenvalue met (of `S_a`, then of `sqrt(S_a) S_b sqrt(S_a)`), relative to
    /// the largest one. Eigenvalues below `dim * eps * largest` (rounding noise, including
    /// tiny negatives) are set to 0.
    pub min_rel_eig: f64,
    /// Human-readable warnings: rank-deficient covariances, differing networks / resizes,
    /// significantly negative eigenvalues.
    pub warnings: Vec<String>,
}

/// Relative eigenvalue (to the largest) below which a negative eigenvalue is refused, not clamped.
const NEG_EIG_TOL: f64 = 1e-9;

/// (S + S^T) / 2: removes the rounding asymmetry of a product before a symmetric eigensolver.
fn symmetrize(s: &Tensor) -> Tensor {
    (s + s.tr()) * 0.5
}

/// The Frechet distance between the Gaussians of two statistics.
pub fn frechet_distance(a: &FidStats, b: &FidStats) -> Result<f64> {
    Ok(frechet_distance_report(a, b)?.fid)
}

/// [`frechet_distance`] with its parts and warnings.
///
/// `tr sqrt(sqrt(S_a) S_b sqrt(S_a))` is computed from two symmetric eigendecompositions in f64:
/// `S_a = V diag(l) V^T`, `sqrt(S_a) = V diag(sqrt(max(l, 0))) V^T`, then the eigenvalues `m`
/// of the symmetric PSD matrix `sqrt(S_a) S_b sqrt(S_a)` give `sum sqrt(max(m, 0))`.
pub fn frechet_distance_report(a: &FidStats, b: &FidStats) -> Result<FrechetReport> {
    ensure!(a.dim() == b.dim(), "FID: feature dims differ ({} vs {})", a.dim(), b.dim());
    for (s, which) in [(a, "first"), (b, "second")] {
        let finite = s.mu.isfinite().all().int64_value(&[]) == 1 && s.sigma.isfinite().all().int64_value(&[]) == 1;
        ensure!(finite, "FID: the {which} statistics hold non-finite values (NaN or inf features?)");
    }
    let mut warnings: Vec<String> = [a, b].iter().filter_map(|s| s.rank_warning()).collect();
    if a.network != b.network {
        warnings.push(format!("FID between different feature networks: {:?} vs {:?}", a.network, b.network));
    }
    if a.resize != b.resize {
        warnings.push(format!("FID between statistics with different resizes: {:?} vs {:?}", a.resize, b.resize));
    }
    let (mu_a, mu_b) = (a.mu.to_kind(Kind::Double), b.mu.to_kind(Kind::Double));
    let (sa, sb) = (a.sigma.to_kind(Kind::Double), b.sigma.to_kind(Kind::Double));
    let diff = &mu_a - &mu_b;
    let mean_term = diff.dot(&diff).double_value(&[]);

    let mut min_rel_eig = 0f64;
    let mut check = |ev: &Tensor, what: &str| -> Result<Tensor> {
        let max = ev.abs().max().double_value(&[]);
        let min = ev.min().double_value(&[]);
        let rel = if max > 0.0 { min / max } else { 0.0 };
        min_rel_eig = min_rel_eig.min(rel);
        // A covariance (and sqrt(S_a) S_b sqrt(S_a) of two) is positive semi-definite; rounding makes
        // eigenvalues of about dim * eps * largest, far below this.
        ensure!(
            rel >= -NEG_EIG_TOL,
            "FID: {what} has a significantly negative eigenvalue {min:.3e} (largest {max:.3e}): not a covariance; \
             are both statistics files from `msdiff fid stats`?"
        );
        // Eigenvalues below the eigensolver's resolution (dim * eps * largest) are rounding
        // noise around 0: zero them, so that rank-deficient covariances do not add
        // sqrt(noise) terms to the trace.
        let noise = max * ev.size()[0] as f64 * f64::EPSILON;
        let keep = ev.gt(noise);
        Ok(ev.clamp_min(0.0) * keep.to_kind(Kind::Double))
    };
    let (la, va) = symmetrize(&sa).linalg_eigh("L");
    let la = check(&la, "the first covariance")?;
    let sqrt_a = (&va * la.sqrt().unsqueeze(0)).matmul(&va.tr());
    let m = sqrt_a.matmul(&sb).matmul(&sqrt_a);
    // Only its eigenvalues are needed: eigvalsh skips the eigenvectors (about half the time of eigh).
    let lm = symmetrize(&m).linalg_eigvalsh("L");
    let lm = check(&lm, "sqrt(S_a) S_b sqrt(S_a) (so the second covariance)")?;
    let tr_sqrt = lm.sqrt().sum(Kind::Double).double_value(&[]);
    let tr_a = sa.trace().double_value(&[]);
    let tr_b = sb.trace().double_value(&[]);
    let cov_term = tr_a + tr_b - 2.0 * tr_sqrt;
    let mut fid = mean_term + cov_term;
    ensure!(fid.is_finite(), "FID is not finite (mean term {mean_term}, covariance term {cov_term})");
    let scale = tr_a + tr_b + mean_term;
    if fid < 0.0 {
        if fid < -1e-9 * scale.max(1e-300) {
            warnings.push(format!("FID came out negative ({fid:.3e}); clamped to 0"));
        }
        fid = 0.0;
    }
    Ok(FrechetReport { fid, mean_term, cov_term, min_rel_eig, warnings })
}

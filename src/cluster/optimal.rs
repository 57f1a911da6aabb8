//! Algorithm 1 of Zhang et al. (docs/METHOD.md §3), as the official code computes it.
//!
//! For K Monte-Carlo triples (y, z, t), t ~ U[t_min, 1], the scaled sample x~ = y + sigma_t z and
//! the optimal denoiser's posterior mean m over the whole dataset give
//!   S0 = fraction of pixels with |y - m|    <= eta sigma_t   (agreement with the t -> 0 form)
//!   S1 = fraction of pixels with |ybar - m| <= eta sigma_t   (agreement with the t -> 1 form)
//! (|e_t - e_0| = |y - m|/sigma and |e_t - e_1| = |ybar - m|/sigma in the notation of docs/METHOD.md §3.)
//! Sorted by t: t1 = the largest t_k whose prefix mean of S0 is >= alpha; t2 = the smallest t_k
//! whose suffix mean of S1 is >= alpha.
//!
//! **K stages.** The two cuts delimit the regimes where the optimal denoiser has a simple form
//! ([0, t1): it returns the true image; [t2, 1]: it returns the data mean); between them it must
//! really separate images. Our rule for K stages keeps those two outer stages and splits the hard
//! middle [t1, t2] into K - 2 intervals of equal length in log-SNR lambda; for K = 2 the single cut
//! is the lambda-midpoint of [t1, t2]. At K = 3 this is exactly Algorithm 1.
use crate::denoiser::OptimalDenoiser;
use crate::process::Process;
use crate::rng::Rng;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

crate::names::named_enum! {
    /// The data scale the denoiser sees. The official code used [0, 1] with eta = 2/255.
    pub enum DataScale ("data scale") {
        /// [0, 1] (official).
        Unit = "unit" | "0,1" | "[0,1]",
        /// [-1, 1] (the training scale).
        Symmetric = "symmetric" | "-1,1" | "[-1,1]",
    }
}

/// Largest error bound of an f32 posterior mean that Algorithm 1 accepts, as a fraction of the
/// decision threshold eta sigma. The bound ([`OptimalDenoiser::mean_error_bound`]) is built on a
/// logit error estimate with a measured ~35x margin, so an accepted mean is in practice within a
/// few % of the threshold of the f64 one: a pixel's decision |v - m| <= eta sigma can only differ
/// when |v - m| is that close to the threshold, and the cuts (means over thousands of samples of
/// such fractions) equal the f64 path's (`--precision f64`; docs/CLUSTERING.md, "Precision").
pub const DECISION_TOLERANCE: f64 = 1.0;

/// Accuracy to which a row the f32 pass could not settle is recomputed, as a fraction of its
/// decision threshold eta sigma: 1e-3, so a refined mean's decisions differ from the exact ones
/// only for pixels within 0.1 % of the threshold (a refinement that drops no point at all would
/// cost a full f64 pass per row; see [`crate::denoiser::optimal`] for how the tolerance sets the
/// candidate cutoff).
pub const REFINED_TOLERANCE: f64 = 1e-3;

/// Options of Algorithm 1. Defaults: the official eta = 2/255 on [0,1] data, t_min = 1e-3,
/// K = 5000 samples. alpha is not published; 0.9 is our default (see docs/CLUSTERING.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimalOptions {
    pub alpha: f64,
    pub eta: f64,
    pub samples: usize,
    pub seed: u64,
    pub scale: DataScale,
    pub t_min: f64,
    /// `mixed` (default): f32 posterior means, recomputed in f64 for the samples whose S0/S1
    /// decisions the f32 error bound cannot settle, so every decision equals the f64 one;
    /// `f64`: every posterior mean in f64 (the check).
    #[serde(default)]
    pub arithmetic: crate::denoiser::optimal::Arithmetic,
}

impl Default for OptimalOptions {
    fn default() -> Self {
        OptimalOptions {
            alpha: 0.9,
            eta: 2.0 / 255.0,
            samples: 5000,
            seed: 0,
            scale: DataScale::Unit,
            t_min: 1e-3,
            arithmetic: Default::default(),
        }
    }
}

impl OptimalOptions {
    pub fn validate(&self, stages: usize) -> Result<()> {
        ensure!(self.alpha > 0.0 && self.alpha <= 1.0, "alpha must be in (0, 1], got {}", self.alpha);
        ensure!(self.eta > 0.0 && self.eta.is_finite(), "eta must be > 0, got {}", self.eta);
        super::check_stages(stages)?;
        ensure!(self.t_min > 0.0 && self.t_min < 1.0, "t_min must be in (0, 1), got {}", self.t_min);
        // Each stage should see at least ~20 samples for its boundary to mean anything.
        let need = 20 * stages;
        ensure!(
            self.samples >= need,
            "{} samples are too few for {stages} stages: use at least {need} (the official code used several thousand)",
            self.samples
        );
        Ok(())
    }
}

/// Per-sample agreement scores, sorted by t.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Curves {
    pub t: Vec<f64>,
    pub s0: Vec<f64>,
    pub s1: Vec<f64>,
    /// mean of s0 over samples with t_k <= t (prefix).
    pub prefix_s0: Vec<f64>,
    /// mean of s1 over samples with t_k >= t (suffix).
    pub suffix_s1: Vec<f64>,
}

/// Compute S0, S1 for K Monte-Carlo samples. `data` is `[N, ...]` in [-1, 1] (converted to the
/// requested scale here). `progress` is called with the number of samples done.
pub fn agreement_curves(
    data: &Tensor,
    process: &Process,
    opts: &OptimalOptions,
    device: Device,
    mut progress: impl FnMut(usize),
) -> Result<Curves> {
    let n = data.size()[0];
    ensure!(n > 0, "the dataset is empty");
    let flat = data.reshape([n, -1]).to_kind(Kind::Float);
    let flat = match opts.scale {
        DataScale::Unit => (flat + 1.0).g_mul_scalar_(0.5),
        DataScale::Symmetric => flat,
    };
    let den = OptimalDenoiser::new(&flat, device)?.with_arithmetic(opts.arithmetic);
    let d = den.dim();
    let ybar = den.mean().to_kind(Kind::Double);
    let k = opts.samples;
    // Draws: sample j uses stream (seed, j) for its index, time and noise, so the scores do not
    // depend on how the work is batched. All K queries go to the denoiser at once (K x D f64: 31 MB
    // at K = 5000, D = 784), which batches the rows it must recompute over the whole set.
    let mut idx = Vec::with_capacity(k);
    let mut ts = Vec::with_capacity(k);
    let mut z = Vec::with_capacity(k * d as usize);
    for j in 0..k {
        let mut r = Rng::stream(opts.seed, j as u64);
        idx.push(r.below(n as u64) as i64);
        ts.push(r.uniform_range(opts.t_min, 1.0));
        for _ in 0..d {
            z.push(r.normal());
        }
    }
    let sig: Vec<f64> = ts.iter().map(|&t| process.sigma(t)).collect();
    let y = den.data().index_select(0, &Tensor::from_slice(&idx).to_device(device)).to_kind(Kind::Double);
    let z = Tensor::from_slice(&z).reshape([k as i64, d]).to_device(device);
    let s = Tensor::from_slice(&sig).to_device(device);
    let x = &y + &z * s.unsqueeze(1);
    drop(z);
    // S0/S1 compare |y - m| and |ybar - m| with eta sigma, pixel by pixel. The f32 pass's mean
    // is within `bound` of the exact one (OptimalDenoiser::mean_error_bound), so a decision can
    // differ from the f64 one only for a pixel within `bound` of its threshold. Rows whose
    // bound exceeds DECISION_TOLERANCE x eta sigma are recomputed in f64 to REFINED_TOLERANCE x
    // eta sigma; the rest keep f32 means (docs/CLUSTERING.md, "Precision": the cuts equal the
    // f64 path's).
    let thr = s.unsqueeze(1) * opts.eta;
    // The f64 path never asks `refine`: give it batches so that the progress moves.
    let per_call = match opts.arithmetic {
        crate::denoiser::optimal::Arithmetic::Mixed => k,
        crate::denoiser::optimal::Arithmetic::F64 => 256,
    };
    let mut parts = Vec::new();
    for first in (0..k).step_by(per_call) {
        let len = per_call.min(k - first);
        let (xs, ss) = (x.narrow(0, first as i64, len as i64), s.narrow(0, first as i64, len as i64));
        parts.push(den.posterior_mean_refined(&xs, &ss, &mut |start, sig, bound| {
            progress(first + start + sig.len());
            sig.iter()
                .zip(bound)
                .map(|(s, b)| (*b > DECISION_TOLERANCE * opts.eta * s).then_some(REFINED_TOLERANCE * opts.eta * s))
                .collect()
        })?);
        progress(first + len);
    }
    let m = Tensor::cat(&parts, 0);
    let s0 = (&y - &m).abs().le_tensor(&thr).to_kind(Kind::Double).mean_dim(1, false, Kind::Double);
    let s1 = (ybar.unsqueeze(0) - &m).abs().le_tensor(&thr).to_kind(Kind::Double).mean_dim(1, false, Kind::Double);
    let s0_all = Vec::<f64>::try_from(s0.to_device(Device::Cpu))?;
    let s1_all = Vec::<f64>::try_from(s1.to_device(Device::Cpu))?;
    Ok(sorted_curves(&ts, &s0_all, &s1_all))
}

/// Sort by t and add prefix/suffix running means.
pub fn sorted_curves(t: &[f64], s0: &[f64], s1: &[f64]) -> Curves {
    let mut order: Vec<usize> = (0..t.len()).collect();
    order.sort_by(|&a, &b| t[a].total_cmp(&t[b]));
    let t: Vec<f64> = order.iter().map(|&i| t[i]).collect();
    let s0: Vec<f64> = order.iter().map(|&i| s0[i]).collect();
    let s1: Vec<f64> = order.iter().map(|&i| s1[i]).collect();
    let mut prefix = Vec::with_capacity(t.len());
    let mut acc = 0.0;
    for (i, v) in s0.iter().enumerate() {
        acc += v;
        prefix.push(acc / (i + 1) as f64);
    }
    let mut suffix = vec![0.0; t.len()];
    let mut acc = 0.0;
    for i in (0..t.len()).rev() {
        acc += s1[i];
        suffix[i] = acc / (t.len() - i) as f64;
    }
    Curves { t, s0, s1, prefix_s0: prefix, suffix_s1: suffix }
}

/// Algorithm 1's two cuts (t1, t2) at threshold alpha.
pub fn algorithm1_cuts(c: &Curves, alpha: f64) -> Result<(f64, f64)> {
    let Some(i1) = c.prefix_s0.iter().rposition(|&v| v >= alpha) else {
        bail!("no prefix of the S0 curve reaches alpha = {alpha}: the optimal denoiser disagrees with the data already at the smallest t; lower alpha or eta scale");
    };
    let Some(i2) = c.suffix_s1.iter().position(|&v| v >= alpha) else {
        bail!("no suffix of the S1 curve reaches alpha = {alpha}; lower alpha");
    };
    Ok((c.t[i1], c.t[i2]))
}

/// Cuts for `stages` stages from Algorithm 1's (t1, t2) (module docs give the rule).
pub fn stage_cuts(process: &Process, t1: f64, t2: f64, stages: usize) -> Result<Vec<f64>> {
    super::check_stages(stages)?;
    if t1 >= t2 {
        bail!(
            "the cuts cross (t1 = {t1:.4} >= t2 = {t2:.4}): at this alpha the data-regime and mean-regime overlap; raise alpha"
        );
    }
    let (l1, l2) = (process.lambda(t1), process.lambda(t2));
    Ok(match stages {
        2 => vec![process.t_from_lambda(0.5 * (l1 + l2))],
        _ => {
            let inner = stages - 2;
            let mut cuts = vec![t1];
            for i in 1..inner {
                cuts.push(process.t_from_lambda(l1 + (l2 - l1) * i as f64 / inner as f64));
            }
            cuts.push(t2);
            cuts
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessConfig;

    #[test]
    fn three_stage_rule_is_algorithm_1_and_k_stage_is_monotone() {
        let p = ProcessConfig::default().build().unwrap();
        assert_eq!(stage_cuts(&p, 0.44, 0.63, 3).unwrap(), vec![0.44, 0.63]);
        let c2 = stage_cuts(&p, 0.44, 0.63, 2).unwrap();
        assert!(c2[0] > 0.44 && c2[0] < 0.63);
        // lambda-midpoint: lambda(c) = (lambda(.44) + lambda(.63))/2.
        assert!((p.lambda(c2[0]) - 0.5 * (p.lambda(0.44) + p.lambda(0.63))).abs() < 1e-9);
        let c5 = stage_cuts(&p, 0.44, 0.63, 5).unwrap();
        assert_eq!(c5.len(), 4);
        assert!(c5.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((c5[0], c5[3]), (0.44, 0.63));
        assert!(stage_cuts(&p, 0.6, 0.5, 3).is_err());
    }

    #[test]
    fn prefix_and_suffix_means() {
        let c = sorted_curves(&[0.3, 0.1, 0.2], &[0.5, 1.0, 1.0], &[1.0, 0.0, 0.5]);
        assert_eq!(c.t, vec![0.1, 0.2, 0.3]);
        assert_eq!(c.prefix_s0, vec![1.0, 1.0, 2.5 / 3.0]);
        assert_eq!(c.suffix_s1, vec![0.5, 0.75, 1.0]);
        assert_eq!(algorithm1_cuts(&c, 0.9).unwrap(), (0.2, 0.3));
        assert_eq!(algorithm1_cuts(&c, 0.5).unwrap(), (0.3, 0.1));
    }
}

//! Per-interval validation loss: the training loss of a model on held-out images, restricted to
//! each of a set of noise-level intervals.
//!
//! This is the signal the paper's Section 3 argument is about (which interval gains from
//! capacity), and it moves long before FID does. Every (image, interval) pair draws its time and
//! noise from its own stream `Rng::stream(seed ^ VALIDATION_STREAM, i K + j)`, so two
//! checkpoints, or two models, are scored on exactly the same noisy inputs (common random
//! numbers): differences between them are not sampling noise of the estimate.
//!
//! Within interval j, t follows the run's base training law restricted to the interval
//! ([`StageSampler::draw_t`]: uniform in t for VP, uniform steps for DDPM, the lognormal for
//! EDM), and the loss is [`Objective::loss`] with dropout off, each sample routed to the model's
//! own stage for its sigma.
use super::{Draws, Objective, ObjectiveConfig, StagePolicy, StageSampler, StageWeights};
use crate::cluster::stage_of_sigma;
use crate::nn::StagedNetwork;
use crate::rng::Rng;
use crate::runtime::batch_to_device;
use anyhow::{ensure, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

const VALIDATION_STREAM: u64 = 0x7A11_0000_0000_0005;

/// The validation loss of one model, per interval.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct IntervalLosses {
    /// Interval edges in the process time t (K intervals: K+1 edges, clipped to the training range).
    pub t_edges: Vec<(f64, f64)>,
    /// Mean loss per interval over the images.
    pub loss: Vec<f64>,
    /// Standard error of each mean (per-image losses' std / sqrt(n)).
    pub stderr: Vec<f64>,
    /// Images per interval.
    pub n: usize,
    pub seed: u64,
    /// Every image's loss, per interval (`[K][n]`, in image order): with the common random numbers
    /// above, two models' per-image losses pair up, and the standard error of their difference is
    /// far below the two means' own (`msdiff val-loss --per-image`).
    #[serde(skip)]
    pub per_image: Vec<Vec<f64>>,
}

/// Where and how to score.
#[derive(Clone, Debug)]
pub struct ValidationOptions {
    /// Increasing sigma cuts: K-1 cuts give K intervals.
    pub cuts_sigma: Vec<f64>,
    /// Seed of the per-(image, interval) draws.
    pub seed: u64,
    /// Images per batch (the result does not depend on it).
    pub batch: usize,
    pub device: Device,
}

/// Score `net` under `objective` on `images` (`[N, C, H, W]` in [-1, 1], on the CPU) in the
/// intervals of `opts`, with the base law of `base` (its policy and weights are ignored).
/// `progress` gets the number of images done.
pub fn interval_losses(
    net: &dyn StagedNetwork,
    objective: &Objective,
    base: &ObjectiveConfig,
    images: &Tensor,
    opts: &ValidationOptions,
    mut progress: impl FnMut(usize),
) -> Result<IntervalLosses> {
    let ValidationOptions { cuts_sigma, seed, batch, device } = opts;
    let (seed, batch, device) = (*seed, *batch, *device);
    ensure!(batch >= 1, "the batch must be at least 1");
    let n = images.size()[0] as usize;
    ensure!(n >= 2, "validation needs at least 2 images, got {n}");
    let cfg = ObjectiveConfig { policy: StagePolicy::Mixed, weights: StageWeights::Uniform, ..base.clone() };
    let sampler = StageSampler::new(&objective.process, &cfg, cuts_sigma)?;
    let k = sampler.stages();
    let item: Vec<i64> = images.size()[1..].to_vec();
    let mut per: Vec<Vec<f64>> = vec![Vec::with_capacity(n); k];
    let _g = tch::no_grad_guard();
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let x0 = batch_to_device(&images.narrow(0, start as i64, (end - start) as i64).to_kind(Kind::Float), device);
        for (j, per_j) in per.iter_mut().enumerate() {
            let mut draws = Draws::default();
            let mut zs = Vec::with_capacity(end - start);
            for i in start..end {
                let mut rng = Rng::stream(seed ^ VALIDATION_STREAM, (i * k + j) as u64);
                let t = sampler.draw_t(j, &mut rng)?;
                let sigma = objective.process.sigma(t);
                draws.t.push(t);
                draws.sigma.push(sigma);
                draws.stage.push(stage_of_sigma(sigma, &objective.boundaries_sigma) as i64);
                zs.push(rng.randn(&item, Kind::Float));
            }
            let z = batch_to_device(&Tensor::stack(&zs, 0), device);
            let l = objective.loss(net, &x0, &z, &draws, false)?;
            per_j.extend(Vec::<f64>::try_from(l.to_kind(Kind::Double).to_device(Device::Cpu))?);
        }
        progress(end);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let loss: Vec<f64> = per.iter().map(|v| mean(v)).collect();
    let stderr = per
        .iter()
        .zip(&loss)
        .map(|(v, m)| (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64 / v.len() as f64).sqrt())
        .collect();
    ensure!(loss.iter().all(|l| l.is_finite()), "the validation loss is not finite ({loss:?})");
    Ok(IntervalLosses {
        t_edges: (0..k).map(|j| sampler.t_interval(j)).collect(),
        loss,
        stderr,
        n,
        seed,
        per_image: per,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objective::Prediction;
    use crate::process::ProcessConfig;

    /// Predicts eps = 0 whatever the input: its eps loss is E[z^2] = 1 in every interval, and
    /// for the x0 parameterisation E[x0^2] (the images' mean square).
    struct Zero;
    impl StagedNetwork for Zero {
        fn forward_staged(&self, x: &Tensor, _: &Tensor, _: &Tensor, _: bool) -> Result<Tensor> {
            Ok(x.zeros_like())
        }
        fn num_stages(&self) -> usize {
            1
        }
    }

    #[test]
    fn a_zero_network_scores_the_target_variance_and_scores_are_reproducible() {
        let vp = ProcessConfig::default().build().unwrap();
        let cuts = [vp.sigma(0.442), vp.sigma(0.631)];
        let images = Tensor::full([64, 1, 4, 4], 0.5, (Kind::Float, Device::Cpu));
        let eps = Objective::new(vp.clone(), Prediction::Eps, vec![]);
        let cfg = ObjectiveConfig::default();
        let opts = |batch| ValidationOptions { cuts_sigma: cuts.to_vec(), seed: 3, batch, device: Device::Cpu };
        let r = interval_losses(&Zero, &eps, &cfg, &images, &opts(16), |_| {}).unwrap();
        assert_eq!(r.loss.len(), 3);
        // Mean of 64 x 16 squared standard normals: 1 within a few standard errors (sd of the
        // per-image mean of 16 chi^2_1 is sqrt(2/16) = 0.35, over 64 images 0.044).
        for (l, s) in r.loss.iter().zip(&r.stderr) {
            assert!((l - 1.0).abs() < 4.0 * s && (s - 0.044).abs() < 0.02, "{l} +- {s}");
        }
        let again = interval_losses(&Zero, &eps, &cfg, &images, &opts(7), |_| {}).unwrap();
        assert_eq!(r, again, "the batch size must not change the draws");
        // x0 prediction: target x0 = 0.5 everywhere, so the loss is exactly 0.25.
        let x0 = Objective::new(vp, Prediction::X0, vec![]);
        let r = interval_losses(&Zero, &x0, &cfg, &images, &opts(16), |_| {}).unwrap();
        assert!(r.loss.iter().all(|l| (l - 0.25).abs() < 1e-7), "{:?}", r.loss);
        assert!((r.t_edges[1].0 - 0.442).abs() < 1e-9 && (r.t_edges[1].1 - 0.631).abs() < 1e-9);
    }
}

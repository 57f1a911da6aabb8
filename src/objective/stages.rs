//! What a training step draws per sample: stage, time, noise level.
//!
//! Base distributions (docs/METHOD.md §1): VP-SDE t ~ U[t_min, 1] (t_min 1e-5);
//! discrete DDPM: step n uniform in 0..N-1; EDM: ln sigma ~ N(P_mean, P_std^2) = N(-1.2, 1.2^2).
//! Within a stage, t follows the base distribution restricted to the stage.
//!
//! Stage policies (docs/METHOD.md §5): `mixed` (default) draws a stage per sample, `single` one stage per
//! batch (as the authors' code), `edm` one stage per batch picked by one draw of the base law (the
//! authors' EDM code; docs/EDM.md). Stage weights: `uniform` (1/K, the DPM-Solver code base),
//! `length` (interval length in the process time: t for VP/DDPM, ln sigma within
//! [sigma_min, sigma_max] for EDM) or `mass` (the base distribution's mass: the EDM code base).
//! With `mixed` + `mass` the per-sample (stage, t) law is exactly the unrestricted base law.
use crate::process::Process;
use crate::rng::Rng;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagePolicy {
    Mixed,
    Single,
    /// EDM's multi-stage recipe (the authors' `EDMMultistageLoss`): one draw from the base law
    /// (for EDM one sigma from the log-normal) picks the batch's stage, then every sample of the
    /// batch is drawn from the base law restricted to that stage. Stage frequencies are
    /// therefore the base law's mass (96.1 / 3.5 / 0.35 % at the paper's EDM cuts), whatever
    /// `weights` says.
    Edm,
    /// Data-parallel: the stage is fixed by the rank, stage = rank mod K (as the authors' LDM
    /// code trains each stage on its own GPUs); needs at least K ranks. Times within the stage
    /// follow the base law restricted to it.
    Rank,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageWeights {
    Uniform,
    Length,
    Mass,
}

/// Objective settings (defaults documented on each field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    /// VP-SDE: smallest training t (official 1e-5).
    pub t_min: f64,
    /// EDM: mean and std of ln sigma (-1.2, 1.2).
    pub p_mean: f64,
    pub p_std: f64,
    pub policy: StagePolicy,
    pub weights: StageWeights,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            t_min: 1e-5,
            p_mean: -1.2,
            p_std: 1.2,
            policy: StagePolicy::Mixed,
            weights: StageWeights::Mass,
        }
    }
}

/// Standard normal CDF. erfc by the Numerical Recipes Chebyshev fit (fractional error < 1.2e-7),
/// enough for stage weights.
pub fn normal_cdf(x: f64) -> f64 {
    let z = (x / std::f64::consts::SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// The stages as intervals of the process and how to draw from them.
#[derive(Clone, Debug)]
pub struct StageSampler {
    process: Process,
    cfg: ObjectiveConfig,
    /// Interval of each stage in sigma: [lo, hi).
    sigma_bounds: Vec<(f64, f64)>,
    /// Probability of each stage.
    pub weights: Vec<f64>,
    /// This process's rank (the `rank` policy's stage is rank mod K).
    rank: usize,
}

/// One batch's draws.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Draws {
    pub stage: Vec<i64>,
    pub t: Vec<f64>,
    pub sigma: Vec<f64>,
}

impl Draws {
    /// The `len` draws from position `start` (one rank's share of a data-parallel batch).
    pub fn slice(&self, start: usize, len: usize) -> Draws {
        Draws {
            stage: self.stage[start..start + len].to_vec(),
            t: self.t[start..start + len].to_vec(),
            sigma: self.sigma[start..start + len].to_vec(),
        }
    }
}

impl StageSampler {
    /// `boundaries_sigma`: K-1 increasing interior cuts as noise-to-signal ratios (empty = 1 stage).
    pub fn new(process: &Process, cfg: &ObjectiveConfig, boundaries_sigma: &[f64]) -> Result<Self> {
        ensure!(cfg.t_min > 0.0 && cfg.t_min < 1.0, "objective.t_min must be in (0, 1)");
        ensure!(cfg.p_std > 0.0, "objective.p_std must be > 0");
        let mut edges = vec![0.0];
        edges.extend_from_slice(boundaries_sigma);
        edges.push(f64::INFINITY);
        for w in edges.windows(2) {
            ensure!(w[0] < w[1], "stage boundaries must be strictly increasing (got sigmas {boundaries_sigma:?})");
        }
        let sigma_bounds: Vec<(f64, f64)> = edges.windows(2).map(|w| (w[0], w[1])).collect();
        let k = sigma_bounds.len();
        let mut s = StageSampler { process: process.clone(), cfg: cfg.clone(), sigma_bounds, weights: vec![], rank: 0 };
        let masses: Vec<f64> = (0..k).map(|j| s.base_mass(j)).collect();
        let lengths: Vec<f64> = (0..k).map(|j| s.length(j)).collect();
        for (j, &mass) in masses.iter().enumerate() {
            if mass <= 0.0 {
                bail!(
                    "stage {j} (sigma in [{:.4}, {:.4})) lies outside the training range of the {} process: move the boundaries",
                    s.sigma_bounds[j].0,
                    s.sigma_bounds[j].1,
                    process.name()
                );
            }
        }
        let raw = match (cfg.policy, cfg.weights) {
            (StagePolicy::Edm, _) | (_, StageWeights::Mass) => masses,
            (_, StageWeights::Uniform) => vec![1.0; k],
            (_, StageWeights::Length) => lengths,
        };
        let total: f64 = raw.iter().sum();
        s.weights = raw.iter().map(|w| w / total).collect();
        Ok(s)
    }

    pub fn stages(&self) -> usize {
        self.sigma_bounds.len()
    }

    /// Training range of the process time t.
    fn t_range(&self) -> (f64, f64) {
        match &self.process {
            Process::Vp(_) => (self.cfg.t_min, 1.0),
            Process::Ddpm(p) => (1.0 / p.steps() as f64, 1.0),
            Process::Edm(p) => (p.sigma_min, p.sigma_max),
        }
    }

    /// Stage j's interval in process time, intersected with the training range.
    pub fn t_interval(&self, j: usize) -> (f64, f64) {
        let (lo, hi) = self.t_range();
        let (slo, shi) = self.sigma_bounds[j];
        let a = if slo <= 0.0 { lo } else { self.process.t_from_sigma(slo).max(lo) };
        let b = if shi.is_infinite() { hi } else { self.process.t_from_sigma(shi).min(hi) };
        (a, b)
    }

    fn length(&self, j: usize) -> f64 {
        let (a, b) = self.t_interval(j);
        match &self.process {
            Process::Edm(_) => (b.ln() - a.ln()).max(0.0),
            _ => (b - a).max(0.0),
        }
    }

    fn base_mass(&self, j: usize) -> f64 {
        match &self.process {
            Process::Vp(_) => self.length(j),
            Process::Ddpm(p) => self.ddpm_steps(j, p.steps()).len() as f64,
            Process::Edm(_) => {
                let (lo, hi) = self.sigma_bounds[j];
                let z = |s: f64| (s.ln() - self.cfg.p_mean) / self.cfg.p_std;
                let a = if lo <= 0.0 { 0.0 } else { normal_cdf(z(lo)) };
                let b = if hi.is_infinite() { 1.0 } else { normal_cdf(z(hi)) };
                b - a
            }
        }
    }

    /// Discrete steps n (t = (n+1)/N) whose sigma falls in stage j.
    fn ddpm_steps(&self, j: usize, n: usize) -> Vec<usize> {
        let (lo, hi) = self.sigma_bounds[j];
        (0..n)
            .filter(|&i| {
                let s = self.process.sigma((i + 1) as f64 / n as f64);
                s >= lo && s < hi
            })
            .collect()
    }

    /// A discrete DDPM process: the steps n (t = (n+1)/N) stage j trains on, in order (`None` for
    /// a continuous process).
    pub fn discrete_steps(&self, j: usize) -> Option<Vec<usize>> {
        match &self.process {
            Process::Ddpm(p) if j < self.sigma_bounds.len() => Some(self.ddpm_steps(j, p.steps())),
            _ => None,
        }
    }

    fn pick_stage(&self, rng: &mut Rng) -> usize {
        let u = rng.uniform();
        let mut acc = 0.0;
        for (j, w) in self.weights.iter().enumerate() {
            acc += w;
            if u < acc {
                return j;
            }
        }
        self.weights.len() - 1
    }

    /// A time inside stage j from the base distribution restricted to it.
    pub fn draw_t(&self, j: usize, rng: &mut Rng) -> Result<f64> {
        match &self.process {
            Process::Vp(_) => {
                let (a, b) = self.t_interval(j);
                Ok(rng.uniform_range(a, b))
            }
            Process::Ddpm(p) => {
                let steps = self.ddpm_steps(j, p.steps());
                let n = steps[rng.below(steps.len() as u64) as usize];
                Ok((n + 1) as f64 / p.steps() as f64)
            }
            Process::Edm(_) => {
                let (lo, hi) = self.sigma_bounds[j];
                // Rejection from the log-normal: the smallest stage mass we accept is checked
                // at construction (> 0); cap the tries so a vanishing stage cannot hang.
                for _ in 0..10_000_000 {
                    let s = (self.cfg.p_mean + self.cfg.p_std * rng.normal()).exp();
                    if s >= lo && s < hi {
                        return Ok(s);
                    }
                }
                bail!(
                    "stage {j} has too little mass under ln sigma ~ N({}, {}^2) to draw from",
                    self.cfg.p_mean,
                    self.cfg.p_std
                )
            }
        }
    }

    /// The stage of one draw from the unrestricted base law (EDM's policy picks the batch's stage
    /// so): VP t ~ U[t_min, 1], DDPM a uniform step, EDM ln sigma ~ N(P_mean, P_std^2).
    fn base_draw_stage(&self, rng: &mut Rng) -> usize {
        let sigma = match &self.process {
            Process::Vp(_) => self.process.sigma(rng.uniform_range(self.cfg.t_min, 1.0)),
            Process::Ddpm(p) => self.process.sigma((rng.below(p.steps() as u64) + 1) as f64 / p.steps() as f64),
            Process::Edm(_) => (self.cfg.p_mean + self.cfg.p_std * rng.normal()).exp(),
        };
        self.sigma_bounds.iter().position(|&(lo, hi)| sigma >= lo && sigma < hi).unwrap_or(self.sigma_bounds.len() - 1)
    }

    /// The sampler of rank `rank` of `world` (only the `rank` policy draws differently per rank).
    pub fn for_rank(mut self, rank: usize, world: usize) -> Result<Self> {
        let k = self.sigma_bounds.len();
        ensure!(
            self.cfg.policy != StagePolicy::Rank || world >= k,
            "objective.policy = \"rank\" trains stage j on the ranks r with r mod {k} = j, so it needs at least {k} ranks (got {world}); launch more ranks or choose another policy"
        );
        self.rank = rank;
        Ok(self)
    }

    /// Draw stage, t and sigma for `batch` samples.
    pub fn draw(&self, batch: usize, rng: &mut Rng) -> Result<Draws> {
        let mut d = Draws::default();
        let single = match self.cfg.policy {
            StagePolicy::Mixed => None,
            StagePolicy::Single => Some(self.pick_stage(rng)),
            StagePolicy::Edm => Some(self.base_draw_stage(rng)),
            StagePolicy::Rank => Some(self.rank % self.sigma_bounds.len()),
        };
        for _ in 0..batch {
            let j = single.unwrap_or_else(|| self.pick_stage(rng));
            let t = self.draw_t(j, rng)?;
            d.stage.push(j as i64);
            d.t.push(t);
            d.sigma.push(self.process.sigma(t));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessConfig;

    #[test]
    fn the_rank_policy_fixes_the_stage_by_rank_and_needs_k_ranks() {
        let vp = ProcessConfig::default().build().unwrap();
        let b = [0.5, 2.0];
        let cfg = ObjectiveConfig { policy: StagePolicy::Rank, ..Default::default() };
        let mut r = Rng::stream(1, 1);
        for rank in 0..6 {
            let s = StageSampler::new(&vp, &cfg, &b).unwrap().for_rank(rank, 6).unwrap();
            let d = s.draw(16, &mut r).unwrap();
            assert!(d.stage.iter().all(|&j| j == (rank % 3) as i64), "{:?}", d.stage);
        }
        let e = StageSampler::new(&vp, &cfg, &b).unwrap().for_rank(0, 2).err().unwrap();
        assert!(e.to_string().contains("needs at least 3 ranks"), "{e}");
    }

    #[test]
    fn normal_cdf_values() {
        // Phi(0) = 0.5, Phi(1) = 0.8413447, Phi(-2) = 0.0227501 (standard tables).
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.0) - 0.841_344_7).abs() < 2e-7);
        assert!((normal_cdf(-2.0) - 0.022_750_1).abs() < 2e-7);
    }

    #[test]
    fn draws_stay_in_their_stage_and_weights_follow_the_policy() {
        let vp = ProcessConfig::default().build().unwrap();
        let b = [vp.sigma(0.442), vp.sigma(0.631)];
        let s = StageSampler::new(&vp, &ObjectiveConfig::default(), &b).unwrap();
        // mass = length for VP: (0.442 - 1e-5, 0.189, 0.369) / (1 - 1e-5)
        assert!((s.weights[1] - 0.189 / (1.0 - 1e-5)).abs() < 1e-9);
        let mut r = Rng::new(1);
        let d = s.draw(2000, &mut r).unwrap();
        for i in 0..2000 {
            let st = d.stage[i] as usize;
            assert_eq!(crate::cluster::stage_of_sigma(d.sigma[i], &b), st);
        }
        let single =
            ObjectiveConfig { policy: StagePolicy::Single, weights: StageWeights::Uniform, ..Default::default() };
        let s = StageSampler::new(&vp, &single, &b).unwrap();
        let d = s.draw(64, &mut r).unwrap();
        assert!(d.stage.iter().all(|&x| x == d.stage[0]));
        // EDM: mass weights from the log-normal; every draw in its stage.
        let edm = ProcessConfig::from_name("edm").unwrap().build().unwrap();
        let s = StageSampler::new(&edm, &ObjectiveConfig::default(), &[2.5103, 7.6577]).unwrap();
        // P(ln s > ln 7.6577) = 1 - Phi((2.0357 + 1.2)/1.2) = 1 - Phi(2.6964) = 0.0035
        assert!((s.weights[2] - 0.0035).abs() < 2e-4, "{:?}", s.weights);
        let d = s.draw(500, &mut r).unwrap();
        for i in 0..500 {
            assert_eq!(crate::cluster::stage_of_sigma(d.sigma[i], &[2.5103, 7.6577]), d.stage[i] as usize);
        }
    }

    #[test]
    fn a_stage_outside_the_range_is_an_error() {
        let ddpm = ProcessConfig::from_name("ddpm-linear").unwrap().build().unwrap();
        // sigma of the last DDPM step is ~157; a cut at 1000 leaves the top stage empty.
        assert!(StageSampler::new(&ddpm, &ObjectiveConfig::default(), &[1.0, 1000.0]).is_err());
        let vp = ProcessConfig::default().build().unwrap();
        assert!(StageSampler::new(&vp, &ObjectiveConfig::default(), &[2.0, 1.0]).is_err());
    }
}

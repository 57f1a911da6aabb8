//! Discrete DDPM chains (Ho et al. 2020) and their continuous-time view.
//!
//! A chain of N betas gives alphabar_n = prod_{k<=n} (1 - beta_k), n = 0..N-1. As in DPM-Solver's
//! discrete wrapper (Lu et al. 2022, `NoiseScheduleVP('discrete')`), step n sits at t_n = (n+1)/N
//! and log s_t = log sqrt(alphabar) is interpolated piecewise linearly in t (extrapolated linearly
//! outside [1/N, 1]).
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

pub fn default_steps() -> usize {
    1000
}

/// How the betas are laid out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BetaSchedule {
    /// betas = linspace(beta_start, beta_end, N). DDPM: 1e-4 .. 0.02.
    Linear { beta_start: f64, beta_end: f64 },
    /// betas = linspace(sqrt(beta_start), sqrt(beta_end), N)^2. The paper's LDM: 0.0015 .. 0.0195
    /// (Stable Diffusion uses 0.00085 .. 0.012).
    ScaledLinear { beta_start: f64, beta_end: f64 },
    /// Nichol & Dhariwal 2021: alphabar(u) = f(u)/f(0), f(u) = cos^2((u + s)/(1 + s) pi/2),
    /// beta_n = min(1 - alphabar((n+1)/N) / alphabar(n/N), max_beta); s = 0.008, max_beta = 0.999.
    Cosine { s: f64, max_beta: f64 },
}

impl Default for BetaSchedule {
    fn default() -> Self {
        BetaSchedule::Linear { beta_start: 1e-4, beta_end: 0.02 }
    }
}

impl BetaSchedule {
    pub fn scaled_linear_ldm() -> Self {
        BetaSchedule::ScaledLinear { beta_start: 0.0015, beta_end: 0.0195 }
    }
    pub fn cosine() -> Self {
        BetaSchedule::Cosine { s: 0.008, max_beta: 0.999 }
    }

    /// The N betas, in f64 (no integer division anywhere: every index is converted first).
    pub fn betas(&self, n: usize) -> Result<Vec<f64>> {
        if n < 2 {
            bail!("a discrete schedule needs at least 2 steps (got {n})");
        }
        let lin = |a: f64, b: f64, i: usize| a + (b - a) * (i as f64) / ((n - 1) as f64);
        let betas: Vec<f64> = match *self {
            BetaSchedule::Linear { beta_start, beta_end } => (0..n).map(|i| lin(beta_start, beta_end, i)).collect(),
            BetaSchedule::ScaledLinear { beta_start, beta_end } => {
                if beta_start < 0.0 || beta_end < 0.0 {
                    bail!("scaled-linear betas must be >= 0");
                }
                (0..n).map(|i| lin(beta_start.sqrt(), beta_end.sqrt(), i).powi(2)).collect()
            }
            BetaSchedule::Cosine { s, max_beta } => {
                if !(s >= 0.0 && max_beta > 0.0 && max_beta < 1.0) {
                    bail!("cosine schedule needs s >= 0 and 0 < max_beta < 1");
                }
                let f = |u: f64| ((u + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..n)
                    .map(|i| {
                        let a0 = f(i as f64 / n as f64);
                        let a1 = f((i + 1) as f64 / n as f64);
                        (1.0 - a1 / a0).min(max_beta)
                    })
                    .collect()
            }
        };
        if let Some(b) = betas.iter().find(|b| !(**b > 0.0 && **b < 1.0)) {
            bail!("schedule {self:?} gives beta {b} outside (0, 1)");
        }
        Ok(betas)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteVp {
    /// log sqrt(alphabar_n), n = 0..N-1 (strictly decreasing).
    log_scales: Vec<f64>,
}

impl DiscreteVp {
    pub fn new(schedule: &BetaSchedule, steps: usize) -> Result<Self> {
        let betas = schedule.betas(steps)?;
        let mut acc = 0.0;
        let log_scales = betas
            .iter()
            .map(|b| {
                acc += (-b).ln_1p();
                0.5 * acc
            })
            .collect();
        Ok(DiscreteVp { log_scales })
    }

    pub fn steps(&self) -> usize {
        self.log_scales.len()
    }

    /// alphabar_n of step n.
    pub fn alphabar(&self, n: usize) -> f64 {
        (2.0 * self.log_scales[n]).exp()
    }

    fn t_of(&self, i: usize) -> f64 {
        (i + 1) as f64 / self.steps() as f64
    }

    /// Piecewise-linear log s_t through (t_n, log_scale_n), linear extrapolation outside.
    pub fn log_scale(&self, t: f64) -> f64 {
        let n = self.steps();
        let x = t * n as f64 - 1.0; // fractional step index
        let i = (x.floor().max(0.0) as usize).min(n - 2);
        let w = x - i as f64;
        self.log_scales[i] * (1.0 - w) + self.log_scales[i + 1] * w
    }

    /// Inverse of `log_scale` (interpolating t against log s, which is monotone).
    pub fn t_from_log_scale(&self, log_s: f64) -> f64 {
        let ls = &self.log_scales;
        let n = ls.len();
        // ls is decreasing: find i with ls[i] >= log_s >= ls[i+1], clamped to the end segments.
        let i = match ls.iter().position(|&v| v < log_s) {
            None => n - 2,
            Some(0) => 0,
            Some(k) => (k - 1).min(n - 2),
        };
        let w = (log_s - ls[i]) / (ls[i + 1] - ls[i]);
        self.t_of(i) * (1.0 - w) + self.t_of(i + 1) * w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_betas_and_alphabar_closed_form() {
        // DDPM linear: beta_n = 1e-4 + n (0.02 - 1e-4)/999; alphabar_n = prod (1 - beta_k).
        // Reference values from an independent Python loop (cumulative product of 1 - beta):
        // n = 0, 499, 999 -> 0.9999, 0.0785872, 4.03583e-05.
        let d = DiscreteVp::new(&BetaSchedule::default(), 1000).unwrap();
        let prod = |n: usize| (0..=n).map(|k| 1.0 - (1e-4 + k as f64 * (0.02 - 1e-4) / 999.0)).product::<f64>();
        for n in [0usize, 1, 10, 499, 998, 999] {
            assert!((d.alphabar(n) - prod(n)).abs() < 1e-12 * prod(n).max(1e-3), "n {n}");
        }
        assert!((d.alphabar(0) - 0.9999).abs() < 1e-12);
        assert!((d.alphabar(499) - 0.0785872).abs() < 1e-7, "{}", d.alphabar(499));
        assert!((d.alphabar(999) - 4.03583e-5).abs() < 1e-10, "{}", d.alphabar(999));
    }

    #[test]
    fn scaled_linear_endpoints() {
        let b = BetaSchedule::scaled_linear_ldm().betas(1000).unwrap();
        assert!((b[0] - 0.0015).abs() < 1e-15);
        assert!((b[999] - 0.0195).abs() < 1e-15);
        // midpoint: ((sqrt(.0015) + sqrt(.0195))/2)^2 is reached at i = 499.5; check i = 499 exactly.
        let m = (0.0015f64.sqrt() + (0.0195f64.sqrt() - 0.0015f64.sqrt()) * 499.0 / 999.0).powi(2);
        assert!((b[499] - m).abs() < 1e-15);
    }

    #[test]
    fn cosine_alphabar_is_the_closed_form_not_zeros() {
        // alphabar_n = f((n+1)/N)/f(0) wherever no beta was clipped (Nichol & Dhariwal eq. 17).
        let d = DiscreteVp::new(&BetaSchedule::cosine(), 1000).unwrap();
        let f = |u: f64| ((u + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
        for n in [0usize, 1, 100, 250, 500, 750, 900, 990] {
            let want = f((n + 1) as f64 / 1000.0) / f(0.0);
            assert!((d.alphabar(n) - want).abs() < 1e-12, "n {n}: {} vs {want}", d.alphabar(n));
        }
        // Python value: n = 499 -> u = 0.5: cos^2(0.508/1.008 pi/2)/cos^2(0.008/1.008 pi/2) = 0.4938436.
        assert!((d.alphabar(499) - 0.4938436).abs() < 1e-7, "{}", d.alphabar(499));
        // The last beta is clipped at 0.999, so alphabar stays positive.
        assert!(d.alphabar(999) > 0.0);
    }

    #[test]
    fn continuous_view_hits_the_steps() {
        let d = DiscreteVp::new(&BetaSchedule::default(), 1000).unwrap();
        for n in [0usize, 5, 441, 630, 999] {
            let t = (n + 1) as f64 / 1000.0;
            assert!((d.log_scale(t) - 0.5 * d.alphabar(n).ln()).abs() < 1e-12);
            assert!((d.t_from_log_scale(d.log_scale(t)) - t).abs() < 1e-12);
        }
    }
}

//! Continuous VP-SDE with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021).
//!
//! log s_t = -t^2 (beta_max - beta_min)/4 - t beta_min/2 (docs/METHOD.md §1).
use anyhow::{bail, Result};

pub fn default_beta_min() -> f64 {
    0.1
}
pub fn default_beta_max() -> f64 {
    20.0
}

#[derive(Clone, Debug, PartialEq)]
pub struct VpLinear {
    pub beta_min: f64,
    pub beta_max: f64,
}

impl VpLinear {
    pub fn new(beta_min: f64, beta_max: f64) -> Result<Self> {
        if !(beta_min > 0.0 && beta_max > beta_min && beta_max.is_finite()) {
            bail!("VP process needs 0 < beta_min < beta_max (got beta_min {beta_min}, beta_max {beta_max})");
        }
        Ok(VpLinear { beta_min, beta_max })
    }

    pub fn log_scale(&self, t: f64) -> f64 {
        -t * t * (self.beta_max - self.beta_min) / 4.0 - t * self.beta_min / 2.0
    }

    /// Inverse of `log_scale`: solve (d/4) t^2 + (b0/2) t + log_s = 0 for t >= 0, in the
    /// cancellation-free form t = 2L / (b0 + sqrt(b0^2 + 2 d L)) with L = -2 log_s.
    pub fn t_from_log_scale(&self, log_s: f64) -> f64 {
        let l = -2.0 * log_s;
        let d = self.beta_max - self.beta_min;
        2.0 * l / (self.beta_min + (self.beta_min * self.beta_min + 2.0 * d * l).sqrt())
    }
}

//! EDM / variance-exploding process (Karras et al. 2022): x = y + sigma n, s_t = 1, t = sigma.
use anyhow::{bail, Result};

pub fn default_sigma_min() -> f64 {
    0.002
}
pub fn default_sigma_max() -> f64 {
    80.0
}

#[derive(Clone, Debug, PartialEq)]
pub struct Edm {
    pub sigma_min: f64,
    pub sigma_max: f64,
}

impl Edm {
    pub fn new(sigma_min: f64, sigma_max: f64) -> Result<Self> {
        if !(sigma_min > 0.0 && sigma_max > sigma_min && sigma_max.is_finite()) {
            bail!("EDM process needs 0 < sigma_min < sigma_max (got {sigma_min}, {sigma_max})");
        }
        Ok(Edm { sigma_min, sigma_max })
    }
}

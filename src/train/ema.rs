//! Exponential moving average of the weights: ema <- d ema + (1 - d) p after every step.
//!
//! Set either `decay` (per step; the paper's CIFAR-10 recipe: 0.9999) or `half_life_images`
//! (EDM: 0.5 M images), which gives d = 0.5^(batch / half_life_images).
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Without an `[ema]` table the default applies (decay 0.9999); inside one, the key that is not given
/// is unset, so `half_life_images` alone is a complete choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    #[serde(default)]
    pub decay: Option<f64>,
    #[serde(default)]
    pub half_life_images: Option<f64>,
    /// EDM's EMA ramp-up (with `half_life_images`; EDM: 0.05): the half-life in force at a step is
    /// min(half_life_images, rampup_ratio x images seen before the step), so the average
    /// starts short and lengthens as training goes on (the first step copies the weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rampup_ratio: Option<f64>,
}

impl Default for EmaConfig {
    fn default() -> Self {
        EmaConfig { decay: Some(0.9999), half_life_images: None, rampup_ratio: None }
    }
}

impl EmaConfig {
    pub fn validate(&self) -> Result<()> {
        match (self.decay, self.half_life_images) {
            (Some(d), None) => ensure!((0.0..1.0).contains(&d), "ema.decay must be in [0, 1), got {d}"),
            (None, Some(h)) => ensure!(h > 0.0, "ema.half_life_images must be > 0, got {h}"),
            _ => anyhow::bail!("set exactly one of ema.decay and ema.half_life_images"),
        }
        if let Some(r) = self.rampup_ratio {
            ensure!(
                self.half_life_images.is_some(),
                "ema.rampup_ratio needs ema.half_life_images (EDM's ramp-up shortens the half-life)"
            );
            ensure!(r > 0.0 && r.is_finite(), "ema.rampup_ratio must be > 0, got {r}");
        }
        Ok(())
    }

    /// Per-step decay at (1-based) step `step` with `batch` images per step: EDM's
    /// beta = 0.5^(batch / max(h, 1e-8)) with h = min(half_life_images, rampup_ratio x (step - 1) x batch)
    /// when ramping up; otherwise [`EmaConfig::decay_for`].
    pub fn decay_at(&self, step: u64, batch: usize) -> f64 {
        match (self.half_life_images, self.rampup_ratio) {
            (Some(h), Some(r)) => {
                let seen = step.saturating_sub(1) as f64 * batch as f64;
                0.5f64.powf(batch as f64 / h.min(r * seen).max(1e-8))
            }
            _ => self.decay_for(batch),
        }
    }

    /// Per-step decay for a batch size.
    pub fn decay_for(&self, batch: usize) -> f64 {
        match (self.decay, self.half_life_images) {
            (Some(d), _) => d,
            (None, Some(h)) => 0.5f64.powf(batch as f64 / h),
            _ => 0.0,
        }
    }
}

/// ema <- d ema + (1 - d) p for each pair.
pub fn update(ema: &[(String, Tensor)], params: &[(String, Tensor)], decay: f64) {
    // ema <- lerp(ema, p, 1 - d) = d ema + (1 - d) p (up to rounding): one pass per tensor, 3 memory
    // passes and no temporary (the EMA covers every stored parameter, so for a multi-stage net it
    // costs ~2.2x the unified net's whatever the FLOPs).
    let _g = tch::no_grad_guard();
    for ((_, e), (_, p)) in ema.iter().zip(params) {
        let _ = e.shallow_clone().lerp_(&p.detach(), 1.0 - decay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_is_the_exponential_moving_average() {
        // d e + (1 - d) p computed in f64 from the same f32 inputs is the reference; lerp rounds
        // once per element in f32 (|error| <= 1 ulp of values of order 1, i.e. ~1.2e-7).
        let e = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]);
        let p = Tensor::from_slice(&[0.0f32, 2.0, 0.25, -3.0]);
        let want: Vec<f64> =
            [(1.0, 0.0), (-2.0, 2.0), (0.5, 0.25), (3.0, -3.0)].iter().map(|(e, p)| 0.999 * e + 0.001 * p).collect();
        update(&[("w".into(), e.shallow_clone())], &[("w".into(), p)], 0.999);
        let got: Vec<f64> = Vec::<f32>::try_from(&e).unwrap().into_iter().map(f64::from).collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 4e-7, "{g} vs {w}");
        }
    }

    #[test]
    fn either_key_alone_is_a_valid_table() {
        let h: EmaConfig = toml::from_str("half_life_images = 500000.0").unwrap();
        assert_eq!(h, EmaConfig { decay: None, half_life_images: Some(5e5), rampup_ratio: None });
        h.validate().unwrap();
        let d: EmaConfig = toml::from_str("decay = 0.999").unwrap();
        assert_eq!(d, EmaConfig { decay: Some(0.999), half_life_images: None, rampup_ratio: None });
        d.validate().unwrap();
        let both: EmaConfig = toml::from_str("decay = 0.999\nhalf_life_images = 1.0").unwrap();
        assert!(both.validate().unwrap_err().to_string().contains("exactly one"));
    }

    #[test]
    fn half_life_halves_after_the_given_images() {
        let c = EmaConfig { decay: None, half_life_images: Some(1000.0), rampup_ratio: None };
        // 10 steps of 100 images = one half-life.
        assert!((c.decay_for(100).powi(10) - 0.5).abs() < 1e-12);
        let e = vec![("w".to_string(), Tensor::from_slice(&[0.0f64]))];
        let p = vec![("w".to_string(), Tensor::from_slice(&[1.0f64]))];
        for _ in 0..10 {
            update(&e, &p, c.decay_for(100));
        }
        assert!((e[0].1.double_value(&[0]) - 0.5).abs() < 1e-12);
    }
}

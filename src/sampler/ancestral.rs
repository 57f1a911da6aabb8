//! DDPM ancestral sampling (Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models",
//! Algorithm 2) and DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12
//! and 16), on an arbitrary decreasing sigma grid.
//!
//! In the scaled space, one step from sigma_s to sigma_t < sigma_s with x0 = D(x~_s, sigma_s) and
//! eps = (x~_s - x0) / sigma_s is (the VP formulas divided by alpha_t; exact algebra):
//!
//! - DDIM: c^2 = eta^2 sigma_t^2 (sigma_s^2 - sigma_t^2) / sigma_s^2,
//!   x~_t = x0 + sqrt(sigma_t^2 - c^2) eps + c z. eta = 0 is DPM-Solver-1 / Euler in sigma.
//! - DDPM: posterior mean x0 + (sigma_t^2 / sigma_s) eps (= DDIM eta = 1 mean) plus noise of
//!   variance c^2 = sigma_t^2 (sigma_s^2 - sigma_t^2) / sigma_s^2 (posterior, beta-tilde) or
//!   (sigma_s^2 - sigma_t^2) (alpha_s / alpha_t)^2 (forward beta: beta / alpha_t^2 in VP). The last
//!   step adds no noise (Ho et al. output the mean at t = 1).
use super::{DdpmVariance, Evaluator};
use crate::process::Process;
use crate::rng::SampleStreams;
use anyhow::Result;
use tch::Tensor;

/// DDIM with stochasticity `eta` in [0, 1] over the sigma grid `sig` (steps = sig.len() - 1).
pub fn ddim(ev: &mut Evaluator, mut x: Tensor, sig: &[f64], eta: f64, streams: &mut SampleStreams) -> Result<Tensor> {
    let steps = sig.len() - 1;
    for i in 0..steps {
        let (s, t) = (sig[i], sig[i + 1]);
        let x0 = ev.denoise(&x, s)?;
        let eps = (&x - &x0) / s;
        let r2 = (t / s).powi(2);
        // sigma_t^2 - c^2 = sigma_t^2 (1 - eta^2 (1 - r^2)).
        let keep = t * (1.0 - eta * eta * (1.0 - r2)).max(0.0).sqrt();
        let c = eta * t * (1.0 - r2).sqrt();
        x = x0 + eps * keep;
        if c > 0.0 {
            x += ev.noise(streams) * c;
        }
        ev.check(&x, i, steps, s, t)?;
    }
    Ok(x)
}

/// DDPM ancestral sampling over the sigma grid `sig`.
pub fn ddpm(
    ev: &mut Evaluator,
    mut x: Tensor,
    sig: &[f64],
    variance: DdpmVariance,
    process: &Process,
    streams: &mut SampleStreams,
) -> Result<Tensor> {
    let steps = sig.len() - 1;
    for i in 0..steps {
        let (s, t) = (sig[i], sig[i + 1]);
        let x0 = ev.denoise(&x, s)?;
        let eps = (&x - &x0) / s;
        x = x0 + eps * (t * t / s);
        if i + 1 < steps {
            let c2 = match variance {
                DdpmVariance::Posterior => t * t * (1.0 - (t / s).powi(2)),
                DdpmVariance::Forward => {
                    let a = process.scale_at_sigma(s) / process.scale_at_sigma(t);
                    (s * s - t * t) * a * a
                }
            };
            x += ev.noise(streams) * c2.max(0.0).sqrt();
        }
        ev.check(&x, i, steps, s, t)?;
    }
    Ok(x)
}

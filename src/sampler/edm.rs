//! EDM's Euler and Heun samplers (Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space
//! of Diffusion-Based Generative Models", Algorithm 2; Algorithm 1 when S_churn = 0).
//!
//! On sigmas sigma_0 > ... > sigma_{n-1} > sigma_n = 0, step i: gamma_i = min(S_churn / n, sqrt 2 - 1)
//! if S_tmin <= sigma_i <= S_tmax (else 0); sigma^ = (1 + gamma_i) sigma_i;
//! x^ = x + sqrt(sigma^2 - sigma_i^2) S_noise z; d = (x^ - D(x^, sigma^)) / sigma^;
//! x_{i+1} = x^ + (sigma_{i+1} - sigma^) d; Heun then corrects with
//! d' = (x_{i+1} - D(x_{i+1}, sigma_{i+1})) / sigma_{i+1} unless sigma_{i+1} = 0:
//! x_{i+1} = x^ + (sigma_{i+1} - sigma^) (d + d') / 2. Heun costs 2n - 1 NFE, Euler n.
//! Noise is drawn only on churned steps (gamma > 0); EDM's code draws it every step and discards
//! it, which changes nothing but the stream position.
use super::Evaluator;
use crate::rng::SampleStreams;
use anyhow::Result;
use tch::Tensor;

/// Churn options (EDM Algorithm 2).
#[derive(Clone, Copy, Debug)]
pub struct Churn {
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
}

/// Walk `sig` (n sigmas then 0). Returns x~ at sigma = 0.
pub fn euler_heun(
    ev: &mut Evaluator,
    mut x: Tensor,
    sig: &[f64],
    heun: bool,
    churn: Churn,
    streams: &mut SampleStreams,
) -> Result<Tensor> {
    let n = sig.len() - 1;
    for i in 0..n {
        let (cur, next) = (sig[i], sig[i + 1]);
        let gamma = if churn.s_churn > 0.0 && churn.s_tmin <= cur && cur <= churn.s_tmax {
            (churn.s_churn / n as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        };
        let hat = cur + gamma * cur;
        let x_hat =
            if gamma > 0.0 { &x + ev.noise(streams) * ((hat * hat - cur * cur).sqrt() * churn.s_noise) } else { x };
        let d = (&x_hat - ev.denoise(&x_hat, hat)?) / hat;
        let mut x_next = &x_hat + &d * (next - hat);
        if heun && next > 0.0 {
            let d2 = (&x_next - ev.denoise(&x_next, next)?) / next;
            x_next = &x_hat + (d + d2) * (0.5 * (next - hat));
        }
        x = x_next;
        ev.check(&x, i, n, hat, next)?;
    }
    Ok(x)
}

//! The exact denoiser of Gaussian data N(mu, diag(var)): an analytic oracle for tests.
//!
//! With x~ = x0 + sigma eps, x0 ~ N(mu, v): E[x0 | x~] = mu + v/(v + sigma^2) (x~ - mu), and the
//! probability-flow ODE dx~/dsigma = (x~ - D(x~, sigma))/sigma has the closed-form solution
//! x~(sigma) = mu + (x~(sigma_T) - mu) sqrt((v + sigma^2)/(v + sigma_T^2)).
use super::{per_sample, Denoiser};
use anyhow::{ensure, Result};
use tch::Tensor;

pub struct GaussianDenoiser {
    /// Per-dimension mean, shaped like one item.
    pub mean: Tensor,
    /// Per-dimension variance (> 0), shaped like one item.
    pub var: Tensor,
}

impl GaussianDenoiser {
    pub fn new(mean: Tensor, var: Tensor) -> Result<Self> {
        ensure!(mean.size() == var.size(), "Gaussian mean and variance shapes differ");
        Ok(GaussianDenoiser { mean, var })
    }

    /// Exact probability-flow ODE solution from `x` at `sigma_from` to `sigma_to`.
    pub fn ode_solution(&self, x: &Tensor, sigma_from: f64, sigma_to: f64) -> Tensor {
        let ratio = ((&self.var + sigma_to * sigma_to) / (&self.var + sigma_from * sigma_from)).sqrt();
        &self.mean + (x - &self.mean) * ratio
    }
}

impl Denoiser for GaussianDenoiser {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Result<Tensor> {
        let s = per_sample(sigma, x.dim());
        let s2 = s.square();
        Ok(&self.mean + (x - &self.mean) * (&self.var / (&self.var + s2)))
    }
}

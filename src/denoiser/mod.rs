//! The denoiser abstraction every sampler runs on (k-diffusion's factorisation).
//!
//! A [`Denoiser`] maps a batch of scaled noisy samples `x~ = x0 + sigma eps` and a per-sample
//! noise-to-signal ratio `sigma` to the posterior-mean estimate of `x0`. Samplers see nothing else:
//! a trained network (bound to its [`crate::objective::Objective`]), the exact optimal
//! denoiser of a dataset, an analytic Gaussian, or a multi-stage model that routes each sample to
//! its stage's decoder all plug into every sampler unchanged.

pub mod gaussian;
pub mod optimal;

pub use gaussian::GaussianDenoiser;
pub use optimal::OptimalDenoiser;

use anyhow::Result;
use tch::Tensor;

pub trait Denoiser {
    /// `x`: `[B, ...]` scaled noisy samples; `sigma`: `[B]` noise-to-signal ratios (> 0), same
    /// dtype and device as `x`. Returns the x0 estimate, shaped like `x`.
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Result<Tensor>;
}

impl<D: Denoiser + ?Sized> Denoiser for &D {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Result<Tensor> {
        (**self).denoise(x, sigma)
    }
}

/// `sigma` `[B]` reshaped to `[B, 1, 1, ...]` to broadcast against a tensor of `ndim` dimensions.
pub fn per_sample(sigma: &Tensor, ndim: usize) -> Tensor {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1i64, ndim.saturating_sub(1)));
    sigma.reshape(shape.as_slice())
}

//! The two bottlenecks: a diagonal Gaussian posterior (KL) and a vector quantiser (VQ).
//!
//! - KL (LDM `DiagonalGaussianDistribution`): the moments `[B, 2E, h, w]` split into mean and
//!   log-variance along channels, the log-variance clamped to [-30, 20]; a sample is
//!   `mean + exp(logvar / 2) * n`; the KL divergence to N(0, I) of one image is
//!   `0.5 sum(mean^2 + exp(logvar) - 1 - logvar)` over its latent.
//! - VQ (taming `VectorQuantizer2` / diffusers `VectorQuantizer`): every latent vector (one per
//!   position, `E` channels) is replaced by its nearest codebook vector in Euclidean distance
//!   (ties to the lowest index); the gradient passes straight through (`z_q + z - sg(z)`, which
//!   is the codebook vector exactly in the forward pass).
//!   Losses: codebook `mean((z_q - sg z)^2)` and commitment `mean((sg z_q - z)^2)`, combined as
//!   `codebook + beta * commitment` (van den Oord et al. 2017, eq. 3; taming's `legacy = False`).
//!   taming's default `legacy = True` puts beta on the codebook term instead; see docs/LATENT.md.
use super::blocks::uniform_var;
use crate::rng::Rng;
use anyhow::{ensure, Result};
use tch::nn::Path;
use tch::{Kind, Tensor};

/// KL posterior moments: `[B, 2E, h, w]` -> mean and clamped log-variance, each `[B, E, h, w]`.
#[derive(Debug)]
pub struct Gaussian {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl Gaussian {
    /// Split `moments` `[B, 2E, h, w]` (mean first, as LDM and diffusers).
    pub fn new(moments: &Tensor) -> Gaussian {
        let parts = moments.chunk(2, 1);
        Gaussian { mean: parts[0].shallow_clone(), logvar: parts[1].clamp(-30.0, 20.0) }
    }

    pub fn std(&self) -> Tensor {
        (&self.logvar * 0.5).exp()
    }

    /// `mean + std * noise` (`noise` standard normal, the shape of the mean).
    pub fn sample(&self, noise: &Tensor) -> Tensor {
        &self.mean + self.std() * noise
    }

    /// Per image: `0.5 sum(mean^2 + var - 1 - logvar)` over `[E, h, w]` -> `[B]`.
    pub fn kl(&self) -> Tensor {
        let t = self.mean.square() + self.logvar.exp() - 1.0 - &self.logvar;
        t.sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float) * 0.5
    }
}

/// What [`VectorQuantizer::quantize`] returns.
#[derive(Debug)]
pub struct Quantized {
    /// `z_q + z - sg(z)`: exactly the codebook vectors in the forward pass, the identity backward.
    pub z_q: Tensor,
    /// `[B, h, w]` int64 codebook indices.
    pub codes: Tensor,
    /// `mean((z_q - sg z)^2)`: moves the codebook.
    pub codebook_loss: Tensor,
    /// `mean((sg z_q - z)^2)`: commits the encoder.
    pub commitment_loss: Tensor,
}

/// The codebook `quantize.embedding.weight [n_embed, E]` (initialised U(-1/n, 1/n) as taming).
#[derive(Debug)]
pub struct VectorQuantizer {
    pub embedding: Tensor,
}

impl VectorQuantizer {
    pub fn new(p: &Path, n_embed: usize, dim: usize, rng: &mut Rng) -> Self {
        let b = 1.0 / n_embed as f64;
        VectorQuantizer { embedding: uniform_var(&(p / "embedding"), "weight", &[n_embed as i64, dim as i64], b, rng) }
    }

    /// Nearest codebook index of every position of `z` `[B, E, h, w]` -> `[B, h, w]` int64:
    /// `argmin_j |z|^2 - 2 z.e_j + |e_j|^2` (the formula of taming and of `torch.cdist`'s
    /// matrix-product path, which diffusers uses).
    pub fn codes(&self, z: &Tensor) -> Result<Tensor> {
        let s = z.size();
        let e = self.embedding.size();
        ensure!(s.len() == 4 && s[1] == e[1], "the VQ latent must be [B, {}, h, w], got {s:?}", e[1]);
        let flat = z.permute([0, 2, 3, 1]).reshape([-1, e[1]]);
        let d = flat.square().sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
            + self.embedding.square().sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            - flat.matmul(&self.embedding.tr()) * 2.0;
        Ok(d.argmin(1, false).reshape([s[0], s[2], s[3]]))
    }

    /// The codebook vectors of `codes` `[B, h, w]` -> `[B, E, h, w]`.
    pub fn lookup(&self, codes: &Tensor) -> Result<Tensor> {
        let n = self.embedding.size()[0];
        ensure!(codes.kind() == Kind::Int64, "codes must be int64, got {:?}", codes.kind());
        if codes.numel() > 0 {
            let (lo, hi) = (codes.min().int64_value(&[]), codes.max().int64_value(&[]));
            ensure!(lo >= 0 && hi < n, "codes span [{lo}, {hi}] but the codebook has {n} entries");
        }
        Ok(self
            .embedding
            .index_select(0, &codes.reshape([-1]))
            .reshape([codes.size()[0], codes.size()[1], codes.size()[2], -1])
            .permute([0, 3, 1, 2]))
    }

    /// Snap `z` `[B, E, h, w]` to the codebook, with the straight-through gradient and both losses.
    pub fn quantize(&self, z: &Tensor) -> Result<Quantized> {
        let codes = self.codes(z)?;
        let zq = self.lookup(&codes)?;
        let codebook_loss = (&zq - z.detach()).square().mean(Kind::Float);
        let commitment_loss = (zq.detach() - z).square().mean(Kind::Float);
        // zq + (z - sg z): exactly the codebook vector forward (x - x = 0), the identity backward.
        let z_q = &zq + (z - z.detach());
        Ok(Quantized { z_q, codes, codebook_loss, commitment_loss })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    #[test]
    fn kl_of_a_standard_normal_is_zero_and_of_a_shifted_one_is_half_the_square() {
        // KL(N(m, 1) || N(0, 1)) = m^2 / 2 per element (closed form).
        let mean = Tensor::full([1, 2, 2, 2], 0.5, (Kind::Float, Device::Cpu));
        let moments = Tensor::cat(&[mean.shallow_clone(), mean.zeros_like()], 1);
        let g = Gaussian::new(&moments);
        assert!((g.kl().double_value(&[0]) - 8.0 * 0.125).abs() < 1e-6);
        let g = Gaussian::new(&Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu)));
        assert_eq!(g.kl().double_value(&[0]), 0.0);
        // logvar is clamped to [-30, 20] before use.
        let g = Gaussian::new(&Tensor::cat(&[mean.zeros_like(), mean.full_like(99.0)], 1));
        assert_eq!(g.logvar.max().double_value(&[]), 20.0);
    }

    #[test]
    fn nearest_code_straight_through_and_losses() {
        let vs = VarStore::new(Device::Cpu);
        let vq = VectorQuantizer::new(&vs.root(), 3, 2, &mut Rng::new(0));
        tch::no_grad(|| {
            vq.embedding.shallow_clone().copy_(&Tensor::from_slice(&[0.0f32, 0.0, 1.0, 0.0, 0.0, 1.0]).reshape([3, 2]))
        });
        // Two positions: (0.9, 0.2) -> code 1, (0.1, 0.7) -> code 2.
        let z = Tensor::from_slice(&[0.9f32, 0.1, 0.2, 0.7]).reshape([1, 2, 1, 2]).set_requires_grad(true);
        let q = vq.quantize(&z).unwrap();
        assert_eq!(Vec::<i64>::try_from(q.codes.reshape([-1])).unwrap(), vec![1, 2]);
        assert_eq!(Vec::<f32>::try_from(q.z_q.detach().reshape([-1])).unwrap(), vec![1.0, 0.0, 0.0, 1.0]);
        // (0.01 + 0.04 + 0.01 + 0.09) / 4 for both losses.
        assert!((q.commitment_loss.double_value(&[]) - 0.0375).abs() < 1e-7);
        assert!((q.codebook_loss.double_value(&[]) - 0.0375).abs() < 1e-7);
        // Straight through: d(sum z_q)/dz = 1.
        let g = Tensor::run_backward(&[q.z_q.sum(Kind::Float)], &[&z], false, false);
        assert_eq!(Vec::<f32>::try_from(g[0].reshape([-1])).unwrap(), vec![1.0; 4]);
        let bad = Tensor::from_slice(&[3i64]).reshape([1, 1, 1]);
        assert!(vq.lookup(&bad).unwrap_err().to_string().contains("3 entries"));
    }
}

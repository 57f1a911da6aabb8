//! What an autoencoder trains on: reconstruction (L1, optional L2), the bottleneck's regulariser
//! (KL or the VQ losses), and an optional PatchGAN discriminator with the hinge loss and taming's
//! adaptive weight (`taming/modules/losses/vqperceptual.py`, `ldm/modules/losses/contperceptual.py`).
//!
//! Reductions (per-pixel means, taming's VQ convention): `rec = l1 mean|x - x^| + l2 mean (x - x^)^2`.
//! LDM's KL loss sums over pixels and latents per image; msdiff divides that whole objective by
//! the pixels per image `D = C H W`, so `kl_weight` means what it means in LDM's configs:
//! `kl = kl_weight * mean_b(KL_b) / D`. VQ: `codebook_weight * (codebook + beta * commitment)`
//! (`legacy_vq_loss`: `commitment + beta * codebook`, taming's default; optionally restarting dead
//! codes, `restart_dead_codes`). LPIPS (the perceptual
//! term of both official losses) needs pretrained VGG weights that are not available offline, and
//! LDM's learned output log-variance is not used (it is constant 0 there at init and only rescales
//! the reconstruction term): see docs/LATENT.md.
use super::blocks::var_from;
use crate::rng::Rng;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// `[loss]`: every term's weight and the discriminator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Weight of the per-pixel mean absolute error. Default 1.
    pub l1: f64,
    /// Weight of the per-pixel mean squared error. Default 0.
    pub l2: f64,
    /// KL: weight of the KL term in LDM's units (LDM's kl-f4 / kl-f8: 1e-6). Default 1e-6.
    pub kl_weight: f64,
    /// VQ: weight of the codebook + commitment terms (taming: 1). Default 1.
    pub codebook_weight: f64,
    /// VQ: commitment weight beta. Default 0.25.
    pub beta: f64,
    /// VQ: taming's `legacy = True` form `commitment + beta * codebook`. Default false.
    pub legacy_vq_loss: bool,
    /// VQ: re-initialise a codebook entry that no latent of the last this many steps chose to a
    /// random encoder output of the current batch (0 = never, taming's behaviour). Small codebooks
    /// initialised near zero otherwise collapse onto a few entries. Default 0.
    pub restart_dead_codes: u64,
    /// Weight of the generator's hinge loss (taming's `disc_weight`; LDM's kl-f8 0.5, vq-f4 0.75);
    /// 0 = no discriminator. Default 0.
    pub disc_weight: f64,
    /// Step from which the discriminator trains and the generator loss applies (taming's
    /// `disc_start`). Default 0.
    pub disc_start: u64,
    /// PatchGAN depth (strided 4x4 convs). Default 3.
    pub disc_layers: usize,
    /// PatchGAN base width. Default 64.
    pub disc_channels: usize,
    /// Scale the generator loss by taming's adaptive weight |grad rec| / |grad gan| at the
    /// decoder's last layer (clamped to [0, 1e4]); otherwise by `disc_weight` alone. Default true.
    pub adaptive_weight: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            l1: 1.0,
            l2: 0.0,
            kl_weight: 1e-6,
            codebook_weight: 1.0,
            beta: 0.25,
            legacy_vq_loss: false,
            restart_dead_codes: 0,
            disc_weight: 0.0,
            disc_start: 0,
            disc_layers: 3,
            disc_channels: 64,
            adaptive_weight: true,
        }
    }
}

impl LossConfig {
    pub fn validate(&self) -> Result<()> {
        for (k, v) in [
            ("l1", self.l1),
            ("l2", self.l2),
            ("kl_weight", self.kl_weight),
            ("codebook_weight", self.codebook_weight),
            ("beta", self.beta),
            ("disc_weight", self.disc_weight),
        ] {
            ensure!(v.is_finite() && v >= 0.0, "loss.{k} must be >= 0, got {v}");
        }
        ensure!(self.l1 > 0.0 || self.l2 > 0.0, "loss.l1 or loss.l2 must be > 0 (something must reconstruct)");
        ensure!((1..=6).contains(&self.disc_layers), "loss.disc_layers must be 1..=6, got {}", self.disc_layers);
        ensure!(self.disc_channels > 0, "loss.disc_channels must be > 0");
        Ok(())
    }

    /// Whether a discriminator exists at all.
    pub fn has_disc(&self) -> bool {
        self.disc_weight > 0.0
    }

    /// Whether the discriminator is on at (1-based) step `step`.
    pub fn disc_on(&self, step: u64) -> bool {
        self.has_disc() && step > self.disc_start
    }

    /// `l1 mean|x - y| + l2 mean (x - y)^2` (a scalar).
    pub fn reconstruction(&self, x: &Tensor, y: &Tensor) -> Tensor {
        let d = y - x;
        let mut r = d.abs().mean(Kind::Float) * self.l1;
        if self.l2 > 0.0 {
            r = &r + d.square().mean(Kind::Float) * self.l2;
        }
        r
    }
}

/// Taming's hinge loss for the discriminator: `(mean relu(1 - real) + mean relu(1 + fake)) / 2`.
pub fn hinge_d_loss(real: &Tensor, fake: &Tensor) -> Tensor {
    let r: Tensor = (real * -1.0 + 1.0).relu().mean(Kind::Float);
    let f: Tensor = (fake + 1.0).relu().mean(Kind::Float);
    (r + f) * 0.5
}

/// Taming's adaptive weight `|g_rec| / (|g_gan| + 1e-4)` clamped to [0, 1e4], both gradients at
/// `last_layer` (graphs kept for the full backward pass).
pub fn adaptive_weight(rec: &Tensor, gan: &Tensor, last_layer: &Tensor) -> Result<f64> {
    let g1 = Tensor::f_run_backward(&[rec], &[last_layer], true, false)?;
    let g2 = Tensor::f_run_backward(&[gan], &[last_layer], true, false)?;
    let n1 = g1[0].norm().double_value(&[]);
    let n2 = g2[0].norm().double_value(&[]);
    Ok((n1 / (n2 + 1e-4)).clamp(0.0, 1e4))
}

/// [`Discriminator`] configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiscriminatorConfig {
    pub in_channels: usize,
    /// Base width (`ndf`).
    pub channels: usize,
    /// Strided layers (`n_layers`).
    pub layers: usize,
}

/// One conv (+ BatchNorm) + LeakyReLU(0.2) of the PatchGAN.
#[derive(Debug)]
struct DiscLayer {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    bn: Option<(Tensor, Tensor)>,
    act: bool,
}

/// pix2pix / taming `NLayerDiscriminator` (PatchGAN): conv 4x4 s2 + LeakyReLU(0.2); `layers - 1`
/// x (conv 4x4 s2 without bias, BatchNorm, LeakyReLU) with widths `ndf * min(2^n, 8)`; conv 4x4 s1
/// (BatchNorm, LeakyReLU); conv 4x4 s1 to 1 channel of patch logits. All convs pad 1.
/// `[B, C, H, W] -> [B, 1, H', W']`. BatchNorm uses the batch's statistics (training mode, as the
/// discriminator is only ever used in training; no running statistics are kept). Variables follow
/// taming's `Sequential` indices: `main.{i}.weight`, `main.{i}.bias`. Init as taming's
/// `weights_init`: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) and shift 0, conv biases
/// PyTorch's default U(+-1/sqrt(fan_in)).
#[derive(Debug)]
pub struct Discriminator {
    layers: Vec<DiscLayer>,
}

impl Discriminator {
    pub fn new(p: &Path, cfg: DiscriminatorConfig, rng: &mut Rng) -> Self {
        let ndf = cfg.channels as i64;
        let mut layers = Vec::new();
        let mut index = 0usize;
        let conv =
            |rng: &mut Rng, cin: i64, cout: i64, stride: i64, bias: bool, bn: bool, act: bool, index: &mut usize| {
                let q = p / "main" / *index;
                let weight = var_from(&q, "weight", &[cout, cin, 4, 4], rng, |r| 0.02 * r.normal());
                let b = 1.0 / ((cin * 16) as f64).sqrt();
                let bias = bias.then(|| var_from(&q, "bias", &[cout], rng, |r| r.uniform_range(-b, b)));
                *index += 1;
                let bn = bn.then(|| {
                    let q = p / "main" / *index;
                    let w = var_from(&q, "weight", &[cout], rng, |r| 1.0 + 0.02 * r.normal());
                    let s = q.var("bias", &[cout], Init::Const(0.0));
                    *index += 1;
                    (w, s)
                });
                if act {
                    *index += 1;
                }
                DiscLayer { weight, bias, stride, bn, act }
            };
        layers.push(conv(rng, cfg.in_channels as i64, ndf, 2, true, false, true, &mut index));
        let mut mult = 1;
        for n in 1..cfg.layers {
            let prev = mult;
            mult = (1 << n).min(8);
            layers.push(conv(rng, ndf * prev, ndf * mult, 2, false, true, true, &mut index));
        }
        let prev = mult;
        mult = (1 << cfg.layers).min(8);
        layers.push(conv(rng, ndf * prev, ndf * mult, 1, false, true, true, &mut index));
        layers.push(conv(rng, ndf * mult, 1, 1, true, false, false, &mut index));
        Discriminator { layers }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for l in &self.layers {
            h = h.conv2d(&l.weight, l.bias.as_ref(), [l.stride, l.stride], [1, 1], [1, 1], 1);
            if let Some((w, b)) = &l.bn {
                h = Tensor::batch_norm(&h, Some(w), Some(b), None::<&Tensor>, None::<&Tensor>, true, 0.1, 1e-5, false);
            }
            if l.act {
                // LeakyReLU(0.2) (pix2pix): max(h, 0.2 h).
                h = h.maximum(&(&h * 0.2));
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    #[test]
    fn patchgan_shapes_and_parameter_count() {
        // taming's NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3), counted by hand from its
        // code: conv 3*64*16 + 64 = 3136; conv 64*128*16 = 131072 + BN 256; conv 128*256*16 =
        // 524288 + BN 512; conv 256*512*16 = 2097152 + BN 1024; conv 512*16 + 1 = 8193: 2,765,633.
        let vs = VarStore::new(Device::Cpu);
        let d = Discriminator::new(
            &vs.root(),
            DiscriminatorConfig { in_channels: 3, channels: 64, layers: 3 },
            &mut Rng::new(0),
        );
        let n: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
        assert_eq!(n, 2_765_633);
        let names: Vec<String> = {
            let mut v: Vec<String> = vs.variables().into_keys().collect();
            v.sort();
            v
        };
        for want in [
            "main.0.bias",
            "main.0.weight",
            "main.2.weight",
            "main.3.weight",
            "main.3.bias",
            "main.11.weight",
            "main.11.bias",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n == "main.2.bias"), "a conv before BatchNorm has no bias");
        // 32x32 -> 16 -> 8 -> 4 -> 3 -> 2 patches.
        let y = d.forward(&Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)));
        assert_eq!(y.size(), vec![2, 1, 2, 2]);
    }

    #[test]
    fn hinge_and_reconstruction_losses() {
        let real = Tensor::from_slice(&[2.0f32, 0.5]);
        let fake = Tensor::from_slice(&[-2.0f32, 0.0]);
        // real: relu(1-2)=0, relu(0.5)=0.5 -> 0.25; fake: relu(-1)=0, relu(1)=1 -> 0.5; (0.25+0.5)/2.
        assert!((hinge_d_loss(&real, &fake).double_value(&[]) - 0.375).abs() < 1e-7);
        let c = LossConfig { l2: 2.0, ..Default::default() };
        let x = Tensor::from_slice(&[0.0f32, 0.0]);
        let y = Tensor::from_slice(&[1.0f32, -3.0]);
        // l1 mean 2, l2 mean 5 -> 2 + 2*5.
        assert!((c.reconstruction(&x, &y).double_value(&[]) - 12.0).abs() < 1e-6);
        assert!(LossConfig { l1: 0.0, ..Default::default() }.validate().is_err());
    }
}

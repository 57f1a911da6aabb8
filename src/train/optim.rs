//! Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), written here so that the
//! optimiser state is ours to checkpoint exactly.
//!
//! Multi-stage choice (docs/METHOD.md §5): a parameter whose gradient is undefined in a
//! step (a decoder that saw no sample) is **not moved and its moments and step count are not
//! advanced**, so a stage absent from a batch keeps exactly its previous state.
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

crate::names::named_enum! {
    /// Which optimiser.
    pub enum OptimizerKind ("optimizer") {
        /// Adam (Kingma & Ba 2015); weight decay as an L2 penalty.
        Adam = "adam",
        /// AdamW (Loshchilov & Hutter 2019): decoupled weight decay (`adam_w`, the older
        /// spelling, is still read).
        AdamW = "adamw" | "adam_w",
    }
}

/// Optimiser settings. Defaults: the paper's CIFAR-10 VP recipe (Adam, lr 2e-4, 5000 warm-up
/// steps, grad-norm clip 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty (Adam) or decoupled weight decay (AdamW).
    pub weight_decay: f64,
    /// Linear learning-rate warm-up over this many steps (0 = none).
    pub warmup_steps: u64,
    /// EDM's learning-rate ramp-up, measured in training images (0 = none; EDM: 10 M):
    /// lr x min(images seen before the step / warmup_images, 1), so the first step runs at lr 0
    /// (Adam's moments still advance), as EDM's training loop. Excludes `warmup_steps`.
    #[serde(default)]
    pub warmup_images: f64,
    /// Clip the global gradient norm to this value (0 = no clipping).
    pub grad_clip: f64,
    /// What the gradient is taken of: `mean` (default), the per-pixel mean squared error averaged
    /// over the batch (the loss msdiff logs), or `sum`, its sum over the pixels of each image
    /// averaged over the batch, as EDM's training loop (`loss.sum() / batch`). The two differ by
    /// the constant C x H x W, which for Adam without clipping only rescales `eps`.
    #[serde(default)]
    pub loss_reduction: LossReduction,
}

/// See [`OptimConfig::loss_reduction`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossReduction {
    #[default]
    Mean,
    Sum,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            optimizer: OptimizerKind::Adam,
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 5000,
            warmup_images: 0.0,
            grad_clip: 1.0,
            loss_reduction: LossReduction::Mean,
        }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "optim.lr must be > 0, got {}", self.lr);
        ensure!(
            (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2),
            "optim.beta1/beta2 must be in [0, 1)"
        );
        ensure!(self.eps > 0.0, "optim.eps must be > 0");
        ensure!(self.weight_decay >= 0.0, "optim.weight_decay must be >= 0");
        ensure!(self.grad_clip >= 0.0, "optim.grad_clip must be >= 0 (0 disables clipping)");
        ensure!(
            self.warmup_images >= 0.0 && self.warmup_images.is_finite(),
            "optim.warmup_images must be >= 0, got {}",
            self.warmup_images
        );
        ensure!(
            self.warmup_images == 0.0 || self.warmup_steps == 0,
            "set one of optim.warmup_steps and optim.warmup_images (the other to 0)"
        );
        Ok(())
    }

    /// Learning rate at (1-based) step `step` of a run with `batch` images per step: the
    /// step ramp ([`OptimConfig::lr_at`]) or EDM's image ramp, lr x min((step - 1) batch / warmup_images, 1).
    pub fn lr_for(&self, step: u64, batch: usize) -> f64 {
        if self.warmup_images > 0.0 {
            let seen = step.saturating_sub(1) as f64 * batch as f64;
            self.lr * (seen / self.warmup_images).min(1.0)
        } else {
            self.lr_at(step)
        }
    }

    /// Learning rate at (1-based) step `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * (step as f64 / self.warmup_steps as f64).min(1.0)
        }
    }
}

/// Adam's state of one parameter.
pub struct AdamSlot {
    /// First moment.
    pub m: Tensor,
    /// Second moment.
    pub v: Tensor,
    /// Steps this parameter has taken (a decoder that saw no sample does not advance).
    pub steps: u64,
}

/// Adam state for named parameters.
pub struct Adam {
    pub cfg: OptimConfig,
    state: BTreeMap<String, AdamSlot>,
}

/// Adam's state as checkpoints store it: moments as named tensors, step counts by name.
pub struct AdamExport {
    pub m: Vec<(String, Tensor)>,
    pub v: Vec<(String, Tensor)>,
    pub steps: BTreeMap<String, u64>,
}

/// What one optimiser step did.
#[derive(Clone, Debug, Default)]
pub struct StepInfo {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Parameters updated / skipped for lack of gradient.
    pub updated: usize,
    pub skipped: usize,
}

impl Adam {
    pub fn new(cfg: OptimConfig, params: &[(String, Tensor)]) -> Self {
        let state = params
            .iter()
            .map(|(n, p)| (n.clone(), AdamSlot { m: p.zeros_like(), v: p.zeros_like(), steps: 0 }))
            .collect();
        Adam { cfg, state }
    }

    /// The state of parameter `name`.
    pub fn slot(&self, name: &str) -> Option<&AdamSlot> {
        self.state.get(name)
    }

    /// The state as named tensors (shallow handles) and step counts, sorted by name.
    pub fn export(&self) -> AdamExport {
        AdamExport {
            m: self.state.iter().map(|(n, s)| (n.clone(), s.m.shallow_clone())).collect(),
            v: self.state.iter().map(|(n, s)| (n.clone(), s.v.shallow_clone())).collect(),
            steps: self.state.iter().map(|(n, s)| (n.clone(), s.steps)).collect(),
        }
    }

    /// Restore the state saved by [`Adam::export`]: every parameter's moments and step count
    /// must be present with the right shapes.
    pub fn import(
        &mut self,
        m: &[(String, Tensor)],
        v: &[(String, Tensor)],
        steps: &BTreeMap<String, u64>,
    ) -> Result<()> {
        let e = self.export();
        crate::model::copy_into(&e.m, m, "Adam first moments")?;
        crate::model::copy_into(&e.v, v, "Adam second moments")?;
        for (n, s) in self.state.iter_mut() {
            s.steps = *steps.get(n).ok_or_else(|| anyhow::anyhow!("checkpoint lacks the Adam step count of '{n}'"))?;
        }
        Ok(())
    }

    /// One step at learning rate `lr`. `grads[i]` is the gradient of `params[i]` as returned by
    /// [`gradients`] (undefined for a parameter the loss does not reach).
    pub fn step(&mut self, params: &[(String, Tensor)], grads: &[Tensor], lr: f64) -> Result<StepInfo> {
        ensure!(params.len() == grads.len(), "{} parameters but {} gradients", params.len(), grads.len());
        let _guard = tch::no_grad_guard();
        let mut with_grad = Vec::new();
        let mut skipped = 0;
        for ((name, p), g) in params.iter().zip(grads) {
            if g.defined() {
                with_grad.push((name, p, g));
            } else {
                skipped += 1;
            }
        }
        // Global norm over the parameters that have gradients: each tensor's sum of squares in
        // f32 (libtorch's pairwise summation: ~1e-8 relative at 4 M entries; a norm kernel sums
        // sequentially, ~1e-4, and a cast to f64 first costs 4x the time), combined in f64.
        // One device sync for the whole norm (not one per parameter).
        let grad_norm = if with_grad.is_empty() {
            0.0
        } else {
            let parts: Vec<Tensor> = with_grad.iter().map(|(_, _, g)| g.square().sum(Kind::Float)).collect();
            Tensor::stack(&parts, 0).to_kind(Kind::Double).sum(Kind::Double).double_value(&[]).sqrt()
        };
        ensure!(grad_norm.is_finite(), "the gradient norm is not finite ({grad_norm})");
        let clip = if self.cfg.grad_clip > 0.0 && grad_norm > self.cfg.grad_clip {
            self.cfg.grad_clip / (grad_norm + 1e-6)
        } else {
            1.0
        };
        let c = &self.cfg;
        for (name, p, g) in &with_grad {
            let AdamSlot { m, v, steps: t } =
                self.state.get_mut(*name).ok_or_else(|| anyhow::anyhow!("optimizer has no state for '{name}'"))?;
            let mut p = (*p).shallow_clone();
            let mut g = if clip != 1.0 { *g * clip } else { (*g).shallow_clone() };
            if c.weight_decay > 0.0 {
                match c.optimizer {
                    OptimizerKind::Adam => g = &g + &p * c.weight_decay, // a new tensor: g may share the caller's gradient
                    OptimizerKind::AdamW => {
                        let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                    }
                }
            }
            *t += 1;
            let bc1 = 1.0 - c.beta1.powi(*t as i32);
            let bc2 = 1.0 - c.beta2.powi(*t as i32);
            // PyTorch's Adam in 7 tensor ops (2 temporaries) per parameter: m <- lerp(m, g, 1 - b1);
            // v <- lerp(v, g^2, 1 - b2); p <- p - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps),
            // written as p.addcdiv_(m, d) with d = (sqrt(v) + eps sqrt(bc2)) * (-bc1 / (lr sqrt(bc2))).
            // Every op is a pass over the tensor (the step is bound by memory traffic, and a
            // multi-stage net has ~2.2x the unified net's parameters), so there are as few as the
            // ops without fused kernels allow.
            let _ = m.lerp_(&g, 1.0 - c.beta1);
            let _ = v.lerp_(&g.square(), 1.0 - c.beta2);
            if lr == 0.0 {
                // EDM's first step (lr ramp at 0 images): the moments advance, the weights do not.
                continue;
            }
            let mut d = v.sqrt();
            let _ = d.g_add_scalar_(c.eps * bc2.sqrt()).g_mul_scalar_(-bc1 / (lr * bc2.sqrt()));
            let _ = p.addcdiv_(&*m, &d);
        }
        Ok(StepInfo { grad_norm, updated: with_grad.len(), skipped })
    }
}

/// Gradients of `loss` with respect to `params` without touching `.grad()`: an entry is undefined
/// when the loss does not depend on that parameter (e.g. a decoder with no sample this step).
pub fn gradients(loss: &Tensor, params: &[(String, Tensor)]) -> Result<Vec<Tensor>> {
    let ps: Vec<&Tensor> = params.iter().map(|(_, p)| p).collect();
    Ok(Tensor::f_run_backward(&[loss], &ps, false, false)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn adam_matches_hand_computed_steps_and_skips_unused_parameters() {
        // One Adam step from m = v = 0 with gradient g moves p by -lr * g/|g| (bias-corrected
        // m^ = g, v^ = g^2), up to eps: Kingma & Ba 2015, Algorithm 1.
        let a = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
        let params = vec![("a".to_string(), a.shallow_clone()), ("b".to_string(), b.shallow_clone())];
        let cfg = OptimConfig { warmup_steps: 0, grad_clip: 0.0, lr: 0.1, ..Default::default() };
        let mut opt = Adam::new(cfg, &params);
        let loss = (&a * &a).sum(Kind::Float); // d/da = 2a = (2, -4); b unused
        let grads = gradients(&loss, &params).unwrap();
        assert!(grads[0].defined() && !grads[1].defined());
        let info = opt.step(&params, &grads, 0.1).unwrap();
        assert_eq!((info.updated, info.skipped), (1, 1));
        let av = Vec::<f32>::try_from(&a.detach()).unwrap();
        assert!((av[0] - 0.9).abs() < 1e-6 && (av[1] + 1.9).abs() < 1e-6, "{av:?}");
        assert_eq!(Vec::<f32>::try_from(&b.detach()).unwrap(), vec![3.0]);
        assert_eq!(opt.slot("b").unwrap().steps, 0, "an unused parameter's step count must not advance");
        assert!((info.grad_norm - 20f64.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let a = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let params = vec![("a".to_string(), a.shallow_clone())];
        let cfg =
            OptimConfig { warmup_steps: 0, grad_clip: 1.0, lr: 1.0, beta1: 0.0, beta2: 0.0, ..Default::default() };
        let mut opt = Adam::new(cfg, &params);
        let loss = (&a * &a).sum(Kind::Float) * 0.5; // grad = a = (3, 4), norm 5
        let grads = gradients(&loss, &params).unwrap();
        let info = opt.step(&params, &grads, 1.0).unwrap();
        assert!((info.grad_norm - 5.0).abs() < 1e-6);
        // beta = 0: update = g/|g| elementwise = sign -> (2, 3) regardless of the clip scale.
        let av = Vec::<f32>::try_from(&a.detach()).unwrap();
        assert!((av[0] - 2.0).abs() < 1e-5 && (av[1] - 3.0).abs() < 1e-5);
    }

    #[test]
    fn warmup_is_linear() {
        let c = OptimConfig { lr: 1e-3, warmup_steps: 10, ..Default::default() };
        assert!((c.lr_at(1) - 1e-4).abs() < 1e-15);
        assert!((c.lr_at(10) - 1e-3).abs() < 1e-15);
        assert!((c.lr_at(100) - 1e-3).abs() < 1e-15);
    }
}

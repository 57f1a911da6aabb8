//! Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), written here so that the
//! optimiser state is ours to checkpoint exactly.
//!
//! Multi-stage choice (docs/METHOD.md §5): a parameter whose gradient is undefined in a
//! step (a decoder that saw no sample) is **not moved and its moments and step count are not
//! advanced**, so a stage absent from a batch keeps exactly its previous state.
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void};
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

extern "C" {
    // csrc/optim_shim.cpp (errors: crate::shim).
    fn msd_fused_adam(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        steps: *const *mut c_void,
        n: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        adamw: c_int,
        grad_scale: *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Adam's state of one parameter.
pub struct AdamSlot {
    /// First moment.
    pub m: Tensor,
    /// Second moment.
    pub v: Tensor,
    /// Steps this parameter has taken (a decoder that saw no sample does not advance).
    pub steps: u64,
    /// `steps` as the 0-d f32 tensor (on the parameter's device) the fused kernel reads.
    step_t: Tensor,
}

impl AdamSlot {
    fn new(p: &Tensor) -> Self {
        AdamSlot {
            m: p.zeros_like(),
            v: p.zeros_like(),
            steps: 0,
            step_t: Tensor::zeros([], (Kind::Float, p.device())),
        }
    }
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
        let state = params.iter().map(|(n, p)| (n.clone(), AdamSlot::new(p))).collect();
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
        // One fused libtorch kernel for the whole update (PyTorch's `Adam(fused=True)`): per
        // element it reads the parameter, gradient and moments once and writes them once, where
        // separate ops made ~18 passes (docs/BENCHMARKS.md, "Multi-stage step vs its FLOPs").
        // The clip is the kernel's gradient scale (it divides by it), so no scaled copy of the
        // gradients is made. Same update as torch.optim.Adam / AdamW: m <- b1 m + (1 - b1) g,
        // v <- b2 v + (1 - b2) g^2, p <- p - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps), with L2
        // (Adam: g += wd p) or decoupled (AdamW: p *= 1 - lr wd) weight decay.
        let (mut ps, mut gs, mut ms, mut vs, mut ts) = (vec![], vec![], vec![], vec![], vec![]);
        for (name, p, g) in &with_grad {
            let slot =
                self.state.get_mut(*name).ok_or_else(|| anyhow::anyhow!("optimizer has no state for '{name}'"))?;
            slot.steps += 1;
            let _ = slot.step_t.fill_(slot.steps as f64);
            ps.push(p.as_ptr() as *mut c_void);
            gs.push(g.as_ptr() as *mut c_void);
            ms.push(slot.m.as_mut_ptr() as *mut c_void);
            vs.push(slot.v.as_mut_ptr() as *mut c_void);
            ts.push(slot.step_t.as_mut_ptr() as *mut c_void);
        }
        if !ps.is_empty() {
            let device = with_grad[0].1.device();
            let mut scale = (clip != 1.0).then(|| Tensor::from(1.0 / clip).to_kind(Kind::Float).to_device(device));
            let c = &self.cfg;
            let mut err: *mut c_char = std::ptr::null_mut();
            // SAFETY: tch's C_tensor* is an at::Tensor* (libtch's torch_api.h); the shim copies the
            // handles, and every tensor outlives the call.
            let st = unsafe {
                msd_fused_adam(
                    ps.as_ptr(),
                    gs.as_ptr(),
                    ms.as_ptr(),
                    vs.as_ptr(),
                    ts.as_ptr(),
                    ps.len() as c_int,
                    lr,
                    c.beta1,
                    c.beta2,
                    c.weight_decay,
                    c.eps,
                    (c.optimizer == OptimizerKind::AdamW) as c_int,
                    scale.as_mut().map_or(std::ptr::null_mut(), |t| t.as_mut_ptr() as *mut c_void),
                    &mut err,
                )
            };
            crate::shim::check(st, err, "the Adam step failed in libtorch")?;
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

    /// Five steps of the fused kernel against Kingma & Ba's Algorithm 1 written out per element in
    /// f64 (torch.optim.Adam's conventions: L2 decay added to the clipped gradient; AdamW's
    /// decoupled decay p *= 1 - lr wd first), with gradient clipping active, one parameter left
    /// out of one step (its step count and bias corrections lag), and an lr = 0 step (moments
    /// advance, weights do not). Tolerance: f32 rounding of values of order 1 over five steps
    /// (each step's update is lr x O(1)): 1e-5 absolute.
    #[test]
    fn fused_adam_matches_a_per_element_reference() {
        for kind in [OptimizerKind::Adam, OptimizerKind::AdamW] {
            let cfg = OptimConfig {
                optimizer: kind,
                lr: 0.05,
                beta1: 0.8,
                beta2: 0.95,
                eps: 1e-3,
                weight_decay: 0.1,
                grad_clip: 1.5,
                warmup_steps: 0,
                ..Default::default()
            };
            let init: [Vec<f64>; 2] = [vec![0.5, -1.25, 2.0], vec![-0.75, 0.25]];
            let params: Vec<(String, Tensor)> = init
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("p{i}"), Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>())))
                .collect();
            let mut opt = Adam::new(cfg.clone(), &params);
            // Reference state.
            let mut p: Vec<Vec<f64>> =
                params.iter().map(|(_, t)| Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()).collect();
            let mut m: Vec<Vec<f64>> = p.iter().map(|v| vec![0.0; v.len()]).collect();
            let mut v2 = m.clone();
            let mut t = [0i32; 2];
            for step in 0..5 {
                let lr = if step == 2 { 0.0 } else { cfg.lr };
                // Gradients (exact in f32): a fixed pattern; p1 has none at step 1.
                let g: Vec<Option<Vec<f64>>> = p
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        (!(i == 1 && step == 1)).then(|| {
                            (0..v.len()).map(|j| ((step * 3 + j as i32 + i as i32) % 5) as f64 * 0.5 - 1.0).collect()
                        })
                    })
                    .collect();
                let grads: Vec<Tensor> = g
                    .iter()
                    .map(|o| match o {
                        Some(v) => Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
                        None => Tensor::new(),
                    })
                    .collect();
                let info = opt.step(&params, &grads, lr).unwrap();
                let norm = g.iter().flatten().flatten().map(|x| x * x).sum::<f64>().sqrt();
                assert!((info.grad_norm - norm).abs() < 1e-9);
                let clip = if norm > cfg.grad_clip { cfg.grad_clip / (norm + 1e-6) } else { 1.0 };
                for i in 0..2 {
                    let Some(gi) = &g[i] else { continue };
                    t[i] += 1;
                    let (bc1, bc2) = (1.0 - cfg.beta1.powi(t[i]), 1.0 - cfg.beta2.powi(t[i]));
                    for j in 0..gi.len() {
                        let mut gj = gi[j] * clip;
                        match kind {
                            OptimizerKind::Adam => gj += cfg.weight_decay * p[i][j],
                            OptimizerKind::AdamW => p[i][j] *= 1.0 - lr * cfg.weight_decay,
                        }
                        m[i][j] = cfg.beta1 * m[i][j] + (1.0 - cfg.beta1) * gj;
                        v2[i][j] = cfg.beta2 * v2[i][j] + (1.0 - cfg.beta2) * gj * gj;
                        p[i][j] -= lr / bc1 * m[i][j] / ((v2[i][j] / bc2).sqrt() + cfg.eps);
                    }
                }
                for (i, (name, tensor)) in params.iter().enumerate() {
                    let got = Vec::<f64>::try_from(tensor.to_kind(Kind::Double)).unwrap();
                    for j in 0..got.len() {
                        assert!(
                            (got[j] - p[i][j]).abs() < 1e-5,
                            "{kind:?} step {step} {name}[{j}]: {} vs reference {}",
                            got[j],
                            p[i][j]
                        );
                    }
                    assert_eq!(opt.slot(name).unwrap().steps, t[i] as u64);
                    let mv = Vec::<f64>::try_from(opt.slot(name).unwrap().v.to_kind(Kind::Double)).unwrap();
                    assert!(mv.iter().zip(&v2[i]).all(|(a, b)| (a - b).abs() < 1e-6), "{kind:?} step {step} {name}: v");
                }
            }
        }
    }

    #[test]
    fn warmup_is_linear() {
        let c = OptimConfig { lr: 1e-3, warmup_steps: 10, ..Default::default() };
        assert!((c.lr_at(1) - 1e-4).abs() < 1e-15);
        assert!((c.lr_at(10) - 1e-3).abs() < 1e-15);
        assert!((c.lr_at(100) - 1e-3).abs() < 1e-15);
    }
}

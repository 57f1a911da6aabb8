//! The training objective: one home for preconditioning, noise label, stage routing, the
//! per-sample draws of a training step, and the loss.
//!
//! This is what EDM keeps in `EDMPrecond` + `EDMLoss` and k-diffusion in its `Denoiser` wrapper
//! (`get_scalings`, `loss`, `forward`). The trainer asks an [`Objective`] for a loss
//! ([`Objective::loss`]); a sampler asks it for a denoiser ([`Objective::bind`]); both go
//! through the same [`Objective::forward`], so training and sampling cannot disagree about how a
//! network is conditioned.
//!
//! | file | concept |
//! |---|---|
//! | [`precond`] | what the network predicts (eps / x0 / v / EDM) and how its output becomes x0 |
//! | [`stages`] | what a step draws per sample (stage, t, sigma): base laws, stage policies and weights |
//! | [`validation`] | the loss on held-out images per noise interval |
//!
//! Conventions (docs/METHOD.md §1): the scaled space `x~ = x0 + sigma eps`; the network sees
//! `input_scale * x~` (the process's signal scale alpha, or EDM's c_in), the noise label of
//! [`Prediction::noise_label`], and its stage: the stage whose sigma interval holds sigma.
pub mod precond;
pub mod stages;
pub mod validation;

pub use precond::Prediction;
pub use stages::{Draws, ObjectiveConfig, StagePolicy, StageSampler, StageWeights};

use crate::cluster::stage_of_sigma;
use crate::denoiser::{per_sample, Denoiser};
use crate::nn::StagedNetwork;
use crate::process::Process;
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// A process, a parameterisation and the stage cuts: everything needed to turn a staged network
/// into a denoiser, and a training batch into a loss.
#[derive(Clone, Debug)]
pub struct Objective {
    pub process: Process,
    pub prediction: Prediction,
    /// K-1 increasing sigma cuts (empty for one stage).
    pub boundaries_sigma: Vec<f64>,
}

/// Per-sample conditioning of a batch, as f32 tensors on the batch's device (`stage` i64).
pub struct Conditioning {
    /// Multiplier of `x~` forming the network input: alpha, or EDM's c_in. `[B]`
    pub input_scale: Tensor,
    /// The process's signal scale at sigma. `[B]`
    pub alpha: Tensor,
    /// The noise label. `[B]`
    pub label: Tensor,
    /// The stage (decoder) of each sample. `[B]`
    pub stage: Tensor,
}

impl Objective {
    pub fn new(process: Process, prediction: Prediction, boundaries_sigma: Vec<f64>) -> Self {
        Objective { process, prediction, boundaries_sigma }
    }

    pub fn num_stages(&self) -> usize {
        self.boundaries_sigma.len() + 1
    }

    /// The conditioning for per-sample sigmas (host math; tensors on `device`). The stage is the
    /// one whose interval holds sigma.
    pub fn conditioning(&self, sigma: &[f64], device: Device) -> Conditioning {
        let mut alpha = Vec::with_capacity(sigma.len());
        let mut label = Vec::with_capacity(sigma.len());
        let mut stage = Vec::with_capacity(sigma.len());
        for &s in sigma {
            let t = self.process.t_from_sigma(s);
            alpha.push(self.process.scale_at_sigma(s));
            label.push(self.prediction.noise_label(&self.process, t, s));
            stage.push(stage_of_sigma(s, &self.boundaries_sigma) as i64);
        }
        let alpha_t = Tensor::from_slice(&alpha).to_device(device);
        let sig_t = Tensor::from_slice(sigma).to_device(device);
        let input_scale = self.prediction.input_scale(&sig_t, &alpha_t).to_kind(Kind::Float);
        Conditioning {
            input_scale,
            alpha: alpha_t.to_kind(Kind::Float),
            label: Tensor::from_slice(&label).to_kind(Kind::Float).to_device(device),
            stage: Tensor::from_slice(&stage).to_device(device),
        }
    }

    /// The network's raw output at scaled samples `x` (`[B, C, H, W]` f32, x~ space) and
    /// per-sample `sigma`, with the conditioning it was given. `stage` overrides the routing by
    /// sigma (training passes the drawn stages, which equal it; asserted in the tests).
    pub fn forward(
        &self,
        net: &dyn StagedNetwork,
        x: &Tensor,
        sigma: &[f64],
        stage: Option<&[i64]>,
        train: bool,
    ) -> Result<(Tensor, Conditioning)> {
        let mut c = self.conditioning(sigma, x.device());
        if let Some(st) = stage {
            c.stage = Tensor::from_slice(st).to_device(x.device());
        }
        let input = x * per_sample(&c.input_scale, x.dim());
        let out = net.forward_staged(&input, &c.label, &c.stage, train)?;
        Ok((out, c))
    }

    /// The per-sample training loss `[B]` (f32): the mean over pixels of the squared error of the
    /// network output against the parameterisation's target at `x~ = x0 + sigma z`. For EDM this
    /// is EDM's weighted loss on D (Karras et al. 2022, eq. 8: the weight times c_out^2 is 1).
    /// `x0`, `z`: `[B, C, H, W]` f32 on the network's device; the stages are the drawn ones.
    /// `train`: dropout on (training) or off (validation).
    pub fn loss(&self, net: &dyn StagedNetwork, x0: &Tensor, z: &Tensor, draws: &Draws, train: bool) -> Result<Tensor> {
        let device = x0.device();
        let nd = x0.dim();
        let sig = per_sample(&Tensor::from_slice(&draws.sigma).to_kind(Kind::Float).to_device(device), nd);
        let xt = x0 + z * &sig;
        let (out, c) = self.forward(net, &xt, &draws.sigma, Some(&draws.stage), train)?;
        let target = self.prediction.target(x0, z, &xt, &sig, &per_sample(&c.alpha, nd));
        let dims: Vec<i64> = (1..nd as i64).collect();
        Ok((&out - &target).square().mean_dim(dims.as_slice(), false, Kind::Float))
    }

    /// The x0 estimate of `net` at scaled samples `x` and per-sample `sigma` `[B]` (inference:
    /// no gradient, dropout off). Output in `x`'s kind.
    pub fn denoise(&self, net: &dyn StagedNetwork, x: &Tensor, sigma: &Tensor) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let sig: Vec<f64> = Vec::<f64>::try_from(sigma.to_kind(Kind::Double).to_device(Device::Cpu))?;
        ensure!(sig.iter().all(|s| *s > 0.0 && s.is_finite()), "sigma must be positive and finite");
        let nd = x.dim();
        let xf = x.to_kind(Kind::Float);
        let (out, c) = self.forward(net, &xf, &sig, None, false)?;
        let s = per_sample(&sigma.to_kind(Kind::Float).to_device(x.device()), nd);
        let a = per_sample(&c.alpha, nd);
        Ok(self.prediction.to_x0(&out, &xf, &s, &a).to_kind(x.kind()))
    }

    /// `net` bound to this objective: a [`Denoiser`] every sampler runs on. Errors when the
    /// network's decoder count differs from the stage count.
    pub fn bind<'a>(&self, net: &'a dyn StagedNetwork) -> Result<BoundDenoiser<'a>> {
        ensure!(
            self.num_stages() == net.num_stages(),
            "the network has {} stage(s) but the split has {} boundaries",
            net.num_stages(),
            self.boundaries_sigma.len()
        );
        Ok(BoundDenoiser { net, objective: self.clone() })
    }
}

/// A staged network bound to an [`Objective`] (see [`Objective::bind`]): the denoiser of a
/// trained model. A multi-stage model routes each sample to its stage's decoder at every
/// evaluation, so every sampler switches decoders exactly where the split says
/// (docs/METHOD.md §6).
pub struct BoundDenoiser<'a> {
    pub net: &'a dyn StagedNetwork,
    pub objective: Objective,
}

impl Denoiser for BoundDenoiser<'_> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Result<Tensor> {
        self.objective.denoise(self.net, x, sigma)
    }
}

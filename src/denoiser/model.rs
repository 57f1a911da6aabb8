//! A trained network as a [`Denoiser`]: preconditioning, noise label and stage routing.
//!
//! For each sample of a batch: t = process.t_from_sigma(sigma); the network input is
//! `input_scale * x~` (alpha x~ in process space, or EDM's c_in x~); its noise label is the
//! process's label of t (EDM preconditioning: c_noise = ln(sigma)/4); its **stage** is the stage
//! whose sigma interval holds sigma (boundaries from the split). The network routes each sample to
//! its stage's decoder, so any sampler — including the intermediate points of a solver step —
//! switches decoders exactly where the split says (multistage-spec.md section 6).
use super::{per_sample, Denoiser};
use crate::cluster::stage_of_sigma;
use crate::param::Prediction;
use crate::process::Process;
use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

/// A network that predicts from (input, noise label, stage id) per sample.
pub trait StagedNetwork {
    /// `x` `[B, C, H, W]`, `noise_label` `[B]` f32, `stage` `[B]` i64 -> `[B, C, H, W]`.
    fn forward_staged(&self, x: &Tensor, noise_label: &Tensor, stage: &Tensor, train: bool) -> Result<Tensor>;
    fn num_stages(&self) -> usize;
}

/// Per-sample conditioning of a batch.
pub struct Conditioning {
    pub input_scale: Tensor,
    pub alpha: Tensor,
    pub label: Tensor,
    pub stage: Tensor,
}

/// Compute the conditioning for per-sample sigmas (CPU math; tensors on `device` as f32).
pub fn conditioning(process: &Process, prediction: &Prediction, boundaries_sigma: &[f64], sigma: &[f64], device: tch::Device) -> Conditioning {
    let mut alpha = Vec::with_capacity(sigma.len());
    let mut label = Vec::with_capacity(sigma.len());
    let mut stage = Vec::with_capacity(sigma.len());
    for &s in sigma {
        let t = process.t_from_sigma(s);
        alpha.push(process.scale_at_sigma(s));
        label.push(match prediction {
            Prediction::Edm { .. } => s.ln() / 4.0,
            _ => process.noise_label(t),
        });
        stage.push(stage_of_sigma(s, boundaries_sigma) as i64);
    }
    let alpha_t = Tensor::from_slice(&alpha).to_device(device);
    let sig_t = Tensor::from_slice(sigma).to_device(device);
    let input_scale = prediction.input_scale(&sig_t, &alpha_t).to_kind(Kind::Float);
    Conditioning {
        input_scale,
        alpha: alpha_t.to_kind(Kind::Float),
        label: Tensor::from_slice(&label).to_kind(Kind::Float).to_device(device),
        stage: Tensor::from_slice(&stage).to_device(device),
    }
}

/// A network + process + prediction + split, usable by every sampler.
pub struct ModelDenoiser<'a> {
    pub net: &'a dyn StagedNetwork,
    pub process: Process,
    pub prediction: Prediction,
    /// K-1 increasing sigma cuts (empty for one stage).
    pub boundaries_sigma: Vec<f64>,
}

impl<'a> ModelDenoiser<'a> {
    pub fn new(net: &'a dyn StagedNetwork, process: Process, prediction: Prediction, boundaries_sigma: Vec<f64>) -> Result<Self> {
        ensure!(
            boundaries_sigma.len() + 1 == net.num_stages(),
            "the network has {} stage(s) but the split has {} boundaries",
            net.num_stages(),
            boundaries_sigma.len()
        );
        Ok(ModelDenoiser { net, process, prediction, boundaries_sigma })
    }
}

impl Denoiser for ModelDenoiser<'_> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let sig: Vec<f64> = Vec::<f64>::try_from(sigma.to_kind(Kind::Double).to_device(tch::Device::Cpu))?;
        ensure!(sig.iter().all(|s| *s > 0.0 && s.is_finite()), "sigma must be positive and finite");
        let device = x.device();
        let c = conditioning(&self.process, &self.prediction, &self.boundaries_sigma, &sig, device);
        let nd = x.dim();
        let xf = x.to_kind(Kind::Float);
        let input = &xf * per_sample(&c.input_scale, nd);
        let out = self.net.forward_staged(&input, &c.label, &c.stage, false)?;
        let s = per_sample(&sigma.to_kind(Kind::Float).to_device(device), nd);
        let a = per_sample(&c.alpha, nd);
        Ok(self.prediction.to_x0(&out, &xf, &s, &a).to_kind(x.kind()))
    }
}

impl StagedNetwork for crate::nn::MultiStageUNet {
    /// Mixed precision: the input is cast to the weights' kind (bf16) and the output back to the
    /// input's kind, so callers see f32 (or f64) in and out whatever the network runs in.
    fn forward_staged(&self, x: &Tensor, noise_label: &Tensor, stage: &Tensor, train: bool) -> Result<Tensor> {
        let k = self.kind();
        if x.kind() == k {
            return self.forward(x, noise_label, stage, train);
        }
        Ok(self.forward(&x.to_kind(k), noise_label, stage, train)?.to_kind(x.kind()))
    }
    fn num_stages(&self) -> usize {
        crate::nn::MultiStageUNet::num_stages(self)
    }
}

//! A network with its own variable store, and loading one from a checkpoint for sampling.
use super::checkpoint;
use super::config::ResolvedConfig;
use crate::denoiser::model::ModelDenoiser;
use crate::nn::{MultiStageUNet, UNetConfig};
use anyhow::Result;
use tch::nn::VarStore;
use tch::{Device, Tensor};

pub struct Network {
    pub vs: VarStore,
    pub net: MultiStageUNet,
}

impl Network {
    /// Build a freshly initialised network. libtorch's initialisers draw from its global RNG, so
    /// the caller seeds it (`tch::manual_seed`) for reproducible initial weights.
    pub fn new(cfg: &UNetConfig, device: Device) -> Result<Self> {
        let vs = VarStore::new(device);
        let net = MultiStageUNet::new(&vs.root(), cfg)?;
        Ok(Network { vs, net })
    }

    /// All variables, sorted by name.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Cast the weights to `p`'s kind (bf16: for sampling, or the training copy of fp32 masters).
    pub fn set_precision(&mut self, p: crate::runtime::Precision) {
        match p {
            crate::runtime::Precision::Fp32 => self.vs.float(),
            crate::runtime::Precision::Bf16 => self.vs.bfloat16(),
        }
    }

    pub fn num_params(&self) -> i64 {
        self.params().iter().map(|(_, t)| t.numel() as i64).sum()
    }
}

/// A network loaded from a checkpoint, ready to denoise.
pub struct Loaded {
    pub network: Network,
    pub config: ResolvedConfig,
    pub step: u64,
    pub ema: bool,
}

impl Loaded {
    /// `ema`: load the EMA weights (what one samples with) rather than the raw ones.
    pub fn from_checkpoint(path: &std::path::Path, device: Device, ema: bool) -> Result<Self> {
        let (state, t) = checkpoint::load(path)?;
        let network = Network::new(&state.config.model, device)?;
        let params = network.params();
        checkpoint::copy_into(&params, if ema { &t.ema } else { &t.model }, if ema { "EMA weights" } else { "weights" })?;
        Ok(Loaded { network, config: state.config, step: state.step, ema })
    }

    /// Run the network in `p` (inputs are cast to it inside the denoiser, outputs back to f32).
    pub fn with_precision(mut self, p: crate::runtime::Precision) -> Self {
        self.network.set_precision(p);
        self
    }

    pub fn denoiser(&self) -> Result<ModelDenoiser<'_>> {
        ModelDenoiser::new(
            &self.network.net,
            self.config.process.build()?,
            self.config.prediction,
            self.config.boundaries_sigma(),
        )
    }
}

//! A network with its variable store, and a trained one loaded from a checkpoint for sampling.
//!
//! The [`tch::nn::VarStore`] is the one parameter registry: its paths (`encoder.*`,
//! `decoder.{j}.*`, ...) are the checkpoint names, and per-stage questions ("which parameters
//! belong to decoder 1?") are prefix queries on it ([`Network::params_under`]).
use crate::nn::{Net, UNetConfig};
use crate::objective::BoundDenoiser;
use crate::runtime::Precision;
use crate::train::checkpoint;
use crate::train::config::ResolvedConfig;
use anyhow::{bail, ensure, Result};
use std::collections::BTreeMap;
use tch::nn::VarStore;
use tch::{Device, Tensor};

pub struct Network {
    pub vs: VarStore,
    /// NCSN++ or EDM's DDPM++, as the configuration's `family` says.
    pub net: Net,
}

impl Network {
    /// Build a freshly initialised network. libtorch's initialisers draw from its global RNG, so
    /// the caller seeds it (`tch::manual_seed`) for reproducible initial weights.
    pub fn new(cfg: &UNetConfig, device: Device) -> Result<Self> {
        let vs = VarStore::new(device);
        let net = Net::new(&vs.root(), cfg)?;
        Ok(Network { vs, net })
    }

    /// All variables, sorted by name.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The variables whose name starts with one of `prefixes` (e.g. `"decoder.1."`), sorted.
    pub fn params_under(&self, prefixes: &[&str]) -> Vec<(String, Tensor)> {
        params_under(&self.vs, prefixes)
    }

    /// Cast the weights to `p`'s kind (bf16: for sampling, or the training copy of fp32 masters).
    pub fn set_precision(&mut self, p: Precision) {
        match p {
            Precision::Fp32 => self.vs.float(),
            Precision::Bf16 => self.vs.bfloat16(),
        }
    }

    pub fn num_params(&self) -> i64 {
        self.params().iter().map(|(_, t)| t.numel() as i64).sum()
    }

    /// Load the weights of a safetensors file holding exactly this network's variables: msdiff's
    /// names, or a state dict exported from PyTorch, whose `model.` prefix (EDM's `EDMPrecond`)
    /// is stripped and whose `resample_filter` buffers (constants) are ignored; see docs/EDM.md
    /// for the export. Any other difference (a missing, extra or differently shaped tensor) is an
    /// error naming it.
    pub fn load_safetensors(&self, path: &std::path::Path) -> Result<()> {
        copy_into(&self.params(), &read_state_dict(path)?, &format!("weights {}", path.display()))
    }
}

/// The tensors of a safetensors state dict as msdiff names them: a PyTorch export's `model.`
/// prefix (EDM's `EDMPrecond`) or `model.diffusion_model.` prefix (LDM) stripped, a unified LDM
/// `UNetModel`'s `output_blocks.*` / `out.*` mapped onto decoder 0 ([`crate::nn::adm::msdiff_name`]),
/// EDM's `resample_filter` buffers (constants) left out.
pub fn read_state_dict(path: &std::path::Path) -> Result<Vec<(String, Tensor)>> {
    let raw = Tensor::read_safetensors(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Ok(raw
        .into_iter()
        .filter(|(n, _)| !n.ends_with("resample_filter"))
        .map(|(n, t)| (crate::nn::adm::msdiff_name(&n), t))
        .collect())
}

/// The variables of `vs` whose name starts with one of `prefixes`, sorted by name: per-stage
/// parameter questions answered by the one registry (`decoder.{j}.` is decoder j; `embed.` and
/// `encoder.` the shared trunk, or `embed.{j}.` / `encoder.{j}.` a separate model's stage j).
pub fn params_under(vs: &VarStore, prefixes: &[&str]) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p))).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Number of scalars in named tensors.
pub fn numel(params: &[(String, Tensor)]) -> u64 {
    params.iter().map(|(_, t)| t.numel() as u64).sum()
}

/// Copy `src` tensors into `dst` variables (same names and shapes required), converting device
/// and kind: loads checkpoints and refreshes a bf16 copy from fp32 masters.
pub fn copy_into(dst: &[(String, Tensor)], src: &[(String, Tensor)], what: &str) -> Result<()> {
    let map: BTreeMap<&str, &Tensor> = src.iter().map(|(n, t)| (n.as_str(), t)).collect();
    ensure!(
        map.len() == dst.len(),
        "checkpoint {what} has {} tensors but this model has {}: the checkpoint was made with another model configuration",
        map.len(),
        dst.len()
    );
    let _g = tch::no_grad_guard();
    for (n, d) in dst {
        let Some(s) = map.get(n.as_str()) else {
            bail!("checkpoint {what} lacks '{n}': the checkpoint was made with another model configuration");
        };
        ensure!(
            s.size() == d.size(),
            "checkpoint {what} '{n}' has shape {:?}, the model expects {:?}: another model configuration",
            s.size(),
            d.size()
        );
        let mut d = d.shallow_clone();
        d.copy_(&s.to_device(d.device()).to_kind(d.kind()));
    }
    Ok(())
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
        copy_into(&params, if ema { &t.ema } else { &t.model }, if ema { "EMA weights" } else { "weights" })?;
        Ok(Loaded { network, config: state.config, step: state.step, ema })
    }

    /// Run the network in `p` (inputs are cast to it inside the denoiser, outputs back to f32).
    pub fn with_precision(mut self, p: Precision) -> Self {
        self.network.set_precision(p);
        self
    }

    /// The network bound to its run's objective: a denoiser for every sampler.
    pub fn denoiser(&self) -> Result<BoundDenoiser<'_>> {
        self.config.build_objective()?.bind(&self.network.net)
    }
}

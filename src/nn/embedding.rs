//! Noise-level embedding: sinusoidal features -> Dense -> SiLU -> Dense.

use tch::nn::Path;
use tch::{Kind, Tensor};

use super::layers::{Dense, DenseConfig};

/// Sinusoidal (transformer / DDPM) embedding, score_sde `get_timestep_embedding` with
/// `max_positions = 10000`: `[sin(t w_i), cos(t w_i)]`, `w_i = 10000^(-i / (dim/2 - 1))`.
/// `t: [B]` (any float; the caller scales, e.g. 999 t for VP) -> `[B, dim]` (dim even, >= 4).
pub fn sinusoidal(t: &Tensor, dim: usize) -> Tensor {
    let half = (dim / 2) as i64;
    let scale = (10000f64).ln() / (half - 1) as f64;
    let freqs = (Tensor::arange(half, (Kind::Float, t.device())) * -scale).exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.sin(), args.cos()], 1)
}

/// [`TimeEmbedding`] configuration.
#[derive(Clone, Copy, Debug)]
pub struct TimeEmbeddingConfig {
    /// Sinusoid dimension.
    pub embedding_dim: usize,
    /// MLP width (4 x encoder base channels).
    pub temb_dim: usize,
}

/// `noise_label [B] -> sinusoidal [B, E] -> Dense [B, T] -> SiLU -> Dense [B, T]`.
/// Variables: `dense0`, `dense1`.
#[derive(Debug)]
pub struct TimeEmbedding {
    dense0: Dense,
    dense1: Dense,
    cfg: TimeEmbeddingConfig,
}

impl TimeEmbedding {
    pub fn new(p: &Path, cfg: TimeEmbeddingConfig) -> Self {
        let dense0 = Dense::new(
            &(p / "dense0"),
            DenseConfig { in_features: cfg.embedding_dim, out_features: cfg.temb_dim, init_scale: 1.0 },
        );
        let dense1 = Dense::new(
            &(p / "dense1"),
            DenseConfig { in_features: cfg.temb_dim, out_features: cfg.temb_dim, init_scale: 1.0 },
        );
        Self { dense0, dense1, cfg }
    }

    /// The kind of the weights.
    pub fn kind(&self) -> Kind {
        self.dense0.weight.kind()
    }

    /// `noise_label: [B]` -> `[B, temb_dim]`.
    pub fn forward(&self, noise_label: &Tensor) -> Tensor {
        let e = sinusoidal(noise_label, self.cfg.embedding_dim).to_kind(self.dense0.weight.kind());
        self.dense1.forward(&self.dense0.forward(&e).silu())
    }
}

//! Layers and the multi-decoder U-Net (docs/METHOD.md §4).
//!
//! - [`config`]: [`UNetConfig`] (serde, validated) and the presets;
//! - [`layers`]: conv, dense, GroupNorm, FIR / plain resampling;
//! - [`blocks`]: BigGAN residual block, single-head attention block;
//! - [`embedding`]: sinusoidal noise-level embedding + MLP;
//! - [`unet`]: [`Encoder`], [`Decoder`], [`MultiStageUNet`] (multistage, unified, separate) with
//!   per-sample routing;
//! - [`report`]: analytic parameter counts and GFLOPs ([`report::report`]).
//!
//! Gradient policy: a decoder whose stage has no sample in a batch is not run, so its parameters
//! get no gradient (undefined `grad()`); the trainer must not move them (e.g. skip them in the
//! optimizer step, or zero-grad-and-skip).

pub mod blocks;
pub mod config;
pub mod embedding;
pub mod layers;
pub mod report;
pub mod unet;

pub use config::{Architecture, DecoderAttn, Resample, ResampleWith, UNetConfig, PRESETS};
pub use report::{report, ModelReport};
pub use unet::{Decoder, Encoder, MultiStageUNet};

/// A network that predicts from (input, noise label, stage id) per sample: what an
/// [`crate::objective::Objective`] conditions and routes.
pub trait StagedNetwork {
    /// `x` `[B, C, H, W]`, `noise_label` `[B]` f32, `stage` `[B]` i64 -> `[B, C, H, W]`.
    fn forward_staged(&self, x: &tch::Tensor, noise_label: &tch::Tensor, stage: &tch::Tensor, train: bool) -> anyhow::Result<tch::Tensor>;
    fn num_stages(&self) -> usize;
}

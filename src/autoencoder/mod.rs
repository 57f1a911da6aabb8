//! Autoencoders for latent diffusion (docs/LATENT.md): the LDM / taming encoder-decoder with a KL
//! or a VQ bottleneck.
//!
//! | file | concept |
//! |---|---|
//! | [`config`] | [`AutoencoderConfig`], the presets (`vq-f4`, `kl-f4`, `kl-f8`, small CPU ones), parameter / FLOP report |
//! | [`blocks`] | ResnetBlock, single-head attention, asymmetric-pad down-sampling, nearest + conv up-sampling |
//! | [`bottleneck`] | the diagonal Gaussian posterior (KL) and the vector quantiser (VQ) |
//! | [`net`] | [`Encoder`], [`Decoder`], [`Autoencoder`] under LDM's variable names |
//! | [`model`] | [`AutoencoderModel`]: a network with its VarStore, the autoencoder folder, batched encode / decode |
//! | [`eval`] | reconstructions, PSNR, rFID; a dataset's latent cache ([`crate::data::latents`]) |
//! | [`loss`] | reconstruction, KL / VQ terms, the PatchGAN discriminator, hinge loss, adaptive weight |
//! | [`train`] | `msdiff autoencoder train`: configuration, state, step, checkpoints, exact resume, the loop |
//! | [`diffusers`] | import of diffusers `AutoencoderKL` / `VQModel` folders (config keys, weight names, `scaling_factor`) |
//!
//! Images are `[N, C, H, W]` in [-1, 1] with H and W multiples of the downsampling factor
//! `f = 2^(levels - 1)`; latents are `[N, embed_dim, H/f, W/f]`.
pub mod blocks;
pub mod bottleneck;
pub mod config;
pub mod diffusers;
pub mod eval;
pub mod loss;
pub mod model;
pub mod net;
pub mod train;

pub use config::{AeReport, AutoencoderConfig, Bottleneck, PRESETS};
pub use model::{AutoencoderModel, EncodeMode, Manifest};
pub use net::{Autoencoder, Decoder, Encoder};

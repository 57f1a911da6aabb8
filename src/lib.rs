//! msdiff: multi-stage diffusion models (Zhang et al., CVPR 2024) on libtorch.
//!
//! The layout follows the method's factorisation (k-diffusion's noise schedule x sampler x
//! denoiser, EDM's network / preconditioning / loss / loop split):
//!
//! | module | concept |
//! |---|---|
//! | [`process`] | noise processes (VP-SDE, discrete DDPM, EDM): t <-> sigma <-> log-SNR |
//! | [`objective`] | preconditioning, noise label, stage draws and the loss: the trainer's loss and the sampler's denoiser |
//! | [`denoiser`] | the denoiser abstraction; the exact optimal denoiser of a dataset |
//! | [`sampler`] | DDPM, DDIM, DPM-Solver(++), EDM Euler/Heun, all on any denoiser |
//! | [`cluster`] | timestep clustering (Algorithm 1) and the baseline splits |
//! | [`nn`] | layers and the multi-decoder U-Net |
//! | [`autoencoder`] | KL / VQ autoencoders for latent diffusion: LDM layout, diffusers import, training, latent caches |
//! | [`latent`] | latent diffusion: the `[latent]` record of a run on autoencoder latents, decoding its samples |
//! | [`model`] | a network with its variable store; a trained one loaded from a checkpoint |
//! | [`train`] | the training step and loop, optimiser, EMA, checkpoints |
//! | [`fid`] | Inception-v3 features and the Frechet distance |
//! | [`data`] | dataset readers and the built-in procedural dataset |
//! | [`io`] | .npy, PNG, atomic file writes |
//! | [`plot`] | small PNG line plots |
//! | [`rng`] | seeded, saveable random streams |
//! | [`runtime`] | devices and threads |
//! | [`dist`] | data-parallel training on libtorch's c10d (Gloo, NCCL) and `msdiff launch` |
//! | `shim` | the calling convention of the C++ shims in `csrc/` (c10d, fused Adam) |
//! | [`cli`] | the `msdiff` command line |

pub mod autoencoder;
mod names;

pub mod cli;
pub mod cluster;
pub mod data;
pub mod denoiser;
pub mod dist;
pub mod fid;
pub mod io;
pub mod latent;
pub mod model;
pub mod nn;
pub mod objective;
pub mod plot;
pub mod process;
pub mod rng;
pub mod runtime;
pub mod sampler;
mod shim;
pub mod train;

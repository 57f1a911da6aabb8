//! msdiff: multi-stage diffusion models (Zhang et al., CVPR 2024) on libtorch.
//!
//! The layout follows the method's factorisation (k-diffusion's noise schedule x sampler x
//! denoiser, EDM's network / preconditioning / loss / loop split):
//!
//! | module | concept |
//! |---|---|
//! | [`process`] | noise processes (VP-SDE, discrete DDPM, EDM): t <-> sigma <-> log-SNR |
//! | [`param`] | parameterisations: eps / x0 / v prediction, EDM preconditioning |
//! | [`denoiser`] | the denoiser abstraction; the exact optimal denoiser of a dataset |
//! | [`sampler`] | DDPM, DDIM, DPM-Solver(++), EDM Euler/Heun, all on any denoiser |
//! | [`cluster`] | timestep clustering (Algorithm 1) and the baseline splits |
//! | [`nn`] | layers and the multi-decoder U-Net |
//! | [`train`] | objectives, stage sampling, optimiser, EMA, checkpoints, the loop |
//! | [`fid`] | Inception-v3 features and the Frechet distance |
//! | [`data`] | dataset readers and the built-in procedural dataset |
//! | [`io`] | .npy, PNG, atomic file writes |
//! | [`plot`] | small PNG line plots |
//! | [`rng`] | seeded, saveable random streams |
//! | [`runtime`] | devices and threads |
//! | [`cli`] | the `msdiff` command line |

pub mod cli;
pub mod cluster;
pub mod data;
pub mod denoiser;
pub mod fid;
pub mod io;
pub mod nn;
pub mod param;
pub mod plot;
pub mod process;
pub mod rng;
pub mod runtime;
pub mod sampler;
pub mod train;

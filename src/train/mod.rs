//! Training: objectives, stage sampling, optimiser, EMA, checkpoints and the loop.
//!
//! | file | concept |
//! |---|---|
//! | [`config`] | the TOML run configuration and its resolution (presets, split, dataset) |
//! | [`objective`] | per-sample stage / time / noise draws and the loss |
//! | [`optim`] | Adam / AdamW with warm-up and grad-norm clipping; untouched parameters stay put |
//! | [`ema`] | exponential moving average of the weights |
//! | [`checkpoint`] | atomic safetensors + JSON checkpoints, keep-last-N, exact resume |
//! | [`trainer`] | the loop: progress bar, JSONL log, sample grids, Ctrl-C, NaN guard |

pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod objective;
pub mod network;
pub mod optim;
pub mod trainer;

pub use config::{ResolvedConfig, TrainConfig};
pub use trainer::{train, TrainOptions, TrainOutcome};

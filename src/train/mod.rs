//! Training: the step, the loop, optimiser, EMA and checkpoints (the loss itself is
//! [`crate::objective`]'s).
//!
//! | file | concept |
//! |---|---|
//! | [`config`] | the TOML run configuration and its resolution (presets, split, dataset) |
//! | [`augment`] | EDM's non-leaky augmentation pipeline and its labels |
//! | [`optim`] | Adam / AdamW with warm-up and grad-norm clipping; untouched parameters stay put |
//! | [`ema`] | exponential moving average of the weights |
//! | [`checkpoint`] | atomic safetensors + JSON checkpoints, keep-last-N, exact resume |
//! | [`state`] | what training holds (network, EMA, fp32 masters, Adam) and the one training step |
//! | [`metrics`] | the loss window behind `metrics.jsonl` |
//! | [`report`] | sample grids and the loss plot of a run |
//! | [`trainer`] | the loop: progress bar, JSONL log, checkpoints, Ctrl-C, NaN guard |

pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod metrics;
pub mod optim;
pub mod report;
pub mod state;
pub mod trainer;

pub use config::{ResolvedConfig, TrainConfig};
pub use state::{Batch, StepStats, TrainState, Update};
pub use trainer::{train, TrainOptions, TrainOutcome};

//! `msdiff import`: a run folder whose step-0 checkpoint holds weights made elsewhere.
use super::args::Global;
use crate::train::checkpoint;
use crate::train::config::{declared_shape, TrainConfig};
use crate::train::TrainState;
use anyhow::{ensure, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The weights: a safetensors state dict with the network's variable names (an official EDM
    /// checkpoint exported as docs/EDM.md shows: its `model.` prefix and resampling filters are handled).
    #[arg(long)]
    pub weights: PathBuf,
    /// The run configuration (TOML) whose [model] the weights belong to; its dataset is not read.
    #[arg(long)]
    pub config: PathBuf,
    /// The run folder to create: config.toml and checkpoints/step-00000000 (weights = EMA = the
    /// imported ones). `msdiff sample/eval/val-loss --model` read it; `msdiff train --resume` fine-tunes it.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(_g: &Global, a: ImportArgs) -> Result<i32> {
    let tc = TrainConfig::load(&a.config)?;
    let base = a.config.parent().unwrap_or(Path::new("."));
    let cfg = tc.resolve(base, declared_shape(&tc.model)?).with_context(|| format!("in {}", a.config.display()))?;
    let ckpts = a.out.join("checkpoints");
    ensure!(
        checkpoint::list(&ckpts)?.is_empty(),
        "{} already holds checkpoints: import into a new folder",
        a.out.display()
    );
    // Built on the CPU in fp32: the checkpoint stores fp32 weights whatever the run later uses.
    let mut state =
        TrainState::new(&cfg.model, &cfg.optim, crate::runtime::Precision::Fp32, cfg.train.seed, tch::Device::Cpu)?;
    state.import_weights(&a.weights)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    crate::io::atomic::write_atomic_bytes(&a.out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let ck = state.save(&ckpts, &cfg)?;
    println!("imported {} ({} parameters) -> {}", a.weights.display(), state.model.num_params(), ck.display());
    Ok(0)
}

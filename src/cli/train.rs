//! `msdiff train`: train from a TOML configuration, or resume a run.
use super::args::Global;
use crate::data::{self, Dataset, LoadOptions};
use crate::train::checkpoint;
use crate::train::config::DataConfig;
use crate::train::{trainer, ResolvedConfig, TrainConfig, TrainOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run configuration (TOML; see docs/CONFIG.md). Optional with --resume.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run folder (default: runs/<config name>).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Resume exactly from a checkpoint or run folder (its newest checkpoint).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Print the resolved configuration and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Override train.steps (e.g. to extend a resumed run).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override train.batch.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Override train.seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override train.precision: fp32 or bf16 (a run may resume in either; checkpoints hold fp32).
    #[arg(long, value_enum)]
    pub precision: Option<crate::runtime::Precision>,
    /// Do not write sample grids.
    #[arg(long)]
    pub no_samples: bool,
    /// Latent data: the autoencoder that encoded the cache, when it is no longer where the cache
    /// (or the resumed run) recorded it; like `[data] autoencoder`, and its fingerprint must match.
    #[arg(long)]
    pub autoencoder: Option<PathBuf>,
}

/// Load the dataset a `[data]` section names.
pub fn load_data(d: &DataConfig) -> Result<Dataset> {
    data::load(
        &d.spec,
        &LoadOptions {
            limit: (d.limit > 0).then_some(d.limit),
            resolution: d.resolution,
            count: d.count,
            ..Default::default()
        },
    )
}

pub fn run(g: &Global, a: TrainArgs) -> Result<i32> {
    // With --config the dataset is loaded here (its shape resolves the model) and reused below.
    // A resumed run continues in its own folder (<run>/checkpoints/step-N -> <run>) unless --run says otherwise.
    let resumed_dir = match &a.resume {
        Some(r) => {
            let ck = checkpoint::resolve(r)?;
            Some((checkpoint::run_dir(&ck), ck))
        }
        None => None,
    };
    let (mut cfg, run_dir, loaded): (ResolvedConfig, PathBuf, Option<Dataset>) = match (&a.config, &resumed_dir) {
        (Some(p), _) => {
            let tc = TrainConfig::load(p)?;
            let ds = load_data(&tc.data)?;
            let base = p.parent().unwrap_or(Path::new("."));
            let cfg = tc.resolve(base, ds.image_shape()).with_context(|| format!("in {}", p.display()))?;
            let stem = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
            let dir = match &resumed_dir {
                Some((d, _)) => d.clone(),
                None => Path::new("runs").join(stem),
            };
            (cfg, a.run.clone().unwrap_or(dir), Some(ds))
        }
        (None, Some((dir, ck))) => {
            // The trainer reads the tensors; only the configuration is needed here.
            let state = checkpoint::load_state(ck)?;
            (state.config, a.run.clone().unwrap_or_else(|| dir.clone()), None)
        }
        (None, None) => bail!("give --config FILE.toml (or --resume RUN to continue a run)"),
    };
    if a.resume.is_some() {
        // A resumed run is the same experiment: its batch and seed are fixed by the checkpoint.
        for (flag, given, kept) in
            [("--batch", a.batch.map(|b| b as u64), cfg.train.batch as u64), ("--seed", a.seed, cfg.train.seed)]
        {
            if let Some(v) = given.filter(|v| *v != kept) {
                bail!("{flag} {v} cannot change on resume: the run was trained with {kept}; drop {flag} (or start a new run)");
            }
        }
    }
    if a.config.is_none() {
        // Resumed from the checkpoint's record: the cache must still hold the latents it trained on.
        let now = crate::latent::LatentConfig::resolve(&cfg.data.spec, None, Path::new("."))?;
        match &cfg.latent {
            Some(rec) if !now.as_ref().is_some_and(|n| n.same_latents(rec)) => bail!(
                "the latent cache {} changed since this run started (another autoencoder, scale or shape than its [latent] record): restore the cache the run trained on, or start a new run",
                rec.cache
            ),
            Some(_) => {}
            // A latent run from before the [latent] record existed gains it.
            None => cfg.latent = now,
        }
    }
    match (cfg.latent.as_mut(), &a.autoencoder) {
        (Some(rec), Some(p)) => {
            rec.autoencoder = std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string()
        }
        (None, Some(p)) => bail!(
            "--autoencoder {} is for latent data (spec = \"latents:FILE\"), but this run trains on '{}'",
            p.display(),
            cfg.data.spec
        ),
        _ => {}
    }
    if let Some(rec) = &cfg.latent {
        // The autoencoder is checked before anything is printed or written (the trainer checks it
        // again on its device); a dry run checks it too.
        crate::latent::LatentDecoder::load(rec, None, &cfg.model, tch::Device::Cpu, crate::latent::Use::Train)?;
    }
    if let Some(s) = a.steps {
        cfg.train.steps = s;
    }
    if let Some(b) = a.batch {
        cfg.train.batch = b;
    }
    if let Some(s) = a.seed {
        cfg.train.seed = s;
    }
    if let Some(p) = a.precision {
        cfg.train.precision = p;
    }
    if cfg.train.steps == 0 || cfg.train.batch == 0 {
        bail!("train.steps and train.batch must be > 0");
    }
    let main = crate::dist::Env::from_env()?.is_none_or(|e| e.rank == 0);
    if main || a.dry_run {
        eprintln!("# resolved configuration\n{}", cfg.to_toml());
    }
    if a.dry_run {
        return Ok(0);
    }
    if a.resume.is_none() {
        if let Some((step, _)) = checkpoint::list(&run_dir.join("checkpoints"))?.last() {
            bail!(
                "run folder {} already holds checkpoints (newest: step {step}); continue it with `msdiff train --resume {}`, or give another --run (or remove the folder)",
                run_dir.display(),
                run_dir.display()
            );
        }
    }
    let data = match loaded {
        Some(d) => d,
        None => load_data(&cfg.data)?,
    };
    let (device, group) = g.join_group()?;
    trainer::install_ctrlc();
    match group {
        None => eprintln!("msdiff: training on {device:?} with {} images; run folder {}", data.len(), run_dir.display()),
        Some(gr) if gr.rank == 0 => eprintln!(
            "msdiff: training on {} ranks ({}, rank 0 on {device:?}), global batch {} ({} per rank), {} images; run folder {}",
            gr.world,
            gr.backend,
            cfg.train.batch,
            cfg.train.batch / gr.world,
            data.len(),
            run_dir.display()
        ),
        Some(_) => {}
    }
    let out = trainer::train(
        &cfg,
        &data,
        &TrainOptions {
            run_dir: run_dir.clone(),
            resume: a.resume.clone(),
            device,
            progress: !g.quiet,
            stop_after: None,
            write_samples: !a.no_samples,
        },
    )?;
    if !crate::dist::is_main() {
        return Ok(if out.interrupted { 130 } else { 0 });
    }
    if out.interrupted {
        println!(
            "interrupted at step {}; checkpoint saved to {}; continue with: msdiff train --resume {}",
            out.step,
            out.checkpoint.display(),
            run_dir.display()
        );
        return Ok(130);
    }
    println!("trained to step {} in {:.1} s; checkpoint {}", out.step, out.seconds, out.checkpoint.display());
    Ok(0)
}

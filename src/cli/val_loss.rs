//! `msdiff val-loss`: per-interval validation loss of checkpoints on held-out images.
use super::args::{progress, Global};
use crate::cluster::Split;
use crate::data::{self, LoadOptions};
use crate::model::Loaded;
use crate::objective::validation::{interval_losses, ValidationOptions};
use crate::train::checkpoint;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use tch::Tensor;

#[derive(Args, Debug)]
pub struct ValLossArgs {
    /// A checkpoint (`.../checkpoints/step-N`) or a run folder (its newest checkpoint; with --all, every one).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Score every checkpoint of the run folder, oldest first.
    #[arg(long)]
    pub all: bool,
    /// Held-out images (a dataset spec, e.g. fashion-mnist:test; see `msdiff --help`). They must
    /// have the model's shape.
    #[arg(long)]
    pub data: String,
    /// Use at most this many images (the first ones).
    #[arg(long, default_value_t = 2000)]
    pub limit: usize,
    /// The intervals: a split file from `msdiff cluster`. Default: the model's own stages. Give
    /// the same split to every model you compare (a unified model has no stages of its own).
    #[arg(long, conflicts_with = "cuts")]
    pub split: Option<PathBuf>,
    /// The intervals as cuts in VP-SDE time t, e.g. 0.442,0.631 (mapped to noise levels as split files are).
    #[arg(long, value_delimiter = ',')]
    pub cuts: Option<Vec<f64>>,
    /// Seed of the per-(image, interval) time and noise draws: the same seed gives every
    /// checkpoint the same noisy inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per batch (results do not depend on it).
    #[arg(long, default_value_t = 250)]
    pub batch: usize,
    /// Score the raw weights instead of the EMA weights.
    #[arg(long)]
    pub raw: bool,
    /// Append one JSON line per checkpoint to this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Also write every image's loss per interval, `[K, n]` f64, to DIR/RUN/step-N.npy (RUN: the
    /// checkpoint's run folder name): two models scored with the same --seed and images pair up
    /// image by image, so the standard error of their difference can be computed.
    #[arg(long, value_name = "DIR")]
    pub per_image: Option<PathBuf>,
}

pub fn run(g: &Global, a: ValLossArgs) -> Result<i32> {
    let device = g.device()?;
    ensure!(a.batch >= 1, "--batch must be at least 1");
    ensure!(a.limit >= 2, "--limit must be at least 2");
    let checkpoints: Vec<PathBuf> = if a.all {
        let list = checkpoint::list(&a.checkpoint.join("checkpoints"))?;
        if list.is_empty() {
            bail!("{} has no checkpoints/ folder with checkpoints (--all takes a run folder)", a.checkpoint.display());
        }
        list.into_iter().map(|(_, p)| p).collect()
    } else {
        vec![checkpoint::resolve(&a.checkpoint)?]
    };
    // The intervals, as VP-SDE time cuts (the convention of split files), mapped like splits are.
    let explicit_t: Option<Vec<f64>> = match (&a.split, &a.cuts) {
        (Some(p), _) => Some(Split::load(p)?.boundaries_t),
        (None, Some(c)) => {
            ensure!(
                !c.is_empty() && c.iter().all(|t| *t > 0.0 && *t < 1.0) && c.windows(2).all(|w| w[0] < w[1]),
                "--cuts must be increasing VP-SDE times in (0, 1), got {c:?}"
            );
            Some(c.clone())
        }
        (None, None) => None,
    };
    let ds = data::load(&a.data, &LoadOptions { limit: Some(a.limit), ..Default::default() })?;
    let mut log = match &a.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open --log {}", p.display()))?,
        ),
        None => None,
    };
    for ckpt in checkpoints {
        let l = Loaded::from_checkpoint(&ckpt, device, !a.raw)?;
        if let Some(rec) = &l.config.latent {
            check_held_out_latents(&a.data, rec)?;
        }
        let [c, h, w] = ds.image_shape();
        let m = &l.config.model;
        ensure!(
            (c as usize, h as usize, w as usize) == (m.in_channels, m.resolution, m.resolution),
            "the images of '{}' are {c}x{h}x{w} but the model expects {}x{}x{}",
            a.data,
            m.in_channels,
            m.resolution,
            m.resolution
        );
        let objective = l.config.build_objective()?;
        let cuts_sigma: Vec<f64> = match &explicit_t {
            Some(t) => {
                let vp = crate::process::ProcessConfig::default();
                Split::from_t(crate::cluster::Method::Uniform, t.clone(), &vp)?.boundaries_sigma
            }
            None => {
                ensure!(
                    !objective.boundaries_sigma.is_empty(),
                    "{} has one stage: give --split or --cuts to choose the intervals",
                    ckpt.display()
                );
                objective.boundaries_sigma.clone()
            }
        };
        let bar = progress(ds.len() as u64, "val-loss", g.quiet);
        let r = interval_losses(
            &l.network.net,
            &objective,
            &l.config.objective,
            &ds.images,
            &ValidationOptions { cuts_sigma, seed: a.seed, batch: a.batch, device },
            |k| bar.set_position(k as u64),
        )
        .with_context(|| format!("scoring {}", ckpt.display()))?;
        bar.finish_and_clear();
        let cells: Vec<String> = r.loss.iter().zip(&r.stderr).map(|(l, s)| format!("{l:.5} +- {s:.5}")).collect();
        println!("{} (step {}, {}): {}", ckpt.display(), l.step, if a.raw { "raw" } else { "EMA" }, cells.join(" | "));
        let per_image = match &a.per_image {
            Some(dir) => {
                let run_dir = crate::train::checkpoint::run_dir(&ckpt);
                let run = run_dir.file_name().unwrap_or_default();
                let path = dir.join(run).join(format!("step-{}.npy", l.step));
                crate::io::ensure_parent_dir(&path)?;
                let rows: Vec<Tensor> = r.per_image.iter().map(|v| Tensor::from_slice(v)).collect();
                crate::io::write_npy(&path, &Tensor::stack(&rows, 0))?;
                Some(path)
            }
            None => None,
        };
        if let Some(f) = log.as_mut() {
            let line = serde_json::json!({
                "checkpoint": ckpt, "step": l.step, "weights": if a.raw { "raw" } else { "ema" },
                "data": a.data, "t_edges": r.t_edges, "loss": r.loss, "stderr": r.stderr, "n": r.n, "seed": r.seed,
                "per_image": per_image,
            });
            writeln!(f, "{line}").context("cannot write --log")?;
        }
    }
    Ok(0)
}

/// A model trained on latents is scored on held-out latents of the same autoencoder, shifted and
/// scaled as its training latents were.
fn check_held_out_latents(spec: &str, rec: &crate::latent::LatentConfig) -> Result<()> {
    let how = format!(
        "encode the held-out images with `msdiff autoencoder encode --model {} --data D --scale-factor {} --out FILE.safetensors` and give --data latents:FILE",
        rec.autoencoder, rec.scale_factor
    );
    match crate::latent::LatentConfig::resolve(spec, None, std::path::Path::new("."))? {
        None => anyhow::bail!("this model was trained on latents, but --data {spec} holds images: {how}"),
        Some(h)
            if (h.fingerprint.as_str(), h.scale_factor, h.shift_factor)
                != (rec.fingerprint.as_str(), rec.scale_factor, rec.shift_factor) =>
        {
            anyhow::bail!(
                "--data {spec} holds latents of autoencoder {} scaled by {} (shift {}), but this model trained on latents of {} scaled by {} (shift {}): {how}",
                h.fingerprint,
                h.scale_factor,
                h.shift_factor,
                rec.fingerprint,
                rec.scale_factor,
                rec.shift_factor
            )
        }
        Some(_) => Ok(()),
    }
}

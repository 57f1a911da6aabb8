//! `msdiff cluster`: stage boundaries for a dataset.
use super::args::{parse_number, progress, Global};
use crate::cluster::optimal::{agreement_curves, algorithm1_cuts, stage_cuts, DataScale, OptimalOptions};
use crate::cluster::report::{binned, plot_curves};
use crate::cluster::{self, Method, Split};
use crate::data::{self, LoadOptions};
use crate::denoiser::OptimalDenoiser;
use crate::process::ProcessConfig;
use anyhow::{ensure, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Dataset (see `msdiff --help`): Algorithm 1's data (default builtin), or the images whose
    /// gradients --method gradient compares (default: the run's own dataset).
    #[arg(long)]
    pub data: Option<String>,
    /// Use at most this many images.
    #[arg(long)]
    pub data_limit: Option<usize>,
    /// Number of stages (2 to 64, `cluster::MAX_STAGES`).
    #[arg(long, default_value_t = 3)]
    pub stages: usize,
    /// How the cuts are chosen: optimal (Algorithm 1), uniform (equal t intervals), snr (log-SNR
    /// programme), or the paper's Table 4 baselines of Go et al.: timestep (distance to the
    /// interval's median) and gradient (gradient similarity of a trained run; needs --checkpoint).
    #[arg(long, value_enum, default_value_t = Method::Optimal)]
    pub method: Method,
    /// --method gradient: a trained run (all its checkpoints) or checkpoint folders, repeatable;
    /// the similarities are averaged over them. They must share one architecture.
    #[arg(long)]
    pub checkpoint: Vec<PathBuf>,
    /// --method gradient: images in the fixed batch every gradient is taken on.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Algorithm 1 threshold alpha in (0, 1] (not published; see docs/CLUSTERING.md).
    #[arg(long, default_value_t = 0.9)]
    pub alpha: f64,
    /// Per-pixel tolerance eta (a fraction like 2/255 is accepted; official: 2/255 on [0,1] data).
    #[arg(long, default_value = "2/255")]
    pub eta: String,
    /// Monte-Carlo samples K.
    #[arg(long, default_value_t = 5000)]
    pub samples: usize,
    /// Seed of the Monte-Carlo draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data scale seen by the denoiser (Algorithm 1).
    #[arg(long, value_enum, default_value_t = DataScale::Unit)]
    pub scale: DataScale,
    /// Smallest t drawn (official 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    pub t_min: f64,
    /// Algorithm 1's posterior means: mixed (f32, with f64 exactly where an S0/S1 decision could
    /// differ from f64's) or f64 (everything in f64: the slower check; same cuts).
    #[arg(long, value_enum, default_value_t = crate::denoiser::optimal::Arithmetic::Mixed)]
    pub precision: crate::denoiser::optimal::Arithmetic,
    /// Grid points of the interval programmes: default 1000 (snr, timestep: the discrete steps)
    /// or 100 (gradient, as Go et al. and the paper's authors).
    #[arg(long)]
    pub grid: Option<usize>,
    /// Output split file (JSON, referenced by training configs as stages.split).
    #[arg(long, default_value = "split.json")]
    pub out: PathBuf,
    /// Plot of S0(t), S1(t), their running means, alpha and the cuts (optimal only).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn run(g: &Global, a: ClusterArgs) -> Result<i32> {
    let method = a.method;
    let grid = a.grid.unwrap_or(if method == Method::Gradient { 100 } else { 1000 });
    // The interval programmes are quadratic in their grid.
    ensure!(grid <= 100_000, "--grid must be at most 100000 (the programme is quadratic in it), got {grid}");
    ensure!(
        method == Method::Gradient || a.checkpoint.is_empty(),
        "--checkpoint applies to --method gradient only (got --method {method})"
    );
    let vp = ProcessConfig::default();
    let process = vp.build()?;
    let began = Instant::now();
    let split = match method {
        Method::Uniform => Split::from_t(method, cluster::uniform_cuts(a.stages)?, &vp)?,
        Method::Snr => {
            let mut s = Split::from_t(method, cluster::snr::snr_cuts(&process, a.stages, grid)?, &vp)?;
            s.details = json!({"grid": grid, "interval_sizes": cluster::snr::size_bounds(grid, a.stages)});
            s
        }
        Method::Timestep => {
            let mut s = Split::from_t(method, cluster::timestep::timestep_cuts(a.stages, grid)?, &vp)?;
            s.details = json!({"grid": grid, "interval_sizes": cluster::timestep::size_bounds(grid, a.stages)});
            s
        }
        Method::Gradient => {
            ensure!(
                !a.checkpoint.is_empty(),
                "--method gradient needs --checkpoint RUN (a trained run, or checkpoint folders) whose gradients it compares"
            );
            cluster::check_stages(a.stages)?;
            ensure!(grid >= 2 * a.stages, "--grid {grid} is too small for {} stages", a.stages);
            // Every checkpoint of a run folder (its checkpoints/ folder), or the folders given.
            let mut ckpts = Vec::new();
            for p in &a.checkpoint {
                let listed = crate::train::checkpoint::list(&p.join("checkpoints"))?;
                if listed.is_empty() {
                    ckpts.push(crate::train::checkpoint::resolve(p)?);
                } else {
                    ckpts.extend(listed.into_iter().map(|(_, d)| d));
                }
            }
            let state = crate::train::checkpoint::load_state(&ckpts[0])?;
            let spec = a.data.clone().unwrap_or_else(|| state.config.data.spec.clone());
            let opts = LoadOptions {
                limit: a.data_limit,
                count: state.config.data.count,
                resolution: state.config.data.resolution,
                ..Default::default()
            };
            let ds = data::load(&spec, &opts)?;
            cluster::gradient::check_checkpoints(&ckpts, &ds)?;
            if !g.quiet {
                eprintln!(
                    "msdiff: gradient similarity of {} checkpoint(s) at {grid} timesteps on {} images of '{spec}'",
                    ckpts.len(),
                    a.batch
                );
            }
            let bar = progress((ckpts.len() * grid) as u64, "gradients", g.quiet);
            let sim = cluster::gradient::gradient_similarity(&ckpts, &ds, grid, a.batch, a.seed, g.device()?, |k| {
                bar.set_position(k as u64)
            })?;
            bar.finish_and_clear();
            let starts = cluster::gradient::similarity_cuts(&sim, a.stages)?;
            let cuts: Vec<f64> = starts.iter().map(|&i| (i + 1) as f64 / grid as f64).collect();
            let mut s = Split::from_t(method, cuts, &vp)?;
            s.details = json!({
                "checkpoints": ckpts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "dataset": spec, "batch": a.batch, "grid": grid, "seed": a.seed,
                "interval_sizes": cluster::timestep::size_bounds(grid, a.stages),
                "seconds": began.elapsed().as_secs_f64(), "similarity": sim,
            });
            s
        }
        Method::Optimal => {
            let opts = OptimalOptions {
                alpha: a.alpha,
                eta: parse_number(&a.eta)?,
                samples: a.samples,
                seed: a.seed,
                scale: a.scale,
                t_min: a.t_min,
                arithmetic: a.precision,
            };
            opts.validate(a.stages)?;
            let spec = a.data.as_deref().unwrap_or("builtin");
            let ds = data::load(spec, &LoadOptions { limit: a.data_limit, ..Default::default() })?;
            let [n, c, h, w] = ds.shape();
            OptimalDenoiser::ensure_fits_memory(n, c * h * w)?;
            eprintln!("msdiff: Algorithm 1 on '{spec}' ({n} images of {c}x{h}x{w}), K = {}", opts.samples);
            let bar = progress(opts.samples as u64, "cluster", g.quiet);
            let curves = agreement_curves(&ds.images, &process, &opts, g.device()?, |k| bar.set_position(k as u64))?;
            bar.finish_and_clear();
            let (t1, t2) = algorithm1_cuts(&curves, opts.alpha)?;
            let cuts = stage_cuts(&process, t1, t2, a.stages)?;
            let mut s = Split::from_t(method, cuts, &vp)?;
            s.details = json!({
                "dataset": spec, "images": n, "algorithm1_cuts": [t1, t2], "options": opts,
                "seconds": began.elapsed().as_secs_f64(), "curves": binned(&curves, 100),
            });
            if let Some(p) = &a.plot {
                plot_curves(p, &curves, &opts, &s)?;
            }
            s
        }
    };
    split.save(&a.out)?;
    println!("{} split, {} stages -> {}", a.method, split.stages, a.out.display());
    println!("  t (VP):          {}", fmt(&split.boundaries_t, 4));
    println!("  sigma (EDM):     {}", fmt(&split.boundaries_sigma, 4));
    println!("  DDPM step:       {}", fmt(&split.boundaries_ddpm_step, 1));
    println!("  time:            {:.1} s", began.elapsed().as_secs_f64());
    if let Some(p) = &a.plot {
        if method == Method::Optimal {
            println!("  plot:            {}", p.display());
        } else {
            eprintln!("msdiff: --plot applies to --method optimal only; no plot written");
        }
    }
    Ok(0)
}

fn fmt(v: &[f64], digits: usize) -> String {
    v.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(", ")
}

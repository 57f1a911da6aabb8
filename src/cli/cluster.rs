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
    /// Dataset (see `msdiff --help`); needed by --method optimal.
    #[arg(long, default_value = "builtin")]
    pub data: String,
    /// Use at most this many images.
    #[arg(long)]
    pub data_limit: Option<usize>,
    /// Number of stages (2 to 64, `cluster::MAX_STAGES`).
    #[arg(long, default_value_t = 3)]
    pub stages: usize,
    /// How the cuts are chosen.
    #[arg(long, value_enum, default_value_t = Method::Optimal)]
    pub method: Method,
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
    /// Grid points of the SNR dynamic programme.
    #[arg(long, default_value_t = 1000)]
    pub grid: usize,
    /// Output split file (JSON, referenced by training configs as stages.split).
    #[arg(long, default_value = "split.json")]
    pub out: PathBuf,
    /// Plot of S0(t), S1(t), their running means, alpha and the cuts (optimal only).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn run(g: &Global, a: ClusterArgs) -> Result<i32> {
    let method = a.method;
    // The SNR programme is quadratic in its grid.
    ensure!(a.grid <= 100_000, "--grid must be at most 100000 (the programme is quadratic in it), got {}", a.grid);
    let vp = ProcessConfig::default();
    let process = vp.build()?;
    let began = Instant::now();
    let split = match method {
        Method::Uniform => Split::from_t(method, cluster::uniform_cuts(a.stages)?, &vp)?,
        Method::Snr => {
            let mut s = Split::from_t(method, cluster::snr::snr_cuts(&process, a.stages, a.grid)?, &vp)?;
            s.details = json!({"grid": a.grid, "interval_sizes": cluster::snr::size_bounds(a.grid, a.stages)});
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
            };
            opts.validate(a.stages)?;
            let ds = data::load(&a.data, &LoadOptions { limit: a.data_limit, ..Default::default() })?;
            let [n, c, h, w] = ds.shape();
            OptimalDenoiser::ensure_fits_memory(n, c * h * w)?;
            eprintln!("msdiff: Algorithm 1 on '{}' ({n} images of {c}x{h}x{w}), K = {}", a.data, opts.samples);
            let bar = progress(opts.samples as u64, "cluster", g.quiet);
            let curves = agreement_curves(&ds.images, &process, &opts, g.device()?, |k| bar.set_position(k as u64))?;
            bar.finish_and_clear();
            let (t1, t2) = algorithm1_cuts(&curves, opts.alpha)?;
            let cuts = stage_cuts(&process, t1, t2, a.stages)?;
            let mut s = Split::from_t(method, cuts, &vp)?;
            s.details = json!({
                "dataset": a.data, "images": n, "algorithm1_cuts": [t1, t2], "options": opts,
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

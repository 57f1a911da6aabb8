//! `msdiff fid stats|calc` and `msdiff eval`: FID with the TF Inception-v3 (2015-12-05) network,
//! computed natively. Every number printed names the network, the resize and the image counts.
use super::args::{first_n_seeds, parse_seeds, progress, Global, SamplerArgs};
use crate::data::{self, LoadOptions};
use crate::fid::{self, FidInception, FidStats};
use crate::model::Loaded;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

#[derive(Args, Debug)]
pub struct FidArgs {
    #[command(subcommand)]
    pub what: FidWhat,
}

#[derive(Args, Debug, Clone)]
pub struct Source {
    /// Images: a folder of PNG/JPEG files or an .npy file ([N,C,H,W] in [-1,1] or uint8).
    #[arg(long, conflicts_with = "data")]
    pub images: Option<PathBuf>,
    /// A dataset spec instead (e.g. fashion-mnist, fetched by scripts/fetch-assets).
    #[arg(long)]
    pub data: Option<String>,
    /// Use at most this many images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Pad every image by this many pixels on each side with -1 (black), e.g. 2 to compare Fashion-MNIST's
    /// 28x28 images with the 32x32 images of a model trained on them padded (a latent model's autoencoder).
    #[arg(long, default_value_t = 0)]
    pub pad: usize,
}

#[derive(Args, Debug, Clone)]
pub struct Net {
    /// FID Inception weights (safetensors or TorchScript); default $MSDIFF_FID_WEIGHTS, else the copy from scripts/fetch-assets fid-weights.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Images per network batch.
    #[arg(long, default_value_t = 50)]
    pub fid_batch: usize,
}

#[derive(Subcommand, Debug)]
pub enum FidWhat {
    /// Feature statistics (mean, covariance) of a set of images, saved as safetensors.
    Stats {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        net: Net,
        /// Output statistics file.
        #[arg(long)]
        out: PathBuf,
        /// Also write the raw [N, 2048] features as .npy.
        #[arg(long)]
        features_out: Option<PathBuf>,
    },
    /// FID of a set of images (or of saved statistics) against reference statistics.
    Calc {
        #[command(flatten)]
        source: Source,
        /// Saved statistics instead of images.
        #[arg(long, conflicts_with_all = ["images", "data"])]
        stats: Option<PathBuf>,
        #[command(flatten)]
        net: Net,
        /// Reference statistics (from `msdiff fid stats`).
        #[arg(long = "ref")]
        reference: PathBuf,
    },
}

pub fn load_net(n: &Net, device: Device) -> Result<FidInception> {
    let path = match &n.weights {
        Some(p) => p.clone(),
        None => fid::inception::default_weights()?,
    };
    FidInception::load(path, device)
}

fn load_images(s: &Source) -> Result<(Tensor, String)> {
    let (spec, name) = match (&s.images, &s.data) {
        (Some(p), _) => (p.display().to_string(), p.display().to_string()),
        (None, Some(d)) => (d.clone(), d.clone()),
        (None, None) => anyhow::bail!("give --images DIR|FILE.npy or --data SPEC"),
    };
    anyhow::ensure!(
        s.limit.is_none_or(|l| l >= 2),
        "--limit must be at least 2 (FID statistics need 2 or more images)"
    );
    anyhow::ensure!(s.pad <= 4096, "--pad {} is too large", s.pad);
    let ds = data::load(&spec, &LoadOptions { limit: s.limit, ..Default::default() })?;
    if s.pad > 0 {
        return Ok((crate::autoencoder::eval::pad_images(&ds.images, s.pad), format!("{name} padded by {}", s.pad)));
    }
    Ok((ds.images, name))
}

/// [`fid::stats_of_images`] with a progress bar.
fn stats_of(
    net: &FidInception,
    images: &Tensor,
    batch: usize,
    quiet: bool,
    features_out: Option<&Path>,
) -> Result<FidStats> {
    let bar = progress(images.size()[0] as u64, "fid", quiet);
    let stats = fid::stats_of_images(net, images, batch, features_out, |k| bar.set_position(k as u64))?;
    bar.finish_and_clear();
    Ok(stats)
}

fn describe(n_a: u64, n_b: u64) -> String {
    format!("{}, resize {}, N = {n_a} vs {n_b}", fid::inception::NETWORK_NAME, fid::inception::RESIZE_NAME)
}

pub fn run(g: &Global, a: FidArgs) -> Result<i32> {
    let device = g.device()?;
    match a.what {
        FidWhat::Stats { source, net, out, features_out } => {
            let (images, name) = load_images(&source)?;
            let stats = stats_of(&load_net(&net, device)?, &images, net.fid_batch, g.quiet, features_out.as_deref())?;
            // (FID reports carry the same warning for both sides: `fid calc`, `eval`.)
            if let Some(w) = stats.rank_warning() {
                eprintln!("msdiff: warning: {w}");
            }
            stats.save(&out)?;
            println!(
                "statistics of {} images of {name} -> {} ({}, resize {})",
                stats.n,
                out.display(),
                fid::inception::NETWORK_NAME,
                fid::inception::RESIZE_NAME
            );
        }
        FidWhat::Calc { source, stats, net, reference } => {
            anyhow::ensure!(
                stats.is_some() || source.images.is_some() || source.data.is_some(),
                "give what to score: --stats FILE.safetensors, --images DIR|FILE.npy or --data SPEC"
            );
            let r = FidStats::load(&reference)?;
            let s = match stats {
                Some(p) => FidStats::load(&p)?,
                None => {
                    let (images, _) = load_images(&source)?;
                    let n = load_net(&net, device)?;
                    stats_of(&n, &images, net.fid_batch, g.quiet, None)?
                }
            };
            let rep = fid::frechet_distance_report(&s, &r)?;
            for w in &rep.warnings {
                eprintln!("msdiff: warning: {w}");
            }
            println!("FID {:.4} ({}; reference {})", rep.fid, describe(s.n, r.n), reference.display());
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint or run folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Reference statistics (from `msdiff fid stats`).
    #[arg(long = "ref")]
    pub reference: PathBuf,
    /// Number of images to sample (seeds 0..n-1; ignored when --seeds is given).
    #[arg(long, default_value_t = 10_000)]
    pub n: usize,
    /// Per-image seeds, e.g. 10000-19999 (default 0..n-1); their count is the number of images.
    #[arg(long)]
    pub seeds: Option<String>,
    /// Images per sampling batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub net: Net,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    pub raw: bool,
    /// Network precision: fp32 or bf16 (bf16 weights and activations; noise, solver and output in f32).
    #[arg(long, value_enum, default_value_t = crate::runtime::Precision::Fp32)]
    pub precision: crate::runtime::Precision,
    /// Append the result as a JSON line to this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// A model trained on latents (whose samples are decoded before the FID): its autoencoder, when
    /// it is no longer where the run recorded it (its fingerprint must match the run's record).
    #[arg(long)]
    pub autoencoder: Option<PathBuf>,
}

pub fn run_eval(g: &Global, a: EvalArgs) -> Result<i32> {
    // Launched data-parallel (msdiff launch / torchrun), each rank samples a contiguous share of
    // the seeds and the Inception features are gathered, so N ranks give one process's FID.
    let (device, group) = g.join_group()?;
    let main = group.is_none_or(|gr| gr.rank == 0);
    let sampler = a.sampler.config()?;
    let seeds = match &a.seeds {
        Some(s) => parse_seeds(s)?,
        None => first_n_seeds(a.n)?,
    };
    let precision = a.precision;
    // Opened now, so that an unusable --log fails before the sampling and the FID, not after.
    let mut log = match &a.log {
        Some(p) if main => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open the log {}", p.display()))?,
        ),
        _ => None,
    };
    let r = FidStats::load(&a.reference)?;
    let net = load_net(&a.net, device)?;
    let l = Loaded::from_checkpoint(&a.checkpoint, device, !a.raw)?.with_precision(precision);
    // A latent model's samples are decoded by its autoencoder: the FID is of the decoded images.
    let decoder = l.latent_decoder(a.autoencoder.as_deref(), device)?;
    let (lo, hi) = match group {
        Some(gr) => {
            anyhow::ensure!(
                seeds.len() >= gr.world,
                "{} seeds cannot be spread over {} ranks; evaluate at least as many images as ranks",
                seeds.len(),
                gr.world
            );
            (seeds.len() * gr.rank / gr.world, seeds.len() * (gr.rank + 1) / gr.world)
        }
        None => (0, seeds.len()),
    };
    let quiet = g.quiet || !main;
    let t0 = std::time::Instant::now();
    let bar = progress((hi - lo) as u64, "sample", quiet);
    let out =
        crate::latent::sample_images(&l, decoder.as_ref(), &sampler, &seeds[lo..hi], a.batch, None, device, |k| {
            bar.set_position(k as u64)
        })?;
    let (x, nfe) = (out.images, out.nfe);
    bar.finish_and_clear();
    let sample_s = t0.elapsed().as_secs_f64();
    let s = match group {
        None => stats_of(&net, &x, a.net.fid_batch, g.quiet, None)?,
        Some(gr) => {
            let bar = progress((hi - lo) as u64, "fid", quiet);
            let f =
                fid::features(&net, &fid::inception::pm1_to_u8(&x), a.net.fid_batch, |k| bar.set_position(k as u64))?;
            bar.finish_and_clear();
            // Every rank's features in seed order: zeros elsewhere, summed over the ranks.
            let on = if gr.backend == crate::dist::BackendChoice::Nccl { device } else { Device::Cpu };
            let mut all = Tensor::zeros([seeds.len() as i64, f.size()[1]], (f.kind(), on));
            all.narrow(0, lo as i64, (hi - lo) as i64).copy_(&f);
            gr.all_reduce_sum(&mut all)?;
            if !main {
                return Ok(0);
            }
            fid::stats_of_features(&all.to_device(Device::Cpu))?
        }
    };
    let rep = fid::frechet_distance_report(&s, &r)?;
    for w in &rep.warnings {
        eprintln!("msdiff: warning: {w}");
    }
    println!(
        "FID {:.4} at step {} ({} {nfe} NFE, {} weights, {}{}; {}; reference {})",
        rep.fid,
        l.step,
        sampler.kind.name(),
        if a.raw { "raw" } else { "EMA" },
        precision,
        decoder.as_ref().map(|d| format!(", latents decoded by {}", d.path.display())).unwrap_or_default(),
        describe(s.n, r.n),
        a.reference.display()
    );
    if let Some(f) = &mut log {
        use std::io::Write;
        let line = json!({
            "checkpoint": a.checkpoint, "step": l.step, "fid": rep.fid, "n": s.n, "n_ref": r.n, "sampler": sampler, "nfe": nfe,
            "ema": !a.raw, "network": fid::inception::NETWORK_NAME, "resize": fid::inception::RESIZE_NAME,
            "reference": a.reference, "sample_seconds": sample_s, "precision": precision,
            "seeds": a.seeds.clone().unwrap_or_else(|| format!("0-{}", a.n - 1)),
            "autoencoder": decoder.as_ref().map(|d| d.path.display().to_string()),
        });
        writeln!(f, "{line}")
            .with_context(|| format!("cannot write the log {}", a.log.as_deref().unwrap_or(Path::new("")).display()))?;
    }
    Ok(0)
}

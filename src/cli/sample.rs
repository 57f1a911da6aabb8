//! `msdiff sample`: any sampler on a checkpoint or on a dataset's optimal denoiser.
use super::args::{first_n_seeds, parse_seeds, progress, Global, SamplerArgs};
use crate::data::{self, LoadOptions};
use crate::denoiser::{Denoiser, OptimalDenoiser};
use crate::latent::LatentDecoder;
use crate::model::Loaded;
use crate::process::Process;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// `optimal` (the exact optimal denoiser of --data) or a checkpoint / run folder.
    #[arg(long)]
    pub model: String,
    /// Dataset for --model optimal (see `msdiff --help` for specs).
    #[arg(long, default_value = "builtin")]
    pub data: String,
    /// Use at most this many images of --data.
    #[arg(long)]
    pub data_limit: Option<usize>,
    /// Noise process for --model optimal (with its default settings).
    #[arg(long, value_enum, default_value_t = crate::process::ProcessName::Vp)]
    pub process: crate::process::ProcessName,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Per-image seeds, e.g. 0-63 or 1,5,9 (image i uses its own noise stream).
    #[arg(long)]
    pub seeds: Option<String>,
    /// Number of images when --seeds is not given (seeds 0..n-1).
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Images per batch (results do not depend on it).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Initial noise x_T as .npy [N, C, H, W] (standard normal, process space) to compare with other tools.
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    pub raw: bool,
    /// Network precision: fp32 or bf16 (bf16 weights and activations; noise, solver and output in f32).
    #[arg(long, value_enum, default_value_t = crate::runtime::Precision::Fp32)]
    pub precision: crate::runtime::Precision,
    /// Output folder: samples.npy (clipped to [-1, 1], what the PNGs show; fid stats/calc read it), raw.npy
    /// (the solver's unclipped output), grid.png, images/NNNNNN.png. A model trained on latents: the
    /// images are decoded by its autoencoder, raw.npy holds the latents.
    #[arg(long, default_value = "samples")]
    pub out: PathBuf,
    /// A model trained on latents: the autoencoder that decodes them, when it is no longer where the
    /// run recorded it (its fingerprint must match the run's record).
    #[arg(long)]
    pub autoencoder: Option<PathBuf>,
    /// Skip the individual PNGs.
    #[arg(long)]
    pub no_images: bool,
}

enum Source {
    Optimal(OptimalDenoiser, Tensor, Process),
    Checkpoint(Box<Loaded>, Option<Box<LatentDecoder>>),
}

pub fn run(g: &Global, a: SampleArgs) -> Result<i32> {
    let device = g.device()?;
    let sampler = a.sampler.config()?;
    ensure!(a.batch > 0, "--batch must be > 0");
    let init = match &a.init_noise {
        Some(p) => {
            Some(crate::io::npy::read_npy(p).with_context(|| format!("cannot use --init-noise {}", p.display()))?)
        }
        None => None,
    };
    let seeds: Vec<u64> = match (&a.seeds, &init) {
        (Some(s), _) => parse_seeds(s)?,
        (None, Some(t)) => (0..t.size()[0] as u64).collect(),
        (None, None) => first_n_seeds(a.n)?,
    };
    // Build the denoiser.
    let source = if a.model == "optimal" {
        ensure!(a.autoencoder.is_none(), "--autoencoder is for a model trained on latents, not for --model optimal");
        let ds = data::load(&a.data, &LoadOptions { limit: a.data_limit, ..Default::default() })?;
        eprintln!("msdiff: optimal denoiser of '{}' ({} images of {:?})", a.data, ds.len(), ds.image_shape());
        let process = a.process.config().build()?;
        Source::Optimal(OptimalDenoiser::new(&ds.images, device)?, ds.images.shallow_clone(), process)
    } else {
        let l = Loaded::from_checkpoint(Path::new(&a.model), device, !a.raw)?.with_precision(a.precision);
        // A latent model: its autoencoder, checked before anything is sampled.
        let decoder = l.latent_decoder(a.autoencoder.as_deref(), device)?;
        eprintln!(
            "msdiff: checkpoint at step {} ({} weights, {} stage(s))",
            l.step,
            if a.raw { "raw" } else { "EMA" },
            l.network.net.num_stages()
        );
        if let Some(d) = &decoder {
            eprintln!(
                "msdiff: latent model: decoding with the autoencoder {} to {:?} images",
                d.path.display(),
                d.record.image_shape
            );
        }
        Source::Checkpoint(Box::new(l), decoder.map(Box::new))
    };
    let model_den;
    let (den, process, item, train_set): (&dyn Denoiser, Process, Vec<i64>, Option<&Tensor>) = match &source {
        Source::Optimal(o, images, p) => (o, p.clone(), o.item_shape().to_vec(), Some(images)),
        Source::Checkpoint(l, _) => {
            model_den = l.denoiser()?;
            let m = &l.config.model;
            let item = vec![m.in_channels as i64, m.resolution as i64, m.resolution as i64];
            (&model_den, l.config.process.build()?, item, None)
        }
    };
    sampler.validate(&process)?;
    if let Some(t) = &init {
        let mut want = vec![seeds.len() as i64];
        want.extend_from_slice(&item);
        ensure!(t.size() == want, "--init-noise has shape {:?}, expected {:?} (one x_T per image)", t.size(), want);
        ensure!(
            matches!(t.kind(), tch::Kind::Float | tch::Kind::Double),
            "--init-noise is {:?}; x_T must be a float array (f32 or f64), e.g. saved from numpy.random.randn",
            t.kind()
        );
        ensure!(t.isfinite().all().int64_value(&[]) == 1, "--init-noise holds NaN or infinite values");
    }
    let n = seeds.len();
    let bar = progress(n as u64, "sample", g.quiet);
    let out =
        crate::sampler::sample_seeds(&sampler, den, &process, &item, &seeds, a.batch, init.as_ref(), device, |k| {
            bar.set_position(k as u64)
        })?;
    bar.finish_and_clear();
    let (x, nfe) = (out.x, out.nfe);
    let finite = x.isfinite().all().int64_value(&[]) == 1;
    if !finite {
        bail!("the samples contain NaN or infinite values; nothing was written");
    }
    match &source {
        Source::Checkpoint(_, Some(d)) => {
            // raw.npy: the solver's latents; samples.npy, the PNGs: the decoded images.
            let images = d.decode(&x, a.batch, |_| {})?;
            crate::io::samples::write_images_and_raw(&a.out, &images, &x, !a.no_images)?;
        }
        _ => crate::io::samples::write_samples(&a.out, &x, !a.no_images)?,
    }
    println!("wrote {n} samples ({}, {nfe} NFE each) to {}", sampler.kind.name(), a.out.display());
    if let Some(train) = train_set {
        let d = crate::denoiser::optimal::nearest_distance(&x, train);
        println!("nearest training image: RMS pixel distance mean {:.2e}, max {:.2e}", d.0, d.1);
    }
    Ok(0)
}

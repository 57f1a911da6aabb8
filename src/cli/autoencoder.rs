//! `msdiff autoencoder`: KL / VQ autoencoders for latent diffusion (docs/LATENT.md): layouts and
//! counts, import from diffusers, encode / decode arrays, cache a dataset's latents, train.
use super::args::{progress, Global};
use crate::autoencoder::eval::{self, Scale};
use crate::autoencoder::{diffusers, AutoencoderConfig, AutoencoderModel, Bottleneck, EncodeMode, PRESETS};
use crate::data::latents::LatentCache;
use crate::data::{self, Dataset, LoadOptions};
use anyhow::{bail, ensure, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use tch::Kind;

#[derive(Args, Debug)]
pub struct AutoencoderArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Parameters and GFLOPs per part of a preset or an autoencoder folder.
    Info(InfoArgs),
    /// Convert a diffusers AutoencoderKL or VQModel folder (config.json + diffusion_pytorch_model.safetensors) into an msdiff autoencoder folder.
    Import(ImportArgs),
    /// Encode images (an .npy array, an image folder or a dataset) into latents: an .npy array, or a latent cache (.safetensors) that `--data latents:FILE` reads.
    Encode(EncodeArgs),
    /// Decode latents (an .npy array or a latent cache) into images.
    Decode(DecodeArgs),
    /// Reconstruction quality of an autoencoder on a dataset: PSNR, L1 and rFID.
    Eval(EvalArgs),
    /// Encode and decode throughput (images/s, median of repeats).
    Bench(BenchArgs),
    /// Train an autoencoder from a TOML configuration (or resume a run); see docs/LATENT.md.
    Train(TrainArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training configuration (TOML: [data], [model], [loss], [optim], [ema], [train]; see configs/autoencoder-*.toml and docs/LATENT.md). Optional with --resume.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run folder (default runs/<config name>).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Resume exactly from a run or checkpoint (its newest checkpoint); the run's configuration is used unless --config is given (it must then describe the same experiment).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Print the resolved configuration and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Override train.steps (e.g. to extend a resumed run).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override train.batch (not on resume).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Override train.seed (not on resume).
    #[arg(long)]
    pub seed: Option<u64>,
    /// FID Inception weights for train.rfid_images; default $MSDIFF_FID_WEIGHTS, else the copy from scripts/fetch-assets fid-weights.
    #[arg(long)]
    pub fid_weights: Option<PathBuf>,
}

/// Where images come from.
#[derive(Args, Debug, Clone)]
pub struct ImageSource {
    /// Images: an .npy array ([N,C,H,W] or [N,H,W] in [-1,1], or uint8) or a folder of PNG/JPEG files of one size (H and W multiples of the downsampling factor).
    #[arg(long, conflicts_with = "data")]
    pub images: Option<PathBuf>,
    /// A dataset spec instead (see `msdiff --help`), e.g. fashion-mnist:test.
    #[arg(long)]
    pub data: Option<String>,
    /// Use at most the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Pad every image by this many pixels on each side with -1 (black), e.g. 2 for 28x28 -> 32x32.
    #[arg(long, default_value_t = 0)]
    pub pad: usize,
}

impl ImageSource {
    /// The dataset and the spec it came from.
    fn load(&self) -> Result<(Dataset, String)> {
        let spec = match (&self.images, &self.data) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(d)) => d.clone(),
            (None, None) => bail!("give --images FILE.npy|DIR or --data SPEC"),
        };
        ensure!(self.limit.is_none_or(|l| l > 0), "--limit must be > 0");
        let mut ds = data::load(&spec, &LoadOptions { limit: self.limit, ..Default::default() })?;
        if self.pad > 0 {
            ensure!(self.pad <= 4096, "--pad {} is too large", self.pad);
            ds.images = eval::pad_images(&ds.images, self.pad);
        }
        let spec = if self.pad > 0 { format!("{spec} padded by {}", self.pad) } else { spec };
        Ok((ds, spec))
    }
}

#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// The autoencoder: a folder from `autoencoder import` or `train`, or a training run (EMA weights).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub source: ImageSource,
    /// Output: FILE.npy (the latents [N, E, H/f, W/f], f32, unscaled) or FILE.safetensors (a latent cache: latents, labels, statistics, scale factor and a record of the autoencoder; read by `--data latents:FILE`).
    #[arg(long)]
    pub out: PathBuf,
    /// KL: the posterior mean, or a sample (mean + std * noise, image i seeded by --seed + i).
    #[arg(long, value_enum, default_value_t = EncodeMode::Mean)]
    pub mode: EncodeMode,
    /// KL with --mode sample: seed of image 0 (image i uses seed + i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// VQ: snap the latents to the codebook (default: the pre-quantisation latents, which LDM's diffusion trains on).
    #[arg(long)]
    pub quantize: bool,
    /// VQ: also write the codebook indices [N, H/f, W/f] (int64 .npy).
    #[arg(long)]
    pub codes: Option<PathBuf>,
    /// Latent cache: the scale factor; default the autoencoder's scaling_factor (imported from diffusers), else 1/std of the latents.
    #[arg(long)]
    pub scale_factor: Option<f64>,
    /// Latent cache: use 1/std of the latents even when the autoencoder has a scaling_factor.
    #[arg(long, conflicts_with = "scale_factor")]
    pub scale_by_std: bool,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// The autoencoder (folder or training run).
    #[arg(long)]
    pub model: PathBuf,
    /// Latents: an .npy array [N, E, h, w] (unscaled, as `encode` writes them) or a latent cache (.safetensors; its record of the autoencoder must match --model).
    #[arg(long)]
    pub latents: PathBuf,
    /// Output images [N, C, h f, w f] as .npy, clamped to [-1, 1] (see --raw).
    #[arg(long)]
    pub out: PathBuf,
    /// VQ: decode the latents as they are (by default they are snapped to the codebook first, as LDM does when sampling).
    #[arg(long)]
    pub no_quantize: bool,
    /// Write the decoder's raw output (not clamped).
    #[arg(long)]
    pub raw: bool,
    /// Also write a PNG grid of the first 64 images.
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Decode a latent cache even if it was made by another autoencoder.
    #[arg(long)]
    pub no_verify: bool,
    /// Latents per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The autoencoder (folder or training run).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub source: ImageSource,
    /// Also compute rFID (FID of the reconstructions against the images; needs >= 2 images and the FID weights).
    #[arg(long)]
    pub rfid: bool,
    /// FID Inception weights; default $MSDIFF_FID_WEIGHTS, else the copy from scripts/fetch-assets fid-weights.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Images per FID network batch.
    #[arg(long, default_value_t = 50)]
    pub fid_batch: usize,
    /// Write a PNG comparison (originals above, reconstructions below) of the first 16 images.
    #[arg(long)]
    pub picture: Option<PathBuf>,
    /// Images per autoencoder batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The autoencoder (folder or training run).
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// A preset with fresh weights instead.
    #[arg(long)]
    pub preset: Option<String>,
    /// Image size HxW or one number (default 32).
    #[arg(long, default_value = "32")]
    pub size: String,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Timed repeats after one warm-up; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A preset: vq-f4, vq-f4-noattn, kl-f4, kl-f8, small-kl-f4, small-vq-f4, tiny-kl, tiny-vq.
    #[arg(long, conflicts_with = "model")]
    pub preset: Option<String>,
    /// An autoencoder folder (or training run) instead.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Image size for the GFLOPs, HxW or one number for a square (default 256).
    #[arg(long, default_value = "256")]
    pub size: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The diffusers folder (config.json + diffusion_pytorch_model.safetensors; half-precision weights are converted to f32).
    #[arg(long)]
    pub diffusers: PathBuf,
    /// The msdiff autoencoder folder to write (autoencoder.json + weights.safetensors; written atomically).
    #[arg(long)]
    pub out: PathBuf,
}

/// `HxW` or `N` -> (H, W).
fn parse_size(s: &str) -> Result<(usize, usize)> {
    let parse = |t: &str| t.trim().parse::<usize>().ok().filter(|&v| v > 0);
    let hw = match s.split_once(['x', 'X']) {
        Some((h, w)) => parse(h).zip(parse(w)),
        None => parse(s).map(|v| (v, v)),
    };
    hw.ok_or_else(|| anyhow::anyhow!("bad --size '{s}': expected HxW or one positive number"))
}

pub fn run(g: &Global, a: AutoencoderArgs) -> Result<i32> {
    match a.what {
        What::Info(a) => info(a),
        What::Import(a) => import(g, a),
        What::Encode(a) => encode(g, a),
        What::Decode(a) => decode(g, a),
        What::Eval(a) => evaluate(g, a),
        What::Bench(a) => bench(g, a),
        What::Train(a) => train(g, a),
    }
}

fn train(g: &Global, a: TrainArgs) -> Result<i32> {
    use crate::autoencoder::train::{self as tr, AeTrainConfig, AeTrainOptions};
    let resumed = match &a.resume {
        Some(r) => Some(tr::load_checkpoint(r)?.0),
        None => None,
    };
    let resumed_dir = a.resume.as_ref().map(|r| {
        // A checkpoint's run folder; a run folder is itself.
        if r.join(crate::train::checkpoint::STATE).is_file() {
            crate::train::checkpoint::run_dir(r)
        } else {
            r.clone()
        }
    });
    let (mut cfg, run_dir) = match (&a.config, &resumed) {
        (Some(p), _) => {
            let tc = AeTrainConfig::load(p)?;
            let (ds, _) = tr::load_data(&tc.data)?;
            let cfg = tc.resolve(ds.image_shape()).map_err(|e| anyhow::anyhow!("in {}: {e:#}", p.display()))?;
            let stem = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
            let dir = resumed_dir.clone().unwrap_or_else(|| Path::new("runs").join(stem));
            (cfg, a.run.clone().unwrap_or(dir))
        }
        (None, Some(st)) => {
            (st.config.clone(), a.run.clone().or(resumed_dir.clone()).unwrap_or_else(|| PathBuf::from(".")))
        }
        (None, None) => bail!("give --config FILE.toml (or --resume RUN to continue a run)"),
    };
    if a.resume.is_some() {
        for (flag, given, kept) in
            [("--batch", a.batch.map(|b| b as u64), cfg.train.batch as u64), ("--seed", a.seed, cfg.train.seed)]
        {
            if let Some(v) = given.filter(|v| *v != kept) {
                bail!("{flag} {v} cannot change on resume: the run was trained with {kept}; drop {flag} (or start a new run)");
            }
        }
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
    cfg.validate()?;
    eprintln!("# resolved configuration\n{}", cfg.to_toml());
    if a.dry_run {
        return Ok(0);
    }
    if a.resume.is_none() {
        if let Some((step, _)) = crate::train::checkpoint::list(&run_dir.join("checkpoints"))?.last() {
            bail!(
                "run folder {} already holds checkpoints (newest: step {step}); continue it with `msdiff autoencoder train --resume {}`, or give another --run",
                run_dir.display(),
                run_dir.display()
            );
        }
    }
    let (data, eval_data) = tr::load_data(&cfg.data)?;
    crate::train::trainer::install_ctrlc();
    let device = g.device()?;
    eprintln!(
        "msdiff: training a {} autoencoder on {device:?} with {} images of {:?}; run folder {}",
        cfg.model.bottleneck,
        data.len(),
        data.image_shape(),
        run_dir.display()
    );
    let out = tr::train(
        &cfg,
        &data,
        &eval_data,
        &AeTrainOptions {
            run_dir: run_dir.clone(),
            resume: a.resume.clone(),
            device,
            progress: !g.quiet,
            stop_after: None,
            fid_weights: a.fid_weights.clone(),
        },
    )?;
    if out.interrupted {
        println!(
            "interrupted at step {}; checkpoint {}; continue with: msdiff autoencoder train --resume {}",
            out.step,
            out.checkpoint.display(),
            run_dir.display()
        );
        return Ok(130);
    }
    let r = out.eval.as_ref();
    println!(
        "trained to step {} in {:.1} s; EMA reconstructions of {} evaluation images: PSNR {:.2} dB, L1 {:.4}{}; autoencoder {} (use it as --model)",
        out.step,
        out.seconds,
        r.map_or(0, |r| r.images),
        r.map_or(f64::NAN, |r| r.psnr),
        r.map_or(f64::NAN, |r| r.l1),
        r.and_then(|r| r.rfid).map(|f| format!(", rFID {f:.2} on {} images ({}, resize {})", cfg.train.rfid_images, crate::fid::NETWORK_NAME, crate::fid::RESIZE_NAME)).unwrap_or_default(),
        out.autoencoder.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
    );
    Ok(0)
}

fn is_ext(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn encode(g: &Global, a: EncodeArgs) -> Result<i32> {
    ensure!(a.batch > 0, "--batch must be > 0");
    let cache = is_ext(&a.out, "safetensors");
    ensure!(
        cache || is_ext(&a.out, "npy"),
        "--out {} must end in .npy (latent array) or .safetensors (latent cache)",
        a.out.display()
    );
    if let Some(s) = a.scale_factor {
        ensure!(cache, "--scale-factor applies to a latent cache (--out FILE.safetensors)");
        ensure!(s.is_finite() && s > 0.0, "--scale-factor must be > 0, got {s}");
    }
    ensure!(!a.scale_by_std || cache, "--scale-by-std applies to a latent cache (--out FILE.safetensors)");
    let model = AutoencoderModel::load(&a.model, g.device()?)?;
    if let Some(c) = &a.codes {
        ensure!(
            model.config().bottleneck == Bottleneck::Vq,
            "--codes is for VQ autoencoders; {} is KL",
            a.model.display()
        );
        ensure!(is_ext(c, "npy"), "--codes {} must end in .npy", c.display());
    }
    let (ds, spec) = a.source.load()?;
    let n = ds.len();
    let bar = progress(n as u64, "encode", g.quiet);
    let t0 = std::time::Instant::now();
    let (latents, what) = if cache {
        let scale = match (a.scale_factor, a.scale_by_std) {
            (Some(s), _) => Scale::Given(s),
            (None, true) => Scale::InverseStd,
            (None, false) => Scale::Auto,
        };
        let c = eval::cache_latents(
            &model,
            // Absolute, so that a latent diffusion run finds the autoencoder from anywhere.
            &std::path::absolute(&a.model).unwrap_or_else(|_| a.model.clone()).display().to_string(),
            &ds,
            &spec,
            eval::CacheOptions { mode: a.mode, seed: a.seed, quantize: a.quantize, scale, batch: a.batch },
            |k| bar.set_position(k as u64),
        )?;
        c.save(&a.out)?;
        let i = &c.info;
        let what = format!(
            "latent cache: std {:.4}, scale factor {:.6} ({}), shift {}, autoencoder fingerprint {}; read it with --data latents:{}",
            i.std,
            i.scale_factor,
            i.scale_source,
            i.shift_factor,
            i.autoencoder.fingerprint,
            a.out.display()
        );
        (c.latents, what)
    } else {
        let seeds: Vec<u64> = (0..n as u64).map(|i| a.seed.wrapping_add(i)).collect();
        let z = model.encode(&ds.images, a.mode, a.quantize, &seeds, a.batch, |k| bar.set_position(k as u64))?;
        crate::io::write_npy(&a.out, &z)?;
        (z, "unscaled latents".to_string())
    };
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if let Some(c) = &a.codes {
        crate::io::write_npy(c, &model.codes(&latents, a.batch)?)?;
    }
    println!(
        "encoded {n} images of {spec} into {:?} latents in {secs:.1} s ({:.1} images/s) -> {} ({what})",
        latents.size(),
        n as f64 / secs.max(1e-9),
        a.out.display()
    );
    Ok(0)
}

fn decode(g: &Global, a: DecodeArgs) -> Result<i32> {
    ensure!(a.batch > 0, "--batch must be > 0");
    ensure!(is_ext(&a.out, "npy"), "--out {} must end in .npy", a.out.display());
    let model = AutoencoderModel::load(&a.model, g.device()?)?;
    let z = if is_ext(&a.latents, "safetensors") {
        let c = LatentCache::load(&a.latents)?;
        if !a.no_verify {
            c.verify(&model.fingerprint())?;
        }
        c.latents
    } else {
        let z = crate::io::read_npy(&a.latents)?;
        ensure!(
            matches!(z.kind(), Kind::Float | Kind::Double),
            "{}: latents must be a float array, got {:?}",
            a.latents.display(),
            z.kind()
        );
        ensure!(
            bool::try_from(z.isfinite().all())?,
            "{}: the latents hold NaN or infinite values",
            a.latents.display()
        );
        z.to_kind(Kind::Float)
    };
    let n = z.size().first().copied().unwrap_or(0);
    let bar = progress(n.max(0) as u64, "decode", g.quiet);
    let t0 = std::time::Instant::now();
    let x = model.decode(&z, a.no_quantize, a.batch, |k| bar.set_position(k as u64))?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let x = if a.raw { x } else { x.clamp(-1.0, 1.0) };
    crate::io::write_npy(&a.out, &x)?;
    if let Some(p) = &a.grid {
        let k = n.min(64);
        crate::io::write_grid(p, &x.narrow(0, 0, k).clamp(-1.0, 1.0), (k as f64).sqrt().ceil() as usize, 2)?;
    }
    println!(
        "decoded {n} latents into {:?} images in {secs:.1} s ({:.1} images/s) -> {}",
        x.size(),
        n as f64 / secs.max(1e-9),
        a.out.display()
    );
    Ok(0)
}

fn evaluate(g: &Global, a: EvalArgs) -> Result<i32> {
    ensure!(a.batch > 0 && a.fid_batch > 0, "--batch and --fid-batch must be > 0");
    let device = g.device()?;
    let model = AutoencoderModel::load(&a.model, device)?;
    let (ds, spec) = a.source.load()?;
    let fid_net = if a.rfid {
        ensure!(ds.len() >= 2, "--rfid needs at least 2 images");
        let w = match &a.weights {
            Some(p) => p.clone(),
            None => crate::fid::inception::default_weights()?,
        };
        Some(crate::fid::FidInception::load(w, device)?)
    } else {
        None
    };
    let bar = progress(ds.len() as u64, "reconstruct", g.quiet);
    let r = eval::evaluate(&model, &ds.images, a.batch, fid_net.as_ref().map(|n| (n, a.fid_batch)), |k| {
        bar.set_position(k as u64)
    })?;
    bar.finish_and_clear();
    if let Some(p) = &a.picture {
        eval::comparison_picture(&model, &ds.images, p)?;
    }
    let fid = r
        .rfid
        .map(|f| {
            format!(
                ", rFID {f:.2} ({}, resize {}, N = {} vs {})",
                crate::fid::NETWORK_NAME,
                crate::fid::RESIZE_NAME,
                r.images,
                r.images
            )
        })
        .unwrap_or_default();
    println!("{}: {} images of {spec}: PSNR {:.2} dB, L1 {:.4}{fid}", a.model.display(), r.images, r.psnr, r.l1);
    Ok(0)
}

fn bench(g: &Global, a: BenchArgs) -> Result<i32> {
    ensure!(a.batch > 0 && a.repeats > 0, "--batch and --repeats must be > 0");
    let device = g.device()?;
    let (h, w) = parse_size(&a.size)?;
    let model = match (&a.model, &a.preset) {
        (Some(m), _) => AutoencoderModel::load(m, device)?,
        (None, Some(p)) => AutoencoderModel::new(&AutoencoderConfig::preset(p)?, 0, device, format!("preset {p}"))?,
        (None, None) => bail!("give --model AE or --preset NAME"),
    };
    let c = model.config().clone();
    let [e, lh, lw] = c.latent_shape([c.in_channels as i64, h as i64, w as i64])?;
    let mut rng = crate::rng::Rng::new(0);
    let x = rng
        .randn(&[a.batch as i64, c.in_channels as i64, h as i64, w as i64], Kind::Float)
        .clamp(-1.0, 1.0)
        .to_device(device);
    let z = rng.randn(&[a.batch as i64, e, lh, lw], Kind::Float).to_device(device);
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let _g = tch::no_grad_guard();
    let enc = crate::runtime::time_median(a.repeats, || {
        let _ = model.net.moments(&x).map(|m| m.sum(Kind::Float));
        sync();
    });
    let dec = crate::runtime::time_median(a.repeats, || {
        let _ = model.net.decode(&z).map(|y| y.sum(Kind::Float));
        sync();
    });
    let r = c.report(h, w);
    let ips = |s: f64| {
        let r = a.batch as f64 / s;
        if r < 10.0 {
            format!("{r:.3}")
        } else {
            format!("{r:.1}")
        }
    };
    println!("# autoencoder throughput: {} ({} bottleneck, factor {}), {}x{}x{} images, batch {}, median of {} after a warm-up", a.model.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!("preset {}", a.preset.clone().unwrap_or_default())), c.bottleneck, c.factor(), c.in_channels, h, w, a.batch, a.repeats);
    println!("# device {device:?}; {}", crate::runtime::machine());
    println!(
        "encode: {} images/s ({:.3} s per batch, {:.2} GFLOP/s)",
        ips(enc),
        enc,
        r.encode_flops() * a.batch as f64 / enc / 1e9
    );
    println!(
        "decode: {} images/s ({:.3} s per batch, {:.2} GFLOP/s)",
        ips(dec),
        dec,
        r.decode_flops() * a.batch as f64 / dec / 1e9
    );
    Ok(0)
}

fn info(a: InfoArgs) -> Result<i32> {
    let (h, w) = parse_size(&a.size)?;
    let (cfg, what) = match (&a.preset, &a.model) {
        (_, Some(m)) => (AutoencoderModel::load(m, tch::Device::Cpu)?.manifest.config, m.display().to_string()),
        (Some(p), None) => (AutoencoderConfig::preset(p)?, format!("preset {p}")),
        (None, None) => bail!("give --preset NAME ({}) or --model AE", PRESETS.join(", ")),
    };
    let f = cfg.factor();
    anyhow::ensure!(h % f == 0 && w % f == 0, "--size {h}x{w} is not a multiple of the downsampling factor {f}");
    let r = cfg.report(h, w);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"config": cfg, "report": r, "total_params": r.total_params()})
            )?
        );
    } else {
        println!(
            "{what}: {} bottleneck, factor {f}, latents {}x{}x{} for {}x{}x{} images\n",
            cfg.bottleneck,
            cfg.embed_dim,
            h / f,
            w / f,
            cfg.in_channels,
            h,
            w
        );
        print!("{r}");
    }
    Ok(0)
}

fn import(g: &Global, a: ImportArgs) -> Result<i32> {
    let bar = progress(1, "import", g.quiet);
    let m = diffusers::import(&a.diffusers, tch::Device::Cpu)?;
    m.save(&a.out)?;
    bar.finish_and_clear();
    let c = m.config();
    println!(
        "imported {} ({} bottleneck, ch {} x {:?}, {} res blocks, z {}, embed {}{}; {} parameters; scaling_factor {}{}) -> {}",
        a.diffusers.display(),
        c.bottleneck,
        c.ch,
        c.ch_mult,
        c.num_res_blocks,
        c.z_channels,
        c.embed_dim,
        if c.n_embed > 0 { format!(", {} codes", c.n_embed) } else { String::new() },
        m.params().iter().map(|(_, t)| t.numel()).sum::<usize>(),
        m.manifest.scaling_factor.map_or("none".into(), |s| s.to_string()),
        m.manifest.shift_factor.map_or(String::new(), |s| format!(", shift_factor {s}")),
        a.out.display()
    );
    Ok(0)
}

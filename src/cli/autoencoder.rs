//! `msdiff autoencoder`: KL / VQ autoencoders for latent diffusion (docs/LATENT.md): layouts and
//! counts, import from diffusers, encode / decode arrays, cache a dataset's latents, train.
use super::args::{progress, Global};
use crate::autoencoder::{diffusers, AutoencoderConfig, AutoencoderModel, PRESETS};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

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
    }
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
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"config": cfg, "report": r, "total_params": r.total_params()}))?);
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

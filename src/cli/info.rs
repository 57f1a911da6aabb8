//! `msdiff info`: parameters and GFLOPs per stage.
use super::args::Global;
use crate::cluster::Split;
use crate::nn::UNetConfig;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A training config (TOML): reports its [model] and [stages].
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A network preset: cifar10-multistage, cifar10-unified, cifar10-separate, reference-6.5m, tiny, small-*
    /// (NCSN++), or EDM's DDPM++: cifar10-edm-multistage, cifar10-edm-unified, cifar10-edm-separate, tiny-edm.
    #[arg(long)]
    pub preset: Option<String>,
    /// Stage boundaries for the interval-weighted GFLOPs (split JSON); default uniform.
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_g: &Global, a: InfoArgs) -> Result<i32> {
    let (cfg, split_t) = if let Some(p) = &a.config {
        let tc = crate::train::TrainConfig::load(p)?;
        // Without loading the dataset: the shape the [model] table (or its preset) declares.
        let base = p.parent().unwrap_or(std::path::Path::new("."));
        let resolved = tc.resolve(base, crate::train::config::declared_shape(&tc.model)?)?;
        let t = resolved.split.as_ref().map(|s| s.boundaries_t.clone());
        (resolved.model, t)
    } else {
        let name = a.preset.as_deref().unwrap_or("small-multistage");
        (UNetConfig::preset(name)?, None)
    };
    let cuts = match (&a.split, split_t) {
        (Some(p), _) => {
            let s = Split::load(p)?;
            anyhow::ensure!(
                s.stages == cfg.num_stages(),
                "{} splits into {} stages but the network has {} decoder(s); a split applies to a multi-stage net with one decoder per stage",
                p.display(),
                s.stages,
                cfg.num_stages()
            );
            s.boundaries_t
        }
        (None, Some(t)) => t,
        (None, None) => crate::cluster::uniform_cuts(cfg.num_stages().max(2))?.into_iter().take(cfg.num_stages().saturating_sub(1)).collect(),
    };
    let report = crate::nn::report::report(&cfg, &cuts).context("cannot compute the model report")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(0)
}

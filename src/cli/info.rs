//! `msdiff info`: parameters and GFLOPs per stage.
use super::args::Global;
use crate::cluster::Split;
use crate::nn::{Family, UNetConfig};
use crate::objective::{ObjectiveConfig, StagePolicy, StageSampler};
use crate::process::ProcessConfig;
use crate::train::config::Compute;

/// The official EDM code's cuts (sigma 2.5103 and 7.6577) in VP time (docs/METHOD.md §1.5).
const EDM_CUTS_T: [f64; 2] = [0.442, 0.636];
/// The official LDM code's cuts (steps 442 and 631 of 1000) as fractions of the chain: the
/// interval weights 0.442 / 0.189 / 0.369 of the report.
const LDM_CUTS_T: [f64; 2] = [0.442, 0.631];
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A training config (TOML): reports its [model] and [stages].
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A network preset: cifar10-multistage, cifar10-unified, cifar10-separate, reference-6.5m, tiny, small-*
    /// (NCSN++), EDM's DDPM++: cifar10-edm-multistage, cifar10-edm-unified, cifar10-edm-separate, tiny-edm, or LDM's
    /// ADM U-Net: celebahq-ldm-multistage, celebahq-ldm-multistage-attn, celebahq-ldm-unified, celebahq-ldm-separate,
    /// small-ldm-multistage, small-ldm-unified, tiny-ldm.
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
    let mut resolved = None;
    let (cfg, split_t) = if let Some(p) = &a.config {
        let tc = crate::train::TrainConfig::load(p)?;
        // Without loading the dataset: the shape the [model] table (or its preset) declares.
        let base = p.parent().unwrap_or(std::path::Path::new("."));
        let r = tc.resolve(base, crate::train::config::declared_shape(&tc.model)?)?;
        let t = r.split.as_ref().map(|s| s.boundaries_t.clone());
        let model = r.model.clone();
        resolved = Some(r);
        (model, t)
    } else {
        let name = a.preset.as_deref().unwrap_or("small-multistage");
        let cfg = UNetConfig::preset(name)?;
        // EDM's networks default to the official EDM cuts (sigma 2.5103, 7.6577), LDM's to its
        // steps 442 / 631.
        let t = match cfg.family {
            _ if cfg.num_stages() != 3 || a.split.is_some() => None,
            Family::Ddpmpp => Some(EDM_CUTS_T.to_vec()),
            Family::Adm => Some(LDM_CUTS_T.to_vec()),
            Family::Ncsnpp => None,
        };
        (cfg, t)
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
        (None, None) => crate::cluster::uniform_cuts(cfg.num_stages().max(2))?
            .into_iter()
            .take(cfg.num_stages().saturating_sub(1))
            .collect(),
    };
    let report = crate::nn::report::report(&cfg, &cuts).context("cannot compute the model report")?;
    // What a training image costs under the run's stage policy (a config), or under EDM's
    // policy for an EDM preset (docs/EDM.md §5).
    let compute = match &resolved {
        Some(r) if a.split.is_none() => Some(r.compute()?),
        Some(_) => None,
        None if cfg.family == Family::Ddpmpp => {
            let objective = ObjectiveConfig { policy: StagePolicy::Edm, ..Default::default() };
            let edm = ProcessConfig::from_name("edm")?;
            let sigmas: Vec<f64> =
                cuts.iter().map(|&t| ProcessConfig::default().build().map(|p| p.sigma(t))).collect::<Result<_>>()?;
            let stages = StageSampler::new(&edm.build()?, &objective, &sigmas)?;
            Some(Compute::new(StagePolicy::Edm, &report, stages.weights.clone()))
        }
        // The official LDM recipe: one stage per GPU (rank mod 3), a third of the samples each.
        None if cfg.family == Family::Adm && cfg.num_stages() > 1 => {
            let k = cfg.num_stages();
            Some(Compute::new(StagePolicy::Rank, &report, vec![1.0 / k as f64; k]))
        }
        None => None,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
        if let Some(c) = compute {
            println!("{c}");
        }
    }
    Ok(0)
}

//! What a training run shows: sample grids of the EMA weights and the loss plot.
use super::config::ResolvedConfig;
use crate::model::Network;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::Device;

/// Sample a grid with the EMA weights: `samples/step-N.png`. A latent run passes its
/// autoencoder (`decoder`): the grid shows the decoded images.
pub fn write_samples(
    cfg: &ResolvedConfig,
    ema_net: &Network,
    decoder: Option<&crate::latent::LatentDecoder>,
    run_dir: &Path,
    step: u64,
    device: Device,
) -> Result<PathBuf> {
    let objective = cfg.build_objective()?;
    let den = objective.bind(&ema_net.net)?;
    let n = cfg.train.sample_count;
    let seeds: Vec<u64> = (0..n as u64).collect();
    let shape = [cfg.model.in_channels as i64, cfg.model.resolution as i64, cfg.model.resolution as i64];
    let sampler = cfg.train.sampler.clone().context("no sampler configured")?;
    let out =
        crate::sampler::sample_seeds(&sampler, &den, &objective.process, &shape, &seeds, n, None, device, |_| {})?;
    let path = run_dir.join("samples").join(format!("step-{step:08}.png"));
    let cols = (n as f64).sqrt().ceil() as usize;
    let images = match decoder {
        Some(d) => d.decode(&out.x, n, |_| {})?,
        None => out.x.clamp(-1.0, 1.0).to_device(Device::Cpu),
    };
    crate::io::image::write_grid(&path, &images, cols, 2)?;
    Ok(path)
}

/// `loss.png` from `metrics.jsonl`: total loss and per-stage losses against the step.
pub fn plot_losses(run_dir: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?;
    let mut total = Vec::new();
    let mut by_stage: Vec<Vec<(f64, f64)>> = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(s), Some(l)) = (v["step"].as_f64(), v["loss"].as_f64()) else { continue };
        total.push((s, l));
        if let Some(arr) = v["loss_by_stage"].as_array() {
            if by_stage.len() < arr.len() {
                by_stage.resize(arr.len(), Vec::new());
            }
            for (j, x) in arr.iter().enumerate() {
                if let Some(x) = x.as_f64() {
                    by_stage[j].push((s, x));
                }
            }
        }
    }
    let mut p = crate::plot::Plot::new("training loss", 720, 440).xlabel("step").ylabel("loss (MSE)").log_y(true);
    p = p.series("all", &total, crate::plot::palette(0));
    if by_stage.len() > 1 {
        for (j, pts) in by_stage.iter().enumerate() {
            p = p.series(&format!("stage {j}"), pts, crate::plot::palette(j + 1));
        }
    }
    let path = run_dir.join("loss.png");
    p.save(&path)?;
    Ok(path)
}

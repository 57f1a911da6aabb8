//! Timestep clustering: where the stage boundaries come from (docs/METHOD.md §3).
//!
//! * [`optimal`]: Algorithm 1 of Zhang et al. — agreement of the optimal denoiser with its
//!   t -> 0 and t -> 1 limit forms — and its generalisation to K != 3 stages.
//! * [`snr`]: the SNR baseline — dynamic programming over a 1000-point grid.
//! * [`timestep`]: Go et al.'s interval programme (size bounds floor(N/2K)..ceil(3N/2K)) and its
//!   timestep criterion, a Table 4 baseline.
//! * [`gradient`]: Go et al.'s gradient-similarity criterion on a trained run, a Table 4 baseline.
//! * uniform: equal intervals in t.
//!
//! Boundaries are interior cuts 0 < t_1 < ... < t_{K-1} < 1 in the time of the VP-SDE
//! (beta 0.1..20 by default); a [`Split`] also carries them as noise-to-signal ratios sigma, which
//! is what a multi-stage model routes on, and as steps of the 1000-step linear DDPM chain.

pub mod gradient;
pub mod optimal;
pub mod report;
pub mod snr;
pub mod timestep;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

crate::names::named_enum! {
    /// How the cuts are chosen.
    pub enum Method ("clustering method") {
        /// Algorithm 1: agreement of the optimal denoiser with its two limit forms.
        Optimal = "optimal",
        /// Equal intervals of t.
        Uniform = "uniform",
        /// The log-SNR dynamic programme.
        Snr = "snr",
        /// Go et al.'s timestep clustering (Table 4).
        Timestep = "timestep",
        /// Go et al.'s gradient-similarity clustering of a trained run (Table 4; needs
        /// `--checkpoint`).
        Gradient = "gradient",
    }
}

/// A stage split: `stages - 1` increasing interior cuts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub method: Method,
    pub stages: usize,
    /// Interior cuts in t of the clustering process (VP-SDE by default), increasing, in (0, 1).
    pub boundaries_t: Vec<f64>,
    /// The same cuts as noise-to-signal ratios sigma (EDM's sigma): what models route on.
    pub boundaries_sigma: Vec<f64>,
    /// The same cuts as steps of the 1000-step linear DDPM chain (equal sigma).
    pub boundaries_ddpm_step: Vec<f64>,
    /// The process the cuts' t refers to.
    pub process: crate::process::ProcessConfig,
    /// How the split was computed (options, dataset, curves); free-form for reports.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Split {
    /// Build a split from cuts in t, filling in the sigma and DDPM-step forms.
    pub fn from_t(method: Method, cuts: Vec<f64>, process_cfg: &crate::process::ProcessConfig) -> Result<Self> {
        let process = process_cfg.build()?;
        validate_cuts(&cuts)?;
        Ok(Split {
            method,
            stages: cuts.len() + 1,
            boundaries_sigma: cuts.iter().map(|&t| process.sigma(t)).collect(),
            boundaries_ddpm_step: cuts.iter().map(|&t| process.ddpm_step(t)).collect(),
            boundaries_t: cuts,
            process: process_cfg.clone(),
            details: serde_json::Value::Null,
        })
    }

    /// Read a split written by `msdiff cluster`, checking that it is consistent.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read split file {}", path.display()))?;
        let s: Split = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a msdiff split file (expected the JSON written by `msdiff cluster`)", path.display())
        })?;
        validate_cuts(&s.boundaries_t).with_context(|| format!("in {}", path.display()))?;
        ensure!(
            s.stages == s.boundaries_t.len() + 1 && s.boundaries_sigma.len() == s.boundaries_t.len(),
            "{}: stages and boundary lists disagree",
            path.display()
        );
        Ok(s)
    }

    /// Write as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::io::atomic::write_atomic_bytes(path, text.as_bytes())
    }
}

/// Cuts must be finite, strictly increasing and inside (0, 1).
pub fn validate_cuts(cuts: &[f64]) -> Result<()> {
    for (i, &c) in cuts.iter().enumerate() {
        ensure!(c > 0.0 && c < 1.0, "stage boundary {c} is outside (0, 1)");
        if i > 0 {
            ensure!(c > cuts[i - 1], "stage boundaries must be strictly increasing, got {cuts:?}");
        }
    }
    Ok(())
}

/// Most stages a split may have (a model has one decoder per stage).
pub const MAX_STAGES: usize = 64;

/// The one check of a stage count, shared by every splitting method.
pub fn check_stages(stages: usize) -> Result<()> {
    ensure!((2..=MAX_STAGES).contains(&stages), "need between 2 and {MAX_STAGES} stages (got {stages})");
    Ok(())
}

/// Uniform split: cuts at i/K.
pub fn uniform_cuts(stages: usize) -> Result<Vec<f64>> {
    check_stages(stages)?;
    Ok((1..stages).map(|i| i as f64 / stages as f64).collect())
}

/// The stage of each sigma given increasing boundary sigmas: stage j covers
/// [boundary_{j-1}, boundary_j) (stage 0 nearest the data).
pub fn stage_of_sigma(sigma: f64, boundaries_sigma: &[f64]) -> usize {
    boundaries_sigma.iter().take_while(|&&b| sigma >= b).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_lookup_is_half_open() {
        let b = [1.0, 5.0];
        assert_eq!(stage_of_sigma(0.5, &b), 0);
        assert_eq!(stage_of_sigma(1.0, &b), 1);
        assert_eq!(stage_of_sigma(4.99, &b), 1);
        assert_eq!(stage_of_sigma(5.0, &b), 2);
        assert_eq!(stage_of_sigma(80.0, &b), 2);
        assert_eq!(stage_of_sigma(80.0, &[]), 0);
    }

    #[test]
    fn uniform_and_validation() {
        assert_eq!(uniform_cuts(3).unwrap(), vec![1.0 / 3.0, 2.0 / 3.0]);
        assert!(uniform_cuts(1).is_err());
        assert!(validate_cuts(&[0.5, 0.4]).is_err());
        assert!(validate_cuts(&[0.0, 0.4]).is_err());
        assert!(validate_cuts(&[0.2, 1.0]).is_err());
        let s = Split::from_t(Method::Uniform, vec![0.442, 0.636], &Default::default()).unwrap();
        assert!((s.boundaries_sigma[0] - 2.510267).abs() < 1e-6);
        assert!((s.boundaries_sigma[1] - 7.657710).abs() < 1e-6);
    }
}

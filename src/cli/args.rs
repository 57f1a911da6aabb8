//! Argument groups shared by several subcommands.
use crate::sampler::{DdpmVariance, SamplerConfig, SamplerKind, Spacing};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// libtorch intra-op threads (0 = all cores).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
    /// Device: cpu, cuda, cuda:N, or auto (cuda when available).
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
    /// No progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
}

impl Global {
    pub fn device(&self) -> Result<tch::Device> {
        crate::runtime::parse_device(&self.device)
    }
}

/// Sampler selection and options.
#[derive(Args, Debug, Clone)]
pub struct SamplerArgs {
    /// Sampler: ddpm, ddim, dpm-solver-1, dpm-solver-2, dpm-solver-3, dpm-solver++-2m, dpm-solver++-3m, euler, heun.
    #[arg(long, default_value = "dpm-solver-3")]
    pub sampler: String,
    /// Steps (for single-step DPM-Solver: the number of function evaluations; for euler/heun: the
    /// number of noise levels, Heun using 2n-1 evaluations).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Time spacing: logsnr, time-uniform, time-quadratic, karras (default: the sampler's own).
    #[arg(long)]
    pub spacing: Option<String>,
    /// Start time (default: the process's, 1 for VP, sigma_max for EDM).
    #[arg(long)]
    pub t_start: Option<f64>,
    /// End time (default: the process's, 1e-3 for VP; the paper evaluated with 1e-4).
    #[arg(long)]
    pub t_end: Option<f64>,
    /// DDIM eta (0 deterministic, 1 = DDPM posterior variance).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// DDPM variance: posterior (beta-tilde) or forward (beta).
    #[arg(long, default_value = "posterior")]
    pub ddpm_variance: String,
    /// Karras rho for euler/heun.
    #[arg(long, default_value_t = 7.0)]
    pub rho: f64,
    /// EDM churn S_churn (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub s_churn: f64,
    /// EDM churn range lower sigma.
    #[arg(long, default_value_t = 0.0)]
    pub s_tmin: f64,
    /// EDM churn range upper sigma (default infinity).
    #[arg(long)]
    pub s_tmax: Option<f64>,
    /// EDM churn noise scale S_noise.
    #[arg(long, default_value_t = 1.0)]
    pub s_noise: f64,
    /// Multistep DPM-Solver++: keep the full order on the final steps.
    #[arg(long)]
    pub no_lower_order_final: bool,
    /// Finish with one extra denoiser call mapping the last sample to its x0 estimate.
    #[arg(long)]
    pub denoise_to_zero: bool,
}

impl SamplerArgs {
    pub fn config(&self) -> Result<SamplerConfig> {
        let kind: SamplerKind = self.sampler.parse()?;
        let mut c = SamplerConfig::new(kind, self.steps);
        c.spacing = self.spacing.as_deref().map(str::parse::<Spacing>).transpose()?;
        c.t_start = self.t_start;
        c.t_end = self.t_end;
        c.eta = self.eta;
        c.ddpm_variance = match self.ddpm_variance.as_str() {
            "posterior" => DdpmVariance::Posterior,
            "forward" => DdpmVariance::Forward,
            o => bail!("unknown --ddpm-variance '{o}' (expected posterior or forward)"),
        };
        c.rho = self.rho;
        c.s_churn = self.s_churn;
        c.s_tmin = self.s_tmin;
        c.s_tmax = self.s_tmax.unwrap_or(f64::INFINITY);
        c.s_noise = self.s_noise;
        c.lower_order_final = !self.no_lower_order_final;
        c.denoise_to_zero = self.denoise_to_zero;
        Ok(c)
    }
}

/// Most images one `sample` / `eval` call takes (they are held in memory together).
pub const MAX_IMAGES: usize = 10_000_000;

/// Seeds 0..n-1 for `--n` (1 ..= [`MAX_IMAGES`]).
pub fn first_n_seeds(n: usize) -> Result<Vec<u64>> {
    ensure!(n > 0, "--n must be > 0");
    ensure!(n <= MAX_IMAGES, "--n {n} is too large (at most {MAX_IMAGES} images per call; split the work with --seeds)");
    Ok((0..n as u64).collect())
}

/// Parse a seed list: `0-63`, `1,5,9`, `3` or combinations `0-3,10`.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: u64 = a.trim().parse().with_context(|| format!("bad seed range '{part}'"))?;
            let b: u64 = b.trim().parse().with_context(|| format!("bad seed range '{part}'"))?;
            ensure!(a <= b, "bad seed range '{part}': start after end");
            ensure!(b - a < MAX_IMAGES as u64, "seed range '{part}' is too large (at most {MAX_IMAGES} images per call)");
            out.extend(a..=b);
        } else {
            out.push(part.parse().with_context(|| format!("bad seed '{part}'"))?);
        }
    }
    ensure!(!out.is_empty(), "no seeds given");
    Ok(out)
}

/// Parse a number that may be written as a fraction (`2/255`).
pub fn parse_number(s: &str) -> Result<f64> {
    if let Some((a, b)) = s.split_once('/') {
        let a: f64 = a.trim().parse().with_context(|| format!("bad number '{s}'"))?;
        let b: f64 = b.trim().parse().with_context(|| format!("bad number '{s}'"))?;
        ensure!(b != 0.0, "bad number '{s}': division by zero");
        return Ok(a / b);
    }
    s.trim().parse().with_context(|| format!("bad number '{s}'"))
}

pub use crate::runtime::progress_bar as progress;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_numbers() {
        assert_eq!(parse_seeds("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_seeds("5, 1,2-3").unwrap(), vec![5, 1, 2, 3]);
        assert!(parse_seeds("3-1").is_err());
        assert!(parse_seeds("x").is_err());
        assert!(parse_seeds("").is_err());
        assert!((parse_number("2/255").unwrap() - 2.0 / 255.0).abs() < 1e-15);
        assert!(parse_number("1/0").is_err());
    }
}

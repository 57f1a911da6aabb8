//! Argument groups shared by several subcommands.
use crate::sampler::{DdpmVariance, SamplerConfig, SamplerKind, SamplerOption, Spacing};
use anyhow::{ensure, Context, Result};
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
    /// Collective backend of a data-parallel run (launched by `msdiff launch` or torchrun):
    /// auto = NCCL on CUDA, Gloo on CPU.
    #[arg(long, global = true, value_enum, default_value_t = crate::dist::BackendChoice::Auto)]
    pub dist_backend: crate::dist::BackendChoice,
}

impl Global {
    pub fn device(&self) -> Result<tch::Device> {
        crate::runtime::parse_device(&self.device)
    }

    /// Join the data-parallel group the launcher's environment describes, if any, and return
    /// this process's device: a rank's `auto` / `cuda` device is `cuda:LOCAL_RANK` (one GPU per
    /// rank); `cuda:N` and `cpu` are kept.
    pub fn join_group(&self) -> Result<(tch::Device, Option<&'static crate::dist::Group>)> {
        let Some(env) = crate::dist::Env::from_env()? else {
            return Ok((self.device()?, None));
        };
        let device = match self.device.as_str() {
            "auto" if !tch::Cuda::is_available() => tch::Device::Cpu,
            "auto" | "cuda" => crate::runtime::parse_device(&format!("cuda:{}", env.local_rank))
                .with_context(|| format!("rank {} (LOCAL_RANK {})", env.rank, env.local_rank))?,
            _ => self.device()?,
        };
        let group = crate::dist::init(&env, self.dist_backend, device)?;
        Ok((device, Some(group)))
    }
}

/// Sampler selection and options. An option the chosen sampler does not use is an error; options
/// left out take [`SamplerConfig`]'s defaults.
#[derive(Args, Debug, Clone)]
pub struct SamplerArgs {
    /// Sampler.
    #[arg(long, value_enum, default_value_t = SamplerKind::DpmSolver3)]
    pub sampler: SamplerKind,
    /// Steps (for single-step DPM-Solver: the number of function evaluations; for euler/heun: the
    /// number of noise levels, Heun using 2n-1 evaluations).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Time spacing (default: the sampler's own: logsnr for dpm-solver-1/2/3, karras for
    /// euler/heun, time-uniform for the others).
    #[arg(long, value_enum)]
    pub spacing: Option<Spacing>,
    /// Start time (default: the process's, 1 for VP, sigma_max for EDM).
    #[arg(long)]
    pub t_start: Option<f64>,
    /// End time (default: the process's, 1e-3 for VP; the paper evaluated with 1e-4).
    #[arg(long)]
    pub t_end: Option<f64>,
    #[arg(long, help = default_help("ddim: stochasticity eta (0 deterministic, 1 = DDPM posterior variance)", SamplerConfig::DEFAULT_ETA))]
    pub eta: Option<f64>,
    #[arg(long, value_enum, help = default_help("ddpm: the per-step noise variance", DdpmVariance::default()))]
    pub ddpm_variance: Option<DdpmVariance>,
    #[arg(long, help = default_help("Karras spacing (euler/heun, or --spacing karras): exponent rho", SamplerConfig::DEFAULT_RHO))]
    pub rho: Option<f64>,
    #[arg(long, help = default_help("euler/heun: churn S_churn (0 = deterministic)", SamplerConfig::DEFAULT_S_CHURN))]
    pub s_churn: Option<f64>,
    #[arg(long, help = default_help("euler/heun: lowest sigma that is churned", SamplerConfig::DEFAULT_S_TMIN))]
    pub s_tmin: Option<f64>,
    #[arg(long, help = default_help("euler/heun: highest sigma that is churned", SamplerConfig::DEFAULT_S_TMAX))]
    pub s_tmax: Option<f64>,
    #[arg(long, help = default_help("euler/heun: churn noise scale S_noise", SamplerConfig::DEFAULT_S_NOISE))]
    pub s_noise: Option<f64>,
    /// dpm-solver++-*: keep the full order on the final steps (by default steps below 10 end with
    /// lower orders, as the reference implementation).
    #[arg(long)]
    pub no_lower_order_final: bool,
    /// All but euler/heun: finish with one extra denoiser call mapping the last sample to its x0
    /// estimate.
    #[arg(long)]
    pub denoise_to_zero: bool,
}

/// `what` with clap's "[default: ...]" for a default kept in [`crate::sampler`].
fn default_help(what: &str, default: impl std::fmt::Display) -> String {
    format!("{what} [default: {default}]")
}

impl SamplerArgs {
    /// Whether the option was given on the command line.
    fn given(&self, o: SamplerOption) -> bool {
        match o {
            SamplerOption::Eta => self.eta.is_some(),
            SamplerOption::DdpmVariance => self.ddpm_variance.is_some(),
            SamplerOption::Rho => self.rho.is_some(),
            SamplerOption::SChurn => self.s_churn.is_some(),
            SamplerOption::STmin => self.s_tmin.is_some(),
            SamplerOption::STmax => self.s_tmax.is_some(),
            SamplerOption::SNoise => self.s_noise.is_some(),
            SamplerOption::LowerOrderFinal => self.no_lower_order_final,
            SamplerOption::DenoiseToZero => self.denoise_to_zero,
        }
    }

    /// The flag that sets an option.
    fn flag(o: SamplerOption) -> String {
        match o {
            SamplerOption::LowerOrderFinal => "--no-lower-order-final".to_string(),
            o => format!("--{}", o.key().replace('_', "-")),
        }
    }

    /// The configuration; an option given for a sampler that does not use it is an error naming
    /// the samplers that do (e.g. "--eta is used only by ddim; the sampler is heun").
    pub fn config(&self) -> Result<SamplerConfig> {
        let mut c = SamplerConfig::new(self.sampler, self.steps);
        c.spacing = self.spacing;
        c.t_start = self.t_start;
        c.t_end = self.t_end;
        c.check_options(|o| self.given(o), Self::flag)?;
        c.eta = self.eta.unwrap_or(c.eta);
        c.ddpm_variance = self.ddpm_variance.unwrap_or(c.ddpm_variance);
        c.rho = self.rho.unwrap_or(c.rho);
        c.s_churn = self.s_churn.unwrap_or(c.s_churn);
        c.s_tmin = self.s_tmin.unwrap_or(c.s_tmin);
        c.s_tmax = self.s_tmax.unwrap_or(c.s_tmax);
        c.s_noise = self.s_noise.unwrap_or(c.s_noise);
        if self.no_lower_order_final {
            c.lower_order_final = false;
        }
        if self.denoise_to_zero {
            c.denoise_to_zero = true;
        }
        Ok(c)
    }
}

/// Most images one `sample` / `eval` call takes (they are held in memory together).
pub const MAX_IMAGES: usize = 10_000_000;

/// Seeds 0..n-1 for `--n` (1 ..= [`MAX_IMAGES`]).
pub fn first_n_seeds(n: usize) -> Result<Vec<u64>> {
    ensure!(n > 0, "--n must be > 0");
    ensure!(
        n <= MAX_IMAGES,
        "--n {n} is too large (at most {MAX_IMAGES} images per call; split the work with --seeds)"
    );
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
            ensure!(
                b - a < MAX_IMAGES as u64,
                "seed range '{part}' is too large (at most {MAX_IMAGES} images per call)"
            );
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

//! Noise processes: where a noisy sample sits for each time t.
//!
//! Every process has the kernel `x_t = s_t x0 + s_t sigma_t eps` (`docs/METHOD.md`
//! §1): `s_t` is the signal scale ([`Process::scale`]) and `sigma_t` the noise-to-signal
//! ratio ([`Process::sigma`]); the noise std is `s_t sigma_t`. The half log-SNR is
//! `lambda = log(s_t) - log(s_t sigma_t) = -ln sigma_t`.
//!
//! Samplers and denoisers work in the *scaled* space `x~ = x / s_t = x0 + sigma_t eps` (the
//! variance-exploding form of k-diffusion), where only `sigma` matters; the process supplies the
//! map between its time variable and `sigma`, the network's noise label, and the prior.
//!
//! Time variables: VP-SDE and discrete DDPM use t in (0, 1] (discrete step n sits at
//! t = (n+1)/N, as in DPM-Solver's discrete wrapper); EDM uses t = sigma itself.

mod ddpm;
mod edm;
mod vp;

pub use ddpm::{BetaSchedule, DiscreteVp};
pub use edm::Edm;
pub use vp::VpLinear;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Configuration of a noise process, as written in TOML/JSON files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProcessConfig {
    /// Continuous VP-SDE with linear beta(t) (Song et al. 2021). Defaults: beta_min 0.1, beta_max 20.
    Vp {
        #[serde(default = "vp::default_beta_min")]
        beta_min: f64,
        #[serde(default = "vp::default_beta_max")]
        beta_max: f64,
    },
    /// Discrete DDPM chain of `steps` betas (Ho et al. 2020), seen in continuous time.
    Ddpm {
        #[serde(default)]
        schedule: BetaSchedule,
        #[serde(default = "ddpm::default_steps")]
        steps: usize,
    },
    /// EDM / VE (Karras et al. 2022): x = y + sigma n; t = sigma. Defaults 0.002 .. 80.
    Edm {
        #[serde(default = "edm::default_sigma_min")]
        sigma_min: f64,
        #[serde(default = "edm::default_sigma_max")]
        sigma_max: f64,
    },
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig::Vp { beta_min: vp::default_beta_min(), beta_max: vp::default_beta_max() }
    }
}

impl ProcessConfig {
    /// Build the process, validating parameters.
    pub fn build(&self) -> Result<Process> {
        Ok(match self {
            ProcessConfig::Vp { beta_min, beta_max } => Process::Vp(VpLinear::new(*beta_min, *beta_max)?),
            ProcessConfig::Ddpm { schedule, steps } => Process::Ddpm(DiscreteVp::new(schedule, *steps)?),
            ProcessConfig::Edm { sigma_min, sigma_max } => Process::Edm(Edm::new(*sigma_min, *sigma_max)?),
        })
    }

    /// Parse the short CLI names `vp`, `ddpm-linear`, `ddpm-scaled-linear`, `ddpm-cosine`, `edm`.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(name.parse::<ProcessName>()?.config())
    }
}

crate::names::named_enum! {
    /// The named noise processes (their default settings), as the CLI takes them.
    pub enum ProcessName ("noise process") {
        /// VP-SDE, beta 0.1..20.
        Vp = "vp",
        /// 1000-step DDPM, linear betas 1e-4..0.02.
        DdpmLinear = "ddpm-linear" | "ddpm",
        /// 1000-step DDPM, LDM's scaled-linear betas 0.0015..0.0195.
        DdpmScaledLinear = "ddpm-scaled-linear",
        /// 1000-step DDPM, the cosine schedule.
        DdpmCosine = "ddpm-cosine",
        /// EDM, sigma 0.002..80.
        Edm = "edm",
    }
}

impl ProcessName {
    /// The process with its default settings.
    pub fn config(self) -> ProcessConfig {
        match self {
            ProcessName::Vp => ProcessConfig::default(),
            ProcessName::DdpmLinear => ProcessConfig::Ddpm { schedule: BetaSchedule::default(), steps: 1000 },
            ProcessName::DdpmScaledLinear => {
                ProcessConfig::Ddpm { schedule: BetaSchedule::scaled_linear_ldm(), steps: 1000 }
            }
            ProcessName::DdpmCosine => ProcessConfig::Ddpm { schedule: BetaSchedule::cosine(), steps: 1000 },
            ProcessName::Edm => {
                ProcessConfig::Edm { sigma_min: edm::default_sigma_min(), sigma_max: edm::default_sigma_max() }
            }
        }
    }
}

/// A built noise process. Cheap to clone.
#[derive(Clone, Debug, PartialEq)]
pub enum Process {
    Vp(VpLinear),
    Ddpm(DiscreteVp),
    Edm(Edm),
}

impl Process {
    /// Short name for logs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Process::Vp(_) => "vp",
            Process::Ddpm(_) => "ddpm",
            Process::Edm(_) => "edm",
        }
    }

    /// Signal scale s_t.
    pub fn scale(&self, t: f64) -> f64 {
        match self {
            Process::Vp(p) => p.log_scale(t).exp(),
            Process::Ddpm(p) => p.log_scale(t).exp(),
            Process::Edm(_) => 1.0,
        }
    }

    /// Noise-to-signal ratio sigma_t (EDM's sigma; for VP, std / scale).
    pub fn sigma(&self, t: f64) -> f64 {
        match self {
            Process::Vp(p) => vp_sigma_from_log_scale(p.log_scale(t)),
            Process::Ddpm(p) => vp_sigma_from_log_scale(p.log_scale(t)),
            Process::Edm(_) => t,
        }
    }

    /// Noise std s_t sigma_t.
    pub fn std(&self, t: f64) -> f64 {
        self.scale(t) * self.sigma(t)
    }

    /// Inverse of [`Process::sigma`].
    pub fn t_from_sigma(&self, sigma: f64) -> f64 {
        match self {
            Process::Vp(p) => p.t_from_log_scale(vp_log_scale_from_sigma(sigma)),
            Process::Ddpm(p) => p.t_from_log_scale(vp_log_scale_from_sigma(sigma)),
            Process::Edm(_) => sigma,
        }
    }

    /// Half log-SNR lambda = -ln sigma_t.
    pub fn lambda(&self, t: f64) -> f64 {
        -self.sigma(t).ln()
    }

    /// Inverse of [`Process::lambda`].
    pub fn t_from_lambda(&self, lambda: f64) -> f64 {
        self.t_from_sigma((-lambda).exp())
    }

    /// Signal scale for a given sigma: 1/sqrt(1+sigma^2) for variance-preserving processes, 1 for EDM.
    pub fn scale_at_sigma(&self, sigma: f64) -> f64 {
        match self {
            Process::Edm(_) => 1.0,
            _ => (-0.5 * sigma.mul_add(sigma, 0.0).ln_1p()).exp(),
        }
    }

    /// Default time range (t_end, t_start) for training and sampling: VP (1e-3, 1) as in the
    /// official code; discrete (1/N, 1); EDM (sigma_min, sigma_max).
    pub fn default_range(&self) -> (f64, f64) {
        match self {
            Process::Vp(_) => (1e-3, 1.0),
            Process::Ddpm(p) => (1.0 / p.steps() as f64, 1.0),
            Process::Edm(p) => (p.sigma_min, p.sigma_max),
        }
    }

    /// The noise label a network receives for time t: 999 t (VP, as score_sde), the discrete step
    /// index N t - 1 (DDPM), ln(sigma)/4 (EDM's c_noise).
    pub fn noise_label(&self, t: f64) -> f64 {
        match self {
            Process::Vp(_) => 999.0 * t,
            Process::Ddpm(p) => p.steps() as f64 * t - 1.0,
            Process::Edm(_) => t.ln() / 4.0,
        }
    }

    /// Scale of the prior in scaled space: sampling starts at `x~ = prior_scale * z`, z ~ N(0, I).
    /// VP and DDPM draw x_T ~ N(0, I) in process space, so x~ = z / s_T; EDM draws sigma_max z.
    pub fn prior_scale(&self, t_start: f64) -> f64 {
        match self {
            Process::Edm(_) => t_start,
            _ => 1.0 / self.scale(t_start),
        }
    }

    /// Whether `t` is inside the process's domain.
    pub fn check_t(&self, t: f64) -> Result<()> {
        let ok = match self {
            Process::Vp(_) | Process::Ddpm(_) => t > 0.0 && t <= 1.0,
            Process::Edm(_) => t > 0.0 && t.is_finite(),
        };
        if !ok {
            bail!("time {t} is outside the {} process's domain", self.name());
        }
        Ok(())
    }

    /// The discrete DDPM step (0..N-1) of a time t, for reports: n = round(N t) - 1 for a discrete
    /// process; for others, the step of the standard 1000-step linear DDPM chain with the same sigma.
    pub fn ddpm_step(&self, t: f64) -> f64 {
        match self {
            Process::Ddpm(p) => p.steps() as f64 * t - 1.0,
            _ => {
                let d = DiscreteVp::new(&BetaSchedule::default(), 1000).expect("default schedule is valid");
                1000.0 * d.t_from_log_scale(vp_log_scale_from_sigma(self.sigma(t))) - 1.0
            }
        }
    }
}

/// sigma = sqrt(1/s^2 - 1) for a VP process, computed as sqrt(expm1(-2 log s)) (exact near s = 1).
pub fn vp_sigma_from_log_scale(log_s: f64) -> f64 {
    (-2.0 * log_s).exp_m1().max(0.0).sqrt()
}

/// log s = -ln(1 + sigma^2)/2 for a VP process.
pub fn vp_log_scale_from_sigma(sigma: f64) -> f64 {
    -0.5 * (sigma * sigma).ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Process> {
        ["vp", "ddpm-linear", "ddpm-scaled-linear", "ddpm-cosine", "edm"]
            .iter()
            .map(|n| ProcessConfig::from_name(n).unwrap().build().unwrap())
            .collect()
    }

    #[test]
    fn conversions_round_trip() {
        for p in all() {
            let (lo, hi) = p.default_range();
            for i in 0..=20 {
                let t = lo + (hi - lo) * i as f64 / 20.0;
                let s = p.sigma(t);
                let back = p.t_from_sigma(s);
                assert!((back - t).abs() <= 1e-9 * t.max(1.0), "{}: t {t} -> sigma {s} -> {back}", p.name());
                let l = p.lambda(t);
                assert!((p.t_from_lambda(l) - t).abs() <= 1e-9 * t.max(1.0));
                // std^2 + scale^2 = 1 for the VP family; scale = scale_at_sigma(sigma) for all.
                assert!((p.scale_at_sigma(s) - p.scale(t)).abs() < 1e-12);
                if !matches!(p, Process::Edm(_)) {
                    assert!((p.std(t).powi(2) + p.scale(t).powi(2) - 1.0).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn paper_boundaries_map_to_published_edm_sigmas() {
        // docs/METHOD.md §1 maps the VP cuts to EDM sigma 2.5103 and 7.6577, with
        // sigma = sqrt(exp(t^2 (b1-b0)/2 + t b0) - 1). An independent Python evaluation of that
        // formula gives sigma(0.442) = 2.510267 and sigma(0.636) = 7.657710; note that 7.6577 is
        // the image of t = 0.636, not of the t2 = 0.6308 quoted for CIFAR-10 (sigma(0.6308) = 7.404576).
        let vp = ProcessConfig::default().build().unwrap();
        assert!((vp.sigma(0.442) - 2.510267).abs() < 1e-6, "{}", vp.sigma(0.442));
        assert!((vp.sigma(0.636) - 7.657710).abs() < 1e-6, "{}", vp.sigma(0.636));
        assert!((vp.sigma(0.6308) - 7.404576).abs() < 1e-6, "{}", vp.sigma(0.6308));
        // DDPM steps of the cuts: the discrete chain's step with the same sigma.
        let ddpm = ProcessConfig::from_name("ddpm-linear").unwrap().build().unwrap();
        assert!((ddpm.ddpm_step(ddpm.t_from_sigma(vp.sigma(0.442))) - vp.ddpm_step(0.442)).abs() < 1e-9);
    }
}

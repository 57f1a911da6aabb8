//! Samplers: DDPM, DDIM, single-step DPM-Solver, multistep DPM-Solver++, EDM Euler/Heun.
//!
//! Every sampler works in the scaled space `x~ = x0 + sigma eps` of [`crate::process`] (k-diffusion's
//! variance-exploding form) and sees the model only through a [`Denoiser`] `(x~, sigma) -> x0`.
//! Every denoiser call passes a per-sample `sigma` tensor `[B]` of the sample's dtype and device,
//! so a multi-stage denoiser can route each sample (and each intermediate solver point) to its
//! stage's decoder. One batched denoiser call counts as one network evaluation (NFE).
//!
//! Conventions (docs/METHOD.md §6; they make msdiff's outputs equal the reference
//! implementations' on identical noise):
//! - sampling starts at `x~_T = process.prior_scale(t_start) * noise`;
//! - the VP-space formulas of DDIM/DDPM/DPM-Solver(++) are rewritten exactly in `x~` (divide
//!   `x_t = alpha_t x~_t` by `alpha_t`); only `sigma` (noise-to-signal ratio) and the half
//!   log-SNR `lambda = -ln sigma` appear;
//! - the result is returned in process space at `t_end`, `scale(t_end) * x~_end` (DPM-Solver's
//!   output; EDM: scale 1), or, with `denoise_to_zero`, the denoiser's x0 at `t_end` (one extra NFE);
//! - Euler/Heun (EDM Algorithm 2) map `t_end` to `sigma_min`; their last step goes to sigma = 0 and
//!   `x~` at sigma 0 (which equals process space there) is returned as is (so they refuse
//!   `denoise_to_zero`).
//!
//! A [`SamplerConfig`] holds every option of every sampler; an option the chosen sampler does not
//! use ([`SamplerOption`]) must stay at its default, else validation fails naming the samplers that
//! use it.
//!
//! Randomness (DDPM, DDIM with eta > 0, churned Euler/Heun) only comes from the per-sample
//! [`SampleStreams`], so sample `i` does not depend on the batch it is drawn in.
//!
//! Files: `mod.rs` (configuration, time grids, dispatch), [`ancestral`] (DDPM, DDIM),
//! [`dpm_solver`] (single-step DPM-Solver-1/2/3), [`dpm_solver_pp`] (multistep DPM-Solver++
//! 2M/3M/3M-exact), [`edm`] (Euler, Heun). Each family's function walks a sigma grid with an
//! [`Evaluator`], so it can also be called directly; [`sample`] picks the grid and the family.

pub mod ancestral;
pub mod dpm_solver;
pub mod dpm_solver_pp;
pub mod edm;

use crate::denoiser::Denoiser;
use crate::process::Process;
use crate::rng::SampleStreams;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tch::{Device, Kind, Tensor};

use crate::names::named_enum;

named_enum! {
    /// Which sampler.
    pub enum SamplerKind ("sampler") {
        /// DDPM ancestral sampling (Ho et al. 2020).
        Ddpm = "ddpm",
        /// DDIM with stochasticity `eta` (Song, Meng & Ermon 2021).
        Ddim = "ddim",
        /// Single-step DPM-Solver-1 (Lu et al. 2022) = DDIM(eta = 0) on the same grid.
        DpmSolver1 = "dpm-solver-1",
        /// Single-step DPM-Solver-2 (Lu et al. 2022, Algorithm 1, r1 = 1/2).
        DpmSolver2 = "dpm-solver-2",
        /// Single-step DPM-Solver-3 (Lu et al. 2022, Algorithm 2, r1 = 1/3, r2 = 2/3).
        DpmSolver3 = "dpm-solver-3",
        /// Multistep DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2).
        DpmSolverPp2M = "dpm-solver++-2m",
        /// Multistep DPM-Solver++(3M) exactly as the reference implementation (D2 weighted by
        /// phi_3), which converges at order 2.
        DpmSolverPp3M = "dpm-solver++-3m",
        /// Multistep DPM-Solver++(3M) with the third-order D2 weight 2 phi_3: converges at order 3.
        DpmSolverPp3MExact = "dpm-solver++-3m-exact",
        /// EDM deterministic/stochastic Euler (Karras et al. 2022, Algorithm 2 without the correction).
        Euler = "euler",
        /// EDM Heun's 2nd-order method (Karras et al. 2022, Algorithms 1 and 2).
        Heun = "heun",
    }
}

impl SamplerKind {
    /// The method's default spacing: logSNR for single-step DPM-Solver (the paper's choice),
    /// time-uniform for DDPM/DDIM/DPM-Solver++ (the reference implementation's default
    /// `skip_type`), Karras for Euler/Heun (EDM).
    pub fn default_spacing(self) -> Spacing {
        match self {
            SamplerKind::DpmSolver1 | SamplerKind::DpmSolver2 | SamplerKind::DpmSolver3 => Spacing::LogSnr,
            SamplerKind::Ddpm | SamplerKind::Ddim => Spacing::TimeUniform,
            SamplerKind::DpmSolverPp2M | SamplerKind::DpmSolverPp3M | SamplerKind::DpmSolverPp3MExact => {
                Spacing::TimeUniform
            }
            SamplerKind::Euler | SamplerKind::Heun => Spacing::Karras,
        }
    }

    /// Euler/Heun: the EDM family (grid of `steps` sigmas, then 0).
    pub fn is_edm_family(self) -> bool {
        matches!(self, SamplerKind::Euler | SamplerKind::Heun)
    }

    /// Multistep DPM-Solver++ (2M, 3M, 3M-exact).
    pub fn is_multistep(self) -> bool {
        matches!(self, SamplerKind::DpmSolverPp2M | SamplerKind::DpmSolverPp3M | SamplerKind::DpmSolverPp3MExact)
    }
}

named_enum! {
    /// How the time points are laid out between `t_start` and `t_end`.
    pub enum Spacing ("spacing") {
        /// Uniform in the half log-SNR lambda = -ln sigma (DPM-Solver's `logSNR`).
        LogSnr = "logsnr",
        /// Uniform in the process's time variable (DPM-Solver's `time_uniform`; EDM: uniform in sigma).
        TimeUniform = "time-uniform",
        /// Uniform in sqrt(t), then squared (DPM-Solver's `time_quadratic`).
        TimeQuadratic = "time-quadratic",
        /// Karras et al. 2022 eq. 5: uniform in sigma^(1/rho).
        Karras = "karras",
    }
}

named_enum! {
    /// DDPM's per-step noise variance.
    #[derive(Default)]
    pub enum DdpmVariance ("DDPM variance") {
        /// The posterior variance beta-tilde (Ho et al. 2020 "fixedsmall"; = DDIM with eta = 1).
        #[default]
        Posterior = "posterior",
        /// The forward transition variance beta (Ho et al. 2020 "fixedlarge"), with the same
        /// posterior mean. Over a step sigma_s -> sigma_t (sigma_t < sigma_s) this is, in x~ space,
        /// (sigma_s^2 - sigma_t^2) (alpha_s / alpha_t)^2: beta / alpha_t^2 for VP, sigma_s^2 - sigma_t^2
        /// for EDM/VE.
        Forward = "forward",
    }
}

fn default_rho() -> f64 {
    SamplerConfig::DEFAULT_RHO
}
fn default_inf() -> f64 {
    SamplerConfig::DEFAULT_S_TMAX
}
fn default_s_noise() -> f64 {
    SamplerConfig::DEFAULT_S_NOISE
}
fn default_lower_order_final() -> bool {
    SamplerConfig::DEFAULT_LOWER_ORDER_FINAL
}
fn is_inf(x: &f64) -> bool {
    *x == f64::INFINITY
}
/// `s_tmax` = +inf is written by omitting it (JSON has no infinity); JSON `null` reads back as +inf.
fn ser_tmax<S: Serializer>(x: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if is_inf(x) {
        s.serialize_none()
    } else {
        s.serialize_f64(*x)
    }
}
fn de_tmax<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

/// A sampler and its options, as written in TOML/JSON files (only `kind` and `steps` are required).
/// An option the sampler does not use ([`SamplerOption`]) must be left at its default:
/// [`SamplerConfig::validate`] refuses, say, `eta = 0.5` with `heun`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    /// Number of steps; for single-step DPM-Solver the NFE budget ("DPM-Solver-fast", docs/METHOD.md
    /// §6); for Euler/Heun the number n of nonzero sigmas (Heun: 2n - 1 NFE).
    pub steps: usize,
    /// `None`: the method's default ([`SamplerKind::default_spacing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spacing: Option<Spacing>,
    /// `None`: the process's default range ([`Process::default_range`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_start: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_end: Option<f64>,
    /// DDIM stochasticity in [0, 1] (0: deterministic DDIM; 1: DDPM posterior variance).
    #[serde(default)]
    pub eta: f64,
    #[serde(default)]
    pub ddpm_variance: DdpmVariance,
    /// Karras spacing exponent.
    #[serde(default = "default_rho")]
    pub rho: f64,
    /// EDM churn (Algorithm 2): S_churn, S_tmin, S_tmax (in sigma), S_noise.
    #[serde(default)]
    pub s_churn: f64,
    #[serde(default)]
    pub s_tmin: f64,
    #[serde(
        default = "default_inf",
        skip_serializing_if = "is_inf",
        serialize_with = "ser_tmax",
        deserialize_with = "de_tmax"
    )]
    pub s_tmax: f64,
    #[serde(default = "default_s_noise")]
    pub s_noise: f64,
    /// Multistep DPM-Solver++: lower the order of the final steps when steps < 10.
    #[serde(default = "default_lower_order_final")]
    pub lower_order_final: bool,
    /// End with x0 = D(x~_end, sigma_end) (one extra NFE; not for Euler/Heun, which end at sigma 0).
    #[serde(default)]
    pub denoise_to_zero: bool,
}

impl SamplerConfig {
    /// Default DDIM stochasticity (deterministic DDIM).
    pub const DEFAULT_ETA: f64 = 0.0;
    /// Default Karras spacing exponent (EDM's).
    pub const DEFAULT_RHO: f64 = 7.0;
    /// Default EDM churn: none.
    pub const DEFAULT_S_CHURN: f64 = 0.0;
    /// Default EDM churn range: every sigma.
    pub const DEFAULT_S_TMIN: f64 = 0.0;
    pub const DEFAULT_S_TMAX: f64 = f64::INFINITY;
    /// Default EDM churn noise scale.
    pub const DEFAULT_S_NOISE: f64 = 1.0;
    /// Default for multistep DPM-Solver++: lower the final orders (the reference's default).
    pub const DEFAULT_LOWER_ORDER_FINAL: bool = true;

    /// `kind` with `steps` and every option at its default.
    pub fn new(kind: SamplerKind, steps: usize) -> Self {
        SamplerConfig {
            kind,
            steps,
            spacing: None,
            t_start: None,
            t_end: None,
            eta: Self::DEFAULT_ETA,
            ddpm_variance: DdpmVariance::default(),
            rho: Self::DEFAULT_RHO,
            s_churn: Self::DEFAULT_S_CHURN,
            s_tmin: Self::DEFAULT_S_TMIN,
            s_tmax: Self::DEFAULT_S_TMAX,
            s_noise: Self::DEFAULT_S_NOISE,
            lower_order_final: Self::DEFAULT_LOWER_ORDER_FINAL,
            denoise_to_zero: false,
        }
    }

    /// The spacing in use.
    pub fn spacing(&self) -> Spacing {
        self.spacing.unwrap_or(self.kind.default_spacing())
    }

    /// The spacing in use on `process`: as [`Self::spacing`], except that on EDM (where t is sigma
    /// itself, so a time-uniform grid leaves one step from sigma ~ 1 to sigma_min) an unset
    /// time-uniform default becomes log-SNR spacing.
    pub fn spacing_for(&self, process: &Process) -> Spacing {
        match (self.spacing, process) {
            (None, Process::Edm(_)) if self.kind.default_spacing() == Spacing::TimeUniform => Spacing::LogSnr,
            _ => self.spacing(),
        }
    }

    /// `(t_end, t_start)` in use.
    pub fn range(&self, process: &Process) -> (f64, f64) {
        let (e, s) = process.default_range();
        (self.t_end.unwrap_or(e), self.t_start.unwrap_or(s))
    }

    /// Every value in range on `process`, and no option set that the sampler does not use.
    pub fn validate(&self, process: &Process) -> Result<()> {
        let name = self.kind.name();
        ensure!(self.steps > 0, "{name}: steps must be at least 1 (got 0)");
        ensure!(self.steps <= 1_000_000, "{name}: steps {} is absurdly large (max 1000000)", self.steps);
        self.check_options(|o| self.is_set(o), |o| o.key().to_string())?;
        let (t_end, t_start) = self.range(process);
        process.check_t(t_start).map_err(|e| anyhow!("{name}: t_start: {e}"))?;
        process.check_t(t_end).map_err(|e| anyhow!("{name}: t_end: {e}"))?;
        ensure!(t_end < t_start, "{name}: t_end ({t_end}) must be below t_start ({t_start})");
        let (s_end, s_start) = (process.sigma(t_end), process.sigma(t_start));
        ensure!(
            s_end > 0.0 && s_start.is_finite() && s_end < s_start,
            "{name}: the range t {t_end}..{t_start} maps to sigma {s_end}..{s_start}, which is not a positive increasing range"
        );
        ensure!(
            self.eta.is_finite() && (0.0..=1.0).contains(&self.eta),
            "{name}: eta must be in [0, 1] (got {})",
            self.eta
        );
        ensure!(self.rho.is_finite() && self.rho > 0.0, "{name}: rho must be positive and finite (got {})", self.rho);
        ensure!(self.s_churn.is_finite() && self.s_churn >= 0.0, "{name}: s_churn must be >= 0 (got {})", self.s_churn);
        ensure!(self.s_noise.is_finite() && self.s_noise >= 0.0, "{name}: s_noise must be >= 0 (got {})", self.s_noise);
        ensure!(
            self.s_tmin >= 0.0 && self.s_tmin.is_finite() && !self.s_tmax.is_nan() && self.s_tmax >= self.s_tmin,
            "{name}: need 0 <= s_tmin <= s_tmax (got s_tmin {}, s_tmax {})",
            self.s_tmin,
            self.s_tmax
        );
        Ok(())
    }

    /// Whether `option` is set to something other than its default.
    pub fn is_set(&self, option: SamplerOption) -> bool {
        // `!=` on the floats: a NaN counts as set (and is then refused by a range check or here).
        match option {
            SamplerOption::Eta => self.eta != Self::DEFAULT_ETA,
            SamplerOption::DdpmVariance => self.ddpm_variance != DdpmVariance::default(),
            SamplerOption::Rho => self.rho != Self::DEFAULT_RHO,
            SamplerOption::SChurn => self.s_churn != Self::DEFAULT_S_CHURN,
            SamplerOption::STmin => self.s_tmin != Self::DEFAULT_S_TMIN,
            SamplerOption::STmax => self.s_tmax != Self::DEFAULT_S_TMAX,
            SamplerOption::SNoise => self.s_noise != Self::DEFAULT_S_NOISE,
            SamplerOption::LowerOrderFinal => self.lower_order_final != Self::DEFAULT_LOWER_ORDER_FINAL,
            SamplerOption::DenoiseToZero => self.denoise_to_zero,
        }
    }

    /// Refuse every option for which `is_set` holds but that this sampler (with its spacing) does
    /// not use, naming the option as `name` does (a CLI flag or a configuration key) and the
    /// samplers that use it, e.g. "--eta is used only by ddim; the sampler is heun".
    /// [`Self::validate`] runs it with [`Self::is_set`] and the configuration keys.
    pub fn check_options(
        &self,
        is_set: impl Fn(SamplerOption) -> bool,
        name: impl Fn(SamplerOption) -> String,
    ) -> Result<()> {
        for option in SamplerOption::ALL {
            if is_set(option) && !option.is_used_by(self) {
                let with = if option == SamplerOption::Rho {
                    format!(" with {} spacing", self.spacing())
                } else {
                    String::new()
                };
                bail!("{} is used only {}; the sampler is {}{with}", name(option), option.users(), self.kind);
            }
        }
        Ok(())
    }
}

/// An option of [`SamplerConfig`] that only some samplers use (the others refuse it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SamplerOption {
    Eta,
    DdpmVariance,
    Rho,
    SChurn,
    STmin,
    STmax,
    SNoise,
    LowerOrderFinal,
    DenoiseToZero,
}

impl SamplerOption {
    pub const ALL: [SamplerOption; 9] = [
        SamplerOption::Eta,
        SamplerOption::DdpmVariance,
        SamplerOption::Rho,
        SamplerOption::SChurn,
        SamplerOption::STmin,
        SamplerOption::STmax,
        SamplerOption::SNoise,
        SamplerOption::LowerOrderFinal,
        SamplerOption::DenoiseToZero,
    ];

    /// The key in [`SamplerConfig`] files (the CLI flag is the same with dashes; for
    /// `lower_order_final` it is `--no-lower-order-final`).
    pub fn key(self) -> &'static str {
        match self {
            SamplerOption::Eta => "eta",
            SamplerOption::DdpmVariance => "ddpm_variance",
            SamplerOption::Rho => "rho",
            SamplerOption::SChurn => "s_churn",
            SamplerOption::STmin => "s_tmin",
            SamplerOption::STmax => "s_tmax",
            SamplerOption::SNoise => "s_noise",
            SamplerOption::LowerOrderFinal => "lower_order_final",
            SamplerOption::DenoiseToZero => "denoise_to_zero",
        }
    }

    /// Whether a sampler of this kind uses the option (for `rho`: with Karras spacing).
    fn kind_uses(self, kind: SamplerKind) -> bool {
        match self {
            SamplerOption::Eta => kind == SamplerKind::Ddim,
            SamplerOption::DdpmVariance => kind == SamplerKind::Ddpm,
            SamplerOption::Rho => kind.default_spacing() == Spacing::Karras,
            SamplerOption::SChurn | SamplerOption::STmin | SamplerOption::STmax | SamplerOption::SNoise => {
                kind.is_edm_family()
            }
            SamplerOption::LowerOrderFinal => kind.is_multistep(),
            // Euler/Heun end at sigma 0, where x~ is the sample.
            SamplerOption::DenoiseToZero => !kind.is_edm_family(),
        }
    }

    /// Whether `cfg`'s sampler uses the option: rho is used by the Karras spacing, whichever the
    /// sampler; the others by the samplers of [`Self::users`].
    pub fn is_used_by(self, cfg: &SamplerConfig) -> bool {
        match self {
            SamplerOption::Rho => cfg.spacing() == Spacing::Karras,
            _ => self.kind_uses(cfg.kind),
        }
    }

    /// "by ddim", "by euler and heun", "with karras spacing (the default of euler and heun)".
    pub fn users(self) -> String {
        let names: Vec<&str> =
            SamplerKind::ALL.into_iter().filter(|&k| self.kind_uses(k)).map(SamplerKind::name).collect();
        let list = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.join(""),
        };
        match self {
            SamplerOption::Rho => format!("with {} spacing (the default of {list})", Spacing::Karras),
            _ => format!("by {list}"),
        }
    }
}

/// Samples in process space at `t_end` (see the module docs) and the number of denoiser calls.
pub struct Sampled {
    pub x: Tensor,
    pub nfe: usize,
}

/// The outer grid a sampler walks and its per-step orders.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Outer time points, decreasing, in process time. Euler/Heun: the n Karras (or other) times,
    /// then `0.0`, which stands for sigma = 0.
    pub t: Vec<f64>,
    /// sigma at each point of `t` (computed directly, not through `t`, for logSNR and Karras).
    pub sigma: Vec<f64>,
    /// Per step: single-step DPM-Solver: its order (= its NFE); multistep DPM-Solver++: the order
    /// of the update; Heun: 2, with 1 for the final step into sigma 0; others: 1.
    pub orders: Vec<usize>,
    /// Denoiser evaluations the run will make (including the `denoise_to_zero` jump).
    pub nfe: usize,
}

/// `n` points from `a` to `b` (inclusive, exact endpoints).
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    (0..n).map(|i| if i + 1 == n { b } else { a + (b - a) * (i as f64) / ((n - 1) as f64) }).collect()
}

/// Karras et al. 2022 eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho,
/// i = 0..n-1 (without the appended 0). `n = 1` gives `[smax]`.
pub fn karras_sigmas(sigma_max: f64, sigma_min: f64, n: usize, rho: f64) -> Vec<f64> {
    let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    let mut s: Vec<f64> = linspace(a, b, n).into_iter().map(|v| v.powf(rho)).collect();
    s[0] = sigma_max;
    if n > 1 {
        s[n - 1] = sigma_min;
    }
    s
}

/// `n` decreasing points from `t_start` to `t_end` with the given spacing, as (times, sigmas).
/// This is DPM-Solver's `get_time_steps` (with N = n - 1) plus Karras.
pub fn spaced_points(
    process: &Process,
    spacing: Spacing,
    t_start: f64,
    t_end: f64,
    n: usize,
    rho: f64,
) -> (Vec<f64>, Vec<f64>) {
    let (t, sigma): (Vec<f64>, Vec<f64>) = match spacing {
        Spacing::LogSnr => {
            let l = linspace(process.lambda(t_start), process.lambda(t_end), n);
            (l.iter().map(|&l| process.t_from_lambda(l)).collect(), l.iter().map(|&l| (-l).exp()).collect())
        }
        Spacing::TimeUniform => {
            let t = linspace(t_start, t_end, n);
            let s = t.iter().map(|&t| process.sigma(t)).collect();
            (t, s)
        }
        Spacing::TimeQuadratic => {
            let t: Vec<f64> = linspace(t_start.sqrt(), t_end.sqrt(), n).into_iter().map(|v| v * v).collect();
            let s = t.iter().map(|&t| process.sigma(t)).collect();
            (t, s)
        }
        Spacing::Karras => {
            let s = karras_sigmas(process.sigma(t_start), process.sigma(t_end), n, rho);
            (s.iter().map(|&s| process.t_from_sigma(s)).collect(), s)
        }
    };
    let (mut t, mut sigma) = (t, sigma);
    // Exact endpoints (no round-trip drift).
    t[0] = t_start;
    sigma[0] = process.sigma(t_start);
    if n > 1 {
        t[n - 1] = t_end;
        sigma[n - 1] = process.sigma(t_end);
    }
    (t, sigma)
}

/// Orders of single-step DPM-Solver with an NFE budget (Lu et al. 2022, "DPM-Solver-fast";
/// docs/METHOD.md §6). Order 1: `steps` first-order steps.
pub fn singlestep_orders(order: usize, steps: usize) -> Vec<usize> {
    match order {
        3 => {
            let k = steps / 3 + 1;
            match steps % 3 {
                0 => {
                    let mut o = vec![3; k - 2];
                    o.extend([2, 1]);
                    o
                }
                1 => {
                    let mut o = vec![3; k - 1];
                    o.push(1);
                    o
                }
                _ => {
                    let mut o = vec![3; k - 1];
                    o.push(2);
                    o
                }
            }
        }
        2 => {
            let mut o = vec![2; steps / 2];
            if steps % 2 == 1 {
                o.push(1);
            }
            o
        }
        _ => vec![1; steps],
    }
}

/// Orders of multistep DPM-Solver++ (reference implementation): warm-up with orders 1, 2, ...;
/// with `lower_order_final` and steps < 10, step i (1-based) uses at most steps + 1 - i.
pub fn multistep_orders(order: usize, steps: usize, lower_order_final: bool) -> Vec<usize> {
    (1..=steps)
        .map(|i| {
            let mut o = order.min(i);
            if lower_order_final && steps < 10 {
                o = o.min(steps + 1 - i);
            }
            o
        })
        .collect()
}

/// The grid and orders a configuration uses (validated first).
pub fn plan(cfg: &SamplerConfig, process: &Process) -> Result<Plan> {
    cfg.validate(process)?;
    let (t_end, t_start) = cfg.range(process);
    let spacing = cfg.spacing_for(process);
    let steps = cfg.steps;
    let jump = usize::from(cfg.denoise_to_zero);
    let pts = |n: usize| spaced_points(process, spacing, t_start, t_end, n, cfg.rho);
    Ok(match cfg.kind {
        SamplerKind::Ddpm | SamplerKind::Ddim => {
            let (t, sigma) = pts(steps + 1);
            Plan { t, sigma, orders: vec![1; steps], nfe: steps + jump }
        }
        SamplerKind::DpmSolver1 | SamplerKind::DpmSolver2 | SamplerKind::DpmSolver3 => {
            let order = match cfg.kind {
                SamplerKind::DpmSolver1 => 1,
                SamplerKind::DpmSolver2 => 2,
                _ => 3,
            };
            let orders = singlestep_orders(order, steps);
            let (t, sigma) = if spacing == Spacing::LogSnr {
                pts(orders.len() + 1)
            } else {
                // A grid of steps + 1 points, outer points at the cumulative sums of the orders.
                let (tg, sg) = pts(steps + 1);
                let mut idx = vec![0usize];
                for o in &orders {
                    idx.push(idx.last().unwrap() + o);
                }
                (idx.iter().map(|&i| tg[i]).collect(), idx.iter().map(|&i| sg[i]).collect())
            };
            Plan { t, sigma, orders, nfe: steps + jump }
        }
        SamplerKind::DpmSolverPp2M | SamplerKind::DpmSolverPp3M | SamplerKind::DpmSolverPp3MExact => {
            let order = if cfg.kind == SamplerKind::DpmSolverPp2M { 2 } else { 3 };
            let (t, sigma) = pts(steps + 1);
            Plan { t, sigma, orders: multistep_orders(order, steps, cfg.lower_order_final), nfe: steps + jump }
        }
        SamplerKind::Euler | SamplerKind::Heun => {
            let (mut t, mut sigma) = pts(steps);
            t.push(0.0);
            sigma.push(0.0);
            let heun = cfg.kind == SamplerKind::Heun;
            let orders: Vec<usize> = (0..steps).map(|i| if heun && i + 1 < steps { 2 } else { 1 }).collect();
            let nfe = orders.iter().sum();
            Plan { t, sigma, orders, nfe }
        }
    })
}

/// The decreasing time grid (process time) a configuration uses: [`Plan::t`].
pub fn time_grid(cfg: &SamplerConfig, process: &Process) -> Result<Vec<f64>> {
    Ok(plan(cfg, process)?.t)
}

/// Evaluates the denoiser for one sampling run: counts the evaluations (NFE) and holds the batch
/// layout (size, kind, device) that every evaluation, noise draw and check uses. The per-family
/// functions ([`ancestral::ddim`], [`dpm_solver::singlestep`], [`dpm_solver_pp::multistep`],
/// [`edm::euler_heun`], ...) take one, so they can be called directly on any sigma grid.
pub struct Evaluator<'a> {
    den: &'a dyn Denoiser,
    name: &'static str,
    nfe: usize,
    batch: i64,
    size: Vec<i64>,
    kind: Kind,
    device: Device,
}

impl<'a> Evaluator<'a> {
    /// An evaluator of `den` for batches shaped like `x` (`[B, ...]`, with its kind and device);
    /// `name` prefixes its error messages (e.g. the sampler's name).
    pub fn new(den: &'a dyn Denoiser, name: &'static str, x: &Tensor) -> Self {
        let size = x.size();
        Evaluator { den, name, nfe: 0, batch: size[0], size, kind: x.kind(), device: x.device() }
    }

    /// Denoiser evaluations so far.
    pub fn nfe(&self) -> usize {
        self.nfe
    }

    /// D(x~, sigma) with a per-sample sigma tensor; counts one NFE.
    pub fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let s = Tensor::full([self.batch], sigma, (self.kind, self.device));
        self.nfe += 1;
        let out = self
            .den
            .denoise(x, &s)
            .with_context(|| format!("{}: denoiser failed at sigma {sigma} (evaluation {})", self.name, self.nfe))?;
        ensure!(
            out.size() == self.size,
            "{}: denoiser returned shape {:?} for input {:?} (sigma {sigma})",
            self.name,
            out.size(),
            self.size
        );
        Ok(if out.kind() != self.kind || out.device() != self.device {
            out.to_kind(self.kind).to_device(self.device)
        } else {
            out
        })
    }

    /// The noise prediction eps = (x~ - D(x~, sigma)) / sigma; counts one NFE.
    pub fn eps(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let d = self.denoise(x, sigma)?;
        Ok((x - d) / sigma)
    }

    /// Per-sample standard normals shaped like the batch.
    pub fn noise(&self, streams: &mut SampleStreams) -> Tensor {
        streams.randn(&self.size[1..], self.kind).to_device(self.device)
    }

    /// Error naming the step if `x` has a NaN or infinity.
    pub fn check(&self, x: &Tensor, step: usize, steps: usize, sigma_from: f64, sigma_to: f64) -> Result<()> {
        if !all_finite(x) {
            bail!(
                "{}: non-finite values after step {}/{steps} (sigma {sigma_from} -> {sigma_to})",
                self.name,
                step + 1
            );
        }
        Ok(())
    }
}

fn all_finite(x: &Tensor) -> bool {
    x.isfinite().all().int64_value(&[]) == 1
}

/// Run the sampler. `noise`: `[B, ...]` standard normal prior draw (process space, float kind);
/// `streams`: one stream per sample (B of them). Returns process-space samples at `t_end`
/// (`scale(t_end) x~_end`; Euler/Heun: x~ at sigma 0; `denoise_to_zero`: the final x0).
pub fn sample(
    cfg: &SamplerConfig,
    den: &dyn Denoiser,
    process: &Process,
    noise: &Tensor,
    streams: &mut SampleStreams,
) -> Result<Sampled> {
    let name = cfg.kind.name();
    let plan = plan(cfg, process)?;
    let size = noise.size();
    ensure!(!size.is_empty() && size[0] >= 1, "{name}: noise must be [B, ...] with B >= 1 (got shape {size:?})");
    ensure!(
        matches!(noise.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16),
        "{name}: noise must be a floating-point tensor (got {:?})",
        noise.kind()
    );
    ensure!(
        streams.len() as i64 == size[0],
        "{name}: {} random streams for a batch of {} samples (need one per sample)",
        streams.len(),
        size[0]
    );
    ensure!(all_finite(noise), "{name}: the prior noise contains NaN or infinite values");
    let (t_end, t_start) = cfg.range(process);
    let mut ev = Evaluator::new(den, name, noise);
    let x = noise * process.prior_scale(t_start);
    let sig = &plan.sigma;
    let x = match cfg.kind {
        SamplerKind::Ddpm => ancestral::ddpm(&mut ev, x, sig, cfg.ddpm_variance, process, streams)?,
        SamplerKind::Ddim => ancestral::ddim(&mut ev, x, sig, cfg.eta, streams)?,
        SamplerKind::DpmSolver1 | SamplerKind::DpmSolver2 | SamplerKind::DpmSolver3 => {
            dpm_solver::singlestep(&mut ev, x, sig, &plan.orders)?
        }
        SamplerKind::DpmSolverPp2M | SamplerKind::DpmSolverPp3M => {
            dpm_solver_pp::multistep(&mut ev, x, sig, &plan.orders, dpm_solver_pp::D2Weight::Reference)?
        }
        SamplerKind::DpmSolverPp3MExact => {
            dpm_solver_pp::multistep(&mut ev, x, sig, &plan.orders, dpm_solver_pp::D2Weight::ThirdOrder)?
        }
        SamplerKind::Euler | SamplerKind::Heun => {
            let churn =
                edm::Churn { s_churn: cfg.s_churn, s_tmin: cfg.s_tmin, s_tmax: cfg.s_tmax, s_noise: cfg.s_noise };
            edm::euler_heun(&mut ev, x, sig, cfg.kind == SamplerKind::Heun, churn, streams)?
        }
    };
    let x = if cfg.kind.is_edm_family() {
        x
    } else if cfg.denoise_to_zero {
        let s_end = *sig.last().unwrap();
        let x0 = ev.denoise(&x, s_end)?;
        ensure!(all_finite(&x0), "{name}: non-finite values in the final denoising jump (sigma {s_end})");
        x0
    } else {
        x * process.scale(t_end)
    };
    debug_assert_eq!(ev.nfe, plan.nfe);
    Ok(Sampled { x, nfe: ev.nfe })
}

/// Sample one image per seed, `batch` at a time. Image i's prior draw and every later random draw
/// come from its own stream (`seeds[i]`), so the result does not depend on `batch`; `init`, if
/// given (`[N, *item]`, process space), replaces the prior draws. Returns `[N, *item]` f32 on the
/// CPU with the NFE per image; `progress(done)` is called after each batch.
#[allow(clippy::too_many_arguments)]
pub fn sample_seeds(
    cfg: &SamplerConfig,
    den: &dyn Denoiser,
    process: &Process,
    item: &[i64],
    seeds: &[u64],
    batch: usize,
    init: Option<&Tensor>,
    device: Device,
    mut progress: impl FnMut(usize),
) -> Result<Sampled> {
    ensure!(batch > 0, "the sampling batch size must be > 0");
    let mut outs = Vec::new();
    let mut nfe = 0;
    let mut done = 0;
    for chunk in seeds.chunks(batch) {
        let mut streams = SampleStreams::from_seeds(chunk);
        let drawn = streams.randn(item, Kind::Float);
        let noise = match init {
            Some(t) => t.narrow(0, done as i64, chunk.len() as i64).to_kind(Kind::Float),
            None => drawn,
        };
        let s = sample(cfg, den, process, &noise.to_device(device), &mut streams)?;
        nfe = s.nfe;
        outs.push(s.x.to_device(Device::Cpu).to_kind(Kind::Float));
        done += chunk.len();
        progress(done);
    }
    ensure!(!outs.is_empty(), "no seeds to sample");
    Ok(Sampled { x: Tensor::cat(&outs, 0), nfe })
}

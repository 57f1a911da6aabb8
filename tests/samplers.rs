//! Sampler tests against exact oracles: the Gaussian PF-ODE closed form and moments
//! (`GaussianDenoiser`), the optimal denoiser of a finite set (`OptimalDenoiser`), and
//! independently computed reference grids (Python transcriptions of DPM-Solver's `get_time_steps`
//! / `inverse_lambda` and of EDM's sigma formula).
use msdiff::denoiser::optimal::Arithmetic;
use msdiff::denoiser::{Denoiser, GaussianDenoiser, OptimalDenoiser};
use msdiff::process::{Process, ProcessConfig};
use msdiff::rng::SampleStreams;
use msdiff::sampler::dpm_solver_pp::{self, D2Weight};
use msdiff::sampler::{
    plan, sample, time_grid, DdpmVariance, Evaluator, SamplerConfig, SamplerKind, SamplerOption, Spacing,
};
use std::cell::Cell;
use tch::{Device, Kind, Tensor};

fn vp() -> Process {
    ProcessConfig::from_name("vp").unwrap().build().unwrap()
}
fn edm() -> Process {
    ProcessConfig::from_name("edm").unwrap().build().unwrap()
}

const MU: [f64; 4] = [0.5, -1.0, 2.0, 0.0];
const VAR: [f64; 4] = [0.25, 1.0, 0.04, 2.0];

fn gaussian() -> GaussianDenoiser {
    GaussianDenoiser::new(Tensor::from_slice(&MU), Tensor::from_slice(&VAR)).unwrap()
}

/// Prior noise [B, *shape] from per-sample streams, and the streams (continued) for sampling.
fn prior(seeds: &[u64], shape: &[i64]) -> (Tensor, SampleStreams) {
    let mut st = SampleStreams::from_seeds(seeds);
    let z = st.randn(shape, Kind::Double);
    (z, st)
}

fn seeds(n: u64) -> Vec<u64> {
    (0..n).collect()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// Exact PF-ODE endpoint in process space for a deterministic sampler run from `z`.
fn ode_target(g: &GaussianDenoiser, cfg: &SamplerConfig, p: &Process, z: &Tensor) -> Tensor {
    let (t_end, t_start) = cfg.range(p);
    let x_t = z * p.prior_scale(t_start);
    let s_start = p.sigma(t_start);
    if cfg.kind.is_edm_family() {
        g.ode_solution(&x_t, s_start, 0.0)
    } else {
        g.ode_solution(&x_t, s_start, p.sigma(t_end)) * p.scale(t_end)
    }
}

/// Max-abs error of a deterministic sampler against the closed-form PF-ODE solution (8 samples).
fn ode_error(cfg: &SamplerConfig, p: &Process) -> f64 {
    let g = gaussian();
    let (z, mut st) = prior(&seeds(8), &[4]);
    let out = sample(cfg, &g, p, &z, &mut st).unwrap();
    max_abs(&(out.x - ode_target(&g, cfg, p, &z)))
}

fn fmt_errs(e: &[f64]) -> String {
    e.iter().map(|v| format!("{v:.3e}")).collect::<Vec<_>>().join(", ")
}

/// Least-squares slope of -log(err) against log(n).
fn fitted_order(ns: &[f64], errs: &[f64]) -> f64 {
    let xs: Vec<f64> = ns.iter().map(|n| n.ln()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| e.ln()).collect();
    let m = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / m, ys.iter().sum::<f64>() / m);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    -sxy / sxx
}

// ---------------------------------------------------------------------------------------------
// (a) PF-ODE closed form
// ---------------------------------------------------------------------------------------------

/// Deterministic samplers started from a known x~_T reach the closed-form PF-ODE solution
/// (`GaussianDenoiser::ode_solution`, i.e. x~(s) = mu + (x~_T - mu) sqrt((v + s^2)/(v + s_T^2))).
/// Errors are max-abs over 8 samples x 4 dims, on outputs of order 1 (x~_T is of order 150 on VP).
/// Tolerances: 2-4x the error observed at that step count (noted per case); the errors follow
/// C N^-p with the orders fitted in `convergence_orders`, so a wrong coefficient in any update
/// (which breaks the order) raises them by orders of magnitude, and every bound is far above f64
/// roundoff (~1e-13 here). The errors are not tiny because the problem is stiff-ish: sigma spans
/// 152 -> 0.0105 (VP) and the var-0.04 dimension bends around sigma ~ 0.2. Time-uniform grids
/// (the default of DDIM/DPM-Solver++) put few points where lambda moves fast near t_end
/// (dlambda/dt ~ 1/(2t)), so their last step dominates: logSNR spacing is far more accurate there.
/// (That is also why, on the time-uniform grid, the reference's 3M, of order 2, errs less than
/// 3M-exact: the few large final steps decide, not the order.)
#[test]
fn pf_ode_closed_form_gaussian() {
    use SamplerKind::*;
    let log = Some(Spacing::LogSnr);
    let cases: &[(SamplerKind, Option<Spacing>, usize, &str, f64)] = &[
        (Ddim, None, 200, "vp", 5e-2),               // observed 1.6e-2
        (Ddim, log, 200, "vp", 5e-2),                // 2.3e-2
        (DpmSolver1, None, 200, "vp", 5e-2),         // 2.3e-2
        (DpmSolver2, None, 200, "vp", 3e-3),         // 1.1e-3
        (DpmSolver3, None, 200, "vp", 2e-5),         // 7.4e-6
        (DpmSolver3, None, 20, "vp", 3e-2),          // 1.4e-2 (the paper's 20 NFE setting)
        (DpmSolverPp2M, None, 200, "vp", 2e-2),      // 7.5e-3
        (DpmSolverPp2M, log, 200, "vp", 1e-3),       // 2.7e-4
        (DpmSolverPp3MExact, None, 200, "vp", 2e-2), // 9.2e-3
        (DpmSolverPp3MExact, log, 200, "vp", 1e-6),  // 3.5e-7
        (DpmSolverPp3M, None, 200, "vp", 1e-2),      // 3.4e-3 (the reference's 3M: order 2)
        (DpmSolverPp3M, log, 200, "vp", 3e-4),       // 9.2e-5
        (Euler, None, 200, "vp", 5e-2),              // 2.4e-2
        (Heun, None, 100, "vp", 5e-3),               // 2.2e-3
        (Euler, None, 200, "edm", 5e-2),             // 2.3e-2
        (Heun, None, 100, "edm", 5e-3),              // 2.1e-3
        (Heun, None, 18, "edm", 0.2),                // 7.7e-2 (EDM's 35 NFE setting)
        (Ddim, log, 200, "edm", 5e-2),               // 2.5e-2
        (DpmSolver3, None, 200, "edm", 3e-5),        // 1.0e-5
        (DpmSolverPp2M, log, 200, "edm", 1e-3),      // 3.3e-4
        (DpmSolverPp3MExact, log, 200, "edm", 1e-6), // 2.5e-7
        (DpmSolverPp3M, log, 200, "edm", 3e-4),      // 1.1e-4
    ];
    let mut failures = Vec::new();
    for &(kind, spacing, steps, proc_name, tol) in cases {
        let p = if proc_name == "vp" { vp() } else { edm() };
        let cfg = SamplerConfig { spacing, ..SamplerConfig::new(kind, steps) };
        let err = ode_error(&cfg, &p);
        let sp = cfg.spacing();
        eprintln!("pf-ode {kind} {steps} steps {sp} on {proc_name}: max error {err:.3e} (tol {tol:.0e})");
        if err >= tol {
            failures.push(format!("{kind} {steps} steps {sp} on {proc_name}: error {err:.3e} >= {tol:.0e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// DDIM(eta = 0) and DPM-Solver-1 are the same update (x~_t = x~_s - (sigma_s - sigma_t) eps):
/// on the same grid they agree to roundoff.
#[test]
fn ddim_eta0_equals_dpm_solver_1() {
    let g = gaussian();
    let p = vp();
    let (z, st) = prior(&seeds(8), &[4]);
    let a = SamplerConfig::new(SamplerKind::Ddim, 25);
    let mut b = SamplerConfig::new(SamplerKind::DpmSolver1, 25);
    b.spacing = Some(Spacing::TimeUniform);
    assert_eq!(time_grid(&a, &p).unwrap(), time_grid(&b, &p).unwrap());
    let xa = sample(&a, &g, &p, &z, &mut st.clone()).unwrap().x;
    let xb = sample(&b, &g, &p, &z, &mut st.clone()).unwrap().x;
    let d = max_abs(&(&xa - &xb));
    assert!(d < 1e-11, "ddim(eta 0) vs dpm-solver-1 differ by {d}");
}

// ---------------------------------------------------------------------------------------------
// Convergence orders
// ---------------------------------------------------------------------------------------------

/// Error vs steps on the Gaussian PF-ODE; the fitted log-log slope must lie in a band around the
/// method's order: [p - 0.3, p + 0.6] (pre-asymptotic terms on these short ranges bias the slope
/// slightly; the upper side is wider because a method can look super-convergent while its
/// leading error term is still growing into dominance). Step ranges keep every error above
/// 1e-10, four orders above roundoff. DPM-Solver-3 uses NFE = 2 mod 3 (orders [3, ..., 3, 2]) so
/// that no first-order final step lowers the order; multistep runs use steps >= 10 so that
/// `lower_order_final` is off; Heun is fitted against n (NFE = 2n - 1).
#[test]
fn convergence_orders() {
    let cases: &[(SamplerKind, &[usize], &str, f64)] = &[
        (SamplerKind::DpmSolver1, &[20, 40, 80, 160], "vp", 1.0),
        (SamplerKind::DpmSolver2, &[20, 40, 80, 160], "vp", 2.0),
        (SamplerKind::DpmSolver3, &[20, 41, 80, 161], "vp", 3.0),
        (SamplerKind::DpmSolverPp2M, &[20, 40, 80, 160], "vp", 2.0),
        (SamplerKind::DpmSolverPp3MExact, &[20, 40, 80, 160], "vp", 3.0),
        // The reference implementation's 3M (D2 weighted by phi_3): second order.
        (SamplerKind::DpmSolverPp3M, &[20, 40, 80, 160], "vp", 2.0),
        (SamplerKind::Heun, &[20, 40, 80, 160], "edm", 2.0),
    ];
    let mut failures = Vec::new();
    for &(kind, steps, proc_name, order) in cases {
        let p = if proc_name == "vp" { vp() } else { edm() };
        let errs: Vec<f64> = steps
            .iter()
            .map(|&n| {
                let mut cfg = SamplerConfig::new(kind, n);
                if kind.is_edm_family() {
                    cfg.t_end = Some(1e-5);
                } else {
                    cfg.spacing = Some(Spacing::LogSnr);
                    cfg.t_end = Some(0.05);
                }
                ode_error(&cfg, &p)
            })
            .collect();
        let ns: Vec<f64> = steps.iter().map(|&n| n as f64).collect();
        let slope = fitted_order(&ns, &errs);
        eprintln!("order {kind} on {proc_name}: steps {steps:?} errors {} slope {slope:.3}", fmt_errs(&errs));
        if !(slope >= order - 0.3 && slope <= order + 0.6) || errs.iter().any(|&e| e < 1e-10) {
            failures.push(format!("{kind}: slope {slope:.3} (order {order}), errors {}", fmt_errs(&errs)));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------------
// (b) moments
// ---------------------------------------------------------------------------------------------

/// 4000 samples of N(mu, diag var) on the VP process (t_end = 1e-3, scale 0.99995, sigma_end
/// 0.0105), from stochastic samplers (DDPM both variances, DDIM eta 1 and 0.5, churned Heun) and
/// deterministic ones (whose PF-ODE map pushes the N(0, I) prior to the data law).
/// Bounds per dimension: |mean - mu| < 5 sqrt(v/n) + |mu| (1 - scale_end) and
/// |var - v| < 5 v sqrt(2/(n-1)) + 3 sigma_end^2 + 1e-3: five standard errors of the sample mean
/// and variance of a Gaussian (two-sided 5.7e-7 each), plus the shift of the t_end marginal
/// (x~ = x0 + sigma_end eps has var v + sigma_end^2; DDPM's final mean step removes it), plus
/// 1e-3 for discretisation bias (ancestral sampling with the exact denoiser on a finite grid is
/// not the exact reverse chain; the step counts are chosen so that the PF-ODE error of the
/// deterministic ones, measured in `pf_ode_closed_form_gaussian`, is ~1e-3 or less).
/// The grids: logSNR for the ancestral samplers (a time-uniform grid puts few steps where the
/// var-0.04 dimension is resolved, sigma ~ 0.2, and 250 of them bias its variance by -13%;
/// the default grid is exercised with 1000 steps).
#[test]
fn gaussian_moments() {
    let n = 4000u64;
    let p = vp();
    let g = gaussian();
    let (t_end, _) = p.default_range();
    let scale = p.scale(t_end);
    let s_end = p.sigma(t_end);
    let log = |mut c: SamplerConfig| {
        c.spacing = Some(Spacing::LogSnr);
        c
    };
    let mut configs = Vec::new();
    configs.push(SamplerConfig::new(SamplerKind::Ddpm, 1000)); // default time-uniform grid
    configs.push(log(SamplerConfig::new(SamplerKind::Ddpm, 250)));
    configs.push(log(SamplerConfig {
        ddpm_variance: DdpmVariance::Forward,
        ..SamplerConfig::new(SamplerKind::Ddpm, 250)
    }));
    configs.push(log(SamplerConfig { eta: 1.0, ..SamplerConfig::new(SamplerKind::Ddim, 250) }));
    configs.push(log(SamplerConfig { eta: 0.5, ..SamplerConfig::new(SamplerKind::Ddim, 250) }));
    configs.push(SamplerConfig::new(SamplerKind::DpmSolver3, 20));
    configs.push(log(SamplerConfig::new(SamplerKind::DpmSolverPp2M, 50)));
    configs.push(SamplerConfig::new(SamplerKind::Heun, 80));
    configs.push(SamplerConfig {
        s_churn: 40.0,
        s_tmin: 0.05,
        s_tmax: 50.0,
        ..SamplerConfig::new(SamplerKind::Heun, 80)
    });
    configs.push(SamplerConfig::new(SamplerKind::Euler, 400));
    for cfg in &configs {
        let (z, mut st) = prior(&seeds(n), &[4]);
        let x = sample(cfg, &g, &p, &z, &mut st).unwrap().x;
        let mean = x.mean_dim(0, false, Kind::Double);
        let var = x.var_dim(0, true, false);
        let mean: Vec<f64> = Vec::try_from(mean).unwrap();
        let var: Vec<f64> = Vec::try_from(var).unwrap();
        for d in 0..4 {
            let (mu, v) = (MU[d], VAR[d]);
            let mb = 5.0 * (v / n as f64).sqrt() + mu.abs() * (1.0 - scale);
            let vb = 5.0 * v * (2.0 / (n - 1) as f64).sqrt() + 3.0 * s_end * s_end + 1e-3;
            eprintln!(
                "moments {} eta {} churn {}: dim {d} mean {:.4} ({mu}) var {:.4} ({v})",
                cfg.kind, cfg.eta, cfg.s_churn, mean[d], var[d]
            );
            assert!((mean[d] - mu).abs() < mb, "{:?}: dim {d} mean {} vs {mu} (bound {mb})", cfg.kind, mean[d]);
            assert!((var[d] - v).abs() < vb, "{:?}: dim {d} var {} vs {v} (bound {vb})", cfg.kind, var[d]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Optimal denoiser: samples land on training points
// ---------------------------------------------------------------------------------------------

/// Min over training points of the L2 distance, per sample; also the second-smallest.
fn nearest(x: &Tensor, data: &Tensor) -> Vec<(f64, f64)> {
    let b = x.size()[0];
    let xf = x.reshape([b, -1]);
    let d = (xf.unsqueeze(1) - data.unsqueeze(0)).square().sum_dim_intlist(2, false, Kind::Double).sqrt();
    let sorted = d.sort(1, false).0;
    (0..b).map(|i| (sorted.double_value(&[i, 0]), sorted.double_value(&[i, 1]))).collect()
}

/// Every sampler driven by the exact optimal denoiser of 6 random points in D = 16 (uniform in
/// [-1, 1]^16; pairwise distances ~3.3) lands on a training point (docs/METHOD.md §2), on VP and EDM,
/// and the discrete DDPM chain (continuous view), with `Arithmetic::F64` and the default `Mixed`.
/// - Without the final jump the ODE ends at sigma_end, on the ray x~ = y + sigma_end e with
///   |e| ~ sqrt(D) = 4: bound 10 sigma_end sqrt(D) (0.42 VP, 0.08 EDM) and the second-nearest
///   point at least 2.0 away. Euler/Heun end at sigma = 0 through an Euler step that is exactly
///   D(x~, sigma_min): bound 1e-9.
/// - With `denoise_to_zero` the output is D(x~_end, sigma_end); the other points' weights are below
///   exp(-(2.0^2 - 0.42^2)/(2 0.0105^2)) = 0 in f64, so the output is a training point to f64
///   roundoff: bound 1e-9.
#[test]
fn optimal_denoiser_lands_on_training_points() {
    let pts = SampleStreams::from_seeds(&[99]).randn(&[6, 16], Kind::Double);
    let data = pts.reshape([6, 16]).tanh() * 1.5; // spread in (-1.5, 1.5), deterministic
    let ddpm = ProcessConfig::from_name("ddpm-linear").unwrap().build().unwrap();
    for (proc_name, p) in [("vp", vp()), ("edm", edm()), ("ddpm-linear", ddpm)] {
        for precision in [Arithmetic::F64, Arithmetic::Mixed] {
            let den = OptimalDenoiser::new(&data, Device::Cpu).unwrap().with_arithmetic(precision);
            let stored = den.data().to_kind(Kind::Double);
            for kind in SamplerKind::ALL {
                for jump in [false, true] {
                    if jump && kind.is_edm_family() {
                        continue;
                    }
                    let steps = match kind {
                        SamplerKind::Ddpm | SamplerKind::Ddim | SamplerKind::Euler => 100,
                        SamplerKind::Heun => 18,
                        _ => 20,
                    };
                    let mut cfg = SamplerConfig::new(kind, steps);
                    cfg.denoise_to_zero = jump;
                    if proc_name == "edm" && !kind.is_edm_family() {
                        // EDM's time is sigma: a time-uniform grid would end with one step from
                        // sigma ~0.8 to 0.002, before the posterior has committed to a point.
                        cfg.spacing = Some(Spacing::LogSnr);
                    }
                    if kind == SamplerKind::Ddim {
                        cfg.eta = 1.0;
                    }
                    let (z, mut st) = prior(&[1, 2, 3, 4, 5, 6], &[16]);
                    let out = sample(&cfg, &den, &p, &z, &mut st).unwrap();
                    let (t_end, _) = cfg.range(&p);
                    let x_tilde =
                        if jump || kind.is_edm_family() { out.x.shallow_clone() } else { &out.x / p.scale(t_end) };
                    let bound = if jump || kind.is_edm_family() { 1e-9 } else { 10.0 * p.sigma(t_end) * 4.0 };
                    for (i, (d1, d2)) in nearest(&x_tilde, &stored).into_iter().enumerate() {
                        assert!(
                            d1 < bound && d2 > 2.0,
                            "{kind} on {proc_name} {precision:?} jump {jump}: sample {i} nearest {d1:.3e} (bound {bound:.1e}), second {d2:.3}"
                        );
                    }
                }
            }
        }
    }
}

/// f32 samples (the production path: f32 noise, default `Mixed` optimal denoiser): the sigma
/// tensors and outputs are f32 and samples still land on training points. Bound 1e-4: f32
/// resolution (1.2e-7) times values of order 1..150 accumulated over the steps, then the final
/// Euler step to sigma = 0 returns the (f64-refined, f32-rounded) posterior mean, a training point
/// to about 1e-7.
#[test]
fn f32_samples_land_on_training_points() {
    let data = SampleStreams::from_seeds(&[5]).randn(&[6, 16], Kind::Double).reshape([6, 16]).tanh() * 1.5;
    let den = OptimalDenoiser::new(&data, Device::Cpu).unwrap();
    let stored = den.data().to_kind(Kind::Double);
    for kind in [SamplerKind::Heun, SamplerKind::Euler, SamplerKind::DpmSolver3, SamplerKind::DpmSolverPp2M] {
        // Euler/Heun end at sigma 0 (and refuse denoise_to_zero).
        let cfg = SamplerConfig { denoise_to_zero: !kind.is_edm_family(), ..SamplerConfig::new(kind, 20) };
        let mut st = SampleStreams::from_seeds(&[1, 2, 3, 4]);
        let z = st.randn(&[16], Kind::Float);
        let out = sample(&cfg, &den, &vp(), &z, &mut st).unwrap();
        assert_eq!(out.x.kind(), Kind::Float);
        for (d1, d2) in nearest(&out.x.to_kind(Kind::Double), &stored) {
            assert!(d1 < 1e-4 && d2 > 1.0, "{kind}: nearest {d1:.3e}, second {d2:.3}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reproducibility
// ---------------------------------------------------------------------------------------------

/// Same seeds -> bitwise identical output; a sample's output does not depend on the batch it is
/// in (per-sample streams; the Gaussian denoiser is elementwise, so up to 1e-12 for libtorch's
/// vectorised vs scalar loops).
#[test]
fn reproducible_and_batch_independent() {
    let g = gaussian();
    let mut heun = SamplerConfig::new(SamplerKind::Heun, 18);
    heun.s_churn = 40.0;
    let mut ddim = SamplerConfig::new(SamplerKind::Ddim, 30);
    ddim.eta = 0.7;
    for (cfg, p) in [(SamplerConfig::new(SamplerKind::Ddpm, 30), vp()), (heun, edm()), (ddim, vp())] {
        let run = |s: &[u64]| {
            let (z, mut st) = prior(s, &[4]);
            sample(&cfg, &g, &p, &z, &mut st).unwrap().x
        };
        let a = run(&[10, 11, 12, 13, 14]);
        let b = run(&[10, 11, 12, 13, 14]);
        assert!(a.equal(&b), "{}: same seeds gave different outputs", cfg.kind);
        let c = run(&[12]);
        let d = run(&[20, 12, 21]);
        assert!(max_abs(&(a.get(2) - c.get(0))) < 1e-12, "{}: batch of 1 differs", cfg.kind);
        assert!(max_abs(&(a.get(2) - d.get(1))) < 1e-12, "{}: batch of 3 differs", cfg.kind);
        // And the stochastic part matters: other seeds give other samples.
        assert!(max_abs(&(a.get(0) - a.get(1))) > 1e-3);
        // Stochastic sampler from the same prior noise but different streams differ.
        let (z, _) = prior(&[10], &[4]);
        let mut other = SampleStreams::from_seeds(&[777]);
        let e = sample(&cfg, &g, &p, &z, &mut other).unwrap().x;
        assert!(max_abs(&(e.get(0) - a.get(0))) > 1e-6, "{}: streams unused?", cfg.kind);
    }
}

// ---------------------------------------------------------------------------------------------
// NFE and orders
// ---------------------------------------------------------------------------------------------

/// Wraps a denoiser, counts calls and checks the per-sample sigma tensor it receives.
struct Counting<D> {
    inner: D,
    calls: Cell<usize>,
}

impl<D: Denoiser> Denoiser for Counting<D> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> anyhow::Result<Tensor> {
        assert_eq!(sigma.size(), vec![x.size()[0]], "sigma must be [B]");
        assert_eq!(sigma.kind(), x.kind());
        assert_eq!(sigma.device(), x.device());
        self.calls.set(self.calls.get() + 1);
        self.inner.denoise(x, sigma)
    }
}

/// NFE per docs/METHOD.md §6 and the reference implementations: single-step DPM-Solver's
/// `steps` is the NFE with the "DPM-Solver-fast" orders (20 -> six 3rd-order steps + one
/// 2nd-order); multistep: one NFE per step; Heun 2n - 1 (18 -> 35, EDM's CIFAR-10 setting).
#[test]
fn nfe_counts_and_orders() {
    let p = vp();
    let check = |kind: SamplerKind, steps: usize, jump: bool, orders: &[usize], nfe: usize| {
        let mut cfg = SamplerConfig::new(kind, steps);
        cfg.denoise_to_zero = jump;
        let pl = plan(&cfg, &p).unwrap();
        assert_eq!(pl.orders, orders, "{kind} {steps}");
        assert_eq!(pl.nfe, nfe, "{kind} {steps}");
        assert_eq!(pl.t.len(), pl.sigma.len());
        let den = Counting { inner: gaussian(), calls: Cell::new(0) };
        let (z, mut st) = prior(&[1, 2, 3], &[4]);
        let out = sample(&cfg, &den, &p, &z, &mut st).unwrap();
        assert_eq!(out.nfe, nfe, "{kind} {steps}: reported NFE");
        assert_eq!(den.calls.get(), nfe, "{kind} {steps}: denoiser calls");
    };
    check(SamplerKind::DpmSolver3, 20, false, &[3, 3, 3, 3, 3, 3, 2], 20);
    check(SamplerKind::DpmSolver3, 21, false, &[3, 3, 3, 3, 3, 3, 2, 1], 21);
    check(SamplerKind::DpmSolver3, 19, false, &[3, 3, 3, 3, 3, 3, 1], 19);
    check(SamplerKind::DpmSolver3, 1, false, &[1], 1);
    check(SamplerKind::DpmSolver3, 2, false, &[2], 2);
    check(SamplerKind::DpmSolver2, 7, false, &[2, 2, 2, 1], 7);
    check(SamplerKind::DpmSolver2, 8, true, &[2, 2, 2, 2], 9);
    check(SamplerKind::DpmSolver1, 5, false, &[1; 5], 5);
    check(SamplerKind::DpmSolverPp2M, 20, false, &[1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2], 20);
    check(SamplerKind::DpmSolverPp2M, 5, false, &[1, 2, 2, 2, 1], 5);
    check(SamplerKind::DpmSolverPp3M, 5, false, &[1, 2, 3, 2, 1], 5);
    check(SamplerKind::DpmSolverPp3M, 12, true, &[1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3], 13);
    check(SamplerKind::DpmSolverPp3M, 2, false, &[1, 1], 2);
    check(SamplerKind::DpmSolverPp3MExact, 5, false, &[1, 2, 3, 2, 1], 5);
    check(SamplerKind::Ddpm, 50, false, &[1; 50], 50);
    check(SamplerKind::Ddim, 10, true, &[1; 10], 11);
    check(SamplerKind::Euler, 18, false, &[1; 18], 18);
    let mut heun = vec![2; 17];
    heun.push(1);
    check(SamplerKind::Heun, 18, false, &heun, 35);
    check(SamplerKind::Heun, 1, false, &[1], 1);
    // lower_order_final off keeps the full order to the end.
    let mut cfg = SamplerConfig::new(SamplerKind::DpmSolverPp3M, 5);
    cfg.lower_order_final = false;
    assert_eq!(plan(&cfg, &p).unwrap().orders, vec![1, 2, 3, 3, 3]);
}

// ---------------------------------------------------------------------------------------------
// Golden grids
// ---------------------------------------------------------------------------------------------

/// DPM-Solver's logSNR grid for the paper's setting (VP beta 0.1..20, 20 NFE order 3 -> K = 7,
/// t 1 -> 1e-4): 8 points uniform in lambda. Reference values from a Python transcription of the
/// reference's `marginal_lambda` (log alpha - log std) and `inverse_lambda`
/// (t = tmp / (sqrt(b0^2 + tmp) + b0) / (b1 - b0), tmp = 2 (b1 - b0) logaddexp(-2 lambda, 0)):
/// lambda(1) = -5.024978406659204, lambda(1e-4) = 5.751509795269854.
#[test]
fn golden_dpm_solver_logsnr_grid() {
    let p = vp();
    let mut cfg = SamplerConfig::new(SamplerKind::DpmSolver3, 20);
    cfg.t_end = Some(1e-4);
    let want = [
        1.0,
        0.8320642172512845,
        0.6220374732308895,
        0.33939438078260303,
        0.09469328485323404,
        0.017417952032269108,
        0.0018533010844398266,
        1e-4,
    ];
    let got = time_grid(&cfg, &p).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-9 * w, "logSNR grid {got:?} vs {want:?}");
    }
    assert!((p.lambda(1.0) + 5.024978406659204).abs() < 1e-12);
    assert!((p.lambda(1e-4) - 5.751509795269854).abs() < 1e-12);
    // Time-uniform: grid of 21 points linspace(1, 1e-3, 21), outer points at the cumulative
    // sums of the orders [0, 3, 6, 9, 12, 15, 18, 20].
    let mut cfg = SamplerConfig::new(SamplerKind::DpmSolver3, 20);
    cfg.spacing = Some(Spacing::TimeUniform);
    let got = time_grid(&cfg, &p).unwrap();
    let want: Vec<f64> = [0, 3, 6, 9, 12, 15, 18, 20].iter().map(|&i| 1.0 + (1e-3 - 1.0) * i as f64 / 20.0).collect();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-15, "time-uniform outer grid {got:?} vs {want:?}");
    }
    // Time-quadratic: (linspace(1, sqrt(1e-3), 21))^2 at the same indices.
    cfg.spacing = Some(Spacing::TimeQuadratic);
    let got = time_grid(&cfg, &p).unwrap();
    let r = 1e-3f64.sqrt();
    for (g, &i) in got.iter().zip(&[0, 3, 6, 9, 12, 15, 18, 20]) {
        let w = (1.0 + (r - 1.0) * i as f64 / 20.0).powi(2);
        assert!((g - w).abs() < 1e-14, "time-quadratic {g} vs {w}");
    }
}

/// EDM's sigma grid for n = 18, sigma 0.002..80, rho 7 (EDM `generate.py` / docs/METHOD.md §6),
/// then 0. Reference values from Python: (80^(1/7) + i/17 (0.002^(1/7) - 80^(1/7)))^7.
#[test]
fn golden_karras_sigmas() {
    let want = [
        80.0,
        57.58598472124816,
        40.78557379650796,
        28.374584604156844,
        19.35245298032523,
        12.91008238075732,
        8.400935309099816,
        5.315194521796382,
        3.256821519765537,
        1.9233398370400518,
        1.088170636545279,
        0.5853481231945422,
        0.29644228447915727,
        0.13951646873101678,
        0.05994731123547159,
        0.022934518372333384,
        0.0075280199627840785,
        0.002,
    ];
    let pl = plan(&SamplerConfig::new(SamplerKind::Heun, 18), &edm()).unwrap();
    assert_eq!(pl.sigma.len(), 19);
    for (g, w) in pl.sigma.iter().zip(want) {
        assert!((g - w).abs() < 1e-12 * w, "karras {g} vs {w}");
    }
    assert_eq!(pl.sigma[18], 0.0);
    assert_eq!(pl.t, pl.sigma); // EDM: t = sigma
                                // On VP, Karras runs from sigma(t_start) = 152.1669702839464 to sigma(1e-3) = 0.010485992786706403
                                // (Python: sqrt(exp(-2 log alpha_t) - 1)).
    let pl = plan(&SamplerConfig::new(SamplerKind::Euler, 18), &vp()).unwrap();
    assert!((pl.sigma[0] - 152.1669702839464).abs() < 1e-9);
    assert!((pl.sigma[17] - 0.010485992786706403).abs() < 1e-14);
}

/// Outputs equal the reference's on identical noise. Expected values come from an independent
/// scalar Python transcription (no torch) of `dpm_solver_pytorch.py`'s VP-space updates
/// (`singlestep_dpm_solver_{first,second,third}_update` with `dpmsolver`, `get_time_steps`,
/// `inverse_lambda`, the multistep first/second updates of DPM-Solver++ with lower_order_final,
/// and DDIM's x_prev = alpha_prev x0 + std_prev eps) driven by the exact model of the 1-D Gaussian
/// N(0.5, 0.25) from x_T = 0.7 on VP (beta 0.1..20). Tolerance 1e-9 relative: the reference forms
/// std = sqrt(1 - alpha^2), which loses ~5 digits at t = 1e-4 (alpha^2 = 1 - 1e-5).
#[test]
fn golden_reference_transcription() {
    let g = GaussianDenoiser::new(Tensor::from_slice(&[0.5f64]), Tensor::from_slice(&[0.25f64])).unwrap();
    let p = vp();
    let z = Tensor::from_slice(&[0.7f64]).reshape([1, 1]);
    let cases: &[(SamplerKind, usize, f64, f64)] = &[
        (SamplerKind::DpmSolver3, 20, 1e-4, 0.8524641982774146),
        (SamplerKind::DpmSolver3, 10, 1e-3, 0.8600051366378046),
        (SamplerKind::DpmSolverPp2M, 8, 1e-3, 0.7593880222718594),
        (SamplerKind::DpmSolverPp2M, 15, 1e-3, 0.9530100251695617),
        (SamplerKind::Ddim, 10, 1e-3, 0.7608021392818424),
    ];
    for &(kind, steps, t_end, want) in cases {
        let cfg = SamplerConfig { t_end: Some(t_end), ..SamplerConfig::new(kind, steps) };
        let got = sample(&cfg, &g, &p, &z, &mut SampleStreams::from_seeds(&[0])).unwrap().x.double_value(&[0, 0]);
        assert!((got - want).abs() < 1e-9 * want.abs(), "{kind} {steps}: {got} vs reference {want}");
    }
    // And the exact PF-ODE value for the paper's setting, 0.8483654975358008 (Python closed form):
    // DPM-Solver-3 at 20 NFE is within 0.5% of it.
    let cfg = SamplerConfig { t_end: Some(1e-4), ..SamplerConfig::new(SamplerKind::DpmSolver3, 20) };
    let x = sample(&cfg, &g, &p, &z, &mut SampleStreams::from_seeds(&[0])).unwrap().x;
    let exact = ode_target(&g, &cfg, &p, &z).double_value(&[0, 0]);
    assert!((exact - 0.8483654975358008).abs() < 1e-12, "{exact}");
    assert!((x.double_value(&[0, 0]) - exact).abs() < 5e-3 * exact);
}

/// `dpm-solver++-3m` (and 2M) equal the reference implementation on the same noise, with an exact
/// optimal denoiser (f64) of a small dataset.
///
/// The golden values in `tests/fixtures/dpmpp3m-reference.json` are outputs of LuChengTHU/dpm-solver
/// (https://github.com/LuChengTHU/dpm-solver, commit 52bc3fbcd5de56d60917b826b15d2b69460fc2fa),
/// `dpm_solver_pytorch.py`: `DPM_Solver(model_fn, NoiseScheduleVP("linear", 0.1, 20),
/// algorithm_type="dpmsolver++").sample(x_T, steps, t_start=1, t_end, order, skip_type,
/// method="multistep", lower_order_final, denoise_to_zero, solver_type="dpmsolver")`, per case as
/// listed in the file, in float64 (`torch.set_default_dtype(torch.float64)`), torch 2.11.0 on the
/// CPU. `model_fn` is the noise prediction of the exact optimal denoiser of `data` (6 points in
/// 8 dimensions, f32-rounded, torch.Generator seed 11) and `x_T` is `noise` (4 draws, seed 12).
/// Produced by `tests/fixtures/dpmpp3m-reference.py` (its docstring gives the command; run with
/// the Python of msdiff's libtorch cache venv).
///
/// Tolerance 1e-6 relative (max-abs difference over the batch / max-abs value): the two compute
/// the same VP-space formulas, msdiff in x~ = x / alpha, so they differ by roundoff only (observed
/// 3e-14). 3M-exact (D2 weighted by 2 phi_3) is checked to be far from the reference (observed
/// 1.4e-3 to 0.87) on the cases with third-order steps, so the comparison can tell the two
/// coefficients apart.
#[test]
fn dpmpp_matches_the_reference_implementation() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dpmpp3m-reference.json");
    let text = std::fs::read_to_string(path).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let matrix = |v: &serde_json::Value| -> Tensor {
        let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
        let (r, c) = (rows.len() as i64, rows[0].len() as i64);
        Tensor::from_slice(&rows.concat()).reshape([r, c])
    };
    let data = matrix(&golden["data"]);
    let noise = matrix(&golden["noise"]);
    let den = OptimalDenoiser::new(&data, Device::Cpu).unwrap().with_arithmetic(Arithmetic::F64);
    let p = vp();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let kind = match case["order"].as_u64().unwrap() {
            2 => SamplerKind::DpmSolverPp2M,
            _ => SamplerKind::DpmSolverPp3M,
        };
        let spacing = match case["skip_type"].as_str().unwrap() {
            "time_uniform" => Spacing::TimeUniform,
            "time_quadratic" => Spacing::TimeQuadratic,
            "logSNR" => Spacing::LogSnr,
            o => panic!("{name}: skip_type {o}"),
        };
        let mut cfg = SamplerConfig::new(kind, case["steps"].as_u64().unwrap() as usize);
        cfg.spacing = Some(spacing);
        cfg.t_end = Some(case["t_end"].as_f64().unwrap());
        cfg.lower_order_final = case["lower_order_final"].as_bool().unwrap();
        cfg.denoise_to_zero = case["denoise_to_zero"].as_bool().unwrap();
        let want = matrix(&case["x"]);
        let scale = max_abs(&want);
        let run = |cfg: &SamplerConfig| {
            let mut st = SampleStreams::from_seeds(&[0, 1, 2, 3]);
            sample(cfg, &den, &p, &noise, &mut st).unwrap().x
        };
        let rel = max_abs(&(run(&cfg) - &want)) / scale;
        let orders = plan(&cfg, &p).unwrap().orders;
        eprintln!("reference {name} ({kind}, orders {orders:?}): relative difference {rel:.3e}");
        assert!(rel < 1e-6, "{name}: {kind} differs from the reference by {rel:.3e} (relative)");
        // (With the final jump both land exactly on the same training point.)
        if orders.contains(&3) && !cfg.denoise_to_zero {
            let exact = SamplerConfig { kind: SamplerKind::DpmSolverPp3MExact, ..cfg.clone() };
            let rel = max_abs(&(run(&exact) - &want)) / scale;
            eprintln!("reference {name}: dpm-solver++-3m-exact differs by {rel:.3e}");
            assert!(rel > 1e-4, "{name}: 3M-exact is as close to the reference as 3M ({rel:.3e})");
        }
    }
}

/// The per-family functions can be called directly with a public [`Evaluator`]: the multistep
/// walk on `plan`'s grid gives `sample`'s result, with the same NFE.
#[test]
fn families_are_callable_with_an_evaluator() {
    let g = gaussian();
    let p = vp();
    let (z, st) = prior(&seeds(3), &[4]);
    let cfg =
        SamplerConfig { spacing: Some(Spacing::LogSnr), ..SamplerConfig::new(SamplerKind::DpmSolverPp3MExact, 12) };
    let want = sample(&cfg, &g, &p, &z, &mut st.clone()).unwrap();
    let pl = plan(&cfg, &p).unwrap();
    let mut ev = Evaluator::new(&g, "mine", &z);
    let x = &z * p.prior_scale(cfg.range(&p).1);
    let x = dpm_solver_pp::multistep(&mut ev, x, &pl.sigma, &pl.orders, D2Weight::ThirdOrder).unwrap();
    let x = x * p.scale(cfg.range(&p).0);
    assert_eq!(ev.nfe(), want.nfe);
    assert!(x.equal(&want.x), "direct call differs from sample()");
    // Errors carry the evaluator's name.
    let mut ev = Evaluator::new(&WrongShape, "mine", &z);
    let e = ev.denoise(&z, 1.0).unwrap_err().to_string();
    assert!(e.starts_with("mine:") && e.contains("shape"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Configuration and bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn names_and_serde() {
    for k in SamplerKind::ALL {
        assert_eq!(k.name().parse::<SamplerKind>().unwrap(), k);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("\"{}\"", k.name()));
    }
    for s in [Spacing::LogSnr, Spacing::TimeUniform, Spacing::TimeQuadratic, Spacing::Karras] {
        assert_eq!(s.name().parse::<Spacing>().unwrap(), s);
    }
    let e = "dpm-solver-4".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(e.contains("dpm-solver++-3m") && e.contains("heun"), "{e}");
    let e = "uniform".parse::<Spacing>().unwrap_err().to_string();
    assert!(e.contains("logsnr") && e.contains("karras"), "{e}");
    // One table: clap's names are the serde names.
    for k in SamplerKind::ALL {
        assert_eq!(<SamplerKind as clap::ValueEnum>::from_str(k.name(), false).unwrap(), k);
    }
    for v in DdpmVariance::ALL {
        assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{}\"", v.name()));
        assert_eq!(v.name().parse::<DdpmVariance>().unwrap(), v);
    }
    let e = toml::from_str::<SamplerConfig>("kind = \"dpm-solver-4\"\nsteps = 2\n").unwrap_err().to_string();
    assert!(e.contains("dpm-solver-4") && e.contains("dpm-solver++-3m-exact"), "{e}");

    // JSON round trip, including s_tmax = inf (omitted; null also reads as inf).
    let mut cfg = SamplerConfig::new(SamplerKind::Heun, 18);
    cfg.s_churn = 40.0;
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<SamplerConfig>(&json).unwrap(), cfg);
    cfg.s_tmax = 50.0;
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<SamplerConfig>(&json).unwrap(), cfg);
    let c: SamplerConfig = serde_json::from_str(r#"{"kind":"euler","steps":3,"s_tmax":null}"#).unwrap();
    assert_eq!(c.s_tmax, f64::INFINITY);
    // Minimal config gets the defaults; unknown fields are rejected.
    let c: SamplerConfig = serde_json::from_str(r#"{"kind":"dpm-solver-3","steps":20}"#).unwrap();
    assert_eq!(c, SamplerConfig::new(SamplerKind::DpmSolver3, 20));
    assert!(serde_json::from_str::<SamplerConfig>(r#"{"kind":"ddim","steps":20,"etaa":1}"#).is_err());
    // TOML too.
    let c: SamplerConfig =
        toml::from_str("kind = \"dpm-solver++-2m\"\nsteps = 20\nspacing = \"logsnr\"\nt_end = 1e-4\n").unwrap();
    assert_eq!(c.spacing, Some(Spacing::LogSnr));
    assert_eq!(c.t_end, Some(1e-4));
    let s = toml::to_string(&cfg).unwrap();
    assert_eq!(toml::from_str::<SamplerConfig>(&s).unwrap(), cfg);
}

/// An option the sampler does not use is refused in a configuration (TOML/JSON or built in code),
/// naming the samplers that use it, unless it is at its default (checkpoints written before this
/// check store every option, at its default when unused).
#[test]
fn unused_options_are_refused_in_configs() {
    let p = vp();
    let err = |cfg: &SamplerConfig| cfg.validate(&p).err().map(|e| format!("{e:#}")).unwrap_or_default();
    let with = |kind: SamplerKind, f: &dyn Fn(&mut SamplerConfig)| {
        let mut c = SamplerConfig::new(kind, 10);
        f(&mut c);
        c
    };
    use SamplerKind::*;
    let cases: Vec<(SamplerConfig, &str)> = vec![
        (with(Heun, &|c| c.eta = 0.5), "eta is used only by ddim; the sampler is heun"),
        (
            with(Ddim, &|c| c.rho = 5.0),
            "rho is used only with karras spacing (the default of euler and heun); the sampler is ddim with time-uniform spacing",
        ),
        (
            with(Heun, &|c| {
                c.spacing = Some(Spacing::LogSnr);
                c.rho = 5.0
            }),
            "rho is used only with karras spacing (the default of euler and heun); the sampler is heun with logsnr spacing",
        ),
        (with(DpmSolver3, &|c| c.ddpm_variance = DdpmVariance::Forward), "ddpm_variance is used only by ddpm; the sampler is dpm-solver-3"),
        (with(Ddim, &|c| c.s_churn = 1.0), "s_churn is used only by euler and heun; the sampler is ddim"),
        (with(Ddpm, &|c| c.s_tmin = 0.1), "s_tmin is used only by euler and heun; the sampler is ddpm"),
        (with(DpmSolverPp2M, &|c| c.s_tmax = 10.0), "s_tmax is used only by euler and heun; the sampler is dpm-solver++-2m"),
        (with(DpmSolver1, &|c| c.s_noise = 1.003), "s_noise is used only by euler and heun; the sampler is dpm-solver-1"),
        (
            with(DpmSolver3, &|c| c.lower_order_final = false),
            "lower_order_final is used only by dpm-solver++-2m, dpm-solver++-3m and dpm-solver++-3m-exact; the sampler is dpm-solver-3",
        ),
        (
            with(Euler, &|c| c.denoise_to_zero = true),
            "denoise_to_zero is used only by ddpm, ddim, dpm-solver-1, dpm-solver-2, dpm-solver-3, dpm-solver++-2m, dpm-solver++-3m and dpm-solver++-3m-exact; the sampler is euler",
        ),
    ];
    for (cfg, want) in &cases {
        assert_eq!(err(cfg), *want, "{cfg:?}");
        // sample() refuses it too.
        let (z, mut st) = prior(&[1], &[4]);
        assert!(sample(cfg, &gaussian(), &p, &z, &mut st).is_err());
    }
    // Where they apply, the same options are accepted.
    for cfg in [
        with(Ddim, &|c| c.eta = 0.5),
        with(Ddim, &|c| {
            c.spacing = Some(Spacing::Karras);
            c.rho = 5.0
        }),
        with(Heun, &|c| c.rho = 5.0),
        with(Ddpm, &|c| c.ddpm_variance = DdpmVariance::Forward),
        with(Euler, &|c| {
            c.s_churn = 1.0;
            c.s_tmin = 0.1;
            c.s_tmax = 10.0;
            c.s_noise = 1.003
        }),
        with(DpmSolverPp3MExact, &|c| c.lower_order_final = false),
        with(DpmSolver3, &|c| c.denoise_to_zero = true),
    ] {
        assert_eq!(err(&cfg), "", "{cfg:?}");
    }
    for o in SamplerOption::ALL {
        assert!(cases.iter().any(|(c, _)| c.is_set(o)), "no case sets {o:?}");
    }
    // A TOML [train.sampler] table is checked the same way.
    let c: SamplerConfig = toml::from_str("kind = \"heun\"\nsteps = 18\neta = 0.5\n").unwrap();
    assert_eq!(err(&c), "eta is used only by ddim; the sampler is heun");
    let c: SamplerConfig = toml::from_str("kind = \"dpm-solver-3\"\nsteps = 20\n").unwrap();
    assert_eq!(err(&c), "");
    // A checkpoint's sampler as written before (every option present, at its default) still loads.
    let old = r#"{"kind":"heun","steps":18,"eta":0.0,"ddpm_variance":"posterior","rho":7.0,"s_churn":0.0,"s_tmin":0.0,"s_noise":1.0,"lower_order_final":true,"denoise_to_zero":false}"#;
    let c: SamplerConfig = serde_json::from_str(old).unwrap();
    assert_eq!(c, SamplerConfig::new(Heun, 18));
    assert_eq!(err(&c), "");
    let old = old.replace("heun", "dpm-solver-3");
    assert_eq!(err(&serde_json::from_str(&old).unwrap()), "");
}

/// The CLI's sampler arguments, parsed as `msdiff sample` parses them.
#[derive(clap::Parser, Debug)]
struct SamplerCli {
    #[command(flatten)]
    sampler: msdiff::cli::args::SamplerArgs,
}

fn cli_config(args: &[&str]) -> Result<SamplerConfig, String> {
    use clap::Parser;
    let cli =
        SamplerCli::try_parse_from(std::iter::once("msdiff").chain(args.iter().copied())).map_err(|e| e.to_string())?;
    cli.sampler.config().map_err(|e| format!("{e:#}"))
}

/// On the command line, a flag the chosen sampler does not use is an error even at its default
/// value; names are parsed by clap from the one table in `msdiff::sampler` and listed by `--help`.
#[test]
fn cli_sampler_flags() {
    // Defaults: SamplerConfig's.
    assert_eq!(cli_config(&[]).unwrap(), SamplerConfig::new(SamplerKind::DpmSolver3, 20));
    let c = cli_config(&[
        "--sampler",
        "heun",
        "--steps",
        "18",
        "--s-churn",
        "40",
        "--s-tmin",
        "0.05",
        "--s-tmax",
        "50",
        "--s-noise",
        "1.003",
        "--rho",
        "5",
    ])
    .unwrap();
    let want = SamplerConfig {
        s_churn: 40.0,
        s_tmin: 0.05,
        s_tmax: 50.0,
        s_noise: 1.003,
        rho: 5.0,
        ..SamplerConfig::new(SamplerKind::Heun, 18)
    };
    assert_eq!(c, want);
    let c =
        cli_config(&["--sampler", "ddim", "--eta", "0.5", "--spacing", "karras", "--rho", "3", "--denoise-to-zero"])
            .unwrap();
    assert_eq!(
        (c.kind, c.eta, c.spacing, c.rho, c.denoise_to_zero),
        (SamplerKind::Ddim, 0.5, Some(Spacing::Karras), 3.0, true)
    );
    let c = cli_config(&["--sampler", "ddpm", "--ddpm-variance", "forward"]).unwrap();
    assert_eq!(c.ddpm_variance, DdpmVariance::Forward);
    let c = cli_config(&["--sampler", "dpm-solver++-3m-exact", "--no-lower-order-final"]).unwrap();
    assert_eq!((c.kind, c.lower_order_final), (SamplerKind::DpmSolverPp3MExact, false));

    for (args, want) in [
        (&["--sampler", "heun", "--eta", "0.5"][..], "--eta is used only by ddim; the sampler is heun"),
        (&["--sampler", "heun", "--eta", "0"], "--eta is used only by ddim; the sampler is heun"),
        (
            &["--sampler", "ddim", "--rho", "7"],
            "--rho is used only with karras spacing (the default of euler and heun); the sampler is ddim with time-uniform spacing",
        ),
        (&["--sampler", "dpm-solver-3", "--ddpm-variance", "posterior"], "--ddpm-variance is used only by ddpm; the sampler is dpm-solver-3"),
        (&["--sampler", "ddim", "--s-churn", "1"], "--s-churn is used only by euler and heun; the sampler is ddim"),
        (&["--sampler", "ddpm", "--s-tmin", "0.1"], "--s-tmin is used only by euler and heun; the sampler is ddpm"),
        (&["--s-tmax", "10"], "--s-tmax is used only by euler and heun; the sampler is dpm-solver-3"),
        (&["--sampler", "dpm-solver++-2m", "--s-noise", "1"], "--s-noise is used only by euler and heun; the sampler is dpm-solver++-2m"),
        (
            &["--sampler", "dpm-solver-2", "--no-lower-order-final"],
            "--no-lower-order-final is used only by dpm-solver++-2m, dpm-solver++-3m and dpm-solver++-3m-exact; the sampler is dpm-solver-2",
        ),
        (
            &["--sampler", "heun", "--denoise-to-zero"],
            "--denoise-to-zero is used only by ddpm, ddim, dpm-solver-1, dpm-solver-2, dpm-solver-3, dpm-solver++-2m, dpm-solver++-3m and dpm-solver++-3m-exact; the sampler is heun",
        ),
    ] {
        assert_eq!(cli_config(args).unwrap_err(), want, "{args:?}");
    }
    // Unknown names: clap's error lists the choices.
    let e = cli_config(&["--sampler", "nope"]).unwrap_err();
    assert!(e.contains("invalid value 'nope'") && e.contains("dpm-solver++-3m-exact"), "{e}");
    let e = cli_config(&["--spacing", "uniform"]).unwrap_err();
    assert!(e.contains("invalid value 'uniform'") && e.contains("time-quadratic"), "{e}");
    let e = cli_config(&["--sampler", "ddpm", "--ddpm-variance", "fixedsmall"]).unwrap_err();
    assert!(e.contains("invalid value 'fixedsmall'") && e.contains("posterior") && e.contains("forward"), "{e}");
    // --help lists every name and the defaults kept in SamplerConfig.
    let help = <SamplerCli as clap::CommandFactory>::command().render_help().to_string();
    for name in SamplerKind::NAMES.iter().chain(&Spacing::NAMES).chain(&DdpmVariance::NAMES) {
        assert!(help.contains(name), "--help does not list {name}:\n{help}");
    }
    assert!(help.contains("[default: 7]") && help.contains("[default: dpm-solver-3]"), "{help}");
}

struct NanAfter {
    sigma_below: f64,
}
impl Denoiser for NanAfter {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> anyhow::Result<Tensor> {
        let s = sigma.double_value(&[0]);
        Ok(if s < self.sigma_below { x * f64::NAN } else { x.zeros_like() })
    }
}
struct WrongShape;
impl Denoiser for WrongShape {
    fn denoise(&self, x: &Tensor, _sigma: &Tensor) -> anyhow::Result<Tensor> {
        Ok(x.narrow(1, 0, 1))
    }
}

#[test]
fn bad_input_errors() {
    let g = gaussian();
    let p = vp();
    let (z, st) = prior(&[1, 2], &[4]);
    let err = |cfg: &SamplerConfig| -> String {
        let e = sample(cfg, &g, &p, &z, &mut st.clone()).err().expect("expected an error");
        let s = format!("{e:#}");
        assert!(!s.contains('\n'), "one line: {s}");
        s
    };
    let e = err(&SamplerConfig::new(SamplerKind::Heun, 0));
    assert!(e.contains("steps"), "{e}");
    let mut c = SamplerConfig::new(SamplerKind::Ddim, 10);
    c.eta = -0.1;
    assert!(err(&c).contains("eta"));
    c.eta = f64::NAN;
    assert!(err(&c).contains("eta"));
    let mut c = SamplerConfig::new(SamplerKind::DpmSolver3, 10);
    c.t_end = Some(0.5);
    c.t_start = Some(0.5);
    assert!(err(&c).contains("t_end"));
    c.t_end = Some(0.7);
    assert!(err(&c).contains("t_end"));
    c.t_end = None;
    c.t_start = Some(1.5);
    let e = sample(&c, &g, &p, &z, &mut st.clone()).err().unwrap().to_string();
    assert!(e.contains("t_start") && e.contains("outside"), "{e}");
    c.t_start = None;
    c.t_end = Some(0.0);
    let e = sample(&c, &g, &p, &z, &mut st.clone()).err().unwrap().to_string();
    assert!(e.contains("t_end") && e.contains("outside"), "{e}");
    let mut c = SamplerConfig::new(SamplerKind::Heun, 10);
    c.rho = 0.0;
    assert!(err(&c).contains("rho"));
    let mut c = SamplerConfig::new(SamplerKind::Heun, 10);
    c.s_churn = -1.0;
    assert!(err(&c).contains("s_churn"));
    let mut c = SamplerConfig::new(SamplerKind::Heun, 10);
    c.s_tmin = 2.0;
    c.s_tmax = 1.0;
    assert!(err(&c).contains("s_tmin"));
    // Streams vs batch.
    let cfg = SamplerConfig::new(SamplerKind::Ddpm, 10);
    let mut three = SampleStreams::from_seeds(&[1, 2, 3]);
    let e = sample(&cfg, &g, &p, &z, &mut three).err().unwrap().to_string();
    assert!(e.contains("streams"), "{e}");
    // Non-float / empty noise.
    let zi = Tensor::zeros([2, 4], (Kind::Int64, Device::Cpu));
    assert!(sample(&cfg, &g, &p, &zi, &mut st.clone()).is_err());
    let z0 = Tensor::zeros([0, 4], (Kind::Double, Device::Cpu));
    assert!(sample(&cfg, &g, &p, &z0, &mut SampleStreams::from_seeds(&[])).is_err());
    // NaN produced -> error naming the step.
    for kind in SamplerKind::ALL {
        let cfg = SamplerConfig::new(kind, 10);
        let s_mid = plan(&cfg, &p).unwrap().sigma[3];
        let e = sample(&cfg, &NanAfter { sigma_below: s_mid * 1.0001 }, &p, &z, &mut st.clone()).err().unwrap();
        let e = format!("{e:#}");
        assert!(e.contains("non-finite") && e.contains("step"), "{kind}: {e}");
        let e = sample(&cfg, &WrongShape, &p, &z, &mut st.clone()).err().unwrap().to_string();
        assert!(e.contains("shape"), "{kind}: {e}");
    }
    // validate() directly
    assert!(SamplerConfig::new(SamplerKind::Ddpm, 10).validate(&p).is_ok());
    assert!(SamplerConfig::new(SamplerKind::Ddpm, 0).validate(&p).is_err());
}

#[test]
fn time_uniform_default_becomes_logsnr_on_edm() {
    // On EDM t = sigma, so a time-uniform grid from 80 to 0.002 spends every step at high noise.
    let ddim = SamplerConfig::new(SamplerKind::Ddim, 10);
    assert_eq!(ddim.spacing_for(&vp()), Spacing::TimeUniform);
    assert_eq!(ddim.spacing_for(&edm()), Spacing::LogSnr);
    let explicit = SamplerConfig { spacing: Some(Spacing::TimeUniform), ..ddim.clone() };
    assert_eq!(explicit.spacing_for(&edm()), Spacing::TimeUniform);
    assert_eq!(SamplerConfig::new(SamplerKind::Heun, 18).spacing_for(&edm()), Spacing::Karras);
}

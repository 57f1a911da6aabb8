//! Single-step DPM-Solver-1, -2, -3 (Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver: A Fast ODE
//! Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps", Algorithms 1 and 2;
//! the data-independent noise-prediction form, the reference implementation's
//! `singlestep_dpm_solver_{first,second,third}_update` with `solver_type = 'dpmsolver'`).
//!
//! With lambda = -ln sigma, h = lambda_t - lambda_s, eps(x~, sigma) = (x~ - D(x~, sigma)) / sigma,
//! the VP updates divided by alpha (x~ = x / alpha, sigma = std / alpha) read:
//!
//! - order 1: x~_t = x~_s - sigma_t (e^h - 1) eps_s  (= x~_s - (sigma_s - sigma_t) eps_s = DDIM);
//! - order 2 (r1 = 1/2): u = x~_s - sigma_s1 (e^{r1 h} - 1) eps_s at lambda_s1 = lambda_s + r1 h,
//!   x~_t = x~_s - sigma_t (e^h - 1) eps_s - sigma_t (e^h - 1) (eps(u) - eps_s) / (2 r1);
//! - order 3 (r1 = 1/3, r2 = 2/3): u1 = x~_s - sigma_s1 (e^{r1 h} - 1) eps_s,
//!   u2 = x~_s - sigma_s2 (e^{r2 h} - 1) eps_s - (r2/r1) sigma_s2 ((e^{r2 h} - 1)/(r2 h) - 1) D1,
//!   x~_t = x~_s - sigma_t (e^h - 1) eps_s - (sigma_t / r2) ((e^h - 1)/h - 1) D2,
//!   with D1 = eps(u1) - eps_s, D2 = eps(u2) - eps_s.
use super::Evaluator;
use anyhow::{bail, Result};
use tch::Tensor;

/// Inner-point fractions of the step in lambda (reference defaults).
pub const R1_ORDER2: f64 = 0.5;
pub const R1_ORDER3: f64 = 1.0 / 3.0;
pub const R2_ORDER3: f64 = 2.0 / 3.0;

/// Walk the outer sigma grid with the given per-step orders (len = sig.len() - 1).
pub fn singlestep(ev: &mut Evaluator, mut x: Tensor, sig: &[f64], orders: &[usize]) -> Result<Tensor> {
    let steps = orders.len();
    for (i, &order) in orders.iter().enumerate() {
        let (s, t) = (sig[i], sig[i + 1]);
        let (ls, lt) = (-s.ln(), -t.ln());
        let h = lt - ls;
        let eps_s = ev.eps(&x, s)?;
        let phi_1 = h.exp_m1();
        x = match order {
            1 => &x - eps_s * (t * phi_1),
            2 => {
                let r1 = R1_ORDER2;
                let s1 = (-(ls + r1 * h)).exp();
                let u = &x - &eps_s * (s1 * (r1 * h).exp_m1());
                let eps_1 = ev.eps(&u, s1)?;
                let d1 = eps_1 - &eps_s;
                &x - eps_s * (t * phi_1) - d1 * (0.5 / r1 * t * phi_1)
            }
            3 => {
                let (r1, r2) = (R1_ORDER3, R2_ORDER3);
                let s1 = (-(ls + r1 * h)).exp();
                let s2 = (-(ls + r2 * h)).exp();
                let phi_11 = (r1 * h).exp_m1();
                let phi_12 = (r2 * h).exp_m1();
                let phi_22 = phi_12 / (r2 * h) - 1.0;
                let phi_2 = phi_1 / h - 1.0;
                let u1 = &x - &eps_s * (s1 * phi_11);
                let d1 = ev.eps(&u1, s1)? - &eps_s;
                let u2 = &x - &eps_s * (s2 * phi_12) - d1 * (r2 / r1 * s2 * phi_22);
                let d2 = ev.eps(&u2, s2)? - &eps_s;
                &x - eps_s * (t * phi_1) - d2 * (t / r2 * phi_2)
            }
            o => bail!("dpm-solver: unsupported order {o}"),
        };
        ev.check(&x, i, steps, s, t)?;
    }
    Ok(x)
}

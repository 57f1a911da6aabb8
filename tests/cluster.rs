//! Timestep clustering against hand-derived answers (docs/METHOD.md §3).
use msdiff::cluster::optimal::{agreement_curves, algorithm1_cuts, DataScale, OptimalOptions};
use msdiff::cluster::snr::snr_cuts;
use msdiff::process::{Process, ProcessConfig};
use tch::{Device, Kind, Tensor};

fn vp() -> Process {
    ProcessConfig::default().build().unwrap()
}

#[test]
fn snr_split_reproduces_the_papers_cifar_cuts() {
    // Table 4 of Zhang et al. (docs/METHOD.md §3): SNR split (0.348, 0.709) for the VP
    // process with a 1000-point grid and interval sizes within [N/2K, 3N/2K]. An independent
    // Python DP (same cost, grid t_i = (i+1)/1000) also gives 0.348 and 0.709.
    let cuts = snr_cuts(&vp(), 3, 1000).unwrap();
    println!("snr cuts {cuts:?}");
    assert!((cuts[0] - 0.348).abs() < 1e-9 && (cuts[1] - 0.709).abs() < 1e-9, "{cuts:?}");
}

/// Standard normal CDF via erfc (Abramowitz-Stegun 7.1.26 is too coarse; use libm-free series).
fn phi(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// erfc by Numerical Recipes' Chebyshev fit (fractional error < 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Two points y = -c 1 and +c 1 in D dimensions (equal weight). For x~ = y_a + sigma z with
/// y_a = -c 1, the posterior mean is m = c tanh(a) 1 with a = -c^2 D/sigma^2 + c sqrt(D) g/sigma,
/// g = sum(z)/sqrt(D) ~ N(0,1) (the logit difference is 2c sum(x)/sigma^2). Every pixel of y - m
/// and of ybar - m = -m is the same, so S0 and S1 are 0 or 1 and
///   E[S0] = P(c (1 + tanh a) <= eta sigma) = Phi(g0),  g0 = (atanh(r - 1) + c^2 D/sigma^2) sigma/(c sqrt D),
///   E[S1] = P(c |tanh a| <= eta sigma) = Phi(u) - Phi(l), u,l = (+-atanh(r) + c^2 D/sigma^2) sigma/(c sqrt D),
/// with r = eta sigma / c (and the obvious limits when r is out of range). By symmetry the same
/// holds when the sample comes from +c 1.
fn expected_s(sigma: f64, c: f64, d: f64, eta: f64) -> (f64, f64) {
    let r = eta * sigma / c;
    let k = sigma / (c * d.sqrt());
    let shift = c * c * d / (sigma * sigma);
    let s0 = if r >= 2.0 {
        1.0
    } else if r <= 0.0 {
        0.0
    } else {
        phi(((r - 1.0).atanh() + shift) * k)
    };
    let s1 = if r >= 1.0 { 1.0 } else { phi((r.atanh() + shift) * k) - phi((-r.atanh() + shift) * k) };
    (s0, s1)
}

#[test]
fn two_point_set_matches_the_analytic_curves_and_cuts() {
    let (c, d, eta) = (0.5f64, 16i64, 0.05f64);
    let pts = Tensor::cat(
        &[Tensor::full([1, d], -c, (Kind::Float, Device::Cpu)), Tensor::full([1, d], c, (Kind::Float, Device::Cpu))],
        0,
    );
    let p = vp();
    let opts =
        OptimalOptions { alpha: 0.9, eta, samples: 6000, seed: 11, scale: DataScale::Symmetric, ..Default::default() };
    let curves = agreement_curves(&pts, &p, &opts, Device::Cpu, |_| {}).unwrap();
    // (1) Binned curves vs the closed form: 20 bins of ~300 samples; binomial std <= 0.029, and
    // the expectation varies inside a bin, so we allow 0.09 (3 std).
    for b in 0..20 {
        let (lo, hi) = (b as f64 / 20.0, (b + 1) as f64 / 20.0);
        let idx: Vec<usize> = (0..curves.t.len()).filter(|&i| curves.t[i] >= lo && curves.t[i] < hi).collect();
        let mean = |v: &Vec<f64>| idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64;
        let want = idx
            .iter()
            .map(|&i| expected_s(p.sigma(curves.t[i]), c, d as f64, eta))
            .fold((0.0, 0.0), |a, e| (a.0 + e.0, a.1 + e.1));
        let (w0, w1) = (want.0 / idx.len() as f64, want.1 / idx.len() as f64);
        assert!((mean(&curves.s0) - w0).abs() < 0.09, "bin {b}: S0 {} vs {w0}", mean(&curves.s0));
        assert!((mean(&curves.s1) - w1).abs() < 0.09, "bin {b}: S1 {} vs {w1}", mean(&curves.s1));
    }
    // (2) Cuts vs the analytic cuts: solve the same prefix/suffix criteria on the expected curves
    // with a fine quadrature in t (uniform density on [t_min, 1]).
    let grid: Vec<f64> = (0..20000).map(|i| 1e-3 + (1.0 - 1e-3) * (i as f64 + 0.5) / 20000.0).collect();
    let es: Vec<(f64, f64)> = grid.iter().map(|&t| expected_s(p.sigma(t), c, d as f64, eta)).collect();
    let mut acc = 0.0;
    let mut t1 = 0.0;
    for (i, e) in es.iter().enumerate() {
        acc += e.0;
        if acc / (i + 1) as f64 >= opts.alpha {
            t1 = grid[i];
        }
    }
    let mut acc = 0.0;
    let mut t2 = 1.0;
    for i in (0..grid.len()).rev() {
        acc += es[i].1;
        if acc / (grid.len() - i) as f64 >= opts.alpha {
            t2 = grid[i];
        }
    }
    let (g1, g2) = algorithm1_cuts(&curves, opts.alpha).unwrap();
    println!("analytic cuts ({t1:.4}, {t2:.4}); Monte-Carlo ({g1:.4}, {g2:.4})");
    // Monte-Carlo error of a running mean over >= 1000 samples is ~0.01 in S; the mean curves'
    // slope near the cuts is ~1-3 per unit t, so 0.03 in t is a ~3-sigma bound.
    assert!((g1 - t1).abs() < 0.03 && (g2 - t2).abs() < 0.03, "analytic ({t1}, {t2}) vs ({g1}, {g2})");
}

#[test]
fn cuts_move_apart_as_alpha_rises_and_seeds_reproduce() {
    let mut r = msdiff::rng::Rng::new(5);
    let v: Vec<f64> = (0..64 * 25).map(|_| r.uniform_range(-1.0, 1.0)).collect();
    let data = Tensor::from_slice(&v).reshape([64, 1, 5, 5]);
    let opts = OptimalOptions { samples: 1500, ..Default::default() };
    let curves = agreement_curves(&data, &vp(), &opts, Device::Cpu, |_| {}).unwrap();
    let again = agreement_curves(&data, &vp(), &opts, Device::Cpu, |_| {}).unwrap();
    assert_eq!(curves.s0, again.s0);
    assert_eq!(curves.t, again.t);
    let mut last = (0.0, 1.0);
    let mut first = true;
    for alpha in [0.6, 0.7, 0.8, 0.9, 0.95] {
        let (t1, t2) = algorithm1_cuts(&curves, alpha).unwrap();
        if !first {
            assert!(t1 <= last.0 && t2 >= last.1, "alpha {alpha}: ({t1}, {t2}) after {last:?}");
        }
        first = false;
        last = (t1, t2);
    }
}

#[test]
fn bad_options_are_refused() {
    let ok = OptimalOptions::default();
    assert!(OptimalOptions { alpha: 0.0, ..ok.clone() }.validate(3).is_err());
    assert!(OptimalOptions { alpha: 1.5, ..ok.clone() }.validate(3).is_err());
    assert!(OptimalOptions { eta: 0.0, ..ok.clone() }.validate(3).is_err());
    assert!(OptimalOptions { samples: 10, ..ok.clone() }.validate(3).is_err());
    assert!(ok.validate(1).is_err());
    assert!(ok.validate(3).is_ok());
}

/// The mixed-precision Algorithm 1 (f32 posterior means, f64 where the error bound is not small
/// against the decision threshold) against the all-f64 path at the same draws: the per-sample
/// scores may differ only for pixels within a few % of their threshold, and the cuts not at all.
#[test]
fn mixed_precision_clustering_matches_the_f64_path() {
    let mut r = msdiff::rng::Rng::new(9);
    // 300 images of 784 pixels on a 1/255 grid in [-1, 1], as real 8-bit data (large norms:
    // where f32 dot products lose the most).
    let v: Vec<f64> = (0..300 * 784).map(|_| (r.below(256) as f64) / 127.5 - 1.0).collect();
    let data = Tensor::from_slice(&v).reshape([300, 1, 28, 28]);
    let opts = OptimalOptions { samples: 2000, seed: 4, ..Default::default() };
    let mixed = agreement_curves(&data, &vp(), &opts, Device::Cpu, |_| {}).unwrap();
    let f64 = OptimalOptions { arithmetic: msdiff::denoiser::optimal::Arithmetic::F64, ..opts.clone() };
    let exact = agreement_curves(&data, &vp(), &f64, Device::Cpu, |_| {}).unwrap();
    assert_eq!(mixed.t, exact.t);
    let worst = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let (d0, d1) = (worst(&mixed.s0, &exact.s0), worst(&mixed.s1, &exact.s1));
    println!("largest score differences: S0 {d0}, S1 {d1} (one pixel = {})", 1.0 / 784.0);
    // One pixel is 1/784 of a score: allow two flipped pixels in the worst sample.
    assert!(d0 <= 2.0 / 784.0 + 1e-12 && d1 <= 2.0 / 784.0 + 1e-12, "S0 differs by {d0}, S1 by {d1}");
    assert_eq!(algorithm1_cuts(&mixed, 0.9).unwrap(), algorithm1_cuts(&exact, 0.9).unwrap());
}

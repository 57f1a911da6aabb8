//! The exact optimal denoiser (docs/METHOD.md §2) against independent oracles.
use msdiff::denoiser::optimal::Arithmetic;
use msdiff::denoiser::{Denoiser, OptimalDenoiser};
use msdiff::rng::Rng;
use tch::{Device, Kind, Tensor};

/// A random dataset of `n` items of `d` values in [-1, 1], rounded to f32 (the denoiser stores
/// its data in f32, so the f32 values are the dataset) and held in f64.
fn dataset(n: i64, d: i64, seed: u64) -> Tensor {
    let mut r = Rng::new(seed);
    let v: Vec<f64> = (0..n * d).map(|_| r.uniform_range(-1.0, 1.0) as f32 as f64).collect();
    Tensor::from_slice(&v).reshape([n, d])
}

/// Posterior mean by a direct, loop-based f64 softmax: an implementation independent of the
/// matrix-product formulation under test.
fn naive_mean(data: &Tensor, x: &[f64], sigma: f64) -> Vec<f64> {
    let n = data.size()[0] as usize;
    let d = data.size()[1] as usize;
    let y: Vec<f64> = Vec::<f64>::try_from(data.reshape([-1])).unwrap();
    let logits: Vec<f64> =
        (0..n).map(|i| -(0..d).map(|j| (x[j] - y[i * d + j]).powi(2)).sum::<f64>() / (2.0 * sigma * sigma)).collect();
    let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
    let z: f64 = w.iter().sum();
    (0..d).map(|j| (0..n).map(|i| w[i] * y[i * d + j]).sum::<f64>() / z).collect()
}

#[test]
fn matches_a_naive_softmax_at_all_noise_levels() {
    let data = dataset(40, 12, 1);
    let mut r = Rng::new(2);
    for precision in [Arithmetic::F64, Arithmetic::Mixed] {
        let den = OptimalDenoiser::new(&data, Device::Cpu).unwrap().with_arithmetic(precision);
        for &sigma in &[1e-3, 0.05, 0.3, 1.0, 3.0, 30.0, 1e3] {
            let k = r.below(40) as i64;
            let z = r.randn(&[12], Kind::Double);
            let x = data.get(k) + z * sigma;
            let m = den.posterior_mean(&x.unsqueeze(0), &Tensor::from_slice(&[sigma])).unwrap();
            let want = naive_mean(&data, &Vec::<f64>::try_from(&x).unwrap(), sigma);
            let got = Vec::<f64>::try_from(m.squeeze_dim(0)).unwrap();
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            // F64: pure rounding (values O(1), 40 terms): 1e-12. Mixed: the implied eps is exact
            // to EPS_TOL = 1e-5, i.e. m to 1e-5 sigma, plus the f32 rounding of the weighted sum
            // (~1e-7 of the range 2; 1e-6 allowed).
            let tol = if precision == Arithmetic::F64 { 1e-12 } else { 1e-5 * sigma + 1e-6 };
            assert!(err < tol, "{precision:?} sigma {sigma}: max error {err:e} (tolerance {tol:e})");
        }
    }
}

#[test]
fn eps_at_small_t_is_the_true_noise() {
    // Spec: eps*(., t -> 0) = eps. With x~ = y_k + sigma z and sigma = 1e-4, every other point is
    // at squared distance >= ~1 (random data in [-1,1]^16), so its weight is exp(-1/(2e-8)) = 0 and
    // m = y_k; eps* = (x~ - y_k)/sigma = z up to f64 rounding of x~ (1e-16 / 1e-4 = 1e-12).
    let data = dataset(30, 16, 3);
    let den = OptimalDenoiser::new(&data, Device::Cpu).unwrap();
    let mut r = Rng::new(4);
    let sigma = 1e-4;
    for k in [0i64, 7, 29] {
        let z = r.randn(&[1, 16], Kind::Double);
        let x = data.get(k).unsqueeze(0) + &z * sigma;
        let s = Tensor::from_slice(&[sigma]);
        let x0 = den.denoise(&x, &s).unwrap();
        let eps = (&x - x0) / sigma;
        let err = (&eps - &z).abs().max().double_value(&[]);
        assert!(err < 1e-9, "item {k}: |eps* - z| = {err:e}");
    }
}

#[test]
fn eps_at_large_t_tends_to_the_closed_form() {
    // Spec: eps*(., t -> 1) = x/(s sigma) - ybar/sigma, i.e. in scaled space m -> ybar. For
    // x~ = y + sigma z the softmax logits differ across items by O(|y||z|/sigma), so
    // m - ybar = O(1/sigma) and eps* - eps_1 = (ybar - m)/sigma = O(1/sigma^2): going from
    // sigma = 100 to 1000 must shrink the gap ~100x.
    let data = dataset(50, 10, 5);
    let den = OptimalDenoiser::new(&data, Device::Cpu).unwrap().with_arithmetic(Arithmetic::F64);
    let ybar = data.mean_dim(0, false, Kind::Double);
    let mut r = Rng::new(6);
    let z = r.randn(&[1, 10], Kind::Double);
    let y = data.get(3).unsqueeze(0);
    let gap = |sigma: f64| {
        let x = &y + &z * sigma;
        let m = den.denoise(&x, &Tensor::from_slice(&[sigma])).unwrap();
        let eps = (&x - &m) / sigma;
        let eps1 = (&x - &ybar) / sigma;
        (eps - eps1).abs().max().double_value(&[])
    };
    let (g2, g3) = (gap(100.0), gap(1000.0));
    assert!(g2 < 1e-3, "gap at sigma 100: {g2:e}");
    let ratio = g2 / g3;
    assert!((50.0..200.0).contains(&ratio), "gap ratio {ratio} (want ~100)");
}

#[test]
fn batched_equals_one_by_one_and_f32_inputs_work() {
    let data = dataset(64, 8, 7);
    let den = OptimalDenoiser::new(&data, Device::Cpu).unwrap();
    let mut r = Rng::new(8);
    let x = r.randn(&[5, 8], Kind::Double);
    let s = Tensor::from_slice(&[0.01, 0.2, 1.0, 5.0, 50.0]);
    let all = den.denoise(&x, &s).unwrap();
    let sig = [0.01, 0.2, 1.0, 5.0, 50.0];
    for i in 0..5 {
        let one = den.denoise(&x.narrow(0, i, 1), &s.narrow(0, i, 1)).unwrap();
        let err = (one - all.narrow(0, i, 1)).abs().max().double_value(&[]);
        // Rows refined in f64 agree to rounding; rows kept in f32 (high sigma) may differ by the
        // GEMM's blocking, within the stated accuracy (1e-5 sigma + 1e-6).
        assert!(err < 1e-5 * sig[i as usize] + 1e-6, "row {i}: {err:e}");
    }
    let out32 = den.denoise(&x.to_kind(Kind::Float), &s.to_kind(Kind::Float)).unwrap();
    assert_eq!(out32.kind(), Kind::Float);
}

#[test]
fn bad_input_is_an_error() {
    let data = dataset(4, 3, 9);
    let den = OptimalDenoiser::new(&data, Device::Cpu).unwrap();
    let x = Tensor::zeros([2, 3], (Kind::Double, Device::Cpu));
    assert!(den.denoise(&x, &Tensor::from_slice(&[1.0, 0.0])).is_err());
    assert!(den.denoise(&x, &Tensor::from_slice(&[1.0])).is_err());
    assert!(den
        .denoise(&Tensor::zeros([2, 4], (Kind::Double, Device::Cpu)), &Tensor::from_slice(&[1.0, 1.0]))
        .is_err());
    assert!(OptimalDenoiser::new(&Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)), Device::Cpu).is_err());
    let nan = Tensor::from_slice(&[f64::NAN, 0.0, 0.0]).reshape([1, 3]);
    assert!(OptimalDenoiser::new(&nan, Device::Cpu).is_err());
}

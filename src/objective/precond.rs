//! Preconditioning: what a network predicts, its input scale and noise label, and how its output
//! becomes the x0 estimate (and, inverted, the training target).
//!
//! All conversions are in the scaled space `x~ = x0 + sigma eps` (see [`crate::process`]), with
//! `alpha = s_t` the process's signal scale at that sigma (1/sqrt(1+sigma^2) for VP, 1 for EDM)
//! and the network seeing its input in process space `x = alpha x~` (or EDM's `c_in x~`).
//!
//! | prediction | network output | x0 from it |
//! |---|---|---|
//! | eps | eps | x~ - sigma eps |
//! | x0 | x0 | itself |
//! | v (Salimans & Ho 2022, VP only) | alpha eps - std x0, std = alpha sigma | alpha^2 x~ - alpha sigma v |
//! | EDM (Karras et al. 2022) | F | c_skip x~ + c_out F |
use crate::process::Process;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// What the network predicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Prediction {
    #[default]
    Eps,
    X0,
    V,
    /// EDM preconditioning with data std `sigma_data` (0.5 in EDM).
    Edm {
        #[serde(default = "default_sigma_data")]
        sigma_data: f64,
    },
}

pub fn default_sigma_data() -> f64 {
    0.5
}

impl Prediction {
    /// Multiplier applied to `x~` to form the network input: alpha (process space) or EDM's c_in.
    /// `sigma` and `alpha` are per-sample tensors broadcastable against `x`.
    pub fn input_scale(&self, sigma: &Tensor, alpha: &Tensor) -> Tensor {
        match self {
            Prediction::Edm { sigma_data } => (sigma.square() + sigma_data * sigma_data).rsqrt(),
            _ => alpha.shallow_clone(),
        }
    }

    /// x0 estimate from the network output `out` at scaled input `x` (x~), noise ratio `sigma` and
    /// signal scale `alpha` (both broadcastable against `x`).
    pub fn to_x0(&self, out: &Tensor, x: &Tensor, sigma: &Tensor, alpha: &Tensor) -> Tensor {
        match self {
            Prediction::Eps => x - sigma * out,
            Prediction::X0 => out.shallow_clone(),
            Prediction::V => alpha.square() * x - alpha * sigma * out,
            Prediction::Edm { sigma_data } => {
                let sd2 = sigma_data * sigma_data;
                let denom = sigma.square() + sd2;
                let c_skip = denom.reciprocal() * sd2;
                let c_out = sigma * *sigma_data * denom.rsqrt();
                c_skip * x + c_out * out
            }
        }
    }

    /// The training target for the network given clean `x0`, noise `eps`, and the scaled sample
    /// `x = x0 + sigma eps`: the inverse of [`Prediction::to_x0`] at the true x0.
    pub fn target(&self, x0: &Tensor, eps: &Tensor, x: &Tensor, sigma: &Tensor, alpha: &Tensor) -> Tensor {
        match self {
            Prediction::Eps => eps.shallow_clone(),
            Prediction::X0 => x0.shallow_clone(),
            Prediction::V => alpha * (eps - sigma * x0),
            Prediction::Edm { sigma_data } => {
                let sd2 = sigma_data * sigma_data;
                let denom = sigma.square() + sd2;
                let c_skip = denom.reciprocal() * sd2;
                let c_out = sigma * *sigma_data * denom.rsqrt();
                (x0 - c_skip * x) / c_out
            }
        }
    }

    /// The noise label the network receives at noise level `sigma` (time `t` of `process`):
    /// EDM preconditioning uses its c_noise = ln(sigma)/4 whatever the process; otherwise the
    /// process's own label (999 t for VP as score_sde, the step index N t - 1 for DDPM).
    pub fn noise_label(&self, process: &Process, t: f64, sigma: f64) -> f64 {
        match self {
            Prediction::Edm { .. } => sigma.ln() / 4.0,
            _ => process.noise_label(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn edm_coefficients_closed_form() {
        // sigma = 0.5 = sigma_data: c_skip = 1/2, c_out = 0.25/sqrt(0.5) = 0.353553, c_in = 1/sqrt(0.5),
        // c_noise = ln(0.5)/4 = -0.1732868, weight = 0.5/0.0625 = 8 (hand-computed). The
        // coefficients are read off the preconditioning itself: c_skip = D(x~=1, F=0),
        // c_out = D(x~=0, F=1), c_in = the input scale, c_noise = the noise label.
        let p = Prediction::Edm { sigma_data: 0.5 };
        let edm = crate::process::ProcessConfig::from_name("edm").unwrap().build().unwrap();
        let at = |sigma: f64| {
            let s = Tensor::from(sigma).to_kind(Kind::Double);
            let one = Tensor::from(1.0).to_kind(Kind::Double);
            let zero = Tensor::from(0.0).to_kind(Kind::Double);
            let c_skip = p.to_x0(&zero, &one, &s, &one).double_value(&[]);
            let c_out = p.to_x0(&one, &zero, &s, &one).double_value(&[]);
            let c_in = p.input_scale(&s, &one).double_value(&[]);
            (c_skip, c_out, c_in, p.noise_label(&edm, sigma, sigma))
        };
        let (c_skip, c_out, c_in, c_noise) = at(0.5);
        assert!((c_skip - 0.5).abs() < 1e-15);
        assert!((c_out - 0.353_553_390_593_273_8).abs() < 1e-15);
        assert!((c_in - std::f64::consts::SQRT_2).abs() < 1e-15);
        assert!((c_noise + 0.173_286_795_139_986_3).abs() < 1e-15);
        let weight = |s: f64| (s * s + 0.25) / (s * 0.5f64).powi(2);
        assert!((weight(0.5) - 8.0).abs() < 1e-12);
        // EDM's loss weight times c_out^2 is 1 (so weighted loss on D = plain loss on F).
        for s in [0.002, 0.3, 2.5, 80.0] {
            let (_, c_out, _, _) = at(s);
            assert!((weight(s) * c_out * c_out - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn target_and_to_x0_are_inverse() {
        let x0 = Tensor::from_slice(&[0.3f64, -0.7, 0.9, 0.0]);
        let eps = Tensor::from_slice(&[1.2f64, 0.4, -2.0, 0.5]);
        for sigma in [0.01f64, 0.7, 5.0] {
            let s = Tensor::from(sigma).to_kind(Kind::Double);
            let alpha = Tensor::from(1.0 / (1.0 + sigma * sigma).sqrt()).to_kind(Kind::Double);
            let x = &x0 + &eps * sigma;
            for p in [Prediction::Eps, Prediction::X0, Prediction::V, Prediction::Edm { sigma_data: 0.5 }] {
                let t = p.target(&x0, &eps, &x, &s, &alpha);
                let back = p.to_x0(&t, &x, &s, &alpha);
                let err = (&back - &x0).abs().max().double_value(&[]);
                assert!(err < 1e-12, "{p:?} sigma {sigma}: err {err}");
            }
        }
    }
}

//! Parameterisations: what a network predicts and how that becomes the x0 estimate.
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
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Prediction {
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

impl Default for Prediction {
    fn default() -> Self {
        Prediction::Eps
    }
}

/// EDM's preconditioning coefficients at one sigma (multistage-spec.md section 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdmCoefficients {
    pub c_skip: f64,
    pub c_out: f64,
    pub c_in: f64,
    pub c_noise: f64,
    /// Loss weight (sigma^2 + sd^2) / (sigma sd)^2.
    pub weight: f64,
}

pub fn edm_coefficients(sigma: f64, sigma_data: f64) -> EdmCoefficients {
    let sd2 = sigma_data * sigma_data;
    let s2 = sigma * sigma;
    EdmCoefficients {
        c_skip: sd2 / (s2 + sd2),
        c_out: sigma * sigma_data / (s2 + sd2).sqrt(),
        c_in: 1.0 / (s2 + sd2).sqrt(),
        c_noise: sigma.ln() / 4.0,
        weight: (s2 + sd2) / (sigma * sigma_data).powi(2),
    }
}

impl Prediction {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "eps" => Prediction::Eps,
            "x0" => Prediction::X0,
            "v" => Prediction::V,
            "edm" => Prediction::Edm { sigma_data: default_sigma_data() },
            o => bail!("unknown prediction '{o}' (expected eps, x0, v or edm)"),
        })
    }

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

    /// Per-sample loss weight on the squared error of the network output: 1 except EDM's
    /// (sigma^2+sd^2)/(sigma sd)^2 times c_out^2, which is 1 too: EDM's weighted loss on D equals
    /// the plain loss on F (Karras et al. 2022, eq. 8). Kept explicit for clarity.
    pub fn output_loss_weight(&self) -> f64 {
        1.0
    }
}

/// eps from an x0 estimate: (x~ - x0) / sigma.
pub fn eps_from_x0(x0: &Tensor, x: &Tensor, sigma: &Tensor) -> Tensor {
    (x - x0) / sigma
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn edm_coefficients_closed_form() {
        // sigma = 0.5 = sigma_data: c_skip = 1/2, c_out = 0.25/sqrt(0.5) = 0.353553, c_in = 1/sqrt(0.5),
        // c_noise = ln(0.5)/4 = -0.1732868, weight = 0.5/0.0625 = 8 (hand-computed).
        let c = edm_coefficients(0.5, 0.5);
        assert!((c.c_skip - 0.5).abs() < 1e-15);
        assert!((c.c_out - 0.353_553_390_593_273_8).abs() < 1e-15);
        assert!((c.c_in - std::f64::consts::SQRT_2).abs() < 1e-15);
        assert!((c.c_noise + 0.173_286_795_139_986_3).abs() < 1e-15);
        assert!((c.weight - 8.0).abs() < 1e-12);
        // EDM's loss weight times c_out^2 is 1 (so weighted loss on D = plain loss on F).
        for s in [0.002, 0.3, 2.5, 80.0] {
            let c = edm_coefficients(s, 0.5);
            assert!((c.weight * c.c_out * c.c_out - 1.0).abs() < 1e-12);
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

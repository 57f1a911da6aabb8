//! What Algorithm 1 shows a person: its agreement curves binned by t (for the split file) and
//! the clustering plot (S0, S1, their running means, alpha and the cuts).
use super::optimal::{Curves, OptimalOptions};
use super::Split;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

/// Per-sample scores averaged over bins of consecutive t (the samples are sorted by t).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct BinnedCurves {
    pub t: Vec<f64>,
    pub s0: Vec<f64>,
    pub s1: Vec<f64>,
}

/// Bin `c` into at most `bins` groups of consecutive samples.
pub fn binned(c: &Curves, bins: usize) -> BinnedCurves {
    let mut b = BinnedCurves::default();
    for i in 0..bins {
        let lo = i * c.t.len() / bins;
        let hi = ((i + 1) * c.t.len() / bins).max(lo + 1).min(c.t.len());
        if lo >= hi {
            continue;
        }
        let m = |v: &[f64]| v[lo..hi].iter().sum::<f64>() / (hi - lo) as f64;
        b.t.push(m(&c.t));
        b.s0.push(m(&c.s0));
        b.s1.push(m(&c.s1));
    }
    b
}

/// The clustering plot: binned S0, S1, their running means, alpha and the cuts.
pub fn plot_curves(path: &Path, c: &Curves, opts: &OptimalOptions, s: &Split) -> Result<()> {
    use crate::plot::{palette, Plot};
    let b = binned(c, 60);
    let pts = |v: &[f64]| b.t.iter().cloned().zip(v.iter().cloned()).collect::<Vec<_>>();
    let every = (c.t.len() / 400).max(1);
    let run0: Vec<(f64, f64)> = c.t.iter().zip(&c.prefix_s0).step_by(every).map(|(a, b)| (*a, *b)).collect();
    let run1: Vec<(f64, f64)> = c.t.iter().zip(&c.suffix_s1).step_by(every).map(|(a, b)| (*a, *b)).collect();
    let mut p = Plot::new("optimal-denoiser agreement (Algorithm 1)", 800, 480)
        .xlabel("t (VP-SDE)")
        .ylabel("fraction of pixels within eta")
        .yrange(0.0, 1.05)
        .xrange(0.0, 1.0)
        .series("S0 (t->0 form)", &pts(&b.s0), palette(0))
        .series("S1 (t->1 form)", &pts(&b.s1), palette(1))
        .series("prefix mean S0", &run0, palette(2))
        .series("suffix mean S1", &run1, palette(3))
        .hline(opts.alpha, &format!("alpha {}", opts.alpha), palette(4));
    for (i, x) in s.boundaries_t.iter().enumerate() {
        p = p.vline(*x, &format!("t{} = {x:.3}", i + 1), palette(5));
    }
    p.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_average_consecutive_samples() {
        let c = Curves {
            t: vec![0.1, 0.2, 0.3, 0.4],
            s0: vec![1.0, 0.0, 0.5, 0.5],
            s1: vec![0.0, 0.0, 1.0, 1.0],
            prefix_s0: vec![],
            suffix_s1: vec![],
        };
        let b = binned(&c, 2);
        assert_eq!(b.s0, vec![0.5, 0.5]);
        assert_eq!(b.s1, vec![0.0, 1.0]);
        assert!((b.t[0] - 0.15).abs() < 1e-12 && (b.t[1] - 0.35).abs() < 1e-12);
    }
}

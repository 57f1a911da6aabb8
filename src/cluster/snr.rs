//! The SNR-based split (the paper's Table 4 baseline): contiguous intervals of a grid of N cells
//! on t in (0, 1], minimising sum over intervals of sum_{t in interval} 2 |lambda(center) - lambda(t)|
//! with lambda the half log-SNR, interval sizes kept within [floor(N/2K), ceil(3N/2K)] points (Go et
//! al.'s bounds, as the timestep and gradient splits), by dynamic
//! programming. The grid is t_i = (i+1)/N, i = 0..N-1 (the discrete steps' times); an interval's
//! centre is the midpoint of its first and last points, and a cut is reported at the first point
//! of the next interval. With N = 1000 and K = 3 on the VP process this gives the paper's
//! (0.348, 0.709) exactly (cell centres (i+1/2)/N would give 0.3465/0.7075).
use crate::process::Process;
use anyhow::{ensure, Result};

/// Cost of the interval of cells [a, b) given lambda at cell centres (`lam`) and the process.
fn interval_cost(process: &Process, n: usize, lam: &[f64], a: usize, b: usize) -> f64 {
    let tc = 0.5 * (grid_t(a, n) + grid_t(b - 1, n));
    let lc = process.lambda(tc);
    lam[a..b].iter().map(|l| 2.0 * (lc - l).abs()).sum()
}

/// Grid point i: t = (i+1)/N.
fn grid_t(i: usize, n: usize) -> f64 {
    (i + 1) as f64 / n as f64
}

/// Minimum and maximum interval length (cells): Go et al.'s floor(N/2K) and ceil(3N/2K), the
/// bounds of every interval programme ([`super::timestep::size_bounds`]). (Before they were
/// ceil(N/2K) and floor(3N/2K); the paper's 0.348 / 0.709 comes out either way.)
pub fn size_bounds(n: usize, stages: usize) -> (usize, usize) {
    super::timestep::size_bounds(n, stages)
}

/// Optimal cuts (in t) by dynamic programming over `n` grid cells.
pub fn snr_cuts(process: &Process, stages: usize, n: usize) -> Result<Vec<f64>> {
    super::check_stages(stages)?;
    ensure!(n >= 2 * stages, "grid of {n} cells is too small for {stages} stages");
    let (lo, hi) = size_bounds(n, stages);
    let lam: Vec<f64> = (0..n).map(|i| process.lambda(grid_t(i, n))).collect();
    // best[k][e]: min cost covering cells [0, e) with k intervals; arg for backtracking.
    let inf = f64::INFINITY;
    let mut best = vec![vec![inf; n + 1]; stages + 1];
    let mut arg = vec![vec![usize::MAX; n + 1]; stages + 1];
    best[0][0] = 0.0;
    // Interval costs are needed for every (a, b) with lo <= b - a <= hi: precompute lazily per k.
    let mut cost_cache = std::collections::HashMap::new();
    for k in 1..=stages {
        for e in 1..=n {
            for len in lo..=hi.min(e) {
                let a = e - len;
                if best[k - 1][a].is_finite() {
                    let c = *cost_cache.entry((a, e)).or_insert_with(|| interval_cost(process, n, &lam, a, e));
                    let v = best[k - 1][a] + c;
                    if v < best[k][e] {
                        best[k][e] = v;
                        arg[k][e] = a;
                    }
                }
            }
        }
    }
    ensure!(best[stages][n].is_finite(), "no split of {n} cells into {stages} intervals of {lo}..{hi} cells exists");
    let mut cuts = Vec::new();
    let mut e = n;
    for k in (1..=stages).rev() {
        let a = arg[k][e];
        if k > 1 {
            cuts.push(grid_t(a, n));
        }
        e = a;
    }
    cuts.reverse();
    Ok(cuts)
}

/// Total cost of a split given as cell edges (for tests and reports).
pub fn split_cost(process: &Process, n: usize, edges: &[usize]) -> f64 {
    let lam: Vec<f64> = (0..n).map(|i| process.lambda(grid_t(i, n))).collect();
    let mut all = vec![0];
    all.extend_from_slice(edges);
    all.push(n);
    all.windows(2).map(|w| interval_cost(process, n, &lam, w[0], w[1])).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessConfig;

    #[test]
    fn dp_matches_brute_force_on_a_small_grid() {
        let p = ProcessConfig::default().build().unwrap();
        for (n, k) in [(12usize, 3usize), (18, 3), (20, 4)] {
            let (lo, hi) = size_bounds(n, k);
            let cuts = snr_cuts(&p, k, n).unwrap();
            let edges: Vec<usize> = cuts.iter().map(|c| (c * n as f64).round() as usize - 1).collect();
            let got = split_cost(&p, n, &edges);
            // Enumerate every composition of n into k parts within [lo, hi].
            let mut best = f64::INFINITY;
            // A brute-force reference: the recursion's state is plain arguments.
            #[allow(clippy::too_many_arguments)]
            fn rec(
                p: &Process,
                n: usize,
                k: usize,
                lo: usize,
                hi: usize,
                acc: &mut Vec<usize>,
                start: usize,
                best: &mut f64,
            ) {
                if acc.len() == k - 1 {
                    let last = n - start;
                    if last >= lo && last <= hi {
                        *best = best.min(split_cost(p, n, acc));
                    }
                    return;
                }
                for len in lo..=hi {
                    if start + len < n {
                        acc.push(start + len);
                        rec(p, n, k, lo, hi, acc, start + len, best);
                        acc.pop();
                    }
                }
            }
            rec(&p, n, k, lo, hi, &mut Vec::new(), 0, &mut best);
            assert!((got - best).abs() < 1e-9 * best.max(1.0), "n {n} k {k}: dp {got} brute {best}");
        }
    }
}

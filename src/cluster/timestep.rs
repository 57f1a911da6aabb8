//! Go et al.'s interval clustering (*Addressing Negative Transfer in Diffusion Models*, NeurIPS
//! 2023), the Table 4 baselines of the paper (docs/METHOD.md §3.6, docs/EDM.md §4):
//!
//! - [`interval_dp`]: the dynamic programme that cuts a grid of N points into K contiguous
//!   intervals, each of **floor(N/2K) to ceil(3N/2K)** points, minimising the sum of an interval
//!   cost; ties go to the earliest start, as `np.argmin` in the multi-stage authors'
//!   `interval_cluster`. An interval's centre is its element at index len/2 (the authors'
//!   `arr[len(arr)//2]`: the upper median for even lengths);
//! - [`timestep_cuts`]: the *timestep* criterion, cost = sum of |t - centre| over the interval,
//!   on the grid t_i = (i+1)/N of N = 1000 steps. With K = 3 it cuts at 0.334 / 0.667, which the
//!   paper lists rounded as 0.33 / 0.67 (0.330 / 0.670).
//!
//! The SNR split ([`super::snr`]) and the gradient split ([`super::gradient`]) use the same size
//! bounds.
use anyhow::{ensure, Result};

/// Go et al.'s interval sizes for `n` points and `stages` intervals: floor(n/2K) to ceil(3n/2K).
pub fn size_bounds(n: usize, stages: usize) -> (usize, usize) {
    ((n / (2 * stages)).max(1), (3 * n).div_ceil(2 * stages))
}

/// The centre of the interval [a, b): its element at index (b - a) / 2.
pub fn centre(a: usize, b: usize) -> usize {
    a + (b - a) / 2
}

/// Cut `n` grid points into `stages` contiguous intervals within [`size_bounds`], minimising
/// the sum of `cost(a, b)` over the intervals [a, b). Returns the first point of intervals
/// 2..=K (K - 1 increasing indices).
pub fn interval_dp(n: usize, stages: usize, cost: impl Fn(usize, usize) -> f64) -> Result<Vec<usize>> {
    super::check_stages(stages)?;
    let (lo, hi) = size_bounds(n, stages);
    ensure!(
        n >= stages * lo && n <= stages * hi,
        "no split of {n} grid points into {stages} intervals of {lo}..{hi} points exists"
    );
    let inf = f64::INFINITY;
    // best[k][e]: the cheapest cover of points [0, e) by k intervals; from[k][e]: its last start.
    let mut best = vec![vec![inf; n + 1]; stages + 1];
    let mut from = vec![vec![usize::MAX; n + 1]; stages + 1];
    best[0][0] = 0.0;
    for k in 1..=stages {
        for e in (k * lo)..=n {
            // Starts in increasing order; strict < keeps the earliest of equal costs.
            for a in e.saturating_sub(hi)..=(e - lo) {
                if best[k - 1][a].is_finite() {
                    let v = best[k - 1][a] + cost(a, e);
                    if v < best[k][e] {
                        best[k][e] = v;
                        from[k][e] = a;
                    }
                }
            }
        }
    }
    ensure!(
        best[stages][n].is_finite(),
        "no split of {n} grid points into {stages} intervals of {lo}..{hi} points exists"
    );
    let mut starts = Vec::with_capacity(stages - 1);
    let mut e = n;
    for k in (2..=stages).rev() {
        e = from[k][e];
        starts.push(e);
    }
    starts.reverse();
    Ok(starts)
}

/// Go et al.'s timestep clustering on the grid t_i = (i+1)/n: cuts in t (the first point of
/// each interval after the first).
pub fn timestep_cuts(stages: usize, n: usize) -> Result<Vec<f64>> {
    ensure!(n >= 2 * stages, "a grid of {n} points is too small for {stages} stages");
    // Sum of |i - c| in grid units: exact integers, so equal costs tie exactly.
    let cost = |a: usize, b: usize| {
        let c = centre(a, b) as i64;
        (a..b).map(|i| (i as i64 - c).abs()).sum::<i64>() as f64
    };
    Ok(interval_dp(n, stages, cost)?.into_iter().map(|i| (i + 1) as f64 / n as f64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_go_et_al() {
        assert_eq!(size_bounds(1000, 3), (166, 500));
        assert_eq!(size_bounds(100, 3), (16, 50));
        assert_eq!(size_bounds(12, 3), (2, 6));
        assert_eq!(centre(0, 4), 2);
        assert_eq!(centre(3, 6), 4);
    }
}

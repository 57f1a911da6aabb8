//! The exact optimal denoiser of a finite dataset (docs/METHOD.md §2, Proposition 1).
//!
//! Treating the training set {y_i} as the data distribution, the posterior mean of x0 given the
//! scaled sample x~ = x0 + sigma eps is
//!
//!   m(x~, sigma) = sum_i w_i y_i,   w = softmax_i(-||x~ - y_i||^2 / (2 sigma^2)),
//!
//! (the process-space form of docs/METHOD.md §2, ||x - s y||^2 / (2 s^2 sigma^2), is the same number).
//! Distances come from matrix products: ||x~ - y||^2 = ||x~||^2 - 2 x~.y + ||y||^2; the
//! ||x~||^2 term is constant per row and cancels in the softmax, so logits are
//! (2 x~.y - ||y||^2) / (2 sigma^2), with the row maximum subtracted before exponentiating.
//!
//! Arithmetic: in f32, the product x~.y carries an absolute error of about
//! eps_f32 sqrt(D) ||x~|| ||y||, which divided by 2 sigma^2 ruins the weights as sigma -> 0 (this is
//! exactly where every sampler ends). [`Arithmetic::Mixed`] therefore runs the fast f32 pass over the
//! whole set, bounds each row's error, and asks the caller which rows need more: those are
//! recomputed to the caller's accuracy `tol` (absolute, on every value of the mean) in f64, from
//! exact differences over the candidate points whose f32 logit is within `cutoff` + 2 x (logit
//! error bound) of the maximum, `cutoff` = ln((N - 1) range / tol) (at most [`CUTOFF`]): the points
//! left out weigh less than e^-cutoff each relative to the largest, so together they move the mean by
//! less than tol. A row with more than [`MAX_CANDIDATES`] candidates is recomputed in f64 over the
//! whole set instead (one batched GEMM for all such rows of a block). [`Arithmetic::F64`] does
//! everything in f64 (the reference the mixed mode is tested against).
use super::Denoiser;
use anyhow::{bail, ensure, Result};
use std::cell::{OnceCell, RefCell};
use tch::{Device, Kind, Tensor};

/// Accuracy target of the mixed mode, in noise-prediction units: a logit error of delta moves the
/// mean m by at most delta x (data range), hence eps = (x~ - m)/sigma by delta x range / sigma; a
/// row keeps its f32 weights when that bound is below `EPS_TOL` (i.e. x0 is exact to
/// `EPS_TOL * sigma`), else it is refined in f64 to that accuracy. At high noise the f32 pass
/// suffices; towards sigma -> 0 every row is refined (over few candidates, so cheaply).
pub const EPS_TOL: f64 = 1e-5;
/// Largest logit cutoff of the f64 refinement: candidates more than this below the row maximum
/// weigh < e^-40 = 4.2e-18 of the largest, so even 10^6 of them change the posterior mean by less
/// than f64 rounding of values of order 1. Rows with a looser tolerance use a smaller cutoff
/// (module docs).
pub const CUTOFF: f64 = 40.0;
/// Above this many candidates a row is recomputed in f64 over the whole set instead. The
/// crossover: a candidate costs a gathered f64 row and its difference (~5 memory passes of D
/// doubles, ~3 us at ~10 GB/s), a row of the batched whole-set pass 4 N D flops (~2.5 ms at
/// ~75 GFLOP/s; 2 cores of the CI machine, N = 60,000, D = 784): about 800 candidates there.
pub const MAX_CANDIDATES: i64 = 1024;

/// The caller's say on which rows of a block need more than the f32 pass: `(first query index,
/// sigmas, per-row error bounds of the f32 pass) -> per row None (keep the f32 mean) or Some(tol)
/// (recompute it so that every value is within tol of the exact mean)` (see
/// [`OptimalDenoiser::posterior_mean_refined`]).
pub type Refine<'a> = dyn FnMut(usize, &[f64], &[f64]) -> Vec<Option<f64>> + 'a;

crate::names::named_enum! {
    /// How posterior means are computed.
    #[derive(Default)]
    pub enum Arithmetic ("arithmetic") {
        /// f32 matrix products with an f64 refinement where f32 is not accurate enough (default).
        #[default]
        Mixed = "mixed",
        /// Everything in f64 (about half the speed on CPUs): the reference the mixed mode is checked against.
        F64 = "f64",
    }
}

/// The optimal denoiser of an in-memory dataset.
pub struct OptimalDenoiser {
    /// `[N, D]` f32 training points (flattened).
    data: Tensor,
    /// `[D + 1, N]`: the points as columns (contiguous: the GEMM runs ~1.4x faster on it than on a
    /// transposed view) with their squared norms as the last row, so that one GEMM against
    /// `[2c x, -c]` gives the logits `c (2 x.y - ||y||^2)` directly.
    data_aug_t: Tensor,
    /// `[D]` f64 dataset mean.
    mean: Tensor,
    /// Max ||y_i|| (for the error bound).
    max_norm: f64,
    /// Largest |value| of the data (for the error bound of the weighted mean).
    max_abs: f64,
    /// The points and their squared norms in f64, made on first use by an f64 pass (so that
    /// a pass over a few rows does not convert the whole set again).
    data64: OnceCell<(Tensor, Tensor)>,
    /// The f32 pass's two `[block_rows, N]` work matrices (logits, weights), allocated once: a
    /// fresh 60 MB tensor per block costs more in page faults than the exponentials written to it.
    scratch: RefCell<Option<(Tensor, Tensor)>>,
    /// Largest minus smallest data value.
    value_range: f64,
    item_shape: Vec<i64>,
    precision: Arithmetic,
    /// Noise-prediction error above which a row is refined in f64 (see [`EPS_TOL`]).
    eps_tol: f64,
    /// Rows processed per block (bounds the `[rows, N]` logit matrix).
    block_rows: i64,
}

impl OptimalDenoiser {
    /// `data`: `[N, ...]` images (any float kind). They are stored as f32 on `device`.
    pub fn new(data: &Tensor, device: Device) -> Result<Self> {
        let size = data.size();
        ensure!(size.len() >= 2, "dataset tensor must be [N, ...], got shape {size:?}");
        let n = size[0];
        ensure!(n > 0, "the dataset is empty");
        let d: i64 = size[1..].iter().product();
        ensure!(d > 0, "dataset items are empty");
        // Statistics in f64 over row chunks of the stored f32 points (no full-size f64 copy: at
        // 60,000 x 784 that was 376 MB per temporary, and their page faults dominated start-up).
        let data32 = data.reshape([n, d]).to_kind(Kind::Float).to_device(device).contiguous();
        // min / max propagate NaN, and are infinite if any value is.
        let (lo, hi) = (data32.min().double_value(&[]), data32.max().double_value(&[]));
        ensure!(lo.is_finite() && hi.is_finite(), "the dataset contains NaN or infinite values");
        let chunk = ((4 << 20) / d).max(1);
        let mut sq_parts = Vec::new();
        let mut sum = Tensor::zeros([d], (Kind::Double, device));
        let mut s = 0;
        while s < n {
            let c = data32.narrow(0, s, chunk.min(n - s)).to_kind(Kind::Double);
            sq_parts.push(c.square().sum_dim_intlist(1, false, Kind::Double));
            sum += c.sum_dim_intlist(0, false, Kind::Double);
            s += chunk;
        }
        // Squared norms of the stored (f32) points, so that logits are consistent with `data32`.
        let sq_norms = Tensor::cat(&sq_parts, 0);
        let max_norm = sq_norms.max().double_value(&[]).sqrt();
        Ok(OptimalDenoiser {
            data_aug_t: Tensor::cat(&[data32.tr(), sq_norms.to_kind(Kind::Float).unsqueeze(0)], 0).contiguous(),
            data: data32,
            mean: sum / n as f64,
            max_norm,
            max_abs: lo.abs().max(hi.abs()),
            data64: OnceCell::new(),
            scratch: RefCell::new(None),
            value_range: hi - lo,
            item_shape: size[1..].to_vec(),
            precision: Arithmetic::Mixed,
            eps_tol: EPS_TOL,
            block_rows: block_rows(n),
        })
    }

    pub fn with_arithmetic(mut self, p: Arithmetic) -> Self {
        self.precision = p;
        self
    }

    /// Queries per block of the f32 pass (default: a `[rows, N]` work matrix of ~256 MiB); a
    /// smaller value bounds the memory, and tests use it to cross block boundaries.
    pub fn with_block_rows(mut self, rows: i64) -> Self {
        self.block_rows = rows.max(1);
        *self.scratch.borrow_mut() = None;
        self
    }

    /// Largest minus smallest data value (bounds how far weight errors can move the mean).
    pub fn value_range(&self) -> f64 {
        self.value_range
    }

    /// Bytes this denoiser keeps for `n` items of `d` values (two f32 copies plus norms).
    pub fn memory_estimate(n: i64, d: i64) -> u64 {
        // f32 points, their [D + 1, N] copy, and the f64 copy an f64 pass makes; the f32 pass's
        // two [rows, N] work matrices.
        (n as u64) * (d as u64) * 16 + (n as u64) * 12 + 8 * (block_rows(n) as u64) * (n as u64)
    }

    /// Refuse a dataset of `n` images of `d` values whose optimal denoiser would not fit in the
    /// available memory (80 % of MemAvailable, with 64 MiB of slack).
    pub fn ensure_fits_memory(n: i64, d: i64) -> Result<()> {
        let need = Self::memory_estimate(n, d) + 64 * 1024 * 1024;
        if let Some(avail) = crate::runtime::available_memory() {
            anyhow::ensure!(
                need <= avail * 8 / 10,
                "the dataset needs about {:.1} GiB for the optimal denoiser but only {:.1} GiB are available; use --data-limit",
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            );
        }
        Ok(())
    }

    pub fn len(&self) -> i64 {
        self.data.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flattened item size D.
    pub fn dim(&self) -> i64 {
        self.data.size()[1]
    }

    pub fn item_shape(&self) -> &[i64] {
        &self.item_shape
    }

    /// The dataset mean ybar, `[D]` f64 (the posterior mean as sigma -> infinity).
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// The stored `[N, D]` f32 data.
    pub fn data(&self) -> &Tensor {
        &self.data
    }

    /// Posterior mean for flattened queries `x` `[B, D]` (f32 or f64) and `sigma` `[B]` (any
    /// float kind). Returns `[B, D]` in f64.
    pub fn posterior_mean(&self, x: &Tensor, sigma: &Tensor) -> Result<Tensor> {
        // x0 exact to eps_tol sigma, i.e. the implied noise prediction to eps_tol.
        let eps_tol = self.eps_tol;
        self.posterior_mean_refined(x, sigma, &mut |_start, sig, bound| {
            sig.iter().zip(bound).map(|(s, b)| (*b > eps_tol * s).then_some(eps_tol * s)).collect()
        })
    }

    /// Bound on any value of a mean computed by the f32 pass. With every logit off by at most
    /// `logit_err`, every weight is off by a factor within e^(+-2 logit_err) (the logit and the
    /// normaliser), and m* - m = sum_i (w*_i - w_i)(y_i - y_top), so per value
    /// |m* - m| <= range sum_{i != top} |w*_i - w_i|, which is at most
    /// - (e^(2 logit_err) - 1) range (spread weights), and at most
    /// - 2 (N - 1) e^(2 logit_err - gap) range, where `gap` is the f32 logit gap between the top two
    ///   points (concentrated weights: at small sigma the f32 mean is the nearest point, exactly);
    ///
    /// plus the f32 rounding of the weighted-mean GEMM, 2 eps32 sqrt(`nonzero`) x the largest
    /// |value| for the `nonzero` weights above e^-80 of the largest, plus what the weights below
    /// that can move: N e^-80 x range.
    pub fn mean_error_bound(&self, logit_err: f64, gap: f64, nonzero: f64) -> f64 {
        let n = self.len() as f64;
        let spread = (2.0 * logit_err).exp_m1();
        let concentrated = 2.0 * (n - 1.0).max(0.0) * (2.0 * logit_err - gap).exp();
        let tail = n * (-TAIL_LOGIT).exp();
        (spread.min(concentrated) + tail) * self.value_range
            + 2.0 * f32::EPSILON as f64 * nonzero.max(1.0).sqrt() * self.max_abs
    }

    /// Posterior means computed in f32 wherever the caller accepts them: after the f32 pass over
    /// a block of queries' logits, `refine(start, sigma, bound)` receives the block's first query
    /// index, its sigmas and each row's bound on the error of any value of its f32 mean
    /// ([`Self::mean_error_bound`]), and returns, per row, `None` to keep
    /// the f32 mean or `Some(tol)` to have it recomputed in f64 to within `tol` (over the
    /// candidates that matter, see the module docs). [`Arithmetic::F64`] computes every row in f64
    /// and never asks.
    pub fn posterior_mean_refined(&self, x: &Tensor, sigma: &Tensor, refine: &mut Refine) -> Result<Tensor> {
        let size = x.size();
        ensure!(
            size.len() == 2 && size[1] == self.dim(),
            "query shape {size:?} does not match items of size {}",
            self.dim()
        );
        let b = size[0];
        ensure!(sigma.size() == [b], "sigma must be [B] = [{b}], got {:?}", sigma.size());
        let sig: Vec<f64> = Vec::<f64>::try_from(sigma.to_kind(Kind::Double).to_device(Device::Cpu))?;
        if let Some(s) = sig.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
            bail!("sigma must be positive and finite, got {s}");
        }
        let device = self.data.device();
        let x64 = x.to_kind(Kind::Double).to_device(device);
        let mut out = Vec::new();
        // Rows (of the whole query) to recompute over the whole set, batched at the end: a
        // whole-set f64 pass packs all N points for every GEMM call, which costs as much as the
        // arithmetic for the few such rows of one block.
        let mut full = Vec::new();
        let mut start = 0;
        while start < b {
            let len = self.block_rows.min(b - start);
            let xb = x64.narrow(0, start, len);
            let sb = &sig[start as usize..(start + len) as usize];
            out.push(match self.precision {
                Arithmetic::F64 => self.block_f64(&xb, sb),
                Arithmetic::Mixed => {
                    let (m, rows) = self.block_mixed(&xb, sb, start as usize, refine);
                    full.extend(rows.iter().map(|r| r + start));
                    m
                }
            });
            start += len;
        }
        let mut m = Tensor::cat(&out, 0);
        for rows in full.chunks(F64_ROWS) {
            let idx = Tensor::from_slice(rows).to_device(device);
            let ss: Vec<f64> = rows.iter().map(|&r| sig[r as usize]).collect();
            let exact = self.block_f64(&x64.index_select(0, &idx), &ss);
            let _ = m.index_copy_(0, &idx, &exact);
        }
        Ok(m)
    }

    /// Exact f64 posterior means for a block, streaming over the (cached f64) dataset in chunks
    /// with an online (running-max) softmax, so the `[rows, chunk]` logits stay small.
    fn block_f64(&self, x: &Tensor, sig: &[f64]) -> Tensor {
        let n = self.len();
        let device = x.device();
        let inv2s2 = Tensor::from_slice(&sig.iter().map(|s| 0.5 / (s * s)).collect::<Vec<_>>()).to_device(device);
        let rows = x.size()[0];
        let mut run_max = Tensor::full([rows], f64::NEG_INFINITY, (Kind::Double, device));
        let mut run_sum = Tensor::zeros([rows], (Kind::Double, device));
        let mut acc = Tensor::zeros([rows, self.dim()], (Kind::Double, device));
        let (data64, sq64) = self.data64.get_or_init(|| {
            let d = self.data.to_kind(Kind::Double);
            let sq = d.square().sum_dim_intlist(1, false, Kind::Double);
            (d, sq)
        });
        let chunk = ((8 << 20) / self.dim().max(1)).clamp(256, 65536);
        let xsq = x.square().sum_dim_intlist(1, true, Kind::Double);
        let mut s = 0;
        while s < n {
            let len = chunk.min(n - s);
            let y = data64.narrow(0, s, len);
            let ysq = sq64.narrow(0, s, len);
            // -||x - y||^2 / (2 s^2), with the ||x||^2 kept so values are true distances.
            let d = (&xsq - x.matmul(&y.tr()) * 2.0 + ysq.unsqueeze(0)).clamp_min(0.0);
            let logits = -d * inv2s2.unsqueeze(1);
            let cmax = logits.amax([1].as_slice(), false);
            let new_max = run_max.maximum(&cmax);
            let scale_old = (&run_max - &new_max).exp();
            let w = (logits - new_max.unsqueeze(1)).exp();
            run_sum = &run_sum * &scale_old + w.sum_dim_intlist(1, false, Kind::Double);
            acc = &acc * scale_old.unsqueeze(1) + w.matmul(&y);
            run_max = new_max;
            s += len;
        }
        acc / run_sum.unsqueeze(1)
    }

    /// The f32 pass over a block and the refinement of its rows with few candidates; returns the
    /// means and the rows (of the block) still to be recomputed over the whole set.
    fn block_mixed(&self, x64: &Tensor, sig: &[f64], start: usize, refine: &mut Refine) -> (Tensor, Vec<i64>) {
        let device = x64.device();
        let rows = x64.size()[0];
        let n = self.len();
        let inv2s2: Vec<f64> = sig.iter().map(|s| 0.5 / (s * s)).collect();
        let c = Tensor::from_slice(&inv2s2).to_device(device).unsqueeze(1);
        // logits = c (2 x.y - ||y||^2), c = 1 / (2 s^2): one GEMM of [2 c x, -c] against the
        // contiguous [D + 1, N] copy, so no elementwise pass over the [rows, N] block is needed.
        let x_aug = Tensor::cat(&[x64 * (&c * 2.0), -&c], 1).to_kind(Kind::Float);
        let mut scratch = self.scratch.borrow_mut();
        let (lbuf, wbuf) = scratch.get_or_insert_with(|| {
            let buf = || Tensor::empty([self.block_rows, n], (Kind::Float, device));
            (buf(), buf())
        });
        let logits = lbuf.narrow(0, 0, rows);
        let _ = x_aug.matmul_out(&logits, &self.data_aug_t);
        let (top, top_idx) = logits.topk(2.min(n), 1, true, true);
        let lmax = top.narrow(1, 0, 1);
        let gap =
            if n >= 2 { vec_f64(&(top.select(1, 0) - top.select(1, 1))) } else { vec![f64::INFINITY; rows as usize] };
        // The weights go to the second buffer: the logits are still needed to pick candidates.
        let mut w = wbuf.narrow(0, 0, rows);
        // Logits more than 87 below the maximum are raised to -87 first: e^-87 = 1.6e-38 is still a
        // normal f32, so no exponential underflows (MKL's exp takes a ~10x slower path for each
        // one that does, which cost ~5 % of the pass). Such a weight is < 1.6e-38 of the largest,
        // so the raise moves the mean by less than N 1.6e-38 x range, part of the bound's tail term.
        let _ = logits.sub_out(&w, &lmax);
        let _ = w.clamp_min_(-EXP_FLOOR);
        let _ = w.exp_();
        // Weights that matter to the f32 rounding of the weighted mean: those above e^-80.
        let nonzero = vec_f64(&w.gt((-TAIL_LOGIT).exp()).sum_dim_intlist(1, false, Kind::Float));
        // Bound on each row's logit error: f32 rounding of the dot products, whose error grows like
        // eps32 sqrt(D) |x| |y| (random-walk accumulation), taken 2x, plus that of ||y||^2; times c.
        // Measured on 64 x 20000 distances of [0,1]-scale 784-pixel data: the largest actual error
        // was 17x below eps32 sqrt(D) (2|x||y| + |y|^2), so the bound has a ~35x margin.
        let xnorm = vec_f64(&x64.square().sum_dim_intlist(1, false, Kind::Double).sqrt());
        let eps32 = f32::EPSILON as f64;
        let sqrt_d = (self.dim() as f64 + 1.0).sqrt();
        let err: Vec<f64> = (0..rows as usize)
            .map(|r| {
                2.0 * eps32 * sqrt_d * (2.0 * xnorm[r] * self.max_norm + self.max_norm * self.max_norm) * inv2s2[r]
            })
            .collect();
        let bound: Vec<f64> = (0..rows as usize).map(|r| self.mean_error_bound(err[r], gap[r], nonzero[r])).collect();
        let need = refine(start, sig, &bound);
        // The f32 weighted mean, only for the rows that keep it and have more than one weight
        // above e^-80: a row with one is its nearest point (the rest weigh < N e^-80 together,
        // in the bound), and a refined row is recomputed anyway.
        let (mut onehot, mut dense) = (Vec::new(), Vec::new());
        for r in 0..rows as usize {
            match (need[r].is_some(), nonzero[r] <= 1.0) {
                (true, _) => {}
                (false, true) => onehot.push(r as i64),
                (false, false) => dense.push(r as i64),
            }
        }
        let m = Tensor::zeros([rows, self.dim()], (Kind::Double, device));
        if !dense.is_empty() {
            let idx = Tensor::from_slice(&dense).to_device(device);
            // The weights of those rows (a copy only if some rows are left out).
            let wd = if dense.len() == rows as usize { w.shallow_clone() } else { w.index_select(0, &idx) };
            let md = (wd.mm(&self.data) / wd.sum_dim_intlist(1, true, Kind::Float)).to_kind(Kind::Double);
            let _ = m.shallow_clone().index_copy_(0, &idx, &md);
        }
        if !onehot.is_empty() {
            let idx = Tensor::from_slice(&onehot).to_device(device);
            let nearest = top_idx.select(1, 0).index_select(0, &idx);
            let _ = m.shallow_clone().index_copy_(0, &idx, &self.data.index_select(0, &nearest).to_kind(Kind::Double));
        }
        let lmax_cpu = vec_f64(&lmax.squeeze_dim(1));
        // Dropping points whose weight is below e^-cutoff of the largest moves the mean by less
        // than (N - 1) e^-cutoff x range: the cutoff that keeps that below the row's tolerance.
        let spread = (n - 1).max(1) as f64 * self.value_range.max(f64::MIN_POSITIVE);
        let mut full_rows = Vec::new();
        for (r, tol) in need.iter().enumerate() {
            let Some(tol) = *tol else { continue };
            let cutoff = (spread / tol.max(f64::MIN_POSITIVE)).ln().clamp(0.0, CUTOFF);
            let thr = lmax_cpu[r] - cutoff - 2.0 * err[r];
            let idx = logits.get(r as i64).ge(thr).nonzero().squeeze_dim(1);
            if idx.size()[0] > MAX_CANDIDATES {
                full_rows.push(r as i64);
                continue;
            }
            let xr = x64.get(r as i64);
            let y = self.data.index_select(0, &idx).to_kind(Kind::Double);
            let d = (&y - xr.unsqueeze(0)).square().sum_dim_intlist(1, false, Kind::Double);
            let l = -d * inv2s2[r];
            let wr = (&l - l.max()).exp();
            let refined = (wr.unsqueeze(0).matmul(&y) / wr.sum(Kind::Double)).squeeze_dim(0);
            m.get(r as i64).copy_(&refined);
        }
        (m, full_rows)
    }
}

/// Logits further than this below their row's maximum are raised to it before exponentiating
/// (e^-87 is a normal f32: no underflow).
const EXP_FLOOR: f64 = 87.0;
/// Weights below e^-TAIL_LOGIT of the largest count as zero for the rounding term of the bound and
/// the one-point shortcut; together they weigh less than N e^-80 (< 1e-30 for N < 10^5).
const TAIL_LOGIT: f64 = 80.0;

/// Queries per batched whole-set f64 pass (its `[rows, chunk]` f64 logits stay around 40 MB).
const F64_ROWS: usize = 512;

/// Queries per block for a set of `n` points: keeps each `[rows, N]` f32 work matrix around
/// 256 MiB. MKL packs the whole `[D + 1, N]` set for every GEMM call, so larger blocks amortise
/// that (Fashion-MNIST, K = 5000: the f32 pass 6.7 s in blocks of 279 queries, 6.1 s in 1,118).
fn block_rows(n: i64) -> i64 {
    ((64 << 20) / n.max(1)).clamp(1, 4096)
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous()).expect("1-D f64 tensor")
}

impl Denoiser for OptimalDenoiser {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Result<Tensor> {
        let size = x.size();
        ensure!(
            size.len() >= 2 && size[1..] == self.item_shape[..],
            "sample shape {:?} does not match the dataset's item shape {:?}",
            &size[1..],
            self.item_shape
        );
        let b = size[0];
        let m = self.posterior_mean(&x.reshape([b, -1]), sigma)?;
        Ok(m.reshape(size.as_slice()).to_kind(x.kind()).to_device(x.device()))
    }
}

/// Mean and max over samples of the RMS per-pixel distance to the nearest training image.
pub fn nearest_distance(x: &Tensor, train: &Tensor) -> (f64, f64) {
    let n = x.size()[0];
    let xs = x.reshape([n, -1]).to_kind(Kind::Double);
    let ys = train.reshape([train.size()[0], -1]).to_kind(Kind::Double);
    let d2 = (xs.square().sum_dim_intlist(1, true, Kind::Double) - xs.matmul(&ys.tr()) * 2.0
        + ys.square().sum_dim_intlist(1, false, Kind::Double).unsqueeze(0))
    .clamp_min(0.0);
    let dim = xs.size()[1] as f64;
    let best = (d2.amin([1].as_slice(), false) / dim).sqrt();
    (best.mean(Kind::Double).double_value(&[]), best.max().double_value(&[]))
}

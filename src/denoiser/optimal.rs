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
//! whole set, bounds each row's logit error, and for rows where that bound could move the
//! implied noise prediction eps = (x~ - m)/sigma by more than [`EPS_TOL`] recomputes the softmax
//! in f64 from exact differences over the candidate rows whose
//! f32 logit is within [`CUTOFF`] + 2 x bound of the maximum (the rest weigh less than
//! e^-CUTOFF relative to the largest weight and are dropped). If there are more than
//! [`MAX_CANDIDATES`] candidates the row is redone in f64 over the whole set. [`Arithmetic::F64`]
//! does everything in f64 (the reference the mixed mode is tested against).
use super::Denoiser;
use anyhow::{bail, ensure, Result};
use tch::{Device, Kind, Tensor};

/// Accuracy target of the mixed mode, in noise-prediction units: a logit error of delta moves the
/// mean m by at most delta x (data range), hence eps = (x~ - m)/sigma by delta x range / sigma; a
/// row keeps its f32 weights when that bound is below `EPS_TOL` (i.e. x0 is exact to
/// `EPS_TOL * sigma`), else it is refined in f64. At high noise the f32 pass suffices; towards
/// sigma -> 0 every row is refined (over few candidates, so cheaply).
pub const EPS_TOL: f64 = 1e-5;
/// Candidates whose logit is more than this below the row maximum are dropped in the f64
/// refinement: their weight is < e^-40 = 4.2e-18 of the largest, so even 10^6 of them change the
/// posterior mean by less than f64 rounding of values of order 1.
pub const CUTOFF: f64 = 40.0;
/// Above this many candidates a row is recomputed in f64 over the whole set instead.
pub const MAX_CANDIDATES: i64 = 4096;

/// The caller's say on which rows of a block need the exact mean: `(first query index, sigmas,
/// f32-pass means [rows, D] in f64, per-row error bounds) -> refine?` (see
/// [`OptimalDenoiser::posterior_mean_refined`]).
pub type Refine<'a> = dyn FnMut(usize, &[f64], &Tensor, &[f64]) -> Vec<bool> + 'a;

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
    data64: std::cell::OnceCell<(Tensor, Tensor)>,
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
        let flat = data.reshape([n, d]).to_kind(Kind::Double);
        let finite = flat.isfinite().all().int64_value(&[]) == 1;
        ensure!(finite, "the dataset contains NaN or infinite values");
        let sq = flat.square().sum_dim_intlist(1, false, Kind::Double);
        let max_norm = sq.max().double_value(&[]).sqrt();
        let mean = flat.mean_dim(0, false, Kind::Double).to_device(device);
        let data32 = flat.to_kind(Kind::Float).to_device(device);
        // Squared norms of the f32-rounded points, so that logits are consistent with `data32`.
        let sq_norms = data32.to_kind(Kind::Double).square().sum_dim_intlist(1, false, Kind::Double);
        // Keep the [rows, N] f32 logit block around 64 MiB.
        let block_rows = ((16 << 20) / n.max(1)).clamp(1, 4096);
        Ok(OptimalDenoiser {
            data_aug_t: Tensor::cat(&[data32.tr(), sq_norms.to_kind(Kind::Float).unsqueeze(0)], 0).contiguous(),
            data: data32,
            mean,
            max_norm,
            max_abs: flat.abs().max().double_value(&[]),
            data64: std::cell::OnceCell::new(),
            value_range: flat.max().double_value(&[]) - flat.min().double_value(&[]),
            item_shape: size[1..].to_vec(),
            precision: Arithmetic::Mixed,
            eps_tol: EPS_TOL,
            block_rows,
        })
    }

    pub fn with_arithmetic(mut self, p: Arithmetic) -> Self {
        self.precision = p;
        self
    }

    /// Largest minus smallest data value (bounds how far weight errors can move the mean).
    pub fn value_range(&self) -> f64 {
        self.value_range
    }

    /// Bytes this denoiser keeps for `n` items of `d` values (two f32 copies plus norms).
    pub fn memory_estimate(n: i64, d: i64) -> u64 {
        // f32 points, their [D + 1, N] copy, and the f64 copy an f64 pass makes.
        (n as u64) * (d as u64) * 16 + (n as u64) * 12
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
        self.posterior_mean_tol(x, sigma, None)
    }

    /// [`Self::posterior_mean`] with a per-row logit tolerance (natural-log units) replacing the
    /// denoiser's own: rows whose f32 logit error bound exceeds it are recomputed in f64.
    /// A logit error of at most delta on every weight moves the mean by at most
    /// [`Self::mean_error_bound`]`(delta)`.
    pub fn posterior_mean_tol(&self, x: &Tensor, sigma: &Tensor, tol: Option<&[f64]>) -> Result<Tensor> {
        let b = x.size().first().copied().unwrap_or(0) as usize;
        if let Some(t) = tol {
            ensure!(t.len() == b, "{} tolerances for {b} queries", t.len());
        }
        let range = self.value_range.max(1e-12);
        let eps_tol = self.eps_tol;
        // A logit tolerance delta allows a mean error of (e^(2 delta) - 1) x range.
        self.posterior_mean_refined(x, sigma, &mut |start, sig, _m, bound| {
            (0..bound.len())
                .map(|r| bound[r] > tol.map_or(eps_tol * sig[r], |t| (2.0 * t[start + r]).exp_m1() * range))
                .collect()
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
    /// |value| for `nonzero` weights that did not underflow.
    pub fn mean_error_bound(&self, logit_err: f64, gap: f64, nonzero: f64) -> f64 {
        let n = self.len() as f64;
        let spread = (2.0 * logit_err).exp_m1();
        let concentrated = 2.0 * (n - 1.0).max(0.0) * (2.0 * logit_err - gap).exp();
        spread.min(concentrated) * self.value_range + 2.0 * f32::EPSILON as f64 * nonzero.max(1.0).sqrt() * self.max_abs
    }

    /// Posterior means computed in f32 wherever the caller accepts them: after the f32 pass over
    /// a block of queries, `refine(start, sigma, m, bound)` receives the block's first query
    /// index, its sigmas, its f32-pass means `[rows, D]` (f64) and each row's bound on the error
    /// of any value of its mean ([`Self::mean_error_bound`]), and returns which rows must be recomputed exactly (f64 over the candidates that matter, see
    /// the module docs). [`Arithmetic::F64`] computes every row in f64 and never asks.
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
        let mut start = 0;
        while start < b {
            let len = self.block_rows.min(b - start);
            let xb = x64.narrow(0, start, len);
            let sb = &sig[start as usize..(start + len) as usize];
            out.push(match self.precision {
                Arithmetic::F64 => self.block_f64(&xb, sb),
                Arithmetic::Mixed => self.block_mixed(&xb, sb, start as usize, refine),
            });
            start += len;
        }
        Ok(Tensor::cat(&out, 0))
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

    fn block_mixed(&self, x64: &Tensor, sig: &[f64], start: usize, refine: &mut Refine) -> Tensor {
        let device = x64.device();
        let rows = x64.size()[0];
        let inv2s2: Vec<f64> = sig.iter().map(|s| 0.5 / (s * s)).collect();
        let c = Tensor::from_slice(&inv2s2).to_device(device).unsqueeze(1);
        // logits = c (2 x.y - ||y||^2), c = 1 / (2 s^2): one GEMM of [2 c x, -c] against the
        // contiguous [D + 1, N] copy, so no elementwise pass over the [rows, N] block is needed.
        let x_aug = Tensor::cat(&[x64 * (&c * 2.0), -&c], 1).to_kind(Kind::Float);
        let logits = x_aug.matmul(&self.data_aug_t);
        let (top, _) = logits.topk(2.min(self.len()), 1, true, true);
        let lmax = top.narrow(1, 0, 1);
        let gap = if self.len() >= 2 {
            vec_f64(&(top.select(1, 0) - top.select(1, 1)))
        } else {
            vec![f64::INFINITY; rows as usize]
        };
        let mut w = &logits - &lmax;
        let _ = w.exp_();
        let wsum = w.sum_dim_intlist(1, true, Kind::Float);
        let nonzero = vec_f64(&w.gt(0.0).sum_dim_intlist(1, false, Kind::Float));
        let mut m = (w.matmul(&self.data) / wsum).to_kind(Kind::Double);
        drop(w);
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
        let need = refine(start, sig, &m, &bound);
        let lmax_cpu = vec_f64(&lmax.squeeze_dim(1));
        let mut full_rows = Vec::new();
        for r in 0..rows as usize {
            if !need[r] {
                continue;
            }
            let thr = lmax_cpu[r] - CUTOFF - 2.0 * err[r];
            let row = logits.get(r as i64);
            let idx = row.ge(thr).nonzero().squeeze_dim(1);
            let k = idx.size()[0];
            if k > MAX_CANDIDATES {
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
        if !full_rows.is_empty() {
            // Rows with many candidates: one batched f64 pass over the whole set.
            let idx = Tensor::from_slice(&full_rows).to_device(device);
            let xs = x64.index_select(0, &idx);
            let ss: Vec<f64> = full_rows.iter().map(|&r| sig[r as usize]).collect();
            let exact = self.block_f64(&xs, &ss);
            let _ = m.index_copy_(0, &idx, &exact);
        }
        m
    }
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

//! Go et al.'s gradient-similarity clustering, the paper's Table 4 baseline "gradient"
//! (docs/METHOD.md §3.6, docs/EDM.md §4), as the multi-stage authors ran it
//! (`gradient_cluster.py`):
//!
//! 1. a grid of G timesteps t_i = (i+1)/G (G = 100) in VP time, applied as sigma (docs/METHOD.md §1.5);
//! 2. for every checkpoint of a trained run and every t_i: the run's own training loss on one
//!    fixed batch of images, every sample at sigma(t_i) with fresh noise, in training mode
//!    (dropout on, seeded), differentiated with respect to **all** parameters (a parameter the
//!    loss does not reach, such as another stage's decoder, contributes zeros);
//! 3. the G x G cosine similarities of those gradients, averaged over the checkpoints;
//! 4. the interval programme of [`super::timestep::interval_dp`] with the cost of an interval =
//!    minus the sum of its points' similarity to its centre (so it maximises within-interval
//!    similarity).
//!
//! The paper lists 0.36 / 0.66 for CIFAR-10 (its NCSN++ model); the cuts depend on the trained
//! model, so that number is not a test of this code. The programme and the similarity are tested
//! on hand-computed cases (tests/edm.rs).
use super::timestep::{centre, interval_dp};
use crate::data::Dataset;
use crate::model::Loaded;
use crate::objective::Draws;
use crate::process::ProcessConfig;
use crate::rng::Rng;
use anyhow::{ensure, Context, Result};
use tch::{Device, Kind, Tensor};

const GRADIENT_STREAM: u64 = 0x6AAD_0000_0000_0007;

/// Cut a grid of `sim.len()` timesteps by within-interval similarity: the first grid index of
/// intervals 2..=K.
pub fn similarity_cuts(sim: &[Vec<f64>], stages: usize) -> Result<Vec<usize>> {
    let n = sim.len();
    ensure!(sim.iter().all(|r| r.len() == n), "the similarity matrix must be square");
    interval_dp(n, stages, |a, b| {
        let c = centre(a, b);
        -(a..b).map(|i| sim[c][i]).sum::<f64>()
    })
}

/// Cosine similarities of the rows of `g` (`[G, P]`), accumulated in f64 over column chunks.
pub fn cosine_similarity(g: &Tensor) -> Vec<Vec<f64>> {
    let (rows, p) = (g.size()[0], g.size()[1]);
    let mut gram = Tensor::zeros([rows, rows], (Kind::Double, Device::Cpu));
    let chunk = 1 << 20;
    let mut start = 0;
    while start < p {
        let len = chunk.min(p - start);
        let x = g.narrow(1, start, len).to_kind(Kind::Double).to_device(Device::Cpu);
        gram += x.mm(&x.transpose(0, 1));
        start += len;
    }
    let norm = gram.diagonal(0, 0, 1).sqrt().clamp_min(1e-300);
    let cos = &gram / (norm.unsqueeze(1) * norm.unsqueeze(0));
    let flat = Vec::<f64>::try_from(cos.flatten(0, -1)).unwrap_or_default();
    flat.chunks(rows as usize).map(|r| r.to_vec()).collect()
}

/// Checks that `checkpoints` share one architecture and that it takes `data`'s images: one-line
/// errors naming the checkpoint, before any gradient is computed.
pub fn check_checkpoints(checkpoints: &[std::path::PathBuf], data: &Dataset) -> Result<()> {
    ensure!(!checkpoints.is_empty(), "--method gradient needs at least one checkpoint");
    let first = crate::train::checkpoint::load_state(&checkpoints[0])?.config.model;
    for path in checkpoints {
        let model = crate::train::checkpoint::load_state(path)?.config.model;
        ensure!(
            model == first,
            "checkpoint {} has another architecture than {}: gradients of different networks cannot be compared",
            path.display(),
            checkpoints[0].display()
        );
    }
    let [c, h, w] = data.image_shape();
    ensure!(
        (c as usize, h as usize, w as usize) == (first.in_channels, first.resolution, first.resolution),
        "the checkpoints are networks for {}x{}x{} images but the data are {c}x{h}x{w}",
        first.in_channels,
        first.resolution,
        first.resolution
    );
    Ok(())
}

/// The G x G gradient similarity of a trained run, averaged over `checkpoints` (all of one
/// architecture), on `batch` images of `data` (drawn with `seed`), at grid t_i = (i+1)/G.
/// `progress` gets the (checkpoint, timestep) evaluations done.
pub fn gradient_similarity(
    checkpoints: &[std::path::PathBuf],
    data: &Dataset,
    grid: usize,
    batch: usize,
    seed: u64,
    device: Device,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<f64>>> {
    ensure!(!checkpoints.is_empty(), "--method gradient needs at least one checkpoint");
    ensure!(grid >= 2, "the gradient grid needs at least 2 timesteps");
    ensure!(
        batch > 0 && batch <= data.len(),
        "--batch must be in 1..={} (the dataset's size), got {batch}",
        data.len()
    );
    let vp = ProcessConfig::default().build()?;
    check_checkpoints(checkpoints, data)?;
    let [c, h, w] = data.image_shape();
    let mut total: Option<Vec<Vec<f64>>> = None;
    let mut done = 0;
    for path in checkpoints {
        let l = Loaded::from_checkpoint(path, device, false).with_context(|| format!("loading {}", path.display()))?;
        let objective = l.config.build_objective()?;
        let params = l.network.params();
        let numel: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
        ensure!(
            (grid as f64) * (numel as f64) * 4.0 <= 16.0 * (1u64 << 30) as f64,
            "{grid} gradients of {numel} parameters need {:.1} GiB; lower --grid",
            grid as f64 * numel as f64 * 4.0 / (1u64 << 30) as f64
        );
        // One fixed batch (the same for every timestep and checkpoint).
        let mut rng = Rng::stream(seed ^ GRADIENT_STREAM, 0);
        let mut perm: Vec<i64> = (0..data.len() as i64).collect();
        for k in 0..batch {
            let j = k + rng.below((perm.len() - k) as u64) as usize;
            perm.swap(k, j);
        }
        let idx = &perm[..batch];
        let x0 = data.images.index_select(0, &Tensor::from_slice(idx)).to_kind(Kind::Float).to_device(device);
        let mut rows = Vec::with_capacity(grid);
        for i in 0..grid {
            let t = (i + 1) as f64 / grid as f64;
            let sigma = vp.sigma(t);
            let stage = crate::cluster::stage_of_sigma(sigma, &objective.boundaries_sigma) as i64;
            let draws = Draws {
                stage: vec![stage; batch],
                t: vec![objective.process.t_from_sigma(sigma); batch],
                sigma: vec![sigma; batch],
            };
            let mut zr = Rng::stream(seed ^ GRADIENT_STREAM, 1 + i as u64);
            let z = zr.randn(&[batch as i64, c, h, w], Kind::Float).to_device(device);
            tch::manual_seed((zr.next_u64() >> 1) as i64);
            let loss = objective.loss(&l.network.net, &x0, &z, &draws, true)?.mean(Kind::Float);
            let grads = crate::train::optim::gradients(&loss, &params)?;
            let flat: Vec<Tensor> = grads
                .iter()
                .zip(&params)
                .map(|(g, (_, p))| {
                    if g.defined() {
                        g.flatten(0, -1).to_device(Device::Cpu)
                    } else {
                        Tensor::zeros([p.numel() as i64], (Kind::Float, Device::Cpu))
                    }
                })
                .collect();
            rows.push(Tensor::cat(&flat, 0));
            done += 1;
            progress(done);
        }
        let sim = cosine_similarity(&Tensor::stack(&rows, 0));
        total = Some(match total {
            None => sim,
            Some(t) => t.iter().zip(&sim).map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y).collect()).collect(),
        });
    }
    let k = checkpoints.len() as f64;
    Ok(total.unwrap_or_default().into_iter().map(|r| r.into_iter().map(|v| v / k).collect()).collect())
}

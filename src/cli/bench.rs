//! `msdiff bench`: measurements recorded in docs/BENCHMARKS.md (not tests: nothing is asserted).
//! Every benchmark prints the machine, the median of several repeats and, where there is one,
//! the reference measured in the same run.
use super::args::Global;
use crate::data::{self, LoadOptions};
use crate::denoiser::OptimalDenoiser;
use crate::model::Network;
use crate::nn::StagedNetwork;
use crate::nn::UNetConfig;
use crate::objective::{Draws, Objective, Prediction};
use crate::process::ProcessConfig;
use crate::rng::Rng;
use crate::runtime::Precision;
use crate::runtime::{machine, peak_rss_mib, time_median};
use crate::train::optim::OptimConfig;
use crate::train::{Batch, TrainState, Update};
use anyhow::{ensure, Result};
use clap::{Args, Subcommand};
use tch::{Device, Kind, Tensor};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: What,
    /// Repeats; the median is reported.
    #[arg(long, global = true, default_value_t = 5)]
    pub repeats: usize,
    /// Network precision of `bench train` and `bench sample`: fp32 or bf16 (bf16 network, fp32 masters
    /// and Adam). `bench optimal` is f32 only.
    #[arg(long, global = true, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Optimal-denoiser posterior means per second vs this CPU's measured f32 GEMM rate.
    Optimal {
        /// Dataset whose exact posterior means are timed (any `--data` spec, e.g. mnist:DIR).
        #[arg(long, default_value = "builtin")]
        data: String,
        /// Queries per timed call.
        #[arg(long, default_value_t = 512)]
        queries: usize,
    },
    /// One training step (forward, backward, Adam) of a network preset: time and peak memory.
    Train {
        /// Network preset (`msdiff info --preset NAME` lists its size), e.g. reference-6.5m, cifar10-multistage.
        #[arg(long, default_value = "reference-6.5m")]
        preset: String,
        /// Images per training step; a multi-stage net spreads them evenly over its stages.
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// Sampling throughput (images/s at a given NFE) of network presets, e.g. multistage vs unified.
    Sample {
        /// Comma-separated presets.
        #[arg(long, default_value = "small-multistage,small-unified")]
        presets: String,
        /// Images sampled together.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Network evaluations per image (no-grad forward passes over t from 1 to 1e-3, each routed to
        /// its stage's decoder).
        #[arg(long, default_value_t = 20)]
        nfe: usize,
    },
}

pub fn run(g: &Global, a: BenchArgs) -> Result<i32> {
    let device = g.device()?;
    let precision = a.precision;
    ensure!(a.repeats >= 1, "--repeats must be at least 1");
    if let What::Train { batch, .. } | What::Sample { batch, .. } = a.what {
        ensure!(batch >= 1, "--batch must be at least 1");
    }
    if let What::Sample { nfe, .. } = a.what {
        ensure!(nfe >= 1, "--nfe must be at least 1");
    }
    if let What::Optimal { queries, .. } = a.what {
        ensure!(queries >= 1, "--queries must be at least 1");
        ensure!(
            precision == Precision::Fp32,
            "bench optimal runs in f32 only; --precision applies to bench train and bench sample"
        );
    }
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    println!("machine: {} ({device:?}, {precision})", machine());
    match a.what {
        What::Optimal { data, queries } => bench_optimal(&data, queries, a.repeats, device),
        What::Train { preset, batch } => bench_train(&preset, batch, a.repeats, device, precision),
        What::Sample { presets, batch, nfe } => bench_sample(&presets, batch, nfe, a.repeats, device, precision),
    }?;
    Ok(0)
}

fn bench_optimal(spec: &str, queries: usize, repeats: usize, device: Device) -> Result<()> {
    let ds = data::load(spec, &LoadOptions::default())?;
    let [n, c, h, w] = ds.shape();
    let d = c * h * w;
    let den = OptimalDenoiser::new(&ds.images, device)?;
    println!("data: {spec}: {n} x {d}");
    // Reference: the GEMM the distance pass performs, [queries, D] x [D, N], f32.
    let a = Tensor::randn([queries as i64, d], (Kind::Float, device));
    let b = Tensor::randn([d, n], (Kind::Float, device));
    let gemm = time_median(repeats, || {
        let _ = a.matmul(&b);
    });
    let gemm_rate = 2.0 * queries as f64 * d as f64 * n as f64 / gemm / 1e9;
    println!("f32 GEMM [{queries}x{d}]x[{d}x{n}]: {gemm:.3} s, {gemm_rate:.1} GFLOP/s (reference)");
    // Posterior means: two GEMMs of 2 B N D flops each.
    let flops = 4.0 * queries as f64 * n as f64 * d as f64;
    let vp = ProcessConfig::default().build()?;
    let mut r = Rng::new(0);
    let idx: Vec<i64> = (0..queries).map(|_| r.below(n as u64) as i64).collect();
    let y =
        ds.images.reshape([n, d]).index_select(0, &Tensor::from_slice(&idx)).to_kind(Kind::Double).to_device(device);
    let z = r.randn(&[queries as i64, d], Kind::Double).to_device(device);
    for (name, sigmas) in [
        ("high noise (sigma = 80, f32 path only)", vec![80.0; queries]),
        (
            "clustering mix (t ~ U[1e-3, 1], VP)",
            (0..queries).map(|_| vp.sigma(r.uniform_range(1e-3, 1.0))).collect::<Vec<_>>(),
        ),
    ] {
        let s = Tensor::from_slice(&sigmas).to_device(device);
        let x = &y + &z * s.unsqueeze(1);
        let secs = time_median(repeats, || {
            let _ = den.posterior_mean(&x, &s).expect("posterior mean");
        });
        let rate = flops / secs / 1e9;
        println!(
            "posterior means, {name}: {:.0}/s, {rate:.1} GFLOP/s = {:.0} % of the GEMM rate",
            queries as f64 / secs,
            100.0 * rate / gemm_rate
        );
    }
    Ok(())
}

fn preset_input(cfg: &UNetConfig, batch: usize, device: Device) -> (Tensor, Tensor, Tensor) {
    let (c, r) = (cfg.in_channels as i64, cfg.resolution as i64);
    let mut rng = Rng::new(1);
    let x = rng.randn(&[batch as i64, c, r, r], Kind::Float).to_device(device);
    let label = Tensor::from_slice(&(0..batch).map(|i| 999.0 * (i as f32 + 0.5) / batch as f32).collect::<Vec<_>>())
        .to_device(device);
    let k = cfg.num_stages() as i64;
    let stage =
        Tensor::from_slice(&(0..batch as i64).map(|i| i * k / batch as i64).collect::<Vec<_>>()).to_device(device);
    (x, label, stage)
}

fn bench_train(preset: &str, batch: usize, repeats: usize, device: Device, precision: Precision) -> Result<()> {
    let cfg = UNetConfig::preset(preset)?;
    // The trainer's own step (TrainState::step): objective loss, backward, Adam on the fp32
    // masters (bf16: the network's copy refreshed), EMA. VP-SDE eps objective; a 3-stage model
    // uses the paper's cuts (t 0.442, 0.631) and the batch's times are spread evenly over (0, 1],
    // so its samples fall in every stage (mixed routing).
    let mut state =
        TrainState::new(&cfg, &OptimConfig { warmup_steps: 0, ..Default::default() }, precision, 0, device)?;
    let vp = ProcessConfig::default().build()?;
    let cuts_t = match cfg.num_stages() {
        1 => vec![],
        3 => vec![0.442, 0.631],
        k => crate::cluster::uniform_cuts(k)?,
    };
    let cuts: Vec<f64> = cuts_t.iter().map(|&t| vp.sigma(t)).collect();
    let objective = Objective::new(vp.clone(), Prediction::Eps, cuts.clone());
    let t: Vec<f64> = (0..batch).map(|i| (i as f64 + 0.5) / batch as f64).collect();
    let sigma: Vec<f64> = t.iter().map(|&t| vp.sigma(t)).collect();
    let stage = sigma.iter().map(|&s| crate::cluster::stage_of_sigma(s, &cuts) as i64).collect();
    let draws = Draws { stage, t, sigma };
    let (x0, _, _) = preset_input(&cfg, batch, device);
    let z = x0.randn_like();
    println!(
        "network: {preset}, {} parameters, batch {batch}, samples spread over {} stage(s)",
        state.model.num_params(),
        cfg.num_stages()
    );
    let mut failed = None;
    let secs = time_median(repeats, || {
        if failed.is_some() {
            return;
        }
        let batch = Batch { x0: &x0, z: &z, draws: &draws, augment: None };
        if let Err(e) = state.step(&objective, &batch, Update { lr: 1e-4, ema_decay: 0.999, dropout_seed: 0 }) {
            failed = Some(e);
        }
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    println!(
        "train step (objective loss + backward + Adam + EMA): median {secs:.3} s over {repeats} ({:.1} images/s)",
        batch as f64 / secs
    );
    if let Some(m) = peak_rss_mib() {
        println!("peak resident memory: {m:.0} MiB");
    }
    Ok(())
}

fn bench_sample(
    presets: &str,
    batch: usize,
    nfe: usize,
    repeats: usize,
    device: Device,
    precision: Precision,
) -> Result<()> {
    for preset in presets.split(',').map(str::trim) {
        let cfg = UNetConfig::preset(preset)?;
        tch::manual_seed(0);
        let mut net = Network::new(&cfg, device)?;
        net.set_precision(precision);
        // One network evaluation per NFE; stages follow the paper's cuts (0.442, 0.631) for
        // 3-stage models, so each evaluation runs the decoder of its noise level.
        let vp = ProcessConfig::default().build()?;
        let grid: Vec<f64> = (0..nfe).map(|i| 1.0 - (1.0 - 1e-3) * i as f64 / (nfe.max(2) - 1) as f64).collect();
        let cuts = match cfg.num_stages() {
            1 => vec![],
            3 => vec![0.442, 0.631],
            k => crate::cluster::uniform_cuts(k)?,
        };
        let (x, _, _) = preset_input(&cfg, batch, device);
        let secs = time_median(repeats, || {
            let _g = tch::no_grad_guard();
            for &t in &grid {
                let st = cuts.iter().take_while(|&&c| t >= c).count() as i64;
                let label = Tensor::full([batch as i64], 999.0 * t, (Kind::Float, device));
                let stage = Tensor::full([batch as i64], st, (Kind::Int64, device));
                let _ = net.net.forward_staged(&x, &label, &stage, false).expect("forward");
            }
            let _ = vp.sigma(0.5);
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        });
        println!(
            "{preset}: {} params, {nfe} NFE x batch {batch}: {secs:.3} s, {:.1} images/s",
            net.num_params(),
            batch as f64 / secs
        );
    }
    Ok(())
}

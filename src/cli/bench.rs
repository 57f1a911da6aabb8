//! `msdiff bench`: measurements recorded in docs/BENCHMARKS.md (not tests: nothing is asserted).
//! Every benchmark prints the machine, the median of several repeats and, where there is one,
//! the reference measured in the same run.
use super::args::Global;
use crate::runtime::Precision;
use crate::data::{self, LoadOptions};
use crate::denoiser::model::StagedNetwork;
use crate::denoiser::OptimalDenoiser;
use crate::nn::UNetConfig;
use crate::process::ProcessConfig;
use crate::rng::Rng;
use crate::train::network::Network;
use crate::train::optim::{gradients, Adam, OptimConfig};
use anyhow::{bail, ensure, Result};
use clap::{Args, Subcommand};
use std::time::Instant;
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
    #[arg(long, global = true, default_value = "fp32")]
    pub precision: String,
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time<F: FnMut()>(repeats: usize, mut f: F) -> f64 {
    f(); // warm-up
    median((0..repeats.max(1)).map(|_| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    }).collect())
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {} libtorch threads", tch::get_num_threads())
}

pub fn run(g: &Global, a: BenchArgs) -> Result<i32> {
    let device = g.device()?;
    let precision: Precision = a.precision.parse()?;
    ensure!(a.repeats >= 1, "--repeats must be at least 1");
    if let What::Train { batch, .. } | What::Sample { batch, .. } = a.what {
        ensure!(batch >= 1, "--batch must be at least 1");
    }
    if let What::Sample { nfe, .. } = a.what {
        ensure!(nfe >= 1, "--nfe must be at least 1");
    }
    if let What::Optimal { queries, .. } = a.what {
        ensure!(queries >= 1, "--queries must be at least 1");
        ensure!(precision == Precision::Fp32, "bench optimal runs in f32 only; --precision applies to bench train and bench sample");
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
    let gemm = time(repeats, || {
        let _ = a.matmul(&b);
    });
    let gemm_rate = 2.0 * queries as f64 * d as f64 * n as f64 / gemm / 1e9;
    println!("f32 GEMM [{queries}x{d}]x[{d}x{n}]: {gemm:.3} s, {gemm_rate:.1} GFLOP/s (reference)");
    // Posterior means: two GEMMs of 2 B N D flops each.
    let flops = 4.0 * queries as f64 * n as f64 * d as f64;
    let vp = ProcessConfig::default().build()?;
    let mut r = Rng::new(0);
    let idx: Vec<i64> = (0..queries).map(|_| r.below(n as u64) as i64).collect();
    let y = ds.images.reshape([n, d]).index_select(0, &Tensor::from_slice(&idx)).to_kind(Kind::Double).to_device(device);
    let z = r.randn(&[queries as i64, d], Kind::Double).to_device(device);
    for (name, sigmas) in [
        ("high noise (sigma = 80, f32 path only)", vec![80.0; queries]),
        ("clustering mix (t ~ U[1e-3, 1], VP)", (0..queries).map(|_| vp.sigma(r.uniform_range(1e-3, 1.0))).collect::<Vec<_>>()),
    ] {
        let s = Tensor::from_slice(&sigmas).to_device(device);
        let x = &y + &z * s.unsqueeze(1);
        let secs = time(repeats, || {
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
    let label = Tensor::from_slice(&(0..batch).map(|i| 999.0 * (i as f32 + 0.5) / batch as f32).collect::<Vec<_>>()).to_device(device);
    let k = cfg.num_stages() as i64;
    let stage = Tensor::from_slice(&(0..batch as i64).map(|i| i * k / batch as i64).collect::<Vec<_>>()).to_device(device);
    (x, label, stage)
}

fn bench_train(preset: &str, batch: usize, repeats: usize, device: Device, precision: Precision) -> Result<()> {
    let cfg = UNetConfig::preset(preset)?;
    tch::manual_seed(0);
    let mut net = Network::new(&cfg, device)?;
    // As the trainer: in bf16, Adam updates fp32 masters and the network gets a bf16 copy.
    let mixed = precision != Precision::Fp32;
    let masters: Vec<(String, Tensor)> =
        if mixed { net.params().into_iter().map(|(n, p)| (n, p.detach().copy())).collect() } else { net.params() };
    net.set_precision(precision);
    let params = net.params();
    let mut opt = Adam::new(OptimConfig { warmup_steps: 0, ..Default::default() }, &masters);
    let (x, label, stage) = preset_input(&cfg, batch, device);
    let target = x.randn_like();
    println!("network: {preset}, {} parameters, batch {batch}, samples spread over {} stage(s)", net.num_params(), cfg.num_stages());
    let mut failed = None;
    let secs = time(repeats, || {
        let out = match net.net.forward_staged(&x, &label, &stage, true) {
            Ok(o) => o,
            Err(e) => {
                failed = Some(e);
                return;
            }
        };
        let loss = (out - &target).square().mean(Kind::Float);
        let grads = gradients(&loss, &params).expect("gradients");
        let grads: Vec<Tensor> =
            if mixed { grads.iter().map(|g| if g.defined() { g.to_kind(Kind::Float) } else { Tensor::new() }).collect() } else { grads };
        opt.step(&masters, &grads, 1e-4).expect("adam step");
        if mixed {
            crate::train::checkpoint::copy_into(&params, &masters, "bf16 weights").expect("bf16 copy");
        }
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    });
    if let Some(e) = failed {
        bail!(e);
    }
    println!("train step (forward + backward + Adam): median {secs:.3} s over {repeats} ({:.1} images/s)", batch as f64 / secs);
    if let Some(m) = peak_rss_mib() {
        println!("peak resident memory: {m:.0} MiB");
    }
    Ok(())
}

fn bench_sample(presets: &str, batch: usize, nfe: usize, repeats: usize, device: Device, precision: Precision) -> Result<()> {
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
        let secs = time(repeats, || {
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

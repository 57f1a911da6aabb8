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
use crate::train::state::{Lap, Stopwatch};
use crate::train::{Batch, TrainState, Update};
use anyhow::{ensure, Context, Result};
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
    /// One training step (forward, backward, Adam) of network presets: time and peak memory;
    /// several presets are timed interleaved, step by step, with their ratio to the first.
    Train {
        /// Network preset(s), comma-separated (`msdiff info --preset NAME` lists their size), e.g.
        /// reference-6.5m, or small-unified,small-multistage (ratios are against the first).
        #[arg(long, default_value = "reference-6.5m")]
        preset: String,
        /// Images per training step.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// How a multi-stage net's samples fall into stages: `mixed` (times spread evenly over
        /// (0, 1], in shuffled order, so every step routes samples to every decoder, as in training)
        /// or `single` (every sample in stage `--stage`, times spread over its interval).
        #[arg(long, value_enum, default_value_t = Policy::Mixed)]
        policy: Policy,
        /// The stage of `--policy single` (clamped to the net's last stage).
        #[arg(long, default_value_t = 0)]
        stage: usize,
        /// Also time the pieces of the forward + backward (NCSN++ multistage nets): the shared
        /// trunk and each decoder on its samples alone, with their GFLOP/s, and each decoder at the
        /// whole batch. (The step's phases, forward + loss, backward, optimiser and EMA, are always
        /// reported.)
        #[arg(long)]
        breakdown: bool,
        /// What `bench train` reports: `wall` seconds, or `cpu`, this process's CPU seconds (all
        /// threads): the work's cost even when other jobs share the cores (with `--threads 1` it
        /// approximates the wall time of a quiet machine).
        #[arg(long, value_enum, default_value_t = Clock::Wall)]
        clock: Clock,
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
        What::Train { preset, batch, policy, stage, breakdown, clock } => {
            bench_train(&preset, batch, a.repeats, device, precision, policy, stage, breakdown, clock)
        }
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

crate::names::named_enum! {
    /// How `bench train` assigns its samples to stages.
    pub enum Policy ("stage policy") {
        /// Times spread evenly over (0, 1], shuffled: every decoder gets samples.
        Mixed = "mixed",
        /// Every sample in one stage.
        Single = "single",
    }
}

crate::names::named_enum! {
    /// Which clock `bench train` reports.
    pub enum Clock ("clock") {
        /// Wall-clock seconds.
        Wall = "wall",
        /// This process's CPU seconds, all threads.
        Cpu = "cpu",
    }
}

impl Clock {
    fn of(self, lap: Lap) -> f64 {
        match self {
            Clock::Wall => lap.wall,
            Clock::Cpu => lap.cpu,
        }
    }
}

/// One preset's training step as `bench train` times it.
struct TrainBench {
    preset: String,
    cfg: UNetConfig,
    state: TrainState,
    objective: Objective,
    draws: Draws,
    x0: Tensor,
    z: Tensor,
    /// Analytic forward GFLOPs of the batch (each sample: the trunk and its stage's decoder).
    gflop: f64,
    /// Analytic forward GFLOPs per image of the trunk (embedding + encoder) and of each decoder.
    trunk_gflop: f64,
    decoder_gflop: Vec<f64>,
    /// Per timed round: the step, its phases, and (with `--breakdown`) the pieces.
    steps: Vec<Lap>,
    phases: Vec<[Lap; 4]>,
    pieces: Vec<Vec<Lap>>,
}

impl TrainBench {
    fn new(
        preset: &str,
        batch: usize,
        device: Device,
        precision: Precision,
        policy: Policy,
        stage: usize,
    ) -> Result<Self> {
        let cfg = UNetConfig::preset(preset)?;
        // The trainer's own step (TrainState::step): objective loss, backward, Adam on the fp32
        // masters (bf16: the network's copy refreshed), EMA. VP-SDE eps objective; a 3-stage
        // model uses the paper's cuts (t 0.442, 0.631).
        let state =
            TrainState::new(&cfg, &OptimConfig { warmup_steps: 0, ..Default::default() }, precision, 0, device)?;
        let vp = ProcessConfig::default().build()?;
        let k = cfg.num_stages();
        let cuts_t = match k {
            1 => vec![],
            3 => vec![0.442, 0.631],
            k => crate::cluster::uniform_cuts(k)?,
        };
        let cuts: Vec<f64> = cuts_t.iter().map(|&t| vp.sigma(t)).collect();
        let objective = Objective::new(vp.clone(), Prediction::Eps, cuts.clone());
        let mut t: Vec<f64> = match policy {
            Policy::Mixed => (0..batch).map(|i| (i as f64 + 0.5) / batch as f64).collect(),
            Policy::Single => {
                let j = stage.min(k - 1);
                let lo = if j == 0 { 0.0 } else { cuts_t[j - 1] };
                let hi = cuts_t.get(j).copied().unwrap_or(1.0);
                (0..batch).map(|i| lo + (hi - lo) * (i as f64 + 0.5) / batch as f64).collect()
            }
        };
        // Training draws stages per sample: the batch is not sorted by stage.
        let mut rng = Rng::new(7);
        for i in (1..t.len()).rev() {
            t.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let sigma: Vec<f64> = t.iter().map(|&t| vp.sigma(t)).collect();
        let stage: Vec<i64> = sigma.iter().map(|&s| crate::cluster::stage_of_sigma(s, &cuts) as i64).collect();
        let rep = crate::nn::report(&cfg, &cuts_t)?;
        let gflop = stage.iter().map(|&j| rep.stage_gflops[j as usize]).sum();
        let trunk_gflop = rep.stage_gflops[0] - rep.decoder_gflops[0];
        let draws = Draws { stage, t, sigma };
        let (x0, _, _) = preset_input(&cfg, batch, device);
        let z = x0.randn_like();
        let decoder_gflop = rep.decoder_gflops.clone();
        Ok(TrainBench {
            preset: preset.to_string(),
            cfg,
            state,
            objective,
            draws,
            x0,
            z,
            gflop,
            trunk_gflop,
            decoder_gflop,
            steps: vec![],
            phases: vec![],
            pieces: vec![],
        })
    }

    /// Samples per stage.
    fn counts(&self) -> Vec<usize> {
        let mut n = vec![0; self.cfg.num_stages()];
        for &j in &self.draws.stage {
            n[j as usize] += 1;
        }
        n
    }

    /// One training step; recorded unless it is the warm-up.
    fn step(&mut self, record: bool, device: Device) -> Result<()> {
        let batch = Batch { x0: &self.x0, z: &self.z, draws: &self.draws, augment: None };
        let began = Stopwatch::start();
        self.state.step(&self.objective, &batch, Update { lr: 1e-4, ema_decay: 0.999, dropout_seed: 0 })?;
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let lap = began.lap();
        if record {
            let t = self.state.timings;
            self.steps.push(lap);
            self.phases.push([t.forward, t.backward, t.optimizer, t.ema]);
        }
        Ok(())
    }

    /// The pieces of an NCSN++ multistage net's forward + backward, each timed alone: the
    /// trunk on the batch, each decoder on its samples, each decoder on the whole batch, and the
    /// stand-in loss the trunk's timing includes (subtracted). Empty for other nets.
    fn pieces(&mut self, record: bool) -> Result<()> {
        let crate::nn::Net::Ncsnpp(net) = &self.state.model.net else { return Ok(()) };
        if net.config().architecture != crate::nn::Architecture::Multistage {
            return Ok(());
        }
        let x = self.x0.to_kind(net.kind());
        let b = x.size()[0];
        let label = Tensor::from_slice(&self.draws.t.iter().map(|&t| (999.0 * t) as f32).collect::<Vec<_>>())
            .to_device(x.device());
        let params = self.state.model.params();
        let ps: Vec<&Tensor> = params.iter().map(|(_, p)| p).collect();
        let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<Lap> {
            let began = Stopwatch::start();
            f()?;
            Ok(began.lap())
        };
        // A loss reaching every output of a piece, with dense gradients.
        let surrogate = |ts: &[&Tensor]| -> Tensor {
            ts.iter().map(|t| (*t * t.detach().randn_like()).sum(Kind::Float)).reduce(|a, c| a + c).expect("outputs")
        };
        let mut out = vec![];
        let trunk = net.trunk(0);
        let (mut h, mut temb, mut skips) = (Tensor::new(), Tensor::new(), vec![]);
        out.push(timed(&mut || {
            temb = trunk.embed.forward(&label);
            let (hh, ss) = trunk.encoder.forward(&x, &temb, true);
            let mut all: Vec<&Tensor> = ss.iter().collect();
            all.extend([&hh, &temb]);
            let loss = surrogate(&all);
            let _ = Tensor::f_run_backward(&[loss], &ps, false, false).context("trunk backward")?;
            (h, skips) = (hh, ss);
            Ok(())
        })?);
        // The stand-in loss alone, on leaves of the same shapes.
        let leaves: Vec<Tensor> =
            skips.iter().chain([&h, &temb]).map(|t| t.detach().copy().set_requires_grad(true)).collect();
        out.push(timed(&mut || {
            let loss = surrogate(&leaves.iter().collect::<Vec<_>>());
            let _ = Tensor::f_run_backward(&[loss], &leaves.iter().collect::<Vec<_>>(), false, false)?;
            Ok(())
        })?);
        let (h, temb, skips) = (h.detach(), temb.detach(), skips.iter().map(Tensor::detach).collect::<Vec<_>>());
        let stage = Tensor::from_slice(&self.draws.stage).to_device(x.device());
        for (j, &n) in self.counts().iter().enumerate() {
            for rows in [n as i64, b] {
                if rows == 0 {
                    out.push(Lap::default());
                    continue;
                }
                // The decoder's inputs as leaves (their gradients are computed, as in a step).
                let idx = if rows == b {
                    Tensor::arange(b, (Kind::Int64, x.device()))
                } else {
                    stage.eq(j as i64).nonzero().squeeze_dim(1)
                };
                let pick = |t: &Tensor| t.index_select(0, &idx).set_requires_grad(true);
                let (hj, tj, sj) = (pick(&h), pick(&temb), skips.iter().map(pick).collect::<Vec<_>>());
                let mut inputs: Vec<&Tensor> = ps.clone();
                inputs.extend(sj.iter().chain([&hj, &tj]));
                out.push(timed(&mut || {
                    let y = net.decoder(j).forward(&hj, &sj, &tj, true);
                    let loss = surrogate(&[&y]);
                    let _ = Tensor::f_run_backward(&[loss], &inputs, false, false).context("decoder backward")?;
                    Ok(())
                })?);
            }
        }
        if record {
            self.pieces.push(out);
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_train(
    presets: &str,
    batch: usize,
    repeats: usize,
    device: Device,
    precision: Precision,
    policy: Policy,
    stage: usize,
    breakdown: bool,
    clock: Clock,
) -> Result<()> {
    let mut benches: Vec<TrainBench> = presets
        .split(',')
        .map(|p| TrainBench::new(p.trim(), batch, device, precision, policy, stage))
        .collect::<Result<_>>()?;
    for tb in &benches {
        println!(
            "network: {}, {} parameters, batch {batch}, samples per stage {:?}, {:.2} GFLOP forward",
            tb.preset,
            tb.state.model.num_params(),
            tb.counts(),
            tb.gflop
        );
    }
    if benches.len() > 1 {
        println!("interleaved: one step of each preset in turn; 1 warm-up round + {repeats} timed rounds");
    }
    for round in 0..=repeats {
        for tb in benches.iter_mut() {
            tb.step(round > 0, device)?;
            if breakdown && !device.is_cuda() {
                tb.pieces(round > 0)?;
            }
        }
    }
    let median = |v: Vec<f64>| crate::runtime::median(v);
    let on = |laps: &[Lap]| laps.iter().map(|&l| clock.of(l)).collect::<Vec<f64>>();
    let unit = match clock {
        Clock::Wall => "s",
        Clock::Cpu => "CPU s",
    };
    println!("times: {unit}");
    let base = median(on(&benches[0].steps));
    for tb in &benches {
        let secs = median(on(&tb.steps));
        println!(
            "{}: train step (objective loss + backward + Adam + EMA): median {secs:.3} {unit} over {repeats} ({:.1} images/{unit})",
            tb.preset,
            batch as f64 / secs
        );
        if !std::ptr::eq(tb, &benches[0]) {
            let ratios: Vec<f64> = on(&tb.steps).iter().zip(on(&benches[0].steps)).map(|(a, b)| a / b).collect();
            let min = |v: Vec<f64>| v.into_iter().fold(f64::INFINITY, f64::min);
            println!(
                "  vs {}: {:.3}x (median of per-round ratios {:.3}x; ratio of minima {:.3}x; rounds {}); \
                 FLOPs say {:.3}x",
                benches[0].preset,
                secs / base,
                median(ratios.clone()),
                min(on(&tb.steps)) / min(on(&benches[0].steps)),
                ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(" "),
                tb.gflop / benches[0].gflop
            );
        }
        {
            let ph = |i: usize| median(tb.phases.iter().map(|p| clock.of(p[i])).collect());
            println!(
                "  phases: forward + loss {:.3} s, backward {:.3} s, optimiser {:.3} s, EMA {:.3} s; \
                 forward + backward at {:.1} GFLOP/s (3x the forward FLOPs)",
                ph(0),
                ph(1),
                ph(2),
                ph(3),
                3.0 * tb.gflop / (ph(0) + ph(1))
            );
            if let Some(first) = tb.pieces.first() {
                let pc = |i: usize| median(tb.pieces.iter().map(|p| clock.of(p[i])).collect());
                let (trunk, stand_in) = (pc(0), pc(1));
                let trunk = (trunk - stand_in).max(1e-9);
                let b = batch as f64;
                println!(
                    "  trunk fwd+bwd on {batch}: {trunk:.3} s ({:.1} GFLOP/s; stand-in loss {stand_in:.3} s subtracted)",
                    3.0 * tb.trunk_gflop * b / trunk
                );
                let mut sum = trunk;
                for (j, &n) in tb.counts().iter().enumerate() {
                    let (own, full) = (pc(2 + 2 * j), pc(3 + 2 * j));
                    sum += own;
                    let rate = |t: f64, n: f64| if t > 0.0 { 3.0 * tb.decoder_gflop[j] * n / t } else { 0.0 };
                    println!(
                        "  decoder {j} (width {}) fwd+bwd on its {n}: {own:.3} s ({:.1} GFLOP/s); on all {batch}: \
                         {full:.3} s ({:.1} GFLOP/s)",
                        tb.cfg.decoder_channels[j],
                        rate(own, n as f64),
                        rate(full, b)
                    );
                }
                debug_assert_eq!(first.len(), 2 + 2 * tb.cfg.num_stages());
                println!(
                    "  trunk + decoders alone {sum:.3} s; the step's forward + backward {:.3} s; the rest \
                     (routing, objective, loss) {:.3} s",
                    ph(0) + ph(1),
                    ph(0) + ph(1) - sum
                );
            }
        }
    }
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

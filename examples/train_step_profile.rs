//! Where does one `msdiff bench train` step go? Times, for one preset and batch (median of
//! `repeats` after one warm-up): the forward pass alone (no grad), forward + loss + backward, and
//! the Adam step alone (on fixed gradients; split into the gradient norm / clipping and the moment
//! and parameter updates). Compare with `benches/reference_unet.py --phases`.
//!
//! `scripts/with-libtorch cargo run --release --example train_step_profile -- reference-6.5m 32 3 2`
use clap::Parser;
use msdiff::model::Network;
use msdiff::nn::UNetConfig;
use msdiff::runtime::time_median as time;
use msdiff::train::optim::{gradients, Adam, OptimConfig};
use tch::{Device, Kind, Tensor};

/// Time one training step's parts.
#[derive(Parser)]
struct Args {
    /// Network preset (`msdiff info --help` lists them).
    #[arg(default_value = "reference-6.5m")]
    preset: String,
    /// Batch size.
    #[arg(default_value_t = 32)]
    batch: i64,
    /// Repeats (the median is reported; the Adam timings use at least 5).
    #[arg(default_value_t = 3)]
    repeats: usize,
    /// libtorch threads.
    #[arg(default_value_t = 2)]
    threads: i32,
}

fn main() -> anyhow::Result<()> {
    let Args { preset, batch, repeats, threads } = Args::parse();
    let preset = preset.as_str();
    tch::set_num_threads(threads);
    let cfg = UNetConfig::preset(preset)?;
    tch::manual_seed(0);
    let net = Network::new(&cfg, Device::Cpu)?;
    let params = net.params();
    let (c, r, k) = (cfg.in_channels as i64, cfg.resolution as i64, cfg.num_stages() as i64);
    let x = Tensor::randn([batch, c, r, r], (Kind::Float, Device::Cpu));
    let label = Tensor::from_slice(&(0..batch).map(|i| 999.0 * (i as f32 + 0.5) / batch as f32).collect::<Vec<_>>());
    let stage = Tensor::from_slice(&(0..batch).map(|i| i * k / batch).collect::<Vec<_>>());
    let target = x.randn_like();
    println!(
        "{preset} batch {batch}, {} parameter tensors, {} parameters, {threads} threads",
        params.len(),
        net.num_params()
    );

    let fwd = time(repeats, || {
        let _g = tch::no_grad_guard();
        let _ = net.net.forward(&x, &label, &stage, true).unwrap();
    });
    println!("forward (no grad):            {fwd:.3} s");
    let mut grads = Vec::new();
    let fb = time(repeats, || {
        let out = net.net.forward(&x, &label, &stage, true).unwrap();
        let loss = (out - &target).square().mean(Kind::Float);
        grads = gradients(&loss, &params).unwrap();
    });
    println!("forward + backward:           {fb:.3} s");
    for (name, clip) in [("Adam step (msdiff, clip 1)", 1.0), ("Adam step (no clipping)", 0.0)] {
        let mut opt = Adam::new(OptimConfig { warmup_steps: 0, grad_clip: clip, ..Default::default() }, &params);
        let s = time(repeats.max(5), || {
            opt.step(&params, &grads, 1e-4).unwrap();
        });
        println!("{name:<30}{s:.4} s");
    }
    let norm = time(repeats.max(5), || {
        let _g = tch::no_grad_guard();
        let mut sq = 0.0;
        for g in grads.iter().filter(|g| g.defined()) {
            sq += g.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]);
        }
        assert!(sq.is_finite());
    });
    println!("  of which the f64 grad norm: {norm:.4} s");
    Ok(())
}

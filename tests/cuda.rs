//! CUDA paths. Each test prints `SKIPPED: no CUDA device` and returns when libtorch sees no GPU
//! (`scripts/gpu-check.sh` runs this file on a GPU machine). The last test is the converse: on a
//! machine without a GPU, `--device cuda` is a clear user error.
mod common;

use msdiff::data::{self, Dataset, LoadOptions};
use msdiff::model::{Loaded, Network};
use msdiff::runtime::Precision;
use msdiff::train::{checkpoint, trainer, ResolvedConfig, TrainConfig, TrainOptions};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn gpu() -> Option<Device> {
    if tch::Cuda::is_available() {
        Some(Device::Cuda(0))
    } else {
        skipped("no CUDA device");
        None
    }
}

/// Say so on the real stderr (libtest captures `println!`/`eprintln!` of passing tests).
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

fn setup(steps: u64) -> (ResolvedConfig, Dataset) {
    let text = format!(
        "[data]\nspec = \"builtin\"\ncount = 256\n[model]\npreset = \"tiny\"\ndropout = 0.0\n[stages]\nboundaries_t = [0.3, 0.6]\n\
         [optim]\nlr = 1e-3\nwarmup_steps = 2\n[ema]\ndecay = 0.9\n[train]\nbatch = 8\nsteps = {steps}\ncheckpoint_every = 1000\nlog_every = 1\n"
    );
    let tc = TrainConfig::from_toml(&text, "test").unwrap();
    let ds = data::load("builtin", &LoadOptions { count: 256, ..Default::default() }).unwrap();
    let cfg = tc.resolve(Path::new("."), ds.image_shape()).unwrap();
    (cfg, ds)
}

fn opts(run: &Path, device: Device) -> TrainOptions {
    TrainOptions { device, ..common::opts(run, None, None) }
}

/// max |a - b| relative to max |a| (both moved to the CPU).
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_device(Device::Cpu).to_kind(Kind::Double), b.to_device(Device::Cpu).to_kind(Kind::Double));
    (&a - &b).abs().max().double_value(&[]) / a.abs().max().double_value(&[]).max(1e-12)
}

#[test]
fn cuda_forward_of_the_tiny_model_matches_the_cpu() {
    let Some(dev) = gpu() else { return };
    let (cfg, _) = setup(1);
    tch::manual_seed(7);
    let cpu = Network::new(&cfg.model, Device::Cpu).unwrap();
    let gpu_net = Network::new(&cfg.model, dev).unwrap();
    msdiff::model::copy_into(&gpu_net.params(), &cpu.params(), "weights").unwrap();
    let x = Tensor::randn([6, 1, 16, 16], (Kind::Float, Device::Cpu));
    let label = Tensor::from_slice(&[0.1f32, 5.0, 50.0, 200.0, 600.0, 990.0]);
    let stage = Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2]);
    let _g = tch::no_grad_guard();
    let y_cpu = cpu.net.forward(&x, &label, &stage, false).unwrap();
    let y_gpu = gpu_net.net.forward(&x.to_device(dev), &label.to_device(dev), &stage.to_device(dev), false).unwrap();
    assert_eq!(y_gpu.device(), dev);
    // cuDNN may use TF32 for convolutions: ~1e-3 relative.
    let e = rel_err(&y_cpu, &y_gpu);
    println!("cuda vs cpu forward: max rel err {e:.2e}");
    assert!(e < 1e-2, "cuda forward differs from cpu: {e}");
}

#[test]
fn cuda_train_steps_run_in_fp32_and_bf16() {
    let Some(dev) = gpu() else { return };
    for p in [Precision::Fp32, Precision::Bf16] {
        let (mut cfg, ds) = setup(5);
        cfg.train.precision = p;
        let run = common::tmp(&format!("cuda-train-{p}"));
        let out = trainer::train(&cfg, &ds, &opts(&run, dev)).unwrap();
        assert_eq!(out.step, 5);
        assert!(out.losses.iter().all(|l| l.1.is_finite()), "{p}: {:?}", out.losses);
        let (_, t) = checkpoint::load(&out.checkpoint).unwrap();
        assert!(t.model.iter().all(|(_, x)| x.kind() == Kind::Float), "checkpoints hold fp32 weights");
        println!("cuda {p}: losses {:?}", out.losses.iter().map(|l| l.1).collect::<Vec<_>>());
    }
}

#[test]
fn cuda_samples_match_cpu_samples_with_the_same_seeds() {
    let Some(dev) = gpu() else { return };
    use msdiff::rng::SampleStreams;
    let (cfg, ds) = setup(3);
    let run = common::tmp("cuda-sample");
    let out = trainer::train(&cfg, &ds, &opts(&run, Device::Cpu)).unwrap();
    let sampler = cfg.train.sampler.clone().unwrap();
    let process = cfg.process.build().unwrap();
    let draw = |d: Device| {
        let l = Loaded::from_checkpoint(&out.checkpoint, d, true).unwrap();
        let den = l.denoiser().unwrap();
        let seeds: Vec<u64> = (0..8).collect();
        // The noise is drawn on the CPU (our own streams), so it is identical on both devices.
        let mut streams = SampleStreams::from_seeds(&seeds);
        let noise = streams.randn(&[1, 16, 16], Kind::Float).to_device(d);
        msdiff::sampler::sample(&sampler, &den, &process, &noise, &mut streams).unwrap().x
    };
    let (a, b) = (draw(Device::Cpu), draw(dev));
    assert_eq!(b.device(), dev);
    let e = rel_err(&a, &b);
    println!("cuda vs cpu samples: max rel err {e:.2e}");
    assert!(e < 2e-2, "cuda samples differ from cpu: {e}");
}

#[test]
fn cuda_out_of_memory_names_the_batch_and_the_device_goes_on() {
    let Some(dev) = gpu() else { return };
    common::assert_out_of_memory_is_a_clear_error(dev, "cuda");
}

#[test]
fn device_cuda_without_a_gpu_is_a_clear_error() {
    if tch::Cuda::is_available() {
        skipped("a CUDA device is present");
        return;
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_msdiff"))
        .args([
            "--quiet",
            "--device",
            "cuda",
            "sample",
            "--model",
            "optimal",
            "--data",
            "builtin",
            "--data-limit",
            "10",
        ])
        .args(["--n", "2", "--steps", "2", "--no-images", "--out"])
        .arg(common::tmp("cuda-nodev"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("msdiff: error:") && e.contains("no CUDA device found"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

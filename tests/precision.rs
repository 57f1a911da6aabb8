//! bf16 mixed precision on the CPU: training learns, resume is exact, samples stay close to fp32.
mod common;
use common::{all_tensors, opts, tmp};
use msdiff::data::Dataset;
use msdiff::model::Loaded;
use msdiff::runtime::Precision;
use msdiff::train::{trainer, ResolvedConfig, TrainConfig};
use tch::{Device, Kind};

/// The shared tiny configuration with `steps` and `precision` set.
fn setup(steps: u64, precision: &str) -> (ResolvedConfig, Dataset) {
    common::setup(&format!("steps = {steps}\nprecision = \"{precision}\""))
}

#[test]
fn precision_parses_and_defaults_to_fp32() {
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Fp32);
    assert!("fp16".parse::<Precision>().unwrap_err().to_string().contains("expected one of: fp32, bf16"));
    let (cfg, _) = setup(1, "fp32");
    assert_eq!(cfg.train.precision, Precision::Fp32);
    assert!(cfg.to_toml().contains("precision = \"fp32\""));
    assert!(TrainConfig::from_toml("[train]\nprecision = \"fp8\"", "t").is_err());
}

#[test]
fn bf16_training_of_the_tiny_model_learns() {
    let (mut cfg, ds) = setup(40, "bf16");
    cfg.model.dropout = 0.0;
    cfg.optim.lr = 2e-3;
    cfg.optim.warmup_steps = 5;
    cfg.train.checkpoint_every = 1000;
    let run = tmp("learns");
    let out = trainer::train(&cfg, &ds, &opts(&run, None, None)).unwrap();
    assert!(out.losses.iter().all(|l| l.1.is_finite()), "{:?}", out.losses);
    let first: f64 = out.losses[..5].iter().map(|l| l.1).sum::<f64>() / 5.0;
    let last: f64 = out.losses[35..].iter().map(|l| l.1).sum::<f64>() / 5.0;
    eprintln!("bf16 loss {first:.4} -> {last:.4}");
    assert!(last < 0.8 * first, "bf16 loss did not fall: {first} -> {last}");
    // Checkpoints hold fp32 masters, EMA and moments.
    for (n, t) in all_tensors(&out.checkpoint) {
        assert_eq!(t.kind(), Kind::Float, "{n}");
    }
}

#[test]
fn bf16_resume_is_bit_exact_and_checkpoints_are_interchangeable() {
    let (cfg, ds) = setup(6, "bf16");
    let full = common::assert_resume_is_exact(&cfg, &ds, "a bf16 resume");
    // The same checkpoint resumes in fp32 (and the fp32 run differs from the bf16 one).
    let (mut cfg32, _) = setup(8, "fp32");
    cfg32.train.precision = Precision::Fp32;
    let c = tmp("to-fp32");
    let more = trainer::train(&cfg32, &ds, &opts(&c, Some(full.checkpoint.clone()), None)).unwrap();
    assert_eq!(more.step, 8);
    assert!(more.losses.iter().all(|l| l.1.is_finite()));
}

#[test]
fn a_bf16_sample_stays_close_to_the_fp32_sample() {
    use msdiff::rng::SampleStreams;
    let (cfg, ds) = setup(20, "fp32");
    let run = tmp("sample");
    let out = trainer::train(&cfg, &ds, &opts(&run, None, None)).unwrap();
    let sampler = cfg.train.sampler.clone().unwrap();
    let process = cfg.process.build().unwrap();
    let draw = |p: Precision| {
        let l = Loaded::from_checkpoint(&out.checkpoint, Device::Cpu, true).unwrap().with_precision(p);
        assert_eq!(l.network.net.kind(), p.kind());
        let den = l.denoiser().unwrap();
        let seeds: Vec<u64> = (0..8).collect();
        let mut streams = SampleStreams::from_seeds(&seeds);
        let noise = streams.randn(&[1, 16, 16], Kind::Float);
        let x = msdiff::sampler::sample(&sampler, &den, &process, &noise, &mut streams).unwrap().x;
        assert_eq!(x.kind(), Kind::Float);
        x
    };
    let (a, b) = (draw(Precision::Fp32), draw(Precision::Bf16));
    let d = (&a - &b).abs();
    let (mean, max) = (d.mean(Kind::Double).double_value(&[]), d.max().double_value(&[]));
    let scale = a.abs().mean(Kind::Double).double_value(&[]);
    eprintln!(
        "bf16 vs fp32 sample: mean |diff| {mean:.2e}, max {max:.2e}, mean |x| {scale:.3}, max |x| {:.3}",
        a.abs().max().double_value(&[])
    );
    assert!(mean > 0.0, "bf16 sampling must actually run in bf16");
    // A 20-step model's samples are far from [-1, 1] (|x| ~ 100 here), so the bound is relative:
    // bf16 keeps 8 bits of mantissa (relative step 2^-8 = 3.9e-3); measured 4e-4 mean, 3e-3 max.
    let peak = a.abs().max().double_value(&[]);
    assert!(
        mean < 4e-3 * scale && max < 2e-2 * peak,
        "bf16 sample too far from fp32: mean {mean}, max {max} (scale {scale}, peak {peak})"
    );
}

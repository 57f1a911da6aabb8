//! Training: exact resume, checkpoint integrity, bad configurations, loss falls.
mod common;
use common::{opts, setup, tiny_config, tmp};
use msdiff::data::{self, LoadOptions};
use msdiff::train::{checkpoint, trainer, TrainConfig};
use std::path::Path;
use tch::Device;

#[test]
fn resume_continues_bit_for_bit() {
    // Dropout is on (0.1), stages are mixed, warm-up and EMA are active: every source of state.
    let (cfg, ds) = setup("");
    assert_eq!(cfg.train.steps, 6);
    common::assert_resume_is_exact(&cfg, &ds, "resume");
}

#[test]
fn checkpoints_round_trip_and_corruption_is_refused() {
    let (cfg, ds) = setup("steps = 2");
    let run = tmp("corrupt");
    let out = trainer::train(&cfg, &ds, &opts(&run, None, None)).unwrap();
    // Round trip: loading into a fresh network reproduces every tensor exactly.
    let loaded = msdiff::model::Loaded::from_checkpoint(&out.checkpoint, Device::Cpu, false).unwrap();
    let (_, t) = checkpoint::load(&out.checkpoint).unwrap();
    for ((n, a), (m, b)) in loaded.network.params().iter().zip(&t.model) {
        assert_eq!(n, m);
        assert!(a.equal(b));
    }
    // Truncated weights.
    let w = out.checkpoint.join(checkpoint::WEIGHTS);
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load(&out.checkpoint).err().expect("truncated checkpoint must be refused");
    assert!(format!("{e:#}").contains("corrupt or truncated"), "{e:#}");
    // Weights of another dtype (a tool that re-saved them as f64).
    std::fs::write(&w, &bytes).unwrap();
    let mut named = tch::Tensor::read_safetensors(&w).unwrap();
    named[0].1 = named[0].1.to_kind(tch::Kind::Double);
    tch::Tensor::write_safetensors(&named.iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>(), &w).unwrap();
    let e = checkpoint::load(&out.checkpoint).err().expect("f64 weights must be refused");
    assert!(format!("{e:#}").contains("expected f32"), "{e:#}");
    // A well-formed state whose configuration is out of range (hand-edited: a negative lr).
    std::fs::write(&w, &bytes).unwrap();
    let spath = out.checkpoint.join(checkpoint::STATE);
    let state = std::fs::read_to_string(&spath).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&state).unwrap();
    v["config"]["optim"]["lr"] = serde_json::json!(-1.0);
    std::fs::write(&spath, v.to_string()).unwrap();
    let e = checkpoint::load(&out.checkpoint).err().expect("an invalid stored configuration must be refused");
    assert!(format!("{e:#}").contains("holds an invalid configuration") && format!("{e:#}").contains("lr"), "{e:#}");
    // Garbage state.
    std::fs::write(spath, b"{not json").unwrap();
    let e = checkpoint::load(&out.checkpoint).err().expect("corrupt state must be refused");
    assert!(format!("{e:#}").contains("corrupt"), "{e:#}");
    // Missing.
    assert!(checkpoint::load(&run.join("nope")).is_err());
}

#[test]
fn resuming_with_another_config_is_refused() {
    let (cfg, ds) = setup("steps = 2");
    let run = tmp("otherconfig");
    trainer::train(&cfg, &ds, &opts(&run, None, None)).unwrap();
    let (mut other, _) = setup("steps = 4");
    other.optim.lr = 5e-4;
    let e = trainer::train(&other, &ds, &opts(&run, Some(run.clone()), None)).err().expect("must refuse");
    assert!(format!("{e:#}").contains("different configuration"), "{e:#}");
    // A checkpoint of another network cannot be loaded into this one.
    let (state, t) = checkpoint::load(&run).unwrap();
    let mut cfg2 = state.config.model.clone();
    cfg2.decoder_channels = vec![8, 8, 8];
    let net = msdiff::model::Network::new(&cfg2, Device::Cpu).unwrap();
    assert!(msdiff::model::copy_into(&net.params(), &t.model, "weights").is_err());
}

#[test]
fn a_diverging_run_stops_with_its_last_good_checkpoint_intact() {
    let (mut cfg, ds) = setup("steps = 40\ncheckpoint_every = 1");
    cfg.optim.lr = 1e6;
    cfg.optim.warmup_steps = 0;
    cfg.optim.grad_clip = 0.0;
    let run = tmp("nan");
    let e = trainer::train(&cfg, &ds, &opts(&run, None, None)).err().expect("a lr of 1e6 must diverge");
    let msg = format!("{e:#}");
    assert!(msg.contains("loss became") || msg.contains("gradient norm is not finite"), "{msg}");
    let last = checkpoint::list(&run.join("checkpoints")).unwrap();
    if let Some((_, p)) = last.last() {
        checkpoint::load(p).expect("the last checkpoint must be loadable");
    }
}

#[test]
fn config_errors_name_the_problem() {
    let e = TrainConfig::from_toml("[optim]\nlrr = 1\n", "x.toml").err().unwrap();
    assert!(format!("{e:#}").contains("lrr"), "{e:#}");
    let e = TrainConfig::from_toml("[model]\nbase_channel = 3\n", "x.toml")
        .unwrap()
        .resolve(Path::new("."), [1, 16, 16])
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("base_channel"), "{e:#}");
    // Widths not divisible by the group count.
    let tc =
        TrainConfig::from_toml("[model]\npreset = \"tiny\"\nbase_channels = 18\n[stages]\nboundaries_t=[0.3,0.6]", "x")
            .unwrap();
    assert!(tc.resolve(Path::new("."), [1, 16, 16]).is_err());
    // Boundaries not increasing / outside (0,1).
    for b in ["[0.6, 0.3]", "[0.0, 0.5]", "[0.5, 1.0]"] {
        let tc =
            TrainConfig::from_toml(&format!("[model]\npreset = \"tiny\"\n[stages]\nboundaries_t = {b}"), "x").unwrap();
        assert!(tc.resolve(Path::new("."), [1, 16, 16]).is_err(), "{b}");
    }
    // Dataset / model resolution mismatch.
    let tc =
        TrainConfig::from_toml("[model]\npreset = \"tiny\"\nresolution = 32\n[stages]\nboundaries_t=[0.3,0.6]", "x")
            .unwrap();
    let e = tc.resolve(Path::new("."), [1, 16, 16]).err().unwrap();
    assert!(format!("{e:#}").contains("resolution"), "{e:#}");
    // Wrong number of boundaries for the decoders.
    let tc = TrainConfig::from_toml("[model]\npreset = \"tiny\"\n[stages]\nboundaries_t=[0.5]", "x").unwrap();
    assert!(tc.resolve(Path::new("."), [1, 16, 16]).is_err());
    // EDM with a zero data scale (every preconditioning coefficient would divide by it).
    let tc = TrainConfig::from_toml("[model]\npreset = \"tiny\"\n[process]\nkind = \"edm\"\n[prediction]\nkind = \"edm\"\nsigma_data = 0.0\n[stages]\nboundaries_t=[0.3,0.6]", "x").unwrap();
    let e = tc.resolve(Path::new("."), [1, 16, 16]).err().unwrap();
    assert!(format!("{e:#}").contains("sigma_data must be > 0"), "{e:#}");
    // The EMA by half-life alone (the decay default must not also apply).
    let tc = TrainConfig::from_toml(
        "[model]\npreset = \"tiny\"\n[ema]\nhalf_life_images = 5000\n[stages]\nboundaries_t=[0.3,0.6]",
        "x",
    )
    .unwrap();
    assert_eq!(tc.resolve(Path::new("."), [1, 16, 16]).unwrap().ema.decay, None);
}

#[test]
fn a_tiny_models_loss_falls_on_the_builtin_data() {
    let (mut cfg, ds) = setup("steps = 60\ncheckpoint_every = 1000");
    cfg.model.dropout = 0.0;
    cfg.optim.lr = 2e-3;
    cfg.optim.warmup_steps = 5;
    let run = tmp("falls");
    let out = trainer::train(&cfg, &ds, &opts(&run, None, None)).unwrap();
    let first: f64 = out.losses[..5].iter().map(|l| l.1).sum::<f64>() / 5.0;
    let last: f64 = out.losses[55..].iter().map(|l| l.1).sum::<f64>() / 5.0;
    // The eps-prediction loss starts near 1 (an untrained net outputs ~0; E|eps|^2 = 1); a
    // learning model gets well below. 0.6 is a loose bound: runs reach ~0.2-0.3 here.
    assert!(first > 0.8, "initial loss {first}");
    assert!(last < 0.6, "loss did not fall: {first} -> {last}");
}

#[test]
fn edm_ddpm_and_v_objectives_train_and_sample() {
    use msdiff::denoiser::Denoiser;
    for (process, prediction) in
        [("kind = \"edm\"", None), ("kind = \"ddpm\"", None), ("kind = \"vp\"", Some("kind = \"v\""))]
    {
        let mut text = tiny_config("").replace("steps = 6", "steps = 3");
        text.push_str(&format!("\n[process]\n{process}\n"));
        if let Some(p) = prediction {
            text.push_str(&format!("[prediction]\n{p}\n"));
        }
        let tc = TrainConfig::from_toml(&text, "test").unwrap();
        let ds = data::load("builtin", &LoadOptions { count: 64, ..Default::default() }).unwrap();
        let cfg = tc.resolve(Path::new("."), ds.image_shape()).unwrap();
        let run = tmp(&format!("obj-{}", cfg.process.build().unwrap().name()));
        let out = trainer::train(&cfg, &ds, &opts(&run, None, None)).unwrap();
        assert!(out.losses.iter().all(|l| l.1.is_finite()));
        // The trained network is a denoiser every sampler can use: finite x0 estimates.
        let l = msdiff::model::Loaded::from_checkpoint(&out.checkpoint, Device::Cpu, true).unwrap();
        let den = l.denoiser().unwrap();
        let x = tch::Tensor::randn([3, 1, 16, 16], (tch::Kind::Float, Device::Cpu));
        let s = tch::Tensor::from_slice(&[0.1f32, 2.0, 20.0]);
        let x0 = den.denoise(&x, &s).unwrap();
        assert_eq!(x0.isfinite().all().int64_value(&[]), 1);
    }
}

#[test]
fn model_denoiser_routes_each_sample_by_its_sigma() {
    use msdiff::denoiser::Denoiser;
    let (cfg, ds) = setup("steps = 2");
    let run = tmp("routing");
    let out = trainer::train(&cfg, &ds, &opts(&run, None, None)).unwrap();
    let l = msdiff::model::Loaded::from_checkpoint(&out.checkpoint, Device::Cpu, false).unwrap();
    let den = l.denoiser().unwrap();
    // Sigmas on both sides of each boundary (VP t 0.3 and 0.6 -> sigma 1.29 and 5.85).
    let b = cfg.boundaries_sigma();
    let sig = [b[0] * 0.999, b[0], b[1] * 0.999, b[1] * 1.001, 0.01, 60.0];
    let x = tch::Tensor::randn([6, 1, 16, 16], (tch::Kind::Float, Device::Cpu));
    let all = den.denoise(&x, &tch::Tensor::from_slice(&sig).to_kind(tch::Kind::Float)).unwrap();
    for (i, s) in sig.iter().enumerate() {
        let one = den.denoise(&x.narrow(0, i as i64, 1), &tch::Tensor::from_slice(&[*s as f32])).unwrap();
        let err = (one - all.narrow(0, i as i64, 1)).abs().max().double_value(&[]);
        // Same decoder, same input; only f32 summation order inside batched kernels differs.
        assert!(err < 1e-4, "sample {i} (sigma {s}): {err}");
    }
}

#[test]
fn out_of_memory_names_the_batch_and_the_process_goes_on() {
    if common::refuses_a_512_gib_allocation() {
        common::assert_out_of_memory_is_a_clear_error(Device::Cpu, "cpu");
    }
}

//! Tests of the multi-decoder U-Net (src/nn). Expected parameter counts and GFLOPs are from
//! docs/METHOD.md §4 (the official multistage code's instantiated counts).

use msdiff::nn::{report, Architecture, DecoderAttn, MultiStageUNet, Resample, ResampleWith, UNetConfig, PRESETS};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn build(cfg: &UNetConfig) -> (VarStore, MultiStageUNet) {
    let vs = VarStore::new(Device::Cpu);
    let net = MultiStageUNet::new(&vs.root(), cfg).unwrap();
    (vs, net)
}

fn numel(ts: &[Tensor]) -> u64 {
    ts.iter().map(|t| t.numel() as u64).sum()
}

/// The variables whose VarStore name starts with one of `prefixes` (the one parameter registry).
fn under(vs: &VarStore, prefixes: &[&str]) -> Vec<Tensor> {
    msdiff::model::params_under(vs, prefixes).into_iter().map(|(_, t)| t).collect()
}

/// Time embedding + encoder: the shared trunk (multistage), or every stage's trunk (separate).
fn encoder(vs: &VarStore) -> Vec<Tensor> {
    under(vs, &["embed.", "encoder."])
}

fn decoder(vs: &VarStore, j: usize) -> Vec<Tensor> {
    under(vs, &[&format!("decoder.{j}.")])
}

/// Replaces the (near-zero-initialised) weights by O(1)-scaled random ones, so outputs and
/// gradients are not trivially ~0.
fn randomize(vs: &VarStore, seed: i64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            let sz = v.size();
            let r = if sz.len() >= 2 {
                let fan_in = (v.numel() as i64 / sz[0]) as f64;
                v.randn_like() / fan_in.sqrt()
            } else if name.contains("norm") && name.ends_with("weight") {
                v.randn_like() * 0.1 + 1.0
            } else {
                v.randn_like() * 0.1
            };
            v.copy_(&r);
        }
    });
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

// ---------------------------------------------------------------------------------------------
// Parameter counts

#[test]
fn paper_preset_counts_match_spec_exactly_analytic() {
    // docs/METHOD.md §4: encoder 43,482,624; decoders 125,995,843 / 64,038,787 / 3,652,083;
    // per-stage networks 169,478,467 / 107,521,411 / 47,134,707; 237,169,337 stored.
    let r = report(&UNetConfig::preset("cifar10-multistage").unwrap(), &[0.442, 0.6308]).unwrap();
    assert_eq!(r.encoder_params, 43_482_624);
    assert_eq!(r.decoder_params, vec![125_995_843, 64_038_787, 3_652_083]);
    assert_eq!(r.stage_params, vec![169_478_467, 107_521_411, 47_134_707]);
    assert_eq!(r.total_params, 237_169_337);
    // "Forward cost per 32x32 image: 62.0 / 37.2 / 14.3 GFLOP" (rounded to 0.1).
    for (g, want) in r.stage_gflops.iter().zip([62.0, 37.2, 14.3]) {
        assert!((g - want).abs() < 0.05, "stage GFLOP {g} vs spec {want}");
    }

    let u = report(&UNetConfig::preset("cifar10-unified").unwrap(), &[]).unwrap();
    assert_eq!(u.total_params, 107_521_411);
    assert_eq!(u.stage_params, vec![107_521_411]);

    let s = report(&UNetConfig::preset("cifar10-separate").unwrap(), &[0.442, 0.6308]).unwrap();
    assert_eq!(s.stage_params, vec![169_478_467, 107_521_411, 47_134_707]);
    assert_eq!(s.total_params, 169_478_467 + 107_521_411 + 47_134_707);

    // The 6.47 M reference U-Net (docs/libtorch.md benchmark): exact count of our layout.
    let refn = report(&UNetConfig::preset("reference-6.5m").unwrap(), &[]).unwrap();
    assert_eq!(refn.total_params, 6_472_195);
}

#[test]
fn paper_preset_counts_match_spec_varstore() {
    // Builds the real 237 M-parameter model (~0.95 GB of f32, no forward pass).
    let cfg = UNetConfig::preset("cifar10-multistage").unwrap();
    let (vs, _net) = build(&cfg);
    assert_eq!(numel(&encoder(&vs)), 43_482_624);
    let decs: Vec<u64> = (0..3).map(|j| numel(&decoder(&vs, j))).collect();
    assert_eq!(decs, vec![125_995_843, 64_038_787, 3_652_083]);
    let total: u64 = vs.variables().values().map(|t| t.numel() as u64).sum();
    assert_eq!(total, 237_169_337);
}

fn variant_configs() -> Vec<UNetConfig> {
    let tiny = UNetConfig::preset("tiny").unwrap();
    let mut v: Vec<UNetConfig> =
        PRESETS.iter().filter(|n| !n.starts_with("cifar10")).map(|n| UNetConfig::preset(n).unwrap()).collect();
    v.push(UNetConfig { resample: Resample::Fir, input_pyramid: true, ..tiny.clone() });
    v.push(UNetConfig { resample_with: ResampleWith::Conv, decoder_attn: DecoderAttn::Block, ..tiny.clone() });
    v.push(UNetConfig {
        resample: Resample::Fir,
        resample_with: ResampleWith::Conv,
        input_pyramid: true,
        architecture: Architecture::Separate,
        embedding_dim: Some(10),
        attn_resolutions: vec![16, 8],
        ..tiny.clone()
    });
    v.push(UNetConfig { channel_mult: vec![1, 2, 3], resolution: 12, attn_resolutions: vec![3], ..tiny });
    v
}

#[test]
fn analytic_counts_match_varstore() {
    for cfg in variant_configs() {
        let s = cfg.num_stages();
        let interior: Vec<f64> = (1..s).map(|j| j as f64 / s as f64).collect();
        let r = report(&cfg, &interior).unwrap();
        let (vs, _net) = build(&cfg);
        let stored: u64 = vs.variables().values().map(|t| t.numel() as u64).sum();
        assert_eq!(stored, r.total_params, "{cfg:?}");
        // The encoder and decoder prefixes partition the variables: each is seen exactly once.
        let decs: Vec<Vec<Tensor>> = (0..cfg.num_stages()).map(|j| decoder(&vs, j)).collect();
        assert_eq!(encoder(&vs).len() + decs.iter().map(Vec::len).sum::<usize>(), vs.variables().len());
        assert_eq!(numel(&encoder(&vs)) + decs.iter().map(|d| numel(d)).sum::<u64>(), stored);
        for j in 0..cfg.num_stages() {
            assert_eq!(numel(&decoder(&vs, j)), r.decoder_params[j], "decoder {j} of {cfg:?}");
        }
        let trunks = match cfg.architecture {
            Architecture::Multistage => 1,
            Architecture::Separate => cfg.num_stages() as u64,
        };
        assert_eq!(numel(&encoder(&vs)), trunks * r.encoder_params);
        // Decoder j's variables live under `decoder.{j}.`.
        for j in 0..cfg.num_stages() {
            let prefix = format!("decoder.{j}.");
            let n: u64 =
                vs.variables().iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(_, t)| t.numel() as u64).sum();
            assert_eq!(n, r.decoder_params[j]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forward shapes, routing, gradients

#[test]
fn output_shape_equals_input_shape() {
    tch::manual_seed(0);
    for name in ["tiny", "small-multistage", "small-unified", "small-separate", "reference-6.5m"] {
        let cfg = UNetConfig::preset(name).unwrap();
        let (_vs, net) = build(&cfg);
        let s = cfg.num_stages() as i64;
        let b = 2 * s;
        let r = cfg.resolution as i64;
        let x = Tensor::randn([b, cfg.in_channels as i64, r, r], (Kind::Float, Device::Cpu));
        let t = Tensor::rand([b], (Kind::Float, Device::Cpu)) * 999.0;
        let stage = Tensor::arange(b, (Kind::Int64, Device::Cpu)).remainder(s);
        let y = tch::no_grad(|| net.forward(&x, &t, &stage, false)).unwrap();
        assert_eq!(y.size(), x.size(), "{name}");
        assert!(y.isfinite().all().int64_value(&[]) == 1);
    }
}

fn routing_matches_per_sample(cfg: UNetConfig) {
    let (vs, net) = build(&cfg);
    randomize(&vs, 1);
    let b = 7i64;
    let r = cfg.resolution as i64;
    let x = Tensor::randn([b, cfg.in_channels as i64, r, r], (Kind::Float, Device::Cpu));
    let t = Tensor::rand([b], (Kind::Float, Device::Cpu)) * 999.0;
    let ids = [2i64, 0, 1, 2, 2, 0, 1];
    let stage = Tensor::from_slice(&ids);
    let y = tch::no_grad(|| net.forward(&x, &t, &stage, false)).unwrap();
    let scale = y.abs().max().double_value(&[]);
    assert!(scale > 1e-2, "outputs too small to test: {scale}");
    for (i, &j) in ids.iter().enumerate() {
        let i = i as i64;
        let yi = tch::no_grad(|| net.forward_stage(&x.narrow(0, i, 1), &t.narrow(0, i, 1), j as usize, false));
        // Same math on a different batch split: only f32 GEMM/conv reduction order differs
        // (~1e-7 relative per op, a few dozen ops deep), so 1e-5 relative is a safe bound.
        let d = max_abs_diff(&y.narrow(0, i, 1), &yi);
        assert!(d <= 1e-5 * scale.max(1.0), "sample {i} (stage {j}): diff {d}, scale {scale}");
    }
}

#[test]
fn per_sample_routing_equals_single_sample_runs() {
    routing_matches_per_sample(UNetConfig { dropout: 0.0, ..UNetConfig::preset("tiny").unwrap() });
    routing_matches_per_sample(UNetConfig {
        dropout: 0.0,
        architecture: Architecture::Separate,
        resample: Resample::Fir,
        input_pyramid: true,
        ..UNetConfig::preset("tiny").unwrap()
    });
}

#[test]
fn eval_mode_is_deterministic_and_train_mode_uses_dropout() {
    let cfg = UNetConfig::preset("tiny").unwrap(); // dropout 0.1
    let (vs, net) = build(&cfg);
    randomize(&vs, 2);
    let x = Tensor::randn([3, 1, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[10.0f32, 500.0, 900.0]);
    let st = Tensor::from_slice(&[0i64, 1, 2]);
    let a = tch::no_grad(|| net.forward(&x, &t, &st, false)).unwrap();
    let b = tch::no_grad(|| net.forward(&x, &t, &st, false)).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    let c = tch::no_grad(|| net.forward(&x, &t, &st, true)).unwrap();
    assert!(max_abs_diff(&a, &c) > 0.0);
}

fn grad_norm(ts: &[Tensor]) -> Option<f64> {
    let mut any = false;
    let mut s = 0.0;
    for t in ts {
        let g = t.grad();
        if g.defined() {
            any = true;
            s += g.square().sum(Kind::Double).double_value(&[]);
        }
    }
    any.then_some(s.sqrt())
}

#[test]
fn gradients_reach_encoder_and_only_active_decoders() {
    let cfg = UNetConfig { dropout: 0.0, ..UNetConfig::preset("tiny").unwrap() };
    let (vs, net) = build(&cfg);
    randomize(&vs, 3);
    let x = Tensor::randn([6, 1, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::rand([6], (Kind::Float, Device::Cpu)) * 999.0;
    let ids = [0i64, 1, 2, 1, 0, 2];
    let stage = Tensor::from_slice(&ids);
    for j in 0..3i64 {
        for p in vs.trainable_variables() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        // Fresh store per j would also do; zeroing keeps "defined but zero" for other decoders.
        let y = net.forward(&x, &t, &stage, true).unwrap();
        let mask = Tensor::from_slice(&ids.map(|s| if s == j { 1.0f32 } else { 0.0 })).reshape([6, 1, 1, 1]);
        let loss = (y * mask).square().sum(Kind::Float);
        loss.backward();
        let enc = grad_norm(&encoder(&vs)).unwrap();
        assert!(enc > 0.0, "encoder gets gradient from stage {j}'s samples");
        for k in 0..3 {
            let g = grad_norm(&decoder(&vs, k)).unwrap_or(0.0);
            if k as i64 == j {
                assert!(g > 0.0, "decoder {k} must get gradient");
            } else {
                assert_eq!(g, 0.0, "decoder {k} must get no gradient from stage {j}'s loss");
            }
        }
    }
}

#[test]
fn decoder_without_samples_gets_no_gradient() {
    let cfg = UNetConfig { dropout: 0.0, ..UNetConfig::preset("tiny").unwrap() };
    let (vs, net) = build(&cfg);
    randomize(&vs, 4);
    let x = Tensor::randn([4, 1, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::rand([4], (Kind::Float, Device::Cpu)) * 999.0;
    let stage = Tensor::from_slice(&[0i64, 2, 0, 2]); // nobody in stage 1
    let loss = net.forward(&x, &t, &stage, true).unwrap().square().mean(Kind::Float);
    loss.backward();
    assert!(grad_norm(&decoder(&vs, 0)).unwrap() > 0.0);
    assert!(grad_norm(&decoder(&vs, 2)).unwrap() > 0.0);
    assert!(grad_norm(&decoder(&vs, 1)).is_none(), "decoder 1 was not run: grad must be undefined");
    assert!(grad_norm(&encoder(&vs)).unwrap() > 0.0);

    // Separate: stage 1's whole network (embedding, encoder, decoder) gets nothing.
    let cfg = UNetConfig { architecture: Architecture::Separate, ..cfg };
    let (vs, net) = build(&cfg);
    randomize(&vs, 5);
    let loss = net.forward(&x, &t, &stage, true).unwrap().square().mean(Kind::Float);
    loss.backward();
    let stage_only =
        |j: usize| under(&vs, &[&format!("embed.{j}."), &format!("encoder.{j}."), &format!("decoder.{j}.")]);
    assert!(grad_norm(&stage_only(1)).is_none());
    assert!(grad_norm(&stage_only(0)).unwrap() > 0.0);
    // Nothing is shared: every variable belongs to one stage's network.
    assert_eq!((0..3).map(|j| stage_only(j).len()).sum::<usize>(), vs.variables().len());
}

#[test]
fn unified_is_multistage_with_one_decoder() {
    let multi = UNetConfig { dropout: 0.0, ..UNetConfig::preset("tiny").unwrap() };
    let uni = UNetConfig { decoder_channels: vec![multi.decoder_channels[1]], ..multi.clone() };
    let (vs_m, net_m) = build(&multi);
    randomize(&vs_m, 6);
    let (mut vs_u, net_u) = build(&uni);
    // Copy the trunk and decoder 1 of the multistage net into the unified net's decoder 0.
    let src = vs_m.variables();
    tch::no_grad(|| {
        for (name, mut v) in vs_u.variables() {
            let from = name.replacen("decoder.0.", "decoder.1.", 1);
            v.copy_(&src[&from]);
        }
    });
    vs_u.freeze();
    let x = Tensor::randn([4, 1, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::rand([4], (Kind::Float, Device::Cpu)) * 999.0;
    let ym = tch::no_grad(|| net_m.forward(&x, &t, &Tensor::from_slice(&[1i64; 4]), false)).unwrap();
    let yu = tch::no_grad(|| net_u.forward(&x, &t, &Tensor::zeros([4], (Kind::Int64, Device::Cpu)), false)).unwrap();
    // Identical weights and identical batch: bit-identical.
    assert_eq!(max_abs_diff(&ym, &yu), 0.0);
}

#[test]
fn stage_ids_are_checked() {
    let cfg = UNetConfig::preset("tiny").unwrap();
    let (_vs, net) = build(&cfg);
    let x = Tensor::zeros([2, 1, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let e = net.forward(&x, &t, &Tensor::from_slice(&[0i64, 3]), false).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = net.forward(&x, &t, &Tensor::from_slice(&[0i64, -1]), false).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    assert!(net.forward(&x, &t, &Tensor::from_slice(&[0i64]), false).is_err());
    assert!(net.forward(&x, &t, &Tensor::from_slice(&[0.0f32, 1.0]), false).is_err());
}

// ---------------------------------------------------------------------------------------------
// Config

#[test]
fn config_validation_errors() {
    let ok = UNetConfig::preset("tiny").unwrap();
    let err = |c: UNetConfig| c.validate().unwrap_err().to_string();
    // 18 channels: min(18/4, 32) = 4 groups, 18 % 4 != 0.
    assert!(err(UNetConfig { decoder_channels: vec![18], ..ok.clone() }).contains("GroupNorm width 18"));
    // 14 channels: 3 groups, 14 % 3 != 0.
    assert!(err(UNetConfig { base_channels: 14, ..ok.clone() }).contains("GroupNorm width 14"));
    assert!(err(UNetConfig { channel_mult: vec![], ..ok.clone() }).contains("channel_mult"));
    assert!(err(UNetConfig { channel_mult: vec![1, 0], ..ok.clone() }).contains("channel_mult"));
    assert!(err(UNetConfig { resolution: 15, ..ok.clone() }).contains("not divisible"));
    assert!(err(UNetConfig { attn_resolutions: vec![4], ..ok.clone() }).contains("not reachable"));
    assert!(err(UNetConfig { decoder_channels: vec![], ..ok.clone() }).contains("decoder_channels"));
    assert!(err(UNetConfig { embedding_dim: Some(7), ..ok.clone() }).contains("embedding_dim"));
    assert!(err(UNetConfig { dropout: 1.0, ..ok.clone() }).contains("dropout"));
    assert!(UNetConfig::preset("nope").unwrap_err().to_string().contains("tiny"));
    let vs = VarStore::new(Device::Cpu);
    assert!(MultiStageUNet::new(&vs.root(), &UNetConfig { resolution: 15, ..ok }).is_err());
    for n in PRESETS {
        UNetConfig::preset(n).unwrap().validate().unwrap();
    }
}

#[test]
fn config_serde_roundtrip_defaults_and_unknown_keys() {
    let cfg = UNetConfig::preset("small-separate").unwrap();
    let j = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<UNetConfig>(&j).unwrap(), cfg);
    let t = toml::to_string(&cfg).unwrap();
    assert_eq!(toml::from_str::<UNetConfig>(&t).unwrap(), cfg);

    // Omitted keys take the documented defaults (the paper's multistage model).
    let c: UNetConfig = toml::from_str("decoder_channels = [128]\nresample = \"plain\"").unwrap();
    assert_eq!(c, UNetConfig { decoder_channels: vec![128], resample: Resample::Plain, ..UNetConfig::default() });

    let e = serde_json::from_str::<UNetConfig>(r#"{"base_channels": 64, "num_res_block": 2}"#).unwrap_err();
    assert!(e.to_string().contains("num_res_block"), "{e}");
    let e = toml::from_str::<UNetConfig>("base_channels = 64\nchanel_mult = [1, 2]").unwrap_err();
    assert!(e.to_string().contains("chanel_mult"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Report

#[test]
fn report_hand_computed_tiny() {
    // 1x8x8 input, base 4, one level (no resampling), 1 block, no attention at any level (the
    // middle attention is always there), decoder 4, sinusoid dim 4, temb 16. N = 64 pixels.
    let cfg = UNetConfig {
        in_channels: 1,
        resolution: 8,
        base_channels: 4,
        channel_mult: vec![1],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        resample: Resample::Plain,
        input_pyramid: false,
        embedding_dim: Some(4),
        decoder_channels: vec![4],
        ..UNetConfig::default()
    };
    // FLOPs (2 x MACs):
    //  embedding: dense 4->16: 2*64 = 128; dense 16->16: 2*256 = 512             ->    640
    //  conv_in 1->4, 3x3 at 8x8: 2*9*1*4*64                                     ->  4,608
    //  res block 4->4: conv0 2*9*4*4*64 = 18,432; temb proj 2*16*4 = 128;
    //                  conv1 18,432                                              -> 36,992
    //  encoder: 1 level block + 2 middle blocks = 3 * 36,992                     -> 110,976
    //  middle attention C=4: q,k,v 2*4*12*64 = 6,144; out 2*4*4*64 = 2,048;
    //                  two N x N x C matmuls 2*2*64*64*4 = 65,536                -> 73,728
    //  encoder total = 640 + 4,608 + 110,976 + 73,728                            = 189,952
    //  decoder: 2 blocks 8->4 (concat h, skip): conv0 2*9*8*4*64 = 36,864; proj 128;
    //           conv1 18,432; 1x1 skip 2*8*4*64 = 4,096 -> 59,520 each           -> 119,040
    //           conv_out 4->1: 2*9*4*64                                         ->  4,608
    //  decoder total                                                             = 123,648
    // Params: embedding 80 + 272 = 352; conv_in 40; block 4->4: 8+148+68+8+148 = 380;
    //  attention 8 + 60 + 20 = 88; encoder = 352 + 40 + 3*380 + 88 = 1,620.
    //  decoder block 8->4: 16+292+68+8+148+36 = 568; x2 + GN 8 + conv_out 37 = 1,181.
    let r = report(&cfg, &[0.0, 1.0]).unwrap();
    assert_eq!((r.encoder_gflops * 1e9).round(), 189_952.0);
    assert_eq!((r.decoder_gflops[0] * 1e9).round(), 123_648.0);
    assert_eq!((r.stage_gflops[0] * 1e9).round(), 313_600.0);
    assert_eq!(r.encoder_params, 1_620);
    assert_eq!(r.decoder_params, vec![1_181]);
    assert_eq!(r.total_params, 2_801);
    let (vs, _net) = build(&cfg);
    assert_eq!(vs.variables().values().map(|t| t.numel()).sum::<usize>(), 2_801);
    assert!((r.weighted_gflops - r.stage_gflops[0]).abs() < 1e-15);
}

#[test]
fn report_interval_weighting_and_display() {
    let cfg = UNetConfig::preset("cifar10-multistage").unwrap();
    let b = [0.0, 0.442, 0.6308, 1.0];
    let r = report(&cfg, &b).unwrap();
    let w = [0.442, 0.6308 - 0.442, 1.0 - 0.6308];
    let want: f64 = r.stage_gflops.iter().zip(w).map(|(g, w)| g * w).sum();
    assert!((r.weighted_gflops - want).abs() < 1e-9);
    assert_eq!(report(&cfg, &[0.442, 0.6308]).unwrap(), r);
    assert!(report(&cfg, &[0.5]).is_err());
    assert!(report(&cfg, &[0.7, 0.6]).is_err());
    let s = r.to_string();
    assert!(s.contains("237169337") && s.contains("169478467"), "{s}");
    let j = serde_json::to_string(&r).unwrap();
    assert!(j.contains("\"stage_gflops\""));
    println!("{r}");
}

/// Times one training step (forward + backward) of `reference-6.5m` at batch 32 on 2 threads.
/// `cargo test --release --test nn -- --ignored --nocapture bench_reference`
#[test]
#[ignore]
fn bench_reference_train_step() {
    tch::set_num_threads(2);
    let scale: f64 = std::env::var("MSDIFF_BENCH_INIT_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let cfg = UNetConfig { init_scale: scale, ..UNetConfig::preset("reference-6.5m").unwrap() };
    let (_vs, net) = build(&cfg);
    let x = Tensor::randn([32, 3, 32, 32], (Kind::Float, Device::Cpu));
    let t = Tensor::rand([32], (Kind::Float, Device::Cpu)) * 999.0;
    let st = Tensor::zeros([32], (Kind::Int64, Device::Cpu));
    // Process CPU time (user + system, in clock ticks of 10 ms) from /proc/self/stat: with other
    // jobs on the machine, wall time measures the contention; CPU time / 2 approximates an idle run.
    let cpu = || -> f64 {
        let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let f: Vec<&str> = s.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) / 100.0
            + f.get(12).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) / 100.0
    };
    let mut times = Vec::new();
    let mut cpus = Vec::new();
    for i in 0..4 {
        let c0 = cpu();
        let t0 = std::time::Instant::now();
        let loss = (net.forward(&x, &t, &st, true).unwrap() - &x).square().mean(Kind::Float);
        loss.backward();
        let dt = t0.elapsed().as_secs_f64();
        let dc = cpu() - c0;
        if i > 0 {
            times.push(dt); // first run is warm-up
            cpus.push(dc);
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    cpus.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "reference-6.5m b32 fwd+bwd, 2 threads: wall {:?} s, median {:.3} s; CPU median {:.2} s",
        times, times[1], cpus[1]
    );
}

// ---------------------------------------------------------------------------------------------
// Resampling filters

#[test]
fn fir_resampling_matches_upfirdn2d() {
    use msdiff::nn::layers::{downsample, upsample};
    // 1-D kernel [1,3,3,1]/8 per axis. upfirdn2d(x, k, down=2, pad=(1,1)): an impulse at x[2]
    // reaches out[0] with k[3] = 1/8 and out[1] with k[1] = 3/8 (out[n] = sum_j x[2n+j-1] k[j]).
    let x = Tensor::zeros([1, 1, 8, 8], (Kind::Float, Device::Cpu));
    let _ = x.get(0).get(0).get(2).get(2).fill_(1.0);
    let y = downsample(&x, Resample::Fir);
    assert_eq!(y.size(), [1, 1, 4, 4]);
    let prof = [1.0 / 8.0, 3.0 / 8.0, 0.0, 0.0];
    for i in 0..4 {
        for j in 0..4 {
            let want = prof[i] * prof[j];
            let got = y.double_value(&[0, 0, i as i64, j as i64]);
            assert!((got - want).abs() < 1e-7, "down ({i},{j}): {got} vs {want}");
        }
    }
    // upfirdn2d(x, 4k, up=2, pad=(2,1)): an impulse at x[1] spreads to out[1..=4] as
    // 2*[1,3,3,1]/8 per axis.
    let x = Tensor::zeros([1, 1, 4, 4], (Kind::Float, Device::Cpu));
    let _ = x.get(0).get(0).get(1).get(1).fill_(1.0);
    let y = upsample(&x, Resample::Fir);
    assert_eq!(y.size(), [1, 1, 8, 8]);
    let prof = [0.0, 0.25, 0.75, 0.75, 0.25, 0.0, 0.0, 0.0];
    for i in 0..8 {
        for j in 0..8 {
            let want = prof[i] * prof[j];
            let got = y.double_value(&[0, 0, i as i64, j as i64]);
            assert!((got - want).abs() < 1e-7, "up ({i},{j}): {got} vs {want}");
        }
    }
    // Constants are preserved away from the border by both filters and by the plain ones.
    let c = Tensor::ones([1, 2, 8, 8], (Kind::Float, Device::Cpu));
    for kind in [Resample::Fir, Resample::Plain] {
        let d = downsample(&c, kind).narrow(2, 1, 2).narrow(3, 1, 2);
        let u = upsample(&c, kind).narrow(2, 2, 12).narrow(3, 2, 12);
        assert!(max_abs_diff(&d, &d.ones_like()) < 1e-6);
        assert!(max_abs_diff(&u, &u.ones_like()) < 1e-6);
    }
}

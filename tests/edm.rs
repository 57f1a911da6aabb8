//! The paper's EDM system (docs/EDM.md): EDM's multi-stage DDPM++ network (counts, names, a
//! forward pass against the official code), its training recipe (stage policy, lr and EMA ramps,
//! augmentation) end to end on the CPU, and the Table 4 clustering baselines.

mod common;

use msdiff::nn::{report, Family, SongUNet, StagedNetwork, UNetConfig};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn build(cfg: &UNetConfig) -> (VarStore, SongUNet) {
    let vs = VarStore::new(Device::Cpu);
    let net = SongUNet::new(&vs.root(), cfg).unwrap();
    (vs, net)
}

fn numel_under(vs: &VarStore, prefixes: &[&str]) -> u64 {
    msdiff::model::numel(&msdiff::model::params_under(vs, prefixes))
}

// ---------------------------------------------------------------------------------------------
// Counts (docs/METHOD.md §10; ../shared/docs/official-architectures.md §1: the official model
// instantiated and counted)

#[test]
fn edm_presets_match_the_official_counts_analytic() {
    let r = report(&UNetConfig::preset("cifar10-edm-multistage").unwrap(), &[0.442, 0.636]).unwrap();
    assert_eq!(r.embedding_params, 329_856);
    assert_eq!(r.encoder_params, 19_632_768);
    assert_eq!(r.decoder_params, vec![68_284_547, 36_101_123, 4_774_947]);
    assert_eq!(r.stage_params, vec![87_917_315, 55_733_891, 24_407_715]);
    assert_eq!(r.total_params, 128_793_385);
    // Forward GFLOP per image, the official model counted with the same rules: 71.50 / 42.38 /
    // 15.45, shared part 13.76 (given to two decimals, hence +-0.005).
    for (g, want) in r.stage_gflops.iter().zip([71.50, 42.38, 15.45]) {
        assert!((g - want).abs() < 0.005, "stage GFLOP {g} vs {want}");
    }
    assert!((r.encoder_gflops - 13.76).abs() < 0.005, "{}", r.encoder_gflops);

    let u = report(&UNetConfig::preset("cifar10-edm-unified").unwrap(), &[]).unwrap();
    assert_eq!(u.total_params, 55_733_891);
    assert!((u.stage_gflops[0] - 42.38).abs() < 0.005);
    let s = report(&UNetConfig::preset("cifar10-edm-separate").unwrap(), &[0.442, 0.636]).unwrap();
    assert_eq!(s.stage_params, vec![87_917_315, 55_733_891, 24_407_715]);
    assert_eq!(s.total_params, 87_917_315 + 55_733_891 + 24_407_715);

    // Without the augment-label input (EDM with augmentation off).
    let no_aug = |name: &str| UNetConfig { augment_dim: 0, ..UNetConfig::preset(name).unwrap() };
    assert_eq!(report(&no_aug("cifar10-edm-multistage"), &[0.442, 0.636]).unwrap().total_params, 128_792_233);
    assert_eq!(report(&no_aug("cifar10-edm-unified"), &[]).unwrap().total_params, 55_732_739);
}

#[test]
fn edm_multistage_varstore_has_the_official_counts_and_names() {
    // Builds the real 129 M-parameter model (~0.5 GB of f32, no forward pass).
    let cfg = UNetConfig::preset("cifar10-edm-multistage").unwrap();
    let (vs, _net) = build(&cfg);
    assert_eq!(numel_under(&vs, &["map_", "enc."]), 19_632_768);
    let decs: Vec<u64> = (0..3).map(|j| numel_under(&vs, &[&SongUNet::decoder_prefix(&cfg, j)])).collect();
    assert_eq!(decs, vec![68_284_547, 36_101_123, 4_774_947]);
    let total: u64 = vs.variables().values().map(|t| t.numel() as u64).sum();
    assert_eq!(total, 128_793_385);
    let v = vs.variables();
    for (name, shape) in [
        ("map_augment.weight", vec![128, 9]),
        ("map_layer0.weight", vec![512, 128]),
        ("map_layer1.bias", vec![512]),
        ("enc.32x32_conv.weight", vec![128, 3, 3, 3]),
        ("enc.32x32_block0.skip.weight", vec![256, 128, 1, 1]),
        ("enc.16x16_down.conv0.weight", vec![256, 256, 3, 3]),
        ("enc.16x16_block3.qkv.weight", vec![768, 256, 1, 1]),
        ("enc.8x8_block3.affine.weight", vec![256, 512]),
        ("decs.0.8x8_in0.qkv.weight", vec![768, 256, 1, 1]),
        ("decs.0.8x8_in1.conv1.weight", vec![256, 256, 3, 3]),
        ("decs.0.8x8_block0.conv0.weight", vec![384, 512, 3, 3]),
        ("decs.1.16x16_up.skip.weight", vec![256, 256, 1, 1]),
        ("decs.1.16x16_block4.proj.weight", vec![256, 256, 1, 1]),
        ("decs.2.32x32_block4.conv0.weight", vec![32, 32 + 128, 3, 3]), // the last skip: enc.32x32_conv
        ("decs.2.32x32_aux_norm.weight", vec![32]),
        ("decs.2.32x32_aux_conv.weight", vec![3, 32, 3, 3]),
    ] {
        let t = v.get(name).unwrap_or_else(|| panic!("no variable {name}"));
        assert_eq!(t.size(), shape, "{name}");
    }
    assert!(!v.contains_key("decs.0.16x16_block3.qkv.weight"), "attention only on the last block of a decoder level");
    assert!(!v.contains_key("enc.8x8_block0.qkv.weight"), "no attention at 8x8 in the encoder");
    // The official initialisation: xavier_uniform, conv1 / proj / aux_conv scaled by 1e-5, qkv by sqrt(0.2).
    let bound = |fi: f64, fo: f64| (6.0 / (fi + fo)).sqrt();
    let max = |n: &str| v[n].abs().max().double_value(&[]);
    let b = bound(256.0 * 9.0, 256.0 * 9.0);
    assert!(max("enc.16x16_block0.conv0.weight") <= b && max("enc.16x16_block0.conv0.weight") > 0.9 * b);
    assert!(max("enc.16x16_block0.conv1.weight") <= 1e-5 * b);
    let q = 0.2f64.sqrt() * bound(256.0, 768.0);
    assert!(max("enc.16x16_block0.qkv.weight") <= q && max("enc.16x16_block0.qkv.weight") > 0.9 * q);
    assert_eq!(max("enc.16x16_block0.conv0.bias"), 0.0);
}

#[test]
fn tiny_edm_analytic_counts_match_varstore() {
    for cfg in [
        UNetConfig::preset("tiny-edm").unwrap(),
        UNetConfig { architecture: msdiff::nn::Architecture::Separate, ..UNetConfig::preset("tiny-edm").unwrap() },
        UNetConfig { decoder_channels: vec![16], augment_dim: 0, ..UNetConfig::preset("tiny-edm").unwrap() },
        UNetConfig {
            resample: msdiff::nn::Resample::Fir,
            channel_mult: vec![1, 2, 2],
            attn_resolutions: vec![8, 4],
            ..UNetConfig::preset("tiny-edm").unwrap()
        },
    ] {
        let s = cfg.num_stages();
        let r = report(&cfg, &(1..s).map(|j| j as f64 / s as f64).collect::<Vec<_>>()).unwrap();
        let (vs, _net) = build(&cfg);
        let stored: u64 = vs.variables().values().map(|t| t.numel() as u64).sum();
        assert_eq!(stored, r.total_params, "{cfg:?}");
        for j in 0..s {
            assert_eq!(numel_under(&vs, &[&SongUNet::decoder_prefix(&cfg, j)]), r.decoder_params[j], "decoder {j} of {cfg:?}");
        }
    }
}

#[test]
fn info_prints_the_edm_counts_and_gflops() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_msdiff"))
        .args(["--threads", "1", "info", "--preset", "cifar10-edm-multistage"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for want in ["128793385", "87917315", "55733891", "24407715", "19632768", "71.50", "42.38", "15.45"] {
        assert!(text.contains(want), "msdiff info lacks {want}:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Forward pass against the official code

/// `tests/fixtures/edm-ddpmpp-reference.py`'s weight formula.
fn formula(name: &str, k: usize, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let s = (Tensor::arange(n, (Kind::Double, Device::Cpu)) * 0.37 + (1.7 * k as f64 + 0.1)).sin();
    let v = if shape.len() >= 2 {
        s * (3.0 / (n / shape[0]) as f64).sqrt()
    } else if name.contains("norm") && name.ends_with("weight") {
        s * 0.2 + 1.0
    } else {
        s * 0.1
    };
    v.to_kind(Kind::Float).reshape(shape)
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn forward_matches_the_official_multistage_unet() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/edm-ddpmpp-reference.json")).unwrap();
    let f: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The fixture's CONFIG in msdiff's terms.
    let cfg = UNetConfig {
        in_channels: 3,
        resolution: 8,
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        dropout: 0.0,
        decoder_channels: vec![12, 8, 4],
        ..UNetConfig::preset("cifar10-edm-multistage").unwrap()
    };
    assert_eq!(cfg.family, Family::Ddpmpp);
    let (vs, net) = build(&cfg);
    // Same names and shapes as the official state dict (sorted, buffers left out).
    let mut ours: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    ours.sort_by(|a, b| a.0.cmp(&b.0));
    let theirs = f["params"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    tch::no_grad(|| {
        for (k, ((name, t), p)) in ours.iter_mut().zip(theirs).enumerate() {
            assert_eq!(name, p[0].as_str().unwrap());
            let shape: Vec<i64> = p[1].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
            assert_eq!(t.size(), shape, "{name}");
            t.copy_(&formula(name, k, &shape));
        }
    });
    let x = Tensor::from_slice(&floats(&f["x"])).reshape([2, 3, 8, 8]);
    let noise = Tensor::from_slice(&floats(&f["noise_labels"]));
    let aug = Tensor::from_slice(&floats(&f["augment"])).reshape([2, 9]);
    for j in 0..3usize {
        for (key, labels) in [(format!("stage{j}_augment"), Some(&aug)), (format!("stage{j}_no_augment"), None)] {
            let want = Tensor::from_slice(&floats(&f["outputs"][&key])).reshape([2, 3, 8, 8]);
            let got = tch::no_grad(|| net.forward_stage(&x, &noise, labels, j, false));
            let scale = want.abs().max().double_value(&[]);
            let err = (&got - &want).abs().max().double_value(&[]);
            // f32 on both sides, different convolution / GEMM reduction orders, ~40 layers
            // deep: 1e-5 of the output scale.
            assert!(scale > 0.1, "{key}: output too small to compare ({scale})");
            assert!(err <= 1e-5 * scale, "{key}: max |msdiff - official| = {err}, scale {scale}");
        }
    }
    // Per-sample routing equals per-stage runs, labels included.
    let stage = Tensor::from_slice(&[2i64, 0]);
    let y = tch::no_grad(|| net.forward(&x, &noise, &stage, Some(&aug), false)).unwrap();
    for (i, j) in [(0i64, 2usize), (1, 0)] {
        let yi = tch::no_grad(|| net.forward_stage(&x.narrow(0, i, 1), &noise.narrow(0, i, 1), Some(&aug.narrow(0, i, 1)), j, false));
        assert!((y.narrow(0, i, 1) - yi).abs().max().double_value(&[]) < 1e-5);
    }
    // No labels = zero labels (map_augment has no bias), as EDM samples.
    let z = tch::no_grad(|| net.forward_augmented(&x, &noise, &stage, Some(&aug.zeros_like()), false)).unwrap();
    let n = tch::no_grad(|| net.forward_staged(&x, &noise, &stage, false)).unwrap();
    assert!((z - n).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn an_exported_state_dict_loads_by_its_official_names() {
    // What docs/EDM.md's export writes: `model.`-prefixed names plus resample_filter buffers.
    let cfg = UNetConfig::preset("tiny-edm").unwrap();
    tch::manual_seed(1);
    let src = msdiff::model::Network::new(&cfg, Device::Cpu).unwrap();
    let mut named: Vec<(String, Tensor)> = src.params().into_iter().map(|(n, t)| (format!("model.{n}"), t.detach().copy())).collect();
    named.push(("model.enc.8x8_down.conv0.resample_filter".into(), Tensor::ones([1, 1, 2, 2], (Kind::Float, Device::Cpu)) / 4.0));
    let dir = common::tmp("edm-export");
    let path = dir.join("official.safetensors");
    Tensor::write_safetensors(&named.iter().map(|(n, t)| (n.as_str(), t.shallow_clone())).collect::<Vec<_>>(), &path).unwrap();
    tch::manual_seed(2);
    let dst = msdiff::model::Network::new(&cfg, Device::Cpu).unwrap();
    dst.load_safetensors(&path).unwrap();
    for ((n, a), (_, b)) in src.params().iter().zip(dst.params().iter()) {
        assert!(a.equal(b), "{n}");
    }
    // A state dict of another layout is refused with a message naming the difference.
    let other = msdiff::model::Network::new(&UNetConfig::preset("tiny").unwrap(), Device::Cpu).unwrap();
    let e = other.load_safetensors(&path).unwrap_err().to_string();
    assert!(e.contains("another model configuration"), "{e}");
}

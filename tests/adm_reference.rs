//! The paper's LDM network family (`family = "adm"`, openaimodel's U-Net with a shared encoder
//! and one decoder per stage) against the official code: names, shapes, parameter counts and
//! forward passes of `UNetModel_multistage` and the unified `UNetModel` of the multi-stage
//! authors' latent-diffusion fork, from `tests/fixtures/adm-unet-reference.json` (made by
//! `tests/fixtures/adm-unet-reference.py`; its docstring gives the command, the weight formula
//! and the inputs).

use msdiff::model::Network;
use msdiff::nn::{Family, UNetConfig};
use std::collections::BTreeSet;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn fixture() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adm-unet-reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture's weight formula for the k-th tensor of the official sorted state dict.
fn formula(k: usize, shape: &[i64], groupnorm_weight: bool) -> Tensor {
    let n: i64 = shape.iter().product();
    let s = (Tensor::arange(n, (Kind::Double, Device::Cpu)) * 0.37 + (1.7 * k as f64 + 0.1)).sin();
    let v = if shape.len() >= 2 {
        s * (3.0 / (n / shape[0]) as f64).sqrt()
    } else if groupnorm_weight {
        s * 0.2 + 1.0
    } else {
        s * 0.1
    };
    v.to_kind(Kind::Float).reshape(shape)
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

/// The fixture's configuration in msdiff's terms; `decoder_channels` decides multistage (three
/// entries) or unified (one).
fn config(decoder_channels: Vec<usize>) -> UNetConfig {
    UNetConfig {
        family: Family::Adm,
        in_channels: 3,
        resolution: 16,
        base_channels: 32,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        // Side lengths in msdiff: the official downsample factor 2 at 16x16 is side 8.
        attn_resolutions: vec![8],
        decoder_channels,
        head_channels: 32,
        // The official decoder loop never resets its downsample factor: only decoder 0 attends.
        attn_first_decoder_only: true,
        norm_max_groups: 32,
        norm_eps: 1e-5,
        dropout: 0.0,
        ..Default::default()
    }
}

/// `(official name, shape)` in the fixture's (sorted official) order.
fn official_params(model: &serde_json::Value) -> Vec<(String, Vec<i64>)> {
    model["params"].as_array().unwrap().iter().map(|p| (p[0].as_str().unwrap().to_string(), ints(&p[1]))).collect()
}

/// msdiff's network with every variable set by the formula, through its official name.
fn build(model: &serde_json::Value, cfg: &UNetConfig) -> Network {
    let net = Network::new(cfg, Device::Cpu).unwrap();
    let vars = net.vs.variables();
    let official = official_params(model);
    // Same set of names (after the unified model's mapping) and the same number of tensors.
    let ours: BTreeSet<String> = vars.keys().cloned().collect();
    let theirs: BTreeSet<String> = official.iter().map(|(n, _)| msdiff::nn::adm::msdiff_name(n)).collect();
    assert_eq!(theirs.len(), official.len(), "the name mapping merges official names");
    assert_eq!(
        ours,
        theirs,
        "only in msdiff: {:?}; only official: {:?}",
        ours.difference(&theirs).collect::<Vec<_>>(),
        theirs.difference(&ours).collect::<Vec<_>>()
    );
    let gn: BTreeSet<&str> =
        model["groupnorm_weights"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    tch::no_grad(|| {
        for (k, (name, shape)) in official.iter().enumerate() {
            let t = &vars[&msdiff::nn::adm::msdiff_name(name)];
            assert_eq!(t.size(), *shape, "{name}");
            let mut t = t.shallow_clone();
            t.copy_(&formula(k, shape, gn.contains(name.as_str())));
        }
    });
    net
}

fn numel_under(net: &Network, prefixes: &[&str]) -> u64 {
    msdiff::model::numel(&net.params_under(prefixes))
}

fn x_of(f: &serde_json::Value) -> Tensor {
    Tensor::from_slice(&floats(&f["x"])).reshape(ints(&f["x_shape"]))
}

/// max |got - want| / max |want|.
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let scale = want.abs().max().double_value(&[]);
    assert!(scale > 0.1, "output too small to compare ({scale})");
    (got - want).abs().max().double_value(&[]) / scale
}

// f32 on both sides, about 30 layers deep (input conv, 3 encoder blocks, middle res-attn-res, 4
// decoder blocks, two of them with attention in decoder 0, output head) with formula weights of
// unit gain. Measured with the official code: its f32 outputs differ from its own float64 run by
// 3e-6 .. 1e-5 of the output scale (the rounding noise of one f32 implementation). msdiff (which
// computes the embedding frequencies in float32 as the official code does) measured 2.5e-6,
// 4.5e-6, 7.6e-6 per stage, 0 for the unified model, and up to 2.0e-5 for a row of a mixed batch
// (other batch sizes per decoder change the kernels' blocking). 3e-5 covers that and still
// fails on a subtle slip: GroupNorm eps 1e-6 instead of 1e-5 moves the official outputs by
// 8e-5 .. 4e-4, frequencies computed in float64 by 4e-6 .. 1.1e-5 (not caught), a wrong layer by O(1).
const TOL: f64 = 3e-5;

#[test]
fn multistage_forward_matches_the_official_unet_per_stage() {
    let f = fixture();
    let m = &f["multistage"];
    let net = build(m, &config(vec![64, 32, 32]));
    let x = x_of(&f);
    let shape = x.size();
    for (j, (ts, want)) in m["timesteps"].as_array().unwrap().iter().zip(m["outputs"].as_array().unwrap()).enumerate() {
        let t: Vec<f32> = ints(ts).iter().map(|&v| v as f32).collect();
        let noise = Tensor::from_slice(&t);
        let stage = Tensor::full([t.len() as i64], j as i64, (Kind::Int64, Device::Cpu));
        let got = tch::no_grad(|| net.net.forward(&x, &noise, &stage, false)).unwrap();
        let want = Tensor::from_slice(&floats(want)).reshape(&shape);
        let e = rel_err(&got, &want);
        println!("stage {j}: max |msdiff - official| / max |official| = {e:.3e}");
        assert!(e <= TOL, "stage {j}: relative error {e:.3e}");
    }
}

#[test]
fn multistage_routes_a_mixed_batch_per_sample() {
    let f = fixture();
    let m = &f["multistage"];
    let net = build(m, &config(vec![64, 32, 32]));
    let x = x_of(&f);
    let shape = x.size();
    let ts: Vec<Vec<i64>> = m["timesteps"].as_array().unwrap().iter().map(ints).collect();
    let outs: Vec<Tensor> =
        m["outputs"].as_array().unwrap().iter().map(|o| Tensor::from_slice(&floats(o)).reshape(&shape)).collect();
    // Row r takes sample r of stage plan[r]'s run: all three decoders and a repeated one.
    let plan = [2usize, 0, 1, 0];
    let noise = Tensor::from_slice(&plan.iter().enumerate().map(|(r, &j)| ts[j][r] as f32).collect::<Vec<_>>());
    let stage = Tensor::from_slice(&plan.iter().map(|&j| j as i64).collect::<Vec<_>>());
    let got = tch::no_grad(|| net.net.forward(&x, &noise, &stage, false)).unwrap();
    for (r, &j) in plan.iter().enumerate() {
        let r = r as i64;
        let e = rel_err(&got.narrow(0, r, 1), &outs[j].narrow(0, r, 1));
        println!("mixed batch row {r} (stage {j}): relative error {e:.3e}");
        assert!(e <= TOL, "row {r}, stage {j}: relative error {e:.3e}");
    }
}

#[test]
fn unified_forward_matches_the_official_unet() {
    let f = fixture();
    let u = &f["unified"];
    let net = build(u, &config(vec![32]));
    let x = x_of(&f);
    let t: Vec<f32> = ints(&u["timesteps"]).iter().map(|&v| v as f32).collect();
    let stage = Tensor::zeros([t.len() as i64], (Kind::Int64, Device::Cpu));
    let got = tch::no_grad(|| net.net.forward(&x, &Tensor::from_slice(&t), &stage, false)).unwrap();
    let want = Tensor::from_slice(&floats(&u["outputs"])).reshape(x.size());
    let e = rel_err(&got, &want);
    println!("unified: max |msdiff - official| / max |official| = {e:.3e}");
    assert!(e <= TOL, "unified: relative error {e:.3e}");
}

#[test]
fn names_and_counts_are_the_official_ones() {
    let f = fixture();
    let m = &f["multistage"];
    let net = Network::new(&config(vec![64, 32, 32]), Device::Cpu).unwrap();
    // The multi-stage model keeps the official names as they are.
    let ours: Vec<(String, Vec<i64>)> = net.params().into_iter().map(|(n, t)| (n, t.size())).collect();
    assert_eq!(ours, official_params(m));
    // What the official `_log_param` prints: encoder = input_blocks + middle_block (the time
    // embedding is counted in the total only), stage j = encoder + de_modules.j + outs.j.
    let encoder = numel_under(&net, &["input_blocks.", "middle_block."]);
    assert_eq!(encoder, m["encoder_params"].as_u64().unwrap());
    for j in 0..3 {
        let decoder = numel_under(&net, &[&format!("de_modules.{j}."), &format!("outs.{j}.")]);
        assert_eq!(decoder, m["decoder_params"][j].as_u64().unwrap(), "decoder {j}");
        assert_eq!(encoder + decoder, m["stage_params"][j].as_u64().unwrap(), "stage {j}");
        // The quirk the fixture records from the built official modules.
        let attends = net.params_under(&[&format!("de_modules.{j}.")]).iter().any(|(n, _)| n.contains(".qkv."));
        assert_eq!(attends, m["decoder_has_attention"][j].as_bool().unwrap(), "decoder {j} attention");
    }
    assert_eq!(msdiff::model::numel(&net.params()), m["total_params"].as_u64().unwrap());
    // msdiff's analytic report agrees; its encoder and stages include the time embedding.
    let r = msdiff::nn::report(&config(vec![64, 32, 32]), &[0.442, 0.631]).unwrap();
    let emb = numel_under(&net, &["time_embed."]);
    assert_eq!(r.embedding_params, emb);
    assert_eq!(r.encoder_params, encoder + emb);
    for j in 0..3 {
        assert_eq!(r.decoder_params[j], m["decoder_params"][j].as_u64().unwrap(), "report decoder {j}");
        assert_eq!(r.stage_params[j], m["stage_params"][j].as_u64().unwrap() + emb, "report stage {j}");
    }
    assert_eq!(r.total_params, m["total_params"].as_u64().unwrap());
    // Unified: the same after `output_blocks.` -> `de_modules.0.` and `out.` -> `outs.0.`.
    let u = &f["unified"];
    let net = Network::new(&config(vec![32]), Device::Cpu).unwrap();
    let ours: BTreeSet<(String, Vec<i64>)> = net.params().into_iter().map(|(n, t)| (n, t.size())).collect();
    let theirs: BTreeSet<(String, Vec<i64>)> =
        official_params(u).into_iter().map(|(n, s)| (msdiff::nn::adm::msdiff_name(&n), s)).collect();
    assert_eq!(ours, theirs);
    assert_eq!(numel_under(&net, &["input_blocks.", "middle_block."]), u["encoder_params"].as_u64().unwrap());
    assert_eq!(msdiff::model::numel(&net.params()), u["total_params"].as_u64().unwrap());
    assert_eq!(msdiff::nn::report(&config(vec![32]), &[]).unwrap().total_params, u["total_params"].as_u64().unwrap());
}

//! Per-sample routing (nn::StageRoute: one permutation of the batch by stage, a view per
//! decoder, one un-permutation), in all three families, multistage and separate: a mixed,
//! unsorted batch gives the same outputs **and the same parameter gradients** as running each
//! stage's samples on their own, and a stage without samples leaves its decoder without a
//! gradient.

use msdiff::model::Network;
use msdiff::nn::{Architecture, StagedNetwork, UNetConfig};
use msdiff::train::optim::gradients;
use tch::{Device, Kind, Tensor};

/// Relative tolerance. Both computations are the same float32 ops on the same rows; what differs is
/// the batch each kernel sees (blocking of the convolutions, observed ~1e-7 relative on outputs)
/// and, for the weight gradients, the order of the sum over samples: the mixed batch sums all of a
/// shared layer's samples in one reduction, the reference sums per stage and then adds the stages.
/// With float32's 6e-8 unit roundoff and reductions over a few thousand terms (10 samples x 16 x 16
/// positions) that error is bounded well below 1e-4 of the summed terms' size (observed up to
/// 1.1e-5, printed per case with --nocapture). A gradient far smaller than the net's largest is a
/// sum that cancels (a bias added just before a GroupNorm): its rounding error scales with the
/// terms, not with the result, so it is measured against 1 % of the largest gradient of the net
/// ([`FLOOR`]).
const TOL: f64 = 1e-4;
const FLOOR: f64 = 1e-2;

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn check(name: &str, cfg: UNetConfig, stages: &[i64]) {
    tch::manual_seed(11);
    let net = Network::new(&cfg, Device::Cpu).unwrap();
    let params = net.params();
    // Move every variable off its (partly zero) initialisation so that every layer matters.
    tch::no_grad(|| {
        for (_, p) in &params {
            let r = p.randn_like() * 0.05;
            let _ = p.shallow_clone().g_add_(&r);
        }
    });
    let b = stages.len() as i64;
    let (c, r) = (cfg.in_channels as i64, cfg.resolution as i64);
    let x = Tensor::randn([b, c, r, r], (Kind::Float, Device::Cpu));
    let label = Tensor::rand([b], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let aug = (cfg.augment_dim > 0).then(|| Tensor::randn([b, cfg.augment_dim as i64], (Kind::Float, Device::Cpu)));
    let w = x.randn_like();
    let stage = Tensor::from_slice(stages);

    // Routed: the whole mixed batch at once.
    let mixed = net.net.forward_augmented(&x, &label, &stage, aug.as_ref(), false).unwrap();
    let g_mixed = gradients(&(&mixed * &w).sum(Kind::Float), &params).unwrap();

    // Reference: each stage's samples alone (a batch of one stage is not routed).
    let mut reference = x.zeros_like();
    let mut losses = vec![];
    for j in 0..cfg.num_stages() as i64 {
        let rows: Vec<i64> = (0..b).filter(|&i| stages[i as usize] == j).collect();
        if rows.is_empty() {
            continue;
        }
        let idx = Tensor::from_slice(&rows);
        let pick = |t: &Tensor| t.index_select(0, &idx);
        let only = Tensor::full([rows.len() as i64], j, (Kind::Int64, Device::Cpu));
        let y = net.net.forward_augmented(&pick(&x), &pick(&label), &only, aug.as_ref().map(pick).as_ref(), false);
        let y = y.unwrap();
        losses.push((&y * pick(&w)).sum(Kind::Float));
        reference = reference.index_copy(0, &idx, &y);
    }
    let g_ref = gradients(&Tensor::stack(&losses, 0).sum(Kind::Float), &params).unwrap();

    let (d, scale) = (max_abs(&(&mixed - &reference)), max_abs(&reference));
    assert!(d <= TOL * scale, "{name}: outputs differ by {d:e} (scale {scale:e})");
    let largest = g_ref.iter().filter(|g| g.defined()).map(max_abs).fold(0f64, f64::max);
    assert!(largest > 0.0, "{name}: no gradient at all");
    let mut worst = 0f64;
    for ((n, _), (gm, gr)) in params.iter().zip(g_mixed.iter().zip(&g_ref)) {
        assert_eq!(gm.defined(), gr.defined(), "{name}: {n}: gradient defined in one computation only");
        if !gm.defined() {
            continue;
        }
        let (d, scale) = (max_abs(&(gm - gr)), max_abs(gr).max(FLOOR * largest));
        assert!(d <= TOL * scale, "{name}: {n}: gradients differ by {d:e} (scale {scale:e})");
        worst = worst.max(d / scale);
    }
    // Every stage present has a decoder with a gradient; an absent stage's decoder has none.
    for j in 0..cfg.num_stages() {
        let present = stages.contains(&(j as i64));
        let prefixes: Vec<String> = match (cfg.family, cfg.architecture) {
            (msdiff::nn::Family::Ncsnpp, _) => vec![format!("decoder.{j}.")],
            (msdiff::nn::Family::Ddpmpp, _) => vec![msdiff::nn::SongUNet::decoder_prefix(&cfg, j)],
            (msdiff::nn::Family::Adm, _) => msdiff::nn::AdmUNet::decoder_prefixes(&cfg, j).to_vec(),
        };
        for ((n, _), g) in params.iter().zip(&g_mixed) {
            if prefixes.iter().any(|p| n.starts_with(p.as_str())) {
                assert_eq!(g.defined(), present, "{name}: {n}: stage {j} present = {present}");
            }
        }
    }
    eprintln!("{name}: outputs {:.1e}, gradients {worst:.1e} (relative)", d / scale);
}

/// Unsorted batches: every stage present, and one stage absent.
const MIXED: [i64; 10] = [2, 0, 1, 2, 0, 0, 1, 2, 1, 0];
const ONE_ABSENT: [i64; 7] = [2, 0, 2, 0, 0, 2, 0];

fn presets() -> Vec<(String, UNetConfig)> {
    let mut v = vec![];
    for p in ["tiny", "tiny-edm", "tiny-ldm"] {
        let cfg = UNetConfig::preset(p).unwrap();
        v.push((p.to_string(), cfg.clone()));
        v.push((format!("{p} separate"), UNetConfig { architecture: Architecture::Separate, ..cfg }));
    }
    v
}

#[test]
fn routed_mixed_batch_equals_each_stage_alone_outputs_and_gradients() {
    for (name, cfg) in presets() {
        assert_eq!(cfg.num_stages(), 3, "{name}");
        check(&name, cfg.clone(), &MIXED);
        check(&format!("{name}, stage 1 absent"), cfg, &ONE_ABSENT);
    }
}

#[test]
fn a_batch_already_sorted_by_stage_routes_the_same() {
    let cfg = UNetConfig::preset("tiny").unwrap();
    check("tiny, sorted", cfg, &[0, 0, 1, 1, 1, 2]);
}

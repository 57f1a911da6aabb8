//! The paper's LDM network (docs/LATENT.md §6): LDM's ADM U-Net with a shared encoder and
//! per-stage decoders: the official counts and GFLOPs, the official state-dict names, the
//! official quirk, per-sample routing. (The forward pass against the official code itself is
//! `tests/adm_reference.rs`.)

use msdiff::nn::{report, AdmUNet, Architecture, UNetConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn numel_under(vs: &VarStore, prefixes: &[&str]) -> u64 {
    msdiff::model::numel(&msdiff::model::params_under(vs, prefixes))
}

fn decoder_numel(vs: &VarStore, cfg: &UNetConfig, j: usize) -> u64 {
    let p = AdmUNet::decoder_prefixes(cfg, j);
    numel_under(vs, &[&p[0], &p[1]])
}

/// The official cuts, steps 442 and 631 of 1000, as fractions of the chain.
const CUTS: [f64; 2] = [0.442, 0.631];

// The expected numbers are ../shared/docs/official-architectures.md §2: the official
// `UNetModel_multistage` (LucasYFL/Multistage_Diffusion, celebahq-ldm-vq-4_multistage224-256-192-128.yaml)
// and LDM's `UNetModel` (celebahq-ldm-vq-4.yaml) instantiated and counted with
// `sum(p.numel())`; GFLOPs there are 2 x multiply-adds of convs, linears and the two attention
// products, given to two decimals (hence +-0.005); torchstat numbers are the paper's Table 2 units.

#[test]
fn ldm_presets_match_the_official_counts_analytic() {
    let r = report(&UNetConfig::preset("celebahq-ldm-multistage").unwrap(), &CUTS).unwrap();
    assert_eq!(r.embedding_params, 1_005_312);
    assert_eq!(r.encoder_params, 107_911_776, "time MLP + input blocks + middle block");
    assert_eq!(r.decoder_params, vec![208_055_363, 115_918_147, 61_956_163]);
    assert_eq!(r.stage_params, vec![315_967_139, 223_829_923, 169_867_939]);
    assert_eq!(r.total_params, 493_841_449);
    // The document's 240.89 / 156.42 are 240.8848 / 156.4149 rounded to three and then to two
    // decimals (240.885 -> 240.89), so allow that double rounding (< 0.006).
    for (g, want) in r.stage_gflops.iter().zip([240.89, 156.42, 106.82]) {
        assert!((g - want).abs() < 0.006, "stage GFLOP {g} vs {want}");
    }
    assert!((r.encoder_gflops - 55.94).abs() < 0.005, "{}", r.encoder_gflops);
    // torchstat units: 105.82 / 72.97 / 48.17 per stage; weighted by the exact interval lengths
    // 0.442 / 0.189 / 0.369 that is 78.34 (the paper's 76.19 rounds the weights to 0.4 / 0.2 / 0.4).
    for (g, want) in r.torchstat_stage_gflops.iter().zip([105.82, 72.97, 48.17]) {
        assert!((g - want).abs() < 0.005, "torchstat GFLOP {g} vs {want}");
    }
    assert!((r.torchstat_weighted_gflops - 78.34).abs() < 0.005, "{}", r.torchstat_weighted_gflops);
    let paper: f64 = r.torchstat_stage_gflops.iter().zip([0.4, 0.2, 0.4]).map(|(g, w)| g * w).sum();
    assert!((paper - 76.19).abs() < 0.005, "{paper}");

    let u = report(&UNetConfig::preset("celebahq-ldm-unified").unwrap(), &[]).unwrap();
    assert_eq!(u.total_params, 274_056_163);
    assert!((u.stage_gflops[0] - 202.40).abs() < 0.005, "{}", u.stage_gflops[0]);
    assert!((u.torchstat_stage_gflops[0] - 88.39).abs() < 0.005, "{}", u.torchstat_stage_gflops[0]);

    // Attention in every decoder (msdiff's documented variant; the expected numbers come from an
    // independent Python count of the official layout with the quirk switched off, the same
    // script that reproduces every official number above exactly: decoders 1 and 2 gain their
    // attention blocks at sides 32 / 16 / 8).
    let a = report(&UNetConfig::preset("celebahq-ldm-multistage-attn").unwrap(), &CUTS).unwrap();
    assert_eq!(a.stage_params, vec![315_967_139, 236_689_699, 175_590_307]);
    assert_eq!(a.total_params, 512_423_593);
    for (g, want) in a.stage_gflops.iter().zip([240.88, 168.31, 113.29]) {
        assert!((g - want).abs() < 0.01, "attn variant stage GFLOP {g} vs {want}");
    }
    // Separate: three complete U-Nets (attention in each).
    let s = report(&UNetConfig::preset("celebahq-ldm-separate").unwrap(), &CUTS).unwrap();
    assert_eq!(s.stage_params, vec![315_967_139, 236_689_699, 175_590_307]);
    assert_eq!(s.total_params, 315_967_139 + 236_689_699 + 175_590_307);
}

#[test]
fn ldm_multistage_varstore_has_the_official_counts_and_names() {
    // Builds the real 494 M-parameter model (~2 GB of f32, no forward pass).
    let cfg = UNetConfig::preset("celebahq-ldm-multistage").unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _net = AdmUNet::new(&vs.root(), &cfg).unwrap();
    assert_eq!(numel_under(&vs, &["time_embed."]), 1_005_312);
    assert_eq!(numel_under(&vs, &["input_blocks."]), 73_170_272);
    assert_eq!(numel_under(&vs, &["middle_block."]), 33_736_192);
    let decs: Vec<u64> = (0..3).map(|j| decoder_numel(&vs, &cfg, j)).collect();
    assert_eq!(decs, vec![208_055_363, 115_918_147, 61_956_163]);
    let v = vs.variables();
    let total: u64 = v.values().map(|t| t.numel() as u64).sum();
    assert_eq!(total, 493_841_449);
    // Official names and shapes (the state dict of UNetModel_multistage).
    for (name, shape) in [
        ("time_embed.0.weight", vec![896, 224]),
        ("time_embed.2.bias", vec![896]),
        ("input_blocks.0.0.weight", vec![224, 3, 3, 3]),
        ("input_blocks.1.0.in_layers.0.weight", vec![224]),
        ("input_blocks.1.0.in_layers.2.weight", vec![224, 224, 3, 3]),
        ("input_blocks.1.0.emb_layers.1.weight", vec![224, 896]),
        ("input_blocks.1.0.out_layers.3.weight", vec![224, 224, 3, 3]),
        ("input_blocks.3.0.op.weight", vec![224, 224, 3, 3]),
        ("input_blocks.4.0.skip_connection.weight", vec![448, 224, 1, 1]),
        ("input_blocks.4.1.qkv.weight", vec![1344, 448, 1]),
        ("input_blocks.4.1.proj_out.weight", vec![448, 448, 1]),
        ("input_blocks.11.1.norm.weight", vec![896]),
        ("middle_block.1.qkv.bias", vec![2688]),
        ("middle_block.2.out_layers.0.bias", vec![896]),
        ("de_modules.0.0.0.in_layers.0.weight", vec![1792]),
        ("de_modules.0.0.0.skip_connection.weight", vec![1024, 1792, 1, 1]),
        ("de_modules.0.2.2.conv.weight", vec![1024, 1024, 3, 3]), // side 8: Res .0, attention .1, up .2
        ("de_modules.0.5.2.conv.weight", vec![768, 768, 3, 3]),
        ("de_modules.0.5.1.qkv.weight", vec![2304, 768, 1]),
        ("de_modules.1.5.1.conv.weight", vec![576, 576, 3, 3]), // decoder 1: no attention, up is .1
        ("de_modules.2.11.0.in_layers.2.weight", vec![128, 128 + 224, 3, 3]),
        ("outs.0.0.weight", vec![256]),
        ("outs.2.2.weight", vec![3, 128, 3, 3]),
    ] {
        let t = v.get(name).unwrap_or_else(|| panic!("no variable {name}"));
        assert_eq!(t.size(), shape, "{name}");
    }
    // The quirk: decoders 1 and 2 have no attention, decoder 0 has it at sides 32 / 16 / 8 (its
    // first output block is at side 8).
    assert!(v.contains_key("de_modules.0.0.1.qkv.weight"));
    assert!(!v.keys().any(|n| n.starts_with("de_modules.1.") && n.contains("qkv")));
    assert!(!v.keys().any(|n| n.starts_with("de_modules.2.") && n.contains("qkv")));
    // No attention at side 64 (level 0) in the encoder.
    assert!(!v.contains_key("input_blocks.1.1.qkv.weight"));
    // Zero-initialised as the official zero_module: the residual branches' last conv, proj_out, the head.
    for n in ["input_blocks.1.0.out_layers.3.weight", "middle_block.1.proj_out.weight", "outs.1.2.weight"] {
        assert_eq!(v[n].abs().max().double_value(&[]), 0.0, "{n}");
    }
    // PyTorch's default elsewhere: U(+-1/sqrt(fan_in)).
    let b = 1.0 / ((224 * 9) as f64).sqrt();
    let m = v["input_blocks.1.0.in_layers.2.weight"].abs().max().double_value(&[]);
    assert!(m <= b && m > 0.9 * b, "{m} vs {b}");
}

#[test]
fn small_ldm_analytic_counts_match_varstore() {
    for cfg in [
        UNetConfig::preset("tiny-ldm").unwrap(),
        UNetConfig { attn_first_decoder_only: false, ..UNetConfig::preset("tiny-ldm").unwrap() },
        UNetConfig { architecture: Architecture::Separate, ..UNetConfig::preset("tiny-ldm").unwrap() },
        UNetConfig { decoder_channels: vec![32], ..UNetConfig::preset("tiny-ldm").unwrap() },
        UNetConfig::preset("small-ldm-multistage").unwrap(),
        UNetConfig::preset("small-ldm-unified").unwrap(),
    ] {
        let s = cfg.num_stages();
        let r = report(&cfg, &(1..s).map(|j| j as f64 / s as f64).collect::<Vec<_>>()).unwrap();
        let vs = VarStore::new(Device::Cpu);
        let _net = AdmUNet::new(&vs.root(), &cfg).unwrap();
        let stored: u64 = vs.variables().values().map(|t| t.numel() as u64).sum();
        assert_eq!(stored, r.total_params, "{cfg:?}");
        for j in 0..s {
            assert_eq!(decoder_numel(&vs, &cfg, j), r.decoder_params[j], "decoder {j} of {cfg:?}");
        }
    }
}

#[test]
fn a_mixed_batch_routes_each_sample_to_its_stage_decoder() {
    tch::manual_seed(3);
    for cfg in [
        UNetConfig { dropout: 0.0, ..UNetConfig::preset("tiny-ldm").unwrap() },
        UNetConfig { architecture: Architecture::Separate, ..UNetConfig::preset("tiny-ldm").unwrap() },
    ] {
        let vs = VarStore::new(Device::Cpu);
        let net = AdmUNet::new(&vs.root(), &cfg).unwrap();
        // Move every variable off its (partly zero) initialisation so each decoder matters.
        tch::no_grad(|| {
            for (_, mut t) in vs.variables() {
                let r = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.05;
                let _ = t.g_add_(&r);
            }
        });
        let x = Tensor::randn([6, 3, 16, 16], (Kind::Float, Device::Cpu));
        let steps = Tensor::from_slice(&[10f32, 500., 900., 441., 631., 0.]);
        let stage = Tensor::from_slice(&[0i64, 1, 2, 0, 2, 0]);
        let mixed = net.forward(&x, &steps, &stage, false).unwrap();
        for j in 0..3i64 {
            let whole = net.forward(&x, &steps, &Tensor::full([6], j, (Kind::Int64, Device::Cpu)), false).unwrap();
            for i in 0..6 {
                if stage.int64_value(&[i]) == j {
                    let d = (mixed.get(i) - whole.get(i)).abs().max().double_value(&[]);
                    let scale = whole.get(i).abs().max().double_value(&[]);
                    // The same float32 ops on the same row; batch composition changes only the
                    // blocking of the kernels (observed ~1e-7 relative).
                    assert!(d <= 1e-5 * scale, "row {i} stage {j}: {d} vs {scale}");
                }
            }
            // Each decoder gives a different function (the routing is observable).
            if j > 0 {
                let d0 = net.forward(&x, &steps, &Tensor::zeros([6], (Kind::Int64, Device::Cpu)), false).unwrap();
                assert!((whole - d0).abs().max().double_value(&[]) > 1e-3);
            }
        }
        let bad = net.forward(&x, &steps, &Tensor::from_slice(&[0i64, 1, 2, 3, 0, 0]), false).unwrap_err();
        assert!(bad.to_string().contains("stage id 3 out of range"), "{bad}");
        let bad = net.forward(&x.narrow(1, 0, 2), &steps, &stage, false).unwrap_err();
        assert!(bad.to_string().contains("input must be [B, 3, 16, 16]"), "{bad}");
    }
}

#[test]
fn info_prints_the_ldm_counts_and_gflops() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_msdiff"))
        .args(["--threads", "1", "info", "--preset", "celebahq-ldm-multistage"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for want in ["493841449", "315967139", "223829923", "169867939", "107911776", "240.885", "156.415", "106.821"] {
        assert!(text.contains(want), "msdiff info lacks {want}:\n{text}");
    }
}

#[test]
fn an_official_ldm_state_dict_loads_by_its_names() {
    // A unified LDM checkpoint names its decoder `output_blocks.*` / `out.*` under LDM's
    // `model.diffusion_model.` prefix; msdiff stores it as decoder 0. Export a tiny network under the
    // official names, load it into a fresh one: every tensor arrives.
    tch::manual_seed(5);
    let cfg = UNetConfig { decoder_channels: vec![32], ..UNetConfig::preset("tiny-ldm").unwrap() };
    let a = msdiff::model::Network::new(&cfg, Device::Cpu).unwrap();
    let official = |n: &str| {
        let n = n.strip_prefix("de_modules.0.").map(|r| format!("output_blocks.{r}")).unwrap_or(n.to_string());
        let n = n.strip_prefix("outs.0.").map(|r| format!("out.{r}")).unwrap_or(n);
        format!("model.diffusion_model.{n}")
    };
    let d = std::env::temp_dir().join(format!("msdiff-ldm-sd-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("ldm.safetensors");
    let named: Vec<(String, Tensor)> = a.params().into_iter().map(|(n, t)| (official(&n), t)).collect();
    assert!(named.iter().any(|(n, _)| n.starts_with("model.diffusion_model.output_blocks.")));
    Tensor::write_safetensors(&named, &path).unwrap();
    tch::manual_seed(6);
    let b = msdiff::model::Network::new(&cfg, Device::Cpu).unwrap();
    b.load_safetensors(&path).unwrap();
    for ((na, ta), (nb, tb)) in a.params().iter().zip(b.params().iter()) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na}");
    }
    // A multi-stage network refuses the unified file in one line.
    let m = msdiff::model::Network::new(&UNetConfig::preset("tiny-ldm").unwrap(), Device::Cpu).unwrap();
    let e = format!("{:#}", m.load_safetensors(&path).unwrap_err());
    assert!(e.contains("tensors but this model has") && !e.contains('\n'), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

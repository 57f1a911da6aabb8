//! Autoencoders (docs/LATENT.md): official parameter counts, shapes, the diffusers fixtures
//! (tests/fixtures/autoencoder/), encode / decode / latent caches, training and exact resume,
//! and one-line errors for bad input.
use msdiff::autoencoder::{AutoencoderConfig, AutoencoderModel, Bottleneck, EncodeMode, PRESETS};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msdiff-ae-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn numel(v: &[(String, Tensor)]) -> u64 {
    v.iter().map(|(_, t)| t.numel() as u64).sum()
}

#[test]
fn presets_have_the_official_counts_in_the_report_and_the_varstore() {
    // vq-f4: ../shared/docs/official-architectures.md §2 (55,322,782 = encoder 22,337,411 +
    // decoder 32,960,771 + codebook 8192 x 3 + quant_conv 12 + post_quant_conv 12). The other
    // presets' totals are diffusers 0.42.1's named_parameters() of the same layouts (see
    // tests/fixtures/autoencoder/make_fixtures.py, which prints them): kl-f4 55,312,063,
    // kl-f8 83,653,863 (Stable Diffusion's VAE), vq-f4-noattn 53,219,486.
    let official =
        [("vq-f4", 55_322_782u64), ("vq-f4-noattn", 53_219_486), ("kl-f4", 55_312_063), ("kl-f8", 83_653_863)];
    for name in PRESETS {
        let cfg = AutoencoderConfig::preset(name).unwrap();
        let r = cfg.report(64, 64);
        let m = AutoencoderModel::new(&cfg, 0, Device::Cpu, "test").unwrap();
        let parts = [
            ("encoder.", r.encoder.params),
            ("quant_conv.", r.quant_conv.params),
            ("quantize.", r.codebook.params),
            ("post_quant_conv.", r.post_quant_conv.params),
            ("decoder.", r.decoder.params),
        ];
        for (prefix, want) in parts {
            assert_eq!(numel(&m.params_under(prefix)), want, "{name}: {prefix}");
        }
        assert_eq!(numel(&m.params()), r.total_params(), "{name}");
        if let Some((_, n)) = official.iter().find(|(p, _)| p == name) {
            assert_eq!(r.total_params(), *n, "{name}");
        }
    }
    let vq = AutoencoderModel::new(&AutoencoderConfig::preset("vq-f4").unwrap(), 0, Device::Cpu, "test").unwrap();
    assert_eq!(numel(&vq.params_under("encoder.")), 22_337_411);
    assert_eq!(numel(&vq.params_under("decoder.")), 32_960_771);
    assert_eq!(vq.params_under("quantize.")[0].1.size(), vec![8192, 3]);
}

#[test]
fn shapes_seeds_and_the_two_bottlenecks() {
    for name in ["tiny-kl", "tiny-vq"] {
        let cfg = AutoencoderConfig::preset(name).unwrap();
        let m = AutoencoderModel::new(&cfg, 7, Device::Cpu, "test").unwrap();
        let again = AutoencoderModel::new(&cfg, 7, Device::Cpu, "test").unwrap();
        let other = AutoencoderModel::new(&cfg, 8, Device::Cpu, "test").unwrap();
        assert_eq!(m.fingerprint(), again.fingerprint(), "{name}: the seed must fix the weights");
        assert_ne!(m.fingerprint(), other.fingerprint());
        // Non-square, any multiple of the factor 2.
        let x = msdiff::rng::Rng::new(1).randn(&[3, 1, 6, 10], Kind::Float).clamp(-1.0, 1.0);
        let z = m.encode(&x, EncodeMode::Mean, false, &[0, 1, 2], 2, |_| {}).unwrap();
        assert_eq!(z.size(), vec![3, 2, 3, 5]);
        let y = m.decode(&z, false, 2, |_| {}).unwrap();
        assert_eq!(y.size(), vec![3, 1, 6, 10]);
        // Batch size does not change anything.
        let z1 = m.encode(&x, EncodeMode::Mean, false, &[0, 1, 2], 3, |_| {}).unwrap();
        assert!((&z - &z1).abs().max().double_value(&[]) < 1e-6);
        match cfg.bottleneck {
            Bottleneck::Kl => {
                let a = m.encode(&x, EncodeMode::Sample, false, &[5, 6, 7], 1, |_| {}).unwrap();
                let b = m.encode(&x.narrow(0, 1, 2), EncodeMode::Sample, false, &[6, 7], 2, |_| {}).unwrap();
                assert!(
                    (a.narrow(0, 1, 2) - &b).abs().max().double_value(&[]) < 1e-6,
                    "a sample must depend on its image's seed only"
                );
                assert!((&a - &z).abs().max().double_value(&[]) > 1e-3);
                assert!(m
                    .encode(&x, EncodeMode::Mean, true, &[0, 1, 2], 2, |_| {})
                    .unwrap_err()
                    .to_string()
                    .contains("VQ"));
            }
            Bottleneck::Vq => {
                let q = m.encode(&x, EncodeMode::Mean, true, &[], 2, |_| {}).unwrap();
                let codes = m.codes(&z, 2).unwrap();
                assert_eq!(codes.size(), vec![3, 3, 5]);
                // The snapped latent is the codebook row of each code.
                let book = m.params_under("quantize.")[0].1.shallow_clone();
                let rows = book.index_select(0, &codes.reshape([-1])).reshape([3, 3, 5, 2]).permute([0, 3, 1, 2]);
                assert!(q.equal(&rows));
                // decode snaps first: decoding z or its snapped version is the same.
                assert!(m.decode(&q, true, 3, |_| {}).unwrap().allclose(&y, 1e-6, 1e-6, false));
            }
        }
    }
}

#[test]
fn bad_shapes_are_one_line_errors() {
    let m = AutoencoderModel::new(&AutoencoderConfig::preset("kl-f8").unwrap(), 0, Device::Cpu, "test").unwrap();
    let x = Tensor::zeros([1, 3, 36, 32], (Kind::Float, Device::Cpu));
    let e = m.encode(&x, EncodeMode::Mean, false, &[0], 1, |_| {}).unwrap_err().to_string();
    assert!(e.contains("36x32") && e.contains("multiples of 8") && !e.contains('\n'), "{e}");
    let e =
        m.decode(&Tensor::zeros([1, 3, 4, 4], (Kind::Float, Device::Cpu)), false, 1, |_| {}).unwrap_err().to_string();
    assert!(e.contains("[N, 4, h, w]"), "{e}");
    let e = m
        .encode(&Tensor::zeros([1, 1, 8, 8], (Kind::Float, Device::Cpu)), EncodeMode::Mean, false, &[0], 1, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 channel"), "{e}");
}

#[test]
fn folders_round_trip_and_foreign_folders_are_refused() {
    let d = tmp("folder");
    let cfg = AutoencoderConfig::preset("tiny-vq").unwrap();
    let m = AutoencoderModel::new(&cfg, 3, Device::Cpu, "test").unwrap();
    m.save(&d.join("ae")).unwrap();
    let back = AutoencoderModel::load(&d.join("ae"), Device::Cpu).unwrap();
    assert_eq!(back.fingerprint(), m.fingerprint());
    assert_eq!(back.manifest, m.manifest);
    // Saving again over it replaces it whole; no partial folder is left.
    m.save(&d.join("ae")).unwrap();
    let names: Vec<String> =
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert_eq!(names, vec!["ae".to_string()]);
    // Another layout: a diffusion checkpoint-like folder, an empty folder, a diffusers folder.
    std::fs::create_dir_all(d.join("empty")).unwrap();
    let e = AutoencoderModel::load(&d.join("empty"), Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("not an msdiff autoencoder") && !e.contains('\n'), "{e}");
    std::fs::create_dir_all(d.join("df")).unwrap();
    std::fs::write(d.join("df/config.json"), "{}").unwrap();
    std::fs::write(d.join("df/diffusion_pytorch_model.safetensors"), "").unwrap();
    let e = AutoencoderModel::load(&d.join("df"), Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("autoencoder import --diffusers"), "{e}");
    // Weights of another layout under a valid manifest.
    let other = AutoencoderModel::new(&AutoencoderConfig::preset("tiny-kl").unwrap(), 0, Device::Cpu, "x").unwrap();
    other.save(&d.join("kl")).unwrap();
    std::fs::copy(d.join("kl/weights.safetensors"), d.join("ae/weights.safetensors")).unwrap();
    let e = format!("{:#}", AutoencoderModel::load(&d.join("ae"), Device::Cpu).err().unwrap());
    assert!(e.contains("does not match"), "{e}");
    // Writing over something that is not an autoencoder folder is refused.
    let e = m.save(&d.join("df")).unwrap_err().to_string();
    assert!(e.contains("not an autoencoder folder"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

fn fixture(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/autoencoder").join(name)
}

fn expected(name: &str) -> std::collections::BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name).join("expected.safetensors")).unwrap().into_iter().collect()
}

/// max |a - b| / max |b|: the error relative to the tensor's scale (elementwise relative errors
/// are meaningless near zero).
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

#[test]
fn diffusers_kl_fixture_matches_diffusers_itself() {
    // Expected values: diffusers 0.42.1 on the same folder and inputs
    // (tests/fixtures/autoencoder/make_fixtures.py, which states every version).
    let m = msdiff::autoencoder::diffusers::import(&fixture("kl"), Device::Cpu).unwrap();
    let e = expected("kl");
    assert_eq!((m.manifest.scaling_factor, m.manifest.shift_factor), (Some(0.4321), Some(0.0625)));
    assert_eq!((m.config().ch_mult.clone(), m.config().num_res_blocks, m.config().embed_dim), (vec![1, 1, 1], 2, 4));
    let g = tch::no_grad(|| m.net.posterior(&e["x"]).unwrap());
    let errs = [
        ("mean", rel_err(&g.mean, &e["mean"])),
        ("logvar", rel_err(&g.logvar, &e["logvar"])),
        ("decode(mean)", rel_err(&tch::no_grad(|| m.net.decode(&e["mean"]).unwrap()), &e["decode_mean"])),
        ("decode(z)", rel_err(&m.decode(&e["z"], false, 2, |_| {}).unwrap(), &e["decode_z"])),
    ];
    for (what, err) in errs {
        eprintln!("KL fixture: {what} relative error {err:.2e}");
        assert!(err < 1e-4, "{what}: relative error {err:.2e}");
    }
    // Through an msdiff folder and back: the same numbers.
    let d = tmp("kl-import");
    m.save(&d.join("ae")).unwrap();
    let back = AutoencoderModel::load(&d.join("ae"), Device::Cpu).unwrap();
    assert_eq!(back.fingerprint(), m.fingerprint());
    assert!(
        back.manifest.source.contains("AutoencoderKL") && back.manifest.source.contains("0.42.1"),
        "{}",
        back.manifest.source
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn diffusers_vq_fixture_matches_diffusers_itself_and_codes_exactly() {
    let m = msdiff::autoencoder::diffusers::import(&fixture("vq"), Device::Cpu).unwrap();
    let e = expected("vq");
    assert_eq!(
        m.manifest.scaling_factor, None,
        "a VQModel's scaling_factor is not used (diffusers' VQ pipelines do not scale)"
    );
    assert_eq!(
        (m.config().attn_levels.clone(), m.config().z_channels, m.config().embed_dim, m.config().n_embed),
        (vec![1], 3, 2, 32)
    );
    let h = m.encode(&e["x"], EncodeMode::Mean, false, &[], 2, |_| {}).unwrap();
    let codes = m.codes(&h, 2).unwrap();
    assert!(codes.equal(&e["codes"]), "VQ codes differ from diffusers'");
    let errs = [
        ("h (pre-quantisation)", rel_err(&h, &e["h"])),
        ("decode(h) (quantised)", rel_err(&m.decode(&e["h"], false, 2, |_| {}).unwrap(), &e["decode"])),
        ("decode(h, no quantisation)", rel_err(&m.decode(&e["h"], true, 2, |_| {}).unwrap(), &e["decode_no_quantize"])),
    ];
    for (what, err) in errs {
        eprintln!("VQ fixture: {what} relative error {err:.2e}");
        assert!(err < 1e-4, "{what}: relative error {err:.2e}");
    }
}

#[test]
fn diffusers_folders_of_unsupported_layouts_are_one_line_errors() {
    let d = tmp("df-bad");
    let copy = |name: &str, edit: &dyn Fn(String) -> String| -> PathBuf {
        let dst = d.join(name);
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(
            fixture("kl").join("diffusion_pytorch_model.safetensors"),
            dst.join("diffusion_pytorch_model.safetensors"),
        )
        .unwrap();
        std::fs::write(
            dst.join("config.json"),
            edit(std::fs::read_to_string(fixture("kl").join("config.json")).unwrap()),
        )
        .unwrap();
        dst
    };
    let import = |p: &PathBuf| {
        format!("{:#}", msdiff::autoencoder::diffusers::import(p, Device::Cpu).err().expect("must be refused"))
    };
    let e = import(&copy("block", &|c| c.replacen("\"UpDecoderBlock2D\"", "\"UpBlock2D\"", 1)));
    assert!(e.contains("up block type 'UpBlock2D' is not supported") && !e.contains('\n'), "{e}");
    // latent_channels 4 -> 5: the encoder's conv_out no longer fits; the error names it and both shapes.
    let e = import(&copy("shape", &|c| c.replace("\"latent_channels\": 4", "\"latent_channels\": 5")));
    assert!(e.contains("has shape [") && e.contains("makes it [") && !e.contains('\n'), "{e}");
    assert!(e.contains("conv") || e.contains("quant"), "{e}");
    let e = import(&copy("class", &|c| c.replace("AutoencoderKL", "UNet2DModel")));
    assert!(e.contains("'UNet2DModel' is not supported"), "{e}");
    let e = import(&d.join("nothing"));
    assert!(e.contains("no such folder"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

fn msdiff(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_msdiff"))
        .args(["--quiet", "--threads", "1", "--device", "cpu"])
        .args(args)
        .output()
        .expect("run msdiff")
}

/// Exit code 2 and one `msdiff: error:` line containing `needle`.
fn assert_user_error(o: &std::process::Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {e}");
    assert!(
        lines[0].starts_with("msdiff: error:") && lines[0].contains(needle),
        "{:?} does not mention {needle:?}",
        lines[0]
    );
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn cli_encode_decode_and_latent_caches() {
    let d = tmp("cli");
    let s = |p: &PathBuf| p.display().to_string();
    let m = AutoencoderModel::new(&AutoencoderConfig::preset("tiny-kl").unwrap(), 5, Device::Cpu, "test").unwrap();
    m.save(&d.join("ae")).unwrap();
    // A folder of 12x20 grey PNGs (any size that the factor 2 divides).
    let imgs = d.join("imgs");
    let x = msdiff::rng::Rng::new(9).randn(&[3, 1, 12, 20], Kind::Float).clamp(-1.0, 1.0);
    for i in 0..3 {
        msdiff::io::write_png(&imgs.join(format!("{i}.png")), &x.get(i)).unwrap();
    }
    let ds = msdiff::data::load(&s(&imgs), &Default::default()).unwrap();
    ok(msdiff(&[
        "autoencoder",
        "encode",
        "--model",
        &s(&d.join("ae")),
        "--images",
        &s(&imgs),
        "--out",
        &s(&d.join("z.npy")),
    ]));
    let z = msdiff::io::read_npy(&d.join("z.npy")).unwrap();
    // (The binary runs one thread, this process more: equal up to float summation order.)
    let close = |a: &Tensor, b: &Tensor| {
        let e = rel_err(a, b);
        e < 1e-5 || panic!("relative error {e:.2e}")
    };
    assert!(close(&z, &m.encode(&ds.images, EncodeMode::Mean, false, &[0, 1, 2], 16, |_| {}).unwrap()));
    // KL samples: image i is seeded by --seed + i, whatever the batch size.
    ok(msdiff(&[
        "autoencoder",
        "encode",
        "--model",
        &s(&d.join("ae")),
        "--images",
        &s(&imgs),
        "--out",
        &s(&d.join("s.npy")),
        "--mode",
        "sample",
        "--seed",
        "4",
        "--batch",
        "2",
    ]));
    let zs = msdiff::io::read_npy(&d.join("s.npy")).unwrap();
    assert!(close(&zs, &m.encode(&ds.images, EncodeMode::Sample, false, &[4, 5, 6], 3, |_| {}).unwrap()));
    // The latent cache: statistics, scale 1/std (no scaling_factor), readable as a dataset.
    let out = ok(msdiff(&[
        "autoencoder",
        "encode",
        "--model",
        &s(&d.join("ae")),
        "--images",
        &s(&imgs),
        "--out",
        &s(&d.join("c.safetensors")),
    ]));
    assert!(out.contains("1/std"), "{out}");
    let c = msdiff::data::latents::LatentCache::load(&d.join("c.safetensors")).unwrap();
    assert!(c.latents.equal(&z));
    let std = z.to_kind(Kind::Double).std(false).double_value(&[]);
    assert!(
        (c.info.scale_factor - 1.0 / std).abs() < 1e-9 * c.info.scale_factor,
        "{} vs {}",
        c.info.scale_factor,
        1.0 / std
    );
    assert_eq!(c.info.autoencoder.fingerprint, m.fingerprint());
    let lat = msdiff::data::load(&format!("latents:{}", s(&d.join("c.safetensors"))), &Default::default()).unwrap();
    assert_eq!(lat.shape(), [3, 2, 6, 10]);
    assert!(
        (lat.images.to_kind(Kind::Double).std(false).double_value(&[]) - 1.0).abs() < 1e-5,
        "the scaled latents have unit std"
    );
    // Decoding the cache gives the library's decode of the same latents, clamped.
    ok(msdiff(&[
        "autoencoder",
        "decode",
        "--model",
        &s(&d.join("ae")),
        "--latents",
        &s(&d.join("c.safetensors")),
        "--out",
        &s(&d.join("x.npy")),
        "--grid",
        &s(&d.join("g.png")),
    ]));
    let y = msdiff::io::read_npy(&d.join("x.npy")).unwrap();
    assert!(close(&y, &m.decode(&z, false, 16, |_| {}).unwrap().clamp(-1.0, 1.0)));
    assert!(d.join("g.png").is_file());
    // Another autoencoder refuses the cache (its record names the fingerprints).
    AutoencoderModel::new(&AutoencoderConfig::preset("tiny-kl").unwrap(), 6, Device::Cpu, "other")
        .unwrap()
        .save(&d.join("other"))
        .unwrap();
    let o = msdiff(&[
        "autoencoder",
        "decode",
        "--model",
        &s(&d.join("other")),
        "--latents",
        &s(&d.join("c.safetensors")),
        "--out",
        &s(&d.join("y.npy")),
    ]);
    assert_user_error(&o, "re-encode");
    assert!(!d.join("y.npy").exists());
    // An image size the factor does not divide, a missing model, a model of another layout.
    let odd = d.join("odd");
    msdiff::io::write_png(&odd.join("0.png"), &x.get(0).narrow(1, 0, 11)).unwrap();
    assert_user_error(
        &msdiff(&[
            "autoencoder",
            "encode",
            "--model",
            &s(&d.join("ae")),
            "--images",
            &s(&odd),
            "--out",
            &s(&d.join("o.npy")),
        ]),
        "multiples of 2",
    );
    assert_user_error(
        &msdiff(&[
            "autoencoder",
            "encode",
            "--model",
            &s(&d.join("nope")),
            "--images",
            &s(&imgs),
            "--out",
            &s(&d.join("o.npy")),
        ]),
        "does not exist",
    );
    assert_user_error(
        &msdiff(&["autoencoder", "encode", "--model", &s(&imgs), "--images", &s(&imgs), "--out", &s(&d.join("o.npy"))]),
        "not an msdiff autoencoder",
    );
    assert_user_error(
        &msdiff(&[
            "autoencoder",
            "encode",
            "--model",
            &s(&d.join("ae")),
            "--images",
            &s(&imgs),
            "--out",
            &s(&d.join("o.npy")),
            "--quantize",
        ]),
        "VQ",
    );
    assert_user_error(
        &msdiff(&[
            "autoencoder",
            "decode",
            "--model",
            &s(&d.join("ae")),
            "--latents",
            &s(&d.join("z.npy")),
            "--out",
            &s(&d.join("o.npy")),
            "--no-quantize",
        ]),
        "VQ",
    );
    assert!(!d.join("o.npy").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

mod training {
    use super::*;
    use msdiff::autoencoder::train::{self as tr, AeTrainConfig, AeTrainOptions};

    fn config(model: &str, extra: &str) -> String {
        format!(
            r#"
[data]
spec = "builtin"
limit = 48
flip = true
eval_images = 8
[model]
preset = "{model}"
[loss]
disc_weight = 0.5
disc_start = 2
disc_layers = 2
disc_channels = 8
restart_dead_codes = 2
[optim]
lr = 1e-3
warmup_steps = 2
grad_clip = 1.0
[ema]
decay = 0.9
[train]
batch = 4
steps = 6
checkpoint_every = 2
keep_last = 10
log_every = 1
eval_every = 3
{extra}
"#
        )
    }

    fn opts(run: &std::path::Path, resume: Option<PathBuf>, stop_after: Option<u64>) -> AeTrainOptions {
        AeTrainOptions {
            run_dir: run.to_path_buf(),
            resume,
            device: Device::Cpu,
            progress: false,
            stop_after,
            fid_weights: None,
        }
    }

    fn assert_same(a: &[(String, Tensor)], b: &[(String, Tensor)], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for ((n, x), (m, y)) in a.iter().zip(b) {
            assert_eq!(n, m, "{what}");
            assert!(x.equal(y), "{what}: {n} differs");
        }
    }

    #[test]
    fn training_resumes_bit_for_bit_with_the_discriminator_on() {
        // Every source of state: KL noise and VQ codes, flips, warm-up, clipping, EMA, the
        // discriminator switching on at step 3 (adaptive weight), both Adam states.
        for model in ["tiny-kl", "tiny-vq"] {
            let tc = AeTrainConfig::from_toml(&config(model, ""), "test").unwrap();
            let (data, eval) = tr::load_data(&tc.data).unwrap();
            let cfg = tc.resolve(data.image_shape()).unwrap();
            let d = tmp(&format!("resume-{model}"));
            let straight = tr::train(&cfg, &data, &eval, &opts(&d.join("a"), None, None)).unwrap();
            assert_eq!(straight.step, 6);
            let first = tr::train(&cfg, &data, &eval, &opts(&d.join("b"), None, Some(3))).unwrap();
            assert!(first.interrupted && first.step == 3);
            let resumed = tr::train(&cfg, &data, &eval, &opts(&d.join("b"), Some(d.join("b")), None)).unwrap();
            assert_eq!(resumed.step, 6);
            assert_same(&straight.state.tensors(), &resumed.state.tensors(), model);
            assert!(
                straight.state.tensors().iter().any(|(n, _)| n.starts_with("disc_adam_m.")),
                "the discriminator trained"
            );
            // The metrics agree line for line (but for timings).
            let lines = |p: PathBuf| -> Vec<serde_json::Value> {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .filter(|v| v.get("loss").is_some())
                    .collect()
            };
            let (a, b) = (lines(d.join("a/metrics.jsonl")), lines(d.join("b/metrics.jsonl")));
            assert_eq!(a.len(), 6);
            for (x, y) in a.iter().zip(&b) {
                for k in ["loss", "l1", "g_loss", "d_loss", "d_weight", "grad_norm", "codes_used", "codes_restarted"] {
                    assert_eq!(x[k], y[k], "{model}: {k} at step {}", x["step"]);
                }
            }
            if model == "tiny-vq" {
                let restarted: u64 = a.iter().map(|l| l["codes_restarted"].as_u64().unwrap()).sum();
                assert!(restarted > 0, "dead codebook entries were restarted (and resumed exactly)");
            }
            assert!(
                a[5]["d_loss"].as_f64().unwrap() > 0.0 && a[1]["d_loss"].as_f64().unwrap() == 0.0,
                "the discriminator starts after step 2"
            );
            // The run's exported autoencoder is the EMA of the final checkpoint; the run loads as a model too.
            let exported = AutoencoderModel::load(&d.join("a/autoencoder"), Device::Cpu).unwrap();
            let from_run = AutoencoderModel::load(&d.join("a"), Device::Cpu).unwrap();
            assert_eq!(exported.fingerprint(), from_run.fingerprint());
            assert_eq!(exported.fingerprint(), straight.state.ema.fingerprint());
            assert!(d.join("a/reconstructions.png").is_file() && d.join("a/eval.json").is_file());
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn loss_falls_and_bad_configurations_are_refused() {
        let tc = AeTrainConfig::from_toml(
            &config("tiny-kl", "")
                .replace("steps = 6", "steps = 40")
                .replace("disc_weight = 0.5", "disc_weight = 0.0")
                .replace("eval_every = 3", "eval_every = 0"),
            "t",
        )
        .unwrap();
        let (data, eval) = tr::load_data(&tc.data).unwrap();
        let cfg = tc.resolve(data.image_shape()).unwrap();
        let d = tmp("falls");
        let out = tr::train(&cfg, &data, &eval, &opts(&d.join("r"), None, None)).unwrap();
        let losses: Vec<f64> = std::fs::read_to_string(d.join("r/metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&losses[30..]) < 0.7 * mean(&losses[..5]), "{losses:?}");
        assert!(out.eval.unwrap().psnr.is_finite());
        // The CLI resumed from a checkpoint folder continues in that checkpoint's run folder
        // (<run>/checkpoints/step-N -> <run>), not in the current directory.
        let last = d.join("r/checkpoints/step-00000040");
        let o = msdiff(&["autoencoder", "train", "--resume", last.to_str().unwrap(), "--steps", "42"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(d.join("r/checkpoints/step-00000042/state.json").is_file(), "resumed into the run folder");
        // Resuming with another configuration is refused, naming what differs.
        let other = AeTrainConfig::from_toml(
            &config("tiny-kl", "").replace("lr = 1e-3", "lr = 2e-3").replace("disc_weight = 0.5", "disc_weight = 0.0"),
            "t",
        )
        .unwrap()
        .resolve(data.image_shape())
        .unwrap();
        let e =
            tr::train(&other, &data, &eval, &opts(&d.join("r"), Some(d.join("r")), None)).err().unwrap().to_string();
        assert!(e.contains("optim") && e.contains("cannot resume"), "{e}");
        // A diffusion checkpoint is not an autoencoder checkpoint.
        std::fs::create_dir_all(d.join("x/checkpoints/step-00000001")).unwrap();
        std::fs::write(d.join("x/checkpoints/step-00000001/state.json"), r#"{"format": "msdiff-checkpoint/1"}"#)
            .unwrap();
        let e = format!("{:#}", tr::load_checkpoint(&d.join("x")).err().unwrap());
        assert!(e.contains("not an autoencoder checkpoint"), "{e}");
        let e = AutoencoderModel::load(&d.join("x"), Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("not an msdiff autoencoder"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn cli_train_dry_run_and_errors() {
        let d = tmp("cli-train");
        let p = d.join("c.toml");
        std::fs::write(&p, config("tiny-vq", "")).unwrap();
        let o = msdiff(&[
            "autoencoder",
            "train",
            "--config",
            p.to_str().unwrap(),
            "--run",
            d.join("r").to_str().unwrap(),
            "--dry-run",
        ]);
        assert!(
            o.status.success() && String::from_utf8_lossy(&o.stderr).contains("n_embed = 16"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!d.join("r").exists(), "--dry-run writes nothing");
        std::fs::write(&p, config("tiny-vq", "").replace("[loss]", "[loss]\nperceptual = 1.0")).unwrap();
        assert_user_error(&msdiff(&["autoencoder", "train", "--config", p.to_str().unwrap()]), "perceptual");
        // 16x16 padded by 1 is 18x18, which factor 4 does not divide.
        std::fs::write(
            &p,
            config("tiny-vq", "")
                .replace("limit = 48", "limit = 48\npad = 1")
                .replace("[model]", "[model]\nch_mult = [1, 2, 2]"),
        )
        .unwrap();
        assert_user_error(&msdiff(&["autoencoder", "train", "--config", p.to_str().unwrap()]), "multiples of 4");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

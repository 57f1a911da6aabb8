//! Latent diffusion end to end (docs/LATENT.md §6): a tiny autoencoder encodes a tiny dataset into a
//! latent cache, a tiny U-Net trains on `latents:FILE` (its run records the autoencoder in
//! `[latent]`), resumes exactly, and `msdiff sample` / `eval` decode its samples; the autoencoder
//! moved, replaced or of another shape gives one-line errors; `stages.boundaries_step` routes DDPM
//! steps as the official LDM code.
mod common;

use msdiff::autoencoder::{AutoencoderConfig, AutoencoderModel};
use msdiff::objective::StageSampler;
use msdiff::train::{ResolvedConfig, TrainConfig};
use std::path::Path;
use std::process::Output;
use tch::{Device, Kind, Tensor};

/// Tests that build networks or train in this process take turns: libtorch's global random
/// generator (initialisation, dropout) is shared, and the exact-resume comparison needs it alone.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn msdiff(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_msdiff"))
        .args(["--quiet", "--threads", "1", "--device", "cpu"])
        .args(args)
        .output()
        .expect("run msdiff")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Exit code 2 and one `msdiff: error:` line containing every needle.
fn assert_user_error(o: &Output, needles: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {e}");
    assert!(lines[0].starts_with("msdiff: error:"), "{e}");
    for n in needles {
        assert!(lines[0].contains(n), "{:?} does not mention {n:?}", lines[0]);
    }
}

/// A library error rendered as the CLI does: one line with every needle.
fn assert_one_line(e: anyhow::Error, needles: &[&str]) {
    let m = format!("{e:#}");
    assert!(!m.contains('\n'), "not one line: {m}");
    for n in needles {
        assert!(m.contains(n), "{m:?} does not mention {n:?}");
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// (width, height) of a PNG file.
fn png_size(p: &Path) -> (u32, u32) {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[1..4], b"PNG", "{} is not a PNG", p.display());
    (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()))
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).abs().max().double_value(&[]);
    d / b.abs().max().double_value(&[]).max(1e-12)
}

/// A latent run's configuration: the tiny U-Net on the cache, LDM's DDPM schedule and cuts.
fn config(cache: &Path, extra_data: &str, extra_model: &str) -> String {
    format!(
        r#"
[data]
spec = "latents:{}"
{extra_data}
[model]
preset = "tiny"
{extra_model}
[process]
kind = "ddpm"
schedule = {{ type = "scaled_linear", beta_start = 0.0015, beta_end = 0.0195 }}
[stages]
boundaries_step = [442, 631]
[optim]
lr = 1e-3
warmup_steps = 2
[ema]
decay = 0.9
[train]
batch = 8
steps = 4
checkpoint_every = 2
keep_last = 10
log_every = 1
sample_every = 2
sample_count = 4
sampler = {{ kind = "ddim", steps = 4 }}
"#,
        s(cache)
    )
}

/// A tiny KL autoencoder (1x16x16 images <-> 2x8x8 latents) saved at `dir`.
fn autoencoder(dir: &Path, seed: u64, embed: usize) -> AutoencoderModel {
    let mut cfg = AutoencoderConfig::preset("tiny-kl").unwrap();
    cfg.z_channels = embed;
    cfg.embed_dim = embed;
    let m = AutoencoderModel::new(&cfg, seed, Device::Cpu, "test").unwrap();
    m.save(dir).unwrap();
    m
}

#[test]
fn a_latent_run_trains_resumes_samples_and_evaluates_decoded_images() {
    let _serial = serial();
    let d = common::tmp("latent-e2e");
    let ae = d.join("ae");
    let m = autoencoder(&ae, 3, 2);
    let cache = d.join("z.safetensors");
    ok(msdiff(&[
        "autoencoder",
        "encode",
        "--model",
        &s(&ae),
        "--data",
        "builtin",
        "--limit",
        "64",
        "--out",
        &s(&cache),
    ]));
    let cfg_path = d.join("run.toml");
    std::fs::write(&cfg_path, config(&cache, "", "")).unwrap();

    // The resolved configuration records the autoencoder.
    let tc = TrainConfig::load(&cfg_path).unwrap();
    let ds = msdiff::data::load(&format!("latents:{}", s(&cache)), &Default::default()).unwrap();
    assert_eq!(ds.image_shape(), [2, 8, 8]);
    let cfg = tc.resolve(&d, ds.image_shape()).unwrap();
    let rec = cfg.latent.clone().expect("a [latent] record");
    assert_eq!((rec.autoencoder.as_str(), rec.fingerprint.clone()), (s(&ae).as_str(), m.fingerprint()));
    assert_eq!((rec.image_shape, rec.latent_shape, rec.vq), ([1, 16, 16], [2, 8, 8], false));
    assert_eq!(rec.cache, s(&cache));
    let c = msdiff::data::latents::LatentCache::load(&cache).unwrap();
    assert_eq!((rec.scale_factor, rec.shift_factor), (c.info.scale_factor, c.info.shift_factor));
    assert_eq!((cfg.model.in_channels, cfg.model.resolution), (2, 8));
    // The network follows the latents whatever shape a caller declares (`msdiff info --config`).
    assert_eq!(tc.resolve(&d, [1, 16, 16]).unwrap(), cfg);
    // It survives TOML (config.toml, checkpoints), and a configuration without it still loads.
    let back: ResolvedConfig = toml::from_str(&cfg.to_toml()).unwrap();
    assert_eq!(back.latent, cfg.latent);
    assert!(cfg.to_toml().contains("[latent]"));
    let mut old = cfg.clone();
    old.latent = None;
    assert!(!old.to_toml().contains("[latent]"));
    assert_eq!(toml::from_str::<ResolvedConfig>(&old.to_toml()).unwrap().latent, None);

    // Resume continues exactly (the trainer checks the autoencoder at start, never encodes).
    common::assert_resume_is_exact(&cfg, &ds, "a latent run");

    // The CLI run: config.toml holds [latent], the grids are decoded 16x16 images.
    let run = d.join("run");
    ok(msdiff(&["train", "--config", &s(&cfg_path), "--run", &s(&run)]));
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("[latent]") && saved.contains(&m.fingerprint()), "{saved}");
    let four = |hw: i64| {
        let (w, h, _, _) =
            msdiff::io::image::grid_pixels(&Tensor::zeros([4, 1, hw, hw], (Kind::Float, Device::Cpu)), 2, 2).unwrap();
        (w as u32, h as u32)
    };
    assert_ne!(four(16), four(8));
    for step in [2, 4] {
        assert_eq!(png_size(&run.join(format!("samples/step-{step:08}.png"))), four(16), "step {step}");
    }

    // val-loss scores held-out latents of the same autoencoder and scale, not images.
    let spec = format!("latents:{}", s(&cache));
    ok(msdiff(&["val-loss", "--checkpoint", &s(&run), "--data", &spec, "--limit", "8"]));
    let o = msdiff(&["val-loss", "--checkpoint", &s(&run), "--data", "builtin", "--limit", "8"]);
    assert_user_error(&o, &["trained on latents", "--scale-factor"]);

    // msdiff sample: decoded images (samples.npy, PNGs), latents in raw.npy.
    let out = d.join("samples");
    let sample = |extra: &[&str]| {
        let (r, o) = (s(&run), s(&out));
        let mut a = vec!["sample", "--model", &r, "--sampler", "ddim", "--steps", "3", "--seeds", "0-3", "--out", &o];
        a.extend_from_slice(extra);
        msdiff(&a)
    };
    ok(sample(&[]));
    let x = msdiff::io::read_npy(&out.join("samples.npy")).unwrap();
    let raw = msdiff::io::read_npy(&out.join("raw.npy")).unwrap();
    assert_eq!((x.size(), raw.size()), (vec![4, 1, 16, 16], vec![4, 2, 8, 8]));
    assert!(x.abs().max().double_value(&[]) <= 1.0);
    let z = &raw / rec.scale_factor + rec.shift_factor;
    let decoded = m.decode(&z, false, 4, |_| {}).unwrap().clamp(-1.0, 1.0);
    assert!(rel_err(&x, &decoded) < 1e-5, "samples.npy is not the decoded raw.npy: {:.2e}", rel_err(&x, &decoded));
    assert_eq!(png_size(&out.join("images/000003.png")), (16, 16));
    assert_eq!(png_size(&out.join("grid.png")), four(16));

    // The autoencoder moved: training and sampling say where to point them.
    let moved = d.join("ae-moved");
    std::fs::rename(&ae, &moved).unwrap();
    assert_user_error(&sample(&[]), &["does not exist", "--autoencoder", &s(&ae)]);
    ok(sample(&["--autoencoder", &s(&moved)]));
    assert_user_error(
        &msdiff(&["train", "--resume", &s(&run), "--steps", "6", "--no-samples"]),
        &["does not exist", "[data] autoencoder", "re-encode"],
    );
    ok(msdiff(&["train", "--resume", &s(&run), "--steps", "6", "--no-samples", "--autoencoder", &s(&moved)]));
    std::fs::write(d.join("moved.toml"), config(&cache, "autoencoder = \"ae-moved\"", "")).unwrap();
    let tc = TrainConfig::load(&d.join("moved.toml")).unwrap();
    assert_eq!(tc.resolve(&d, ds.image_shape()).unwrap().latent.unwrap().autoencoder, s(&moved));

    // Another autoencoder at the recorded place: its fingerprint no longer matches.
    let other = d.join("other");
    autoencoder(&other, 4, 2);
    assert_user_error(
        &sample(&["--autoencoder", &s(&other)]),
        &["no longer matches the latents this model was trained on", &rec.fingerprint],
    );
    std::fs::write(d.join("other.toml"), config(&cache, "autoencoder = \"other\"", "")).unwrap();
    let o = msdiff(&["train", "--config", &s(&d.join("other.toml")), "--run", &s(&d.join("run-other"))]);
    assert_user_error(&o, &["fingerprint", "re-encode", &s(&other)]);
    // An autoencoder with 3 latent channels cannot feed the 2-channel U-Net.
    let wide = d.join("wide");
    autoencoder(&wide, 5, 3);
    assert_user_error(&sample(&["--autoencoder", &s(&wide)]), &["latents whose channels do not fit the U-Net"]);
    // An explicit model.in_channels that is not the latents' names them.
    std::fs::write(d.join("c3.toml"), config(&cache, "", "in_channels = 3")).unwrap();
    let o = msdiff(&["train", "--config", &s(&d.join("c3.toml")), "--dry-run"]);
    assert_user_error(&o, &["model.in_channels = 3", "latents", "2 channel(s)"]);

    // eval: FID of the decoded images (needs the Inception weights): the FID of the images
    // `msdiff sample` writes for the same seeds.
    if let Some(w) = common::fid_weights() {
        let reference = d.join("ref.safetensors");
        let w = s(&w);
        ok(msdiff(&["fid", "stats", "--data", "builtin", "--limit", "8", "--out", &s(&reference), "--weights", &w]));
        ok(sample(&["--autoencoder", &s(&moved)]));
        let fid = |out: &str| out.split_whitespace().nth(1).unwrap_or_default().to_string();
        let e = ok(msdiff(&[
            "eval",
            "--checkpoint",
            &s(&run),
            "--ref",
            &s(&reference),
            "--n",
            "4",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--weights",
            &w,
            "--autoencoder",
            &s(&moved),
        ]));
        assert!(e.starts_with("FID ") && e.contains("latents decoded by"), "{e}");
        let c = ok(msdiff(&[
            "fid",
            "calc",
            "--images",
            &s(&out.join("samples.npy")),
            "--ref",
            &s(&reference),
            "--weights",
            &w,
        ]));
        assert_eq!(fid(&e), fid(&c), "eval: {e}\nfid calc: {c}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

fn ddpm_config(stages: &str, process: &str) -> String {
    format!(
        r#"
[model]
preset = "tiny"
[process]
{process}
[stages]
{stages}
"#
    )
}

const LDM: &str = r#"kind = "ddpm"
schedule = { type = "scaled_linear", beta_start = 0.0015, beta_end = 0.0195 }"#;

#[test]
fn boundaries_step_gives_each_stage_exactly_ldms_steps() {
    let tc = TrainConfig::from_toml(&ddpm_config("boundaries_step = [442, 631]", LDM), "test").unwrap();
    let cfg = tc.resolve(Path::new("."), [1, 16, 16]).unwrap();
    let split = cfg.split.clone().unwrap();
    assert_eq!(split.boundaries_ddpm_step, [442.0, 631.0]);
    let process = cfg.process.build().unwrap();
    let sigma_at = |n: usize| process.sigma((n + 1) as f64 / 1000.0);
    assert_eq!(split.boundaries_sigma, [sigma_at(442), sigma_at(631)]);
    let sampler = StageSampler::new(&process, &cfg.objective, &cfg.boundaries_sigma()).unwrap();
    assert_eq!(sampler.discrete_steps(0).unwrap(), (0..442).collect::<Vec<_>>());
    assert_eq!(sampler.discrete_steps(1).unwrap(), (442..631).collect::<Vec<_>>());
    assert_eq!(sampler.discrete_steps(2).unwrap(), (631..1000).collect::<Vec<_>>());
    // The default `mass` weights are the steps' shares.
    for (w, want) in sampler.weights.iter().zip([0.442, 0.189, 0.369]) {
        assert!((w - want).abs() < 1e-12, "{:?}", sampler.weights);
    }
    // The model routes every step as LDM does (t < 442 -> 0, < 631 -> 1, else 2).
    let b = cfg.boundaries_sigma();
    for n in 0..1000 {
        let ldm = if n < 442 {
            0
        } else if n < 631 {
            1
        } else {
            2
        };
        assert_eq!(msdiff::cluster::stage_of_sigma(sigma_at(n), &b), ldm, "step {n}");
    }
    // Draws: every drawn step is one of its stage's, and the first and last of each are drawn.
    let d = sampler.draw(20_000, &mut msdiff::rng::Rng::new(7)).unwrap();
    let mut seen = [[false; 1000]; 3];
    for (j, t) in d.stage.iter().zip(&d.t) {
        let n = (t * 1000.0).round() as usize - 1;
        assert!(sampler.discrete_steps(*j as usize).unwrap().contains(&n), "step {n} drawn for stage {j}");
        seen[*j as usize][n] = true;
    }
    for (j, (a, z)) in [(0, 441), (442, 630), (631, 999)].into_iter().enumerate() {
        assert!(seen[j][a] && seen[j][z], "stage {j} never drew step {a} or {z}");
    }

    // Refusals, each one line.
    let bad = |stages: &str, process: &str, needles: &[&str]| {
        let tc = TrainConfig::from_toml(&ddpm_config(stages, process), "test").unwrap();
        assert_one_line(tc.resolve(Path::new("."), [1, 16, 16]).unwrap_err(), needles);
    };
    bad("boundaries_step = [442, 631]", "kind = \"vp\"", &["boundaries_step", "kind = \"ddpm\"", "boundaries_t"]);
    bad("boundaries_step = [442, 631]\nboundaries_t = [0.3, 0.6]", LDM, &["only one", "boundaries_step"]);
    bad("boundaries_step = [631, 442]", LDM, &["strictly increasing"]);
    bad("boundaries_step = [0, 631]", LDM, &["outside 1..=998"]);
    bad("boundaries_step = [442, 999]", LDM, &["outside 1..=998"]);
    bad("boundaries_step = [442]", LDM, &["2 stages", "3 decoders"]);
}

#[test]
fn latent_only_keys_are_refused_on_pixel_data() {
    let _serial = serial();
    let tc = TrainConfig::from_toml("[data]\nautoencoder = \"ae\"\n[model]\npreset = \"tiny\"\n", "test").unwrap();
    assert_one_line(tc.resolve(Path::new("."), [1, 16, 16]).unwrap_err(), &["[data] autoencoder", "latents:FILE"]);
    // A cache that is not there is one line naming it.
    let tc = TrainConfig::from_toml("[data]\nspec = \"latents:/nonexistent/z.safetensors\"\n", "test").unwrap();
    assert_one_line(tc.resolve(Path::new("."), [2, 8, 8]).unwrap_err(), &["/nonexistent/z.safetensors"]);
    // A pixel-space model decodes nothing and refuses --autoencoder.
    let (cfg, ds) = common::setup("steps = 1");
    let run = common::tmp("latent-pixel");
    let out = msdiff::train::trainer::train(&cfg, &ds, &common::opts(&run, None, None)).unwrap();
    let l = msdiff::model::Loaded::from_checkpoint(&out.checkpoint, Device::Cpu, true).unwrap();
    assert!(l.config.latent.is_none() && l.latent_decoder(None, Device::Cpu).unwrap().is_none());
    let e = l.latent_decoder(Some(Path::new("ae")), Device::Cpu).err().unwrap();
    assert_one_line(e, &["--autoencoder", "trained on latents", "builtin"]);
    std::fs::remove_dir_all(&run).unwrap();
}

/// A VQ autoencoder's latents decode through its codebook, and a cache that recorded its
/// autoencoder by a relative path finds it beside the cache.
#[test]
fn a_vq_run_decodes_through_the_codebook_and_relative_records_resolve_beside_the_cache() {
    let _serial = serial();
    use msdiff::autoencoder::eval::{cache_latents, CacheOptions, Scale};
    use msdiff::autoencoder::EncodeMode;
    use msdiff::latent::{LatentDecoder, Use};
    let d = common::tmp("latent-vq");
    let ae = d.join("vq-ae-beside");
    let m = AutoencoderModel::new(&AutoencoderConfig::preset("tiny-vq").unwrap(), 2, Device::Cpu, "test").unwrap();
    m.save(&ae).unwrap();
    let ds = msdiff::data::load("builtin", &msdiff::data::LoadOptions { count: 16, ..Default::default() }).unwrap();
    let opts = CacheOptions { mode: EncodeMode::Mean, seed: 0, quantize: false, scale: Scale::Given(0.5), batch: 8 };
    // Recorded as a bare relative name (as caches before absolute records hold it).
    let cache = cache_latents(&m, "vq-ae-beside", &ds, "builtin", opts, |_| {}).unwrap();
    cache.save(&d.join("z.safetensors")).unwrap();
    let tc = TrainConfig::from_toml(&config(&d.join("z.safetensors"), "", ""), "test").unwrap();
    let cfg = tc.resolve(&d, [2, 8, 8]).unwrap();
    let rec = cfg.latent.clone().unwrap();
    assert_eq!((rec.vq, rec.autoencoder.clone(), rec.scale_factor), (true, s(&ae), 0.5));
    let dec = LatentDecoder::load(&rec, None, &cfg.model, Device::Cpu, Use::Sample).unwrap();
    let x = msdiff::rng::Rng::new(1).randn(&[3, 2, 8, 8], Kind::Float);
    let z = &x / 0.5 + rec.shift_factor;
    let got = dec.decode(&x, 3, |_| {}).unwrap();
    let quantised = m.decode(&z, false, 3, |_| {}).unwrap().clamp(-1.0, 1.0);
    assert!(rel_err(&got, &quantised) < 1e-6, "{:.2e}", rel_err(&got, &quantised));
    let not = m.decode(&z, true, 3, |_| {}).unwrap().clamp(-1.0, 1.0);
    assert!(rel_err(&got, &not) > 1e-3, "VQ decoding must quantise");
    std::fs::remove_dir_all(&d).unwrap();
}

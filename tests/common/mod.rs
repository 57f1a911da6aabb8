//! Helpers shared by the training tests: a tiny configuration, temporary run folders, checkpoint
//! contents.
#![allow(dead_code)]
use msdiff::data::{self, Dataset, LoadOptions};
use msdiff::train::{checkpoint, trainer, ResolvedConfig, TrainConfig, TrainOptions, TrainOutcome};
use std::path::{Path, PathBuf};
use tch::Device;

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msdiff-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn tiny_config(extra: &str) -> String {
    format!(
        r#"
[data]
spec = "builtin"
count = 256
[model]
preset = "tiny"
dropout = 0.1
[stages]
boundaries_t = [0.3, 0.6]
[optim]
lr = 1e-3
warmup_steps = 2
[ema]
decay = 0.9
[train]
batch = 8
steps = 6
checkpoint_every = 2
keep_last = 10
log_every = 1
{extra}
"#
    )
}

/// The tiny config with `[train]` overrides given as `key = value` lines.
pub fn setup(overrides: &str) -> (ResolvedConfig, Dataset) {
    let mut text = tiny_config("");
    for line in overrides.lines() {
        let key = line.split('=').next().unwrap().trim();
        text = text.lines().filter(|l| !l.trim_start().starts_with(&format!("{key} "))).collect::<Vec<_>>().join("\n");
        text.push('\n');
        text.push_str(line);
        text.push('\n');
    }
    let tc = TrainConfig::from_toml(&text, "test").unwrap();
    let ds = data::load("builtin", &LoadOptions { count: 256, ..Default::default() }).unwrap();
    let cfg = tc.resolve(Path::new("."), ds.image_shape()).unwrap();
    (cfg, ds)
}

pub fn opts(run: &Path, resume: Option<PathBuf>, stop_after: Option<u64>) -> TrainOptions {
    TrainOptions {
        run_dir: run.to_path_buf(),
        resume,
        device: Device::Cpu,
        progress: false,
        stop_after,
        write_samples: false,
    }
}

pub fn all_tensors(ck: &Path) -> Vec<(String, tch::Tensor)> {
    let (_, t) = checkpoint::load(ck).unwrap();
    let mut v = Vec::new();
    for (p, g) in [("model", t.model), ("ema", t.ema), ("m", t.adam_m), ("v", t.adam_v)] {
        v.extend(g.into_iter().map(|(n, x)| (format!("{p}.{n}"), x)));
    }
    v
}

/// Trains `cfg` straight through, and again stopped half-way and resumed from its checkpoint; asserts
/// that both end with identical tensors (weights, EMA, Adam moments) and log identical losses after
/// the resume. Returns the uninterrupted run. `what` names the case in failure messages.
pub fn assert_resume_is_exact(cfg: &ResolvedConfig, ds: &Dataset, what: &str) -> TrainOutcome {
    let steps = cfg.train.steps;
    let half = steps / 2;
    let full = trainer::train(cfg, ds, &opts(&tmp("straight"), None, None)).unwrap();
    assert_eq!(full.step, steps);
    let b = tmp("resumed");
    let part = trainer::train(cfg, ds, &opts(&b, None, Some(half))).unwrap();
    assert!(part.interrupted && part.step == half);
    let rest = trainer::train(cfg, ds, &opts(&b, Some(b.clone()), None)).unwrap();
    assert_eq!(rest.step, steps);
    let (x, y) = (all_tensors(&full.checkpoint), all_tensors(&rest.checkpoint));
    assert_eq!(x.len(), y.len());
    for ((n1, t1), (n2, t2)) in x.iter().zip(&y) {
        assert_eq!(n1, n2);
        assert!(t1.equal(t2), "{n1} differs after {what}");
    }
    // Losses logged after the resume equal the uninterrupted run's (metrics.jsonl).
    let la: Vec<f64> = full.losses.iter().skip(half as usize).map(|l| l.1).collect();
    let lb: Vec<f64> = rest.losses.iter().map(|l| l.1).collect();
    assert_eq!(la, lb);
    full
}

/// The tiny configuration at a batch that cannot fit (see [`assert_out_of_memory_is_a_clear_error`]).
pub fn oom_config() -> String {
    tiny_config("")
        .replace("count = 256", "count = 32\nresolution = 256")
        .replace("dropout = 0.1", "dropout = 0.1\nattn_resolutions = [256]")
        .replace("batch = 8", "batch = 32")
}

/// Whether this machine refuses a 512 GiB allocation outright, so that a CPU out-of-memory test fails
/// fast instead of being granted the memory and filling it. Asks the allocator for exactly that
/// (reserved, never touched, released at once), as libtorch's host allocator would: Linux's
/// overcommit heuristic refuses one allocation larger than RAM + swap. Says SKIPPED when granted.
pub fn refuses_a_512_gib_allocation() -> bool {
    let refuses = Vec::<u8>::new().try_reserve_exact(512 << 30).is_err();
    if !refuses {
        eprintln!("SKIPPED: this machine grants a 512 GiB allocation; the CPU out-of-memory test would really fill it");
    }
    refuses
}

/// Training at a batch that cannot fit fails with the out-of-memory message (batch size, what to do,
/// no checkpoint written) and leaves `device` usable: a normal run trains right after.
///
/// The net is `tiny` on 256x256 images with attention at full resolution: the first attention map
/// alone is batch x (256*256)^2 x 4 B = 16 GiB per image, 512 GiB at batch 32, more than any single
/// GPU and, on a CPU, refused at once by Linux's overcommit heuristic (one allocation larger than RAM
/// + swap); everything before it (a conv and a residual block: 128 MiB per activation, ~2 GiB) is cheap.
pub fn assert_out_of_memory_is_a_clear_error(device: Device, name: &str) {
    let tc = TrainConfig::from_toml(&oom_config(), "oom").unwrap();
    let ds = data::load("builtin", &LoadOptions { count: 32, resolution: 256, ..Default::default() }).unwrap();
    let cfg = tc.resolve(Path::new("."), ds.image_shape()).unwrap();
    let run = tmp(&format!("{name}-oom"));
    let e = trainer::train(&cfg, &ds, &TrainOptions { device, ..opts(&run, None, None) })
        .err()
        .expect("a 512 GiB attention map must not fit");
    let msg = format!("{e:#}");
    assert!(msg.contains("out of memory at batch size 32"), "{msg}");
    assert!(msg.contains("lower train.batch") && msg.contains("no checkpoint was written yet"), "{msg}");
    assert!(checkpoint::list(&run.join("checkpoints")).unwrap().is_empty(), "no checkpoint may appear");
    let (cfg, ds) = setup("steps = 2");
    let out =
        trainer::train(&cfg, &ds, &TrainOptions { device, ..opts(&tmp(&format!("{name}-after-oom")), None, None) })
            .unwrap();
    assert_eq!(out.step, 2);
}

/// The FID Inception weights as the FID module's tests find them ($MSDIFF_FID_WEIGHTS, the shared
/// copy, the fetched copy), or `None`: skipped loudly, or a failure under CI=true.
pub fn fid_weights() -> Option<PathBuf> {
    use msdiff::data::assets::{cache_root, fetched_path, test_asset_present, Asset};
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join(msdiff::fid::DEFAULT_WEIGHTS);
    let fetched = cache_root().map(|r| fetched_path(Asset::FidWeights, &r)).filter(|f| f.is_file());
    let p = match std::env::var_os("MSDIFF_FID_WEIGHTS").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None if !shared.is_file() && fetched.is_some() => fetched.unwrap_or_default(),
        None => shared,
    };
    test_asset_present(&p, "FID weights").then_some(p)
}

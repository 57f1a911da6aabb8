//! Helpers shared by the training tests: a tiny configuration, temporary run folders, checkpoint
//! contents.
#![allow(dead_code)]
use msdiff::data::{self, Dataset, LoadOptions};
use msdiff::train::{checkpoint, ResolvedConfig, TrainConfig, TrainOptions};
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
    TrainOptions { run_dir: run.to_path_buf(), resume, device: Device::Cpu, progress: false, stop_after, write_samples: false }
}

pub fn all_tensors(ck: &Path) -> Vec<(String, tch::Tensor)> {
    let (_, t) = checkpoint::load(ck).unwrap();
    let mut v = Vec::new();
    for (p, g) in [("model", t.model), ("ema", t.ema), ("m", t.adam_m), ("v", t.adam_v)] {
        v.extend(g.into_iter().map(|(n, x)| (format!("{p}.{n}"), x)));
    }
    v
}


//! Checkpoints: one folder per step, `checkpoints/step-00001000/` holding
//! `weights.safetensors` (model `model.*`, EMA `ema.*`, Adam moments `adam_m.*` / `adam_v.*`) and
//! `state.json` (format tag, step, the resolved configuration, Adam step counts).
//!
//! Written atomically: everything goes into a hidden `.step-N.partial-PID` folder that is renamed
//! into place only when complete, so a crash or a full disk never leaves a half checkpoint under
//! the real name, and earlier checkpoints are untouched. Randomness needs no saved state: every
//! draw of step s comes from streams keyed by (seed, s) (see [`crate::train::trainer`]), so the
//! step number *is* the RNG state.
use super::config::ResolvedConfig;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const FORMAT: &str = "msdiff-checkpoint/1";
pub const WEIGHTS: &str = "weights.safetensors";
pub const STATE: &str = "state.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format: String,
    /// Optimiser steps completed.
    pub step: u64,
    pub config: ResolvedConfig,
    /// Adam's per-parameter step counts (a decoder that saw no sample does not advance).
    pub adam_steps: BTreeMap<String, u64>,
    /// The (seed, step) pair every random draw is derived from.
    pub rng: RngState,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RngState {
    pub seed: u64,
    pub next_step: u64,
}

/// Named tensors of one checkpoint, by group.
pub struct Tensors {
    pub model: Vec<(String, Tensor)>,
    pub ema: Vec<(String, Tensor)>,
    pub adam_m: Vec<(String, Tensor)>,
    pub adam_v: Vec<(String, Tensor)>,
}

pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The run folder a checkpoint folder belongs to: `<run>/checkpoints/step-N` -> `<run>` (the layout
/// both `msdiff train` and `msdiff autoencoder train` write); `.` when the path has no such parent.
pub fn run_dir(checkpoint: &Path) -> PathBuf {
    match checkpoint.parent().and_then(Path::parent) {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Save a checkpoint under `dir/step-N/` atomically and prune to the `keep_last` newest.
pub fn save(dir: &Path, state: &State, t: &Tensors, keep_last: usize) -> Result<PathBuf> {
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (prefix, group) in [("model", &t.model), ("ema", &t.ema), ("adam_m", &t.adam_m), ("adam_v", &t.adam_v)] {
        for (n, v) in group {
            named.push((format!("{prefix}.{n}"), v.shallow_clone()));
        }
    }
    write_step_folder(dir, state.step, &named, &serde_json::to_vec_pretty(state)?, keep_last)
}

/// Write `dir/step-N/` with `named` tensors (moved to the CPU) as [`WEIGHTS`] and `state_json`
/// as [`STATE`], atomically: everything goes into a hidden partial folder renamed into place only
/// when complete (a crash or a full disk leaves earlier checkpoints intact). Then prune to the
/// `keep_last` newest. The one writer of diffusion and autoencoder checkpoints.
pub fn write_step_folder(
    dir: &Path,
    step: u64,
    named: &[(String, Tensor)],
    state_json: &[u8],
    keep_last: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create checkpoint folder {}", dir.display()))?;
    let final_dir = dir.join(step_dir_name(step));
    let partial = dir.join(format!(".{}.partial-{}", step_dir_name(step), std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&partial)?;
        let cpu: Vec<(String, Tensor)> =
            named.iter().map(|(n, v)| (n.clone(), v.detach().to_device(tch::Device::Cpu).contiguous())).collect();
        let wpath = partial.join(WEIGHTS);
        Tensor::write_safetensors(&cpu, &wpath).map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::File::open(&wpath)?.sync_all()?;
        crate::io::atomic::write_atomic_bytes(&partial.join(STATE), state_json)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&partial, &final_dir)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e.context(format!(
            "cannot save checkpoint {} (disk full?); earlier checkpoints are intact",
            final_dir.display()
        )));
    }
    prune(dir, keep_last)?;
    Ok(final_dir)
}

/// All complete checkpoints in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(v) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            v.push((n, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

fn prune(dir: &Path, keep_last: usize) -> Result<()> {
    let all = list(dir)?;
    if all.len() > keep_last {
        for (_, p) in &all[..all.len() - keep_last] {
            std::fs::remove_dir_all(p).with_context(|| format!("cannot remove old checkpoint {}", p.display()))?;
        }
    }
    Ok(())
}

/// Resolve a user path: a checkpoint folder, or a run folder (its newest checkpoint), or a
/// `checkpoints/` folder.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE).is_file() {
        return Ok(path.to_path_buf());
    }
    for d in [path.join("checkpoints"), path.to_path_buf()] {
        if let Some((_, p)) = list(&d)?.pop() {
            return Ok(p);
        }
    }
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    bail!(
        "{} holds no checkpoint (expected a step-N folder with {STATE} and {WEIGHTS}, or a run folder)",
        path.display()
    )
}

/// Read a checkpoint's state alone (format and configuration checked), without its tensors.
pub fn load_state(path: &Path) -> Result<State> {
    read_state(&resolve(path)?)
}

/// The state of the resolved checkpoint folder `dir`.
fn read_state(dir: &Path) -> Result<State> {
    let spath = dir.join(STATE);
    let text = std::fs::read_to_string(&spath).with_context(|| format!("cannot read {}", spath.display()))?;
    let state: State = serde_json::from_str(&text)
        .with_context(|| format!("{} is corrupt or not a msdiff checkpoint state", spath.display()))?;
    ensure!(
        state.format == FORMAT,
        "{}: unsupported checkpoint format '{}' (expected {FORMAT})",
        spath.display(),
        state.format
    );
    state.config.validate().with_context(|| format!("{} holds an invalid configuration", spath.display()))?;
    Ok(state)
}

/// Read a checkpoint's state and tensors, checking format and completeness.
pub fn load(path: &Path) -> Result<(State, Tensors)> {
    let dir = resolve(path)?;
    let state = read_state(&dir)?;
    let wpath = dir.join(WEIGHTS);
    ensure!(wpath.is_file(), "checkpoint {} has no {WEIGHTS}", dir.display());
    let named = Tensor::read_safetensors(&wpath)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{} is corrupt or truncated", wpath.display()))?;
    let mut t = Tensors { model: vec![], ema: vec![], adam_m: vec![], adam_v: vec![] };
    for (name, v) in named {
        // Checkpoints hold f32 only (bf16 runs store their f32 masters); anything else was not written here.
        ensure!(
            v.kind() == tch::Kind::Float,
            "{}: tensor '{name}' is {:?}, expected f32: not an msdiff checkpoint",
            wpath.display(),
            v.kind()
        );
        let (prefix, rest) = name.split_once('.').unwrap_or(("", &name));
        let entry = (rest.to_string(), v);
        match prefix {
            "model" => t.model.push(entry),
            "ema" => t.ema.push(entry),
            "adam_m" => t.adam_m.push(entry),
            "adam_v" => t.adam_v.push(entry),
            _ => bail!("{}: unexpected tensor '{name}'", wpath.display()),
        }
    }
    for g in [&mut t.model, &mut t.ema, &mut t.adam_m, &mut t.adam_v] {
        g.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok((state, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_is_two_levels_up_or_the_current_folder() {
        let ck = Path::new("runs/a").join("checkpoints").join(step_dir_name(10));
        assert_eq!(run_dir(&ck), Path::new("runs/a"));
        assert_eq!(run_dir(Path::new("/abs/run/checkpoints/step-00000001")), Path::new("/abs/run"));
        // Relative paths without a run level resolve to the current folder, not an empty path.
        assert_eq!(run_dir(Path::new("checkpoints/step-00000001")), Path::new("."));
        assert_eq!(run_dir(Path::new("step-00000001")), Path::new("."));
    }
}

//! The training loop: draws each step's batch, runs [`TrainState::step`], and logs,
//! checkpoints and samples on its cadence.
//!
//! Reproducibility: every random draw of step s (1-based) — batch order, flips, stages, times,
//! noise, dropout — comes from streams keyed by (seed, s): the data order from
//! [`BatchOrder`]'s per-epoch permutations, the rest from `Rng::stream(seed ^ STEP, s)`,
//! and libtorch's dropout RNG is re-seeded from (seed, s) before the forward pass. A resumed run
//! therefore draws exactly what an uninterrupted one would, and with the restored weights, EMA and
//! Adam state it continues bit for bit.
//!
//! Data-parallel (a [`crate::dist`] group is set): `train.batch` is the global batch. Every rank
//! draws the whole step's batch positions from the same streams (cheap next to the network) and
//! keeps its contiguous share (rank r: positions r b/N .. (r+1) b/N), so N ranks train on
//! exactly the images, flips, stages and noise of the one-process run; gradients are averaged
//! before clipping ([`TrainState::step`]). Only rank 0 writes files and shows progress; the
//! checkpoint holds the global state, so a run resumes on any number of ranks. Dropout masks
//! (libtorch's generator) are drawn per rank and are the one thing that differs from one process.
use super::augment::AugmentPipe;
use super::checkpoint;
use super::config::ResolvedConfig;
use super::metrics::LossWindow;
use super::report::{plot_losses, write_samples};
use super::state::{Batch, TrainState, Update};
use crate::data::order::BatchOrder;
use crate::data::Dataset;
use crate::objective::StageSampler;
use crate::rng::Rng;
use crate::runtime::{batch_to_device, is_oom};
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const STEP_STREAM: u64 = 0x57E9_0000_0000_0002;
const AUGMENT_STREAM: u64 = 0xA06E_0000_0000_0006;

/// Set by Ctrl-C; the loop saves a checkpoint and returns.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Install the Ctrl-C handler once (later calls are no-ops).
pub fn install_ctrlc() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nmsdiff: second Ctrl-C, exiting without saving");
                std::process::exit(130);
            }
            eprintln!("\nmsdiff: Ctrl-C: finishing this step, saving a checkpoint and exiting (Ctrl-C again to abort)");
        });
    });
}

pub struct TrainOptions {
    /// Run folder: config.toml, metrics.jsonl, checkpoints/, samples/, loss.png.
    pub run_dir: PathBuf,
    /// Resume from this checkpoint (or run folder).
    pub resume: Option<PathBuf>,
    pub device: Device,
    /// Show a progress bar (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Stop (as if interrupted) after this many steps of this session: for tests.
    pub stop_after: Option<u64>,
    /// Write sample grids (periodic and final).
    pub write_samples: bool,
}

pub struct TrainOutcome {
    pub step: u64,
    pub checkpoint: PathBuf,
    pub interrupted: bool,
    /// (step, mean loss over the logging window) for this session.
    pub losses: Vec<(u64, f64)>,
    pub seconds: f64,
}

/// Run (or resume) training. `data` must match the configuration's model shape.
pub fn train(cfg: &ResolvedConfig, data: &Dataset, opts: &TrainOptions) -> Result<TrainOutcome> {
    let [c, h, w] = data.image_shape();
    ensure!(
        c as usize == cfg.model.in_channels && h as usize == cfg.model.resolution && w as usize == cfg.model.resolution,
        "the dataset's images are {c}x{h}x{w} but the model expects {}x{}x{}",
        cfg.model.in_channels,
        cfg.model.resolution,
        cfg.model.resolution
    );
    let device = opts.device;
    // A latent run: its autoencoder must be where the run says and must be the one that encoded
    // the latents (checked now, not at the first sample grid); it only decodes the grids.
    let decoder = match &cfg.latent {
        Some(rec) => {
            Some(crate::latent::LatentDecoder::load(rec, None, &cfg.model, device, crate::latent::Use::Train)?)
        }
        None => None,
    };
    let objective = cfg.build_objective()?;
    let t = &cfg.train;
    let group = crate::dist::current();
    let (rank, world) = group.map_or((0, 1), |g| (g.rank, g.world));
    let stages =
        StageSampler::new(&objective.process, &cfg.objective, &objective.boundaries_sigma)?.for_rank(rank, world)?;
    // Under the `rank` stage policy position p of the global batch belongs to rank p / local,
    // whose stage is that rank mod K: what the log attributes each global sample to.
    let rank_stages = (cfg.objective.policy == crate::objective::StagePolicy::Rank).then(|| {
        let k = stages.stages() as i64;
        (0..t.batch).map(|p| ((p / (t.batch / world).max(1)) as i64) % k).collect::<Vec<i64>>()
    });
    let main = rank == 0;
    ensure!(
        t.batch % world == 0,
        "train.batch = {} does not divide over {world} ranks; make the global batch a multiple of the number of ranks (--batch)",
        t.batch
    );
    let (local, lo) = (t.batch / world, rank * (t.batch / world));
    if main {
        std::fs::create_dir_all(&opts.run_dir)
            .with_context(|| format!("cannot create run folder {}", opts.run_dir.display()))?;
        crate::io::atomic::write_atomic_bytes(&opts.run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    }

    let mut state = TrainState::new(&cfg.model, &cfg.optim, t.precision, t.seed, device)?;
    if let Some(r) = &opts.resume {
        let (saved, tensors) = checkpoint::load(r)?;
        check_resumable(&saved.config, cfg)?;
        state.restore(&saved, &tensors)?;
        ensure!(state.step <= t.steps, "the checkpoint is at step {}, beyond train.steps = {}", state.step, t.steps);
    }
    if let Some(g) = group {
        state.join(g)?;
    }
    let start_step = state.step;
    let ckpt_dir = opts.run_dir.join("checkpoints");

    let metrics_path = opts.run_dir.join("metrics.jsonl");
    let mut log = match main {
        true => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .with_context(|| format!("cannot open {}", metrics_path.display()))?,
        ),
        false => None,
    };
    let bar = crate::runtime::progress_bar(t.steps, "train", !opts.progress || !main);
    bar.set_position(start_step);

    let mut order = BatchOrder::new(data.len(), t.seed);
    let augment = cfg.augment.enabled().then(|| AugmentPipe::new(cfg.augment.clone())).transpose()?;
    // What a training image costs under this run's stage policy (docs/EDM.md §5).
    let compute = cfg.compute()?;
    if main {
        crate::io::atomic::write_atomic_bytes(
            &opts.run_dir.join("compute.json"),
            serde_json::to_string_pretty(&compute)?.as_bytes(),
        )?;
    }
    let (mut window_gflop, mut window_images) = (0.0, 0usize);
    let mut window_comm = (0.0, 0.0);
    let began = Instant::now();
    let mut window = LossWindow::new(stages.stages());
    let mut losses = Vec::new();
    let mut last_ckpt: Option<PathBuf> = None;
    let mut interrupted = false;
    while state.step < t.steps {
        // Data-parallel, a Ctrl-C on any rank is voted on in the next step's all-reduce, so
        // that every rank stops after the same step.
        if (group.is_none() && INTERRUPTED.load(Ordering::SeqCst))
            || (group.is_some() && state.stop)
            || opts.stop_after.is_some_and(|n| state.step - start_step >= n)
        {
            interrupted = true;
            break;
        }
        state.stop = INTERRUPTED.load(Ordering::SeqCst);
        let s = state.step + 1;
        let mut rng = Rng::stream(t.seed ^ STEP_STREAM, s);
        let all_idx = order.batch(state.step, t.batch);
        // Augmentation draws over the whole batch, so with it every rank prepares all images.
        let keep = if augment.is_some() { 0..t.batch } else { lo..lo + local };
        let idx = Tensor::from_slice(&all_idx[keep.clone()]);
        let mut x0 = data.images.index_select(0, &idx);
        if cfg.data.flip {
            let flips: Vec<f32> = (0..t.batch).map(|_| (rng.uniform() < 0.5) as i64 as f32).collect();
            let fl = Tensor::from_slice(&flips[keep.clone()]).reshape([-1, 1, 1, 1]);
            x0 = &x0 * (1.0 - &fl) + x0.flip([3]) * &fl;
        }
        let all_draws = stages.draw(t.batch, &mut rng)?;
        let draws = if world == 1 { all_draws.clone() } else { all_draws.slice(lo, local) };
        let z = rng.randn(&[t.batch as i64, c, h, w], Kind::Float);
        let z = batch_to_device(&if world == 1 { z } else { z.narrow(0, lo as i64, local as i64) }, device);
        let x0 = batch_to_device(&x0, device);
        // EDM's augmentation draws from its own stream, so runs without it draw as before.
        let (x0, labels) = match &augment {
            Some(pipe) => {
                let (x, l) = pipe.run(&x0, &mut Rng::stream(t.seed ^ AUGMENT_STREAM, s))?;
                match world {
                    1 => (x, Some(l)),
                    _ => (x.narrow(0, lo as i64, local as i64), Some(l.narrow(0, lo as i64, local as i64))),
                }
            }
            None => (x0, None),
        };
        let oom = |e: String| -> anyhow::Error {
            let kept = match &last_ckpt {
                Some(p) => format!("the last checkpoint {} is intact", p.display()),
                None => "no checkpoint was written yet".into(),
            };
            anyhow::anyhow!(
                "out of memory at batch size {} on {device:?} (step {s}, {} precision); lower train.batch (or --batch), or use --precision bf16; {kept}; libtorch: {}",
                t.batch,
                t.precision,
                crate::runtime::oom_core(&e)
            )
        };
        let lr = cfg.optim.lr_for(s, t.batch);
        let decay = cfg.ema.decay_at(s, t.batch);
        let stats = guard_oom(
            || {
                let batch = Batch { x0: &x0, z: &z, draws: &draws, augment: labels.as_ref() };
                // Each rank's dropout masks come from its own seed (rank 0's is the one-process seed).
                let dropout_seed = dropout_seed(t.seed, s) ^ ((rank as i64) << 40);
                state.step(&objective, &batch, Update { lr, ema_decay: decay, dropout_seed })
            },
            &oom,
        )?;
        if stats.diverged() {
            bar.abandon();
            let hint = match &last_ckpt {
                Some(p) => format!("the last good checkpoint is {}", p.display()),
                None => "no checkpoint was written yet".into(),
            };
            bail!(
                "the loss became {} at step {s}; training stopped ({hint}); try a lower optim.lr or stronger optim.grad_clip",
                stats.loss
            );
        }
        // The statistics are global: stats.per_sample holds every rank's losses.
        let mut draws = all_draws;
        if let Some(st) = &rank_stages {
            draws.stage.clone_from(st);
        }
        window.add(&stats, &draws.stage);
        window_gflop += draws.stage.iter().map(|&j| compute.stage_gflops[j as usize]).sum::<f64>();
        window_images += draws.stage.len();
        if s % t.log_every == 0 || s == t.steps {
            let line = window.flush(s, lr, began.elapsed().as_secs_f64());
            // The forward GFLOPs per training image this window actually ran (stages as drawn).
            let mut v = serde_json::to_value(&line)?;
            v["fwd_gflop_per_image"] = serde_json::json!(window_gflop / window_images.max(1) as f64);
            (window_gflop, window_images) = (0.0, 0);
            if group.is_some() {
                // Data-parallel: this window's seconds in the all-reduce and in all gradient sync.
                v["allreduce_s"] = serde_json::json!(state.allreduce_seconds - window_comm.0);
                v["sync_s"] = serde_json::json!(state.sync_seconds - window_comm.1);
                window_comm = (state.allreduce_seconds, state.sync_seconds);
            }
            if let Some(log) = log.as_mut() {
                writeln!(log, "{}", json_line(&v)).context("cannot write metrics.jsonl")?;
            }
            bar.set_message(line.summary());
            losses.push((s, line.loss));
        }
        bar.set_position(s);
        if main && s % t.checkpoint_every == 0 && s != t.steps {
            last_ckpt = Some(state.save(&ckpt_dir, cfg)?);
        }
        if main && opts.write_samples && t.sample_every > 0 && s % t.sample_every == 0 && s != t.steps {
            write_samples(cfg, &state.ema, decoder.as_ref(), &opts.run_dir, s, device)?;
        }
    }
    state.check_ranks_agree()?;
    // Rank 0 writes; the others return the path it writes to.
    let ckpt = match main {
        true => state.save(&ckpt_dir, cfg)?,
        false => ckpt_dir.join(checkpoint::step_dir_name(state.step)),
    };
    bar.finish_and_clear();
    let step = state.step;
    if main && opts.write_samples && !interrupted {
        write_samples(cfg, &state.ema, decoder.as_ref(), &opts.run_dir, step, device)?;
    }
    if main && !interrupted {
        let _ = plot_losses(&opts.run_dir);
    }
    if let Some(g) = group {
        // Every rank returns once the checkpoint is on disk.
        g.barrier()?;
    }
    Ok(TrainOutcome { step, checkpoint: ckpt, interrupted, losses, seconds: began.elapsed().as_secs_f64() })
}

fn json_line<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Run `f`, turning a libtorch out-of-memory failure (an error, or a panic from an infallible tch
/// call) into `oom(message)`; other panics propagate unchanged.
fn guard_oom<T>(f: impl FnOnce() -> Result<T>, oom: &dyn Fn(String) -> anyhow::Error) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let msg = format!("{e:#}");
            Err(if is_oom(&msg) { oom(msg) } else { e })
        }
        Err(payload) => {
            let msg = crate::runtime::panic_text(payload.as_ref());
            if is_oom(msg) {
                Err(oom(msg.to_string()))
            } else {
                std::panic::resume_unwind(payload)
            }
        }
    }
}

fn dropout_seed(seed: u64, step: u64) -> i64 {
    (Rng::stream(seed ^ 0xD209_0000_0000_0004, step).next_u64() >> 1) as i64
}

/// A resumed run must be the same experiment: everything but the loop's bookkeeping
/// (`train.steps`, checkpoint/log/sample cadence) has to match the checkpoint.
fn check_resumable(old: &ResolvedConfig, new: &ResolvedConfig) -> Result<()> {
    fn differs<T: Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    }
    let stages = |c: &ResolvedConfig| c.split.as_ref().map(|s| s.boundaries_t.clone());
    // The autoencoder's path may change (files move); the latents it made may not.
    let data = |c: &ResolvedConfig| crate::train::config::DataConfig { autoencoder: None, ..c.data.clone() };
    let latents = match (&old.latent, &new.latent) {
        (Some(a), Some(b)) => !a.same_latents(b),
        // A run from before the [latent] record existed may gain it (the data spec is compared).
        (None, _) => false,
        (Some(_), None) => true,
    };
    let pairs = [
        ("data", differs(&data(old), &data(new))),
        ("latent", latents),
        ("model", differs(&old.model, &new.model)),
        ("process", differs(&old.process, &new.process)),
        ("prediction", differs(&old.prediction, &new.prediction)),
        ("objective", differs(&old.objective, &new.objective)),
        ("stages", differs(&stages(old), &stages(new))),
        ("optim/ema", differs(&(&old.optim, &old.ema), &(&new.optim, &new.ema))),
        ("train.batch/seed", differs(&(old.train.batch, old.train.seed), &(new.train.batch, new.train.seed))),
    ];
    let diffs: Vec<&str> = pairs.iter().filter(|p| p.1).map(|p| p.0).collect();
    if !diffs.is_empty() {
        bail!(
            "cannot resume: the checkpoint was made with a different configuration ({} differ); resume with the run's own config.toml",
            diffs.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_becomes_an_error_naming_the_batch_and_other_panics_propagate() {
        let oom =
            |m: String| anyhow::anyhow!("out of memory at batch size 64 on Cuda(0); lower train.batch; libtorch: {m}");
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let e =
            guard_oom(|| -> Result<()> { panic!("CUDA out of memory. Tried to allocate 2.00 GiB") }, &oom).unwrap_err();
        assert!(e.to_string().contains("batch size 64") && e.to_string().contains("lower train.batch"), "{e}");
        let e = guard_oom(
            || -> Result<()> { bail!("DefaultCPUAllocator: not enough memory: you tried to allocate 1 TB") },
            &oom,
        )
        .unwrap_err();
        assert!(e.to_string().contains("batch size 64"), "{e}");
        // libtorch 2.11's host allocator, verbatim (tests/train.rs provokes it for real).
        let cpu = "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 549755813888 bytes. Error code 12 (Cannot allocate memory)";
        let e = guard_oom(
            || -> Result<()> {
                panic!(
                    "called `Result::unwrap()` on an `Err` value: Torch(\"{cpu}\\nframe #0: c10::ThrowEnforceNotMet\")"
                )
            },
            &oom,
        )
        .unwrap_err();
        assert!(e.to_string().contains("batch size 64"), "{e}");
        assert_eq!(
            crate::runtime::oom_core(&format!(
                "called `Result::unwrap()` on an `Err` value: Torch(\"{cpu}\\nframe #0: x\")"
            )),
            &cpu[cpu.find("Default").unwrap()..]
        );
        let cuda = "CUDA out of memory. Tried to allocate 512.00 GiB. GPU 0 has a total capacity of 79.19 GiB";
        assert_eq!(crate::runtime::oom_core(&format!("Torch(\"{cuda}\")")), cuda);
        let e = guard_oom(|| -> Result<()> { bail!("shape mismatch") }, &oom).unwrap_err();
        assert_eq!(e.to_string(), "shape mismatch");
        let r = std::panic::catch_unwind(|| guard_oom(|| -> Result<()> { panic!("index out of range") }, &oom));
        std::panic::set_hook(prev);
        assert!(r.is_err(), "a non-OOM panic must propagate");
        assert_eq!(guard_oom(|| Ok(3), &oom).unwrap(), 3);
    }
}

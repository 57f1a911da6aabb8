//! The training loop.
//!
//! Reproducibility: every random draw of step s (1-based) — batch order, flips, stages, times,
//! noise, dropout — comes from streams keyed by (seed, s): the data order from a per-epoch
//! permutation `Rng::stream(seed ^ DATA, epoch)`, the rest from `Rng::stream(seed ^ STEP, s)`,
//! and libtorch's dropout RNG is re-seeded from (seed, s) before the forward pass. A resumed run
//! therefore draws exactly what an uninterrupted one would, and with the restored weights, EMA and
//! Adam state it continues bit for bit.
use super::checkpoint::{self, RngState, State, Tensors};
use super::config::ResolvedConfig;
use super::ema;
use super::network::Network;
use super::objective::StageSampler;
use super::optim::{gradients, Adam};
use crate::data::Dataset;
use crate::denoiser::model::{conditioning, ModelDenoiser, StagedNetwork};
use crate::runtime::{batch_to_device, is_oom, Precision};
use crate::denoiser::per_sample;
use crate::rng::Rng;
use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const DATA_STREAM: u64 = 0x0DA7_A000_0000_0001;
const STEP_STREAM: u64 = 0x57E9_0000_0000_0002;
const INIT_STREAM: u64 = 0x1417_0000_0000_0003;

/// libtorch's generator (weight init, dropout) is process-wide: trainers in one process (tests,
/// library users) hold this lock while they seed it and draw from it, so each run's draws stay
/// determined by its own (seed, step).
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

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

/// Indices of the batch at 0-based step `s`: consecutive slices of per-epoch permutations.
struct Order {
    n: usize,
    seed: u64,
    epoch: u64,
    perm: Vec<usize>,
}

impl Order {
    fn new(n: usize, seed: u64) -> Self {
        Order { n, seed, epoch: u64::MAX, perm: vec![] }
    }
    fn batch(&mut self, s: u64, b: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(b);
        for pos in (s * b as u64)..((s + 1) * b as u64) {
            let e = pos / self.n as u64;
            if e != self.epoch {
                self.epoch = e;
                self.perm = (0..self.n).collect();
                let mut r = Rng::stream(self.seed ^ DATA_STREAM, e);
                for i in (1..self.n).rev() {
                    let j = r.below(i as u64 + 1) as usize;
                    self.perm.swap(i, j);
                }
            }
            out.push(self.perm[(pos % self.n as u64) as usize] as i64);
        }
        out
    }
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
    let process = cfg.process.build()?;
    let boundaries = cfg.boundaries_sigma();
    let stages = StageSampler::new(&process, &cfg.objective, &boundaries)?;
    let t = &cfg.train;
    std::fs::create_dir_all(&opts.run_dir).with_context(|| format!("cannot create run folder {}", opts.run_dir.display()))?;
    crate::io::atomic::write_atomic_bytes(&opts.run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;

    // Model, EMA, optimiser: fresh or from the checkpoint. `masters` are the trained fp32
    // weights (Adam updates them, the EMA follows them, checkpoints store them); in fp32 they are
    // the model's own variables, in bf16 the model holds a bf16 copy refreshed after every step.
    let (mut model, ema_net) = {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed((t.seed ^ INIT_STREAM) as i64);
        (Network::new(&cfg.model, device)?, Network::new(&cfg.model, device)?)
    };
    let mixed = t.precision != Precision::Fp32;
    let masters: Vec<(String, Tensor)> = if mixed {
        model.params().into_iter().map(|(n, p)| (n, p.detach().copy())).collect()
    } else {
        model.params()
    };
    model.set_precision(t.precision);
    let params = model.params();
    let ema_params = ema_net.params();
    let mut adam = Adam::new(cfg.optim.clone(), &masters);
    let mut start_step = 0u64;
    if let Some(r) = &opts.resume {
        let (state, tensors) = checkpoint::load(r)?;
        check_resumable(&state.config, cfg)?;
        checkpoint::copy_into(&masters, &tensors.model, "weights")?;
        checkpoint::copy_into(&ema_params, &tensors.ema, "EMA weights")?;
        let ms: Vec<(String, Tensor)> = adam.state.iter().map(|(n, s)| (n.clone(), s.0.shallow_clone())).collect();
        let vs: Vec<(String, Tensor)> = adam.state.iter().map(|(n, s)| (n.clone(), s.1.shallow_clone())).collect();
        checkpoint::copy_into(&ms, &tensors.adam_m, "Adam first moments")?;
        checkpoint::copy_into(&vs, &tensors.adam_v, "Adam second moments")?;
        for (n, st) in adam.state.iter_mut() {
            st.2 = *state.adam_steps.get(n).with_context(|| format!("checkpoint lacks the Adam step count of '{n}'"))?;
        }
        start_step = state.step;
        ensure!(start_step <= t.steps, "the checkpoint is at step {start_step}, beyond train.steps = {}", t.steps);
    } else {
        checkpoint::copy_into(&ema_params, &masters, "initial weights")?;
    }
    if mixed {
        checkpoint::copy_into(&params, &masters, "bf16 weights")?;
    }

    let ckpt_dir = opts.run_dir.join("checkpoints");
    let save = |step: u64, adam: &Adam| -> Result<PathBuf> {
        let state = State {
            format: checkpoint::FORMAT.into(),
            step,
            config: cfg.clone(),
            adam_steps: adam.state.iter().map(|(n, s)| (n.clone(), s.2)).collect(),
            rng: RngState { seed: t.seed, next_step: step + 1 },
        };
        let tensors = Tensors {
            model: masters.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect(),
            ema: ema_params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect(),
            adam_m: adam.state.iter().map(|(n, s)| (n.clone(), s.0.shallow_clone())).collect(),
            adam_v: adam.state.iter().map(|(n, s)| (n.clone(), s.1.shallow_clone())).collect(),
        };
        checkpoint::save(&ckpt_dir, &state, &tensors, t.keep_last)
    };

    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(opts.run_dir.join("metrics.jsonl"))
        .with_context(|| format!("cannot open {}", opts.run_dir.join("metrics.jsonl").display()))?;
    let bar = crate::runtime::progress_bar(t.steps, "train", !opts.progress);
    bar.set_position(start_step);

    let n_stages = stages.stages();
    let mut order = Order::new(data.len(), t.seed);
    let decay = cfg.ema.decay_for(t.batch);
    let began = Instant::now();
    let mut window = (0.0f64, 0usize, vec![0.0f64; n_stages], vec![0usize; n_stages], Instant::now(), 0.0f64);
    let mut losses = Vec::new();
    let mut last_ckpt: Option<PathBuf> = None;
    let mut interrupted = false;
    let mut step = start_step;
    while step < t.steps {
        if INTERRUPTED.load(Ordering::SeqCst) || opts.stop_after.is_some_and(|n| step - start_step >= n) {
            interrupted = true;
            break;
        }
        let s = step + 1;
        let mut rng = Rng::stream(t.seed ^ STEP_STREAM, s);
        let idx = Tensor::from_slice(&order.batch(step, t.batch));
        let mut x0 = data.images.index_select(0, &idx);
        if cfg.data.flip {
            let flips: Vec<bool> = (0..t.batch).map(|_| rng.uniform() < 0.5).collect();
            let fl = Tensor::from_slice(&flips.iter().map(|&f| f as i64 as f32).collect::<Vec<_>>()).reshape([-1, 1, 1, 1]);
            x0 = &x0 * (1.0 - &fl) + x0.flip([3]) * &fl;
        }
        let draws = stages.draw(t.batch, &mut rng)?;
        let z = batch_to_device(&rng.randn(&[t.batch as i64, c, h, w], Kind::Float), device);
        let x0 = batch_to_device(&x0, device);
        let cond = conditioning(&process, &cfg.prediction, &boundaries, &draws.sigma, device);
        // The stage ids come from the draws (identical to routing by sigma; asserted in tests).
        let stage_ids = Tensor::from_slice(&draws.stage).to_device(device);
        let sig = per_sample(&Tensor::from_slice(&draws.sigma).to_kind(Kind::Float).to_device(device), 4);
        let alpha = per_sample(&cond.alpha, 4);
        let xt = &x0 + &z * &sig;
        let input = &xt * per_sample(&cond.input_scale, 4);
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
        // The forward pass and the loss in f32 (a bf16 network's output is cast back to f32).
        let (per, loss, lv) = guard_oom(
            || {
                let out = {
                    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
                    tch::manual_seed(dropout_seed(t.seed, s));
                    model.net.forward_staged(&input, &cond.label, &stage_ids, true)?
                };
                let target = cfg.prediction.target(&x0, &z, &xt, &sig, &alpha);
                let per = (&out - &target).square().mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float);
                let loss = per.mean(Kind::Float);
                let lv = loss.double_value(&[]);
                Ok((per, loss, lv))
            },
            &oom,
        )?;
        if !lv.is_finite() {
            bar.abandon();
            let hint = match &last_ckpt {
                Some(p) => format!("the last good checkpoint is {}", p.display()),
                None => "no checkpoint was written yet".into(),
            };
            bail!("the loss became {lv} at step {s}; training stopped ({hint}); try a lower optim.lr or stronger optim.grad_clip");
        }
        let grads = guard_oom(|| gradients(&loss, &params), &oom)?;
        drop(loss);
        // bf16: Adam updates the fp32 masters from fp32-cast gradients, then the model gets a copy.
        let grads: Vec<Tensor> =
            if mixed { grads.iter().map(|g| if g.defined() { g.to_kind(Kind::Float) } else { Tensor::new() }).collect() } else { grads };
        let info = adam.step(&masters, &grads, cfg.optim.lr_at(s)).with_context(|| format!("at step {s}"))?;
        drop(grads);
        if mixed {
            checkpoint::copy_into(&params, &masters, "bf16 weights")?;
        }
        ema::update(&ema_params, &masters, decay);
        step = s;

        // Logging.
        let per_v: Vec<f64> = Vec::<f64>::try_from(per.to_kind(Kind::Double).to_device(Device::Cpu))?;
        window.0 += lv;
        window.1 += 1;
        for (i, &st) in draws.stage.iter().enumerate() {
            window.2[st as usize] += per_v[i];
            window.3[st as usize] += 1;
        }
        window.5 = info.grad_norm;
        if s % t.log_every == 0 || s == t.steps {
            let secs = window.4.elapsed().as_secs_f64().max(1e-9);
            let mean = window.0 / window.1 as f64;
            let by_stage: Vec<Option<f64>> =
                window.2.iter().zip(&window.3).map(|(sum, n)| (*n > 0).then(|| sum / *n as f64)).collect();
            let line = json!({
                "step": s, "loss": mean, "loss_by_stage": by_stage, "lr": cfg.optim.lr_at(s),
                "grad_norm": window.5, "images_per_s": (window.1 * t.batch) as f64 / secs,
                "elapsed_s": began.elapsed().as_secs_f64(),
            });
            writeln!(log, "{line}").context("cannot write metrics.jsonl")?;
            let stage_txt: Vec<String> =
                by_stage.iter().enumerate().map(|(j, v)| v.map_or(format!("s{j} -"), |v| format!("s{j} {v:.4}"))).collect();
            bar.set_message(format!("loss {mean:.4} | {}", stage_txt.join(" ")));
            losses.push((s, mean));
            window = (0.0, 0, vec![0.0; n_stages], vec![0; n_stages], Instant::now(), 0.0);
        }
        bar.set_position(s);
        if s % t.checkpoint_every == 0 && s != t.steps {
            last_ckpt = Some(save(s, &adam)?);
        }
        if opts.write_samples && t.sample_every > 0 && s % t.sample_every == 0 && s != t.steps {
            write_samples(cfg, &ema_net, &opts.run_dir, s, device)?;
        }
    }
    let ckpt = save(step, &adam)?;
    bar.finish_and_clear();
    if opts.write_samples && !interrupted {
        write_samples(cfg, &ema_net, &opts.run_dir, step, device)?;
    }
    if !interrupted {
        let _ = plot_losses(&opts.run_dir);
    }
    Ok(TrainOutcome { step, checkpoint: ckpt, interrupted, losses, seconds: began.elapsed().as_secs_f64() })
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
    let mut diffs = Vec::new();
    let j = |v: &dyn erased::Ser| v.json();
    let pairs: [(&str, serde_json::Value, serde_json::Value); 8] = [
        ("data", j(&old.data), j(&new.data)),
        ("model", j(&old.model), j(&new.model)),
        ("process", j(&old.process), j(&new.process)),
        ("prediction", j(&old.prediction), j(&new.prediction)),
        ("objective", j(&old.objective), j(&new.objective)),
        ("stages", j(&old.split.as_ref().map(|s| &s.boundaries_t)), j(&new.split.as_ref().map(|s| &s.boundaries_t))),
        ("optim/ema", json!([j(&old.optim), j(&old.ema)]), json!([j(&new.optim), j(&new.ema)])),
        ("train.batch/seed", json!([old.train.batch, old.train.seed]), json!([new.train.batch, new.train.seed])),
    ];
    for (name, a, b) in pairs {
        if a != b {
            diffs.push(name);
        }
    }
    if !diffs.is_empty() {
        bail!(
            "cannot resume: the checkpoint was made with a different configuration ({} differ); resume with the run's own config.toml",
            diffs.join(", ")
        );
    }
    Ok(())
}

mod erased {
    pub trait Ser {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}

/// Sample a grid with the EMA weights: `samples/step-N.png`.
pub fn write_samples(cfg: &ResolvedConfig, ema_net: &Network, run_dir: &Path, step: u64, device: Device) -> Result<PathBuf> {
    let den = ModelDenoiser::new(&ema_net.net, cfg.process.build()?, cfg.prediction, cfg.boundaries_sigma())?;
    let n = cfg.train.sample_count;
    let seeds: Vec<u64> = (0..n as u64).collect();
    let shape = [cfg.model.in_channels as i64, cfg.model.resolution as i64, cfg.model.resolution as i64];
    let sampler = cfg.train.sampler.clone().context("no sampler configured")?;
    let out = crate::sampler::sample_seeds(&sampler, &den, &cfg.process.build()?, &shape, &seeds, n, None, device, |_| {})?;
    let path = run_dir.join("samples").join(format!("step-{step:08}.png"));
    let cols = (n as f64).sqrt().ceil() as usize;
    crate::io::image::write_grid(&path, &out.x.clamp(-1.0, 1.0).to_device(Device::Cpu), cols, 2)?;
    Ok(path)
}

/// `loss.png` from `metrics.jsonl`: total loss and per-stage losses against the step.
pub fn plot_losses(run_dir: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?;
    let mut total = Vec::new();
    let mut by_stage: Vec<Vec<(f64, f64)>> = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(s), Some(l)) = (v["step"].as_f64(), v["loss"].as_f64()) else { continue };
        total.push((s, l));
        if let Some(arr) = v["loss_by_stage"].as_array() {
            if by_stage.len() < arr.len() {
                by_stage.resize(arr.len(), Vec::new());
            }
            for (j, x) in arr.iter().enumerate() {
                if let Some(x) = x.as_f64() {
                    by_stage[j].push((s, x));
                }
            }
        }
    }
    let mut p = crate::plot::Plot::new("training loss", 720, 440).xlabel("step").ylabel("loss (MSE)").log_y(true);
    p = p.series("all", &total, crate::plot::palette(0));
    if by_stage.len() > 1 {
        for (j, pts) in by_stage.iter().enumerate() {
            p = p.series(&format!("stage {j}"), pts, crate::plot::palette(j + 1));
        }
    }
    let path = run_dir.join("loss.png");
    p.save(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_becomes_an_error_naming_the_batch_and_other_panics_propagate() {
        let oom = |m: String| anyhow::anyhow!("out of memory at batch size 64 on Cuda(0); lower train.batch; libtorch: {m}");
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let e = guard_oom(|| -> Result<()> { panic!("CUDA out of memory. Tried to allocate 2.00 GiB") }, &oom).unwrap_err();
        assert!(e.to_string().contains("batch size 64") && e.to_string().contains("lower train.batch"), "{e}");
        let e = guard_oom(|| -> Result<()> { bail!("DefaultCPUAllocator: not enough memory: you tried to allocate 1 TB") }, &oom).unwrap_err();
        assert!(e.to_string().contains("batch size 64"), "{e}");
        // libtorch 2.11's host allocator, verbatim (tests/train.rs provokes it for real).
        let cpu = "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 549755813888 bytes. Error code 12 (Cannot allocate memory)";
        let e = guard_oom(|| -> Result<()> { panic!("called `Result::unwrap()` on an `Err` value: Torch(\"{cpu}\\nframe #0: c10::ThrowEnforceNotMet\")") }, &oom).unwrap_err();
        assert!(e.to_string().contains("batch size 64"), "{e}");
        assert_eq!(crate::runtime::oom_core(&format!("called `Result::unwrap()` on an `Err` value: Torch(\"{cpu}\\nframe #0: x\")")), &cpu[cpu.find("Default").unwrap()..]);
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

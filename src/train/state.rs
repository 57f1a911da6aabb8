//! What training holds between steps — network, EMA, fp32 master weights, Adam — and the one
//! training step ([`TrainState::step`]) that both the loop and `msdiff bench train` run.
//!
//! `masters` are the trained fp32 weights: Adam updates them, the EMA follows them, checkpoints
//! store them. In fp32 they are the model's own variables; in bf16 the model holds a bf16 copy
//! refreshed after every step (docs/CONFIG.md, "Mixed precision").
use super::checkpoint::{self, RngState, State, Tensors};
use super::config::ResolvedConfig;
use super::optim::{gradients, Adam, LossReduction, OptimConfig};
use crate::model::{copy_into, Network};
use crate::nn::{UNetConfig, WithAugment};
use crate::objective::{Draws, Objective};
use crate::runtime::Precision;
use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

const INIT_STREAM: u64 = 0x1417_0000_0000_0003;

/// libtorch's generator (weight init, dropout) is process-wide: trainers in one process (tests,
/// library users) hold this lock while they seed it and draw from it, so each run's draws stay
/// determined by its own (seed, step).
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct TrainState {
    /// The network that runs (a bf16 copy of the masters in mixed precision).
    pub model: Network,
    /// The EMA of the masters (what one samples with).
    pub ema: Network,
    masters: Vec<(String, Tensor)>,
    params: Vec<(String, Tensor)>,
    ema_params: Vec<(String, Tensor)>,
    pub adam: Adam,
    mixed: bool,
    /// Optimiser steps completed.
    pub step: u64,
    /// Data-parallel group (none: one process); see [`TrainState::join`].
    group: Option<&'static crate::dist::Group>,
    /// Data-parallel stop vote: set by the loop when this rank wants to stop (Ctrl-C); after a
    /// step, true when any rank asked, so that every rank stops after the same step.
    pub stop: bool,
    /// Data-parallel: seconds spent in the gradient all-reduce itself, and in all of the
    /// synchronisation (flattening the gradients, the all-reduce, unflattening), summed over steps.
    pub allreduce_seconds: f64,
    pub sync_seconds: f64,
    /// Where the last step's time went (wall clock; on CUDA without synchronisation, so only
    /// meaningful on the CPU): what `msdiff bench train --breakdown` reports.
    pub timings: StepTimings,
}

/// Seconds of one step's phases (see [`TrainState::timings`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimings {
    /// Forward pass and loss (up to reading the loss value).
    pub forward: Lap,
    /// Backward pass (the gradients; bf16: cast to f32).
    pub backward: Lap,
    /// Gradient norm, clipping and Adam (bf16: the model's copy refreshed).
    pub optimizer: Lap,
    /// The EMA update.
    pub ema: Lap,
}

/// Wall-clock seconds and this process's CPU seconds (all threads) of a stretch of work. CPU time
/// is what the work cost even when other jobs share the cores (with one thread it approximates
/// the wall time on a quiet machine).
#[derive(Clone, Copy, Debug, Default)]
pub struct Lap {
    pub wall: f64,
    pub cpu: f64,
}

/// Measures [`Lap`]s from its start.
#[derive(Clone, Copy, Debug)]
pub struct Stopwatch {
    wall: std::time::Instant,
    cpu: f64,
}

impl Stopwatch {
    pub fn start() -> Self {
        Stopwatch { wall: std::time::Instant::now(), cpu: process_cpu_seconds() }
    }
    /// The time since [`Stopwatch::start`].
    pub fn lap(&self) -> Lap {
        Lap { wall: self.wall.elapsed().as_secs_f64(), cpu: process_cpu_seconds() - self.cpu }
    }
}

/// CPU time of this process, all threads (`CLOCK_PROCESS_CPUTIME_ID`; 0 where unavailable).
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One step's inputs.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    /// Clean (possibly augmented) images `[B, C, H, W]` f32 on the network's device.
    pub x0: &'a Tensor,
    /// Noise `[B, C, H, W]`, like `x0`.
    pub z: &'a Tensor,
    /// Each sample's stage, time and noise level.
    pub draws: &'a Draws,
    /// EDM's augment labels `[B, augment_dim]` that the network receives (none: no labels).
    pub augment: Option<&'a Tensor>,
}

/// How a step updates the state.
#[derive(Clone, Copy, Debug)]
pub struct Update {
    /// Learning rate of this step.
    pub lr: f64,
    /// EMA decay of this step.
    pub ema_decay: f64,
    /// Seed of libtorch's generator for the forward pass (dropout).
    pub dropout_seed: i64,
}

/// What one step measured.
#[derive(Clone, Debug)]
pub struct StepStats {
    /// Mean loss of the batch. Not finite: the step diverged and nothing was updated.
    pub loss: f64,
    /// Per-sample losses (empty when the step diverged).
    pub per_sample: Vec<f64>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

impl StepStats {
    pub fn diverged(&self) -> bool {
        !self.loss.is_finite()
    }
}

impl TrainState {
    /// Fresh weights from `seed` (the EMA starts equal to them), Adam at zero.
    pub fn new(
        model: &UNetConfig,
        optim: &OptimConfig,
        precision: Precision,
        seed: u64,
        device: Device,
    ) -> Result<Self> {
        let (mut net, ema) = {
            let _rng = torch_rng();
            tch::manual_seed((seed ^ INIT_STREAM) as i64);
            (Network::new(model, device)?, Network::new(model, device)?)
        };
        let mixed = precision != Precision::Fp32;
        let masters: Vec<(String, Tensor)> =
            if mixed { net.params().into_iter().map(|(n, p)| (n, p.detach().copy())).collect() } else { net.params() };
        net.set_precision(precision);
        let params = net.params();
        let ema_params = ema.params();
        let adam = Adam::new(optim.clone(), &masters);
        copy_into(&ema_params, &masters, "initial weights")?;
        if mixed {
            copy_into(&params, &masters, "bf16 weights")?;
        }
        Ok(TrainState {
            model: net,
            ema,
            masters,
            params,
            ema_params,
            adam,
            mixed,
            step: 0,
            group: None,
            stop: false,
            allreduce_seconds: 0.0,
            sync_seconds: 0.0,
            timings: StepTimings::default(),
        })
    }

    /// Start from weights made elsewhere (e.g. an official checkpoint exported to safetensors,
    /// docs/EDM.md): the trained weights and the EMA both become them; Adam stays at zero.
    pub fn import_weights(&mut self, path: &std::path::Path) -> Result<()> {
        let src = crate::model::read_state_dict(path)?;
        copy_into(&self.masters, &src, &format!("weights {}", path.display()))?;
        copy_into(&self.ema_params, &self.masters, "EMA weights")?;
        if self.mixed {
            copy_into(&self.params, &self.masters, "bf16 weights")?;
        }
        Ok(())
    }

    /// Continue from a checkpoint: weights, EMA, Adam moments and step counts, the step.
    pub fn restore(&mut self, state: &State, tensors: &Tensors) -> Result<()> {
        copy_into(&self.masters, &tensors.model, "weights")?;
        copy_into(&self.ema_params, &tensors.ema, "EMA weights")?;
        self.adam.import(&tensors.adam_m, &tensors.adam_v, &state.adam_steps)?;
        if self.mixed {
            copy_into(&self.params, &self.masters, "bf16 weights")?;
        }
        self.step = state.step;
        Ok(())
    }

    /// Train data-parallel in `group`: rank 0's weights and EMA are broadcast to every rank (they
    /// are equal already when every rank starts from the same seed or checkpoint; this makes it
    /// so), and from now on [`TrainState::step`] averages the gradients over the ranks before
    /// clipping, so every rank holds the same weights, EMA and Adam state.
    pub fn join(&mut self, group: &'static crate::dist::Group) -> Result<()> {
        let all: Vec<&Tensor> = self.masters.iter().chain(&self.ema_params).map(|(_, p)| p).collect();
        let mut flat = Tensor::cat(&all.iter().map(|p| p.detach().reshape([-1])).collect::<Vec<_>>(), 0);
        group.broadcast(&mut flat, 0)?;
        let _guard = tch::no_grad_guard();
        let mut at = 0;
        for p in all {
            let n = p.numel() as i64;
            p.shallow_clone().copy_(&flat.narrow(0, at, n).view_as(p));
            at += n;
        }
        if self.mixed {
            copy_into(&self.params, &self.masters, "bf16 weights")?;
        }
        self.group = Some(group);
        Ok(())
    }

    /// Data-parallel: check that every rank holds rank 0's weights and EMA bit for bit (one
    /// broadcast and one all-reduce; run at the end of training).
    pub fn check_ranks_agree(&self) -> Result<()> {
        let Some(group) = self.group else { return Ok(()) };
        let all: Vec<Tensor> =
            self.masters.iter().chain(&self.ema_params).map(|(_, p)| p.detach().reshape([-1])).collect();
        let mine = Tensor::cat(&all, 0);
        let mut theirs = mine.copy();
        group.broadcast(&mut theirs, 0)?;
        let differs = !mine.equal(&theirs);
        let mut votes = Tensor::from_slice(&[differs as i32 as f32]).to_device(mine.device());
        group.all_reduce_sum(&mut votes)?;
        let n = votes.double_value(&[0]);
        anyhow::ensure!(
            n == 0.0,
            "the ranks' weights differ at step {} ({n} rank(s) differ from rank 0); this is a bug, please report it",
            self.step
        );
        Ok(())
    }

    /// Average the ranks' gradients in one flat all-reduce that also carries which parameters
    /// had a gradient anywhere (a decoder that saw no sample on any rank stays untouched, as in
    /// one process), the stop vote and the batch's per-sample losses (`local` of them from this
    /// rank, at its offset in the global batch). Returns the averaged gradients, the global
    /// per-sample losses and the stop decision.
    fn all_reduce(
        &mut self,
        group: &crate::dist::Group,
        grads: Vec<Tensor>,
        per: &Tensor,
    ) -> Result<(Vec<Tensor>, Vec<f64>, bool)> {
        let began = std::time::Instant::now();
        let device = self.masters[0].1.device();
        let local = per.size()[0] as usize;
        let global = local * group.world;
        let mut parts: Vec<Tensor> = Vec::with_capacity(self.masters.len() + 1);
        let mut tail = Vec::with_capacity(self.masters.len() + 1 + global);
        for (i, (_, p)) in self.masters.iter().enumerate() {
            match grads.get(i).filter(|g| g.defined()) {
                Some(g) => {
                    parts.push(g.reshape([-1]).to_kind(Kind::Float));
                    tail.push(1f32);
                }
                None => {
                    parts.push(Tensor::zeros([p.numel() as i64], (Kind::Float, device)));
                    tail.push(0f32);
                }
            }
        }
        drop(grads);
        tail.push(self.stop as i32 as f32);
        let mine = Vec::<f32>::try_from(per.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu))?;
        let mut samples = vec![0f32; global];
        samples[group.rank * local..(group.rank + 1) * local].copy_from_slice(&mine);
        tail.extend(samples);
        parts.push(Tensor::from_slice(&tail).to_device(device));
        let mut flat = Tensor::cat(&parts, 0);
        drop(parts);
        let reduce = std::time::Instant::now();
        group.all_reduce_sum(&mut flat)?;
        if let Device::Cuda(i) = device {
            // NCCL runs on its own stream: wait for it, so that the time is the collective's.
            tch::Cuda::synchronize(i as i64);
        }
        self.allreduce_seconds += reduce.elapsed().as_secs_f64();
        let n_grad: i64 = self.masters.iter().map(|(_, p)| p.numel() as i64).sum();
        let tail = Vec::<f32>::try_from(flat.narrow(0, n_grad, flat.size()[0] - n_grad).to_device(tch::Device::Cpu))?;
        let grad_flat = flat.narrow(0, 0, n_grad) / group.world as f64;
        let mut out = Vec::with_capacity(self.masters.len());
        let mut at = 0;
        for (i, (_, p)) in self.masters.iter().enumerate() {
            let n = p.numel() as i64;
            out.push(if tail[i] > 0.0 { grad_flat.narrow(0, at, n).view_as(p) } else { Tensor::new() });
            at += n;
        }
        let k = self.masters.len();
        let stop = tail[k] > 0.0;
        let per_sample = tail[k + 1..].iter().map(|&v| v as f64).collect();
        self.sync_seconds += began.elapsed().as_secs_f64();
        Ok((out, per_sample, stop))
    }

    /// Save the state at the current step under `dir` (atomic; keeps the `keep_last` newest).
    pub fn save(&self, dir: &std::path::Path, cfg: &ResolvedConfig) -> Result<std::path::PathBuf> {
        let adam = self.adam.export();
        let state = State {
            format: checkpoint::FORMAT.into(),
            step: self.step,
            config: cfg.clone(),
            adam_steps: adam.steps,
            rng: RngState { seed: cfg.train.seed, next_step: self.step + 1 },
        };
        let tensors = Tensors {
            model: self.masters.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect(),
            ema: self.ema_params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect(),
            adam_m: adam.m,
            adam_v: adam.v,
        };
        checkpoint::save(dir, &state, &tensors, cfg.train.keep_last)
    }

    /// One training step on `batch`: the objective's loss (forward in the network's precision,
    /// loss in f32; the network receives the batch's augment labels if any), gradients, Adam on
    /// the fp32 masters at `update.lr`, the bf16 copy refreshed, the EMA moved by
    /// `update.ema_decay`. `update.dropout_seed` seeds libtorch's generator for this forward
    /// pass. With `optim.loss_reduction = "sum"` the gradient is taken of the per-image pixel
    /// sum, as EDM; the reported loss is always the per-pixel mean. A non-finite loss updates
    /// nothing (see [`StepStats::diverged`]).
    pub fn step(&mut self, objective: &Objective, batch: &Batch, update: Update) -> Result<StepStats> {
        let Batch { x0, z, draws, augment } = *batch;
        let Update { lr, ema_decay, dropout_seed } = update;
        let began = Stopwatch::start();
        let per = {
            let _rng = torch_rng();
            tch::manual_seed(dropout_seed);
            match augment {
                Some(labels) => objective.loss(&WithAugment { net: &self.model.net, labels }, x0, z, draws, true)?,
                None => objective.loss(&self.model.net, x0, z, draws, true)?,
            }
        };
        let loss = per.mean(Kind::Float);
        let lv = loss.double_value(&[]);
        self.timings = StepTimings { forward: began.lap(), ..Default::default() };
        let Some(group) = self.group else {
            if !lv.is_finite() {
                return Ok(StepStats { loss: lv, per_sample: vec![], grad_norm: f64::NAN });
            }
            let began = Stopwatch::start();
            let grads = self.local_gradients(loss, x0)?;
            self.timings.backward = began.lap();
            let info = self.apply(&grads, lr, ema_decay)?;
            drop(grads);
            let per_sample = Vec::<f64>::try_from(per.to_kind(Kind::Double).to_device(Device::Cpu))?;
            return Ok(StepStats { loss: lv, per_sample, grad_norm: info.grad_norm });
        };
        // Data-parallel: every rank takes part in the all-reduce, even one whose loss is not
        // finite (it sends no gradient); the global loss then is not finite on every rank and
        // all stop together.
        let grads = if lv.is_finite() { self.local_gradients(loss, x0)? } else { vec![] };
        let (grads, per_sample, stop) = self.all_reduce(group, grads, &per)?;
        self.stop = stop;
        let global = per_sample.iter().sum::<f64>() / per_sample.len().max(1) as f64;
        if !global.is_finite() {
            return Ok(StepStats { loss: global, per_sample: vec![], grad_norm: f64::NAN });
        }
        let info = self.apply(&grads, lr, ema_decay)?;
        Ok(StepStats { loss: global, per_sample, grad_norm: info.grad_norm })
    }

    /// This process's gradients of `loss` (fp32 in mixed precision, as Adam takes them).
    fn local_gradients(&self, loss: Tensor, x0: &Tensor) -> Result<Vec<Tensor>> {
        let loss = match self.adam.cfg.loss_reduction {
            LossReduction::Mean => loss,
            LossReduction::Sum => loss * (x0.numel() as f64 / x0.size()[0].max(1) as f64),
        };
        let grads = gradients(&loss, &self.params)?;
        drop(loss);
        // bf16: Adam updates the fp32 masters from fp32-cast gradients, then the model gets a copy.
        Ok(if self.mixed {
            grads.iter().map(|g| if g.defined() { g.to_kind(Kind::Float) } else { Tensor::new() }).collect()
        } else {
            grads
        })
    }

    /// Adam on the masters, the bf16 copy refreshed, the EMA moved; the step counted.
    fn apply(&mut self, grads: &[Tensor], lr: f64, ema_decay: f64) -> Result<super::optim::StepInfo> {
        let began = Stopwatch::start();
        let info = self.adam.step(&self.masters, grads, lr).with_context(|| format!("at step {}", self.step + 1))?;
        if self.mixed {
            copy_into(&self.params, &self.masters, "bf16 weights")?;
        }
        self.timings.optimizer = began.lap();
        let began = Stopwatch::start();
        super::ema::update(&self.ema_params, &self.masters, ema_decay);
        self.timings.ema = began.lap();
        self.step += 1;
        Ok(info)
    }
}

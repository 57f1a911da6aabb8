//! Tables and plots of the Fashion-MNIST CPU-scale experiments (`experiments/fashion-cpu/run.sh`).
//!
//! ```sh
//! cargo run --release --example fashion_cpu_report -- runs/fashion-cpu docs/results
//! ```
//!
//! Reads `OUT/fid.jsonl`, `OUT/train-times.jsonl` and each run's resolved `config.toml` and
//! `metrics.jsonl`; writes into DOCS: `fid-vs-steps.png`, `fid-vs-tflop.png`,
//! `samples-<run>.png` (the final sample grid of each run) and copies of the two JSONL files; prints
//! the Markdown tables of docs/RESULTS.md and (d) the bf16 table of docs/PERF.md.
//!
//! A `fid.jsonl` line may carry `precision` (the sampling precision, default fp32) and `seeds` (default
//! `0-(n-1)`); the experiments (a)-(c) use only default lines, (d) all lines of its runs.
//!
//! Training cost per image is `3 x` the forward GFLOPs (backward ~ 2 x forward) of the network that
//! handles each sample, averaged with the training's stage probabilities (`objective.weights`):
//! `3 * sum_j p_j * stage_gflops_j`, with the analytic counts of `msdiff info`.
use anyhow::{bail, Context, Result};
use msdiff::io::jsonl::read_jsonl;
use msdiff::objective::StageSampler;
use msdiff::plot::{palette, Plot};
use msdiff::train::ResolvedConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CURVES: [&str; 3] = ["unified", "multistage", "separate"];
/// A target every run reaches within the experiment (FID at 3,000 samples).
const LOOSE_TARGET: f64 = 100.0;
/// Runs in the compute comparison (c).
const COMPUTE: [&str; 4] = ["unified", "multistage", "separate", "ms-mass"];
const ABLATION: [&str; 3] = ["ms-uniform", "ms-snr", "multistage"];
/// Every run of `run.sh`, in its order; `-bf16` runs are their config trained with `--precision bf16`.
const RUNS: [&str; 8] =
    ["unified", "multistage", "separate", "ms-uniform", "ms-snr", "ms-mass", "unified-bf16", "multistage-bf16"];
/// Runs in the bf16 comparison (d).
const PRECISION: [&str; 4] = ["unified", "unified-bf16", "multistage", "multistage-bf16"];

struct Run {
    cfg: ResolvedConfig,
    /// Stage probabilities of the training draws.
    probs: Vec<f64>,
    /// Forward GFLOPs per image of each stage's network.
    stage_gflops: Vec<f64>,
    params: u64,
}

impl Run {
    fn load(out: &Path, name: &str) -> Result<Self> {
        let path = out.join(name).join("config.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: ResolvedConfig = toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
        let process = cfg.process.build()?;
        let probs = StageSampler::new(&process, &cfg.objective, &cfg.boundaries_sigma())?.weights;
        let bt: Vec<f64> = cfg.split.as_ref().map(|s| s.boundaries_t.clone()).unwrap_or_default();
        let rep = msdiff::nn::report(&cfg.model, &bt)?;
        Ok(Run { probs, stage_gflops: rep.stage_gflops, params: rep.total_params, cfg })
    }
    /// Training GFLOPs per image (forward + backward).
    fn train_gflop_per_image(&self) -> f64 {
        3.0 * self.probs.iter().zip(&self.stage_gflops).map(|(p, g)| p * g).sum::<f64>()
    }
    /// Training TFLOPs after `steps` iterations.
    fn tflop(&self, steps: f64) -> f64 {
        steps * self.cfg.train.batch as f64 * self.train_gflop_per_image() / 1e3
    }
}

/// First step at which the FID curve reaches `target`, interpolated linearly between evaluations;
/// `(step, exact)`, with `exact = false` when already the first evaluation is below the target (the
/// step is then an upper bound).
fn steps_to_reach(curve: &[(f64, f64)], target: f64) -> Option<(f64, bool)> {
    if let Some(&(s, f)) = curve.first() {
        if f <= target {
            return Some((s, false));
        }
    }
    curve.windows(2).find(|w| w[1].1 <= target).map(|w| {
        let ((s0, f0), (s1, f1)) = (w[0], w[1]);
        (s0 + (s1 - s0) * (f0 - target) / (f0 - f1), true)
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        bail!("usage: fashion_cpu_report OUT DOCS   (e.g. runs/fashion-cpu docs/results)");
    }
    let (out, docs) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    msdiff::io::atomic::ensure_dir(&docs)?;
    let fids = read_jsonl(&out.join("fid.jsonl"))?;
    let times = read_jsonl(&out.join("train-times.jsonl")).unwrap_or_default();
    let mut fid: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut eval_s: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut n_samples = 0;
    for v in &fids {
        let run = v["run"].as_str().context("fid.jsonl line without run")?.to_string();
        eval_s.entry(run.clone()).or_default().push(v["eval_wall_s"].as_f64().unwrap_or(f64::NAN));
        if v.get("precision").is_some() || v.get("seeds").is_some() {
            continue; // (d) only
        }
        fid.entry(run).or_default().push((v["step"].as_f64().unwrap_or(0.0), v["fid"].as_f64().unwrap_or(f64::NAN)));
        n_samples = v["n"].as_u64().unwrap_or(0);
    }
    for c in fid.values_mut() {
        c.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let names: Vec<&str> = RUNS.into_iter().filter(|n| out.join(n).join("config.toml").is_file()).collect();
    let runs: BTreeMap<&str, Run> = names.iter().map(|n| Ok((*n, Run::load(&out, n)?))).collect::<Result<_>>()?;
    let wall = |name: &str| times.iter().rev().find(|t| t["run"] == name).and_then(|t| t["train_wall_s"].as_f64());

    // Table: the runs.
    println!("| run | network | decoders | boundaries t | params stored | stage probabilities | train GFLOP/image | precision | train wall (1 thread) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, r) in names.iter().map(|n| (*n, &runs[n])) {
        let bt = r
            .cfg
            .split
            .as_ref()
            .map(|s| s.boundaries_t.iter().map(|b| format!("{b:.3}")).collect::<Vec<_>>().join(", "))
            .unwrap_or_else(|| "-".into());
        let probs = r.probs.iter().map(|p| format!("{p:.3}")).collect::<Vec<_>>().join(" / ");
        let kind = match (r.cfg.model.decoder_channels.len(), r.cfg.model.architecture) {
            (1, _) => "unified",
            (_, msdiff::nn::Architecture::Separate) => "separate",
            _ => "multistage",
        };
        let w = wall(name).map(|s| format!("{:.1} min", s / 60.0)).unwrap_or_else(|| "-".into());
        println!(
            "| {name} | {} | {:?} | {bt} | {} | {probs} | {:.3} | {} | {w} |",
            kind,
            r.cfg.model.decoder_channels,
            r.params,
            r.train_gflop_per_image(),
            r.cfg.train.precision
        );
    }

    // (a) FID against iterations: every run, every evaluated step.
    let mut steps: Vec<f64> = fid.values().flatten().map(|p| p.0).collect();
    steps.sort_by(f64::total_cmp);
    steps.dedup();
    println!("\n| run | {} |", steps.iter().map(|s| format!("FID @ {s}")).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---|".repeat(steps.len()));
    for name in names.iter().filter(|n| !n.ends_with("-bf16")) {
        if let Some(c) = fid.get(*name) {
            let cells: Vec<String> = steps
                .iter()
                .map(|s| c.iter().find(|p| p.0 == *s).map_or("-".into(), |p| format!("{:.2}", p.1)))
                .collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
    }
    let mut p = Plot::new(&format!("Fashion-MNIST, FID ({n_samples} samples) vs iterations"), 640, 400)
        .xlabel("training iterations (batch 64)")
        .ylabel("FID")
        .log_y(true);
    for (i, name) in CURVES.iter().enumerate() {
        if let Some(c) = fid.get(*name) {
            p = p.series(name, c, palette(i));
        }
    }
    for (i, name) in ["ms-uniform", "ms-snr", "ms-mass"].iter().enumerate() {
        if let Some(c) = fid.get(*name) {
            p = p.points(name, c, palette(3 + i));
        }
    }
    p.save(&docs.join("fid-vs-steps.png"))?;

    // (b) Split ablation at the last step.
    println!("\n| split (same multi-stage model) | boundaries t | boundaries sigma | FID @ last step |");
    println!("|---|---|---|---|");
    for name in ABLATION {
        if let (Some(r), Some(c)) = (runs.get(name), fid.get(name)) {
            let s = r.cfg.split.as_ref().context("ablation run without split")?;
            let last = c.last().context("no FID")?;
            println!(
                "| {} ({name}) | {} | {} | {:.2} (step {}) |",
                format!("{:?}", s.method).to_lowercase(),
                s.boundaries_t.iter().map(|b| format!("{b:.3}")).collect::<Vec<_>>().join(", "),
                s.boundaries_sigma.iter().map(|b| format!("{b:.3}")).collect::<Vec<_>>().join(", "),
                last.1,
                last.0
            );
        }
    }

    // (c) Compute to reach a target FID: the unified model's final FID.
    let mut p = Plot::new(&format!("Fashion-MNIST, FID ({n_samples} samples) vs training compute"), 640, 400)
        .xlabel("training TFLOP (analytic, fwd + bwd)")
        .ylabel("FID")
        .log_y(true);
    for (i, name) in COMPUTE.iter().enumerate() {
        if let (Some(r), Some(c)) = (runs.get(*name), fid.get(*name)) {
            let pts: Vec<(f64, f64)> = c.iter().map(|&(s, f)| (r.tflop(s), f)).collect();
            p = p.series(name, &pts, palette(i));
        }
    }
    // Targets: a loose one every curve reaches, and the unified model's final FID (as the paper's
    // "iterations to FID 2.71").
    if let Some(final_unified) = fid.get("unified").and_then(|c| c.last()).map(|l| l.1) {
        p = p.hline(final_unified, "unified's final FID", palette(6));
        println!("\n| target FID | run | iterations to reach it | training PFLOP | PFLOP relative to unified |");
        println!("|---|---|---|---|---|");
        for target in [LOOSE_TARGET, final_unified] {
            let base = runs
                .get("unified")
                .zip(fid.get("unified"))
                .and_then(|(r, c)| steps_to_reach(c, target).map(|(s, _)| r.tflop(s)));
            for name in COMPUTE {
                if let (Some(r), Some(c)) = (runs.get(name), fid.get(name)) {
                    match steps_to_reach(c, target) {
                        Some((s, exact)) => {
                            let le = if exact { "" } else { "<= " };
                            let rel = base
                                .map(|b| format!("{le}{:.0} %", 100.0 * r.tflop(s) / b))
                                .unwrap_or_else(|| "-".into());
                            println!("| {target:.2} | {name} | {le}{s:.0} | {le}{:.5} | {rel} |", r.tflop(s) / 1e3);
                        }
                        None => println!(
                            "| {target:.2} | {name} | not reached in {} | > {:.5} | - |",
                            c.last().map_or(0.0, |l| l.0),
                            r.tflop(c.last().map_or(0.0, |l| l.0)) / 1e3
                        ),
                    }
                }
            }
        }
    }
    p.save(&docs.join("fid-vs-tflop.png"))?;

    // (d) bf16: training precision x sampling precision at the last step, and the FID's sampling noise
    // (the same checkpoint with other seeds).
    let last_step = fids.iter().filter_map(|v| v["step"].as_f64()).fold(0.0, f64::max);
    let rows: Vec<&Value> = fids
        .iter()
        .filter(|v| v["step"].as_f64() == Some(last_step) && v["run"].as_str().is_some_and(|r| PRECISION.contains(&r)))
        .collect();
    if rows.iter().any(|v| v.get("precision").is_some() || v["run"].as_str().is_some_and(|r| r.ends_with("-bf16"))) {
        println!("\n| run | trained in | sampled in | seeds | FID @ {last_step} | train wall (1 thread) |");
        println!("|---|---|---|---|---|---|");
        for name in PRECISION {
            for v in rows.iter().filter(|v| v["run"] == name) {
                let n = v["n"].as_u64().unwrap_or(0);
                let trained = runs.get(name).map_or("-".to_string(), |r| r.cfg.train.precision.to_string());
                let w = wall(name).map(|s| format!("{:.1} min", s / 60.0)).unwrap_or_else(|| "-".into());
                println!(
                    "| {name} | {trained} | {} | {} | {:.2} | {w} |",
                    v["precision"].as_str().unwrap_or("fp32"),
                    v["seeds"].as_str().map_or(format!("0-{}", n.saturating_sub(1)), str::to_string),
                    v["fid"].as_f64().unwrap_or(f64::NAN),
                );
            }
        }
    }

    // Final sample grids and the raw logs.
    for name in &names {
        let dir = out.join(name).join("samples");
        let last = std::fs::read_dir(&dir).ok().and_then(|d| {
            d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "png")).max()
        });
        if let Some(src) = last {
            std::fs::copy(&src, docs.join(format!("samples-{name}.png")))?;
        }
    }
    std::fs::copy(out.join("fid.jsonl"), docs.join("fid.jsonl"))?;
    if out.join("train-times.jsonl").is_file() {
        std::fs::copy(out.join("train-times.jsonl"), docs.join("train-times.jsonl"))?;
    }
    let evals: Vec<f64> = eval_s.values().flatten().copied().collect();
    if !evals.is_empty() {
        println!(
            "\nFID evaluations: {}, wall {:.1}..{:.1} min each",
            evals.len(),
            evals.iter().cloned().fold(f64::INFINITY, f64::min) / 60.0,
            evals.iter().cloned().fold(0.0, f64::max) / 60.0
        );
    }
    Ok(())
}

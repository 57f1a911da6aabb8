//! Tables and plots of the fashion-vp experiment (`experiments/fashion-vp/run.sh`, issue 17,
//! docs/RESULTS.md part 2).
//!
//! ```sh
//! experiments/fashion-vp/eval.sh
//! scripts/with-libtorch cargo run --release --example fashion_vp_report -- $HOME/msdiff-runs/fashion-vp docs/results
//! ```
//!
//! Reads `OUT/val-loss.jsonl` (eval.sh: `msdiff val-loss --log` lines; the run is the folder above
//! `checkpoints/`; for each (run, step) the evaluation on the most images is kept), the per-image
//! losses in `OUT/val-per-image/RUN/step-N.npy` (for the paired differences to the unified model),
//! `OUT/train-times.jsonl` (run.sh's training segments) and each run's configuration
//! (`experiments/fashion-vp/RUN.toml`) for the compute accounting; prints the Markdown tables of
//! docs/RESULTS.md part 2 and writes, per stage interval k, the validation loss against training
//! iterations (`DOCS/fashion-vp-val-k.png`), against the actual training FLOPs
//! (`DOCS/fashion-vp-val-k-flops.png`: the run's stage policy x each stage network's cost) and
//! against the paper's convention (`DOCS/fashion-vp-val-k-paper-flops.png`: stage GFLOPs weighted
//! by interval length, whatever the policy). For every other run and interval it prints the unified
//! model's iterations to the same validation loss (the compute-to-match ratios), and, from
//! `OUT/fid.jsonl` (fid.sh), the FID table and `DOCS/fashion-vp-fid{,-flops,-paper-flops}.png`;
//! the paired differences to the unified model, per interval, go to `DOCS/fashion-vp-diff-k.png`.
use anyhow::Result;
use msdiff::io::jsonl::{floats, read_jsonl};
use msdiff::plot::{palette, Plot, Style};
use msdiff::train::TrainConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const RUNS: [&str; 4] = ["unified", "multistage", "ms-mixed", "separate"];
/// Images per training step (every config of the folder).
const BATCH: f64 = 64.0;

/// Per run, per step: (images evaluated, per-interval losses, their standard errors).
type ValLoss = BTreeMap<String, BTreeMap<u64, (u64, Vec<f64>, Vec<f64>)>>;

/// Per run: (step, mean per-interval loss difference to the unified model, its standard errors).
type Paired = BTreeMap<String, Vec<(u64, Vec<f64>, Vec<f64>)>>;

/// A plot's x axis: file-name suffix, label, and x from (step, (actual, paper) GFLOP per image).
type Axis = (&'static str, &'static str, fn(u64, (f64, f64)) -> f64);

/// The run a checkpoint path belongs to: `.../RUN/checkpoints/step-N`.
fn run_of(checkpoint: &str) -> Option<String> {
    let p = Path::new(checkpoint);
    let run = p.parent()?.parent()?.file_name()?.to_str()?;
    Some(run.to_string())
}

/// (actual, paper-convention) forward GFLOP per training image of a run's configuration.
fn gflop_per_image(here: &Path, run: &str) -> Result<(f64, f64)> {
    let path = here.join(format!("{run}.toml"));
    let tc = TrainConfig::load(&path)?;
    let shape = msdiff::train::config::declared_shape(&tc.model)?;
    let c = tc.resolve(here, shape)?.compute()?;
    Ok((c.train_fwd_gflop_per_image, c.interval_weighted_gflop))
}

/// Training PFLOP after `step` steps at `gflop` forward GFLOP per image (backward = 2x forward).
fn pflop(step: u64, gflop: f64) -> f64 {
    step as f64 * BATCH * 3.0 * gflop / 1e6
}

/// Whether a step is on the checkpoint cadence: an off-cadence checkpoint, from a stop, may have
/// been scored on fewer images, so tables, curves and crossings use the cadence ones only.
fn cadence(step: u64) -> bool {
    step > 0 && step % 1000 == 0
}

/// The x axes of every curve: iterations, actual training FLOPs, the paper's convention.
fn x_axes() -> [Axis; 3] {
    [
        ("", "training iterations (batch 64)", |s, _| s as f64),
        ("-flops", "training PFLOP: actual (policy x stage cost)", |s, c| pflop(s, c.0)),
        ("-paper-flops", "training PFLOP: paper (interval-weighted)", |s, c| pflop(s, c.1)),
    ]
}

/// Where a loss falls on the unified model's curve.
enum Crossing {
    /// The (interpolated) unified step with that loss.
    At(f64),
    /// Lower than every unified checkpoint (the last step).
    Below(f64),
    /// Higher than every unified checkpoint (the first step).
    Above(f64),
}

/// The first unified step at which interval `k`'s loss falls to `loss`: linear in log loss between
/// the two checkpoints that bracket it.
fn unified_steps_to(curve: &[(f64, Vec<f64>)], k: usize, loss: f64) -> Crossing {
    let Some(first) = curve.first() else { return Crossing::Above(0.0) };
    if loss >= first.1[k] {
        return Crossing::Above(first.0);
    }
    for w in curve.windows(2) {
        let ((s0, l0), (s1, l1)) = ((w[0].0, w[0].1[k]), (w[1].0, w[1].1[k]));
        if loss <= l0 && loss >= l1 {
            let f = if l0 > l1 { (l0.ln() - loss.ln()) / (l0.ln() - l1.ln()) } else { 0.0 };
            return Crossing::At(s0 + f * (s1 - s0));
        }
    }
    Crossing::Below(curve[curve.len() - 1].0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: fashion_vp_report OUT DOCS");
    let (out, docs) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/fashion-vp");
    std::fs::create_dir_all(&docs)?;

    let mut val: ValLoss = BTreeMap::new();
    for l in read_jsonl(&out.join("val-loss.jsonl"))? {
        let (Some(run), Some(step), Some(n)) =
            (l["checkpoint"].as_str().and_then(run_of), l["step"].as_u64(), l["n"].as_u64())
        else {
            continue;
        };
        let slot = val.entry(run).or_default();
        if slot.get(&step).is_none_or(|(m, _, _)| n >= *m) {
            slot.insert(step, (n, floats(&l["loss"]), floats(&l["stderr"])));
        }
    }
    let runs: Vec<&str> = RUNS.iter().copied().filter(|r| val.contains_key(*r)).collect();

    // Compute accounting.
    println!("| run | forward GFLOP per training image: actual (policy) | paper convention (interval-weighted) | training TFLOP per 1,000 steps (actual, fwd + bwd = 3x) |");
    println!("|---|---:|---:|---:|");
    let mut cost = BTreeMap::new();
    for r in RUNS {
        let (actual, paper) = gflop_per_image(&here, r)?;
        println!("| {r} | {actual:.4} | {paper:.4} | {:.1} |", 3.0 * actual * BATCH * 1000.0 / 1000.0);
        cost.insert(r, (actual, paper));
    }

    // Validation loss table (common steps of every cadence checkpoint).
    println!("\n| step | {} |", runs.join(" | "));
    println!("|---:|{}", "---|".repeat(runs.len()));
    let steps: std::collections::BTreeSet<u64> = val.values().flat_map(|m| m.keys().copied()).collect();
    for s in steps.iter().filter(|s| cadence(**s)) {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| match val.get(*r).and_then(|m| m.get(s)) {
                Some((_, l, e)) => {
                    l.iter().zip(e).map(|(l, e)| format!("{l:.5} +- {e:.5}")).collect::<Vec<_>>().join(" / ")
                }
                None => "-".into(),
            })
            .collect();
        println!("| {s} | {} |", cells.join(" | "));
    }

    // Paired differences against the unified model: the same images, times and noise (common
    // random numbers), so the standard error of a difference is that of the per-image differences.
    let mut paired: Paired = BTreeMap::new();
    let per_image = out.join("val-per-image");
    if per_image.is_dir() {
        println!("\n| step | run | loss - unified, per interval (paired, +- standard error) |");
        println!("|---:|---|---|");
        for s in steps.iter().filter(|s| cadence(**s)) {
            let Ok(base) = msdiff::io::read_npy(&per_image.join("unified").join(format!("step-{s}.npy"))) else {
                continue;
            };
            for r in runs.iter().filter(|r| **r != "unified") {
                let Ok(other) = msdiff::io::read_npy(&per_image.join(r).join(format!("step-{s}.npy"))) else {
                    continue;
                };
                anyhow::ensure!(other.size() == base.size(), "{r} step {s}: per-image losses of another shape");
                let d = (other - &base).to_kind(tch::Kind::Double);
                let n = d.size()[1] as f64;
                let mean = Vec::<f64>::try_from(d.mean_dim(1, false, tch::Kind::Double))?;
                let sd = Vec::<f64>::try_from(d.std_correction([1i64].as_slice(), 1, false))?;
                let se: Vec<f64> = sd.iter().map(|sd| sd / n.sqrt()).collect();
                let cells: Vec<String> = mean.iter().zip(&se).map(|(m, se)| format!("{m:+.5} +- {se:.5}")).collect();
                println!("| {s} | {r} | {} |", cells.join(" / "));
                paired.entry(r.to_string()).or_default().push((*s, mean, se));
            }
        }
    }

    // Plots of the paired differences, per interval: mean and +- 2 standard errors.
    let n_paired = paired.values().flatten().map(|(_, m, _)| m.len()).max().unwrap_or(0);
    for k in 0..n_paired {
        let mut p = Plot::new(&format!("loss - unified, stage {k}'s interval (paired, +- 2 SE)"), 520, 340)
            .xlabel("training iterations (batch 64)")
            .ylabel("eps loss difference (EMA weights)")
            .hline(0.0, "", palette(0));
        for (i, r) in RUNS.iter().enumerate() {
            let Some(d) = paired.get(*r) else { continue };
            let at = |f: f64| -> Vec<(f64, f64)> { d.iter().map(|(s, m, e)| (*s as f64, m[k] + f * e[k])).collect() };
            p = p
                .series_styled(r, &at(0.0), palette(i), Style::LinePoints)
                .series_styled("", &at(2.0), palette(i), Style::Points)
                .series_styled("", &at(-2.0), palette(i), Style::Points);
        }
        let path = docs.join(format!("fashion-vp-diff-{k}.png"));
        p.save(&path)?;
        println!("wrote {}", path.display());
    }

    // Compute to match: the unified model's iterations at which its validation loss equals another
    // run's (per interval; linear interpolation in log loss between the unified checkpoints, the first
    // crossing), and the ratios in iterations and in both FLOP accountings (< 1: the other run
    // reaches that loss with less training).
    if let Some(u) = val.get("unified") {
        let ucurve: Vec<(f64, Vec<f64>)> =
            u.iter().filter(|(s, _)| cadence(**s)).map(|(s, (_, l, _))| (*s as f64, l.clone())).collect();
        let uc = cost["unified"];
        println!("\n| step | run | unified iterations to the same loss, per interval (ratio: iterations / actual FLOPs / paper FLOPs) |");
        println!("|---:|---|---|");
        for r in runs.iter().filter(|r| **r != "unified") {
            let rc = cost[r];
            for (s, (_, l, _)) in val[*r].iter().filter(|(s, _)| *s % 2000 == 0) {
                let cells: Vec<String> = l
                    .iter()
                    .enumerate()
                    .map(|(k, lk)| match unified_steps_to(&ucurve, k, *lk) {
                        Crossing::At(su) => {
                            let it = *s as f64 / su;
                            format!("{su:.0} ({it:.2} / {:.2} / {:.2})", it * rc.0 / uc.0, it * rc.1 / uc.1)
                        }
                        Crossing::Below(last) => format!("> {last:.0} (beyond the unified run)"),
                        Crossing::Above(first) => format!("< {first:.0}"),
                    })
                    .collect();
                println!("| {s} | {r} | {} |", cells.join(" / "));
            }
        }
    }

    // FID (fid.sh): table and plots against iterations and actual FLOPs.
    let mut fid: BTreeMap<String, BTreeMap<u64, (f64, u64)>> = BTreeMap::new();
    for l in read_jsonl(&out.join("fid.jsonl")).unwrap_or_default() {
        let (Some(run), Some(step), Some(f), Some(n)) =
            (l["run"].as_str(), l["step"].as_u64(), l["fid"].as_f64(), l["n"].as_u64())
        else {
            continue;
        };
        fid.entry(run.to_string()).or_default().insert(step, (f, n));
    }
    if !fid.is_empty() {
        println!("\n| run | step | FID (N) | actual training PFLOP | paper-convention PFLOP |");
        println!("|---|---:|---:|---:|---:|");
        for r in RUNS {
            let (Some(m), Some(c)) = (fid.get(r), cost.get(r)) else { continue };
            for (s, (f, n)) in m {
                println!("| {r} | {s} | {f:.2} ({n}) | {:.3} | {:.3} |", pflop(*s, c.0), pflop(*s, c.1));
            }
        }
        for (suffix, xlabel, x) in x_axes() {
            let mut p = Plot::new("FID (10k samples, DPM-Solver-3 20 NFE) vs training", 520, 340)
                .xlabel(xlabel)
                .ylabel("FID vs Fashion-MNIST train");
            for (i, r) in RUNS.iter().enumerate() {
                let (Some(m), Some(c)) = (fid.get(*r), cost.get(r)) else { continue };
                let pts: Vec<(f64, f64)> = m.iter().map(|(s, (f, _))| (x(*s, *c), *f)).collect();
                p = p.series(r, &pts, palette(i));
            }
            let path = docs.join(format!("fashion-vp-fid{suffix}.png"));
            p.save(&path)?;
            println!("wrote {}", path.display());
        }
    }

    // Plots: per interval, against iterations and both FLOP accountings.
    let intervals = val.values().flat_map(|m| m.values()).map(|(_, l, _)| l.len()).max().unwrap_or(0);
    let axes = x_axes();
    for k in 0..intervals {
        for (suffix, xlabel, x) in axes {
            let mut p = Plot::new(&format!("validation loss, stage {k}'s interval (Fashion-MNIST test)"), 520, 340)
                .xlabel(xlabel)
                .ylabel("eps loss (EMA weights)")
                .log_y(true);
            for (i, r) in RUNS.iter().enumerate() {
                let (Some(m), Some(c)) = (val.get(*r), cost.get(r)) else { continue };
                let pts: Vec<(f64, f64)> = m
                    .iter()
                    .filter(|(s, _)| cadence(**s))
                    .filter_map(|(s, (_, l, _))| Some((x(*s, *c), *l.get(k)?)))
                    .collect();
                p = p.series(r, &pts, palette(i));
            }
            let path = docs.join(format!("fashion-vp-val-{k}{suffix}.png"));
            p.save(&path)?;
            println!("wrote {}", path.display());
        }
    }

    // Wall time per run, with the libtorch thread counts its segments ran with (run.sh's THREADS).
    let mut wall: BTreeMap<String, (f64, u64, std::collections::BTreeSet<u64>)> = BTreeMap::new();
    for l in read_jsonl(&out.join("train-times.jsonl")).unwrap_or_default() {
        let (Some(run), Some(w), Some(to)) = (l["run"].as_str(), l["train_wall_s"].as_f64(), l["to_step"].as_u64())
        else {
            continue;
        };
        let e = wall.entry(run.to_string()).or_default();
        e.0 += w;
        e.1 = e.1.max(to);
        e.2.insert(l["threads"].as_u64().unwrap_or(1));
    }
    println!("\n| run | steps reached (recorded segments) | training wall s (niced, shared machine) | threads |");
    println!("|---|---:|---:|---|");
    for (run, (w, to, threads)) in &wall {
        let threads: Vec<String> = threads.iter().map(u64::to_string).collect();
        println!("| {run} | {to} | {w:.0} | {} |", threads.join(", "));
    }
    Ok(())
}

//! Tables and a plot of the latent-diffusion experiment (`experiments/latent-fashion/run.sh`,
//! docs/LATENT.md §7).
//!
//! ```sh
//! scripts/with-libtorch cargo run --release --example latent_fashion_report -- $HOME/msdiff-runs/latent-fashion docs/latent
//! ```
//!
//! Reads `OUT/val-loss.jsonl` (`msdiff val-loss --log` lines with a `run` key, as run.sh's
//! evaluation writes them), `OUT/eval.jsonl` (`msdiff eval --log` lines with `run`),
//! `OUT/times.jsonl` and each run's `metrics.jsonl`; writes `DOCS/fashion-ldm-val-loss.png`
//! (per-interval validation loss against training iterations, one panel per interval) and copies
//! each run's sample grid to `DOCS/fashion-ldm-<run>-samples.png`; prints the Markdown tables of
//! docs/LATENT.md §7.
use anyhow::Result;
use msdiff::io::jsonl::{floats, read_jsonl};
use msdiff::plot::{palette, Plot};
use std::collections::BTreeMap;
use std::path::PathBuf;

const RUNS: [&str; 2] = ["unified", "multistage"];

/// Per run, per step: the per-interval losses and their standard errors.
type ValLoss = BTreeMap<String, BTreeMap<u64, (Vec<f64>, Vec<f64>)>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: latent_fashion_report OUT DOCS");
    let (out, docs) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    std::fs::create_dir_all(&docs)?;

    // Per-interval validation loss: run -> step -> (loss, stderr) per interval.
    let mut val: ValLoss = BTreeMap::new();
    for l in read_jsonl(&out.join("val-loss.jsonl"))? {
        let (Some(run), Some(step)) = (l["run"].as_str(), l["step"].as_u64()) else { continue };
        val.entry(run.to_string()).or_default().insert(step, (floats(&l["loss"]), floats(&l["stderr"])));
    }
    println!("| step | {} |", RUNS.join(" | "));
    println!("|---:|{}", "---|".repeat(RUNS.len()));
    let steps: std::collections::BTreeSet<u64> = val.values().flat_map(|m| m.keys().copied()).collect();
    for s in &steps {
        let cells: Vec<String> = RUNS
            .iter()
            .map(|r| match val.get(*r).and_then(|m| m.get(s)) {
                Some((l, e)) => {
                    l.iter().zip(e).map(|(l, e)| format!("{l:.5} +- {e:.5}")).collect::<Vec<_>>().join(" / ")
                }
                None => "-".into(),
            })
            .collect();
        println!("| {s} | {} |", cells.join(" | "));
    }
    let intervals = val.values().flat_map(|m| m.values()).map(|(l, _)| l.len()).max().unwrap_or(0);
    for k in 0..intervals {
        let mut p = Plot::new(&format!("validation loss, stage {k}'s interval"), 480, 320)
            .xlabel("training iterations (batch 64)")
            .ylabel("eps loss (EMA)")
            .log_y(true);
        for (i, r) in RUNS.iter().enumerate() {
            if let Some(m) = val.get(*r) {
                let pts: Vec<(f64, f64)> = m.iter().filter_map(|(s, (l, _))| Some((*s as f64, *l.get(k)?))).collect();
                p = p.series(r, &pts, palette(i));
            }
        }
        let path = docs.join(format!("fashion-ldm-val-loss-{k}.png"));
        p.save(&path)?;
        println!("wrote {}", path.display());
    }

    // FID and wall times.
    println!("\n| run | step | FID (N) | sampling s | training wall s |");
    println!("|---|---:|---:|---:|---:|");
    let times = read_jsonl(&out.join("times.jsonl")).unwrap_or_default();
    for l in read_jsonl(&out.join("eval.jsonl"))? {
        let run = l["run"].as_str().unwrap_or("?");
        let train: f64 = times
            .iter()
            .filter(|t| t["step"].as_str() == Some(&format!("train-{run}")))
            .filter_map(|t| t["wall_s"].as_f64())
            .sum();
        println!(
            "| {run} | {} | {:.2} ({}) | {:.0} | {train:.0} |",
            l["step"],
            l["fid"].as_f64().unwrap_or(f64::NAN),
            l["n"],
            l["sample_seconds"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for r in RUNS {
        let grid = out.join(format!("{r}-samples")).join("grid.png");
        if grid.is_file() {
            let to = docs.join(format!("fashion-ldm-{r}-samples.png"));
            std::fs::copy(&grid, &to)?;
            println!("copied {}", to.display());
        }
    }
    Ok(())
}

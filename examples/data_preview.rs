//! Writes preview images of the built-in dataset and demo plots:
//! `cargo run --release --example data_preview [OUT_DIR]` (default `/tmp/data-preview`).
use msdiff::data::{load, LoadOptions};
use msdiff::io::write_grid;
use msdiff::plot::{palette, Plot};
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp/data-preview".into()));
    let t0 = std::time::Instant::now();
    let ds = load("builtin", &LoadOptions::default())?;
    println!("{}: {:?} in {:.3} s", ds.name, ds.shape(), t0.elapsed().as_secs_f64());
    // 64 images, nearest-neighbour upscaled x4 for viewing
    let big = ds.images.narrow(0, 0, 64).upsample_nearest2d([64, 64], None, None);
    write_grid(&out.join("shapes_grid.png"), &big, 8, 4)?;
    let rgb = load("builtin:shapes-rgb", &LoadOptions { count: 64, resolution: 32, ..Default::default() })?;
    write_grid(&out.join("shapes_rgb_grid.png"), &rgb.images.upsample_nearest2d([64, 64], None, None), 8, 4)?;

    // A clustering-style figure: two similarity curves, the threshold and the cuts.
    let ts: Vec<f64> = (0..=1000).map(|i| i as f64 / 1000.0).collect();
    let s0: Vec<(f64, f64)> = ts.iter().map(|&t| (t, (-(t / 0.35).powi(2)).exp())).collect();
    let s1: Vec<(f64, f64)> = ts.iter().map(|&t| (t, (-((1.0 - t) / 0.3).powi(2)).exp())).collect();
    Plot::new("timestep clustering: S0(t), S1(t)", 720, 420)
        .xlabel("t")
        .ylabel("similarity")
        .series("S0(t)", &s0, palette(0))
        .series("S1(t)", &s1, palette(1))
        .hline(0.9, "threshold α = 0.9", palette(7))
        .vline(0.113, "chosen cuts", palette(3))
        .vline(0.903, "chosen cuts", palette(3))
        .save(&out.join("clustering_demo.png"))?;
    // A loss curve on a log axis.
    let loss: Vec<(f64, f64)> = (1..=2000)
        .map(|i| {
            let x = i as f64;
            (x, 0.05 + 2.0 / (1.0 + x / 50.0) * (1.0 + 0.15 * (x * 0.37).sin()))
        })
        .collect();
    Plot::new("training loss", 640, 400)
        .xlabel("iteration")
        .ylabel("loss")
        .log_y(true)
        .series("loss", &loss, palette(0))
        .vline(1000.0, "lr decay", palette(3))
        .save(&out.join("loss_demo.png"))?;
    println!("wrote {}/{{shapes_grid,shapes_rgb_grid,clustering_demo,loss_demo}}.png", out.display());
    Ok(())
}

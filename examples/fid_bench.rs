//! FID feature throughput on the CPU, the network's FLOPs, and a GEMM reference rate;
//! optionally FID(Fashion-MNIST train subset, Fashion-MNIST test).
//!
//! scripts/with-libtorch cargo run --release --example fid_bench -- \
//!     [--weights PATH] [--threads 2] [--batch 32] [--images 64] [--fmnist N] [--fmnist-dir DIR]
use anyhow::Result;
use clap::Parser;
use msdiff::fid;
use msdiff::runtime::median;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// FID feature throughput and FLOPs; optionally FID(Fashion-MNIST train subset, test subset).
#[derive(Parser)]
struct Args {
    /// FID Inception weights (default: as `msdiff fid`: $MSDIFF_FID_WEIGHTS, the fetched copy, ../shared).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// libtorch threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Images per network batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Images timed for the throughput.
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Also compute FID(first N training images, first N test images) of Fashion-MNIST (0: skip).
    #[arg(long, default_value_t = 0)]
    fmnist: i64,
    /// Fashion-MNIST folder (default: the fetched copy, else ../shared/data/fashion-mnist).
    #[arg(long)]
    fmnist_dir: Option<PathBuf>,
    /// Rounds of the NCHW vs channels-last comparison.
    #[arg(long, default_value_t = 2)]
    layout_rounds: usize,
}

/// CPU seconds used by this process so far (user + system, from /proc/self/stat).
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    if f.len() > 13 {
        (f[11] + f[12]) / 100.0
    } else {
        f64::NAN
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_string()
}

fn main() -> Result<()> {
    let Args { weights, threads, batch, images, fmnist, fmnist_dir, layout_rounds: rounds } = Args::parse();
    let weights = match weights {
        Some(w) => w,
        None => fid::inception::default_weights()?,
    };
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    println!("machine: {}", msdiff::runtime::machine());

    // GEMM reference: 2048^3 f32, median of 5 after a warm-up.
    let n = 2048i64;
    let a = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
    let _ = a.matmul(&b);
    let c0 = cpu_seconds();
    let ts: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let _ = a.matmul(&b);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let gemm_cpu = 5.0 * 2.0 * (n as f64).powi(3) / (cpu_seconds() - c0) / 1e9;
    let gemm = 2.0 * (n as f64).powi(3) / median(ts.clone()) / 1e9;
    println!(
        "f32 GEMM 2048x2048x2048: median {:.1} ms -> {gemm:.1} GFLOP/s wall; {gemm_cpu:.1} GFLOP per CPU-second \
         (load average {})",
        median(ts) * 1e3,
        loadavg()
    );

    let mut net = fid::FidInception::load(&weights, Device::Cpu)?;
    let gf = net.flops_per_image() / 1e9;
    let default_layout = net.channels_last();

    // Memory layouts, interleaved so that a shared CPU's load affects both alike.
    if rounds > 0 {
        let x = Tensor::randint(256, [batch as i64, 3, 299, 299], (Kind::Uint8, Device::Cpu));
        let mut t = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (i, cl) in [false, true].into_iter().enumerate() {
                net.set_channels_last(cl);
                let _ = net.features_u8(&x.narrow(0, 0, 2))?;
                let t0 = Instant::now();
                let _ = net.features_u8(&x)?;
                t[i].push(t0.elapsed().as_secs_f64());
            }
        }
        let (a, b) = (median(t[0].clone()), median(t[1].clone()));
        println!(
            "layout, batch {batch}, median of {rounds}: NCHW {:.2} img/s, NHWC (channels last) {:.2} img/s",
            batch as f64 / a,
            batch as f64 / b
        );
        net.set_channels_last(default_layout);
    }
    println!("FID Inception: {gf:.3} GFLOP per 299x299 image (2 x conv multiply-adds, counted over the 94 convs)");

    let cases: &[(&str, i64, i64)] =
        if images > 0 { &[("RGB 299x299 u8", 3, 299), ("grey 28x28 u8 (resized)", 1, 28)] } else { &[] };
    for &(label, c, h) in cases {
        let x = Tensor::randint(256, [images as i64, c, h, h], (Kind::Uint8, Device::Cpu));
        let _ = fid::features(&net, &x.narrow(0, 0, batch.min(images) as i64), batch, |_| {})?; // warm-up
        let t = Instant::now();
        let c0 = cpu_seconds();
        let f = fid::features(&net, &x, batch, |_| {})?;
        let dt = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - c0;
        assert_eq!(f.size(), [images as i64, 2048]);
        let ips = images as f64 / dt;
        println!(
            "features ({}), {label}, batch {batch}: {images} images in {dt:.2} s = {ips:.2} img/s, {:.1} GFLOP/s \
             ({:.0}% of GEMM rate); 10,000 images would take {:.1} min",
            if net.channels_last() { "NHWC" } else { "NCHW" },
            ips * gf,
            100.0 * ips * gf / gemm,
            1e4 / ips / 60.0
        );
        println!(
            "  CPU time {cpu:.1} s ({:.2} of {threads} threads busy, load average {}): {:.2} img per CPU-second \
             = {:.2} img/s if {threads} threads had the cores to themselves ({:.1} GFLOP per CPU-second, \
             {:.0}% of GEMM's)",
            cpu / dt,
            loadavg(),
            images as f64 / cpu,
            images as f64 / cpu * threads as f64,
            images as f64 / cpu * gf,
            100.0 * images as f64 / cpu * gf / gemm_cpu
        );
    }

    if fmnist > 0 {
        // The library's reader (gzip or plain IDX, exact-length checks); the fetched copy by default.
        let load = |split: &str| -> Result<Tensor> {
            let spec = match &fmnist_dir {
                Some(d) => format!("fashion-mnist:{}:{split}", d.display()),
                None => format!("fashion-mnist:{split}"),
            };
            let ds = msdiff::data::load(
                &spec,
                &msdiff::data::LoadOptions { limit: Some(fmnist as usize), ..Default::default() },
            )?;
            Ok(fid::inception::pm1_to_u8(&ds.images))
        };
        let (test, train) = (load("test")?, load("train")?);
        let nt = fmnist.min(test.size()[0]);
        let nr = fmnist.min(train.size()[0]);
        let t0 = Instant::now();
        let mut stats = Vec::new();
        for (name, imgs) in [("test", test.narrow(0, 0, nt)), ("train", train.narrow(0, 0, nr))] {
            let total = imgs.size()[0] as usize;
            let mut last = 0usize;
            let s = fid::compute_stats_tensor(&net, &imgs, batch, |done| {
                if done - last >= 1000 || done == total {
                    last = done;
                    let el = t0.elapsed().as_secs_f64();
                    eprintln!("  fashion-mnist {name}: {done}/{total} ({el:.0} s elapsed)");
                }
            })?;
            s.save(format!("/tmp/fmnist-{name}-{total}.fidstats.safetensors"))?;
            stats.push(s);
        }
        let r = fid::frechet_distance_report(&stats[1], &stats[0])?;
        println!(
            "FID(Fashion-MNIST train first {nr}, Fashion-MNIST test first {nt}) = {:.4} (mean term {:.4}, cov term {:.4}; \
             resize {}; {:.0} s)",
            r.fid,
            r.mean_term,
            r.cov_term,
            fid::RESIZE_NAME,
            t0.elapsed().as_secs_f64()
        );
        for w in &r.warnings {
            println!("warning: {w}");
        }
    }
    Ok(())
}

//! The `msdiff` command line. Each subcommand lives in its own file; shared argument groups in
//! [`args`]. Errors print one line (`msdiff: error: ...`) and exit with code 2.
pub mod args;
mod autoencoder;
mod bench;
mod cluster;
mod demo;
mod fid;
mod import;
mod info;
mod launch;
mod sample;
mod train;
mod val_loss;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "msdiff",
    version,
    about = "Multi-stage diffusion models (Zhang et al., CVPR 2024) on libtorch",
    long_about = "Multi-stage diffusion models (Zhang et al., CVPR 2024) on libtorch: timestep clustering, \
                  multi-decoder U-Nets and their baselines, training, the standard samplers and FID.\n\n\
                  Dataset specs (--data): builtin (procedural shapes, no files), mnist[:DIR], fashion-mnist[:DIR] \
                  (IDX files, plain or gzip; no DIR: the copy from scripts/fetch-assets; add :test for the test split), idx:FILE, cifar10:DIR (binary batches), \
                  folder:DIR (PNG/JPEG), FILE.npy ([N,C,H,W] in [-1,1]) or a bare path (detected)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: args::Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The main job: cluster, train a small multi-stage model on the built-in data, sample, report.
    Demo(demo::DemoArgs),
    /// Compute stage boundaries: Algorithm 1 (optimal denoiser), uniform or SNR split.
    Cluster(cluster::ClusterArgs),
    /// Train a model from a TOML configuration (or resume a run).
    Train(train::TrainArgs),
    /// Draw samples with any sampler from a checkpoint or from a dataset's optimal denoiser.
    Sample(sample::SampleArgs),
    /// Parameters and GFLOPs per stage of a network configuration.
    Info(info::InfoArgs),
    /// FID: feature statistics of images or a dataset, and Frechet distances.
    Fid(fid::FidArgs),
    /// Sample N images from a checkpoint and report their FID against reference statistics.
    Eval(fid::EvalArgs),
    /// Make a run folder from weights trained elsewhere (e.g. an exported official EDM checkpoint).
    Import(import::ImportArgs),
    /// Validation loss of checkpoints on held-out images, per noise interval (e.g. per stage).
    ValLoss(val_loss::ValLossArgs),
    /// Benchmarks (optimal denoiser, training step, sampling throughput); see docs/BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Autoencoders for latent diffusion (KL / VQ): info, import from diffusers, encode, decode, train; see docs/LATENT.md.
    Autoencoder(autoencoder::AutoencoderArgs),
    /// Run N data-parallel ranks of an msdiff command on this machine (like torchrun); see docs/DISTRIBUTED.md.
    Launch(launch::LaunchArgs),
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    crate::runtime::set_threads(rank_threads(cli.global.threads));
    // libtorch reports out-of-memory from infallible tch calls as a panic, which the trainer turns
    // into a one-line error; the default hook would first print the whole C++ trace. Other panics
    // keep the default report.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !crate::runtime::is_oom(crate::runtime::panic_text(info.payload())) {
            default_hook(info)
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli)));
    // A data-parallel rank leaves its process group before exiting (NCCL asks for it).
    crate::dist::finish(matches!(result, Ok(Ok(_))));
    match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            let line = one_line(&e);
            // Training names its own batch and remedy; anything else that ran out gets the general one.
            let hint = if crate::runtime::is_oom(&line) && !line.contains("lower ") { OOM_HINT } else { "" };
            eprintln!("msdiff: error: {line}{hint}");
            2
        }
        Err(p) => {
            let msg = crate::runtime::panic_text(p.as_ref());
            if crate::runtime::is_oom(msg) {
                eprintln!("msdiff: error: out of memory{OOM_HINT}; libtorch: {}", crate::runtime::oom_core(msg));
                return 2;
            }
            eprintln!(
                "msdiff: internal error: {}",
                msg.lines().next().filter(|l| !l.is_empty()).unwrap_or("unknown panic")
            );
            1
        }
    }
}

/// A rank of a data-parallel run (RANK set by torchrun or `msdiff launch`) with `--threads 0`
/// uses the launcher's OMP_NUM_THREADS, as PyTorch does, rather than every core per rank.
fn rank_threads(threads: usize) -> usize {
    if threads != 0 || std::env::var_os("RANK").is_none() {
        return threads;
    }
    std::env::var("OMP_NUM_THREADS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// `--help` / `--version` print as clap renders them; a usage error (unknown flag, invalid value)
/// becomes one `msdiff: error:` line with exit code 2, like every other error, keeping clap's
/// list of possible values.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:"))
        .collect();
    eprintln!("msdiff: error: {} (see --help)", parts.join(" ").trim_start_matches("error: "));
    2
}

/// What to do when a command other than training runs out of memory.
const OOM_HINT: &str = "; lower the batch size (--batch for sampling and training, --fid-batch for the FID network) or use --precision bf16 where the command has it";

/// An error chain on one line: "outer: inner: root".
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string().lines().next().unwrap_or("").trim().to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    // libtorch prints its own warnings; ours go to stderr too.
    match cli.command {
        Command::Demo(a) => demo::run(&cli.global, a),
        Command::Cluster(a) => cluster::run(&cli.global, a),
        Command::Train(a) => train::run(&cli.global, a),
        Command::Sample(a) => sample::run(&cli.global, a),
        Command::Info(a) => info::run(&cli.global, a),
        Command::Fid(a) => fid::run(&cli.global, a),
        Command::Eval(a) => fid::run_eval(&cli.global, a),
        Command::Bench(a) => bench::run(&cli.global, a),
        Command::Autoencoder(a) => autoencoder::run(&cli.global, a),
        Command::ValLoss(a) => val_loss::run(&cli.global, a),
        Command::Import(a) => import::run(&cli.global, a),
        Command::Launch(a) => launch::run(&cli.global, a),
    }
}

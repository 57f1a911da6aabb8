//! The `msdiff` command line.
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "msdiff", version, about = "Multi-stage diffusion models on libtorch")]
pub struct Cli {
    /// libtorch intra-op threads (0 = all cores).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
}

/// Run the CLI; returns the process exit code (0 ok, 2 bad input or failure).
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::runtime::set_threads(cli.threads);
    0
}

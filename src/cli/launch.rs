//! `msdiff launch`: run N data-parallel ranks of an msdiff command on this machine.
use super::args::Global;
use crate::dist::launch::{launch, LaunchOptions};
use anyhow::{Context, Result};
use clap::Args;
use std::ffi::OsString;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(after_help = "Example: msdiff launch --nproc 2 -- --threads 1 train --config configs/X.toml\n\n\
    Each rank gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT and \
    OMP_NUM_THREADS (cores / N unless set; a rank uses it when --threads is 0), as torchrun gives them. \
    The store listens on loopback only. Ctrl-C is forwarded once to every rank (training saves a checkpoint \
    and exits); a second Ctrl-C aborts. Exits with the first failing rank's code. For several machines use \
    torchrun or set the variables yourself (docs/DISTRIBUTED.md).")]
pub struct LaunchArgs {
    /// Number of ranks (processes) to start on this machine.
    #[arg(long)]
    pub nproc: usize,
    /// TCP port of the rendezvous store on 127.0.0.1 (default: a free one).
    #[arg(long)]
    pub master_port: Option<u16>,
    /// Seconds the remaining ranks may run after one failed before they are killed.
    #[arg(long, default_value_t = 60.0)]
    pub grace: f64,
    /// The msdiff command every rank runs (after --), e.g. `-- train --config X.toml`.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

pub fn run(_g: &Global, a: LaunchArgs) -> Result<i32> {
    anyhow::ensure!(a.grace.is_finite() && a.grace >= 0.0, "--grace must be >= 0 seconds");
    let program = std::env::current_exe().context("cannot find the msdiff executable to launch")?;
    launch(&LaunchOptions {
        program,
        args: a.command,
        nproc: a.nproc,
        port: a.master_port,
        grace: Duration::from_secs_f64(a.grace),
    })
}

//! `msdiff launch`: run N data-parallel ranks of an msdiff command on this machine.
use super::args::Global;
use crate::dist::launch::{launch, LaunchOptions};
use anyhow::{Context, Result};
use clap::Args;
use std::ffi::OsString;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(
    after_help = "Example: msdiff --threads 1 --device cpu launch --nproc 2 -- train --config configs/X.toml\n\n\
    Global flags given to the launcher (--threads, --device, --quiet, --dist-backend) are passed to every rank. \
    Each rank gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT and \
    OMP_NUM_THREADS (cores / N unless set; a rank uses it when --threads is 0), as torchrun gives them. \
    The store and Gloo listen on loopback only (GLOO_SOCKET_IFNAME=lo unless set). Ctrl-C is forwarded once to every rank (training saves a checkpoint \
    and exits); a second Ctrl-C aborts. Exits with the first failing rank's code. For several machines use \
    torchrun or set the variables yourself (docs/DISTRIBUTED.md)."
)]
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

pub fn run(g: &Global, a: LaunchArgs) -> Result<i32> {
    anyhow::ensure!(a.grace.is_finite() && a.grace >= 0.0, "--grace must be >= 0 seconds");
    let program = std::env::current_exe().context("cannot find the msdiff executable to launch")?;
    // Global flags given to the launcher (before or after `launch`) apply to every rank.
    let mut args: Vec<OsString> = Vec::new();
    if g.threads != 0 {
        args.extend(["--threads".into(), g.threads.to_string().into()]);
    }
    if g.device != "auto" {
        args.extend(["--device".into(), g.device.clone().into()]);
    }
    if g.quiet {
        args.push("--quiet".into());
    }
    if g.dist_backend != crate::dist::BackendChoice::Auto {
        args.extend(["--dist-backend".into(), g.dist_backend.name().into()]);
    }
    args.extend(a.command);
    launch(&LaunchOptions {
        program,
        args,
        nproc: a.nproc,
        port: a.master_port,
        grace: Duration::from_secs_f64(a.grace),
    })
}

//! `msdiff launch --nproc N -- ARGS...`: run N ranks of `msdiff ARGS...` on this machine, as
//! torchrun does, without Python. The launcher picks a free loopback port, sets RANK,
//! LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT and
//! OMP_NUM_THREADS (cores / N unless set) for each rank, GLOO_SOCKET_IFNAME=lo unless set (all
//! connections stay on loopback), starts each in its own process group
//! (so a terminal Ctrl-C reaches the launcher alone, which forwards it once to every rank), and
//! exits with the first failing rank's code; ranks still running `grace` after a failure are
//! killed.
use anyhow::{ensure, Context, Result};
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct LaunchOptions {
    /// The program each rank runs (this msdiff).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    pub nproc: usize,
    /// The store's port (None: a free one).
    pub port: Option<u16>,
    /// How long ranks may keep running after another failed, before they are killed.
    pub grace: Duration,
}

/// Ctrl-C presses the launcher received (forwarded to the ranks by the wait loop).
static SIGINTS: AtomicUsize = AtomicUsize::new(0);

/// A free TCP port on the loopback interface (the OS picks it; the store binds it shortly after).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// An exit status as a process exit code (128 + signal for a signalled rank).
fn code(st: ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Run the ranks; returns the exit code: 0 when all succeed, else the first failure's.
pub fn launch(o: &LaunchOptions) -> Result<i32> {
    ensure!(o.nproc >= 1, "--nproc must be at least 1");
    ensure!(
        !o.args.is_empty(),
        "give the msdiff command each rank runs after --, e.g. msdiff launch --nproc 2 -- train --config X.toml"
    );
    let port = match o.port {
        Some(p) => p,
        None => free_port()?,
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let omp = std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| (cores / o.nproc).max(1).to_string());
    // All ranks are local: Gloo's pair connections stay on loopback too, unless told otherwise.
    let gloo_if = (std::env::var_os("GLOO_SOCKET_IFNAME").is_none()
        && std::path::Path::new("/sys/class/net/lo").exists())
    .then(|| "lo".to_string());
    let _ = ctrlc::set_handler(|| {
        SIGINTS.fetch_add(1, Ordering::SeqCst);
    });
    let mut children: Vec<Option<Child>> = Vec::with_capacity(o.nproc);
    for r in 0..o.nproc {
        let child = Command::new(&o.program)
            .args(&o.args)
            .env("RANK", r.to_string())
            .env("LOCAL_RANK", r.to_string())
            .env("WORLD_SIZE", o.nproc.to_string())
            .env("LOCAL_WORLD_SIZE", o.nproc.to_string())
            .env("GROUP_RANK", "0")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", &omp)
            .envs(gloo_if.iter().map(|i| ("GLOO_SOCKET_IFNAME", i.as_str())))
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .process_group(0)
            .spawn();
        match child {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                for c in children.iter_mut().flatten() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e).with_context(|| format!("cannot start rank {r} ({})", o.program.display()));
            }
        }
    }
    eprintln!("msdiff launch: {} ranks, store on 127.0.0.1:{port}, OMP_NUM_THREADS={omp}", o.nproc);
    let mut first_failure: Option<(usize, ExitStatus)> = None;
    let mut failed_at: Option<Instant> = None;
    let mut forwarded = 0;
    let mut killed = false;
    while children.iter().any(Option::is_some) {
        let presses = SIGINTS.load(Ordering::SeqCst);
        while forwarded < presses {
            for c in children.iter().flatten() {
                signal(c, libc::SIGINT);
            }
            forwarded += 1;
        }
        for (r, slot) in children.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            if let Some(st) = c.try_wait()? {
                *slot = None;
                if !st.success() && first_failure.is_none() {
                    if presses == 0 {
                        eprintln!(
                            "msdiff launch: rank {r} failed ({}); the others stop at their next collective (killed after {:?})",
                            describe(st),
                            o.grace
                        );
                    }
                    first_failure = Some((r, st));
                    failed_at = Some(Instant::now());
                }
            }
        }
        if !killed && failed_at.is_some_and(|t| t.elapsed() > o.grace) {
            for (r, c) in children.iter_mut().enumerate() {
                if let Some(c) = c {
                    eprintln!("msdiff launch: rank {r} still running {:?} after the failure; killing it", o.grace);
                    let _ = c.kill();
                }
            }
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(first_failure.map_or(0, |(_, st)| code(st)))
}

//! Data-parallel training on libtorch's own distributed engine (c10d): a TCPStore rendezvous
//! and a Gloo (CPU) or NCCL (CUDA) process group, reached through the small C++ shim in
//! `csrc/dist_shim.cpp` (docs/DISTRIBUTED.md).
//!
//! A process is a rank of a group when the launcher's environment says so (torchrun's, or
//! `msdiff launch`'s): `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`
//! ([`Env::from_env`]). [`init`] builds the group once per process; [`current`] returns it to
//! the trainer (like torch.distributed's default group). Without those variables nothing here
//! runs and training is the plain one-process loop.
use anyhow::{bail, ensure, Context, Result};
use std::ffi::{c_int, c_void, CString};
use std::sync::OnceLock;
use std::time::Duration;
use tch::Tensor;

use crate::shim::check;

pub mod launch;

mod ffi {
    use std::ffi::{c_char, c_int, c_longlong, c_void};
    extern "C" {
        pub fn msd_has_nccl() -> c_int;
        pub fn msd_store_new(
            host: *const c_char,
            port: c_int,
            world: c_int,
            is_server: c_int,
            timeout_ms: c_longlong,
            out: *mut *mut c_void,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn msd_store_free(s: *mut c_void);
        pub fn msd_gloo_new(
            store: *mut c_void,
            prefix: *const c_char,
            rank: c_int,
            world: c_int,
            timeout_ms: c_longlong,
            ifnames: *const c_char,
            out: *mut *mut c_void,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn msd_nccl_new(
            store: *mut c_void,
            prefix: *const c_char,
            rank: c_int,
            world: c_int,
            timeout_ms: c_longlong,
            device: c_int,
            out: *mut *mut c_void,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn msd_group_free(g: *mut c_void);
        pub fn msd_group_shutdown(g: *mut c_void, abort: c_int, err: *mut *mut c_char) -> c_int;
        pub fn msd_allreduce(g: *mut c_void, tensor: *mut c_void, op: c_int, err: *mut *mut c_char) -> c_int;
        pub fn msd_broadcast(g: *mut c_void, tensor: *mut c_void, root: c_int, err: *mut *mut c_char) -> c_int;
        pub fn msd_barrier(g: *mut c_void, err: *mut *mut c_char) -> c_int;
    }
}

/// Whether this build has NCCL compiled in (the linked libtorch has CUDA and the headers were there).
pub fn has_nccl() -> bool {
    // SAFETY: a constant query.
    unsafe { ffi::msd_has_nccl() != 0 }
}

crate::names::named_enum! {
    /// The collective backend.
    pub enum BackendChoice ("dist-backend") {
        /// NCCL when the device is CUDA, Gloo otherwise.
        Auto = "auto",
        /// Gloo (CPU tensors; works anywhere).
        Gloo = "gloo",
        /// NCCL (CUDA tensors, one GPU per rank).
        Nccl = "nccl",
    }
}

/// The launcher's description of this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Whether this process hosts the TCPStore: rank 0, unless a torchrun agent already hosts it
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`, as PyTorch's env:// rendezvous decides).
    pub host_store: bool,
}

impl Env {
    /// Read the launcher's variables. `None` when neither `RANK` nor `WORLD_SIZE` is set (a
    /// plain one-process run); an error naming the variable when they are incomplete or wrong.
    pub fn from_env() -> Result<Option<Env>> {
        Self::parse(|k| std::env::var(k).ok())
    }

    /// [`Env::from_env`] on any variable lookup (for tests).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Option<Env>> {
        let (rank, world) = (get("RANK"), get("WORLD_SIZE"));
        if rank.is_none() && world.is_none() {
            return Ok(None);
        }
        let num = |name: &str, v: Option<String>| -> Result<usize> {
            let v = v.with_context(|| {
                format!("{name} is not set (a distributed run needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; launch with `msdiff launch` or torchrun)")
            })?;
            v.trim().parse::<usize>().map_err(|_| anyhow::anyhow!("{name} must be a non-negative integer, got {v:?}"))
        };
        let world = num("WORLD_SIZE", world)?;
        ensure!(world >= 1, "WORLD_SIZE must be at least 1, got 0");
        let rank = num("RANK", rank)?;
        ensure!(rank < world, "RANK {rank} is out of range for WORLD_SIZE {world} (ranks are 0..{})", world - 1);
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        let master_addr = get("MASTER_ADDR")
            .filter(|s| !s.trim().is_empty())
            .context("MASTER_ADDR is not set: give the address of rank 0's machine (127.0.0.1 on one machine)")?;
        let port = get("MASTER_PORT").context("MASTER_PORT is not set: give a free TCP port on rank 0's machine")?;
        let master_port: u16 = port
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .with_context(|| format!("MASTER_PORT must be a TCP port (1-65535), got {port:?}"))?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        Ok(Some(Env { rank, world, local_rank, master_addr, master_port, host_store: rank == 0 && !agent_store }))
    }
}

/// Seconds a rendezvous or collective may take before it fails (`MSDIFF_DIST_TIMEOUT`, default 300).
pub fn timeout() -> Result<Duration> {
    match std::env::var("MSDIFF_DIST_TIMEOUT") {
        Ok(v) => {
            let s: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0)
                .with_context(|| format!("MSDIFF_DIST_TIMEOUT must be a positive number of seconds, got {v:?}"))?;
            Ok(Duration::from_secs_f64(s))
        }
        Err(_) => Ok(Duration::from_secs(300)),
    }
}

/// One process's membership of the group.
pub struct Group {
    store: *mut c_void,
    group: *mut c_void,
    pub rank: usize,
    pub world: usize,
    pub backend: BackendChoice,
    /// How long a collective may wait for the other ranks.
    pub timeout: Duration,
    shut: std::sync::atomic::AtomicBool,
}

// SAFETY: c10d's store and process groups are thread-safe C++ objects; msdiff calls them from
// one thread at a time anyway.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = self.shutdown(false);
        // SAFETY: both were created by the shim and are freed once.
        unsafe {
            ffi::msd_group_free(self.group);
            ffi::msd_store_free(self.store);
        }
    }
}

impl Group {
    /// Rendezvous through the TCPStore at MASTER_ADDR:MASTER_PORT and create the process group.
    /// `backend` must be resolved (Gloo or NCCL); NCCL uses GPU `device`.
    pub fn new(env: &Env, backend: BackendChoice, device: Option<usize>, timeout: Duration) -> Result<Group> {
        ensure!(backend != BackendChoice::Auto, "internal: the backend must be resolved before the group is made");
        let ms = timeout.as_millis().min(i64::MAX as u128) as i64;
        let host = CString::new(env.master_addr.clone()).context("MASTER_ADDR contains a NUL byte")?;
        let mut store = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: valid C strings and out-pointers; the shim catches C++ exceptions.
        let st = unsafe {
            ffi::msd_store_new(
                host.as_ptr(),
                env.master_port as c_int,
                env.world as c_int,
                env.host_store as c_int,
                ms,
                &mut store,
                &mut err,
            )
        };
        let at = format!("{}:{}", env.master_addr, env.master_port);
        check(
            st,
            err,
            &if env.host_store {
                format!("rank 0 cannot host the rendezvous store on {at} (is MASTER_PORT in use?)")
            } else if env.rank == 0 {
                format!("rank 0 cannot reach the rendezvous store on {at}, which TORCHELASTIC_USE_AGENT_STORE=True says torchrun's agent hosts (unset it when not launched by torchrun)")
            } else {
                format!("rank {} cannot reach the rendezvous store on {at} (is rank 0 running, MASTER_ADDR/MASTER_PORT right?)", env.rank)
            },
        )?;
        let prefix = CString::new("msdiff/default_pg/").expect("no NUL");
        let mut group = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        let st = match backend {
            BackendChoice::Nccl => {
                // SAFETY: as above.
                unsafe {
                    ffi::msd_nccl_new(
                        store,
                        prefix.as_ptr(),
                        env.rank as c_int,
                        env.world as c_int,
                        ms,
                        device.unwrap_or(env.local_rank) as c_int,
                        &mut group,
                        &mut err,
                    )
                }
            }
            _ => {
                let ifnames = CString::new(std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default())
                    .context("GLOO_SOCKET_IFNAME contains a NUL byte")?;
                // SAFETY: as above.
                unsafe {
                    ffi::msd_gloo_new(
                        store,
                        prefix.as_ptr(),
                        env.rank as c_int,
                        env.world as c_int,
                        ms,
                        ifnames.as_ptr(),
                        &mut group,
                        &mut err,
                    )
                }
            }
        };
        if let Err(e) = check(st, err, &format!("rank {}: cannot create the {backend} process group", env.rank)) {
            // SAFETY: created above, freed once.
            unsafe { ffi::msd_store_free(store) };
            return Err(e);
        }
        Ok(Group { store, group, rank: env.rank, world: env.world, backend, timeout, shut: Default::default() })
    }

    fn fail(&self, what: &str) -> String {
        format!(
            "rank {} of {}: {what} failed (another rank stopped, crashed, or did not answer within MSDIFF_DIST_TIMEOUT = {} s; its own message says why)",
            self.rank,
            self.world,
            self.timeout.as_secs_f64()
        )
    }

    /// Sum `t` over the ranks, in place. `t` must be contiguous and on the backend's device.
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: tch's C_tensor* is an at::Tensor* (libtch's torch_api.h); the shim copies the handle.
        let st = unsafe { ffi::msd_allreduce(self.group, t.as_mut_ptr() as *mut c_void, 0, &mut err) };
        check(st, err, &self.fail("all-reduce"))
    }

    /// Replace `t` with rank `root`'s `t`, in place.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: as in all_reduce_sum.
        let st = unsafe { ffi::msd_broadcast(self.group, t.as_mut_ptr() as *mut c_void, root as c_int, &mut err) };
        check(st, err, &self.fail("broadcast"))
    }

    /// Shut the group down (once; later collectives fail): NCCL destroys its communicators.
    /// `abort` (after a failure) does not wait for the other ranks.
    pub fn shutdown(&self, abort: bool) -> Result<()> {
        if self.shut.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let mut err = std::ptr::null_mut();
        // SAFETY: a live group.
        let st = unsafe { ffi::msd_group_shutdown(self.group, abort as c_int, &mut err) };
        check(st, err, "shutting the process group down")
    }

    /// Wait until every rank is here.
    pub fn barrier(&self) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: a live group.
        let st = unsafe { ffi::msd_barrier(self.group, &mut err) };
        check(st, err, &self.fail("barrier"))
    }
}

static GROUP: OnceLock<Group> = OnceLock::new();

/// The process's group, once [`init`] made one.
pub fn current() -> Option<&'static Group> {
    GROUP.get()
}

/// Shut the process's group down, if it has one (the CLI does so before exiting, as PyTorch
/// asks of NCCL users): cleanly after success, aborted after a failure (`ok` false), so that a
/// dead peer cannot hold the exit. Errors are ignored: the process is ending.
pub fn finish(ok: bool) {
    if let Some(g) = current() {
        let _ = g.shutdown(!ok);
    }
}

/// This process's rank (0 without a group).
pub fn rank() -> usize {
    current().map_or(0, |g| g.rank)
}

/// Whether this process writes outputs (rank 0, or no group).
pub fn is_main() -> bool {
    rank() == 0
}

/// Which backend a device gets.
pub fn resolve_backend(choice: BackendChoice, device: tch::Device) -> BackendChoice {
    match choice {
        BackendChoice::Auto if device.is_cuda() => BackendChoice::Nccl,
        BackendChoice::Auto => BackendChoice::Gloo,
        c => c,
    }
}

/// Join the group the environment describes (once per process; later calls return the same
/// group). `Ok(None)` without a launcher's environment.
pub fn init(env: &Env, choice: BackendChoice, device: tch::Device) -> Result<&'static Group> {
    if let Some(g) = GROUP.get() {
        return Ok(g);
    }
    let backend = resolve_backend(choice, device);
    match (backend, device) {
        (BackendChoice::Nccl, d) if !d.is_cuda() => {
            bail!("--dist-backend nccl needs a CUDA device (got {d:?}); use --dist-backend gloo on CPU")
        }
        (BackendChoice::Nccl, _) if !has_nccl() => bail!(
            "this msdiff was built without NCCL (its libtorch has no CUDA, or the CUDA/NCCL headers were missing at build time; see docs/DISTRIBUTED.md); use --dist-backend gloo"
        ),
        (BackendChoice::Gloo, d) if d.is_cuda() => {
            bail!("--dist-backend gloo runs on CPU tensors here; use --device cpu, or nccl on CUDA")
        }
        _ => {}
    }
    let gpu = match device {
        tch::Device::Cuda(i) => Some(i),
        _ => None,
    };
    let g = Group::new(env, backend, gpu, timeout()?)?;
    let _ = GROUP.set(g);
    Ok(GROUP.get().expect("just set"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<Env>> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::parse(|k| m.get(k).cloned())
    }

    #[test]
    fn the_environment_is_read_as_torchrun_writes_it() {
        assert_eq!(parse(&[]).unwrap(), None);
        let base = [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")];
        let e = parse(&base).unwrap().unwrap();
        assert!(e.host_store && e.rank == 0 && e.world == 2 && e.local_rank == 0);
        // torchrun's agent hosts the store: rank 0 must not.
        let mut v = base.to_vec();
        v.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        assert!(!parse(&v).unwrap().unwrap().host_store);
        v.pop();
        v.push(("TORCHELASTIC_USE_AGENT_STORE", "False"));
        assert!(parse(&v).unwrap().unwrap().host_store);
        let mut v = base.to_vec();
        v[0] = ("RANK", "1");
        v.push(("LOCAL_RANK", "0"));
        let e = parse(&v).unwrap().unwrap();
        assert!(!e.host_store && e.rank == 1 && e.local_rank == 0);
    }

    #[test]
    fn a_bad_environment_is_a_one_line_error_naming_the_variable() {
        let err = |v: &[(&str, &str)]| format!("{:#}", parse(v).unwrap_err());
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")]);
        assert!(e.contains("MASTER_PORT is not set"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]);
        assert!(e.contains("WORLD_SIZE must be at least 1"), "{e}");
        let e = err(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]);
        assert!(e.contains("RANK 2 is out of range for WORLD_SIZE 2"), "{e}");
        let e = err(&[("RANK", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]);
        assert!(e.contains("WORLD_SIZE is not set"), "{e}");
        let e = err(&[("RANK", "x"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]);
        assert!(e.contains("RANK must be a non-negative integer"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")]);
        assert!(e.contains("MASTER_PORT must be a TCP port"), "{e}");
        for v in [
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")][..],
            &[("RANK", "0"), ("WORLD_SIZE", "0")][..],
        ] {
            assert!(!err(v).contains('\n'));
        }
    }
}

//! Devices and threads.
use anyhow::{bail, Result};
use std::time::Instant;
use tch::{Device, Tensor};

/// Keep freed memory in the process for reuse: glibc's allocator serves blocks above its mmap
/// threshold (32 MiB at most) with a fresh `mmap` and returns them with `munmap`, and trims the
/// heap's top back to the system, so every large tensor of a loop (a training step's activations,
/// the optimal denoiser's logit blocks) is page-faulted and zeroed by the kernel again each time.
/// Measured on the CI machine kind (2 cores; docs/BENCHMARKS.md, "Allocator"): system time of
/// `msdiff cluster` on Fashion-MNIST 3.0 -> 1.0 s and wall 10.5 -> 9.0-9.4 s; the reference-6.5m
/// training step 2.18 -> 2.03-2.10 s. The price: the resident size stays at its peak (as with
/// any caching allocator). Only with glibc, and not when the user tunes malloc through
/// `GLIBC_TUNABLES` (theirs wins); call it first in `main`, before libtorch allocates.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc")) {
            return;
        }
        // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// Choose how libtorch's OpenMP threads wait for work: spin (OpenMP's default) on an idle
/// machine, sleep (`OMP_WAIT_POLICY=PASSIVE`) when other processes are using the CPU.
///
/// libtorch's CPU kernels run on GNU OpenMP, whose threads spin for a while after each parallel
/// region. On an idle machine that is fastest (the demo: 254 s spinning, 393 s passive). When the
/// cores are shared (another process, a build, a second run), a spinning thread burns the time
/// slice its partner needs, and a job slows down far beyond its share of the CPU: `msdiff cluster`
/// on 200 images went from 1.7 s to 41-80 s beside one busy loop, against 3.1-4.2 s passive; the
/// demo took 7x its quiet time spinning and 1.44x passive (docs/BENCHMARKS.md, "Shared
/// machines"). So when the 1-minute load average shows at least half a core in use by others
/// (>= 0.5) at start, the policy is set to `PASSIVE`. It is read once, when the OpenMP runtime
/// loads with libtorch (before `main`), so this re-executes the binary with the same arguments. A
/// value the user set (`OMP_WAIT_POLICY=ACTIVE|PASSIVE`) is always kept. If the re-exec fails the
/// program goes on with OpenMP's default.
pub fn choose_openmp_wait_policy() {
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let busy = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .is_some_and(|load| load >= 0.5);
    if !busy {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    use std::os::unix::process::CommandExt;
    let err =
        std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("OMP_WAIT_POLICY", "PASSIVE").exec();
    // exec only returns on failure; carry on in this process.
    eprintln!(
        "msdiff: note: could not re-execute with OMP_WAIT_POLICY=PASSIVE ({err}); continuing with OpenMP's default"
    );
    std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
}

/// Set libtorch's intra-op thread count (`0` = all cores).
pub fn set_threads(n: usize) {
    let n = if n == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { n };
    tch::set_num_threads(n as i32);
}

/// Parse `cpu`, `cuda`, `cuda:N` or `auto` (cuda when available, else cpu).
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").map(|n| n.parse::<usize>()) {
            Some(Ok(n)) => cuda(n),
            _ => bail!("unknown device '{s}' (expected cpu, cuda, cuda:N or auto)"),
        },
    }
}

fn cuda(n: usize) -> Result<Device> {
    if !tch::Cuda::is_available() {
        bail!("--device cuda: no CUDA device found (libtorch sees no NVIDIA driver/GPU); use --device cpu");
    }
    let count = tch::Cuda::device_count() as usize;
    if n >= count {
        bail!("--device cuda:{n}: only {count} CUDA device(s) present");
    }
    Ok(Device::Cuda(n))
}

crate::names::named_enum! {
    /// Numeric precision of a network's forward and backward passes.
    ///
    /// `bf16`: the network's weights and activations are bfloat16; training keeps fp32 master weights,
    /// fp32 Adam moments and an fp32 EMA, and computes the loss in fp32 (tch has no autocast, so this is
    /// the whole-network form of it). Checkpoints always hold fp32 weights, so fp32 and bf16 runs and
    /// checkpoints are interchangeable.
    #[derive(Default)]
    pub enum Precision ("precision") {
        /// 32-bit floats everywhere (the default).
        #[default]
        Fp32 = "fp32" | "f32" | "float32",
        /// bfloat16 network weights and activations.
        Bf16 = "bf16" | "bfloat16",
    }
}

impl Precision {
    /// The kind of the network's weights and activations.
    pub fn kind(self) -> tch::Kind {
        match self {
            Precision::Fp32 => tch::Kind::Float,
            Precision::Bf16 => tch::Kind::BFloat16,
        }
    }
}

/// Move a host batch to `device` (as f32). On CUDA the host tensor is pinned and the copy is
/// non-blocking (ordered on the current stream before any kernel that reads it); on the CPU it is
/// returned as is.
pub fn batch_to_device(t: &Tensor, device: Device) -> Tensor {
    match device {
        Device::Cpu => t.to_kind(tch::Kind::Float),
        d => {
            // `_pin_memory` directly: tch's `pin_memory`/`is_pinned` always pass a device, which
            // libtorch 2.11 warns about (deprecated) on every call. Batches are fresh host tensors,
            // never pinned yet.
            let host =
                if t.device() == Device::Cpu { t.contiguous().internal_pin_memory(d) } else { t.shallow_clone() };
            host.to_device_(d, tch::Kind::Float, true, false)
        }
    }
}

/// Whether an error message is libtorch's out-of-memory error: CUDA's "CUDA out of memory" /
/// `OutOfMemoryError`, or the host allocator's "DefaultCPUAllocator: can't allocate memory" (libtorch
/// 2.11; older releases said "not enough memory").
pub fn is_oom(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    ["out of memory", "outofmemoryerror", "not enough memory", "can't allocate memory", "cannot allocate memory"]
        .iter()
        .any(|k| m.contains(k))
}

/// The message of a panic payload (`panic!` with a string literal or a formatted `String`; empty
/// for any other payload).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("")
}

/// The allocator's own sentence out of a libtorch error (which tch may wrap as
/// ``called `Result::unwrap()` on an `Err` value: Torch("[enforce fail at ...] ...\nframe #0 ...")``).
pub fn oom_core(msg: &str) -> &str {
    let line = msg.lines().next().unwrap_or("").trim();
    let start = ["DefaultCPUAllocator", "CUDA out of memory"].iter().filter_map(|k| line.find(k)).min().unwrap_or(0);
    let core = &line[start..];
    core.split("\\n").next().unwrap_or(core).trim_end_matches("\")").trim()
}

/// A progress bar with rate and ETA, used by every long job (hidden when `quiet`; indicatif also
/// hides it when stderr is not a terminal).
pub fn progress_bar(len: u64, prefix: &str, quiet: bool) -> indicatif::ProgressBar {
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(len) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

/// Median of `v` (the upper middle value for an even count); `v` must not be empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Run `f` once to warm up, then `repeats` times (at least once); the median wall time in s.
pub fn time_median<F: FnMut()>(repeats: usize, mut f: F) -> f64 {
    f(); // warm-up
    median(
        (0..repeats.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

/// The processor's model name and libtorch's thread count, for benchmark reports.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {} libtorch threads", tch::get_num_threads())
}

/// MemAvailable of /proc/meminfo, in bytes.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

//! Devices and threads.
use anyhow::{bail, Result};
use tch::Device;

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

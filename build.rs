//! Keep CUDA linked, find libtorch at run time, and compile the distributed shim.
//!
//! Rust links with `--as-needed`; the binary references no symbol of `libtorch_cuda.so` or
//! `libtorch.so`, so the linker would drop both and CUDA would silently vanish (see
//! `../shared/docs/libtorch.md`). We wrap them in `--no-as-needed`. We also add a RUNPATH to the
//! libtorch we built against, so the binary runs without `LD_LIBRARY_PATH` on the build machine;
//! on another machine `LD_LIBRARY_PATH` (which takes precedence over RUNPATH) points elsewhere.
//!
//! `csrc/optim_shim.cpp` binds libtorch's fused Adam (tch does not bind `_fused_*` ops).
//! `csrc/dist_shim.cpp` binds libtorch's c10d (TCPStore, ProcessGroupGloo, ProcessGroupNCCL;
//! docs/DISTRIBUTED.md). Gloo is always compiled (its headers are vendored under
//! `csrc/third_party/gloo`); NCCL only when the libtorch has CUDA and the CUDA runtime, crt/nv
//! and NCCL headers are present: the runtime and NCCL ones come with the torch wheel, `crt/` and
//! `nv/` (from the `nvidia-cuda-crt` / `nvidia-cuda-cccl` wheels) in `MSDIFF_CUDA_HEADERS`, which
//! scripts/with-libtorch fetches once and sets. So the binary built here runs NCCL on a GPU machine.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=MSDIFF_NO_NCCL");
    println!("cargo:rerun-if-env-changed=MSDIFF_CUDA_HEADERS");
    println!("cargo:rerun-if-changed=csrc");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        // torch-sys itself fails with a clear message when LIBTORCH is missing; nothing to add.
        return;
    };
    let root = PathBuf::from(&libtorch);
    let lib = root.join("lib");
    let cuda = lib.join("libtorch_cuda.so").exists();
    let nccl = cuda && std::env::var_os("MSDIFF_NO_NCCL").is_none() && nccl_includes(&root).is_some();
    compile_shim(&root, nccl);
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// The include folders NCCL's process group needs, from the pip wheels next to torch
/// (`site-packages/nvidia/...`), if all are there.
fn nccl_includes(torch: &Path) -> Option<Vec<PathBuf>> {
    let nvidia = torch.parent()?.join("nvidia");
    let cu = nvidia.join("cu13").join("include");
    let nccl = nvidia.join("nccl").join("include");
    // crt/ and nv/ in the wheel's own folder (if someone installed those wheels), else the
    // folder scripts/with-libtorch fetched.
    let extra = std::env::var_os("MSDIFF_CUDA_HEADERS").map(PathBuf::from).unwrap_or_else(|| cu.clone());
    let needed = [
        cu.join("cuda_runtime.h"),
        extra.join("crt").join("host_config.h"),
        extra.join("nv").join("target"),
        nccl.join("nccl.h"),
    ];
    needed.iter().all(|p| p.exists()).then(|| vec![cu, extra, nccl])
}

fn compile_shim(torch: &Path, nccl: bool) {
    let include = torch.join("include");
    let mut b = cc::Build::new();
    b.cpp(true)
        .file("csrc/dist_shim.cpp")
        .file("csrc/optim_shim.cpp")
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .define("USE_DISTRIBUTED", None)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include("csrc/third_party/gloo/include")
        .warnings(false);
    if nccl {
        b.define("USE_C10D_NCCL", None).define("USE_CUDA", None).define("MSDIFF_NCCL", None);
        for dir in nccl_includes(torch).unwrap_or_default() {
            b.include(dir);
        }
    }
    b.compile("msdiff_dist_shim");
    println!("cargo:rustc-link-search=native={}", torch.join("lib").display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if nccl {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}

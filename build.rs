//! Keep CUDA linked and find libtorch at run time.
//!
//! Rust links with `--as-needed`; the binary references no symbol of `libtorch_cuda.so` or
//! `libtorch.so`, so the linker would drop both and CUDA would silently vanish (see
//! `../shared/docs/libtorch.md`). We wrap them in `--no-as-needed`. We also add a RUNPATH to the
//! libtorch we built against, so the binary runs without `LD_LIBRARY_PATH` on the build machine;
//! on another machine `LD_LIBRARY_PATH` (which takes precedence over RUNPATH) points elsewhere.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        // torch-sys itself fails with a clear message when LIBTORCH is missing; nothing to add.
        return;
    };
    let lib = PathBuf::from(&libtorch).join("lib");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

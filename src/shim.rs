//! The calling convention of msdiff's C++ shims (`csrc/`: c10d in `dist_shim.cpp`, fused Adam in
//! `optim_shim.cpp`, both through `csrc/shim.h`): a function returns 0, or 1 with a malloc'ed,
//! NUL-terminated message in its `err` out-parameter, which [`check`] turns into an error and frees.
use anyhow::{bail, Result};
use std::ffi::{c_char, c_int, CStr};

extern "C" {
    fn msd_free_str(s: *mut c_char);
}

/// Turn a shim call's status and error string into a `Result`.
pub(crate) fn check(status: c_int, err: *mut c_char, what: &str) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    let msg = if err.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: the shim returns a NUL-terminated string from malloc, freed here once.
        let s = unsafe { CStr::from_ptr(err) }.to_string_lossy().trim().replace('\n', " ");
        unsafe { msd_free_str(err) };
        s
    };
    bail!("{what}: {msg}")
}

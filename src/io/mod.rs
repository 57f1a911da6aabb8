//! File input/output: atomic writes, `.npy` arrays and PNG/JPEG images.
//!
//! Every writer here goes through [`atomic::write_atomic`], so a crash or a full disk never
//! leaves a half-written file under the final name.

pub mod atomic;
pub mod image;
pub mod jsonl;
pub mod npy;
pub mod samples;

pub use atomic::{ensure_dir, ensure_parent_dir, write_atomic, write_atomic_bytes};
pub use image::{read_image, tensor_to_u8, write_grid, write_png};
pub use npy::{read_npy, write_npy};

/// Like `anyhow::Context::with_context`, but folds the cause into one message
/// (`"{context}: {cause}"`), so the whole story shows whether the error is printed with `{}`,
/// `{:#}` or `{:?}`.
pub trait FlatContext<T> {
    fn flat_context<F: FnOnce() -> String>(self, f: F) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> FlatContext<T> for std::result::Result<T, E> {
    fn flat_context<F: FnOnce() -> String>(self, f: F) -> anyhow::Result<T> {
        self.map_err(|e| {
            let e: anyhow::Error = e.into();
            anyhow::anyhow!("{}: {:#}", f(), e)
        })
    }
}

//! File input/output: atomic writes, `.npy` arrays and PNG/JPEG images.
//!
//! Every writer here goes through [`atomic::write_atomic`], so a crash or a full disk never
//! leaves a half-written file under the final name.

pub mod atomic;
pub mod image;
pub mod npy;

pub use atomic::{ensure_dir, ensure_parent_dir, write_atomic, write_atomic_bytes};
pub use image::{read_image, tensor_to_u8, write_grid, write_png};
pub use npy::{read_npy, write_npy};

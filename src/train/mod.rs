//! Training (in progress).
pub mod ema;
pub mod objective;
pub mod optim;

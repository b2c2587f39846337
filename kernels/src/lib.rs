//! cllm-kernels: compute kernels. `cpu` is the reference backend.

pub mod cpu;
pub mod cuda;
pub mod weights;

pub use weights::{Weight, WeightData};

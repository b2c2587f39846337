//! cllm-kernels: the compute kernels. [`cpu`] is the reference backend (deterministic f32
//! kernels over weights in memory, [`Weight`]); [`cuda`] holds the CUDA kernels' sources and
//! their launches on a `cllm_cuda::Gpu`.

pub mod cpu;
pub mod cuda;
pub mod weights;

pub use weights::{Int4Blocks, Weight, WeightData};

//! The CUDA kernels: their sources (the `.cu` files of this folder, compiled at run time with
//! NVRTC into one program by [`program`]) and their launches. [`Kernels`] is the program loaded
//! on one GPU (a `cllm_cuda::Gpu`, the device runtime), with a method per launch.
//!
//! Numerics (see `common.cuh`): float32 accumulation, `--fmad=false` with explicit `fmaf`, and
//! reductions whose order depends only on the problem size, so a row computed in a batch has the
//! bits it has alone, and KV-cache decoding is bit-identical to recomputation.

mod attention;
mod gemv;
pub mod hash;
mod kernels;
mod misc;
pub mod program;
mod sample;
mod trace;
mod weight;

pub use attention::{AttnArgs, KvForm, KvStoreArgs, ATT_CHUNK, ATT_MAX_HD};
pub use gemv::{tokens_per_block, GateAct, GemvArgs, GemvMode, FILL_BLOCKS, GEMV_WARPS, PSTRIDE};
pub use kernels::Kernels;
pub use misc::{EmbedArgs, HeadArgs, NormResidArgs};
pub use sample::{
    GpuSampler, SampleArgs, SampleOutcome, SampleParams, Sampled, SAMPLE_CAP, SAMPLE_STATE_WORDS,
    SAMPLE_THREADS,
};
pub use trace::BlockRecord;
pub use weight::{elements_per_vector, GpuWeight, WDesc};

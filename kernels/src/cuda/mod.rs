//! The CUDA backend's device layer: the GPU handle, device and pinned-host buffers, the kernels
//! (CUDA C in `kernels/cuda/*.cu`, compiled at run time with NVRTC and cached on disk by source
//! hash) and their launches.
//!
//! The CUDA driver and NVRTC are loaded dynamically (cudarc's `dynamic-loading`): a build runs
//! on machines without CUDA, and [`Gpu::new`] answers "no CUDA driver found" there instead of
//! failing to start. Everything here goes through cudarc's thin `result`/`sys` layers with raw
//! device pointers, so nothing records events behind our back and whole decode steps can be
//! captured into CUDA graphs.
//!
//! Numerics (see `kernels/cuda/common.cuh`): float32 accumulation, `--fmad=false` with explicit
//! `fmaf`, and reductions whose order depends only on the problem size, so a row computed in a
//! batch has the bits it has alone, and KV-cache decoding is bit-identical to recomputation.

mod compile;
mod device;
pub mod hash;
mod launch;
mod sample;
mod trace;
mod weight;

pub use compile::{compile_check, kernel_cache_dir, KernelSource, KERNEL_SOURCES};
pub use device::{CudaError, DeviceBuffer, Event, Gpu, GpuInfo, Graph, OwnedStream, PinnedBuffer};
pub use launch::{
    ksplit_for, tokens_per_block, AttnArgs, EmbedArgs, GemvArgs, GemvMode, WDesc, ATT_CHUNK,
    GEMV_WARPS, PSTRIDE,
};
pub use sample::{
    GpuSampler, SampleArgs, SampleOutcome, SampleParams, Sampled, SAMPLE_CAP, SAMPLE_STATE_WORDS,
    SAMPLE_THREADS,
};
pub use trace::BlockRecord;
pub use weight::{GpuWeight, GpuWeightKind};

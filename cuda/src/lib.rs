//! cllm-cuda: the CUDA device runtime. It knows GPUs, memory, streams, graphs and how to compile
//! and launch a kernel; it knows no kernel (those are `cllm-kernels`' sources and launchers).
//!
//! - [`Gpu`]: one device's context and compute stream, its memory (device buffers, pinned host
//!   buffers), events, other streams, and graph capture.
//! - [`Program`] and [`Module`]: CUDA C compiled with NVRTC for the device's architecture, the
//!   cubin cached on disk by source hash ([`compile`]); a module's [`Kernel`]s are typed by
//!   their argument struct, so a handle cannot be launched with the wrong one.
//! - [`Tuning`]: the launch choices that have measured alternatives, built from the
//!   environment once, held by the GPU handle, settable for tests and measurements.
//!
//! The driver and NVRTC are loaded dynamically (cudarc's `dynamic-loading`): [`Gpu::new`]
//! answers "no CUDA driver found" on a machine without one. Everything goes through cudarc's
//! thin `result`/`sys` layers with raw device pointers, so nothing records events behind our
//! back and whole decode steps can be captured into CUDA graphs.

pub mod compile;
mod device;
mod error;
mod module;
mod tuning;

pub use compile::{kernel_cache_dir, CompileReport, Program, Source};
pub use device::{DeviceBuffer, Event, Gpu, GpuInfo, Graph, OwnedStream, PinnedBuffer};
pub use error::CudaError;
pub use module::{Grid, Kernel, KernelArgs, Module};
pub use tuning::{TensorCores, Tuning, XShared};

//! Modules and typed kernels: a compiled program loaded on a GPU, and launches whose argument
//! struct is the kernel's own.
//!
//! Every kernel takes one by-value argument struct, laid out as its `#[repr(C)]` twin on the Rust
//! side. A [`Kernel<A>`] is typed by that struct, so a handle cannot be launched with another.

use std::ffi::{c_void, CString};
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{result, sys};

use crate::compile::{cubin, CompileReport, Program};
use crate::device::Gpu;
use crate::error::{Ctx, CudaError};

/// A kernel's argument struct.
///
/// # Safety
/// The type must be `#[repr(C)]` with the size, alignment and field layout of the argument the
/// CUDA kernel takes by value.
pub unsafe trait KernelArgs: Copy {}

/// A launch's grid: blocks in x, y, z, threads per block (in x) and dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub blocks: (u32, u32, u32),
    pub threads: u32,
    pub shared_bytes: u32,
}

/// A kernel of a loaded [`Module`] that takes `A` by value. Valid while its module is.
pub struct Kernel<A> {
    f: sys::CUfunction,
    name: &'static str,
    /// The kernel waits (`griddepcontrol.wait`) before reading what earlier launches wrote, so
    /// it may be launched programmatically.
    programmatic: bool,
    _args: PhantomData<fn(A)>,
}

impl<A> Clone for Kernel<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Kernel<A> {}

// SAFETY: a function handle is a process-wide driver object, usable from any thread once the
// context is bound (every launch binds it first).
unsafe impl<A> Send for Kernel<A> {}
// SAFETY: as above.
unsafe impl<A> Sync for Kernel<A> {}

impl<A> std::fmt::Debug for Kernel<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernel({})", self.name)
    }
}

impl<A> Kernel<A> {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The dynamic shared memory a block may take: the device's opt-in maximum per block less
    /// the kernel's static shared memory, raised to that on the function (48 KiB less the
    /// static part if the driver refuses).
    pub fn raise_shared_limit(&self, gpu: &Gpu) -> u32 {
        use sys::CUfunction_attribute_enum as Attr;
        // SAFETY: `f` is a function of a loaded module; attribute queries have no side effects.
        let fixed = unsafe {
            result::function::get_function_attribute(
                self.f,
                Attr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
            )
        }
        .unwrap_or(0)
        .max(0) as u32;
        let optin = gpu.info().max_shared_per_block_optin;
        let want = optin.saturating_sub(fixed);
        // SAFETY: as above; this only raises the function's launch limit.
        let raised = unsafe {
            result::function::set_function_attribute(
                self.f,
                Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                want as i32,
            )
        };
        match raised {
            Ok(()) => want,
            Err(_) => (48u32 << 10).saturating_sub(fixed),
        }
    }

    /// Blocks of `threads` threads with `shared_bytes` of dynamic shared memory that one
    /// multiprocessor holds at once.
    pub fn blocks_per_multiprocessor(
        &self,
        gpu: &Gpu,
        threads: u32,
        shared_bytes: u32,
    ) -> Result<usize, CudaError> {
        gpu.bind()?;
        // SAFETY: `f` is a function of a loaded module; the query has no side effects.
        let n = unsafe {
            result::occupancy::max_active_block_per_multiprocessor(
                self.f,
                threads as i32,
                shared_bytes as usize,
            )
        }
        .ctx(format!("reading the occupancy of {}", self.name))?;
        Ok(n.max(0) as usize)
    }
}

/// A program compiled for one GPU and loaded into its context.
pub struct Module {
    gpu: Arc<Gpu>,
    module: sys::CUmodule,
    report: CompileReport,
}

// SAFETY: the module is a process-wide driver object, used once the context is bound.
unsafe impl Send for Module {}
// SAFETY: as above; loading functions and globals has no side effects on the module.
unsafe impl Sync for Module {}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Module({})", self.report.path.display())
    }
}

impl Module {
    /// Compiles `program` for `gpu` (or takes the cubin from the on-disk cache) and loads it.
    pub fn load(gpu: &Arc<Gpu>, program: &Program) -> Result<Module, CudaError> {
        let (cc_major, cc_minor) = gpu.info().compute_capability;
        let (bin, report) = cubin(&format!("sm_{cc_major}{cc_minor}"), program)?;
        gpu.bind()?;
        // SAFETY: `bin` is a cubin for this device, alive during the call.
        let module = unsafe { result::module::load_data(bin.as_ptr() as *const c_void) }
            .ctx(format!("loading the kernels ({})", report.path.display()))?;
        Ok(Module {
            gpu: gpu.clone(),
            module,
            report,
        })
    }

    /// Where the cubin came from and how long getting it took.
    pub fn report(&self) -> &CompileReport {
        &self.report
    }

    /// Kernel `name`, taking `A`, which waits (`griddepcontrol.wait`) before reading what
    /// earlier launches wrote: launched with programmatic dependent launch.
    pub fn kernel<A: KernelArgs>(&self, name: &'static str) -> Result<Kernel<A>, CudaError> {
        self.function(name, true)
    }

    /// Kernel `name`, taking `A`, which does not wait: each launch starts after the previous
    /// one has finished.
    pub fn serial_kernel<A: KernelArgs>(&self, name: &'static str) -> Result<Kernel<A>, CudaError> {
        self.function(name, false)
    }

    fn function<A: KernelArgs>(
        &self,
        name: &'static str,
        programmatic: bool,
    ) -> Result<Kernel<A>, CudaError> {
        self.gpu.bind()?;
        let cname = CString::new(name).expect("kernel names have no NUL");
        // SAFETY: the module is loaded.
        let f = unsafe { result::module::get_function(self.module, cname) }
            .ctx(format!("finding kernel {name}"))?;
        Ok(Kernel {
            f,
            name,
            programmatic,
            _args: PhantomData,
        })
    }

    /// The device address and size of global variable `name`, if the program defines it.
    pub fn global(&self, name: &str) -> Option<(u64, usize)> {
        self.gpu.bind().ok()?;
        let name = CString::new(name).ok()?;
        // SAFETY: the module is loaded; a missing symbol is an error, not a fault.
        unsafe { result::module::get_global(self.module, name) }.ok()
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() && self.gpu.sync().is_ok() {
            // SAFETY: ours; the stream is synchronized, so no kernel of it runs.
            unsafe {
                let _ = result::module::unload(self.module);
            }
        }
    }
}

impl Gpu {
    /// Launches `kernel` with `args` on the compute stream; a kernel that waits for its
    /// predecessors' results is launched with programmatic dependent launch (it may start while
    /// the previous one finishes) unless the tuning turns that off. An empty grid launches
    /// nothing.
    pub fn launch<A: KernelArgs>(
        &self,
        kernel: &Kernel<A>,
        grid: Grid,
        args: &A,
    ) -> Result<(), CudaError> {
        let (x, y, z) = grid.blocks;
        if x == 0 || y == 0 || z == 0 {
            return Ok(());
        }
        self.bind()?;
        let tuning = self.tuning();
        let mut params = [args as *const A as *mut c_void];
        let what = || format!("launching {}", kernel.name);
        if tuning.pdl && kernel.programmatic {
            // SAFETY: plain-old-data attribute; zeroed padding is valid.
            let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
            attr.id =
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.value.programmaticStreamSerializationAllowed = 1;
            let cfg = sys::CUlaunchConfig {
                gridDimX: x,
                gridDimY: y,
                gridDimZ: z,
                blockDimX: grid.threads,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: grid.shared_bytes,
                hStream: self.stream(),
                attrs: &mut attr,
                numAttrs: 1,
            };
            // SAFETY: `A` is the kernel's argument struct (`KernelArgs`); `cfg` and `attr`
            // outlive the call; the driver copies parameters at launch.
            unsafe {
                sys::cuLaunchKernelEx(&cfg, kernel.f, params.as_mut_ptr(), std::ptr::null_mut())
            }
            .result()
            .ctx(what())?;
        } else {
            // SAFETY: as above.
            unsafe {
                result::launch_kernel(
                    kernel.f,
                    grid.blocks,
                    (grid.threads, 1, 1),
                    grid.shared_bytes,
                    self.stream(),
                    &mut params,
                )
            }
            .ctx(what())?;
        }
        if tuning.sync_each_launch && !self.capturing() {
            self.sync()
                .map_err(|e| CudaError::Kernel(format!("{}: {e}", kernel.name)))?;
        }
        Ok(())
    }
}

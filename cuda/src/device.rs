//! The GPU handle, buffers, streams, events and graphs, over cudarc's raw driver layer.

use std::ffi::c_void;
use std::sync::{Arc, RwLock};

use cudarc::driver::{result, sys, CudaContext, DriverError};

use crate::error::{Ctx, CudaError};
use crate::tuning::Tuning;

/// What the device is.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
    pub total_memory: u64,
    /// The most dynamic shared memory a block may opt in to, bytes.
    pub max_shared_per_block_optin: u32,
}

/// A CUDA stream owned by us.
pub(crate) struct Stream(pub(crate) sys::CUstream);
// SAFETY: CUDA streams may be used from any thread of the process.
unsafe impl Send for Stream {}
// SAFETY: as above; the driver API is thread-safe.
unsafe impl Sync for Stream {}

/// One GPU: its context, a compute stream, and the launch tuning.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Stream,
    tuning: RwLock<Tuning>,
    info: GpuInfo,
}

// SAFETY: the raw handles (context, stream) are process-wide driver objects, usable from any
// thread once the context is bound, which every method does first.
unsafe impl Send for Gpu {}
// SAFETY: as above.
unsafe impl Sync for Gpu {}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("info", &self.info).finish()
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: the stream is ours and no longer used.
        unsafe {
            let _ = result::stream::synchronize(self.stream.0);
            let _ = result::stream::destroy(self.stream.0);
        }
    }
}

impl Gpu {
    /// Whether a CUDA driver library can be loaded at all (no device is touched).
    pub fn driver_present() -> bool {
        // SAFETY: only tries to dlopen libcuda.
        unsafe { sys::is_culib_present() }
    }

    /// Opens device `ordinal`: its context and a compute stream, with the tuning from the
    /// environment ([`Tuning::from_env`]).
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>, CudaError> {
        if !Gpu::driver_present() {
            return Err(CudaError::NoDriver);
        }
        result::init()
            .map_err(|e| CudaError::NoDevice(format!("the CUDA driver did not initialize: {e}")))?;
        let count = result::device::get_count().ctx("counting devices")?;
        if count <= 0 {
            return Err(CudaError::NoDevice("the driver reports no GPU".into()));
        }
        if ordinal >= count as usize {
            return Err(CudaError::NoDevice(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).ctx("creating the context")?;
        let name = ctx.name().ctx("reading the device name")?;
        let compute_capability = ctx
            .compute_capability()
            .ctx("reading the compute capability")?;
        let total_memory = ctx.total_mem().ctx("reading the memory size")? as u64;
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .ctx("reading the multiprocessor count")?;
        let max_shared_per_block_optin = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .unwrap_or(48 << 10)
            .max(0) as u32;
        ctx.bind_to_thread().ctx("binding the context")?;
        let stream = Stream(
            result::stream::create(result::stream::StreamKind::NonBlocking)
                .ctx("creating the compute stream")?,
        );
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            tuning: RwLock::new(Tuning::from_env()),
            info: GpuInfo {
                ordinal,
                name,
                compute_capability,
                multiprocessors,
                total_memory,
                max_shared_per_block_optin,
            },
        }))
    }

    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The launch choices in force.
    pub fn tuning(&self) -> Tuning {
        *self.tuning.read().expect("tuning lock")
    }

    /// Replaces the launch choices (tests, measurements). Launches already captured into a
    /// graph keep the choices they were made with.
    pub fn set_tuning(&self, tuning: Tuning) {
        *self.tuning.write().expect("tuning lock") = tuning;
    }

    /// Blocks resident at once with `per_sm` per multiprocessor: one wave.
    pub fn wave(&self, per_sm: usize) -> usize {
        per_sm * self.info.multiprocessors.max(1) as usize
    }

    /// The compute stream (kernel launches and the copies of `htod`, `dtoh`, ...).
    pub(crate) fn stream(&self) -> sys::CUstream {
        self.stream.0
    }

    /// Whether the compute stream is capturing a graph.
    pub(crate) fn capturing(&self) -> bool {
        // SAFETY: our stream.
        unsafe { result::stream::is_capturing(self.stream.0) }
            .map(|s| s != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
            .unwrap_or(true)
    }

    /// Makes the context current on the calling thread.
    pub fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().ctx("binding the context")
    }

    /// `(free, total)` device memory in bytes.
    pub fn memory(&self) -> Result<(u64, u64), CudaError> {
        self.bind()?;
        let (free, total) = result::mem_get_info().ctx("reading free memory")?;
        Ok((free as u64, total as u64))
    }

    /// Fails with [`CudaError::OutOfMemory`] unless `needed` bytes (plus a margin for the
    /// context and kernels' own use) are free.
    pub fn check_free(&self, what: &str, needed: u64) -> Result<(), CudaError> {
        const MARGIN: u64 = 256 << 20;
        let (free, total) = self.memory()?;
        if needed.saturating_add(MARGIN) > free {
            return Err(CudaError::OutOfMemory {
                what: what.to_string(),
                needed,
                free,
                total,
            });
        }
        Ok(())
    }

    /// `bytes` of device memory (uninitialized).
    pub fn alloc(self: &Arc<Self>, what: &str, bytes: usize) -> Result<DeviceBuffer, CudaError> {
        self.bind()?;
        let n = bytes.max(1);
        // SAFETY: a plain allocation; freed by DeviceBuffer's Drop.
        match unsafe { result::malloc_sync(n) } {
            Ok(ptr) => Ok(DeviceBuffer {
                gpu: self.clone(),
                ptr,
                bytes,
            }),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                let (free, total) = self.memory().unwrap_or((0, 0));
                Err(CudaError::OutOfMemory {
                    what: what.to_string(),
                    needed: bytes as u64,
                    free,
                    total,
                })
            }
            Err(e) => Err(CudaError::Driver {
                what: format!("allocating {bytes} bytes for {what}"),
                source: e,
            }),
        }
    }

    /// A buffer holding `data`.
    pub fn upload<T: Copy>(
        self: &Arc<Self>,
        what: &str,
        data: &[T],
    ) -> Result<DeviceBuffer, CudaError> {
        let b = self.alloc(what, std::mem::size_of_val(data))?;
        self.htod(b.ptr, data)?;
        Ok(b)
    }

    /// Copies `src` to device address `dst` and waits for it.
    pub fn htod<T: Copy>(&self, dst: u64, src: &[T]) -> Result<(), CudaError> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: `dst` holds at least `size_of_val(src)` bytes (caller); `src` outlives the
        // copy, which is waited for.
        unsafe { self.htod_async(dst, src)? };
        self.sync()
    }

    /// Copies from device address `src` into `dst` and waits for it.
    pub fn dtoh<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<(), CudaError> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: `src` holds at least `size_of_val(dst)` bytes (caller); waited for below.
        unsafe { self.dtoh_async(dst, src)? };
        self.sync()
    }

    /// Enqueues a copy of `src` to `dst` on the compute stream, without waiting. The caller
    /// keeps `src` alive (and unchanged) until the stream reaches the copy.
    ///
    /// # Safety
    /// `dst` must hold `size_of_val(src)` bytes and `src` must outlive the copy.
    pub unsafe fn htod_async<T: Copy>(&self, dst: u64, src: &[T]) -> Result<(), CudaError> {
        self.bind()?;
        result::memcpy_htod_async(dst, src, self.stream.0).ctx("copying to the device")
    }

    /// Enqueues a copy from `src` into `dst` on the compute stream, without waiting.
    ///
    /// # Safety
    /// `src` must hold `size_of_val(dst)` bytes; `dst` must stay valid until the stream is
    /// synchronized.
    pub unsafe fn dtoh_async<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<(), CudaError> {
        self.bind()?;
        sys::cuMemcpyDtoHAsync_v2(
            dst.as_mut_ptr() as *mut c_void,
            src,
            std::mem::size_of_val(dst),
            self.stream.0,
        )
        .result()
        .ctx("copying from the device")
    }

    /// Sets `count` 32-bit words at `dst` to `value` (enqueued on the compute stream).
    pub fn fill_u32(&self, dst: u64, value: u32, count: usize) -> Result<(), CudaError> {
        if count == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller owns `count` words at `dst`.
        unsafe {
            sys::cuMemsetD32Async(dst, value, count, self.stream.0)
                .result()
                .ctx("filling device memory")
        }
    }

    /// Copies `bytes` between device buffers (enqueued on the compute stream).
    pub fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: caller owns both ranges.
        unsafe {
            result::memcpy_dtod_async(dst, src, bytes, self.stream.0).ctx("copying on the device")
        }
    }

    /// Waits for the compute stream.
    pub fn sync(&self) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: our stream.
        unsafe { result::stream::synchronize(self.stream.0) }.ctx("running kernels")
    }

    /// A new non-blocking stream (the loader's copy stream).
    pub fn new_stream(self: &Arc<Self>) -> Result<OwnedStream, CudaError> {
        self.bind()?;
        let s = result::stream::create(result::stream::StreamKind::NonBlocking)
            .ctx("creating a stream")?;
        Ok(OwnedStream {
            gpu: self.clone(),
            s: Stream(s),
        })
    }

    /// A timing-capable event.
    pub fn event(self: &Arc<Self>) -> Result<Event, CudaError> {
        self.bind()?;
        let e =
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).ctx("creating an event")?;
        Ok(Event {
            gpu: self.clone(),
            e,
        })
    }

    /// Records `ev` on the compute stream.
    pub fn record(&self, ev: &Event) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: live event and stream.
        unsafe { result::event::record(ev.e, self.stream.0) }.ctx("recording an event")
    }

    /// Starts capturing the compute stream's work into a graph.
    pub fn begin_capture(&self) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: our stream, not capturing.
        unsafe {
            result::stream::begin_capture(
                self.stream.0,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .ctx("starting graph capture")
    }

    /// Ends the capture and instantiates the graph.
    pub fn end_capture(self: &Arc<Self>) -> Result<Graph, CudaError> {
        self.bind()?;
        // SAFETY: our stream is capturing.
        let g =
            unsafe { result::stream::end_capture(self.stream.0) }.ctx("ending graph capture")?;
        // SAFETY: `g` is the captured graph.
        let exec = match unsafe { result::graph::instantiate(g, sys::CUgraphInstantiate_flags(0)) }
        {
            Ok(x) => x,
            Err(e) => {
                // SAFETY: destroys the graph we own.
                let _ = unsafe { result::graph::destroy(g) };
                return Err(CudaError::Driver {
                    what: "instantiating the decode graph".into(),
                    source: e,
                });
            }
        };
        Ok(Graph {
            gpu: self.clone(),
            g,
            exec,
        })
    }
}

/// Device memory, freed on drop.
pub struct DeviceBuffer {
    gpu: Arc<Gpu>,
    ptr: u64,
    bytes: usize,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}

impl DeviceBuffer {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    /// The whole buffer as values of `T`.
    pub fn download<T: Copy + Default>(&self) -> Result<Vec<T>, CudaError> {
        let mut v = vec![T::default(); self.bytes / std::mem::size_of::<T>()];
        self.gpu.dtoh(&mut v, self.ptr)?;
        Ok(v)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() {
            // SAFETY: our allocation; the stream is synchronized first so no kernel uses it.
            unsafe {
                let _ = result::stream::synchronize(self.gpu.stream.0);
                let _ = result::free_sync(self.ptr);
            }
        }
    }
}

/// Page-locked host memory (DMA source for the loader's ring), freed on drop.
pub struct PinnedBuffer {
    gpu: Arc<Gpu>,
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: plain host memory.
unsafe impl Send for PinnedBuffer {}
// SAFETY: shared access is read-only through `&`.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    pub fn new(gpu: &Arc<Gpu>, bytes: usize) -> Result<PinnedBuffer, CudaError> {
        gpu.bind()?;
        // SAFETY: a plain pinned allocation, freed in Drop.
        let ptr =
            unsafe { result::malloc_host(bytes.max(1), 0) }.ctx("allocating pinned host memory")?;
        Ok(PinnedBuffer {
            gpu: gpu.clone(),
            ptr: ptr as *mut u8,
            bytes,
        })
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `bytes` bytes allocated at `ptr`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }
    pub fn len(&self) -> usize {
        self.bytes
    }
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() {
            // SAFETY: our allocation; no copy uses it any more (owners wait first).
            unsafe {
                let _ = result::free_host(self.ptr as *mut c_void);
            }
        }
    }
}

/// A stream other than the compute stream.
pub struct OwnedStream {
    gpu: Arc<Gpu>,
    s: Stream,
}

impl OwnedStream {
    /// Enqueues a host-to-device copy.
    ///
    /// # Safety
    /// `dst` must hold `src.len()` bytes, and `src` must stay valid and unchanged until an event
    /// recorded after this copy has completed.
    pub unsafe fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        self.gpu.bind()?;
        result::memcpy_htod_async(dst, src, self.s.0).ctx("copying weights to the device")
    }

    pub fn record(&self, ev: &Event) -> Result<(), CudaError> {
        self.gpu.bind()?;
        // SAFETY: live event and stream.
        unsafe { result::event::record(ev.e, self.s.0) }.ctx("recording an event")
    }

    pub fn sync(&self) -> Result<(), CudaError> {
        self.gpu.bind()?;
        // SAFETY: our stream.
        unsafe { result::stream::synchronize(self.s.0) }.ctx("waiting for copies")
    }
}

impl Drop for OwnedStream {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() {
            // SAFETY: our stream.
            unsafe {
                let _ = result::stream::synchronize(self.s.0);
                let _ = result::stream::destroy(self.s.0);
            }
        }
    }
}

/// A CUDA event.
pub struct Event {
    gpu: Arc<Gpu>,
    e: sys::CUevent,
}

// SAFETY: events are process-wide driver objects.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Event {
    /// Whether the work before the record has finished.
    pub fn done(&self) -> Result<bool, CudaError> {
        self.gpu.bind()?;
        // SAFETY: live event.
        match unsafe { sys::cuEventQuery(self.e) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            e => Err(CudaError::Driver {
                what: "querying an event".into(),
                source: DriverError(e),
            }),
        }
    }

    pub fn wait(&self) -> Result<(), CudaError> {
        self.gpu.bind()?;
        // SAFETY: live event.
        unsafe { result::event::synchronize(self.e) }.ctx("waiting for an event")
    }

    /// Milliseconds from `self` to `end` (both recorded and complete).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32, CudaError> {
        self.gpu.bind()?;
        // SAFETY: live events.
        unsafe { result::event::elapsed(self.e, end.e) }.ctx("timing events")
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() {
            // SAFETY: our event.
            unsafe {
                let _ = result::event::destroy(self.e);
            }
        }
    }
}

/// An instantiated CUDA graph, replayed on the compute stream.
pub struct Graph {
    gpu: Arc<Gpu>,
    g: sys::CUgraph,
    exec: sys::CUgraphExec,
}

// SAFETY: used from one thread at a time (owned by a session, `&mut` to launch).
unsafe impl Send for Graph {}

impl Graph {
    pub fn launch(&mut self) -> Result<(), CudaError> {
        self.gpu.bind()?;
        // SAFETY: live graph and stream.
        unsafe { result::graph::launch(self.exec, self.gpu.stream.0) }
            .ctx("replaying the decode graph")
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() {
            // SAFETY: ours.
            unsafe {
                let _ = result::stream::synchronize(self.gpu.stream.0);
                let _ = result::graph::exec_destroy(self.exec);
                let _ = result::graph::destroy(self.g);
            }
        }
    }
}

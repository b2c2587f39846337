//! Streaming a model onto the GPU: a `.cllm` container or a Hugging Face folder, decoded on the
//! CPU and copied into one device allocation while decoding goes on.
//!
//! Pipeline. The file is memory-mapped. Work items are the container's frames (or, for a
//! folder, slices of at most 4 MiB of each tensor). Rayon workers take a free slot of a bounded
//! ring of pinned host buffers, check the frame's XXH3-64 and decode it into the slot, and hand
//! the slot to a copy thread, which issues the host-to-device copy on its own CUDA stream and
//! returns the slot to the ring when an event recorded after the copy has completed. Host memory
//! is the ring (slots x largest frame) whatever the model's size; decoding and copying overlap.
//!
//! Residency. Every stream of a tensor lands in device memory as decoded: quantized tensors stay
//! quantized (int8 codes + f32 row or group scales, int4 nibbles + f16 scales and mins), lossless ones in
//! their source dtype. So VRAM for weights is the container's decoded payload size (plus 256-byte
//! alignment per stream), and nothing is expanded per token.
//!
//! Checks. Before anything is allocated the needed bytes are compared with the free VRAM (an
//! error gives both). With [`GpuLoadOptions::hash`] each worker also feeds its decoded bytes to
//! the residency hash ([`cllm_kernels::cuda::hash`]); [`GpuModelWeights::check_resident`] then
//! hashes every resident stream on the GPU and names any tensor whose bytes differ. Frames'
//! XXH3-64 are always checked; the stream-level XXH3-128 is not recomputed here (it is
//! sequential over a stream; `cllm verify` checks it), the residency hash covers decode and copy.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cllm_cuda::{CudaError, DeviceBuffer, Event, Gpu, PinnedBuffer};
use cllm_format::codec::Encoding;
use cllm_format::{Codec, Dtype, WeightForm};
use cllm_kernels::cuda::hash::StreamHash;
use cllm_kernels::cuda::{GpuWeight, Kernels};
use rayon::prelude::*;

use crate::error::LoadError;
use crate::hf::HfFolder;
use crate::model::{ModelFiles, SourceKind};
use crate::packed::Packed;

/// Why loading onto the GPU failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuLoadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },
    #[error("residency check failed: {0}")]
    Residency(String),
}

/// How to load.
#[derive(Clone, Debug)]
pub struct GpuLoadOptions {
    /// Slots in the pinned ring (0: twice the worker threads plus two, within `ring_budget`).
    pub ring_slots: usize,
    /// Most pinned host memory for the ring, in bytes.
    pub ring_budget: usize,
    /// Compute the residency hash of every stream while decoding (needed by `check_resident`).
    pub hash: bool,
}

impl Default for GpuLoadOptions {
    fn default() -> Self {
        GpuLoadOptions {
            ring_slots: 0,
            ring_budget: 256 << 20,
            hash: false,
        }
    }
}

/// One stream resident on the GPU.
#[derive(Clone, Debug)]
pub struct ResidentStream {
    pub tensor: String,
    pub role: String,
    /// Device address and length in bytes.
    pub ptr: u64,
    pub len: u64,
    /// The residency hash of the decoded bytes, computed on the CPU while loading.
    pub cpu_hash: Option<u64>,
}

/// Figures of one load.
#[derive(Clone, Debug, Default)]
pub struct GpuLoadStats {
    pub seconds: f64,
    /// Bytes decoded and copied to the GPU (the resident payload).
    pub decoded_bytes: u64,
    /// Bytes read from the file (stored frames, or the folder's tensor bytes).
    pub read_bytes: u64,
    /// Device memory allocated for the weights.
    pub vram_bytes: u64,
    /// Drop of the device's free memory across the load (all allocations, context included).
    pub vram_used_bytes: u64,
    /// Pinned host memory of the ring.
    pub ring_bytes: u64,
    pub ring_slots: usize,
    pub work_items: usize,
}

impl GpuLoadStats {
    /// Decoded bytes per second.
    pub fn gb_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.decoded_bytes as f64 / self.seconds / 1e9
        } else {
            0.0
        }
    }
}

/// The weights of a model on the GPU, by Hugging Face name.
pub struct GpuModelWeights {
    pub kind: SourceKind,
    /// Every tensor is stored losslessly (a folder always is).
    pub lossless: bool,
    pub path: PathBuf,
    pub files: ModelFiles,
    pub weights: HashMap<String, GpuWeight>,
    pub streams: Vec<ResidentStream>,
    pub stats: GpuLoadStats,
    pub arena: Arc<DeviceBuffer>,
}

/// What `check_resident` found.
#[derive(Clone, Debug)]
pub struct ResidencyReport {
    pub streams: usize,
    pub bytes: u64,
    pub seconds: f64,
}

const ALIGN: u64 = 256;
const FOLDER_CHUNK: usize = 4 << 20;

/// Where one work item's bytes come from.
enum Source<'a> {
    /// A container frame: stored bytes and their encoding, checked against `xxh3`.
    Frame {
        stored: &'a [u8],
        encoding: Encoding,
        xxh3: u64,
        index: usize,
    },
    /// Bytes copied as they are (a folder's tensor data).
    Plain(&'a [u8]),
}

struct Item<'a> {
    stream: usize,
    offset: u64,
    len: usize,
    src: Source<'a>,
}

struct StreamPlan {
    tensor: String,
    role: String,
    len: u64,
    at: u64,
}

struct TensorPlan {
    name: String,
    rows: usize,
    cols: usize,
    form: WeightForm,
    /// Indices into the stream plans: data, then scales and mins.
    streams: Vec<usize>,
}

/// The pinned ring's slots as raw pointers; a slot is used by one party at a time (the free
/// list hands it out, the copy thread gives it back).
struct Ring {
    pinned: PinnedBuffer,
    ptrs: Vec<(usize, usize)>,
    free: Mutex<Vec<usize>>,
    cv: Condvar,
}

impl Ring {
    fn take(&self, abort: &AtomicBool) -> Option<usize> {
        let mut free = self.free.lock().expect("ring lock");
        loop {
            if let Some(i) = free.pop() {
                return Some(i);
            }
            if abort.load(Ordering::Relaxed) {
                return None;
            }
            free = self
                .cv
                .wait_timeout(free, Duration::from_millis(50))
                .expect("ring lock")
                .0;
        }
    }

    fn give(&self, i: usize) {
        self.free.lock().expect("ring lock").push(i);
        self.cv.notify_one();
    }

    /// # Safety
    /// The caller holds slot `i` exclusively.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slot(&self, i: usize, len: usize) -> &mut [u8] {
        let (p, n) = self.ptrs[i];
        assert!(len <= n);
        std::slice::from_raw_parts_mut(p as *mut u8, len)
    }
}

fn form_of(name: &str, dtype: Dtype, codec: Codec) -> Result<WeightForm, LoadError> {
    WeightForm::of(codec, dtype).ok_or_else(|| LoadError::UnsupportedDtype {
        tensor: name.to_string(),
        dtype,
    })
}

fn align(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

/// Loads a `.cllm` file or a Hugging Face folder onto `gpu`.
pub fn load_gpu(
    path: &Path,
    gpu: &Arc<Gpu>,
    opts: &GpuLoadOptions,
) -> Result<GpuModelWeights, GpuLoadError> {
    let start = Instant::now();
    let free_before = gpu.memory()?.0;
    if path.is_dir() {
        let folder = HfFolder::open(path).map_err(LoadError::from)?;
        let files = ModelFiles::from_folder(&folder);
        let tensors = folder.tensors();
        let mut streams = Vec::new();
        let mut plans = Vec::new();
        let mut at = 0u64;
        for t in &tensors {
            if !t.dtype.is_float() {
                return Err(LoadError::UnsupportedDtype {
                    tensor: t.name.to_string(),
                    dtype: t.dtype,
                }
                .into());
            }
            let (rows, cols) = cllm_format::tensor::rows_cols(&t.shape);
            let form = form_of(t.name, t.dtype, Codec::Raw)?;
            streams.push(StreamPlan {
                tensor: t.name.to_string(),
                role: "data".into(),
                len: t.bytes.len() as u64,
                at,
            });
            at = align(at + t.bytes.len() as u64);
            plans.push(TensorPlan {
                name: t.name.to_string(),
                rows,
                cols,
                form,
                streams: vec![streams.len() - 1],
            });
        }
        let mut items = Vec::new();
        for (s, t) in tensors.iter().enumerate() {
            for (k, chunk) in t.bytes.chunks(FOLDER_CHUNK).enumerate() {
                items.push(Item {
                    stream: s,
                    offset: (k * FOLDER_CHUNK) as u64,
                    len: chunk.len(),
                    src: Source::Plain(chunk),
                });
            }
        }
        let read: u64 = tensors.iter().map(|t| t.bytes.len() as u64).sum();
        return finish(
            path,
            gpu,
            opts,
            (SourceKind::Folder, true),
            files,
            plans,
            streams,
            items,
            at,
            read,
            start,
            free_before,
        );
    }
    let packed = Packed::open(path)?;
    let files = ModelFiles::from_packed(&packed)?;
    let mut streams = Vec::new();
    let mut plans = Vec::new();
    let mut items = Vec::new();
    let mut at = 0u64;
    let mut read = 0u64;
    // An `int4s` tensor's super-block codes are expanded on the host to the per-group f16 scales
    // and minimums the kernels read (spec section 4.6); its codes stream in as they are.
    let expanded: HashMap<usize, [Vec<u8>; 2]> = (0..packed.len())
        .into_par_iter()
        .filter(|&i| matches!(packed.codec(i), Codec::Int4S { .. }))
        .map(|i| packed.int4_param_bytes(i).map(|(s, m)| (i, [s, m])))
        .collect::<Result<_, _>>()?;
    for i in 0..packed.len() {
        let t = packed.tensor(i);
        let c = &packed.shards()[packed.locate(i).0].container;
        let codec = packed.codec(i);
        let form = form_of(&t.name, t.dtype, codec)?;
        let (rows, cols) = cllm_format::tensor::rows_cols(&t.shape);
        let mut idx = Vec::new();
        let own_streams = if expanded.contains_key(&i) {
            1
        } else {
            t.streams.len()
        };
        for (s, spec) in t
            .streams
            .iter()
            .zip(packed.stream_specs(i))
            .take(own_streams)
        {
            let si = streams.len();
            streams.push(StreamPlan {
                tensor: t.name.clone(),
                role: s.role.clone(),
                len: s.len,
                at,
            });
            at = align(at + s.len);
            idx.push(si);
            let mut off = 0u64;
            for (fi, f) in s.frames.iter().enumerate() {
                items.push(Item {
                    stream: si,
                    offset: off,
                    len: f.decoded as usize,
                    src: Source::Frame {
                        stored: c.frame_bytes(f),
                        encoding: spec.encoding,
                        xxh3: f.xxh3,
                        index: fi,
                    },
                });
                off += f.decoded;
                read += f.stored;
            }
        }
        if let Some(params) = expanded.get(&i) {
            read += t.streams[1..]
                .iter()
                .flat_map(|s| &s.frames)
                .map(|f| f.stored)
                .sum::<u64>();
            for (role, bytes) in ["scales", "mins"].into_iter().zip(params) {
                let si = streams.len();
                streams.push(StreamPlan {
                    tensor: t.name.clone(),
                    role: role.into(),
                    len: bytes.len() as u64,
                    at,
                });
                at = align(at + bytes.len() as u64);
                idx.push(si);
                for (k, chunk) in bytes.chunks(FOLDER_CHUNK).enumerate() {
                    items.push(Item {
                        stream: si,
                        offset: (k * FOLDER_CHUNK) as u64,
                        len: chunk.len(),
                        src: Source::Plain(chunk),
                    });
                }
            }
        }
        plans.push(TensorPlan {
            name: t.name.clone(),
            rows,
            cols,
            form,
            streams: idx,
        });
    }
    finish(
        path,
        gpu,
        opts,
        (SourceKind::Container, packed.is_lossless()),
        files,
        plans,
        streams,
        items,
        at,
        read,
        start,
        free_before,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    path: &Path,
    gpu: &Arc<Gpu>,
    opts: &GpuLoadOptions,
    (kind, lossless): (SourceKind, bool),
    files: ModelFiles,
    plans: Vec<TensorPlan>,
    streams: Vec<StreamPlan>,
    items: Vec<Item<'_>>,
    arena_bytes: u64,
    read_bytes: u64,
    start: Instant,
    free_before: u64,
) -> Result<GpuModelWeights, GpuLoadError> {
    // Refuse before allocating anything if the weights cannot fit.
    gpu.check_free("the model's weights", arena_bytes)?;
    let arena = Arc::new(gpu.alloc("the model's weights", arena_bytes as usize)?);
    let base = arena.ptr();

    let slot_bytes = items.iter().map(|i| i.len).max().unwrap_or(0).max(1);
    let threads = rayon::current_num_threads().max(1);
    let nslots = if opts.ring_slots > 0 {
        opts.ring_slots
    } else {
        (2 * threads + 2).min((opts.ring_budget / slot_bytes).max(2))
    };
    // One pinned allocation, cut into slots.
    let mut pinned = PinnedBuffer::new(gpu, nslots * slot_bytes)?;
    let base_ptr = pinned.as_mut_slice().as_mut_ptr() as usize;
    let ptrs = (0..nslots)
        .map(|i| (base_ptr + i * slot_bytes, slot_bytes))
        .collect();
    let ring = Ring {
        pinned,
        ptrs,
        free: Mutex::new((0..nslots).collect()),
        cv: Condvar::new(),
    };
    let events: Vec<Event> = (0..nslots).map(|_| gpu.event()).collect::<Result<_, _>>()?;
    let copy_stream = gpu.new_stream()?;

    let abort = AtomicBool::new(false);
    let first_err: Mutex<Option<GpuLoadError>> = Mutex::new(None);
    let fail = |e: GpuLoadError| {
        abort.store(true, Ordering::Relaxed);
        let mut slot = first_err.lock().expect("error lock");
        if slot.is_none() {
            *slot = Some(e);
        }
    };
    let hashes: Vec<Mutex<StreamHash>> = (0..streams.len())
        .map(|_| Mutex::new(StreamHash::default()))
        .collect();
    let decoded = AtomicU64::new(0);
    let (tx, rx) = mpsc::channel::<(usize, u64, usize)>();

    std::thread::scope(|scope| {
        // The copy thread: issues copies in arrival order, recycles slots whose copy is done.
        let (ring, events, copy_stream) = (&ring, &events, &copy_stream);
        let copier = scope.spawn(move || -> Result<(), CudaError> {
            gpu.bind()?;
            let mut inflight: VecDeque<usize> = VecDeque::new();
            let mut open = true;
            while open || !inflight.is_empty() {
                let msg = if open {
                    if inflight.is_empty() {
                        rx.recv().ok()
                    } else {
                        match rx.recv_timeout(Duration::from_micros(200)) {
                            Ok(m) => Some(m),
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                // Nothing new: wait for the oldest copy to free its slot.
                                let s = inflight.pop_front().expect("non-empty");
                                events[s].wait()?;
                                ring.give(s);
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => None,
                        }
                    }
                } else {
                    None
                };
                match msg {
                    Some((slot, dst, len)) => {
                        // SAFETY: the slot is ours until recycled below, after its event.
                        let src = unsafe { ring.slot(slot, len) };
                        // SAFETY: `dst..dst+len` lies in the arena; `src` stays untouched until
                        // the event recorded next has completed.
                        unsafe { copy_stream.copy_htod(dst, src)? };
                        copy_stream.record(&events[slot])?;
                        inflight.push_back(slot);
                    }
                    None => {
                        open = false;
                        if let Some(s) = inflight.pop_front() {
                            events[s].wait()?;
                            ring.give(s);
                        }
                    }
                }
                while let Some(&s) = inflight.front() {
                    if events[s].done()? {
                        inflight.pop_front();
                        ring.give(s);
                    } else {
                        break;
                    }
                }
            }
            copy_stream.sync()
        });

        items.par_iter().for_each_with(tx, |tx, item| {
            if abort.load(Ordering::Relaxed) {
                return;
            }
            let Some(slot) = ring.take(&abort) else { return };
            // SAFETY: `take` gave us the slot exclusively.
            let buf = unsafe { ring.slot(slot, item.len) };
            let sp = &streams[item.stream];
            let res: Result<(), GpuLoadError> = match &item.src {
                Source::Plain(b) => {
                    buf.copy_from_slice(b);
                    Ok(())
                }
                Source::Frame {
                    stored,
                    encoding,
                    xxh3,
                    index,
                } => {
                    let sum = xxhash_rust::xxh3::xxh3_64(stored);
                    if sum != *xxh3 {
                        Err(GpuLoadError::Model {
                            path: path.to_path_buf(),
                            msg: format!(
                                "tensor {} stream {} frame {index}: checksum {sum:016x} != {xxh3:016x} (corrupted)",
                                sp.tensor, sp.role
                            ),
                        })
                    } else {
                        thread_local! {
                            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
                        }
                        SCRATCH.with(|s| {
                            cllm_format::encoding::decode_frame_into(*encoding, stored, buf, &mut s.borrow_mut())
                        })
                        .map_err(|e| GpuLoadError::Model {
                            path: path.to_path_buf(),
                            msg: format!("tensor {} stream {} frame {index}: {e}", sp.tensor, sp.role),
                        })
                    }
                }
            };
            if let Err(e) = res {
                ring.give(slot);
                fail(e);
                return;
            }
            if opts.hash {
                let mut h = StreamHash::default();
                h.add(item.offset, buf);
                hashes[item.stream].lock().expect("hash lock").merge(h);
            }
            decoded.fetch_add(item.len as u64, Ordering::Relaxed);
            let dst = base + sp.at + item.offset;
            if tx.send((slot, dst, item.len)).is_err() {
                ring.give(slot);
                fail(GpuLoadError::Residency("the copy thread stopped".into()));
            }
        });
        // `tx` clones are dropped with the iterator: the copier sees the end.
        match copier.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fail(e.into()),
            Err(_) => fail(GpuLoadError::Residency("the copy thread panicked".into())),
        }
    });
    abort.store(true, Ordering::Relaxed);
    if let Some(e) = first_err.into_inner().expect("error lock") {
        return Err(e);
    }
    let free_after = gpu.memory()?.0;
    let ring_bytes = ring.pinned.len() as u64;
    drop(ring);

    let mut resident = Vec::with_capacity(streams.len());
    for (s, h) in streams.iter().zip(hashes) {
        resident.push(ResidentStream {
            tensor: s.tensor.clone(),
            role: s.role.clone(),
            ptr: base + s.at,
            len: s.len,
            cpu_hash: opts
                .hash
                .then(|| h.into_inner().expect("hash lock").finish(s.len)),
        });
    }
    let mut weights = HashMap::with_capacity(plans.len());
    for p in plans {
        let ptr = |k: usize| p.streams.get(k).map_or(0, |&i| base + streams[i].at);
        let bytes = p.streams.iter().map(|&i| streams[i].len).sum();
        weights.insert(
            p.name.clone(),
            GpuWeight {
                rows: p.rows,
                cols: p.cols,
                form: p.form,
                data: ptr(0),
                scales: ptr(1),
                mins: ptr(2),
                bytes,
                owner: arena.clone(),
            },
        );
    }
    let stats = GpuLoadStats {
        seconds: start.elapsed().as_secs_f64(),
        decoded_bytes: decoded.into_inner(),
        read_bytes,
        vram_bytes: arena_bytes,
        vram_used_bytes: free_before.saturating_sub(free_after),
        ring_bytes,
        ring_slots: nslots,
        work_items: items.len(),
    };
    Ok(GpuModelWeights {
        kind,
        lossless,
        path: path.to_path_buf(),
        files,
        weights,
        streams: resident,
        stats,
        arena,
    })
}

impl GpuModelWeights {
    /// Hashes every resident stream on the GPU and compares with the hash of the decoded bytes
    /// computed while loading (load with [`GpuLoadOptions::hash`]). Fails naming every tensor
    /// (and stream) whose resident bytes differ.
    pub fn check_resident(&self, kernels: &Kernels) -> Result<ResidencyReport, GpuLoadError> {
        let t = Instant::now();
        let scratch = kernels.gpu().alloc("hash scratch", 8)?;
        let mut bad = Vec::new();
        let mut bytes = 0;
        for s in &self.streams {
            let want = s.cpu_hash.ok_or_else(|| {
                GpuLoadError::Residency("the model was loaded without residency hashes".into())
            })?;
            let got = kernels.hash_device(s.ptr, s.len, scratch.ptr())?;
            bytes += s.len;
            if got != want {
                bad.push(format!(
                    "tensor {} stream {} (GPU {got:016x}, decoded {want:016x})",
                    s.tensor, s.role
                ));
            }
        }
        if !bad.is_empty() {
            return Err(GpuLoadError::Residency(format!(
                "{} of {} streams differ from the decoded bytes: {}",
                bad.len(),
                self.streams.len(),
                bad.join("; ")
            )));
        }
        Ok(ResidencyReport {
            streams: self.streams.len(),
            bytes,
            seconds: t.elapsed().as_secs_f64(),
        })
    }
}

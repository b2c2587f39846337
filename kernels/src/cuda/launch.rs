//! The kernels' parameter structs (kept in step with their definitions in `kernels/cuda/*.cu`:
//! the same fields in the same order, `#[repr(C)]`) and their launches.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use super::device::{CudaError, Gpu};
use super::weight::{
    GpuWeight, GpuWeightKind, KIND_BF16, KIND_F16, KIND_F32, KIND_INT4, KIND_INT8, KIND_INT8G,
};

/// Norm partial sums per token (`PSTRIDE` in common.cuh).
pub const PSTRIDE: usize = 4096;
/// Warps per GEMV block (`WARPS`); a unit (two weight rows) takes `ksplit` of them.
pub const GEMV_WARPS: usize = 4;
const GEMV_THREADS: u32 = 128;
/// Key positions per attention chunk (`ATT_CHUNK`).
pub const ATT_CHUNK: usize = 128;
/// Largest head dimension of the attention kernel (`ATT_MAX_HD`).
pub const ATT_MAX_HD: usize = 256;
const ATT_THREADS: u32 = 128;

/// `struct WDesc` of common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WDesc {
    pub data: u64,
    pub scales: u64,
    pub mins: u64,
    pub bias: u64,
    pub kind: i32,
    pub rows: i32,
    pub cols: i32,
    pub group: i32,
}

/// What a GEMV launch computes after the products (see gemv.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvMode {
    Qkv = 0,
    Resid = 1,
    GateUp = 2,
    Logits = 3,
}

/// `struct GemvArgs` of gemv.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GemvArgs {
    pub w: [WDesc; 3],
    pub x: u64,
    pub partial: u64,
    pub norm_next: u64,
    pub rope_cos: u64,
    pub rope_sin: u64,
    pub pos: u64,
    pub out: u64,
    pub xw_out: u64,
    pub partial_out: u64,
    pub kcache: u64,
    pub vcache: u64,
    pub argmax: u64,
    pub pos_inc: u64,
    /// Batches of int8 weights on the tensor cores ([`Gpu::gemv_mma`]): room for x's pieces,
    /// [`Gpu::mma_pieces_bytes`] from here, and each token's shift (`i32`) at `xq_shift`.
    pub xq: u64,
    pub xq_shift: u64,
    pub mode: i32,
    pub ntok: i32,
    pub x_stride: i32,
    pub out_stride: i32,
    pub nparts: i32,
    pub norm_dim: i32,
    pub eps: f32,
    pub units: i32,
    pub u1: i32,
    pub u2: i32,
    pub head_dim: i32,
    pub capacity: i32,
    pub ksplit: i32,
    /// One token: how the weights stream (`pipe` in gemv.cu: 1 batches of 8 vectors per row,
    /// 2 / 3 pipelined batches of 4 / 2); 0 lets the launcher choose ([`gemv_pipe`]).
    pub pipe: i32,
}

/// `struct AttnArgs` of attention.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnArgs {
    pub q: u64,
    pub kcache: u64,
    pub vcache: u64,
    pub out: u64,
    pub part_o: u64,
    pub part_ml: u64,
    pub counters: u64,
    pub pos: u64,
    pub ntok: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub head_dim: i32,
    pub capacity: i32,
    pub window: i32,
    pub cmax: i32,
    pub scale: f32,
    /// 2: the chunk's keys and values stream into the L2 before the launch wait; 1: not; 0 lets
    /// the launcher choose ([`attention_prefetch`]).
    pub prefetch: i32,
    pub pad_: i32,
}

/// `struct EmbedArgs` of misc.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EmbedArgs {
    pub w: WDesc,
    pub tokens: u64,
    pub argmax_in: u64,
    pub argmax_reset: u64,
    pub norm_w: u64,
    pub h: u64,
    pub xw: u64,
    pub partial: u64,
    pub err: u64,
    pub ntok: i32,
    pub nreset: i32,
    pub hidden: i32,
    pub vocab: i32,
}

// The .cu structs have these sizes (checked by `layouts_match_the_cuda_structs`).
const _: () = assert!(std::mem::size_of::<WDesc>() == 48);
const _: () = assert!(std::mem::size_of::<GemvArgs>() == 320);
const _: () = assert!(std::mem::size_of::<AttnArgs>() == 104);
const _: () = assert!(std::mem::size_of::<EmbedArgs>() == 128);

/// Tokens per GEMV block for a batch of `ntok`: 8 for prefill, 1 for decode. Any choice gives
/// each token the same bits.
pub fn tokens_per_block(ntok: usize) -> usize {
    match ntok {
        0 | 1 => 1,
        2 | 3 => 2,
        4..=7 => 4,
        _ => 8,
    }
}

/// Warps per unit for a weight: enough that each warp streams at least 256 16-byte vectors of a
/// row (int4: 2048 columns, 64 vectors), at most [`GEMV_WARPS`]; and, for the int8 forms, more
/// while a one-token launch over the weight's rows would have fewer than [`FILL_BLOCKS`] blocks
/// and each warp keeps at least 2048 columns. A function of the weight's shape and form only, so
/// prefill and decode reduce every row in the same order. Measured on an H100 (decode tokens/s
/// against the vector bound): int4 +14 % on the TinyLlama shape, -2 % on 7B. For int8 the same
/// column bound gave +10 % and -11 %: its gain on TinyLlama was all in the down projection (2048
/// rows in 256 blocks of one warp per unit, half a wave), and on 7B it split launches that
/// already filled the GPU, hence the block count. With 1024 columns per warp as the floor,
/// TinyLlama's q and o projections split too, and int8g decode gained 7 % instead of 10 %.
/// `CLLM_KSPLIT_FILL=0` leaves the block count out, for measuring.
pub fn ksplit_for(w: &GpuWeight) -> i32 {
    static FORCED: OnceLock<Option<i32>> = OnceLock::new();
    let epv = w.kind.elements_per_vector();
    let min_cols = if epv == 32 { 2048 } else { 256 * epv };
    let mut k = 1;
    while k < GEMV_WARPS && w.cols / (2 * k) >= min_cols {
        k *= 2;
    }
    let int8 = matches!(
        w.kind,
        GpuWeightKind::Int8 | GpuWeightKind::Int8Group { .. }
    );
    if int8 && forced(&FORCED, "CLLM_KSPLIT_FILL", 0..=1) != Some(0) {
        while k < GEMV_WARPS
            && Gpu::gemv_blocks(w.rows.div_ceil(2), k as i32) < FILL_BLOCKS
            && w.cols / (2 * k) >= 2048
        {
            k *= 2;
        }
    }
    k as i32
}

/// Blocks a one-token int8 launch should have (about 4 per multiprocessor of an H100, which
/// holds 4 at a time): a constant, not the device's count, so the order stays the weight's.
pub const FILL_BLOCKS: usize = 512;

/// How a one-token GEMV streams its weights (`pipe` in gemv.cu) when its arguments leave it 0:
/// `CLLM_GEMV_PIPE=1|2|3` for every launch, else by the first weight's form. int8g and int4 hold
/// group scales next to their codes; with their products of one batch overlapping the next
/// batch's transfer (2 vectors per row and batch) decode measured faster on an H100 than with
/// batches of 8, whose scales spilled: int8g 1010 against 733 tokens/s on TinyLlama, 265 against
/// 168 on 7B; int4 1018 / 916 and 198 / 178. Per-row int8, with no scales to hold, and the float
/// forms keep batches of 8 (per-row int8 1034 against 1001 on TinyLlama, 268 / 267 on 7B; bf16
/// had been 7 % slower on 7B with batches of 2). Every choice gives the same bits.
pub fn gemv_pipe(first: &WDesc) -> i32 {
    static FORCED: OnceLock<Option<i32>> = OnceLock::new();
    match (forced(&FORCED, "CLLM_GEMV_PIPE", 1..=3), first.kind) {
        (Some(p), _) => p,
        (None, KIND_INT8G | KIND_INT4) => 3,
        (None, _) => 1,
    }
}

/// How many of `args.w` a GEMV launch reads: three for the q, k, v projections, two for
/// gate/up, else one.
fn gemv_weights(args: &GemvArgs) -> usize {
    match args.mode {
        m if m == GemvMode::Qkv as i32 => 3,
        m if m == GemvMode::GateUp as i32 => 2,
        _ => 1,
    }
}

/// The kind every weight of a GEMV launch has, if they share one and it is among
/// [`GEMV_KIND_OWN`] (`CLLM_GEMV_KIND=MASK`, bit k for kind k, narrows it for measuring): a
/// one-token launch that does not stream ([`gemv_stream`]) then takes the kernel compiled for
/// that kind alone (same bits). The kernel for any mix holds every kind's unrolled loops
/// (55 000 instructions), and its register allocation spills in every path.
fn gemv_kind(args: &GemvArgs) -> Option<usize> {
    static FORCED: OnceLock<Option<i32>> = OnceLock::new();
    let own = GEMV_KIND_OWN & forced(&FORCED, "CLLM_GEMV_KIND", 0..=63).unwrap_or(GEMV_KIND_OWN);
    shared_kind(args, |_| true, own)
}

/// The kind of a launch's weights where all of them have it, every weight passes `also`, and
/// the kind's bit is set in `kinds` (bit k for kind k).
fn shared_kind(args: &GemvArgs, also: impl Fn(&WDesc) -> bool, kinds: i32) -> Option<usize> {
    let ws = &args.w[..gemv_weights(args)];
    let k = ws[0].kind;
    let shared = ws.iter().all(|w| w.kind == k && also(w)) && (KIND_F32..=KIND_INT8G).contains(&k);
    (shared && kinds & (1 << k) != 0).then_some(k as usize)
}

/// The kinds with a one-token kernel of their own (`gemv_t1_k{kind}`, bit k for kind k): all
/// but int8g. Measured on an H100 (decode tokens/s, paired, own kernel against the one for any
/// mix): TinyLlama shape bf16 842 -> 858, per-row int8 1104 -> 1157, int4 1022 -> 1022; 7B shape
/// bf16 182.5 -> 183.8, per-row int8 266.3 -> 275.9, int4 196.8 -> 212.9. Its register
/// allocation no longer spills for the float forms and per-row int8, and in bf16's gate/up
/// launch Nsight Compute's "no instruction" stall (instruction fetch) fell from 7.5 to 2.2
/// cycles per issued instruction. int8g was slower alone (TinyLlama 1104 against 1133, 7B 262.1
/// against 264.6): its own kernel still spills.
pub const GEMV_KIND_OWN: i32 =
    (1 << KIND_F32) | (1 << KIND_BF16) | (1 << KIND_F16) | (1 << KIND_INT8) | (1 << KIND_INT4);

/// Resident GEMV blocks per multiprocessor (`__launch_bounds__(GEMV_THREADS, 4)` in gemv.cu).
const GEMV_BLOCKS_PER_SM: usize = 4;

/// The kinds whose one-token launches stream (`gemv_s1_k{kind}`, bit k for kind k): all with a
/// kernel of their own (per-row int8 only where the tensor cores do not take it,
/// [`Gpu::gemv_mma`]). int8g does not: streaming, with its group scales, it measured 969-987
/// against 1116-1120 tokens/s on the TinyLlama shape and 234 against 263 on 7B (H100).
const GEMV_STREAM_KINDS: i32 = GEMV_KIND_OWN;

/// Virtual blocks a streaming block of a residual launch may run (`STREAM_MAXV` in gemv.cu).
const STREAM_MAXV: usize = 16;

/// The kind of a one-token launch that streams, if it does (gemv.cu `gemv_stream`): its weights
/// share a kind among [`GEMV_STREAM_KINDS`], their width and their group. The grid is then at
/// most one wave (4 blocks per multiprocessor), and each block runs the launch's virtual blocks
/// (what a block of `gemv_t1` does) blockIdx.x, blockIdx.x + grid, ...; each warp streams its
/// units' weights as one sequence with the next batch in flight across unit boundaries, so it
/// pays the first memory round trip and its fixed work once per launch. Same bits as `gemv_t1`.
/// Measured on an H100, paired (decode tokens/s, streaming off -> on): TinyLlama shape bf16
/// 861 -> 950 (+10 %), per-row int8 1154 -> 1199 (+4 %), int4 1013 -> 1032; 7B shape bf16
/// 184.1 -> 194.7 (+6 %, 84 % of the read bandwidth), per-row int8 275.4 -> 285.0, int4
/// 213.4 -> 229.5 (+8 %). `CLLM_GEMV_STREAM=MASK` (bit k for kind k; 0: none) overrides, for
/// measuring.
fn gemv_stream(args: &GemvArgs) -> Option<usize> {
    static FORCED: OnceLock<Option<i32>> = OnceLock::new();
    let on = forced(&FORCED, "CLLM_GEMV_STREAM", 0..=31).unwrap_or(GEMV_STREAM_KINDS);
    let w0 = &args.w[0];
    shared_kind(args, |w| w.cols == w0.cols && w.group == w0.group, on)
}

/// Whether attention asks the L2 for its keys and values before its launch wait (2) or not (1)
/// when its arguments leave it 0: `CLLM_ATT_PREFETCH=1|2`, else 2. Same bits either way.
pub fn attention_prefetch() -> i32 {
    static FORCED: OnceLock<Option<i32>> = OnceLock::new();
    forced(&FORCED, "CLLM_ATT_PREFETCH", 1..=2).unwrap_or(2)
}

/// A launch setting forced for the whole process by environment variable `name` (read once),
/// for measuring one setting against another in the same run.
fn forced(
    cell: &OnceLock<Option<i32>>,
    name: &str,
    allowed: std::ops::RangeInclusive<i32>,
) -> Option<i32> {
    *cell.get_or_init(|| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|p| allowed.contains(p))
    })
}

/// The widest int8 row the tensor-core GEMV takes (gemv_mma.cu: each column adds at most 2^14
/// to a piece's 32-bit sum).
const MMA_MAX_COLS: i32 = 65536;
/// Units (two rows each) per tensor-core tile (gemv_mma.cu).
const MMA_TILE_UNITS: usize = 8;
/// Warps per tensor-core block (`MMA_WARPS`) and resident blocks per multiprocessor.
const MMA_WARPS: usize = 8;
const MMA_BLOCKS_PER_SM: usize = 2;

/// How a tensor-core launch spreads its work (gemv_mma.cu): `ksplit` warps of a block per
/// tile (each a part of its steps), over `blocks` blocks per group of tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MmaSplit {
    ksplit: usize,
    blocks: usize,
}

/// The split of `tiles` tiles of `steps` 64-column steps, `nt` tokens per block, on a device of
/// `wave` resident blocks. Warps per tile: the most (up to [`MMA_WARPS`], at most one per step)
/// that keep the launch within one wave. Where that is one (more tiles than four per block of
/// the wave), a one-token launch takes a whole wave (or more blocks, at most one tile per warp),
/// whose warps take the tiles strided so that every multiprocessor gets about as many; batches
/// keep a block per [`MMA_WARPS`] tiles. `forced` (a measuring knob) sets the warps per
/// tile. Per-row int8 has the same bits with any split (integer sums); int8g's depend on
/// `ksplit` (its warps' float accumulators are added in order), which is why `ksplit` is a
/// function of the weight's shape and the device alone, never of `nt`: a batch and a token
/// split alike, so prefill and decode agree bit for bit.
fn mma_split(
    tiles: usize,
    steps: usize,
    nt: usize,
    wave: usize,
    forced: Option<usize>,
) -> MmaSplit {
    let ksplit = forced.unwrap_or_else(|| {
        [8usize, 4, 2]
            .into_iter()
            .find(|&k| k <= steps && (tiles * k).div_ceil(MMA_WARPS) <= wave)
            .unwrap_or(1)
    });
    let blocks = if ksplit == 1 && nt == 1 {
        wave.min(tiles).max(tiles.div_ceil(MMA_WARPS)).max(1)
    } else {
        (tiles * ksplit).div_ceil(MMA_WARPS).max(1)
    };
    MmaSplit { ksplit, blocks }
}

/// [`Gpu::gemv_mma`]'s test of the weights, with `smem` bytes of shared memory for x's pieces:
/// the kind (per-row int8, or int8g whose groups are whole 64-column steps) if it takes them.
fn mma_kind(args: &GemvArgs, smem: u32) -> Option<usize> {
    let (cols, group) = (args.w[0].cols, args.w[0].group);
    let kind = shared_kind(
        args,
        |w| w.cols == cols && w.group == group,
        (1 << KIND_INT8) | (1 << KIND_INT8G),
    )?;
    // int8g: a group is 2^k whole 64-column steps (gemv_mma.cu takes a step's group by a shift).
    let whole_steps = kind == KIND_INT8 as usize
        || (group >= 64 && group % 64 == 0 && (group as u32 / 64).is_power_of_two());
    (whole_steps
        && cols > 0
        && cols % 64 == 0
        && cols <= MMA_MAX_COLS
        && cols as u64 * 4 <= smem as u64)
        .then_some(kind)
}

/// Tiles of a tensor-core launch: also its norm partials per token.
fn mma_tiles(args: &GemvArgs) -> usize {
    (args.units.max(0) as usize).div_ceil(MMA_TILE_UNITS)
}

impl Gpu {
    /// Whether a GEMV launch runs on the integer tensor cores (gemv_mma.cu): every weight is
    /// per-row int8, or every one int8g with one group size that is a multiple of 64 columns,
    /// of one width, a multiple of 64 columns, at most [`MMA_MAX_COLS`], whose pieces (4 bytes a
    /// column) fit a block's shared memory. A function of the weights and the device, so a
    /// launch's prefill and decode take the same path: its arithmetic (an exact integer dot
    /// product with a fixed-point x; int8g: exact per step, scaled and added in floats) has
    /// bits of its own. Measured on an H100 in a kernel alone: a 11008 x 4096 per-row int8
    /// matrix streamed at the speed of a plain read of its bytes. `CLLM_GEMV_MMA=0` turns it
    /// off, `1` leaves int8g off it, for measuring.
    pub fn gemv_mma(&self, args: &GemvArgs) -> bool {
        self.gemv_mma_kind(args).is_some()
    }

    /// [`Gpu::gemv_mma`]'s kind.
    fn gemv_mma_kind(&self, args: &GemvArgs) -> Option<usize> {
        static FORCED: OnceLock<Option<i32>> = OnceLock::new();
        let on = forced(&FORCED, "CLLM_GEMV_MMA", 0..=2).unwrap_or(2);
        mma_kind(args, self.gemv_mma_smem)
            .filter(|&k| on == 2 || (on == 1 && k == KIND_INT8 as usize))
    }

    /// The warps per tile of a tensor-core launch ([`Gpu::gemv_mma`]) over these weights, for
    /// any number of tokens: int8g's bits depend on it (gemv_mma.cu).
    pub fn gemv_mma_ksplit(&self, args: &GemvArgs) -> usize {
        self.gemv_mma_split(args, 1).ksplit
    }

    fn gemv_mma_split(&self, args: &GemvArgs, nt: usize) -> MmaSplit {
        static FORCED: OnceLock<Option<i32>> = OnceLock::new();
        let steps = (args.w[0].cols / 64).max(1) as usize;
        let forced = forced(&FORCED, "CLLM_MMA_KSPLIT", 1..=MMA_WARPS as i32)
            .map(|k| k as usize)
            .filter(|&k| k.is_power_of_two() && k <= steps);
        let wave = self.wave(MMA_BLOCKS_PER_SM);
        mma_split(mma_tiles(args), steps, nt, wave, forced)
    }

    /// The norm partials per token a residual launch writes: the next launch's `nparts`.
    pub fn gemv_norm_parts(&self, args: &GemvArgs) -> usize {
        if self.gemv_mma(args) {
            mma_tiles(args)
        } else {
            Gpu::gemv_blocks(args.units.max(0) as usize, args.ksplit)
        }
    }

    /// Bytes of [`GemvArgs::xq`] a batch of `ntok` tokens over `cols` columns needs (and
    /// `4 * ntok` at `xq_shift`).
    pub fn mma_pieces_bytes(ntok: usize, cols: usize) -> usize {
        ntok * cols * 4
    }

    /// Blocks resident at once with `per_sm` per multiprocessor: one wave.
    fn wave(&self, per_sm: usize) -> usize {
        per_sm * self.info().multiprocessors.max(1) as usize
    }

    /// A launch on the integer tensor cores ([`Gpu::gemv_mma`], weights of `kind`); a batch's x
    /// goes through the `x_pieces` pre-pass first.
    fn gemv_mma_launch(&self, args: &GemvArgs, kind: usize) -> Result<(), CudaError> {
        let ntok = args.ntok.max(0) as usize;
        let nt = tokens_per_block(ntok);
        let tiles = mma_tiles(args);
        if tiles > PSTRIDE && args.mode == super::GemvMode::Resid as i32 {
            return Err(CudaError::Unsupported(format!(
                "gemv: {tiles} tiles exceed {PSTRIDE} norm partials"
            )));
        }
        let split = self.gemv_mma_split(args, nt);
        let mut a = *args;
        a.ksplit = split.ksplit as i32;
        if nt > 1 {
            if a.xq == 0 || a.xq_shift == 0 {
                return Err(CudaError::Kernel(
                    "gemv: a batch over int8 weights needs room for x's pieces (xq)".into(),
                ));
            }
            let threads = 32 * MMA_WARPS as u32;
            self.launch(
                self.f.x_pieces,
                (ntok as u32, 1, 1),
                threads,
                &a,
                "x_pieces",
            )?;
        }
        let grid = (split.blocks as u32, ntok.div_ceil(nt) as u32, 1);
        let smem = if nt == 1 { a.w[0].cols as u32 * 4 } else { 0 };
        let fs = if kind == KIND_INT8G as usize {
            &self.f.gemv_mma_g
        } else {
            &self.f.gemv_mma
        };
        let f = fs[nt.trailing_zeros() as usize];
        self.launch_smem(f, grid, 32 * MMA_WARPS as u32, smem, &a, "gemv_mma")
    }

    /// One GEMV launch: `args.units` units of two rows, `args.ntok` tokens. A zero `ksplit`
    /// is taken from the first weight.
    pub fn gemv(&self, args: &GemvArgs) -> Result<(), CudaError> {
        if let Some(kind) = self.gemv_mma_kind(args) {
            return self.gemv_mma_launch(args, kind);
        }
        let ntok = args.ntok.max(0) as usize;
        let nt = tokens_per_block(ntok);
        let kind = gemv_kind(args).filter(|_| nt == 1);
        let ks = args.ksplit;
        if !matches!(ks, 1 | 2 | 4) {
            return Err(CudaError::Kernel(format!("gemv: ksplit {ks} (1, 2 or 4)")));
        }
        let resid = args.mode == super::GemvMode::Resid as i32;
        let blocks = Gpu::gemv_blocks(args.units.max(0) as usize, ks);
        if blocks > PSTRIDE && resid {
            return Err(CudaError::Unsupported(format!(
                "gemv: {blocks} blocks exceed {PSTRIDE} norm partials"
            )));
        }
        let mut args = *args;
        if args.pipe == 0 {
            args.pipe = gemv_pipe(&args.w[0]);
        }
        let stream = gemv_stream(&args).filter(|_| nt == 1);
        let one_wave = blocks <= self.wave(GEMV_BLOCKS_PER_SM);
        let (f, grid_x, smem) = match (kind, stream) {
            (_, Some(k)) => {
                // One wave of blocks, however many of them the x copy leaves resident: a block
                // beyond the wave would start its whole share of units only when one ended.
                let f = self.f.gemv1_stream[k];
                let smem = self.gemv_x_bytes(&args, true);
                self.bind()?;
                // SAFETY: `f` is a function of the loaded module; the query has no side effects.
                let per_sm = unsafe {
                    cudarc::driver::result::occupancy::max_active_block_per_multiprocessor(
                        f,
                        GEMV_THREADS as i32,
                        smem as usize,
                    )
                }
                .unwrap_or(1)
                .clamp(1, GEMV_BLOCKS_PER_SM as i32) as usize;
                let wave = self.wave(per_sm);
                let cap = self.gemv_stream_blocks.load(Ordering::Relaxed);
                let mut g = blocks.min(if cap > 0 { cap } else { wave });
                if resid {
                    g = g.max(blocks.div_ceil(STREAM_MAXV));
                }
                (f, g.max(1), smem)
            }
            (Some(k), None) => (
                self.f.gemv1_kind[k],
                blocks,
                self.gemv_x_bytes(&args, one_wave),
            ),
            (None, None) if nt == 1 => (self.f.gemv[0], blocks, self.gemv_x_bytes(&args, one_wave)),
            (None, None) => (self.f.gemv[nt.trailing_zeros() as usize], blocks, 0),
        };
        let grid = (grid_x as u32, ntok.div_ceil(nt) as u32, 1);
        self.launch_smem(f, grid, GEMV_THREADS, smem, &args, "gemv")
    }

    /// Dynamic shared memory for a one-token GEMV's copy of x (gemv.cu): the row's bytes where
    /// float weights read it and the launch's blocks fit in `one_wave` (4 per multiprocessor; a
    /// streaming launch's always do), else 0 (x read from global memory). Measured on an H100: in the one-wave products the
    /// shared copy made TinyLlama bf16 decode 4 % faster (their x loads had waited a round trip
    /// per batch of vectors); in the 7B shape's launches of several waves it made bf16 8 %
    /// slower (every block paid the copy's round trip, where x had come from the L1).
    /// `CLLM_GEMV_XSMEM=0|1|2` (never, one wave, always) overrides, for measuring.
    fn gemv_x_bytes(&self, args: &GemvArgs, one_wave: bool) -> u32 {
        static FORCED: OnceLock<Option<i32>> = OnceLock::new();
        let float_weights = args.w[..gemv_weights(args)]
            .iter()
            .any(|w| matches!(w.kind, KIND_F32 | KIND_BF16 | KIND_F16));
        let x_bytes = args.w[0].cols.max(0) as u64 * 4;
        let wanted = match forced(&FORCED, "CLLM_GEMV_XSMEM", 0..=2) {
            Some(0) => false,
            Some(2) => true,
            _ => one_wave,
        };
        if float_weights && wanted && x_bytes <= self.gemv_x_smem as u64 {
            x_bytes as u32
        } else {
            0
        }
    }

    /// Blocks of a GEMV launch with `units` units and `ksplit` warps per unit (the residual
    /// modes' count of norm partials).
    pub fn gemv_blocks(units: usize, ksplit: i32) -> usize {
        units.div_ceil(GEMV_WARPS / ksplit.max(1) as usize)
    }

    /// Attention over `chunks` chunk slots per (head, token).
    pub fn attention(&self, args: &AttnArgs, chunks: usize) -> Result<(), CudaError> {
        if args.head_dim as usize > ATT_MAX_HD || args.head_dim % 4 != 0 {
            return Err(CudaError::Unsupported(format!(
                "head_dim {} (the GPU attention takes multiples of 4 up to {ATT_MAX_HD})",
                args.head_dim
            )));
        }
        let grid = (chunks as u32, args.heads as u32, args.ntok as u32);
        let mut args = *args;
        if args.prefetch == 0 {
            args.prefetch = attention_prefetch();
        }
        self.launch(self.f.attention, grid, ATT_THREADS, &args, "attention")
    }

    /// Embedding rows for `args.ntok` tokens.
    pub fn embed(&self, args: &EmbedArgs) -> Result<(), CudaError> {
        self.launch(self.f.embed, (args.ntok as u32, 1, 1), 256, args, "embed")
    }

    /// The residency hash ([`super::hash`]) of `len` bytes at device address `ptr`.
    pub fn hash_device(
        self: &Arc<Self>,
        ptr: u64,
        len: u64,
        scratch: u64,
    ) -> Result<u64, CudaError> {
        self.fill_u32(scratch, 0, 2)?;
        #[repr(C)]
        struct HashArgs {
            p: u64,
            n: u64,
            out: u64,
        }
        let args = HashArgs {
            p: ptr,
            n: len,
            out: scratch,
        };
        let words = len.div_ceil(8);
        let blocks = words.div_ceil(256).clamp(1, 4096) as u32;
        self.launch_fields(
            self.f.hash_words,
            (blocks, 1, 1),
            256,
            &args,
            3,
            "hash_words",
        )?;
        let mut sum = [0u64];
        self.dtoh(&mut sum, scratch)?;
        Ok(super::hash::finish(sum[0], len))
    }

    /// Read bandwidth of device memory in bytes per second: the median of `reps` passes of a
    /// read-only kernel over `bytes` (several times the L2 cache).
    pub fn read_bandwidth(self: &Arc<Self>, bytes: usize, reps: usize) -> Result<f64, CudaError> {
        let bytes = bytes / 16 * 16;
        let buf = self.alloc("bandwidth probe", bytes)?;
        self.fill_u32(buf.ptr(), 0x3c00_3c01, bytes / 4)?;
        let sink = self.alloc("bandwidth sink", 4)?;
        self.fill_u32(sink.ptr(), 0, 1)?;
        #[repr(C)]
        struct BwArgs {
            p: u64,
            n: u64,
            sink: u64,
        }
        let args = BwArgs {
            p: buf.ptr(),
            n: (bytes / 16) as u64,
            sink: sink.ptr(),
        };
        let blocks = (self.info().multiprocessors.max(1) as u32) * 8;
        let (start, end) = (self.event()?, self.event()?);
        let mut times = Vec::new();
        for i in 0..reps + 2 {
            self.record(&start)?;
            self.launch_fields(self.f.read_bw, (blocks, 1, 1), 256, &args, 3, "read_bw")?;
            self.record(&end)?;
            end.wait()?;
            if i >= 2 {
                times.push(start.elapsed_ms(&end)? as f64 / 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        Ok(bytes as f64 / median)
    }

    /// Launches a kernel whose parameters are `nfields` consecutive 8-byte fields of `args`.
    fn launch_fields<A>(
        &self,
        f: cudarc::driver::sys::CUfunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &A,
        nfields: usize,
        what: &str,
    ) -> Result<(), CudaError> {
        use cudarc::driver::result;
        use std::ffi::c_void;
        debug_assert_eq!(std::mem::size_of::<A>(), nfields * 8);
        self.bind()?;
        let base = args as *const A as *const u64;
        // SAFETY: `A` is `nfields` u64 fields; each kernel parameter is one of them.
        let mut params: Vec<*mut c_void> = (0..nfields)
            .map(|i| unsafe { base.add(i) } as *mut c_void)
            .collect();
        // SAFETY: parameters match the kernel's (pointer, u64, pointer) signatures.
        unsafe { result::launch_kernel(f, grid, (block, 1, 1), 0, self.stream.0, &mut params) }
            .map_err(|source| CudaError::Driver {
                what: format!("launching {what}"),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_core_launches_split_tiles_within_a_wave_or_stride_them_over_one() {
        let split = |tiles, steps, nt, forced| mma_split(tiles, steps, nt, 264, forced);
        let s = |ksplit, blocks| MmaSplit { ksplit, blocks };
        // The 7B shape on 132 multiprocessors: down and o_proj (256 tiles), q/k/v (768).
        assert_eq!(split(256, 172, 1, None), s(8, 256));
        assert_eq!(split(768, 64, 1, None), s(2, 192));
        // gate/up (1376 tiles): one token takes the whole wave; batches a block per 8 tiles.
        assert_eq!(split(1376, 64, 1, None), s(1, 264));
        assert_eq!(split(1376, 64, 8, None), s(1, 172));
        // No more warps per tile than steps; a single tile takes one block.
        assert_eq!(split(19, 9, 1, None), s(8, 19));
        assert_eq!(split(3, 2, 1, None), s(2, 1));
        assert_eq!(split(1, 1, 1, None), s(1, 1));
        // Forced to one warp per tile: a wave, or a block per tile where there are fewer.
        assert_eq!(split(256, 172, 1, Some(1)), s(1, 256));
        assert_eq!(split(256, 172, 4, Some(1)), s(1, 32));
        // More tiles than the wave's warps: a warp each.
        assert_eq!(split(2125, 1, 1, None), s(1, 266));
    }

    #[test]
    fn layouts_match_the_cuda_structs() {
        // Offsets of a few fields, as the C compiler lays them out (8-byte pointers first).
        let a = GemvArgs::default();
        let base = &a as *const _ as usize;
        assert_eq!(&a.x as *const _ as usize - base, 144);
        assert_eq!(&a.xq as *const _ as usize - base, 248);
        assert_eq!(&a.mode as *const _ as usize - base, 264);
        assert_eq!(&a.ksplit as *const _ as usize - base, 312);
        let t = AttnArgs::default();
        let base = &t as *const _ as usize;
        assert_eq!(&t.scale as *const _ as usize - base, 92);
        assert_eq!(&t.prefetch as *const _ as usize - base, 96);
        let e = EmbedArgs::default();
        let base = &e as *const _ as usize;
        assert_eq!(&e.tokens as *const _ as usize - base, 48);
        assert_eq!(&e.vocab as *const _ as usize - base, 124);
        assert_eq!(tokens_per_block(1), 1);
        assert_eq!(tokens_per_block(5), 4);
        assert_eq!(tokens_per_block(100), 8);
    }

    #[test]
    fn one_kind_launches_take_their_own_kernel_where_gemv_cu_has_one() {
        let src = super::super::compile::program_source();
        for k in KIND_F32..=KIND_INT8G {
            let entry = format!("GEMV_ENTRY(gemv_t1_k{k}, 1, ");
            assert_eq!(
                src.contains(&entry),
                GEMV_KIND_OWN & (1 << k) != 0,
                "kind {k}"
            );
        }
        let desc = |kind| WDesc {
            kind,
            ..WDesc::default()
        };
        let mut a = GemvArgs {
            mode: GemvMode::Qkv as i32,
            w: [desc(KIND_BF16); 3],
            ..GemvArgs::default()
        };
        assert_eq!(gemv_kind(&a), Some(KIND_BF16 as usize));
        a.w[2] = desc(KIND_INT8);
        assert_eq!(gemv_kind(&a), None, "a mix takes the kernel for any mix");
        a.mode = GemvMode::GateUp as i32;
        assert_eq!(
            gemv_kind(&a),
            Some(KIND_BF16 as usize),
            "gate/up reads two weights"
        );
        a.w = [desc(KIND_INT8G); 3];
        assert_eq!(gemv_kind(&a), None);
        a.w = [desc(KIND_INT4); 3];
        assert_eq!(gemv_kind(&a), Some(KIND_INT4 as usize));
    }

    #[test]
    fn int8_launches_of_one_width_and_whole_steps_take_the_tensor_cores() {
        let src = super::super::compile::program_source();
        for nt in [1, 2, 4, 8] {
            for (name, g) in [("m", false), ("g", true)] {
                let entry = format!("GEMV_MMA_ENTRY(gemv_{name}{nt}, {nt}, {g})");
                assert!(src.contains(&entry), "{entry}");
            }
        }
        assert!(src.contains("x_pieces(GemvArgs a)"));
        let desc = |kind, cols| WDesc {
            kind,
            cols,
            group: if kind == KIND_INT8G { 64 } else { 0 },
            ..WDesc::default()
        };
        let mma_takes = |a: &GemvArgs, smem| mma_kind(a, smem).is_some();
        let smem = 200 << 10;
        let mut a = GemvArgs {
            mode: GemvMode::Qkv as i32,
            w: [desc(KIND_INT8, 2048); 3],
            ..GemvArgs::default()
        };
        assert!(mma_takes(&a, smem));
        assert!(
            !mma_takes(&a, 2048 * 4 - 1),
            "x's pieces must fit shared memory"
        );
        a.w[1] = desc(KIND_INT8G, 2048);
        assert!(!mma_takes(&a, smem), "a mix keeps the float products");
        a.w[1] = desc(KIND_INT8, 1024);
        assert!(!mma_takes(&a, smem), "one width");
        a.mode = GemvMode::Resid as i32;
        assert!(mma_takes(&a, smem), "a residual launch reads one weight");
        for cols in [0, 96, 65600] {
            a.w[0] = desc(KIND_INT8, cols);
            assert!(!mma_takes(&a, u32::MAX), "{cols} columns");
        }
        a.w[0] = desc(KIND_INT8, 65536);
        assert!(mma_takes(&a, u32::MAX));
        a.w[0] = desc(KIND_BF16, 2048);
        assert!(!mma_takes(&a, smem));
        a.w = [desc(KIND_INT8G, 2048); 3];
        a.mode = GemvMode::Qkv as i32;
        assert_eq!(mma_kind(&a, smem), Some(KIND_INT8G as usize));
        a.w[2].group = 128;
        assert!(!mma_takes(&a, smem), "one group size");
        for g in [128, 256] {
            a.w = [WDesc {
                group: g,
                ..desc(KIND_INT8G, 2048)
            }; 3];
            assert!(mma_takes(&a, smem), "groups of {g}: whole steps");
        }
        for g in [0, 32, 96, 192] {
            a.w = [WDesc {
                group: g,
                ..desc(KIND_INT8G, 2048)
            }; 3];
            assert!(!mma_takes(&a, smem), "groups of {g}");
        }
    }

    #[test]
    fn one_kind_launches_stream_where_gemv_cu_has_a_streaming_kernel() {
        let src = super::super::compile::program_source();
        for k in KIND_F32..=KIND_INT8G {
            let entry = format!("GEMV_STREAM_ENTRY(gemv_s1_k{k}, ");
            assert_eq!(
                src.contains(&entry),
                GEMV_STREAM_KINDS & (1 << k) != 0,
                "kind {k}"
            );
        }
        let desc = |kind, cols, group| WDesc {
            kind,
            cols,
            group,
            ..WDesc::default()
        };
        let mut a = GemvArgs {
            mode: GemvMode::Qkv as i32,
            w: [desc(KIND_INT4, 2048, 64); 3],
            ..GemvArgs::default()
        };
        assert_eq!(gemv_stream(&a), Some(KIND_INT4 as usize));
        a.w[2].group = 128;
        assert_eq!(gemv_stream(&a), None, "one weight's group differs");
        a.w[2] = desc(KIND_INT4, 1024, 64);
        assert_eq!(gemv_stream(&a), None, "one weight's width differs");
        a.mode = GemvMode::GateUp as i32;
        assert_eq!(
            gemv_stream(&a),
            Some(KIND_INT4 as usize),
            "gate/up reads two"
        );
        a.w = [desc(KIND_INT8G, 2048, 64); 3];
        assert_eq!(gemv_stream(&a), None);
        a.w = [desc(KIND_BF16, 2048, 0); 3];
        assert_eq!(gemv_stream(&a), Some(KIND_BF16 as usize));
    }
}

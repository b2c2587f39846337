//! The GEMV launches (gemv.cu, gemv_mma.cu): their argument structs, and the choice of kernel and
//! split for each launch. Every choice here is a function of the weights' shape and form and of
//! the device, never of the number of tokens where that would change a row's bits, so prefill
//! and decode reduce every row in the same order. Choices with measured alternatives read the
//! GPU's [`Tuning`](cllm_cuda::Tuning); their evidence is in docs/decisions/ (named on each).

use cllm_cuda::{CudaError, Grid, KernelArgs, Tuning};
use cllm_format::WeightForm;

use super::weight::{elements_per_vector, GpuWeight, WDesc};
use super::Kernels;

/// Norm partial sums per token (`PSTRIDE` in common.cuh).
pub const PSTRIDE: usize = 4096;
/// Warps per GEMV block (`WARPS`); a unit (two weight rows) takes `ksplit` of them.
pub const GEMV_WARPS: usize = 4;
const GEMV_THREADS: u32 = 128;
/// Tokens per block of the GEMV kernels for any mix of kinds (`gemv_t{nt}`).
pub(crate) const TOKENS: [usize; 4] = [1, 2, 4, 8];
/// Tokens per block of the tensor-core kernels (`gemv_m{nt}`, `gemv_g{nt}`).
pub(crate) const MMA_TOKENS: [usize; 4] = [1, 2, 4, 8];
/// Resident GEMV blocks per multiprocessor (`__launch_bounds__(GEMV_THREADS, 4)` in gemv.cu).
const GEMV_BLOCKS_PER_SM: usize = 4;
/// Virtual blocks a streaming block of a residual launch may run (`STREAM_MAXV` in gemv.cu).
const STREAM_MAXV: usize = 16;
/// Blocks a one-token int8 launch should have: a constant, not the device's count, so the
/// order stays the weight's (docs/decisions/0003).
pub const FILL_BLOCKS: usize = 512;

/// The widest int8 row the tensor-core GEMV takes (gemv_mma.cu: each column adds at most 2^14
/// to a piece's 32-bit sum).
const MMA_MAX_COLS: i32 = 65536;
/// Units (two rows each) per tensor-core tile (gemv_mma.cu).
const MMA_TILE_UNITS: usize = 8;
/// Warps per tensor-core block (`MMA_WARPS`) and resident blocks per multiprocessor.
const MMA_WARPS: usize = 8;
const MMA_BLOCKS_PER_SM: usize = 2;

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
    /// Batches of int8 weights on the tensor cores ([`Kernels::gemv_mma`]): room for x's
    /// pieces, [`Kernels::mma_pieces_bytes`] from here, and each token's shift (`i32`) at
    /// `xq_shift`.
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
    /// GateUp's activation ([`GateAct`]).
    pub act: i32,
    /// Qkv: 1 writes k and v to a staging area (`kcache`/`vcache` of `capacity` rows, one per
    /// token of the launch) for `kv_store` to round into the cache; 0 into the f32 cache.
    pub kv_stage: i32,
}

/// The activation a [`GemvMode::GateUp`] launch applies (`act` in gemv.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum GateAct {
    Silu = 0,
    GeluTanh = 1,
}

// SAFETY: #[repr(C)] twin of gemv.cu's `struct GemvArgs` (checked by
// `layouts_match_the_cuda_structs`).
unsafe impl KernelArgs for GemvArgs {}

// The .cu structs have these sizes (checked by `layouts_match_the_cuda_structs`).
const _: () = assert!(std::mem::size_of::<GemvArgs>() == 328);

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

/// Whether `form` has a one-token GEMV compiled for it alone (`gemv_t1_{kind}`): all but int8g,
/// whose own kernel still spilled and was slower (docs/decisions/0006).
pub(crate) fn own_kernel(form: WeightForm) -> bool {
    !matches!(form, WeightForm::Int8Group { .. })
}

/// Whether one-token launches of `form` can stream (`gemv_s1_{kind}`): the kinds with a kernel
/// of their own (per-row int8 only where the tensor cores do not take it); int8g streaming with
/// its group scales was slower (docs/decisions/0007).
pub(crate) fn streams(form: WeightForm) -> bool {
    own_kernel(form)
}

/// Whether `mask` (bit k for kind k) has `form`'s bit.
fn in_mask(mask: u32, form: WeightForm) -> bool {
    mask & (1 << form.code()) != 0
}

/// How a one-token GEMV streams its weights (`pipe` in gemv.cu) when its arguments leave it 0:
/// the tuning's choice for every launch if it makes one, else by the first weight's form:
/// pipelined batches of 2 vectors for the forms with group scales (int8g, int4), batches of 8
/// for the rest (docs/decisions/0004). Every choice gives the same bits.
pub fn gemv_pipe(first: &WDesc, tuning: &Tuning) -> i32 {
    match (tuning.gemv_pipe, first.form()) {
        (Some(p), _) => p,
        (None, Some(WeightForm::Int8Group { .. } | WeightForm::Int4 { .. })) => 3,
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

/// The form every weight of a launch has, where all of them have it and every weight passes
/// `also`.
fn shared_form(args: &GemvArgs, also: impl Fn(&WDesc) -> bool) -> Option<WeightForm> {
    let ws = &args.w[..gemv_weights(args)];
    let k = ws[0].kind;
    ws.iter()
        .all(|w| w.kind == k && also(w))
        .then(|| ws[0].form())
        .flatten()
}

/// The form of a one-token launch that takes the kernel compiled for its weights' form alone
/// (same bits): the weights share a form that has one, and the tuning keeps it.
fn gemv_own_form(args: &GemvArgs, tuning: &Tuning) -> Option<WeightForm> {
    shared_form(args, |_| true).filter(|&f| own_kernel(f) && in_mask(tuning.gemv_own_kinds, f))
}

/// The form of a one-token launch that streams, if it does (gemv.cu `gemv_stream`): its weights
/// share a form that streams, their width and their group. The grid is then at most one wave,
/// and each block runs the launch's virtual blocks, every warp streaming its units' weights as
/// one sequence. Same bits as `gemv_t1` (docs/decisions/0007).
fn gemv_stream_form(args: &GemvArgs, tuning: &Tuning) -> Option<WeightForm> {
    let w0 = &args.w[0];
    shared_form(args, |w| w.cols == w0.cols && w.group == w0.group)
        .filter(|&f| streams(f) && in_mask(tuning.gemv_stream_kinds, f))
}

/// How a tensor-core launch spreads its work (gemv_mma.cu): `ksplit` warps of a block per
/// tile (each a part of its steps), over `blocks` blocks per group of tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MmaSplit {
    ksplit: usize,
    blocks: usize,
}

/// The split of `tiles` tiles of `steps` 64-column steps, `nt` tokens per block, on a device of
/// `wave` resident blocks. Warps per tile: the most (up to [`MMA_WARPS`], at most one per step)
/// that keep the launch within one wave. Where that is one, a one-token launch takes a whole
/// wave, whose warps take the tiles strided; batches keep a block per [`MMA_WARPS`] tiles.
/// `forced` (the tuning's) sets the warps per tile. Per-row int8 has the same bits with any
/// split (integer sums); int8g's depend on `ksplit` (its warps' float accumulators are added in
/// order), which is why `ksplit` is a function of the weight's shape and the device alone, never
/// of `nt`: prefill and decode agree bit for bit (docs/decisions/0012).
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

/// [`Kernels::gemv_mma`]'s test of the weights, with `smem` bytes of shared memory for x's
/// pieces: the form (per-row int8, or int8g whose groups are whole 64-column steps) if it takes
/// them.
fn mma_form(args: &GemvArgs, smem: u32) -> Option<WeightForm> {
    let (cols, group) = (args.w[0].cols, args.w[0].group);
    let form = shared_form(args, |w| w.cols == cols && w.group == group)?;
    let whole_steps = match form {
        WeightForm::Int8Row => true,
        // A group is 2^k whole 64-column steps (gemv_mma.cu takes a step's group by a shift).
        WeightForm::Int8Group { .. } => {
            group >= 64 && group % 64 == 0 && (group as u32 / 64).is_power_of_two()
        }
        _ => false,
    };
    (whole_steps
        && cols > 0
        && cols % 64 == 0
        && cols <= MMA_MAX_COLS
        && cols as u64 * 4 <= smem as u64)
        .then_some(form)
}

/// Tiles of a tensor-core launch: also its norm partials per token.
fn mma_tiles(args: &GemvArgs) -> usize {
    (args.units.max(0) as usize).div_ceil(MMA_TILE_UNITS)
}

impl Kernels {
    /// Warps per unit for a weight: enough that each warp streams at least 256 16-byte vectors
    /// of a row (int4: 2048 columns), at most [`GEMV_WARPS`]; and, for the int8 forms (unless
    /// the tuning turns it off), more while a one-token launch over the weight's rows would
    /// have fewer than [`FILL_BLOCKS`] blocks and each warp keeps at least 2048 columns. A
    /// function of the weight's shape and form only, so prefill and decode reduce every row in
    /// the same order (docs/decisions/0003).
    pub fn ksplit_for(&self, w: &GpuWeight) -> i32 {
        let epv = elements_per_vector(w.form);
        let min_cols = if epv == 32 { 2048 } else { 256 * epv };
        let mut k = 1;
        while k < GEMV_WARPS && w.cols / (2 * k) >= min_cols {
            k *= 2;
        }
        let int8 = matches!(w.form, WeightForm::Int8Row | WeightForm::Int8Group { .. });
        if int8 && self.gpu().tuning().ksplit_fill {
            while k < GEMV_WARPS
                && Kernels::gemv_blocks(w.rows.div_ceil(2), k as i32) < FILL_BLOCKS
                && w.cols / (2 * k) >= 2048
            {
                k *= 2;
            }
        }
        k as i32
    }

    /// Whether a GEMV launch runs on the integer tensor cores (gemv_mma.cu): every weight is
    /// per-row int8, or every one int8g with one group size that is a multiple of 64 columns,
    /// of one width, a multiple of 64 columns, at most [`MMA_MAX_COLS`], whose pieces (4 bytes
    /// a column) fit a block's shared memory, and the tuning lets that form on them. A function
    /// of the weights and the device, so a launch's prefill and decode take the same path
    /// (docs/decisions/0011).
    pub fn gemv_mma(&self, args: &GemvArgs) -> bool {
        self.gemv_mma_form(args).is_some()
    }

    fn gemv_mma_form(&self, args: &GemvArgs) -> Option<WeightForm> {
        use cllm_cuda::TensorCores;
        let allowed = self.gpu().tuning().tensor_cores;
        mma_form(args, self.gemv_mma_smem).filter(|f| match allowed {
            TensorCores::Int8All => true,
            TensorCores::Int8Row => *f == WeightForm::Int8Row,
            TensorCores::Off => false,
        })
    }

    /// The warps per tile of a tensor-core launch ([`Kernels::gemv_mma`]) over these weights,
    /// for any number of tokens: int8g's bits depend on it (gemv_mma.cu).
    pub fn gemv_mma_ksplit(&self, args: &GemvArgs) -> usize {
        self.gemv_mma_split(args, 1).ksplit
    }

    fn gemv_mma_split(&self, args: &GemvArgs, nt: usize) -> MmaSplit {
        let steps = (args.w[0].cols / 64).max(1) as usize;
        let forced = self
            .gpu()
            .tuning()
            .mma_ksplit
            .filter(|&k| k.is_power_of_two() && k <= MMA_WARPS && k <= steps);
        let wave = self.gpu().wave(MMA_BLOCKS_PER_SM);
        mma_split(mma_tiles(args), steps, nt, wave, forced)
    }

    /// The norm partials per token a residual launch writes: the next launch's `nparts`.
    pub fn gemv_norm_parts(&self, args: &GemvArgs) -> usize {
        if self.gemv_mma(args) {
            mma_tiles(args)
        } else {
            Kernels::gemv_blocks(args.units.max(0) as usize, args.ksplit)
        }
    }

    /// Bytes of [`GemvArgs::xq`] a batch of `ntok` tokens over `cols` columns needs (and
    /// `4 * ntok` at `xq_shift`).
    pub fn mma_pieces_bytes(ntok: usize, cols: usize) -> usize {
        ntok * cols * 4
    }

    /// A launch on the integer tensor cores ([`Kernels::gemv_mma`], weights of `form`); a
    /// batch's x goes through the `x_pieces` pre-pass first.
    fn gemv_mma_launch(&self, args: &GemvArgs, form: WeightForm) -> Result<(), CudaError> {
        let ntok = args.ntok.max(0) as usize;
        let nt = tokens_per_block(ntok);
        let tiles = mma_tiles(args);
        if tiles > PSTRIDE && args.mode == GemvMode::Resid as i32 {
            return Err(CudaError::Unsupported(format!(
                "gemv: {tiles} tiles exceed {PSTRIDE} norm partials"
            )));
        }
        let split = self.gemv_mma_split(args, nt);
        let mut a = *args;
        a.ksplit = split.ksplit as i32;
        let threads = 32 * MMA_WARPS as u32;
        if nt > 1 {
            if a.xq == 0 || a.xq_shift == 0 {
                return Err(CudaError::Kernel(
                    "gemv: a batch over int8 weights needs room for x's pieces (xq)".into(),
                ));
            }
            let grid = Grid {
                blocks: (ntok as u32, 1, 1),
                threads,
                shared_bytes: 0,
            };
            self.gpu().launch(&self.f.x_pieces, grid, &a)?;
        }
        let kernels = match form {
            WeightForm::Int8Group { .. } => &self.f.mma_group,
            _ => &self.f.mma_row,
        };
        let grid = Grid {
            blocks: (split.blocks as u32, ntok.div_ceil(nt) as u32, 1),
            threads,
            shared_bytes: if nt == 1 { a.w[0].cols as u32 * 4 } else { 0 },
        };
        self.gpu()
            .launch(&kernels[nt.trailing_zeros() as usize], grid, &a)
    }

    /// One GEMV launch: `args.units` units of two rows, `args.ntok` tokens.
    pub fn gemv(&self, args: &GemvArgs) -> Result<(), CudaError> {
        if let Some(form) = self.gemv_mma_form(args) {
            return self.gemv_mma_launch(args, form);
        }
        let tuning = self.gpu().tuning();
        let ntok = args.ntok.max(0) as usize;
        let nt = tokens_per_block(ntok);
        let ks = args.ksplit;
        if !matches!(ks, 1 | 2 | 4) {
            return Err(CudaError::Kernel(format!("gemv: ksplit {ks} (1, 2 or 4)")));
        }
        let resid = args.mode == GemvMode::Resid as i32;
        let blocks = Kernels::gemv_blocks(args.units.max(0) as usize, ks);
        if blocks > PSTRIDE && resid {
            return Err(CudaError::Unsupported(format!(
                "gemv: {blocks} blocks exceed {PSTRIDE} norm partials"
            )));
        }
        let mut args = *args;
        if args.pipe == 0 {
            args.pipe = gemv_pipe(&args.w[0], &tuning);
        }
        let one_token = nt == 1;
        let own = gemv_own_form(&args, &tuning).filter(|_| one_token);
        let stream = gemv_stream_form(&args, &tuning).filter(|_| one_token);
        let one_wave = blocks <= self.gpu().wave(GEMV_BLOCKS_PER_SM);
        let (kernel, grid_x, smem) = match (own, stream) {
            (_, Some(form)) => {
                // One wave of blocks, however many of them the x copy leaves resident: a block
                // beyond the wave would start its whole share of units only when one ended.
                let kernel = self.f.stream_kernel(form)?;
                let smem = self.gemv_x_bytes(&args, true, &tuning);
                let per_sm = kernel
                    .blocks_per_multiprocessor(self.gpu(), GEMV_THREADS, smem)
                    .unwrap_or(1)
                    .clamp(1, GEMV_BLOCKS_PER_SM);
                let wave = self.gpu().wave(per_sm);
                let cap = tuning.gemv_stream_blocks;
                let mut g = blocks.min(if cap > 0 { cap } else { wave });
                if resid {
                    g = g.max(blocks.div_ceil(STREAM_MAXV));
                }
                (kernel, g.max(1), smem)
            }
            (Some(form), None) => (
                self.f.own_kernel(form)?,
                blocks,
                self.gemv_x_bytes(&args, one_wave, &tuning),
            ),
            (None, None) if one_token => (
                self.f.mixed[0],
                blocks,
                self.gemv_x_bytes(&args, one_wave, &tuning),
            ),
            (None, None) => (self.f.mixed[nt.trailing_zeros() as usize], blocks, 0),
        };
        let grid = Grid {
            blocks: (grid_x as u32, ntok.div_ceil(nt) as u32, 1),
            threads: GEMV_THREADS,
            shared_bytes: smem,
        };
        self.gpu().launch(&kernel, grid, &args)
    }

    /// Dynamic shared memory for a one-token GEMV's copy of x (gemv.cu): the row's bytes where
    /// float weights read it and the tuning asks for the copy (by default where the launch's
    /// blocks fit in `one_wave`; a streaming launch's always do), else 0 (x read from global
    /// memory; docs/decisions/0008).
    fn gemv_x_bytes(&self, args: &GemvArgs, one_wave: bool, tuning: &Tuning) -> u32 {
        use cllm_cuda::XShared;
        let float_weights = args.w[..gemv_weights(args)]
            .iter()
            .any(|w| w.form().is_some_and(|f| !f.is_quantized()));
        let x_bytes = args.w[0].cols.max(0) as u64 * 4;
        let wanted = match tuning.gemv_x_shared {
            XShared::Never => false,
            XShared::Always => true,
            XShared::OneWave => one_wave,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(form: WeightForm, cols: i32) -> WDesc {
        WDesc {
            kind: form.code() as i32,
            cols,
            group: form.group_size().unwrap_or(0) as i32,
            ..WDesc::default()
        }
    }

    const BF16: WeightForm = WeightForm::Bf16;
    const INT8: WeightForm = WeightForm::Int8Row;
    const INT8G: WeightForm = WeightForm::Int8Group { group_size: 64 };
    const INT4: WeightForm = WeightForm::Int4 { group_size: 64 };

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
        assert_eq!(&a.act as *const _ as usize - base, 320);
        assert_eq!(tokens_per_block(1), 1);
        assert_eq!(tokens_per_block(5), 4);
        assert_eq!(tokens_per_block(100), 8);
    }

    #[test]
    fn one_form_launches_take_their_own_kernel_where_they_have_one() {
        let tuning = Tuning::default();
        let mut a = GemvArgs {
            mode: GemvMode::Qkv as i32,
            w: [desc(BF16, 0); 3],
            ..GemvArgs::default()
        };
        assert_eq!(gemv_own_form(&a, &tuning), Some(BF16));
        a.w[2] = desc(INT8, 0);
        assert_eq!(
            gemv_own_form(&a, &tuning),
            None,
            "a mix takes the kernel for any mix"
        );
        a.mode = GemvMode::GateUp as i32;
        assert_eq!(
            gemv_own_form(&a, &tuning),
            Some(BF16),
            "gate/up reads two weights"
        );
        a.w = [desc(INT8G, 0); 3];
        assert_eq!(gemv_own_form(&a, &tuning), None);
        a.w = [desc(INT4, 0); 3];
        assert_eq!(gemv_own_form(&a, &tuning), Some(INT4));
        let narrowed = Tuning {
            gemv_own_kinds: 1 << BF16.code(),
            ..tuning
        };
        assert_eq!(
            gemv_own_form(&a, &narrowed),
            None,
            "the tuning narrows the kinds"
        );
    }

    #[test]
    fn int8_launches_of_one_width_and_whole_steps_take_the_tensor_cores() {
        let takes = |a: &GemvArgs, smem| mma_form(a, smem).is_some();
        let smem = 200 << 10;
        let mut a = GemvArgs {
            mode: GemvMode::Qkv as i32,
            w: [desc(INT8, 2048); 3],
            ..GemvArgs::default()
        };
        assert!(takes(&a, smem));
        assert!(
            !takes(&a, 2048 * 4 - 1),
            "x's pieces must fit shared memory"
        );
        a.w[1] = desc(INT8G, 2048);
        assert!(!takes(&a, smem), "a mix keeps the float products");
        a.w[1] = desc(INT8, 1024);
        assert!(!takes(&a, smem), "one width");
        a.mode = GemvMode::Resid as i32;
        assert!(takes(&a, smem), "a residual launch reads one weight");
        for cols in [0, 96, 65600] {
            a.w[0] = desc(INT8, cols);
            assert!(!takes(&a, u32::MAX), "{cols} columns");
        }
        a.w[0] = desc(INT8, 65536);
        assert!(takes(&a, u32::MAX));
        a.w[0] = desc(BF16, 2048);
        assert!(!takes(&a, smem));
        a.w = [desc(INT8G, 2048); 3];
        a.mode = GemvMode::Qkv as i32;
        assert_eq!(mma_form(&a, smem), Some(INT8G));
        a.w[2].group = 128;
        assert!(!takes(&a, smem), "one group size");
        for g in [128, 256] {
            a.w = [WDesc {
                group: g,
                ..desc(INT8G, 2048)
            }; 3];
            assert!(takes(&a, smem), "groups of {g}: whole steps");
        }
        for g in [0, 32, 96, 192] {
            a.w = [WDesc {
                group: g,
                ..desc(INT8G, 2048)
            }; 3];
            assert!(!takes(&a, smem), "groups of {g}");
        }
    }

    #[test]
    fn one_form_launches_stream_where_their_form_can() {
        let tuning = Tuning::default();
        let mut a = GemvArgs {
            mode: GemvMode::Qkv as i32,
            w: [desc(INT4, 2048); 3],
            ..GemvArgs::default()
        };
        assert_eq!(gemv_stream_form(&a, &tuning), Some(INT4));
        a.w[2].group = 128;
        assert_eq!(
            gemv_stream_form(&a, &tuning),
            None,
            "one weight's group differs"
        );
        a.w[2] = desc(INT4, 1024);
        assert_eq!(
            gemv_stream_form(&a, &tuning),
            None,
            "one weight's width differs"
        );
        a.mode = GemvMode::GateUp as i32;
        assert_eq!(
            gemv_stream_form(&a, &tuning),
            Some(INT4),
            "gate/up reads two"
        );
        a.w = [desc(INT8G, 2048); 3];
        assert_eq!(gemv_stream_form(&a, &tuning), None);
        a.w = [desc(BF16, 2048); 3];
        assert_eq!(gemv_stream_form(&a, &tuning), Some(BF16));
        let off = Tuning {
            gemv_stream_kinds: 0,
            ..tuning
        };
        assert_eq!(gemv_stream_form(&a, &off), None);
        assert_eq!(gemv_pipe(&desc(INT8G, 64), &tuning), 3);
        assert_eq!(gemv_pipe(&desc(BF16, 64), &tuning), 1);
    }
}

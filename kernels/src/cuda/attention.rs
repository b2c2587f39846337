//! The attention launch (attention.cu): grouped-query attention of a batch of tokens over the KV
//! cache, in chunks of key positions whose arithmetic depends only on the position.

use cllm_cuda::{CudaError, Grid, KernelArgs};

use super::Kernels;

/// Key positions per attention chunk (`ATT_CHUNK`).
pub const ATT_CHUNK: usize = 128;
/// Largest head dimension of the attention kernel (`ATT_MAX_HD`).
pub const ATT_MAX_HD: usize = 256;
const ATT_THREADS: u32 = 128;

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
    /// 2: the chunk's keys and values stream into the L2 before the launch wait; 1: not; 0
    /// takes the GPU's tuning (docs/decisions/0010). Same bits either way.
    pub prefetch: i32,
    /// How the cache stores keys and values ([`KvForm`]).
    pub kv: i32,
    /// [`KvForm::Int8`]: this layer's key and value scales, bf16, `[kv_heads][capacity][block]`
    /// (blocks of `cllm_runtime::kv::int8_block(head_dim)` values).
    pub kscale: u64,
    pub vscale: u64,
}

/// How the GPU cache stores keys and values (`KV_F32`, ... in attention.cu); the rounding is
/// `cllm_runtime::kv`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum KvForm {
    F32 = 0,
    Bf16 = 1,
    /// int8 in Hadamard-rotated blocks of up to 32 values with a bf16 scale each.
    Int8 = 2,
}

impl KvForm {
    /// Bytes of one stored element (int8's scales apart).
    pub fn element_bytes(self) -> usize {
        match self {
            KvForm::F32 => 4,
            KvForm::Bf16 => 2,
            KvForm::Int8 => 1,
        }
    }
}

/// `struct KvStoreArgs` of attention.cu: rounds a launch's new keys and values from the QKV
/// launch's staging area into a bf16 or int8 cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvStoreArgs {
    pub kstage: u64,
    pub vstage: u64,
    pub kcache: u64,
    pub vcache: u64,
    pub kscale: u64,
    pub vscale: u64,
    pub pos: u64,
    pub ntok: i32,
    pub kv_heads: i32,
    pub head_dim: i32,
    pub capacity: i32,
    /// Rows per kv head of the staging area.
    pub nstage: i32,
    pub kv: i32,
}

// SAFETY: #[repr(C)] twin of attention.cu's `struct KvStoreArgs` (see the layout test).
unsafe impl KernelArgs for KvStoreArgs {}

const _: () = assert!(std::mem::size_of::<KvStoreArgs>() == 80);

// SAFETY: #[repr(C)] twin of attention.cu's `struct AttnArgs` (see the layout test).
unsafe impl KernelArgs for AttnArgs {}

const _: () = assert!(std::mem::size_of::<AttnArgs>() == 120);

impl Kernels {
    /// Attention over `chunks` chunk slots per (head, token).
    pub fn attention(&self, args: &AttnArgs, chunks: usize) -> Result<(), CudaError> {
        if args.head_dim as usize > ATT_MAX_HD || args.head_dim % 4 != 0 {
            return Err(CudaError::Unsupported(format!(
                "head_dim {} (the GPU attention takes multiples of 4 up to {ATT_MAX_HD})",
                args.head_dim
            )));
        }
        let mut args = *args;
        if args.prefetch == 0 {
            args.prefetch = if self.gpu().tuning().attention_prefetch {
                2
            } else {
                1
            };
        }
        let grid = Grid {
            blocks: (chunks as u32, args.heads as u32, args.ntok as u32),
            threads: ATT_THREADS,
            shared_bytes: 0,
        };
        self.gpu().launch(&self.f.attention, grid, &args)
    }

    /// Rounds `args.ntok` tokens' new keys and values into a bf16 or int8 cache.
    pub fn kv_store(&self, args: &KvStoreArgs) -> Result<(), CudaError> {
        if args.kv == KvForm::F32 as i32 {
            return Err(CudaError::Unsupported(
                "kv_store rounds into a bf16 or int8 cache; an f32 cache is written by the QKV launch".into(),
            ));
        }
        let grid = Grid {
            blocks: (args.kv_heads as u32, args.ntok as u32, 2),
            threads: 32,
            shared_bytes: 0,
        };
        self.gpu().launch(&self.f.kv_store, grid, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_cuda_struct() {
        let t = AttnArgs::default();
        let base = &t as *const _ as usize;
        assert_eq!(&t.scale as *const _ as usize - base, 92);
        assert_eq!(&t.prefetch as *const _ as usize - base, 96);
        assert_eq!(&t.kv as *const _ as usize - base, 100);
        assert_eq!(&t.kscale as *const _ as usize - base, 104);
        let s = KvStoreArgs::default();
        let base = &s as *const _ as usize;
        assert_eq!(&s.pos as *const _ as usize - base, 48);
        assert_eq!(&s.kv as *const _ as usize - base, 76);
    }
}

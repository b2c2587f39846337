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
    pub pad_: i32,
}

// SAFETY: #[repr(C)] twin of attention.cu's `struct AttnArgs` (see the layout test).
unsafe impl KernelArgs for AttnArgs {}

const _: () = assert!(std::mem::size_of::<AttnArgs>() == 104);

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
    }
}

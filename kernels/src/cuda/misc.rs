//! The small kernels of misc.cu: the embedding lookup (with the first norm's inputs), the
//! per-head norm and RoPE of q and k, the normed residual add, the residency hash of device
//! memory, and a read-bandwidth probe.

use cllm_cuda::{CudaError, Grid, KernelArgs};

use super::weight::WDesc;
use super::Kernels;

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
    /// The embedding's scale (1.0 where the family has none).
    pub scale: f32,
    pub pad_: i32,
}

// SAFETY: #[repr(C)] twin of misc.cu's `struct EmbedArgs` (see the layout test).
unsafe impl KernelArgs for EmbedArgs {}

const _: () = assert!(std::mem::size_of::<EmbedArgs>() == 136);

/// `struct HeadArgs` of misc.cu: per-head norm and RoPE of q and the new keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadArgs {
    pub q: u64,
    pub kcache: u64,
    pub q_norm: u64,
    pub k_norm: u64,
    pub rope_cos: u64,
    pub rope_sin: u64,
    pub pos: u64,
    pub ntok: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub head_dim: i32,
    pub rotary_dim: i32,
    pub capacity: i32,
    pub eps: f32,
    /// 1: `kcache` is the staging area of the Qkv launch (`GemvArgs::kv_stage`), and this
    /// launch also rounds the new keys and the new values (`vstage`) into the cache (`kq`, `vq`,
    /// their scales, of the form `kv`) at rows of `cache_capacity`, as `kv_store` does.
    pub kv_stage: i32,
    pub vstage: u64,
    pub kq: u64,
    pub vq: u64,
    pub kscale: u64,
    pub vscale: u64,
    pub kv: i32,
    pub cache_capacity: i32,
}

// SAFETY: #[repr(C)] twin of misc.cu's `struct HeadArgs` (see the layout test).
unsafe impl KernelArgs for HeadArgs {}

const _: () = assert!(std::mem::size_of::<HeadArgs>() == 136);

/// `struct NormResidArgs` of misc.cu: `h += norm(y)` and the next norm's inputs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NormResidArgs {
    pub y: u64,
    pub w: u64,
    pub norm_next: u64,
    pub h: u64,
    pub xw: u64,
    pub partial: u64,
    pub ntok: i32,
    pub hidden: i32,
    pub eps: f32,
    pub pad_: i32,
}

// SAFETY: #[repr(C)] twin of misc.cu's `struct NormResidArgs` (see the layout test).
unsafe impl KernelArgs for NormResidArgs {}

const _: () = assert!(std::mem::size_of::<NormResidArgs>() == 64);

/// `struct HashArgs` of misc.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct HashArgs {
    p: u64,
    nbytes: u64,
    out: u64,
}

// SAFETY: #[repr(C)] twin of misc.cu's `struct HashArgs`.
unsafe impl KernelArgs for HashArgs {}

/// `struct ReadArgs` of misc.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadArgs {
    p: u64,
    n: u64,
    sink: u64,
}

// SAFETY: #[repr(C)] twin of misc.cu's `struct ReadArgs`.
unsafe impl KernelArgs for ReadArgs {}

impl Kernels {
    /// Embedding rows for `args.ntok` tokens.
    pub fn embed(&self, args: &EmbedArgs) -> Result<(), CudaError> {
        let grid = Grid {
            blocks: (args.ntok as u32, 1, 1),
            threads: 256,
            shared_bytes: 0,
        };
        self.gpu().launch(&self.f.embed, grid, args)
    }

    /// Per-head norm (where given) and RoPE of `args.ntok` tokens' queries and new keys.
    pub fn head_norm_rope(&self, args: &HeadArgs) -> Result<(), CudaError> {
        let grid = Grid {
            blocks: (
                (args.heads + args.kv_heads * if args.kv_stage != 0 { 2 } else { 1 }) as u32,
                args.ntok as u32,
                1,
            ),
            threads: 32,
            shared_bytes: 0,
        };
        self.gpu().launch(&self.f.head_norm_rope, grid, args)
    }

    /// `h += norm(y)` for `args.ntok` tokens, with the next norm's inputs.
    pub fn norm_residual(&self, args: &NormResidArgs) -> Result<(), CudaError> {
        let grid = Grid {
            blocks: (args.ntok as u32, 1, 1),
            threads: 256,
            shared_bytes: 0,
        };
        self.gpu().launch(&self.f.norm_residual, grid, args)
    }

    /// The residency hash ([`super::hash`]) of `len` bytes at device address `ptr`, with 8
    /// bytes of device scratch at `scratch`.
    pub fn hash_device(&self, ptr: u64, len: u64, scratch: u64) -> Result<u64, CudaError> {
        let gpu = self.gpu();
        gpu.fill_u32(scratch, 0, 2)?;
        let args = HashArgs {
            p: ptr,
            nbytes: len,
            out: scratch,
        };
        let words = len.div_ceil(8);
        let grid = Grid {
            blocks: (words.div_ceil(256).clamp(1, 4096) as u32, 1, 1),
            threads: 256,
            shared_bytes: 0,
        };
        gpu.launch(&self.f.hash_words, grid, &args)?;
        let mut sum = [0u64];
        gpu.dtoh(&mut sum, scratch)?;
        Ok(super::hash::finish(sum[0], len))
    }

    /// Read bandwidth of device memory in bytes per second: the median of `reps` passes of a
    /// read-only kernel over `bytes` (several times the L2 cache).
    pub fn read_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64, CudaError> {
        let gpu = self.gpu();
        let bytes = bytes / 16 * 16;
        let buf = gpu.alloc("bandwidth probe", bytes)?;
        gpu.fill_u32(buf.ptr(), 0x3c00_3c01, bytes / 4)?;
        let sink = gpu.alloc("bandwidth sink", 4)?;
        gpu.fill_u32(sink.ptr(), 0, 1)?;
        let args = ReadArgs {
            p: buf.ptr(),
            n: (bytes / 16) as u64,
            sink: sink.ptr(),
        };
        let grid = Grid {
            blocks: ((gpu.info().multiprocessors.max(1) as u32) * 8, 1, 1),
            threads: 256,
            shared_bytes: 0,
        };
        let (start, end) = (gpu.event()?, gpu.event()?);
        let mut times = Vec::new();
        for i in 0..reps + 2 {
            gpu.record(&start)?;
            gpu.launch(&self.f.read_bw, grid, &args)?;
            gpu.record(&end)?;
            end.wait()?;
            if i >= 2 {
                times.push(start.elapsed_ms(&end)? as f64 / 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        Ok(bytes as f64 / median)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_cuda_struct() {
        let e = EmbedArgs::default();
        let base = &e as *const _ as usize;
        assert_eq!(&e.tokens as *const _ as usize - base, 48);
        assert_eq!(&e.vocab as *const _ as usize - base, 124);
        assert_eq!(&e.scale as *const _ as usize - base, 128);
        let h = HeadArgs::default();
        let base = &h as *const _ as usize;
        assert_eq!(&h.ntok as *const _ as usize - base, 56);
        assert_eq!(&h.eps as *const _ as usize - base, 80);
        assert_eq!(&h.vstage as *const _ as usize - base, 88);
        assert_eq!(&h.kv as *const _ as usize - base, 128);
        let n = NormResidArgs::default();
        let base = &n as *const _ as usize;
        assert_eq!(&n.ntok as *const _ as usize - base, 48);
    }
}

//! Block timelines of the kernels, a measurement aid: with the kernels compiled with
//! `-DCLLM_TRACE` (`CLLM_NVRTC_DEFINES=-DCLLM_TRACE`, cached under its own key), every block of
//! the GEMV, attention, embedding and sampling kernels appends its start, the return of its
//! programmatic-launch wait, its end and up to four marks on the GPU's global timer (see
//! `common.cuh`). Built without it, [`Kernels::trace_reset`] answers `false` and costs
//! nothing. Nsight Systems is not needed, and the records come from inside a graph replay.

use cllm_cuda::CudaError;

use super::Kernels;

/// Records the device buffer holds (`CLLM_TRACE_CAP`), and words per record (`TRACE_WORDS`).
const CAP: usize = 262_144;
const WORDS: usize = 5;

/// One block's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    /// 0-3 GEMV (QKV, residual, gate/up, logits), 4 attention, 5 embedding, 6 sampling.
    pub tag: u8,
    pub sm: u8,
    pub block: (u32, u32),
    /// Global timer at the block's start, ns.
    pub start_ns: u64,
    /// From the start to the return of the programmatic-launch wait and to the end (thread
    /// 0's), ns.
    pub wait_ns: u32,
    pub end_ns: u32,
    /// From the start to the kernel's marks 1..4 (see its `TRACE_MARK`s), ns; 0: not reached.
    pub marks_ns: [u32; 4],
}

impl BlockRecord {
    /// The kernel's name for a tag.
    pub fn kernel(&self) -> &'static str {
        match self.tag {
            0 => "qkv",
            1 => "resid",
            2 => "gate/up",
            3 => "logits",
            4 => "attention",
            5 => "embed",
            6 => "sample",
            _ => "?",
        }
    }
}

impl Kernels {
    fn trace_symbol(&self, name: &str) -> Option<(u64, usize)> {
        self.module().global(name)
    }

    /// Empties the trace buffer; `false` when the kernels were built without `CLLM_TRACE`.
    pub fn trace_reset(&self) -> Result<bool, CudaError> {
        let Some((count, _)) = self.trace_symbol("cllm_trace_n") else {
            return Ok(false);
        };
        self.gpu().sync()?;
        self.gpu().htod(count, &[0u32])?;
        Ok(true)
    }

    /// The records since [`Kernels::trace_reset`], in the order the blocks ended (at most `CAP`;
    /// blocks past it are dropped), after waiting for the stream.
    pub fn trace_take(&self) -> Result<Vec<BlockRecord>, CudaError> {
        let (Some((count, _)), Some((buf, bytes))) = (
            self.trace_symbol("cllm_trace_n"),
            self.trace_symbol("cllm_trace"),
        ) else {
            return Err(CudaError::Unsupported(
                "the kernels were compiled without CLLM_TRACE".into(),
            ));
        };
        self.gpu().sync()?;
        let mut n = [0u32];
        self.gpu().dtoh(&mut n, count)?;
        let n = (n[0] as usize).min(CAP).min(bytes / (8 * WORDS));
        let mut words = vec![0u64; n * WORDS];
        self.gpu().dtoh(&mut words, buf)?;
        Ok(words
            .chunks_exact(WORDS)
            .map(|r| BlockRecord {
                tag: r[0] as u8,
                sm: (r[0] >> 8) as u8,
                block: (((r[0] >> 16) & 0xff_ffff) as u32, (r[0] >> 40) as u32),
                start_ns: r[1],
                wait_ns: (r[2] >> 32) as u32,
                end_ns: r[2] as u32,
                marks_ns: [
                    (r[3] >> 32) as u32,
                    r[3] as u32,
                    (r[4] >> 32) as u32,
                    r[4] as u32,
                ],
            })
            .collect())
    }
}

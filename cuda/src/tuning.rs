//! The launch choices that have measured alternatives: one struct, built from the environment
//! once when a GPU is opened, held by the [`Gpu`](crate::Gpu) handle, changed with
//! [`Gpu::set_tuning`](crate::Gpu::set_tuning) (tests, measurements) and printed by
//! `cllm bench gpu --json`. Each default is a decision recorded in docs/decisions/ (the record
//! is named on each field); no choice changes a result's bits.
//!
//! Environment variables, for measuring one choice against another in the same run:
//! `CLLM_KSPLIT_FILL`, `CLLM_GEMV_PIPE`, `CLLM_GEMV_KIND`, `CLLM_GEMV_STREAM`, `CLLM_GEMV_XSMEM`,
//! `CLLM_GEMV_MMA`, `CLLM_MMA_KSPLIT`, `CLLM_ATT_PREFETCH`, `CLLM_NO_PDL`, `CLLM_CUDA_SYNC`. A
//! value out of a variable's range is ignored.

use serde::Serialize;

/// Which int8 launches run on the integer tensor cores (docs/decisions/0011).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TensorCores {
    Off,
    /// Per-row int8 only.
    Int8Row,
    /// Per-row int8 and group-wise int8 whose groups are whole 64-column steps.
    Int8All,
}

/// Where one-token GEMVs over float weights read x (docs/decisions/0008).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum XShared {
    /// Always from global memory.
    Never,
    /// From a shared-memory copy where the launch fits in one wave.
    OneWave,
    /// From a shared-memory copy in every launch.
    Always,
}

/// The launch choices (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Tuning {
    /// `CLLM_KSPLIT_FILL` (0, 1): int8 rows split between more warps while a one-token launch
    /// would have few blocks (0003).
    pub ksplit_fill: bool,
    /// `CLLM_GEMV_PIPE` (1, 2, 3): how every one-token GEMV streams its weights; `None` chooses
    /// by the weights' form (0004).
    pub gemv_pipe: Option<i32>,
    /// `CLLM_GEMV_KIND` (a mask, bit k for weight kind k): the kinds whose one-token launches
    /// take the kernel compiled for them alone, among those that have one (0006).
    pub gemv_own_kinds: u32,
    /// `CLLM_GEMV_STREAM` (a mask, as above): the kinds whose one-token launches stream, among
    /// those that can (0007).
    pub gemv_stream_kinds: u32,
    /// The most blocks a streaming launch may have (0: one wave). No variable: the GPU tests set
    /// it to run every launch's units through a few blocks.
    pub gemv_stream_blocks: usize,
    /// `CLLM_GEMV_XSMEM` (0 never, 1 one wave, 2 always) (0008).
    pub gemv_x_shared: XShared,
    /// `CLLM_GEMV_MMA` (0 off, 1 per-row int8 only, 2 both int8 forms) (0011).
    pub tensor_cores: TensorCores,
    /// `CLLM_MMA_KSPLIT` (1, 2, 4, 8): warps per tensor-core tile; `None` chooses by the
    /// weight's shape and the device (0012). int8g's bits depend on it.
    pub mma_ksplit: Option<usize>,
    /// `CLLM_ATT_PREFETCH` (1 off, 2 on): attention asks the L2 for its keys and values before
    /// its launch wait (0010).
    pub attention_prefetch: bool,
    /// `CLLM_NO_PDL=1` turns off programmatic dependent launch (0009).
    pub pdl: bool,
    /// `CLLM_CUDA_SYNC=1`: wait after every launch, so an error names its kernel.
    pub sync_each_launch: bool,
}

impl Default for Tuning {
    /// The recorded decisions.
    fn default() -> Tuning {
        Tuning {
            ksplit_fill: true,
            gemv_pipe: None,
            gemv_own_kinds: u32::MAX,
            gemv_stream_kinds: u32::MAX,
            gemv_stream_blocks: 0,
            gemv_x_shared: XShared::OneWave,
            tensor_cores: TensorCores::Int8All,
            mma_ksplit: None,
            attention_prefetch: true,
            pdl: true,
            sync_each_launch: false,
        }
    }
}

impl Tuning {
    /// The defaults, with each variable that is set (and in range) applied.
    pub fn from_env() -> Tuning {
        Tuning::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Tuning::from_env`] over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Tuning {
        let int = |name: &str, lo: i64, hi: i64| -> Option<i64> {
            var(name)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|v| (lo..=hi).contains(v))
        };
        let mut t = Tuning::default();
        if let Some(v) = int("CLLM_KSPLIT_FILL", 0, 1) {
            t.ksplit_fill = v == 1;
        }
        t.gemv_pipe = int("CLLM_GEMV_PIPE", 1, 3).map(|v| v as i32);
        if let Some(v) = int("CLLM_GEMV_KIND", 0, 63) {
            t.gemv_own_kinds = v as u32;
        }
        if let Some(v) = int("CLLM_GEMV_STREAM", 0, 63) {
            t.gemv_stream_kinds = v as u32;
        }
        if let Some(v) = int("CLLM_GEMV_XSMEM", 0, 2) {
            t.gemv_x_shared = [XShared::Never, XShared::OneWave, XShared::Always][v as usize];
        }
        if let Some(v) = int("CLLM_GEMV_MMA", 0, 2) {
            t.tensor_cores =
                [TensorCores::Off, TensorCores::Int8Row, TensorCores::Int8All][v as usize];
        }
        t.mma_ksplit = int("CLLM_MMA_KSPLIT", 1, 8)
            .map(|v| v as usize)
            .filter(|v| v.is_power_of_two());
        if let Some(v) = int("CLLM_ATT_PREFETCH", 1, 2) {
            t.attention_prefetch = v == 2;
        }
        t.pdl = int("CLLM_NO_PDL", 1, 1).is_none();
        t.sync_each_launch = int("CLLM_CUDA_SYNC", 1, 1).is_some();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_in_range_apply_and_others_are_ignored() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Tuning::from_vars(|_| None), Tuning::default());
        let t = Tuning::from_vars(vars(&[
            ("CLLM_KSPLIT_FILL", "0"),
            ("CLLM_GEMV_PIPE", "3"),
            ("CLLM_GEMV_KIND", "2"),
            ("CLLM_GEMV_XSMEM", "2"),
            ("CLLM_GEMV_MMA", "1"),
            ("CLLM_MMA_KSPLIT", "4"),
            ("CLLM_ATT_PREFETCH", "1"),
            ("CLLM_NO_PDL", "1"),
            ("CLLM_CUDA_SYNC", "1"),
        ]));
        assert!(!t.ksplit_fill && !t.attention_prefetch && !t.pdl && t.sync_each_launch);
        assert_eq!(t.gemv_pipe, Some(3));
        assert_eq!(t.gemv_own_kinds, 2);
        assert_eq!(t.gemv_x_shared, XShared::Always);
        assert_eq!(t.tensor_cores, TensorCores::Int8Row);
        assert_eq!(t.mma_ksplit, Some(4));
        let t = Tuning::from_vars(vars(&[
            ("CLLM_GEMV_PIPE", "7"),
            ("CLLM_MMA_KSPLIT", "3"),
            ("CLLM_NO_PDL", "0"),
            ("CLLM_GEMV_MMA", "x"),
        ]));
        assert_eq!(t, Tuning::default());
    }
}

//! What several commands share: the `--device` and `--threads` flags, opening a container, and
//! the process's peak memory.

use std::path::Path;

use anyhow::Context;
use cllm_loader::{LoadError, Packed};
use cllm_runtime::{Device, KvPrecision};

use crate::Failure;

/// `--device`: `cpu` or `cuda`, parsed once into the engine's [`Device`].
pub fn parse_device(s: &str) -> Result<Device, String> {
    s.parse().map_err(|e| format!("--device {e}"))
}

/// `--kv-cache`: `f32`, `bf16` or `int8`, how the KV cache stores keys and values.
pub fn parse_kv_cache(s: &str) -> Result<KvPrecision, String> {
    s.parse().map_err(|e| format!("--kv-cache {e}"))
}

/// `--threads`: the global worker count (results do not depend on it); must run before anything
/// uses rayon.
pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting the thread count")?;
    }
    Ok(())
}

/// Peak resident memory of this process, from the kernel's accounting.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Opens a container or shard set: an unreadable file is an I/O error (exit 2), a malformed
/// container or a broken set a verification failure (exit 1), each naming the file.
pub fn open_packed(path: &Path) -> Result<Packed, Failure> {
    Packed::open(path).map_err(|e| match e {
        LoadError::Format { path, source } => {
            Failure::Check(format!("{}: {source}", path.display()))
        }
        other => Failure::Error(other.into()),
    })
}
